#include "kvpage/kv_cache.h"

#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "allocator/convert.h"
#include "cache/kv_cache_internal.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvpage/kvpage.h"
#include "tests/cache_fingerprint.h"
#include "tests/test_util.h"

namespace kvpage {
namespace {

using kvpage::testing::CacheFingerprint;
using kvpage::testing::Fingerprint;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// 2 layers, 2 kv-heads of 4 dims: 8 elements per token.
constexpr int kElems = 8;

CacheConfig SmallConfig() {
  return {.num_layers = 2,
          .num_kv_heads = 2,
          .head_dim = 4,
          .dtype = DType::kF16,
          .block_tokens = 4,
          .num_blocks = 16,
          .max_seq_len = 32};
}

// Token t of a test sequence: element e is t * 10 + e / 8 (exact in f16),
// plus `offset`.
std::vector<float> Tokens(int64_t first, int64_t count, float offset = 0) {
  return testing::Tokens(first, count,
                         {.elems = kElems, .step = 10, .offset = offset});
}

TokenSpan Span(const std::vector<float>& data) {
  return {.data = data.data(),
          .dtype = DType::kF32,
          .tokens = static_cast<int64_t>(data.size()) / kElems};
}

class KVCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto cache = KVCache::Create(SmallConfig());
    ASSERT_TRUE(cache.ok()) << cache.status();
    cache_ = *std::move(cache);
    seq_ = *cache_->AddSequence();
  }
  void TearDown() override { EXPECT_VALID(cache_); }

  // Appends or overwrites positions [first, first + count) on every layer,
  // keys and values alike (values offset by 0.5).
  absl::Status Put(int64_t first, int64_t count, int64_t seq_len) {
    const std::vector<float> k = Tokens(first, count);
    const std::vector<float> v = Tokens(first, count, 0.5f);
    for (int layer = 0; layer < 2; ++layer) {
      absl::Status s = cache_->Update(seq_, layer, Span(k), Span(v), seq_len);
      if (!s.ok()) return s;
      EXPECT_VALID(cache_);
    }
    return absl::OkStatus();
  }

  // Expects the layer to read back exactly `want` (as written by Tokens()).
  void ExpectLayer(int layer, const std::vector<float>& want_k,
                   int64_t tokens) {
    absl::StatusOr<GatheredLayer> got = cache_->Gather(seq_, layer);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->positions.size(), static_cast<size_t>(tokens));
    for (int64_t t = 0; t < tokens; ++t) EXPECT_EQ(got->positions[t], t);
    EXPECT_EQ(got->k, want_k);
    ASSERT_EQ(got->v.size(), want_k.size());
    for (size_t i = 0; i < want_k.size(); ++i) {
      EXPECT_EQ(got->v[i], want_k[i] + 0.5f) << i;
    }
  }

  std::unique_ptr<KVCache> cache_;
  SeqId seq_ = 0;
};

