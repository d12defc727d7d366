// Sharing: forks with copy-on-write, the prefix-cache block hash, prefix
// matches and the eviction of cached blocks.
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <functional>
#include <numeric>
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
using ::testing::HasSubstr;

constexpr int kElems = 4;  // 1 kv-head of 4 dims
constexpr int kBt = 4;     // block_tokens

// The hash of kvpage/prefix.h, against values computed by xxhsum -H3 over
// the documented bytes (written out by hand, independently of kvpage).
TEST(PrefixHashTest, KnownValues) {
  std::vector<int32_t> one_to_32(32);
  std::iota(one_to_32.begin(), one_to_32.end(), 1);
  const absl::Span<const int32_t> ids(one_to_32);
  const uint64_t h0 = PrefixBlockHash(0, 0, ids.subspan(0, 16));
  EXPECT_EQ(h0, 0xa53ea810e69adcedull);
  EXPECT_EQ(PrefixBlockHash(h0, 0, ids.subspan(16, 16)), 0xacc0109a8f0165a4ull);
  EXPECT_EQ(PrefixBlockHash(0, 42, ids.subspan(0, 16)), 0x2f2907c3e36cd564ull);
  const int32_t extremes[] = {-1, 0, INT32_MAX, INT32_MIN};
  EXPECT_EQ(PrefixBlockHash(0, 0, extremes), 0xfd0a72b744ecf7f6ull);
}

// Blocks longer than 64 tokens take the streaming path: the same hash of the
// same bytes (xxhsum -H3 of files written by Python's struct.pack('<QQ', ...)
// and '<i' per id).
TEST(PrefixHashTest, KnownValuesOfLongBlocks) {
  std::vector<int32_t> ids(512);
  for (int32_t i = 0; i < 512; ++i) ids[i] = (i * 7919) % 100003 - 50000;
  EXPECT_EQ(PrefixBlockHash(0, 7, ids), 0x74089e4cdd1ba60bull);
  std::vector<int32_t> ramp(65);
  std::iota(ramp.begin(), ramp.end(), 0);
  EXPECT_EQ(PrefixBlockHash(0x0123456789abcdefull, 0, ramp),
            0x4fbb0ce888491667ull);
}

CacheConfig Config(int64_t blocks = 64) {
  return {.num_layers = 2,
          .num_kv_heads = 1,
          .head_dim = kElems,
          .dtype = DType::kF32,
          .block_tokens = kBt,
          .num_blocks = blocks,
          .max_seq_len = 256};
}

// Token t of "family" f: element e is 1000 f + t + e / 8.
std::vector<float> Tokens(int64_t first, int64_t count, int family = 0) {
  return testing::Tokens(first, count,
                         {.elems = kElems, .offset = 1000.0f * family});
}

