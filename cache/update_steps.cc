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
