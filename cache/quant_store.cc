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
  store->cell_bytes_ = QuantCellBytes(config);
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

const std::byte* QuantStore::v_part(BlockId cell) const {
  return partner_[cell] != kNoBlock
             ? base_ + partner_[cell] * cell_bytes_
             : k_part(cell) + layout(format_[cell]).k_part_bytes;
}

bool QuantStore::Representable(const std::byte* k_src, const std::byte* v_src,
                               int first, int count) const {
  const int64_t offset = first * token_bytes_;
  const int64_t elems = count * token_elems_;
  return AllWithinQuantRange(k_src + offset, dtype_, elems) &&
         AllWithinQuantRange(v_src + offset, dtype_, elems);
}

BlockId QuantStore::Compress(const std::byte* k_src, const std::byte* v_src,
                             int first, int count) {
  const BlockId cell = local_->AllocateOne();
  if (cell == kNoBlock) {
    ++compressions_skipped_;
    return kNoBlock;
  }
  if (!Encode(k_src, v_src, first, count, cell)) {
    local_->Release(cell);
    ++compressions_skipped_;
    return kNoBlock;
  }
  return cell;
}

bool QuantStore::Encode(const std::byte* k_src, const std::byte* v_src,
                        int first, int count, BlockId cell) {
  QuantFormat format = mixed_ ? QuantFormat::kInt4 : fixed_format_;
  BlockId partner = kNoBlock;
  std::byte* k_out = base_ + cell * cell_bytes_;
  std::byte* v_out = k_out + layout(format).k_part_bytes;
  const QuantizeOptions options{.measure_error = measure_error_};
  QuantError error = QuantizeBlock(format, shape_, dtype_, k_src, v_src, first,
                                   count, k_out, v_out, options);
  // The range check runs after the kernel, which has brought the block
  // into the caches while its prefetches overlapped the reads with its
  // work: checked first, the block's trip from DRAM came before the
  // kernel's, and a default int8 compression from DRAM fell from 0.80x to
  // 0.66x memcpy (bench/compress_bench.cc); checked after, it costs a pass
  // over L2. A block that fails it wasted a compression: such blocks are
  // rare.
  if (!Representable(k_src, v_src, first, count)) return false;
  if (mixed_ && error.rel() > max_rel_error_) {
    partner = local_->AllocateOne();
    if (partner == kNoBlock) return false;  // no room for int8: stays hot
    format = QuantFormat::kInt8;
    v_out = base_ + partner * cell_bytes_;
    error = QuantizeBlock(format, shape_, dtype_, k_src, v_src, first, count,
                          k_out, v_out, options);
  }
  format_[cell] = format;
  partner_[cell] = partner;
  error_[cell] = static_cast<float>(error.rel());
  (format == QuantFormat::kInt8 ? int8_blocks_ : int4_blocks_) += 1;
  ++compressions_applied_;
  error_sum_ += error.rel();
  error_max_ = std::max(error_max_, error.rel());
  return true;
}

void QuantStore::Decompress(BlockId cell, DType dtype, std::byte* k_out,
                            std::byte* v_out) {
  DequantizeBlock(format_[cell], shape_, k_part(cell), v_part(cell), 0,
                  shape_.block_tokens, dtype, k_out, v_out);
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
