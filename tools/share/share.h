// tools/share/share.h — conversations served the way a serving engine
// serves them, by one engine instance among several that share prefix
// blocks through a second tier (kvpage/tier.h; kvpage-share attaches the
// Redis tier, the tests an in-memory one).
//
// The workload: `conversations` conversations open with one shared system
// prompt; turn t of conversation c asks with a prompt made of the system
// prompt, the messages and answers of turns 1..t-1 and message t, and
// answers with `answer_tokens` tokens. Every id is a function of (seed,
// conversation, turn, position), so two processes given the same options
// build the same prompts. A process serves the turns first_turn..last_turn
// of every conversation (turn by turn, each conversation's in order), one
// request at a time, as an engine does: AddSequence; MatchPrefix of the
// prompt (leaving its last token to compute), which continues in the tier
// where the cache's own blocks end; AppendTokens and Update of every layer,
// chunk by chunk, of the prompt's tokens not matched; one Update per layer
// for each answer token; RemoveSequence. The keys and values of a position
// depend on every id before it, as a model's do, so a block restored under
// another prefix would show: `verify` reads back every matched token of
// every layer (Gather) and fails the run if one differs.
//
// Then, for the tokens the tier restored, the same process writes them
// again into a cache of its own without a tier: Update of every layer,
// chunk by chunk, the tokens before them written first and not timed. So
// the report puts the time to restore a prefix beside the time to write
// it, the same tokens through the same cache, in one run.
//
// Usage:
//   ShareOptions o{.first_turn = 1, .last_turn = 4};
//   absl::StatusOr<ShareResult> a = Serve(o, &tier);   // process A
//   o.first_turn = o.last_turn = 5;
//   absl::StatusOr<ShareResult> b = Serve(o, &tier);   // process B, later
#ifndef KVPAGE_TOOLS_SHARE_SHARE_H_
#define KVPAGE_TOOLS_SHARE_SHARE_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "kvpage/tier.h"

namespace kvpage::share {

struct ShareOptions {
  // The model's shape (Llama-3-8B's by default: 128 KiB per token in f16).
  int num_layers = 32;
  int num_kv_heads = 8;
  int head_dim = 128;
  int block_tokens = 16;
  bool group_layers = false;  // CacheConfig::group_layers
  int64_t pool_blocks = 0;    // 0: twice the largest request's blocks
  // The workload.
  int conversations = 4;
  int64_t system_tokens = 512;        // the shared system prompt (0: none)
  int64_t message_tokens = 128;       // each turn's user message
  int64_t answer_tokens = 128;        // each turn's answer
  int first_turn = 1, last_turn = 4;  // the turns this process serves
  int64_t chunk_tokens = 512;         // prefill tokens per Update
  uint64_t seed = 1;
  bool verify = true;         // read back every matched token of every layer
  bool compare = true;        // write the restored tokens again, timed
  bool write_through = true;  // TierOptions::write_through
  int64_t fetch_batch = 32;   // TierOptions::fetch_batch
};

struct ShareResult {
  int64_t requests = 0;
  int64_t prompt_tokens = 0;
  int64_t matched_local = 0;    // prompt tokens the cache's own blocks held
  int64_t matched_tier = 0;     // ... the tier restored: not recomputed
  int64_t computed = 0;         // prompt tokens written by Update
  int64_t answer_tokens = 0;    // written one at a time
  int64_t tokens_verified = 0;  // matched tokens read back, all layers
  int64_t token_bytes = 0;      // one token's keys and values, all layers
  // Time inside the cache's calls, seconds.
  double match_s = 0;    // MatchPrefix: the local match and the restore
  double prefill_s = 0;  // AppendTokens and Update of the tokens not matched
  double decode_s = 0;   // the answers
  // The tokens the tier restored, written again by Update into a cache
  // without a tier (ShareOptions::compare; 0 when nothing was restored).
  double rewrite_s = 0;
  int64_t rewritten = 0;
  int64_t pool_blocks = 0;
};

// Serves options.first_turn..last_turn of every conversation through a
// fresh cache with `tier` attached (nullptr: none). InvalidArgument for
// options out of range or a cache kvpage cannot create; the tier's Attach
// error as it comes; Internal when a call fails that the pool size should
// have made safe, or when verification finds a restored token that differs
// from what its writer wrote. `progress`, when set, is called after each
// request with the requests done and the requests in all.
[[nodiscard]] absl::StatusOr<ShareResult> Serve(
    const ShareOptions& options, BlockTier* tier,
    const std::function<void(int64_t, int64_t)>& progress = {});

// The ids of the prompt of turn `turn` (1-based) of `conversation`.
std::vector<int32_t> Prompt(const ShareOptions& options, int conversation,
                            int turn);

}  // namespace kvpage::share

#endif  // KVPAGE_TOOLS_SHARE_SHARE_H_
