// kvpage/tier.h — a second tier for the prefix cache: where the blocks it
// evicts go instead of being lost (write-back), optionally every block it
// publishes (write-through), and where MatchPrefix looks for the blocks
// that follow the ones it holds. kvpage's own is the Redis tier
// (remote/); an engine may give its own (host memory, a disk).
//
// A block is named by its chain hash (kvpage/prefix.h) and holds, per table
// (a layer, or a group of layers with CacheConfig::group_layers), that
// table's bytes: its layer slots side by side, BlockBytes(config) each, in
// the order of the group's layers (TierShape).
//
// Usage:
//   MyTier tier;                                  // implements BlockTier
//   absl::Status s = cache->AttachTier(&tier, {.write_through = false});
//   ...                                           // MatchPrefix, evictions
//   s = cache->AttachTier(nullptr, {});           // detach before `tier` goes
//
// A cache offers a block to its tier until the tier takes it (Store returns
// true): a block written through is not offered again when evicted, and
// one the cache fetched from the tier is never offered back. Attaching
// another tier starts over: every block may be offered to it.
//
// Thread safety: the cache calls its tier from the thread that calls the
// cache (Update, Reserve, MatchPrefix...), never concurrently for one cache.
#ifndef KVPAGE_TIER_H_
#define KVPAGE_TIER_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kvpage/config.h"

namespace kvpage {

// What a cache's blocks are made of, told to a tier when it is attached:
// per table, the layers it holds (ascending) and its bytes per block.
struct TierShape {
  CacheConfig config;
  std::vector<std::vector<int>> table_layers;
  std::vector<int64_t> table_bytes;  // layers * BlockBytes(config)
};

class BlockTier {
 public:
  virtual ~BlockTier() = default;

  // The cache that attaches this tier, and its shape. An error refuses the
  // attachment (AttachTier returns it).
  [[nodiscard]] virtual absl::Status Attach(const TierShape& shape) = 0;

  // A complete block leaving the prefix cache (`evicted`) or published into
  // it (write-through): `tables[t]` is table t's bytes, valid during the
  // call only (the tier copies what it keeps). Must not block on I/O: a
  // tier that cannot keep up drops the block (and counts it) and returns
  // false. True: the tier took it; the cache offers it no more (below).
  virtual bool Store(uint64_t hash,
                     absl::Span<const absl::Span<const std::byte>> tables,
                     bool evicted) = 0;

  // The blocks named by `hashes` (a chain, in order) as far as the tier has
  // them: returns n, the blocks found from the first on, and fills
  // `blocks[i][t]` with table t's bytes of block i < n (exactly
  // table_bytes[t] each; anything else is a miss). Bounded by the tier's
  // own deadline; a failure is a miss (n stops there).
  virtual int64_t Fetch(absl::Span<const uint64_t> hashes,
                        std::vector<std::vector<std::string>>& blocks) = 0;
};

// How a cache uses its tier.
struct TierOptions {
  // Offer every block the prefix cache publishes, not only the ones it
  // evicts: once every table has published and written it (in engine mode
  // a reservation's blocks are offered at the sequence's next update or
  // reservation, when the kernel has written them).
  bool write_through = false;
  // The most blocks one Fetch asks for (MatchPrefix asks in batches of
  // this many until the tier misses).
  int64_t fetch_batch = 32;
};

}  // namespace kvpage

#endif  // KVPAGE_TIER_H_
