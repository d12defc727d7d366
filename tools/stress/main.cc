// kvpage-stress: drives kvpage the way a serving engine does — requests
// arrive, prefill in chunks, decode a token per step across every layer,
// fork, roll back drafts, compress, leave — verifies every token it wrote,
// and reports throughput, latency percentiles and memory, side by side with
// a contiguous per-sequence buffer and the naive cache of the original
// report. Exit codes: 0 all verified, 1 a verification (or the run) failed,
// 2 bad usage (one line naming the flag: a value outside the flag's range,
// workload.h, or flags that do not go together).
//
// Each backend runs in a child process of its own (fork), so that its peak
// resident memory is its own; the child hands its result back as JSON.
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "tools/stress/driver.h"
#include "tools/stress/flags.h"
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
            .longest_request_tokens = ctx.longest};
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
// flags do not go together.
absl::StatusOr<RunContext> PrepareRun(const Options& options) {
  absl::StatusOr<ModelShape> shape = ResolveModel(options);
  if (!shape.ok()) return shape.status();
  if (absl::Status s = ValidateOptions(options, *shape); !s.ok()) return s;
  RunContext ctx{.options = options, .shape = *shape};
  ctx.requests = GenerateRequests(options);
  ctx.longest = LongestRequest(options, ctx.requests);
  if (absl::Status s = CheckLongestRequestFits(ctx); !s.ok()) return s;
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
  for (BackendKind kind : o.backends) {
    absl::StatusOr<BackendResult> result = RunInChild(kind, *ctx, progress);
    if (!result.ok()) {
      std::fprintf(stderr, "kvpage-stress: %s\n",
                   std::string(result.status().message()).c_str());
      return kExitFailed;
    }
    if (result->status != "ok") {
      std::fprintf(stderr, "kvpage-stress: %s on the %s backend: %s\n",
                   result->status == "verification_failed"
                       ? "verification failed"
                       : "the run failed",
                   result->backend.c_str(), result->error.c_str());
      return kExitFailed;
    }
    report.backends.push_back(std::move(*result));
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
