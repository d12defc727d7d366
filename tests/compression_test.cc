// Compression through the cache: which blocks are compressed, what reads back,
// what it does to attention, what it saves, and that no data is lost when
// the quantized pool is full. Kernel-level error bounds are in
// quantize_test.cc.
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "allocator/convert.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvpage/kvpage.h"
#include "tests/cache_fingerprint.h"
#include "tests/test_util.h"

namespace kvpage {
namespace {

using kvpage::testing::CacheFingerprint;
using kvpage::testing::Fingerprint;
using kvpage::testing::Gaussian;
using ::testing::HasSubstr;

constexpr int kHeads = 2, kDim = 16;
constexpr int64_t kElems = kHeads * kDim;

CacheConfig Config(QuantBits bits, int64_t hot_tokens = 8) {
  return {.num_layers = 2,
          .num_kv_heads = kHeads,
          .head_dim = kDim,
          .dtype = DType::kF16,
          .block_tokens = 4,
          .num_blocks = 64,
          .max_seq_len = 1024,
          .compression = {.enabled = true,
                          .bits = bits,
                          .group_size = 8,
                          .hot_tokens = hot_tokens,
                          .quant_cells = 64,
                          .measure_error = true}};
}

// Hot blocks short enough for an update to run out: `num_blocks` of them,
// compressed into `quant_cells` int8 cells as they turn cold (4 hot tokens).
CacheConfig TightConfig(int64_t num_blocks, int64_t quant_cells) {
  CacheConfig c = Config(QuantBits::kInt8, 4);
  c.num_blocks = num_blocks;
  c.compression.auto_compress = true;
  c.compression.quant_cells = quant_cells;
  return c;
}

// Writes the first `tokens` tokens of `kv` as the keys and the values of
// positions [0, tokens) of the layer.
absl::Status Prefill(KVCache& cache, SeqId seq, int layer,
                     const std::vector<float>& kv, int64_t tokens) {
  const TokenSpan span{.data = kv.data(), .tokens = tokens};
  return cache.Update(seq, layer, span, span, tokens);
}

// What the f16 cache stores for `x`.
std::vector<float> AsF16(const std::vector<float>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    out[i] = internal::F16ToF32(internal::F32ToF16(x[i]));
  }
  return out;
}

double RelMse(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0, sum = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    err += (got[i] - want[i]) * double(got[i] - want[i]);
    sum += want[i] * double(want[i]);
  }
  return err / sum;
}

struct Filled {
  std::unique_ptr<KVCache> cache;
  SeqId seq;
  std::vector<float> k, v;  // as stored hot (f16-rounded), all positions
};

Filled Fill(const CacheConfig& config, int64_t tokens, int layer = 0) {
  Filled f{.cache = *KVCache::Create(config)};
  f.seq = *f.cache->AddSequence();
  const std::vector<float> k = Gaussian(tokens * kElems, 1),
                           v = Gaussian(tokens * kElems, 2);
  EXPECT_TRUE(f.cache
                  ->Update(f.seq, layer, {.data = k.data(), .tokens = tokens},
                           {.data = v.data(), .tokens = tokens}, tokens)
                  .ok());
  f.k = AsF16(k);
  f.v = AsF16(v);
  return f;
}

std::vector<BlockFormat> Formats(const KVCache& cache, SeqId seq, int layer) {
  std::vector<BlockFormat> out;
  const LayerView view = *cache.View(seq, layer);
  for (const BlockView& b : view.blocks) out.push_back(b.format);
  return out;
}

