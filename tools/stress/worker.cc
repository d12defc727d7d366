#include "tools/stress/worker.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvpage::stress {
namespace {

// Stream kinds (StreamKey's `kind`).
constexpr uint64_t kSystemPrompt = 1, kPrompt = 2, kOutput = 3, kDraft = 4,
                   kCorrupt = 5;

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// `status` of the call `what` on the sequence `label`.
absl::Status CallFailed(const absl::Status& status, const SeqLabel& label,
                        absl::string_view what) {
  return absl::Status(
      status.code(),
      absl::StrCat(Describe(label), ": ", what, " failed: ", status.message()));
}

}  // namespace

Worker::Worker(const RunContext& ctx, int shard, Backend& backend,
               WorkerShared& shared, Clock::time_point start,
               std::optional<Clock::time_point> deadline)
    : ctx_(ctx),
      options_(ctx.options),
      shard_(shard),
      backend_(backend),
      shared_(shared),
      start_(start),
      deadline_(deadline),
      pattern_(options_.dtype),
      token_elems_(static_cast<int64_t>(ctx.shape.kv_heads) *
                   ctx.shape.head_dim),
      spot_check_rng_(
          Mix64(options_.seed ^ 0xc0ffee ^ static_cast<uint64_t>(shard))) {
  // No prefill chunk is longer than the longest request.
  const int64_t rows = std::max<int64_t>(
      std::min(options_.prefill_chunk, ctx.longest), options_.spec_tokens + 2);
  keys_.resize(static_cast<size_t>(rows * token_elems_));
  values_.resize(static_cast<size_t>(rows * token_elems_));
  for (const Request& request : ctx.requests) {
    if (request.shard == shard) pending_.push_back(&request);
  }
  max_in_flight_ =
      ctx.shard_concurrency.empty()
          ? (options_.concurrency + options_.threads - 1) / options_.threads
          : ctx.shard_concurrency[static_cast<size_t>(shard)];
}

template <typename F>
absl::Status Worker::Timed(TimedCall which, F&& call) {
  const Clock::time_point begin = Clock::now();
  absl::Status status = call();
  const int64_t ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - begin)
          .count();
  latencies[static_cast<size_t>(which)].Add(ns);
  cache_ns += ns;
  return status;
}

template <typename StreamOf>
void Worker::Fill(int layer, int64_t first, int64_t n, StreamOf stream_of) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t position = first + i;
    const uint64_t stream = stream_of(position);
    FillToken(pattern_, TokenKey(stream, layer, position, false), token_elems_,
              keys_.data() + i * token_elems_);
    FillToken(pattern_, TokenKey(stream, layer, position, true), token_elems_,
              values_.data() + i * token_elems_);
  }
}

void Worker::SampleMemory() {
  last_sample_ = Clock::now();
  memory_series.emplace_back(Seconds(last_sample_ - start_), backend_.Sample());
}

void Worker::MaybeSampleMemory() {
  if (Clock::now() - last_sample_ > std::chrono::milliseconds(50)) {
    SampleMemory();
  }
}

bool Worker::Expired() const {
  return deadline_.has_value() && Clock::now() >= *deadline_;
}

absl::Status Worker::Run() {
  const int64_t sample_every = std::max<int64_t>(1, options_.check_every / 4);
  size_t next = 0;  // the first of pending_ not admitted yet
  SampleMemory();
  while (next < pending_.size() || !in_flight_.empty()) {
    if (shared_.stop.load(std::memory_order_relaxed)) {
      return absl::CancelledError("another worker failed");
    }
    if (Expired()) {
      counts.complete = false;
      if (absl::Status s = Cut(); !s.ok()) return s;
      break;
    }
    if (absl::Status s = AdmitWhatFits(next); !s.ok()) return s;
    if (in_flight_.empty()) {
      if (next >= pending_.size()) break;
      if (absl::Status s = SkipToNextArrival(next); !s.ok()) return s;
      continue;
    }
    bool expired = false;
    if (absl::Status s = PrefillStep(expired); !s.ok()) return s;
    if (!expired) {
      if (absl::Status s = DecodeStep(); !s.ok()) return s;
    }
    if (options_.inject_corruption && shard_ == 0 && !injected_ && step_ >= 8) {
      if (absl::Status s = InjectCorruption(); !s.ok()) return s;
    }
    RetireFinishedRequests();
    ++step_;
    ++counts.scheduler_steps;
    if (step_ % sample_every == 0) SampleMemory();
    MaybeSampleMemory();
    if (step_ % options_.check_every == 0) {
      if (absl::Status s = SpotCheck(); !s.ok()) return s;
    }
  }
  SampleMemory();
  return backend_.Finish();
}

