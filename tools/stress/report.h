// tools/stress/report.h — what a kvpage-stress run measured: one struct per
// backend and one for the run, filled by a single walk, rendered either as
// the human table or as JSON (stable snake_case keys, `schema_version`).
// Also the exact latency recorder the workers fill.
//
// Thread safety: plain values; a LatencyRecorder belongs to one worker.
#ifndef KVPAGE_TOOLS_STRESS_REPORT_H_
#define KVPAGE_TOOLS_STRESS_REPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace kvpage::stress {

// 2: the CPU per token (cache_ns_per_token, decode_update_ns_per_step,
// max_requests_in_flight_by_shard) and the equal-concurrency pass.
// 3: the remote tier (--remote): run.remote, run.remote_model_id,
// run.remote_write_through, and per backend `remote_tier`; and
// run.shared_prefixes (--shared-prefixes).
inline constexpr int kSchemaVersion = 3;

// Exact latency percentiles: one counter per nanosecond below kExactNs, the
// rarer longer samples kept individually. Memory: 1 MiB per recorder.
class LatencyRecorder {
 public:
  static constexpr int64_t kExactNs = int64_t{1} << 18;  // 262 us
  LatencyRecorder() : counts_(kExactNs, 0) {}
  void Add(int64_t ns) {
    ++count_;
    sum_ += ns;
    if (ns < 0) ns = 0;
    if (ns < kExactNs) {
      ++counts_[static_cast<size_t>(ns)];
    } else {
      long_.push_back(ns);
    }
  }
  void Merge(const LatencyRecorder& other);
  // The nearest-rank percentile (q in (0, 1]); 0 when empty.
  [[nodiscard]] int64_t Percentile(double q) const;
  [[nodiscard]] int64_t count() const { return count_; }
  [[nodiscard]] double mean() const {
    return count_ ? static_cast<double>(sum_) / count_ : 0;
  }

 private:
  std::vector<uint32_t> counts_;
  std::vector<int64_t> long_;  // samples >= kExactNs, unsorted
  int64_t count_ = 0, sum_ = 0;
};

struct LatencySummary {
  std::string name;  // what was timed, e.g. "update_decode"
  int64_t count = 0;
  double mean_ns = 0;
  int64_t p50_ns = 0, p99_ns = 0, p999_ns = 0, max_ns = 0;
};
[[nodiscard]] LatencySummary Summarize(std::string name,
                                       const LatencyRecorder& r);

// Memory at one moment of a run (shards summed).
struct MemoryPoint {
  double t_s = 0;
  double utilization = 0;     // KV bytes held / budget
  double internal_waste = 0;  // 1 - tokens stored / token slots held
  int64_t kv_bytes_held = 0;
};

// What the workers count as they run the workload; a backend's figures are
// the sum over its shards.
struct WorkloadCounts {
  bool complete = true;  // false: stopped at --naive-budget
  int64_t requests_completed = 0, requests_cut = 0;
  int64_t max_requests_in_flight = 0;  // summed over shards: each shard's most
  int64_t tokens_appended = 0;         // token x every layer written (prefill,
                                // decode, drafts), counted once per token
  int64_t prompt_tokens_computed = 0, prefix_tokens_reused = 0;
  int64_t decode_tokens = 0, draft_tokens_rejected = 0;
  int64_t decode_steps = 0;     // one sequence advanced through every layer
  int64_t scheduler_steps = 0;  // summed over workers

  // Adds another shard's counts (complete only if both are).
  WorkloadCounts& operator+=(const WorkloadCounts& shard);
};

