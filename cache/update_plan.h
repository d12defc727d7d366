// cache/update_plan.h — what an update or a rollback does to one layer's
// block table, worked out before anything changes (DESIGN.md, the update
// rule), and the policy arithmetic that refuses positions already evicted.
//
// Thread safety: pure functions of their arguments.
#ifndef KVPAGE_CACHE_UPDATE_PLAN_H_
#define KVPAGE_CACHE_UPDATE_PLAN_H_

#include <cstdint>
#include <string_view>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "allocator/block_pool.h"
#include "cache/block_table.h"
#include "kvpage/kv_cache.h"

namespace kvpage::internal {

// `fresh` blocks must come from the pool; every other new block is reused
// from the hot blocks the layer lets go of (and a ring's spares).
// Compressed or shared blocks that will be written get a new hot block
// first.
struct Plan {
  int64_t length = 0;        // L'
  int64_t window_start = 0;  // ws'
  int64_t sink_blocks = 0;   // sink blocks held afterwards
  BlockRange window;         // window blocks held afterwards
  int64_t new_blocks = 0;    // logical blocks that need a block
  int64_t fresh = 0;         // of those, and of rewrites, from the pool
  // Hot blocks let go of, held by this layer alone and not reused: given
  // back to the pool (0 for a ring, which keeps them as spares).
  int64_t freed = 0;
  int64_t evicted = 0;  // tokens the policy evicts
  int64_t visible_before = 0, visible_after = 0;
  // Kept logical blocks to rewrite before writing: (block, compressed?). A
  // compressed one is decompressed into a new block, a shared hot one
  // copied.
  absl::InlinedVector<std::pair<int64_t, bool>, 4> rewrite;
};

// A block's reference count as a plan sees it.
using RefCounts = absl::FunctionRef<uint32_t(BlockRef)>;

// The plan for writing positions [start, seq_len) of layer `table` (start
// == seq_len for a rollback), which the caller has checked against the
// policy (CheckEvicted, max_seq_len under kError). `pool` (or `refs`) tells
// which blocks are shared. O(blocks changed).
Plan MakePlan(const LayerRules& rules, const BlockTable& table,
              const BlockPool& pool, int64_t start, int64_t seq_len);
Plan MakePlan(const LayerRules& rules, const BlockTable& table, RefCounts refs,
              int64_t start, int64_t seq_len);

// The plan for writing positions [start, seq_len) of one layer, `state`,
// of a group whose table is `table` and whose other layers need `others`:
// its length, window start, evictions and visible counts are the layer's;
// its blocks are the group's, for the union. O(blocks changed).
Plan MakeLayerPlan(const LayerRules& rules, const BlockTable& table,
                   const LayerState& state, const GroupNeeds& others,
                   RefCounts refs, int64_t start, int64_t seq_len);

// Whether `plan` needs window blocks before those `table` holds: a layer
// of a group reaching back into blocks its group let go of when its other
// layers passed them. A table of one layer never does. O(1).
inline bool ExtendsFront(const BlockTable& table, const Plan& plan) {
  return table.window_blocks() > 0 && plan.window.size() > 0 &&
         plan.window.first < table.window_first;
}

// Calls fn(ref) for each hot or compressed block whose hold by `table`
// applying `plan` drops: blocks let go, and shared blocks copied before
// they are written. O(blocks changed).
void ForEachHoldDropped(const BlockTable& table, const Plan& plan,
                        absl::FunctionRef<void(BlockRef)> fn);

// Refuses a write of [start, seq_len) or a rollback to seq_len that would
// reach positions the policy already evicted: OutOfRange naming `op`, the
// sequence and the layer, else OK. O(1).
[[nodiscard]] absl::Status CheckEvicted(std::string_view op, SeqId seq,
                                        int layer, const LayerRules& rules,
                                        const LayerState& table, int64_t start,
                                        int64_t seq_len);

}  // namespace kvpage::internal

#endif  // KVPAGE_CACHE_UPDATE_PLAN_H_
