// tools/generate/generate.h — generation as a serving engine runs it: every
// request's prompt prefilled in chunks (after a prefix-cache lookup when
// asked), `samples` forks of each after its prompt, then decode steps that
// advance every live sequence by one token (or a verified run of drafted
// tokens) in one batched forward pass.
//
// Usage:
//   GenerateOptions options{.prompt = {1}, .steps = 64};
//   absl::StatusOr<GenerateResult> out = Generate(decoder, store, options);
//
// Thread safety: thread-compatible (it drives one decoder and its store).
#ifndef KVPAGE_TOOLS_GENERATE_GENERATE_H_
#define KVPAGE_TOOLS_GENERATE_GENERATE_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "tools/generate/decoder.h"
#include "tools/generate/sampler.h"

namespace kvpage::generate {

struct GenerateOptions {
  std::vector<int32_t> prompt = {1};  // every request's prompt (BOS is 1)
  // When not empty, request r's prompt is prompts[r % prompts.size()]
  // instead: requests of different lengths in one batch.
  std::vector<std::vector<int32_t>> prompts;
  int64_t steps = 64;  // tokens each sample generates
  int requests = 1;
  int samples = 1;             // sequences per request, forked after the prompt
  int64_t prefill_chunk = 64;  // prompt tokens per forward pass
  bool prefix_cache = false;   // look prompts up (MatchPrefix), publish them
  int speculate = 0;           // tokens drafted per step (0: none)
  double temperature = 0;      // 0: greedy
  uint64_t seed = 1;           // sample s of request r draws from seed + ...
  int64_t compress_every = 0;  // > 0: PagedStore::CompressCold every N steps
  bool keep_logits = false;    // GenerateResult::Sample::logits
  bool summarize = false;      // GenerateResult::Sample::summaries
  // Called after each decode step with the tokens generated so far and the
  // tokens the run will generate.
  std::function<void(int64_t done, int64_t total)> progress;
};

struct GenerateResult {
  struct Sample {
    int request = 0, sample = 0;
    SeqHandle seq = 0;                       // still in the store
    std::vector<int32_t> tokens;             // generated, after the prompt
    std::vector<std::vector<float>> logits;  // per generated token
    std::vector<LogitSummary> summaries;     // per generated token
    int64_t drafted = 0, accepted = 0;       // speculative decoding
  };
  std::vector<Sample> samples;         // request-major
  int64_t prompt_tokens_computed = 0;  // prompt tokens run through the model
  int64_t prompt_tokens_matched = 0;   // prompt tokens the prefix cache held
  int64_t forward_passes = 0;
  double seconds = 0;  // wall time of the whole run
};

// Runs `options` on `decoder` (whose store is `store`). Sequences stay in the
// store (GenerateResult::Sample::seq) for the caller to inspect and remove.
// InvalidArgument for options out of range; a store or decoder error as it
// comes, naming the request and the step.
[[nodiscard]] absl::StatusOr<GenerateResult> Generate(
    Decoder& decoder, KvStore& store, const GenerateOptions& options);

}  // namespace kvpage::generate

#endif  // KVPAGE_TOOLS_GENERATE_GENERATE_H_