absl::Status Put(KVCache& cache, SeqId seq, int64_t first, int64_t count,
                 int family = 0) {
  const std::vector<float> data = Tokens(first, count, family);
  const TokenSpan span{.data = data.data(), .tokens = count};
  for (int layer = 0; layer < cache.config().num_layers; ++layer) {
    if (absl::Status s = cache.Update(seq, layer, span, span, first + count);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

// Layer `layer` of `seq` holds exactly `want` (family-tagged tokens).
void ExpectTokens(const KVCache& cache, SeqId seq,
                  const std::vector<float>& want, int layer = 0) {
  const GatheredLayer g = *cache.Gather(seq, layer);
  EXPECT_EQ(g.k, want);
  EXPECT_EQ(g.v, want);
}

std::vector<float> Concat(std::vector<float> a, const std::vector<float>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(ForkTest, SharesEveryBlockAndCopiesOnWrite) {
  auto cache = *KVCache::Create(Config());
  const SeqId parent = *cache->AddSequence();
  ASSERT_TRUE(Put(*cache, parent, 0, 10).ok());  // blocks 0, 1 full; 2 partial
  const int64_t used = cache->Stats().blocks_used;
  const SeqId child = *cache->Fork(parent);
  EXPECT_EQ(cache->Stats().blocks_used, used);  // no block moved or taken
  EXPECT_EQ(cache->Stats().bytes_copied, 0);
  EXPECT_EQ(cache->Stats().tokens_stored, 2 * 2 * 10);
  ExpectTokens(*cache, child, Tokens(0, 10));
  ASSERT_VALID(cache);

  // An append into the shared, partly filled last block copies it first.
  ASSERT_TRUE(Put(*cache, child, 10, 1, 1).ok());
  EXPECT_EQ(cache->Stats().bytes_copied, 2 * cache->Stats().block_bytes);
  EXPECT_EQ(cache->Stats().blocks_used, used + 2);
  ExpectTokens(*cache, parent, Tokens(0, 10));
  ExpectTokens(*cache, child, Concat(Tokens(0, 10), Tokens(10, 1, 1)));
  // The parent's own append no longer needs a copy: the block is its own.
  ASSERT_TRUE(Put(*cache, parent, 10, 1, 2).ok());
  EXPECT_EQ(cache->Stats().bytes_copied, 2 * cache->Stats().block_bytes);
  ExpectTokens(*cache, child, Concat(Tokens(0, 10), Tokens(10, 1, 1)));
  ExpectTokens(*cache, parent, Concat(Tokens(0, 10), Tokens(10, 1, 2)));

  // An overwrite of a shared full block copies it; siblings keep theirs.
  const SeqId sibling = *cache->Fork(parent);
  ASSERT_TRUE(Put(*cache, sibling, 1, 10, 3).ok());
  ExpectTokens(*cache, parent, Concat(Tokens(0, 10), Tokens(10, 1, 2)));
  ExpectTokens(*cache, child, Concat(Tokens(0, 10), Tokens(10, 1, 1)));
  ExpectTokens(*cache, sibling, Concat(Tokens(0, 1), Tokens(1, 10, 3)));
  ASSERT_VALID(cache);

  // A shared block is freed by its last holder only.
  ASSERT_TRUE(cache->RemoveSequence(parent).ok());
  ExpectTokens(*cache, child, Concat(Tokens(0, 10), Tokens(10, 1, 1)));
  ASSERT_TRUE(cache->RemoveSequence(child).ok());
  ASSERT_TRUE(cache->RemoveSequence(sibling).ok());
  EXPECT_EQ(cache->Stats().blocks_used, 0);
  const CacheFingerprint before = Fingerprint(*cache);
  EXPECT_EQ(cache->Fork(parent).status().code(), absl::StatusCode::kNotFound);
  EXPECT_UNCHANGED(*cache, before);
  ASSERT_VALID(cache);
}

TEST(ForkTest, WindowsAndRingsRespectSharing) {
  for (OverflowPolicy policy :
       {OverflowPolicy::kSlidingWindow, OverflowPolicy::kCircularBuffer,
        OverflowPolicy::kTruncate}) {
    CacheConfig c = Config();
    c.overflow = policy;
    c.max_seq_len = 12;
    c.sink_tokens = 2;
    auto cache = *KVCache::Create(c);
    const SeqId parent = *cache->AddSequence();
    ASSERT_TRUE(Put(*cache, parent, 0, 12).ok());
    const SeqId child = *cache->Fork(parent);
    // The child runs far past the window: it must never write into or free
    // a block the parent still reads.
    for (int64_t t = 12; t < 80; ++t)
      ASSERT_TRUE(Put(*cache, child, t, 1, 1).ok());
    ExpectTokens(*cache, parent, Tokens(0, 12));
    ASSERT_VALID(cache);
    ASSERT_TRUE(cache->RemoveSequence(parent).ok());
    ASSERT_TRUE(cache->RemoveSequence(child).ok());
    EXPECT_EQ(cache->Stats().blocks_used, 0) << OverflowPolicyName(policy);
  }
}

TEST(ForkTest, CompressionLeavesSharedBlocksHotAndDecompressesOnWrite) {
  CacheConfig c = Config();
  c.compression = {
      .enabled = true, .group_size = 4, .hot_tokens = 0, .quant_cells = 32};
  auto cache = *KVCache::Create(c);
  const SeqId parent = *cache->AddSequence();
  ASSERT_TRUE(Put(*cache, parent, 0, 16).ok());
  const SeqId child = *cache->Fork(parent);
  ASSERT_TRUE(cache->CompressOldEntries(child, 0, 0.0).ok());
  EXPECT_EQ(cache->Stats().compressions_applied, 0);  // all shared: stay hot
  ASSERT_TRUE(cache->RemoveSequence(child).ok());
  ASSERT_TRUE(cache->CompressOldEntries(parent, 0, 0.0).ok());
  EXPECT_EQ(cache->Stats().compressions_applied, 4);
  // A fork shares compressed blocks too; a write into one gives the writer a
  // hot copy and leaves the other holder's compressed block alone.
  const SeqId second = *cache->Fork(parent);
  const GatheredLayer before = *cache->Gather(parent, 0);
  ASSERT_TRUE(Put(*cache, second, 5, 1, 7).ok());
  EXPECT_EQ(cache->Stats().decompressions, 1);
  EXPECT_EQ(cache->Gather(parent, 0)->k, before.k);
  EXPECT_EQ(cache->Gather(second, 0)->k[5 * kElems], 7000 + 5.0f);
  EXPECT_EQ(cache->Stats().quant_blocks_int8, 4);
  ASSERT_VALID(cache);
}

std::vector<int32_t> Ids(int64_t count, int family) {
  std::vector<int32_t> ids(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) ids[i] = 100000 * family + i;
  return ids;
}

// A sequence of `tokens` tokens of `family`, with their token ids told.
SeqId Written(KVCache& cache, int64_t tokens, int family,
              SequenceOptions options = {}) {
  const SeqId seq = *cache.AddSequence(options);
  EXPECT_TRUE(cache.AppendTokens(seq, Ids(tokens, family)).ok());
  EXPECT_TRUE(Put(cache, seq, 0, tokens, family).ok());
  return seq;
}

TEST(PrefixCacheTest, ReleasedBlocksStayCachedAndAreMatched) {
  auto cache = *KVCache::Create(Config());
  const SeqId a = Written(*cache, 18, 1);  // 4 full blocks + 2 tokens
  EXPECT_EQ(cache->Stats().prefix_entries, 4);
  ASSERT_TRUE(cache->RemoveSequence(a).ok());
  CacheStats s = cache->Stats();
  EXPECT_EQ(s.blocks_used, 0);
  EXPECT_EQ(s.blocks_cached, 2 * 4);  // the partial block went back
  EXPECT_EQ(s.blocks_free, 64 - 8);
  ASSERT_VALID(cache);

  // The same 16 first ids, then others: 4 blocks match, the 5th misses.
  std::vector<int32_t> ids = Ids(16, 1);
  const std::vector<int32_t> more = Ids(8, 2);
  ids.insert(ids.end(), more.begin(), more.end());
  const SeqId b = *cache->AddSequence();
  EXPECT_EQ(*cache->MatchPrefix(b, ids), 16);
  s = cache->Stats();
  EXPECT_EQ(s.hits, 4);
  EXPECT_EQ(s.misses, 1);
  EXPECT_EQ(s.blocks_cached, 0);  // matched again: off the eviction list
  EXPECT_EQ(s.blocks_used, 8);
  EXPECT_EQ(*cache->Length(b, 1), 16);
  ExpectTokens(*cache, b, Tokens(0, 16, 1), 1);
  ASSERT_VALID(cache);
  // The engine computes the rest from position 16 on.
  ASSERT_TRUE(cache->AppendTokens(b, more).ok());
  ASSERT_TRUE(Put(*cache, b, 16, 8, 2).ok());
  ExpectTokens(*cache, b, Concat(Tokens(0, 16, 1), Tokens(16, 8, 2)));
  EXPECT_EQ(cache->Stats().prefix_entries, 6);
  ASSERT_VALID(cache);
}

TEST(PrefixCacheTest, LiveSequencesShareTheirPrefix) {
  auto cache = *KVCache::Create(Config());
  const SeqId a = Written(*cache, 12, 1);
  const SeqId b = *cache->AddSequence();
  EXPECT_EQ(*cache->MatchPrefix(b, Ids(12, 1)), 12);
  EXPECT_EQ(cache->Stats().blocks_used, 2 * 3);  // shared, not copied
  // b writes on from 12; a's blocks are untouched, both read the prefix.
  ASSERT_TRUE(Put(*cache, b, 12, 3, 5).ok());
  ExpectTokens(*cache, a, Tokens(0, 12, 1));
  ExpectTokens(*cache, b, Concat(Tokens(0, 12, 1), Tokens(12, 3, 5)));
  // An overwrite inside the shared prefix copies the block for b alone.
  ASSERT_TRUE(Put(*cache, b, 2, 13, 6).ok());
  ExpectTokens(*cache, a, Tokens(0, 12, 1));
  EXPECT_GT(cache->Stats().bytes_copied, 0);
  ASSERT_VALID(cache);
}

TEST(PrefixCacheTest, SaltsSeparateTenants) {
  auto cache = *KVCache::Create(Config());
  ASSERT_TRUE(cache->RemoveSequence(Written(*cache, 8, 1, {.salt = 7})).ok());
  const SeqId other = *cache->AddSequence({.salt = 8});
  EXPECT_EQ(*cache->MatchPrefix(other, Ids(8, 1)), 0);
  const SeqId same = *cache->AddSequence({.salt = 7});
  EXPECT_EQ(*cache->MatchPrefix(same, Ids(8, 1)), 8);
}

TEST(PrefixCacheTest, AllocationsEvictLeastRecentlyUsedFirst) {
  auto cache = *KVCache::Create(Config(24));
  // Three released prefixes of 2 blocks x 2 layers each: 12 cached blocks.
  for (int family : {1, 2, 3}) {
    ASSERT_TRUE(cache->RemoveSequence(Written(*cache, 8, family)).ok());
  }
  EXPECT_EQ(cache->Stats().blocks_cached, 12);
  EXPECT_EQ(cache->Stats().blocks_free, 12);
  // Free blocks go first: 12 blocks of new tokens evict nothing.
  const SeqId big = *cache->AddSequence();
  ASSERT_TRUE(Put(*cache, big, 0, 24, 9).ok());
  EXPECT_EQ(cache->Stats().blocks_cached, 12);
  // 4 more blocks: family 1, the least recently used, goes.
  ASSERT_TRUE(Put(*cache, big, 24, 8, 9).ok());
  EXPECT_EQ(cache->Stats().blocks_cached, 8);
  const SeqId probe1 = *cache->AddSequence();
  EXPECT_EQ(*cache->MatchPrefix(probe1, Ids(8, 1)), 0);
  ASSERT_TRUE(cache->RemoveSequence(probe1).ok());
  // Matching family 2 takes it off the list; the next eviction takes 3.
  const SeqId probe2 = *cache->AddSequence();
  EXPECT_EQ(*cache->MatchPrefix(probe2, Ids(8, 2)), 8);
  ASSERT_TRUE(Put(*cache, big, 32, 8, 9).ok());
  const SeqId probe3 = *cache->AddSequence();
  EXPECT_EQ(*cache->MatchPrefix(probe3, Ids(8, 3)), 0);
  ASSERT_VALID(cache);
  // Nothing left to evict: refused, and nothing changed.
  const CacheFingerprint before = Fingerprint(*cache);
  const absl::Status s = Put(*cache, big, 40, 8, 9);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("idle in the prefix cache"));
  EXPECT_UNCHANGED(*cache, before);
}

// A match never swallows a whole prompt when asked not to: the engine needs
// the last token's logits. And the counters say what was asked.
TEST(PrefixCacheTest, AMatchCanLeaveTheLastTokenAndCountsWhatWasAsked) {
  auto cache = *KVCache::Create(Config());
  ASSERT_TRUE(cache->RemoveSequence(Written(*cache, 16, 1)).ok());
  const MatchOptions leave{.leave_last_token = true};
  const std::vector<int32_t> whole = Ids(16, 1), longer = Ids(18, 1);
  EXPECT_EQ(cache->CachedPrefixTokens(whole, 0), 16);
  EXPECT_EQ(cache->CachedPrefixTokens(whole, 0, leave), 12);
  EXPECT_EQ(cache->CachedPrefixTokens(longer, 0, leave), 16);
  const CacheStats before = cache->Stats();
  const SeqId a = *cache->AddSequence(), b = *cache->AddSequence(),
              c = *cache->AddSequence(), d = *cache->AddSequence();
  EXPECT_EQ(*cache->MatchPrefix(a, whole), 16);
  EXPECT_EQ(*cache->MatchPrefix(b, whole, leave), 12);
  EXPECT_EQ(*cache->MatchPrefix(c, longer, leave), 16);
  EXPECT_EQ(*cache->MatchPrefix(d, Ids(10, 2)), 0);  // another family
  const CacheStats s = cache->Stats();
  EXPECT_EQ(s.prefix_queries - before.prefix_queries, 4);
  EXPECT_EQ(s.prefix_blocks_queried - before.prefix_blocks_queried,
            4 + 4 + 4 + 2);
  EXPECT_EQ(s.prefix_tokens_queried - before.prefix_tokens_queried,
            16 + 16 + 18 + 10);
  EXPECT_EQ(s.prefix_tokens_matched - before.prefix_tokens_matched,
            16 + 12 + 16);
  EXPECT_EQ(s.hits - before.hits, 4 + 3 + 4);
  // Only d's match stopped at a block not cached.
  EXPECT_EQ(s.misses - before.misses, 1);
  ASSERT_VALID(cache);
}

// A released chain loses its deepest blocks first: a match starts at block
// 0, so evicting block 0 first would strand every later block of it.
TEST(PrefixCacheTest, AReleasedChainIsEvictedFromItsTail) {
  // 2 layers: a 32-token sequence holds 8 blocks per layer, 16 in all.
  auto cache = *KVCache::Create(Config(20));
  ASSERT_TRUE(cache->RemoveSequence(Written(*cache, 32, 1)).ok());
  EXPECT_EQ(cache->Stats().blocks_cached, 16);
  // 16 tokens of another family: 4 blocks per layer; 4 free, 2 evicted
  // entries (2 layers each) make the rest.
  const SeqId other = *cache->AddSequence();
  ASSERT_TRUE(Put(*cache, other, 0, 16, 9).ok());
  EXPECT_EQ(cache->Stats().blocks_cached, 12);
  // Blocks 6 and 7 went: the first 6 still match.
  const SeqId probe = *cache->AddSequence();
  EXPECT_EQ(*cache->MatchPrefix(probe, Ids(32, 1)), 6 * kBt);
  ASSERT_VALID(cache);
}

// Refused calls leave the prefix cache as it was: no idle entry evicted for
// an update that cannot fit anyway, none taken off the LRU list or moved on
// it by a match or ids refused.
TEST(PrefixCacheTest, RefusedCallsLeaveTheCachedBlocksAlone) {
  auto cache = *KVCache::Create(Config(12));
  // Three released prefixes of one block in each of 2 layers: 6 idle blocks.
  for (int family : {1, 2, 3}) {
    ASSERT_TRUE(cache->RemoveSequence(Written(*cache, 4, family)).ok());
  }
  const SeqId seq = Written(*cache, 2, 4);
  ASSERT_EQ(cache->Stats().blocks_cached, 6);
  const std::vector<float> many = Tokens(0, 48);
  const TokenSpan too_many{.data = many.data(), .tokens = 48};
  const std::vector<int32_t> family2 = Ids(4, 2);
  const struct {
    const char* what;
    std::function<absl::Status()> call;
    absl::StatusCode code;
  } cases[] = {
      {"an update larger than the pool",
       [&] { return cache->Update(seq, 0, too_many, too_many, 48); },
       absl::StatusCode::kResourceExhausted},
      {"a match into a sequence holding tokens",
       [&] { return cache->MatchPrefix(seq, family2).status(); },
       absl::StatusCode::kFailedPrecondition},
      {"a match into an unknown sequence",
       [&] { return cache->MatchPrefix(999, family2).status(); },
       absl::StatusCode::kNotFound},
      {"ids of an unknown sequence",
       [&] { return cache->AppendTokens(999, family2); },
       absl::StatusCode::kNotFound},
  };
  for (const auto& refused : cases) {
    SCOPED_TRACE(refused.what);
    const CacheFingerprint before = Fingerprint(*cache);
    EXPECT_EQ(refused.call().code(), refused.code);
    EXPECT_UNCHANGED(*cache, before);
  }
  ASSERT_VALID(cache);
}

TEST(PrefixCacheTest, MatchLimitsAndRefusals) {
  CacheConfig c = Config();
  c.layer_policies = {{.layer = 1,
                       .overflow = OverflowPolicy::kSlidingWindow,
                       .max_seq_len = 9}};
  auto cache = *KVCache::Create(c);
  const SeqId a = Written(*cache, 16, 1);
  // Layer 1 keeps 9 tokens: its window evicted blocks 0 and 1, so they were
  // never published there, and the match is limited to nothing...
  const SeqId b = *cache->AddSequence();
  EXPECT_EQ(*cache->MatchPrefix(b, Ids(16, 1)), 0);
  // ...and a layer keeping 9 tokens could not take more than 2 blocks.
  EXPECT_EQ(cache->MatchPrefix(b, Ids(16, 1)).status().code(),
            absl::StatusCode::kOk);  // still empty: allowed again
  ASSERT_TRUE(cache->AppendTokens(b, Ids(1, 1)).ok());
  const CacheFingerprint before = Fingerprint(*cache);
  EXPECT_EQ(cache->MatchPrefix(b, Ids(16, 1)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_UNCHANGED(*cache, before);
  EXPECT_EQ(cache->MatchPrefix(999, Ids(4, 1)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_UNCHANGED(*cache, before);
  EXPECT_EQ(cache->AppendTokens(999, Ids(4, 1)).code(),
            absl::StatusCode::kNotFound);
  EXPECT_UNCHANGED(*cache, before);
  (void)a;
  ASSERT_VALID(cache);
}

TEST(PrefixCacheTest, TruncateForgetsTokenIdsPastTheLength) {
  auto cache = *KVCache::Create(Config());
  const SeqId a = Written(*cache, 12, 1);
  ASSERT_TRUE(cache->Truncate(a, 5).ok());
  // Positions 5.. are rewritten with other tokens and other ids.
  ASSERT_TRUE(cache->AppendTokens(a, Ids(7, 4)).ok());
  ASSERT_TRUE(Put(*cache, a, 5, 7, 4).ok());
  ASSERT_TRUE(cache->RemoveSequence(a).ok());
  // The first block (ids 0..3 of family 1) is still the same; the second is
  // now ids 4 (family 1) + 5..7 (family 4).
  std::vector<int32_t> ids = Ids(5, 1);
  const std::vector<int32_t> tail = Ids(7, 4);
  ids.insert(ids.end(), tail.begin(), tail.end());
  const SeqId b = *cache->AddSequence();
  EXPECT_EQ(*cache->MatchPrefix(b, ids), 12);
  ExpectTokens(*cache, b, Concat(Tokens(0, 5, 1), Tokens(5, 7, 4)));
  ASSERT_VALID(cache);
}

// Regression (issue 15, defect 1): a layer published into an entry that is
// idle in its other layers took the entry off the LRU list after counting
// itself present, so the list's block count went to -1 and an allocation
// that idle blocks could serve was refused.
TEST(PrefixCacheTest, PublishingIntoAnIdleEntryKeepsTheIdleCount) {
  CacheConfig c = Config(3);
  auto cache = *KVCache::Create(c);
  const std::vector<float> data = Tokens(0, 4, 1);
  const TokenSpan span{.data = data.data(), .tokens = 4};
  // A writes layer 0 only, B (the same ids) layer 1 only.
  const SeqId a = *cache->AddSequence();
  ASSERT_TRUE(cache->AppendTokens(a, Ids(4, 1)).ok());
  ASSERT_TRUE(cache->Update(a, 0, span, span, 4).ok());
  ASSERT_TRUE(cache->RemoveSequence(a).ok());
  EXPECT_EQ(cache->Stats().blocks_cached, 1);
  const SeqId b = *cache->AddSequence();
  ASSERT_TRUE(cache->AppendTokens(b, Ids(4, 1)).ok());
  ASSERT_TRUE(cache->Update(b, 1, span, span, 4).ok());
  CacheStats s = cache->Stats();
  EXPECT_EQ(s.blocks_cached, 0);  // the entry is in use through layer 1
  EXPECT_EQ(s.blocks_used, 2);
  ASSERT_VALID(cache);
  ASSERT_TRUE(cache->RemoveSequence(b).ok());
  s = cache->Stats();
  EXPECT_EQ(s.blocks_cached, 2);
  EXPECT_EQ(s.blocks_free, 1);
  ASSERT_VALID(cache);
  // Both layers' blocks are whole again: a match takes them.
  const SeqId m = *cache->AddSequence();
  EXPECT_EQ(*cache->MatchPrefix(m, Ids(4, 1)), 4);
  ASSERT_TRUE(cache->RemoveSequence(m).ok());
  // C needs 3 blocks in one layer: 1 free and 2 idle ones.
  const SeqId seq_c = *cache->AddSequence();
  const std::vector<float> twelve = Tokens(0, 12, 2);
  const TokenSpan big{.data = twelve.data(), .tokens = 12};
  ASSERT_TRUE(cache->Update(seq_c, 0, big, big, 12).ok());
  s = cache->Stats();
  EXPECT_EQ(s.blocks_used, 3);
  EXPECT_EQ(s.blocks_cached, 0);
  EXPECT_EQ(s.prefix_entries, 0);
  ASSERT_VALID(cache);
}

// Regression (issue 15, defect 2): a block already cached under one hash,
// offered under another (a fork told other ids than its parent), left an
// empty entry in the index that was never on the LRU list, never evicted.
// Resident memory of this process, in MiB (/proc/self/statm).
int64_t ResidentMiB() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE) / (1 << 20);
}

// Without prefault the prefix cache's index is sized at the first
// publication but not written: that publication makes a few pages resident,
// not the index of a full pool (32 MiB here).
TEST(PrefixCacheTest, WithoutPrefaultTheFirstPublicationTouchesLittle) {
  CacheConfig c{.num_layers = 1,
                .num_kv_heads = 1,
                .head_dim = 4,
                .dtype = DType::kF32,
                .block_tokens = 16,
                .num_blocks = int64_t{1} << 20,
                .max_seq_len = 64};
  c.prefault = false;
  c.huge_pages = false;
  auto cache = KVCache::Create(c);
  ASSERT_TRUE(cache.ok()) << cache.status();
  const int64_t created = ResidentMiB();
  const SeqId s = *(*cache)->AddSequence();
  ASSERT_TRUE((*cache)->AppendTokens(s, std::vector<int32_t>(16, 3)).ok());
  std::vector<float> k(64, 1.0f);
  const TokenSpan kv{.data = k.data(), .dtype = DType::kF32, .tokens = 16};
  ASSERT_TRUE((*cache)->Update(s, 0, kv, kv, 16).ok());
  EXPECT_EQ((*cache)->Stats().prefix_entries, 1);
  EXPECT_LT(ResidentMiB() - created, 16);
}

TEST(PrefixCacheTest, ABlockCachedUnderOneHashAddsNoEmptyEntry) {
  auto cache = *KVCache::Create(Config());
  const SeqId parent = *cache->AddSequence();
  ASSERT_TRUE(Put(*cache, parent, 0, 4, 1).ok());
  const SeqId child = *cache->Fork(parent);
  ASSERT_TRUE(cache->AppendTokens(child, Ids(4, 1)).ok());
  EXPECT_EQ(cache->Stats().prefix_entries, 1);
  ASSERT_TRUE(cache->AppendTokens(parent, Ids(4, 2)).ok());
  EXPECT_EQ(cache->Stats().prefix_entries, 1);
  ASSERT_VALID(cache);
  ASSERT_TRUE(cache->RemoveSequence(child).ok());
  ASSERT_TRUE(cache->RemoveSequence(parent).ok());
  const CacheStats s = cache->Stats();
  EXPECT_EQ(s.prefix_entries, 1);
  EXPECT_EQ(s.blocks_cached, 2);
  ASSERT_VALID(cache);
  // The block is found under the ids it was first published with only.
  const SeqId probe = *cache->AddSequence();
  EXPECT_EQ(*cache->MatchPrefix(probe, Ids(4, 2)), 0);
  ASSERT_TRUE(cache->RemoveSequence(probe).ok());
  const SeqId match = *cache->AddSequence();
  EXPECT_EQ(*cache->MatchPrefix(match, Ids(4, 1)), 4);
  ExpectTokens(*cache, match, Tokens(0, 4, 1));
  ASSERT_VALID(cache);
}

// Regression (issue 15, defect 3): a ring truncated to 0 keeps its blocks as
// spares; a prefix match then attached window blocks on top of them, and
// the layer held more blocks than its ring allows.
TEST(PrefixCacheTest, AMatchIntoATruncatedRingKeepsTheRingSize) {
  CacheConfig c = Config();
  c.num_layers = 1;
  c.overflow = OverflowPolicy::kCircularBuffer;
  c.max_seq_len = 8;
  auto cache = *KVCache::Create(c);
  const SeqId source = Written(*cache, 8, 1);  // publishes 2 blocks
  const SeqId a = *cache->AddSequence();
  ASSERT_TRUE(Put(*cache, a, 0, 9, 2).ok());  // a ring of 3 blocks
  ASSERT_TRUE(cache->Truncate(a, 0).ok());
  ASSERT_VALID(cache);
  EXPECT_EQ(*cache->MatchPrefix(a, Ids(8, 1)), 8);
  ASSERT_VALID(cache);
  ExpectTokens(*cache, a, Tokens(0, 8, 1));
  EXPECT_LE(cache->Stats(a)->blocks, 3);
  EXPECT_EQ(cache->Stats(a)->max_length, 9);  // the longest it has been
  // The ring goes on: the oldest shared block is let go, the source keeps
  // reading its own tokens.
  ASSERT_TRUE(Put(*cache, a, 8, 5, 3).ok());
  ASSERT_VALID(cache);
  ExpectTokens(*cache, a, Concat(Tokens(5, 3, 1), Tokens(8, 5, 3)));
  ExpectTokens(*cache, source, Tokens(0, 8, 1));
  EXPECT_LE(cache->Stats(a)->blocks, 3);
}

}  // namespace
}  // namespace kvpage
