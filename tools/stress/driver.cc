#include "tools/stress/driver.h"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/stress/backend.h"

namespace kvpage::stress {
namespace {

using Clock = std::chrono::steady_clock;

// Stream kinds (StreamKey's `kind`).
constexpr uint64_t kSystemPrompt = 1, kPrompt = 2, kOutput = 3, kDraft = 4,
                   kCorrupt = 5;

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// What every worker of one backend shares: progress, and a stop flag raised
// by the first failure.
struct Shared {
  std::atomic<int64_t> requests_done{0};
  std::atomic<bool> stop{false};
};

class Worker {
 public:
  Worker(const RunContext& ctx, int shard, Backend& backend, Shared& shared,
         Clock::time_point start, std::optional<Clock::time_point> deadline)
      : ctx_(ctx),
        o_(ctx.options),
        shard_(shard),
        backend_(backend),
        shared_(shared),
        start_(start),
        deadline_(deadline),
        table_(o_.dtype),
        elems_(static_cast<int64_t>(ctx.shape.kv_heads) * ctx.shape.head_dim),
        rng_(Mix64(o_.seed ^ 0xc0ffee ^ static_cast<uint64_t>(shard))) {
    // No prefill chunk is longer than the longest request.
    const int64_t rows = std::max<int64_t>(
        std::min(o_.prefill_chunk, ctx.longest), o_.spec_tokens + 2);
    k_.resize(static_cast<size_t>(rows * elems_));
    v_.resize(static_cast<size_t>(rows * elems_));
    for (const Request& r : ctx.requests) {
      if (r.shard == shard) pending_.push_back(&r);
    }
    per_worker_ = (o_.concurrency + o_.threads - 1) / o_.threads;
  }

  absl::Status Run();

  // What the worker measured.
  LatencyRecorder update_decode, update_prefill, update_draft, truncate, fork,
      match_prefix, release, compress;
  int64_t cache_ns = 0;
  BackendResult counts;  // the counters of BackendResult this worker fills
  std::vector<std::pair<double, MemorySample>> series;

 private:
  struct Seq {
    uint64_t id = 0;
    int sample = 0;
    Lineage lineage;
    int64_t length = 0;    // tokens written (every layer)
    int64_t produced = 0;  // output tokens decoded
    uint64_t out_stream = 0, draft_stream = 0;
    std::mt19937_64 rng;  // draft acceptance
    int64_t since_compress = 0;
    bool done = false;
    int plan_k = 0, plan_a = 0;  // this step's drafts and accepted ones
  };
  struct Live {
    const Request* r = nullptr;
    int64_t cost = 0;
    bool decoding = false;
    std::vector<Seq> seqs;  // [0] is the parent; forks after the prompt
  };

  template <typename F>
  absl::Status Timed(LatencyRecorder& rec, F&& f) {
    const Clock::time_point t0 = Clock::now();
    absl::Status s = f();
    const int64_t ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0)
            .count();
    rec.Add(ns);
    cache_ns += ns;
    return s;
  }

  SeqLabel Label(const Live& l, const Seq& s) const {
    return {.id = s.id, .request = l.r->id, .sample = s.sample};
  }
  static absl::Status Fail(const absl::Status& s, const SeqLabel& label,
                           absl::string_view what) {
    return absl::Status(s.code(), absl::StrCat(Describe(label), ": ", what,
                                               " failed: ", s.message()));
  }

