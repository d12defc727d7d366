#include "allocator/convert.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace kvpage::internal {
namespace {

bool IsF16Nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff); }

// kvpage/dtype.h: sizes and names are compile-time constants.
TEST(DTypeTest, SizesAndNamesAreConstants) {
  static_assert(DTypeSize(DType::kF32) == 4);
  static_assert(DTypeSize(DType::kF16) == 2);
  static_assert(DTypeSize(DType::kBF16) == 2);
  static_assert(DTypeName(DType::kF32) == "f32");
  static_assert(DTypeName(DType::kF16) == "f16");
  static_assert(DTypeName(DType::kBF16) == "bf16");
  EXPECT_EQ(DTypeName(static_cast<DType>(7)), "unknown");
}

TEST(ConvertTest, EveryF16SurvivesARoundTripThroughF32) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto h = static_cast<uint16_t>(bits);
    const float f = F16ToF32(h);
    if (IsF16Nan(h)) {
      EXPECT_TRUE(std::isnan(f)) << bits;
      EXPECT_TRUE(IsF16Nan(F32ToF16(f))) << bits;
      continue;
    }
    ASSERT_EQ(F32ToF16(f), h) << "bits " << bits << " value " << f;
  }
}

TEST(ConvertTest, F16KnownValues) {
  EXPECT_EQ(F32ToF16(1.0f), 0x3c00);
  EXPECT_EQ(F32ToF16(-2.0f), 0xc000);
  EXPECT_EQ(F32ToF16(65504.0f), 0x7bff);  // largest finite
  EXPECT_EQ(F32ToF16(0x1p-24f), 0x0001);  // smallest subnormal
  EXPECT_EQ(F32ToF16(-0.0f), 0x8000);
  EXPECT_EQ(F32ToF16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_FLOAT_EQ(F16ToF32(0x3555), 0.333251953125f);
  EXPECT_EQ(F16ToF32(0x0001), 0x1p-24f);
}

TEST(ConvertTest, F16RoundsToNearestTiesToEven) {
  // Halfway between 1 and 1 + 2^-10 goes down to the even 1.0; halfway
  // between 1 + 2^-10 and 1 + 2^-9 goes up to the even 1 + 2^-9.
  EXPECT_EQ(F32ToF16(1.0f + 0x1p-11f), 0x3c00);
  EXPECT_EQ(F32ToF16(1.0f + 3 * 0x1p-11f), 0x3c02);
  // Just above halfway rounds up.
  EXPECT_EQ(F32ToF16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
  // Subnormal ties: 2^-25 is halfway between 0 and 2^-24.
  EXPECT_EQ(F32ToF16(0x1p-25f), 0x0000);
  EXPECT_EQ(F32ToF16(3 * 0x1p-25f), 0x0002);
  // Overflow: 65519 still rounds to 65504, 65520 is the tie that goes to inf.
  EXPECT_EQ(F32ToF16(65519.0f), 0x7bff);
  EXPECT_EQ(F32ToF16(65520.0f), 0x7c00);
  EXPECT_EQ(F32ToF16(1e10f), 0x7c00);
  EXPECT_EQ(F32ToF16(-1e10f), 0xfc00);
  // The largest subnormal rounds up into the smallest normal.
  EXPECT_EQ(F32ToF16(0x1p-14f - 0x1p-26f), 0x0400);
}

#ifdef __FLT16_MAX__
TEST(ConvertTest, F16MatchesTheCompilersFloat16OnRandomBits) {
  std::mt19937 rng(7);
  for (int i = 0; i < 2'000'000; ++i) {
    const uint32_t bits = rng();
    const float f = std::bit_cast<float>(bits);
    if (std::isnan(f)) continue;
    const _Float16 ref = static_cast<_Float16>(f);
    ASSERT_EQ(F32ToF16(f), std::bit_cast<uint16_t>(ref)) << "bits " << bits;
  }
}
#endif

TEST(ConvertTest, BF16RoundsToNearestTiesToEven) {
  EXPECT_EQ(F32ToBF16(1.0f), 0x3f80);
  EXPECT_EQ(F32ToBF16(1.0f + 0x1p-8f), 0x3f80);      // tie, down to even
  EXPECT_EQ(F32ToBF16(1.0f + 3 * 0x1p-8f), 0x3f82);  // tie, up to even
  EXPECT_EQ(F32ToBF16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
  EXPECT_EQ(F32ToBF16(std::numeric_limits<float>::max()), 0x7f80);  // to inf
  EXPECT_TRUE(std::isnan(
      BF16ToF32(F32ToBF16(std::numeric_limits<float>::quiet_NaN()))));
  // A signalling NaN whose payload sits in the dropped bits stays a NaN.
  EXPECT_TRUE(
      std::isnan(BF16ToF32(F32ToBF16(std::bit_cast<float>(0x7f800001u)))));
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto b = static_cast<uint16_t>(bits);
    const float f = BF16ToF32(b);
    if (std::isnan(f)) continue;
    ASSERT_EQ(F32ToBF16(f), b) << bits;
  }
}

// The F16C kernels and the portable loops agree bit for bit, NaNs aside
// (both produce a NaN), including the tails shorter than a vector.
TEST(ConvertTest, SimdKernelsMatchThePortableLoops) {
  if (!HasF16cKernels()) GTEST_SKIP() << "no F16C on this CPU";
  std::mt19937 rng(11);
  for (int64_t count : {1, 7, 8, 9, 1003}) {
    std::vector<float> src(static_cast<size_t>(count));
    for (float& x : src) {
      do {
        x = std::bit_cast<float>(static_cast<uint32_t>(rng()));
      } while (std::isnan(x));
    }
    src[0] = 65520.0f;
    std::vector<uint16_t> simd(src.size()), portable(src.size());
    ConvertElements(src.data(), DType::kF32, simd.data(), DType::kF16, count);
    F32ToF16Portable(src.data(), portable.data(), count);
    ASSERT_EQ(simd, portable) << count;

    std::vector<float> wide_simd(src.size()), wide_portable(src.size());
    ConvertElements(simd.data(), DType::kF16, wide_simd.data(), DType::kF32,
                    count);
    F16ToF32Portable(simd.data(), wide_portable.data(), count);
    ASSERT_EQ(0, std::memcmp(wide_simd.data(), wide_portable.data(),
                             wide_simd.size() * sizeof(float)));
  }
}

TEST(ConvertTest, ConvertElementsCoversEveryPair) {
  const std::vector<float> values = {0.0f, 1.5f, -3.25f, 1024.0f, 0.125f};
  const int64_t n = static_cast<int64_t>(values.size());
  for (DType from : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (DType to : {DType::kF32, DType::kF16, DType::kBF16}) {
      std::vector<std::byte> a(values.size() * 4), b(values.size() * 4);
      std::vector<float> back(values.size());
      ConvertElements(values.data(), DType::kF32, a.data(), from, n);
      ConvertElements(a.data(), from, b.data(), to, n);
      ConvertElements(b.data(), to, back.data(), DType::kF32, n);
      EXPECT_EQ(back, values) << DTypeName(from) << "->" << DTypeName(to);
    }
  }
}

// The range check behind "a block the quantized formats cannot hold stays
// hot": every dtype's boundary, NaN and the infinities, at every position of
// runs shorter and longer than the AVX2 loop's 512-byte blocks, from an
// unaligned start too, and the AVX2 path against the portable loop.
TEST(ConvertTest, AllWithinQuantRangeFindsEveryValueOutsideIt) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float bf16_above = std::bit_cast<float>(uint32_t{0x47800000});  // 2^16
  struct Case {
    DType dtype;
    std::vector<float> inside, outside;
  };
  const std::vector<Case> cases = {
      {DType::kF32,
       {0.0f, -0.0f, 1e-45f, 65504.0f, -65504.0f, 1.0f},
       {std::nextafter(65504.0f, inf), -65505.0f, 1e30f, inf, -inf, nan}},
      {DType::kF16,
       {0.0f, -0.0f, 6e-8f, 65504.0f, -65504.0f},
       {inf, -inf, nan}},
      {DType::kBF16,
       {0.0f, -0.0f, 1e-40f, 65280.0f, -65280.0f},
       {bf16_above, -bf16_above, 1e30f, inf, -inf, nan}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(DTypeName(c.dtype));
    const int64_t size = DTypeSize(c.dtype);
    for (int64_t n : {1, 63, 200, 255, 256, 257, 511, 512, 513, 1000}) {
      for (int64_t offset : {0, 1}) {  // elements: 2 or 4 bytes off 64
        std::vector<float> values(static_cast<size_t>(n), 0.5f);
        std::vector<std::byte> buffer((static_cast<size_t>(n + offset)) * 4 +
                                      64);
        std::byte* bytes = buffer.data() + offset * size;
        auto encode = [&] {
          ConvertElements(values.data(), DType::kF32, bytes, c.dtype, n);
        };
        auto both = [&](int64_t count) {
          const bool simd = AllWithinQuantRange(bytes, c.dtype, count);
          EXPECT_EQ(simd, AllWithinQuantRangePortable(bytes, c.dtype, count))
              << count;
          return simd;
        };
        for (float x : c.inside) {
          std::fill(values.begin(), values.end(), x);
          encode();
          EXPECT_TRUE(both(n)) << x << " x " << n;
        }
        for (float x : c.outside) {
          for (int64_t at = 0; at < n; at += at < 40 ? 1 : 37) {
            std::fill(values.begin(), values.end(), 0.5f);
            values[static_cast<size_t>(at)] = x;
            encode();
            ASSERT_FALSE(both(n)) << x << " at " << at << " of " << n;
            // Nothing past `count` is read.
            EXPECT_TRUE(both(at)) << x << " at " << at;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvpage::internal
