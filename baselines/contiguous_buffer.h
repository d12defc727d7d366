// baselines/contiguous_buffer.h — what engines did before paging: one buffer
// per sequence, reserved whole for the longest sequence it may ever hold, laid
// out [layer][k|v][capacity tokens][token_elems]. kvpage-stress runs it beside
// the paged cache with the same workload.
//
// The buffer is an anonymous private mapping (MAP_NORESERVE): the kernel
// commits pages as they are written, so resident memory follows what is
// written, while HeldBytes() reports the reservation (what an accelerator
// would have to hold).
//
// Usage:
//   absl::StatusOr<ContiguousBuffer> buf = ContiguousBuffer::Create(
//       {.num_layers = 32, .token_elems = 1024, .capacity = 4096});
//   if (!buf.ok()) return buf.status();
//   absl::Status s = buf->Update(layer, k, v, seq_len);
//
// Elements are f16 or bf16 bit patterns, laid out [tokens][num_kv_heads]
// [head_dim] per layer, as kvpage's inputs; the same interface as NaiveCache
// (naive_cache.h). Move-only; thread-compatible.
#ifndef KVPAGE_BASELINES_CONTIGUOUS_BUFFER_H_
#define KVPAGE_BASELINES_CONTIGUOUS_BUFFER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvpage::baselines {

struct ContiguousShape {
  int num_layers = 0;
  int64_t token_elems = 0;  // num_kv_heads * head_dim
  int64_t capacity = 0;     // tokens per layer
  bool huge_pages = false;  // madvise(MADV_HUGEPAGE) the mapping
};

// Invariant: 0 <= Length(layer) <= capacity for every layer; the tokens of
// positions [0, Length(layer)) are the last ones written there.
class ContiguousBuffer {
 public:
  // Maps a buffer of 2 * num_layers * capacity * token_elems elements.
  // ResourceExhausted when the mapping fails. O(num_layers).
  [[nodiscard]] static absl::StatusOr<ContiguousBuffer> Create(
      const ContiguousShape& shape);

  ContiguousBuffer(ContiguousBuffer&& other) noexcept;
  ContiguousBuffer& operator=(ContiguousBuffer&& other) noexcept;
  ContiguousBuffer(const ContiguousBuffer&) = delete;
  ContiguousBuffer& operator=(const ContiguousBuffer&) = delete;
  ~ContiguousBuffer();

  // kvpage's update rule: `k` and `v` hold the n tokens at positions
  // [seq_len - n, seq_len) of `layer`, copied in place. InvalidArgument for
  // mismatched spans, a gap after Length(layer), or seq_len past the
  // capacity; nothing changes then. O(n).
  [[nodiscard]] absl::Status Update(int layer, absl::Span<const uint16_t> k,
                                    absl::Span<const uint16_t> v,
                                    int64_t seq_len);

  // Keeps the first `seq_len` tokens of every layer. O(num_layers).
  void Truncate(int64_t seq_len);

  // Makes every layer hold the tokens of `from` (same shape). Returns the
  // bytes copied. O(tokens of `from`).
  int64_t CopyFrom(const ContiguousBuffer& from);

  [[nodiscard]] int64_t Length(int layer) const {
    return length_[static_cast<size_t>(layer)];
  }
  // The stored tokens of `layer`: Length(layer) tokens of keys, of values.
  [[nodiscard]] absl::Span<const uint16_t> Keys(int layer) const;
  [[nodiscard]] absl::Span<const uint16_t> Values(int layer) const;
  // The reservation, whatever is written: 2 * num_layers * capacity *
  // token_elems * 2 bytes.
  [[nodiscard]] int64_t HeldBytes() const { return bytes_; }

 private:
  ContiguousBuffer(const ContiguousShape& shape, uint16_t* base, int64_t bytes);
  uint16_t* Plane(int layer, bool values) const;

  ContiguousShape shape_;
  uint16_t* base_ = nullptr;  // null once moved from
  int64_t bytes_ = 0;
  std::vector<int64_t> length_;  // per layer
};

}  // namespace kvpage::baselines

#endif  // KVPAGE_BASELINES_CONTIGUOUS_BUFFER_H_
