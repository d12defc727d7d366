// kvpage-share: one engine instance among several that share prefix blocks
// through Redis (kvpage/remote_tier.h). It serves turns of conversations
// that open with a shared system prompt (tools/share/share.h), writing the
// blocks it publishes to Redis; run again as another process with later
// turns, it restores the conversations' histories from Redis, computes
// only the rest, and reports the tokens not recomputed and the time to
// restore them beside the time to write them again. tools/share_demo.sh
// runs the two processes against a Redis Cluster it starts.
//
// Exit codes: 0 ok, 1 the run failed (a restored token differs from what
// its writer wrote, or a call failed that the pool size should have made
// safe), 2 bad usage or a Redis URL that cannot be reached or used (one
// line on stderr naming it).
#include <cstdio>
#include <iostream>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "kvpage/remote_tier.h"
#include "nlohmann/json.hpp"
#include "tools/flag_ranges.h"
#include "tools/remote_stats_json.h"
#include "tools/share/share.h"

namespace kvpage::share {
namespace {

constexpr int kFailed = 1;
constexpr int kBadInput = 2;

struct Args {
  ShareOptions share;
  RemoteTierOptions remote{.model_id = "kvpage-share"};
  std::string turns = "1-4";
  int64_t fetch_timeout_ms = 1000;
  bool no_verify = false, no_compare = false, no_write_through = false;
  bool no_drain = false;
  bool json = false;
};

int Fail(int code, const std::string& message) {
  std::cerr << "kvpage-share: " << message << "\n";
  return code;
}

// "T" or "FIRST-LAST", turns from 1.
bool ParseTurns(const std::string& text, ShareOptions& o) {
  const std::vector<std::string> parts = absl::StrSplit(text, '-');
  int first = 0, last = 0;
  if (parts.size() == 1 && absl::SimpleAtoi(parts[0], &first)) {
    last = first;
  } else if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &first) ||
             !absl::SimpleAtoi(parts[1], &last)) {
    return false;
  }
  if (first < 1 || last < first || last > 100000) return false;
  o.first_turn = first;
  o.last_turn = last;
  return true;
}

double PerToken(double seconds, int64_t tokens) {
  return tokens > 0 ? seconds * 1e6 / static_cast<double>(tokens) : 0;
}

double GiBPerSecond(int64_t bytes, double seconds) {
  return seconds > 0 ? static_cast<double>(bytes) / seconds / (1 << 30) : 0;
}

nlohmann::json Json(const Args& args, const ShareResult& r,
                    const RemoteTierStats& t, double drain_s) {
  const ShareOptions& o = args.share;
  return {{"schema_version", 1},
          {"first_turn", o.first_turn},
          {"last_turn", o.last_turn},
          {"conversations", o.conversations},
          {"system_tokens", o.system_tokens},
          {"message_tokens", o.message_tokens},
          {"answer_tokens_per_turn", o.answer_tokens},
          {"num_layers", o.num_layers},
          {"num_kv_heads", o.num_kv_heads},
          {"head_dim", o.head_dim},
          {"block_tokens", o.block_tokens},
          {"group_layers", o.group_layers},
          {"pool_blocks", r.pool_blocks},
          {"token_bytes", r.token_bytes},
          {"requests", r.requests},
          {"prompt_tokens", r.prompt_tokens},
          {"matched_local", r.matched_local},
          {"matched_tier", r.matched_tier},
          {"computed", r.computed},
          {"answer_tokens", r.answer_tokens},
          {"tokens_verified", r.tokens_verified},
          {"match_s", r.match_s},
          {"prefill_s", r.prefill_s},
          {"decode_s", r.decode_s},
          {"rewritten", r.rewritten},
          {"rewrite_s", r.rewrite_s},
          {"drain_s", drain_s},
          {"tier", tools::RemoteTierStatsJson(t)}};
}

