// Reserving positions for the engine's kernels: the update rule without
// data, one sequence (Reserve) or a scheduler step (ReserveBatch), and the
// slot mapping that tells the kernels where each token goes.
#include <algorithm>
#include <limits>

#include "absl/strings/str_format.h"
#include "allocator/check.h"
#include "cache/kv_cache_impl.h"

namespace kvpage {

using internal::BlockId;
using internal::BlockRef;
using internal::BlockTable;
using internal::LayerRules;
using internal::Plan;
using internal::RefId;
using internal::Sequence;

namespace {

// The slots of positions [start, seq_len) once the table holds them:
// kNoSlot for those the policy evicted. O(tokens).
void WriteSlots(const LayerRules& rules, const BlockTable& table, int64_t start,
                int64_t seq_len, int64_t* slots) {
  const int64_t tokens_per_block = rules.block_tokens;
  // The runs come in position order: what lies between them (evicted in
  // this very call) is kNoSlot, written once.
  int64_t next = start;
  internal::ForEachVisibleRun(
      rules, table, start, seq_len,
      [&](BlockRef ref, int64_t slot, int64_t count, int64_t position) {
        std::fill(slots + (next - start), slots + (position - start), kNoSlot);
        const int64_t first = int64_t{RefId(ref)} * tokens_per_block + slot;
        int64_t* out = slots + (position - start);
        for (int64_t i = 0; i < count; ++i) out[i] = first + i;
        next = position + count;
      });
  std::fill(slots + (next - start), slots + (seq_len - start), kNoSlot);
}

// The fast path's `count` slots: consecutive in `block` from `slot` (no
// division: InPlaceAppendBlock found the slot).
void WriteInPlaceSlots(BlockId block, int64_t block_tokens, int64_t slot,
                       int64_t count, int64_t* slots) {
  const int64_t first = int64_t{block} * block_tokens + slot;
  if (count == 1) {  // a decode step
    *slots = first;
    return;
  }
  for (int64_t i = 0; i < count; ++i) slots[i] = first + i;
}

// The refusal of counts that CountsOk refuses.
ABSL_ATTRIBUTE_NOINLINE absl::Status RefuseCounts(std::string_view op,
                                                  SeqId seq, int layer,
                                                  int64_t seq_len,
                                                  int64_t tokens) {
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s(seq %d, layer %d, seq_len %d): %d tokens %s", op, seq, layer, seq_len,
      tokens,
      tokens < 0 ? "is negative"
                 : "would start below position 0 (tokens > seq_len)"));
}

// Whether `tokens` positions ending at `seq_len` can be reserved: inline, so
// that counts that pass cost two compares.
inline bool CountsOk(int64_t seq_len, int64_t tokens) {
  return ABSL_PREDICT_TRUE(tokens >= 0 && seq_len >= tokens);
}

// One padded row: the layer's entries, then `pad`; `state` is the layer's,
// `row` its shape.
absl::Status WriteRow(const LayerRules& rules,
                      const internal::LayerState& state,
                      const BlockTable& table, const internal::RowShape& row,
                      SeqId seq, size_t index, const PaddedBlockTables& out) {
  int32_t* dst = out.block_table.data() + index * out.max_blocks;
  if (!internal::WriteRowEntries(table, row, dst)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "block table of seq %d: holds a compressed block, which a kernel "
        "cannot read (View and Dequantize read it)",
        seq));
  }
  std::fill(dst + row.entries(), dst + out.max_blocks, out.pad);
  out.seq_lens[index] = static_cast<int32_t>(state.length);
  if (!out.block_offsets.empty()) {
    out.block_offsets[index] = static_cast<int32_t>(row.block_offset());
  }
  if (!out.window_starts.empty()) {
    out.window_starts[index] =
        static_cast<int32_t>(internal::RowWindowStart(rules, state));
  }
  return absl::OkStatus();
}

// Reserve's refusal of a table whose layers differ.
absl::Status SplitRefusal(std::string_view op, SeqId seq, int layer,
                          const BlockTable& table) {
  return absl::FailedPreconditionError(absl::StrFormat(
      "%s(seq %d, layer %d): the layers of its group hold different lengths "
      "(Update moved some of them; the longest holds %d): a reservation is "
      "for every layer of a group, which must agree",
      op, seq, layer, table.length));
}

}  // namespace

