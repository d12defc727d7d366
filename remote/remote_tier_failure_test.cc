// The Redis tier when its server fails under it: full (maxmemory, evicting
// or refusing writes), stopped, and started again on its port, empty or
// from its append-only file. In every case the cache goes on with what it
// holds, the failures are counted, and a restore attaches exactly the
// blocks the server still has, from the first on, never another's bytes.
#include <signal.h>
#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "gtest/gtest.h"
#include "kvpage/kvpage.h"
#include "kvpage/remote_tier.h"
#include "remote/block_codec.h"
#include "remote/redis_test_server.h"

namespace kvpage {
namespace {

using remote::RedisCommand;
using remote::RedisConnection;
using remote::RedisReply;
using remote::testing::RedisTestServer;

// Blocks of 16 tokens, 8 KiB per layer: a few hundred fill a small server.
constexpr int kLayers = 2, kHeads = 2, kDim = 64, kElems = kHeads * kDim;
constexpr int kBlock = 16;

CacheConfig Config(bool grouped) {
  CacheConfig c{.num_layers = kLayers,
                .num_kv_heads = kHeads,
                .head_dim = kDim,
                .dtype = DType::kF16,
                .block_tokens = kBlock,
                .num_blocks = 512,
                .max_seq_len = 1024};
  c.group_layers = grouped;
  return c;
}

// Prompt `id`: `blocks` full blocks, its own from the first token on.
std::vector<int32_t> Prompt(int id, int64_t blocks) {
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < blocks * kBlock; ++i) {
    ids.push_back(static_cast<int32_t>(id * 100000 + i));
  }
  return ids;
}

// Integers below 2048 in magnitude: exact in f16. Every prompt's bytes are
// its own, so a block attached to the wrong prompt would show.
float Value(int prompt, int layer, int64_t position, int64_t e, bool v) {
  const int64_t x =
      prompt * 7919 + layer * 131 + position * 31 + e * 7 + (v ? 3 : 0);
  return static_cast<float>(x % 2001 - 1000);
}

void Compute(KVCache& cache, SeqId seq, int prompt, int64_t blocks) {
  ASSERT_TRUE(cache.AppendTokens(seq, Prompt(prompt, blocks)).ok());
  const int64_t n = blocks * kBlock;
  std::vector<float> k(static_cast<size_t>(n * kElems)), v(k.size());
  for (int layer = 0; layer < kLayers; ++layer) {
    for (int64_t p = 0; p < n; ++p) {
      for (int64_t e = 0; e < kElems; ++e) {
        k[static_cast<size_t>(p * kElems + e)] =
            Value(prompt, layer, p, e, false);
        v[static_cast<size_t>(p * kElems + e)] =
            Value(prompt, layer, p, e, true);
      }
    }
    ASSERT_TRUE(cache
                    .Update(seq, layer, {.data = k.data(), .tokens = n},
                            {.data = v.data(), .tokens = n}, n)
                    .ok());
  }
}

void ExpectComputed(const KVCache& cache, SeqId seq, int prompt, int64_t n) {
  for (int layer = 0; layer < kLayers; ++layer) {
    const absl::StatusOr<GatheredLayer> g = cache.Gather(seq, layer);
    ASSERT_TRUE(g.ok()) << g.status();
    ASSERT_EQ(static_cast<int64_t>(g->positions.size()), n);
    for (int64_t p = 0; p < n; ++p) {
      for (int64_t e = 0; e < kElems; ++e) {
        ASSERT_EQ(g->k[static_cast<size_t>(p * kElems + e)],
                  Value(prompt, layer, p, e, false))
            << "prompt " << prompt << " layer " << layer << " position " << p;
        ASSERT_EQ(g->v[static_cast<size_t>(p * kElems + e)],
                  Value(prompt, layer, p, e, true))
            << "prompt " << prompt << " layer " << layer << " position " << p;
      }
    }
  }
}

// A sequence that computes prompt `id` in `cache` and goes (its blocks stay
// in the prefix cache; with write-through they are offered to the tier).
void ComputeAndLeave(KVCache& cache, int prompt, int64_t blocks) {
  const absl::StatusOr<SeqId> s = cache.AddSequence();
  ASSERT_TRUE(s.ok());
  Compute(cache, *s, prompt, blocks);
  ASSERT_TRUE(cache.RemoveSequence(*s).ok());
  ASSERT_TRUE(cache.Validate().ok());
}

// Restores prompt `id` into `cache` in a new sequence: the tokens matched
// (the sequence is removed again after its bytes are checked).
int64_t Restore(KVCache& cache, int prompt, int64_t blocks) {
  const absl::StatusOr<SeqId> s = cache.AddSequence();
  EXPECT_TRUE(s.ok()) << s.status();
  if (!s.ok()) return -1;
  const absl::StatusOr<int64_t> matched =
      cache.MatchPrefix(*s, Prompt(prompt, blocks));
  EXPECT_TRUE(matched.ok()) << matched.status();
  if (!matched.ok()) return -1;
  ExpectComputed(cache, *s, prompt, *matched);
  EXPECT_TRUE(cache.RemoveSequence(*s).ok());
  EXPECT_TRUE(cache.Validate().ok());
  return *matched;
}

RemoteTierOptions Options(const std::string& url) {
  return {.url = url,
          .model_id = "test-model",
          .connect_timeout = absl::Milliseconds(300),
          .write_timeout = absl::Milliseconds(300),
          .fetch_timeout = absl::Milliseconds(300),
          .queue_blocks = 1024};  // never drops here: failures are Redis's
}

std::unique_ptr<RedisConnection> Direct(const RedisTestServer& server) {
  absl::StatusOr<std::unique_ptr<RedisConnection>> c =
      RedisConnection::Open(server.endpoint(), {}, {});
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

// How many blocks of prompt `id` the server holds from the first on:
// where a restore must stop. Asked directly, with EXISTS.
int64_t BlocksHeld(RedisConnection& direct, bool grouped, int prompt,
                   int64_t blocks) {
  const CacheConfig config = Config(grouped);
  std::vector<uint64_t> fingerprints;
  if (grouped) {
    fingerprints.push_back(
        remote::BlockFingerprint(config, "test-model", {0, 1}));
  } else {
    for (int layer = 0; layer < kLayers; ++layer) {
      fingerprints.push_back(
          remote::BlockFingerprint(config, "test-model", {layer}));
    }
  }
  const std::vector<int32_t> ids = Prompt(prompt, blocks);
  std::vector<RedisCommand> commands;
  uint64_t hash = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    hash = PrefixBlockHash(
        hash, 0, absl::MakeConstSpan(ids).subspan(b * kBlock, kBlock));
    for (size_t t = 0; t < fingerprints.size(); ++t) {
      commands.push_back({"EXISTS", remote::BlockKey(fingerprints[t], hash,
                                                     static_cast<int>(t))});
    }
  }
  std::vector<RedisReply> replies;
  EXPECT_TRUE(direct.Pipeline(commands, replies).ok());
  EXPECT_EQ(replies.size(), commands.size());
  size_t next = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    for (size_t t = 0; t < fingerprints.size(); ++t, ++next) {
      if (next >= replies.size() || replies[next].integer != 1) return b;
    }
  }
  return blocks;
}

