#include "tools/generate/sampler.h"

#include <algorithm>
#include <cmath>

namespace kvpage::generate {

int32_t ArgMax(absl::Span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) -
                              logits.begin());
}

void Softmax(absl::Span<const float> logits, double temperature,
             std::vector<double>& probs) {
  const double top = *std::max_element(logits.begin(), logits.end());
  probs.resize(logits.size());
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    probs[i] = std::exp((logits[i] - top) / temperature);
    total += probs[i];
  }
  for (double& p : probs) p /= total;
}

LogitSummary Summarize(absl::Span<const float> logits, int32_t token) {
  std::vector<double> p;
  Softmax(logits, 1.0, p);
  LogitSummary s;
  s.token = token;
  s.logprob = std::log(p[static_cast<size_t>(token)]);
  s.top_token = ArgMax(logits);
  s.top_prob = p[static_cast<size_t>(s.top_token)];
  for (double q : p) {
    if (q > 0) s.entropy -= q * std::log(q);
  }
  return s;
}

Sampler::Sampler(double temperature, uint64_t seed)
    : temperature_(temperature), rng_(seed) {}

double Sampler::Uniform() {
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

int32_t Sampler::Draw(const std::vector<double>& probs, double total) {
  const double u = Uniform() * total;
  double cdf = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    cdf += probs[i];
    if (u < cdf) return static_cast<int32_t>(i);
  }
  // Rounding left u at the very top: the last token with any probability.
  for (size_t i = probs.size(); i-- > 0;) {
    if (probs[i] > 0) return static_cast<int32_t>(i);
  }
  return 0;
}

int32_t Sampler::Sample(absl::Span<const float> logits) {
  if (temperature_ <= 0) return ArgMax(logits);
  Softmax(logits, temperature_, probs_);
  return Draw(probs_, 1.0);
}

bool Sampler::Accept(absl::Span<const float> logits, int32_t draft,
                     int32_t* replacement) {
  if (temperature_ <= 0) {
    *replacement = ArgMax(logits);
    return *replacement == draft;
  }
  Softmax(logits, temperature_, probs_);
  const double p = probs_[static_cast<size_t>(draft)];
  if (Uniform() < p) return true;
  probs_[static_cast<size_t>(draft)] = 0;
  *replacement = Draw(probs_, 1.0 - p);
  return false;
}

std::vector<int32_t> DraftFromHistory(absl::Span<const int32_t> history,
                                      int k) {
  const int64_t size = static_cast<int64_t>(history.size());
  for (int64_t n = std::min<int64_t>(3, size - 1); n >= 1; --n) {
    const absl::Span<const int32_t> tail = history.subspan(size - n);
    for (int64_t at = size - n - 1; at >= 0; --at) {
      if (std::equal(tail.begin(), tail.end(), history.begin() + at)) {
        const int64_t from = at + n;
        const int64_t take = std::min<int64_t>(k, size - from);
        return std::vector<int32_t>(history.begin() + from,
                                    history.begin() + from + take);
      }
    }
  }
  return {};
}

}  // namespace kvpage::generate
