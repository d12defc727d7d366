// kvpage/attention.h — reading a LayerView as f32: Dequantize() for one block
// of any format, and Attend(), a reference decode attention over hot and
// compressed blocks alike (what kvpage's tests and benchmarks use to measure
// what compression does to attention; not a production kernel).
//
// Usage:
//   absl::StatusOr<kvpage::LayerView> view = cache->View(seq, layer);
//   std::vector<float> out(query.size());
//   absl::Status s = kvpage::Attend(*view, query, out);
//
// Thread safety: pure functions over a view; a view is valid until the next
// non-const call on its cache.
#ifndef KVPAGE_ATTENTION_H_
#define KVPAGE_ATTENTION_H_

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kvpage/kv_cache.h"

namespace kvpage {

// Writes the valid slots of `block` (a block of `view`) as f32 into k_out and
// v_out, each [block.tokens][num_kv_heads][head_dim]. InvalidArgument when an
// output is too small; FailedPrecondition when the view is not host memory.
// O(block.tokens * num_kv_heads * head_dim).
[[nodiscard]] absl::Status Dequantize(const LayerView& view,
                                      const BlockView& block,
                                      absl::Span<float> k_out,
                                      absl::Span<float> v_out);

// One decode step of scaled dot-product attention for one query token:
// `query` is [num_q_heads][head_dim] with num_q_heads a multiple of
// num_kv_heads (grouped-query attention: query head h reads kv head
// h / (num_q_heads / num_kv_heads)); `out` receives [num_q_heads][head_dim].
// Scores are q.k / sqrt(head_dim), softmax over every visible token of the
// view. InvalidArgument for mismatched sizes or an empty view;
// FailedPrecondition when the view is not host memory.
// O(tokens * num_q_heads * head_dim).
[[nodiscard]] absl::Status Attend(const LayerView& view,
                                  absl::Span<const float> query,
                                  absl::Span<float> out);

}  // namespace kvpage

#endif  // KVPAGE_ATTENTION_H_