// A field of INFO, e.g. "evicted_keys"; -1 when missing.
int64_t Info(RedisConnection& direct, const std::string& field) {
  absl::StatusOr<RedisReply> info = direct.Command({"INFO", "all"});
  if (!info.ok()) return -1;
  const std::string& text = info->str;
  const size_t at = text.find("\r\n" + field + ":");
  if (at == std::string::npos) return -1;
  const size_t from = at + field.size() + 3;
  int64_t value = -1;
  if (!absl::SimpleAtoi(text.substr(from, text.find("\r\n", from) - from),
                        &value)) {
    return -1;
  }
  return value;
}

constexpr int64_t kPromptBlocks = 10;

// A server at maxmemory evicts what it holds (allkeys-lru: which keys is a
// matter of chance, a one-second LRU clock). The writes succeed; a restore
// stops at the first block evicted, counted as a miss, and what it
// attaches is exact.
TEST(RemoteTierFailure, AFullServerEvictsAndARestoreStopsAtTheFirstGap) {
  constexpr int kPrompts = 30;  // 300 blocks of 16 KiB: about 6 MiB
  auto server = RedisTestServer::Start(
      {"--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto tier = RemoteTier::Connect(Options((*server)->url()));
  ASSERT_TRUE(tier.ok()) << tier.status();
  auto writer = *KVCache::Create(Config(true));
  ASSERT_TRUE(writer->AttachTier(tier->get(), {.write_through = true}).ok());
  for (int p = 0; p < kPrompts; ++p) {
    ComputeAndLeave(*writer, p, kPromptBlocks);
  }
  (*tier)->Flush();
  RemoteTierStats st = (*tier)->Stats();
  EXPECT_EQ(st.blocks_written_through, kPrompts * kPromptBlocks);
  EXPECT_EQ(st.write_errors, 0);
  EXPECT_EQ(st.queue_drops, 0);
  // The fill is over: no more evictions while the restores read (a reply
  // buffer counts towards maxmemory too).
  std::unique_ptr<RedisConnection> direct = Direct(**server);
  ASSERT_NE(direct, nullptr);
  EXPECT_GT(Info(*direct, "evicted_keys"), 0);
  ASSERT_TRUE(direct->Command({"CONFIG", "SET", "maxmemory", "0"}).ok());

  auto reader = *KVCache::Create(Config(true));
  ASSERT_TRUE(reader->AttachTier(tier->get(), {}).ok());
  int64_t held_total = 0, short_prompts = 0;
  for (int p = 0; p < kPrompts; ++p) {
    const int64_t held = BlocksHeld(*direct, true, p, kPromptBlocks);
    EXPECT_EQ(Restore(*reader, p, kPromptBlocks), held * kBlock)
        << "prompt " << p;
    held_total += held;
    short_prompts += held < kPromptBlocks;
  }
  st = (*tier)->Stats();
  EXPECT_EQ(st.blocks_fetched, held_total);
  EXPECT_EQ(st.fetch_calls, kPrompts);
  EXPECT_EQ(st.fetch_misses, short_prompts);
  EXPECT_EQ(st.fetch_errors + st.corrupt_blocks + st.foreign_blocks, 0);
  EXPECT_GT(short_prompts, 0);  // evicted keys end some prompt early
  // About half the keys stay: some prompt keeps its first blocks (all 30
  // losing their first is a chance of about 1e-9).
  EXPECT_GT(held_total, 0);
  ASSERT_TRUE(writer->AttachTier(nullptr, {}).ok());
  ASSERT_TRUE(reader->AttachTier(nullptr, {}).ok());
}

// A server at maxmemory that evicts nothing refuses writes (OOM): counted
// as write errors. What it took before it filled is restored exactly; the
// rest is a miss; the writing cache goes on with everything it holds.
TEST(RemoteTierFailure, AFullServerThatEvictsNothingFailsWrites) {
  constexpr int kPrompts = 20;  // 200 blocks of 8 KiB per layer, about 4 MiB
  auto server = RedisTestServer::Start(
      {"--maxmemory", "3mb", "--maxmemory-policy", "noeviction"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto tier = RemoteTier::Connect(Options((*server)->url()));
  ASSERT_TRUE(tier.ok()) << tier.status();
  auto writer = *KVCache::Create(Config(false));
  ASSERT_TRUE(writer->AttachTier(tier->get(), {.write_through = true}).ok());
  for (int p = 0; p < kPrompts; ++p) {
    ComputeAndLeave(*writer, p, kPromptBlocks);
  }
  (*tier)->Flush();
  RemoteTierStats st = (*tier)->Stats();
  EXPECT_GT(st.write_errors, 0);
  EXPECT_GT(st.blocks_written_through, 0);
  EXPECT_EQ(
      st.write_errors + st.blocks_written_through + st.blocks_written_back,
      kPrompts * kPromptBlocks);
  EXPECT_EQ(st.queue_drops, 0);
  // The writing cache holds every prompt still: matched from its own.
  EXPECT_EQ(Restore(*writer, kPrompts - 1, kPromptBlocks),
            kPromptBlocks * kBlock);

  std::unique_ptr<RedisConnection> direct = Direct(**server);
  ASSERT_NE(direct, nullptr);
  auto reader = *KVCache::Create(Config(false));
  ASSERT_TRUE(reader->AttachTier(tier->get(), {}).ok());
  int64_t held_total = 0, short_prompts = 0;
  for (int p = 0; p < kPrompts; ++p) {
    const int64_t held = BlocksHeld(*direct, false, p, kPromptBlocks);
    EXPECT_EQ(Restore(*reader, p, kPromptBlocks), held * kBlock)
        << "prompt " << p;
    held_total += held;
    short_prompts += held < kPromptBlocks;
  }
  // The first prompts went in before the server filled, the last did not.
  EXPECT_EQ(BlocksHeld(*direct, false, 0, kPromptBlocks), kPromptBlocks);
  EXPECT_EQ(BlocksHeld(*direct, false, kPrompts - 1, kPromptBlocks), 0);
  st = (*tier)->Stats();
  EXPECT_EQ(st.blocks_fetched, held_total);
  EXPECT_EQ(st.fetch_misses, short_prompts);
  EXPECT_EQ(st.fetch_errors + st.corrupt_blocks + st.foreign_blocks, 0);
  ASSERT_TRUE(writer->AttachTier(nullptr, {}).ok());
  ASSERT_TRUE(reader->AttachTier(nullptr, {}).ok());
}

// A temporary directory, removed at the end.
class TempDir {
 public:
  TempDir() {
    char dir[] = "/tmp/kvpage-redis-aof-XXXXXX";
    if (mkdtemp(dir) != nullptr) path_ = dir;
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

constexpr int64_t kSmall = 4;  // blocks of a prompt in the restart tests

// The server is killed under a connected tier: writes fail and fetches
// err, counted, while the cache goes on locally. Started again on its port
// (empty), the tier reconnects by itself: new writes succeed and are
// restored; what was written before the restart is a miss.
TEST(RemoteTierFailure, AServerRestartedEmptyIsReconnected) {
  auto server = RedisTestServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  auto tier = RemoteTier::Connect(Options((*server)->url()));
  ASSERT_TRUE(tier.ok()) << tier.status();
  auto writer = *KVCache::Create(Config(false));
  ASSERT_TRUE(writer->AttachTier(tier->get(), {.write_through = true}).ok());
  auto reader = *KVCache::Create(Config(false));
  ASSERT_TRUE(reader->AttachTier(tier->get(), {}).ok());
  ComputeAndLeave(*writer, 0, kSmall);
  (*tier)->Flush();
  EXPECT_EQ((*tier)->Stats().blocks_written_through, kSmall);

  (*server)->Stop(SIGKILL);
  ComputeAndLeave(*writer, 1, kSmall);  // Update goes on
  (*tier)->Flush();
  RemoteTierStats st = (*tier)->Stats();
  EXPECT_EQ(st.write_errors, kSmall);
  EXPECT_EQ(st.blocks_written_through, kSmall);
  EXPECT_EQ(Restore(*reader, 0, kSmall), 0);  // the server is gone
  EXPECT_EQ((*tier)->Stats().fetch_errors, 1);
  EXPECT_EQ(Restore(*reader, 0, kSmall), 0);  // and still is
  EXPECT_EQ((*tier)->Stats().fetch_errors, 2);
  // The writing cache matches both prompts from what it holds.
  EXPECT_EQ(Restore(*writer, 0, kSmall), kSmall * kBlock);
  EXPECT_EQ(Restore(*writer, 1, kSmall), kSmall * kBlock);

  auto again = RedisTestServer::Start({}, port);
  ASSERT_TRUE(again.ok()) << again.status();
  ComputeAndLeave(*writer, 2, kSmall);
  (*tier)->Flush();
  st = (*tier)->Stats();
  EXPECT_EQ(st.blocks_written_through, 2 * kSmall);
  EXPECT_EQ(st.write_errors, kSmall);
  EXPECT_EQ(Restore(*reader, 2, kSmall), kSmall * kBlock);
  EXPECT_EQ(Restore(*reader, 0, kSmall), 0);  // written before: gone
  st = (*tier)->Stats();
  EXPECT_EQ(st.fetch_errors, 2);
  EXPECT_EQ(st.fetch_misses, 1);
  EXPECT_EQ(st.blocks_fetched, kSmall);
  // Another process restores what was written after the restart.
  auto other_tier = RemoteTier::Connect(Options((*again)->url()));
  ASSERT_TRUE(other_tier.ok()) << other_tier.status();
  auto other = *KVCache::Create(Config(false));
  ASSERT_TRUE(other->AttachTier(other_tier->get(), {}).ok());
  EXPECT_EQ(Restore(*other, 2, kSmall), kSmall * kBlock);
  ASSERT_TRUE(writer->AttachTier(nullptr, {}).ok());
  ASSERT_TRUE(reader->AttachTier(nullptr, {}).ok());
  ASSERT_TRUE(other->AttachTier(nullptr, {}).ok());
}

// A server with an append-only file is killed and started again between
// two calls of the tier: the tier's connections are to the old process,
// yet the next write and the next fetch succeed (a connection the server
// closed while idle is opened again and the call sent once more), and the
// blocks written before the restart are restored from the file.
TEST(RemoteTierFailure, AServerRestartedFromItsAppendOnlyFileKeepsItsBlocks) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::vector<std::string> aof = {
      "--dir", dir.path(), "--appendonly", "yes", "--appendfsync", "always"};
  auto server = RedisTestServer::Start(aof);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  auto tier = RemoteTier::Connect(Options((*server)->url()));
  ASSERT_TRUE(tier.ok()) << tier.status();
  auto writer = *KVCache::Create(Config(false));
  ASSERT_TRUE(writer->AttachTier(tier->get(), {.write_through = true}).ok());
  ComputeAndLeave(*writer, 0, kSmall);
  (*tier)->Flush();
  ASSERT_EQ((*tier)->Stats().blocks_written_through, kSmall);
  auto reader = *KVCache::Create(Config(false));
  ASSERT_TRUE(reader->AttachTier(tier->get(), {}).ok());
  EXPECT_EQ(Restore(*reader, 0, kSmall), kSmall * kBlock);  // in use

  (*server)->Stop(SIGKILL);
  auto again = RedisTestServer::Start(aof, port);
  ASSERT_TRUE(again.ok()) << again.status();
  auto fresh = *KVCache::Create(Config(false));
  ASSERT_TRUE(fresh->AttachTier(tier->get(), {}).ok());
  EXPECT_EQ(Restore(*fresh, 0, kSmall), kSmall * kBlock);
  ComputeAndLeave(*writer, 1, kSmall);
  (*tier)->Flush();
  RemoteTierStats st = (*tier)->Stats();
  EXPECT_EQ(st.write_errors, 0);
  EXPECT_EQ(st.blocks_written_through, 2 * kSmall);
  EXPECT_EQ(st.fetch_errors, 0);
  EXPECT_EQ(st.blocks_fetched, 2 * kSmall);
  EXPECT_EQ(Restore(*fresh, 1, kSmall), kSmall * kBlock);
  ASSERT_TRUE(writer->AttachTier(nullptr, {}).ok());
  ASSERT_TRUE(reader->AttachTier(nullptr, {}).ok());
  ASSERT_TRUE(fresh->AttachTier(nullptr, {}).ok());
}

}  // namespace
}  // namespace kvpage
