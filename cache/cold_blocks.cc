// Compressing cold blocks: which blocks may be compressed, compressing one
// (the table then refers to its cells and its hot block is released), and
// choosing blocks when the hot pool is short. A group's block is compressed
// whole, every layer's part: made cold by the update of any of its layers,
// as soon as every layer of the group has written it (during a step the
// first layer compresses what a per-layer table would, when the step's
// tokens are no more than hot_tokens).
#include <algorithm>

#include "allocator/check.h"
#include "cache/kv_cache_impl.h"

namespace kvpage {

using internal::BlockId;
using internal::BlockTable;
using internal::IsQuant;
using internal::LayerRules;

namespace {

// The visible slots [first, first + count) of window block `logical`: a
// block partly evicted by a window keeps stale data in its other slots.
std::pair<int, int> VisibleSlots(const LayerRules& rules,
                                 const BlockTable& table, int64_t logical) {
  const int64_t tokens_per_block = rules.block_tokens;
  const int64_t lo =
      std::max({logical * tokens_per_block, table.window_start, rules.sinks});
  return {static_cast<int>(lo - logical * tokens_per_block),
          static_cast<int>((logical + 1) * tokens_per_block - lo)};
}

}  // namespace

bool KVCache::Impl::Compressible(const LayerRules& rules,
                                 const BlockTable& table, int64_t logical,
                                 int64_t written) const {
  const int64_t tokens_per_block = rules.block_tokens;
  return quant != nullptr && !rules.ring() && logical >= rules.sink_blocks &&
         logical >= table.window_first &&
         logical < table.window_first + table.window_blocks() &&
         !IsQuant(table.Block(logical)) &&
         pool->ref_count(table.Block(logical)) == 1 &&  // shared stays hot
         (logical + 1) * tokens_per_block <=
             table.length - config.compression.hot_tokens &&
         (logical + 1) * tokens_per_block <= table.reserved_from &&
         (logical + 1) * tokens_per_block <= written;
}

bool KVCache::Impl::CompressBlock(const LayerRules& rules, BlockTable& table,
                                  int64_t logical) {
  const BlockId hot = table.Block(logical);
  const auto [first, count] = VisibleSlots(rules, table, logical);
  const BlockId cell = quant->Compress(HotParts(rules, hot), first, count);
  if (cell == internal::kNoBlock) return false;
  table.MutableBlock(logical) = internal::QuantRef(cell);
  Release(hot);
  return true;
}

absl::Span<const internal::QuantStore::HotParts> KVCache::Impl::HotParts(
    const LayerRules& rules, BlockId hot) {
  hot_parts.resize(static_cast<size_t>(rules.layers));
  for (int slot = 0; slot < rules.layers; ++slot) {
    const auto [k, v] = io->Source(hot, slot);
    hot_parts[static_cast<size_t>(slot)] = {k, v};
  }
  return hot_parts;
}

void KVCache::Impl::CompressNewlyCold(internal::Sequence& sequence,
                                      size_t group, int64_t length) {
  BlockTable& table = sequence.tables[group];
  const LayerRules& rules = group_rules[group];
  // Cold by the length the update left (a layer's during a step: a layer
  // that rolled back makes nothing cold that it just wrote). Blocks
  // reserved and perhaps not written yet wait for a later call.
  int64_t limit =
      std::min(length - config.compression.hot_tokens, table.reserved_from);
  if (limit / rules.block_tokens <= table.cold_done) return;
  // So do blocks a layer of the group has yet to write.
  int64_t written = table.length;
  if (table.split) {
    for (const int layer : groups.members[group]) {
      written = std::min(
          written, sequence.layer_states[static_cast<size_t>(layer)].length);
    }
  }
  limit = std::min(limit, written) / rules.block_tokens;
  for (int64_t b = std::max(table.cold_done, table.window_first); b < limit;
       ++b) {
    if (Compressible(rules, table, b, written)) CompressBlock(rules, table, b);
  }
  table.cold_done = std::max(table.cold_done, limit);
}

void KVCache::Impl::CompressBefore(const LayerRules& rules, BlockTable& table,
                                   int64_t cutoff) {
  const int64_t tokens_per_block = rules.block_tokens;
  for (int64_t b = table.window_first;
       b < table.window_first + table.window_blocks(); ++b) {
    if ((b + 1) * tokens_per_block > cutoff) break;
    if (Compressible(rules, table, b, table.length)) {
      CompressBlock(rules, table, b);
    }
  }
}

std::vector<KVCache::Impl::Candidate> KVCache::Impl::CompressCandidates(
    const BlockTable* skip, int64_t want) {
  std::vector<Candidate> out;
  std::vector<SeqId> ids;
  for (const auto& [id, sequence] : sequences) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (SeqId id : ids) {
    internal::Sequence& sequence = sequences.find(id)->second;
    if (sequence.batch_mark == batch_serial) continue;
    for (size_t group = 0; group < sequence.tables.size(); ++group) {
      BlockTable& table = sequence.tables[group];
      if (&table == skip || table.split) continue;
      const LayerRules& table_rules = group_rules[group];
      for (int64_t b = table.window_first;
           b < table.window_first + table.window_blocks(); ++b) {
        if (static_cast<int64_t>(out.size()) >= want) return out;
        if (!Compressible(table_rules, table, b, table.length)) continue;
        const auto [first, count] = VisibleSlots(table_rules, table, b);
        if (quant->Representable(HotParts(table_rules, table.Block(b)), first,
                                 count)) {
          out.push_back({&table, group, b});
        }
      }
    }
  }
  return out;
}

void KVCache::Impl::CompressAll(absl::Span<const Candidate> candidates) {
  for (const Candidate& c : candidates) {
    const bool done = CompressBlock(group_rules[c.group], *c.table, c.logical);
    KVPAGE_DCHECK(done);
    (void)done;
  }
}

}  // namespace kvpage