TEST(CompressionTest, CompressesTheOldestWholeBlocksAndIsIdempotent) {
  Filled f = Fill(Config(QuantBits::kInt8), 40);  // 10 blocks of 4
  KVCache& cache = *f.cache;
  const CacheStats before = cache.Stats();
  // Oldest half: 20 tokens, blocks 0..4; hot_tokens 8 keeps 8..9 anyway.
  ASSERT_TRUE(cache.CompressOldEntries(f.seq, 0, 0.5).ok());
  using F = BlockFormat;
  EXPECT_THAT(
      Formats(cache, f.seq, 0),
      ::testing::ElementsAre(F::kInt8, F::kInt8, F::kInt8, F::kInt8, F::kInt8,
                             F::kHot, F::kHot, F::kHot, F::kHot, F::kHot));
  CacheStats s = cache.Stats();
  EXPECT_EQ(s.compressions_applied, 5);
  EXPECT_EQ(s.quant_blocks_int8, 5);
  EXPECT_EQ(s.blocks_used, before.blocks_used - 5);
  EXPECT_EQ(s.quant_cells_used, 5);
  EXPECT_EQ(s.tokens_stored, before.tokens_stored);
  EXPECT_EQ(s.bytes_saved, 5 * (s.block_bytes - s.quant_cell_bytes));
  EXPECT_GT(s.max_quant_error, 0);
  EXPECT_LE(s.max_quant_error, 4e-5);
  EXPECT_VALID(cache);

  const CacheFingerprint once = Fingerprint(cache);
  ASSERT_TRUE(cache.CompressOldEntries(f.seq, 0, 0.5).ok());
  EXPECT_UNCHANGED(cache, once);

  // Everything reads back, positions unchanged, within the int8 bound.
  const GatheredLayer g = *cache.Gather(f.seq, 0);
  ASSERT_EQ(g.positions.size(), 40u);
  EXPECT_LE(RelMse(g.k, f.k), 4e-5);
  EXPECT_LE(RelMse(g.v, f.v), 4e-5);
  // The hot half is exact.
  for (size_t i = 20 * kElems; i < f.k.size(); ++i) ASSERT_EQ(g.k[i], f.k[i]);

  // Keep nothing recent: all but the hot_tokens most recent.
  ASSERT_TRUE(cache.CompressOldEntries(f.seq, 0, 0.0).ok());
  EXPECT_EQ(cache.Stats().compressions_applied, 8);
  EXPECT_VALID(cache);
}

TEST(CompressionTest, NeverSinksHotTokensPartialBlocksOrRings) {
  CacheConfig c = Config(QuantBits::kInt8, 4);
  c.overflow = OverflowPolicy::kSlidingWindow;
  c.max_seq_len = 30;
  c.sink_tokens = 2;
  c.layer_policies = {{.layer = 1,
                       .overflow = OverflowPolicy::kCircularBuffer,
                       .max_seq_len = 30}};
  Filled f = Fill(c, 23);
  KVCache& cache = *f.cache;
  ASSERT_TRUE(cache.CompressOldEntries(f.seq, 0, 0.0).ok());
  // Block 0 holds the sinks; blocks 1..3 are cold; block 4 (16..19) holds
  // position 19, one of the 4 most recent, and stays hot; block 5 (20..22)
  // is partial and hot.
  using F = BlockFormat;
  EXPECT_THAT(Formats(cache, f.seq, 0),
              ::testing::ElementsAre(F::kHot, F::kInt8, F::kInt8, F::kInt8,
                                     F::kHot, F::kHot));
  const std::vector<float> k = Gaussian(23 * kElems, 3);
  ASSERT_TRUE(Prefill(cache, f.seq, 1, k, 23).ok());
  ASSERT_TRUE(cache.CompressOldEntries(f.seq, 1, 0.0).ok());
  for (BlockFormat format : Formats(cache, f.seq, 1)) {
    EXPECT_EQ(format, BlockFormat::kHot);
  }
  EXPECT_VALID(cache);
}

TEST(CompressionTest, BadCallsAreRefused) {
  Filled f = Fill(Config(QuantBits::kInt8), 12);
  ASSERT_TRUE(f.cache->CompressOldEntries(f.seq, 0, 0.0).ok());
  const struct {
    SeqId seq;
    int layer;
    double keep;
    absl::StatusCode code;
  } cases[] = {{f.seq, 0, 1.5, absl::StatusCode::kInvalidArgument},
               {f.seq, 0, std::nan(""), absl::StatusCode::kInvalidArgument},
               {f.seq, 3, 0.5, absl::StatusCode::kInvalidArgument},
               {99, 0, 0.5, absl::StatusCode::kNotFound}};
  for (const auto& refused : cases) {
    SCOPED_TRACE(::testing::Message()
                 << "seq " << refused.seq << " layer " << refused.layer
                 << " keep " << refused.keep);
    const CacheFingerprint before = Fingerprint(*f.cache);
    EXPECT_EQ(
        f.cache->CompressOldEntries(refused.seq, refused.layer, refused.keep)
            .code(),
        refused.code);
    EXPECT_UNCHANGED(*f.cache, before);
  }
  CacheConfig off = Config(QuantBits::kInt8);
  off.compression.enabled = false;
  Filled g = Fill(off, 12);
  const CacheFingerprint before = Fingerprint(*g.cache);
  const absl::Status s = g.cache->CompressOldEntries(g.seq, 0, 0.5);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("not enabled"));
  EXPECT_UNCHANGED(*g.cache, before);

  CacheConfig bad = Config(QuantBits::kInt4);
  bad.compression.group_size = 5;
  EXPECT_THAT(KVCache::Create(bad).status().message(),
              HasSubstr("compression.group_size is 5"));
  bad = Config(QuantBits::kInt8);
  bad.compression.quant_cells = 0;
  EXPECT_THAT(KVCache::Create(bad).status().message(),
              HasSubstr("compression.quant_cells is 0"));
}