// Admission: arrivals (or the closed loop) while memory and the batch size
// allow; a request reserves what its whole life needs.
absl::Status Worker::AdmitWhatFits(size_t& next) {
  while (next < pending_.size() &&
         static_cast<int64_t>(in_flight_.size()) < max_in_flight_) {
    const Request& request = *pending_[next];
    if (options_.arrival_rate > 0 && request.arrival_step > step_) break;
    const int64_t cost = backend_.Cost(request);
    if (cost > 0 && reserved_ + cost > backend_.Budget()) break;
    if (absl::Status s = Admit(request, cost); !s.ok()) return s;
    ++next;
  }
  return absl::OkStatus();
}

// Nothing in flight and nothing admitted: the next request has not arrived
// yet (the clock jumps to it), or it needs more than the whole budget.
absl::Status Worker::SkipToNextArrival(size_t next) {
  const Request& request = *pending_[next];
  if (options_.arrival_rate <= 0 || request.arrival_step <= step_) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "request %d needs %d bytes, more than the shard's budget of %d",
        request.id, backend_.Cost(request), backend_.Budget()));
  }
  step_ = request.arrival_step;
  return absl::OkStatus();
}

// A prefill chunk for every request still in its prompt; `expired` when the
// naive backend's budget ran out on the way.
absl::Status Worker::PrefillStep(bool& expired) {
  for (auto& in_flight : in_flight_) {
    if (in_flight->decoding) continue;
    if (Expired()) {
      expired = true;
      return absl::OkStatus();
    }
    if (absl::Status s = Prefill(*in_flight); !s.ok()) return s;
    MaybeSampleMemory();
  }
  return absl::OkStatus();
}

// Requests whose every sample is released leave the batch.
void Worker::RetireFinishedRequests() {
  for (size_t i = 0; i < in_flight_.size();) {
    InFlight& in_flight = *in_flight_[i];
    const bool all_done =
        in_flight.decoding &&
        std::all_of(in_flight.seqs.begin(), in_flight.seqs.end(),
                    [](const Sequence& seq) { return seq.done; });
    if (!all_done) {
      ++i;
      continue;
    }
    reserved_ -= in_flight.cost;
    ++counts.requests_completed;
    shared_.requests_done.fetch_add(1, std::memory_order_relaxed);
    in_flight_.erase(in_flight_.begin() + static_cast<ptrdiff_t>(i));
  }
}

absl::Status Worker::Admit(const Request& request, int64_t cost) {
  auto in_flight = std::make_unique<InFlight>();
  in_flight->request = &request;
  in_flight->cost = cost;
  absl::StatusOr<uint64_t> id = backend_.Add();
  if (!id.ok()) {
    return absl::Status(
        id.status().code(),
        absl::StrCat("request ", request.id,
                     ": AddSequence failed: ", id.status().message()));
  }
  Sequence seq;
  seq.id = *id;
  if (request.shared_prefix) {
    seq.lineage.Push(options_.shared_prefix_tokens,
                     StreamKey(options_.seed, kSystemPrompt,
                               static_cast<uint64_t>(request.prefix_id), 0));
  }
  seq.lineage.Push(
      request.prompt,
      StreamKey(options_.seed, kPrompt, static_cast<uint64_t>(request.id), 0));
  in_flight->seqs.push_back(std::move(seq));
  if (options_.shared_prefix_fraction > 0) {
    if (absl::Status s = MatchPrefix(*in_flight, in_flight->seqs.back());
        !s.ok()) {
      return s;
    }
  }
  reserved_ += cost;
  in_flight_.push_back(std::move(in_flight));
  counts.max_requests_in_flight = std::max(
      counts.max_requests_in_flight, static_cast<int64_t>(in_flight_.size()));
  return absl::OkStatus();
}

