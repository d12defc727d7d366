// cache/block_table.h — which blocks hold which positions, for one sequence
// and one layer.
//
// Entry i of a table covers slots [begin, end) of block `id`; slot s holds
// position `position0 + s`. Visible tokens are the entries' slots in order.
//
// Invariants (checked by KVCache::Validate()):
//   0 <= begin < end <= block_tokens           (no empty entry)
//   positions increase strictly along the table
//   with the error policy the layer holds exactly positions [0, length):
//     entries[i].position0 == i * block_tokens, begin == 0,
//     entries.size() == ceil(length / block_tokens),
//     every entry but the last is full, the last ends at length
//   max_length >= length
//
// Thread safety: thread-compatible, owned by its KVCache.
#ifndef KVPAGE_CACHE_BLOCK_TABLE_H_
#define KVPAGE_CACHE_BLOCK_TABLE_H_

#include <cstdint>
#include <vector>

#include "allocator/block_storage.h"

namespace kvpage::internal {

struct TableEntry {
  BlockId id = kNoBlock;
  uint16_t begin = 0;     // first valid slot
  uint16_t end = 0;       // one past the last valid slot
  int64_t position0 = 0;  // position of slot 0

  int tokens() const { return end - begin; }
};

struct BlockTable {
  std::vector<TableEntry> entries;
  int64_t length = 0;      // seq_len of the last update
  int64_t max_length = 0;  // the largest length this layer has had
  int64_t evicted = 0;     // tokens evicted by the overflow policy
};

}  // namespace kvpage::internal

#endif  // KVPAGE_CACHE_BLOCK_TABLE_H_