// The error sums are opt-in: without measure_error the compressed bytes (and
// so every read) are the same, and the statistics report no error.
TEST(CompressionTest, ErrorIsMeasuredOnlyWhenAsked) {
  for (QuantBits bits : {QuantBits::kInt8, QuantBits::kInt4}) {
    CacheConfig quiet = Config(bits);
    quiet.compression.measure_error = false;
    Filled measured = Fill(Config(bits), 40);
    Filled unmeasured = Fill(quiet, 40);
    ASSERT_TRUE(measured.cache->CompressOldEntries(measured.seq, 0, 0.0).ok());
    ASSERT_TRUE(
        unmeasured.cache->CompressOldEntries(unmeasured.seq, 0, 0.0).ok());
    const GatheredLayer a = *measured.cache->Gather(measured.seq, 0);
    const GatheredLayer b = *unmeasured.cache->Gather(unmeasured.seq, 0);
    EXPECT_EQ(a.k, b.k);
    EXPECT_EQ(a.v, b.v);
    EXPECT_GT(measured.cache->Stats().max_quant_error, 0);
    EXPECT_GT(measured.cache->Stats().mean_quant_error, 0);
    const CacheStats s = unmeasured.cache->Stats();
    EXPECT_GT(s.compressions_applied, 0);
    EXPECT_EQ(s.max_quant_error, 0);
    EXPECT_EQ(s.mean_quant_error, 0);
    const LayerView view = *unmeasured.cache->View(unmeasured.seq, 0);
    ASSERT_NE(view.blocks[0].format, BlockFormat::kHot);
    EXPECT_EQ(view.blocks[0].quant_error, 0);
  }
}

