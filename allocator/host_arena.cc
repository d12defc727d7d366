#include "allocator/host_arena.h"

#include <sys/mman.h>

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "allocator/check.h"
#include "allocator/poison.h"

#if KVPAGE_WITH_MIMALLOC
#include <mimalloc.h>
#endif

namespace kvpage::internal {

namespace {
constexpr int64_t kHugePage = int64_t{2} << 20;
}  // namespace

absl::StatusOr<std::unique_ptr<HostArena>> HostArena::Create(
    int64_t num_blocks, int64_t block_bytes, const ArenaOptions& options) {
  if (num_blocks <= 0 || block_bytes <= 0 || block_bytes % 64 != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "host arena: %d blocks of %d bytes; both must be positive and the "
        "block size a multiple of 64",
        num_blocks, block_bytes));
  }
  const int64_t bytes = num_blocks * block_bytes;
  std::byte* memory = nullptr;
  bool mmapped = false;
#if KVPAGE_WITH_MIMALLOC
  memory = static_cast<std::byte*>(
      mi_malloc_aligned(static_cast<size_t>(bytes), 4096));
#else
  void* mapped =
      mmap(nullptr, static_cast<size_t>(bytes), PROT_READ | PROT_WRITE,
           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped != MAP_FAILED) {
    memory = static_cast<std::byte*>(mapped);
    mmapped = true;
  }
#endif
  if (memory == nullptr) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "host arena: cannot reserve %d bytes (%d blocks of %d bytes)", bytes,
        num_blocks, block_bytes));
  }
  if (options.huge_pages && bytes >= kHugePage) {
    // Advice only: the kernel may decline, which costs TLB misses, not data.
    const auto start = reinterpret_cast<uintptr_t>(memory);
    const uintptr_t aligned =
        (start + kHugePage - 1) & ~uintptr_t(kHugePage - 1);
    const uintptr_t end = (start + bytes) & ~uintptr_t(kHugePage - 1);
    if (end > aligned) {
      (void)madvise(reinterpret_cast<void*>(aligned), end - aligned,
                    MADV_HUGEPAGE);
    }
  }
  if (options.prefault) std::memset(memory, 0, static_cast<size_t>(bytes));
  return std::unique_ptr<HostArena>(
      new HostArena(num_blocks, block_bytes, memory, mmapped));
}

HostArena::HostArena(int64_t num_blocks, int64_t block_bytes, std::byte* memory,
                     bool mmapped)
    : BlockStorage(num_blocks, block_bytes), mmapped_(mmapped) {
  set_host_base(memory);
}

HostArena::~HostArena() {
  KVPAGE_UNPOISON(host_base(), total_bytes());
  if (mmapped_) {
    munmap(host_base(), static_cast<size_t>(total_bytes()));
  } else {
#if KVPAGE_WITH_MIMALLOC
    mi_free(host_base());
#endif
  }
}

const void* HostArena::Address(BlockId id) const {
  KVPAGE_DCHECK(id < num_blocks());
  return host_base() + static_cast<int64_t>(id) * block_bytes();
}

void HostArena::Write(BlockId id, int64_t offset, const void* src,
                      int64_t bytes) {
  KVPAGE_DCHECK(id < num_blocks() && offset >= 0 &&
                offset + bytes <= block_bytes());
  std::memcpy(host_base() + static_cast<int64_t>(id) * block_bytes() + offset,
              src, static_cast<size_t>(bytes));
}

void HostArena::Read(BlockId id, int64_t offset, void* dst,
                     int64_t bytes) const {
  KVPAGE_DCHECK(id < num_blocks() && offset >= 0 &&
                offset + bytes <= block_bytes());
  std::memcpy(dst,
              host_base() + static_cast<int64_t>(id) * block_bytes() + offset,
              static_cast<size_t>(bytes));
}

void HostArena::Copy(BlockId from, BlockId to) {
  KVPAGE_DCHECK(from < num_blocks() && to < num_blocks() && from != to);
  std::memcpy(host_base() + static_cast<int64_t>(to) * block_bytes(),
              host_base() + static_cast<int64_t>(from) * block_bytes(),
              static_cast<size_t>(block_bytes()));
}

void HostArena::PoisonFree(BlockId id) {
  KVPAGE_POISON(host_base() + static_cast<int64_t>(id) * block_bytes(),
                block_bytes());
}

void HostArena::UnpoisonUsed(BlockId id) {
  KVPAGE_UNPOISON(host_base() + static_cast<int64_t>(id) * block_bytes(),
                  block_bytes());
}

}  // namespace kvpage::internal
