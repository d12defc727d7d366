// The storages an engine hands to KVCache::Create: host memory it owns, and
// storage reached through its callbacks (kvpage/storage.h).
#include "kvpage/storage.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_format.h"
#include "allocator/check.h"

namespace kvpage {

int64_t StorageBlocks(const CacheConfig& config) {
  return config.num_blocks * LayerGroupWidth(config);
}

int64_t StorageBytes(const CacheConfig& config) {
  return StorageBlocks(config) * BlockBytes(config);
}

namespace {

// Host memory the engine owns: read and written in place, never freed, not
// poisoned (the engine's own kernels may touch any block).
class HostMemory final : public BlockStorage {
 public:
  HostMemory(int64_t num_blocks, int64_t block_bytes, std::byte* memory)
      : BlockStorage(num_blocks, block_bytes) {
    set_host_base(memory);
  }
  const void* Address(uint32_t id) const override {
    return host_base() + int64_t{id} * block_bytes();
  }
  void Write(uint32_t id, int64_t offset, const void* src,
             int64_t bytes) override {
    std::memcpy(host_base() + int64_t{id} * block_bytes() + offset, src,
                static_cast<size_t>(bytes));
  }
  void Read(uint32_t id, int64_t offset, void* dst,
            int64_t bytes) const override {
    std::memcpy(dst, host_base() + int64_t{id} * block_bytes() + offset,
                static_cast<size_t>(bytes));
  }
  void Copy(uint32_t from, uint32_t to) override {
    std::memcpy(host_base() + int64_t{to} * block_bytes(),
                host_base() + int64_t{from} * block_bytes(),
                static_cast<size_t>(block_bytes()));
  }
};

class Callbacks final : public BlockStorage {
 public:
  Callbacks(int64_t num_blocks, int64_t block_bytes,
            const StorageCallbacks& callbacks)
      : BlockStorage(num_blocks, block_bytes), callbacks_(callbacks) {
    set_host_io(callbacks.write != nullptr);
  }
  ~Callbacks() override {
    if (callbacks_.release != nullptr) callbacks_.release(callbacks_.context);
  }
  const void* Address(uint32_t id) const override {
    return callbacks_.address(callbacks_.context, id);
  }
  void Write(uint32_t id, int64_t offset, const void* src,
             int64_t bytes) override {
    KVPAGE_DCHECK(host_io());
    callbacks_.write(callbacks_.context, id, offset, src, bytes);
  }
  void Read(uint32_t id, int64_t offset, void* dst,
            int64_t bytes) const override {
    KVPAGE_DCHECK(host_io());
    callbacks_.read(callbacks_.context, id, offset, dst, bytes);
  }
  void Copy(uint32_t from, uint32_t to) override {
    callbacks_.copy(callbacks_.context, from, to);
  }

 private:
  const StorageCallbacks callbacks_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<BlockStorage>> WrapHostMemory(
    const CacheConfig& config, void* memory, int64_t bytes) {
  if (absl::Status s = ValidateConfig(config); !s.ok()) return s;
  const int64_t needed = StorageBytes(config);
  if (memory == nullptr || reinterpret_cast<uintptr_t>(memory) % 64 != 0 ||
      bytes < needed) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "WrapHostMemory: %s memory of %d bytes; the config needs %d bytes, "
        "64-byte aligned",
        memory == nullptr                               ? "null"
        : reinterpret_cast<uintptr_t>(memory) % 64 != 0 ? "misaligned"
                                                        : "given",
        bytes, needed));
  }
  return std::unique_ptr<BlockStorage>(
      new HostMemory(StorageBlocks(config), BlockBytes(config),
                     static_cast<std::byte*>(memory)));
}

absl::StatusOr<std::unique_ptr<BlockStorage>> NewCallbackStorage(
    const CacheConfig& config, const StorageCallbacks& callbacks) {
  if (absl::Status s = ValidateConfig(config); !s.ok()) return s;
  if (callbacks.address == nullptr || callbacks.copy == nullptr ||
      (callbacks.write == nullptr) != (callbacks.read == nullptr)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "NewCallbackStorage: %s",
        callbacks.address == nullptr ? "the address callback is required"
        : callbacks.copy == nullptr  ? "the copy callback is required"
                                     : "write and read come together or not "
                                       "at all"));
  }
  return std::unique_ptr<BlockStorage>(
      new Callbacks(StorageBlocks(config), BlockBytes(config), callbacks));
}

}  // namespace kvpage
