// cache/block_io.h — reading and writing runs of tokens in hot blocks.
//
// A hot block holds block_tokens slots of keys, then as many of values, each
// slot token_elems elements of the cache's dtype. Storage that is host
// memory is read and written in place; other storage through a buffer.
// The reads and writes name storage blocks: with layer groups, the pool's
// block b of layer slot j is storage block BlockPool::StorageId(b, j).
//
// Thread safety: thread-compatible; the const reads allocate their own
// buffer and may run concurrently with each other.
#ifndef KVPAGE_CACHE_BLOCK_IO_H_
#define KVPAGE_CACHE_BLOCK_IO_H_

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "allocator/block_storage.h"
#include "kvpage/config.h"

namespace kvpage::internal {

class BlockIO {
 public:
  // `pool_blocks` blocks of `width` slots each (BlockPool).
  BlockIO(const CacheConfig& config, BlockStorage& storage, int64_t pool_blocks,
          int width);

  // Converts `count` tokens of one half (keys, or values when `values`)
  // from `from` into slots [slot, slot + count) of block `id`. O(count).
  void WriteRun(BlockId id, bool values, int64_t slot, const std::byte* src,
                DType from, int64_t count);

  // Reads `count` tokens of one half from slot `slot` of block `id` as f32.
  // O(count).
  void ReadRun(BlockId id, bool values, int64_t slot, int64_t count,
               float* out) const;

  // Host addresses of the K and V regions of layer slot `slot` of the
  // pool's block `block`; storage that is not host memory is read into a
  // buffer first, valid until the next call for the same slot.
  std::pair<const std::byte*, const std::byte*> Source(BlockId block, int slot);

  // Writes a whole storage block's bytes (block_bytes()). O(block size).
  void WriteBlock(BlockId id, const std::byte* src);
  // Copies every slot of the pool's block `from` into block `to`.
  // O(block size * width).
  void Copy(BlockId from, BlockId to) {
    for (int64_t j = 0; j < width_; ++j) {
      storage_.Copy(static_cast<BlockId>(j * pool_blocks_ + from),
                    static_cast<BlockId>(j * pool_blocks_ + to));
    }
  }

  const std::byte* host_base() const { return host_base_; }
  int64_t block_bytes() const { return block_bytes_; }
  int64_t token_elems() const { return token_elems_; }
  int64_t token_bytes() const { return token_bytes_; }
  int64_t v_offset() const { return v_offset_; }

 private:
  BlockStorage& storage_;
  DType dtype_;
  std::byte* host_base_;  // null when the storage is not host memory
  int64_t block_bytes_;
  int64_t token_elems_;  // num_kv_heads * head_dim
  int64_t token_bytes_;  // token_elems * DTypeSize(dtype)
  int64_t v_offset_;     // bytes from a block's start to its V region
  int64_t pool_blocks_;
  int64_t width_;
  // Never part of the cache's state: WriteRun's conversions, Source's
  // copies (a block's slots side by side).
  std::vector<std::byte> staging_, sources_;
};

}  // namespace kvpage::internal

#endif  // KVPAGE_CACHE_BLOCK_IO_H_
