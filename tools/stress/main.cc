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
#include <map>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "tools/flag_ranges.h"
#include "tools/stress/driver.h"
#include "tools/stress/report.h"
#include "tools/stress/workload.h"

namespace kvpage::stress {
namespace {

constexpr int kExitOk = 0, kExitFailed = 1, kExitUsage = 2;

// The flag validators of an option's range (workload.h).
CLI::Validator Ints(OptionRange r) { return tools::IntRange(r.lo, r.hi); }
CLI::Validator Reals(RealRange r) { return tools::FiniteRange(r.lo, r.hi); }

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

int Main(int argc, char** argv) {
  Options o;
  CLI::App app{
      "kvpage-stress: a serving workload on kvpage's paged KV cache (and on "
      "baselines), every token verified.\n"
      "Requests arrive, prefill in chunks, decode one token per step across "
      "every layer and leave; every token carries a pattern derived from "
      "(sequence, layer, position) and is read back. Exit code 0: all "
      "verified; 1: a verification failed (the message names sequence, layer "
      "and position) or the run failed; 2: bad usage.\n"
      "KVCache is thread-compatible: with --threads N each worker owns its "
      "own cache shard (the KV budget split N ways) and its own requests.",
      "kvpage-stress"};
  app.get_formatter()->column_width(36);
  // A flag given twice takes its last value (a script can append overrides).
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  std::string backend = "all";
  std::string policy = "error";
  std::string dtype = "f16";

  app.add_option("--preset", o.preset,
                 "length statistics of requests: sharegpt (about 161 prompt, "
                 "338 output tokens on average) or alpaca (about 19, 58); "
                 "log-normal, long-tailed")
      ->check(CLI::IsMember({"sharegpt", "alpaca"}))
      ->capture_default_str()
      ->group("Workload");
  app.add_option("--requests", o.requests, "requests in the run")
      ->transform(Ints(kRequestsRange))
      ->capture_default_str()
      ->group("Workload");
  app.add_option("--concurrency", o.concurrency,
                 "requests kept in flight (closed loop), or the most in "
                 "flight with --arrival-rate")
      ->transform(Ints(kConcurrencyRange))
      ->capture_default_str()
      ->group("Workload");
  app.add_option("--arrival-rate", o.arrival_rate,
                 "Poisson arrivals per scheduler step (0: closed loop; else at "
                 "least 1e-06)")
      ->transform(Reals(kArrivalRateRange))
      ->capture_default_str()
      ->group("Workload");
  app.add_option("--max-len", o.max_len, "prompt + output capped to this")
      ->transform(Ints(kMaxLenRange))
      ->capture_default_str()
      ->group("Workload");
  app.add_option("--prefill-chunk", o.prefill_chunk,
                 "prompt tokens per prefill step")
      ->transform(Ints(kPrefillChunkRange))
      ->capture_default_str()
      ->group("Workload");
  app.add_option("--samples", o.samples,
                 "parallel samples per request (forks after the prompt)")
      ->transform(Ints(kSamplesRange))
      ->capture_default_str()
      ->group("Workload");
  app.add_option("--shared-prefix-fraction", o.shared_prefix_fraction,
                 "fraction of requests that start with one shared system "
                 "prompt (> 0 turns prefix caching on)")
      ->transform(Reals(kFractionRange))
      ->capture_default_str()
      ->group("Workload");
  app.add_option("--shared-prefix-tokens", o.shared_prefix_tokens,
                 "length of the shared system prompt (at most --max-len - 2)")
      ->transform(Ints(kSharedPrefixTokensRange))
      ->capture_default_str()
      ->group("Workload");
  app.add_option("--spec-tokens", o.spec_tokens,
                 "speculative decoding: draft tokens written per step, the "
                 "rejected ones rolled back (0: off)")
      ->transform(Ints(kSpecTokensRange))
      ->capture_default_str()
      ->group("Workload");
  app.add_option("--spec-accept", o.spec_accept,
                 "chance that each draft token is accepted")
      ->transform(Reals(kFractionRange))
      ->capture_default_str()
      ->group("Workload");
  app.add_option("--seed", o.seed, "seed of everything random")
      ->transform(tools::UintRange(0, UINT64_MAX))
      ->capture_default_str()
      ->group("Workload");

  app.add_option("--model", o.model, "KV shape by name: " + ModelNames())
      ->capture_default_str()
      ->group("Model and cache");
  app.add_option("--layers", o.layers,
                 "override the model's layers (0: the model's)")
      ->transform(Ints(kLayersRange))
      ->group("Model and cache");
  app.add_option("--kv-heads", o.kv_heads,
                 "override the model's kv-heads (0: the model's)")
      ->transform(Ints(kKvHeadsRange))
      ->group("Model and cache");
  app.add_option("--head-dim", o.head_dim,
                 "override the model's head_dim (0: the model's)")
      ->transform(Ints(kHeadDimRange))
      ->group("Model and cache");
  app.add_option("--dtype", dtype, "stored element type")
      ->check(CLI::IsMember({"f16", "bf16"}))
      ->capture_default_str()
      ->group("Model and cache");
  app.add_option("--block-tokens", o.block_tokens, "token slots per block")
      ->transform(Ints(kBlockTokensRange))
      ->capture_default_str()
      ->group("Model and cache");
  app.add_option("--pool-gib", o.pool_gib,
                 "KV memory budget in GiB, split between threads (paged: the "
                 "pool; contiguous: admission limit)")
      ->transform(Reals(kPoolGibRange))
      ->capture_default_str()
      ->group("Model and cache");
  app.add_option("--policy", policy,
                 "overflow policy (paged only unless error)")
      ->check(CLI::IsMember(
          {"error", "sliding-window", "circular-buffer", "truncate"}))
      ->capture_default_str()
      ->group("Model and cache");
  app.add_option("--max-seq-len", o.max_seq_len,
                 "most visible tokens per layer (0: --max-len)")
      ->transform(Ints(kMaxSeqLenRange))
      ->capture_default_str()
      ->group("Model and cache");
  app.add_option("--sink-tokens", o.sink_tokens,
                 "leading tokens a policy never evicts (below --max-seq-len)")
      ->transform(Ints(kSinkTokensRange))
      ->capture_default_str()
      ->group("Model and cache");
  app.add_option("--compress", o.compress,
                 "repack cold blocks: off, int8 or int4 (paged only)")
      ->check(CLI::IsMember({"off", "int8", "int4"}))
      ->capture_default_str()
      ->group("Model and cache");
  app.add_option("--hot-tokens", o.hot_tokens,
                 "most recent tokens never compressed")
      ->transform(Ints(kHotTokensRange))
      ->capture_default_str()
      ->group("Model and cache");
  app.add_option("--compress-every", o.compress_every,
                 "decode steps of a sequence between CompressOldEntries calls")
      ->transform(Ints(kEveryRange))
      ->capture_default_str()
      ->group("Model and cache");

  app.add_option("--backend", backend,
                 "comma-separated: paged, contiguous, naive, or all; each "
                 "runs the same workload in its own process")
      ->capture_default_str()
      ->group("Run");
  app.add_option("--threads", o.threads,
                 "worker threads, each owning a cache shard and its requests")
      ->transform(Ints(kThreadsRange))
      ->capture_default_str()
      ->group("Run");
  app.add_option("--naive-budget", o.naive_budget_s,
                 "seconds the naive backend runs before it stops (its steps "
                 "cost O(context))")
      ->transform(Reals(kNaiveBudgetRange))
      ->capture_default_str()
      ->group("Run");
  app.add_option("--check-every", o.check_every,
                 "scheduler steps between spot checks (invariant walk and one "
                 "sequence read back)")
      ->transform(Ints(kEveryRange))
      ->capture_default_str()
      ->group("Run");
  app.add_flag("--huge-pages,!--no-huge-pages", o.huge_pages,
               "ask for transparent huge pages for the paged pool and the "
               "contiguous buffers (fewer page faults on first touch)")
      ->capture_default_str()
      ->group("Model and cache");
  app.add_flag("--json", o.json, "print the report as JSON")->group("Run");
  app.add_flag("--quiet", o.quiet, "no progress bar")->group("Run");
  app.add_option("--snapshot", o.snapshot,
                 "write a snapshot of the paged cache at the end of the run "
                 "for kvpage-dump (one per worker shard: FILE, FILE.1, ...)")
      ->group("Run");
  app.add_flag("--inject-corruption", o.inject_corruption,
               "testing: overwrite one stored token with a wrong pattern "
               "mid-run; the run must then exit 1")
      ->group("Testing");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    // One line that names the flag ("--requests: 1e11 is not an integer
    // in [1, 1000000]").
    std::fprintf(stderr, "kvpage-stress: %s (see --help)\n", e.what());
    return kExitUsage;
  }

