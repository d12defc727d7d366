// Compression with layer groups (CacheConfig::group_layers): a group's block
// is compressed whole, every layer's part into its slot of one cell, in one
// format. The promise under test: every layer of a grouped cache reads
// exactly what the same layer of a per-layer cache reads under the same
// calls (the same codes, from Gather, View and Dequantize alike), while the
// grouped cache compresses, holds and decompresses one block per group where
// the per-layer cache handles one per layer; and the same on a storage that
// is not host memory.
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cache/kv_cache_internal.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvpage/kvpage.h"
#include "tests/cache_fingerprint.h"
#include "tests/test_util.h"

namespace kvpage {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr int kHeads = 2, kDim = 8, kElems = kHeads * kDim;

// Four layers in two groups: 0 and 2 under the error policy, 1 and 3 a
// sliding window with sinks (a window block compresses its visible slots).
CacheConfig Config(bool grouped, QuantBits bits, double max_rel_error = 0) {
  CacheConfig c{.num_layers = 4,
                .num_kv_heads = kHeads,
                .head_dim = kDim,
                .dtype = DType::kF16,
                .block_tokens = 4,
                .num_blocks = 200,
                .max_seq_len = 64,
                .layer_policies = {{.layer = 1,
                                    .overflow = OverflowPolicy::kSlidingWindow,
                                    .max_seq_len = 22,
                                    .sink_tokens = 2},
                                   {.layer = 3,
                                    .overflow = OverflowPolicy::kSlidingWindow,
                                    .max_seq_len = 22,
                                    .sink_tokens = 2}},
                .compression = {.enabled = true,
                                .bits = bits,
                                .group_size = 4,
                                .hot_tokens = 6,
                                .quant_cells = 200,
                                .auto_compress = true,
                                .max_rel_error = max_rel_error,
                                .measure_error = true}};
  c.group_layers = grouped;
  return c;
}

std::unique_ptr<KVCache> Make(const CacheConfig& c, bool opaque = false) {
  absl::StatusOr<std::unique_ptr<KVCache>> made =
      opaque ? internal::KVCacheAccess::CreateWithStorage(
                   c, std::make_unique<testing::OpaqueStorage>(StorageBlocks(c),
                                                               BlockBytes(c)))
             : KVCache::Create(c);
  EXPECT_TRUE(made.ok()) << made.status();
  return made.ok() ? *std::move(made) : nullptr;
}

// Feeds both caches the same tokens, layer by layer: a step of `n` tokens
// ending at seq_len, a different random payload for every layer.
void Step(std::mt19937_64& rng, int64_t seq_len, int64_t n, SeqId seq,
          std::initializer_list<KVCache*> caches) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> k(static_cast<size_t>(n * kElems)), v(k.size());
  const int layers = (*caches.begin())->config().num_layers;
  for (int layer = 0; layer < layers; ++layer) {
    for (float& x : k) x = normal(rng);
    for (float& x : v) x = normal(rng);
    for (KVCache* cache : caches) {
      ASSERT_TRUE(cache
                      ->Update(seq, layer, {.data = k.data(), .tokens = n},
                               {.data = v.data(), .tokens = n}, seq_len)
                      .ok())
          << "seq " << seq << " layer " << layer << " seq_len " << seq_len;
    }
  }
}

