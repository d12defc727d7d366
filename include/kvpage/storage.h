// kvpage/storage.h — where a cache's hot blocks live: the seam between
// kvpage's bookkeeping and the bytes.
//
// A cache never holds a pointer to a block in its metadata: it names blocks
// by id, and everything that touches bytes goes through a BlockStorage. The
// default is the host arena KVCache::Create(config) reserves. An engine that
// owns its memory hands it over instead:
//   - WrapHostMemory: host memory the engine allocated (pinned, shared
//     between processes, a huge-page mapping); kvpage reads and writes it in
//     place and never frees it.
//   - NewCallbackStorage: function pointers for addresses, copies and
//     (optionally) host reads and writes: device memory, where an address is
//     the engine's device pointer and kvpage never dereferences one.
// or derives its own class from BlockStorage.
//
// Usage:
//   std::vector<std::byte, PinnedAllocator> memory(StorageBytes(config));
//   auto storage = kvpage::WrapHostMemory(config, memory.data(),
//                                         memory.size());
//   auto cache = kvpage::KVCache::Create(config, *std::move(storage));
//
// What needs host access: Update (writes host data), Gather, snapshots with
// token data, and compression (which reads blocks to repack them). A
// storage without host reads and writes (host_io() false) serves engine
// mode (Reserve, exported block tables, View's addresses): Update and
// Gather then return FailedPrecondition, and a configuration with
// compression is refused at Create with InvalidArgument.
//
// Thread safety: Write/Read/Copy on distinct blocks may run concurrently;
// a block's bytes are owned by whoever holds the block.
#ifndef KVPAGE_STORAGE_H_
#define KVPAGE_STORAGE_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "kvpage/config.h"

namespace kvpage {

// The blocks of BlockBytes(config) bytes a storage for `config` holds, and
// their total bytes: num_blocks * LayerGroupWidth(config). Storage block
// j * num_blocks + b is layer slot j of the pool's block id b (slot 0 only
// without group_layers: storage block b is block id b). Assumes a config
// that passed ValidateConfig(). O(layers^2).
[[nodiscard]] int64_t StorageBlocks(const CacheConfig& config);
[[nodiscard]] int64_t StorageBytes(const CacheConfig& config);

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
  // Whether Write and Read work (host data can go in and out).
  bool host_io() const { return host_io_; }

  // The block's address in the storage's own address space (what a kernel on
  // that side reads): never dereferenced by kvpage unless host_base() is
  // set. O(1).
  virtual const void* Address(uint32_t id) const = 0;
  // Copies `bytes` from host memory `src` into block `id` at `offset`.
  // Called only when host_io().
  virtual void Write(uint32_t id, int64_t offset, const void* src,
                     int64_t bytes) = 0;
  // Copies `bytes` of block `id` from `offset` into host memory `dst`.
  // Called only when host_io().
  virtual void Read(uint32_t id, int64_t offset, void* dst,
                    int64_t bytes) const = 0;
  // Copies the whole of block `from` onto block `to` (copy-on-write).
  virtual void Copy(uint32_t from, uint32_t to) = 0;
  // AddressSanitizer hooks: a free block is poisoned so that a read through
  // a stale address is reported. No-ops where there is nothing to poison.
  virtual void PoisonFree(uint32_t id) { (void)id; }
  virtual void UnpoisonUsed(uint32_t id) { (void)id; }

 protected:
  void set_host_base(std::byte* base) { host_base_ = base; }
  void set_host_io(bool host_io) { host_io_ = host_io; }

 private:
  std::byte* host_base_ = nullptr;
  bool host_io_ = true;
  const int64_t num_blocks_;
  const int64_t block_bytes_;
};

// Host memory the engine owns: StorageBytes(config) bytes from `memory`,
// 64-byte aligned. kvpage never frees it; it must outlive the cache.
// InvalidArgument for a bad config, a null or misaligned pointer, or fewer
// bytes than the config needs (naming both). O(1).
[[nodiscard]] absl::StatusOr<std::unique_ptr<BlockStorage>> WrapHostMemory(
    const CacheConfig& config, void* memory, int64_t bytes);

// Storage reached only through the engine's functions. `context` is passed
// back to each; `release` (optional) is called once when the storage goes.
// `address` and `copy` are required; `write` and `read` come together or
// not at all (host_io()).
struct StorageCallbacks {
  void* context = nullptr;
  const void* (*address)(void* context, uint32_t block) = nullptr;
  void (*copy)(void* context, uint32_t from, uint32_t to) = nullptr;
  void (*write)(void* context, uint32_t block, int64_t offset, const void* src,
                int64_t bytes) = nullptr;
  void (*read)(void* context, uint32_t block, int64_t offset, void* dst,
               int64_t bytes) = nullptr;
  void (*release)(void* context) = nullptr;
};

// InvalidArgument for a bad config or missing callbacks (naming them); then
// `release` is not called. O(1).
[[nodiscard]] absl::StatusOr<std::unique_ptr<BlockStorage>> NewCallbackStorage(
    const CacheConfig& config, const StorageCallbacks& callbacks);

}  // namespace kvpage

#endif  // KVPAGE_STORAGE_H_
