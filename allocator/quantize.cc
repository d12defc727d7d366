#include "allocator/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <vector>

#include "allocator/check.h"
#include "allocator/convert.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define KVPAGE_X86 1
#else
#define KVPAGE_X86 0
#endif

// Every path must round and accumulate identically, so this file is
// compiled with -ffp-contract=off (CMakeLists.txt): no a * b + c becomes an
// FMA unless the code says so (std::fma, _mm*_fmadd_ps).

namespace kvpage::internal {
namespace {

constexpr float kF16Max = 65504.0f;
// Error accumulation lanes: lane = channel % kLanes (two 16-channel units).
constexpr int kLanes = 32;
// Channels whose per-channel arrays the key loops keep on the stack.
constexpr int64_t kKeyChunk = 256;
// The SIMD kernels work on units of 16 channels: group_size % 16 == 0.
constexpr int kUnit = 16;

[[maybe_unused]] bool ValidShape(QuantFormat format, const QuantShape& s) {
  return s.block_tokens > 0 && s.num_kv_heads > 0 && s.head_dim > 0 &&
         s.group_size > 0 && s.head_dim % s.group_size == 0 &&
         (format == QuantFormat::kInt8 || s.head_dim % 2 == 0);
}

// Bytes of the codes of `elems` elements.
int64_t CodeBytes(QuantFormat format, int64_t elems) {
  return format == QuantFormat::kInt8 ? elems : elems / 2;
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

namespace {

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
    double t = 0;
    for (double v : lanes) t += v;
    return t;
  }
};

inline void StoreU16(std::byte* dst, uint16_t v) {
  std::memcpy(dst, &v, sizeof(v));
}
inline uint16_t LoadU16(const std::byte* src) {
  uint16_t v;
  std::memcpy(&v, src, sizeof(v));
  return v;
}

// ---------------------------------------------------------------------------
// The scalar definition of every step. The SIMD kernels (quantize_simd.inc)
// compute the same values step for step (NeedsFloatClamp there explains the
// one place where they take another route to the same codes).

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
  ConvertElements(bytes + i * (kD == DType::kF32 ? 4 : 2), kD, out, DType::kF32,
                  n);
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
  float s;
  if constexpr (F == QuantFormat::kInt8) {
    s = st.a / 127.0f;
  } else {
    s = (st.b - st.a) / 15.0f;
    // + 0.0f turns -0 into +0: which zero a group's minimum is depends on
    // the order the group was scanned in.
    const float m = MinOf(MaxOf(st.a, -kF16Max), kF16Max) + 0.0f;
    const uint16_t m_bits = F32ToF16(m);
    StoreU16(min_dst, m_bits);
    p.min = F16ToF32(m_bits);
  }
  s = MinOf(MaxOf(s, 0.0f), kF16Max);
  const uint16_t s_bits = F32ToF16(s);
  StoreU16(scale_dst, s_bits);
  p.scale = F16ToF32(s_bits);
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
  const float r = RoundHalfEven(q);
  if constexpr (F == QuantFormat::kInt8) {
    dq = r * p.scale;
  } else {
    dq = r * p.scale + p.min;
  }
  const float e = x - dq;
  err = std::fma(e, e, err);
  sum = std::fma(x, x, sum);
  return static_cast<int>(r);
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

void ZeroRows(std::byte* base, int64_t row_bytes, const Dims& d, int64_t first,
              int64_t end) {
  std::memset(base, 0, first * row_bytes);
  std::memset(base + end * row_bytes, 0, (d.tokens - end) * row_bytes);
}

// Zeroes the bytes of a part that the kernels leave alone: the code rows of
// slots outside [first, end), for values (per_row) their scale and minimum
// rows too, and the padding after each array.
void ZeroUnwritten(QuantFormat format, const Dims& d, int64_t first,
                   int64_t end, bool per_row, int64_t scales, int64_t mins,
                   int64_t part_bytes, std::byte* part) {
  const int64_t row_codes = CodeBytes(format, d.channels);
  ZeroRows(part, row_codes, d, first, end);
  const int64_t codes_end = d.tokens * row_codes;
  std::memset(part + codes_end, 0, scales - codes_end);
  const int64_t row_scales = d.groups_per_row * 2;
  const int64_t scale_bytes = per_row ? d.tokens * row_scales : d.channels * 2;
  const bool int4 = format == QuantFormat::kInt4;
  const int64_t arrays[2][2] = {{scales, int4 ? mins : part_bytes},
                                {mins, part_bytes}};
  for (int i = 0; i < (int4 ? 2 : 1); ++i) {
    const int64_t start = arrays[i][0], next = arrays[i][1];
    if (per_row) ZeroRows(part + start, row_scales, d, first, end);
    std::memset(part + start + scale_bytes, 0, next - start - scale_bytes);
  }
}

// ---------------------------------------------------------------------------
// Portable kernels.

// Keys, per channel: chunks of kKeyChunk channels; statistics over the valid
// rows, then each row's codes. Each channel's squared errors and squares add
// up in a float, then into double lane c % kLanes, in channel order.
template <QuantFormat F, DType kD>
void QuantizeKeysPortable(const Dims& d, const QuantLayout& l, const void* src,
                          int64_t first, int64_t end, std::byte* part,
                          ErrorSums& sums) {
  std::byte* codes = part + l.k_codes;
  for (int64_t c0 = 0; c0 < d.channels; c0 += kKeyChunk) {
    const int64_t n = std::min(kKeyChunk, d.channels - c0);
    Stats st[kKeyChunk];
    for (int64_t c = 0; c < n; ++c) st[c] = InitStats<F>();
    float x[kKeyChunk];
    for (int64_t t = first; t < end; ++t) {
      WidenRow<kD>(src, t * d.channels + c0, n, x);
      for (int64_t c = 0; c < n; ++c) Update<F>(st[c], x[c]);
    }
    Params p[kKeyChunk];
    for (int64_t c = 0; c < n; ++c) {
      p[c] = MakeParams<F>(st[c], part + l.k_scales + (c0 + c) * 2,
                           part + l.k_mins + (c0 + c) * 2);
    }
    float err[kKeyChunk] = {}, sum[kKeyChunk] = {};
    for (int64_t t = first; t < end; ++t) {
      const int64_t row = t * d.channels + c0;
      WidenRow<kD>(src, row, n, x);
      for (int64_t c = 0; c < n; ++c) {
        PutCode<F>(codes, row + c, QuantizeOne<F>(x[c], p[c], err[c], sum[c]));
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
void QuantizeValuesPortable(const Dims& d, const QuantLayout& l,
                            const void* src, int64_t first, int64_t end,
                            std::byte* part, ErrorSums& sums) {
  std::byte* codes = part + l.v_codes;
  std::vector<float> row(static_cast<size_t>(d.channels));
  for (int64_t t = first; t < end; ++t) {
    WidenRow<kD>(src, t * d.channels, d.channels, row.data());
    float err[kLanes] = {}, sum[kLanes] = {};
    for (int64_t g = 0; g < d.groups_per_row; ++g) {
      const int64_t base = t * d.channels + g * d.group;
      const float* x = row.data() + g * d.group;
      Stats st = InitStats<F>();
      for (int64_t i = 0; i < d.group; ++i) Update<F>(st, x[i]);
      const int64_t slot = (t * d.groups_per_row + g) * 2;
      const Params p =
          MakeParams<F>(st, part + l.v_scales + slot, part + l.v_mins + slot);
      for (int64_t i = 0; i < d.group; ++i) {
        const int64_t lane = (g * d.group + i) % kLanes;
        PutCode<F>(codes, base + i,
                   QuantizeOne<F>(x[i], p, err[lane], sum[lane]));
      }
    }
    for (int j = 0; j < kLanes; ++j) {
      sums.err[j] += err[j];
      sums.sum[j] += sum[j];
    }
  }
}

template <QuantFormat F, DType kOut>
void DequantizeKeysPortable(const Dims& d, const QuantLayout& l,
                            const std::byte* part, int64_t first, int64_t end,
                            void* out) {
  const std::byte* codes = part + l.k_codes;
  for (int64_t c = 0; c < d.channels; ++c) {
    const float s = F16ToF32(LoadU16(part + l.k_scales + c * 2));
    const float m = F == QuantFormat::kInt4
                        ? F16ToF32(LoadU16(part + l.k_mins + c * 2))
                        : 0.0f;
    for (int64_t t = first; t < end; ++t) {
      PutOut<kOut>(out, (t - first) * d.channels + c,
                   Dequant<F>(codes, t * d.channels + c, s, m));
    }
  }
}

template <QuantFormat F, DType kOut>
void DequantizeValuesPortable(const Dims& d, const QuantLayout& l,
                              const std::byte* part, int64_t first, int64_t end,
                              void* out) {
  const std::byte* codes = part + l.v_codes;
  for (int64_t t = first; t < end; ++t) {
    for (int64_t g = 0; g < d.groups_per_row; ++g) {
      const int64_t slot = (t * d.groups_per_row + g) * 2;
      const float s = F16ToF32(LoadU16(part + l.v_scales + slot));
      const float m = F == QuantFormat::kInt4
                          ? F16ToF32(LoadU16(part + l.v_mins + slot))
                          : 0.0f;
      const int64_t base = t * d.channels + g * d.group;
      const int64_t o = (t - first) * d.channels + g * d.group;
      for (int64_t i = 0; i < d.group; ++i) {
        PutOut<kOut>(out, o + i, Dequant<F>(codes, base + i, s, m));
      }
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// SIMD kernels: quantize_simd.inc, written over units of 16 channels, is
// compiled once per instruction set below, each time in its own namespace
// with that set's unit type and operations, and every function carrying the
// set's target attribute (the build itself assumes no more than x86-64).

#if KVPAGE_X86

namespace {

// The 16 int4 codes of 8 packed bytes, one per byte in channel order: the
// low nibbles, interleaved with the bytes shifted right by 4 (each 16-bit
// shift drags the next byte's low nibble in above the high nibble; the mask
// clears it). SSE2 only, so any kernel below can inline it.
__attribute__((always_inline)) inline __m128i UnpackInt4(const std::byte* src) {
  const __m128i packed = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src));
  return _mm_and_si128(_mm_unpacklo_epi8(packed, _mm_srli_epi16(packed, 4)),
                       _mm_set1_epi8(0x0f));
}

}  // namespace

namespace avx2 {
namespace {

#define KVPAGE_SIMD_TARGET "avx2,fma,f16c"
#define KVPAGE_SIMD_INLINE \
  __attribute__((target(KVPAGE_SIMD_TARGET), always_inline)) inline
#define KVPAGE_SIMD_KERNEL __attribute__((target(KVPAGE_SIMD_TARGET)))

// A unit is two 8-lane vectors: channels 0..7 in lo, 8..15 in hi.
struct F {
  __m256 lo, hi;
};
struct I {
  __m256i lo, hi;
};

// Key strips: units whose statistics and sums stay in registers (16 ymm).
constexpr int kStripUnits = 2;

KVPAGE_SIMD_INLINE F Zero() {
  return {_mm256_setzero_ps(), _mm256_setzero_ps()};
}
KVPAGE_SIMD_INLINE F Set1(float v) {
  return {_mm256_set1_ps(v), _mm256_set1_ps(v)};
}
KVPAGE_SIMD_INLINE F Broadcast(const float* p) {
  const __m256 v = _mm256_broadcast_ss(p);
  return {v, v};
}
KVPAGE_SIMD_INLINE F LoadF32(const float* p) {
  return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)};
}
KVPAGE_SIMD_INLINE void StoreF32(float* p, F v) {
  _mm256_storeu_ps(p, v.lo);
  _mm256_storeu_ps(p + 8, v.hi);
}

template <DType kD>
KVPAGE_SIMD_INLINE __m256 Load8(const void* src, int64_t i) {
  if constexpr (kD == DType::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(src) + i);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(
        static_cast<const uint16_t*>(src) + i));
    if constexpr (kD == DType::kF16) {
      return _mm256_cvtph_ps(h);
    } else {
      return _mm256_castsi256_ps(
          _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
  }
}
template <DType kD>
KVPAGE_SIMD_INLINE F Load(const void* src, int64_t i) {
  return {Load8<kD>(src, i), Load8<kD>(src, i + 8)};
}

#define KVPAGE_UNIT_OP2(name, intrinsic)                   \
  KVPAGE_SIMD_INLINE F name(F a, F b) {                    \
    return {intrinsic(a.lo, b.lo), intrinsic(a.hi, b.hi)}; \
  }
KVPAGE_UNIT_OP2(Max, _mm256_max_ps)
KVPAGE_UNIT_OP2(Min, _mm256_min_ps)
KVPAGE_UNIT_OP2(Add, _mm256_add_ps)
KVPAGE_UNIT_OP2(Sub, _mm256_sub_ps)
KVPAGE_UNIT_OP2(Mul, _mm256_mul_ps)
KVPAGE_UNIT_OP2(Div, _mm256_div_ps)
#undef KVPAGE_UNIT_OP2

KVPAGE_SIMD_INLINE F Abs(F a) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  return {_mm256_andnot_ps(sign, a.lo), _mm256_andnot_ps(sign, a.hi)};
}
// a * b + c and c - a * b, rounded once.
KVPAGE_SIMD_INLINE F Fmadd(F a, F b, F c) {
  return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
KVPAGE_SIMD_INLINE F Fnmadd(F a, F b, F c) {
  return {_mm256_fnmadd_ps(a.lo, b.lo, c.lo),
          _mm256_fnmadd_ps(a.hi, b.hi, c.hi)};
}
// 1 / s, or 0 where s == 0.
KVPAGE_SIMD_INLINE F InvOrZero(F s) {
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
  return {_mm256_and_ps(_mm256_cmp_ps(s.lo, zero, _CMP_NEQ_UQ),
                        _mm256_div_ps(one, s.lo)),
          _mm256_and_ps(_mm256_cmp_ps(s.hi, zero, _CMP_NEQ_UQ),
                        _mm256_div_ps(one, s.hi))};
}
KVPAGE_SIMD_INLINE I CvtRound(F a) {
  return {_mm256_cvtps_epi32(a.lo), _mm256_cvtps_epi32(a.hi)};
}
KVPAGE_SIMD_INLINE I ClampI(I r, int lo, int hi) {
  const __m256i l = _mm256_set1_epi32(lo), h = _mm256_set1_epi32(hi);
  return {_mm256_min_epi32(_mm256_max_epi32(r.lo, l), h),
          _mm256_min_epi32(_mm256_max_epi32(r.hi, l), h)};
}
// Whether a lane of v is >= bound.
KVPAGE_SIMD_INLINE bool AnyAtLeast(F v, float bound) {
  const __m256 b = _mm256_set1_ps(bound);
  return _mm256_movemask_ps(_mm256_or_ps(_mm256_cmp_ps(v.lo, b, _CMP_GE_OQ),
                                         _mm256_cmp_ps(v.hi, b, _CMP_GE_OQ))) !=
         0;
}
KVPAGE_SIMD_INLINE F CvtI(I a) {
  return {_mm256_cvtepi32_ps(a.lo), _mm256_cvtepi32_ps(a.hi)};
}

// Stores x rounded to f16 (16 values, 32 bytes) and returns those values.
KVPAGE_SIMD_INLINE F ToF16(F x, std::byte* dst) {
  const __m128i lo = _mm256_cvtps_ph(x.lo, _MM_FROUND_TO_NEAREST_INT);
  const __m128i hi = _mm256_cvtps_ph(x.hi, _MM_FROUND_TO_NEAREST_INT);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), lo);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 16), hi);
  return {_mm256_cvtph_ps(lo), _mm256_cvtph_ps(hi)};
}
KVPAGE_SIMD_INLINE F LoadF16(const std::byte* src) {
  return {
      _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src))),
      _mm256_cvtph_ps(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16)))};
}

