// The Redis tier against redis-server and a Redis Cluster started here: a
// prefix computed by one cache is restored by another (a process started
// after the first has gone, here a cache and a connection made after the
// first ones were destroyed) and reads exactly what was computed; values
// corrupted, of another model, or behind a dead node are misses, counted;
// a stalled server makes the queue drop, never the cache wait.
#include "kvpage/remote_tier.h"

#include <signal.h>

#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvpage/kvpage.h"
#include "remote/block_codec.h"
#include "remote/redis_test_server.h"

namespace kvpage {
namespace {

using remote::RedisConnection;
using remote::RedisReply;
using remote::testing::RedisTestCluster;
using remote::testing::RedisTestServer;

constexpr int kHeads = 2, kDim = 8, kElems = kHeads * kDim, kBlock = 4;

CacheConfig Config(bool grouped) {
  CacheConfig c{.num_layers = 3,
                .num_kv_heads = kHeads,
                .head_dim = kDim,
                .dtype = DType::kF16,
                .block_tokens = kBlock,
                .num_blocks = 64,
                .max_seq_len = 256};
  c.group_layers = grouped;
  return c;
}

std::vector<int32_t> Prompt(int64_t n) {
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < n; ++i) ids.push_back(static_cast<int32_t>(11 + i));
  return ids;
}

float Value(int layer, int64_t position, int64_t e, bool v) {
  return static_cast<float>(layer * 64 + position % 64) * (v ? -0.5f : 0.5f) +
         static_cast<float>(e) / 16.0f;
}

void Compute(KVCache& cache, SeqId seq, const std::vector<int32_t>& ids) {
  ASSERT_TRUE(cache.AppendTokens(seq, ids).ok());
  const auto n = static_cast<int64_t>(ids.size());
  std::vector<float> k(static_cast<size_t>(n * kElems)), v(k.size());
  for (int layer = 0; layer < cache.config().num_layers; ++layer) {
    for (int64_t p = 0; p < n; ++p) {
      for (int64_t e = 0; e < kElems; ++e) {
        k[static_cast<size_t>(p * kElems + e)] = Value(layer, p, e, false);
        v[static_cast<size_t>(p * kElems + e)] = Value(layer, p, e, true);
      }
    }
    ASSERT_TRUE(cache
                    .Update(seq, layer, {.data = k.data(), .tokens = n},
                            {.data = v.data(), .tokens = n}, n)
                    .ok());
  }
}

void ExpectComputed(const KVCache& cache, SeqId seq, int64_t n) {
  for (int layer = 0; layer < cache.config().num_layers; ++layer) {
    const GatheredLayer g = *cache.Gather(seq, layer);
    ASSERT_EQ(static_cast<int64_t>(g.positions.size()), n);
    for (int64_t p = 0; p < n; ++p) {
      for (int64_t e = 0; e < kElems; ++e) {
        ASSERT_EQ(g.k[static_cast<size_t>(p * kElems + e)],
                  Value(layer, p, e, false));
        ASSERT_EQ(g.v[static_cast<size_t>(p * kElems + e)],
                  Value(layer, p, e, true));
      }
    }
  }
}

RemoteTierOptions Options(const std::string& url) {
  return {.url = url,
          .model_id = "test-model",
          .connect_timeout = absl::Milliseconds(300),
          .write_timeout = absl::Milliseconds(300),
          .fetch_timeout = absl::Milliseconds(300)};
}

// Process A computes a 64-token prompt and writes it through; A goes away.
// Process B, with its own cache and connection, restores all 16 blocks.
void WriteThenRestore(const std::string& url, bool grouped) {
  const std::vector<int32_t> prompt = Prompt(64);
  {
    auto tier = RemoteTier::Connect(Options(url));
    ASSERT_TRUE(tier.ok()) << tier.status();
    auto a = *KVCache::Create(Config(grouped));
    ASSERT_TRUE(a->AttachTier(tier->get(), {.write_through = true}).ok());
    Compute(*a, *a->AddSequence(), prompt);
    (*tier)->Flush();
    const RemoteTierStats st = (*tier)->Stats();
    EXPECT_EQ(st.blocks_written_through, 16);
    EXPECT_EQ(st.write_errors, 0);
    EXPECT_EQ(st.queue_drops, 0);
    EXPECT_GT(st.bytes_written, 16 * 3 * BlockBytes(Config(grouped)));
    ASSERT_TRUE(a->AttachTier(nullptr, {}).ok());
  }
  auto tier = RemoteTier::Connect(Options(url));
  ASSERT_TRUE(tier.ok()) << tier.status();
  auto b = *KVCache::Create(Config(grouped));
  ASSERT_TRUE(b->AttachTier(tier->get(), {.fetch_batch = 5}).ok());
  const SeqId s = *b->AddSequence();
  EXPECT_EQ(*b->MatchPrefix(s, prompt), 64);
  ExpectComputed(*b, s, 64);
  const RemoteTierStats st = (*tier)->Stats();
  EXPECT_EQ(st.blocks_fetched, 16);
  EXPECT_EQ(st.fetch_calls, 4);  // 5 + 5 + 5 + 1
  EXPECT_EQ(
      st.fetch_misses + st.fetch_errors + st.corrupt_blocks + st.foreign_blocks,
      0);
  EXPECT_GT(st.fetch_p99_us, 0);
  EXPECT_TRUE(b->Validate().ok());
  // Another model's cache of the same shape finds nothing.
  RemoteTierOptions other = Options(url);
  other.model_id = "another-model";
  auto foreign_tier = RemoteTier::Connect(other);
  ASSERT_TRUE(foreign_tier.ok());
  auto c = *KVCache::Create(Config(grouped));
  ASSERT_TRUE(c->AttachTier(foreign_tier->get(), {}).ok());
  EXPECT_EQ(*c->MatchPrefix(*c->AddSequence(), prompt), 0);
  EXPECT_EQ((*foreign_tier)->Stats().fetch_misses, 1);
  EXPECT_EQ(c->Stats().blocks_used, 0);
  ASSERT_TRUE(b->AttachTier(nullptr, {}).ok());
  ASSERT_TRUE(c->AttachTier(nullptr, {}).ok());
}

TEST(RemoteTier, ASecondProcessRestoresAPrefix) {
  auto server = RedisTestServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  WriteThenRestore((*server)->url(), false);
}

TEST(RemoteTier, ASecondProcessRestoresAPrefixOfLayerGroups) {
  auto server = RedisTestServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  WriteThenRestore((*server)->url(), true);
}

TEST(RemoteTier, ThroughACluster) {
  auto cluster = RedisTestCluster::Start(3);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  WriteThenRestore((*cluster)->url(), false);
  // A node killed: a restore stops at the first block behind it (an
  // error, counted), attaches what came before, and the cache is whole.
  kill((*cluster)->node(1).pid(), SIGKILL);
  auto tier = RemoteTier::Connect(Options((*cluster)->url()));
  ASSERT_TRUE(tier.ok()) << tier.status();
  auto cache = *KVCache::Create(Config(false));
  ASSERT_TRUE(cache->AttachTier(tier->get(), {}).ok());
  const SeqId s = *cache->AddSequence();
  const int64_t matched = *cache->MatchPrefix(s, Prompt(64));
  EXPECT_LT(matched, 64);
  ExpectComputed(*cache, s, matched);
  EXPECT_EQ((*tier)->Stats().fetch_errors, 1);
  EXPECT_TRUE(cache->Validate().ok());
  // Writes to the dead node fail, counted; the others succeed.
  auto d = *KVCache::Create(Config(false));
  ASSERT_TRUE(d->AttachTier(tier->get(), {.write_through = true}).ok());
  std::vector<int32_t> ids = Prompt(64);
  ids[0] = 999;  // other hashes
  Compute(*d, *d->AddSequence(), ids);
  (*tier)->Flush();
  const RemoteTierStats st = (*tier)->Stats();
  EXPECT_GT(st.write_errors, 0);
  EXPECT_EQ(st.write_errors + st.blocks_written_through, 16);
  ASSERT_TRUE(cache->AttachTier(nullptr, {}).ok());
  ASSERT_TRUE(d->AttachTier(nullptr, {}).ok());
}

// Values a server corrupted, or that belong under another key (another
// block, another model), are never attached.
TEST(RemoteTier, CorruptAndForeignValuesAreMisses) {
  auto server = RedisTestServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  const std::vector<int32_t> prompt = Prompt(16);
  auto tier = RemoteTier::Connect(Options((*server)->url()));
  ASSERT_TRUE(tier.ok());
  {
    auto a = *KVCache::Create(Config(true));
    ASSERT_TRUE(a->AttachTier(tier->get(), {.write_through = true}).ok());
    Compute(*a, *a->AddSequence(), prompt);
    (*tier)->Flush();
    ASSERT_TRUE(a->AttachTier(nullptr, {}).ok());
  }
  auto direct = RedisConnection::Open((*server)->endpoint(), {}, {});
  ASSERT_TRUE(direct.ok());
  const uint64_t fp =
      remote::BlockFingerprint(Config(true), "test-model", {0, 1, 2});
  const uint64_t h0 =
      PrefixBlockHash(0, 0, absl::MakeConstSpan(prompt).subspan(0, 4));
  const uint64_t h1 =
      PrefixBlockHash(h0, 0, absl::MakeConstSpan(prompt).subspan(4, 4));
  const std::string k0 = remote::BlockKey(fp, h0, 0);
  const std::string k1 = remote::BlockKey(fp, h1, 0);
  const std::string good = (*direct)->Command({"GET", k0})->str;
  ASSERT_FALSE(good.empty());
  auto restore = [&](int64_t want) {
    auto cache = *KVCache::Create(Config(true));
    EXPECT_TRUE(cache->AttachTier(tier->get(), {}).ok());
    const SeqId s = *cache->AddSequence();
    EXPECT_EQ(*cache->MatchPrefix(s, prompt), want);
    ExpectComputed(*cache, s, want);
    EXPECT_TRUE(cache->Validate().ok());
    EXPECT_TRUE(cache->AttachTier(nullptr, {}).ok());
  };
  restore(16);
  // A flipped byte in block 0's payload.
  std::string bad = good;
  bad[bad.size() / 2] = static_cast<char>(bad[bad.size() / 2] ^ 1);
  ASSERT_TRUE((*direct)->Command({"SET", k0, bad}).ok());
  restore(0);
  EXPECT_EQ((*tier)->Stats().corrupt_blocks, 1);
  // Truncated.
  ASSERT_TRUE((*direct)->Command({"SET", k0, good.substr(0, 30)}).ok());
  restore(0);
  EXPECT_EQ((*tier)->Stats().corrupt_blocks, 2);
  // Block 1's value under block 0's key: another block.
  ASSERT_TRUE((*direct)
                  ->Command({"SET", k0, (*direct)->Command({"GET", k1})->str})
                  .ok());
  restore(0);
  EXPECT_EQ((*tier)->Stats().foreign_blocks, 1);
  // Back as it was.
  ASSERT_TRUE((*direct)->Command({"SET", k0, good}).ok());
  restore(16);
}

// A stalled server (SIGSTOP): the writer waits on its timeout, Store never
// does: the queue fills and drops, every block is accounted for, and the
// cache's calls return at once.
TEST(RemoteTier, AStalledServerDropsNeverBlocks) {
  auto server = RedisTestServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  RemoteTierOptions o = Options((*server)->url());
  o.queue_blocks = 2;
  o.write_batch = 1;
  auto tier = RemoteTier::Connect(o);
  ASSERT_TRUE(tier.ok());
  auto cache = *KVCache::Create(Config(false));
  ASSERT_TRUE(cache->AttachTier(tier->get(), {.write_through = true}).ok());
  kill((*server)->pid(), SIGSTOP);
  const auto start = std::chrono::steady_clock::now();
  Compute(*cache, *cache->AddSequence(), Prompt(40));  // 10 blocks
  EXPECT_LT(std::chrono::steady_clock::now() - start,
            std::chrono::milliseconds(200));
  kill((*server)->pid(), SIGCONT);
  (*tier)->Flush();
  const RemoteTierStats st = (*tier)->Stats();
  EXPECT_GE(st.queue_drops, 6);
  EXPECT_EQ(st.queue_drops + st.write_errors + st.blocks_written_through, 10);
  ASSERT_TRUE(cache->AttachTier(nullptr, {}).ok());
}

// Blocks still queued when the tier is attached to a cache of another
// shape are written under the keys of the cache that stored them.
TEST(RemoteTier, QueuedBlocksKeepTheirCachesKeys) {
  auto server = RedisTestServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  RemoteTierOptions patient = Options((*server)->url());
  patient.write_timeout = absl::Seconds(5);  // outlasts the stall
  auto tier = RemoteTier::Connect(patient);
  ASSERT_TRUE(tier.ok());
  CacheConfig bf16 = Config(false);
  bf16.dtype = DType::kBF16;        // the same bytes per block, another shape
  kill((*server)->pid(), SIGSTOP);  // nothing is written yet
  {
    auto a = *KVCache::Create(Config(false));
    ASSERT_TRUE(a->AttachTier(tier->get(), {.write_through = true}).ok());
    Compute(*a, *a->AddSequence(), Prompt(16));
    ASSERT_TRUE(a->AttachTier(nullptr, {}).ok());
  }
  auto b = *KVCache::Create(bf16);
  ASSERT_TRUE(b->AttachTier(tier->get(), {}).ok());
  kill((*server)->pid(), SIGCONT);
  (*tier)->Flush();
  EXPECT_EQ(*b->MatchPrefix(*b->AddSequence(), Prompt(16)), 0);
  ASSERT_TRUE(b->AttachTier(nullptr, {}).ok());
  auto again = RemoteTier::Connect(Options((*server)->url()));
  ASSERT_TRUE(again.ok());
  auto c = *KVCache::Create(Config(false));
  ASSERT_TRUE(c->AttachTier(again->get(), {}).ok());
  const SeqId s = *c->AddSequence();
  EXPECT_EQ(*c->MatchPrefix(s, Prompt(16)), 16);
  ExpectComputed(*c, s, 16);
  ASSERT_TRUE(c->AttachTier(nullptr, {}).ok());
}

TEST(RemoteTier, ConnectRefusals) {
  EXPECT_EQ(RemoteTier::Connect(Options("http://x")).status().code(),
            absl::StatusCode::kInvalidArgument);
  const int port = remote::testing::FreeLoopbackPort();
  EXPECT_EQ(
      RemoteTier::Connect(Options("redis://127.0.0.1:" + std::to_string(port)))
          .status()
          .code(),
      absl::StatusCode::kUnavailable);
  auto server = RedisTestServer::Start({"--requirepass", "right"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string url =
      "redis://:wrong@127.0.0.1:" + std::to_string((*server)->port());
  auto refused = RemoteTier::Connect(Options(url));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(refused.status().message(),
              ::testing::Not(::testing::HasSubstr("wrong")));
  RemoteTierOptions zero = Options((*server)->url());
  zero.queue_blocks = 0;
  EXPECT_EQ(RemoteTier::Connect(zero).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvpage
