// allocator/quantize.h — the kernels that compress a cold block into int8 or
// int4 codes with f16 scales (DESIGN.md, Compression), and read it back.
//
// A hot block holds `block_tokens` (T) slots of one layer: keys, then values,
// each [T][H][D] (H = num_kv_heads, D = head_dim) in the cache dtype. A
// quantized block groups them differently:
//   keys    per channel: for each (h, d), one group made of the block's valid
//           slots (outlier channels get their own scale);
//   values  per token: for each (t, h), groups of `group_size` (G)
//           consecutive channels.
//   int8    symmetric: scale = max|x| / 127, code = round(x / scale) in
//           [-127, 127], x ~ code * scale.
//   int4    asymmetric: scale = (max - min) / 15, code = round((x - min) /
//           scale) in [0, 15], x ~ code * scale + min; two codes per byte,
//           channel 2k in the low nibble, 2k + 1 in the high one.
// Scales and minimums are stored as f16 and the codes are computed with the
// stored (rounded) values, so the error QuantizeBlock() reports is the error
// of what DequantizeBlock() returns.
//
// Usage (one block, f16 cache, int8):
//   QuantShape shape{.block_tokens = 16, .num_kv_heads = 8, .head_dim = 128,
//                    .group_size = 32};
//   QuantLayout layout = QuantLayout::For(QuantFormat::kInt8, shape);
//   // k_part / v_part: layout.k_part_bytes / v_part_bytes each
//   QuantError e = QuantizeBlock(QuantFormat::kInt8, shape, DType::kF16,
//                                hot_k, hot_v, 0, 16, k_part, v_part);
//   DequantizeBlock(QuantFormat::kInt8, shape, k_part, v_part, 0, 16, k, v);
//
// Numerics, identical on every path:
//   - x / scale is computed as x * (1 / scale) (one division per group), and
//     rounds to nearest, ties to even; a zero scale gives zero codes.
//   - Scales are clamped to [0, 65504] and minimums to [-65504, 65504] before
//     the f16 rounding: values beyond f16's range saturate (their error is
//     reported) instead of producing inf or NaN. A NaN input is ignored by
//     the group's statistics and gets the lowest code. (KVCache never hands
//     the kernels such a block: it keeps blocks holding a NaN, an infinity
//     or |x| > 65504 hot, AllWithinQuantRange in allocator/convert.h.)
//   - Dequantization is code * scale (+ min). code * scale is exact in f32
//     (at most 7 + 11 significant bits), so fusing the + min is exact too.
//   - Squared errors and squares are summed with FMA in float, keys per
//     channel over the slots, values per token row in 32 lanes (lane =
//     channel % 32); those float sums are added in channel (row) order into
//     32 double lanes (channel % 32), and the result adds the lanes in order.
//     Every path follows this order, so every path returns the same bits.
//     Squares above 3.4e38 (|x| > 1.8e19) overflow to inf.
//   They assume the default MXCSR (round to nearest, no flush-to-zero).
//
// Kernels: AVX-512 (F, BW, DQ, VL) or AVX2 (+FMA, F16C), picked once at run
// time from the CPU (the build assumes only x86-64), for shapes whose
// group_size is a multiple of 16; other shapes and CPUs run the portable
// loops, which take one value at a time (many times slower; figures in
// docs/benchmarks.md) and call std::fma (a library routine on x86 CPUs
// without FMA).
// Cost: the compression needs ~8 vector instructions per 16 values (statistics,
// scaling, rounding, packing; ~12 with the error sums); the dequantization
// ~5 (widen, convert, scale, narrow, store), int4 values into f16 / bf16
// fewer (a 16-entry table per group). A cold block comes from DRAM: the
// kernels prefetch two rows ahead; the compression quantizes the values first
// and prefetches the keys' rows along them (and the lines its codes go to), and
// a NextBlock hint streams the next block under the dequantization, so that
// a run of cold blocks is bounded by the memory rather than by stalls at
// each block's start.
// The SIMD kernels use about 20 KiB of stack. Thread-safe: pure functions of
// their arguments. (The dispatcher: quantize.cc; the kernel sets:
// quantize_portable.cc, quantize_avx2.cc, quantize_avx512.cc, sharing
// quantize_kernels.h; the layout: quant_layout.cc.)
#ifndef KVPAGE_ALLOCATOR_QUANTIZE_H_
#define KVPAGE_ALLOCATOR_QUANTIZE_H_