// Elements i .. i + 15 of an output of kOut (f32, or rounded to f16 / bf16
// as F32ToF16 / F32ToBF16 round; the values are finite, so the bf16 rounding
// needs no NaN case).
KVPAGE_SIMD_INLINE __m256i Bf16Bits8(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i odd =
      _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  return _mm256_srli_epi32(
      _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), odd),
      16);
}
// The 16 values of v as f16 / bf16 bits, in order.
template <DType kOut>
KVPAGE_SIMD_INLINE __m256i Out16(F v) {
  if constexpr (kOut == DType::kF16) {
    return _mm256_set_m128i(_mm256_cvtps_ph(v.hi, _MM_FROUND_TO_NEAREST_INT),
                            _mm256_cvtps_ph(v.lo, _MM_FROUND_TO_NEAREST_INT));
  } else {
    // packus works per 128-bit lane: lo 0-3, hi 0-3, lo 4-7, hi 4-7.
    const __m256i p = _mm256_packus_epi32(Bf16Bits8(v.lo), Bf16Bits8(v.hi));
    return _mm256_permute4x64_epi64(p, 0xd8);
  }
}

// int4 decoding by table, for groups of a multiple of 32 values into f16 /
// bf16: the table holds the group's 16 possible outputs (code c: c * scale +
// min, rounded as StoreOut rounds), split into low and high bytes for
// pshufb, in both 128-bit lanes.
struct Lut16 {
  __m256i lo, hi;
};
template <DType kOut>
KVPAGE_SIMD_INLINE Lut16 MakeLut16(F table) {
  const __m256i w = Out16<kOut>(table);
  const __m128i a = _mm256_castsi256_si128(w);
  const __m128i b = _mm256_extracti128_si256(w, 1);
  const __m128i m = _mm_set1_epi16(0xff);
  const __m128i lo = _mm_packus_epi16(_mm_and_si128(a, m), _mm_and_si128(b, m));
  const __m128i hi =
      _mm_packus_epi16(_mm_srli_epi16(a, 8), _mm_srli_epi16(b, 8));
  return {_mm256_broadcastsi128_si256(lo), _mm256_broadcastsi128_si256(hi)};
}
// Writes the outputs of the 32 codes packed in 16 bytes at `src` to
// out[i .. i + 31].
KVPAGE_SIMD_INLINE void StoreLutCodes32(void* out, int64_t i, const Lut16& t,
                                        const std::byte* src) {
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
  const __m128i m = _mm_set1_epi8(0x0f);
  const __m128i lo_n = _mm_and_si128(packed, m);
  const __m128i hi_n = _mm_and_si128(_mm_srli_epi16(packed, 4), m);
  // Codes 0..15 in the low lane, 16..31 in the high one.
  const __m256i codes = _mm256_set_m128i(_mm_unpackhi_epi8(lo_n, hi_n),
                                         _mm_unpacklo_epi8(lo_n, hi_n));
  const __m256i l = _mm256_shuffle_epi8(t.lo, codes);
  const __m256i h = _mm256_shuffle_epi8(t.hi, codes);
  const __m256i w0 = _mm256_unpacklo_epi8(l, h);  // codes 0..7 | 16..23
  const __m256i w1 = _mm256_unpackhi_epi8(l, h);  // codes 8..15 | 24..31
  auto* dst = reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + i);
  _mm256_storeu_si256(dst, _mm256_permute2x128_si256(w0, w1, 0x20));
  _mm256_storeu_si256(dst + 1, _mm256_permute2x128_si256(w0, w1, 0x31));
}
KVPAGE_SIMD_INLINE F Iota16() {
  return {_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7),
          _mm256_setr_ps(8, 9, 10, 11, 12, 13, 14, 15)};
}