// The paged shards' remote tiers (--remote, tools/stress/remote.h): each
// shard's RemoteTierStats under the same names, summed over shards, and
// what the shards' MatchPrefix calls restored from the tier.
struct RemoteTierCounters {
  int64_t shards = 0;  // shards with a tier attached; 0: no --remote
  int64_t blocks_written_back = 0, blocks_written_through = 0;
  int64_t queue_drops = 0, write_errors = 0;
  int64_t fetch_calls = 0, blocks_fetched = 0;
  // Fetch calls that stopped at a block Redis lacks, at a node that failed,
  // at a value that failed its checks, at another model's or shape's value.
  int64_t fetch_misses = 0, fetch_errors = 0;
  int64_t corrupt_blocks = 0, foreign_blocks = 0;
  int64_t bytes_written = 0, bytes_fetched = 0;  // values, both ways
  // A fetch's round trip, p50 and p99 over each shard's last 1024 calls:
  // per shard, and the largest over the shards.
  std::vector<double> fetch_p50_us_by_shard, fetch_p99_us_by_shard;
  double fetch_p50_us_max = 0, fetch_p99_us_max = 0;
  // Prompt tokens MatchPrefix attached from blocks it loaded from the tier
  // (the rest of prefix_tokens_reused came from the shard's own cache).
  int64_t tokens_from_tier = 0;
  int64_t blocks_corrupted_by_test = 0;  // --inject-tier-corruption

  // Adds another shard's figures (the latencies: appended, and the max).
  RemoteTierCounters& operator+=(const RemoteTierCounters& shard);
};

// What a backend counts itself (its cache's counters, what its verifier
// compared); summed over shards.
struct BackendCounters {
  int64_t bytes_written = 0, bytes_copied = 0;
  int64_t evictions = 0;  // tokens evicted by the policy
  int64_t prefix_hits = 0, prefix_misses = 0;
  // What MatchPrefix was asked and attached, in tokens: the hit rate is
  // prefix_tokens_matched / prefix_tokens_queried.
  int64_t prefix_tokens_queried = 0, prefix_tokens_matched = 0;
  int64_t compressions = 0, compressions_skipped = 0, decompressions = 0;
  double max_quant_error = 0;
  int64_t tokens_verified = 0;  // token x layer compared
  int64_t quantized_blocks_verified = 0;
  int64_t validations = 0;  // invariant walks that passed
  RemoteTierCounters remote_tier;

  // Adds another shard's counters (max_quant_error: the larger).
  BackendCounters& operator+=(const BackendCounters& shard);
};

// One backend's run: the counts above and what the run measured.
struct BackendResult : WorkloadCounts, BackendCounters {
  std::string backend;
  std::string status = "ok";  // ok | verification_failed | error
  std::string error;          // the first failure, naming seq/layer/position
  std::string scope;          // what part of the workload ran
  double wall_s = 0;
  double cache_s = 0;  // time inside the backend's calls
  double tokens_per_s_cache = 0, tokens_per_s_wall = 0;
  double decode_steps_per_s = 0;  // wall
  // CPU per unit of work: cache_s over tokens_appended; the decode updates'
  // time (1 token, every layer) over decode_steps.
  double cache_ns_per_token = 0, decode_update_ns_per_step = 0;
  std::vector<int64_t> max_requests_in_flight_by_shard;
  std::vector<LatencySummary> latencies;
  std::vector<MemoryPoint> memory_over_time;
  double utilization_mean = 0, utilization_peak = 0;
  double internal_waste_mean = 0, internal_waste_max = 0;
  int64_t kv_budget_bytes = 0, kv_bytes_held_peak = 0;
  int64_t bytes_saved_peak = 0;
  int64_t peak_rss_bytes = 0;
};

// The run: its resolved options and the realized workload.
struct RunInfo {
  std::string preset, model;
  int layers = 0, kv_heads = 0, head_dim = 0;
  std::string dtype;
  int block_tokens = 0;
  int64_t bytes_per_token = 0;  // K and V over every layer
  int64_t requests = 0, concurrency = 0;
  double arrival_rate = 0;
  int samples = 0;
  double shared_prefix_fraction = 0;
  int64_t shared_prefix_tokens = 0, shared_prefixes = 0;
  int spec_tokens = 0;
  double spec_accept = 0;
  std::string policy;
  int64_t max_seq_len = 0, sink_tokens = 0;
  std::string compress;
  int threads = 0;
  uint64_t seed = 0;
  int64_t kv_budget_bytes = 0;
  double mean_prompt_tokens = 0, mean_output_tokens = 0;
  int64_t longest_request_tokens = 0;
  int64_t workload_tokens = 0;  // prompt + samples x output, summed
  // --remote: the URL without its password ("" without --remote), the
  // model id the shards' tiers use, and whether they write through.
  std::string remote, remote_model_id;
  bool remote_write_through = false;
  int64_t remote_fetch_timeout_ms = 0;  // 0: the library's default
};

