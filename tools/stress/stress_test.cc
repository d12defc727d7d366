// Tests of kvpage-stress: its pieces (pattern, lineage, latency percentiles,
// workload) directly, and the tool end to end: every backend, policy and
// feature on a tiny model, the JSON keys, usage errors, and that a token
// corrupted mid-run stops the run with exit code 1 naming it.
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

#include "allocator/convert.h"
#include "gtest/gtest.h"
#include "kvpage/snapshot.h"
#include "nlohmann/json.hpp"
#include "tools/stress/report.h"
#include "tools/stress/workload.h"

namespace kvpage::stress {
namespace {

TEST(PatternTest, ValuesAreExactInF16AndBf16) {
  const PatternTable f16(DType::kF16), bf16(DType::kBF16);
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(internal::F16ToF32(f16.bits[b]), f16.value[b]) << b;
    EXPECT_EQ(internal::F32ToF16(f16.value[b]), f16.bits[b]) << b;
    EXPECT_EQ(internal::BF16ToF32(bf16.bits[b]), bf16.value[b]) << b;
    EXPECT_EQ(f16.value[b], (b - 128) / 4.0f);
  }
}

TEST(PatternTest, FillTokenMatchesPatternByteAndDiffersPerToken) {
  const PatternTable t(DType::kF16);
  std::vector<uint16_t> a(1000), b(1000);
  FillToken(t, TokenKey(7, 3, 100, false), 1000, a.data());
  FillToken(t, TokenKey(7, 3, 101, false), 1000, b.data());
  int same = 0;
  for (int e = 0; e < 1000; ++e) {
    EXPECT_EQ(a[e], t.bits[PatternByte(TokenKey(7, 3, 100, false), e)]);
    same += a[e] == b[e];
  }
  EXPECT_LT(same, 50);  // about 1000 / 256 by chance
  EXPECT_NE(TokenKey(7, 3, 100, false), TokenKey(7, 3, 100, true));
  EXPECT_NE(TokenKey(7, 3, 100, false), TokenKey(7, 4, 100, false));
  EXPECT_NE(TokenKey(7, 3, 100, false), TokenKey(8, 3, 100, false));
}

TEST(LineageTest, PushTruncateStreamAt) {
  Lineage l;
  l.Push(10, 1);
  l.Push(20, 2);
  l.Push(25, 2);
  l.Push(30, 3);
  EXPECT_EQ(l.length(), 30);
  EXPECT_EQ(l.StreamAt(0), 1u);
  EXPECT_EQ(l.StreamAt(9), 1u);
  EXPECT_EQ(l.StreamAt(10), 2u);
  EXPECT_EQ(l.StreamAt(24), 2u);
  EXPECT_EQ(l.StreamAt(29), 3u);
  l.Truncate(22);
  EXPECT_EQ(l.length(), 22);
  EXPECT_EQ(l.StreamAt(21), 2u);
  l.Push(23, 4);
  EXPECT_EQ(l.StreamAt(22), 4u);
  l.Truncate(5);
  EXPECT_EQ(l.length(), 5);
  EXPECT_EQ(l.StreamAt(4), 1u);
}

TEST(LatencyTest, NearestRankPercentilesAreExact) {
  LatencyRecorder r, other;
  for (int64_t ns = 1; ns <= 1000; ++ns) r.Add(ns);
  other.Add(LatencyRecorder::kExactNs + 5);  // kept individually
  other.Add(LatencyRecorder::kExactNs * 3);
  r.Merge(other);
  EXPECT_EQ(r.count(), 1002);
  EXPECT_EQ(r.Percentile(0.5), 501);   // rank 501
  EXPECT_EQ(r.Percentile(0.99), 992);  // rank ceil(991.98) = 992
  EXPECT_EQ(r.Percentile(0.999), LatencyRecorder::kExactNs + 5);  // rank 1001
  EXPECT_EQ(r.Percentile(1.0), LatencyRecorder::kExactNs * 3);
  EXPECT_EQ(LatencyRecorder().Percentile(0.5), 0);
}

TEST(WorkloadTest, RequestsAreSeededAndWithinLimits) {
  Options o;
  o.requests = 500;
  o.max_len = 1024;
  o.threads = 3;
  o.shared_prefix_fraction = 0.5;
  o.shared_prefix_tokens = 100;
  const std::vector<Request> a = GenerateRequests(o), b = GenerateRequests(o);
  ASSERT_EQ(a.size(), 500u);
  int shared = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].prompt, b[i].prompt);
    EXPECT_EQ(a[i].output, b[i].output);
    EXPECT_GE(a[i].output, 1);
    EXPECT_LE(a[i].prompt + a[i].output, o.max_len);
    EXPECT_EQ(a[i].shard, static_cast<int>(i % 3));
    if (a[i].shared_prefix) {
      ++shared;
      EXPECT_GT(a[i].prompt, o.shared_prefix_tokens);
    }
  }
  EXPECT_GT(shared, 200);
  EXPECT_LT(shared, 300);
  o.seed = 2;
  EXPECT_NE(GenerateRequests(o)[0].prompt + GenerateRequests(o)[1].prompt,
            a[0].prompt + a[1].prompt);
}

