// tests/opaque_storage.h — a block storage that is not host memory, for the
// test suites and the API fuzzer.
#ifndef KVPAGE_TESTS_OPAQUE_STORAGE_H_
#define KVPAGE_TESTS_OPAQUE_STORAGE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "allocator/block_storage.h"

namespace kvpage::testing {

// Keeps its bytes in a vector but does not admit it: host_base() is null, so
// the cache must go through Write/Read/Copy, as with device memory.
class OpaqueStorage final : public internal::BlockStorage {
 public:
  OpaqueStorage(int64_t num_blocks, int64_t block_bytes)
      : BlockStorage(num_blocks, block_bytes),
        bytes_(static_cast<size_t>(num_blocks * block_bytes)) {}

  const void* Address(internal::BlockId id) const override {
    return bytes_.data() + id * block_bytes();
  }
  void Write(internal::BlockId id, int64_t offset, const void* src,
             int64_t bytes) override {
    ++writes;
    std::memcpy(bytes_.data() + id * block_bytes() + offset, src,
                static_cast<size_t>(bytes));
  }
  void Read(internal::BlockId id, int64_t offset, void* dst,
            int64_t bytes) const override {
    std::memcpy(dst, bytes_.data() + id * block_bytes() + offset,
                static_cast<size_t>(bytes));
  }
  void Copy(internal::BlockId from, internal::BlockId to) override {
    std::memcpy(bytes_.data() + to * block_bytes(),
                bytes_.data() + from * block_bytes(),
                static_cast<size_t>(block_bytes()));
  }

  int64_t writes = 0;

 private:
  std::vector<std::byte> bytes_;
};

}  // namespace kvpage::testing

#endif  // KVPAGE_TESTS_OPAQUE_STORAGE_H_