absl::Status KVCache::Reserve(SeqId seq, int layer, int64_t seq_len,
                              int64_t tokens,
                              absl::Span<int64_t> slot_mapping) {
  Impl& impl = *impl_;
  absl::StatusOr<BlockTable*> found = impl.FindTable("Reserve", seq, layer);
  if (ABSL_PREDICT_FALSE(!found.ok())) return found.status();
  BlockTable& table = **found;
  const size_t group = impl.group_of(layer);
  // The table's rules: a group's ring keeps room for layers a step apart.
  const LayerRules& layer_rules = impl.group_rules[group];
  const int64_t layers = impl.group_layers(group);
  if (ABSL_PREDICT_FALSE(table.split)) {
    return SplitRefusal("Reserve", seq, layer, table);
  }
  if (!CountsOk(seq_len, tokens)) {
    return RefuseCounts("Reserve", seq, layer, seq_len, tokens);
  }
  if (ABSL_PREDICT_FALSE(static_cast<int64_t>(slot_mapping.size()) != tokens)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Reserve(seq %d, layer %d, seq_len %d): slot_mapping holds %d "
        "entries for %d tokens",
        seq, layer, seq_len, slot_mapping.size(), tokens));
  }
  const int64_t start = seq_len - tokens;
  if (absl::Status s = impl.CheckPositions("Reserve", seq, layer, layer_rules,
                                           table, start, seq_len);
      ABSL_PREDICT_FALSE(!s.ok())) {
    return s;
  }
  int64_t at = 0;
  if (const BlockId block =
          impl.InPlaceAppendBlock(layer_rules, table, start, seq_len, &at);
      block != internal::kNoBlock) {
    impl.AppendInPlace(table, start, seq_len, layers);
    WriteInPlaceSlots(block, impl.block_tokens(), at, seq_len - start,
                      slot_mapping.data());
  } else {
    if (absl::Status s = impl.PlaceGeneral("Reserve", seq, layer, layer_rules,
                                           table, start, seq_len, layers);
        !s.ok()) {
      return s;
    }
    WriteSlots(layer_rules, table, start, seq_len, slot_mapping.data());
  }
  // Earlier reservations are written by now; this one is not yet.
  table.reserved_from = start;
  Sequence& sequence = impl.sequences.find(seq)->second;
  impl.Settle(sequence, group, start, seq_len);
  return absl::OkStatus();
}

namespace {

// Bumps the batch serial when it goes out of scope, so that no sequence
// stays marked after the batch, whatever it returned.
struct EndBatch {
  uint64_t& serial;
  ~EndBatch() { ++serial; }
};

}  // namespace