// Codes of 32 consecutive channels (r0 first) as 32 bytes, in order.
KVPAGE_SIMD_INLINE __m256i PackInt8(__m256i r0, __m256i r1, __m256i r2,
                                    __m256i r3) {
  // The packs work per 128-bit lane: dword k of p holds 4 codes of vector
  // k % 4, half k / 4; the permute puts them back in order.
  // The saturating packs and the byte max clamp the codes to [-127, 127].
  const __m256i p =
      _mm256_max_epi8(_mm256_packs_epi16(_mm256_packs_epi32(r0, r1),
                                         _mm256_packs_epi32(r2, r3)),
                      _mm256_set1_epi8(-127));
  return _mm256_permutevar8x32_epi32(p,
                                     _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// Codes (0..15) of 32 consecutive channels as 16 bytes, two per byte.
KVPAGE_SIMD_INLINE __m128i PackInt4(__m256i r0, __m256i r1, __m256i r2,
                                    __m256i r3) {
  // Bytes as PackInt8 has them before its permute: adjacent channels are
  // adjacent bytes, so each 16-bit unit folds its pair into its low byte.
  // The saturating packs and the byte min / max clamp them to [0, 15].
  const __m256i p = _mm256_min_epi8(
      _mm256_max_epi8(_mm256_packs_epi16(_mm256_packs_epi32(r0, r1),
                                         _mm256_packs_epi32(r2, r3)),
                      _mm256_setzero_si256()),
      _mm256_set1_epi8(15));
  __m256i w = _mm256_or_si256(p, _mm256_srli_epi16(p, 4));
  w = _mm256_and_si256(w, _mm256_set1_epi16(0x00ff));
  // 16-bit units of 4 channels: the low lane holds half 0 of r0..r3, the
  // high lane half 1; interleaving them restores the order.
  const __m256i b = _mm256_packus_epi16(w, w);
  return _mm_unpacklo_epi16(_mm256_castsi256_si128(b),
                            _mm256_extracti128_si256(b, 1));
}

KVPAGE_SIMD_INLINE void StoreInt8(std::byte* dst, I a) {
  const __m256i z = _mm256_setzero_si256();
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst),
                   _mm256_castsi256_si128(PackInt8(a.lo, a.hi, z, z)));
}
KVPAGE_SIMD_INLINE void StoreInt8x2(std::byte* dst, I a, I b) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst),
                      PackInt8(a.lo, a.hi, b.lo, b.hi));
}
KVPAGE_SIMD_INLINE void StoreInt4(std::byte* dst, I a) {
  const __m256i z = _mm256_setzero_si256();
  _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), PackInt4(a.lo, a.hi, z, z));
}
KVPAGE_SIMD_INLINE void StoreInt4x2(std::byte* dst, I a, I b) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst),
                   PackInt4(a.lo, a.hi, b.lo, b.hi));
}
KVPAGE_SIMD_INLINE void StoreInt8x4(std::byte* dst, I a, I b, I c, I e) {
  StoreInt8x2(dst, a, b);
  StoreInt8x2(dst + 32, c, e);
}
KVPAGE_SIMD_INLINE void StoreInt4x4(std::byte* dst, I a, I b, I c, I e) {
  StoreInt4x2(dst, a, b);
  StoreInt4x2(dst + 16, c, e);
}

