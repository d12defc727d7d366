// kvpage-stress: drives kvpage the way a serving engine does — requests
// arrive, prefill in chunks, decode a token per step across every layer,
// fork, roll back drafts, compress, leave — verifies every token it wrote,
// and reports throughput, latency percentiles and memory, side by side with
// a contiguous per-sequence buffer and the naive cache of the original
// report. Exit codes: 0 all verified, 1 a verification (or the run) failed,
// 2 bad usage (one line naming the flag: a value outside the flag's range,
// workload.h, or flags that do not go together; --remote that this build
// lacks or whose server cannot be used).
//
// Each backend runs in a child process of its own (fork), so that its peak
// resident memory is its own; the child hands its result back as JSON.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "tools/stress/driver.h"
#include "tools/stress/flags.h"
#include "tools/stress/remote.h"
#include "tools/stress/report.h"
#include "tools/stress/workload.h"

namespace kvpage::stress {
namespace {

// Runs one backend in a child process and reads its result back.
absl::StatusOr<BackendResult> RunInChild(BackendKind kind,
                                         const RunContext& ctx, bool progress) {
  int fds[2];
  if (pipe(fds) != 0) return absl::InternalError("pipe failed");
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    close(fds[0]);
    const BackendResult result = RunBackend(kind, ctx, progress);
    const std::string text = nlohmann::json(result).dump();
    size_t done = 0;
    while (done < text.size()) {
      const ssize_t n = write(fds[1], text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) _exit(3);
      done += static_cast<size_t>(n);
    }
    close(fds[1]);
    std::fflush(stderr);
    _exit(0);
  }
  close(fds[1]);
  std::string text;
  char buf[65536];
  for (;;) {
    const ssize_t n = read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  close(fds[0]);
  int wstatus = 0;
  while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0 || text.empty()) {
    return absl::InternalError(absl::StrFormat(
        "the %s run died (%s %d) before reporting",
        std::string(BackendName(kind)),
        WIFSIGNALED(wstatus) ? "signal" : "exit code",
        WIFSIGNALED(wstatus) ? WTERMSIG(wstatus) : WEXITSTATUS(wstatus)));
  }
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) return absl::InternalError("unreadable child report");
  return j.get<BackendResult>();
}

// RunInChild, and an error that says what failed (and on which backend)
// unless every token verified.
absl::StatusOr<BackendResult> RunVerified(BackendKind kind,
                                          const RunContext& ctx,
                                          bool progress) {
  absl::StatusOr<BackendResult> result = RunInChild(kind, ctx, progress);
  if (!result.ok() || result->status == "ok") return result;
  return absl::InternalError(absl::StrFormat(
      "%s on the %s backend: %s",
      result->status == "verification_failed" ? "verification failed"
                                              : "the run failed",
      result->backend, result->error));
}

