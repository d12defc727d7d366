// allocator/quantize_kernels.h — what the quantization kernel sets share,
// for the files that implement quantize.h: the geometry the kernels work on,
// their error lanes, one side (keys or values) of a block as a kernel takes
// it, and each set's table of entry points, which the dispatcher
// (quantize.cc) picks from at run time.
//
//   quantize_portable.cc   the scalar definition of every step, and the
//                          portable loops the SIMD kernels are held to
//   quantize_avx2.cc       AVX2 (+FMA, F16C) operations on 16-channel units
//   quantize_avx512.cc     AVX-512 (F, BW, DQ, VL) operations on those units
//   quantize_simd*.inc     the SIMD kernels, written once over the units,
//                          compiled by each of the two files above
//
// Every kernel file is compiled with -ffp-contract=off and -falign-loops=64
// (CMakeLists.txt): no a * b + c becomes an FMA unless the code says so, so
// that every set returns the same bits. Not part of the installed API.
#ifndef KVPAGE_ALLOCATOR_QUANTIZE_KERNELS_H_
#define KVPAGE_ALLOCATOR_QUANTIZE_KERNELS_H_

#include <cstddef>
#include <cstdint>

#include "allocator/cpu_features.h"
#include "allocator/quantize.h"
#include "kvpage/dtype.h"

#if KVPAGE_X86
#include <immintrin.h>
#endif

namespace kvpage::internal {

// The largest finite f16: scales are clamped to [0, kF16Max] and minimums
// to [-kF16Max, kF16Max] before their f16 rounding.
inline constexpr float kF16Max = 65504.0f;
// Error accumulation lanes: lane = channel % kLanes (two 16-channel units).
inline constexpr int kLanes = 32;
// The SIMD kernels work on units of 16 channels: group_size % kUnit == 0.
inline constexpr int kUnit = 16;

// What the SIMD kernels ask the memory for: one part (K or V) of the block
// a caller dequantizes next, a slice per row (see PrefetchSlice), and, with
// fetch_own, this block's own rows a few ahead of the one decoded (off when
// the previous call already asked for the whole block).
struct Ahead {
  const std::byte* part = nullptr;
  int64_t bytes = 0;
  bool fetch_own = true;
};

// Geometry shared by the kernels.
struct Dims {
  int64_t tokens, channels, group, groups_per_row;
  explicit Dims(const QuantShape& s)
      : tokens(s.block_tokens),
        channels(int64_t{s.num_kv_heads} * s.head_dim),
        group(s.group_size),
        groups_per_row(channels / s.group_size) {}
};

// Squared errors and sums of one side (keys or values), in kLanes double
// lanes; the totals add the lanes in order.
struct ErrorSums {
  double err[kLanes] = {}, sum[kLanes] = {};

  double TotalErr() const { return Total(err); }
  double TotalSum() const { return Total(sum); }
  static double Total(const double (&lanes)[kLanes]) {
    double total = 0;
    for (double lane : lanes) total += lane;
    return total;
  }
};

// One side of a block for a quantizing kernel: slots [first, end) of `src`
// ([T][H][D] of `dtype`) into the part `part` (laid out as `layout`).
struct QuantizeSideArgs {
  QuantFormat format;
  DType dtype;
  Dims dims;
  QuantLayout layout;
  const void* src;
  int64_t first, end;
  std::byte* part;
  // The SIMD kernels add to the error sums only with it; the portable
  // loops always do (the dispatcher then ignores their sums).
  bool measure_error;
  // Values only (may be null): the keys' source, whose rows the SIMD
  // kernels ask the memory for along the value rows.
  const void* prefetch_rows = nullptr;
};

// One side of a block for a dequantizing kernel: slots [first, end) of the
// part `part` into `out` ([end - first][H][D] of `out_dtype`).
struct DequantizeSideArgs {
  QuantFormat format;
  DType out_dtype;
  Dims dims;
  QuantLayout layout;
  const std::byte* part;
  int64_t first, end;
  void* out;
  // Keys only (may be null): the block's value part, whose rows the SIMD
  // kernels ask the memory for along the key rows.
  const std::byte* prefetch_value_part = nullptr;
  // The next block's part of this side (NextBlock).
  Ahead ahead;
};

// The entry points of one kernel set. Keys are grouped per channel, values
// per token row (quantize.h); QuantizeBlock's per-token keys go through the
// values kernel.
struct QuantKernelTable {
  void (*quantize_keys)(const QuantizeSideArgs& args, ErrorSums& sums);
  void (*quantize_values)(const QuantizeSideArgs& args, ErrorSums& sums);
  void (*dequantize_keys)(const DequantizeSideArgs& args);
  void (*dequantize_values)(const DequantizeSideArgs& args);
};

// The sets. The SIMD ones exist on x86 only, for shapes whose group_size
// is a multiple of kUnit, and run only where HostCpuFeatures() has them.
[[nodiscard]] const QuantKernelTable& PortableQuantKernels();
#if KVPAGE_X86
[[nodiscard]] const QuantKernelTable& Avx2QuantKernels();
[[nodiscard]] const QuantKernelTable& Avx512QuantKernels();
#endif

// Calls fn.template operator()<F, kD>() for the runtime format and dtype
// (for the dequantizing kernels, the output dtype).
template <typename Fn>
void WithFormatAndDType(QuantFormat format, DType dtype, Fn&& fn) {
  auto with_dtype = [&]<QuantFormat F>() {
    switch (dtype) {
      case DType::kF32:
        fn.template operator()<F, DType::kF32>();
        return;
      case DType::kF16:
        fn.template operator()<F, DType::kF16>();
        return;
      case DType::kBF16:
        fn.template operator()<F, DType::kBF16>();
        return;
    }
  };
  if (format == QuantFormat::kInt8) {
    with_dtype.template operator()<QuantFormat::kInt8>();
  } else {
    with_dtype.template operator()<QuantFormat::kInt4>();
  }
}

#if KVPAGE_X86
// The 16 int4 codes of 8 packed bytes, one per byte in channel order: the
// low nibbles, interleaved with the bytes shifted right by 4 (each 16-bit
// shift drags the next byte's low nibble in above the high nibble; the mask
// clears it). SSE2 only (the x86-64 baseline), so any SIMD kernel can
// inline it.
__attribute__((always_inline)) inline __m128i UnpackInt4(const std::byte* src) {
  const __m128i packed = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src));
  return _mm_and_si128(_mm_unpacklo_epi8(packed, _mm_srli_epi16(packed, 4)),
                       _mm_set1_epi8(0x0f));
}
#endif

}  // namespace kvpage::internal

#endif  // KVPAGE_ALLOCATOR_QUANTIZE_KERNELS_H_
