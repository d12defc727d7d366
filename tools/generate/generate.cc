#include "tools/generate/generate.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_format.h"

namespace kvpage::generate {
namespace {

// One live sequence of the decode loop.
struct Live {
  GenerateResult::Sample* out;
  Sampler sampler;
  std::vector<int32_t> history;  // prompt and generated tokens
  int32_t pending = 0;           // sampled, not yet run through the model
  std::vector<int32_t> input;    // this step's tokens: pending, then drafts
};

absl::Status Annotate(const absl::Status& s, const std::string& where) {
  return absl::Status(s.code(), absl::StrCat(where, ": ", s.message()));
}

absl::Status CheckOptions(const GenerateOptions& o) {
  if (o.prompt.empty()) return absl::InvalidArgumentError("empty prompt");
  for (const std::vector<int32_t>& p : o.prompts) {
    if (p.empty()) return absl::InvalidArgumentError("empty prompt");
  }
  if (o.steps < 1 || o.requests < 1 || o.samples < 1 || o.prefill_chunk < 1 ||
      o.speculate < 0 || o.temperature < 0 || o.compress_every < 0) {
    return absl::InvalidArgumentError(
        "steps, requests, samples and prefill_chunk must be positive; "
        "speculate, temperature and compress_every not negative");
  }
  return absl::OkStatus();
}

// Records token `token` drawn from `logits` as the next output of `live`.
void Emit(const GenerateOptions& o, absl::Span<const float> logits,
          int32_t token, Live& live) {
  live.out->tokens.push_back(token);
  live.history.push_back(token);
  if (o.keep_logits)
    live.out->logits.emplace_back(logits.begin(), logits.end());
  if (o.summarize) live.out->summaries.push_back(Summarize(logits, token));
  live.pending = token;
}

// Prefills request `r`'s prompt on the new sequence `seq` (after a
// prefix-cache lookup, and then publishing it) and returns the logits of its
// last token.
absl::StatusOr<std::vector<float>> Prefill(Decoder& decoder, KvStore& store,
                                           const GenerateOptions& o,
                                           absl::Span<const int32_t> prompt,
                                           SeqHandle seq,
                                           GenerateResult& result) {
  const int64_t size = static_cast<int64_t>(prompt.size());
  int64_t matched = 0;
  if (o.prefix_cache) {
    // The last prompt token is always computed: its logits choose the first
    // generated token.
    absl::StatusOr<int64_t> m = store.MatchPrefix(seq, prompt.first(size - 1));
    if (!m.ok()) return m.status();
    matched = *m;
    result.prompt_tokens_matched += matched;
  }
  std::vector<std::vector<float>> logits;
  for (int64_t done = matched; done < size;) {
    const int64_t n = std::min(o.prefill_chunk, size - done);
    const StepInput in{
        .seq = seq, .tokens = prompt.subspan(done, n), .start = done};
    if (absl::Status s = decoder.Forward({&in, 1}, logits); !s.ok()) return s;
    ++result.forward_passes;
    result.prompt_tokens_computed += n;
    done += n;
  }
  if (o.prefix_cache) {
    // MatchPrefix told the cache the ids it matched; the rest follow, and
    // the prompt's full blocks become shareable.
    if (absl::Status s = store.AppendTokens(seq, prompt.subspan(matched));
        !s.ok()) {
      return s;
    }
  }
  return std::move(logits[0]);
}

// Runs decode steps until every sample has its tokens.
absl::Status DecodeLoop(Decoder& decoder, KvStore& store,
                        const GenerateOptions& o, std::vector<Live>& live,
                        GenerateResult& result);

// Accepts the longest run of live.input's drafts that the model's logits
// confirm and emits them, then one token of its own; returns the tokens of
// the step that stay in the cache.
int64_t Verify(const GenerateOptions& o, const std::vector<float>& logits,
               int vocab, Live& live) {
  const int64_t drafts = static_cast<int64_t>(live.input.size()) - 1;
  live.out->drafted += drafts;
  int64_t kept = 1;  // the pending token
  for (int64_t j = 0; j <= drafts; ++j) {
    const absl::Span<const float> row(logits.data() + j * vocab,
                                      static_cast<size_t>(vocab));
    if (j == drafts) {
      Emit(o, row, live.sampler.Sample(row), live);
      break;
    }
    const int32_t draft = live.input[static_cast<size_t>(j + 1)];
    int32_t replacement = 0;
    if (!live.sampler.Accept(row, draft, &replacement)) {
      Emit(o, row, replacement, live);
      break;
    }
    ++live.out->accepted;
    ++kept;
    Emit(o, row, draft, live);
  }
  return kept;
}

absl::Status DecodeLoop(Decoder& decoder, KvStore& store,
                        const GenerateOptions& o, std::vector<Live>& live,
                        GenerateResult& result) {
  const int vocab = decoder.model().shape().vocab_size;
  const int64_t total = o.steps * static_cast<int64_t>(live.size());
  int64_t done = static_cast<int64_t>(live.size());
  std::vector<Live*> active;
  std::vector<StepInput> batch;
  std::vector<std::vector<float>> logits;
  for (int64_t step = 1;; ++step) {
    active.clear();
    batch.clear();
    for (Live& l : live) {
      const int64_t left = o.steps - static_cast<int64_t>(l.out->tokens.size());
      if (left <= 0) continue;
      l.input.assign(1, l.pending);
      if (o.speculate > 0) {
        const std::vector<int32_t> drafts = DraftFromHistory(
            l.history,
            static_cast<int>(std::min<int64_t>(o.speculate, left - 1)));
        l.input.insert(l.input.end(), drafts.begin(), drafts.end());
      }
      active.push_back(&l);
      batch.push_back({.seq = l.out->seq,
                       .tokens = l.input,
                       .start = static_cast<int64_t>(l.history.size()) - 1,
                       .all_logits = o.speculate > 0});
    }
    if (active.empty()) return absl::OkStatus();
    if (absl::Status s = decoder.Forward(batch, logits); !s.ok()) {
      return Annotate(s, absl::StrCat("decode step ", step));
    }
    ++result.forward_passes;
    for (size_t i = 0; i < active.size(); ++i) {
      Live& l = *active[i];
      const int64_t before = static_cast<int64_t>(l.out->tokens.size());
      if (o.speculate == 0) {
        Emit(o, logits[i], l.sampler.Sample(logits[i]), l);
      } else {
        const int64_t kept = Verify(o, logits[i], vocab, l);
        if (kept < static_cast<int64_t>(l.input.size())) {
          if (absl::Status s =
                  store.Truncate(l.out->seq, batch[i].start + kept);
              !s.ok()) {
            return Annotate(s, absl::StrCat("rollback at step ", step));
          }
        }
      }
      done += static_cast<int64_t>(l.out->tokens.size()) - before;
      if (o.compress_every > 0 && step % o.compress_every == 0) {
        if (absl::Status s = store.CompressCold(l.out->seq); !s.ok()) {
          return Annotate(s, absl::StrCat("compression at step ", step));
        }
      }
    }
    if (o.progress) o.progress(done, total);
  }
}

}  // namespace

absl::StatusOr<GenerateResult> Generate(Decoder& decoder, KvStore& store,
                                        const GenerateOptions& o) {
  if (absl::Status s = CheckOptions(o); !s.ok()) return s;
  const auto t0 = std::chrono::steady_clock::now();
  GenerateResult result;
  result.samples.resize(static_cast<size_t>(o.requests) * o.samples);
  std::vector<Live> live;
  // Requests arrive one after another: each prompt is prefilled (and, with
  // the prefix cache, published) before the next is looked up.
  for (int r = 0; r < o.requests; ++r) {
    absl::StatusOr<SeqHandle> seq = store.Add();
    if (!seq.ok()) return Annotate(seq.status(), absl::StrCat("request ", r));
    const std::vector<int32_t>& prompt =
        o.prompts.empty()
            ? o.prompt
            : o.prompts[static_cast<size_t>(r) % o.prompts.size()];
    absl::StatusOr<std::vector<float>> logits =
        Prefill(decoder, store, o, prompt, *seq, result);
    if (!logits.ok()) {
      return Annotate(logits.status(), absl::StrCat("prefill of request ", r));
    }
    for (int k = 0; k < o.samples; ++k) {
      SeqHandle handle = *seq;
      if (k > 0) {
        absl::StatusOr<SeqHandle> child = store.Fork(*seq);
        if (!child.ok()) {
          return Annotate(child.status(), absl::StrCat("fork of request ", r));
        }
        handle = *child;
      }
      GenerateResult::Sample& out =
          result.samples[static_cast<size_t>(r) * o.samples + k];
      out = {.request = r, .sample = k, .seq = handle};
      live.push_back(
          {.out = &out,
           .sampler = Sampler(o.temperature, o.seed + 1000003ull * r + k),
           .history = prompt});
      Emit(o, *logits, live.back().sampler.Sample(*logits), live.back());
    }
  }
  if (absl::Status s = DecodeLoop(decoder, store, o, live, result); !s.ok()) {
    return s;
  }
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  return result;
}

}  // namespace kvpage::generate
