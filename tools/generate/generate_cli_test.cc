// Tests of kvpage-generate's command line: what it prints, its JSON, its
// subcommands, and bad input: exit code 2 and one line naming what is wrong.
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli_run.h"

namespace kvpage::generate {
namespace {

using ::testing::HasSubstr;

using CliResult = testing::CliRun;

CliResult RunGenerate(const std::string& args) {
  return testing::RunCli(KVPAGE_GENERATE_BINARY, args);
}

void ExpectUsageError(const CliResult& r, const std::string& says) {
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr(says));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.out, "");
}

TEST(GenerateCli, PrintsTheGreedyIdsOfTheShippedModel) {
  const CliResult r = RunGenerate("--steps 10");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("request 0 sample 0: 461 461 401 401 401 461 "
                               "378 455 473 456\n"));
  EXPECT_EQ(r.err, "");  // no progress line when stderr is no terminal
}

TEST(GenerateCli, JsonHasIdsStepSummariesAndStatistics) {
  const CliResult r = RunGenerate(
      "--steps 40 --samples 2 --temperature 1 --speculate 3 --policy "
      "sliding-window --window 32 --sinks 4 --compress int8 --hot-tokens 16 "
      "--dtype bf16 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["schema_version"], 1);
  ASSERT_EQ(j["samples"].size(), 2u);
  for (const auto& s : j["samples"]) {
    EXPECT_EQ(s["tokens"].size(), 40u);
    ASSERT_EQ(s["steps"].size(), 40u);
    EXPECT_LE(s["steps"][0]["logprob"].get<double>(), 0.0);
    EXPECT_GT(s["steps"][0]["top_prob"].get<double>(), 0.0);
  }
  EXPECT_EQ(j["generated_tokens"], 80);
  EXPECT_GT(j["stats"]["blocks_total"].get<int64_t>(), 0);
  EXPECT_GT(j["stats"]["evictions"].get<int64_t>(), 0);
  EXPECT_EQ(j["stats"]["sequences"], 2);
}

TEST(GenerateCli, BadUsageExitsTwoWithOneLine) {
  ExpectUsageError(RunGenerate("--steps 0"), "--steps");
  ExpectUsageError(RunGenerate("--prompt '1 512'"), "512 is not a token id");
  ExpectUsageError(RunGenerate("--prompt 'one'"), "--prompt");
  ExpectUsageError(RunGenerate("--prompt ' , '"), "no token ids");
  ExpectUsageError(RunGenerate("--policy nope"), "--policy");
  ExpectUsageError(RunGenerate("--compress int8 --group-size 3"), "group_size");
  ExpectUsageError(RunGenerate("--policy sliding-window --window 4 --sinks 4"),
                   "sink_tokens");
  ExpectUsageError(RunGenerate("--model /nonexistent/m.bin"),
                   "/nonexistent/m.bin");
  ExpectUsageError(RunGenerate("--temperature nan"), "--temperature");
  ExpectUsageError(RunGenerate("speed --batches 0"), "--batches");
  ExpectUsageError(RunGenerate("quality --length 1"), "--length");
}

TEST(GenerateCli, AFileThatIsNotACheckpointExitsTwo) {
  const std::string path = ::testing::TempDir() + "/generate_truncated.bin";
  {
    std::ifstream in(KVPAGE_TEST_MODEL, std::ios::binary);
    std::string bytes{std::istreambuf_iterator<char>(in), {}};
    bytes.resize(bytes.size() / 2);
    std::ofstream(path, std::ios::binary) << bytes;
  }
  ExpectUsageError(RunGenerate("--model " + path), "truncated");
  ExpectUsageError(RunGenerate("quality --model " + path), "truncated");
}

TEST(GenerateCli, ACacheThatRefusesTheRunExitsOne) {
  // 20 tokens do not fit a window of 8 under the error policy.
  const CliResult r = RunGenerate("--window 8 --steps 20");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("max_seq_len"));
}

TEST(GenerateCli, QualityPrintsTheTable) {
  const CliResult r = RunGenerate(
      "quality --sequences 1 --length 48 --only 'int8, group 8, hot 16'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("| f32, full context | "));
  EXPECT_THAT(r.out, HasSubstr("| +0.0000 | +0.0000 | 100.00 % | 100.00 % | "
                               "0.00000 | - |"));
  EXPECT_THAT(r.out, HasSubstr("| int8, group 8, hot 16 | "));
  EXPECT_THAT(r.out, HasSubstr("47 positions teacher-forced"));
}

TEST(GenerateCli, SpeedPrintsARowPerBatch) {
  const CliResult r =
      RunGenerate("speed --batches 1,3 --prompt 2 --steps 8 --reps 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\n| 1 | "));
  EXPECT_THAT(r.out, HasSubstr("\n| 3 | "));
}

}  // namespace
}  // namespace kvpage::generate