// Every layer of every sequence reads the same in both caches: Gather
// exactly, and View's blocks (formats, slots, Dequantize of the compressed
// ones; hot ones by their values in Gather) alike.
void ExpectSameReads(const KVCache& a, const KVCache& b,
                     const std::vector<SeqId>& seqs, const std::string& when) {
  for (SeqId seq : seqs) {
    for (int layer = 0; layer < a.config().num_layers; ++layer) {
      SCOPED_TRACE(when + ": seq " + std::to_string(seq) + " layer " +
                   std::to_string(layer));
      const GatheredLayer ga = *a.Gather(seq, layer);
      const GatheredLayer gb = *b.Gather(seq, layer);
      ASSERT_EQ(ga.positions, gb.positions);
      ASSERT_EQ(ga.k, gb.k);
      ASSERT_EQ(ga.v, gb.v);
      absl::StatusOr<LayerView> va = a.View(seq, layer);
      absl::StatusOr<LayerView> vb = b.View(seq, layer);
      ASSERT_TRUE(va.ok() && vb.ok());
      ASSERT_EQ(va->blocks.size(), vb->blocks.size());
      for (size_t i = 0; i < va->blocks.size(); ++i) {
        const BlockView& x = va->blocks[i];
        const BlockView& y = vb->blocks[i];
        ASSERT_EQ(x.format, y.format) << "block " << i;
        ASSERT_EQ(x.begin_slot, y.begin_slot);
        ASSERT_EQ(x.tokens, y.tokens);
        ASSERT_EQ(x.first_position, y.first_position);
        if (x.format == BlockFormat::kHot || !vb->host_accessible) continue;
        const size_t n = static_cast<size_t>(x.tokens * kElems);
        std::vector<float> xk(n), xv(n), yk(n), yv(n);
        ASSERT_TRUE(
            Dequantize(*va, x, absl::MakeSpan(xk), absl::MakeSpan(xv)).ok());
        ASSERT_TRUE(
            Dequantize(*vb, y, absl::MakeSpan(yk), absl::MakeSpan(yv)).ok());
        ASSERT_EQ(xk, yk) << "block " << i;
        ASSERT_EQ(xv, yv) << "block " << i;
      }
    }
  }
}

struct TwinCase {
  QuantBits bits;
  bool opaque;         // the grouped cache's storage is not host memory
  bool auto_compress;  // else CompressOldEntries every few steps
};

class GroupedCompressionTwins : public ::testing::TestWithParam<TwinCase> {};

// A per-layer cache and a grouped one under the same calls: prefill, decode
// (auto_compress compresses as blocks turn cold, or CompressOldEntries every
// few steps, for a whole group at once in the grouped cache; the window lets
// compressed blocks go), and a rollback whose rewrite decompresses. With one
// format (no mixed mode) each layer's codes are the same in both; the grouped
// cache counts a block per group.
TEST_P(GroupedCompressionTwins, EveryLayerReadsAsInPerLayerTables) {
  const TwinCase param = GetParam();
  CacheConfig per_layer_config = Config(false, param.bits);
  per_layer_config.compression.auto_compress = param.auto_compress;
  CacheConfig grouped_config = per_layer_config;
  grouped_config.group_layers = true;
  auto per_layer = Make(per_layer_config);
  auto grouped = Make(grouped_config, param.opaque);
  ASSERT_TRUE(per_layer && grouped);
  std::mt19937_64 rng(11);
  std::vector<SeqId> seqs;
  for (int i = 0; i < 3; ++i) {
    seqs.push_back(*per_layer->AddSequence());
    ASSERT_EQ(*grouped->AddSequence(), seqs.back());
  }
  for (int64_t len = 0; len < 40;) {
    const int64_t n = len == 0 ? 13 : 1;
    len += n;
    for (SeqId seq : seqs) {
      Step(rng, len, n, seq, {per_layer.get(), grouped.get()});
      if (param.auto_compress || len % 5 != 0) continue;
      // One call for each group (layers 0 and 1 name them), one per layer.
      for (int layer = 0; layer < 4; ++layer) {
        ASSERT_TRUE(per_layer->CompressOldEntries(seq, layer, 0.3).ok());
        if (layer < 2) {
          ASSERT_TRUE(grouped->CompressOldEntries(seq, layer, 0.3).ok());
        }
      }
    }
    if (len % 9 == 0) ExpectSameReads(*per_layer, *grouped, seqs, "decode");
  }
  ExpectSameReads(*per_layer, *grouped, seqs, "after decode");
  CacheStats p = per_layer->Stats(), g = grouped->Stats();
  EXPECT_GT(g.compressions_applied, 0);
  EXPECT_EQ(p.compressions_applied, 2 * g.compressions_applied);
  EXPECT_EQ(p.quant_blocks_int8 + p.quant_blocks_int4,
            2 * (g.quant_blocks_int8 + g.quant_blocks_int4));
  EXPECT_EQ(p.blocks_used, 2 * g.blocks_used);
  // A cell holds a slot per layer of a group, as a block does: the bytes
  // held, saved and per token are the same.
  EXPECT_EQ(g.quant_cell_bytes, 2 * p.quant_cell_bytes);
  EXPECT_EQ(g.memory_usage_bytes, p.memory_usage_bytes);
  EXPECT_EQ(g.bytes_saved, p.bytes_saved);
  EXPECT_EQ(g.bytes_per_token_cold, 2 * p.bytes_per_token_cold);
  EXPECT_EQ(g.max_quant_error, p.max_quant_error);
  EXPECT_EQ(g.tokens_stored, p.tokens_stored);
  for (SeqId seq : seqs) {
    EXPECT_EQ(grouped->Stats(seq)->memory_usage_bytes,
              per_layer->Stats(seq)->memory_usage_bytes);
  }

  // A rollback into compressed blocks: the rewrite makes them hot again,
  // every layer's part.
  // Block 7, positions [28, 32), is compressed (cold: 32 <= 40 - 6).
  ASSERT_TRUE(per_layer->Truncate(seqs[0], 29).ok());
  ASSERT_TRUE(grouped->Truncate(seqs[0], 29).ok());
  for (int64_t len = 32; len <= 38; len += 3) {
    Step(rng, len, 3, seqs[0], {per_layer.get(), grouped.get()});
  }
  ExpectSameReads(*per_layer, *grouped, seqs, "rollback");
  p = per_layer->Stats();
  g = grouped->Stats();
  EXPECT_GT(g.decompressions, 0);
  EXPECT_EQ(p.decompressions, 2 * g.decompressions);
  EXPECT_EQ(g.memory_usage_bytes, p.memory_usage_bytes);
  EXPECT_VALID(*per_layer);
  EXPECT_VALID(*grouped);
  for (SeqId seq : seqs) {
    ASSERT_TRUE(per_layer->RemoveSequence(seq).ok());
    ASSERT_TRUE(grouped->RemoveSequence(seq).ok());
  }
  g = grouped->Stats();
  EXPECT_EQ(g.quant_cells_used, 0);
  EXPECT_EQ(g.blocks_used, 0);
  EXPECT_VALID(*grouped);
}

