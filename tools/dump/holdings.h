// tools/dump/holdings.h — the one walk every kvpage-dump verb starts from:
// who holds each hot block and each quantized cell (table entries of every
// sequence and layer, prefix-cache entries), and the state that follows
// from it. Also the JSON of the parts of a snapshot several verbs show
// (config, statistics).
//
// Accepts any snapshot ParseSnapshot returns: ids out of range are counted
// as dangling, never followed. Internal to kvpage-dump.
#ifndef KVPAGE_TOOLS_DUMP_HOLDINGS_H_
#define KVPAGE_TOOLS_DUMP_HOLDINGS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kvpage/snapshot.h"
#include "tools/dump/dump.h"

namespace kvpage::dump {

// One holder of a block or slot: a table entry or a prefix-cache entry.
struct Holder {
  bool prefix = false;
  SeqId seq = 0;
  int layer = 0;        // a prefix entry's table: a group's with group_layers
  int64_t logical = 0;  // table entries (-1: a ring's spare)
  uint64_t hash = 0;    // prefix entries
  bool group = false;   // a prefix entry's `layer` is a group
};

// "seq 3 layer 1 block 2", "seq 3 layer 1 spare", "prefix 00ab.. layer 0"
// ("prefix 00ab.. group 0" with layer groups).
[[nodiscard]] std::string HolderName(const Holder& holder);

// Invariant: hot.size() == snap.hot.ref_counts.size() and the per-slot
// vectors have snap.quant.ref_counts.size() entries.
struct Holdings {
  std::vector<std::vector<Holder>> hot, quant;
  std::vector<uint8_t> quant_v_part;   // slot is the V part of an int8 block
  std::vector<int32_t> hot_visible;    // most visible slots any table shows
                                       // (with layer groups, summed over
                                       // the group's layers: its slots)
  std::vector<int32_t> quant_visible;  // the same per block's first slot;
                                       // -1 where no block starts
  int64_t dangling = 0;                // entries whose id is out of range
};

// The walk: O(blocks + table entries + prefix entries).
[[nodiscard]] Holdings Walk(const Snapshot& snap);

// The reference count of `id`, 0 past the pool's end.
[[nodiscard]] uint32_t RefCount(const SnapshotPool& pool, size_t id);

// free: no reference; cached: only the prefix cache holds it (evictable);
// shared: tables of more than one sequence hold it; used: one sequence.
[[nodiscard]] std::string HotState(const Snapshot& snap,
                                   const Holdings& holdings, size_t id);
// free, int8, int4, int8_v (the V cell of an int8 block), or used.
[[nodiscard]] std::string QuantState(const Snapshot& snap,
                                     const Holdings& holdings, size_t id);

// The policy of `layer`, as the cache resolves it.
[[nodiscard]] LayerPolicy PolicyOf(const CacheConfig& config, int layer);

// Every CacheStats field by its name (ForEachStatsField), in file order.
[[nodiscard]] Json StatsJson(const CacheStats& stats);
[[nodiscard]] Json ConfigJson(const CacheConfig& config);

}  // namespace kvpage::dump

#endif  // KVPAGE_TOOLS_DUMP_HOLDINGS_H_
