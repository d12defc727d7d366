// The layers of a group that differ: a group's layers share one block
// table (CacheConfig::group_layers), and Update moves one layer at a time.
// While they differ the table is split: each layer keeps its own state and
// the table holds blocks for the union of what they show, so that a block
// leaves a window only when every layer of the group has passed it.
#include <algorithm>

#include "absl/strings/str_format.h"
#include "allocator/check.h"
#include "cache/kv_cache_impl.h"

namespace kvpage {

using internal::BlockId;
using internal::BlockRange;
using internal::BlockTable;
using internal::GroupNeeds;
using internal::LayerRules;
using internal::LayerState;
using internal::Plan;
using internal::Sequence;

namespace {

// Whether two states of layers of one group show the same positions: the
// same length and window start (every start at or below the sinks means
// nothing evicted). Their statistics (max_length, evicted) may differ.
bool Agree(const LayerState& a, const LayerState& b, int64_t sinks) {
  return a.length == b.length &&
         std::max(a.window_start, sinks) == std::max(b.window_start, sinks);
}

}  // namespace

LayerState KVCache::Impl::LayerOf(const Sequence& sequence, int layer) const {
  const size_t group = group_of(layer);
  const BlockTable& table = sequence.tables[group];
  if (group_layers(group) == 1) return table;
  const auto l = static_cast<size_t>(layer);
  const LayerState base = l < sequence.layer_states.size()
                              ? sequence.layer_states[l]
                              : LayerState{};
  if (table.split) return base;
  // The table counts from its last rejoin; each layer keeps what it had.
  return {.length = table.length,
          .window_start = table.window_start,
          .max_length = std::max(base.max_length, table.max_length),
          .evicted = base.evicted + table.evicted};
}

void KVCache::Impl::Split(Sequence& sequence, size_t group) {
  BlockTable& table = sequence.tables[group];
  if (table.split) return;
  sequence.layer_states.resize(groups.group_of.size());
  for (const int layer : groups.members[group]) {
    sequence.layer_states[static_cast<size_t>(layer)] =
        LayerOf(sequence, layer);
  }
  table.split = true;
  table.agree = static_cast<int32_t>(groups.members[group].size());
}

void KVCache::Impl::Rejoin(Sequence& sequence, size_t group) {
  BlockTable& table = sequence.tables[group];
  const std::vector<int>& members = groups.members[group];
  const int64_t sinks = group_rules[group].sinks;
  LayerState all = sequence.layer_states[static_cast<size_t>(members[0])];
  for (const int layer : members) {
    const LayerState& s = sequence.layer_states[static_cast<size_t>(layer)];
    all.length = std::max(all.length, s.length);
    all.max_length = std::max(all.max_length, s.max_length);
    all.window_start = std::min(all.window_start, s.window_start);
  }
  int32_t agree = 0;
  for (const int layer : members) {
    agree +=
        Agree(sequence.layer_states[static_cast<size_t>(layer)], all, sinks);
  }
  table.agree = agree;
  table.split = agree != static_cast<int32_t>(members.size());
  static_cast<LayerState&>(table) = all;
  if (quant != nullptr) {  // blocks the union gave back may turn cold anew
    table.cold_done = std::min(
        table.cold_done,
        std::max<int64_t>(0, all.length - config.compression.hot_tokens) /
            group_rules[group].block_tokens);
  }
  if (!table.split) Unsplit(table);
}

void KVCache::Impl::Unsplit(BlockTable& table) {
  // The layers' own statistics stay in layer_states; the table counts anew.
  table.split = false;
  table.max_length = table.length;
  table.evicted = 0;
}

BlockId KVCache::Impl::GroupAppendBlock(const Sequence& sequence, int layer,
                                        int64_t start, int64_t seq_len,
                                        int64_t* slot) const {
  const BlockTable& table = sequence.tables[group_of(layer)];
  const LayerState& state = StateOf(sequence, layer);
  const LayerRules& r = rules[static_cast<size_t>(layer)];
  const int64_t bt = r.block_tokens;
  const int64_t b = start / bt;
  if (start != state.length || seq_len <= start || (seq_len - 1) / bt != b ||
      !table.Holds(b)) {
    return internal::kNoBlock;  // not an append into one held block
  }
  if (internal::VisibleTokens(r, seq_len, state.window_start) > r.max_seq_len) {
    return internal::kNoBlock;  // the policy acts
  }
  // What the layer shows afterwards must be held already: then the union
  // does not change.
  if (internal::SinkBlocks(r, seq_len) >
      static_cast<int64_t>(table.sink_blocks.size())) {
    return internal::kNoBlock;
  }
  const BlockRange w = internal::WindowRange(r, seq_len, state.window_start);
  if (w.size() > 0 && (w.first < table.window_first ||
                       w.last > table.window_first + table.window_blocks())) {
    return internal::kNoBlock;
  }
  const internal::BlockRef ref = table.Block(b);
  if (internal::IsQuant(ref) || pool->ref_count(ref) != 1) {
    return internal::kNoBlock;
  }
  *slot = start - b * bt;
  return ref;
}

void KVCache::Impl::GroupAppendInPlace(Sequence& sequence, int layer,
                                       int64_t start, int64_t seq_len) {
  const size_t group = group_of(layer);
  BlockTable& table = sequence.tables[group];
  Split(sequence, group);
  LayerState& state = sequence.layer_states[static_cast<size_t>(layer)];
  const int64_t sinks = group_rules[group].sinks;
  counters.tokens_stored += seq_len - start;
  // The table's state is the union: the layer agrees with it before, after,
  // or both; a new longest length leaves it alone in agreeing.
  const bool agreed = Agree(state, table, sinks);
  state.length = seq_len;
  state.max_length = std::max(state.max_length, seq_len);
  if (seq_len > table.length) {
    table.length = seq_len;
    table.max_length = std::max(table.max_length, seq_len);
    table.agree = Agree(state, table, sinks) ? 1 : 0;
  } else {
    table.agree += static_cast<int32_t>(Agree(state, table, sinks)) -
                   static_cast<int32_t>(agreed);
  }
  if (table.agree == static_cast<int32_t>(group_layers(group))) {
    Unsplit(table);  // every layer shows what the table holds again
  }
}

absl::Status KVCache::Impl::PlaceLayerOfGroup(std::string_view op, SeqId seq,
                                              int layer, Sequence& sequence,
                                              int64_t start, int64_t seq_len) {
  const size_t group = group_of(layer);
  BlockTable& table = sequence.tables[group];
  // The table's rules: those of each of its layers, and a ring's room for
  // layers a step apart.
  const LayerRules& layer_rules = group_rules[group];
  const LayerState& now = StateOf(sequence, layer);
  GroupNeeds others;
  for (const int m : groups.members[group]) {
    if (m == layer) continue;
    const LayerState& s = StateOf(sequence, m);
    internal::AddNeeds(layer_rules, s.length, s.window_start, others);
  }
  const Plan plan = internal::MakeLayerPlan(
      layer_rules, table, now, others,
      [this](internal::BlockRef ref) { return pool->ref_count(ref); }, start,
      seq_len);
  if (ABSL_PREDICT_FALSE(internal::ExtendsFront(table, plan))) {
    return absl::OutOfRangeError(absl::StrFormat(
        "%s(seq %d, layer %d, seq_len %d): layer group %d let go of the "
        "blocks before position %d when its other layers passed them; this "
        "layer would show positions from %d (a layer of a group writes where "
        "its group still holds blocks, or past them)",
        op, seq, layer, seq_len, group,
        table.window_first * layer_rules.block_tokens,
        plan.window.first * layer_rules.block_tokens));
  }
  fresh_ids.clear();
  if (plan.fresh > 0) {
    if (absl::Status s = TakeFresh(plan.fresh, &table); !s.ok()) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("%s(seq %d, layer %d, seq_len %d): %s", op, seq,
                          layer, seq_len, s.message()));
    }
  }
  counters.blocks_allocated += plan.fresh;
  Split(sequence, group);
  ApplyPlan(layer_rules, table, plan, fresh_ids,
            &sequence.layer_states[static_cast<size_t>(layer)], 1);
  Rejoin(sequence, group);
  return absl::OkStatus();
}

void KVCache::Impl::TruncateSplit(Sequence& sequence, size_t group,
                                  int64_t seq_len) {
  BlockTable& table = sequence.tables[group];
  KVPAGE_DCHECK(table.split);
  const std::vector<int>& members = groups.members[group];
  const LayerRules& group_layer_rules = group_rules[group];
  for (const int layer : members) {
    LayerState& state = sequence.layer_states[static_cast<size_t>(layer)];
    if (state.length <= seq_len) continue;
    GroupNeeds others;
    for (const int m : members) {
      if (m == layer) continue;
      const LayerState& s = sequence.layer_states[static_cast<size_t>(m)];
      internal::AddNeeds(group_layer_rules, s.length, s.window_start, others);
    }
    const Plan plan = internal::MakeLayerPlan(
        group_layer_rules, table, state, others,
        [this](internal::BlockRef ref) { return pool->ref_count(ref); },
        seq_len, seq_len);
    KVPAGE_DCHECK(plan.fresh == 0 && !internal::ExtendsFront(table, plan));
    ApplyPlan(group_layer_rules, table, plan, {}, &state, 1);
  }
  Rejoin(sequence, group);
}

}  // namespace kvpage
