// Statistics: the cache's counters and its parts' counts, cache-wide and
// per sequence.
#include <algorithm>

#include "absl/strings/str_format.h"
#include "cache/kv_cache_impl.h"

namespace kvpage {

using internal::BlockRef;
using internal::BlockTable;
using internal::IsQuant;
using internal::RefId;

namespace {

// The quantized pool's share of the statistics.
void AddCompressionStats(const internal::QuantStore& quant, int64_t block_bytes,
                         int64_t block_tokens, CacheStats& s) {
  s.quant_cells_total = quant.pool().capacity();
  s.quant_cells_used = quant.pool().used_blocks();
  s.quant_cell_bytes = quant.cell_bytes();
  s.quant_blocks_int8 = quant.int8_blocks();
  s.quant_blocks_int4 = quant.int4_blocks();
  const int64_t quant_bytes = s.quant_cells_used * quant.cell_bytes();
  const int64_t quant_cells = s.quant_blocks_int8 + s.quant_blocks_int4;
  s.memory_usage_bytes += quant_bytes;
  s.bytes_saved = quant_cells * block_bytes - quant_bytes;
  if (quant_cells > 0) {
    s.bytes_per_token_cold = static_cast<double>(quant_bytes) /
                             static_cast<double>(quant_cells * block_tokens);
  }
  s.compressions_applied = quant.compressions_applied();
  s.compressions_skipped = quant.compressions_skipped();
  s.decompressions = quant.decompressions();
  s.max_quant_error = quant.max_error();
  s.mean_quant_error = quant.mean_error();
}

}  // namespace

CacheStats KVCache::Stats() const {
  const Impl& impl = *impl_;
  const CacheCounters& c = impl.counters;
  // With layer groups a block id takes a slot of every layer of a group.
  const int64_t block_bytes = impl.block_bytes() * impl.groups.width;
  CacheStats s;
  s.blocks_total = impl.pool->capacity();
  const int64_t held = impl.pool->used_blocks();
  s.blocks_cached = impl.prefix->evictable_blocks();
  s.blocks_used = held - s.blocks_cached;
  s.blocks_free = s.blocks_total - held;
  s.utilization =
      static_cast<double>(s.blocks_used) / static_cast<double>(s.blocks_total);
  s.block_bytes = block_bytes;
  s.memory_usage_bytes = held * block_bytes;
  s.prefix_entries = impl.prefix->entries();
  s.bytes_per_token_hot = static_cast<double>(block_bytes) /
                          static_cast<double>(impl.block_tokens());
  if (impl.quant != nullptr) {
    AddCompressionStats(*impl.quant, block_bytes, impl.block_tokens(), s);
  }
  s.arena_bytes = s.blocks_total * block_bytes;
  s.sequences = static_cast<int64_t>(impl.sequences.size());
  s.tokens_stored = c.tokens_stored;
  s.slots_allocated = s.blocks_used * impl.block_tokens() * impl.groups.width;
  s.hits = c.hits;
  s.misses = c.misses;
  s.evictions = c.evictions;
  s.blocks_released_by_policy = c.blocks_released_by_policy;
  s.blocks_reused_by_ring = c.blocks_reused_by_ring;
  s.blocks_allocated = c.blocks_allocated;
  s.blocks_released = c.blocks_released;
  s.bytes_written = c.bytes_written;
  s.bytes_copied = c.bytes_copied;
  s.prefix_queries = c.prefix_queries;
  s.prefix_blocks_queried = c.prefix_blocks_queried;
  s.prefix_tokens_queried = c.prefix_tokens_queried;
  s.prefix_tokens_matched = c.prefix_tokens_matched;
  return s;
}

absl::StatusOr<SequenceStats> KVCache::Stats(SeqId seq) const {
  const Impl& impl = *impl_;
  auto it = impl.sequences.find(seq);
  if (it == impl.sequences.end()) {
    return absl::NotFoundError(
        absl::StrFormat("Stats(seq %d): no such sequence", seq));
  }
  SequenceStats s;
  int64_t compressed = 0, compressed_bytes = 0;
  const internal::Sequence& sequence = it->second;
  for (int layer = 0; layer < impl.config.num_layers; ++layer) {
    const internal::LayerState state = impl.LayerOf(sequence, layer);
    s.current_length = std::max(s.current_length, state.length);
    s.max_length = std::max(s.max_length, state.max_length);
    s.tokens_stored +=
        internal::VisibleTokens(impl.rules[static_cast<size_t>(layer)],
                                state.length, state.window_start);
    s.evictions += state.evicted;
  }
  for (const BlockTable& table : sequence.tables) {
    s.blocks += table.held_blocks();
    for (int64_t b = table.window_first;
         b < table.window_first + table.window_blocks(); ++b) {
      const BlockRef ref = table.Block(b);
      if (!IsQuant(ref)) continue;
      ++compressed;
      compressed_bytes +=
          impl.quant->cell_bytes() * impl.quant->cells(RefId(ref));
    }
  }
  // A block id holds a token slot per storage slot (layers, with groups).
  const int64_t slots = s.blocks * impl.block_tokens() * impl.groups.width;
  s.utilization = slots == 0 ? 0.0
                             : static_cast<double>(s.tokens_stored) /
                                   static_cast<double>(slots);
  s.memory_usage_bytes =
      (s.blocks - compressed) * impl.block_bytes() * impl.groups.width +
      compressed_bytes;
  return s;
}

}  // namespace kvpage