// The equal-concurrency pass. At the budget's concurrency the paged and
// contiguous backends run different batches: the contiguous one reserves
// the longest request's size per sequence, so the same budget holds fewer
// (the default workload: 32 in flight against 12), and time per token
// depends on the batch (more sequences' blocks and tables in play per
// step), so that comparison mixes the two. Here each shard is held to the
// smaller of the two backends' most requests in flight on that shard, the
// largest count both reach, and only a backend that had more runs again.
// The other one is not rerun: its budget (or the arrivals) held it at that
// count, and admission depends on scheduler steps, not on time, so a cap it
// never reached would repeat its run step for step. That is one extra run
// of one backend (the paged one at 12 in the default workload; about its
// first run's time, as the same tokens are written), and none when both
// reached the same count: cheaper than capping both at a new count, and
// clearer than picking the windows of a run where the counts happened to
// match.
absl::StatusOr<EqualConcurrency> RunAtEqualConcurrency(
    const RunContext& ctx, const std::vector<BackendResult>& budget_runs,
    bool progress) {
  EqualConcurrency equal;
  std::vector<std::pair<BackendKind, const BackendResult*>> pair;
  for (BackendKind kind : {BackendKind::kPaged, BackendKind::kContiguous}) {
    for (const BackendResult& result : budget_runs) {
      if (result.backend == BackendName(kind)) {
        pair.emplace_back(kind, &result);
        break;
      }
    }
  }
  if (pair.size() != 2) return equal;
  const std::vector<int64_t>& a =
      pair[0].second->max_requests_in_flight_by_shard;
  const std::vector<int64_t>& b =
      pair[1].second->max_requests_in_flight_by_shard;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    // At least 1: a shard without requests admits none either way.
    equal.requests_in_flight_by_shard.push_back(
        std::max<int64_t>(1, std::min(a[i], b[i])));
    equal.requests_in_flight += equal.requests_in_flight_by_shard.back();
  }
  RunContext held = ctx;
  held.shard_concurrency = equal.requests_in_flight_by_shard;
  held.options.snapshot.clear();  // the budget's run wrote it
  for (const auto& [kind, result] : pair) {
    bool exceeded = false;
    for (size_t i = 0; i < held.shard_concurrency.size(); ++i) {
      exceeded |= result->max_requests_in_flight_by_shard[i] >
                  held.shard_concurrency[i];
    }
    if (!exceeded) {
      equal.backends.push_back(CpuCostOf(*result, /*rerun=*/false));
      continue;
    }
    absl::StatusOr<BackendResult> rerun = RunVerified(kind, held, progress);
    if (!rerun.ok()) return rerun.status();
    equal.backends.push_back(CpuCostOf(*rerun, /*rerun=*/true));
  }
  return equal;
}

RunInfo Describe(const RunContext& ctx) {
  const Options& o = ctx.options;
  RunInfo r{.preset = o.preset,
            .model = ctx.shape.name,
            .layers = ctx.shape.layers,
            .kv_heads = ctx.shape.kv_heads,
            .head_dim = ctx.shape.head_dim,
            .dtype = std::string(DTypeName(o.dtype)),
            .block_tokens = o.block_tokens,
            .bytes_per_token = 2LL * ctx.shape.layers * ctx.shape.kv_heads *
                               ctx.shape.head_dim * DTypeSize(o.dtype),
            .requests = o.requests,
            .concurrency = o.concurrency,
            .arrival_rate = o.arrival_rate,
            .samples = o.samples,
            .shared_prefix_fraction = o.shared_prefix_fraction,
            .shared_prefix_tokens = o.shared_prefix_tokens,
            .shared_prefixes = o.shared_prefixes,
            .spec_tokens = o.spec_tokens,
            .spec_accept = o.spec_accept,
            .policy = std::string(OverflowPolicyName(o.policy)),
            .max_seq_len = EffectiveMaxSeqLen(o),
            .sink_tokens = o.sink_tokens,
            .compress = o.compress,
            .threads = o.threads,
            .seed = o.seed,
            .kv_budget_bytes =
                static_cast<int64_t>(o.pool_gib * 1024.0 * 1024.0 * 1024.0),
            .longest_request_tokens = ctx.longest,
            .remote = o.remote.empty() ? "" : RedactedRemoteUrl(o.remote),
            .remote_model_id = o.remote_model_id,
            .remote_write_through = o.remote_write_through,
            .remote_fetch_timeout_ms = o.remote_fetch_timeout_ms};
  int64_t prompt = 0, output = 0;
  for (const Request& q : ctx.requests) {
    prompt += q.prompt;
    output += q.output;
    r.workload_tokens += q.prompt + o.samples * q.output;
  }
  const double n = static_cast<double>(ctx.requests.size());
  r.mean_prompt_tokens = static_cast<double>(prompt) / n;
  r.mean_output_tokens = static_cast<double>(output) / n;
  return r;
}