TEST(CompressionTest, Int4ErrorAndFormatInTheView) {
  Filled f = Fill(Config(QuantBits::kInt4), 40);
  ASSERT_TRUE(f.cache->CompressOldEntries(f.seq, 0, 0.0).ok());
  const GatheredLayer g = *f.cache->Gather(f.seq, 0);
  const double err = RelMse(g.k, f.k) + RelMse(g.v, f.v);
  EXPECT_GT(err, 1e-5);
  EXPECT_LE(RelMse(g.k, f.k), 1e-2);
  EXPECT_LE(RelMse(g.v, f.v), 1e-2);
  const LayerView view = *f.cache->View(f.seq, 0);
  EXPECT_EQ(view.blocks[0].format, BlockFormat::kInt4);
  EXPECT_EQ(view.blocks[0].k, nullptr);
  EXPECT_NE(view.blocks[0].quant.k_mins, nullptr);
  EXPECT_GT(view.blocks[0].quant_error, 0);
  EXPECT_EQ(f.cache->Stats().quant_blocks_int4, 8);
  // Dequantize() of each block is what Gather() returns.
  int64_t done = 0;
  for (const BlockView& b : view.blocks) {
    std::vector<float> k(b.tokens * kElems), v(b.tokens * kElems);
    ASSERT_TRUE(Dequantize(view, b, absl::MakeSpan(k), absl::MakeSpan(v)).ok());
    for (size_t i = 0; i < k.size(); ++i) {
      ASSERT_EQ(k[i], g.k[done * kElems + i]);
      ASSERT_EQ(v[i], g.v[done * kElems + i]);
    }
    done += b.tokens;
  }
  std::vector<float> small(3);
  EXPECT_EQ(Dequantize(view, view.blocks[0], absl::MakeSpan(small),
                       absl::MakeSpan(small))
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// Attention over all-cold int8 blocks stays within 5e-3 of full precision.
TEST(CompressionTest, AttentionErrorWithColdBlocks) {
  for (QuantBits bits : {QuantBits::kInt8, QuantBits::kInt4}) {
    CacheConfig c = Config(bits, 0);
    c.num_blocks = 300;
    c.compression.quant_cells = 300;
    Filled f = Fill(c, 1024);
    // 4 query heads over 2 kv-heads.
    const std::vector<float> query = Gaussian(4 * kDim, 9);
    std::vector<float> exact(query.size()), approx(query.size());
    ASSERT_TRUE(
        Attend(*f.cache->View(f.seq, 0), query, absl::MakeSpan(exact)).ok());
    ASSERT_TRUE(f.cache->CompressOldEntries(f.seq, 0, 0.0).ok());
    EXPECT_EQ(f.cache->Stats().compressions_applied, 256);
    ASSERT_TRUE(
        Attend(*f.cache->View(f.seq, 0), query, absl::MakeSpan(approx)).ok());
    const double err = RelMse(approx, exact);
    std::printf("attention relative error, all cold %s: %.3g\n",
                bits == QuantBits::kInt8 ? "int8" : "int4", err);
    if (bits == QuantBits::kInt8) {
      EXPECT_LE(err, 5e-3);
    }
    EXPECT_GT(err, 0);
  }
}

TEST(CompressionTest, AttendMatchesADirectComputation) {
  Filled f = Fill(Config(QuantBits::kInt8), 9);
  const std::vector<float> query =
      Gaussian(kElems, 5);  // one query per kv-head
  std::vector<float> out(query.size());
  ASSERT_TRUE(
      Attend(*f.cache->View(f.seq, 0), query, absl::MakeSpan(out)).ok());
  for (int h = 0; h < kHeads; ++h) {
    std::vector<double> w(9);
    double total = 0;
    for (int t = 0; t < 9; ++t) {
      double dot = 0;
      for (int d = 0; d < kDim; ++d) {
        dot += query[h * kDim + d] * double(f.k[t * kElems + h * kDim + d]);
      }
      w[t] = std::exp(dot / std::sqrt(double(kDim)));
      total += w[t];
    }
    for (int d = 0; d < kDim; ++d) {
      double want = 0;
      for (int t = 0; t < 9; ++t) {
        want += w[t] / total * f.v[t * kElems + h * kDim + d];
      }
      EXPECT_NEAR(out[h * kDim + d], want, 1e-5);
    }
  }
  std::vector<float> wrong(5);
  EXPECT_EQ(
      Attend(*f.cache->View(f.seq, 0), wrong, absl::MakeSpan(wrong)).code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(CompressionTest, AFullQuantizedPoolSkipsAndLosesNothing) {
  CacheConfig c = Config(QuantBits::kInt8);
  c.compression.quant_cells = 3;
  Filled f = Fill(c, 40);
  ASSERT_TRUE(f.cache->CompressOldEntries(f.seq, 0, 0.0).ok());
  const CacheStats s = f.cache->Stats();
  EXPECT_EQ(s.compressions_applied, 3);
  EXPECT_EQ(s.compressions_skipped, 5);
  const GatheredLayer g = *f.cache->Gather(f.seq, 0);
  EXPECT_LE(RelMse(g.k, f.k), 4e-5);
  for (size_t i = 12 * kElems; i < f.k.size(); ++i) ASSERT_EQ(g.k[i], f.k[i]);
  EXPECT_VALID(f.cache);
}

TEST(CompressionTest, AutoCompressCompresssBlocksAsTheyTurnCold) {
  CacheConfig c = Config(QuantBits::kInt8, 8);
  c.compression.auto_compress = true;
  auto cache = *KVCache::Create(c);
  const SeqId seq = *cache->AddSequence();
  const std::vector<float> k = Gaussian(64 * kElems, 1);
  for (int64_t t = 0; t < 64; ++t) {
    const TokenSpan one{.data = k.data() + t * kElems, .tokens = 1};
    ASSERT_TRUE(cache->Update(seq, 0, one, one, t + 1).ok());
    // Blocks wholly older than the 8 most recent tokens are compressed.
    const int64_t cold = std::max<int64_t>(0, t + 1 - 8) / 4;
    ASSERT_EQ(cache->Stats().compressions_applied, cold) << t;
  }
  EXPECT_VALID(cache);
}

TEST(CompressionTest, AnUpdateShortOfBlocksCompresssColdBlocksFirst) {
  auto cache = *KVCache::Create(TightConfig(12, 6));
  const SeqId a = *cache->AddSequence();
  const std::vector<float> k = Gaussian(40 * kElems, 1);
  // One update of 40 tokens: its cold blocks are compressed in that update.
  ASSERT_TRUE(Prefill(*cache, a, 0, k, 40).ok());
  CacheStats s = cache->Stats();
  // 10 blocks; 9 are cold (the newest 4 tokens are block 9), but only 6
  // quantized cells: 3 skipped, 7 hot blocks used.
  EXPECT_EQ(s.compressions_applied, 6);
  EXPECT_EQ(s.compressions_skipped, 3);
  EXPECT_EQ(s.blocks_used, 4);
  // A second sequence needing more hot blocks than are free, with no room
  // left to compress: refused, nothing changed.
  const SeqId b = *cache->AddSequence();
  const CacheFingerprint before = Fingerprint(*cache);
  const absl::Status no = Prefill(*cache, b, 1, k, 40);
  EXPECT_EQ(no.code(), absl::StatusCode::kResourceExhausted) << no;
  EXPECT_THAT(no.message(), HasSubstr("compressing cold blocks cannot free"));
  EXPECT_UNCHANGED(*cache, before);
  EXPECT_VALID(cache);
}

TEST(CompressionTest, EmergencyCompressFreesHotBlocks) {
  const CacheConfig c = TightConfig(12, 4);
  auto cache = *KVCache::Create(c);
  const std::vector<float> k = Gaussian(40 * kElems, 1);
  auto put = [&](SeqId seq, int64_t tokens) {
    return Prefill(*cache, seq, 0, k, tokens);
  };
  // x: 2 blocks, the first cold and compressed (1 slot).
  const SeqId x = *cache->AddSequence();
  ASSERT_TRUE(put(x, 8).ok());
  // a: 10 blocks, 9 cold; 3 compressed (the slots left), 6 stay hot.
  const SeqId a = *cache->AddSequence();
  ASSERT_TRUE(put(a, 40).ok());
  CacheStats s = cache->Stats();
  EXPECT_EQ(s.compressions_applied, 4);
  EXPECT_EQ(s.compressions_skipped, 6);
  EXPECT_EQ(s.blocks_used, 8);
  // Releasing x frees a hot block and a slot: 5 hot blocks free.
  ASSERT_TRUE(cache->RemoveSequence(x).ok());
  // b needs 6 hot blocks: one cold block of a is compressed first.
  const SeqId b = *cache->AddSequence();
  ASSERT_TRUE(put(b, 24).ok());
  s = cache->Stats();
  EXPECT_EQ(s.compressions_applied, 5);
  EXPECT_EQ(s.blocks_used, 12);
  EXPECT_LE(RelMse(cache->Gather(a, 0)->k, AsF16(k)), 4e-5);
  EXPECT_VALID(cache);
  // Without auto_compress the same update is refused and changes nothing.
  CacheConfig off = c;
  off.compression.auto_compress = false;
  auto plain = *KVCache::Create(off);
  const SeqId pa = *plain->AddSequence();
  ASSERT_TRUE(Prefill(*plain, pa, 0, k, 40).ok());
  const SeqId pb = *plain->AddSequence();
  const CacheFingerprint before = Fingerprint(*plain);
  EXPECT_EQ(Prefill(*plain, pb, 0, k, 12).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_UNCHANGED(*plain, before);
}

TEST(CompressionTest, WritingIntoACompressedBlockMakesItHotAgain) {
  Filled f = Fill(Config(QuantBits::kInt8, 0), 16);
  KVCache& cache = *f.cache;
  ASSERT_TRUE(cache.CompressOldEntries(f.seq, 0, 0.0).ok());
  EXPECT_EQ(cache.Stats().compressions_applied, 4);
  // Overwrite position 5 (block 1) and roll back to 10 (into block 2).
  const std::vector<float> k(kElems * 5, 7.0f);
  ASSERT_TRUE(cache
                  .Update(f.seq, 0, {.data = k.data(), .tokens = 5},
                          {.data = k.data(), .tokens = 5}, 10)
                  .ok());
  using F = BlockFormat;
  EXPECT_THAT(Formats(cache, f.seq, 0),
              ::testing::ElementsAre(F::kInt8, F::kHot, F::kHot));
  EXPECT_EQ(cache.Stats().decompressions, 2);
  const GatheredLayer g = *cache.Gather(f.seq, 0);
  ASSERT_EQ(g.positions.size(), 10u);
  for (int64_t i = 5 * kElems; i < 10 * kElems; ++i) ASSERT_EQ(g.k[i], 7.0f);
  // Position 4 (block 1, not written) keeps its value within int8 error.
  for (int64_t i = 4 * kElems; i < 5 * kElems; ++i) {
    EXPECT_NEAR(g.k[i], f.k[i], 0.05);
  }
  // A pure rollback into a compressed block, then an append into it.
  ASSERT_TRUE(cache.Update(f.seq, 0, {}, {}, 2).ok());
  EXPECT_EQ(cache.Stats().decompressions, 2);
  ASSERT_TRUE(cache
                  .Update(f.seq, 0, {.data = k.data(), .tokens = 1},
                          {.data = k.data(), .tokens = 1}, 3)
                  .ok());
  EXPECT_EQ(cache.Stats().decompressions, 3);
  EXPECT_EQ(cache.Gather(f.seq, 0)->k[2 * kElems], 7.0f);
  EXPECT_VALID(cache);
}

// A refused update of a layer with compressed blocks changes nothing: not the
// compressed blocks, not the quantized pool, not the compression statistics;
// also when the write would first make a compressed block hot and no block is
// free.
TEST(CompressionTest, RefusedUpdatesLeaveCompressedBlocksAlone) {
  CacheConfig c = Config(QuantBits::kInt8, 0);
  c.num_blocks = 8;
  c.max_seq_len = 40;
  Filled f = Fill(c, 16);
  KVCache& cache = *f.cache;
  ASSERT_TRUE(cache.CompressOldEntries(f.seq, 0, 0.0).ok());
  ASSERT_EQ(cache.Stats().quant_blocks_int8, 4);
  // Another sequence takes every hot block.
  const std::vector<float> k = Gaussian(32 * kElems, 3);
  ASSERT_TRUE(Prefill(cache, *cache.AddSequence(), 0, k, 32).ok());
  ASSERT_EQ(cache.Stats().blocks_free, 0);
  const TokenSpan one{.data = k.data(), .tokens = 1};
  const TokenSpan two{.data = k.data(), .tokens = 2};
  const TokenSpan null{.data = nullptr, .tokens = 1};
  const TokenSpan past_max{.data = k.data(), .tokens = 25};  // 16 + 25 > 40
  const struct {
    const char* what;
    int layer;
    TokenSpan k, v;
    int64_t seq_len;
    absl::StatusCode code;
  } cases[] = {
      {"overwrite into a compressed block, no block free", 0, one, one, 16,
       absl::StatusCode::kResourceExhausted},
      {"layer out of range", 2, one, one, 16,
       absl::StatusCode::kInvalidArgument},
      {"k and v differ", 0, one, two, 16, absl::StatusCode::kInvalidArgument},
      {"null data", 0, one, null, 16, absl::StatusCode::kInvalidArgument},
      {"gap", 0, one, one, 18, absl::StatusCode::kInvalidArgument},
      {"below position 0", 0, two, two, 1, absl::StatusCode::kInvalidArgument},
      {"past max_seq_len", 0, past_max, past_max, 41,
       absl::StatusCode::kResourceExhausted},
  };
  for (const auto& call : cases) {
    SCOPED_TRACE(call.what);
    const CacheFingerprint before = Fingerprint(cache);
    const absl::Status s =
        cache.Update(f.seq, call.layer, call.k, call.v, call.seq_len);
    EXPECT_EQ(s.code(), call.code) << s;
    EXPECT_UNCHANGED(cache, before);
  }
  EXPECT_VALID(cache);
}

TEST(CompressionTest, MaxRelErrorPicksInt4WhereItIsGoodEnough) {
  for (double bound : {1e-2, 1e-6}) {
    CacheConfig c = Config(QuantBits::kInt8, 0);
    c.compression.max_rel_error = bound;
    Filled f = Fill(c, 32);
    ASSERT_TRUE(f.cache->CompressOldEntries(f.seq, 0, 0.0).ok());
    const CacheStats s = f.cache->Stats();
    const LayerView view = *f.cache->View(f.seq, 0);
    for (const BlockView& b : view.blocks) {
      EXPECT_LE(b.quant_error, bound == 1e-2 ? bound : 4e-5);
      EXPECT_EQ(b.format,
                bound == 1e-2 ? BlockFormat::kInt4 : BlockFormat::kInt8);
    }
    if (bound == 1e-2) {
      EXPECT_EQ(s.quant_blocks_int4, 8);
      EXPECT_EQ(s.quant_cells_used, 8);
    } else {
      EXPECT_EQ(s.quant_blocks_int8, 8);
      EXPECT_EQ(s.quant_cells_used, 16);  // K and V parts in two cells
    }
    EXPECT_LE(s.max_quant_error, bound == 1e-2 ? bound : 4e-5);
    EXPECT_VALID(f.cache);
    const GatheredLayer g = *f.cache->Gather(f.seq, 0);
    EXPECT_LE(RelMse(g.k, f.k), bound == 1e-2 ? 1e-2 : 4e-5);
    ASSERT_TRUE(f.cache->RemoveSequence(f.seq).ok());
    EXPECT_EQ(f.cache->Stats().quant_cells_used, 0);
  }
}

// The byte budget of a compressed block against the f16 hot block of the same
// tokens, at the shapes the README quotes.
TEST(CompressionTest, CompressedBlocksAreSmall) {
  struct Case {
    QuantBits bits;
    int block_tokens, group_size;
    double at_most;
  };
  for (const Case& k : {Case{QuantBits::kInt8, 16, 32, 0.55},
                        Case{QuantBits::kInt8, 32, 64, 0.55},
                        Case{QuantBits::kInt4, 32, 64, 0.30},
                        Case{QuantBits::kInt4, 64, 64, 0.30}}) {
    CacheConfig c{.num_layers = 1,
                  .num_kv_heads = 8,
                  .head_dim = 128,
                  .dtype = DType::kF16,
                  .block_tokens = k.block_tokens,
                  .num_blocks = 4,
                  .max_seq_len = 1024,
                  .compression = {.enabled = true,
                                  .bits = k.bits,
                                  .group_size = k.group_size,
                                  .quant_cells = 4}};
    const CacheStats s = (*KVCache::Create(c))->Stats();
    const double ratio =
        static_cast<double>(s.quant_cell_bytes) / s.block_bytes;
    std::printf("%s, %d tokens/block, groups of %d: %.3f of f16\n",
                k.bits == QuantBits::kInt8 ? "int8" : "int4", k.block_tokens,
                k.group_size, ratio);
    EXPECT_LE(ratio, k.at_most);
  }
}

// Regression (issue 15, defect 4): an int8 cache with an odd head_dim passes
// ValidateConfig, but Create built the int4 layout too and its check
// aborted. Such a cache is created and compresses, reads and attends.
TEST(CompressionTest, Int8TakesAnOddHeadDim) {
  constexpr int kOddDim = 3, kOddElems = 2 * kOddDim;
  CacheConfig c{.num_layers = 1,
                .num_kv_heads = 2,
                .head_dim = kOddDim,
                .dtype = DType::kF16,
                .block_tokens = 4,
                .num_blocks = 16,
                .max_seq_len = 64,
                .compression = {.enabled = true,
                                .bits = QuantBits::kInt8,
                                .group_size = kOddDim,
                                .hot_tokens = 4,
                                .quant_cells = 16,
                                .measure_error = true}};
  absl::StatusOr<std::unique_ptr<KVCache>> created = KVCache::Create(c);
  ASSERT_TRUE(created.ok()) << created.status();
  KVCache& cache = **created;
  const SeqId seq = *cache.AddSequence();
  const std::vector<float> k = Gaussian(16 * kOddElems, 7);
  const std::vector<float> v = Gaussian(16 * kOddElems, 8);
  ASSERT_TRUE(cache
                  .Update(seq, 0, {.data = k.data(), .tokens = 16},
                          {.data = v.data(), .tokens = 16}, 16)
                  .ok());
  ASSERT_TRUE(cache.CompressOldEntries(seq, 0, 0.0).ok());
  EXPECT_EQ(cache.Stats().quant_blocks_int8, 3);
  ASSERT_VALID(cache);
  const GatheredLayer g = *cache.Gather(seq, 0);
  EXPECT_LE(RelMse(g.k, AsF16(k)), 1e-4);
  EXPECT_LE(RelMse(g.v, AsF16(v)), 1e-4);
  // The view's compressed blocks decode to what Gather returns.
  const LayerView view = *cache.View(seq, 0);
  std::vector<float> bk(4 * kOddElems), bv(4 * kOddElems);
  ASSERT_TRUE(
      Dequantize(view, view.blocks[0], absl::MakeSpan(bk), absl::MakeSpan(bv))
          .ok());
  EXPECT_EQ(bk, std::vector<float>(g.k.begin(), g.k.begin() + 4 * kOddElems));
  std::vector<float> query(2 * kOddDim, 0.5f), out(2 * kOddDim);
  EXPECT_TRUE(Attend(view, query, absl::MakeSpan(out)).ok());
  // int4 and mixed still need an even head_dim, and say so.
  c.compression.bits = QuantBits::kInt4;
  EXPECT_THAT(std::string(KVCache::Create(c).status().message()),
              HasSubstr("head_dim"));
  c.compression.bits = QuantBits::kInt8;
  c.compression.max_rel_error = 0.01;
  EXPECT_THAT(std::string(KVCache::Create(c).status().message()),
              HasSubstr("head_dim"));
}

// Non-finite input (issue 15): Update stores NaN, infinities and values f16
// cannot hold as given; a block holding one is never compressed (it would
// saturate, and the error statistics would turn NaN), so it stays hot and
// reads back exactly, and the statistics stay finite.
TEST(CompressionTest, BlocksWithValuesTheFormatsCannotHoldStayHot) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  struct Case {
    DType dtype;
    double max_rel_error;  // > 0: mixed formats
  };
  for (const Case& k : {Case{DType::kF16, 0}, Case{DType::kBF16, 0},
                        Case{DType::kF32, 0}, Case{DType::kF32, 0.01}}) {
    SCOPED_TRACE(DTypeName(k.dtype));
    CacheConfig c = Config(QuantBits::kInt8, 4);
    c.dtype = k.dtype;
    c.compression.max_rel_error = k.max_rel_error;
    auto cache = *KVCache::Create(c);
    const SeqId seq = *cache->AddSequence();
    // 6 blocks of 4 tokens: a NaN key in block 0, an infinite value in
    // block 2, in block 4 a value beyond f16 (inf once stored in f16).
    std::vector<float> kv = Gaussian(24 * kElems, 3);
    kv[0 * 4 * kElems + 5] = nan;
    kv[2 * 4 * kElems + 7] = -inf;
    kv[4 * 4 * kElems + 9] = 1e6f;
    const std::vector<float>& values = kv;
    std::vector<float> keys = kv;
    keys[2 * 4 * kElems + 7] = 0.25f;  // the infinity in the values only
    ASSERT_TRUE(cache
                    ->Update(seq, 0, {.data = keys.data(), .tokens = 24},
                             {.data = values.data(), .tokens = 24}, 24)
                    .ok());
    const GatheredLayer hot = *cache->Gather(seq, 0);
    EXPECT_TRUE(std::isnan(hot.k[5]));
    EXPECT_EQ(hot.v[2 * 4 * kElems + 7], -inf);
    const float big = k.dtype == DType::kF16 ? inf
                      : k.dtype == DType::kBF16
                          ? internal::BF16ToF32(internal::F32ToBF16(1e6f))
                          : 1e6f;
    EXPECT_EQ(hot.k[4 * 4 * kElems + 9], big);
    // Blocks 0..4 are cold (hot_tokens 4); 0, 2 and 4 cannot be compressed.
    ASSERT_TRUE(cache->CompressOldEntries(seq, 0, 0.0).ok());
    using F = BlockFormat;
    const F q = k.max_rel_error > 0 ? Formats(*cache, seq, 0)[1] : F::kInt8;
    EXPECT_NE(q, F::kHot);
    EXPECT_THAT(Formats(*cache, seq, 0),
                ::testing::ElementsAre(F::kHot, q, F::kHot, ::testing::_,
                                       F::kHot, F::kHot));
    CacheStats s = cache->Stats();
    EXPECT_EQ(s.compressions_applied, 2);
    EXPECT_EQ(s.compressions_skipped, 3);
    EXPECT_TRUE(std::isfinite(s.mean_quant_error));
    EXPECT_TRUE(std::isfinite(s.max_quant_error));
    EXPECT_LE(s.max_quant_error, 0.01);
    // The blocks kept hot read back exactly as they were.
    const GatheredLayer after = *cache->Gather(seq, 0);
    for (int64_t block : {0, 2, 4}) {
      for (int64_t i = block * 4 * kElems; i < (block + 1) * 4 * kElems; ++i) {
        const size_t at = static_cast<size_t>(i);
        for (auto half : {&GatheredLayer::k, &GatheredLayer::v}) {
          const float was = (hot.*half)[at], is = (after.*half)[at];
          if (std::isnan(was)) {
            EXPECT_TRUE(std::isnan(is)) << i;
          } else {
            EXPECT_EQ(is, was) << i;
          }
        }
      }
    }
    EXPECT_VALID(cache);
  }
}

// The emergency compression of an update short of hot blocks does not count on
// blocks that cannot be compressed: it refuses, and changes nothing.
TEST(CompressionTest, AnEmergencyCompressSkipsBlocksItCannotCompress) {
  auto cache = *KVCache::Create(TightConfig(6, 6));
  std::vector<float> kv = Gaussian(24 * kElems, 4);
  for (int64_t b = 0; b < 6; ++b) {
    kv[static_cast<size_t>(b * 4 * kElems)] =
        std::numeric_limits<float>::infinity();
  }
  // 6 blocks in layer 0, none compressible: the pool is full.
  const SeqId a = *cache->AddSequence();
  ASSERT_TRUE(Prefill(*cache, a, 0, kv, 24).ok());
  EXPECT_EQ(cache->Stats().compressions_applied, 0);
  EXPECT_EQ(cache->Stats().blocks_free, 0);
  const CacheFingerprint before = Fingerprint(*cache);
  const std::vector<float> one = Gaussian(kElems, 5);
  const absl::Status s = Prefill(*cache, a, 1, one, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_UNCHANGED(*cache, before);
  EXPECT_VALID(cache);
}

}  // namespace
}  // namespace kvpage
