// kvpage/stats_fields.h — every field of CacheStats by name, in one list, for
// code that walks the statistics without naming each field: a metrics
// exporter, the snapshot encoder and decoder (the list's order is the file
// format's), kvpage-dump (the names are its JSON keys).
//
// Usage (`value` is an int64_t or a double):
//   kvpage::ForEachStatsField(cache.Stats(),
//                             [&](const char* name, auto value) {
//                               exporter.Gauge(name, value);
//                             });
#ifndef KVPAGE_STATS_FIELDS_H_
#define KVPAGE_STATS_FIELDS_H_

#include <type_traits>

#include "kvpage/kv_cache.h"

namespace kvpage {

// Calls visit(name, field) for each field of `stats` in declaration order:
// `name` is the field's name as CacheStats spells it (a string literal),
// `field` the member itself (int64_t or double; const when `stats` is, so
// that a visitor may also assign). Append only: snapshot files store the
// fields in this order (versions 1 and 2 the first
// kCacheStatsFieldsVersion2 of them). O(fields); allocates nothing.
template <typename Stats, typename Visit>
requires std::is_same_v<std::remove_cvref_t<Stats>, CacheStats>
constexpr void ForEachStatsField(Stats&& stats, Visit&& visit) {
  visit("blocks_total", stats.blocks_total);
  visit("blocks_used", stats.blocks_used);
  visit("blocks_cached", stats.blocks_cached);
  visit("blocks_free", stats.blocks_free);
  visit("utilization", stats.utilization);
  visit("block_bytes", stats.block_bytes);
  visit("memory_usage_bytes", stats.memory_usage_bytes);
  visit("arena_bytes", stats.arena_bytes);
  visit("sequences", stats.sequences);
  visit("tokens_stored", stats.tokens_stored);
  visit("slots_allocated", stats.slots_allocated);
  visit("hits", stats.hits);
  visit("misses", stats.misses);
  visit("prefix_entries", stats.prefix_entries);
  visit("quant_cells_total", stats.quant_cells_total);
  visit("quant_cells_used", stats.quant_cells_used);
  visit("quant_cell_bytes", stats.quant_cell_bytes);
  visit("quant_blocks_int8", stats.quant_blocks_int8);
  visit("quant_blocks_int4", stats.quant_blocks_int4);
  visit("bytes_per_token_hot", stats.bytes_per_token_hot);
  visit("bytes_per_token_cold", stats.bytes_per_token_cold);
  visit("bytes_saved", stats.bytes_saved);
  visit("compressions_applied", stats.compressions_applied);
  visit("compressions_skipped", stats.compressions_skipped);
  visit("decompressions", stats.decompressions);
  visit("max_quant_error", stats.max_quant_error);
  visit("mean_quant_error", stats.mean_quant_error);
  visit("evictions", stats.evictions);
  visit("blocks_released_by_policy", stats.blocks_released_by_policy);
  visit("blocks_reused_by_ring", stats.blocks_reused_by_ring);
  visit("blocks_allocated", stats.blocks_allocated);
  visit("blocks_released", stats.blocks_released);
  visit("bytes_written", stats.bytes_written);
  visit("bytes_copied", stats.bytes_copied);
  visit("prefix_queries", stats.prefix_queries);
  visit("prefix_blocks_queried", stats.prefix_blocks_queried);
  visit("prefix_tokens_queried", stats.prefix_tokens_queried);
  visit("prefix_tokens_matched", stats.prefix_tokens_matched);
}

// The fields snapshot format versions 1 and 2 store.
inline constexpr int kCacheStatsFieldsVersion2 = 34;

// How many fields ForEachStatsField visits.
inline constexpr int kCacheStatsFieldCount = [] {
  int count = 0;
  ForEachStatsField(CacheStats{}, [&count](const char*, auto) { ++count; });
  return count;
}();

// Every field is 8 bytes: a field added to CacheStats but not to the list
// above fails here.
static_assert(sizeof(CacheStats) == 8 * kCacheStatsFieldCount,
              "a CacheStats field is missing from ForEachStatsField");

}  // namespace kvpage

#endif  // KVPAGE_STATS_FIELDS_H_
