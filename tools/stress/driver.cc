#include "tools/stress/driver.h"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/stress/backend.h"
#include "tools/stress/worker.h"

namespace kvpage::stress {
namespace {

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

using Backends = std::vector<std::unique_ptr<Backend>>;
using Workers = std::vector<std::unique_ptr<Worker>>;

// One backend per worker thread, each with its share of the budget.
absl::StatusOr<Backends> MakeShards(BackendKind kind, const RunContext& ctx) {
  const Options& options = ctx.options;
  const BackendParams params{
      .kind = kind,
      .shape = {.layers = ctx.shape.layers,
                .kv_heads = ctx.shape.kv_heads,
                .head_dim = ctx.shape.head_dim,
                .token_elems = static_cast<int64_t>(ctx.shape.kv_heads) *
                               ctx.shape.head_dim,
                .dtype = options.dtype,
                .policy = options.policy,
                .max_seq_len = EffectiveMaxSeqLen(options),
                .sink_tokens = options.sink_tokens,
                .rollbacks = options.spec_tokens > 0},
      .paged = PagedConfig(options, ctx.shape),
      .contiguous_tokens = ctx.longest,
      .budget_bytes = static_cast<int64_t>(options.pool_gib * 1024.0 * 1024.0 *
                                           1024.0 / options.threads),
      .samples = options.samples,
      .spec_tokens = options.spec_tokens,
      .prefix_caching = options.shared_prefix_fraction > 0,
      .remote_write_through = options.remote_write_through};
  Backends backends;
  for (int i = 0; i < options.threads; ++i) {
    // Each shard its own tier, as each engine instance of a fleet.
    BackendParams shard = params;
    if (kind == BackendKind::kPaged) {
      shard.remote = {.url = options.remote,
                      .model_id = options.remote_model_id,
                      .fetch_timeout_ms = options.remote_fetch_timeout_ms,
                      .inject_corruption = options.inject_tier_corruption,
                      .shard = i};
    }
    absl::StatusOr<std::unique_ptr<Backend>> backend = MakeBackend(shard);
    if (!backend.ok()) return backend.status();
    backends.push_back(*std::move(backend));
  }
  return backends;
}

void DrawProgress(std::string_view name, int64_t done, int64_t total,
                  double elapsed, double budget) {
  double fraction = total > 0 ? static_cast<double>(done) / total : 1;
  if (budget > 0) {
    fraction = std::max(fraction, std::min(1.0, elapsed / budget));
  }
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(fraction * kWidth);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(kWidth, '.');
  std::fprintf(stderr, "\r%-10s [%s] %3d%%  %lld/%lld requests  %.1f s",
               std::string(name).c_str(), bar.c_str(),
               static_cast<int>(fraction * 100), static_cast<long long>(done),
               static_cast<long long>(total), elapsed);
  std::fflush(stderr);
}

// Runs every worker on a thread of its own until all have finished, drawing
// the progress bar meanwhile when `progress`. Each worker's status, in shard
// order; the first failure stops the others.
std::vector<absl::Status> RunWorkers(BackendKind kind, const Workers& workers,
                                     WorkerShared& shared,
                                     const RunContext& ctx,
                                     Clock::time_point start, bool progress) {
  std::vector<absl::Status> statuses(workers.size());
  std::atomic<size_t> finished{0};
  std::vector<std::thread> threads;
  for (size_t i = 0; i < workers.size(); ++i) {
    threads.emplace_back([&, i] {
      absl::Status s = workers[i]->Run();
      if (!s.ok()) shared.stop.store(true, std::memory_order_relaxed);
      statuses[i] = std::move(s);
      finished.fetch_add(1, std::memory_order_release);
    });
  }
  const int64_t total = static_cast<int64_t>(ctx.requests.size());
  const double budget =
      kind == BackendKind::kNaive ? ctx.options.naive_budget_s : 0;
  while (finished.load(std::memory_order_acquire) < workers.size()) {
    if (progress) {
      DrawProgress(BackendName(kind), shared.requests_done.load(), total,
                   Seconds(Clock::now() - start), budget);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(progress ? 100 : 20));
  }
  for (std::thread& t : threads) t.join();
  if (progress) std::fprintf(stderr, "\r\033[K");
  return statuses;
}

// The first real failure (a verification failure before anything else).
void RecordFailure(const std::vector<absl::Status>& statuses,
                   BackendResult& result) {
  for (const absl::Status& s : statuses) {
    if (s.ok() || absl::IsCancelled(s)) continue;
    const bool verification = absl::IsDataLoss(s);
    if (result.status == "ok" ||
        (verification && result.status != "verification_failed")) {
      result.status = verification ? "verification_failed" : "error";
      result.error = std::string(s.message());
    }
  }
}

// Memory series of every shard on common time points: the last sample of
// each shard at or before each point, summed.
void MergeMemory(const Workers& workers, double wall_s, int64_t budget,
                 BackendResult& out) {
  constexpr int kPoints = 50;
  double util_sum = 0, waste_sum = 0;
  for (int i = 1; i <= kPoints; ++i) {
    const double t = wall_s * i / kPoints;
    MemorySample sum;
    for (const auto& worker : workers) {
      const MemorySample* last = nullptr;
      for (const auto& [ts, sample] : worker->memory_series) {
        if (ts > t && last != nullptr) break;
        last = &sample;
      }
      if (last == nullptr) continue;
      sum.bytes_held += last->bytes_held;
      sum.tokens_stored += last->tokens_stored;
      sum.token_slots += last->token_slots;
      sum.bytes_saved += last->bytes_saved;
    }
    MemoryPoint p{
        .t_s = t,
        .utilization =
            budget > 0 ? static_cast<double>(sum.bytes_held) / budget : 0,
        .internal_waste =
            sum.token_slots > 0
                ? 1.0 - static_cast<double>(sum.tokens_stored) / sum.token_slots
                : 0,
        .kv_bytes_held = sum.bytes_held};
    out.memory_over_time.push_back(p);
    util_sum += p.utilization;
    waste_sum += p.internal_waste;
    out.utilization_peak = std::max(out.utilization_peak, p.utilization);
    out.internal_waste_max = std::max(out.internal_waste_max, p.internal_waste);
    out.kv_bytes_held_peak = std::max(out.kv_bytes_held_peak, sum.bytes_held);
    out.bytes_saved_peak = std::max(out.bytes_saved_peak, sum.bytes_saved);
  }
  out.utilization_mean = util_sum / kPoints;
  out.internal_waste_mean = waste_sum / kPoints;
}

// Every figure of the run: the shards' counts and latencies summed, the
// rates, the memory series merged.
void MergeResults(const Workers& workers, const Backends& backends,
                  double wall_s, const Options& options,
                  BackendResult& result) {
  CallLatencies latencies;
  int64_t cache_ns = 0;
  for (const auto& worker : workers) {
    static_cast<WorkloadCounts&>(result) += worker->counts;
    for (int call = 0; call < kTimedCalls; ++call) {
      latencies[call].Merge(worker->latencies[call]);
    }
    cache_ns += worker->cache_ns;
    result.max_requests_in_flight_by_shard.push_back(
        worker->counts.max_requests_in_flight);
  }
  for (const auto& backend : backends) {
    static_cast<BackendCounters&>(result) += backend->Counters();
  }
  for (int call = 0; call < kTimedCalls; ++call) {
    result.latencies.push_back(
        Summarize(kTimedCallNames[call], latencies[call]));
  }
  result.wall_s = wall_s;
  result.cache_s = static_cast<double>(cache_ns) * 1e-9;
  if (result.cache_s > 0) {
    result.tokens_per_s_cache = result.tokens_appended / result.cache_s;
  }
  if (result.tokens_appended > 0) {
    result.cache_ns_per_token =
        static_cast<double>(cache_ns) / result.tokens_appended;
  }
  if (result.decode_steps > 0) {
    const LatencyRecorder& decode =
        latencies[static_cast<size_t>(TimedCall::kUpdateDecode)];
    result.decode_update_ns_per_step = decode.mean() *
                                       static_cast<double>(decode.count()) /
                                       result.decode_steps;
  }
  if (wall_s > 0) {
    result.tokens_per_s_wall = result.tokens_appended / wall_s;
    result.decode_steps_per_s = result.decode_steps / wall_s;
  }
  MergeMemory(workers, wall_s, result.kv_budget_bytes, result);
  result.scope = result.complete
                     ? "the whole workload"
                     : absl::StrFormat(
                           "the first %.1f s (--naive-budget): %d requests "
                           "completed, %d cut and verified at the cutoff",
                           options.naive_budget_s, result.requests_completed,
                           result.requests_cut);
}

// --snapshot: each paged shard's cache at the end of the run, FILE for the
// first, FILE.1, FILE.2, ... after. A failure fails a run that was ok.
void WriteSnapshots(const Backends& backends, const std::string& path,
                    BackendResult& result) {
  for (size_t i = 0; i < backends.size(); ++i) {
    const std::string shard_path = i == 0 ? path : absl::StrCat(path, ".", i);
    if (absl::Status s = backends[i]->WriteSnapshot(shard_path);
        !s.ok() && result.status == "ok") {
      result.status = "error";
      result.error = absl::StrCat("--snapshot: ", s.message());
    }
  }
}

}  // namespace

BackendResult RunBackend(BackendKind kind, const RunContext& ctx,
                         bool progress) {
  const Options& options = ctx.options;
  BackendResult result;
  result.backend = std::string(BackendName(kind));
  absl::StatusOr<Backends> backends = MakeShards(kind, ctx);
  if (!backends.ok()) {
    result.status = "error";
    result.error = std::string(backends.status().message());
    return result;
  }
  for (const auto& backend : *backends) {
    result.kv_budget_bytes += backend->Budget();
  }

  WorkerShared shared;
  const Clock::time_point start = Clock::now();
  std::optional<Clock::time_point> deadline;
  if (kind == BackendKind::kNaive) {
    deadline =
        start + std::chrono::duration_cast<Clock::duration>(
                    std::chrono::duration<double>(options.naive_budget_s));
  }
  Workers workers;
  for (int i = 0; i < options.threads; ++i) {
    workers.push_back(std::make_unique<Worker>(ctx, i, *(*backends)[i], shared,
                                               start, deadline));
  }
  const std::vector<absl::Status> statuses =
      RunWorkers(kind, workers, shared, ctx, start, progress);
  const double wall_s = Seconds(Clock::now() - start);
  RecordFailure(statuses, result);
  MergeResults(workers, *backends, wall_s, options, result);
  // The end of the run: every worker has finished and each shard's backend
  // is still alive here.
  if (!options.snapshot.empty() && kind == BackendKind::kPaged) {
    WriteSnapshots(*backends, options.snapshot, result);
  }
  // Workers and backends are gone before the peak is read: it covers the
  // whole run of this process (one backend; main() forks one per backend).
  workers.clear();
  backends->clear();
  rusage usage{};
  if (getrusage(RUSAGE_SELF, &usage) == 0) {
    result.peak_rss_bytes = static_cast<int64_t>(usage.ru_maxrss) * 1024;
  }
  return result;
}

}  // namespace kvpage::stress
