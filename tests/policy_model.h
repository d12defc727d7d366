// tests/policy_model.h — the overflow rules applied position by position, for
// the test suites' reference models (differential_test.cc, the API fuzzer's
// api_model.cc): a layer is a vector of positions [0, length), each visible
// or evicted, independent of how kvpage lays them out in blocks.
#ifndef KVPAGE_TESTS_POLICY_MODEL_H_
#define KVPAGE_TESTS_POLICY_MODEL_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kvpage/config.h"

namespace kvpage::testing {

// The sink positions a policy pins (none under kError).
inline int64_t ModelSinks(const LayerPolicy& p) {
  return p.overflow == OverflowPolicy::kError ? 0 : p.sink_tokens;
}

// Positions whose `visible` is set.
template <typename Position>
int64_t CountVisible(const std::vector<Position>& positions) {
  return std::count_if(positions.begin(), positions.end(),
                       [](const Position& p) { return p.visible; });
}

// Evicts the oldest visible non-sink positions as the policy says (each
// becomes a default Position with `visible` false); returns how many.
template <typename Position>
int64_t EvictOldest(const LayerPolicy& p, std::vector<Position>& positions) {
  const int64_t visible = CountVisible(positions);
  if (p.overflow == OverflowPolicy::kError || visible <= p.max_seq_len) {
    return 0;
  }
  const int64_t keep = p.overflow == OverflowPolicy::kTruncate
                           ? EffectiveTruncateTo(p.max_seq_len, p.truncate_to)
                           : p.max_seq_len;
  int64_t evicted = 0;
  for (size_t i = static_cast<size_t>(ModelSinks(p));
       i < positions.size() && visible - evicted > keep; ++i) {
    if (positions[i].visible) {
      positions[i] = Position{};
      positions[i].visible = false;
      ++evicted;
    }
  }
  return evicted;
}

}  // namespace kvpage::testing

#endif  // KVPAGE_TESTS_POLICY_MODEL_H_
