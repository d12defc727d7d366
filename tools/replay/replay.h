// tools/replay/replay.h — replays a request trace through kvpage's prefix
// cache the way a serving engine drives it, for one pool size.
//
// Each request, in trace order: AddSequence; MatchPrefix of its prompt
// (leaving the last token to compute); AppendTokens of the rest of the
// prompt's ids; Update of every layer, chunk by chunk, for the prompt's
// tokens not matched; then one token at a time for its output (AppendTokens,
// Update of every layer); RemoveSequence. Up to `concurrency` requests are in
// flight, admitted in trace order while the pool can hold what they will
// take (each one's worst case: its blocks not matched); in flight, each
// takes one step in turn (a prefill chunk or one output token). Requests
// are replayed in the order given (kvpage-replay sorts a trace by its
// timestamps); the replay does not wait for the timestamps.
//
// With a second tier (kvpage/tier.h) attached to the run's cache, the blocks
// the prefix cache evicts go to it and MatchPrefix continues from it where
// the pool's blocks end: the hit rates then count what the tier restored,
// and tokens_fetched says how much of them that was.
//
// Usage:
//   ReplayOptions options{.num_layers = 4, .concurrency = 8};
//   absl::StatusOr<ReplayResult> r = Replay(trace, /*pool_blocks=*/20000,
//   options);
//   MyTier tier;  // a BlockTier
//   r = Replay(trace, 20000, options, {.tier = &tier});
#ifndef KVPAGE_TOOLS_REPLAY_REPLAY_H_
#define KVPAGE_TOOLS_REPLAY_REPLAY_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "kvpage/tier.h"
#include "tools/replay/trace.h"

namespace kvpage::replay {

struct ReplayOptions {
  int num_layers = 4;
  int num_kv_heads = 1;
  int head_dim = 8;
  int block_tokens = 16;             // kvpage's block
  int64_t trace_block_tokens = 512;  // the trace's block (hash_ids)
  int64_t chunk_tokens = 512;        // prefill tokens per Update
  int concurrency = 1;               // requests in flight
  bool group_layers = false;         // CacheConfig::group_layers
  bool leave_last_token = true;      // MatchOptions::leave_last_token
  bool verify = false;  // check every matched token of every layer (Gather)
};

// The second tier a replay attaches to its cache (KVCache::AttachTier), if
// any. Not owned: it outlives the call; the cache is gone when Replay
// returns.
struct ReplayTier {
  BlockTier* tier = nullptr;  // null: the pool alone
  TierOptions options;
};

// What one request saw.
struct RequestOutcome {
  bool rejected = false;       // larger than the empty pool: not replayed
  int64_t matched_tokens = 0;  // what MatchPrefix attached
  int64_t fetched_tokens = 0;  // of those, what the tier gave (the rest the
                               // pool held)
  double cost_us = 0;          // time in kvpage's calls for it
};

struct ReplayResult {
  int64_t pool_blocks = 0;
  int64_t block_bytes = 0;  // CacheStats::block_bytes
  int64_t requests = 0;     // replayed (not rejected)
  int64_t rejected = 0;
  // The cache's own counters (CacheStats): what MatchPrefix was asked and
  // what it attached.
  int64_t tokens_queried = 0;
  int64_t tokens_matched = 0;
  int64_t blocks_queried = 0;
  int64_t blocks_hit = 0;
  // Of tokens_matched and blocks_hit, what the tier gave: MatchPrefix
  // attached it after the blocks the pool held (0 without a tier).
  int64_t tokens_fetched = 0;
  int64_t blocks_fetched = 0;
  double token_hit_rate = 0;  // tokens_matched / tokens_queried
  double block_hit_rate = 0;  // blocks_hit / blocks_queried
  double cost_p50_us = 0, cost_p99_us = 0, cost_mean_us = 0;
  int64_t peak_blocks_held = 0;   // in use or cached, after any step
  int64_t blocks_cached_end = 0;  // what the cache holds for later requests
  int64_t prefix_entries_end = 0;
  std::vector<RequestOutcome> outcomes;  // one per trace request, in order
};

// Replays `trace` through a fresh cache of `pool_blocks` blocks, with
// `tier` attached when it names one. InvalidArgument for options kvpage
// refuses, a cache it cannot create or a tier that refuses the cache (its
// message); Internal when a call fails that the replay's admission should
// have made safe, or when verification finds a matched token that differs
// from what was written (a restored block included).
[[nodiscard]] absl::StatusOr<ReplayResult> Replay(
    const std::vector<TraceRequest>& trace, int64_t pool_blocks,
    const ReplayOptions& options, const ReplayTier& tier = {});

}  // namespace kvpage::replay

#endif  // KVPAGE_TOOLS_REPLAY_REPLAY_H_
