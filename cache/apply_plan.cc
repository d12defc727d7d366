// Applying an update plan: taking fresh blocks (evicting idle prefix
// entries or compressing cold blocks when the pool is short), moving a
// table to the plan's blocks, rewriting shared and compressed blocks before
// they are written.
#include <algorithm>

#include "absl/strings/str_format.h"
#include "allocator/check.h"
#include "cache/kv_cache_impl.h"

namespace kvpage {

using internal::BlockId;
using internal::BlockRef;
using internal::BlockTable;
using internal::IsQuant;
using internal::LayerRules;
using internal::Plan;
using internal::RefId;

absl::Status KVCache::Impl::TakeFresh(int64_t n, const BlockTable* updating) {
  fresh_ids.resize(static_cast<size_t>(n));
  if (n == 1) {
    fresh_ids[0] = local->AllocateOne();
    if (ABSL_PREDICT_TRUE(fresh_ids[0] != internal::kNoBlock)) {
      return absl::OkStatus();
    }
  } else if (local->Allocate(absl::MakeSpan(fresh_ids)).ok()) {
    return absl::OkStatus();
  }
  const int64_t free = pool->capacity() - pool->used_blocks();
  const int64_t evictable = prefix->evictable_blocks();
  int64_t short_by = n - free;
  // Idle prefix-cache blocks go first, least recently used first.
  if (evictable >= short_by) {
    while (pool->capacity() - pool->used_blocks() < n) EvictOldest();
    const absl::Status s = local->Allocate(absl::MakeSpan(fresh_ids));
    KVPAGE_DCHECK(s.ok());
    if (s.ok()) return s;
  }
  short_by -= evictable;
  if (auto_compress()) {
    std::vector<Candidate> candidates;
    if (quant->room() >= short_by) {
      candidates = CompressCandidates(updating, short_by);
    }
    if (static_cast<int64_t>(candidates.size()) >= short_by) {
      while (prefix->has_idle()) EvictOldest();
      CompressAll(candidates);
      const absl::Status s = local->Allocate(absl::MakeSpan(fresh_ids));
      KVPAGE_DCHECK(s.ok());
      if (s.ok()) return s;
    }
  }
  return absl::ResourceExhaustedError(absl::StrFormat(
      "needs %d %s, the pool of %d has %d free and %d idle in the prefix "
      "cache%s",
      n, n == 1 ? "block" : "blocks", pool->capacity(), free, evictable,
      auto_compress() ? "; compressing cold blocks cannot free enough" : ""));
}

void KVCache::Impl::ApplyPlan(const LayerRules& rules, BlockTable& table,
                              const Plan& plan, absl::Span<const BlockId> fresh,
                              internal::LayerState* state, int64_t layers) {
  int64_t evicted_blocks = 0;  // window blocks the policy pushed out
  LetGoOfBlocks(plan, table, evicted_blocks);
  if (!rules.ring()) counters.blocks_released_by_policy += evicted_blocks;
  FillBlocks(rules, table, plan, fresh);
  SetLengths(rules, table, state != nullptr ? *state : table, plan, layers);
}

// Pops the blocks the plan does not keep. A hot block this table alone
// holds goes to `recycled`, to be reused; others lose this table's hold.
void KVCache::Impl::LetGoOfBlocks(const Plan& plan, BlockTable& table,
                                  int64_t& evicted_blocks) {
  recycled.clear();
  auto let_go = [&](BlockRef ref) {
    if (IsQuant(ref)) {
      quant->Release(RefId(ref));
    } else if (pool->ref_count(ref) > 1) {
      Release(ref);  // others still read it: never reused for writing
    } else {
      recycled.push_back(ref);
    }
  };
  while (static_cast<int64_t>(table.sink_blocks.size()) > plan.sink_blocks) {
    let_go(table.sink_blocks.back());
    table.sink_blocks.pop_back();
  }
  if (table.window_blocks() > 0) {
    KVPAGE_DCHECK(plan.window.size() == 0 ||
                  table.window_first <= plan.window.first);
    while (table.window_blocks() > 0 &&
           table.window_first < plan.window.first) {
      let_go(table.PopWindowFront());
      ++evicted_blocks;
    }
    while (table.window_blocks() > 0 &&
           table.window_first + table.window_blocks() > plan.window.last) {
      let_go(table.PopWindowBack());
    }
  }
  if (table.window_blocks() == 0) table.ResetWindow(plan.window.first);
}

// Gives the table its new blocks, from a ring's spares, then what it let
// go of, then `fresh`; rewrites the kept blocks the plan names; gives back
// what is left over.
void KVCache::Impl::FillBlocks(const LayerRules& rules, BlockTable& table,
                               const Plan& plan,
                               absl::Span<const BlockId> fresh) {
  size_t next_fresh = 0;
  size_t next_recycled = 0;
  if (rules.ring()) {
    // What the window let go of becomes spare first, so that the oldest
    // block is the one reused.
    while (next_recycled < recycled.size()) {
      table.spares.push_back(recycled[next_recycled++]);
    }
  }
  auto take = [&]() -> BlockRef {
    if (rules.ring() && !table.spares.empty()) {
      const BlockRef id = table.spares.back();
      table.spares.pop_back();
      ++counters.blocks_reused_by_ring;
      return id;
    }
    if (next_recycled < recycled.size()) return recycled[next_recycled++];
    return fresh[next_fresh++];
  };
  while (static_cast<int64_t>(table.sink_blocks.size()) < plan.sink_blocks) {
    table.sink_blocks.push_back(take());
  }
  while (table.window_blocks() < plan.window.size()) {
    table.window.push_back(take());
  }
  for (const auto& [logical, compressed] : plan.rewrite) {
    if (compressed) {
      Decompress(rules, table, logical, fresh[next_fresh++]);
    } else {
      CopyOnWrite(table, logical, fresh[next_fresh++]);
    }
  }
  KVPAGE_DCHECK(next_fresh == fresh.size());
  DropSurplusSpares(rules, table);
  for (; next_recycled < recycled.size(); ++next_recycled) {
    Release(recycled[next_recycled]);
  }
}

void KVCache::Impl::SetLengths(const LayerRules& rules, BlockTable& table,
                               internal::LayerState& state, const Plan& plan,
                               int64_t layers) {
  counters.tokens_stored += (plan.visible_after - plan.visible_before) * layers;
  counters.evictions += plan.evicted * layers;
  state.evicted += plan.evicted;
  state.length = plan.length;
  state.window_start = plan.window_start;
  state.max_length = std::max(state.max_length, plan.length);
  if (quant != nullptr) {
    const int64_t limit =
        std::max<int64_t>(0, table.length - config.compression.hot_tokens) /
        rules.block_tokens;
    table.cold_done = std::min(table.cold_done, limit);
  }
}

// Gives `logical` its own copy in block `id` before a write.
void KVCache::Impl::CopyOnWrite(BlockTable& table, int64_t logical,
                                BlockId id) {
  const BlockId shared = table.Block(logical);
  io->Copy(shared, id);
  counters.bytes_copied += block_bytes() * groups.width;
  table.MutableBlock(logical) = id;
  Release(shared);
}

// Makes compressed logical block `logical` hot again in block `id`, every
// layer of the table.
void KVCache::Impl::Decompress(const LayerRules& rules, BlockTable& table,
                               int64_t logical, BlockId id) {
  // Decoded straight into the cache's dtype: what a hot block holds.
  const int64_t run_bytes = block_tokens() * io->token_bytes();
  decompressed.resize(static_cast<size_t>(2 * run_bytes));
  std::byte* k = decompressed.data();
  std::byte* v = k + run_bytes;
  const BlockId cell = RefId(table.Block(logical));
  for (int slot = 0; slot < rules.layers; ++slot) {
    quant->Decode(cell, slot, config.dtype, k, v);
    const BlockId storage_id = pool->StorageId(id, slot);
    io->WriteRun(storage_id, false, 0, k, config.dtype, block_tokens());
    io->WriteRun(storage_id, true, 0, v, config.dtype, block_tokens());
  }
  quant->Decompressed(cell);
  table.MutableBlock(logical) = id;
}

}  // namespace kvpage
