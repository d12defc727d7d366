// Tests of kvpage-stress: its pieces (pattern, lineage, latency percentiles,
// workload) directly, and the tool end to end: every backend, policy and
// feature on a tiny model, the JSON keys, and that a token corrupted mid-run
// stops the run with exit code 1 naming it. Its command line:
// stress_cli_test.cc.
#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "allocator/convert.h"
#include "gtest/gtest.h"
#include "kvpage/snapshot.h"
#include "nlohmann/json.hpp"
#include "tools/stress/report.h"
#include "tools/stress/stress_run.h"
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

// Requests draw one of --shared-prefixes system prompts, and nothing else
// changes: the same requests, the same lengths.
TEST(WorkloadTest, SharedPrefixesAreDrawnUniformly) {
  Options o;
  o.requests = 400;
  o.shared_prefix_fraction = 0.5;
  o.shared_prefix_tokens = 32;
  const std::vector<Request> one = GenerateRequests(o);
  o.shared_prefixes = 4;
  const std::vector<Request> four = GenerateRequests(o);
  int counts[4] = {0, 0, 0, 0};
  for (size_t i = 0; i < one.size(); ++i) {
    EXPECT_EQ(one[i].prefix_id, 0);
    EXPECT_EQ(four[i].shared_prefix, one[i].shared_prefix) << i;
    EXPECT_EQ(four[i].prompt, one[i].prompt) << i;
    EXPECT_EQ(four[i].output, one[i].output) << i;
    if (!four[i].shared_prefix) {
      EXPECT_EQ(four[i].prefix_id, 0);
      continue;
    }
    ASSERT_GE(four[i].prefix_id, 0);
    ASSERT_LT(four[i].prefix_id, 4);
    ++counts[four[i].prefix_id];
  }
  for (int c : counts) EXPECT_GT(c, 20);
  o.shared_prefixes = 0;
  EXPECT_FALSE(ValidateOptions(o, *ResolveModel(o)).ok());
}

// --- end to end -------------------------------------------------------------

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
  for (const char* key : {"cache_ns_per_token", "decode_update_ns_per_step",
                          "max_requests_in_flight_by_shard"}) {
    EXPECT_TRUE(b.contains(key)) << key;
  }
  // One backend: no equal-concurrency pass, and its keys all the same.
  EXPECT_EQ(r.json["equal_concurrency"]["requests_in_flight"], 0);
  EXPECT_TRUE(r.json["equal_concurrency"]["backends"].empty());
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
  EXPECT_NE(
      r.out.find("per token appended (all layers, all calls), at the budget's "
                 "concurrency"),
      std::string::npos)
      << r.out;
  EXPECT_NE(
      r.out.find(
          "per decode step (all layers, its updates), at equal concurrency ("),
      std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("contiguous"), std::string::npos);
  EXPECT_EQ(r.err, "");  // not a terminal: no progress bar
}

// A budget that holds 2 contiguous requests per shard (the longest request
// is 512 tokens, 256 KiB) and 3 paged ones.
constexpr char kTight[] =
    "--model tiny --requests 24 --concurrency 8 --max-len 512 --pool-gib "
    "0.0012 --check-every 8 --quiet --seed 3 --backend paged,contiguous";