  // Fills rows [0, n) of k_ and v_ with positions [first, first + n) of
  // `layer`, position p written by stream_of(p).
  template <typename StreamOf>
  void Fill(int layer, int64_t first, int64_t n, StreamOf stream_of) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t p = first + i;
      const uint64_t stream = stream_of(p);
      FillToken(table_, TokenKey(stream, layer, p, false), elems_,
                k_.data() + i * elems_);
      FillToken(table_, TokenKey(stream, layer, p, true), elems_,
                v_.data() + i * elems_);
    }
  }

  absl::Status Admit(const Request& r, int64_t cost);
  absl::Status Prefill(Live& live);
  absl::Status DecodeStep();
  absl::Status Retire(Live& live, Seq& seq);
  absl::Status SpotCheck();
  absl::Status InjectCorruption();
  absl::Status Cut();
  void SampleMemory() {
    last_sample_ = Clock::now();
    series.emplace_back(Seconds(last_sample_ - start_), backend_.Sample());
  }
  // Slow steps (the naive backend) still get a sample every 50 ms.
  void MaybeSampleMemory() {
    if (Clock::now() - last_sample_ > std::chrono::milliseconds(50)) {
      SampleMemory();
    }
  }
  // The naive backend's budget is spent.
  bool Expired() const {
    return deadline_.has_value() && Clock::now() >= *deadline_;
  }

  const RunContext& ctx_;
  const Options& o_;
  int shard_;
  Backend& backend_;
  Shared& shared_;
  Clock::time_point start_;
  std::optional<Clock::time_point> deadline_;
  Clock::time_point last_sample_;
  PatternTable table_;
  int64_t elems_;
  std::mt19937_64 rng_;
  std::vector<uint16_t> k_, v_;
  std::vector<const Request*> pending_;
  int64_t per_worker_ = 1;
  std::vector<std::unique_ptr<Live>> live_;
  int64_t reserved_ = 0;
  int64_t step_ = 0;
  bool injected_ = false;
};

absl::Status Worker::Admit(const Request& r, int64_t cost) {
  auto live = std::make_unique<Live>();
  live->r = &r;
  live->cost = cost;
  Seq seq;
  absl::StatusOr<uint64_t> id = backend_.Add();
  if (!id.ok()) {
    return absl::Status(id.status().code(),
                        absl::StrCat("request ", r.id, ": AddSequence failed: ",
                                     id.status().message()));
  }
  seq.id = *id;
  if (r.shared_prefix) {
    seq.lineage.Push(o_.shared_prefix_tokens,
                     StreamKey(o_.seed, kSystemPrompt, 0, 0));
  }
  seq.lineage.Push(r.prompt,
                   StreamKey(o_.seed, kPrompt, static_cast<uint64_t>(r.id), 0));
  live->seqs.push_back(std::move(seq));
  Seq& s = live->seqs.back();
  if (o_.shared_prefix_fraction > 0) {
    std::vector<int32_t> ids(static_cast<size_t>(r.prompt));
    for (int64_t p = 0; p < r.prompt; ++p) {
      ids[static_cast<size_t>(p)] = TokenId(s.lineage.StreamAt(p), p);
    }
    absl::StatusOr<int64_t> matched;
    absl::Status st = Timed(match_prefix, [&] {
      matched = backend_.MatchPrefix(s.id, ids);
      return matched.status();
    });
    if (!st.ok()) return Fail(st, Label(*live, s), "MatchPrefix");
    s.length = *matched;
    counts.prefix_tokens_reused += *matched;
  }
  reserved_ += cost;
  live_.push_back(std::move(live));
  counts.max_requests_in_flight = std::max(counts.max_requests_in_flight,
                                           static_cast<int64_t>(live_.size()));
  return absl::OkStatus();
}

absl::Status Worker::Prefill(Live& live) {
  Seq& s = live.seqs[0];
  const int64_t end = std::min(s.length + o_.prefill_chunk, live.r->prompt);
  const int64_t n = end - s.length;
  for (int layer = 0; layer < ctx_.shape.layers; ++layer) {
    Fill(layer, s.length, n, [&](int64_t p) { return s.lineage.StreamAt(p); });
    absl::Status st = Timed(update_prefill, [&] {
      return backend_.Write(s.id, layer, k_.data(), v_.data(), n, end);
    });
    if (!st.ok()) {
      return Fail(st, Label(live, s),
                  absl::StrFormat("prefill Update(layer %d, %d tokens, "
                                  "seq_len %d)",
                                  layer, n, end));
    }
  }
  s.length = end;
  counts.prompt_tokens_computed += n;
  counts.tokens_appended += n;
  if (end < live.r->prompt) return absl::OkStatus();
  // The prompt is in: fork the other samples, then every sample decodes.
  live.decoding = true;
  const auto rid = static_cast<uint64_t>(live.r->id);
  for (int sample = 0; sample < o_.samples; ++sample) {
    if (sample > 0) {
      absl::StatusOr<uint64_t> child;
      absl::Status st = Timed(fork, [&] {
        child = backend_.Fork(live.seqs[0].id);
        return child.status();
      });
      if (!st.ok()) return Fail(st, Label(live, live.seqs[0]), "Fork");
      Seq c;
      c.id = *child;
      c.lineage = live.seqs[0].lineage;
      c.length = live.seqs[0].length;
      live.seqs.push_back(std::move(c));
    }
    Seq& x = live.seqs.back();
    x.sample = sample;
    x.out_stream =
        StreamKey(o_.seed, kOutput, rid, static_cast<uint64_t>(sample));
    x.draft_stream =
        StreamKey(o_.seed, kDraft, rid, static_cast<uint64_t>(sample));
    x.rng.seed(
        StreamKey(o_.seed, kDraft + 100, rid, static_cast<uint64_t>(sample)));
  }
  return absl::OkStatus();
}

