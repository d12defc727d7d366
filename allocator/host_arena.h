// allocator/host_arena.h — the default BlockStorage: one host allocation of
// num_blocks * block_bytes, 64-byte aligned blocks, optionally pre-faulted and
// backed by transparent huge pages.
//
// With KVPAGE_WITH_MIMALLOC the arena comes from mimalloc (mi_malloc_aligned);
// without it from an anonymous mmap. Either way it is released at destruction.
// Thread safety: as BlockStorage.
#ifndef KVPAGE_ALLOCATOR_HOST_ARENA_H_
#define KVPAGE_ALLOCATOR_HOST_ARENA_H_

#include <memory>

#include "absl/status/statusor.h"
#include "allocator/block_storage.h"

namespace kvpage::internal {

struct ArenaOptions {
  bool prefault = false;    // touch every page now (memset to zero)
  bool huge_pages = false;  // madvise(MADV_HUGEPAGE) over the arena
};

class HostArena final : public BlockStorage {
 public:
  // InvalidArgument for a non-positive size or a block size that is not a
  // multiple of 64 bytes; ResourceExhausted when the memory is not there.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<HostArena>> Create(
      int64_t num_blocks, int64_t block_bytes, const ArenaOptions& options);
  ~HostArena() override;

  const void* Address(BlockId id) const override;
  void Write(BlockId id, int64_t offset, const void* src,
             int64_t bytes) override;
  void Read(BlockId id, int64_t offset, void* dst,
            int64_t bytes) const override;
  void Copy(BlockId from, BlockId to) override;
  void PoisonFree(BlockId id) override;
  void UnpoisonUsed(BlockId id) override;

 private:
  HostArena(int64_t num_blocks, int64_t block_bytes, std::byte* memory,
            bool mmapped);
  const bool mmapped_;
};

}  // namespace kvpage::internal

#endif  // KVPAGE_ALLOCATOR_HOST_ARENA_H_