// 32 16-bit lanes: channels 0..15 in lo, 16..31 in hi.
struct H {
  __m256i lo, hi;
};
KVPAGE_SIMD_INLINE H SetH(uint16_t v) {
  const __m256i x = _mm256_set1_epi16(static_cast<int16_t>(v));
  return {x, x};
}
KVPAGE_SIMD_INLINE H LoadH(const void* src, int64_t i) {
  const auto* p = static_cast<const uint16_t*>(src) + i;
  return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16))};
}
KVPAGE_SIMD_INLINE H AndH(H a, uint16_t m) {
  const __m256i x = _mm256_set1_epi16(static_cast<int16_t>(m));
  return {_mm256_and_si256(a.lo, x), _mm256_and_si256(a.hi, x)};
}
#define KVPAGE_H_OP2(name, intrinsic)                      \
  KVPAGE_SIMD_INLINE H name(H a, H b) {                    \
    return {intrinsic(a.lo, b.lo), intrinsic(a.hi, b.hi)}; \
  }
KVPAGE_H_OP2(MaxU16, _mm256_max_epu16)
KVPAGE_H_OP2(MinI16, _mm256_min_epi16)
KVPAGE_H_OP2(MaxI16, _mm256_max_epi16)
#undef KVPAGE_H_OP2
// x ^ ((x >> 15) & 0x7fff), arithmetic shift: a signed order of the floats.
KVPAGE_SIMD_INLINE H Ordered(H x) {
  const __m256i m = _mm256_set1_epi16(0x7fff);
  return {
      _mm256_xor_si256(x.lo, _mm256_and_si256(_mm256_srai_epi16(x.lo, 15), m)),
      _mm256_xor_si256(x.hi, _mm256_and_si256(_mm256_srai_epi16(x.hi, 15), m))};
}
// Whether a lane, unsigned, is above `bound`.
KVPAGE_SIMD_INLINE bool AnyAboveU16(H x, uint16_t bound) {
  const __m256i m = _mm256_max_epu16(x.lo, x.hi);
  const __m256i b = _mm256_set1_epi16(static_cast<int16_t>(bound + 1));
  return _mm256_movemask_epi8(_mm256_cmpeq_epi16(_mm256_max_epu16(m, b), m)) !=
         0;
}
// Unit j (channels 16j .. 16j + 15) of x as floats.
template <DType kD>
KVPAGE_SIMD_INLINE F WidenH(H x, int j) {
  const __m256i v = j == 0 ? x.lo : x.hi;
  const __m128i lo = _mm256_castsi256_si128(v);
  const __m128i hi = _mm256_extracti128_si256(v, 1);
  if constexpr (kD == DType::kF16) {
    return {_mm256_cvtph_ps(lo), _mm256_cvtph_ps(hi)};
  } else {
    return {
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(lo), 16)),
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(hi), 16))};
  }
}

KVPAGE_SIMD_INLINE I LoadInt8(const std::byte* src) {
  return {_mm256_cvtepi8_epi32(
              _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src))),
          _mm256_cvtepi8_epi32(
              _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + 8)))};
}
KVPAGE_SIMD_INLINE I LoadInt4(const std::byte* src) {
  const __m128i codes = UnpackInt4(src);
  return {_mm256_cvtepu8_epi32(codes),
          _mm256_cvtepu8_epi32(_mm_srli_si128(codes, 8))};
}
// The 32 codes of 16 packed bytes as two units: the even codes (0, 2 ..
// 30: the low nibbles) and the odd ones (the high nibbles), each byte
// widened once.
KVPAGE_SIMD_INLINE void LoadInt4EvenOdd(const std::byte* src, I& even, I& odd) {
  const __m256i a = _mm256_cvtepu8_epi32(
      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src)));
  const __m256i b = _mm256_cvtepu8_epi32(
      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + 8)));
  const __m256i m = _mm256_set1_epi32(0x0f);
  even = {_mm256_and_si256(a, m), _mm256_and_si256(b, m)};
  odd = {_mm256_srli_epi32(a, 4), _mm256_srli_epi32(b, 4)};
}
// Lanes 0, 2 .. 14 of the 16 in x then y (kImm 0x88), or 1, 3 .. 15
// (0xdd): shuffle_ps picks [0 2 8 10 | 4 6 12 14] per 128-bit lane, the
// 64-bit permute puts them in order.
template <int kImm>
KVPAGE_SIMD_INLINE __m256 PickHalf(__m256 x, __m256 y) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(
      _mm256_castps_pd(_mm256_shuffle_ps(x, y, kImm)), 0xd8));
}
// Lanes 0, 2 .. 30 of the 32 in a then b, and lanes 1, 3 .. 31.
KVPAGE_SIMD_INLINE void SplitEvenOdd(F a, F b, F& even, F& odd) {
  even = {PickHalf<0x88>(a.lo, a.hi), PickHalf<0x88>(b.lo, b.hi)};
  odd = {PickHalf<0xdd>(a.lo, a.hi), PickHalf<0xdd>(b.lo, b.hi)};
}
// 8 lanes of e and of o interleaved: e0 o0 .. e3 o3 in x, e4 o4 .. in y.
KVPAGE_SIMD_INLINE void Merge8(__m256 e, __m256 o, __m256& x, __m256& y) {
  const __m256 lo = _mm256_unpacklo_ps(e, o), hi = _mm256_unpackhi_ps(e, o);
  x = _mm256_permute2f128_ps(lo, hi, 0x20);
  y = _mm256_permute2f128_ps(lo, hi, 0x31);
}
// The inverse: lanes 0 .. 15 and 16 .. 31 of even and odd interleaved.
KVPAGE_SIMD_INLINE void MergeEvenOdd(F even, F odd, F& first, F& second) {
  Merge8(even.lo, odd.lo, first.lo, first.hi);
  Merge8(even.hi, odd.hi, second.lo, second.hi);
}
// 16-bit lanes: even and odd interleaved into dst[0 .. 31].
KVPAGE_SIMD_INLINE void StoreMerged16(uint16_t* dst, __m256i even,
                                      __m256i odd) {
  const __m256i lo = _mm256_unpacklo_epi16(even, odd);
  const __m256i hi = _mm256_unpackhi_epi16(even, odd);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst),
                      _mm256_permute2x128_si256(lo, hi, 0x20));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 16),
                      _mm256_permute2x128_si256(lo, hi, 0x31));
}

