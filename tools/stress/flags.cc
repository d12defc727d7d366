#include "tools/stress/flags.h"

#include <algorithm>
#include <cstdio>
#include <iterator>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_split.h"
#include "tools/flag_ranges.h"

namespace kvpage::stress {
namespace {

// The flag validators of an option's range (workload.h).
CLI::Validator Ints(OptionRange range) {
  return tools::IntRange(range.lo, range.hi);
}
CLI::Validator Reals(RealRange range) {
  return tools::FiniteRange(range.lo, range.hi);
}

// The policies as --policy spells them ("sliding-window"), in --help's order.
constexpr OverflowPolicy kPolicies[] = {
    OverflowPolicy::kError, OverflowPolicy::kSlidingWindow,
    OverflowPolicy::kCircularBuffer, OverflowPolicy::kTruncate};
std::string PolicyFlagName(OverflowPolicy policy) {
  std::string name(OverflowPolicyName(policy));
  std::replace(name.begin(), name.end(), '_', '-');
  return name;
}
constexpr DType kStoredDTypes[] = {DType::kF16, DType::kBF16};
constexpr BackendKind kBackends[] = {
    BackendKind::kPaged, BackendKind::kContiguous, BackendKind::kNaive};

// What the flags name as text, turned into Options once parsed.
struct NamedFlags {
  std::string backend = "all";
  std::string policy = "error";
  std::string dtype = "f16";
};

void DefineWorkloadFlags(CLI::App& app, Options& o) {
  app.add_option("--preset", o.preset,
                 "length statistics of requests: sharegpt (about 161 prompt, "
                 "338 output tokens on average) or alpaca (about 19, 58); "
                 "log-normal, long-tailed")
      ->check(CLI::IsMember({"sharegpt", "alpaca"}))
      ->capture_default_str();
  app.add_option("--requests", o.requests, "requests in the run")
      ->transform(Ints(kRequestsRange))
      ->capture_default_str();
  app.add_option("--concurrency", o.concurrency,
                 "requests kept in flight (closed loop), or the most in "
                 "flight with --arrival-rate")
      ->transform(Ints(kConcurrencyRange))
      ->capture_default_str();
  app.add_option("--arrival-rate", o.arrival_rate,
                 "Poisson arrivals per scheduler step (0: closed loop; else at "
                 "least 1e-06)")
      ->transform(Reals(kArrivalRateRange))
      ->capture_default_str();
  app.add_option("--max-len", o.max_len, "prompt + output capped to this")
      ->transform(Ints(kMaxLenRange))
      ->capture_default_str();
  app.add_option("--prefill-chunk", o.prefill_chunk,
                 "prompt tokens per prefill step")
      ->transform(Ints(kPrefillChunkRange))
      ->capture_default_str();
  app.add_option("--samples", o.samples,
                 "parallel samples per request (forks after the prompt)")
      ->transform(Ints(kSamplesRange))
      ->capture_default_str();
  app.add_option("--shared-prefix-fraction", o.shared_prefix_fraction,
                 "fraction of requests that start with a shared system "
                 "prompt (> 0 turns prefix caching on)")
      ->transform(Reals(kFractionRange))
      ->capture_default_str();
  app.add_option("--shared-prefixes", o.shared_prefixes,
                 "distinct system prompts; each request that has one draws "
                 "it uniformly")
      ->transform(Ints(kSharedPrefixesRange))
      ->capture_default_str();
  app.add_option("--shared-prefix-tokens", o.shared_prefix_tokens,
                 "length of the shared system prompt (at most --max-len - 2)")
      ->transform(Ints(kSharedPrefixTokensRange))
      ->capture_default_str();
  app.add_option("--spec-tokens", o.spec_tokens,
                 "speculative decoding: draft tokens written per step, the "
                 "rejected ones rolled back (0: off)")
      ->transform(Ints(kSpecTokensRange))
      ->capture_default_str();
  app.add_option("--spec-accept", o.spec_accept,
                 "chance that each draft token is accepted")
      ->transform(Reals(kFractionRange))
      ->capture_default_str();
  app.add_option("--seed", o.seed, "seed of everything random")
      ->transform(tools::UintRange(0, UINT64_MAX))
      ->capture_default_str();
}

void DefineShapeFlags(CLI::App& app, Options& o, NamedFlags& names) {
  app.add_option("--model", o.model, "KV shape by name: " + ModelNames())
      ->capture_default_str();
  app.add_option("--layers", o.layers,
                 "override the model's layers (default: the model's)")
      ->transform(Ints(kLayersRange));
  app.add_option("--kv-heads", o.kv_heads,
                 "override the model's kv-heads (default: the model's)")
      ->transform(Ints(kKvHeadsRange));
  app.add_option("--head-dim", o.head_dim,
                 "override the model's head_dim (default: the model's)")
      ->transform(Ints(kHeadDimRange));
  std::vector<std::string> dtypes;
  for (DType dtype : kStoredDTypes) dtypes.emplace_back(DTypeName(dtype));
  app.add_option("--dtype", names.dtype, "stored element type")
      ->check(CLI::IsMember(dtypes))
      ->capture_default_str();
  app.add_option("--block-tokens", o.block_tokens, "token slots per block")
      ->transform(Ints(kBlockTokensRange))
      ->capture_default_str();
  app.add_option("--pool-gib", o.pool_gib,
                 "KV memory budget in GiB, split between threads (paged: the "
                 "pool; contiguous: admission limit)")
      ->transform(Reals(kPoolGibRange))
      ->capture_default_str();
}

void DefineCacheFlags(CLI::App& app, Options& o, NamedFlags& names) {
  std::vector<std::string> policies;
  for (OverflowPolicy policy : kPolicies) {
    policies.push_back(PolicyFlagName(policy));
  }
  app.add_option("--policy", names.policy,
                 "overflow policy (paged only unless error)")
      ->check(CLI::IsMember(policies))
      ->capture_default_str();
  app.add_option("--max-seq-len", o.max_seq_len,
                 "most visible tokens per layer (default: --max-len)")
      ->transform(Ints(kMaxSeqLenRange));
  app.add_option("--sink-tokens", o.sink_tokens,
                 "leading tokens a policy never evicts (below --max-seq-len)")
      ->transform(Ints(kSinkTokensRange))
      ->capture_default_str();
  app.add_option("--compress", o.compress,
                 "compress cold blocks: off, int8 or int4 (paged only)")
      ->check(CLI::IsMember({"off", "int8", "int4"}))
      ->capture_default_str();
  app.add_option("--hot-tokens", o.hot_tokens,
                 "most recent tokens never compressed")
      ->transform(Ints(kHotTokensRange))
      ->capture_default_str();
  app.add_option("--compress-every", o.compress_every,
                 "decode steps of a sequence between CompressOldEntries calls")
      ->transform(Ints(kEveryRange))
      ->capture_default_str();
  // Two flags, the last one given wins (trigger_on_parse: in command-line
  // order). One flag "--huge-pages,!--no-huge-pages" would show as
  // "--no-huge-pages{false}" in --help, which reads as the default.
  app.add_flag_callback(
         "--huge-pages", [&o] { o.huge_pages = true; },
         "ask for transparent huge pages for the paged pool and the "
         "contiguous buffers (fewer page faults on first touch; the default)")
      ->trigger_on_parse();
  app.add_flag_callback(
         "--no-huge-pages", [&o] { o.huge_pages = false; },
         "do not ask for transparent huge pages")
      ->trigger_on_parse();
  app.add_flag_callback(
         "--prefault", [&o] { o.prefault = true; },
         "touch the paged pool when it is created, as the library does by "
         "default (no page faults on the decode path; the default)")
      ->trigger_on_parse();
  app.add_flag("--group-layers", o.group_layers,
               "one block table per group of layers (every layer here): one "
               "block per block_tokens tokens serves all layers "
               "(CacheConfig::group_layers; paged only)");
  app.add_flag_callback(
         "--no-prefault", [&o] { o.prefault = false; },
         "touch the paged pool as it fills, as the baselines' buffers are "
         "(first touches then cost page faults inside Update)")
      ->trigger_on_parse();
}

void DefineRunFlags(CLI::App& app, Options& o, NamedFlags& names) {
  app.add_option("--backend", names.backend,
                 "comma-separated: paged, contiguous, naive, or all; each "
                 "runs the same workload in its own process")
      ->capture_default_str();
  app.add_option("--threads", o.threads,
                 "worker threads, each owning a cache shard and its requests")
      ->transform(Ints(kThreadsRange))
      ->capture_default_str();
  app.add_option("--naive-budget", o.naive_budget_s,
                 "seconds the naive backend runs before it stops (its steps "
                 "cost O(context))")
      ->transform(Reals(kNaiveBudgetRange))
      ->capture_default_str();
  app.add_option("--check-every", o.check_every,
                 "scheduler steps between spot checks (invariant walk and one "
                 "sequence read back)")
      ->transform(Ints(kEveryRange))
      ->capture_default_str();
  // As --huge-pages: two flags, the last one given wins.
  app.add_flag_callback(
         "--equal-concurrency", [&o] { o.equal_concurrency = true; },
         "when paged and contiguous both run, run them at equal concurrency "
         "too: the backend that had more requests in flight runs again, held "
         "to the other's count, and the report gives the CPU per token of "
         "both passes (the default)")
      ->trigger_on_parse();
  app.add_flag_callback(
         "--no-equal-concurrency", [&o] { o.equal_concurrency = false; },
         "no equal-concurrency pass (saves the extra run)")
      ->trigger_on_parse();
  app.add_flag("--json", o.json, "print the report as JSON");
  app.add_flag("--quiet", o.quiet, "no progress bar");
  app.add_option("--snapshot", o.snapshot,
                 "write a snapshot of the paged cache at the end of the run "
                 "for kvpage-dump (one per worker shard: FILE, FILE.1, ...)");
}

void DefineRemoteFlags(CLI::App& app, Options& o) {
  app.add_option(
      "--remote", o.remote,
      "URL of a Redis server (redis://[[user]:password@]host[:port]"
      "[/db]) or cluster (redis-cluster://host:port[,host:port...]): "
      "each paged shard attaches a Redis tier of its own, as one "
      "engine instance of a fleet sharing it; blocks its prefix "
      "cache evicts are written back, MatchPrefix continues from "
      "the tier (needs --backend paged and "
      "--shared-prefix-fraction > 0)");
  app.add_flag("--remote-write-through", o.remote_write_through,
               "with --remote: write every block the prefix cache publishes, "
               "not only the evicted ones");
  app.add_option("--remote-model-id", o.remote_model_id,
                 "with --remote: the model id of the blocks' keys (default: a "
                 "fresh one per run, so that runs never share blocks; give one "
                 "to read what an earlier run wrote)");
  app.add_option("--remote-fetch-timeout-ms", o.remote_fetch_timeout_ms,
                 "with --remote: the most one fetch of MatchPrefix waits for "
                 "its blocks (RemoteTierOptions::fetch_timeout; default: the "
                 "library's, 50 ms)")
      ->transform(tools::IntRange(int64_t{1}, int64_t{600000}));
}

// The named flags as Options; false (with the line on stderr) for a
// --backend that names no backend.
bool ApplyNames(const NamedFlags& names, Options& o) {
  for (OverflowPolicy policy : kPolicies) {
    if (names.policy == PolicyFlagName(policy)) o.policy = policy;
  }
  for (DType dtype : kStoredDTypes) {
    if (names.dtype == DTypeName(dtype)) o.dtype = dtype;
  }
  o.backends.clear();
  for (const std::string& name :
       std::vector<std::string>(absl::StrSplit(names.backend, ','))) {
    if (name == "all") {
      o.backends.assign(std::begin(kBackends), std::end(kBackends));
      continue;
    }
    const size_t before = o.backends.size();
    for (BackendKind kind : kBackends) {
      if (name == BackendName(kind)) o.backends.push_back(kind);
    }
    if (o.backends.size() == before) {
      std::fprintf(stderr, "kvpage-stress: --backend: unknown backend '%s'\n",
                   name.c_str());
      return false;
    }
  }
  return true;
}

}  // namespace

ParsedFlags ParseFlags(int argc, char** argv) {
  ParsedFlags parsed;
  Options& o = parsed.options;
  NamedFlags names;
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
  app.option_defaults()->group("Workload");
  DefineWorkloadFlags(app, o);
  app.option_defaults()->group("Model and cache");
  DefineShapeFlags(app, o, names);
  DefineCacheFlags(app, o, names);
  app.option_defaults()->group("Run");
  DefineRunFlags(app, o, names);
  app.option_defaults()->group("Remote tier");
  DefineRemoteFlags(app, o);
  app.add_flag("--inject-corruption", o.inject_corruption,
               "testing: overwrite one stored token with a wrong pattern "
               "mid-run; the run must then exit 1")
      ->group("Testing");
  app.add_flag("--inject-tier-corruption", o.inject_tier_corruption,
               "testing, with --remote: flip a byte of the first block each "
               "shard fetches from the tier, before its cache loads it; the "
               "run must then exit 1")
      ->group("Testing");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) {  // --help
      parsed.exit_code = app.exit(e);
      return parsed;
    }
    // One line that names the flag ("--requests: 1e11 is not an integer
    // in [1, 1000000]").
    std::fprintf(stderr, "kvpage-stress: %s (see --help)\n", e.what());
    parsed.exit_code = kExitUsage;
    return parsed;
  }
  if (!ApplyNames(names, o)) {
    parsed.exit_code = kExitUsage;
    return parsed;
  }
  parsed.run = true;
  return parsed;
}

}  // namespace kvpage::stress
