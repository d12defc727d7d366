// tools/generate/sampler.h — choosing the next token from logits (greedy or
// at a temperature, from a seeded generator that gives the same tokens on
// every machine), summarising a distribution, and drafting tokens for
// speculative decoding by looking the recent tokens up in the history.
//
// Thread safety: a Sampler is thread-compatible; the functions are pure.
#ifndef KVPAGE_TOOLS_GENERATE_SAMPLER_H_
#define KVPAGE_TOOLS_GENERATE_SAMPLER_H_

#include <cstdint>
#include <random>
#include <vector>

#include "absl/types/span.h"

namespace kvpage::generate {

// The largest logit's index (the first, on ties).
[[nodiscard]] int32_t ArgMax(absl::Span<const float> logits);

// softmax(logits / temperature) into `probs` (temperature > 0).
void Softmax(absl::Span<const float> logits, double temperature,
             std::vector<double>& probs);

// What --json prints of one step's distribution (temperature 1).
struct LogitSummary {
  int32_t token = 0;      // the token taken
  double logprob = 0;     // its log-probability
  int32_t top_token = 0;  // the most likely token
  double top_prob = 0;
  double entropy = 0;  // nats
};
[[nodiscard]] LogitSummary Summarize(absl::Span<const float> logits,
                                     int32_t token);

// Draws tokens: greedy at temperature 0, else from softmax(logits / T).
class Sampler {
 public:
  Sampler(double temperature, uint64_t seed);

  [[nodiscard]] int32_t Sample(absl::Span<const float> logits);
  // Speculative sampling of a draft proposed with certainty: keeps `draft`
  // with probability p(draft) (greedy: when it is the argmax); otherwise
  // `*replacement` receives a token drawn from p without the draft.
  [[nodiscard]] bool Accept(absl::Span<const float> logits, int32_t draft,
                            int32_t* replacement);
  double temperature() const { return temperature_; }

 private:
  double Uniform();  // [0, 1), 53 bits
  int32_t Draw(const std::vector<double>& probs, double total);

  double temperature_;
  std::mt19937_64 rng_;
  std::vector<double> probs_;
};

// Prompt-lookup drafting: finds the latest earlier place in `history` where
// its last n tokens (n = 3, then 2, then 1) occurred and proposes up to `k`
// tokens that followed them. Empty when none occurred.
[[nodiscard]] std::vector<int32_t> DraftFromHistory(
    absl::Span<const int32_t> history, int k);

}  // namespace kvpage::generate

#endif  // KVPAGE_TOOLS_GENERATE_SAMPLER_H_
