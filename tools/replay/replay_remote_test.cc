// kvpage-replay --remote against redis-server (Debian's), started here on a
// free loopback port: for a pool of 1/8 of the trace's working set, the
// runs with the Redis tier hit more than the runs without and read back
// exactly what was computed (--verify); every run starts from an empty
// store; a server it cannot use stops the tool before anything is
// replayed, without printing the password. Built with KVPAGE_BUILD_REMOTE.
#include <algorithm>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "remote/redis_test_server.h"
#include "tests/cli_run.h"
#include "tools/replay/trace.h"

namespace kvpage::replay {
namespace {

using ::kvpage::remote::testing::FreeLoopbackPort;
using ::kvpage::remote::testing::RedisTestServer;
using ::kvpage::testing::CliRun;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

CliRun RunReplay(const std::string& args) {
  return kvpage::testing::RunCli(KVPAGE_REPLAY_BINARY, args);
}

std::string WriteTraceFile(const std::string& name,
                           const std::vector<TraceRequest>& trace) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream out(path);
  WriteTrace(trace, out);
  return path;
}

nlohmann::json ParseJson(const CliRun& r) {
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << r.out;
  return j;
}

TEST(ReplayRemoteTest, ASmallPoolHitsMoreWithTheTierAndReadsWhatWasComputed) {
  absl::StatusOr<std::unique_ptr<RedisTestServer>> server =
      RedisTestServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<std::vector<TraceRequest>> trace =
      GenerateTrace({.requests = 80,
                     .trace_block_tokens = 64,
                     .system_prompts = 3,
                     .system_prompt_tokens_max = 256,
                     .max_turns = 5,
                     .user_tokens_max = 160,
                     .output_tokens_max = 40,
                     .mean_gap_ms = 50,
                     .think_time_ms = 400,
                     .seed = 3});
  ASSERT_TRUE(trace.ok()) << trace.status();
  const std::string path = WriteTraceFile("replay_remote.jsonl", *trace);
  // The default pools: 1/8, 1/4, 1/2 and all of the working set. A queue
  // that holds every block the runs evict: no drops to reason about.
  const CliRun r = RunReplay(
      "run --trace " + path +
      " --trace-block-tokens 64 --layers 2 --concurrency 4 --verify --json "
      "--remote-queue-blocks 1000000 --remote " +
      (*server)->url());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = ParseJson(r);
  EXPECT_EQ(j["schema_version"], 2);
  EXPECT_EQ(j["remote"]["url"], (*server)->url());
  EXPECT_EQ(j["remote"]["write_through"], false);
  const std::string model_id = j["remote"]["model_id"];
  EXPECT_THAT(model_id, StartsWith("kvpage-replay/replay-"));
  ASSERT_EQ(j["runs"].size(), 4u);
  const nlohmann::json& small = j["runs"][0];
  ASSERT_EQ(small["pool_blocks"], j["footprint_blocks"].get<int64_t>() / 8)
      << "the largest request is above 1/8 of the working set";
  const nlohmann::json& tier = small["tier"];
  EXPECT_EQ(
      tier["model_id"],
      absl::StrCat(model_id, "/pool=", small["pool_blocks"].dump(), "/run=0"));
  EXPECT_EQ(tier["requests"], 80);
  EXPECT_GT(tier["token_hit_rate"].get<double>(),
            small["token_hit_rate"].get<double>());
  EXPECT_GT(tier["block_hit_rate"].get<double>(),
            small["block_hit_rate"].get<double>());
  EXPECT_GT(tier["blocks_fetched"].get<int64_t>(), 0);
  EXPECT_EQ(tier["tokens_fetched"].get<int64_t>(),
            tier["blocks_fetched"].get<int64_t>() * 16);
  const nlohmann::json& stats = tier["remote"];
  EXPECT_GT(stats["blocks_written_back"].get<int64_t>(), 0);
  EXPECT_EQ(stats["blocks_written_through"], 0);
  EXPECT_EQ(stats["queue_drops"], 0);
  // (A fetch may time out on a loaded machine: fetch_errors is not
  // asserted.)
  EXPECT_EQ(stats["corrupt_blocks"], 0);
  EXPECT_EQ(stats["foreign_blocks"], 0);
  // What the tier handed over, the cache attached.
  EXPECT_EQ(stats["blocks_fetched"], tier["blocks_fetched"]);
  EXPECT_EQ(small["blocks_fetched"], 0);

  // The table: both hit rates side by side, and the tier's counts.
  const CliRun text = RunReplay(
      "run --trace " + path +
      " --trace-block-tokens 64 --layers 2 --write-through --pool-blocks " +
      small["pool_blocks"].dump() + " --remote " + (*server)->url());
  ASSERT_EQ(text.exit_code, 0) << text.err;
  for (const char* column :
       {"token_hit", "tier_token_hit", "tier_block_hit", "blocks_fetched",
        "written_back", "written_through", "queue_drops", "fetch_p99_us",
        "write-back and write-through"}) {
    EXPECT_THAT(text.out, HasSubstr(column));
  }
}

// Requests that share nothing: a run that starts from an empty store
// matches nothing, though the runs before it (the same pool size, and an
// earlier invocation) wrote their blocks back.
TEST(ReplayRemoteTest, EveryRunStartsFromAnEmptyStore) {
  absl::StatusOr<std::unique_ptr<RedisTestServer>> server =
      RedisTestServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  std::vector<TraceRequest> trace(12);
  for (size_t i = 0; i < trace.size(); ++i) {
    trace[i] = {.timestamp = static_cast<double>(i),
                .input_length = 128,
                .output_length = 4,
                .hash_ids = {static_cast<int64_t>(2 * i),
                             static_cast<int64_t>(2 * i + 1)}};
  }
  const std::string path = WriteTraceFile("replay_distinct.jsonl", trace);
  const std::string args =
      "run --trace " + path +
      " --trace-block-tokens 64 --layers 1 --pool-blocks 20,20 --json "
      "--remote-model-id engine-a --remote " +
      (*server)->url();
  std::set<std::string> model_ids;
  for (int invocation = 0; invocation < 2; ++invocation) {
    const CliRun r = RunReplay(args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const nlohmann::json j = ParseJson(r);
    for (const nlohmann::json& run : j["runs"]) {
      const nlohmann::json& tier = run["tier"];
      EXPECT_EQ(tier["tokens_matched"], 0) << tier["model_id"];
      // Every request asked the tier, and got nothing.
      EXPECT_EQ(tier["remote"]["fetch_calls"], 12) << tier["model_id"];
      EXPECT_EQ(tier["remote"]["blocks_fetched"], 0) << tier["model_id"];
      EXPECT_GT(tier["remote"]["blocks_written_back"].get<int64_t>(), 0);
      const std::string id = tier["model_id"];
      EXPECT_THAT(id, StartsWith("engine-a/replay-"));
      model_ids.insert(id);
    }
  }
  EXPECT_EQ(model_ids.size(), 4u);
}

TEST(ReplayRemoteTest, AServerItCannotUseIsExitTwoWithNothingReplayed) {
  const int port = FreeLoopbackPort();
  ASSERT_GT(port, 0);
  const CliRun unreachable = RunReplay(
      absl::StrCat("run --synthetic 10 --remote redis://127.0.0.1:", port));
  EXPECT_EQ(unreachable.exit_code, 2);
  EXPECT_EQ(unreachable.out, "");
  EXPECT_EQ(std::count(unreachable.err.begin(), unreachable.err.end(), '\n'), 1)
      << unreachable.err;
  EXPECT_THAT(
      unreachable.err,
      HasSubstr(absl::StrCat("kvpage-replay: --remote: Redis 127.0.0.1:", port,
                             ": cannot connect")));

  absl::StatusOr<std::unique_ptr<RedisTestServer>> server =
      RedisTestServer::Start({"--requirepass", "the-right-one"});
  ASSERT_TRUE(server.ok()) << server.status();
  const CliRun refused = RunReplay(absl::StrCat(
      "run --synthetic 10 --remote redis://:not-the-password@127.0.0.1:",
      (*server)->port()));
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_EQ(refused.out, "");
  EXPECT_EQ(std::count(refused.err.begin(), refused.err.end(), '\n'), 1)
      << refused.err;
  EXPECT_THAT(refused.err,
              HasSubstr("kvpage-replay: --remote: Redis 127.0.0.1:"));
  EXPECT_THAT(refused.err, HasSubstr("AUTH refused"));
  EXPECT_THAT(refused.err, Not(HasSubstr("not-the-password")));
  // The right password: the replay runs, and the report shows the URL
  // without it.
  const CliRun ok = RunReplay(
      absl::StrCat("run --synthetic 10 --pool-blocks 500 --json --remote "
                   "redis://:the-right-one@127.0.0.1:",
                   (*server)->port()));
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(ParseJson(ok)["remote"]["url"],
            absl::StrCat("redis://:***@127.0.0.1:", (*server)->port()));
  EXPECT_THAT(ok.out, Not(HasSubstr("the-right-one")));
}

}  // namespace
}  // namespace kvpage::replay