template <bool kMax>
KVPAGE_SIMD_INLINE __m256 MaxOrMin8(__m256 a, __m256 b) {
  return kMax ? _mm256_max_ps(a, b) : _mm256_min_ps(a, b);
}

// r[i] = the max (kMax) or min of the 8 lanes of v[i].
template <bool kMax>
KVPAGE_SIMD_INLINE __m256 Reduce8x8(const __m256 (&v)[8]) {
  // Per 128-bit half: pairs, then quads; then the two halves.
  __m256 t[4];
  for (int i = 0; i < 4; ++i) {
    t[i] = MaxOrMin8<kMax>(_mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                           _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  }
  __m256 u[2];
  for (int i = 0; i < 2; ++i) {
    u[i] = MaxOrMin8<kMax>(_mm256_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44),
                           _mm256_shuffle_ps(t[2 * i], t[2 * i + 1], 0xee));
  }
  return MaxOrMin8<kMax>(_mm256_permute2f128_ps(u[0], u[1], 0x20),
                         _mm256_permute2f128_ps(u[0], u[1], 0x31));
}

// Lane g of the result is the max (kMax) or min of the 16 lanes of v[g].
template <bool kMax>
KVPAGE_SIMD_INLINE F Reduce16(const F (&v)[16]) {
  __m256 a[8], b[8];
  for (int i = 0; i < 8; ++i) {
    a[i] = MaxOrMin8<kMax>(v[i].lo, v[i].hi);
    b[i] = MaxOrMin8<kMax>(v[8 + i].lo, v[8 + i].hi);
  }
  return {Reduce8x8<kMax>(a), Reduce8x8<kMax>(b)};
}

// lanes[0..15] += v, in double.
KVPAGE_SIMD_INLINE void AddToDoubles(F v, double* lanes) {
  const __m256 halves[2] = {v.lo, v.hi};
  for (int h = 0; h < 2; ++h) {
    double* p = lanes + 8 * h;
    _mm256_storeu_pd(
        p, _mm256_add_pd(_mm256_loadu_pd(p),
                         _mm256_cvtps_pd(_mm256_castps256_ps128(halves[h]))));
    _mm256_storeu_pd(
        p + 4,
        _mm256_add_pd(_mm256_loadu_pd(p + 4),
                      _mm256_cvtps_pd(_mm256_extractf128_ps(halves[h], 1))));
  }
}

#include "allocator/quantize_simd.inc"

#undef KVPAGE_SIMD_KERNEL
#undef KVPAGE_SIMD_INLINE
#undef KVPAGE_SIMD_TARGET

}  // namespace
}  // namespace avx2

// GCC 12 warns that the AVX-512 intrinsics' internal _mm512_undefined_*
// values "may be used uninitialized" once inlined (GCC bug 105593, fixed in
// GCC 13); the instructions overwrite those values before any use.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace avx512 {
namespace {

#define KVPAGE_SIMD_TARGET "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c"
#define KVPAGE_SIMD_INLINE \
  __attribute__((target(KVPAGE_SIMD_TARGET), always_inline)) inline
#define KVPAGE_SIMD_KERNEL __attribute__((target(KVPAGE_SIMD_TARGET)))

// A unit is one 16-lane vector.
using F = __m512;
using I = __m512i;

// Key strips: units whose statistics and sums stay in registers (32 zmm).
constexpr int kStripUnits = 4;

KVPAGE_SIMD_INLINE F Zero() { return _mm512_setzero_ps(); }
KVPAGE_SIMD_INLINE F Set1(float v) { return _mm512_set1_ps(v); }
KVPAGE_SIMD_INLINE F Broadcast(const float* p) { return _mm512_set1_ps(*p); }
KVPAGE_SIMD_INLINE F LoadF32(const float* p) { return _mm512_loadu_ps(p); }
KVPAGE_SIMD_INLINE void StoreF32(float* p, F v) { _mm512_storeu_ps(p, v); }

template <DType kD>
KVPAGE_SIMD_INLINE F Load(const void* src, int64_t i) {
  if constexpr (kD == DType::kF32) {
    return _mm512_loadu_ps(static_cast<const float*>(src) + i);
  } else {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
        static_cast<const uint16_t*>(src) + i));
    if constexpr (kD == DType::kF16) {
      return _mm512_cvtph_ps(h);
    } else {
      return _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
  }
}

KVPAGE_SIMD_INLINE F Max(F a, F b) { return _mm512_max_ps(a, b); }
KVPAGE_SIMD_INLINE F Min(F a, F b) { return _mm512_min_ps(a, b); }
KVPAGE_SIMD_INLINE F Add(F a, F b) { return _mm512_add_ps(a, b); }
KVPAGE_SIMD_INLINE F Sub(F a, F b) { return _mm512_sub_ps(a, b); }
KVPAGE_SIMD_INLINE F Mul(F a, F b) { return _mm512_mul_ps(a, b); }
KVPAGE_SIMD_INLINE F Div(F a, F b) { return _mm512_div_ps(a, b); }
KVPAGE_SIMD_INLINE F Abs(F a) {
  return _mm512_castsi512_ps(
      _mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7fffffff)));
}
KVPAGE_SIMD_INLINE F Fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
KVPAGE_SIMD_INLINE F Fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
KVPAGE_SIMD_INLINE F InvOrZero(F s) {
  const __mmask16 nonzero =
      _mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_NEQ_UQ);
  return _mm512_maskz_div_ps(nonzero, _mm512_set1_ps(1.0f), s);
}
KVPAGE_SIMD_INLINE I CvtRound(F a) { return _mm512_cvtps_epi32(a); }
KVPAGE_SIMD_INLINE I ClampI(I r, int lo, int hi) {
  return _mm512_min_epi32(_mm512_max_epi32(r, _mm512_set1_epi32(lo)),
                          _mm512_set1_epi32(hi));
}
KVPAGE_SIMD_INLINE bool AnyAtLeast(F v, float bound) {
  return _mm512_cmp_ps_mask(v, _mm512_set1_ps(bound), _CMP_GE_OQ) != 0;
}
KVPAGE_SIMD_INLINE F CvtI(I a) { return _mm512_cvtepi32_ps(a); }