absl::Status KVCache::ReserveBatch(int layer,
                                   absl::Span<const ReserveRequest> requests,
                                   absl::Span<int64_t> slot_mapping,
                                   const PaddedBlockTables* tables) {
  Impl& impl = *impl_;
  const size_t rows = requests.size();
  auto invalid = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ReserveBatch(layer %d, %d requests): %s", layer, rows, why));
  };
  if (layer < 0 || layer >= impl.config.num_layers) {
    return invalid(
        absl::StrFormat("layer out of range [0, %d)", impl.config.num_layers));
  }
  if (tables != nullptr) {
    if (impl.quant != nullptr) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "ReserveBatch(layer %d): block tables are kept current only "
          "without compression (a kernel cannot read compressed blocks)",
          layer));
    }
    if (tables->max_blocks <= 0 || tables->seq_lens.size() < rows ||
        tables->block_table.size() / static_cast<size_t>(tables->max_blocks) <
            rows ||
        (!tables->block_offsets.empty() &&
         tables->block_offsets.size() < rows) ||
        (!tables->window_starts.empty() &&
         tables->window_starts.size() < rows)) {
      return invalid(absl::StrFormat(
          "tables hold %d entries of rows of %d blocks and %d seq_lens; "
          "%d rows are needed",
          tables->block_table.size(), tables->max_blocks,
          tables->seq_lens.size(), rows));
    }
  }
  const size_t group = impl.group_of(layer);
  const LayerRules& layer_rules = impl.group_rules[group];  // the table's
  const int64_t layers = impl.group_layers(group);
  const uint64_t serial = ++impl.batch_serial;
  EndBatch end_batch{impl.batch_serial};
  // 1. Request by request, in order: every refusal (unknown or repeated
  // sequences, bad counts, positions the update rule refuses, rows the
  // tables cannot hold), and the plan. A plan sees the holds that the
  // requests before it drop (a fork and its parent in one step: the first
  // to write a shared block copies it, the second then holds it alone), so
  // that the step takes from the pool what the requests one after the
  // other would.
  using Row = Impl::BatchRow;
  std::vector<Row>& batch = impl.batch_rows;
  std::vector<Plan>& plans = impl.batch_plans;  // kPlanned rows
  absl::flat_hash_map<BlockRef, uint32_t>& dropped = impl.batch_dropped;
  // The last batch's sequences, by request, while none was added or
  // removed since: request i naming the same one skips the hash lookup.
  const size_t known = impl.batch_epoch == impl.sequences_epoch
                           ? std::min(batch.size(), rows)
                           : 0;
  impl.batch_epoch = ~uint64_t{0};  // until every row is looked up
  batch.resize(rows);
  plans.resize(rows);
  dropped.clear();
  auto refs = [&](BlockRef ref) -> uint32_t {
    const uint32_t count = impl.pool->ref_count(ref);
    if (ABSL_PREDICT_TRUE(dropped.empty())) return count;
    auto it = dropped.find(ref);
    return it == dropped.end() ? count : count - it->second;
  };
  // The pool supplies the most the step is short at any request: blocks an
  // earlier request gives back (a rollback, a window sliding by more than
  // it grows) serve the later ones, as they would one Reserve at a time.
  int64_t total_tokens = 0, running = 0, total_fresh = 0;
  for (size_t i = 0; i < rows; ++i) {
    const ReserveRequest& r = requests[i];
    Row& row = batch[i];
    if (i >= known || row.id != r.seq) {
      auto it = impl.sequences.find(r.seq);
      if (it == impl.sequences.end()) {
        return absl::NotFoundError(absl::StrFormat(
            "ReserveBatch(layer %d, request %d, seq %d): no such sequence",
            layer, i, r.seq));
      }
      row.sequence = &it->second;
      row.id = r.seq;
    }
    Sequence* const sequence = row.sequence;
    KVPAGE_DCHECK(&impl.sequences.find(r.seq)->second == sequence);
    if (sequence->batch_mark == serial) {
      return invalid(
          absl::StrFormat("seq %d is named twice (request %d)", r.seq, i));
    }
    sequence->batch_mark = serial;
    if (!CountsOk(r.seq_len, r.tokens)) {
      return RefuseCounts("ReserveBatch", r.seq, layer, r.seq_len, r.tokens);
    }
    const BlockTable& table = sequence->tables[group];
    if (table.split) return SplitRefusal("ReserveBatch", r.seq, layer, table);
    const int64_t start = r.seq_len - r.tokens;
    if (absl::Status s = impl.CheckPositions(
            "ReserveBatch", r.seq, layer, layer_rules, table, start, r.seq_len);
        !s.ok()) {
      return s;
    }
    if (r.tokens > std::numeric_limits<int64_t>::max() - total_tokens) {
      return invalid("the tokens of the requests overflow int64");
    }
    total_tokens += r.tokens;
    int64_t entries_after = 0;
    row.block = impl.InPlaceAppendBlock(layer_rules, table, start, r.seq_len,
                                        &row.slot);
    if (row.block != internal::kNoBlock) {
      row.kind = Row::kInPlace;
      if (tables != nullptr) entries_after = internal::RowOf(table).entries();
    } else if (impl.NewBlockAppends(layer_rules, table, start, r.seq_len)) {
      row.kind = Row::kNewBlock;
      row.before = internal::RowOf(table);
      entries_after = row.before.entries() + 1;
      total_fresh = std::max(total_fresh, ++running);
    } else {
      row.kind = Row::kPlanned;
      plans[i] = internal::MakePlan(layer_rules, table, refs, start, r.seq_len);
      running += plans[i].fresh;
      total_fresh = std::max(total_fresh, running);
      running -= plans[i].freed;
      entries_after = plans[i].sink_blocks + plans[i].window.size();
      internal::ForEachHoldDropped(table, plans[i], [&](BlockRef ref) {
        if (!internal::IsQuant(ref) && refs(ref) > 1) ++dropped[ref];
      });
    }
    if (tables != nullptr && entries_after > tables->max_blocks) {
      return invalid(absl::StrFormat(
          "seq %d (request %d) would hold %d blocks; table rows hold %d", r.seq,
          i, entries_after, tables->max_blocks));
    }
    if (tables != nullptr && r.seq_len > std::numeric_limits<int32_t>::max()) {
      return absl::OutOfRangeError(absl::StrFormat(
          "ReserveBatch(layer %d, request %d, seq %d): seq_len %d does not "
          "fit the tables' int32",
          layer, i, r.seq, r.seq_len));
    }
  }
  impl.batch_epoch = impl.sequences_epoch;  // every row looked up
  if (static_cast<int64_t>(slot_mapping.size()) != total_tokens) {
    return invalid(
        absl::StrFormat("slot_mapping holds %d entries for %d tokens",
                        slot_mapping.size(), total_tokens));
  }
  // 2. The blocks the step takes from the pool, in one go.
  impl.fresh_ids.clear();
  if (total_fresh > 0) {
    if (absl::Status s = impl.TakeFresh(total_fresh, nullptr); !s.ok()) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "ReserveBatch(layer %d, %d requests): %s", layer, rows, s.message()));
    }
  }
  // 3. Nothing fails from here on. A plan is made again just before it is
  // applied, on the holds as they are then: what step 1 foresaw (the same
  // plan when no request lets go of a block another table shares: then
  // every count a plan reads is as step 1 read it). A fast-path request
  // stays one: no other request can take a hold on its private last block,
  // nor change its table.
  const bool replan = !dropped.empty();
  const absl::InlinedVector<BlockId, 16>& taken = impl.fresh_ids;
  size_t next_fresh = 0;
  int64_t given_back_used = 0;
  absl::InlinedVector<BlockId, 16> step_ids;
  int64_t* slots = slot_mapping.data();
  // A request's fresh blocks: what step 2 took, then what earlier requests
  // gave back (step 1 counted on no more).
  auto take = [&]() {
    if (next_fresh < taken.size()) return taken[next_fresh++];
    const BlockId id = impl.local->AllocateOne();
    KVPAGE_DCHECK(id != internal::kNoBlock);
    ++given_back_used;
    return id;
  };
  for (size_t i = 0; i < rows; ++i) {
    const ReserveRequest& r = requests[i];
    Row& row = batch[i];
    BlockTable& table = row.sequence->tables[group];
    const int64_t start = r.seq_len - r.tokens;
    if (row.kind == Row::kInPlace) {
      impl.AppendInPlace(table, start, r.seq_len, layers);
      WriteInPlaceSlots(row.block, impl.block_tokens(), row.slot, r.tokens,
                        slots);
    } else if (row.kind == Row::kNewBlock) {
      const BlockId id = take();
      impl.NewBlockAppend(table, id, start, r.seq_len, layers);
      WriteInPlaceSlots(id, impl.block_tokens(), 0, r.tokens, slots);
    } else {
      if (replan) {
        plans[i] = internal::MakePlan(layer_rules, table, *impl.pool, start,
                                      r.seq_len);
      }
      const Plan& plan = plans[i];
      // A plan that keeps every entry and adds window entries after them
      // leaves the row's beginning as exported: only the new entries are
      // written (step 4).
      const internal::RowShape before = internal::RowOf(table);
      const bool appends_only = plan.rewrite.empty() &&
                                plan.sink_blocks == before.sink_entries &&
                                plan.window.first == before.window_first &&
                                plan.window.size() >= before.window_entries;
      row.before =
          appends_only ? before : internal::RowShape{.window_entries = -1};
      const auto want = static_cast<size_t>(plan.fresh);
      const size_t from_taken = std::min(want, taken.size() - next_fresh);
      step_ids.assign(taken.begin() + next_fresh,
                      taken.begin() + next_fresh + from_taken);
      next_fresh += from_taken;
      while (step_ids.size() < want) step_ids.push_back(take());
      impl.ApplyPlan(layer_rules, table, plan, step_ids, nullptr, layers);
      WriteSlots(layer_rules, table, start, r.seq_len, slots);
    }
    table.reserved_from = start;  // as Reserve
    slots += r.tokens;
  }
  impl.counters.blocks_allocated +=
      static_cast<int64_t>(next_fresh) + given_back_used;
  for (size_t i = next_fresh; i < taken.size(); ++i) {
    impl.local->Release(taken[i]);  // planned, not needed after all
  }
  for (size_t i = 0; i < rows; ++i) {
    const ReserveRequest& r = requests[i];
    const Row& row = batch[i];
    impl.Settle(*row.sequence, group, r.seq_len - r.tokens, r.seq_len);
    if (tables == nullptr) continue;
    const BlockTable& table = row.sequence->tables[group];
    if (row.kind == Row::kInPlace) {  // blocks unchanged: lengths only
      tables->seq_lens[i] = static_cast<int32_t>(table.length);
      if (!tables->window_starts.empty()) {
        tables->window_starts[i] =
            static_cast<int32_t>(internal::RowWindowStart(layer_rules, table));
      }
    } else if (const internal::RowShape& before = row.before;
               before.window_entries >= 0) {
      // Only window entries appended: the row's first entries stand.
      const internal::RowShape row = internal::RowOf(table);
      int32_t* dst = tables->block_table.data() + i * tables->max_blocks;
      for (int64_t b = before.window_first + before.window_entries;
           b < row.window_first + row.window_entries; ++b) {
        dst[b - row.window_first + row.sink_entries] =
            static_cast<int32_t>(table.Block(b));
      }
      tables->seq_lens[i] = static_cast<int32_t>(table.length);
      if (!tables->block_offsets.empty()) {
        tables->block_offsets[i] = static_cast<int32_t>(row.block_offset());
      }
      if (!tables->window_starts.empty()) {
        tables->window_starts[i] =
            static_cast<int32_t>(internal::RowWindowStart(layer_rules, table));
      }
    } else {
      const absl::Status s = WriteRow(
          layer_rules, table, table, internal::RowOf(table), r.seq, i, *tables);
      KVPAGE_DCHECK(s.ok());  // no compression: every entry is hot
      (void)s;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<void*> KVCache::LayerBase(int layer) const {
  const Impl& impl = *impl_;
  if (layer < 0 || layer >= impl.config.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("LayerBase(layer %d): layer out of range [0, %d)",
                        layer, impl.config.num_layers));
  }
  // Every table takes its blocks from the one pool; a layer of a group
  // reads its own slot of each.
  return const_cast<void*>(impl.pool->storage().Address(impl.pool->StorageId(
      0, impl.groups.slot_of[static_cast<size_t>(layer)])));
}

absl::StatusOr<LayerGroup> KVCache::GroupOf(int layer) const {
  const Impl& impl = *impl_;
  if (layer < 0 || layer >= impl.config.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GroupOf(layer %d): layer out of range [0, %d)", layer,
                        impl.config.num_layers));
  }
  const size_t group = impl.group_of(layer);
  return LayerGroup{.group = static_cast<int>(group),
                    .slot = impl.groups.slot_of[static_cast<size_t>(layer)],
                    .layers = static_cast<int>(impl.group_layers(group))};
}

