// kvpage-replay: replays a request trace (JSONL, the format public
// production traces publish; tools/replay/trace.h) through kvpage's prefix
// cache for a list of pool sizes in one run, and reports the token and
// block hit rates, the cost per request (p50, p99) and the memory held. Its
// `generate` verb writes a synthetic trace of shared system prompts and
// multi-turn conversations. With --remote, each pool size is replayed a
// second time with the Redis tier attached (tools/replay/remote.h), and the
// report gives both hit rates side by side and the tier's own counts.
//
// Exit codes: 0 ok, 1 the replay failed (a call kvpage refused that the
// admission should have made safe, --verify found a wrong token, or memory
// ran out), 2 bad usage, a trace line that is not a request, an empty
// trace, a cache kvpage cannot create, or a Redis server that cannot be
// used (one line on stderr naming it).
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <random>
#include <string>
#include <unordered_set>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kvpage/prefix.h"
#include "nlohmann/json.hpp"
#include "tools/flag_ranges.h"
#include "tools/remote_stats_json.h"
#include "tools/replay/remote.h"
#include "tools/replay/replay.h"
#include "tools/replay/trace.h"

namespace kvpage::replay {
namespace {

constexpr int kFailed = 1;
constexpr int kBadInput = 2;

struct Args {
  // generate
  SyntheticTraceOptions synthetic;
  std::string out;
  // run
  std::string trace;
  bool trace_given = false;
  int64_t synthetic_requests = 0;
  std::vector<int64_t> pool_blocks;
  ReplayOptions replay;
  bool no_leave_last_token = false;
  bool json = false;
  // run --remote
  RemoteOptions remote;
  std::string remote_model_id = "kvpage-replay";
};

// What the runs write under in Redis: the --remote-model-id, then a name
// of this invocation's own, then the pool and the run's index in the
// report (ModelIdOf): no run reads another's blocks.
struct RemoteSetup {
  std::string url;       // without its password
  std::string model_id;  // "<--remote-model-id>/replay-<16 hex digits>"
};

// One pool size: replayed without a tier, and with the Redis tier.
struct Row {
  ReplayResult plain;
  std::optional<RemoteRun> remote;
};

std::string ModelIdOf(const RemoteSetup& setup, int64_t pool, size_t run) {
  return absl::StrFormat("%s/pool=%d/run=%d", setup.model_id, pool, run);
}

int Fail(int code, const std::string& message) {
  std::cerr << "kvpage-replay: " << message << "\n";
  return code;
}

// Blocks (ids) it takes to hold every distinct full block of the prompts
// once: kvpage's blocks, told apart by their chain hash.
int64_t Footprint(const std::vector<TraceRequest>& trace,
                  const ReplayOptions& o, int64_t groups) {
  std::unordered_set<uint64_t> distinct;
  const size_t bt = static_cast<size_t>(o.block_tokens);
  for (const TraceRequest& r : trace) {
    const std::vector<int32_t> tokens = PromptTokens(r, o.trace_block_tokens);
    uint64_t h = 0;
    for (size_t b = 0; (b + 1) * bt <= tokens.size(); ++b) {
      h = PrefixBlockHash(h, 0,
                          absl::MakeConstSpan(tokens).subspan(b * bt, bt));
      distinct.insert(h);
    }
  }
  return static_cast<int64_t>(distinct.size()) * groups;
}

std::string Text(const std::vector<TraceRequest>& trace, const Args& args,
                 int64_t footprint, const std::optional<RemoteSetup>& setup,
                 const std::vector<Row>& rows) {
  int64_t prompt = 0, output = 0;
  for (const TraceRequest& r : trace) {
    prompt += r.input_length;
    output += r.output_length;
  }
  const ReplayOptions& o = args.replay;
  std::string s = absl::StrFormat(
      "kvpage-replay: %d requests, %d prompt tokens, %d output tokens; %d "
      "layers%s, blocks of %d tokens, %d in flight at most; every distinct "
      "prompt block once: %d blocks\n",
      trace.size(), prompt, output, o.num_layers,
      o.group_layers ? " in groups" : "", o.block_tokens, o.concurrency,
      footprint);
  s += absl::StrFormat("%11s %10s %8s %8s %9s %9s %10s %10s %10s %12s",
                       "pool_blocks", "held_MiB", "requests", "rejected",
                       "token_hit", "block_hit", "p50_us", "p99_us", "mean_us",
                       "cached_end");
  s += setup ? absl::StrFormat(" %14s %14s %14s\n", "tier_token_hit",
                               "tier_block_hit", "blocks_fetched")
             : "\n";
  for (const Row& row : rows) {
    const ReplayResult& r = row.plain;
    s += absl::StrFormat(
        "%11d %10.1f %8d %8d %9.4f %9.4f %10.1f %10.1f %10.1f %12d",
        r.pool_blocks,
        static_cast<double>(r.peak_blocks_held * r.block_bytes) / (1 << 20),
        r.requests, r.rejected, r.token_hit_rate, r.block_hit_rate,
        r.cost_p50_us, r.cost_p99_us, r.cost_mean_us, r.blocks_cached_end);
    if (row.remote) {
      const ReplayResult& t = row.remote->replay;
      s += absl::StrFormat(" %14.4f %14.4f %14d", t.token_hit_rate,
                           t.block_hit_rate, t.blocks_fetched);
    }
    s += "\n";
  }
  if (!setup) return s;
  s += absl::StrFormat(
      "the remote tier: %s, model ids %s/pool=N/run=K, %s, a queue of %d "
      "blocks\n",
      setup->url, setup->model_id,
      args.remote.write_through ? "write-back and write-through" : "write-back",
      args.remote.queue_blocks);
  s += absl::StrFormat("%11s %12s %15s %11s %6s %12s %12s %11s %11s\n",
                       "pool_blocks", "written_back", "written_through",
                       "queue_drops", "errors", "fetch_p50_us", "fetch_p99_us",
                       "tier_p50_us", "tier_p99_us");
  for (const Row& row : rows) {
    if (!row.remote) continue;
    const RemoteTierStats& t = row.remote->stats;
    const ReplayResult& r = row.remote->replay;
    s += absl::StrFormat(
        "%11d %12d %15d %11d %6d %12.1f %12.1f %11.1f %11.1f\n", r.pool_blocks,
        t.blocks_written_back, t.blocks_written_through, t.queue_drops,
        t.write_errors + t.fetch_errors + t.corrupt_blocks + t.foreign_blocks,
        t.fetch_p50_us, t.fetch_p99_us, r.cost_p50_us, r.cost_p99_us);
  }
  return s;
}

// One replay's figures; a run's, and the same keys for its run with the
// tier.
nlohmann::json JsonOf(const ReplayResult& r) {
  return {{"pool_blocks", r.pool_blocks},
          {"block_bytes", r.block_bytes},
          {"requests", r.requests},
          {"rejected", r.rejected},
          {"tokens_queried", r.tokens_queried},
          {"tokens_matched", r.tokens_matched},
          {"blocks_queried", r.blocks_queried},
          {"blocks_hit", r.blocks_hit},
          {"tokens_fetched", r.tokens_fetched},
          {"blocks_fetched", r.blocks_fetched},
          {"token_hit_rate", r.token_hit_rate},
          {"block_hit_rate", r.block_hit_rate},
          {"cost_p50_us", r.cost_p50_us},
          {"cost_p99_us", r.cost_p99_us},
          {"cost_mean_us", r.cost_mean_us},
          {"peak_blocks_held", r.peak_blocks_held},
          {"peak_bytes_held", r.peak_blocks_held * r.block_bytes},
          {"blocks_cached_end", r.blocks_cached_end},
          {"prefix_entries_end", r.prefix_entries_end}};
}

nlohmann::json Json(const std::vector<TraceRequest>& trace, const Args& args,
                    int64_t footprint, const std::optional<RemoteSetup>& setup,
                    const std::vector<Row>& rows) {
  const ReplayOptions& o = args.replay;
  nlohmann::json remote = nullptr;
  if (setup) {
    remote = {{"url", setup->url},
              {"model_id", setup->model_id},
              {"write_through", args.remote.write_through},
              {"queue_blocks", args.remote.queue_blocks}};
  }
  nlohmann::json j = {{"schema_version", 2},
                      {"requests", trace.size()},
                      {"num_layers", o.num_layers},
                      {"group_layers", o.group_layers},
                      {"block_tokens", o.block_tokens},
                      {"trace_block_tokens", o.trace_block_tokens},
                      {"concurrency", o.concurrency},
                      {"leave_last_token", o.leave_last_token},
                      {"footprint_blocks", footprint},
                      {"remote", remote},
                      {"runs", nlohmann::json::array()}};
  for (const Row& row : rows) {
    nlohmann::json run = JsonOf(row.plain);
    if (row.remote) {
      nlohmann::json tier = JsonOf(row.remote->replay);
      tier["model_id"] = row.remote->model_id;
      tier["remote"] = tools::RemoteTierStatsJson(row.remote->stats);
      run["tier"] = std::move(tier);
    }
    j["runs"].push_back(std::move(run));
  }
  return j;
}

int Generate(const Args& args) {
  absl::StatusOr<std::vector<TraceRequest>> trace =
      GenerateTrace(args.synthetic);
  if (!trace.ok())
    return Fail(kBadInput, std::string(trace.status().message()));
  if (args.out.empty()) {
    WriteTrace(*trace, std::cout);
    std::cout.flush();
    return std::cout ? 0 : Fail(kBadInput, "stdout could not be written");
  }
  std::ofstream out(args.out);
  WriteTrace(*trace, out);
  out.close();
  if (!out) return Fail(kBadInput, args.out + " could not be written");
  return 0;
}

// Checks the server before anything is replayed, and names this
// invocation's runs: a model id no earlier invocation used.
absl::StatusOr<RemoteSetup> SetUpRemote(const Args& args) {
  absl::StatusOr<std::string> url = CheckRemote(args.remote);
  if (!url.ok()) return url.status();
  std::random_device random;
  const uint64_t nonce = (static_cast<uint64_t>(random()) << 32) ^ random();
  return RemoteSetup{.url = *std::move(url),
                     .model_id = absl::StrFormat("%s/replay-%016x",
                                                 args.remote_model_id, nonce)};
}

int Run(Args& args, bool remote) {
  args.replay.leave_last_token = !args.no_leave_last_token;
  std::optional<RemoteSetup> setup;
  if (remote) {
    absl::StatusOr<RemoteSetup> s = SetUpRemote(args);
    if (!s.ok()) {
      return Fail(kBadInput, absl::StrCat("--remote: ", s.status().message()));
    }
    setup = *std::move(s);
  }
  std::vector<TraceRequest> trace;
  if (args.trace_given && args.trace.empty()) {
    return Fail(kBadInput, "--trace: the path is empty");
  }
  if (args.trace_given) {
    std::ifstream in(args.trace);
    if (!in) return Fail(kBadInput, args.trace + " could not be opened");
    absl::StatusOr<std::vector<TraceRequest>> parsed =
        ParseTrace(in, args.replay.trace_block_tokens);
    if (!parsed.ok()) {
      return Fail(kBadInput,
                  args.trace + ": " + std::string(parsed.status().message()));
    }
    trace = *std::move(parsed);
    if (trace.empty())
      return Fail(kBadInput, args.trace + ": holds no request");
    std::stable_sort(trace.begin(), trace.end(),
                     [](const TraceRequest& a, const TraceRequest& b) {
                       return a.timestamp < b.timestamp;
                     });
  } else {
    SyntheticTraceOptions synthetic;
    synthetic.requests = args.synthetic_requests;
    synthetic.trace_block_tokens = args.replay.trace_block_tokens;
    absl::StatusOr<std::vector<TraceRequest>> generated =
        GenerateTrace(synthetic);
    if (!generated.ok()) {
      return Fail(kBadInput, std::string(generated.status().message()));
    }
    trace = *std::move(generated);
  }
  const int64_t groups = args.replay.group_layers ? 1 : args.replay.num_layers;
  const int64_t footprint = Footprint(trace, args.replay, groups);
  std::vector<int64_t> pools = args.pool_blocks;
  if (pools.empty()) {
    // Never below the largest request, so that the default rows replay it.
    int64_t largest = 1;
    for (const TraceRequest& r : trace) {
      largest = std::max(largest, (r.input_length + r.output_length +
                                   args.replay.block_tokens - 1) /
                                      args.replay.block_tokens * groups);
    }
    for (int64_t d : {8, 4, 2, 1}) {
      const int64_t pool = std::max(largest, footprint / d);
      if (pools.empty() || pools.back() != pool) pools.push_back(pool);
    }
  }
  const auto failed = [](int64_t pool, const char* with,
                         const absl::Status& s) {
    const int code =
        s.code() == absl::StatusCode::kInvalidArgument ? kBadInput : kFailed;
    return Fail(code, absl::StrFormat("pool of %d blocks%s: %s", pool, with,
                                      s.message()));
  };
  std::vector<Row> rows;
  for (int64_t pool : pools) {
    absl::StatusOr<ReplayResult> r = Replay(trace, pool, args.replay);
    if (!r.ok()) return failed(pool, "", r.status());
    Row row{.plain = *std::move(r)};
    if (setup) {
      absl::StatusOr<RemoteRun> t =
          ReplayWithRemote(trace, pool, args.replay, args.remote,
                           ModelIdOf(*setup, pool, rows.size()));
      if (!t.ok()) return failed(pool, " with the remote tier", t.status());
      row.remote = *std::move(t);
    }
    rows.push_back(std::move(row));
  }
  if (args.json) {
    std::cout << Json(trace, args, footprint, setup, rows).dump(2) << "\n";
  } else {
    std::cout << Text(trace, args, footprint, setup, rows);
  }
  std::cout.flush();
  return std::cout ? 0 : Fail(kBadInput, "stdout could not be written");
}

}  // namespace
}  // namespace kvpage::replay

