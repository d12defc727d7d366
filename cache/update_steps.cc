// The update rule's steps that Update (host data) and Reserve (the engine's
// kernels write) share: refusing positions, the append fast path, the
// general path through a plan, and what follows a change of a table.
#include <algorithm>

#include "absl/strings/str_format.h"
#include "cache/kv_cache_impl.h"

namespace kvpage {

using internal::BlockId;
using internal::BlockRef;
using internal::BlockTable;
using internal::IsQuant;
using internal::LayerRules;
using internal::Plan;

absl::Status KVCache::Impl::RefusePositions(std::string_view op, SeqId seq,
                                            int layer, const LayerRules& rules,
                                            const internal::LayerState& table,
                                            int64_t start,
                                            int64_t seq_len) const {
  if (ABSL_PREDICT_FALSE(start > table.length)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s(seq %d, layer %d, seq_len %d): gap: %d tokens start at position "
        "%d but the layer holds %d",
        op, seq, layer, seq_len, seq_len - start, start, table.length));
  }
  if (ABSL_PREDICT_FALSE(rules.evicts() && table.window_start > rules.sinks)) {
    if (absl::Status s = internal::CheckEvicted(op, seq, layer, rules, table,
                                                start, seq_len);
        !s.ok()) {
      return s;
    }
  }
  if (ABSL_PREDICT_FALSE(!rules.evicts() && seq_len > rules.max_seq_len)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%s(seq %d, layer %d, seq_len %d): exceeds max_seq_len %d "
        "(overflow policy error)",
        op, seq, layer, seq_len, rules.max_seq_len));
  }
  return absl::OkStatus();
}

BlockId KVCache::Impl::InPlaceAppendBlock(const LayerRules& rules,
                                          const BlockTable& table,
                                          int64_t start, int64_t seq_len,
                                          int64_t* slot) const {
  // The last held logical block, without a division: sink blocks are
  // logical [0, sink_blocks.size()), the window's end follows them.
  const int64_t last = table.window_blocks() > 0
                           ? table.window_first + table.window_blocks() - 1
                           : static_cast<int64_t>(table.sink_blocks.size()) - 1;
  const int64_t block_end = (last + 1) * rules.block_tokens;
  if (start != table.length || seq_len <= start || seq_len > block_end ||
      last < 0 || table.length <= last * rules.block_tokens) {
    return internal::kNoBlock;  // not an append into the last block
  }
  if (internal::VisibleTokens(rules, seq_len, table.window_start) >
      rules.max_seq_len) {
    return internal::kNoBlock;  // the policy acts
  }
  const BlockRef ref = table.Block(last);
  if (IsQuant(ref) || pool->ref_count(ref) != 1) return internal::kNoBlock;
  if (slot != nullptr) *slot = start - last * rules.block_tokens;
  return ref;
}

absl::Status KVCache::Impl::PlaceGeneral(std::string_view op, SeqId seq,
                                         int layer, const LayerRules& rules,
                                         BlockTable& table, int64_t start,
                                         int64_t seq_len, int64_t layers) {
  // The one step that can fail for lack of memory comes first.
  const Plan plan = internal::MakePlan(rules, table, *pool, start, seq_len);
  fresh_ids.clear();
  if (ABSL_PREDICT_FALSE(plan.fresh > 0)) {
    if (absl::Status s = TakeFresh(plan.fresh, &table); !s.ok()) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("%s(seq %d, layer %d, seq_len %d): %s", op, seq,
                          layer, seq_len, s.message()));
    }
  }
  counters.blocks_allocated += plan.fresh;
  ApplyPlan(rules, table, plan, fresh_ids, nullptr, layers);
  return absl::OkStatus();
}

}  // namespace kvpage