int KVCache::num_groups() const {
  return static_cast<int>(impl_->groups.size());
}

absl::Status KVCache::ExportBlockTables(int layer, absl::Span<const SeqId> seqs,
                                        const PaddedBlockTables& out) const {
  const Impl& impl = *impl_;
  const size_t rows = seqs.size();
  if (layer < 0 || layer >= impl.config.num_layers) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ExportBlockTables(layer %d): layer out of range [0, %d)", layer,
        impl.config.num_layers));
  }
  if (out.max_blocks <= 0 || out.seq_lens.size() < rows ||
      out.block_table.size() / static_cast<size_t>(out.max_blocks) < rows ||
      (!out.block_offsets.empty() && out.block_offsets.size() < rows) ||
      (!out.window_starts.empty() && out.window_starts.size() < rows)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ExportBlockTables(layer %d, %d rows): the arrays hold %d entries of "
        "rows of %d blocks and %d seq_lens",
        layer, rows, out.block_table.size(), out.max_blocks,
        out.seq_lens.size()));
  }
  const LayerRules& layer_rules = impl.rules[static_cast<size_t>(layer)];
  for (size_t i = 0; i < rows; ++i) {
    absl::StatusOr<const Sequence*> found =
        impl.FindSequence("ExportBlockTables", seqs[i], layer);
    if (!found.ok()) return found.status();
    const BlockTable& table = (*found)->tables[impl.group_of(layer)];
    const internal::LayerState& state = impl.StateOf(**found, layer);
    const internal::RowShape row = internal::RowOf(layer_rules, state, table);
    if (row.entries() > out.max_blocks) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "ExportBlockTables(layer %d): seq %d (row %d) holds %d blocks; rows "
          "hold %d",
          layer, seqs[i], i, row.entries(), out.max_blocks));
    }
    if (state.length > std::numeric_limits<int32_t>::max()) {
      return absl::OutOfRangeError(absl::StrFormat(
          "ExportBlockTables(layer %d): seq %d has length %d, beyond int32",
          layer, seqs[i], state.length));
    }
    if (absl::Status s =
            WriteRow(layer_rules, state, table, row, seqs[i], i, out);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status KVCache::ExportBlockTables(int layer, absl::Span<const SeqId> seqs,
                                        const CsrBlockTables& out) const {
  const Impl& impl = *impl_;
  const size_t rows = seqs.size();
  auto invalid = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ExportBlockTables(layer %d, %d rows, CSR): %s", layer, rows, why));
  };
  if (layer < 0 || layer >= impl.config.num_layers) {
    return invalid(
        absl::StrFormat("layer out of range [0, %d)", impl.config.num_layers));
  }
  if (out.indptr.size() < rows + 1 || out.last_page_len.size() < rows ||
      (!out.seq_lens.empty() && out.seq_lens.size() < rows) ||
      (!out.block_offsets.empty() && out.block_offsets.size() < rows) ||
      (!out.window_starts.empty() && out.window_starts.size() < rows)) {
    return invalid(absl::StrFormat(
        "indptr holds %d entries and last_page_len %d; %d and %d are needed",
        out.indptr.size(), out.last_page_len.size(), rows + 1, rows));
  }
  const LayerRules& layer_rules = impl.rules[static_cast<size_t>(layer)];
  const int64_t tokens_per_block = impl.block_tokens();
  int64_t next = 0;
  out.indptr[0] = 0;
  for (size_t i = 0; i < rows; ++i) {
    absl::StatusOr<const Sequence*> found =
        impl.FindSequence("ExportBlockTables", seqs[i], layer);
    if (!found.ok()) return found.status();
    const BlockTable& table = (*found)->tables[impl.group_of(layer)];
    const internal::LayerState& state = impl.StateOf(**found, layer);
    const internal::RowShape row = internal::RowOf(layer_rules, state, table);
    const int64_t entries = row.entries();
    if (next + entries > static_cast<int64_t>(out.indices.size()) ||
        next + entries > std::numeric_limits<int32_t>::max()) {
      return invalid(absl::StrFormat(
          "indices hold %d entries; row %d (seq %d) needs up to %d",
          out.indices.size(), i, seqs[i], next + entries));
    }
    if (state.length > std::numeric_limits<int32_t>::max()) {
      return absl::OutOfRangeError(absl::StrFormat(
          "ExportBlockTables(layer %d): seq %d has length %d, beyond int32",
          layer, seqs[i], state.length));
    }
    if (!internal::WriteRowEntries(table, row, out.indices.data() + next)) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "block table of seq %d: holds a compressed block, which a kernel "
          "cannot read (View and Dequantize read it)",
          seqs[i]));
    }
    next += entries;
    out.indptr[i + 1] = static_cast<int32_t>(next);
    out.last_page_len[i] =
        entries == 0 ? 0
                     : static_cast<int32_t>(state.length -
                                            (row.end() - 1) * tokens_per_block);
    if (!out.seq_lens.empty()) {
      out.seq_lens[i] = static_cast<int32_t>(state.length);
    }
    if (!out.block_offsets.empty()) {
      out.block_offsets[i] = static_cast<int32_t>(row.block_offset());
    }
    if (!out.window_starts.empty()) {
      out.window_starts[i] =
          static_cast<int32_t>(internal::RowWindowStart(layer_rules, state));
    }
  }
  return absl::OkStatus();
}

}  // namespace kvpage