absl::Status Worker::DecodeStep() {
  std::vector<std::pair<Live*, Seq*>> batch;
  for (auto& live : live_) {
    if (!live->decoding) continue;
    for (Seq& s : live->seqs) {
      if (!s.done) batch.emplace_back(live.get(), &s);
    }
  }
  if (batch.empty()) return absl::OkStatus();
  // Draft tokens (speculative decoding): plan, write, roll back.
  bool any_draft = false;
  std::bernoulli_distribution accept(o_.spec_accept);
  for (auto& entry : batch) {
    Live* live = entry.first;
    Seq* s = entry.second;
    const int64_t remaining = live->r->output - s->produced;
    s->plan_k =
        static_cast<int>(std::min<int64_t>(o_.spec_tokens, remaining - 1));
    s->plan_a = 0;
    while (s->plan_a < s->plan_k && accept(s->rng)) ++s->plan_a;
    any_draft |= s->plan_k > 0;
  }
  if (any_draft) {
    for (int layer = 0; layer < ctx_.shape.layers; ++layer) {
      for (auto& entry : batch) {
        Live* live = entry.first;
        Seq* s = entry.second;
        if (s->plan_k == 0) continue;
        const int64_t first = s->length, accepted_end = first + s->plan_a;
        Fill(layer, first, s->plan_k, [&](int64_t p) {
          return p < accepted_end ? s->out_stream : s->draft_stream;
        });
        const int64_t end = first + s->plan_k;
        absl::Status st = Timed(update_draft, [&] {
          return backend_.Write(s->id, layer, k_.data(), v_.data(), s->plan_k,
                                end);
        });
        if (!st.ok()) {
          return Fail(st, Label(*live, *s),
                      absl::StrFormat("draft Update(layer %d, %d tokens, "
                                      "seq_len %d)",
                                      layer, s->plan_k, end));
        }
      }
    }
    for (auto& entry : batch) {
      Live* live = entry.first;
      Seq* s = entry.second;
      if (s->plan_k == 0) continue;
      counts.tokens_appended += s->plan_k;
      const int64_t kept = s->length + s->plan_a;
      if (s->plan_a < s->plan_k) {
        absl::Status st =
            Timed(truncate, [&] { return backend_.Truncate(s->id, kept); });
        if (!st.ok()) {
          return Fail(st, Label(*live, *s),
                      absl::StrFormat("Truncate(%d)", kept));
        }
        counts.draft_tokens_rejected += s->plan_k - s->plan_a;
      }
      s->lineage.Push(kept, s->out_stream);
      s->length = kept;
    }
  }
  // One token per sequence on every layer, layer by layer over the batch as
  // a forward pass goes.
  for (int layer = 0; layer < ctx_.shape.layers; ++layer) {
    for (auto& entry : batch) {
      Live* live = entry.first;
      Seq* s = entry.second;
      Fill(layer, s->length, 1, [&](int64_t) { return s->out_stream; });
      const int64_t end = s->length + 1;
      absl::Status st = Timed(update_decode, [&] {
        return backend_.Write(s->id, layer, k_.data(), v_.data(), 1, end);
      });
      if (!st.ok()) {
        return Fail(
            st, Label(*live, *s),
            absl::StrFormat("decode Update(layer %d, seq_len %d)", layer, end));
      }
    }
  }
  for (auto& entry : batch) {
    Live* live = entry.first;
    Seq* s = entry.second;
    s->length += 1;
    s->lineage.Push(s->length, s->out_stream);
    s->produced += s->plan_a + 1;
    counts.decode_tokens += s->plan_a + 1;
    counts.tokens_appended += 1;
    counts.decode_steps += 1;
    if (o_.compress != "off" && ++s->since_compress >= o_.compress_every) {
      s->since_compress = 0;
      for (int layer = 0; layer < ctx_.shape.layers; ++layer) {
        absl::Status st =
            Timed(compress, [&] { return backend_.Compress(s->id, layer); });
        if (!st.ok()) {
          return Fail(st, Label(*live, *s),
                      absl::StrFormat("CompressOldEntries(layer %d)", layer));
        }
      }
    }
    if (s->produced >= live->r->output) {
      if (absl::Status st = Retire(*live, *s); !st.ok()) return st;
    }
  }
  return absl::OkStatus();
}

