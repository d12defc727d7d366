// Holding blocks: every hold a table takes or drops on a hot block or a
// compressed block, the prefix cache's own holds, and publishing blocks to
// it.
#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_format.h"
#include "cache/kv_cache_impl.h"

namespace kvpage {

using internal::BlockId;
using internal::BlockRef;
using internal::BlockTable;
using internal::IsQuant;
using internal::LayerRules;
using internal::RefId;

KVCache::Impl::~Impl() {
  for (auto& [id, sequence] : sequences) {
    for (BlockTable& table : sequence.tables) ReleaseAll(table);
  }
  // Every entry is idle now; none goes to a tier (it may be gone).
  while (prefix->has_idle()) EvictOldest(/*to_tier=*/false);
}

void KVCache::Impl::Release(BlockId id) {
  const uint32_t before = pool->ref_count(id);
  if (before == 2) prefix->LayerLeft(id);
  local->Release(id);
  if (before == 1) ++counters.blocks_released;
}

void KVCache::Impl::Retain(BlockId id) {
  if (pool->ref_count(id) == 1) prefix->LayerJoined(id);
  pool->Retain(id);
}

void KVCache::Impl::RetainRef(BlockRef ref) {
  if (IsQuant(ref)) {
    quant->Retain(RefId(ref));
  } else {
    Retain(ref);
  }
}

void KVCache::Impl::ReleaseRef(BlockRef ref) {
  if (IsQuant(ref)) {
    quant->Release(RefId(ref));
  } else {
    Release(ref);
  }
}

void KVCache::Impl::ReleaseAll(BlockTable& table) {
  // The last block first: the prefix cache's entries go idle in this order,
  // so that a chain's deepest block is evicted before the blocks that lead
  // to it (a match must start at block 0; kvpage/prefix.h).
  for (BlockRef ref : table.spares) ReleaseRef(ref);
  for (size_t i = table.window.size(); i > table.head; --i) {
    ReleaseRef(table.window[i - 1]);
  }
  for (size_t i = table.sink_blocks.size(); i > 0; --i) {
    ReleaseRef(table.sink_blocks[i - 1]);
  }
  table.sink_blocks.clear();
  table.ResetWindow(0);
  table.spares.clear();
}

void KVCache::Impl::DropSurplusSpares(const LayerRules& rules,
                                      BlockTable& table) {
  while (table.HasSurplusSpare(rules)) {
    Release(table.spares.back());
    table.spares.pop_back();
  }
}

void KVCache::Impl::EvictOldest(bool to_tier) {
  if (to_tier && tier != nullptr) {
    const int32_t e = prefix->oldest();
    // Written through before, or fetched from the tier: there already.
    if (prefix->FindComplete(prefix->hash_of(e)) == e && !prefix->in_tier(e)) {
      StoreToTier(e, true);
    }
  }
  // The cache's own reference: the last one.
  for (BlockId id : prefix->EvictOldest()) Release(id);
}

void KVCache::Impl::PublishBlock(const BlockTable& table, size_t group,
                                 int64_t logical, uint64_t hash,
                                 int32_t* entry) {
  const LayerRules& r = group_rules[group];
  const int64_t bt = r.block_tokens;
  const bool visible = logical * bt >= std::max(table.window_start, r.sinks) ||
                       (logical + 1) * bt <= r.sinks ||
                       table.window_start <= r.sinks;
  if (!visible || !table.Holds(logical) || IsQuant(table.Block(logical))) {
    return;
  }
  const BlockId id = table.Block(logical);
  if (prefix->Publish(hash, group, id, entry)) {
    pool->Retain(id);  // the cache's reference
  }
}

// The logical blocks below this are hashed and fully written in `table`.
int64_t KVCache::Impl::PublishLimit(const internal::Sequence& sequence,
                                    size_t group) const {
  const BlockTable& table = sequence.tables[group];
  if (table.split) return 0;  // published once its layers agree again
  return std::min(static_cast<int64_t>(sequence.block_hashes.size()),
                  table.length / group_rules[group].block_tokens);
}

void KVCache::Impl::PublishTable(internal::Sequence& sequence, size_t group) {
  BlockTable& table = sequence.tables[group];
  const int64_t limit = PublishLimit(sequence, group);
  for (int64_t b = table.published; b < limit; ++b) {
    PublishBlock(table, group, b, sequence.block_hashes[static_cast<size_t>(b)],
                 nullptr);
  }
  table.published = std::max(table.published, limit);
}

void KVCache::Impl::PublishAll(internal::Sequence& sequence) {
  const size_t tables = sequence.tables.size();
  if (tables == 1) {
    PublishTable(sequence, 0);
    return;
  }
  // Blocks outer, tables inner: the index is asked once per block for all
  // tables (PublishTable asks once per block and table).
  absl::InlinedVector<int64_t, 8> limits(tables, 0);
  int64_t lo = std::numeric_limits<int64_t>::max(), hi = 0;
  for (size_t g = 0; g < tables; ++g) {
    limits[g] = PublishLimit(sequence, g);
    lo = std::min(lo, sequence.tables[g].published);
    hi = std::max(hi, limits[g]);
  }
  for (int64_t b = lo; b < hi; ++b) {
    const uint64_t hash = sequence.block_hashes[static_cast<size_t>(b)];
    int32_t entry = -1;
    for (size_t g = 0; g < tables; ++g) {
      const BlockTable& table = sequence.tables[g];
      if (b >= table.published && b < limits[g]) {
        PublishBlock(table, g, b, hash, &entry);
      }
    }
  }
  for (size_t g = 0; g < tables; ++g) {
    BlockTable& table = sequence.tables[g];
    table.published = std::max(table.published, limits[g]);
  }
}

absl::StatusOr<const internal::Sequence*> KVCache::Impl::FindSequence(
    std::string_view op, SeqId seq, int layer) const {
  auto it = sequences.find(seq);
  if (ABSL_PREDICT_FALSE(it == sequences.end())) {
    return absl::NotFoundError(absl::StrFormat(
        "%s(seq %d, layer %d): no such sequence", op, seq, layer));
  }
  if (ABSL_PREDICT_FALSE(layer < 0 || layer >= config.num_layers)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s(seq %d, layer %d): layer out of range [0, %d)", op,
                        seq, layer, config.num_layers));
  }
  return &it->second;
}

absl::StatusOr<const BlockTable*> KVCache::Impl::FindTable(std::string_view op,
                                                           SeqId seq,
                                                           int layer) const {
  absl::StatusOr<const internal::Sequence*> sequence =
      FindSequence(op, seq, layer);
  if (!sequence.ok()) return sequence.status();
  return &(*sequence)->tables[group_of(layer)];
}

absl::StatusOr<BlockTable*> KVCache::Impl::FindTable(std::string_view op,
                                                     SeqId seq, int layer) {
  absl::StatusOr<const BlockTable*> table =
      std::as_const(*this).FindTable(op, seq, layer);
  if (!table.ok()) return table.status();
  return const_cast<BlockTable*>(*table);
}

}  // namespace kvpage