// One backend's CPU inside cache calls in a run, per unit of work.
struct CpuCost {
  std::string backend;
  // true: run again, held to the equal count; false: the figures of its
  // run at the budget's concurrency, where it never had more in flight
  // (a cap it never reached changes nothing in a run, step for step).
  bool rerun = false;
  int64_t max_requests_in_flight = 0;
  int64_t scheduler_steps = 0, tokens_appended = 0, decode_steps = 0;
  double wall_s = 0, cache_s = 0;
  double cache_ns_per_token = 0, decode_update_ns_per_step = 0;
};
[[nodiscard]] CpuCost CpuCostOf(const BackendResult& result, bool rerun);

// The paged and contiguous backends at the same number of requests in
// flight: each shard held to the smaller of the two backends' most in
// flight on that shard (main.cc says why).
struct EqualConcurrency {
  int64_t requests_in_flight = 0;  // the shards' caps summed; 0: not run
  std::vector<int64_t> requests_in_flight_by_shard;
  std::vector<CpuCost> backends;  // in the run's order
};

struct Report {
  int schema_version = kSchemaVersion;
  RunInfo run;
  std::vector<BackendResult> backends;
  EqualConcurrency equal_concurrency;
};

// JSON: the field names are the keys (BackendResult's inherited ones
// included, in one flat object).
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(LatencySummary, name, count, mean_ns, p50_ns,
                                   p99_ns, p999_ns, max_ns)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(MemoryPoint, t_s, utilization,
                                   internal_waste, kv_bytes_held)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(
    RemoteTierCounters, shards, blocks_written_back, blocks_written_through,
    queue_drops, write_errors, fetch_calls, blocks_fetched, fetch_misses,
    fetch_errors, corrupt_blocks, foreign_blocks, bytes_written, bytes_fetched,
    fetch_p50_us_by_shard, fetch_p99_us_by_shard, fetch_p50_us_max,
    fetch_p99_us_max, tokens_from_tier, blocks_corrupted_by_test)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(
    BackendResult, backend, status, error, complete, scope, requests_completed,
    requests_cut, max_requests_in_flight, tokens_appended,
    prompt_tokens_computed, prefix_tokens_reused, decode_tokens,
    draft_tokens_rejected, decode_steps, scheduler_steps, wall_s, cache_s,
    tokens_per_s_cache, tokens_per_s_wall, decode_steps_per_s,
    cache_ns_per_token, decode_update_ns_per_step,
    max_requests_in_flight_by_shard, latencies, memory_over_time,
    utilization_mean, utilization_peak, internal_waste_mean, internal_waste_max,
    kv_budget_bytes, kv_bytes_held_peak, bytes_written, bytes_copied, evictions,
    prefix_hits, prefix_misses, prefix_tokens_queried, prefix_tokens_matched,
    compressions, compressions_skipped, decompressions, bytes_saved_peak,
    max_quant_error, peak_rss_bytes, tokens_verified, quantized_blocks_verified,
    validations, remote_tier)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(
    RunInfo, preset, model, layers, kv_heads, head_dim, dtype, block_tokens,
    bytes_per_token, requests, concurrency, arrival_rate, samples,
    shared_prefix_fraction, shared_prefix_tokens, shared_prefixes, spec_tokens,
    spec_accept, policy, max_seq_len, sink_tokens, compress, threads, seed,
    kv_budget_bytes, mean_prompt_tokens, mean_output_tokens,
    longest_request_tokens, workload_tokens, remote, remote_model_id,
    remote_write_through, remote_fetch_timeout_ms)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(CpuCost, backend, rerun,
                                   max_requests_in_flight, scheduler_steps,
                                   tokens_appended, decode_steps, wall_s,
                                   cache_s, cache_ns_per_token,
                                   decode_update_ns_per_step)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(EqualConcurrency, requests_in_flight,
                                   requests_in_flight_by_shard, backends)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Report, schema_version, run, backends,
                                   equal_concurrency)

// The human table.
[[nodiscard]] std::string RenderTable(const Report& report);

}  // namespace kvpage::stress

#endif  // KVPAGE_TOOLS_STRESS_REPORT_H_
