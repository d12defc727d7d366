#include "allocator/convert.h"

#include <bit>
#include <cstring>

#include "allocator/cpu_features.h"

#if KVPAGE_X86
#include <immintrin.h>
#endif

namespace kvpage::internal {

uint16_t F32ToF16(float value) {
  // Rebias the exponent and round the 13 dropped mantissa bits to nearest
  // even with integer arithmetic; subnormal results come from one float
  // addition that lets the FPU do the rounding.
  constexpr uint32_t kF32Inf = 0xffu << 23;
  constexpr uint32_t kF16Overflow = (127u + 16u) << 23;  // 2^16
  constexpr uint32_t kF16MinNormal = 113u << 23;         // 2^-14
  constexpr uint32_t kSubnormalMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  uint32_t bits = std::bit_cast<uint32_t>(value);
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  uint32_t out;
  if (bits >= kF16Overflow) {
    out = bits > kF32Inf ? 0x7e00u : 0x7c00u;  // NaN stays quiet NaN, else inf
  } else if (bits < kF16MinNormal) {
    const float shifted =
        std::bit_cast<float>(bits) + std::bit_cast<float>(kSubnormalMagic);
    out = std::bit_cast<uint32_t>(shifted) - kSubnormalMagic;
  } else {
    const uint32_t mantissa_odd = (bits >> 13) & 1u;
    bits += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu;
    bits += mantissa_odd;
    out = bits >> 13;  // a carry out of the mantissa rounds up to inf
  }
  return static_cast<uint16_t>(out | (sign >> 16));
}

float F16ToF32(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in f32.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 0x1f) {
    return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  }
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) |
                              (mantissa << 13));
}

uint16_t F32ToBF16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // quiet NaN
  }
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float BF16ToF32(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

void F32ToF16Portable(const float* src, uint16_t* dst, int64_t count) {
  for (int64_t i = 0; i < count; ++i) dst[i] = F32ToF16(src[i]);
}

void F16ToF32Portable(const uint16_t* src, float* dst, int64_t count) {
  for (int64_t i = 0; i < count; ++i) dst[i] = F16ToF32(src[i]);
}

namespace {

void F32ToBF16Array(const float* src, uint16_t* dst, int64_t count) {
  for (int64_t i = 0; i < count; ++i) dst[i] = F32ToBF16(src[i]);
}

void BF16ToF32Array(const uint16_t* src, float* dst, int64_t count) {
  for (int64_t i = 0; i < count; ++i) dst[i] = BF16ToF32(src[i]);
}

#if KVPAGE_X86
// F16C converts 8 elements per instruction with the same rounding (nearest
// even) and NaN handling as the portable code.
__attribute__((target("avx,f16c"))) void F32ToF16F16c(const float* src,
                                                      uint16_t* dst,
                                                      int64_t count) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 x = _mm256_loadu_ps(src + i);
    const __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  for (; i < count; ++i) dst[i] = F32ToF16(src[i]);
}

__attribute__((target("avx,f16c"))) void F16ToF32F16c(const uint16_t* src,
                                                      float* dst,
                                                      int64_t count) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < count; ++i) dst[i] = F16ToF32(src[i]);
}
#endif

struct F16Kernels {
  void (*narrow)(const float*, uint16_t*, int64_t);
  void (*widen)(const uint16_t*, float*, int64_t);
  bool simd;
};

F16Kernels PickF16Kernels() {
#if KVPAGE_X86
  if (HostCpuFeatures().AvxF16c()) {
    return {&F32ToF16F16c, &F16ToF32F16c, true};
  }
#endif
  return {&F32ToF16Portable, &F16ToF32Portable, false};
}

const F16Kernels& Kernels() {
  static const F16Kernels kernels = PickF16Kernels();
  return kernels;
}

void ToF32(const void* src, DType from, float* dst, int64_t count) {
  switch (from) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(count) * sizeof(float));
      return;
    case DType::kF16:
      Kernels().widen(static_cast<const uint16_t*>(src), dst, count);
      return;
    case DType::kBF16:
      BF16ToF32Array(static_cast<const uint16_t*>(src), dst, count);
      return;
  }
}

void FromF32(const float* src, void* dst, DType to, int64_t count) {
  switch (to) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(count) * sizeof(float));
      return;
    case DType::kF16:
      Kernels().narrow(src, static_cast<uint16_t*>(dst), count);
      return;
    case DType::kBF16:
      F32ToBF16Array(src, static_cast<uint16_t*>(dst), count);
      return;
  }
}

}  // namespace

bool HasF16cKernels() { return Kernels().simd; }

namespace {

// Whether every element's magnitude bits (the sign masked off) are at most
// `limit`: NaN and infinity have the largest magnitude bits of their type.
template <typename U>
bool MagnitudesAtMostPortable(const U* bits, int64_t count, U mask, U limit) {
  U most = 0;
  for (int64_t i = 0; i < count; ++i) {
    const U x = bits[i] & mask;
    most = x > most ? x : most;
  }
  return most <= limit;
}

#if KVPAGE_X86
// The same with AVX2: an unsigned maximum of the masked bits, four vectors
// at a time, checked every 512 bytes.
template <int kBits>
__attribute__((target("avx2"), always_inline)) inline __m256i MaxUnsigned(
    __m256i a, __m256i b) {
  if constexpr (kBits == 16) {
    return _mm256_max_epu16(a, b);
  } else {
    return _mm256_max_epu32(a, b);
  }
}

template <int kBits>
__attribute__((target("avx2"), always_inline)) inline __m256i Splat(
    uint32_t v) {
  if constexpr (kBits == 16) {
    return _mm256_set1_epi16(static_cast<short>(v));
  } else {
    return _mm256_set1_epi32(static_cast<int>(v));
  }
}

__attribute__((target("avx2"), always_inline)) inline __m256i LoadMasked(
    const std::byte* p, __m256i mask) {
  return _mm256_and_si256(
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), mask);
}

