// allocator/block_storage.h — where a pool's bytes live.
//
// The pool's bookkeeping (ids, reference counts, the free list) never touches
// block bytes; everything that does goes through a BlockStorage. The host
// arena is one storage; memory an engine owns, device memory or memory shared
// between processes are others. Code above the pool asks `host_base()` for a
// direct path and falls back to Write/Read/Copy when it is null: nothing
// assumes host pointers.
//
// Thread safety: Write/Read/Copy on distinct blocks may run concurrently;
// a block's bytes are owned by whoever holds the block.
#ifndef KVPAGE_ALLOCATOR_BLOCK_STORAGE_H_
#define KVPAGE_ALLOCATOR_BLOCK_STORAGE_H_

#include <cstddef>
#include <cstdint>

namespace kvpage::internal {

// A block's name: an index into the pool's dense arrays, never a pointer.
using BlockId = uint32_t;
inline constexpr BlockId kNoBlock = 0xffffffffu;

class BlockStorage {
 public:
  BlockStorage(int64_t num_blocks, int64_t block_bytes)
      : num_blocks_(num_blocks), block_bytes_(block_bytes) {}
  virtual ~BlockStorage() = default;
  BlockStorage(const BlockStorage&) = delete;
  BlockStorage& operator=(const BlockStorage&) = delete;

  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_bytes() const { return block_bytes_; }
  int64_t total_bytes() const { return num_blocks_ * block_bytes_; }

  // Block `id` starts at host_base() + id * block_bytes() when the storage is
  // host memory; null otherwise. O(1), inline: the fast path of every append.
  std::byte* host_base() const { return host_base_; }

  // The block's address in the storage's own address space (what a kernel on
  // that side reads). O(1).
  virtual const void* Address(BlockId id) const = 0;
  // Copies `bytes` from host memory `src` into block `id` at `offset`.
  virtual void Write(BlockId id, int64_t offset, const void* src,
                     int64_t bytes) = 0;
  // Copies `bytes` of block `id` from `offset` into host memory `dst`.
  virtual void Read(BlockId id, int64_t offset, void* dst,
                    int64_t bytes) const = 0;
  // Copies the whole of block `from` onto block `to`.
  virtual void Copy(BlockId from, BlockId to) = 0;
  // AddressSanitizer hooks: a free block is poisoned so that a read through
  // a stale address is reported. No-ops where there is nothing to poison.
  virtual void PoisonFree(BlockId id) { (void)id; }
  virtual void UnpoisonUsed(BlockId id) { (void)id; }

 protected:
  std::byte* host_base_ = nullptr;

 private:
  const int64_t num_blocks_;
  const int64_t block_bytes_;
};

}  // namespace kvpage::internal

#endif  // KVPAGE_ALLOCATOR_BLOCK_STORAGE_H_
