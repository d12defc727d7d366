// tests/policy_model.h — the update rule of kv_cache.h applied position by
// position, for the test suites' reference models (differential_test.cc, the
// API fuzzer's api_model.cc): a layer is a vector of positions [0, length),
// each visible or evicted, independent of how kvpage lays them out in
// blocks. Here: each layer's policy, the status an update must return, and
// the overflow rules.
#ifndef KVPAGE_TESTS_POLICY_MODEL_H_
#define KVPAGE_TESTS_POLICY_MODEL_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kvpage/config.h"

namespace kvpage::testing {

// Each layer's policy: the cache-wide one, or its override.
inline std::vector<LayerPolicy> LayerPolicies(const CacheConfig& c) {
  std::vector<LayerPolicy> policies(static_cast<size_t>(c.num_layers),
                                    {.overflow = c.overflow,
                                     .max_seq_len = c.max_seq_len,
                                     .sink_tokens = c.sink_tokens,
                                     .truncate_to = c.truncate_to});
  for (const LayerPolicy& p : c.layer_policies) {
    policies[static_cast<size_t>(p.layer)] = p;
  }
  return policies;
}

// True when rolling a layer back to `seq_len` would leave an evicted
// position as its newest: refused (OutOfRange) by Update and Truncate.
template <typename Position>
bool EndsOnEvicted(const std::vector<Position>& positions, int64_t seq_len) {
  return static_cast<int64_t>(positions.size()) > seq_len && seq_len > 0 &&
         !positions[static_cast<size_t>(seq_len - 1)].visible;
}

// An Update call as a model sees it, mistakes included.
struct UpdateCall {
  SeqId seq = 0;
  int layer = 0;
  int64_t seq_len = 0, n = 0, v_tokens = 0;
  DType k_dtype = DType::kF32, v_dtype = DType::kF32;
  bool k_null = false, v_null = false;
};

// The status the update rule gives `call`, its checks in the documented
// order; kOk where only the pool can refuse. `known` says whether the
// sequence exists; `positions_of(layer)` returns its layer's positions (a
// std::vector of something with a bool `visible`), asked only for a layer
// in range.
template <typename PositionsOf>
absl::StatusCode PredictUpdate(const CacheConfig& c,
                               const std::vector<LayerPolicy>& policies,
                               bool known, const UpdateCall& call,
                               const PositionsOf& positions_of) {
  const int64_t elems = int64_t{c.num_kv_heads} * c.head_dim;
  if (!known) return absl::StatusCode::kNotFound;
  if (call.layer < 0 || call.layer >= c.num_layers) {
    return absl::StatusCode::kInvalidArgument;
  }
  const int64_t n = call.n;
  if (call.v_tokens != n || n < 0) return absl::StatusCode::kInvalidArgument;
  for (DType d : {call.k_dtype, call.v_dtype}) {
    if (d != DType::kF32 && d != c.dtype) {
      return absl::StatusCode::kInvalidArgument;
    }
  }
  if (n > 0 && (call.k_null || call.v_null)) {
    return absl::StatusCode::kInvalidArgument;
  }
  if (n > (int64_t{1} << 62) / (elems * 4)) {
    return absl::StatusCode::kInvalidArgument;
  }
  if (call.seq_len < n) return absl::StatusCode::kInvalidArgument;
  const auto& positions = positions_of(call.layer);
  const int64_t len = static_cast<int64_t>(positions.size());
  const int64_t start = call.seq_len - n;
  if (start > len) return absl::StatusCode::kInvalidArgument;
  for (int64_t p = start; p < std::min(call.seq_len, len); ++p) {
    if (!positions[static_cast<size_t>(p)].visible) {
      return absl::StatusCode::kOutOfRange;
    }
  }
  if (EndsOnEvicted(positions, call.seq_len)) {
    return absl::StatusCode::kOutOfRange;
  }
  const LayerPolicy& policy = policies[static_cast<size_t>(call.layer)];
  if (policy.overflow == OverflowPolicy::kError &&
      call.seq_len > policy.max_seq_len) {
    return absl::StatusCode::kResourceExhausted;
  }
  return absl::StatusCode::kOk;
}

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
