// kvpage-share: conversations served by one engine instance, then by
// another that restores their histories from a second tier. The library
// with an in-memory tier (exact counts, verification that can fail), and
// the tool as two processes, one after the other, against a Redis Cluster
// the test starts: the demonstration the Redis tier promises.
#include "tools/share/share.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "remote/redis_test_server.h"
#include "tests/cli_run.h"
#include "tests/map_tier.h"

namespace kvpage::share {
namespace {

using kvpage::testing::MapTier;
using kvpage::testing::RunCli;
using ::testing::HasSubstr;
using ::testing::Not;

// A small shape: 3 layers, 20-token system prompt, 9-token messages and
// 7-token answers in blocks of 4.
ShareOptions Small() {
  return {.num_layers = 3,
          .num_kv_heads = 2,
          .head_dim = 4,
          .block_tokens = 4,
          .conversations = 3,
          .system_tokens = 20,
          .message_tokens = 9,
          .answer_tokens = 7,
          .first_turn = 1,
          .last_turn = 2,
          .chunk_tokens = 8};
}

// Tokens of turn `turn`'s prompt that the blocks written by turns before
// it cover: the full blocks of the last turn's prompt and answer.
int64_t Restorable(const ShareOptions& o, int turn) {
  const int64_t before =
      o.system_tokens + (turn - 1) * (o.message_tokens + o.answer_tokens);
  return before / o.block_tokens * o.block_tokens;
}

TEST(Share, PromptsExtendTheTurnBefore) {
  const ShareOptions o = Small();
  const std::vector<int32_t> one = Prompt(o, 0, 1), two = Prompt(o, 0, 2);
  ASSERT_EQ(one.size(), 29u);
  ASSERT_EQ(two.size(), 20u + 9 + 7 + 9);
  EXPECT_TRUE(std::equal(one.begin(), one.end(), two.begin()));
  // The system prompt is shared; the messages are the conversation's.
  const std::vector<int32_t> other = Prompt(o, 1, 1);
  EXPECT_TRUE(std::equal(one.begin(), one.begin() + 20, other.begin()));
  EXPECT_FALSE(std::equal(one.begin() + 20, one.end(), other.begin() + 20));
}

TEST(Share, ASecondInstanceRestoresTheHistoriesAndComputesOnlyTheRest) {
  MapTier tier;
  ShareOptions o = Small();
  absl::StatusOr<ShareResult> a = Serve(o, &tier);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->matched_tier, 0);  // the tier was empty
  EXPECT_GT(tier.written_through, 0);

