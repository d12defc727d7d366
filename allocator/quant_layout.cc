// The byte layout of a quantized block and of the quantized pool's slots:
// plain arithmetic, apart from the kernels in quantize.cc, so that the
// snapshot reader (and its fuzz target) can check a file's slot size
// without linking them.
#include <algorithm>

#include "allocator/check.h"
#include "allocator/quantize.h"

namespace kvpage::internal {
namespace {

constexpr int64_t kPartAlign = 64;

int64_t AlignUp(int64_t n) {
  return (n + kPartAlign - 1) / kPartAlign * kPartAlign;
}

// Bytes of the codes of `elems` elements.
int64_t CodeBytes(QuantFormat format, int64_t elems) {
  return format == QuantFormat::kInt8 ? elems : elems / 2;
}

}  // namespace

QuantLayout QuantLayout::For(QuantFormat format, const QuantShape& shape) {
  KVPAGE_DCHECK(shape.block_tokens > 0 && shape.num_kv_heads > 0 &&
                shape.head_dim > 0 && shape.group_size > 0 &&
                shape.head_dim % shape.group_size == 0 &&
                (format == QuantFormat::kInt8 || shape.head_dim % 2 == 0));
  const int64_t channels = int64_t{shape.num_kv_heads} * shape.head_dim;
  const int64_t elems = channels * shape.block_tokens;
  const int64_t v_groups = elems / shape.group_size;
  const bool int4 = format == QuantFormat::kInt4;
  QuantLayout l;
  l.k_scales = AlignUp(CodeBytes(format, elems));
  int64_t end = l.k_scales + channels * 2;
  if (int4) {
    l.k_mins = AlignUp(end);
    end = l.k_mins + channels * 2;
  }
  l.k_part_bytes = AlignUp(end);
  l.v_scales = AlignUp(CodeBytes(format, elems));
  end = l.v_scales + v_groups * 2;
  if (int4) {
    l.v_mins = AlignUp(end);
    end = l.v_mins + v_groups * 2;
  }
  l.v_part_bytes = AlignUp(end);
  return l;
}

int64_t QuantSlotBytes(const CacheConfig& config) {
  const CompressionConfig& q = config.compression;
  if (!q.enabled) return 0;
  const QuantShape shape{.block_tokens = config.block_tokens,
                         .num_kv_heads = config.num_kv_heads,
                         .head_dim = config.head_dim,
                         .group_size = q.group_size};
  if (q.max_rel_error > 0) {
    // int4 blocks take one slot; int8 blocks two, K part and V part.
    const QuantLayout int8 = QuantLayout::For(QuantFormat::kInt8, shape);
    const QuantLayout int4 = QuantLayout::For(QuantFormat::kInt4, shape);
    return std::max({int4.block_bytes(), int8.k_part_bytes, int8.v_part_bytes});
  }
  const QuantFormat format =
      q.bits == QuantBits::kInt4 ? QuantFormat::kInt4 : QuantFormat::kInt8;
  return QuantLayout::For(format, shape).block_bytes();
}

}  // namespace kvpage::internal