KVPAGE_SIMD_INLINE F ToF16(F x, std::byte* dst) {
  const __m256i h = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), h);
  return _mm512_cvtph_ps(h);
}
KVPAGE_SIMD_INLINE F LoadF16(const std::byte* src) {
  return _mm512_cvtph_ps(
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
}

template <DType kOut>
KVPAGE_SIMD_INLINE __m256i Out16(F v) {
  if constexpr (kOut == DType::kF16) {
    return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
  } else {  // finite values: no NaN case (see avx2::StoreOut)
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i odd =
        _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)),
                         odd),
        16));
  }
}

// int4 decoding by table (see avx2::Lut16): vpermw looks the 16-bit outputs
// up directly. The table is held twice (words 0..15 and 16..31), so that an
// index needs only its low 4 bits right: vpermw reads 5.
using Lut16 = __m512i;
template <DType kOut>
KVPAGE_SIMD_INLINE Lut16 MakeLut16(F table) {
  return _mm512_broadcast_i64x4(Out16<kOut>(table));
}
KVPAGE_SIMD_INLINE void StoreLutCodes32(void* out, int64_t i, Lut16 t,
                                        const std::byte* src) {
  // Byte b = 16h + l widened to a dword and multiplied by 4097 (b + b <<
  // 12, no carries): its low word holds l in bits 0..3, its high word is
  // h. So the words are the codes in order (low nibble first), 4 bits each
  // plus bits vpermw ignores or the table's second copy absorbs: one
  // multiply in place of the nibble split and interleave.
  const __m512i bytes = _mm512_cvtepu8_epi32(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  const __m512i codes = _mm512_madd_epi16(bytes, _mm512_set1_epi32(4097));
  _mm512_storeu_si512(static_cast<uint16_t*>(out) + i,
                      _mm512_permutexvar_epi16(codes, t));
}
KVPAGE_SIMD_INLINE F Iota16() {
  return _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

// The stores clamp the codes: int8 to [-127, 127] (saturating conversions or
// packs, then a byte max), int4 to [0, 15].
KVPAGE_SIMD_INLINE void StoreInt8(std::byte* dst, I a) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst),
                   _mm_max_epi8(_mm512_cvtsepi32_epi8(a), _mm_set1_epi8(-127)));
}
// The saturating packs of 4 units (r1..r3 may repeat r0): dword k of each
// 128-bit lane L holds the 4 bytes of unit k, lanes 4L .. 4L + 3; `order`
// gathers the dwords wanted, in order.
KVPAGE_SIMD_INLINE __m512i PackUnits(I r0, I r1, I r2, I r3, __m512i order) {
  return _mm512_permutexvar_epi32(
      order, _mm512_packs_epi16(_mm512_packs_epi32(r0, r1),
                                _mm512_packs_epi32(r2, r3)));
}
// Units a and b, in order, in the low 256 bits.
KVPAGE_SIMD_INLINE __m256i PackUnits2(I a, I b) {
  const __m512i order =
      _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_castsi512_si256(PackUnits(a, b, a, b, order));
}
KVPAGE_SIMD_INLINE __m512i PackUnits4(I a, I b, I c, I e) {
  const __m512i order =
      _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return PackUnits(a, b, c, e, order);
}
KVPAGE_SIMD_INLINE void StoreInt8x2(std::byte* dst, I a, I b) {
  _mm256_storeu_si256(
      reinterpret_cast<__m256i*>(dst),
      _mm256_max_epi8(PackUnits2(a, b), _mm256_set1_epi8(-127)));
}
KVPAGE_SIMD_INLINE void StoreInt8x4(std::byte* dst, I a, I b, I c, I e) {
  _mm512_storeu_si512(
      dst, _mm512_max_epi8(PackUnits4(a, b, c, e), _mm512_set1_epi8(-127)));
}
KVPAGE_SIMD_INLINE void StoreInt4(std::byte* dst, I a) {
  a = _mm512_min_epi32(_mm512_max_epi32(a, _mm512_setzero_si512()),
                       _mm512_set1_epi32(15));
  // The low dword of each qword becomes code 2k | code 2k+1 << 4.
  const __m512i pairs = _mm512_or_si512(a, _mm512_srli_epi64(a, 28));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(dst),
                   _mm512_cvtepi64_epi8(pairs));
}
// Codes in bytes, in order, clamped; maddubs folds each pair of bytes into
// code 2k | code 2k+1 << 4 (a 16-bit lane), vpmovwb narrows.
KVPAGE_SIMD_INLINE void StoreInt4x2(std::byte* dst, I a, I b) {
  const __m256i bytes =
      _mm256_min_epi8(_mm256_max_epi8(PackUnits2(a, b), _mm256_setzero_si256()),
                      _mm256_set1_epi8(15));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst),
                   _mm256_cvtepi16_epi8(
                       _mm256_maddubs_epi16(bytes, _mm256_set1_epi16(0x1001))));
}
KVPAGE_SIMD_INLINE void StoreInt4x4(std::byte* dst, I a, I b, I c, I e) {
  const __m512i bytes = _mm512_min_epi8(
      _mm512_max_epi8(PackUnits4(a, b, c, e), _mm512_setzero_si512()),
      _mm512_set1_epi8(15));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst),
                      _mm512_cvtepi16_epi8(_mm512_maddubs_epi16(
                          bytes, _mm512_set1_epi16(0x1001))));
}

