// cache/prefix_cache.h — the prefix cache: for each chain hash of a full
// block of token ids, the hot block of each table (layer, or group of
// layers) that holds those tokens, and the order in which idle entries are
// evicted. Entries and their blocks live in arrays that grow and are never
// freed; the index is reserved for the pool's capacity at the first
// publication, so publishing allocates nothing in the steady state.
//
// The cache holds one reference on each block it lists. It never touches
// the pool's counts itself: Publish says when its caller must add the
// cache's reference, EvictOldest hands back the blocks whose reference the
// caller must drop, and the caller reports each block whose last reader
// besides the cache leaves (LayerLeft) or whose first one arrives
// (LayerJoined). So the prefix cache sits below the code that holds blocks.
//
// Invariants (Validate() checks them against the pool's counts):
//   an entry's layers_present == its blocks that are not kNoBlock
//   layers_in_use == present blocks some table also holds (ref_count > 1)
//   an entry is on the LRU list (idle, evictable) iff layers_in_use == 0
//   entry_of(b) == e  iff  entry e lists block b
//   evictable_blocks() == layers_present summed over the list
//
// Thread safety: thread-compatible, owned by its KVCache.
#ifndef KVPAGE_CACHE_PREFIX_CACHE_H_
#define KVPAGE_CACHE_PREFIX_CACHE_H_

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "allocator/block_pool.h"

namespace kvpage::internal {

class PrefixCache {
 public:
  // Blocks whose cache reference an eviction gives back.
  using Evicted = absl::InlinedVector<BlockId, 8>;

  // With `prefault` (CacheConfig::prefault) the index and the entries'
  // arrays are sized for a full pool now (what the first publication does
  // otherwise) and their memory touched, so that no publication pays a
  // first-touch page fault for them. O(num_blocks).
  PrefixCache(int num_layers, int64_t num_blocks, bool prefault = false);

  // Lists block `id` (held by the publishing table, so in use) for `layer`
  // under `hash`. False when nothing changed: the block is already listed
  // (under this hash or another: a fork told other ids than its parent) or
  // the entry has a block for that layer. True: the caller adds the cache's
  // reference on `id`. O(1).
  // `known_entry`, when given, is the entry of `hash` once known (-1
  // before): a caller publishing one block of every table looks it up once.
  [[nodiscard]] bool Publish(uint64_t hash, size_t layer, BlockId id,
                             int32_t* known_entry = nullptr);

  // The entry listed under `hash` when it has a block in every layer, else
  // -1. O(1).
  int32_t FindComplete(uint64_t hash) const;
  BlockId block(int32_t entry, size_t layer) const {
    return blocks_[static_cast<size_t>(entry) * tables_ + layer];
  }

  // A listed block's only reader besides the cache left (ref_count 2 -> 1)
  // or a first one arrived (1 -> 2). No-ops for a block not listed. O(1).
  void LayerLeft(BlockId id) {
    if (const int32_t e = entry_of_[id]; e >= 0) {
      if (--entries_[static_cast<size_t>(e)].layers_in_use == 0) LruPush(e);
    }
  }
  void LayerJoined(BlockId id) {
    if (const int32_t e = entry_of_[id]; e >= 0) {
      Entry& entry = entries_[static_cast<size_t>(e)];
      if (entry.layers_in_use++ == 0 && entry.in_lru) LruRemove(e);
    }
  }

  // The blocks of `entry` that evicting could free now: all it lists when
  // it is idle, else none. O(1).
  int64_t idle_blocks(int32_t entry) const {
    const Entry& e = entries_[static_cast<size_t>(entry)];
    return e.in_lru ? e.layers_present : 0;
  }

  bool has_idle() const { return lru_head_ >= 0; }
  // The entry EvictOldest removes next (has_idle() must hold), and an
  // entry's hash.
  int32_t oldest() const { return lru_head_; }
  uint64_t hash_of(int32_t entry) const {
    return entries_[static_cast<size_t>(entry)].hash;
  }
  // Whether the entry's block was offered to the second tier (written
  // through or back) or came from it: it is not offered again.
  bool in_tier(int32_t entry) const {
    return entries_[static_cast<size_t>(entry)].in_tier;
  }
  void set_in_tier(int32_t entry) {
    entries_[static_cast<size_t>(entry)].in_tier = true;
  }
  // Every entry not in the tier (another is attached). O(entries).
  void ClearInTier() {
    for (Entry& e : entries_) e.in_tier = false;
  }
  // Whether `hash` is listed, complete or not. O(1).
  bool Lists(uint64_t hash) const { return by_hash_.contains(hash); }
  // Removes the least recently used idle entry; returns its blocks, whose
  // cache reference (their last) the caller drops. O(layers).
  [[nodiscard]] Evicted EvictOldest();

