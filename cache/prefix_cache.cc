#include "cache/prefix_cache.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "allocator/check.h"

namespace kvpage::internal {

PrefixCache::PrefixCache(int num_layers, int64_t num_blocks, bool prefault)
    : num_layers_(num_layers),
      tables_(static_cast<size_t>(num_layers)),
      num_blocks_(num_blocks),
      by_hash_(0, absl::Hash<uint64_t>(), std::equal_to<uint64_t>(),
               Index::allocator_type(prefault)),
      entry_of_(static_cast<size_t>(num_blocks), -1) {
  if (prefault) Prefault();
}

void PrefixCache::Reserve() {
  if (reserved_) return;
  reserved_ = true;
  // A full cache lists at most num_blocks / tables entries with a block in
  // every table (each block is one entry's). The index and the entries'
  // arrays are sized for that many once, so that nothing rehashes or moves
  // while the cache fills; entries published in only some tables may grow
  // them past it.
  const size_t entries = static_cast<size_t>(num_blocks_) / tables_ + 1;
  by_hash_.reserve(entries);
  entries_.reserve(entries);
  blocks_.reserve(entries * tables_);
}

void PrefixCache::Prefault() {
  Reserve();  // the index's allocator writes what it allocates
  // The arrays' pages, written once: resize writes them, clear keeps them.
  if (entries_.empty()) {
    entries_.resize(entries_.capacity());
    entries_.clear();
    blocks_.resize(blocks_.capacity(), kNoBlock);
    blocks_.clear();
  }
}

int32_t PrefixCache::EntryOf(uint64_t hash) {
  Reserve();
  // One lookup whether the hash is listed or not.
  auto [it, inserted] = by_hash_.try_emplace(hash, 0);
  if (!inserted) return it->second;
  int32_t e;
  if (free_entries_.empty()) {
    e = static_cast<int32_t>(entries_.size());
    entries_.emplace_back();
    blocks_.insert(blocks_.end(), tables_, kNoBlock);
  } else {
    e = free_entries_.back();
    free_entries_.pop_back();
    std::fill_n(MutableBlocks(e), tables_, kNoBlock);
  }
  entries_[static_cast<size_t>(e)].hash = hash;
  entries_[static_cast<size_t>(e)].in_tier = false;
  it->second = e;
  return e;
}

bool PrefixCache::Publish(uint64_t hash, size_t layer, BlockId id,
                          int32_t* known_entry) {
  if (entry_of_[id] >= 0) return false;
  int32_t e = known_entry != nullptr ? *known_entry : -1;
  if (e < 0) {
    e = EntryOf(hash);
    if (known_entry != nullptr) *known_entry = e;
  }
  if (block(e, layer) != kNoBlock) return false;
  Entry& entry = entries_[static_cast<size_t>(e)];
  // Idle in its other layers: no longer. Off the list before the count
  // changes, so that the list's block count loses what it had added.
  if (entry.in_lru) LruRemove(e);
  MutableBlocks(e)[layer] = id;
  ++entry.layers_present;
  ++entry.layers_in_use;  // the publishing table holds it
  entry_of_[id] = e;
  return true;
}

int32_t PrefixCache::FindComplete(uint64_t hash) const {
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end() ||
      entries_[static_cast<size_t>(it->second)].layers_present != num_layers_) {
    return -1;
  }
  return it->second;
}

PrefixCache::Evicted PrefixCache::EvictOldest() {
  const int32_t e = lru_head_;
  KVPAGE_DCHECK(e >= 0);
  LruRemove(e);
  Entry& entry = entries_[static_cast<size_t>(e)];
  Evicted evicted;
  for (BlockId id : blocks(e)) {
    if (id == kNoBlock) continue;
    entry_of_[id] = -1;
    evicted.push_back(id);
  }
  by_hash_.erase(entry.hash);
  entry = Entry{};
  free_entries_.push_back(e);
  return evicted;
}

void PrefixCache::LruPush(int32_t e) {
  Entry& entry = entries_[static_cast<size_t>(e)];
  entry.lru_prev = lru_tail_;
  entry.lru_next = -1;
  if (lru_tail_ >= 0) {
    entries_[static_cast<size_t>(lru_tail_)].lru_next = e;
  } else {
    lru_head_ = e;
  }
  lru_tail_ = e;
  entry.in_lru = true;
  evictable_blocks_ += entry.layers_present;
}

void PrefixCache::LruRemove(int32_t e) {
  Entry& entry = entries_[static_cast<size_t>(e)];
  if (entry.lru_prev >= 0) {
    entries_[static_cast<size_t>(entry.lru_prev)].lru_next = entry.lru_next;
  } else {
    lru_head_ = entry.lru_next;
  }
  if (entry.lru_next >= 0) {
    entries_[static_cast<size_t>(entry.lru_next)].lru_prev = entry.lru_prev;
  } else {
    lru_tail_ = entry.lru_prev;
  }
  entry.lru_prev = entry.lru_next = -1;
  entry.in_lru = false;
  evictable_blocks_ -= entry.layers_present;
}

absl::Status PrefixCache::ValidateList() const {
  int64_t evictable = 0;
  int64_t on_list = 0;
  for (int32_t e = lru_head_, prev = -1; e >= 0;
       prev = e, e = entries_[static_cast<size_t>(e)].lru_next) {
    const Entry& entry = entries_[static_cast<size_t>(e)];
    if (!entry.in_lru || entry.lru_prev != prev ||
        ++on_list > static_cast<int64_t>(entries_.size())) {
      return absl::InternalError(absl::StrFormat(
          "prefix cache: the LRU list is broken at entry %d", e));
    }
    evictable += entry.layers_present;
  }
  if (evictable != evictable_blocks_) {
    return absl::InternalError(
        absl::StrFormat("prefix cache: %d blocks on the LRU list, counted %d",
                        evictable, evictable_blocks_));
  }
  return absl::OkStatus();
}

absl::Status PrefixCache::Validate(const BlockPool& pool) const {
  if (absl::Status s = ValidateList(); !s.ok()) return s;
  for (const auto& [hash, e] : by_hash_) {
    const Entry& entry = entries_[static_cast<size_t>(e)];
    int present = 0, in_use = 0;
    for (BlockId id : blocks(e)) {
      if (id == kNoBlock) continue;
      if (id >= pool.capacity() || entry_of_[id] != e) {
        return absl::InternalError(absl::StrFormat(
            "prefix cache: entry %d (hash %016x) holds block %d, which does "
            "not point back",
            e, hash, id));
      }
      ++present;
      in_use += pool.ref_count(id) > 1;
    }
    if (entry.hash != hash || present != entry.layers_present ||
        in_use != entry.layers_in_use ||
        entry.in_lru != (entry.layers_in_use == 0)) {
      return absl::InternalError(absl::StrFormat(
          "prefix cache: entry %d (hash %016x): %d layers present, %d in use, "
          "%s the LRU list; counted %d, %d",
          e, hash, present, in_use, entry.in_lru ? "on" : "off",
          entry.layers_present, entry.layers_in_use));
    }
  }
  return absl::OkStatus();
}

}  // namespace kvpage::internal