// --- end to end -------------------------------------------------------------

struct RunResult {
  int exit_code = -1;
  std::string out, err;
  nlohmann::json json;  // when --json and it parsed
};

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

RunResult RunStress(const std::string& args) {
  const std::string dir = ::testing::TempDir();
  const std::string name =
      ::testing::UnitTest::GetInstance()->current_test_info()->name();
  const std::string out = dir + "/stress_" + name + ".out";
  const std::string err = dir + "/stress_" + name + ".err";
  const std::string cmd =
      std::string(KVPAGE_STRESS_BINARY) + " " + args + " >" + out + " 2>" + err;
  RunResult r;
  const int status = std::system(cmd.c_str());
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = Slurp(out);
  r.err = Slurp(err);
  r.json = nlohmann::json::parse(r.out, nullptr, false);
  return r;
}

// A tiny model (2 layers x 2 kv-heads x 32) and a short run.
constexpr char kSmall[] =
    "--model tiny --requests 24 --concurrency 8 --max-len 512 --pool-gib "
    "0.05 --check-every 8 --naive-budget 30 --quiet --json --seed 3";

const nlohmann::json& Backend(const RunResult& r, size_t i = 0) {
  return r.json["backends"][i];
}

int64_t LatencyCount(const nlohmann::json& backend, const std::string& name) {
  for (const auto& l : backend["latencies"]) {
    if (l["name"] == name) return l["count"].get<int64_t>();
  }
  return -1;
}

void ExpectAllVerifiedRequests(const RunResult& r, int64_t requests) {
  ASSERT_FALSE(r.json.is_discarded()) << r.out;
  for (const auto& b : r.json["backends"]) {
    EXPECT_EQ(b["status"], "ok") << b["backend"];
    EXPECT_EQ(b["requests_completed"], requests) << b["backend"];
  }
}

void ExpectAllVerified(const RunResult& r, size_t backends) {
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_FALSE(r.json.is_discarded()) << r.out;
  ASSERT_EQ(r.json["backends"].size(), backends);
  for (const auto& b : r.json["backends"]) {
    EXPECT_EQ(b["status"], "ok") << b["backend"];
    EXPECT_EQ(b["requests_completed"], 24) << b["backend"];
    EXPECT_GT(b["tokens_verified"].get<int64_t>(), 0) << b["backend"];
  }
}

