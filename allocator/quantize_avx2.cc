// The AVX2 kernel set (+FMA, F16C): a unit of 16 channels is two 8-lane
// vectors, and the kernels of quantize_simd.inc are compiled over these
// operations, every function carrying the set's target attribute (the build
// itself assumes no more than x86-64; the dispatcher runs this set only where
// HostCpuFeatures().Avx2FmaF16c()).
//
// Compiled with -ffp-contract=off (CMakeLists.txt): no a * b + c becomes an
// FMA unless the code says so (_mm256_fmadd_ps).
#include "allocator/quantize_kernels.h"

#if KVPAGE_X86

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <limits>

namespace kvpage::internal {
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

const QuantKernelTable& Avx2QuantKernels() { return avx2::kSimdKernels; }

}  // namespace kvpage::internal

#endif  // KVPAGE_X86