#include <cstdint>
#include <string_view>

#include "kvpage/dtype.h"

namespace kvpage::internal {

enum class QuantFormat : uint8_t { kInt8, kInt4 };

// The block geometry. Valid when every field is positive, head_dim %
// group_size == 0 and, for int4, head_dim is even. The caller validates:
// the kernels only DCHECK it.
struct QuantShape {
  int block_tokens = 0, num_kv_heads = 0, head_dim = 0, group_size = 0;
};

// Byte offsets of one quantized block. The K part (codes, then scales, then
// for int4 the minimums) and the V part (codes, scales, minimums) are each
// padded to 64 bytes; a block is the K part followed by the V part, but the
// two parts may also live in separate places (the caller passes two
// pointers), so nothing may assume V follows K.
//   K codes   [T][H][D] bytes (int8) or [T][H][D/2] (int4)
//   K scales  [H][D] f16, K mins [H][D] f16 (int4)
//   V codes   like K codes
//   V scales  [T][H][D/G] f16, V mins [T][H][D/G] f16 (int4)
// Every array starts at a multiple of 64 bytes within its part; padding bytes
// are written as zero. k_mins / v_mins are 0 and unused for int8.
struct QuantLayout {
  int64_t k_codes = 0, k_scales = 0, k_mins = 0, k_part_bytes = 0;
  int64_t v_codes = 0, v_scales = 0, v_mins = 0, v_part_bytes = 0;

  [[nodiscard]] int64_t block_bytes() const {
    return k_part_bytes + v_part_bytes;
  }
  // The layout of `format` at `shape` (a valid shape). O(1).
  // (allocator/quant_layout.cc, with QuantCellBytes.)
  [[nodiscard]] static QuantLayout For(QuantFormat format,
                                       const QuantShape& shape);
};

// What the cells of a quantized pool hold: whole blocks of one format, or
// (kMixed) int4 blocks and the parts of int8 blocks, an int8 block taking
// two cells (its K part and its V part).
enum class QuantPoolFormat : uint8_t { kInt8, kInt4, kMixed };

// The bytes of one cell of a quantized pool of `pool_format` at `shape`: a
// whole block of the format, or in mixed mode the largest of an int4 block
// and either int8 part. Builds only the layouts the pool uses, so `shape`
// must be valid for those formats alone (an int8 pool may have an odd
// head_dim). O(1).
[[nodiscard]] int64_t QuantCellBytes(QuantPoolFormat pool_format,
                                     const QuantShape& shape);

// Squared error and squared magnitude of the quantized cells, keys and
// values apart.
struct QuantError {
  double k_sq_err = 0, k_sq_sum = 0, v_sq_err = 0, v_sq_sum = 0;

