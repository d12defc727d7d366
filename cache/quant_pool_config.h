// cache/quant_pool_config.h — a cache's compression settings in the terms
// of the allocator's quantization kernels (allocator/quantize.h), which know
// nothing of CacheConfig: the shape of a quantized block, the pool's format,
// and the bytes of one of its cells.
#ifndef KVPAGE_CACHE_QUANT_POOL_CONFIG_H_
#define KVPAGE_CACHE_QUANT_POOL_CONFIG_H_

#include <cstdint>

#include "allocator/quantize.h"
#include "kvpage/config.h"

namespace kvpage::internal {

// The quantized block geometry of `config`. O(1).
[[nodiscard]] inline QuantShape QuantShapeOf(const CacheConfig& config) {
  return {.block_tokens = config.block_tokens,
          .num_kv_heads = config.num_kv_heads,
          .head_dim = config.head_dim,
          .group_size = config.compression.group_size};
}

// Mixed (int4 or int8 per block) when max_rel_error > 0, else `bits`.
[[nodiscard]] inline QuantPoolFormat QuantPoolFormatOf(
    const CompressionConfig& compression) {
  if (compression.max_rel_error > 0) return QuantPoolFormat::kMixed;
  return compression.bits == QuantBits::kInt4 ? QuantPoolFormat::kInt4
                                              : QuantPoolFormat::kInt8;
}

// The bytes of one layer's compressed block in a cell of the quantized pool
// of `config` (a valid config): 0 without compression, else QuantCellBytes
// of its format and shape. O(1).
[[nodiscard]] inline int64_t QuantSlotBytes(const CacheConfig& config) {
  if (!config.compression.enabled) return 0;
  return QuantCellBytes(QuantPoolFormatOf(config.compression),
                        QuantShapeOf(config));
}

// The bytes of one cell: a slot of QuantSlotBytes for every layer of the
// largest group (LayerGroupWidth; one without group_layers), as a hot block
// has. What KVCache::Create gives its quantized pool and what the snapshot
// reader requires of a file. O(layers^2) with group_layers, else O(1).
[[nodiscard]] inline int64_t QuantCellBytes(const CacheConfig& config) {
  return QuantSlotBytes(config) * LayerGroupWidth(config);
}

}  // namespace kvpage::internal

#endif  // KVPAGE_CACHE_QUANT_POOL_CONFIG_H_
