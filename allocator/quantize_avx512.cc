// The AVX-512 kernel set (F, BW, DQ, VL, with AVX2, FMA, F16C): a unit of 16
// channels is one 16-lane vector, and the kernels of quantize_simd.inc are
// compiled over these operations, every function carrying the set's target
// attribute (the build itself assumes no more than x86-64; the dispatcher
// runs this set only where HostCpuFeatures().Avx512FBwDqVl()).
//
// Compiled with -ffp-contract=off (CMakeLists.txt): no a * b + c becomes an
// FMA unless the code says so (_mm512_fmadd_ps).
#include "allocator/quantize_kernels.h"

#if KVPAGE_X86

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <limits>

// GCC 12 warns that the AVX-512 intrinsics' internal _mm512_undefined_*
// values "may be used uninitialized" once inlined (GCC bug 105593, fixed in
// GCC 13); the instructions overwrite those values before any use.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace kvpage::internal {
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
  } else {  // finite values: no NaN case (see Bf16Bits8 in quantize_avx2.cc)
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

const QuantKernelTable& Avx512QuantKernels() { return avx512::kSimdKernels; }

}  // namespace kvpage::internal

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#endif  // KVPAGE_X86
