// A second tier under the prefix cache (kvpage/tier.h), here an in-memory
// one: blocks evicted are written back to it (and published ones with
// write_through), and MatchPrefix continues from it where the blocks held
// end, loading what it fetches into fresh blocks. The promise under test:
// a prefix restored from the tier reads exactly what was computed, in this
// cache or in another one of the same shape; anything the tier gets wrong
// (sizes, counts) is a miss; the cache stays valid throughout.
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvpage/kvpage.h"
#include "tests/map_tier.h"
#include "tests/test_util.h"

namespace kvpage {
namespace {

using ::testing::HasSubstr;
using testing::MapTier;

constexpr int kHeads = 2, kDim = 4, kElems = kHeads * kDim, kBlock = 4;

CacheConfig Config(bool grouped, int64_t num_blocks) {
  CacheConfig c{.num_layers = 3,
                .num_kv_heads = kHeads,
                .head_dim = kDim,
                .dtype = DType::kF32,
                .block_tokens = kBlock,
                .num_blocks = num_blocks,
                .max_seq_len = 256};
  c.group_layers = grouped;
  return c;
}

std::vector<int32_t> Prompt(int32_t first, int64_t n) {
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < n; ++i)
    ids.push_back(first + static_cast<int32_t>(i));
  return ids;
}

// Fills `seq` with `ids`, every layer its own values (a function of the
// prompt's first id, the layer and the position).
void Compute(KVCache& cache, SeqId seq, const std::vector<int32_t>& ids,
             int64_t from = 0) {
  ASSERT_TRUE(
      cache.AppendTokens(seq, absl::MakeConstSpan(ids).subspan(from)).ok());
  const auto n = static_cast<int64_t>(ids.size()) - from;
  for (int layer = 0; layer < cache.config().num_layers; ++layer) {
    const std::vector<float> k = testing::Tokens(
        from, n,
        {.elems = kElems, .offset = static_cast<float>(ids[0] + layer * 1000)});
    const std::vector<float> v = testing::Tokens(
        from, n,
        {.elems = kElems, .offset = static_cast<float>(ids[0] - layer * 1000)});
    ASSERT_TRUE(cache
                    .Update(seq, layer, {.data = k.data(), .tokens = n},
                            {.data = v.data(), .tokens = n},
                            static_cast<int64_t>(ids.size()))
                    .ok());
  }
}

// Every layer of `seq` holds what Compute wrote for `ids`, positions [0, n).
void ExpectComputed(const KVCache& cache, SeqId seq,
                    const std::vector<int32_t>& ids, int64_t n) {
  for (int layer = 0; layer < cache.config().num_layers; ++layer) {
    const GatheredLayer g = *cache.Gather(seq, layer);
    ASSERT_EQ(static_cast<int64_t>(g.positions.size()), n) << layer;
    EXPECT_EQ(g.k, testing::Tokens(
                       0, n,
                       {.elems = kElems,
                        .offset = static_cast<float>(ids[0] + layer * 1000)}))
        << "layer " << layer;
    EXPECT_EQ(g.v, testing::Tokens(
                       0, n,
                       {.elems = kElems,
                        .offset = static_cast<float>(ids[0] - layer * 1000)}))
        << "layer " << layer;
  }
}

class TierTest : public ::testing::TestWithParam<bool> {};

// Process A computes a prompt; its blocks are evicted into the tier by
// other work; a new sequence, and a second cache (another process of the
// same shape), match the whole prompt from the tier and read it exactly.
TEST_P(TierTest, EvictedBlocksComeBackFromTheTier) {
  const bool grouped = GetParam();
  const int64_t tables = grouped ? 1 : 3;
  // 12 blocks per table: a 40-token prompt (10 blocks) and little else.
  const CacheConfig config = Config(grouped, 12 * (grouped ? 1 : 3));
  auto a = *KVCache::Create(config);
  MapTier tier;
  ASSERT_TRUE(a->AttachTier(&tier, {.fetch_batch = 3}).ok());
  ASSERT_EQ(tier.shapes.size(), 1u);
  EXPECT_EQ(tier.shapes[0].table_layers.size(), static_cast<size_t>(tables));
  EXPECT_EQ(tier.shapes[0].table_bytes[0],
            (grouped ? 3 : 1) * BlockBytes(config));
  const std::vector<int32_t> prompt = Prompt(100, 40);
  const SeqId s1 = *a->AddSequence();
  Compute(*a, s1, prompt);
  ASSERT_TRUE(a->RemoveSequence(s1).ok());
  EXPECT_EQ(a->Stats().prefix_entries, 10);
  EXPECT_EQ(tier.written_back, 0);
  // Other work takes the whole pool: the prompt's idle entries are evicted,
  // each written back.
  const SeqId other = *a->AddSequence();
  Compute(*a, other, Prompt(5000, 48));
  EXPECT_EQ(tier.written_back, 10);
  EXPECT_EQ(tier.blocks.size(), 10u);
  ASSERT_TRUE(a->RemoveSequence(other).ok());
  EXPECT_VALID(*a);
  // The prompt again: nothing of it is held here; the tier has it all.
  const SeqId s2 = *a->AddSequence();
  absl::StatusOr<int64_t> matched = a->MatchPrefix(s2, prompt);
  ASSERT_TRUE(matched.ok()) << matched.status();
  EXPECT_EQ(*matched, 40);
  EXPECT_EQ(tier.fetches, 4);  // batches of 3: 3 + 3 + 3 + 1
  ExpectComputed(*a, s2, prompt, 40);
  EXPECT_EQ(a->Stats().hits, 10);
  EXPECT_EQ(a->Stats().blocks_used, 10 * tables);
  EXPECT_VALID(*a);
  // Decoding goes on from the restored prefix, and the blocks are shared
  // by a sequence matching them locally now.
  const SeqId s3 = *a->AddSequence();
  EXPECT_EQ(*a->MatchPrefix(s3, prompt, {.leave_last_token = true}), 36);
  EXPECT_EQ(tier.fetches, 4);  // all held here
  ExpectComputed(*a, s3, prompt, 36);
  EXPECT_VALID(*a);

  // Another cache of the same shape (another process) finds them too.
  auto b = *KVCache::Create(config);
  ASSERT_TRUE(b->AttachTier(&tier, {}).ok());
  const SeqId t = *b->AddSequence();
  EXPECT_EQ(*b->MatchPrefix(t, prompt), 40);
  ExpectComputed(*b, t, prompt, 40);
  // And computes the rest itself.
  std::vector<int32_t> longer = prompt;
  for (int32_t i = 0; i < 6; ++i) longer.push_back(7000 + i);
  Compute(*b, t, longer, 40);
  EXPECT_VALID(*b);
  ASSERT_TRUE(b->AttachTier(nullptr, {}).ok());
  ASSERT_TRUE(a->AttachTier(nullptr, {}).ok());
}

// write_through offers each block as it is published; a cache destroyed
// offers nothing (its tier may be gone).
TEST_P(TierTest, WriteThroughOffersWhatIsPublished) {
  const CacheConfig config = Config(GetParam(), 64);
  MapTier tier;
  {
    auto cache = *KVCache::Create(config);
    ASSERT_TRUE(cache->AttachTier(&tier, {.write_through = true}).ok());
    const SeqId s = *cache->AddSequence();
    Compute(*cache, s, Prompt(1, 30));  // 7 full blocks
    EXPECT_EQ(tier.written_through, 7);
    EXPECT_EQ(tier.written_back, 0);
    ASSERT_TRUE(cache->RemoveSequence(s).ok());
  }
  EXPECT_EQ(tier.written_through, 7);
  EXPECT_EQ(tier.written_back, 0);
  auto b = *KVCache::Create(config);
  ASSERT_TRUE(b->AttachTier(&tier, {}).ok());
  const SeqId s = *b->AddSequence();
  EXPECT_EQ(*b->MatchPrefix(s, Prompt(1, 30)), 28);
  ExpectComputed(*b, s, Prompt(1, 30), 28);
  EXPECT_VALID(*b);
}

// With compression on, the tier still gets hot bytes: a block the prefix
// cache lists is never compressed (compression repacks only blocks one
// table holds alone), and one that was compressed is never published. A
// compressing cache restores another's blocks exactly.
TEST_P(TierTest, CompressingCachesShareHotBlocks) {
  CacheConfig config = Config(GetParam(), 64 * (GetParam() ? 1 : 3));
  config.compression = {.enabled = true,
                        .bits = QuantBits::kInt8,
                        .group_size = kDim,
                        .hot_tokens = 4,
                        .quant_cells = 64 * (GetParam() ? 1 : 3),
                        .auto_compress = true};
  MapTier tier;
  auto a = *KVCache::Create(config);
  ASSERT_TRUE(a->AttachTier(&tier, {.write_through = true}).ok());
  const std::vector<int32_t> prompt = Prompt(100, 40);
  const SeqId s = *a->AddSequence();
  Compute(*a, s, prompt);
  EXPECT_EQ(tier.written_through, 10);
  EXPECT_EQ(a->Stats().compressions_applied, 0);  // all shared: hot
  // A sequence without ids publishes nothing: its cold blocks compress,
  // and none reaches the tier.
  const SeqId private_seq = *a->AddSequence();
  for (int layer = 0; layer < 3; ++layer) {
    const std::vector<float> k = testing::Tokens(0, 40, {.elems = kElems});
    ASSERT_TRUE(a->Update(private_seq, layer, {.data = k.data(), .tokens = 40},
                          {.data = k.data(), .tokens = 40}, 40)
                    .ok());
  }
  EXPECT_GT(a->Stats().compressions_applied, 0);
  EXPECT_EQ(tier.written_through, 10);
  for (const auto& [hash, tables] : tier.blocks) {
    for (size_t t = 0; t < tables.size(); ++t) {
      EXPECT_EQ(static_cast<int64_t>(tables[t].size()),
                tier.shapes[0].table_bytes[t]);  // hot: the block's bytes
    }
  }
  auto b = *KVCache::Create(config);
  ASSERT_TRUE(b->AttachTier(&tier, {}).ok());
  const SeqId t = *b->AddSequence();
  EXPECT_EQ(*b->MatchPrefix(t, prompt), 40);
  ExpectComputed(*b, t, prompt, 40);  // exact, not int8
  EXPECT_VALID(*a);
  EXPECT_VALID(*b);
  ASSERT_TRUE(b->AttachTier(nullptr, {}).ok());
  ASSERT_TRUE(a->AttachTier(nullptr, {}).ok());
}

// A block goes to the tier once per cache: one written through is not
// written back when evicted, nor is one the cache fetched from the tier.
TEST_P(TierTest, EachBlockIsOfferedOnce) {
  const bool grouped = GetParam();
  const CacheConfig config = Config(grouped, 12 * (grouped ? 1 : 3));
  MapTier tier;
  const std::vector<int32_t> prompt = Prompt(100, 40);  // 10 blocks
  auto a = *KVCache::Create(config);
  ASSERT_TRUE(a->AttachTier(&tier, {.write_through = true}).ok());
  const SeqId s1 = *a->AddSequence();
  Compute(*a, s1, prompt);
  ASSERT_TRUE(a->RemoveSequence(s1).ok());
  EXPECT_EQ(tier.written_through, 10);
  const SeqId other = *a->AddSequence();
  Compute(*a, other, Prompt(5000, 48));  // evicts the prompt's 10
  EXPECT_EQ(a->Stats().prefix_entries, 12);
  EXPECT_EQ(tier.written_through, 22);
  EXPECT_EQ(tier.written_back, 0);
  ASSERT_TRUE(a->RemoveSequence(other).ok());

  // Another cache restores the prompt, then evicts it: nothing goes back.
  auto b = *KVCache::Create(config);
  ASSERT_TRUE(b->AttachTier(&tier, {}).ok());
  const SeqId s2 = *b->AddSequence();
  EXPECT_EQ(*b->MatchPrefix(s2, prompt), 40);
  ASSERT_TRUE(b->RemoveSequence(s2).ok());
  const SeqId fresh = *b->AddSequence();
  Compute(*b, fresh, Prompt(9000, 48));
  EXPECT_EQ(b->Stats().prefix_entries, 12);  // the prompt's were evicted
  EXPECT_EQ(tier.written_back, 0);
  ASSERT_TRUE(b->RemoveSequence(fresh).ok());
  // What this cache computed itself is written back when evicted.
  const SeqId again = *b->AddSequence();
  Compute(*b, again, Prompt(100, 48));
  EXPECT_EQ(tier.written_back, 12);
  EXPECT_VALID(*b);
  ASSERT_TRUE(b->AttachTier(nullptr, {}).ok());
  ASSERT_TRUE(a->AttachTier(nullptr, {}).ok());
}

// A block the tier dropped (a full queue) is offered again when evicted;
// one another tier took is offered to a tier attached after it.
TEST_P(TierTest, ABlockNotTakenIsOfferedAgain) {
  const bool grouped = GetParam();
  const CacheConfig config = Config(grouped, 12 * (grouped ? 1 : 3));
  MapTier dropping;
  dropping.drop_stores = true;
  auto cache = *KVCache::Create(config);
  ASSERT_TRUE(cache->AttachTier(&dropping, {.write_through = true}).ok());
  const SeqId s1 = *cache->AddSequence();
  Compute(*cache, s1, Prompt(100, 40));  // 10 blocks, all dropped
  ASSERT_TRUE(cache->RemoveSequence(s1).ok());
  EXPECT_EQ(dropping.dropped, 10);
  dropping.drop_stores = false;
  const SeqId s2 = *cache->AddSequence();
  Compute(*cache, s2, Prompt(5000, 48));  // evicts the 10: written back
  ASSERT_TRUE(cache->RemoveSequence(s2).ok());
  EXPECT_EQ(dropping.written_back, 10);
  EXPECT_EQ(dropping.written_through, 12);  // the second prompt's
  // Another tier: the 12 blocks held, taken by the first, go to it too
  // when evicted.
  MapTier other;
  ASSERT_TRUE(cache->AttachTier(&other, {}).ok());
  const SeqId s3 = *cache->AddSequence();
  Compute(*cache, s3, Prompt(9000, 48));
  EXPECT_EQ(other.written_back, 12);
  EXPECT_VALID(*cache);
  ASSERT_TRUE(cache->AttachTier(nullptr, {}).ok());
}

// In engine mode a reservation's blocks are published at once, but their
// bytes are the kernel's to write: write_through offers them only once
// every table has moved past them (the sequence's next reservation), so
// that what the tier holds is what the kernel wrote.
TEST_P(TierTest, WriteThroughWaitsForTheKernel) {
  const bool grouped = GetParam();
  const CacheConfig config = Config(grouped, 64);
  MapTier tier;
  auto cache = *KVCache::Create(config);
  ASSERT_TRUE(cache->AttachTier(&tier, {.write_through = true}).ok());
  const std::vector<int32_t> prompt = Prompt(1, 32);  // 8 full blocks
  const SeqId s = *cache->AddSequence();
  ASSERT_TRUE(cache->AppendTokens(s, prompt).ok());
  // Per layer its slots (one reservation for the group: the same slots).
  auto reserve = [&](int64_t seq_len, int64_t n) {
    std::vector<std::vector<int64_t>> slots(
        3, std::vector<int64_t>(static_cast<size_t>(n)));
    for (int layer = 0; layer < 3; ++layer) {
      if (grouped && layer > 0) {
        slots[static_cast<size_t>(layer)] = slots[0];
        continue;
      }
      EXPECT_TRUE(
          cache
              ->Reserve(s, layer, seq_len, n,
                        absl::MakeSpan(slots[static_cast<size_t>(layer)]))
              .ok());
    }
    return slots;
  };
  const std::vector<std::vector<int64_t>> slots = reserve(32, 32);
  EXPECT_EQ(tier.written_through, 0);  // published, not written yet
  // The kernel writes each layer's keys and values at its slots.
  const int64_t token_bytes = kElems * 4;
  for (int layer = 0; layer < 3; ++layer) {
    auto* base = static_cast<std::byte*>(*cache->LayerBase(layer));
    const std::vector<float> k = testing::Tokens(
        0, 32,
        {.elems = kElems, .offset = static_cast<float>(1 + layer * 1000)});
    const std::vector<float> v = testing::Tokens(
        0, 32,
        {.elems = kElems, .offset = static_cast<float>(1 - layer * 1000)});
    const std::vector<int64_t>& mine = slots[static_cast<size_t>(layer)];
    for (size_t i = 0; i < mine.size(); ++i) {
      std::byte* block = base + mine[i] / kBlock * BlockBytes(config);
      const int64_t at = mine[i] % kBlock * token_bytes;
      std::memcpy(block + at, k.data() + i * kElems, token_bytes);
      std::memcpy(block + BlockBytes(config) / 2 + at, v.data() + i * kElems,
                  token_bytes);
    }
  }
  ASSERT_TRUE(cache->AppendTokens(s, std::vector<int32_t>{77}).ok());
  reserve(33, 1);  // the next step: the first 32 positions are written
  EXPECT_EQ(tier.written_through, 8);
  auto other = *KVCache::Create(config);
  ASSERT_TRUE(other->AttachTier(&tier, {}).ok());
  const SeqId t = *other->AddSequence();
  EXPECT_EQ(*other->MatchPrefix(t, prompt), 32);
  ExpectComputed(*other, t, prompt, 32);
  EXPECT_VALID(*cache);
  EXPECT_VALID(*other);
}

// What a tier gets wrong is a miss: a block of the wrong size, a count
// beyond what it returned; a chain with a hole stops at the hole; a pool
// that cannot take a block stops there. Nothing leaks.
TEST_P(TierTest, AWrongTierIsAMiss) {
  const bool grouped = GetParam();
  const int64_t tables = grouped ? 1 : 3;
  const CacheConfig config = Config(grouped, 64);
  MapTier tier;
  {
    auto source = *KVCache::Create(config);
    ASSERT_TRUE(source->AttachTier(&tier, {.write_through = true}).ok());
    const SeqId s = *source->AddSequence();
    Compute(*source, s, Prompt(1, 40));
  }
  ASSERT_EQ(tier.blocks.size(), 10u);
  const std::vector<int32_t> prompt = Prompt(1, 40);
  auto cache = *KVCache::Create(config);
  ASSERT_TRUE(cache->AttachTier(&tier, {}).ok());
  tier.truncate = true;
  SeqId s = *cache->AddSequence();
  EXPECT_EQ(*cache->MatchPrefix(s, prompt), 0);
  EXPECT_EQ(cache->Stats().blocks_used, 0);
  EXPECT_EQ(cache->Stats().prefix_entries, 0);
  EXPECT_VALID(*cache);
  tier.truncate = false;
  tier.overstate = true;  // says 100 more than it gave
  ASSERT_TRUE(cache->RemoveSequence(s).ok());
  s = *cache->AddSequence();
  EXPECT_EQ(*cache->MatchPrefix(s, prompt), 40);
  ExpectComputed(*cache, s, prompt, 40);
  tier.overstate = false;
  EXPECT_VALID(*cache);
  // A hole in the chain: block 4 gone.
  auto fresh = *KVCache::Create(config);
  ASSERT_TRUE(fresh->AttachTier(&tier, {}).ok());
  uint64_t h = 0;  // the fifth block's chain hash (kvpage/prefix.h)
  for (int b = 0; b < 5; ++b) {
    h = PrefixBlockHash(h, 0, absl::MakeConstSpan(prompt).subspan(4 * b, 4));
  }
  ASSERT_EQ(tier.blocks.erase(h), 1u);
  const SeqId s2 = *fresh->AddSequence();
  EXPECT_EQ(*fresh->MatchPrefix(s2, prompt), 16);
  ExpectComputed(*fresh, s2, prompt, 16);
  EXPECT_VALID(*fresh);
  // A pool that holds 2 blocks a table: the match stops there.
  auto small = *KVCache::Create(Config(grouped, 2 * tables));
  ASSERT_TRUE(small->AttachTier(&tier, {}).ok());
  const SeqId s3 = *small->AddSequence();
  EXPECT_EQ(*small->MatchPrefix(s3, prompt), 8);
  ExpectComputed(*small, s3, prompt, 8);
  EXPECT_VALID(*small);
}

TEST_P(TierTest, AttachRefusals) {
  auto cache = *KVCache::Create(Config(GetParam(), 16));
  MapTier tier;
  absl::Status s = cache->AttachTier(&tier, {.fetch_batch = 0});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("fetch_batch"));
  tier.refuse = true;
  s = cache->AttachTier(&tier, {});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  // Not attached: a match asks nothing.
  const SeqId seq = *cache->AddSequence();
  EXPECT_EQ(*cache->MatchPrefix(seq, Prompt(1, 8)), 0);
  EXPECT_EQ(tier.fetches, 0);
}

INSTANTIATE_TEST_SUITE_P(Tables, TierTest, ::testing::Bool(),
                         [](const auto& info) {
                           return info.param ? "Grouped" : "PerLayer";
                         });

}  // namespace
}  // namespace kvpage