// Verifies every token of the sequence, then releases it.
absl::Status Worker::Retire(Live& live, Seq& s) {
  if (absl::Status st = backend_.Verify(Label(live, s), s.lineage, s.length);
      !st.ok()) {
    return st;
  }
  absl::Status st = Timed(release, [&] { return backend_.Release(s.id); });
  if (!st.ok()) return Fail(st, Label(live, s), "RemoveSequence");
  s.done = true;
  return absl::OkStatus();
}

absl::Status Worker::SpotCheck() {
  if (absl::Status s = backend_.Check(); !s.ok()) return s;
  std::vector<std::pair<Live*, Seq*>> candidates;
  for (auto& live : live_) {
    for (Seq& s : live->seqs) {
      if (!s.done) candidates.emplace_back(live.get(), &s);
    }
  }
  if (candidates.empty()) return absl::OkStatus();
  std::uniform_int_distribution<size_t> pick(0, candidates.size() - 1);
  auto [live, s] = candidates[pick(rng_)];
  std::uniform_int_distribution<int> layer(0, ctx_.shape.layers - 1);
  return backend_.Verify(Label(*live, *s), s->lineage, s->length, layer(rng_));
}

// Testing: overwrites one stored token, through the same update rule, with
// another stream's pattern (rewriting the tail after it unchanged), in the
// sequence with the most tokens still to decode (so that its token turns
// cold, and may be compressed, before the sequence ends).
absl::Status Worker::InjectCorruption() {
  Live* best_live = nullptr;
  Seq* best = nullptr;
  for (auto& live : live_) {
    if (!live->decoding) continue;
    for (Seq& s : live->seqs) {
      if (s.done || s.length < 3) continue;
      if (best == nullptr || live->r->output - s.produced >
                                 best_live->r->output - best->produced) {
        best_live = live.get();
        best = &s;
      }
    }
  }
  if (best != nullptr) {
    Live* live = best_live;
    Seq& s = *best;
    {
      const int layer = ctx_.shape.layers / 2;
      const int64_t target = s.length - 2;
      const uint64_t wrong = StreamKey(o_.seed, kCorrupt, 0, 0);
      Fill(layer, target, 2, [&](int64_t p) {
        return p == target ? wrong : s.lineage.StreamAt(p);
      });
      if (absl::Status st =
              backend_.Write(s.id, layer, k_.data(), v_.data(), 2, s.length);
          !st.ok()) {
        return Fail(st, Label(*live, s), "injected Update");
      }
      std::fprintf(stderr,
                   "kvpage-stress: injected a wrong token at %s layer %d "
                   "position %lld\n",
                   Describe(Label(*live, s)).c_str(), layer,
                   static_cast<long long>(target));
      injected_ = true;
      return absl::OkStatus();
    }
  }
  return absl::OkStatus();
}

// The naive backend's budget is spent: verify and release what is in flight.
absl::Status Worker::Cut() {
  SampleMemory();
  for (auto& live : live_) {
    for (Seq& s : live->seqs) {
      if (s.done) continue;
      if (absl::Status st = Retire(*live, s); !st.ok()) return st;
    }
    ++counts.requests_cut;
  }
  live_.clear();
  reserved_ = 0;
  return absl::OkStatus();
}

