// allocator/block_pool.h — a fixed pool of equal-size blocks: ids, reference
// counts and an index-based free list, over a BlockStorage that holds the
// bytes.
//
// Usage:
//   auto arena = HostArena::Create(1024, block_bytes, {});
//   auto pool = BlockPool::Create(*std::move(arena));
//   BlockPool::LocalCache local(**pool);      // one per thread or owner
//   BlockId id = local.AllocateOne();         // kNoBlock when exhausted
//   local.Release(id);
//
// States of a block, and the transitions between them:
//   free    on the shared free list, ref_count 0
//   cached  in exactly one LocalCache, ref_count 0 (free, held near a thread)
//   used    ref_count >= 1
//   Allocate: free -> used (ref 1)         Retain: ref + 1
//   Release: ref - 1; at 0 used -> free    refill/flush: free <-> cached
//   LocalCache::Allocate: cached -> used   LocalCache::Release: used -> cached
// Invariants (checked by Validate()):
//   free_blocks() + cached + used == capacity()
//   ref_count(b) == 0  <=>  b is free or cached
//   no id appears twice on the free list and in the caches together
//
// Thread safety: BlockPool is thread-safe: Allocate, Retain, Release and the
// counters may be called from any thread at once (one mutex around the free
// list, atomic reference counts). A LocalCache is thread-compatible: one
// thread (or one externally synchronized owner) uses it; many LocalCaches
// may work on one pool concurrently. used_blocks() is exact when nothing
// else runs at the same time (each cache publishes its size with a relaxed
// store: no data race, a figure that may lag). Validate() reads the caches'
// contents: call it only when no other pool or LocalCache call runs.
//
// Cost: Allocate/Release take the mutex once per call, O(n) for n ids.
// LocalCache::AllocateOne/Release are O(1) without a lock or an atomic
// read-modify-write; the cache refills or flushes half its capacity at once.
#ifndef KVPAGE_ALLOCATOR_BLOCK_POOL_H_
#define KVPAGE_ALLOCATOR_BLOCK_POOL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/optimization.h"
#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "allocator/block_storage.h"
#include "allocator/check.h"
#include "allocator/mutex.h"
#include "allocator/poison.h"

namespace kvpage::internal {

class BlockPool {
 public:
  class LocalCache;

  // Takes ownership of `storage`; every block starts free. Block b spans
  // `width` storage blocks, slot j's at j * capacity + b (a group of
  // layers, CacheConfig::group_layers): capacity() is num_blocks / width.
  // InvalidArgument when the pool has no blocks or 2^32 - 1 or more (ids are
  // 32-bit and kNoBlock is reserved). O(capacity).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<BlockPool>> Create(
      std::unique_ptr<BlockStorage> storage, int width = 1);

  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;
  // Debug builds assert that no block is used and no LocalCache is alive.
  ~BlockPool();

  int64_t capacity() const { return capacity_; }
  int width() const { return width_; }
  // The storage block of slot `slot` of block `id`.
  uint32_t StorageId(BlockId id, int slot) const {
    return static_cast<uint32_t>(slot * capacity_ + id);
  }
  BlockStorage& storage() const { return *storage_; }

  // Fills `out` with distinct free blocks, each with ref_count 1, or returns
  // ResourceExhausted (naming the sizes) and takes nothing. O(out.size()).
  [[nodiscard]] absl::Status Allocate(absl::Span<BlockId> out);

  // One more reference to a used block. The caller must hold a reference.
  // Inline: every fork, match and publication takes one per block.
  void Retain(BlockId id) {
    KVPAGE_DCHECK(id < capacity_ && ref_count(id) > 0);
    refs_[id].fetch_add(1, std::memory_order_relaxed);
  }

  // Drops one reference to each block; those that reach 0 become free.
  void Release(absl::Span<const BlockId> ids);

  uint32_t ref_count(BlockId id) const {
    return refs_[id].load(std::memory_order_acquire);
  }

  // Blocks on the shared free list (not counting LocalCaches).
  [[nodiscard]] int64_t free_blocks() const;
  // Blocks not on the shared free list: used, or held by a LocalCache.
  [[nodiscard]] int64_t taken_blocks() const {
    return capacity_ - free_blocks();
  }
  // Blocks with ref_count >= 1. See the thread-safety note. O(caches).
  [[nodiscard]] int64_t used_blocks() const;

  // Walks the invariants above; Internal naming the first violation.
  // O(capacity).
  [[nodiscard]] absl::Status Validate() const;