// 32 16-bit lanes.
using H = __m512i;
KVPAGE_SIMD_INLINE H SetH(uint16_t v) {
  return _mm512_set1_epi16(static_cast<int16_t>(v));
}
KVPAGE_SIMD_INLINE H LoadH(const void* src, int64_t i) {
  return _mm512_loadu_si512(static_cast<const uint16_t*>(src) + i);
}
KVPAGE_SIMD_INLINE H AndH(H a, uint16_t m) {
  return _mm512_and_si512(a, SetH(m));
}
KVPAGE_SIMD_INLINE H MaxU16(H a, H b) { return _mm512_max_epu16(a, b); }
KVPAGE_SIMD_INLINE H MinI16(H a, H b) { return _mm512_min_epi16(a, b); }
KVPAGE_SIMD_INLINE H MaxI16(H a, H b) { return _mm512_max_epi16(a, b); }
KVPAGE_SIMD_INLINE H Ordered(H x) {
  return _mm512_xor_si512(
      x, _mm512_and_si512(_mm512_srai_epi16(x, 15), SetH(0x7fff)));
}
KVPAGE_SIMD_INLINE bool AnyAboveU16(H x, uint16_t bound) {
  return _mm512_cmpgt_epu16_mask(x, SetH(bound)) != 0;
}
template <DType kD>
KVPAGE_SIMD_INLINE F WidenH(H x, int j) {
  const __m256i v =
      j == 0 ? _mm512_castsi512_si256(x) : _mm512_extracti64x4_epi64(x, 1);
  if constexpr (kD == DType::kF16) {
    return _mm512_cvtph_ps(v);
  } else {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
  }
}
KVPAGE_SIMD_INLINE I LoadInt8(const std::byte* src) {
  return _mm512_cvtepi8_epi32(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
}
KVPAGE_SIMD_INLINE I LoadInt4(const std::byte* src) {
  return _mm512_cvtepu8_epi32(UnpackInt4(src));
}
// The 32 codes of 16 packed bytes as two units: the even codes (0, 2 ..
// 30: the low nibbles) and the odd ones (the high nibbles), each byte
// widened once.
KVPAGE_SIMD_INLINE void LoadInt4EvenOdd(const std::byte* src, I& even, I& odd) {
  const I bytes = _mm512_cvtepu8_epi32(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  even = _mm512_and_si512(bytes, _mm512_set1_epi32(0x0f));
  odd = _mm512_srli_epi32(bytes, 4);
}
// Lanes 0, 2 .. 30 of the 32 in a then b, and lanes 1, 3 .. 31.
KVPAGE_SIMD_INLINE void SplitEvenOdd(F a, F b, F& even, F& odd) {
  const __m512i e = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22,
                                      24, 26, 28, 30);
  even = _mm512_permutex2var_ps(a, e, b);
  odd = _mm512_permutex2var_ps(a, _mm512_add_epi32(e, _mm512_set1_epi32(1)), b);
}
// The inverse: lanes 0 .. 15 and 16 .. 31 of even and odd interleaved.
KVPAGE_SIMD_INLINE void MergeEvenOdd(F even, F odd, F& first, F& second) {
  const __m512i i =
      _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  first = _mm512_permutex2var_ps(even, i, odd);
  second = _mm512_permutex2var_ps(
      even, _mm512_add_epi32(i, _mm512_set1_epi32(8)), odd);
}
// 16-bit lanes: even and odd interleaved into dst[0 .. 31].
KVPAGE_SIMD_INLINE void StoreMerged16(uint16_t* dst, __m256i even,
                                      __m256i odd) {
  const __m512i i = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26,
                                     10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
                                     4, 19, 3, 18, 2, 17, 1, 16, 0);
  _mm512_storeu_si512(
      dst, _mm512_permutexvar_epi16(
               i, _mm512_inserti64x4(_mm512_castsi256_si512(even), odd, 1)));
}

template <bool kMax>
KVPAGE_SIMD_INLINE F MaxOrMin(F a, F b) {
  return kMax ? _mm512_max_ps(a, b) : _mm512_min_ps(a, b);
}

// Lane g of the result is the max (kMax) or min of the 16 lanes of v[g].
template <bool kMax>
KVPAGE_SIMD_INLINE F Reduce16(const F (&v)[16]) {
  // Within each 128-bit lane: pairs of vectors, then quads (4 vectors' 4
  // partials per lane); then across the 4 lanes, twice.
  F t[8];
  for (int i = 0; i < 8; ++i) {
    t[i] = MaxOrMin<kMax>(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                          _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  }
  F u[4];  // u[i], lane L: the partials of v[4i .. 4i+3] over lane L
  for (int i = 0; i < 4; ++i) {
    u[i] = MaxOrMin<kMax>(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44),
                          _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xee));
  }
  F w[2];  // w[i]: lanes (0|1), (2|3) of u[2i], then of u[2i+1]
  for (int i = 0; i < 2; ++i) {
    w[i] = MaxOrMin<kMax>(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88),
                          _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xdd));
  }
  return MaxOrMin<kMax>(_mm512_shuffle_f32x4(w[0], w[1], 0x88),
                        _mm512_shuffle_f32x4(w[0], w[1], 0xdd));
}

KVPAGE_SIMD_INLINE void AddToDoubles(F v, double* lanes) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d hi = _mm512_cvtps_pd(
      _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  _mm512_storeu_pd(lanes, _mm512_add_pd(_mm512_loadu_pd(lanes), lo));
  _mm512_storeu_pd(lanes + 8, _mm512_add_pd(_mm512_loadu_pd(lanes + 8), hi));
}

#include "allocator/quantize_simd.inc"

#undef KVPAGE_SIMD_KERNEL
#undef KVPAGE_SIMD_INLINE
#undef KVPAGE_SIMD_TARGET

}  // namespace
}  // namespace avx512

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#endif  // KVPAGE_X86

// ---------------------------------------------------------------------------
// Dispatch.