TEST(KVCacheCreateTest, RejectsBadConfigsNamingTheField) {
  CacheConfig c = SmallConfig();
  c.num_layers = 0;
  absl::Status s = KVCache::Create(c).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("num_layers is 0"));

  c = SmallConfig();
  c.block_tokens = 70000;
  EXPECT_THAT(KVCache::Create(c).status().message(), HasSubstr("block_tokens"));
  c = SmallConfig();
  c.num_blocks = int64_t{1} << 33;
  EXPECT_THAT(KVCache::Create(c).status().message(), HasSubstr("num_blocks"));
  c = SmallConfig();
  c.sink_tokens = 32;
  EXPECT_THAT(KVCache::Create(c).status().message(), HasSubstr("sink_tokens"));
  c = SmallConfig();
  c.num_blocks = 2'000'000'000;
  c.num_kv_heads = 4096;
  c.head_dim = 65536;
  s = KVCache::Create(c).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("arena limit"));
  c = SmallConfig();
  c.overflow = OverflowPolicy::kTruncate;
  c.sink_tokens = 16;  // truncate_to 0 means 16: no window would be left
  EXPECT_THAT(KVCache::Create(c).status().message(),
              HasSubstr("truncate_to is 16"));
  c = SmallConfig();
  c.layer_policies = {{.layer = 2, .max_seq_len = 8}};
  EXPECT_THAT(KVCache::Create(c).status().message(),
              HasSubstr("layer_policies[].layer is 2"));
  c.layer_policies = {{.layer = 1, .max_seq_len = 8},
                      {.layer = 1, .max_seq_len = 8}};
  EXPECT_THAT(KVCache::Create(c).status().message(),
              HasSubstr("at most one per layer"));
  c.layer_policies = {{.layer = 1,
                       .overflow = OverflowPolicy::kSlidingWindow,
                       .max_seq_len = 8,
                       .sink_tokens = 8}};
  EXPECT_THAT(KVCache::Create(c).status().message(),
              HasSubstr("layer_policies[layer 1].sink_tokens is 8"));
  // Regression (issue 15, found by the API fuzzer): with compression off, an
  // unknown format or a NaN error bound was accepted, and the snapshot the
  // cache wrote could not be read back.
  c = SmallConfig();
  c.compression.bits = static_cast<QuantBits>(0);
  EXPECT_THAT(KVCache::Create(c).status().message(),
              HasSubstr("compression.bits is 0"));
  c = SmallConfig();
  c.compression.max_rel_error = std::nan("");
  EXPECT_THAT(KVCache::Create(c).status().message(),
              HasSubstr("max_rel_error is nan"));
}

TEST(KVCacheCreateTest, StorageMustMatchTheConfig) {
  auto storage = std::make_unique<kvpage::testing::OpaqueStorage>(16, 64);
  const absl::Status s = internal::KVCacheAccess::CreateWithStorage(
                             SmallConfig(), std::move(storage))
                             .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("16 blocks of 64 bytes"));
}

// The original report: 5 tokens, then 3 more, gives a length of 8.
TEST_F(KVCacheTest, FiveThenThreeMakesEight) {
  ASSERT_TRUE(Put(0, 5, 5).ok());
  ASSERT_TRUE(Put(5, 3, 8).ok());
  for (int layer = 0; layer < 2; ++layer) {
    EXPECT_EQ(*cache_->Length(seq_, layer), 8);
    ExpectLayer(layer, Tokens(0, 8), 8);
  }
  const CacheStats s = cache_->Stats();
  EXPECT_EQ(s.tokens_stored, 16);
  EXPECT_EQ(s.blocks_used, 4);  // 2 blocks of 4 tokens per layer
  EXPECT_EQ(s.bytes_written, 2 * 8 * 2 * kElems * 2);  // layers*tokens*K,V*f16
  EXPECT_EQ(s.bytes_copied, 0);
}

TEST_F(KVCacheTest, DecodeTakesABlockOnlyWhenTheLastIsFull) {
  for (int64_t t = 0; t < 9; ++t) {
    ASSERT_TRUE(Put(t, 1, t + 1).ok());
    EXPECT_EQ(cache_->Stats().blocks_used, 2 * (t / 4 + 1)) << "token " << t;
  }
  ExpectLayer(0, Tokens(0, 9), 9);
  const SequenceStats s = *cache_->Stats(seq_);
  EXPECT_EQ(s.current_length, 9);
  EXPECT_EQ(s.blocks, 6);
  EXPECT_EQ(s.tokens_stored, 18);
  EXPECT_DOUBLE_EQ(s.utilization, 18.0 / 24.0);
  EXPECT_EQ(s.memory_usage_bytes, 6 * BlockBytes(SmallConfig()));
}

