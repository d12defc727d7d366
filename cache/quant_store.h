// cache/quant_store.h — the quantized pool: where compressed blocks live.
//
// The pool is made of cells of cell_bytes(): a compressed block takes one
// cell (its K part, then its V part), or two in mixed mode when it is int8
// (the first holds the K part, its partner the V part). A table refers to a
// compressed block by its first cell (QuantRef in cache/block_table.h).
// With layer groups a cell has a slot of slot_bytes() per layer slot of a
// hot block (width()), as a hot block has: a group's block is compressed
// whole, every layer's part into its slot, in one format.
//
// The store compresses a hot block's visible slots into new cells and
// decompresses them back; it never touches tables or the hot pool: the
// caller swaps the table entry and releases the hot block.
//
// Invariants (Validate() and VerifySnapshot check them):
//   ref_count(c) == table entries holding c (a partner with its first cell)
//   in mixed mode an int8 block has a partner, an int4 block none; outside
//     mixed mode no block has one
//   int8_blocks() + int4_blocks() == distinct compressed blocks held
//
// Thread safety: thread-compatible, owned by its KVCache.
#ifndef KVPAGE_CACHE_QUANT_STORE_H_
#define KVPAGE_CACHE_QUANT_STORE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "allocator/block_pool.h"
#include "allocator/quantize.h"
#include "kvpage/config.h"

namespace kvpage::internal {

class QuantStore {
 public:
  // Where one layer's part of a hot block lies, on the host: its K and V
  // regions (block_tokens slots each).
  struct HotParts {
    const std::byte* k = nullptr;
    const std::byte* v = nullptr;
  };

  // The store of `config`, whose compression is enabled and which passed
  // ValidateConfig. ResourceExhausted when its memory cannot be mapped.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<QuantStore>> Create(
      const CacheConfig& config);

  // Compresses token slots [first, first + count) of a hot block whose
  // layers' parts are `layers` (at most width(); layer i into slot i) into
  // one format: int4 in mixed mode when every layer's error is within the
  // bound, else int8. Returns the block's first cell, or kNoBlock (counted
  // in compressions_skipped) when the pool has no room or a visible slot
  // holds a value the formats cannot represent (NaN, infinity,
  // |x| > 65504). O(block size * layers).
  [[nodiscard]] BlockId Compress(absl::Span<const HotParts> layers, int first,
                                 int count);

  // Writes layer slot `slot` of block `cell` decoded into `dtype` (a hot
  // block's K and V regions, block_tokens slots each). O(block size).
  void Decode(BlockId cell, int slot, DType dtype, std::byte* k_out,
              std::byte* v_out) const;
  // Drops the table's hold on a block decoded to be made hot again, and
  // counts a decompression.
  void Decompressed(BlockId cell);

  // Whether token slots [first, first + count) of every part hold only
  // values the formats represent. O(block size * layers).
  bool Representable(absl::Span<const HotParts> layers, int first,
                     int count) const;

  // A table's hold on a compressed block (both cells in mixed int8).
  void Retain(BlockId cell);
  void Release(BlockId cell);

  // Compressed blocks the pool can still take at worst (two cells each in
  // mixed mode).
  int64_t room() const;

  QuantFormat format(BlockId cell) const { return format_[cell]; }
  BlockId partner(BlockId cell) const { return partner_[cell]; }
  float error(BlockId cell) const { return error_[cell]; }
  // Cells a block takes: 1, or 2 for an int8 block in mixed mode.
  int cells(BlockId cell) const { return partner_[cell] == kNoBlock ? 1 : 2; }
  const QuantLayout& layout(QuantFormat f) const {
    return f == QuantFormat::kInt8 ? int8_layout_ : int4_layout_;
  }
  const QuantShape& shape() const { return shape_; }
  // Layer slot `slot`'s K and V parts of block `cell`.
  const std::byte* k_part(BlockId cell, int slot) const {
    return base_ + cell * cell_bytes_ + slot * slot_bytes_;
  }
  const std::byte* v_part(BlockId cell, int slot) const;
  // The whole cell: width() slots of slot_bytes(), cell_bytes() in all.
  const std::byte* cell_data(BlockId cell) const {
    return base_ + cell * cell_bytes_;
  }

  const BlockPool& pool() const { return *pool_; }
  int64_t cell_bytes() const { return cell_bytes_; }
  int64_t slot_bytes() const { return slot_bytes_; }
  int width() const { return width_; }
  int64_t int8_blocks() const { return int8_blocks_; }
  int64_t int4_blocks() const { return int4_blocks_; }
  int64_t compressions_applied() const { return compressions_applied_; }
  int64_t compressions_skipped() const { return compressions_skipped_; }
  int64_t decompressions() const { return decompressions_; }
  double max_error() const { return error_max_; }
  double mean_error() const {
    return compressions_applied_ == 0
               ? 0.0
               : error_sum_ / static_cast<double>(compressions_applied_);
  }

 private:
  QuantStore() = default;
  // Quantizes into `cell` (and a partner in mixed int8); false when a
  // value is out of range or a mixed block needs a partner the pool has
  // not.
  bool Encode(absl::Span<const HotParts> layers, int first, int count,
              BlockId cell);
  // Quantizes every layer into slot i of `k_cell`, V parts into `v_cell`'s
  // (the same cell unless int8 in mixed mode); returns the largest error.
  double EncodeAs(QuantFormat format, absl::Span<const HotParts> layers,
                  int first, int count, BlockId k_cell, BlockId v_cell);

  DType dtype_ = DType::kF16;
  int64_t token_elems_ = 0, token_bytes_ = 0;
  bool measure_error_ = false;
  bool mixed_ = false;  // max_rel_error > 0
  double max_rel_error_ = 0;
  QuantFormat fixed_format_ = QuantFormat::kInt8;
  QuantShape shape_{};
  QuantLayout int8_layout_, int4_layout_;
  int64_t cell_bytes_ = 0;  // width_ slots
  int64_t slot_bytes_ = 0;
  int width_ = 1;
  // Declared before `local_` so that the cache is flushed before the pool
  // goes away.
  std::unique_ptr<BlockPool> pool_;
  std::unique_ptr<BlockPool::LocalCache> local_;
  std::byte* base_ = nullptr;
  std::vector<QuantFormat> format_;  // per first cell
  std::vector<BlockId> partner_;     // V cell of a two-cell block, or kNoBlock
  std::vector<float> error_;         // per first cell, relative MSE
  int64_t int8_blocks_ = 0, int4_blocks_ = 0;
  int64_t compressions_applied_ = 0, compressions_skipped_ = 0;
  int64_t decompressions_ = 0;
  double error_sum_ = 0, error_max_ = 0;
};

}  // namespace kvpage::internal

#endif  // KVPAGE_CACHE_QUANT_STORE_H_
