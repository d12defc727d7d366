#include "allocator/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "allocator/convert.h"
#include "gtest/gtest.h"

namespace kvpage::internal {
namespace {

constexpr QuantFormat kFormats[] = {QuantFormat::kInt8, QuantFormat::kInt4};

const char* FormatName(QuantFormat f) {
  return f == QuantFormat::kInt8 ? "int8" : "int4";
}

int64_t Channels(const QuantShape& s) {
  return int64_t{s.num_kv_heads} * s.head_dim;
}
int64_t Elems(const QuantShape& s) { return Channels(s) * s.block_tokens; }

// One hot block: K and V in `dtype`, and the same values widened to f32
// (what the kernels see).
struct HotBlock {
  DType dtype;
  std::vector<std::byte> k, v;
  std::vector<float> k32, v32;
};

HotBlock MakeBlock(DType dtype, std::vector<float> k, std::vector<float> v) {
  HotBlock b{.dtype = dtype};
  const auto n = static_cast<int64_t>(k.size());
  b.k.resize(k.size() * DTypeSize(dtype));
  b.v.resize(v.size() * DTypeSize(dtype));
  ConvertElements(k.data(), DType::kF32, b.k.data(), dtype, n);
  ConvertElements(v.data(), DType::kF32, b.v.data(), dtype, n);
  b.k32.resize(k.size());
  b.v32.resize(v.size());
  ConvertElements(b.k.data(), dtype, b.k32.data(), DType::kF32, n);
  ConvertElements(b.v.data(), dtype, b.v32.data(), DType::kF32, n);
  return b;
}

std::vector<float> Gaussian(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> out(static_cast<size_t>(n));
  for (float& x : out) x = normal(rng);
  return out;
}

// Keys as attention layers produce them: Gaussian, plus 4 outlier channels
// per head (of every 128) scaled x20 and offset by +8.
std::vector<float> KeyLike(const QuantShape& s, uint32_t seed) {
  std::vector<float> out = Gaussian(Elems(s), seed);
  const int64_t outliers[] = {5, 37, 70, 101};
  for (int64_t t = 0; t < s.block_tokens; ++t) {
    for (int64_t h = 0; h < s.num_kv_heads; ++h) {
      for (int64_t d : outliers) {
        if (d >= s.head_dim) continue;
        float& x = out[(t * s.num_kv_heads + h) * s.head_dim + d];
        x = 20.0f * x + 8.0f;
      }
    }
  }
  return out;
}

struct Quantized {
  QuantLayout layout;
  std::vector<std::byte> k_part, v_part;
  QuantError error;
};

// Parts start filled with `fill` so that unwritten bytes show.
// With the best kernels of this CPU unless `kernels` says otherwise.
Quantized Quantize(QuantFormat format, const QuantShape& shape,
                   const HotBlock& b, int first, int count,
                   QuantKernels kernels = BestQuantKernels(),
                   std::byte fill = std::byte{0xcd},
                   QuantizeOptions options = {}) {
  Quantized q;
  q.layout = QuantLayout::For(format, shape);
  q.k_part.assign(static_cast<size_t>(q.layout.k_part_bytes), fill);
  q.v_part.assign(static_cast<size_t>(q.layout.v_part_bytes), fill);
  q.error = kernels == QuantKernels::kPortable
                ? QuantizeBlockPortable(
                      format, shape, b.dtype, b.k.data(), b.v.data(), first,
                      count, q.k_part.data(), q.v_part.data(), options)
                : QuantizeBlockWith(kernels, format, shape, b.dtype, b.k.data(),
                                    b.v.data(), first, count, q.k_part.data(),
                                    q.v_part.data(), options);
  return q;
}

struct Dequantized {
  std::vector<float> k, v;
};

Dequantized Dequantize(QuantFormat format, const QuantShape& shape,
                       const Quantized& q, int first, int count,
                       QuantKernels kernels = BestQuantKernels()) {
  Dequantized out;
  out.k.assign(static_cast<size_t>(Channels(shape) * count), -1.0f);
  out.v.assign(out.k.size(), -1.0f);
  if (kernels == QuantKernels::kPortable) {
    DequantizeBlockPortable(format, shape, q.k_part.data(), q.v_part.data(),
                            first, count, DType::kF32, out.k.data(),
                            out.v.data());
  } else {
    DequantizeBlockWith(kernels, format, shape, q.k_part.data(),
                        q.v_part.data(), first, count, DType::kF32,
                        out.k.data(), out.v.data());
  }
  return out;
}

// The error of the dequantized cells, recomputed in double.
QuantError Measure(const QuantShape& shape, const HotBlock& b,
                   const Dequantized& dq, int first, int count) {
  QuantError e;
  const int64_t c = Channels(shape);
  for (int64_t i = 0; i < count * c; ++i) {
    const double k = b.k32[first * c + i], v = b.v32[first * c + i];
    e.k_sq_err += (k - dq.k[i]) * (k - dq.k[i]);
    e.v_sq_err += (v - dq.v[i]) * (v - dq.v[i]);
    e.k_sq_sum += k * k;
    e.v_sq_sum += v * v;
  }
  return e;
}

// Dequantizes into f16 or bf16 (2-byte elements, as bits).
struct Dequantized16 {
  std::vector<uint16_t> k, v;
};
Dequantized16 Dequantize16(QuantFormat format, const QuantShape& shape,
                           const Quantized& q, int first, int count,
                           DType out_dtype, QuantKernels kernels) {
  Dequantized16 out;
  out.k.assign(static_cast<size_t>(Channels(shape) * count), 0xdead);
  out.v.assign(out.k.size(), 0xdead);
  DequantizeBlockWith(kernels, format, shape, q.k_part.data(), q.v_part.data(),
                      first, count, out_dtype, out.k.data(), out.v.data());
  return out;
}

// What a hot block of `dtype` holds after storing `f32`: f32 rounded.
std::vector<uint16_t> Rounded(const std::vector<float>& f32, DType dtype) {
  std::vector<uint16_t> out(f32.size());
  ConvertElements(f32.data(), DType::kF32, out.data(), dtype,
                  static_cast<int64_t>(f32.size()));
  return out;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() ||
          std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

bool AllFinite(const std::vector<float>& v) {
  for (float x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

// The reported error is the error of what DequantizeBlock returns (up to
// the float accumulation of the kernels).
void ExpectReportedErrorMatches(const QuantError& reported,
                                const QuantError& measured) {
  auto near = [](double a, double b) {
    return std::abs(a - b) <= 1e-5 * std::max(std::abs(b), 1e-30);
  };
  EXPECT_TRUE(near(reported.k_sq_err, measured.k_sq_err))
      << reported.k_sq_err << " vs " << measured.k_sq_err;
  EXPECT_TRUE(near(reported.v_sq_err, measured.v_sq_err))
      << reported.v_sq_err << " vs " << measured.v_sq_err;
  EXPECT_TRUE(near(reported.k_sq_sum, measured.k_sq_sum))
      << reported.k_sq_sum << " vs " << measured.k_sq_sum;
  EXPECT_TRUE(near(reported.v_sq_sum, measured.v_sq_sum))
      << reported.v_sq_sum << " vs " << measured.v_sq_sum;
}

constexpr QuantShape kShape16{
    .block_tokens = 16, .num_kv_heads = 8, .head_dim = 128, .group_size = 32};
constexpr QuantShape kShape32{
    .block_tokens = 32, .num_kv_heads = 8, .head_dim = 128, .group_size = 64};

double Bound(QuantFormat f) { return f == QuantFormat::kInt8 ? 4e-5 : 1e-2; }

TEST(QuantLayoutTest, SizesAndRatiosToTheF16HotBlock) {
  std::printf("%-5s %-12s %8s %8s %8s %s\n", "fmt", "shape", "k_part", "v_part",
              "block", "ratio to f16 hot block");
  for (const QuantShape& s : {kShape16, kShape32}) {
    for (QuantFormat f : kFormats) {
      const QuantLayout l = QuantLayout::For(f, s);
      const double hot = 2.0 * Elems(s) * 2;
      std::printf(
          "%-5s T=%d G=%-4d %8lld %8lld %8lld %.4f\n", FormatName(f),
          s.block_tokens, s.group_size, static_cast<long long>(l.k_part_bytes),
          static_cast<long long>(l.v_part_bytes),
          static_cast<long long>(l.block_bytes()), l.block_bytes() / hot);
      for (int64_t off : {l.k_scales, l.k_mins, l.k_part_bytes, l.v_scales,
                          l.v_mins, l.v_part_bytes}) {
        EXPECT_EQ(off % 64, 0);
      }
    }
  }
  // T=16, G=32, int8: K codes 16384 + scales 8*128*2; V codes 16384 +
  // scales 16*8*4*2.
  const QuantLayout i8 = QuantLayout::For(QuantFormat::kInt8, kShape16);
  EXPECT_EQ(i8.k_codes, 0);
  EXPECT_EQ(i8.k_scales, 16384);
  EXPECT_EQ(i8.k_mins, 0);
  EXPECT_EQ(i8.k_part_bytes, 16384 + 2048);
  EXPECT_EQ(i8.v_scales, 16384);
  EXPECT_EQ(i8.v_mins, 0);
  EXPECT_EQ(i8.v_part_bytes, 16384 + 1024);
  EXPECT_LE(i8.block_bytes() / (2.0 * Elems(kShape16) * 2), 0.55);
  // T=32, G=64, int4: K codes 32*1024/2 + scales 2048 + mins 2048; V codes
  // 16384 + scales 32*8*2*2 + mins as many.
  const QuantLayout i4 = QuantLayout::For(QuantFormat::kInt4, kShape32);
  EXPECT_EQ(i4.k_scales, 16384);
  EXPECT_EQ(i4.k_mins, 16384 + 2048);
  EXPECT_EQ(i4.k_part_bytes, 16384 + 4096);
  EXPECT_EQ(i4.v_scales, 16384);
  EXPECT_EQ(i4.v_mins, 16384 + 1024);
  EXPECT_EQ(i4.v_part_bytes, 16384 + 2048);
  EXPECT_LE(i4.block_bytes() / (2.0 * Elems(kShape32) * 2), 0.30);
}

TEST(QuantLayoutTest, OddShapesArePaddedTo64Bytes) {
  const QuantShape s{
      .block_tokens = 3, .num_kv_heads = 1, .head_dim = 6, .group_size = 3};
  const QuantLayout l = QuantLayout::For(QuantFormat::kInt4, s);
  EXPECT_EQ(l.k_scales, 64);  // 9 bytes of codes
  EXPECT_EQ(l.k_mins, 128);
  EXPECT_EQ(l.k_part_bytes, 192);
  EXPECT_EQ(l.v_mins, 128);  // 6 groups, 12 bytes of scales
  EXPECT_EQ(l.v_part_bytes, 192);
}

TEST(QuantizeTest, GaussianErrorIsWithinBoundsAndMatchesTheOutput) {
  for (const QuantShape& s : {kShape16, kShape32}) {
    const HotBlock b =
        MakeBlock(DType::kF16, Gaussian(Elems(s), 1), Gaussian(Elems(s), 2));
    for (QuantFormat f : kFormats) {
      SCOPED_TRACE(::testing::Message()
                   << FormatName(f) << " T=" << s.block_tokens);
      const Quantized q = Quantize(f, s, b, 0, s.block_tokens);
      const Dequantized dq = Dequantize(f, s, q, 0, s.block_tokens);
      const QuantError measured = Measure(s, b, dq, 0, s.block_tokens);
      ExpectReportedErrorMatches(q.error, measured);
      std::printf(
          "%s T=%d G=%d gaussian f16: rel MSE %.3g (keys %.3g, "
          "values %.3g)\n",
          FormatName(f), s.block_tokens, s.group_size, q.error.rel(),
          q.error.k_sq_err / q.error.k_sq_sum,
          q.error.v_sq_err / q.error.v_sq_sum);
      EXPECT_LE(q.error.rel(), Bound(f));
      EXPECT_LE(measured.rel(), Bound(f));
      EXPECT_GT(q.error.rel(), 0.0);
    }
  }
}

TEST(QuantizeTest, PerChannelKeysBeatPerTokenKeysOnOutlierChannels) {
  for (const QuantShape& s : {kShape16, kShape32}) {
    const HotBlock b =
        MakeBlock(DType::kF16, KeyLike(s, 3), Gaussian(Elems(s), 4));
    for (QuantFormat f : kFormats) {
      SCOPED_TRACE(::testing::Message()
                   << FormatName(f) << " T=" << s.block_tokens);
      const Quantized q = Quantize(f, s, b, 0, s.block_tokens);
      const double per_channel = q.error.k_sq_err / q.error.k_sq_sum;
      const double per_token =
          PerTokenKeyError(f, s, DType::kF16, b.k.data(), 0, s.block_tokens);
      std::printf(
          "%s T=%d G=%d outlier keys: per-channel %.3g, per-token "
          "%.3g (%.1fx)\n",
          FormatName(f), s.block_tokens, s.group_size, per_channel, per_token,
          per_token / per_channel);
      EXPECT_GE(per_token, 2.0 * per_channel);
    }
  }
}

TEST(QuantizeTest, PartialRangeIgnoresTheOtherSlots) {
  const QuantShape s = kShape16;
  const int first = 3, count = 9;
  std::vector<float> k = Gaussian(Elems(s), 5), v = Gaussian(Elems(s), 6);
  std::vector<float> k_huge = k, v_huge = v;
  const int64_t c = Channels(s);
  for (int64_t i = 0; i < Elems(s); ++i) {
    const int64_t t = i / c;
    if (t >= first && t < first + count) continue;
    k_huge[i] = i % 2 ? 60000.0f : -60000.0f;
    v_huge[i] = i % 3 ? -60000.0f : 60000.0f;
    k[i] = 0.5f;
    v[i] = -0.5f;
  }
  const HotBlock plain = MakeBlock(DType::kF16, k, v);
  const HotBlock huge = MakeBlock(DType::kF16, k_huge, v_huge);
  for (QuantFormat f : kFormats) {
    SCOPED_TRACE(FormatName(f));
    const Quantized a = Quantize(f, s, plain, first, count);
    const Quantized q = Quantize(f, s, huge, first, count);
    // The slots outside the range do not change a byte.
    EXPECT_EQ(a.k_part, q.k_part);
    EXPECT_EQ(a.v_part, q.v_part);
    EXPECT_LE(q.error.rel(), Bound(f));
    const Dequantized dq = Dequantize(f, s, q, first, count);
    ExpectReportedErrorMatches(q.error, Measure(s, huge, dq, first, count));
    // A sub-range of the quantized cells reads back the same values.
    const Dequantized sub = Dequantize(f, s, q, first + 2, 4);
    for (int64_t i = 0; i < 4 * c; ++i) {
      ASSERT_EQ(sub.k[i], dq.k[2 * c + i]);
      ASSERT_EQ(sub.v[i], dq.v[2 * c + i]);
    }
    // Codes of the slots outside are zero.
    const int64_t row = f == QuantFormat::kInt8 ? c : c / 2;
    for (int64_t i = 0; i < first * row; ++i) {
      ASSERT_EQ(q.k_part[i], std::byte{0});
      ASSERT_EQ(q.v_part[i], std::byte{0});
    }
  }
}

TEST(QuantizeTest, AllZeroGroupsGiveZeroCodesAndNoNan) {
  const QuantShape s = kShape16;
  std::vector<float> k = Gaussian(Elems(s), 7), v = Gaussian(Elems(s), 8);
  // Head 2 is all zero: its key channels and value groups are zero groups.
  for (int64_t t = 0; t < s.block_tokens; ++t) {
    for (int64_t d = 0; d < s.head_dim; ++d) {
      k[(t * s.num_kv_heads + 2) * s.head_dim + d] = 0.0f;
      v[(t * s.num_kv_heads + 2) * s.head_dim + d] = -0.0f;
    }
  }
  const HotBlock b = MakeBlock(DType::kF16, k, v);
  const HotBlock zero = MakeBlock(DType::kF16, std::vector<float>(k.size()),
                                  std::vector<float>(v.size()));
  for (QuantFormat f : kFormats) {
    SCOPED_TRACE(FormatName(f));
    const Quantized q = Quantize(f, s, b, 0, s.block_tokens);
    const Dequantized dq = Dequantize(f, s, q, 0, s.block_tokens);
    EXPECT_TRUE(AllFinite(dq.k));
    EXPECT_TRUE(AllFinite(dq.v));
    for (int64_t t = 0; t < s.block_tokens; ++t) {
      for (int64_t d = 0; d < s.head_dim; ++d) {
        const int64_t i = (t * s.num_kv_heads + 2) * s.head_dim + d;
        ASSERT_EQ(dq.k[i], 0.0f);
        ASSERT_EQ(dq.v[i], 0.0f);
      }
    }
    ExpectReportedErrorMatches(q.error, Measure(s, b, dq, 0, s.block_tokens));

    const Quantized z = Quantize(f, s, zero, 0, s.block_tokens);
    EXPECT_EQ(z.error.rel(), 0.0);
    EXPECT_EQ(z.error.k_sq_sum, 0.0);
    for (std::byte x : z.k_part) ASSERT_EQ(x, std::byte{0});
    for (std::byte x : z.v_part) ASSERT_EQ(x, std::byte{0});
    const Dequantized zdq = Dequantize(f, s, z, 0, s.block_tokens);
    for (float x : zdq.k) ASSERT_EQ(x, 0.0f);
    for (float x : zdq.v) ASSERT_EQ(x, 0.0f);
  }
}

TEST(QuantizeTest, ConstantGroupsAreReproduced) {
  const QuantShape s = kShape16;
  // Every key channel and value group constant: 0.75 (exact in f16).
  const std::vector<float> k(static_cast<size_t>(Elems(s)), 0.75f);
  const std::vector<float> v(k.size(), -0.75f);
  const HotBlock b = MakeBlock(DType::kF16, k, v);
  for (QuantFormat f : kFormats) {
    SCOPED_TRACE(FormatName(f));
    const Quantized q = Quantize(f, s, b, 0, s.block_tokens);
    const Dequantized dq = Dequantize(f, s, q, 0, s.block_tokens);
    EXPECT_TRUE(AllFinite(dq.k));
    EXPECT_TRUE(AllFinite(dq.v));
    // int8: code 127 with scale f16(0.75 / 127); int4: scale 0, min 0.75.
    EXPECT_LE(q.error.rel(), 1e-6);
    for (size_t i = 0; i < dq.k.size(); ++i) {
      ASSERT_NEAR(dq.k[i], 0.75f, 1e-3f);
      ASSERT_NEAR(dq.v[i], -0.75f, 1e-3f);
    }
    ExpectReportedErrorMatches(q.error, Measure(s, b, dq, 0, s.block_tokens));
  }
}

TEST(QuantizeTest, Bf16AndF32Inputs) {
  for (DType dtype : {DType::kBF16, DType::kF32}) {
    for (const QuantShape& s : {kShape16, kShape32}) {
      const HotBlock b =
          MakeBlock(dtype, Gaussian(Elems(s), 9), Gaussian(Elems(s), 10));
      for (QuantFormat f : kFormats) {
        SCOPED_TRACE(::testing::Message()
                     << FormatName(f) << " " << DTypeName(dtype));
        const Quantized q = Quantize(f, s, b, 0, s.block_tokens);
        EXPECT_LE(q.error.rel(), Bound(f));
        const Dequantized dq = Dequantize(f, s, q, 0, s.block_tokens);
        ExpectReportedErrorMatches(q.error,
                                   Measure(s, b, dq, 0, s.block_tokens));
      }
    }
  }
}

// The kernel sets this CPU runs: the portable loops first.
std::vector<QuantKernels> SupportedKernelSets() {
  std::vector<QuantKernels> sets = {QuantKernels::kPortable};
  for (QuantKernels k : {QuantKernels::kAvx2, QuantKernels::kAvx512}) {
    if (QuantKernelsSupported(k)) sets.push_back(k);
  }
  return sets;
}

// The f16 at byte `offset` of a part.
uint16_t F16At(const std::vector<std::byte>& part, int64_t offset) {
  uint16_t bits;
  std::memcpy(&bits, part.data() + offset, sizeof(bits));
  return bits;
}

// Every scale (and int4 minimum) of both parts is a finite f16.
void ExpectFiniteParams(QuantFormat f, const QuantShape& s,
                        const Quantized& q) {
  const QuantLayout& layout = q.layout;
  const int64_t key_params = Channels(s);
  const int64_t value_params = Elems(s) / s.group_size;
  std::vector<std::pair<const std::vector<std::byte>*, int64_t>> arrays = {
      {&q.k_part, layout.k_scales}, {&q.v_part, layout.v_scales}};
  if (f == QuantFormat::kInt4) {
    arrays.push_back({&q.k_part, layout.k_mins});
    arrays.push_back({&q.v_part, layout.v_mins});
  }
  for (auto [part, start] : arrays) {
    const int64_t n = part == &q.k_part ? key_params : value_params;
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_NE(F16At(*part, start + i * 2) & 0x7c00, 0x7c00)
          << "parameter " << i << " at " << start << " is inf or NaN";
    }
  }
}

// quantize.h: scales are clamped to [0, 65504] and minimums to [-65504,
// 65504] before the f16 rounding, so values beyond f16's range saturate: the
// group's scale is 65504 (f16 0x7bff), the value gets the format's extreme
// code, every output is finite, and the error is reported (squares above
// 3.4e38 overflow to inf). Each kernel set writes the same bytes.
TEST(QuantizeTest, ValuesBeyondF16RangeSaturate) {
  const QuantShape s = kShape16;
  const int64_t c = Channels(s);
  constexpr uint16_t kF16MaxBits = 0x7bff, kF16MinusMaxBits = 0xfbff;
  constexpr float kMax = 65504.0f;
  // Keys: channel 5 holds +1e9 (int4: its maximum saturates the scale),
  // channel 6 -1e30 (int4: its minimum saturates too), both in slot 0.
  // Values: slot 0's first group holds 3e38 at channel 7.
  std::vector<float> k = Gaussian(Elems(s), 11), v = Gaussian(Elems(s), 12);
  k[5] = 1e9f;
  k[6] = -1e30f;
  v[7] = 3e38f;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const HotBlock b = MakeBlock(dtype, k, v);
    // The minimum of key channel `ch` over the block (int4's stored one).
    auto key_min = [&](int64_t ch) {
      float lowest = b.k32[ch];
      for (int64_t t = 1; t < s.block_tokens; ++t) {
        lowest = std::min(lowest, b.k32[t * c + ch]);
      }
      return F16ToF32(F32ToF16(lowest));
    };
    const float value_min = F16ToF32(
        F32ToF16(*std::min_element(b.v32.begin(), b.v32.begin() + 32)));
    for (QuantFormat f : kFormats) {
      const Quantized portable =
          Quantize(f, s, b, 0, s.block_tokens, QuantKernels::kPortable);
      for (QuantKernels kernels : SupportedKernelSets()) {
        SCOPED_TRACE(::testing::Message()
                     << FormatName(f) << " " << DTypeName(dtype) << " "
                     << QuantKernelsName(kernels));
        const Quantized q = Quantize(f, s, b, 0, s.block_tokens, kernels);
        ASSERT_EQ(q.k_part, portable.k_part);
        ASSERT_EQ(q.v_part, portable.v_part);
        ExpectFiniteParams(f, s, q);
        const QuantLayout& layout = q.layout;
        EXPECT_EQ(F16At(q.k_part, layout.k_scales + 5 * 2), kF16MaxBits);
        EXPECT_EQ(F16At(q.k_part, layout.k_scales + 6 * 2), kF16MaxBits);
        EXPECT_EQ(F16At(q.v_part, layout.v_scales), kF16MaxBits);
        const Dequantized dq = Dequantize(f, s, q, 0, s.block_tokens, kernels);
        EXPECT_TRUE(AllFinite(dq.k));
        EXPECT_TRUE(AllFinite(dq.v));
        if (f == QuantFormat::kInt8) {
          // Codes +-127 for the saturating values, 0 for the rest of their
          // groups (|x| is far below half a step of 65504).
          EXPECT_EQ(dq.k[5], 127 * kMax);
          EXPECT_EQ(dq.k[6], -127 * kMax);
          EXPECT_EQ(dq.v[7], 127 * kMax);
          for (int64_t t = 1; t < s.block_tokens; ++t) {
            ASSERT_EQ(dq.k[t * c + 5], 0.0f) << t;
            ASSERT_EQ(dq.k[t * c + 6], 0.0f) << t;
          }
          for (int64_t i = 0; i < 32; ++i) {
            if (i != 7) {
              ASSERT_EQ(dq.v[i], 0.0f) << i;
            }
          }
        } else {
          // Channel 5: code 15 above its (normal) minimum, the rest code 0.
          const float min5 = key_min(5);
          EXPECT_EQ(F16ToF32(F16At(q.k_part, layout.k_mins + 5 * 2)), min5);
          EXPECT_EQ(dq.k[5], 15 * kMax + min5);
          // Channel 6: the minimum saturates at -65504: code 0 for -1e30,
          // code 1 (exactly 0) for the rest.
          EXPECT_EQ(F16At(q.k_part, layout.k_mins + 6 * 2), kF16MinusMaxBits);
          EXPECT_EQ(dq.k[6], -kMax);
          for (int64_t t = 1; t < s.block_tokens; ++t) {
            ASSERT_EQ(dq.k[t * c + 5], min5) << t;
            ASSERT_EQ(dq.k[t * c + 6], 0.0f) << t;
          }
          EXPECT_EQ(F16ToF32(F16At(q.v_part, layout.v_mins)), value_min);
          EXPECT_EQ(dq.v[7], 15 * kMax + value_min);
          for (int64_t i = 0; i < 32; ++i) {
            if (i != 7) {
              ASSERT_EQ(dq.v[i], value_min) << i;
            }
          }
        }
        // 1e30 and 3e38 square beyond float: the sums are inf, not NaN.
        EXPECT_EQ(q.error.k_sq_err, std::numeric_limits<double>::infinity());
        EXPECT_EQ(q.error.k_sq_sum, std::numeric_limits<double>::infinity());
        EXPECT_EQ(q.error.v_sq_err, std::numeric_limits<double>::infinity());
        EXPECT_EQ(q.error.v_sq_sum, std::numeric_limits<double>::infinity());
      }
    }
  }
}

// Values beyond f16's range whose squares fit a float (|x| < 1.8e19): the
// saturation's error is reported, and it is the error of the output.
TEST(QuantizeTest, SaturationErrorIsReported) {
  const QuantShape s = kShape16;
  std::vector<float> k = Gaussian(Elems(s), 19), v = Gaussian(Elems(s), 20);
  k[5] = 1e9f;
  v[Elems(s) - 1] = -3e9f;
  const HotBlock b = MakeBlock(DType::kF32, k, v);
  for (QuantFormat f : kFormats) {
    for (QuantKernels kernels : SupportedKernelSets()) {
      SCOPED_TRACE(::testing::Message()
                   << FormatName(f) << " " << QuantKernelsName(kernels));
      const Quantized q = Quantize(f, s, b, 0, s.block_tokens, kernels);
      const Dequantized dq = Dequantize(f, s, q, 0, s.block_tokens, kernels);
      EXPECT_TRUE(std::isfinite(q.error.k_sq_err));
      EXPECT_TRUE(std::isfinite(q.error.v_sq_err));
      ExpectReportedErrorMatches(q.error, Measure(s, b, dq, 0, s.block_tokens));
      // Most of the saturated value is lost, and the error says so.
      EXPECT_GT(q.error.rel(), 0.9);
    }
  }
}

TEST(QuantizeTest, GroupSizesThePortablePathAloneHandles) {
  // group_size 4 and 3 (not a multiple of 16): every path is the portable
  // one.
  for (const QuantShape& s : {QuantShape{.block_tokens = 5,
                             .num_kv_heads = 2,
                             .head_dim = 12,
                             .group_size = 4},
                              QuantShape{.block_tokens = 4,
                              .num_kv_heads = 3,
                              .head_dim = 6,
                              .group_size = 3}}) {
    const HotBlock b =
        MakeBlock(DType::kF16, Gaussian(Elems(s), 13), Gaussian(Elems(s), 14));
    for (QuantFormat f : kFormats) {
      SCOPED_TRACE(::testing::Message()
                   << FormatName(f) << " G=" << s.group_size);
      const Quantized q = Quantize(f, s, b, 1, s.block_tokens - 2);
      const Dequantized dq = Dequantize(f, s, q, 1, s.block_tokens - 2);
      ExpectReportedErrorMatches(q.error,
                                 Measure(s, b, dq, 1, s.block_tokens - 2));
      EXPECT_LE(q.error.rel(), f == QuantFormat::kInt8 ? 1e-4 : 2e-2);
      // Every byte is written: another starting fill gives the same parts.
      const Quantized again = Quantize(f, s, b, 1, s.block_tokens - 2,
                                       BestQuantKernels(), std::byte{0x5a});
      EXPECT_EQ(q.k_part, again.k_part);
      EXPECT_EQ(q.v_part, again.v_part);
    }
  }
}

// The SIMD kernels (AVX2, AVX-512: each one this CPU has) write the same
// bytes, report the same error (to the bit) and read back the same floats as
// the portable loops, over shapes that hit every tail: channel counts that
// are not a multiple of the strips or of the 256-channel key chunks, groups
// of an odd number of 16-channel units, short batches of groups, and the
// paths for inputs too large for the kernels' stack buffers.
TEST(QuantizeTest, SimdKernelsMatchThePortableLoops) {
  std::vector<QuantKernels> simd_sets;
  for (QuantKernels k : {QuantKernels::kAvx2, QuantKernels::kAvx512}) {
    if (QuantKernelsSupported(k)) simd_sets.push_back(k);
  }
  if (simd_sets.empty()) GTEST_SKIP() << "no SIMD kernels on this CPU";
  std::printf("SIMD kernels checked:");
  for (QuantKernels k : simd_sets) {
    std::printf(" %s", std::string(QuantKernelsName(k)).c_str());
  }
  std::printf(" (QuantizeBlock uses %s)\n",
              std::string(QuantKernelsName(BestQuantKernels())).c_str());
  const QuantShape shapes[] = {
      kShape16,
      kShape32,
      {.block_tokens = 16,
       .num_kv_heads = 8,
       .head_dim = 128,
       .group_size = 128},
      {.block_tokens = 7, .num_kv_heads = 3, .head_dim = 80, .group_size = 80},
      {.block_tokens = 5, .num_kv_heads = 3, .head_dim = 48, .group_size = 16},
      {.block_tokens = 9, .num_kv_heads = 5, .head_dim = 272, .group_size = 16},
      {.block_tokens = 3, .num_kv_heads = 1, .head_dim = 16, .group_size = 16},
      // Keys too long to stage (T * 64 channels > 4096 floats).
      {.block_tokens = 70, .num_kv_heads = 1, .head_dim = 64, .group_size = 32},
      // Rows of 4224 channels: values in two pieces of groups, key scales
      // not cached by the dequantization.
      {.block_tokens = 2,
       .num_kv_heads = 33,
       .head_dim = 128,
       .group_size = 16},
      // A group too large to stage.
      {.block_tokens = 2,
       .num_kv_heads = 1,
       .head_dim = 8192,
       .group_size = 8192},
  };
  uint32_t seed = 100;
  for (const QuantShape& s : shapes) {
    for (DType dtype : {DType::kF16, DType::kBF16, DType::kF32}) {
      std::vector<float> k = KeyLike(s, ++seed), v = Gaussian(Elems(s), ++seed);
      // Zeros of both signs, a zero group, f16's largest value and, when the
      // dtype has them, values whose scale or minimum saturates.
      for (int64_t i = 0; i < s.head_dim; ++i) v[i] = i % 2 ? 0.0f : -0.0f;
      k[1] = -0.0f;
      k[2] = 0.0f;
      v[Elems(s) - 1] = 65504.0f;
      if (dtype != DType::kF16) {
        k[3] = -1e9f;
        v[Elems(s) - 2] = 3e9f;
      }
      const HotBlock b = MakeBlock(dtype, k, v);
      for (QuantFormat f : kFormats) {
        for (auto [first, count] :
             {std::pair{0, s.block_tokens}, std::pair{1, s.block_tokens - 2},
              std::pair{s.block_tokens - 1, 1}}) {
          const Quantized scalar = Quantize(
              f, s, b, first, count, QuantKernels::kPortable, std::byte{0});
          const Dequantized scalar_out =
              Dequantize(f, s, scalar, first, count, QuantKernels::kPortable);
          ExpectReportedErrorMatches(scalar.error,
                                     Measure(s, b, scalar_out, first, count));
          for (QuantKernels kernels : simd_sets) {
            SCOPED_TRACE(::testing::Message()
                         << QuantKernelsName(kernels) << " " << FormatName(f)
                         << " " << DTypeName(dtype) << " T=" << s.block_tokens
                         << " H=" << s.num_kv_heads << " D=" << s.head_dim
                         << " G=" << s.group_size << " slots " << first << "+"
                         << count);
            const Quantized simd = Quantize(f, s, b, first, count, kernels);
            ASSERT_EQ(simd.k_part, scalar.k_part);
            ASSERT_EQ(simd.v_part, scalar.v_part);
            EXPECT_EQ(simd.error.k_sq_err, scalar.error.k_sq_err);
            EXPECT_EQ(simd.error.k_sq_sum, scalar.error.k_sq_sum);
            EXPECT_EQ(simd.error.v_sq_err, scalar.error.v_sq_err);
            EXPECT_EQ(simd.error.v_sq_sum, scalar.error.v_sq_sum);
            const Dequantized out =
                Dequantize(f, s, simd, first, count, kernels);
            ASSERT_TRUE(SameBits(out.k, scalar_out.k));
            ASSERT_TRUE(SameBits(out.v, scalar_out.v));
            // Without the error sums: the same bytes, a zero result.
            const Quantized fast =
                Quantize(f, s, b, first, count, kernels, std::byte{0xcd},
                         QuantizeOptions{.measure_error = false});
            ASSERT_EQ(fast.k_part, scalar.k_part);
            ASSERT_EQ(fast.v_part, scalar.v_part);
            EXPECT_EQ(fast.error.k_sq_sum + fast.error.v_sq_sum, 0.0);
            // Into f16 / bf16: the f32 values, rounded as a hot block would
            // store them, on the portable and the SIMD path alike.
            for (DType out_dtype : {DType::kF16, DType::kBF16}) {
              const std::vector<uint16_t> want_k =
                  Rounded(scalar_out.k, out_dtype);
              const std::vector<uint16_t> want_v =
                  Rounded(scalar_out.v, out_dtype);
              for (QuantKernels path : {QuantKernels::kPortable, kernels}) {
                const Dequantized16 out16 =
                    Dequantize16(f, s, simd, first, count, out_dtype, path);
                ASSERT_EQ(out16.k, want_k) << DTypeName(out_dtype);
                ASSERT_EQ(out16.v, want_v) << DTypeName(out_dtype);
              }
            }
          }
        }
      }
    }
  }
}

// A NextBlock hint (the block read after this one) only prefetches: every
// kernel set, into every output dtype, over whole and partial ranges, writes
// the same bits with the hint as without, whichever format the next block
// has and whether or not this block counts as already requested.
TEST(QuantizeTest, NextBlockHintChangesNoOutput) {
  std::vector<QuantKernels> sets = {QuantKernels::kPortable};
  for (QuantKernels k : {QuantKernels::kAvx2, QuantKernels::kAvx512}) {
    if (QuantKernelsSupported(k)) sets.push_back(k);
  }
  uint32_t seed = 700;
  for (const QuantShape& s : {kShape16, kShape32}) {
    seed += 4;
    const HotBlock b =
        MakeBlock(DType::kF16, KeyLike(s, seed), Gaussian(Elems(s), seed + 1));
    const HotBlock other = MakeBlock(DType::kF16, KeyLike(s, seed + 2),
                                     Gaussian(Elems(s), seed + 3));
    for (QuantFormat f : kFormats) {
      const Quantized q = Quantize(f, s, b, 0, s.block_tokens);
      for (QuantFormat next_format : kFormats) {
        const Quantized n = Quantize(next_format, s, other, 0, s.block_tokens);
        const NextBlock hint{next_format, n.k_part.data(), n.v_part.data()};
        for (auto [first, count] :
             {std::pair{0, s.block_tokens}, std::pair{3, s.block_tokens - 5}}) {
          for (QuantKernels kernels : sets) {
            for (DType out_dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
              SCOPED_TRACE(::testing::Message()
                           << QuantKernelsName(kernels) << " " << FormatName(f)
                           << " next " << FormatName(next_format) << " into "
                           << DTypeName(out_dtype) << " slots " << first << "+"
                           << count);
              const int64_t bytes = Channels(s) * count * DTypeSize(out_dtype);
              std::vector<std::byte> plain(2 * static_cast<size_t>(bytes),
                                           std::byte{0xab});
              std::vector<std::byte> hinted = plain;
              DequantizeBlockWith(kernels, f, s, q.k_part.data(),
                                  q.v_part.data(), first, count, out_dtype,
                                  plain.data(), plain.data() + bytes);
              // With and without this block's own rows asked for.
              for (bool requested : {false, true}) {
                NextBlock h = hint;
                h.this_block_requested = requested;
                std::fill(hinted.begin(), hinted.end(), std::byte{0xab});
                DequantizeBlockWith(kernels, f, s, q.k_part.data(),
                                    q.v_part.data(), first, count, out_dtype,
                                    hinted.data(), hinted.data() + bytes, h);
                ASSERT_EQ(hinted, plain) << "requested " << requested;
              }
              // (Both calls wrote their output.)
              ASSERT_NE(plain[0], std::byte{0xab});
            }
          }
        }
      }
    }
  }
}

// NaN inputs: every path writes the same bytes and returns the same (NaN)
// errors; a NaN's group keeps the statistics of its other values.
TEST(QuantizeTest, NanInputsGiveTheSameBytesOnEveryPath) {
  const QuantShape s = kShape16;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> k = Gaussian(Elems(s), 17), v = Gaussian(Elems(s), 18);
  k[10] = nan;
  k[Channels(s) * 5 + 300] = -nan;
  v[40] = nan;
  v[Elems(s) - 1] = nan;
  for (DType dtype : {DType::kF16, DType::kBF16, DType::kF32}) {
    const HotBlock b = MakeBlock(dtype, k, v);
    for (QuantFormat f : kFormats) {
      const Quantized scalar =
          Quantize(f, s, b, 0, s.block_tokens, QuantKernels::kPortable);
      EXPECT_TRUE(std::isnan(scalar.error.k_sq_err));
      EXPECT_TRUE(std::isnan(scalar.error.v_sq_sum));
      // Channel 11 (no NaN) shares the NaN's key unit; its values are fine.
      const Dequantized out =
          Dequantize(f, s, scalar, 0, s.block_tokens, QuantKernels::kPortable);
      EXPECT_NEAR(out.k[11], b.k32[11], 0.5);
      EXPECT_TRUE(std::isfinite(out.k[10]));
      for (QuantKernels kernels :
           {QuantKernels::kAvx2, QuantKernels::kAvx512}) {
        if (!QuantKernelsSupported(kernels)) continue;
        SCOPED_TRACE(::testing::Message()
                     << QuantKernelsName(kernels) << " " << FormatName(f) << " "
                     << DTypeName(dtype));
        const Quantized simd = Quantize(f, s, b, 0, s.block_tokens, kernels);
        EXPECT_EQ(simd.k_part, scalar.k_part);
        EXPECT_EQ(simd.v_part, scalar.v_part);
        const Quantized fast =
            Quantize(f, s, b, 0, s.block_tokens, kernels, std::byte{0xcd},
                     QuantizeOptions{.measure_error = false});
        EXPECT_EQ(fast.k_part, scalar.k_part);
        EXPECT_EQ(fast.v_part, scalar.v_part);
        EXPECT_EQ(0,
                  std::memcmp(&simd.error, &scalar.error, sizeof(QuantError)));
      }
    }
  }
}

TEST(QuantizeTest, EmptyRangeWritesZeroParts) {
  const HotBlock b = MakeBlock(DType::kF16, Gaussian(Elems(kShape16), 15),
                               Gaussian(Elems(kShape16), 16));
  for (QuantFormat f : kFormats) {
    const Quantized q = Quantize(f, kShape16, b, 4, 0);
    EXPECT_EQ(q.error.rel(), 0.0);
    for (std::byte x : q.k_part) ASSERT_EQ(x, std::byte{0});
    for (std::byte x : q.v_part) ASSERT_EQ(x, std::byte{0});
  }
}

}  // namespace
}  // namespace kvpage::internal