  // Relative MSE of the block: (k_sq_err + v_sq_err) / (k_sq_sum +
  // v_sq_sum), 0 when the sums are 0.
  [[nodiscard]] double rel() const;
};

// What QuantizeBlock measures besides the codes.
struct QuantizeOptions {
  // Sum the squared errors and squares of the quantized cells into the
  // result. Without it the codes and scales are the same bytes and the
  // result is all zeros; the SIMD compress then skips ~4 of its ~12 vector
  // instructions per 16 values.
  bool measure_error = true;
};

// QuantizeBlock
//
// Quantizes slots [first_slot, first_slot + count) of one hot block. `k_src`
// and `v_src` point at slot 0 of the hot K and V regions ([T][H][D] of
// `dtype`). Slots outside the range are ignored by the statistics; their
// codes (and, for values, scales and minimums) are written as zero. Writes
// layout.k_part_bytes bytes to `k_part` and layout.v_part_bytes to `v_part`
// (no alignment needed; the parts may overlap neither each other nor the
// sources). Every byte of both parts is written. Returns the error measured
// while quantizing (in registers, from the stored scales) when
// options.measure_error, else zeros. Requires 0 <= first_slot, 0 <= count,
// first_slot + count <= T. O(count * H * D): two passes over each strip of
// channels (keys; f16 / bf16 statistics taken in their 16-bit bits, the
// second pass reads the source again) or token row (values; the second pass
// from an f32 copy on the stack when the input is f16 / bf16).
[[nodiscard]] QuantError QuantizeBlock(QuantFormat format,
                                       const QuantShape& shape, DType dtype,
                                       const void* k_src, const void* v_src,
                                       int first_slot, int count, void* k_part,
                                       void* v_part,
                                       const QuantizeOptions& options = {});

// NextBlock
//
// A hint for DequantizeBlock: the quantized block the caller will
// dequantize next (Gather and Attend walk a table). The SIMD kernels ask
// the memory for its K and V parts a slice per row while they decode this
// block, so that a run of cold blocks streams from DRAM under the decoding
// instead of stalling at each block's start. Prefetches only: the parts are
// never read, and a null part (the default) asks for nothing.
// this_block_requested: the previous call named this block as its next, so
// its lines are on their way and the kernels do not ask for them again
// (otherwise they prefetch this block's own rows a few ahead).
struct NextBlock {
  QuantFormat format = QuantFormat::kInt8;
  const void* k_part = nullptr;
  const void* v_part = nullptr;
  bool this_block_requested = false;
};

// DequantizeBlock
//
// Writes slots [first_slot, first_slot + count) of a quantized block as
// [count][H][D] keys to `k_out` and values to `v_out`, in `out_dtype`: f32
// (the exact code * scale + min), or f16 / bf16 (that f32 value rounded to
// nearest even, as ConvertElements rounds; what a hot block of that dtype
// would hold, 2 bytes a value). No alignment needed. O(count * H * D).
void DequantizeBlock(QuantFormat format, const QuantShape& shape,
                     const void* k_part, const void* v_part, int first_slot,
                     int count, DType out_dtype, void* k_out, void* v_out,
                     const NextBlock& next = {});
// The same, as f32.
void DequantizeBlock(QuantFormat format, const QuantShape& shape,
                     const void* k_part, const void* v_part, int first_slot,
                     int count, float* k_out, float* v_out,
                     const NextBlock& next = {});

// PerTokenKeyError
//
// For comparing groupings only (tests, benchmarks): the relative MSE
// (sq_err / sq_sum, 0 when the sum is 0) of the keys of slots [first_slot,
// first_slot + count) if they were grouped per token like values, with
// group_size channels per group. Allocates a scratch V part.
[[nodiscard]] double PerTokenKeyError(QuantFormat format,
                                      const QuantShape& shape, DType dtype,
                                      const void* k_src, int first_slot,
                                      int count);

// The kernel sets, for tests and benchmarks to compare.
enum class QuantKernels : uint8_t { kPortable, kAvx2, kAvx512 };

[[nodiscard]] std::string_view QuantKernelsName(QuantKernels kernels);

// True when this CPU (and OS) can run `kernels`; kPortable always.
[[nodiscard]] bool QuantKernelsSupported(QuantKernels kernels);

// The set QuantizeBlock and DequantizeBlock use on this CPU for shapes whose
// group_size is a multiple of 16: the widest supported.
[[nodiscard]] QuantKernels BestQuantKernels();

// QuantizeBlock / DequantizeBlock with the given kernel set, which must be
// supported; shapes the SIMD kernels do not cover (group_size % 16 != 0)
// run the portable loops whatever the choice.
[[nodiscard]] QuantError QuantizeBlockWith(
    QuantKernels kernels, QuantFormat format, const QuantShape& shape,
    DType dtype, const void* k_src, const void* v_src, int first_slot,
    int count, void* k_part, void* v_part, const QuantizeOptions& options = {});
void DequantizeBlockWith(QuantKernels kernels, QuantFormat format,
                         const QuantShape& shape, const void* k_part,
                         const void* v_part, int first_slot, int count,
                         DType out_dtype, void* k_out, void* v_out,
                         const NextBlock& next = {});

// The portable loops (QuantizeBlockWith(kPortable, ...)), which the SIMD
// kernels are held to.
[[nodiscard]] QuantError QuantizeBlockPortable(
    QuantFormat format, const QuantShape& shape, DType dtype, const void* k_src,
    const void* v_src, int first_slot, int count, void* k_part, void* v_part,
    const QuantizeOptions& options = {});
void DequantizeBlockPortable(QuantFormat format, const QuantShape& shape,
                             const void* k_part, const void* v_part,
                             int first_slot, int count, DType out_dtype,
                             void* k_out, void* v_out);

// True when the dispatcher picked SIMD kernels (AVX2 or AVX-512) on this
// CPU: BestQuantKernels() != kPortable.
[[nodiscard]] bool HasAvx2QuantKernels();

}  // namespace kvpage::internal

#endif  // KVPAGE_ALLOCATOR_QUANTIZE_H_
