// cache/sequence.h — one sequence of a KVCache: a block table per layer
// (per group of layers with CacheConfig::group_layers) and the token ids the
// prefix cache knows it by.
//
// Invariant: block_hashes[b] is the chain hash (PrefixBlockHash, salted) of
// the token ids of full block b, for b < token_ids.size() / block_tokens.
#ifndef KVPAGE_CACHE_SEQUENCE_H_
#define KVPAGE_CACHE_SEQUENCE_H_

#include <cstdint>
#include <limits>
#include <vector>

#include "cache/block_table.h"

namespace kvpage::internal {

struct Sequence {
  std::vector<BlockTable> tables;  // per group (LayerGroups)
  // Per layer: what each layer of a split table holds (BlockTable::split);
  // meaningless for the layers of a table that is not split.
  std::vector<LayerState> layer_states;
  uint64_t salt = 0;                   // prefix-cache salt
  std::vector<int32_t> token_ids;      // AppendTokens / MatchPrefix
  std::vector<uint64_t> block_hashes;  // chain hash of each full block
  uint64_t batch_mark = 0;  // == Impl::batch_serial: in the batch reserving
  // With a tier and write_through: the full blocks below this were offered
  // to it (or came from the prefix cache).
  int64_t tier_offered = 0;
};

// Hashes the full blocks of `sequence.token_ids` not hashed yet, until
// `max_blocks` are. O(tokens hashed). (cache/prefix.cc)
void ExtendBlockHashes(
    Sequence& sequence, int64_t block_tokens,
    int64_t max_blocks = std::numeric_limits<int64_t>::max());

}  // namespace kvpage::internal

#endif  // KVPAGE_CACHE_SEQUENCE_H_
