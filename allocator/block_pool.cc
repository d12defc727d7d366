#include "allocator/block_pool.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "allocator/check.h"

namespace kvpage::internal {

absl::StatusOr<std::unique_ptr<BlockPool>> BlockPool::Create(
    std::unique_ptr<BlockStorage> storage, int width) {
  const int64_t blocks =
      storage == nullptr || width < 1 ? 0 : storage->num_blocks() / width;
  if (blocks <= 0 || blocks >= static_cast<int64_t>(kNoBlock) ||
      storage->num_blocks() % width != 0 ||
      storage->num_blocks() >= static_cast<int64_t>(kNoBlock)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "block pool: %d storage blocks of %d slots each; need 1 to %d "
        "storage blocks, a multiple of the slots",
        storage == nullptr ? 0 : storage->num_blocks(), width, kNoBlock - 1));
  }
  return std::unique_ptr<BlockPool>(new BlockPool(std::move(storage), width));
}

BlockPool::BlockPool(std::unique_ptr<BlockStorage> storage, int width)
    : storage_(std::move(storage)),
      width_(width),
      capacity_(storage_->num_blocks() / width),
      refs_(new std::atomic<uint32_t>[static_cast<size_t>(capacity_)]) {
  MutexLock lock(&mu_);
  free_.resize(static_cast<size_t>(capacity_));
  for (int64_t i = 0; i < capacity_; ++i) {
    refs_[i].store(0, std::memory_order_relaxed);
    // Popping from the back hands out id 0 first.
    free_[static_cast<size_t>(i)] = static_cast<BlockId>(capacity_ - 1 - i);
    if constexpr (KVPAGE_HAS_ASAN) PoisonFree(static_cast<BlockId>(i));
  }
}

BlockPool::~BlockPool() {
  MutexLock lock(&mu_);
  KVPAGE_DCHECK(caches_.empty());
  KVPAGE_DCHECK(static_cast<int64_t>(free_.size()) == capacity_);
}

absl::Status BlockPool::Allocate(absl::Span<BlockId> out) {
  const int64_t n = static_cast<int64_t>(out.size());
  {
    MutexLock lock(&mu_);
    const int64_t free = static_cast<int64_t>(free_.size());
    if (free < n) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("block pool: %d blocks requested, %d free of %d", n,
                          free, capacity_));
    }
    std::copy(free_.end() - n, free_.end(), out.begin());
    free_.resize(static_cast<size_t>(free - n));
    // Inside the lock, so that no block is ever off the free list with
    // ref_count 0 for another thread to see.
    for (BlockId id : out) refs_[id].store(1, std::memory_order_relaxed);
  }
  if constexpr (KVPAGE_HAS_ASAN) {
    for (BlockId id : out) UnpoisonUsed(id);
  }
  return absl::OkStatus();
}

void BlockPool::Release(absl::Span<const BlockId> ids) {
  // Most releases drop the last reference: gather those, then one lock.
  constexpr size_t kBatch = 64;
  BlockId freed[kBatch];
  size_t count = 0;
  auto flush = [&] {
    PutFree(absl::MakeConstSpan(freed, count));
    count = 0;
  };
  for (BlockId id : ids) {
    KVPAGE_DCHECK(id < capacity_ && ref_count(id) > 0);
    if (refs_[id].fetch_sub(1, std::memory_order_acq_rel) != 1) continue;
    if constexpr (KVPAGE_HAS_ASAN) PoisonFree(id);
    freed[count++] = id;
    if (count == kBatch) flush();
  }
  if (count > 0) flush();
}

int64_t BlockPool::free_blocks() const {
  MutexLock lock(&mu_);
  return static_cast<int64_t>(free_.size());
}

int64_t BlockPool::used_blocks() const {
  MutexLock lock(&mu_);
  int64_t cached = 0;
  for (const LocalCache* cache : caches_) {
    cached += cache->published_size_.load(std::memory_order_relaxed);
  }
  return capacity_ - static_cast<int64_t>(free_.size()) - cached;
}

