// cache/stats_fields.h — every field of CacheStats, in one list, for code that
// walks them by name: the snapshot encoder and decoder (the order is the file
// format's) and kvpage-dump's renderers (the names are its JSON keys).
//
// Usage:
//   #define PRINT(type, name) Print(#name, stats.name);
//   KVPAGE_CACHE_STATS_FIELDS(PRINT)
//   #undef PRINT
#ifndef KVPAGE_CACHE_STATS_FIELDS_H_
#define KVPAGE_CACHE_STATS_FIELDS_H_

// X(type, name) for each field; type is int64_t or double. Append only: the
// snapshot format (version 1) stores them in this order.
#define KVPAGE_CACHE_STATS_FIELDS(X)    \
  X(int64_t, blocks_total)              \
  X(int64_t, blocks_used)               \
  X(int64_t, blocks_cached)             \
  X(int64_t, blocks_free)               \
  X(double, utilization)                \
  X(int64_t, block_bytes)               \
  X(int64_t, memory_usage_bytes)        \
  X(int64_t, arena_bytes)               \
  X(int64_t, sequences)                 \
  X(int64_t, tokens_stored)             \
  X(int64_t, slots_allocated)           \
  X(int64_t, hits)                      \
  X(int64_t, misses)                    \
  X(int64_t, prefix_entries)            \
  X(int64_t, quant_slots_total)         \
  X(int64_t, quant_slots_used)          \
  X(int64_t, quant_slot_bytes)          \
  X(int64_t, quant_blocks_int8)         \
  X(int64_t, quant_blocks_int4)         \
  X(double, bytes_per_token_hot)        \
  X(double, bytes_per_token_cold)       \
  X(int64_t, bytes_saved)               \
  X(int64_t, compressions_applied)      \
  X(int64_t, compressions_skipped)      \
  X(int64_t, decompressions)            \
  X(double, max_quant_error)            \
  X(double, mean_quant_error)           \
  X(int64_t, evictions)                 \
  X(int64_t, blocks_released_by_policy) \
  X(int64_t, blocks_reused_by_ring)     \
  X(int64_t, blocks_allocated)          \
  X(int64_t, blocks_released)           \
  X(int64_t, bytes_written)             \
  X(int64_t, bytes_copied)

#endif  // KVPAGE_CACHE_STATS_FIELDS_H_