absl::Status Worker::Run() {
  const int64_t sample_every = std::max<int64_t>(1, o_.check_every / 4);
  size_t next = 0;
  SampleMemory();
  while (next < pending_.size() || !live_.empty()) {
    if (shared_.stop.load(std::memory_order_relaxed)) {
      return absl::CancelledError("another worker failed");
    }
    if (Expired()) {
      counts.complete = false;
      if (absl::Status s = Cut(); !s.ok()) return s;
      break;
    }
    // Admission: arrivals (or the closed loop) while memory and the batch
    // size allow; a request reserves what its whole life needs.
    while (next < pending_.size() &&
           static_cast<int64_t>(live_.size()) < per_worker_) {
      const Request& r = *pending_[next];
      if (o_.arrival_rate > 0 && r.arrival_step > step_) break;
      const int64_t cost = backend_.Cost(r);
      if (cost > 0 && reserved_ + cost > backend_.Budget()) break;
      if (absl::Status s = Admit(r, cost); !s.ok()) return s;
      ++next;
    }
    if (live_.empty()) {
      if (next >= pending_.size()) break;
      const Request& r = *pending_[next];
      if (o_.arrival_rate <= 0 || r.arrival_step <= step_) {
        return absl::ResourceExhaustedError(absl::StrFormat(
            "request %d needs %d bytes, more than the shard's budget of %d",
            r.id, backend_.Cost(r), backend_.Budget()));
      }
      step_ = r.arrival_step;
      continue;
    }
    bool expired = false;
    for (auto& live : live_) {
      if (live->decoding) continue;
      if (Expired()) {
        expired = true;
        break;
      }
      if (absl::Status s = Prefill(*live); !s.ok()) return s;
      MaybeSampleMemory();
    }
    if (!expired) {
      if (absl::Status s = DecodeStep(); !s.ok()) return s;
    }
    if (o_.inject_corruption && shard_ == 0 && !injected_ && step_ >= 8) {
      if (absl::Status s = InjectCorruption(); !s.ok()) return s;
    }
    // Requests whose every sample is released leave the batch.
    for (size_t i = 0; i < live_.size();) {
      Live& l = *live_[i];
      const bool all_done =
          l.decoding && std::all_of(l.seqs.begin(), l.seqs.end(),
                                    [](const Seq& s) { return s.done; });
      if (!all_done) {
        ++i;
        continue;
      }
      reserved_ -= l.cost;
      ++counts.requests_completed;
      shared_.requests_done.fetch_add(1, std::memory_order_relaxed);
      live_.erase(live_.begin() + static_cast<ptrdiff_t>(i));
    }
    ++step_;
    ++counts.scheduler_steps;
    if (step_ % sample_every == 0) SampleMemory();
    MaybeSampleMemory();
    if (step_ % o_.check_every == 0) {
      if (absl::Status s = SpotCheck(); !s.ok()) return s;
    }
  }
  SampleMemory();
  return backend_.Finish();
}

// Memory series of every shard on common time points: the last sample of
// each shard at or before each point, summed.
void MergeMemory(const std::vector<std::unique_ptr<Worker>>& workers,
                 double wall_s, int64_t budget, BackendResult& out) {
  constexpr int kPoints = 50;
  double util_sum = 0, waste_sum = 0;
  for (int i = 1; i <= kPoints; ++i) {
    const double t = wall_s * i / kPoints;
    MemorySample sum;
    for (const auto& w : workers) {
      const MemorySample* last = nullptr;
      for (const auto& [ts, m] : w->series) {
        if (ts > t && last != nullptr) break;
        last = &m;
      }
      if (last == nullptr) continue;
      sum.bytes_held += last->bytes_held;
      sum.tokens_stored += last->tokens_stored;
      sum.token_slots += last->token_slots;
      sum.bytes_saved += last->bytes_saved;
    }
    MemoryPoint p{
        .t_s = t,
        .utilization =
            budget > 0 ? static_cast<double>(sum.bytes_held) / budget : 0,
        .internal_waste =
            sum.token_slots > 0
                ? 1.0 - static_cast<double>(sum.tokens_stored) / sum.token_slots
                : 0,
        .kv_bytes_held = sum.bytes_held};
    out.memory_over_time.push_back(p);
    util_sum += p.utilization;
    waste_sum += p.internal_waste;
    out.utilization_peak = std::max(out.utilization_peak, p.utilization);
    out.internal_waste_max = std::max(out.internal_waste_max, p.internal_waste);
    out.kv_bytes_held_peak = std::max(out.kv_bytes_held_peak, sum.bytes_held);
    out.bytes_saved_peak = std::max(out.bytes_saved_peak, sum.bytes_saved);
  }
  out.utilization_mean = util_sum / kPoints;
  out.internal_waste_mean = waste_sum / kPoints;
}

