// Compressing cold blocks: which blocks may be compressed, compressing one
// (the table then refers to its cells and its hot block is released), and
// choosing blocks when the hot pool is short.
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
                                 const BlockTable& table,
                                 int64_t logical) const {
  const int64_t tokens_per_block = rules.block_tokens;
  return quant != nullptr && !rules.ring() && logical >= rules.sink_blocks &&
         logical >= table.window_first &&
         logical < table.window_first + table.window_blocks() &&
         !IsQuant(table.Block(logical)) &&
         pool->ref_count(table.Block(logical)) == 1 &&  // shared stays hot
         (logical + 1) * tokens_per_block <=
             table.length - config.compression.hot_tokens &&
         (logical + 1) * tokens_per_block <= table.reserved_from;
}

bool KVCache::Impl::CompressBlock(const LayerRules& rules, BlockTable& table,
                                  int64_t logical) {
  const BlockId hot = table.Block(logical);
  const auto [first, count] = VisibleSlots(rules, table, logical);
  const auto [k_src, v_src] = io->Source(hot);
  const BlockId cell = quant->Compress(k_src, v_src, first, count);
  if (cell == internal::kNoBlock) return false;
  table.MutableBlock(logical) = internal::QuantRef(cell);
  Release(hot);
  return true;
}

void KVCache::Impl::CompressNewlyCold(const LayerRules& rules,
                                      BlockTable& table) {
  // Blocks reserved and perhaps not written yet wait for a later call.
  const int64_t limit = std::min(table.length - config.compression.hot_tokens,
                                 table.reserved_from) /
                        rules.block_tokens;
  for (int64_t b = std::max(table.cold_done, table.window_first); b < limit;
       ++b) {
    if (Compressible(rules, table, b)) CompressBlock(rules, table, b);
  }
  table.cold_done = std::max(table.cold_done, limit);
}

void KVCache::Impl::CompressBefore(const LayerRules& rules, BlockTable& table,
                                   int64_t cutoff) {
  const int64_t tokens_per_block = rules.block_tokens;
  for (int64_t b = table.window_first;
       b < table.window_first + table.window_blocks(); ++b) {
    if ((b + 1) * tokens_per_block > cutoff) break;
    if (Compressible(rules, table, b)) CompressBlock(rules, table, b);
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
    // Compression runs without layer groups: table i is layer i's.
    for (size_t layer = 0; layer < sequence.tables.size(); ++layer) {
      BlockTable& table = sequence.tables[layer];
      if (&table == skip) continue;
      const LayerRules& layer_rules = rules[layer];
      for (int64_t b = table.window_first;
           b < table.window_first + table.window_blocks(); ++b) {
        if (static_cast<int64_t>(out.size()) >= want) return out;
        if (!Compressible(layer_rules, table, b)) continue;
        const auto [first, count] = VisibleSlots(layer_rules, table, b);
        const auto [k_src, v_src] = io->Source(table.Block(b));
        if (quant->Representable(k_src, v_src, first, count)) {
          out.push_back({&table, layer, b});
        }
      }
    }
  }
  return out;
}

void KVCache::Impl::CompressAll(absl::Span<const Candidate> candidates) {
  for (const Candidate& c : candidates) {
    const bool done = CompressBlock(rules[c.layer], *c.table, c.logical);
    KVPAGE_DCHECK(done);
    (void)done;
  }
}

}  // namespace kvpage