TEST_F(KVCacheTest, RollbackDropsTokensAndReturnsEmptyBlocks) {
  ASSERT_TRUE(Put(0, 10, 10).ok());
  EXPECT_EQ(cache_->Stats().blocks_used, 6);
  // Rejected draft tokens: an update that ends at 6 with 2 new tokens keeps
  // [0, 4), overwrites 4 and 5 and drops 6..9.
  const std::vector<float> k = Tokens(4, 2, 100);
  const std::vector<float> v = Tokens(4, 2, 100.5f);
  ASSERT_TRUE(cache_->Update(seq_, 0, Span(k), Span(v), 6).ok());
  EXPECT_EQ(*cache_->Length(seq_, 0), 6);
  std::vector<float> want = Tokens(0, 4);
  want.insert(want.end(), k.begin(), k.end());
  ExpectLayer(0, want, 6);
  EXPECT_EQ(*cache_->Length(seq_, 1), 10);  // other layers untouched
  EXPECT_EQ(cache_->Stats().blocks_used, 5);

  // A pure rollback (no tokens) and an empty sequence.
  ASSERT_TRUE(cache_->Update(seq_, 0, {}, {}, 3).ok());
  EXPECT_EQ(*cache_->Length(seq_, 0), 3);
  ASSERT_TRUE(cache_->Update(seq_, 0, {}, {}, 0).ok());
  EXPECT_EQ(cache_->View(seq_, 0)->blocks.size(), 0u);
  EXPECT_EQ(cache_->Stats().blocks_used, 3);
}

TEST_F(KVCacheTest, OverwriteInPlaceKeepsBlocksAndLength) {
  ASSERT_TRUE(Put(0, 6, 6).ok());
  const std::vector<uint32_t> before = [&] {
    std::vector<uint32_t> ids;
    const LayerView view = *cache_->View(seq_, 0);
    for (const BlockView& b : view.blocks) {
      ids.push_back(b.block_id);
    }
    return ids;
  }();
  const std::vector<float> k = Tokens(1, 2, 1000);
  const std::vector<float> v = Tokens(1, 2, 1000.5f);
  ASSERT_TRUE(cache_->Update(seq_, 0, Span(k), Span(v), 3).ok());
  EXPECT_EQ(*cache_->Length(seq_, 0), 3);
  // Overwriting the whole length again restores the tokens after position 3?
  // No: positions at or past seq_len are dropped.
  absl::StatusOr<GatheredLayer> got = cache_->Gather(seq_, 0);
  ASSERT_EQ(got->positions.size(), 3u);
  EXPECT_EQ(got->k[kElems], 1010.0f);
  // Overwrite without shrinking: seq_len equal to the length.
  ASSERT_TRUE(Put(0, 6, 6).ok());
  const std::vector<float> k2 = Tokens(2, 4, 7);
  const std::vector<float> v2 = Tokens(2, 4, 7.5f);
  ASSERT_TRUE(cache_->Update(seq_, 0, Span(k2), Span(v2), 6).ok());
  std::vector<float> want = Tokens(0, 2);
  want.insert(want.end(), k2.begin(), k2.end());
  ExpectLayer(0, want, 6);
  std::vector<uint32_t> after;
  const LayerView view = *cache_->View(seq_, 0);
  for (const BlockView& b : view.blocks) {
    after.push_back(b.block_id);
  }
  EXPECT_EQ(after, before);
}

TEST_F(KVCacheTest, UpdateLongerThanAWholeBlockSpansBlocks) {
  ASSERT_TRUE(Put(0, 2, 2).ok());
  ASSERT_TRUE(Put(2, 11, 13).ok());  // finishes block 0, fills 1 and 2, 1 in 3
  ExpectLayer(1, Tokens(0, 13), 13);
  absl::StatusOr<LayerView> view = cache_->View(seq_, 1);
  ASSERT_EQ(view->blocks.size(), 4u);
  EXPECT_EQ(view->tokens(), 13);
  EXPECT_EQ(view->blocks[3].tokens, 1);
  EXPECT_EQ(view->blocks[3].first_position, 12);
}