// Prefix caching: the prompt's ids, and the tokens the cache already holds.
absl::Status Worker::MatchPrefix(InFlight& in_flight, Sequence& seq) {
  const int64_t prompt = in_flight.request->prompt;
  std::vector<int32_t> ids(static_cast<size_t>(prompt));
  for (int64_t p = 0; p < prompt; ++p) {
    ids[static_cast<size_t>(p)] = TokenId(seq.lineage.StreamAt(p), p);
  }
  absl::StatusOr<int64_t> matched;
  absl::Status s = Timed(TimedCall::kMatchPrefix, [&] {
    matched = backend_.MatchPrefix(seq.id, ids);
    return matched.status();
  });
  if (!s.ok()) return CallFailed(s, Label(in_flight, seq), "MatchPrefix");
  seq.length = *matched;
  counts.prefix_tokens_reused += *matched;
  return absl::OkStatus();
}

absl::Status Worker::Prefill(InFlight& in_flight) {
  Sequence& seq = in_flight.seqs[0];
  const int64_t end =
      std::min(seq.length + options_.prefill_chunk, in_flight.request->prompt);
  const int64_t n = end - seq.length;
  for (int layer = 0; layer < ctx_.shape.layers; ++layer) {
    Fill(layer, seq.length, n,
         [&](int64_t p) { return seq.lineage.StreamAt(p); });
    absl::Status s = Timed(TimedCall::kUpdatePrefill, [&] {
      return backend_.Write(seq.id, layer, keys_.data(), values_.data(), n,
                            end);
    });
    if (!s.ok()) {
      return CallFailed(
          s, Label(in_flight, seq),
          absl::StrFormat("prefill Update(layer %d, %d tokens, seq_len %d)",
                          layer, n, end));
    }
  }
  seq.length = end;
  counts.prompt_tokens_computed += n;
  counts.tokens_appended += n;
  if (end < in_flight.request->prompt) return absl::OkStatus();
  return ForkSamples(in_flight);
}

// The prompt is in: fork the other samples, then every sample decodes.
absl::Status Worker::ForkSamples(InFlight& in_flight) {
  in_flight.decoding = true;
  const auto request_id = static_cast<uint64_t>(in_flight.request->id);
  for (int sample = 0; sample < options_.samples; ++sample) {
    if (sample > 0) {
      const Sequence& parent = in_flight.seqs[0];
      absl::StatusOr<uint64_t> child;
      absl::Status s = Timed(TimedCall::kFork, [&] {
        child = backend_.Fork(parent.id);
        return child.status();
      });
      if (!s.ok()) return CallFailed(s, Label(in_flight, parent), "Fork");
      Sequence forked;
      forked.id = *child;
      forked.lineage = parent.lineage;
      forked.length = parent.length;
      in_flight.seqs.push_back(std::move(forked));
    }
    Sequence& seq = in_flight.seqs.back();
    const auto sample_id = static_cast<uint64_t>(sample);
    seq.sample = sample;
    seq.output_stream =
        StreamKey(options_.seed, kOutput, request_id, sample_id);
    seq.draft_stream = StreamKey(options_.seed, kDraft, request_id, sample_id);
    seq.draft_rng.seed(
        StreamKey(options_.seed, kDraft + 100, request_id, sample_id));
  }
  return absl::OkStatus();
}

absl::Status Worker::DecodeStep() {
  const std::vector<Decoding> batch = DecodingBatch();
  if (batch.empty()) return absl::OkStatus();
  // Draft tokens (speculative decoding): plan, write, roll back.
  if (PlanDrafts(batch)) {
    if (absl::Status s = WriteDrafts(batch); !s.ok()) return s;
    if (absl::Status s = RollBackRejectedDrafts(batch); !s.ok()) return s;
  }
  if (absl::Status s = WriteNextTokens(batch); !s.ok()) return s;
  return FinishDecodeStep(batch);
}

std::vector<Worker::Decoding> Worker::DecodingBatch() {
  std::vector<Decoding> batch;
  for (auto& in_flight : in_flight_) {
    if (!in_flight->decoding) continue;
    for (Sequence& seq : in_flight->seqs) {
      if (!seq.done) batch.push_back({in_flight.get(), &seq});
    }
  }
  return batch;
}

