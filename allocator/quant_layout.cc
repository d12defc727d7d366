// The byte layout of a quantized block and of the quantized pool's cells:
// plain arithmetic, apart from the kernels (quantize*.cc), so that the
// snapshot reader (and its fuzz target) can check a file's cell size
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
  QuantLayout layout;
  layout.k_scales = AlignUp(CodeBytes(format, elems));
  int64_t end = layout.k_scales + channels * 2;
  if (int4) {
    layout.k_mins = AlignUp(end);
    end = layout.k_mins + channels * 2;
  }
  layout.k_part_bytes = AlignUp(end);
  layout.v_scales = AlignUp(CodeBytes(format, elems));
  end = layout.v_scales + v_groups * 2;
  if (int4) {
    layout.v_mins = AlignUp(end);
    end = layout.v_mins + v_groups * 2;
  }
  layout.v_part_bytes = AlignUp(end);
  return layout;
}

int64_t QuantCellBytes(QuantPoolFormat pool_format, const QuantShape& shape) {
  switch (pool_format) {
    case QuantPoolFormat::kInt8:
      return QuantLayout::For(QuantFormat::kInt8, shape).block_bytes();
    case QuantPoolFormat::kInt4:
      return QuantLayout::For(QuantFormat::kInt4, shape).block_bytes();
    case QuantPoolFormat::kMixed: {
      // int4 blocks take one cell; int8 blocks two, K part and V part.
      const QuantLayout int8 = QuantLayout::For(QuantFormat::kInt8, shape);
      const QuantLayout int4 = QuantLayout::For(QuantFormat::kInt4, shape);
      return std::max(
          {int4.block_bytes(), int8.k_part_bytes, int8.v_part_bytes});
    }
  }
  return 0;
}

}  // namespace kvpage::internal