std::string Text(const Args& args, const ShareResult& r,
                 const RemoteTierStats& t, double drain_s) {
  const ShareOptions& o = args.share;
  std::string s = absl::StrFormat(
      "kvpage-share: turns %d-%d of %d conversations (system prompt %d, "
      "messages %d, answers %d tokens)\n"
      "  %d layers x %d kv-heads x head_dim %d, f16, %.2f KiB per token; "
      "blocks of %d tokens%s; pool of %d blocks\n",
      o.first_turn, o.last_turn, o.conversations, o.system_tokens,
      o.message_tokens, o.answer_tokens, o.num_layers, o.num_kv_heads,
      o.head_dim, static_cast<double>(r.token_bytes) / 1024, o.block_tokens,
      o.group_layers ? " in layer groups" : "", r.pool_blocks);
  s += absl::StrFormat("requests                                   %10d\n",
                       r.requests);
  s += absl::StrFormat("prompt tokens                              %10d\n",
                       r.prompt_tokens);
  s += absl::StrFormat("  held by this cache                       %10d\n",
                       r.matched_local);
  s += absl::StrFormat(
      "  restored from Redis (not recomputed)     %10d  %.1f%% of the "
      "prompts\n",
      r.matched_tier,
      r.prompt_tokens > 0 ? 100.0 * static_cast<double>(r.matched_tier) /
                                static_cast<double>(r.prompt_tokens)
                          : 0);
  s += absl::StrFormat("  computed (Update)                        %10d\n",
                       r.computed);
  s += absl::StrFormat("answer tokens (Update, one at a time)      %10d\n",
                       r.answer_tokens);
  s += "time inside the cache's calls\n";
  s += absl::StrFormat(
      "  MatchPrefix (match and restore)          %8.1f ms  %7.2f us per "
      "restored token, %.2f GiB/s\n",
      r.match_s * 1e3, PerToken(r.match_s, r.matched_tier),
      GiBPerSecond(r.matched_tier * r.token_bytes, r.match_s));
  if (r.rewritten > 0) {
    s += absl::StrFormat(
        "  the same tokens written again (Update)   %8.1f ms  %7.2f us per "
        "token, %.2f GiB/s; restore / write %.2fx\n",
        r.rewrite_s * 1e3, PerToken(r.rewrite_s, r.rewritten),
        GiBPerSecond(r.rewritten * r.token_bytes, r.rewrite_s),
        r.rewrite_s > 0 ? r.match_s / r.rewrite_s : 0);
  }
  s += absl::StrFormat("  prefill of the rest                      %8.1f ms\n",
                       r.prefill_s * 1e3);
  s += absl::StrFormat("  answers                                  %8.1f ms\n",
                       r.decode_s * 1e3);
  s += absl::StrFormat(
      "Redis: written through %d, written back %d blocks (%.1f MiB), queue "
      "drops %d, write errors %d; waited for the writer %.1f ms\n",
      t.blocks_written_through, t.blocks_written_back,
      static_cast<double>(t.bytes_written) / (1 << 20), t.queue_drops,
      t.write_errors, drain_s * 1e3);
  s += absl::StrFormat(
      "Redis: %d fetches, %d blocks (%.1f MiB), p50 %.0f us, p99 %.0f us; "
      "stopped at a miss %d, an error %d, corrupt %d, foreign %d\n",
      t.fetch_calls, t.blocks_fetched,
      static_cast<double>(t.bytes_fetched) / (1 << 20), t.fetch_p50_us,
      t.fetch_p99_us, t.fetch_misses, t.fetch_errors, t.corrupt_blocks,
      t.foreign_blocks);
  if (o.verify) {
    s += absl::StrFormat(
        "verified: %d matched tokens x layers read back, each as its writer "
        "wrote it\n",
        r.tokens_verified);
  }
  return s;
}

int Run(Args& args) {
  if (!ParseTurns(args.turns, args.share)) {
    return Fail(kBadInput, "--turns: '" + args.turns +
                               "' is not T or FIRST-LAST with 1 <= FIRST <= "
                               "LAST <= 100000");
  }
  args.share.verify = !args.no_verify;
  args.share.compare = !args.no_compare;
  args.share.write_through = !args.no_write_through;
  args.remote.fetch_timeout = absl::Milliseconds(args.fetch_timeout_ms);
  absl::StatusOr<std::unique_ptr<RemoteTier>> tier =
      RemoteTier::Connect(args.remote);
  if (!tier.ok()) return Fail(kBadInput, std::string(tier.status().message()));
  // After each request the writer is waited for (untimed): an engine's
  // compute between requests gives it that time (--no-drain: it races).
  double drain_s = 0;
  auto drain = [&](int64_t, int64_t) {
    if (args.no_drain) return;
    const absl::Time start = absl::Now();
    (*tier)->Flush();
    drain_s += absl::ToDoubleSeconds(absl::Now() - start);
  };
  absl::StatusOr<ShareResult> r = Serve(args.share, tier->get(), drain);
  if (!r.ok()) {
    return Fail(r.status().code() == absl::StatusCode::kInvalidArgument
                    ? kBadInput
                    : kFailed,
                std::string(r.status().message()));
  }
  (*tier)->Flush();
  const RemoteTierStats stats = (*tier)->Stats();
  if (args.json) {
    std::cout << Json(args, *r, stats, drain_s).dump(2) << "\n";
  } else {
    std::cout << Text(args, *r, stats, drain_s);
  }
  std::cout.flush();
  return std::cout ? 0 : Fail(kBadInput, "stdout could not be written");
}

}  // namespace
}  // namespace kvpage::share

