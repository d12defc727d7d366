#include "cache/update_plan.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace kvpage::internal {
namespace {

// The window blocks held now that the plan keeps: [first, last), empty
// (first == last == the current end) when none.
BlockRange KeptWindow(const BlockTable& table, const Plan& plan) {
  const int64_t now_first = table.window_first;
  const int64_t now_last = table.window_first + table.window_blocks();
  BlockRange kept{std::max(now_first, plan.window.first),
                  std::min(now_last, plan.window.last)};
  if (kept.last <= kept.first) kept = {now_last, now_last};
  return kept;
}

// Sets the plan's length, window start, evictions and visible counts.
void PlanWindow(const LayerRules& rules, const LayerState& table,
                int64_t seq_len, Plan& plan) {
  plan.length = seq_len;
  // A rollback below the window start can only reach into the sinks (the
  // callers refuse the rest): then nothing stays evicted.
  const int64_t start_before = seq_len < table.length
                                   ? std::min(table.window_start, seq_len)
                                   : table.window_start;
  int64_t window_start = start_before;
  if (VisibleTokens(rules, seq_len, start_before) > rules.max_seq_len) {
    switch (rules.overflow) {
      case OverflowPolicy::kSlidingWindow:
      case OverflowPolicy::kCircularBuffer:
        window_start = seq_len - (rules.max_seq_len - rules.sinks);
        break;
      case OverflowPolicy::kTruncate:
        window_start = seq_len - (rules.truncate_to - rules.sinks);
        break;
      case OverflowPolicy::kError:
        break;  // refused before planning
    }
  }
  plan.window_start = window_start;
  plan.evicted =
      std::max<int64_t>(0, window_start - std::max(start_before, rules.sinks));
  plan.visible_before = VisibleTokens(rules, table.length, table.window_start);
  plan.visible_after = VisibleTokens(rules, seq_len, window_start);
  plan.sink_blocks = SinkBlocks(rules, seq_len);
  plan.window = WindowRange(rules, seq_len, window_start);
}

// Calls fn(ref) for each block the layer lets go of: sink blocks past the
// plan's, window blocks outside the kept range.
template <typename Fn>
void ForEachLetGo(const BlockTable& table, const Plan& plan,
                  const BlockRange& kept, Fn&& fn) {
  const auto sinks_now = static_cast<int64_t>(table.sink_blocks.size());
  for (int64_t b = plan.sink_blocks; b < sinks_now; ++b) {
    fn(table.sink_blocks[static_cast<size_t>(b)]);
  }
  const int64_t now_last = table.window_first + table.window_blocks();
  for (int64_t b = table.window_first; b < kept.first; ++b) fn(table.Block(b));
  for (int64_t b = kept.last; b < now_last; ++b) fn(table.Block(b));
}

// Sets new_blocks, the fresh blocks they need and the blocks freed: those
// the layer lets go of are reused only when hot and held by this layer
// alone (a compressed one goes back to the quantized pool, a shared one
// stays with its other holders), and a ring's spares.
void PlanNewBlocks(const LayerRules& rules, const BlockTable& table,
                   RefCounts refs, const BlockRange& kept, Plan& plan) {
  int64_t alone = 0;
  ForEachLetGo(table, plan, kept,
               [&](BlockRef ref) { alone += !IsQuant(ref) && refs(ref) == 1; });
  const auto sinks_now = static_cast<int64_t>(table.sink_blocks.size());
  plan.new_blocks = (plan.window.size() - kept.size()) +
                    std::max<int64_t>(0, plan.sink_blocks - sinks_now);
  const int64_t spares =
      rules.ring() ? static_cast<int64_t>(table.spares.size()) : 0;
  plan.fresh = std::max<int64_t>(0, plan.new_blocks - alone - spares);
  // A ring keeps what it lets go of as spares: it frees none here.
  plan.freed = rules.ring() ? 0 : std::max<int64_t>(0, alone - plan.new_blocks);
}

// Lists the kept blocks that positions [start, seq_len) write into and that
// must be rewritten first: a compressed one is decompressed, a shared one
// copied (copy-on-write). Each takes a fresh block.
void PlanRewrites(const LayerRules& rules, const BlockTable& table,
                  RefCounts refs, const BlockRange& kept, int64_t start,
                  int64_t seq_len, Plan& plan) {
  const int64_t tokens_per_block = rules.block_tokens;
  const int64_t sinks_kept = std::min(
      static_cast<int64_t>(table.sink_blocks.size()), plan.sink_blocks);
  auto touch = [&](int64_t b) {
    const bool kept_block =
        b < sinks_kept || (b >= kept.first && b < kept.last && kept.size() > 0);
    if (!kept_block) return;
    if (!plan.rewrite.empty() && plan.rewrite.back().first == b) return;
    const BlockRef ref = table.Block(b);
    if (IsQuant(ref) || refs(ref) > 1) {
      plan.rewrite.push_back({b, IsQuant(ref)});
    }
  };
  const int64_t sink_end = std::min(seq_len, rules.sinks);
  for (int64_t b = start / tokens_per_block;
       b * tokens_per_block < sink_end && start < sink_end; ++b) {
    touch(b);
  }
  const int64_t write_lo = std::max({start, plan.window_start, rules.sinks});
  for (int64_t b = write_lo / tokens_per_block;
       b * tokens_per_block < seq_len && write_lo < seq_len; ++b) {
    touch(b);
  }
  plan.fresh += static_cast<int64_t>(plan.rewrite.size());
}

}  // namespace

