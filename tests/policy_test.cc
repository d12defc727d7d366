// The overflow policies, case by case: what stays visible, which blocks are
// freed or reused, what is refused. The randomized differential test covers
// the same rules over thousands of random operations.
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvpage/kvpage.h"
#include "tests/cache_fingerprint.h"
#include "tests/test_util.h"

namespace kvpage {
namespace {

using kvpage::testing::CacheFingerprint;
using kvpage::testing::Fingerprint;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr int kElems = 4;  // 1 kv-head of 4 dims

// Token t: element e is t + e / 8 (exact in f32, the dtype of these tests).
std::vector<float> Tokens(int64_t first, int64_t count) {
  return testing::Tokens(first, count, {.elems = kElems});
}

// One layer of blocks of 4 tokens under `policy` (its `layer` unused).
CacheConfig Config(const LayerPolicy& policy) {
  return {.num_layers = 1,
          .num_kv_heads = 1,
          .head_dim = kElems,
          .dtype = DType::kF32,
          .block_tokens = 4,
          .num_blocks = 64,
          .max_seq_len = policy.max_seq_len,
          .overflow = policy.overflow,
          .sink_tokens = policy.sink_tokens,
          .truncate_to = policy.truncate_to};
}

// Appends positions [first, first + count) to `layer`.
absl::Status Append(KVCache& cache, SeqId seq, int64_t first, int64_t count,
                    int layer = 0) {
  const std::vector<float> data = Tokens(first, count);
  const TokenSpan span{.data = data.data(), .tokens = count};
  return cache.Update(seq, layer, span, span, first + count);
}

std::vector<int64_t> Range(int64_t from, int64_t to) {
  std::vector<int64_t> out;
  for (int64_t p = from; p < to; ++p) out.push_back(p);
  return out;
}

std::vector<int64_t> Concat(std::vector<int64_t> a,
                            const std::vector<int64_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Gathered data must be exactly the tokens at the gathered positions.
void ExpectVisible(const KVCache& cache, SeqId seq,
                   const std::vector<int64_t>& positions, int layer = 0) {
  const GatheredLayer g = *cache.Gather(seq, layer);
  ASSERT_THAT(g.positions, ElementsAreArray(positions));
  for (size_t i = 0; i < positions.size(); ++i) {
    const std::vector<float> want = Tokens(positions[i], 1);
    for (int e = 0; e < kElems; ++e) {
      ASSERT_EQ(g.k[i * kElems + e], want[e]) << "position " << positions[i];
      ASSERT_EQ(g.v[i * kElems + e], want[e]) << "position " << positions[i];
    }
  }
}

// The original report's case: a window of 10, one update of 15 tokens.
TEST(PolicyTest, FifteenTokensIntoAWindowOfTen) {
  for (OverflowPolicy policy :
       {OverflowPolicy::kSlidingWindow, OverflowPolicy::kCircularBuffer}) {
    auto cache =
        *KVCache::Create(Config({.overflow = policy, .max_seq_len = 10}));
    const SeqId seq = *cache->AddSequence();
    ASSERT_TRUE(Append(*cache, seq, 0, 15).ok());
    EXPECT_EQ(*cache->Length(seq, 0), 15);
    ExpectVisible(*cache, seq, Range(5, 15));
    const CacheStats s = cache->Stats();
    EXPECT_EQ(s.tokens_stored, 10);
    EXPECT_EQ(s.evictions, 5);
    // Only the 10 tokens that stay visible were written.
    EXPECT_EQ(s.bytes_written, 10 * 2 * kElems * 4);
    // Positions 5..14 span blocks 1, 2 and 3 (4 slots each); block 0 was
    // never taken.
    EXPECT_EQ(s.blocks_used, 3);
    EXPECT_EQ(s.bytes_copied, 0);
    EXPECT_VALID(cache);
  }
}

TEST(PolicyTest, SlidingWindowKeepsSinksAndTheRecentTokensAndFreesBlocks) {
  auto cache =
      *KVCache::Create(Config({.overflow = OverflowPolicy::kSlidingWindow,
                               .max_seq_len = 14,
                               .sink_tokens = 3}));
  const SeqId seq = *cache->AddSequence();
  for (int64_t t = 0; t < 1000; ++t) {
    ASSERT_TRUE(Append(*cache, seq, t, 1).ok()) << t;
    if (t % 97 == 0) {
      ASSERT_VALID(cache);
    }
  }
  ExpectVisible(*cache, seq, Concat(Range(0, 3), Range(989, 1000)));
  const CacheStats s = cache->Stats();
  EXPECT_EQ(s.bytes_copied, 0);
  EXPECT_EQ(s.evictions, 1000 - 14);
  EXPECT_EQ(s.bytes_written, 1000 * 2 * kElems * 4);
  // Block 0 holds the sinks (slot 3 masked); the window [989, 1000) spans
  // blocks 247..249.
  EXPECT_EQ(s.blocks_used, 4);
  EXPECT_GT(s.blocks_released_by_policy, 240);
  EXPECT_EQ(s.blocks_allocated - s.blocks_released, 4);
  const LayerView view = *cache->View(seq, 0);
  ASSERT_EQ(view.blocks.size(), 4u);
  EXPECT_EQ(view.blocks[0].tokens, 3);  // sinks, the evicted slot masked
  EXPECT_EQ(view.blocks[1].first_position, 989);
  EXPECT_EQ(view.blocks[1].begin_slot, 1);  // 988 evicted, its block stays
  EXPECT_EQ(view.tokens(), 14);
  const SequenceStats ss = *cache->Stats(seq);
  EXPECT_EQ(ss.current_length, 1000);
  EXPECT_EQ(ss.tokens_stored, 14);
  EXPECT_EQ(ss.evictions, 986);
}

TEST(PolicyTest, SinksAndWindowCanShareABlock) {
  // Sinks [0, 2) and window start 3: block 0 holds both, with slot 2 masked.
  auto cache =
      *KVCache::Create(Config({.overflow = OverflowPolicy::kSlidingWindow,
                               .max_seq_len = 7,
                               .sink_tokens = 2}));
  const SeqId seq = *cache->AddSequence();
  ASSERT_TRUE(Append(*cache, seq, 0, 8).ok());
  ExpectVisible(*cache, seq, Concat(Range(0, 2), Range(3, 8)));
  const LayerView view = *cache->View(seq, 0);
  ASSERT_EQ(view.blocks.size(), 3u);
  EXPECT_EQ(view.blocks[0].block_id, view.blocks[1].block_id);
  EXPECT_EQ(view.blocks[1].begin_slot, 3);
  EXPECT_EQ(cache->Stats().blocks_used, 2);
  EXPECT_VALID(cache);
}

TEST(PolicyTest, CircularBufferNeitherAllocatesNorFreesAfterWarmUp) {
  auto cache =
      *KVCache::Create(Config({.overflow = OverflowPolicy::kCircularBuffer,
                               .max_seq_len = 14,
                               .sink_tokens = 3}));
  const SeqId seq = *cache->AddSequence();
  for (int64_t t = 0; t < 40; ++t) ASSERT_TRUE(Append(*cache, seq, t, 1).ok());
  const CacheStats warm = cache->Stats();
  std::set<uint32_t> ids;
  for (int64_t t = 40; t < 1000; ++t) {
    ASSERT_TRUE(Append(*cache, seq, t, 1).ok()) << t;
    const LayerView view = *cache->View(seq, 0);
    for (const BlockView& b : view.blocks) ids.insert(b.block_id);
  }
  const CacheStats s = cache->Stats();
  EXPECT_EQ(s.blocks_allocated, warm.blocks_allocated);
  EXPECT_EQ(s.blocks_released, warm.blocks_released);
  EXPECT_EQ(s.blocks_released_by_policy, 0);
  EXPECT_EQ(s.blocks_used, warm.blocks_used);
  // The ring: one sink block and ceil((14 - 3 - 1) / 4) + 1 = 4 window
  // blocks, reused in turn.
  EXPECT_EQ(ids.size(), 5u);
  EXPECT_EQ(s.blocks_used, 5);
  EXPECT_GT(s.blocks_reused_by_ring, (1000 - 40) / 4 - 2);
  EXPECT_EQ(s.bytes_copied, 0);
  ExpectVisible(*cache, seq, Concat(Range(0, 3), Range(989, 1000)));
  EXPECT_VALID(cache);
  // Removing the sequence gives the whole ring back.
  ASSERT_TRUE(cache->RemoveSequence(seq).ok());
  EXPECT_EQ(cache->Stats().blocks_used, 0);
}

TEST(PolicyTest, ContextShiftDropsOldTokensInOneStep) {
  // max_seq_len 16, sinks 2, truncate_to 0 -> 8.
  auto cache = *KVCache::Create(Config({.overflow = OverflowPolicy::kTruncate,
                                        .max_seq_len = 16,
                                        .sink_tokens = 2}));
  const SeqId seq = *cache->AddSequence();
  ASSERT_TRUE(Append(*cache, seq, 0, 16).ok());
  ExpectVisible(*cache, seq, Range(0, 16));
  ASSERT_TRUE(Append(*cache, seq, 16, 1).ok());
  // 8 visible: the sinks and the 6 newest, positions kept absolute.
  ExpectVisible(*cache, seq, Concat(Range(0, 2), Range(11, 17)));
  EXPECT_EQ(cache->Stats().evictions, 9);
  // It grows again up to 16 visible, then shifts again.
  ASSERT_TRUE(Append(*cache, seq, 17, 8).ok());
  ExpectVisible(*cache, seq, Concat(Range(0, 2), Range(11, 25)));
  ASSERT_TRUE(Append(*cache, seq, 25, 1).ok());
  ExpectVisible(*cache, seq, Concat(Range(0, 2), Range(20, 26)));
  EXPECT_EQ(cache->Stats().bytes_copied, 0);
  EXPECT_GT(cache->Stats().blocks_released_by_policy, 0);
  EXPECT_VALID(cache);
}

TEST(PolicyTest, ContextShiftWithExplicitTruncateTo) {
  auto cache = *KVCache::Create(Config({.overflow = OverflowPolicy::kTruncate,
                                        .max_seq_len = 10,
                                        .sink_tokens = 1,
                                        .truncate_to = 4}));
  const SeqId seq = *cache->AddSequence();
  ASSERT_TRUE(Append(*cache, seq, 0, 12).ok());  // one update past the limit
  ExpectVisible(*cache, seq, Concat(Range(0, 1), Range(9, 12)));
  EXPECT_EQ(cache->Stats().bytes_written, 4 * 2 * kElems * 4);
}

TEST(PolicyTest, EvictedPositionsCannotBeWrittenOrRolledBackInto) {
  auto cache =
      *KVCache::Create(Config({.overflow = OverflowPolicy::kSlidingWindow,
                               .max_seq_len = 8,
                               .sink_tokens = 2}));
  const SeqId seq = *cache->AddSequence();
  ASSERT_TRUE(Append(*cache, seq, 0, 20).ok());  // visible: 0, 1, 14..19

  // Overwriting 10..19 reaches evicted 10..13.
  const std::vector<float> ten = Tokens(10, 10);
  const TokenSpan span{.data = ten.data(), .tokens = 10};
  const CacheFingerprint before = Fingerprint(*cache);
  absl::Status s = cache->Update(seq, 0, span, span, 20);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
  EXPECT_THAT(s.message(), HasSubstr("seq 1, layer 0, seq_len 20"));
  EXPECT_THAT(s.message(), HasSubstr("positions [2, 14) were evicted"));
  EXPECT_THAT(s.message(), HasSubstr("sliding_window"));
  EXPECT_UNCHANGED(*cache, before);
  // Rolling back to 12 would leave evicted position 11 as the newest.
  s = cache->Update(seq, 0, {}, {}, 12);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
  EXPECT_UNCHANGED(*cache, before);
  s = cache->Truncate(seq, 14);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
  EXPECT_THAT(s.message(), HasSubstr("Truncate(seq 1, layer 0, seq_len 14)"));
  EXPECT_UNCHANGED(*cache, before);

  // Rolling back within the window is fine: 15 keeps position 14.
  ASSERT_TRUE(cache->Truncate(seq, 15).ok());
  ExpectVisible(*cache, seq, Concat(Range(0, 2), Range(14, 15)));
  // Overwriting visible window positions is fine.
  ASSERT_TRUE(Append(*cache, seq, 14, 3).ok());
  ExpectVisible(*cache, seq, Concat(Range(0, 2), Range(14, 17)));
  // Rolling back into the sinks leaves nothing evicted: the layer grows
  // again from there.
  ASSERT_TRUE(cache->Truncate(seq, 1).ok());
  ExpectVisible(*cache, seq, Range(0, 1));
  ASSERT_TRUE(Append(*cache, seq, 1, 5).ok());
  ExpectVisible(*cache, seq, Range(0, 6));
  EXPECT_VALID(cache);
}

TEST(PolicyTest, PerLayerPoliciesShareOnePool) {
  CacheConfig c = Config({.overflow = OverflowPolicy::kSlidingWindow,
                          .max_seq_len = 8,
                          .sink_tokens = 1});
  c.num_layers = 3;
  c.layer_policies = {
      {.layer = 1, .overflow = OverflowPolicy::kError, .max_seq_len = 64},
      {.layer = 2,
       .overflow = OverflowPolicy::kCircularBuffer,
       .max_seq_len = 5,
       .sink_tokens = 0}};
  auto cache = *KVCache::Create(c);
  const SeqId seq = *cache->AddSequence();
  for (int layer = 0; layer < 3; ++layer) {
    ASSERT_TRUE(Append(*cache, seq, 0, 30, layer).ok()) << layer;
  }
  ExpectVisible(*cache, seq, Concat(Range(0, 1), Range(23, 30)), 0);
  ExpectVisible(*cache, seq, Range(0, 30), 1);
  ExpectVisible(*cache, seq, Range(25, 30), 2);
  const CacheStats s = cache->Stats();
  EXPECT_EQ(s.tokens_stored, 8 + 30 + 5);
  // Layer 0: block 0 and blocks 5..7; layer 1: 8 blocks; layer 2: 6..7.
  EXPECT_EQ(s.blocks_used, 4 + 8 + 2);
  // The error-policy layer still refuses to pass its own limit.
  const CacheFingerprint before = Fingerprint(*cache);
  EXPECT_EQ(Append(*cache, seq, 30, 40, 1).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_UNCHANGED(*cache, before);
  EXPECT_TRUE(Append(*cache, seq, 30, 40, 0).ok());
  EXPECT_VALID(cache);
}

TEST(PolicyTest, SinksAreNeverEvictedByAnyPolicy) {
  for (OverflowPolicy policy :
       {OverflowPolicy::kSlidingWindow, OverflowPolicy::kCircularBuffer,
        OverflowPolicy::kTruncate}) {
    auto cache = *KVCache::Create(Config({.overflow = policy,
                                          .max_seq_len = 9,
                                          .sink_tokens = 5,
                                          .truncate_to = 7}));
    const SeqId seq = *cache->AddSequence();
    for (int64_t t = 0; t < 300; t += 3) {
      ASSERT_TRUE(Append(*cache, seq, t, 3).ok()) << OverflowPolicyName(policy);
      const GatheredLayer g = *cache->Gather(seq, 0);
      const size_t sinks = std::min<size_t>(5, t + 3);
      ASSERT_GE(g.positions.size(), sinks);
      ASSERT_THAT(std::vector<int64_t>(g.positions.begin(),
                                       g.positions.begin() + sinks),
                  ElementsAreArray(Range(0, sinks)));
      ASSERT_LE(g.positions.size(), 9u);
    }
    EXPECT_EQ(cache->Stats().bytes_copied, 0);
  }
}

}  // namespace
}  // namespace kvpage
