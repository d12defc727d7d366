// The dispatcher of quantize.h: checks the arguments, writes the bytes the
// kernels leave alone, picks the kernel set (the widest this CPU runs, for
// shapes the SIMD kernels cover) and runs it on the keys and the values.
// The kernel sets: quantize_portable.cc, quantize_avx2.cc,
// quantize_avx512.cc (quantize_kernels.h); the layout: quant_layout.cc.
#include "allocator/quantize.h"

#include <cstddef>
#include <cstring>
#include <vector>

#include "allocator/check.h"
#include "allocator/cpu_features.h"
#include "allocator/quantize_kernels.h"

namespace kvpage::internal {
namespace {

[[maybe_unused]] bool ValidShape(QuantFormat format, const QuantShape& s) {
  return s.block_tokens > 0 && s.num_kv_heads > 0 && s.head_dim > 0 &&
         s.group_size > 0 && s.head_dim % s.group_size == 0 &&
         (format == QuantFormat::kInt8 || s.head_dim % 2 == 0);
}

void CheckArgs(QuantFormat format, const QuantShape& shape, int first,
               int count) {
  KVPAGE_DCHECK(ValidShape(format, shape));
  KVPAGE_DCHECK(first >= 0 && count >= 0);
  KVPAGE_DCHECK(first + count <= shape.block_tokens);
  (void)format;
  (void)shape;
  (void)first;
  (void)count;
}

// Bytes of the codes of `elems` elements.
int64_t CodeBytes(QuantFormat format, int64_t elems) {
  return format == QuantFormat::kInt8 ? elems : elems / 2;
}

void ZeroRows(std::byte* base, int64_t row_bytes, const Dims& dims,
              int64_t first, int64_t end) {
  std::memset(base, 0, first * row_bytes);
  std::memset(base + end * row_bytes, 0, (dims.tokens - end) * row_bytes);
}

// Zeroes the bytes of a part that the kernels leave alone: the code rows of
// slots outside [first, end), for values (per_row) their scale and minimum
// rows too, and the padding after each array.
void ZeroUnwritten(QuantFormat format, const Dims& dims, int64_t first,
                   int64_t end, bool per_row, int64_t scales, int64_t mins,
                   int64_t part_bytes, std::byte* part) {
  const int64_t row_codes = CodeBytes(format, dims.channels);
  ZeroRows(part, row_codes, dims, first, end);
  const int64_t codes_end = dims.tokens * row_codes;
  std::memset(part + codes_end, 0, scales - codes_end);
  const int64_t row_scales = dims.groups_per_row * 2;
  const int64_t scale_bytes =
      per_row ? dims.tokens * row_scales : dims.channels * 2;
  const bool int4 = format == QuantFormat::kInt4;
  const int64_t arrays[2][2] = {{scales, int4 ? mins : part_bytes},
                                {mins, part_bytes}};
  for (int i = 0; i < (int4 ? 2 : 1); ++i) {
    const int64_t start = arrays[i][0], next = arrays[i][1];
    if (per_row) ZeroRows(part + start, row_scales, dims, first, end);
    std::memset(part + start + scale_bytes, 0, next - start - scale_bytes);
  }
}

// The kernels that run `shape` when `wanted` is asked for. An unsupported
// set is a caller bug; without the DCHECK it runs the portable loops rather
// than fault on an illegal instruction.
QuantKernels Effective(QuantKernels wanted, const QuantShape& shape) {
  KVPAGE_DCHECK(QuantKernelsSupported(wanted));
  return shape.group_size % kUnit == 0 && QuantKernelsSupported(wanted)
             ? wanted
             : QuantKernels::kPortable;
}

const QuantKernelTable& KernelTable(QuantKernels kernels) {
  switch (kernels) {
#if KVPAGE_X86
    case QuantKernels::kAvx512:
      return Avx512QuantKernels();
    case QuantKernels::kAvx2:
      return Avx2QuantKernels();
#endif
    default:
      return PortableQuantKernels();
  }
}

}  // namespace

double QuantError::rel() const {
  const double sum = k_sq_sum + v_sq_sum;
  return sum > 0 ? (k_sq_err + v_sq_err) / sum : 0.0;
}

std::string_view QuantKernelsName(QuantKernels kernels) {
  switch (kernels) {
    case QuantKernels::kPortable:
      return "portable";
    case QuantKernels::kAvx2:
      return "avx2";
    case QuantKernels::kAvx512:
      return "avx512";
  }
  return "?";
}

bool QuantKernelsSupported(QuantKernels kernels) {
  switch (kernels) {
    case QuantKernels::kPortable:
      return true;
    case QuantKernels::kAvx2:
      return HostCpuFeatures().Avx2FmaF16c();
    case QuantKernels::kAvx512:
      return HostCpuFeatures().Avx512FBwDqVl();
  }
  return false;
}

QuantKernels BestQuantKernels() {
  if (QuantKernelsSupported(QuantKernels::kAvx512)) {
    return QuantKernels::kAvx512;
  }
  if (QuantKernelsSupported(QuantKernels::kAvx2)) return QuantKernels::kAvx2;
  return QuantKernels::kPortable;
}

bool HasAvx2QuantKernels() {
  return BestQuantKernels() != QuantKernels::kPortable;
}

QuantError QuantizeBlockWith(QuantKernels kernels, QuantFormat format,
                             const QuantShape& shape, DType dtype,
                             const void* k_src, const void* v_src,
                             int first_slot, int count, void* k_part,
                             void* v_part, const QuantizeOptions& options) {
  CheckArgs(format, shape, first_slot, count);
  const QuantLayout layout = QuantLayout::For(format, shape);
  const Dims dims(shape);
  auto* k = static_cast<std::byte*>(k_part);
  auto* v = static_cast<std::byte*>(v_part);
  QuantError result;
  if (count == 0) {
    std::memset(k, 0, layout.k_part_bytes);
    std::memset(v, 0, layout.v_part_bytes);
    return result;
  }
  const int64_t first = first_slot, end = int64_t{first_slot} + count;
  ZeroUnwritten(format, dims, first, end, /*per_row=*/false, layout.k_scales,
                layout.k_mins, layout.k_part_bytes, k);
  ZeroUnwritten(format, dims, first, end, /*per_row=*/true, layout.v_scales,
                layout.v_mins, layout.v_part_bytes, v);
  const QuantKernelTable& table = KernelTable(Effective(kernels, shape));
  const bool error = options.measure_error;
  ErrorSums k_sums, v_sums;
  // The values first: their rows are independent, so their work covers the
  // fetch of the keys' lines, which the keys then find cached (their
  // statistics need all rows before any code).
  table.quantize_values({.format = format,
                         .dtype = dtype,
                         .dims = dims,
                         .layout = layout,
                         .src = v_src,
                         .first = first,
                         .end = end,
                         .part = v,
                         .measure_error = error,
                         .prefetch_rows = k_src},
                        v_sums);
  table.quantize_keys({.format = format,
                       .dtype = dtype,
                       .dims = dims,
                       .layout = layout,
                       .src = k_src,
                       .first = first,
                       .end = end,
                       .part = k,
                       .measure_error = error},
                      k_sums);
  if (!error) return result;
  result.k_sq_err = k_sums.TotalErr();
  result.k_sq_sum = k_sums.TotalSum();
  result.v_sq_err = v_sums.TotalErr();
  result.v_sq_sum = v_sums.TotalSum();
  return result;
}

void DequantizeBlockWith(QuantKernels kernels, QuantFormat format,
                         const QuantShape& shape, const void* k_part,
                         const void* v_part, int first_slot, int count,
                         DType out_dtype, void* k_out, void* v_out,
                         const NextBlock& next) {
  CheckArgs(format, shape, first_slot, count);
  const QuantLayout layout = QuantLayout::For(format, shape);
  const Dims dims(shape);
  const int64_t first = first_slot, end = int64_t{first_slot} + count;
  const QuantKernelTable& table = KernelTable(Effective(kernels, shape));
  Ahead next_k, next_v;
  if (next.k_part != nullptr && next.v_part != nullptr) {
    const QuantLayout next_layout = QuantLayout::For(next.format, shape);
    next_k = {static_cast<const std::byte*>(next.k_part),
              next_layout.k_part_bytes};
    next_v = {static_cast<const std::byte*>(next.v_part),
              next_layout.v_part_bytes};
  }
  next_k.fetch_own = next_v.fetch_own = !next.this_block_requested;
  table.dequantize_keys(
      {.format = format,
       .out_dtype = out_dtype,
       .dims = dims,
       .layout = layout,
       .part = static_cast<const std::byte*>(k_part),
       .first = first,
       .end = end,
       .out = k_out,
       .prefetch_value_part = static_cast<const std::byte*>(v_part),
       .ahead = next_k});
  table.dequantize_values({.format = format,
                           .out_dtype = out_dtype,
                           .dims = dims,
                           .layout = layout,
                           .part = static_cast<const std::byte*>(v_part),
                           .first = first,
                           .end = end,
                           .out = v_out,
                           .ahead = next_v});
}

QuantError QuantizeBlock(QuantFormat format, const QuantShape& shape,
                         DType dtype, const void* k_src, const void* v_src,
                         int first_slot, int count, void* k_part, void* v_part,
                         const QuantizeOptions& options) {
  return QuantizeBlockWith(BestQuantKernels(), format, shape, dtype, k_src,
                           v_src, first_slot, count, k_part, v_part, options);
}

void DequantizeBlock(QuantFormat format, const QuantShape& shape,
                     const void* k_part, const void* v_part, int first_slot,
                     int count, DType out_dtype, void* k_out, void* v_out,
                     const NextBlock& next) {
  DequantizeBlockWith(BestQuantKernels(), format, shape, k_part, v_part,
                      first_slot, count, out_dtype, k_out, v_out, next);
}

void DequantizeBlock(QuantFormat format, const QuantShape& shape,
                     const void* k_part, const void* v_part, int first_slot,
                     int count, float* k_out, float* v_out,
                     const NextBlock& next) {
  DequantizeBlockWith(BestQuantKernels(), format, shape, k_part, v_part,
                      first_slot, count, DType::kF32, k_out, v_out, next);
}

QuantError QuantizeBlockPortable(QuantFormat format, const QuantShape& shape,
                                 DType dtype, const void* k_src,
                                 const void* v_src, int first_slot, int count,
                                 void* k_part, void* v_part,
                                 const QuantizeOptions& options) {
  return QuantizeBlockWith(QuantKernels::kPortable, format, shape, dtype, k_src,
                           v_src, first_slot, count, k_part, v_part, options);
}

void DequantizeBlockPortable(QuantFormat format, const QuantShape& shape,
                             const void* k_part, const void* v_part,
                             int first_slot, int count, DType out_dtype,
                             void* k_out, void* v_out) {
  DequantizeBlockWith(QuantKernels::kPortable, format, shape, k_part, v_part,
                      first_slot, count, out_dtype, k_out, v_out);
}

double PerTokenKeyError(QuantFormat format, const QuantShape& shape,
                        DType dtype, const void* k_src, int first_slot,
                        int count) {
  CheckArgs(format, shape, first_slot, count);
  if (count == 0) return 0.0;
  const QuantLayout layout = QuantLayout::For(format, shape);
  // The keys go through the values kernel, into a scratch V part.
  std::vector<std::byte> scratch(static_cast<size_t>(layout.v_part_bytes));
  const QuantKernelTable& table =
      KernelTable(Effective(BestQuantKernels(), shape));
  ErrorSums sums;
  table.quantize_values({.format = format,
                         .dtype = dtype,
                         .dims = Dims(shape),
                         .layout = layout,
                         .src = k_src,
                         .first = first_slot,
                         .end = int64_t{first_slot} + count,
                         .part = scratch.data(),
                         .measure_error = true},
                        sums);
  const double sum = sums.TotalSum();
  return sum > 0 ? sums.TotalErr() / sum : 0.0;
}

}  // namespace kvpage::internal