  const std::map<std::string, OverflowPolicy> policies = {
      {"error", OverflowPolicy::kError},
      {"sliding-window", OverflowPolicy::kSlidingWindow},
      {"circular-buffer", OverflowPolicy::kCircularBuffer},
      {"truncate", OverflowPolicy::kTruncate}};
  o.policy = policies.at(policy);
  o.dtype = dtype == "bf16" ? DType::kBF16 : DType::kF16;
  o.backends.clear();
  for (absl::string_view name : absl::StrSplit(backend, ',')) {
    if (name == "all") {
      o.backends = {BackendKind::kPaged, BackendKind::kContiguous,
                    BackendKind::kNaive};
    } else if (name == "paged") {
      o.backends.push_back(BackendKind::kPaged);
    } else if (name == "contiguous") {
      o.backends.push_back(BackendKind::kContiguous);
    } else if (name == "naive") {
      o.backends.push_back(BackendKind::kNaive);
    } else {
      std::fprintf(stderr, "kvpage-stress: unknown backend '%s'\n",
                   std::string(name).c_str());
      return kExitUsage;
    }
  }

  absl::StatusOr<ModelShape> shape = ResolveModel(o);
  if (!shape.ok()) {
    std::fprintf(stderr, "kvpage-stress: %s\n",
                 std::string(shape.status().message()).c_str());
    return kExitUsage;
  }
  if (absl::Status s = ValidateOptions(o, *shape); !s.ok()) {
    std::fprintf(stderr, "kvpage-stress: %s\n",
                 std::string(s.message()).c_str());
    return kExitUsage;
  }
  RunContext ctx{.options = o, .shape = *shape};
  ctx.requests = GenerateRequests(o);
  ctx.longest = LongestRequest(o, ctx.requests);
  {
    // Every request must fit a shard's budget on its own. In double: at the
    // ends of the flags' ranges a request's bytes pass 2^63.
    const CacheConfig config = PagedConfig(o, *shape);
    const double shard = o.pool_gib * 1024.0 * 1024.0 * 1024.0 / o.threads;
    const double token_bytes = 2.0 * shape->layers * shape->kv_heads *
                               shape->head_dim * DTypeSize(o.dtype);
    const double longest = static_cast<double>(ctx.longest);
    const double contiguous = o.samples * longest * token_bytes;
    const int64_t blocks =
        (ctx.longest + o.block_tokens - 1) / o.block_tokens;  // < 2^25
    const double paged =
        static_cast<double>(blocks + 2 + (o.samples - 1) * (blocks + 3)) *
        shape->layers * static_cast<double>(BlockBytes(config));
    for (BackendKind kind : o.backends) {
      const double need = kind == BackendKind::kContiguous ? contiguous
                          : kind == BackendKind::kPaged    ? paged
                                                           : 0;
      if (need > shard) {
        std::fprintf(stderr,
                     "kvpage-stress: the %s backend needs %.2f GiB per "
                     "thread for the longest request (%lld tokens x %d "
                     "samples); --pool-gib %.2f over %d threads gives %.2f: "
                     "raise --pool-gib or lower --max-len\n",
                     std::string(BackendName(kind)).c_str(),
                     need / 1073741824.0, static_cast<long long>(ctx.longest),
                     o.samples, o.pool_gib, o.threads, shard / 1073741824.0);
        return kExitUsage;
      }
    }
  }

  const bool progress = !o.quiet && isatty(STDERR_FILENO) == 1;
  Report report{.run = Describe(ctx)};
  for (BackendKind kind : o.backends) {
    absl::StatusOr<BackendResult> result = RunInChild(kind, ctx, progress);
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
