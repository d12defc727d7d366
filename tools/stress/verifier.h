// tools/stress/verifier.h — how a backend's read-back is checked against the
// pattern every written token carries (workload.h): stored tokens exactly,
// compressed blocks within the README's relative-MSE bound of their format,
// and the visible positions as the overflow policy defines them. Each
// failure is DataLoss naming sequence, layer and position.
//
// One Verifier per backend; thread-compatible.
#ifndef KVPAGE_TOOLS_STRESS_VERIFIER_H_
#define KVPAGE_TOOLS_STRESS_VERIFIER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kvpage/kv_cache.h"
#include "tools/stress/backend.h"
#include "tools/stress/workload.h"

namespace kvpage::stress {

class Verifier {
 public:
  explicit Verifier(const Shape& shape);

  // Positions [0, length) of one layer laid out contiguously, K and V
  // planes of token_elems per position, exactly. O(length * token_elems).
  [[nodiscard]] absl::Status Rows(const SeqLabel& label, int layer,
                                  const Lineage& lineage, int64_t length,
                                  const uint16_t* k, const uint16_t* v);

  // One stored token, exactly. O(token_elems).
  [[nodiscard]] absl::Status Row(const SeqLabel& label, int layer,
                                 int64_t position, uint64_t stream,
                                 const uint16_t* k, const uint16_t* v);

  // One compressed block (its tokens dequantized into k and v): relative MSE
  // within the bound of its format. O(block tokens * token_elems).
  [[nodiscard]] absl::Status Quantized(const SeqLabel& label, int layer,
                                       const BlockView& block,
                                       const Lineage& lineage, const float* k,
                                       const float* v);

  // The visible positions of a layer of `length` tokens, as the policy
  // defines them. O(positions).
  [[nodiscard]] absl::Status Positions(const SeqLabel& label, int layer,
                                       int64_t length,
                                       const std::vector<int64_t>& got) const;

  // What was verified (tokens_verified, quantized_blocks_verified,
  // validations); the backend adds its own counters.
  BackendCounters counters;

 private:
  Shape shape_;
  PatternTable table_;
  std::vector<uint16_t> k_, v_;  // the pattern of the token being compared
};

// DataLoss: `layer` of the sequence holds `got` tokens where the workload
// wrote `want`.
[[nodiscard]] absl::Status LengthMismatch(const SeqLabel& label, int layer,
                                          int64_t got, int64_t want);

}  // namespace kvpage::stress

#endif  // KVPAGE_TOOLS_STRESS_VERIFIER_H_