  // Blocks of idle entries: what evictions could free.
  int64_t evictable_blocks() const { return evictable_blocks_; }
  int64_t entries() const { return static_cast<int64_t>(by_hash_.size()); }

  // Calls fn(hash, lru_rank, blocks) for each entry; lru_rank is the
  // entry's place in the eviction order (0 first), -1 when in use.
  template <typename Fn>
  void ForEachEntry(Fn&& fn) const;

  // The blocks of `entry`, one per table (kNoBlock where absent).
  absl::Span<const BlockId> blocks(int32_t entry) const {
    return absl::MakeConstSpan(blocks_).subspan(
        static_cast<size_t>(entry) * tables_, tables_);
  }

  // What a snapshot does not show: the LRU list's links and count, each
  // listed block pointing back at its entry, the entries' counts against
  // `pool`'s reference counts. Internal naming the entry. O(entries *
  // layers).
  [[nodiscard]] absl::Status Validate(const BlockPool& pool) const;

 private:
  struct Entry {
    uint64_t hash = 0;
    int layers_present = 0;
    int layers_in_use = 0;
    int32_t lru_prev = -1, lru_next = -1;
    bool in_lru = false;
    bool in_tier = false;  // see in_tier()
  };
  // An allocator that, with `touch`, writes what it hands out: with
  // prefault the index's array is resident from its allocation, not faulted
  // in slot by slot by publications that land in fresh pages; without, the
  // first publication makes none of it resident.
  template <typename T>
  struct TouchingAllocator : std::allocator<T> {
    bool touch = false;
    using propagate_on_container_copy_assignment = std::true_type;
    using propagate_on_container_move_assignment = std::true_type;
    using propagate_on_container_swap = std::true_type;
    TouchingAllocator() = default;
    explicit TouchingAllocator(bool t) : touch(t) {}
    template <typename U>
    TouchingAllocator(const TouchingAllocator<U>& o)  // NOLINT: rebinding
        : touch(o.touch) {}
    T* allocate(size_t n) {
      T* p = std::allocator<T>::allocate(n);
      if (touch) std::memset(static_cast<void*>(p), 0, n * sizeof(T));
      return p;
    }
    template <typename U>
    bool operator==(const TouchingAllocator<U>&) const {
      return true;  // either frees what the other allocated
    }
  };
  using Index = absl::flat_hash_map<
      uint64_t, int32_t, absl::Hash<uint64_t>, std::equal_to<uint64_t>,
      TouchingAllocator<std::pair<const uint64_t, int32_t>>>;

  // Sizes the index and the arrays for a full pool's entries, once.
  void Reserve();
  // Reserve, and the arrays' pages written.
  void Prefault();

  // The entry listed under `hash`, a new one (no blocks) when none is.
  int32_t EntryOf(uint64_t hash);
  void LruPush(int32_t e);  // as most recently used
  void LruRemove(int32_t e);
  [[nodiscard]] absl::Status ValidateList() const;

  BlockId* MutableBlocks(int32_t e) {
    return blocks_.data() + static_cast<size_t>(e) * tables_;
  }

  int num_layers_;
  size_t tables_;  // num_layers_
  int64_t num_blocks_;
  std::vector<Entry> entries_;
  std::vector<BlockId> blocks_;  // entry e's at [e * tables_, + tables_)
  std::vector<int32_t> free_entries_;
  Index by_hash_;
  bool reserved_ = false;
  std::vector<int32_t> entry_of_;          // per hot block: its entry, or -1
  int32_t lru_head_ = -1, lru_tail_ = -1;  // head: least recently used
  int64_t evictable_blocks_ = 0;
};

template <typename Fn>
void PrefixCache::ForEachEntry(Fn&& fn) const {
  absl::flat_hash_map<int32_t, int64_t> rank;
  int64_t next_rank = 0;
  for (int32_t e = lru_head_; e >= 0;
       e = entries_[static_cast<size_t>(e)].lru_next) {
    rank[e] = next_rank++;
  }
  for (const auto& [hash, e] : by_hash_) {
    auto it = rank.find(e);
    fn(hash, it == rank.end() ? int64_t{-1} : it->second, blocks(e));
  }
}

}  // namespace kvpage::internal

#endif  // KVPAGE_CACHE_PREFIX_CACHE_H_