int main(int argc, char** argv) {
  namespace share = kvpage::share;
  using kvpage::tools::IntRange;
  using kvpage::tools::UintRange;
  CLI::App app{
      "kvpage-share: serve turns of conversations that open with a shared "
      "system prompt, sharing prefix blocks with other processes through "
      "Redis; report the tokens restored and not recomputed.\n"
      "Exit codes: 0 ok, 1 the run failed, 2 bad usage or an unusable URL."};
  share::Args args;
  share::ShareOptions& o = args.share;
  app.add_option("--url", args.remote.url,
                 "redis://[[user]:password@]host[:port][/db] or "
                 "redis-cluster://host:port[,host:port...]")
      ->required();
  app.add_option("--model-id", args.remote.model_id,
                 "The engines' name for their weights: processes share "
                 "blocks only under the same one");
  app.add_option("--turns", args.turns,
                 "Turns to serve: T or FIRST-LAST (from 1)");
  app.add_option("--conversations", o.conversations)
      ->transform(IntRange(1, 100000));
  app.add_option("--system-tokens", o.system_tokens,
                 "The shared system prompt's tokens (0: none)")
      ->transform(IntRange(0, 1 << 20));
  app.add_option("--message-tokens", o.message_tokens)
      ->transform(IntRange(1, 1 << 20));
  app.add_option("--answer-tokens", o.answer_tokens)
      ->transform(IntRange(0, 1 << 20));
  app.add_option("--layers", o.num_layers)->transform(IntRange(1, 1024));
  app.add_option("--kv-heads", o.num_kv_heads)->transform(IntRange(1, 1024));
  app.add_option("--head-dim", o.head_dim)->transform(IntRange(1, 4096));
  app.add_option("--block-tokens", o.block_tokens)
      ->transform(IntRange(1, 65536));
  app.add_flag("--group-layers", o.group_layers,
               "One block table per group of layers");
  app.add_option("--pool-blocks", o.pool_blocks,
                 "The pool (default: twice the largest request's blocks)")
      ->transform(IntRange(1, int64_t{1} << 31));
  app.add_option("--chunk", o.chunk_tokens, "Prefill tokens per Update")
      ->transform(IntRange(1, 1 << 24));
  app.add_option("--seed", o.seed)->transform(UintRange(0, UINT64_MAX));
  app.add_option("--fetch-batch", o.fetch_batch,
                 "Blocks one Redis round trip fetches")
      ->transform(IntRange(1, 4096));
  app.add_option("--fetch-timeout-ms", args.fetch_timeout_ms,
                 "The most one fetch (a batch of blocks) waits, all nodes "
                 "together")
      ->transform(IntRange(1, 600000));
  app.add_option("--queue-blocks", args.remote.queue_blocks,
                 "Blocks waiting to be written, at most")
      ->transform(IntRange(1, 1 << 20));
  app.add_flag("--no-write-through", args.no_write_through,
               "Write only the blocks the cache evicts");
  app.add_flag("--no-drain", args.no_drain,
               "Do not wait for the writer after each request");
  app.add_flag("--no-verify", args.no_verify,
               "Do not read back the matched tokens");
  app.add_flag("--no-compare", args.no_compare,
               "Do not write the restored tokens again");
  app.add_flag("--json", args.json, "JSON instead of the text");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::cerr << "kvpage-share: " << e.what() << " (see --help)\n";
    return share::kBadInput;
  }
  try {
    return share::Run(args);
  } catch (const std::exception& e) {  // the standard library (bad_alloc)
    std::cerr << "kvpage-share: " << e.what() << "\n";
    return share::kFailed;
  }
}