namespace {

// Calls fn.template operator()<F, kD>() for the runtime format and dtype.
template <QuantFormat F, typename Fn>
void WithDType(DType dtype, Fn& fn) {
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
}

template <typename Fn>
void WithFormatAndDType(QuantFormat format, DType dtype, Fn&& fn) {
  if (format == QuantFormat::kInt8) {
    WithDType<QuantFormat::kInt8>(dtype, fn);
  } else {
    WithDType<QuantFormat::kInt4>(dtype, fn);
  }
}

template <typename Fn>
void WithFormat(QuantFormat format, Fn&& fn) {
  if (format == QuantFormat::kInt8) {
    fn.template operator()<QuantFormat::kInt8>();
  } else {
    fn.template operator()<QuantFormat::kInt4>();
  }
}

struct CpuKernels {
  bool avx2 = false, avx512 = false;
};

CpuKernels DetectKernels() {
  CpuKernels k;
#if KVPAGE_X86
  // __builtin_cpu_supports also checks that the OS saves the YMM / ZMM
  // state. F16C is CPUID.1:ECX[29] (clang 14's __builtin_cpu_supports does
  // not know "f16c").
  __builtin_cpu_init();
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
  k.avx2 =
      f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  k.avx512 = k.avx2 && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vl");
#endif
  return k;
}

const CpuKernels& Cpu() {
  static const CpuKernels kernels = DetectKernels();
  return kernels;
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

// Runs the keys (values = false) or values kernel of `kernels`; the SIMD
// kernels add to `sums` only with `error` (the portable loops always do).
// `next` (may be null): the keys' source, which the SIMD values kernels
// prefetch while they work.
template <QuantFormat F, DType kD>
void QuantizeSide(QuantKernels kernels, bool values, bool error, const Dims& d,
                  const QuantLayout& l, const void* src, int64_t first,
                  int64_t end, std::byte* part, ErrorSums& sums,
                  const void* next = nullptr) {
  switch (kernels) {
#if KVPAGE_X86
    case QuantKernels::kAvx512:
      if (error) {
        return values ? avx512::QuantizeValues<F, kD, true>(
                            d, l, src, first, end, part, sums, next)
                      : avx512::QuantizeKeys<F, kD, true>(d, l, src, first, end,
                                                          part, sums);
      }
      return values ? avx512::QuantizeValues<F, kD, false>(
                          d, l, src, first, end, part, sums, next)
                    : avx512::QuantizeKeys<F, kD, false>(d, l, src, first, end,
                                                         part, sums);
    case QuantKernels::kAvx2:
      if (error) {
        return values ? avx2::QuantizeValues<F, kD, true>(d, l, src, first, end,
                                                          part, sums, next)
                      : avx2::QuantizeKeys<F, kD, true>(d, l, src, first, end,
                                                        part, sums);
      }
      return values ? avx2::QuantizeValues<F, kD, false>(d, l, src, first, end,
                                                         part, sums, next)
                    : avx2::QuantizeKeys<F, kD, false>(d, l, src, first, end,
                                                       part, sums);
#endif
    default:
      return values ? QuantizeValuesPortable<F, kD>(d, l, src, first, end, part,
                                                    sums)
                    : QuantizeKeysPortable<F, kD>(d, l, src, first, end, part,
                                                  sums);
  }
}

// `next` (may be null): the value part, which the SIMD keys kernels
// prefetch while they work.
template <QuantFormat F, DType kOut>
void DequantizeSide(QuantKernels kernels, bool values, const Dims& d,
                    const QuantLayout& l, const std::byte* part, int64_t first,
                    int64_t end, void* out, const std::byte* next,
                    const Ahead& ahead) {
  switch (kernels) {
#if KVPAGE_X86
    case QuantKernels::kAvx512:
      return values ? avx512::DequantizeValues<F, kOut>(d, l, part, first, end,
                                                        out, ahead)
                    : avx512::DequantizeKeys<F, kOut>(d, l, part, first, end,
                                                      out, next, ahead);
    case QuantKernels::kAvx2:
      return values ? avx2::DequantizeValues<F, kOut>(d, l, part, first, end,
                                                      out, ahead)
                    : avx2::DequantizeKeys<F, kOut>(d, l, part, first, end, out,
                                                    next, ahead);
#endif
    default:
      return values
                 ? DequantizeValuesPortable<F, kOut>(d, l, part, first, end,
                                                     out)
                 : DequantizeKeysPortable<F, kOut>(d, l, part, first, end, out);
  }
}

}  // namespace

bool QuantKernelsSupported(QuantKernels kernels) {
  switch (kernels) {
    case QuantKernels::kPortable:
      return true;
    case QuantKernels::kAvx2:
      return Cpu().avx2;
    case QuantKernels::kAvx512:
      return Cpu().avx512;
  }
  return false;
}

QuantKernels BestQuantKernels() {
  if (Cpu().avx512) return QuantKernels::kAvx512;
  if (Cpu().avx2) return QuantKernels::kAvx2;
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
  const QuantLayout l = QuantLayout::For(format, shape);
  const Dims d(shape);
  auto* k = static_cast<std::byte*>(k_part);
  auto* v = static_cast<std::byte*>(v_part);
  QuantError result;
  if (count == 0) {
    std::memset(k, 0, l.k_part_bytes);
    std::memset(v, 0, l.v_part_bytes);
    return result;
  }
  const int64_t first = first_slot, end = int64_t{first_slot} + count;
  ZeroUnwritten(format, d, first, end, /*per_row=*/false, l.k_scales, l.k_mins,
                l.k_part_bytes, k);
  ZeroUnwritten(format, d, first, end, /*per_row=*/true, l.v_scales, l.v_mins,
                l.v_part_bytes, v);
  const QuantKernels use = Effective(kernels, shape);
  const bool error = options.measure_error;
  ErrorSums ks, vs;
  WithFormatAndDType(format, dtype, [&]<QuantFormat F, DType kD>() {
    // The values first: their rows are independent, so their work covers
    // the fetch of the keys' lines, which the keys then find cached (their
    // statistics need all rows before any code).
    QuantizeSide<F, kD>(use, /*values=*/true, error, d, l, v_src, first, end, v,
                        vs, k_src);
    QuantizeSide<F, kD>(use, /*values=*/false, error, d, l, k_src, first, end,
                        k, ks);
  });
  if (!error) return result;
  result.k_sq_err = ks.TotalErr();
  result.k_sq_sum = ks.TotalSum();
  result.v_sq_err = vs.TotalErr();
  result.v_sq_sum = vs.TotalSum();
  return result;
}

void DequantizeBlockWith(QuantKernels kernels, QuantFormat format,
                         const QuantShape& shape, const void* k_part,
                         const void* v_part, int first_slot, int count,
                         DType out_dtype, void* k_out, void* v_out,
                         const NextBlock& next) {
  CheckArgs(format, shape, first_slot, count);
  const QuantLayout l = QuantLayout::For(format, shape);
  const Dims d(shape);
  const int64_t first = first_slot, end = int64_t{first_slot} + count;
  const QuantKernels use = Effective(kernels, shape);
  Ahead next_k, next_v;
  if (next.k_part != nullptr && next.v_part != nullptr) {
    const QuantLayout nl = QuantLayout::For(next.format, shape);
    next_k = {static_cast<const std::byte*>(next.k_part), nl.k_part_bytes};
    next_v = {static_cast<const std::byte*>(next.v_part), nl.v_part_bytes};
  }
  next_k.fetch_own = next_v.fetch_own = !next.this_block_requested;
  // The format and output dtype play the roles WithFormatAndDType gives to
  // the format and input dtype.
  WithFormatAndDType(format, out_dtype, [&]<QuantFormat F, DType kOut>() {
    DequantizeSide<F, kOut>(
        use, /*values=*/false, d, l, static_cast<const std::byte*>(k_part),
        first, end, k_out, static_cast<const std::byte*>(v_part), next_k);
    DequantizeSide<F, kOut>(use, /*values=*/true, d, l,
                            static_cast<const std::byte*>(v_part), first, end,
                            v_out, nullptr, next_v);
  });
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
  const QuantLayout l = QuantLayout::For(format, shape);
  const Dims d(shape);
  // The keys go through the values kernel, into a scratch V part.
  std::vector<std::byte> scratch(static_cast<size_t>(l.v_part_bytes));
  const int64_t first = first_slot, end = int64_t{first_slot} + count;
  const QuantKernels use = Effective(BestQuantKernels(), shape);
  ErrorSums sums;
  WithFormatAndDType(format, dtype, [&]<QuantFormat F, DType kD>() {
    QuantizeSide<F, kD>(use, /*values=*/true, /*error=*/true, d, l, k_src,
                        first, end, scratch.data(), sums);
  });
  const double sum = sums.TotalSum();
  return sum > 0 ? sums.TotalErr() / sum : 0.0;
}

}  // namespace kvpage::internal