TEST(StressToolTest, EveryBackendRunsTheSameWorkload) {
  const RunResult r = RunStress(std::string(kSmall) + " --backend all");
  ExpectAllVerified(r, 3);
  EXPECT_EQ(Backend(r, 0)["backend"], "paged");
  EXPECT_EQ(Backend(r, 1)["backend"], "contiguous");
  EXPECT_EQ(Backend(r, 2)["backend"], "naive");
  // The same tokens on each; only the naive cache copies its history.
  EXPECT_EQ(Backend(r, 0)["tokens_appended"], Backend(r, 1)["tokens_appended"]);
  EXPECT_EQ(Backend(r, 0)["tokens_appended"], Backend(r, 2)["tokens_appended"]);
  EXPECT_EQ(Backend(r, 0)["bytes_copied"], 0);
  EXPECT_GT(Backend(r, 2)["bytes_copied"].get<int64_t>(), 0);
  EXPECT_GT(Backend(r, 0)["validations"].get<int64_t>(), 0);
}

TEST(StressToolTest, JsonHasTheDocumentedKeys) {
  const RunResult r = RunStress(std::string(kSmall) + " --backend paged");
  ExpectAllVerified(r, 1);
  EXPECT_EQ(r.json["schema_version"], kSchemaVersion);
  for (const char* key :
       {"preset", "model", "layers", "kv_heads", "head_dim", "dtype",
        "block_tokens", "bytes_per_token", "requests", "concurrency", "threads",
        "seed", "kv_budget_bytes", "mean_prompt_tokens", "mean_output_tokens",
        "longest_request_tokens", "workload_tokens"}) {
    EXPECT_TRUE(r.json["run"].contains(key)) << key;
  }
  const nlohmann::json& b = Backend(r);
  for (const char* key : {"backend",
                          "status",
                          "complete",
                          "requests_completed",
                          "tokens_appended",
                          "decode_steps",
                          "wall_s",
                          "cache_s",
                          "tokens_per_s_cache",
                          "tokens_per_s_wall",
                          "decode_steps_per_s",
                          "latencies",
                          "memory_over_time",
                          "utilization_mean",
                          "utilization_peak",
                          "internal_waste_mean",
                          "kv_bytes_held_peak",
                          "bytes_written",
                          "bytes_copied",
                          "evictions",
                          "compressions",
                          "bytes_saved_peak",
                          "peak_rss_bytes",
                          "tokens_verified"}) {
    EXPECT_TRUE(b.contains(key)) << key;
  }
  for (const char* name : {"update_decode", "update_prefill", "release"}) {
    EXPECT_GT(LatencyCount(b, name), 0) << name;
  }
  for (const auto& l : b["latencies"]) {
    for (const char* key : {"p50_ns", "p99_ns", "p999_ns", "max_ns"}) {
      EXPECT_TRUE(l.contains(key)) << key;
    }
    EXPECT_LE(l["p50_ns"], l["p99_ns"]);
    EXPECT_LE(l["p99_ns"], l["p999_ns"]);
    EXPECT_LE(l["p999_ns"], l["max_ns"]);
  }
  EXPECT_FALSE(b["memory_over_time"].empty());
  EXPECT_GT(b["peak_rss_bytes"].get<int64_t>(), 0);
  EXPECT_GT(b["bytes_written"].get<int64_t>(), 0);
}

TEST(StressToolTest, TableIsTheDefaultOutput) {
  const RunResult r = RunStress(
      "--model tiny --requests 8 --max-len 256 --pool-gib 0.05 --quiet "
      "--backend paged,contiguous");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("tokens appended / s of cache time"), std::string::npos);
  EXPECT_NE(r.out.find("contiguous"), std::string::npos);
  EXPECT_EQ(r.err, "");  // not a terminal: no progress bar
}

TEST(StressToolTest, EveryPolicyKeepsItsWindow) {
  for (const char* policy :
       {"error", "sliding-window", "circular-buffer", "truncate"}) {
    const std::string limit =
        std::string(policy) == "error" ? "" : " --max-seq-len 64";
    const RunResult r =
        RunStress(std::string(kSmall) + " --backend paged --policy " + policy +
                  limit + " --sink-tokens 4");
    SCOPED_TRACE(policy);
    ExpectAllVerified(r, 1);
    if (std::string(policy) == "error") {
      EXPECT_EQ(Backend(r)["evictions"], 0);
    } else {
      EXPECT_GT(Backend(r)["evictions"].get<int64_t>(), 0);
    }
  }
}

