#include "cache/quant_store.h"

#include <algorithm>

#include "allocator/convert.h"
#include "allocator/host_arena.h"
#include "cache/quant_pool_config.h"

namespace kvpage::internal {

absl::StatusOr<std::unique_ptr<QuantStore>> QuantStore::Create(
    const CacheConfig& config) {
  const CompressionConfig& q = config.compression;
  std::unique_ptr<QuantStore> store(new QuantStore());
  store->dtype_ = config.dtype;
  store->token_elems_ = int64_t{config.num_kv_heads} * config.head_dim;
  store->token_bytes_ = store->token_elems_ * DTypeSize(config.dtype);
  store->mixed_ = q.max_rel_error > 0;
  store->max_rel_error_ = q.max_rel_error;
  // The error sums cost a third of a compression: only when asked for.
  store->measure_error_ = store->mixed_ || q.measure_error;
  store->fixed_format_ =
      q.bits == QuantBits::kInt4 ? QuantFormat::kInt4 : QuantFormat::kInt8;
  store->shape_ = {.block_tokens = config.block_tokens,
                   .num_kv_heads = config.num_kv_heads,
                   .head_dim = config.head_dim,
                   .group_size = q.group_size};
  // Only the formats this cache writes: int4 needs an even head_dim, which
  // an int8-only cache does not.
  if (store->mixed_ || store->fixed_format_ == QuantFormat::kInt8) {
    store->int8_layout_ = QuantLayout::For(QuantFormat::kInt8, store->shape_);
  }
  if (store->mixed_ || store->fixed_format_ == QuantFormat::kInt4) {
    store->int4_layout_ = QuantLayout::For(QuantFormat::kInt4, store->shape_);
  }
  store->slot_bytes_ = QuantSlotBytes(config);
  store->width_ = LayerGroupWidth(config);
  store->cell_bytes_ = store->slot_bytes_ * store->width_;
  absl::StatusOr<std::unique_ptr<HostArena>> arena = HostArena::Create(
      q.quant_cells, store->cell_bytes_,
      {.prefault = config.prefault, .huge_pages = config.huge_pages});
  if (!arena.ok()) return arena.status();
  absl::StatusOr<std::unique_ptr<BlockPool>> pool =
      BlockPool::Create(*std::move(arena));
  if (!pool.ok()) return pool.status();
  store->pool_ = *std::move(pool);
  store->local_ = std::make_unique<BlockPool::LocalCache>(*store->pool_);
  store->base_ = store->pool_->storage().host_base();
  const auto cells = static_cast<size_t>(q.quant_cells);
  store->format_.assign(cells, QuantFormat::kInt8);
  store->partner_.assign(cells, kNoBlock);
  store->error_.assign(cells, 0.0f);
  return store;
}

const std::byte* QuantStore::v_part(BlockId cell, int slot) const {
  return partner_[cell] != kNoBlock
             ? k_part(partner_[cell], slot)
             : k_part(cell, slot) + layout(format_[cell]).k_part_bytes;
}

bool QuantStore::Representable(absl::Span<const HotParts> layers, int first,
                               int count) const {
  const int64_t offset = first * token_bytes_;
  const int64_t elems = count * token_elems_;
  for (const HotParts& p : layers) {
    if (!AllWithinQuantRange(p.k + offset, dtype_, elems) ||
        !AllWithinQuantRange(p.v + offset, dtype_, elems)) {
      return false;
    }
  }
  return true;
}

BlockId QuantStore::Compress(absl::Span<const HotParts> layers, int first,
                             int count) {
  const BlockId cell = local_->AllocateOne();
  if (cell == kNoBlock) {
    ++compressions_skipped_;
    return kNoBlock;
  }
  if (!Encode(layers, first, count, cell)) {
    local_->Release(cell);
    ++compressions_skipped_;
    return kNoBlock;
  }
  return cell;
}

double QuantStore::EncodeAs(QuantFormat format,
                            absl::Span<const HotParts> layers, int first,
                            int count, BlockId k_cell, BlockId v_cell) {
  const QuantizeOptions options{.measure_error = measure_error_};
  const int64_t v_offset = k_cell == v_cell ? layout(format).k_part_bytes : 0;
  double worst = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    const int slot = static_cast<int>(i);
    std::byte* k_out = base_ + k_cell * cell_bytes_ + slot * slot_bytes_;
    std::byte* v_out =
        base_ + v_cell * cell_bytes_ + slot * slot_bytes_ + v_offset;
    const QuantError error =
        QuantizeBlock(format, shape_, dtype_, layers[i].k, layers[i].v, first,
                      count, k_out, v_out, options);
    worst = std::max(worst, error.rel());
  }
  return worst;
}

bool QuantStore::Encode(absl::Span<const HotParts> layers, int first, int count,
                        BlockId cell) {
  QuantFormat format = mixed_ ? QuantFormat::kInt4 : fixed_format_;
  BlockId partner = kNoBlock;
  double error = EncodeAs(format, layers, first, count, cell, cell);
  // The range check runs after the kernel, which has brought the block
  // into the caches while its prefetches overlapped the reads with its
  // work: checked first, the block's trip from DRAM came before the
  // kernel's, and a default int8 compression from DRAM fell from 0.80x to
  // 0.66x memcpy (bench/compress_bench.cc); checked after, it costs a pass
  // over L2. A block that fails it wasted a compression: such blocks are
  // rare.
  if (!Representable(layers, first, count)) return false;
  // A group's block takes one format: int8 when any layer needs it, so that
  // every layer stays within the bound.
  if (mixed_ && error > max_rel_error_) {
    partner = local_->AllocateOne();
    if (partner == kNoBlock) return false;  // no room for int8: stays hot
    format = QuantFormat::kInt8;
    error = EncodeAs(format, layers, first, count, cell, partner);
  }
  format_[cell] = format;
  partner_[cell] = partner;
  error_[cell] = static_cast<float>(error);
  (format == QuantFormat::kInt8 ? int8_blocks_ : int4_blocks_) += 1;
  ++compressions_applied_;
  error_sum_ += error;
  error_max_ = std::max(error_max_, error);
  return true;
}

void QuantStore::Decode(BlockId cell, int slot, DType dtype, std::byte* k_out,
                        std::byte* v_out) const {
  DequantizeBlock(format_[cell], shape_, k_part(cell, slot), v_part(cell, slot),
                  0, shape_.block_tokens, dtype, k_out, v_out);
}

void QuantStore::Decompressed(BlockId cell) {
  Release(cell);
  ++decompressions_;
}

void QuantStore::Retain(BlockId cell) {
  pool_->Retain(cell);
  if (partner_[cell] != kNoBlock) pool_->Retain(partner_[cell]);
}

void QuantStore::Release(BlockId cell) {
  if (pool_->ref_count(cell) == 1) {
    (format_[cell] == QuantFormat::kInt8 ? int8_blocks_ : int4_blocks_) -= 1;
  }
  const BlockId partner = partner_[cell];
  local_->Release(cell);
  if (partner != kNoBlock) local_->Release(partner);
}

int64_t QuantStore::room() const {
  const int64_t free = pool_->capacity() - pool_->used_blocks();
  return mixed_ ? free / 2 : free;
}

}  // namespace kvpage::internal