template <int kBits>
__attribute__((target("avx2"))) bool MagnitudesAtMostAvx2(const void* src,
                                                          int64_t count,
                                                          uint32_t mask,
                                                          uint32_t limit) {
  constexpr int64_t kBlockBytes = 512;
  const auto* p = static_cast<const std::byte*>(src);
  const std::byte* const end = p + count * (kBits / 8);
  const __m256i mask_lanes = Splat<kBits>(mask);
  const __m256i limit_lanes = Splat<kBits>(limit);
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (; end - p >= kBlockBytes;) {
    for (const std::byte* stop = p + kBlockBytes; p < stop; p += 128) {
      a0 = MaxUnsigned<kBits>(a0, LoadMasked(p, mask_lanes));
      a1 = MaxUnsigned<kBits>(a1, LoadMasked(p + 32, mask_lanes));
      a2 = MaxUnsigned<kBits>(a2, LoadMasked(p + 64, mask_lanes));
      a3 = MaxUnsigned<kBits>(a3, LoadMasked(p + 96, mask_lanes));
    }
    const __m256i most = MaxUnsigned<kBits>(MaxUnsigned<kBits>(a0, a1),
                                            MaxUnsigned<kBits>(a2, a3));
    // max(most, limit) == limit in every lane: nothing above the limit.
    const __m256i at_most =
        _mm256_cmpeq_epi8(MaxUnsigned<kBits>(most, limit_lanes), limit_lanes);
    if (_mm256_movemask_epi8(at_most) != -1) return false;
  }
  const int64_t rest = (end - p) / (kBits / 8);
  if constexpr (kBits == 16) {
    return MagnitudesAtMostPortable(reinterpret_cast<const uint16_t*>(p), rest,
                                    static_cast<uint16_t>(mask),
                                    static_cast<uint16_t>(limit));
  } else {
    return MagnitudesAtMostPortable(reinterpret_cast<const uint32_t*>(p), rest,
                                    mask, limit);
  }
}
#endif

template <int kBits>
bool MagnitudesAtMost(const void* src, int64_t count, uint32_t mask,
                      uint32_t limit, [[maybe_unused]] bool portable) {
#if KVPAGE_X86
  if (!portable && HostCpuFeatures().avx2) {
    return MagnitudesAtMostAvx2<kBits>(src, count, mask, limit);
  }
#endif
  if constexpr (kBits == 16) {
    return MagnitudesAtMostPortable(static_cast<const uint16_t*>(src), count,
                                    static_cast<uint16_t>(mask),
                                    static_cast<uint16_t>(limit));
  } else {
    return MagnitudesAtMostPortable(static_cast<const uint32_t*>(src), count,
                                    mask, limit);
  }
}

bool WithinQuantRange(const void* src, DType dtype, int64_t count,
                      bool portable) {
  static_assert(kQuantRangeMax == 65504.0f);
  switch (dtype) {
    case DType::kF32:  // 0x477fe000 is 65504.0f
      return MagnitudesAtMost<32>(src, count, 0x7fffffff, 0x477fe000, portable);
    case DType::kF16:  // 0x7bff is 65504, the largest finite f16
      return MagnitudesAtMost<16>(src, count, 0x7fff, 0x7bff, portable);
    case DType::kBF16:  // 0x477f is 65280; the next bf16, 65536, is above
      return MagnitudesAtMost<16>(src, count, 0x7fff, 0x477f, portable);
  }
  return false;
}

}  // namespace

bool AllWithinQuantRange(const void* src, DType dtype, int64_t count) {
  return WithinQuantRange(src, dtype, count, /*portable=*/false);
}

bool AllWithinQuantRangePortable(const void* src, DType dtype, int64_t count) {
  return WithinQuantRange(src, dtype, count, /*portable=*/true);
}

void ConvertElements(const void* src, DType from, void* dst, DType to,
                     int64_t count) {
  if (count <= 0) return;
  if (from == to) {
    std::memcpy(dst, src, static_cast<size_t>(count) * DTypeSize(from));
  } else if (from == DType::kF32) {
    FromF32(static_cast<const float*>(src), dst, to, count);
  } else if (to == DType::kF32) {
    ToF32(src, from, static_cast<float*>(dst), count);
  } else {
    // f16 <-> bf16: widen a slice at a time on the stack, then narrow.
    constexpr int64_t kSlice = 256;
    float buffer[kSlice];
    const auto* in = static_cast<const std::byte*>(src);
    auto* out = static_cast<std::byte*>(dst);
    for (int64_t done = 0; done < count; done += kSlice) {
      const int64_t n = count - done < kSlice ? count - done : kSlice;
      ToF32(in + done * 2, from, buffer, n);
      FromF32(buffer, out + done * 2, to, n);
    }
  }
}

}  // namespace kvpage::internal