// How many draft tokens each sequence writes this step (never past its
// request's end) and how many of them are accepted; true if any.
bool Worker::PlanDrafts(const std::vector<Decoding>& batch) {
  bool any_draft = false;
  std::bernoulli_distribution accept(options_.spec_accept);
  for (const Decoding& entry : batch) {
    Sequence& seq = *entry.seq;
    const int64_t remaining = entry.in_flight->request->output - seq.produced;
    seq.drafts = static_cast<int>(
        std::min<int64_t>(options_.spec_tokens, remaining - 1));
    seq.accepted = 0;
    while (seq.accepted < seq.drafts && accept(seq.draft_rng)) {
      ++seq.accepted;
    }
    any_draft |= seq.drafts > 0;
  }
  return any_draft;
}

// The accepted drafts carry the output stream's pattern, the rejected ones
// the draft stream's, layer by layer over the batch.
absl::Status Worker::WriteDrafts(const std::vector<Decoding>& batch) {
  for (int layer = 0; layer < ctx_.shape.layers; ++layer) {
    for (const Decoding& entry : batch) {
      Sequence& seq = *entry.seq;
      if (seq.drafts == 0) continue;
      const int64_t first = seq.length, accepted_end = first + seq.accepted;
      Fill(layer, first, seq.drafts, [&](int64_t p) {
        return p < accepted_end ? seq.output_stream : seq.draft_stream;
      });
      const int64_t end = first + seq.drafts;
      absl::Status s = Timed(TimedCall::kUpdateDraft, [&] {
        return backend_.Write(seq.id, layer, keys_.data(), values_.data(),
                              seq.drafts, end);
      });
      if (!s.ok()) {
        return CallFailed(
            s, Label(*entry.in_flight, seq),
            absl::StrFormat("draft Update(layer %d, %d tokens, seq_len %d)",
                            layer, seq.drafts, end));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Worker::RollBackRejectedDrafts(
    const std::vector<Decoding>& batch) {
  for (const Decoding& entry : batch) {
    Sequence& seq = *entry.seq;
    if (seq.drafts == 0) continue;
    counts.tokens_appended += seq.drafts;
    const int64_t kept = seq.length + seq.accepted;
    if (seq.accepted < seq.drafts) {
      absl::Status s = Timed(TimedCall::kTruncate,
                             [&] { return backend_.Truncate(seq.id, kept); });
      if (!s.ok()) {
        return CallFailed(s, Label(*entry.in_flight, seq),
                          absl::StrFormat("Truncate(%d)", kept));
      }
      counts.draft_tokens_rejected += seq.drafts - seq.accepted;
    }
    seq.lineage.Push(kept, seq.output_stream);
    seq.length = kept;
  }
  return absl::OkStatus();
}

// One token per sequence on every layer, layer by layer over the batch as a
// forward pass goes.
absl::Status Worker::WriteNextTokens(const std::vector<Decoding>& batch) {
  for (int layer = 0; layer < ctx_.shape.layers; ++layer) {
    for (const Decoding& entry : batch) {
      Sequence& seq = *entry.seq;
      Fill(layer, seq.length, 1, [&](int64_t) { return seq.output_stream; });
      const int64_t end = seq.length + 1;
      absl::Status s = Timed(TimedCall::kUpdateDecode, [&] {
        return backend_.Write(seq.id, layer, keys_.data(), values_.data(), 1,
                              end);
      });
      if (!s.ok()) {
        return CallFailed(
            s, Label(*entry.in_flight, seq),
            absl::StrFormat("decode Update(layer %d, seq_len %d)", layer, end));
      }
    }
  }
  return absl::OkStatus();
}

// The step's tokens counted; compression when it is due; a sequence that
// produced its whole output is verified and released.
absl::Status Worker::FinishDecodeStep(const std::vector<Decoding>& batch) {
  for (const Decoding& entry : batch) {
    Sequence& seq = *entry.seq;
    seq.length += 1;
    seq.lineage.Push(seq.length, seq.output_stream);
    seq.produced += seq.accepted + 1;
    counts.decode_tokens += seq.accepted + 1;
    counts.tokens_appended += 1;
    counts.decode_steps += 1;
    if (options_.compress != "off" &&
        ++seq.steps_since_compress >= options_.compress_every) {
      seq.steps_since_compress = 0;
      if (absl::Status s = CompressAllLayers(*entry.in_flight, seq); !s.ok()) {
        return s;
      }
    }
    if (seq.produced >= entry.in_flight->request->output) {
      if (absl::Status s = Retire(*entry.in_flight, seq); !s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

absl::Status Worker::CompressAllLayers(InFlight& in_flight, Sequence& seq) {
  for (int layer = 0; layer < ctx_.shape.layers; ++layer) {
    absl::Status s = Timed(TimedCall::kCompress,
                           [&] { return backend_.Compress(seq.id, layer); });
    if (!s.ok()) {
      return CallFailed(s, Label(in_flight, seq),
                        absl::StrFormat("CompressOldEntries(layer %d)", layer));
    }
  }
  return absl::OkStatus();
}

// Verifies every token of the sequence, then releases it.
absl::Status Worker::Retire(InFlight& in_flight, Sequence& seq) {
  if (absl::Status s =
          backend_.Verify(Label(in_flight, seq), seq.lineage, seq.length);
      !s.ok()) {
    return s;
  }
  absl::Status s =
      Timed(TimedCall::kRelease, [&] { return backend_.Release(seq.id); });
  if (!s.ok()) return CallFailed(s, Label(in_flight, seq), "RemoveSequence");
  seq.done = true;
  return absl::OkStatus();
}

// The backend's invariant walk, and one layer of one sequence in flight
// read back.
absl::Status Worker::SpotCheck() {
  if (absl::Status s = backend_.Check(); !s.ok()) return s;
  std::vector<Decoding> candidates;
  for (auto& in_flight : in_flight_) {
    for (Sequence& seq : in_flight->seqs) {
      if (!seq.done) candidates.push_back({in_flight.get(), &seq});
    }
  }
  if (candidates.empty()) return absl::OkStatus();
  std::uniform_int_distribution<size_t> pick(0, candidates.size() - 1);
  const Decoding chosen = candidates[pick(spot_check_rng_)];
  std::uniform_int_distribution<int> layer(0, ctx_.shape.layers - 1);
  return backend_.Verify(Label(*chosen.in_flight, *chosen.seq),
                         chosen.seq->lineage, chosen.seq->length,
                         layer(spot_check_rng_));
}

// Testing: overwrites one stored token, through the same update rule, with
// another stream's pattern (rewriting the tail after it unchanged), in the
// sequence with the most tokens still to decode (so that its token turns
// cold, and may be compressed, before the sequence ends).
absl::Status Worker::InjectCorruption() {
  InFlight* target_request = nullptr;
  Sequence* target = nullptr;
  auto to_decode = [](const InFlight& in_flight, const Sequence& seq) {
    return in_flight.request->output - seq.produced;
  };
  for (auto& in_flight : in_flight_) {
    if (!in_flight->decoding) continue;
    for (Sequence& seq : in_flight->seqs) {
      if (seq.done || seq.length < 3) continue;
      if (target == nullptr ||
          to_decode(*in_flight, seq) > to_decode(*target_request, *target)) {
        target_request = in_flight.get();
        target = &seq;
      }
    }
  }
  if (target == nullptr) return absl::OkStatus();
  const int layer = ctx_.shape.layers / 2;
  const int64_t position = target->length - 2;
  const uint64_t wrong = StreamKey(options_.seed, kCorrupt, 0, 0);
  Fill(layer, position, 2, [&](int64_t p) {
    return p == position ? wrong : target->lineage.StreamAt(p);
  });
  if (absl::Status s = backend_.Write(target->id, layer, keys_.data(),
                                      values_.data(), 2, target->length);
      !s.ok()) {
    return CallFailed(s, Label(*target_request, *target), "injected Update");
  }
  std::fprintf(stderr,
               "kvpage-stress: injected a wrong token at %s layer %d "
               "position %lld\n",
               Describe(Label(*target_request, *target)).c_str(), layer,
               static_cast<long long>(position));
  injected_ = true;
  return absl::OkStatus();
}

// The naive backend's budget is spent: verify and release what is in flight.
absl::Status Worker::Cut() {
  SampleMemory();
  for (auto& in_flight : in_flight_) {
    for (Sequence& seq : in_flight->seqs) {
      if (seq.done) continue;
      if (absl::Status s = Retire(*in_flight, seq); !s.ok()) return s;
    }
    ++counts.requests_cut;
  }
  in_flight_.clear();
  reserved_ = 0;
  return absl::OkStatus();
}

}  // namespace kvpage::stress
