// Tests of `kvpage-stress --remote`: the paged shards, one Redis tier each,
// share a redis-server and a Redis Cluster started here. A run writes its
// blocks (through, or back when its pool is too small); a second run with
// the same model id (a fleet started after the first has gone) restores
// them from the tier and verifies every token; a byte flipped in a fetched
// block fails the run; a server that cannot be used is bad usage, before
// any backend runs. Built when the Redis tier is (KVPAGE_BUILD_REMOTE).
#include <algorithm>
#include <string>

#include "gtest/gtest.h"
#include "remote/redis_test_server.h"
#include "tools/stress/stress_run.h"

namespace kvpage::stress {
namespace {

using remote::testing::FreeLoopbackPort;
using remote::testing::RedisTestCluster;
using remote::testing::RedisTestServer;

// A tiny model, two shards, a shared system prompt of 4 blocks.
constexpr char kRemoteWorkload[] =
    "--model tiny --requests 16 --concurrency 8 --max-len 256 --threads 2 "
    "--pool-gib 0.05 --shared-prefix-fraction 0.5 --shared-prefix-tokens 64 "
    "--backend paged --check-every 8 --quiet --seed 5";
std::string RemoteRun() { return std::string(kRemoteWorkload) + " --json"; }

const nlohmann::json& Tier(const RunResult& r) {
  return r.json["backends"][0]["remote_tier"];
}

int64_t Count(const RunResult& r, const char* key) {
  return Tier(r)[key].get<int64_t>();
}

void ExpectVerified(const RunResult& r) {
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ExpectAllVerifiedRequests(r, 16);
  EXPECT_EQ(Tier(r)["shards"], 2);
  EXPECT_EQ(Count(r, "corrupt_blocks") + Count(r, "foreign_blocks"), 0);
}

// The first run writes every published block through; the second, with
// the same model id, finds them and restores each shard's prompts from the
// tier; a byte flipped in the first block a shard fetches is caught.
void WriteThenRestore(const std::string& url, const std::string& model_id) {
  const std::string args =
      RemoteRun() + " --remote " + url + " --remote-model-id " + model_id;
  const RunResult first = RunStress(args + " --remote-write-through");
  ExpectVerified(first);
  EXPECT_EQ(first.json["schema_version"], 3);
  EXPECT_EQ(first.json["run"]["remote_model_id"], model_id);
  EXPECT_EQ(first.json["run"]["remote_write_through"], true);
  EXPECT_GT(Count(first, "blocks_written_through"), 0);
  EXPECT_EQ(Count(first, "write_errors"), 0);
  EXPECT_GT(Count(first, "bytes_written"), 0);
  // Every admission asks the tier where the shard's own cache ends.
  EXPECT_GT(Count(first, "fetch_calls"), 0);
  EXPECT_EQ(Tier(first)["fetch_p99_us_by_shard"].size(), 2u);

  // A generous deadline: a loaded machine must not cut the fetches short.
  const RunResult second = RunStress(args + " --remote-fetch-timeout-ms 5000");
  ExpectVerified(second);
  EXPECT_EQ(second.json["run"]["remote_fetch_timeout_ms"], 5000);
  EXPECT_EQ(first.json["run"]["remote_fetch_timeout_ms"], 0);  // default
  EXPECT_GT(Count(second, "blocks_fetched"), 0);
  EXPECT_GT(Count(second, "bytes_fetched"), 0);
  EXPECT_GT(Count(second, "tokens_from_tier"), 0);
  EXPECT_LE(Count(second, "tokens_from_tier"),
            second.json["backends"][0]["prefix_tokens_reused"].get<int64_t>());
  EXPECT_GT(Tier(second)["fetch_p99_us_max"].get<double>(), 0);
  // Fewer prompt tokens computed than the first run did.
  EXPECT_LT(second.json["backends"][0]["prompt_tokens_computed"],
            first.json["backends"][0]["prompt_tokens_computed"]);

  const RunResult corrupted = RunStress(args + " --inject-tier-corruption");
  EXPECT_EQ(corrupted.exit_code, 1) << corrupted.err;
  EXPECT_NE(corrupted.err.find("flipped a byte of block"), std::string::npos)
      << corrupted.err;
  EXPECT_NE(corrupted.err.find("verification failed on the paged backend"),
            std::string::npos)
      << corrupted.err;
}

TEST(StressRemoteTest, ShardsShareOneServer) {
  auto server = RedisTestServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  WriteThenRestore((*server)->url(), "stress-test-server");
}

TEST(StressRemoteTest, ShardsShareOneCluster) {
  auto cluster = RedisTestCluster::Start(3);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  WriteThenRestore((*cluster)->url(), "stress-test-cluster");
}

// A pool too small for the run: the prefix cache evicts, the evicted blocks
// are written back (no write-through), and a second run restores them.
TEST(StressRemoteTest, EvictedBlocksAreWrittenBack) {
  auto cluster = RedisTestCluster::Start(3);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const std::string args = RemoteRun() + " --pool-gib 0.0006 --remote " +
                           (*cluster)->url() +
                           " --remote-model-id stress-test-write-back";
  const RunResult first = RunStress(args);
  ExpectVerified(first);
  EXPECT_EQ(first.json["run"]["remote_write_through"], false);
  EXPECT_GT(Count(first, "blocks_written_back"), 0);
  EXPECT_EQ(Count(first, "blocks_written_through"), 0);
  // A generous deadline: a loaded machine must not cut the fetches short.
  const RunResult second = RunStress(args + " --remote-fetch-timeout-ms 5000");
  ExpectVerified(second);
  EXPECT_EQ(second.json["run"]["remote_fetch_timeout_ms"], 5000);
  EXPECT_EQ(first.json["run"]["remote_fetch_timeout_ms"], 0);  // default
  EXPECT_GT(Count(second, "blocks_fetched"), 0);
  EXPECT_GT(Count(second, "tokens_from_tier"), 0);
}

// Without --remote-model-id each run has a model id of its own.
TEST(StressRemoteTest, RunsAreIndependentUnlessAModelIdIsGiven) {
  auto server = RedisTestServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string args = RemoteRun() + " --remote " + (*server)->url();
  const RunResult a = RunStress(args), b = RunStress(args);
  ExpectVerified(a);
  ExpectVerified(b);
  const std::string id = a.json["run"]["remote_model_id"];
  EXPECT_NE(id, "");
  EXPECT_NE(id, b.json["run"]["remote_model_id"].get<std::string>());
  // The table says where the tier is and what it did.
  const RunResult table =
      RunStress(std::string(kRemoteWorkload) + " --remote " + (*server)->url() +
                " --remote-write-through --seed 7");
  ASSERT_EQ(table.exit_code, 0) << table.err;
  for (const std::string& line :
       {"remote tier " + (*server)->url() +
            ", one per paged shard, "
            "write-through, fetch timeout 50 ms (the default), model id "
            "kvpage-stress-seed7-",
        std::string("remote tier (summed over shards)"),
        std::string("blocks written back / through"),
        std::string("prompt tokens restored from the tier")}) {
    EXPECT_NE(table.out.find(line), std::string::npos) << line << "\n"
                                                       << table.out;
  }
}

// Several system prompts, a pool that cannot keep them all: each shard
// meets prompts another one computed and wrote through, and prompts it
// evicted itself. Whether a block is written before another shard asks
// for it is a race the run does not fix; every token verifies either way.
TEST(StressRemoteTest, SeveralSystemPromptsOverOneTier) {
  auto server = RedisTestServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  const RunResult r =
      RunStress(RemoteRun() +
                " --requests 32 --shared-prefix-fraction 0.9 "
                "--shared-prefixes 6 --pool-gib 0.0006 --remote " +
                (*server)->url() + " --remote-write-through");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ExpectAllVerifiedRequests(r, 32);
  EXPECT_EQ(r.json["run"]["shared_prefixes"], 6);
  EXPECT_GT(Count(r, "blocks_written_through"), 0);
  EXPECT_EQ(Count(r, "corrupt_blocks") + Count(r, "foreign_blocks"), 0);
}

// Bad usage is exit code 2, one line on stderr, and no report.
void ExpectRefused(const RunResult& r, const std::string& names) {
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find(names), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.out, "");
}

TEST(StressRemoteTest, AServerThatCannotBeUsedExitsTwoBeforeRunning) {
  const std::string nobody =
      "redis://127.0.0.1:" + std::to_string(FreeLoopbackPort());
  ExpectRefused(RunStress(RemoteRun() + " --remote " + nobody),
                "--remote " + nobody + ": ");
  ExpectRefused(RunStress(RemoteRun() + " --remote http://x"),
                "--remote: Redis URL");

  auto server = RedisTestServer::Start({"--requirepass", "s3cret-pw"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string port = std::to_string((*server)->port());
  const RunResult wrong =
      RunStress(RemoteRun() + " --remote redis://:wrong-pw@127.0.0.1:" + port);
  ExpectRefused(wrong, "--remote redis://:***@127.0.0.1:" + port + ": ");
  EXPECT_EQ(wrong.err.find("wrong-pw"), std::string::npos) << wrong.err;
  // The right password runs.
  const RunResult right =
      RunStress(RemoteRun() + " --remote redis://:s3cret-pw@127.0.0.1:" + port);
  ExpectVerified(right);
  EXPECT_EQ(right.json["run"]["remote"], "redis://:***@127.0.0.1:" + port);
  EXPECT_EQ(right.out.find("s3cret-pw"), std::string::npos);
}

TEST(StressRemoteTest, RemoteFlagsGoTogether) {
  const std::string url = "redis://127.0.0.1:1";  // never reached
  ExpectRefused(
      RunStress(RemoteRun() + " --backend paged,contiguous --remote " + url),
      "--backend paged");
  ExpectRefused(
      RunStress(RemoteRun() + " --shared-prefix-fraction 0 --remote " + url),
      "--shared-prefix-fraction");
  for (const char* flag :
       {"--remote-write-through", "--remote-model-id x",
        "--remote-fetch-timeout-ms 200", "--inject-tier-corruption"}) {
    ExpectRefused(RunStress(RemoteRun() + " " + flag), "needs --remote");
  }
}

}  // namespace
}  // namespace kvpage::stress