TEST(StressToolTest, RollbacksInsideAWindowAndCompression) {
  // Rejected drafts rolled back after the window slid, repacked blocks,
  // forks and a shared prompt in one run.
  for (const char* policy : {"sliding-window", "circular-buffer", "truncate"}) {
    SCOPED_TRACE(policy);
    const RunResult r = RunStress(
        std::string(kSmall) + " --backend paged --policy " + policy +
        " --max-seq-len 96 --sink-tokens 4 --spec-tokens 3 --spec-accept 0.5"
        " --samples 2 --shared-prefix-fraction 0.5 --shared-prefix-tokens 32"
        " --compress int8 --hot-tokens 32 --compress-every 4");
    ExpectAllVerified(r, 1);
    EXPECT_GT(Backend(r)["evictions"].get<int64_t>(), 0);
    EXPECT_GT(Backend(r)["draft_tokens_rejected"].get<int64_t>(), 0);
  }
}

TEST(StressToolTest, ForksShareThePromptAndCopyOnWrite) {
  const RunResult r = RunStress(std::string(kSmall) +
                                " --backend paged,contiguous --samples 3");
  ExpectAllVerified(r, 2);
  EXPECT_EQ(LatencyCount(Backend(r, 0), "fork"), 48);
  EXPECT_EQ(LatencyCount(Backend(r, 1), "fork"), 48);
  EXPECT_GT(Backend(r, 0)["bytes_copied"].get<int64_t>(), 0);  // shared tails
  EXPECT_LT(Backend(r, 0)["bytes_copied"], Backend(r, 1)["bytes_copied"]);
}

TEST(StressToolTest, SharedSystemPromptHitsThePrefixCache) {
  const RunResult r = RunStress(std::string(kSmall) +
                                " --backend paged,contiguous "
                                "--shared-prefix-fraction 0.6 "
                                "--shared-prefix-tokens 64");
  ExpectAllVerified(r, 2);
  EXPECT_GT(Backend(r, 0)["prefix_hits"].get<int64_t>(), 0);
  EXPECT_GT(Backend(r, 0)["prefix_tokens_reused"].get<int64_t>(), 0);
  EXPECT_EQ(Backend(r, 1)["prefix_tokens_reused"], 0);
  EXPECT_LT(Backend(r, 0)["tokens_appended"], Backend(r, 1)["tokens_appended"]);
}

TEST(StressToolTest, SpeculativeDraftsAreRolledBack) {
  const RunResult r = RunStress(
      std::string(kSmall) + " --backend all --spec-tokens 4 --spec-accept 0.5");
  ExpectAllVerified(r, 3);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_GT(Backend(r, i)["draft_tokens_rejected"].get<int64_t>(), 0);
    EXPECT_GT(LatencyCount(Backend(r, i), "truncate"), 0);
    EXPECT_EQ(Backend(r, i)["draft_tokens_rejected"],
              Backend(r, 0)["draft_tokens_rejected"]);
  }
}

TEST(StressToolTest, CompressedBlocksReadBackWithinTheBound) {
  for (const char* bits : {"int8", "int4"}) {
    SCOPED_TRACE(bits);
    const RunResult r =
        RunStress(std::string(kSmall) + " --backend paged --compress " + bits +
                  " --hot-tokens 32 --compress-every 8");
    ExpectAllVerified(r, 1);
    EXPECT_GT(Backend(r)["compressions"].get<int64_t>(), 0);
    EXPECT_GT(Backend(r)["quantized_blocks_verified"].get<int64_t>(), 0);
    EXPECT_GT(Backend(r)["bytes_saved_peak"].get<int64_t>(), 0);
    EXPECT_GT(LatencyCount(Backend(r), "compress"), 0);
  }
}