// The equal-concurrency pass holds the paged backend to the contiguous
// backend's count on every shard; then both run the same schedule (the same
// scheduler steps), which the paged backend's run at its budget's
// concurrency did not. The contiguous backend is not run again: its figures
// are those of its run.
TEST(StressToolTest, EqualConcurrencyHoldsBothToTheSameCount) {
  const RunResult r = RunStress(std::string(kTight) + " --json");
  ExpectAllVerified(r, 2);
  const nlohmann::json& paged = Backend(r, 0);
  const nlohmann::json& contiguous = Backend(r, 1);
  for (const nlohmann::json* b : {&paged, &contiguous}) {
    EXPECT_GT((*b)["cache_ns_per_token"].get<double>(), 0);
    EXPECT_GT((*b)["decode_update_ns_per_step"].get<double>(), 0);
    const auto by_shard =
        (*b)["max_requests_in_flight_by_shard"].get<std::vector<int64_t>>();
    ASSERT_EQ(by_shard.size(), 2u);
    EXPECT_EQ(by_shard[0] + by_shard[1], (*b)["max_requests_in_flight"]);
  }
  ASSERT_GT(paged["max_requests_in_flight"],
            contiguous["max_requests_in_flight"])
      << "the budget no longer holds fewer contiguous requests";

  const nlohmann::json& equal = r.json["equal_concurrency"];
  EXPECT_EQ(equal["requests_in_flight"], contiguous["max_requests_in_flight"]);
  EXPECT_EQ(equal["requests_in_flight_by_shard"],
            contiguous["max_requests_in_flight_by_shard"]);
  ASSERT_EQ(equal["backends"].size(), 2u);
  const nlohmann::json& held = equal["backends"][0];
  const nlohmann::json& same = equal["backends"][1];
  EXPECT_EQ(held["backend"], "paged");
  EXPECT_EQ(held["rerun"], true);
  EXPECT_EQ(same["backend"], "contiguous");
  EXPECT_EQ(same["rerun"], false);
  for (const nlohmann::json* c : {&held, &same}) {
    for (const char* key :
         {"max_requests_in_flight", "scheduler_steps", "tokens_appended",
          "decode_steps", "wall_s", "cache_s", "cache_ns_per_token",
          "decode_update_ns_per_step"}) {
      EXPECT_TRUE(c->contains(key)) << key;
    }
    EXPECT_EQ((*c)["max_requests_in_flight"], equal["requests_in_flight"]);
    EXPECT_EQ((*c)["tokens_appended"], paged["tokens_appended"]);
    EXPECT_GT((*c)["cache_ns_per_token"].get<double>(), 0);
  }
  EXPECT_EQ(held["scheduler_steps"], same["scheduler_steps"]);
  EXPECT_NE(held["scheduler_steps"], paged["scheduler_steps"]);
  EXPECT_EQ(same["cache_ns_per_token"], contiguous["cache_ns_per_token"]);

  // The table says which pass is which, and what ran again.
  const RunResult table = RunStress(
      std::string(kTight) + " --no-equal-concurrency --equal-concurrency");
  ASSERT_EQ(table.exit_code, 0) << table.err;
  const std::string n = std::to_string(equal["requests_in_flight"].get<int>());
  for (const std::string& line :
       {std::string(
            "per token appended (all layers, all calls), at the budget's "
            "concurrency"),
        "per token appended (all layers, all calls), at equal concurrency (" +
            n + " in flight)",
        "paged ran the workload again, held to " + n + " requests in flight",
        std::string("contiguous: its run at the budget's concurrency")}) {
    EXPECT_NE(table.out.find(line), std::string::npos) << line << "\n"
                                                       << table.out;
  }
}

// Both backends reach the same count: nothing runs again.
TEST(StressToolTest, EqualConcurrencyRerunsNothingWhenTheCountsMatch) {
  const RunResult r =
      RunStress(std::string(kSmall) + " --backend contiguous,paged");
  ExpectAllVerified(r, 2);
  const nlohmann::json& equal = r.json["equal_concurrency"];
  EXPECT_EQ(equal["requests_in_flight"], 8);
  ASSERT_EQ(equal["backends"].size(), 2u);
  EXPECT_EQ(equal["backends"][0]["backend"], "paged");  // whatever the order
  EXPECT_EQ(equal["backends"][1]["backend"], "contiguous");
  for (const auto& c : equal["backends"]) EXPECT_EQ(c["rerun"], false);
  // --no-equal-concurrency: no pass.
  const RunResult off =
      RunStress(std::string(kTight) + " --json --no-equal-concurrency");
  ExpectAllVerified(off, 2);
  EXPECT_EQ(off.json["equal_concurrency"]["requests_in_flight"], 0);
  EXPECT_TRUE(off.json["equal_concurrency"]["backends"].empty());
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
  // Rejected drafts rolled back after the window slid, compressed blocks,
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
  // The token hit rate's parts: what was matched is what was reused, out of
  // what was asked.
  EXPECT_EQ(Backend(r, 0)["prefix_tokens_matched"],
            Backend(r, 0)["prefix_tokens_reused"]);
  EXPECT_GT(Backend(r, 0)["prefix_tokens_queried"].get<int64_t>(),
            Backend(r, 0)["prefix_tokens_matched"].get<int64_t>());
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
  // The wrong token turns cold and is compressed before its sequence ends:
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

}  // namespace
}  // namespace kvpage::stress