void DrawProgress(std::string_view name, int64_t done, int64_t total,
                  double elapsed, double budget) {
  double fraction = total > 0 ? static_cast<double>(done) / total : 1;
  if (budget > 0)
    fraction = std::max(fraction, std::min(1.0, elapsed / budget));
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(fraction * kWidth);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(kWidth, '.');
  std::fprintf(stderr, "\r%-10s [%s] %3d%%  %lld/%lld requests  %.1f s",
               std::string(name).c_str(), bar.c_str(),
               static_cast<int>(fraction * 100), static_cast<long long>(done),
               static_cast<long long>(total), elapsed);
  std::fflush(stderr);
}

}  // namespace

BackendResult RunBackend(BackendKind kind, const RunContext& ctx,
                         bool progress) {
  const Options& o = ctx.options;
  BackendResult result;
  result.backend = std::string(BackendName(kind));
  const CacheConfig paged = PagedConfig(o, ctx.shape);
  const int64_t shard_budget =
      static_cast<int64_t>(o.pool_gib * 1024.0 * 1024.0 * 1024.0 / o.threads);
  BackendParams params{
      .kind = kind,
      .shape = {.layers = ctx.shape.layers,
                .kv_heads = ctx.shape.kv_heads,
                .head_dim = ctx.shape.head_dim,
                .token_elems = static_cast<int64_t>(ctx.shape.kv_heads) *
                               ctx.shape.head_dim,
                .dtype = o.dtype,
                .policy = o.policy,
                .max_seq_len = EffectiveMaxSeqLen(o),
                .sink_tokens = o.sink_tokens,
                .rollbacks = o.spec_tokens > 0},
      .paged = paged,
      .contiguous_tokens = ctx.longest,
      .budget_bytes = shard_budget,
      .samples = o.samples,
      .spec_tokens = o.spec_tokens,
      .prefix_caching = o.shared_prefix_fraction > 0};
  std::vector<std::unique_ptr<Backend>> backends;
  for (int i = 0; i < o.threads; ++i) {
    absl::StatusOr<std::unique_ptr<Backend>> b = MakeBackend(params);
    if (!b.ok()) {
      result.status = "error";
      result.error = std::string(b.status().message());
      return result;
    }
    backends.push_back(std::move(*b));
  }
  result.kv_budget_bytes = 0;
  for (const auto& b : backends) result.kv_budget_bytes += b->Budget();

  Shared shared;
  const Clock::time_point start = Clock::now();
  std::optional<Clock::time_point> deadline;
  if (kind == BackendKind::kNaive) {
    deadline = start + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(o.naive_budget_s));
  }
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < o.threads; ++i) {
    workers.push_back(std::make_unique<Worker>(ctx, i, *backends[i], shared,
                                               start, deadline));
  }
  std::vector<absl::Status> statuses(static_cast<size_t>(o.threads));
  std::atomic<int> finished{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < o.threads; ++i) {
    threads.emplace_back([&, i] {
      absl::Status s = workers[static_cast<size_t>(i)]->Run();
      if (!s.ok()) shared.stop.store(true, std::memory_order_relaxed);
      statuses[static_cast<size_t>(i)] = std::move(s);
      finished.fetch_add(1, std::memory_order_release);
    });
  }
  const int64_t total = static_cast<int64_t>(ctx.requests.size());
  const double budget = kind == BackendKind::kNaive ? o.naive_budget_s : 0;
  while (finished.load(std::memory_order_acquire) < o.threads) {
    if (progress) {
      DrawProgress(result.backend, shared.requests_done.load(), total,
                   Seconds(Clock::now() - start), budget);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(progress ? 100 : 20));
  }
  for (std::thread& t : threads) t.join();
  const double wall = Seconds(Clock::now() - start);
  if (progress) std::fprintf(stderr, "\r\033[K");

  // The first real failure (a verification failure before anything else).
  for (const absl::Status& s : statuses) {
    if (s.ok() || absl::IsCancelled(s)) continue;
    const bool verification = absl::IsDataLoss(s);
    if (result.status == "ok" ||
        (verification && result.status != "verification_failed")) {
      result.status = verification ? "verification_failed" : "error";
      result.error = std::string(s.message());
    }
  }

  // One walk over the workers fills every figure.
  LatencyRecorder update_decode, update_prefill, update_draft, truncate, fork,
      match_prefix, release, compress;
  int64_t cache_ns = 0;
  for (const auto& w : workers) {
    const BackendResult& c = w->counts;
    result.complete &= c.complete;
    result.requests_completed += c.requests_completed;
    result.requests_cut += c.requests_cut;
    result.max_requests_in_flight += c.max_requests_in_flight;
    result.tokens_appended += c.tokens_appended;
    result.prompt_tokens_computed += c.prompt_tokens_computed;
    result.prefix_tokens_reused += c.prefix_tokens_reused;
    result.decode_tokens += c.decode_tokens;
    result.draft_tokens_rejected += c.draft_tokens_rejected;
    result.decode_steps += c.decode_steps;
    result.scheduler_steps += c.scheduler_steps;
    update_decode.Merge(w->update_decode);
    update_prefill.Merge(w->update_prefill);
    update_draft.Merge(w->update_draft);
    truncate.Merge(w->truncate);
    fork.Merge(w->fork);
    match_prefix.Merge(w->match_prefix);
    release.Merge(w->release);
    compress.Merge(w->compress);
    cache_ns += w->cache_ns;
  }
  for (const auto& b : backends) {
    const BackendCounters c = b->Counters();
    result.bytes_written += c.bytes_written;
    result.bytes_copied += c.bytes_copied;
    result.evictions += c.evictions;
    result.prefix_hits += c.prefix_hits;
    result.prefix_misses += c.prefix_misses;
    result.compressions += c.compressions;
    result.compressions_skipped += c.compressions_skipped;
    result.decompressions += c.decompressions;
    result.max_quant_error =
        std::max(result.max_quant_error, c.max_quant_error);
    result.tokens_verified += c.tokens_verified;
    result.quantized_blocks_verified += c.quantized_blocks_verified;
    result.validations += c.validations;
  }
  result.latencies = {Summarize("update_decode", update_decode),
                      Summarize("update_prefill", update_prefill),
                      Summarize("update_draft", update_draft),
                      Summarize("truncate", truncate),
                      Summarize("fork", fork),
                      Summarize("match_prefix", match_prefix),
                      Summarize("release", release),
                      Summarize("compress", compress)};
  result.wall_s = wall;
  result.cache_s = static_cast<double>(cache_ns) * 1e-9;
  if (result.cache_s > 0) {
    result.tokens_per_s_cache = result.tokens_appended / result.cache_s;
  }
  if (wall > 0) {
    result.tokens_per_s_wall = result.tokens_appended / wall;
    result.decode_steps_per_s = result.decode_steps / wall;
  }
  MergeMemory(workers, wall, result.kv_budget_bytes, result);
  result.scope = result.complete
                     ? "the whole workload"
                     : absl::StrFormat(
                           "the first %.1f s (--naive-budget): %d requests "
                           "completed, %d cut and verified at the cutoff",
                           o.naive_budget_s, result.requests_completed,
                           result.requests_cut);
  // The end of the run: every worker has finished and each shard's backend
  // is still alive here.
  if (!o.snapshot.empty() && kind == BackendKind::kPaged) {
    for (size_t i = 0; i < backends.size(); ++i) {
      const std::string path =
          i == 0 ? o.snapshot : absl::StrCat(o.snapshot, ".", i);
      if (absl::Status s = backends[i]->WriteSnapshot(path);
          !s.ok() && result.status == "ok") {
        result.status = "error";
        result.error = absl::StrCat("--snapshot: ", s.message());
      }
    }
  }
  //
  // Workers and backends are gone before the peak is read: it covers the
  // whole run of this process (one backend; main() forks one per backend).
  workers.clear();
  backends.clear();
  rusage usage{};
  if (getrusage(RUSAGE_SELF, &usage) == 0) {
    result.peak_rss_bytes = static_cast<int64_t>(usage.ru_maxrss) * 1024;
  }
  return result;
}

}  // namespace kvpage::stress