INSTANTIATE_TEST_SUITE_P(
    Formats, GroupedCompressionTwins,
    ::testing::Values(TwinCase{QuantBits::kInt8, false, true},
                      TwinCase{QuantBits::kInt4, false, false},
                      TwinCase{QuantBits::kInt8, true, false},
                      TwinCase{QuantBits::kInt4, true, true}),
    [](const ::testing::TestParamInfo<TwinCase>& info) {
      return std::string(info.param.bits == QuantBits::kInt8 ? "Int8"
                                                             : "Int4") +
             (info.param.opaque ? "OpaqueStorage" : "HostArena") +
             (info.param.auto_compress ? "Auto" : "Called");
    });

// Mixed mode picks a block's format by its error; a group's block takes one
// format for all its layers: int8 when any layer needs it, so that every
// layer stays within the bound. Two layers in one group: layer 0 holds
// values int4 stores exactly, layer 1 noise that int4 cannot hold within
// 1e-4.
TEST(GroupedCompression, MixedModeTakesInt8WhenAnyLayerNeedsIt) {
  auto config = [](bool grouped) {
    CacheConfig c = Config(grouped, QuantBits::kInt8, /*max_rel_error=*/1e-4);
    c.num_layers = 2;
    c.layer_policies = {};
    return c;
  };
  auto per_layer = Make(config(false));
  auto grouped = Make(config(true));
  ASSERT_TRUE(per_layer && grouped);
  const SeqId seq = *per_layer->AddSequence();
  ASSERT_EQ(*grouped->AddSequence(), seq);
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  constexpr int64_t kTokens = 16;  // blocks 0 and 1 turn cold
  std::vector<float> flat(kTokens * kElems, 0.5f), noise(flat.size());
  for (float& x : noise) x = normal(rng);
  for (KVCache* cache : {per_layer.get(), grouped.get()}) {
    const TokenSpan f{.data = flat.data(), .tokens = kTokens};
    const TokenSpan r{.data = noise.data(), .tokens = kTokens};
    ASSERT_TRUE(cache->Update(seq, 0, f, f, kTokens).ok());
    ASSERT_TRUE(cache->Update(seq, 1, r, r, kTokens).ok());
  }
  auto formats = [&](const KVCache& cache, int layer) {
    std::vector<BlockFormat> out;
    const absl::StatusOr<LayerView> view = cache.View(seq, layer);
    for (const BlockView& b : view->blocks) out.push_back(b.format);
    return out;
  };
  using F = BlockFormat;
  EXPECT_EQ(formats(*per_layer, 0),
            (std::vector<F>{F::kInt4, F::kInt4, F::kHot, F::kHot}));
  EXPECT_EQ(formats(*per_layer, 1),
            (std::vector<F>{F::kInt8, F::kInt8, F::kHot, F::kHot}));
  const std::vector<F> int8 = {F::kInt8, F::kInt8, F::kHot, F::kHot};
  EXPECT_EQ(formats(*grouped, 0), int8);
  EXPECT_EQ(formats(*grouped, 1), int8);
  const CacheStats g = grouped->Stats();
  EXPECT_EQ(g.quant_blocks_int8, 2);
  EXPECT_EQ(g.quant_cells_used, 4);  // an int8 block takes two cells
  // The block's error is its worst layer's: layer 1's int8 error.
  EXPECT_GT(g.max_quant_error, 0);
  EXPECT_EQ(g.max_quant_error, per_layer->Stats().max_quant_error);
  for (int layer : {0, 1}) {
    const GatheredLayer a = *per_layer->Gather(seq, layer);
    const GatheredLayer b = *grouped->Gather(seq, layer);
    for (size_t i = 0; i < a.k.size(); ++i) {
      ASSERT_NEAR(a.k[i], b.k[i], 0.05) << "layer " << layer << " " << i;
      ASSERT_NEAR(a.v[i], b.v[i], 0.05) << "layer " << layer << " " << i;
    }
  }
  // Both layers flat: the group's blocks are int4, a cell each.
  const SeqId flat_seq = *grouped->AddSequence();
  const TokenSpan f{.data = flat.data(), .tokens = kTokens};
  ASSERT_TRUE(grouped->Update(flat_seq, 0, f, f, kTokens).ok());
  ASSERT_TRUE(grouped->Update(flat_seq, 1, f, f, kTokens).ok());
  EXPECT_EQ(grouped->Stats().quant_blocks_int4, 2);
  EXPECT_EQ(grouped->Stats().quant_cells_used, 6);
  const GatheredLayer back = *grouped->Gather(flat_seq, 1);
  EXPECT_EQ(back.k, flat);
  EXPECT_VALID(*grouped);
}