TEST(StressToolTest, ThreadsOwnTheirShards) {
  const RunResult r = RunStress(std::string(kSmall) +
                                " --backend paged,contiguous --threads 3");
  ExpectAllVerified(r, 2);
  EXPECT_EQ(r.json["run"]["threads"], 3);
}

TEST(StressToolTest, PoissonArrivals) {
  const RunResult r = RunStress(std::string(kSmall) +
                                " --backend paged --arrival-rate 0.05 --preset "
                                "alpaca");
  ExpectAllVerified(r, 1);
}

// The failure must name the token the tool corrupted.
void ExpectCaught(const std::string& args, const std::string& how = "") {
  const RunResult r = RunStress(args + " --inject-corruption");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  const std::string marker = "injected a wrong token at ";
  const size_t at = r.err.find(marker);
  ASSERT_NE(at, std::string::npos) << r.err;
  const size_t begin = at + marker.size();
  // "sequence S (request R, sample N) layer L position P"
  const std::string injected =
      r.err.substr(begin, r.err.find('\n', begin) - begin);
  EXPECT_EQ(injected.rfind("sequence ", 0), 0u) << injected;
  EXPECT_NE(injected.find(" layer "), std::string::npos) << injected;
  EXPECT_NE(injected.find(" position "), std::string::npos) << injected;
  EXPECT_NE(r.err.find("verification failed"), std::string::npos) << r.err;
  const std::string failure = r.err.substr(r.err.find("verification failed"));
  EXPECT_NE(failure.find(injected), std::string::npos)
      << "injected: " << injected << "\nreported: " << failure;
  EXPECT_NE(failure.find(how), std::string::npos) << failure;
}

TEST(StressToolTest, CorruptionIsCaughtOnEveryBackend) {
  for (const char* backend : {"paged", "contiguous", "naive"}) {
    SCOPED_TRACE(backend);
    ExpectCaught(std::string(kSmall) + " --backend " + backend);
  }
}

TEST(StressToolTest, CorruptionIsCaughtInACompressedBlock) {
  // The wrong token turns cold and is repacked before its sequence ends:
  // the block's error, not an exact compare, must catch it (no spot check
  // reads it while it is still hot).
  ExpectCaught(std::string(kSmall) +
                   " --backend paged --compress int8 --hot-tokens 16 "
                   "--compress-every 2 --check-every 1000000",
               "the int8 block holding positions");
}

// --snapshot: each shard's cache at the end, for kvpage-dump. Every request
// was released, so only the prefix cache still holds blocks.
TEST(StressToolTest, SnapshotAtTheEndOfEachShard) {
  const std::string path = ::testing::TempDir() + "/stress_end.snap";
  const RunResult r = RunStress(std::string(kSmall) +
                                " --backend paged --threads 2 "
                                "--shared-prefix-fraction 0.6 "
                                "--shared-prefix-tokens 64 --snapshot " +
                                path);
  ExpectAllVerified(r, 1);
  for (const std::string& file : {path, path + ".1"}) {
    absl::StatusOr<Snapshot> snap = ReadSnapshot(file);
    ASSERT_TRUE(snap.ok()) << snap.status();
    EXPECT_TRUE(VerifySnapshot(*snap).empty()) << file;
    EXPECT_TRUE(snap->sequences.empty());
    EXPECT_EQ(snap->stats.blocks_used, 0);
    EXPECT_GT(snap->stats.blocks_allocated, 0);
    EXPECT_GT(snap->stats.blocks_cached, 0) << "the shared prompt stays cached";
    std::remove(file.c_str());
  }
  EXPECT_EQ(RunStress(std::string(kSmall) +
                      " --backend paged --snapshot /nonexistent-dir/x.snap")
                .exit_code,
            1);
}

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