int main(int argc, char** argv) {
  namespace replay = kvpage::replay;
  using kvpage::tools::FiniteRange;
  using kvpage::tools::IntRange;
  using kvpage::tools::UintRange;
  CLI::App app{
      "kvpage-replay: replay a request trace through kvpage's prefix cache for "
      "a list of pool sizes, or write a synthetic trace.\n"
      "Exit codes: 0 ok, 1 the replay failed, 2 bad usage or a bad trace."};
  app.require_subcommand(1);
  replay::Args args;

  CLI::App* generate = app.add_subcommand(
      "generate", "Write a synthetic trace (JSONL) to stdout or --out");
  replay::SyntheticTraceOptions& s = args.synthetic;
  generate->add_option("--requests", s.requests, "Requests")
      ->transform(IntRange(1, 10000000));
  generate
      ->add_option("--trace-block-tokens", s.trace_block_tokens,
                   "Tokens per hash id")
      ->transform(IntRange(1, 1 << 20));
  generate
      ->add_option("--system-prompts", s.system_prompts,
                   "Distinct shared system prompts")
      ->transform(IntRange(1, 1000000));
  generate->add_option("--system-prompt-tokens-max", s.system_prompt_tokens_max)
      ->transform(IntRange(1, 1 << 22));
  generate
      ->add_option("--max-turns", s.max_turns,
                   "Turns per conversation, at most")
      ->transform(IntRange(1, 100000));
  generate->add_option("--user-tokens-max", s.user_tokens_max)
      ->transform(IntRange(1, 1 << 22));
  generate->add_option("--output-tokens-max", s.output_tokens_max)
      ->transform(IntRange(1, 1 << 22));
  generate
      ->add_option(
          "--shared-system-prompt", s.shared_system_prompt,
          "Fraction of conversations that open with a shared system prompt")
      ->transform(FiniteRange(0, 1));
  generate->add_option("--seed", s.seed)->transform(UintRange(0, UINT64_MAX));
  generate->add_option("--out", args.out, "File to write (default stdout)");

  CLI::App* run = app.add_subcommand("run",
                                     "Replay a trace for each pool size and "
                                     "report hit rates, cost and memory");
  auto* source = run->add_option_group("source", "The trace");
  source->add_option("--trace", args.trace, "JSONL trace file");
  source
      ->add_option("--synthetic", args.synthetic_requests,
                   "Replay the synthetic trace of this many requests (seed 1)")
      ->transform(IntRange(1, 10000000));
  source->require_option(1);
  replay::ReplayOptions& o = args.replay;
  run->add_option("--pool-blocks", args.pool_blocks,
                  "Pool sizes in blocks, comma-separated (default: 1/8, 1/4, "
                  "1/2 and all of the trace's distinct prompt blocks)")
      ->delimiter(',')
      ->transform(IntRange(1, int64_t{1} << 31));
  run->add_option("--layers", o.num_layers)->transform(IntRange(1, 1024));
  run->add_option("--kv-heads", o.num_kv_heads)->transform(IntRange(1, 1024));
  run->add_option("--head-dim", o.head_dim)->transform(IntRange(1, 4096));
  run->add_option("--block-tokens", o.block_tokens, "kvpage's block")
      ->transform(IntRange(1, 65536));
  run->add_option("--trace-block-tokens", o.trace_block_tokens,
                  "Tokens per hash id of the trace")
      ->transform(IntRange(1, 1 << 20));
  run->add_option("--chunk", o.chunk_tokens, "Prefill tokens per Update")
      ->transform(IntRange(1, 1 << 24));
  run->add_option("--concurrency", o.concurrency, "Requests in flight, at most")
      ->transform(IntRange(1, 100000));
  run->add_flag("--group-layers", o.group_layers,
                "One block table per group of layers");
  run->add_flag("--no-leave-last-token", args.no_leave_last_token,
                "Let a match take the whole prompt");
  run->add_flag(
      "--verify", o.verify,
      "Check every matched token of every layer against what was written");
  run->add_flag("--json", args.json, "JSON instead of the table");
  CLI::Option* remote =
      run->add_option("--remote", args.remote.url,
                      "Replay each pool also with the Redis tier of this "
                      "server: redis://[[user]:password@]host[:port][/db] or "
                      "redis-cluster://host:port[,host:port...]");
  run->add_option("--remote-model-id", args.remote_model_id,
                  "Model id the runs' blocks are written under, before a "
                  "name of this run's own (default kvpage-replay)")
      ->needs(remote);
  run->add_flag("--write-through", args.remote.write_through,
                "Offer the tier every block published, not only evicted ones")
      ->needs(remote);
  run->add_option("--remote-queue-blocks", args.remote.queue_blocks,
                  "Blocks the tier's writer queue holds; more are dropped")
      ->transform(IntRange(1, 1 << 24))
      ->needs(remote);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::string message = e.what();
    if (app.get_subcommands().empty()) {  // CLI11 would say no more than that
      message = "a verb is required: generate, run";
      for (int i = 1; i < argc; ++i) {
        if (argv[i][0] != '-') {
          message = std::string("'") + argv[i] +
                    "' is not a verb; the verbs are generate, run";
          break;
        }
      }
    }
    std::cerr << "kvpage-replay: " << message << " (see --help)\n";
    return replay::kBadInput;
  }
  args.trace_given = run->count("--trace") > 0;
  try {
    return generate->parsed() ? replay::Generate(args)
                              : replay::Run(args, remote->count() > 0);
  } catch (const std::exception& e) {  // the standard library (bad_alloc)
    std::cerr << "kvpage-replay: " << e.what() << "\n";
    return replay::kFailed;
  }
}