  // Every block with ref_count 0 (on the shared free list or in a
  // LocalCache), ascending. Needs the same exclusion from LocalCache owners
  // as Validate(). O(capacity).
  [[nodiscard]] std::vector<BlockId> FreeIds() const;

 private:
  BlockPool(std::unique_ptr<BlockStorage> storage, int width);
  // The AddressSanitizer hooks of every slot of block `id`.
  void PoisonFree(BlockId id) const {
    for (int j = 0; j < width_; ++j) storage_->PoisonFree(StorageId(id, j));
  }
  void UnpoisonUsed(BlockId id) const {
    for (int j = 0; j < width_; ++j) storage_->UnpoisonUsed(StorageId(id, j));
  }

  // Moves between `min` and `max` ids from the free list onto `out` (each
  // stays ref_count 0), or none and returns false when fewer than `min` are
  // free.
  bool TakeFree(int64_t min, int64_t max, std::vector<BlockId>& out);
  // Puts ids with ref_count 0 back on the free list.
  void PutFree(absl::Span<const BlockId> ids);
  void Register(LocalCache* cache);
  void Unregister(LocalCache* cache);

  const std::unique_ptr<BlockStorage> storage_;
  const int width_;
  const int64_t capacity_;
  const std::unique_ptr<std::atomic<uint32_t>[]> refs_;
  mutable Mutex mu_;
  std::vector<BlockId> free_ ABSL_GUARDED_BY(mu_);
  std::vector<const LocalCache*> caches_ ABSL_GUARDED_BY(mu_);
};

// A per-thread stock of free blocks in front of a BlockPool. Blocks it holds
// are free (ref_count 0) but only this cache hands them out; Flush() or the
// destructor gives them back. See the thread-safety note above.
class BlockPool::LocalCache {
 public:
  static constexpr int kDefaultCapacity = 64;

  explicit LocalCache(BlockPool& pool, int capacity = kDefaultCapacity);
  LocalCache(const LocalCache&) = delete;
  LocalCache& operator=(const LocalCache&) = delete;
  ~LocalCache();

  // A block with ref_count 1, or kNoBlock when neither this cache nor the
  // pool has one. O(1): a pop and a relaxed store; refills out of line.
  [[nodiscard]] BlockId AllocateOne() {
    if (ABSL_PREDICT_TRUE(!ids_.empty())) {
      const BlockId id = ids_.back();
      ids_.pop_back();
      Publish();
      pool_.refs_[id].store(1, std::memory_order_relaxed);
      if constexpr (KVPAGE_HAS_ASAN) pool_.UnpoisonUsed(id);
      return id;
    }
    return AllocateSlow();
  }

  // Fills `out` with blocks of ref_count 1, from this cache first, or
  // returns ResourceExhausted and takes nothing. O(out.size()).
  [[nodiscard]] absl::Status Allocate(absl::Span<BlockId> out);

  // Drops one reference; a block whose last reference this was stays here.
  // O(1) when the caller holds the only reference (no atomic RMW: nobody
  // else can reach the block); flushes half the cache when it is full.
  void Release(BlockId id) {
    std::atomic<uint32_t>& ref = pool_.refs_[id];
    KVPAGE_DCHECK(id < pool_.capacity_ &&
                  ref.load(std::memory_order_relaxed) > 0);
    if (ABSL_PREDICT_TRUE(ref.load(std::memory_order_acquire) == 1)) {
      ref.store(0, std::memory_order_relaxed);
    } else if (ref.fetch_sub(1, std::memory_order_acq_rel) != 1) {
      return;  // others still hold it
    }
    if constexpr (KVPAGE_HAS_ASAN) pool_.PoisonFree(id);
    if (ABSL_PREDICT_FALSE(ids_.size() >= static_cast<size_t>(capacity_))) {
      FlushHalf();
    }
    ids_.push_back(id);
    Publish();
  }

  // Gives every held block back to the pool.
  void Flush();

  int64_t size() const { return static_cast<int64_t>(ids_.size()); }
  absl::Span<const BlockId> held() const { return ids_; }

 private:
  BlockId AllocateSlow();
  void FlushHalf();
  // ids_.size() for used_blocks() on other threads: a plain store on x86.
  void Publish() {
    published_size_.store(static_cast<int64_t>(ids_.size()),
                          std::memory_order_relaxed);
  }

  BlockPool& pool_;
  const int capacity_;
  std::vector<BlockId> ids_;  // LIFO: the most recently freed is reused first
  std::atomic<int64_t> published_size_{0};
  friend class BlockPool;
};

}  // namespace kvpage::internal

#endif  // KVPAGE_ALLOCATOR_BLOCK_POOL_H_