std::vector<BlockId> BlockPool::FreeIds() const {
  MutexLock lock(&mu_);
  std::vector<BlockId> ids(free_.begin(), free_.end());
  for (const LocalCache* cache : caches_) {
    ids.insert(ids.end(), cache->held().begin(), cache->held().end());
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

absl::Status BlockPool::Validate() const {
  MutexLock lock(&mu_);
  std::vector<uint8_t> seen(static_cast<size_t>(capacity_), 0);
  auto check_free = [&](BlockId id, const char* where) -> absl::Status {
    if (id >= capacity_) {
      return absl::InternalError(absl::StrFormat(
          "block pool: id %d on the %s is out of range (capacity %d)", id,
          where, capacity_));
    }
    if (seen[id]++ != 0) {
      return absl::InternalError(absl::StrFormat(
          "block pool: block %d appears twice among free and cached blocks",
          id));
    }
    if (const uint32_t ref = ref_count(id); ref != 0) {
      return absl::InternalError(absl::StrFormat(
          "block pool: block %d on the %s has ref_count %d, want 0", id, where,
          ref));
    }
    return absl::OkStatus();
  };
  for (BlockId id : free_) {
    if (absl::Status s = check_free(id, "free list"); !s.ok()) return s;
  }
  int64_t cached = 0;
  for (const LocalCache* cache : caches_) {
    for (BlockId id : cache->held()) {
      if (absl::Status s = check_free(id, "local cache"); !s.ok()) return s;
    }
    cached += cache->size();
  }
  int64_t used = 0;
  for (int64_t id = 0; id < capacity_; ++id) {
    if (seen[static_cast<size_t>(id)] != 0) continue;
    if (ref_count(static_cast<BlockId>(id)) == 0) {
      return absl::InternalError(absl::StrFormat(
          "block pool: block %d has ref_count 0 but is neither free nor "
          "cached (leaked)",
          id));
    }
    ++used;
  }
  const int64_t free = static_cast<int64_t>(free_.size());
  if (free + cached + used != capacity_) {
    return absl::InternalError(absl::StrFormat(
        "block pool: free %d + cached %d + used %d != capacity %d", free,
        cached, used, capacity_));
  }
  return absl::OkStatus();
}

bool BlockPool::TakeFree(int64_t min, int64_t max, std::vector<BlockId>& out) {
  MutexLock lock(&mu_);
  const int64_t free = static_cast<int64_t>(free_.size());
  if (free < min) return false;
  const int64_t take = std::min(free, max);
  out.insert(out.end(), free_.end() - take, free_.end());
  free_.resize(static_cast<size_t>(free - take));
  return true;
}

void BlockPool::PutFree(absl::Span<const BlockId> ids) {
  MutexLock lock(&mu_);
  free_.insert(free_.end(), ids.begin(), ids.end());
}

void BlockPool::Register(LocalCache* cache) {
  MutexLock lock(&mu_);
  caches_.push_back(cache);
}

void BlockPool::Unregister(LocalCache* cache) {
  MutexLock lock(&mu_);
  caches_.erase(std::find(caches_.begin(), caches_.end(), cache));
}

BlockPool::LocalCache::LocalCache(BlockPool& pool, int capacity)
    : pool_(pool), capacity_(std::max(capacity, 2)) {
  ids_.reserve(static_cast<size_t>(capacity_));
  pool_.Register(this);
}

BlockPool::LocalCache::~LocalCache() {
  Flush();
  pool_.Unregister(this);
}

BlockId BlockPool::LocalCache::AllocateSlow() {
  if (!pool_.TakeFree(1, capacity_ / 2, ids_)) return kNoBlock;
  return AllocateOne();
}

absl::Status BlockPool::LocalCache::Allocate(absl::Span<BlockId> out) {
  const int64_t n = static_cast<int64_t>(out.size());
  const int64_t held = size();
  if (held < n && !pool_.TakeFree(n - held, n - held + capacity_ / 2, ids_)) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("block pool: %d blocks requested, %d free of %d", n,
                        pool_.free_blocks() + held, pool_.capacity_));
  }
  for (BlockId& id : out) id = AllocateOne();
  Publish();
  return absl::OkStatus();
}

void BlockPool::LocalCache::Flush() {
  pool_.PutFree(ids_);
  ids_.clear();
  Publish();
}

void BlockPool::LocalCache::FlushHalf() {
  // Give back the older half; the recently freed blocks are warm in cache.
  const size_t give = ids_.size() / 2;
  pool_.PutFree(absl::MakeConstSpan(ids_).first(give));
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<ptrdiff_t>(give));
  Publish();
}

}  // namespace kvpage::internal
