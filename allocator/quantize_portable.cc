// The portable kernel set: the scalar definition of every step of the
// quantization (quantize.h, Numerics), and the loops built from them, which
// every shape and CPU can run and which the SIMD kernels are held to. The
// SIMD kernels (quantize_simd*.inc) compute the same values step for step
// (NeedsFloatClamp there explains the one place where they take another
// route to the same codes).
//
// Compiled with -ffp-contract=off (CMakeLists.txt): no a * b + c becomes an
// FMA unless the code says so (std::fma).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <vector>

#include "allocator/convert.h"
#include "allocator/quantize_kernels.h"

namespace kvpage::internal {
namespace {

// Channels whose per-channel arrays the key loops keep on the stack.
constexpr int64_t kKeyChunk = 256;

inline void StoreU16(std::byte* dst, uint16_t bits) {
  std::memcpy(dst, &bits, sizeof(bits));
}
inline uint16_t LoadU16(const std::byte* src) {
  uint16_t bits;
  std::memcpy(&bits, src, sizeof(bits));
  return bits;
}

// ---------------------------------------------------------------------------
// The scalar definition of every step.

// _mm*_max_ps(a, b) / _mm*_min_ps(a, b): b when either is NaN.
inline float MaxOf(float a, float b) { return a > b ? a : b; }
inline float MinOf(float a, float b) { return a < b ? a : b; }

// Round to nearest, ties to even, for |q| <= 2^22 (what _mm*_cvtps_epi32
// does under the default MXCSR).
inline float RoundHalfEven(float q) {
  constexpr float kMagic = 0x1.8p23f;
  return (q + kMagic) - kMagic;
}

// Elements [i, i + n) of the source as f32 (exact widening).
template <DType kD>
inline void WidenRow(const void* src, int64_t i, int64_t n, float* out) {
  const auto* bytes = static_cast<const std::byte*>(src);
  ConvertElements(bytes + i * DTypeSize(kD), kD, out, DType::kF32, n);
}

// The running statistics of one group: int8 keeps max|x| in `a`; int4 keeps
// the minimum in `a` and the maximum in `b`. An update is max(x, acc), so a
// NaN x leaves the accumulator as it was.
struct Stats {
  float a, b;
};

template <QuantFormat F>
inline Stats InitStats() {
  if constexpr (F == QuantFormat::kInt8) {
    return {0.0f, 0.0f};
  } else {
    return {std::numeric_limits<float>::infinity(),
            -std::numeric_limits<float>::infinity()};
  }
}

template <QuantFormat F>
inline void Update(Stats& s, float x) {
  if constexpr (F == QuantFormat::kInt8) {
    s.a = MaxOf(std::fabs(x), s.a);
  } else {
    s.a = MinOf(x, s.a);
    s.b = MaxOf(x, s.b);
  }
}

// What one group stores, and the f32 values its codes are computed with.
struct Params {
  float scale, inv, min;
};

template <QuantFormat F>
inline Params MakeParams(const Stats& st, std::byte* scale_dst,
                         std::byte* min_dst) {
  Params p{.scale = 0, .inv = 0, .min = 0};
  float scale;
  if constexpr (F == QuantFormat::kInt8) {
    scale = st.a / 127.0f;
  } else {
    scale = (st.b - st.a) / 15.0f;
    // + 0.0f turns -0 into +0: which zero a group's minimum is depends on
    // the order the group was scanned in.
    const float min = MinOf(MaxOf(st.a, -kF16Max), kF16Max) + 0.0f;
    const uint16_t min_bits = F32ToF16(min);
    StoreU16(min_dst, min_bits);
    p.min = F16ToF32(min_bits);
  }
  scale = MinOf(MaxOf(scale, 0.0f), kF16Max);
  const uint16_t scale_bits = F32ToF16(scale);
  StoreU16(scale_dst, scale_bits);
  p.scale = F16ToF32(scale_bits);
  p.inv = p.scale != 0.0f ? 1.0f / p.scale : 0.0f;
  return p;
}

// The code of x; adds its squared error and square to the lanes.
template <QuantFormat F>
inline int QuantizeOne(float x, const Params& p, float& err, float& sum) {
  float q, dq;
  if constexpr (F == QuantFormat::kInt8) {
    q = MinOf(MaxOf(x * p.inv, -127.0f), 127.0f);
  } else {
    q = MinOf(MaxOf((x - p.min) * p.inv, 0.0f), 15.0f);
  }
  const float code = RoundHalfEven(q);
  if constexpr (F == QuantFormat::kInt8) {
    dq = code * p.scale;
  } else {
    dq = code * p.scale + p.min;
  }
  const float e = x - dq;
  err = std::fma(e, e, err);
  sum = std::fma(x, x, sum);
  return static_cast<int>(code);
}

// Writes code number i of a code array; int4 codes are written in
// increasing i, the even one of a byte first.
template <QuantFormat F>
inline void PutCode(std::byte* codes, int64_t i, int code) {
  if constexpr (F == QuantFormat::kInt8) {
    codes[i] = static_cast<std::byte>(static_cast<uint8_t>(code));
  } else if (i % 2 == 0) {
    codes[i / 2] = static_cast<std::byte>(code);
  } else {
    codes[i / 2] |= static_cast<std::byte>(code << 4);
  }
}

template <QuantFormat F>
inline float Dequant(const std::byte* codes, int64_t i, float scale,
                     float min) {
  if constexpr (F == QuantFormat::kInt8) {
    return static_cast<float>(static_cast<int8_t>(codes[i])) * scale;
  } else {
    const auto b = static_cast<uint8_t>(codes[i / 2]);
    return static_cast<float>(i % 2 == 0 ? b & 0xf : b >> 4) * scale + min;
  }
}

// Element i of a dequantized output of kOut: v, or v rounded to f16 / bf16.
template <DType kOut>
inline void PutOut(void* out, int64_t i, float v) {
  if constexpr (kOut == DType::kF32) {
    static_cast<float*>(out)[i] = v;
  } else if constexpr (kOut == DType::kF16) {
    static_cast<uint16_t*>(out)[i] = F32ToF16(v);
  } else {
    static_cast<uint16_t*>(out)[i] = F32ToBF16(v);
  }
}

// ---------------------------------------------------------------------------
// The portable loops.

// Keys, per channel: chunks of kKeyChunk channels; statistics over the valid
// rows, then each row's codes. Each channel's squared errors and squares add
// up in a float, then into double lane c % kLanes, in channel order.
template <QuantFormat F, DType kD>
void QuantizeKeysPortable(const Dims& dims, const QuantLayout& layout,
                          const void* src, int64_t first, int64_t end,
                          std::byte* part, ErrorSums& sums) {
  std::byte* codes = part + layout.k_codes;
  for (int64_t c0 = 0; c0 < dims.channels; c0 += kKeyChunk) {
    const int64_t n = std::min(kKeyChunk, dims.channels - c0);
    Stats stats[kKeyChunk];
    for (int64_t c = 0; c < n; ++c) stats[c] = InitStats<F>();
    float x[kKeyChunk];
    for (int64_t t = first; t < end; ++t) {
      WidenRow<kD>(src, t * dims.channels + c0, n, x);
      for (int64_t c = 0; c < n; ++c) Update<F>(stats[c], x[c]);
    }
    Params params[kKeyChunk];
    for (int64_t c = 0; c < n; ++c) {
      params[c] = MakeParams<F>(stats[c], part + layout.k_scales + (c0 + c) * 2,
                                part + layout.k_mins + (c0 + c) * 2);
    }
    float err[kKeyChunk] = {}, sum[kKeyChunk] = {};
    for (int64_t t = first; t < end; ++t) {
      const int64_t row = t * dims.channels + c0;
      WidenRow<kD>(src, row, n, x);
      for (int64_t c = 0; c < n; ++c) {
        PutCode<F>(codes, row + c,
                   QuantizeOne<F>(x[c], params[c], err[c], sum[c]));
      }
    }
    for (int64_t c = 0; c < n; ++c) {
      sums.err[(c0 + c) % kLanes] += err[c];
      sums.sum[(c0 + c) % kLanes] += sum[c];
    }
  }
}

// Values (and per-token keys), per token row: each group is scanned for its
// statistics, then quantized.
template <QuantFormat F, DType kD>
void QuantizeValuesPortable(const Dims& dims, const QuantLayout& layout,
                            const void* src, int64_t first, int64_t end,
                            std::byte* part, ErrorSums& sums) {
  std::byte* codes = part + layout.v_codes;
  std::vector<float> row(static_cast<size_t>(dims.channels));
  for (int64_t t = first; t < end; ++t) {
    WidenRow<kD>(src, t * dims.channels, dims.channels, row.data());
    float err[kLanes] = {}, sum[kLanes] = {};
    for (int64_t g = 0; g < dims.groups_per_row; ++g) {
      const int64_t base = t * dims.channels + g * dims.group;
      const float* x = row.data() + g * dims.group;
      Stats stats = InitStats<F>();
      for (int64_t i = 0; i < dims.group; ++i) Update<F>(stats, x[i]);
      const int64_t slot = (t * dims.groups_per_row + g) * 2;
      const Params params = MakeParams<F>(stats, part + layout.v_scales + slot,
                                          part + layout.v_mins + slot);
      for (int64_t i = 0; i < dims.group; ++i) {
        const int64_t lane = (g * dims.group + i) % kLanes;
        PutCode<F>(codes, base + i,
                   QuantizeOne<F>(x[i], params, err[lane], sum[lane]));
      }
    }
    for (int j = 0; j < kLanes; ++j) {
      sums.err[j] += err[j];
      sums.sum[j] += sum[j];
    }
  }
}

template <QuantFormat F, DType kOut>
void DequantizeKeysPortable(const Dims& dims, const QuantLayout& layout,
                            const std::byte* part, int64_t first, int64_t end,
                            void* out) {
  const std::byte* codes = part + layout.k_codes;
  for (int64_t c = 0; c < dims.channels; ++c) {
    const float scale = F16ToF32(LoadU16(part + layout.k_scales + c * 2));
    const float min = F == QuantFormat::kInt4
                          ? F16ToF32(LoadU16(part + layout.k_mins + c * 2))
                          : 0.0f;
    for (int64_t t = first; t < end; ++t) {
      PutOut<kOut>(out, (t - first) * dims.channels + c,
                   Dequant<F>(codes, t * dims.channels + c, scale, min));
    }
  }
}

template <QuantFormat F, DType kOut>
void DequantizeValuesPortable(const Dims& dims, const QuantLayout& layout,
                              const std::byte* part, int64_t first, int64_t end,
                              void* out) {
  const std::byte* codes = part + layout.v_codes;
  for (int64_t t = first; t < end; ++t) {
    for (int64_t g = 0; g < dims.groups_per_row; ++g) {
      const int64_t slot = (t * dims.groups_per_row + g) * 2;
      const float scale = F16ToF32(LoadU16(part + layout.v_scales + slot));
      const float min = F == QuantFormat::kInt4
                            ? F16ToF32(LoadU16(part + layout.v_mins + slot))
                            : 0.0f;
      const int64_t base = t * dims.channels + g * dims.group;
      const int64_t out_index = (t - first) * dims.channels + g * dims.group;
      for (int64_t i = 0; i < dims.group; ++i) {
        PutOut<kOut>(out, out_index + i,
                     Dequant<F>(codes, base + i, scale, min));
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Entry points (quantize_kernels.h). The portable loops always add to the
// error sums.

void QuantizeKeysSide(const QuantizeSideArgs& args, ErrorSums& sums) {
  WithFormatAndDType(args.format, args.dtype, [&]<QuantFormat F, DType kD>() {
    QuantizeKeysPortable<F, kD>(args.dims, args.layout, args.src, args.first,
                                args.end, args.part, sums);
  });
}

void QuantizeValuesSide(const QuantizeSideArgs& args, ErrorSums& sums) {
  WithFormatAndDType(args.format, args.dtype, [&]<QuantFormat F, DType kD>() {
    QuantizeValuesPortable<F, kD>(args.dims, args.layout, args.src, args.first,
                                  args.end, args.part, sums);
  });
}

void DequantizeKeysSide(const DequantizeSideArgs& args) {
  WithFormatAndDType(
      args.format, args.out_dtype, [&]<QuantFormat F, DType kOut>() {
        DequantizeKeysPortable<F, kOut>(args.dims, args.layout, args.part,
                                        args.first, args.end, args.out);
      });
}

void DequantizeValuesSide(const DequantizeSideArgs& args) {
  WithFormatAndDType(
      args.format, args.out_dtype, [&]<QuantFormat F, DType kOut>() {
        DequantizeValuesPortable<F, kOut>(args.dims, args.layout, args.part,
                                          args.first, args.end, args.out);
      });
}

constexpr QuantKernelTable kPortableKernels = {
    .quantize_keys = &QuantizeKeysSide,
    .quantize_values = &QuantizeValuesSide,
    .dequantize_keys = &DequantizeKeysSide,
    .dequantize_values = &DequantizeValuesSide,
};

}  // namespace

const QuantKernelTable& PortableQuantKernels() { return kPortableKernels; }

}  // namespace kvpage::internal