Plan MakePlan(const LayerRules& rules, const BlockTable& table, RefCounts refs,
              int64_t start, int64_t seq_len) {
  Plan plan;
  PlanWindow(rules, table, seq_len, plan);
  const BlockRange kept = KeptWindow(table, plan);
  PlanNewBlocks(rules, table, refs, kept, plan);
  PlanRewrites(rules, table, refs, kept, start, seq_len, plan);
  return plan;
}

Plan MakeLayerPlan(const LayerRules& rules, const BlockTable& table,
                   const LayerState& state, const GroupNeeds& others,
                   RefCounts refs, int64_t start, int64_t seq_len) {
  Plan plan;
  PlanWindow(rules, state, seq_len, plan);
  GroupNeeds needs = others;
  AddNeeds(rules, plan.length, plan.window_start, needs);
  plan.sink_blocks = needs.sink_blocks;
  if (needs.window.size() > 0) plan.window = needs.window;
  const BlockRange kept = KeptWindow(table, plan);
  PlanNewBlocks(rules, table, refs, kept, plan);
  PlanRewrites(rules, table, refs, kept, start, seq_len, plan);
  return plan;
}

Plan MakePlan(const LayerRules& rules, const BlockTable& table,
              const BlockPool& pool, int64_t start, int64_t seq_len) {
  return MakePlan(
      rules, table, [&pool](BlockRef ref) { return pool.ref_count(ref); },
      start, seq_len);
}

void ForEachHoldDropped(const BlockTable& table, const Plan& plan,
                        absl::FunctionRef<void(BlockRef)> fn) {
  ForEachLetGo(table, plan, KeptWindow(table, plan), fn);
  for (const auto& [logical, compressed] : plan.rewrite) {
    if (!compressed) fn(table.Block(logical));
  }
}

absl::Status CheckEvicted(std::string_view op, SeqId seq, int layer,
                          const LayerRules& rules, const LayerState& table,
                          int64_t start, int64_t seq_len) {
  if (table.window_start <= rules.sinks) return absl::OkStatus();  // none
  const int64_t evicted_lo = rules.sinks, evicted_hi = table.window_start;
  const int64_t write_lo = std::max(start, evicted_lo);
  const int64_t write_hi = std::min({seq_len, table.length, evicted_hi});
  const bool rollback_into = seq_len < table.length &&
                             seq_len - 1 >= evicted_lo &&
                             seq_len - 1 < evicted_hi;
  if (write_lo >= write_hi && !rollback_into) return absl::OkStatus();
  return absl::OutOfRangeError(absl::StrFormat(
      "%s(seq %d, layer %d, seq_len %d): positions [%d, %d) were evicted by "
      "the %s policy; the layer keeps sinks [0, %d) and window [%d, %d)%s",
      op, seq, layer, seq_len, evicted_lo, evicted_hi,
      OverflowPolicyName(rules.overflow), std::min(rules.sinks, table.length),
      table.window_start, table.length,
      rollback_into ? "; a rollback must keep a visible window token or go "
                      "back into the sinks"
                    : ""));
}

}  // namespace kvpage::internal