  o.first_turn = o.last_turn = 3;
  absl::StatusOr<ShareResult> b = Serve(o, &tier);  // a fresh cache
  ASSERT_TRUE(b.ok()) << b.status();
  const int64_t prompt = static_cast<int64_t>(Prompt(o, 0, 3).size());
  const int64_t restorable = Restorable(o, 3);
  EXPECT_EQ(b->requests, 3);
  EXPECT_EQ(b->prompt_tokens, 3 * prompt);
  // The first conversation restores its whole history; the others hold
  // the system prompt's full blocks by then and restore the rest.
  const int64_t system = o.system_tokens / o.block_tokens * o.block_tokens;
  EXPECT_EQ(b->matched_local, 2 * system);
  EXPECT_EQ(b->matched_tier, 3 * restorable - 2 * system);
  EXPECT_EQ(b->computed, 3 * (prompt - restorable));
  EXPECT_EQ(b->answer_tokens, 3 * o.answer_tokens);
  EXPECT_EQ(b->tokens_verified, 3 * restorable * o.num_layers);
  EXPECT_EQ(b->rewritten, b->matched_tier);
}

TEST(Share, WithoutATierNothingIsRestoredOrRewritten) {
  ShareOptions o = Small();
  o.first_turn = 1;
  o.last_turn = 3;
  absl::StatusOr<ShareResult> r = Serve(o, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->matched_tier, 0);
  EXPECT_EQ(r->rewritten, 0);
  // The cache's own blocks: each turn finds the one before it.
  EXPECT_GT(r->matched_local, 0);
}

TEST(Share, ARestoredBlockThatDiffersFailsTheRun) {
  MapTier tier;
  ShareOptions o = Small();
  ASSERT_TRUE(Serve(o, &tier).ok());
  tier.flip = true;  // every fetched block's first byte
  o.first_turn = o.last_turn = 3;
  absl::StatusOr<ShareResult> b = Serve(o, &tier);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(b.status().message(), HasSubstr("other keys or values"));
  o.verify = false;  // unverified, the same run passes
  EXPECT_TRUE(Serve(o, &tier).ok());
}

TEST(Share, OptionsOutOfRangeAreRefused) {
  ShareOptions o = Small();
  o.first_turn = 3;
  o.last_turn = 2;
  absl::StatusOr<ShareResult> r = Serve(o, nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  o = Small();
  o.num_layers = 0;  // a cache kvpage cannot create
  EXPECT_EQ(Serve(o, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

std::string Flags(const ShareOptions& o) {
  return absl::StrFormat(
      "--layers %d --kv-heads %d --head-dim %d --block-tokens %d "
      "--conversations %d --system-tokens %d --message-tokens %d "
      "--answer-tokens %d --chunk %d --json",
      o.num_layers, o.num_kv_heads, o.head_dim, o.block_tokens, o.conversations,
      o.system_tokens, o.message_tokens, o.answer_tokens, o.chunk_tokens);
}

nlohmann::json Parse(const kvpage::testing::CliRun& r) {
  return nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
}

// Process A serves turns 1-2 and exits; process B, started afterwards,
// serves turn 3 from the histories A left in the cluster.
TEST(ShareCli, TwoProcessesShareHistoriesThroughACluster) {
  auto cluster = remote::testing::RedisTestCluster::Start();
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const ShareOptions o = Small();
  const std::string common =
      Flags(o) + " --url " + (*cluster)->url() + " --model-id share-test";
  const auto a = RunCli(KVPAGE_SHARE_BINARY, common + " --turns 1-2");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  const nlohmann::json ja = Parse(a);
  ASSERT_FALSE(ja.is_discarded()) << a.out;
  EXPECT_EQ(ja["matched_tier"], 0);
  // Keys and values, f16, every layer.
  EXPECT_EQ(ja["token_bytes"],
            2 * 2 * o.num_layers * o.num_kv_heads * o.head_dim);
  EXPECT_GT(ja["tier"]["blocks_written_through"].get<int64_t>(), 0);
  EXPECT_EQ(ja["tier"]["queue_drops"], 0);

  const auto b = RunCli(KVPAGE_SHARE_BINARY, common + " --turns 3");
  ASSERT_EQ(b.exit_code, 0) << b.err;
  const nlohmann::json jb = Parse(b);
  ASSERT_FALSE(jb.is_discarded()) << b.out;
  const int64_t restorable = Restorable(o, 3);
  const int64_t system = o.system_tokens / o.block_tokens * o.block_tokens;
  EXPECT_EQ(jb["matched_tier"], 3 * restorable - 2 * system);
  EXPECT_EQ(jb["tokens_verified"], 3 * restorable * o.num_layers);
  EXPECT_EQ(jb["rewritten"], jb["matched_tier"]);
  // Every restored block came from Redis, one value per layer.
  EXPECT_EQ(jb["tier"]["blocks_fetched"].get<int64_t>() * o.block_tokens,
            jb["matched_tier"].get<int64_t>());
  EXPECT_GT(jb["tier"]["bytes_fetched"].get<int64_t>(), 0);

  // Another model's instance finds none of it.
  const auto c =
      RunCli(KVPAGE_SHARE_BINARY, Flags(o) + " --url " + (*cluster)->url() +
                                      " --model-id another-model --turns 3");
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(Parse(c)["matched_tier"], 0);
}

TEST(ShareCli, AnUnusableServerIsOneLineAndExitTwo) {
  const int port = remote::testing::FreeLoopbackPort();
  const auto down =
      RunCli(KVPAGE_SHARE_BINARY,
             absl::StrFormat("--url redis://127.0.0.1:%d --turns 1", port));
  EXPECT_EQ(down.exit_code, 2);
  EXPECT_THAT(down.err, HasSubstr("kvpage-share: "));
  EXPECT_EQ(std::count(down.err.begin(), down.err.end(), '\n'), 1);

  auto server = remote::testing::RedisTestServer::Start(
      {"--requirepass", "right-secret"});
  ASSERT_TRUE(server.ok()) << server.status();
  const auto wrong = RunCli(
      KVPAGE_SHARE_BINARY,
      absl::StrFormat("--url redis://:wrong-secret@127.0.0.1:%d --turns 1",
                      (*server)->port()));
  EXPECT_EQ(wrong.exit_code, 2);
  EXPECT_THAT(wrong.err, Not(HasSubstr("wrong-secret")));
  EXPECT_EQ(std::count(wrong.err.begin(), wrong.err.end(), '\n'), 1);

  const auto turns =
      RunCli(KVPAGE_SHARE_BINARY, "--url redis://127.0.0.1:1 --turns 3-2");
  EXPECT_EQ(turns.exit_code, 2);
  EXPECT_THAT(turns.err, HasSubstr("--turns"));
}

}  // namespace
}  // namespace kvpage::share