// Every request must fit a shard's budget on its own; InvalidArgument
// naming --pool-gib otherwise. In double: at the ends of the flags' ranges a
// request's bytes pass 2^63.
absl::Status CheckLongestRequestFits(const RunContext& ctx) {
  const Options& o = ctx.options;
  const ModelShape& shape = ctx.shape;
  const CacheConfig config = PagedConfig(o, shape);
  const double shard = o.pool_gib * 1024.0 * 1024.0 * 1024.0 / o.threads;
  const double token_bytes =
      2.0 * shape.layers * shape.kv_heads * shape.head_dim * DTypeSize(o.dtype);
  const double longest = static_cast<double>(ctx.longest);
  const double contiguous = o.samples * longest * token_bytes;
  const int64_t blocks =
      (ctx.longest + o.block_tokens - 1) / o.block_tokens;  // < 2^25
  const double paged =
      static_cast<double>(blocks + 2 + (o.samples - 1) * (blocks + 3)) *
      shape.layers * static_cast<double>(BlockBytes(config));
  for (BackendKind kind : o.backends) {
    const double need = kind == BackendKind::kContiguous ? contiguous
                        : kind == BackendKind::kPaged    ? paged
                                                         : 0;
    if (need > shard) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "the %s backend needs %.2f GiB per thread for the longest request "
          "(%lld tokens x %d samples); --pool-gib %.2f over %d threads gives "
          "%.2f: raise --pool-gib or lower --max-len",
          std::string(BackendName(kind)), need / 1073741824.0,
          static_cast<long long>(ctx.longest), o.samples, o.pool_gib, o.threads,
          shard / 1073741824.0));
    }
  }
  return absl::OkStatus();
}

// The run's context from valid flags, or the usage error that says which
// flags do not go together, or why --remote cannot be used (no tier in
// this build, a bad URL, a server that does not answer or refuses the
// password).
absl::StatusOr<RunContext> PrepareRun(const Options& options) {
  absl::StatusOr<ModelShape> shape = ResolveModel(options);
  if (!shape.ok()) return shape.status();
  if (absl::Status s = ValidateOptions(options, *shape); !s.ok()) return s;
  RunContext ctx{.options = options, .shape = *shape};
  ctx.requests = GenerateRequests(options);
  ctx.longest = LongestRequest(options, ctx.requests);
  if (absl::Status s = CheckLongestRequestFits(ctx); !s.ok()) return s;
  if (!ctx.options.remote.empty() && ctx.options.remote_model_id.empty()) {
    ctx.options.remote_model_id = FreshModelId(ctx.options.seed);
  }
  // The server answers (and takes the password) before any backend runs.
  if (absl::Status s = CheckRemote(ctx.options); !s.ok()) return s;
  return ctx;
}

int Main(int argc, char** argv) {
  const ParsedFlags flags = ParseFlags(argc, argv);
  if (!flags.run) return flags.exit_code;
  const absl::StatusOr<RunContext> ctx = PrepareRun(flags.options);
  if (!ctx.ok()) {
    std::fprintf(stderr, "kvpage-stress: %s\n",
                 std::string(ctx.status().message()).c_str());
    return kExitUsage;
  }
  const Options& o = ctx->options;
  const bool progress = !o.quiet && isatty(STDERR_FILENO) == 1;
  Report report{.run = Describe(*ctx)};
  auto failed = [](const absl::Status& status) {
    std::fprintf(stderr, "kvpage-stress: %s\n",
                 std::string(status.message()).c_str());
    return kExitFailed;
  };
  for (BackendKind kind : o.backends) {
    absl::StatusOr<BackendResult> result = RunVerified(kind, *ctx, progress);
    if (!result.ok()) return failed(result.status());
    report.backends.push_back(std::move(*result));
  }
  if (o.equal_concurrency) {
    absl::StatusOr<EqualConcurrency> equal =
        RunAtEqualConcurrency(*ctx, report.backends, progress);
    if (!equal.ok()) return failed(equal.status());
    report.equal_concurrency = std::move(*equal);
  }
  if (o.json) {
    std::cout << nlohmann::json(report).dump(2) << "\n";
  } else {
    std::cout << RenderTable(report);
  }
  return kExitOk;
}

}  // namespace
}  // namespace kvpage::stress

int main(int argc, char** argv) { return kvpage::stress::Main(argc, argv); }
