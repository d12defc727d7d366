// Reading a layer: Gather copies its visible tokens out as f32; View
// describes its blocks for an attention kernel.
#include <optional>

#include "absl/strings/str_format.h"
#include "cache/kv_cache_impl.h"

namespace kvpage {

using internal::BlockId;
using internal::BlockRef;
using internal::BlockTable;
using internal::IsQuant;
using internal::QuantFormat;
using internal::RefId;

namespace {

// Gather's output, one run of positions at a time. Each run is read once
// the next one is known, so that a compressed block is decoded with the
// next compressed one streaming in (NextBlock).
class Gatherer {
 public:
  // Blocks are read from layer slot `slot` of `pool`'s blocks and of
  // `quant`'s cells.
  Gatherer(const internal::BlockIO& io, const internal::BlockPool& pool,
           int slot, const internal::QuantStore* quant, GatheredLayer& out)
      : io_(io), pool_(pool), slot_(slot), quant_(quant), out_(out) {}

  void Add(BlockRef ref, int64_t slot, int64_t count, int64_t position) {
    const Run run{ref, slot, count, position};
    if (pending_) Read(*pending_, &run);
    pending_ = run;
  }
  void Finish() {
    if (pending_) Read(*pending_, nullptr);
  }

 private:
  struct Run {
    BlockRef ref;
    int64_t slot, count, position;
  };

  void Read(const Run& run, const Run* next) {
    const int64_t token_elems = io_.token_elems();
    const auto done = static_cast<int64_t>(out_.positions.size());
    float* k_out = out_.k.data() + done * token_elems;
    float* v_out = out_.v.data() + done * token_elems;
    if (IsQuant(run.ref)) {
      const internal::QuantStore& quant = *quant_;
      internal::NextBlock hint;
      if (next != nullptr && IsQuant(next->ref)) {
        const BlockId n = RefId(next->ref);
        hint = {quant.format(n), quant.k_part(n, slot_),
                quant.v_part(n, slot_)};
      }
      hint.this_block_requested = last_compressed_;
      const BlockId cell = RefId(run.ref);
      internal::DequantizeBlock(
          quant.format(cell), quant.shape(), quant.k_part(cell, slot_),
          quant.v_part(cell, slot_), static_cast<int>(run.slot),
          static_cast<int>(run.count), k_out, v_out, hint);
    } else {
      const BlockId id = pool_.StorageId(run.ref, slot_);
      io_.ReadRun(id, false, run.slot, run.count, k_out);
      io_.ReadRun(id, true, run.slot, run.count, v_out);
    }
    for (int64_t i = 0; i < run.count; ++i) {
      out_.positions.push_back(run.position + i);
    }
    last_compressed_ = IsQuant(run.ref);
  }

  const internal::BlockIO& io_;
  const internal::BlockPool& pool_;
  int slot_;
  const internal::QuantStore* quant_;  // null: compression off
  GatheredLayer& out_;
  std::optional<Run> pending_;
  // Whether the run read last was compressed: it then named this one.
  bool last_compressed_ = false;
};

// The view of a compressed block's parts in layer slot `slot`.
void DescribeCompressed(const internal::QuantStore& quant, BlockId cell,
                        int slot, BlockView& b) {
  const QuantFormat f = quant.format(cell);
  const internal::QuantLayout& l = quant.layout(f);
  const std::byte* k = quant.k_part(cell, slot);
  const std::byte* v = quant.v_part(cell, slot);
  const bool int4 = f == QuantFormat::kInt4;
  b.format = int4 ? BlockFormat::kInt4 : BlockFormat::kInt8;
  b.quant = {.k_codes = k + l.k_codes,
             .k_scales = k + l.k_scales,
             .k_mins = int4 ? k + l.k_mins : nullptr,
             .v_codes = v + l.v_codes,
             .v_scales = v + l.v_scales,
             .v_mins = int4 ? v + l.v_mins : nullptr};
  b.quant_error = quant.error(cell);
}

}  // namespace

absl::StatusOr<GatheredLayer> KVCache::Gather(SeqId seq, int layer) const {
  const Impl& impl = *impl_;
  absl::StatusOr<const internal::Sequence*> found =
      impl.FindSequence("Gather", seq, layer);
  if (!found.ok()) return found.status();
  if (!impl.pool->storage().host_io()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "Gather(seq %d, layer %d): the storage has no host reads", seq, layer));
  }
  const BlockTable& table = (*found)->tables[impl.group_of(layer)];
  const internal::LayerState& state = impl.StateOf(**found, layer);
  const internal::LayerRules& layer_rules =
      impl.rules[static_cast<size_t>(layer)];
  const int64_t tokens =
      internal::VisibleTokens(layer_rules, state.length, state.window_start);
  GatheredLayer out;
  out.k.resize(static_cast<size_t>(tokens * impl.io->token_elems()));
  out.v.resize(static_cast<size_t>(tokens * impl.io->token_elems()));
  out.positions.reserve(static_cast<size_t>(tokens));
  Gatherer gatherer(*impl.io, *impl.pool,
                    impl.groups.slot_of[static_cast<size_t>(layer)],
                    impl.quant.get(), out);
  internal::ForEachVisibleRun(
      layer_rules, state, table, 0, state.length,
      [&](BlockRef ref, int64_t slot, int64_t count, int64_t position) {
        gatherer.Add(ref, slot, count, position);
      });
  gatherer.Finish();
  return out;
}

absl::StatusOr<LayerView> KVCache::View(SeqId seq, int layer) const {
  const Impl& impl = *impl_;
  absl::StatusOr<const internal::Sequence*> found =
      impl.FindSequence("View", seq, layer);
  if (!found.ok()) return found.status();
  const BlockTable& table = (*found)->tables[impl.group_of(layer)];
  const internal::LayerState& state = impl.StateOf(**found, layer);
  const int layer_slot = impl.groups.slot_of[static_cast<size_t>(layer)];
  LayerView view;
  view.dtype = impl.config.dtype;
  view.num_kv_heads = impl.config.num_kv_heads;
  view.head_dim = impl.config.head_dim;
  view.block_tokens = impl.config.block_tokens;
  view.token_stride = impl.io->token_elems();
  view.host_accessible = impl.io->host_base() != nullptr;
  view.length = state.length;
  view.quant_group_size =
      impl.quant != nullptr ? impl.quant->shape().group_size : 0;
  internal::ForEachVisibleRun(
      impl.rules[static_cast<size_t>(layer)], state, table, 0, state.length,
      [&](BlockRef ref, int64_t slot, int64_t count, int64_t position) {
        BlockView b{.block_id = RefId(ref),
                    .begin_slot = static_cast<int>(slot),
                    .tokens = static_cast<int>(count),
                    .first_position = position};
        if (IsQuant(ref)) {
          DescribeCompressed(*impl.quant, RefId(ref), layer_slot, b);
        } else {
          const auto* k =
              static_cast<const std::byte*>(impl.pool->storage().Address(
                  impl.pool->StorageId(ref, layer_slot)));
          b.k = k;
          b.v = k + impl.io->v_offset();
        }
        view.blocks.push_back(b);
      });
  return view;
}

}  // namespace kvpage