// A group's block turns cold by the group's newest position and is
// compressed once every layer of the group has written it: during a step,
// the first layer compresses it when the step's tokens are within
// hot_tokens (as a per-layer table would), else the layer that writes it
// last. CompressOldEntries refuses while a step is part-way and changes
// nothing.
TEST(GroupedCompression, CompressesWhatEveryLayerOfTheGroupWrote) {
  CacheConfig c = Config(true, QuantBits::kInt8);
  c.compression.hot_tokens = 1;
  auto cache = Make(c);
  ASSERT_TRUE(cache);
  const SeqId seq = *cache->AddSequence();
  std::mt19937_64 rng(3);
  Step(rng, 6, 6, seq, {cache.get()});
  // Group 0's block 0 (4 of 6 tokens); group 1's block 0 holds sinks.
  EXPECT_EQ(cache->Stats().compressions_applied, 1);
  std::vector<float> kv(3 * kElems, 0.25f);
  auto update = [&](int layer, int64_t n, int64_t seq_len) {
    const TokenSpan s{.data = kv.data(), .tokens = n};
    return cache->Update(seq, layer, s, s, seq_len);
  };
  // Three tokens, hot_tokens 1: block 1 [4, 8) is cold by layer 0's length
  // 9, but layer 2 has not written positions 6 to 8.
  ASSERT_TRUE(update(0, 3, 9).ok());
  EXPECT_EQ(cache->Stats().compressions_applied, 1);
  const testing::CacheFingerprint before = testing::Fingerprint(*cache);
  const absl::Status refused = cache->CompressOldEntries(seq, 2, 0.0);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.message(), HasSubstr("differ"));
  EXPECT_TRUE(testing::Unchanged(*cache, before));
  ASSERT_TRUE(update(2, 3, 9).ok());  // the layer that wrote it last
  EXPECT_EQ(cache->Stats().compressions_applied, 2);
  // Up to 12 on both layers, then one token: layer 0's update makes block 2
  // [8, 12) cold, which both layers have written.
  ASSERT_TRUE(update(0, 2, 11).ok());
  ASSERT_TRUE(update(2, 2, 11).ok());
  ASSERT_TRUE(update(0, 1, 12).ok());
  ASSERT_TRUE(update(2, 1, 12).ok());
  EXPECT_EQ(cache->Stats().compressions_applied, 2);
  ASSERT_TRUE(update(0, 1, 13).ok());
  EXPECT_EQ(cache->Stats().compressions_applied, 3);
  EXPECT_EQ(cache->View(seq, 2)->blocks[2].format, BlockFormat::kInt8);
  ASSERT_TRUE(update(2, 1, 13).ok());
  EXPECT_EQ(cache->Stats().compressions_applied, 3);
  EXPECT_TRUE(cache->CompressOldEntries(seq, 2, 0.0).ok());
  EXPECT_VALID(*cache);
}

