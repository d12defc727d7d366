// Tests of kvpage-stress's command line: every bad input is exit code 2 and
// one line on stderr that names the flag; every numeric flag survives the
// ends of its type.
#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvpage/snapshot.h"
#include "tools/stress/stress_run.h"

namespace kvpage::stress {
namespace {

TEST(StressToolTest, BadUsageExitsTwo) {
  EXPECT_EQ(RunStress("--requests 0").exit_code, 2);
  EXPECT_EQ(RunStress("--no-such-flag").exit_code, 2);
  EXPECT_EQ(RunStress("--model nope").exit_code, 2);
  EXPECT_EQ(RunStress("--backend paged,nope").exit_code, 2);
  const RunResult r = RunStress("--policy sliding-window --max-seq-len 256");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--backend paged"), std::string::npos) << r.err;
  EXPECT_EQ(RunStress("--model tiny --pool-gib 0.000001").exit_code, 2);
  EXPECT_EQ(RunStress("--help").exit_code, 0);
}

// A quick run that an accepted extreme value would start: the flags under
// test come after it and override it (the last value of a flag wins).
constexpr char kQuick[] =
    "--model tiny --requests 2 --concurrency 2 --max-len 32 --pool-gib 0.01 "
    "--threads 1 --backend paged --naive-budget 5 --quiet --json";

// Bad usage is exit code 2 and one line on stderr that names the flag.
void ExpectUsageError(const RunResult& r, const std::string& flag) {
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find(flag), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

// The values that once aborted the tool, overflowed, or ran nothing and
// exited 0 (1e11 is no integer to CLI11; 100000000000 is the same number).
TEST(StressToolTest, ExtremeFlagValuesExitTwoNamingTheFlag) {
  const std::pair<std::string, std::string> cases[] = {
      {"--requests 9223372036854775807", "--requests"},
      {"--requests 1e11", "--requests"},
      {"--requests 100000000000", "--requests"},
      {"--prefill-chunk 1e11", "--prefill-chunk"},
      {"--prefill-chunk 100000000000", "--prefill-chunk"},
      {"--concurrency 9223372036854775807", "--concurrency"},
      {"--prefill-chunk 9223372036854775807", "--prefill-chunk"},
      {"--policy sliding-window --sink-tokens -9223372036854775807",
       "--sink-tokens"},
      {"--block-tokens 2147483647", "--block-tokens"},
      {"--naive-budget nan", "--naive-budget"},
      {"--naive-budget inf", "--naive-budget"},
      {"--naive-budget 1e10", "--naive-budget"},
      {"--pool-gib nan", "--pool-gib"},
      {"--pool-gib inf", "--pool-gib"},
      {"--pool-gib 1e30", "--pool-gib"},
      {"--spec-accept nan", "--spec-accept"},
      {"--shared-prefix-fraction nan", "--shared-prefix-fraction"},
      {"--arrival-rate nan", "--arrival-rate"},
  };
  for (const auto& [args, flag] : cases) {
    SCOPED_TRACE(args);
    ExpectUsageError(RunStress(std::string(kQuick) + " " + args), flag);
  }
}

// A shape override or a window of 0 is refused, not taken as "the model's"
// or "--max-len"; a range error is one readable line (no 300-digit bound).
TEST(StressToolTest, ZeroOrNegativeShapesAndRangesAreRefusedReadably) {
  const std::pair<std::string, std::string> cases[] = {
      {"--head-dim 0", "--head-dim"},
      {"--layers 0", "--layers"},
      {"--kv-heads -1", "--kv-heads"},
      {"--kv-heads 0", "--kv-heads"},
      {"--max-seq-len -3", "--max-seq-len"},
      {"--max-seq-len 0", "--max-seq-len"},
      {"--requests -5", "--requests"},
      {"--concurrency 0", "--concurrency"},
      {"--seed abc", "--seed"},
      {"--pool-gib abc", "--pool-gib"},
  };
  for (const auto& [args, flag] : cases) {
    SCOPED_TRACE(args);
    const RunResult r = RunStress(std::string(kQuick) + " " + args);
    ExpectUsageError(r, flag);
    EXPECT_EQ(r.err.find("1797693"), std::string::npos) << r.err;
    EXPECT_LT(r.err.size(), 160u) << r.err;
  }
  const RunResult range = RunStress("--requests -5");
  EXPECT_EQ(range.err,
            "kvpage-stress: --requests: -5 is not an integer in [1, 1000000] "
            "(see --help)\n");
}

// Flags are matched whole: a prefix of a flag is no flag.
TEST(StressToolTest, FlagsAreNotAbbreviated) {
  for (const char* args : {"--max-seq 5", "--max 5", "--conc 4"}) {
    SCOPED_TRACE(args);
    const RunResult r = RunStress(std::string(kQuick) + " " + args);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

// The header says how many requests are really kept in flight.
TEST(StressToolTest, InFlightIsAtMostTheRequests) {
  const RunResult r = RunStress(
      "--model tiny --requests 5 --concurrency 1000 --max-len 64 "
      "--pool-gib 0.05 --quiet --backend paged");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("; 5 kept in flight;"), std::string::npos) << r.out;
}

// --huge-pages is on unless --no-huge-pages comes last; --help says so
// (CLI11 showed "--no-huge-pages{false}", which read as the default).
TEST(StressToolTest, HugePagesDefaultOnAndTheLastFlagWins) {
  const RunResult help = RunStress("--help");
  EXPECT_EQ(help.out.find("{false}"), std::string::npos);
  EXPECT_NE(help.out.find("the default)"), std::string::npos);
  EXPECT_NE(help.out.find("--no-huge-pages"), std::string::npos);
  const std::string path = ::testing::TempDir() + "/stress_huge_pages.snap";
  const std::pair<std::string, bool> cases[] = {
      {"", true},
      {"--no-huge-pages", false},
      {"--no-huge-pages --huge-pages", true},
      {"--huge-pages --no-huge-pages", false}};
  for (const auto& [flags, huge_pages] : cases) {
    SCOPED_TRACE(flags);
    const RunResult r =
        RunStress(std::string(kQuick) + " " + flags + " --snapshot " + path);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    absl::StatusOr<Snapshot> snap = ReadSnapshot(path);
    ASSERT_TRUE(snap.ok()) << snap.status();
    EXPECT_EQ(snap->config.huge_pages, huge_pages);
  }
  std::remove(path.c_str());
}

// --group-layers runs the paged backend on layer groups: its spot checks
// (Validate, every layer's view against the reference) pass, and the
// snapshot says so.
TEST(StressToolTest, GroupLayersRunsAndVerifies) {
  const std::string path = ::testing::TempDir() + "/stress_groups.snap";
  const RunResult r = RunStress(std::string(kQuick) +
                                " --requests 16 --concurrency 4 --max-len 48 "
                                "--group-layers --snapshot " +
                                path);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  absl::StatusOr<Snapshot> snap = ReadSnapshot(path);
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_TRUE(snap->config.group_layers);
  EXPECT_THAT(VerifySnapshot(*snap), ::testing::IsEmpty());
  std::remove(path.c_str());
}

// Flags whose values are in range one by one but not together.
TEST(StressToolTest, FlagCombinationsAreChecked) {
  const std::pair<std::string, std::string> cases[] = {
      {"--policy sliding-window --max-seq-len 64 --sink-tokens 64",
       "--sink-tokens"},
      {"--policy truncate --max-seq-len 64 --sink-tokens 1000",
       "--sink-tokens"},
      {"--concurrency 65536 --samples 64", "--concurrency"},
      {"--sink-tokens 40", "--sink-tokens"},
      {"--policy truncate --max-seq-len 64 --sink-tokens 40", "--sink-tokens"},
      {"--arrival-rate 1e-300", "--arrival-rate"},
      {"--pool-gib 0.000001", "--pool-gib"},
      {"--pool-gib 65536 --block-tokens 1 --model tiny --threads 1",
       "--pool-gib"},
      {"--shared-prefix-fraction 0.5 --shared-prefix-tokens 32",
       "--shared-prefix-tokens"},
      {"--shared-prefix-fraction 1 --shared-prefix-tokens 31",
       "--shared-prefix-tokens"},
  };
  for (const auto& [args, flag] : cases) {
    SCOPED_TRACE(args);
    ExpectUsageError(RunStress(std::string(kQuick) + " " + args), flag);
  }
}

// Every numeric flag at the ends of int64 and beyond, nan and infinities:
// each is refused naming the flag (exit 2), or is in range and the quick
// run succeeds (exit 0). Never an abort, a crash or a sanitizer report.
TEST(StressToolTest, EveryNumericFlagSurvivesExtremeValues) {
  const char* const flags[] = {"--requests",
                               "--concurrency",
                               "--arrival-rate",
                               "--max-len",
                               "--prefill-chunk",
                               "--samples",
                               "--shared-prefix-fraction",
                               "--shared-prefix-tokens",
                               "--shared-prefixes",
                               "--spec-tokens",
                               "--spec-accept",
                               "--seed",
                               "--layers",
                               "--kv-heads",
                               "--head-dim",
                               "--block-tokens",
                               "--pool-gib",
                               "--max-seq-len",
                               "--sink-tokens",
                               "--hot-tokens",
                               "--compress-every",
                               "--threads",
                               "--naive-budget",
                               "--check-every"};
  const char* const values[] = {"9223372036854775807",
                                "-9223372036854775807",
                                "9223372036854775808",
                                "18446744073709551616",
                                "-1",
                                "nan",
                                "inf",
                                "-inf",
                                "1e30"};
  for (const char* flag : flags) {
    for (const char* value : values) {
      const std::string args = std::string(flag) + " " + value;
      SCOPED_TRACE(args);
      const RunResult r = RunStress(std::string(kQuick) + " " + args);
      EXPECT_TRUE(r.exit_code == 0 || r.exit_code == 2) << r.exit_code << "\n"
                                                        << r.err;
      if (r.exit_code == 2) ExpectUsageError(r, flag);
      if (r.exit_code == 0) {
        EXPECT_EQ(r.err, "");
        ExpectAllVerifiedRequests(r, 2);
      }
    }
  }
}

}  // namespace
}  // namespace kvpage::stress