TEST_F(KVCacheTest, BadCallsAreRefusedAndChangeNothing) {
  ASSERT_TRUE(Put(0, 6, 6).ok());
  const std::vector<float> one = Tokens(6, 1);
  const std::vector<float> two = Tokens(6, 2);
  const std::vector<float> too_long = Tokens(6, 27);  // ends at 33
  TokenSpan wrong_dtype = Span(one);
  wrong_dtype.dtype = DType::kBF16;
  TokenSpan null_data = Span(one);
  null_data.data = nullptr;
  struct Case {
    std::string name;
    std::function<absl::Status()> call;
    absl::StatusCode code;
    std::string says;
  };
  const Case cases[] = {
      {"unknown sequence",
       [&] { return cache_->Update(999, 0, Span(one), Span(one), 7); },
       absl::StatusCode::kNotFound, "seq 999"},
      {"layer out of range",
       [&] { return cache_->Update(seq_, 2, Span(one), Span(one), 7); },
       absl::StatusCode::kInvalidArgument, "layer 2"},
      {"negative layer",
       [&] { return cache_->Update(seq_, -1, Span(one), Span(one), 7); },
       absl::StatusCode::kInvalidArgument, "layer out of range [0, 2)"},
      {"k and v differ",
       [&] { return cache_->Update(seq_, 0, Span(one), Span(two), 7); },
       absl::StatusCode::kInvalidArgument, "k has 1 tokens, v has 2"},
      {"wrong dtype",
       [&] { return cache_->Update(seq_, 0, wrong_dtype, Span(one), 7); },
       absl::StatusCode::kInvalidArgument, "k is bf16"},
      {"null data",
       [&] { return cache_->Update(seq_, 0, Span(one), null_data, 7); },
       absl::StatusCode::kInvalidArgument, "v is null with 1 tokens"},
      {"gap", [&] { return cache_->Update(seq_, 1, Span(one), Span(one), 8); },
       absl::StatusCode::kInvalidArgument, "gap"},
      {"before position 0",
       [&] { return cache_->Update(seq_, 1, Span(two), Span(two), 1); },
       absl::StatusCode::kInvalidArgument, "below position 0"},
      {"past max_seq_len",
       [&] {
         return cache_->Update(seq_, 0, Span(too_long), Span(too_long), 33);
       },
       absl::StatusCode::kResourceExhausted, "max_seq_len 32"},
      {"truncate below 0", [&] { return cache_->Truncate(seq_, -1); },
       absl::StatusCode::kInvalidArgument, "seq_len must be >= 0"},
      {"truncate unknown", [&] { return cache_->Truncate(12345, 0); },
       absl::StatusCode::kNotFound, "seq 12345"},
      {"remove unknown", [&] { return cache_->RemoveSequence(12345); },
       absl::StatusCode::kNotFound, "seq 12345"},
  };
  for (const Case& refused : cases) {
    SCOPED_TRACE(refused.name);
    const CacheFingerprint before = Fingerprint(*cache_);
    const absl::Status status = refused.call();
    EXPECT_EQ(status.code(), refused.code) << status;
    EXPECT_THAT(status.message(), HasSubstr(refused.says));
    EXPECT_THAT(status.message(), HasSubstr("seq "));
    EXPECT_UNCHANGED(*cache_, before);
  }
  EXPECT_EQ(cache_->Gather(seq_, 5).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache_->View(77, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(cache_->Length(77, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(cache_->Stats(77).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(KVCacheTest, PoolExhaustionChangesNothing) {
  // 16 blocks of 4 tokens; two layers of 28 tokens take 14.
  ASSERT_TRUE(Put(0, 28, 28).ok());
  const SeqId other = *cache_->AddSequence();
  const std::vector<float> k = Tokens(0, 12);
  const CacheFingerprint before = Fingerprint(*cache_);
  const absl::Status s = cache_->Update(other, 1, Span(k), Span(k), 12);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(s.message(), HasSubstr("needs 3 blocks"));
  EXPECT_THAT(s.message(), HasSubstr("layer 1"));
  EXPECT_UNCHANGED(*cache_, before);
  // One block short through the single-block path too.
  const std::vector<float> eight = Tokens(0, 8);
  const std::vector<float> ninth = Tokens(8, 1);
  ASSERT_TRUE(cache_->Update(other, 1, Span(eight), Span(eight), 8).ok());
  const CacheFingerprint full = Fingerprint(*cache_);
  const absl::Status one =
      cache_->Update(other, 1, Span(ninth), Span(ninth), 9);
  EXPECT_EQ(one.code(), absl::StatusCode::kResourceExhausted) << one;
  EXPECT_UNCHANGED(*cache_, full);
  // Freeing a sequence makes room again.
  ASSERT_TRUE(cache_->RemoveSequence(seq_).ok());
  EXPECT_TRUE(cache_->Update(other, 1, Span(ninth), Span(ninth), 9).ok());
}

TEST_F(KVCacheTest, TruncateRollsBackEveryLayer) {
  ASSERT_TRUE(Put(0, 9, 9).ok());
  const std::vector<float> k = Tokens(9, 1);
  ASSERT_TRUE(cache_->Update(seq_, 0, Span(k), Span(k), 10).ok());
  ASSERT_TRUE(cache_->Truncate(seq_, 5).ok());
  EXPECT_EQ(*cache_->Length(seq_, 0), 5);
  EXPECT_EQ(*cache_->Length(seq_, 1), 5);
  ExpectLayer(1, Tokens(0, 5), 5);
  EXPECT_EQ(cache_->Stats().blocks_used, 4);
  ASSERT_TRUE(cache_->Truncate(seq_, 100).ok());  // longer: nothing to do
  EXPECT_EQ(*cache_->Length(seq_, 0), 5);
  ASSERT_TRUE(cache_->Truncate(seq_, 0).ok());
  EXPECT_EQ(cache_->Stats().blocks_used, 0);
  EXPECT_EQ(cache_->Stats().tokens_stored, 0);
  EXPECT_EQ(cache_->Stats(seq_)->max_length, 10);
}

TEST_F(KVCacheTest, RemoveFreesEverythingAndIdsAreNotReused) {
  ASSERT_TRUE(Put(0, 7, 7).ok());
  const SeqId second = *cache_->AddSequence();
  EXPECT_NE(second, seq_);
  ASSERT_TRUE(cache_->RemoveSequence(seq_).ok());
  EXPECT_EQ(cache_->Stats().blocks_used, 0);
  EXPECT_EQ(cache_->Stats().sequences, 1);
  const SeqId third = *cache_->AddSequence();
  EXPECT_NE(third, seq_);
  EXPECT_NE(third, second);
  EXPECT_THAT(cache_->Sequences(), ElementsAre(second, third));
  const CacheFingerprint before = Fingerprint(*cache_);
  EXPECT_EQ(cache_->RemoveSequence(seq_).code(), absl::StatusCode::kNotFound);
  EXPECT_UNCHANGED(*cache_, before);
}

TEST_F(KVCacheTest, ViewReadsWhatGatherCopies) {
  ASSERT_TRUE(Put(0, 10, 10).ok());
  absl::StatusOr<LayerView> view = cache_->View(seq_, 1);
  ASSERT_TRUE(view.ok());
  EXPECT_TRUE(view->host_accessible);
  EXPECT_EQ(view->dtype, DType::kF16);
  EXPECT_EQ(view->token_stride, kElems);
  const std::vector<float> want = Tokens(0, 10);
  int64_t t = 0;
  for (const BlockView& b : view->blocks) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.k) % 64, 0u);
    EXPECT_EQ(b.first_position, t);
    for (int s = b.begin_slot; s < b.begin_slot + b.tokens; ++s, ++t) {
      const auto* k =
          static_cast<const uint16_t*>(b.k) + s * view->token_stride;
      const auto* v =
          static_cast<const uint16_t*>(b.v) + s * view->token_stride;
      for (int e = 0; e < kElems; ++e) {
        EXPECT_EQ(internal::F16ToF32(k[e]), want[t * kElems + e]);
        EXPECT_EQ(internal::F16ToF32(v[e]), want[t * kElems + e] + 0.5f);
      }
    }
  }
  EXPECT_EQ(t, 10);
}

TEST(KVCacheDTypeTest, F32InputIsRoundedToNearestEvenIntoF16AndBF16) {
  for (DType dtype : {DType::kF16, DType::kBF16, DType::kF32}) {
    CacheConfig c = SmallConfig();
    c.dtype = dtype;
    auto cache = *KVCache::Create(c);
    const SeqId seq = *cache->AddSequence();
    std::vector<float> k(kElems, 1.0f + 0x1p-11f + 0x1p-20f);
    k[1] = 1.0f + 0x1p-8f;  // a bf16 tie, exact in f16
    ASSERT_TRUE(cache->Update(seq, 0, Span(k), Span(k), 1).ok());
    const GatheredLayer got = *cache->Gather(seq, 0);
    const float want0 = dtype == DType::kF16    ? 1.0f + 0x1p-10f
                        : dtype == DType::kBF16 ? 1.0f
                                                : k[0];
    EXPECT_EQ(got.k[0], want0) << DTypeName(dtype);
    EXPECT_EQ(got.k[1], dtype == DType::kBF16 ? 1.0f : k[1])
        << DTypeName(dtype);
    // Input already in the cache's dtype is stored as it is.
    std::vector<uint16_t> raw(kElems, dtype == DType::kBF16 ? 0x4049 : 0x4248);
    if (dtype != DType::kF32) {
      TokenSpan span{.data = raw.data(), .dtype = dtype, .tokens = 1};
      ASSERT_TRUE(cache->Update(seq, 0, span, span, 2).ok());
      EXPECT_EQ(cache->Gather(seq, 0)->k[kElems], 3.140625f);
      const BlockView b = cache->View(seq, 0)->blocks[0];
      EXPECT_EQ(std::memcmp(static_cast<const uint16_t*>(b.k) + kElems,
                            raw.data(), kElems * 2),
                0);
    }
    EXPECT_VALID(cache);
  }
}

// Storage that is not host memory goes through Write/Read: same results.
TEST(KVCacheStorageTest, OpaqueStorageBehavesLikeTheArena) {
  const CacheConfig c = SmallConfig();
  auto storage = std::make_unique<kvpage::testing::OpaqueStorage>(
      c.num_blocks, BlockBytes(c));
  kvpage::testing::OpaqueStorage* raw = storage.get();
  auto opaque =
      *internal::KVCacheAccess::CreateWithStorage(c, std::move(storage));
  auto host = *KVCache::Create(c);
  const SeqId a = *opaque->AddSequence();
  const SeqId b = *host->AddSequence();
  const std::vector<float> k = Tokens(0, 9);
  const std::vector<float> v = Tokens(0, 9, 0.5f);
  for (KVCache* cache : {opaque.get(), host.get()}) {
    const SeqId seq = cache == opaque.get() ? a : b;
    ASSERT_TRUE(cache->Update(seq, 1, Span(k), Span(v), 9).ok());
    ASSERT_TRUE(cache->Update(seq, 1, {}, {}, 7).ok());
  }
  EXPECT_GT(raw->writes, 0);
  EXPECT_FALSE(opaque->View(a, 1)->host_accessible);
  EXPECT_EQ(opaque->Gather(a, 1)->k, host->Gather(b, 1)->k);
  EXPECT_EQ(opaque->Gather(a, 1)->v, host->Gather(b, 1)->v);
  EXPECT_VALID(opaque);
}

}  // namespace
}  // namespace kvpage