// A cell takes a slot per layer of the widest group: the quantized pool's
// size is checked with that width, and a pool that fits per layer can be
// refused grouped, naming the field.
TEST(GroupedCompression, ThePoolsSizeCountsTheGroupsSlots) {
  CacheConfig c{
      .num_layers = 4,
      .num_kv_heads = 8,
      .head_dim = 128,
      .dtype = DType::kF16,
      .block_tokens = 16,
      .num_blocks = 4,
      .max_seq_len = 64,
      .compression = {.enabled = true, .quant_cells = int64_t{1} << 30}};
  EXPECT_TRUE(ValidateConfig(c).ok());  // ~36 KiB cells: 36 TiB
  c.group_layers = true;                // 4 slots a cell: beyond 64 TiB
  const absl::Status refused = ValidateConfig(c);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.message(), HasSubstr("CacheConfig.compression"));
  EXPECT_THAT(refused.message(), HasSubstr("4 layers"));
}

// A grouped cache's snapshot: its cells hold a slot per layer of a group,
// the file reads back equal, and the verifier finds nothing wrong.
TEST(GroupedCompression, SnapshotsReadBackAndVerify) {
  auto cache = Make(Config(true, QuantBits::kInt8, /*max_rel_error=*/2e-3));
  ASSERT_TRUE(cache);
  std::mt19937_64 rng(8);
  const SeqId a = *cache->AddSequence(), b = *cache->AddSequence();
  Step(rng, 30, 30, a, {cache.get()});
  Step(rng, 17, 17, b, {cache.get()});
  ASSERT_TRUE(cache->CompressOldEntries(b, 0, 0.0).ok());
  absl::StatusOr<Snapshot> snap =
      cache->TakeSnapshot({.include_token_data = true});
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_GT(snap->stats.quant_cells_used, 0);
  EXPECT_EQ(snap->quant.unit_bytes, cache->Stats().quant_cell_bytes);
  EXPECT_THAT(VerifySnapshot(*snap), IsEmpty());
  absl::StatusOr<Snapshot> parsed = ParseSnapshot(EncodeSnapshot(*snap));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(*parsed == *snap);
  EXPECT_THAT(VerifySnapshot(*parsed), IsEmpty());
}

}  // namespace
}  // namespace kvpage
