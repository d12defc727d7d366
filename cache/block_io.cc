#include "cache/block_io.h"

#include <cstring>

#include "allocator/convert.h"

namespace kvpage::internal {

BlockIO::BlockIO(const CacheConfig& config, BlockStorage& storage,
                 int64_t pool_blocks, int width)
    : storage_(storage),
      dtype_(config.dtype),
      host_base_(storage.host_base()),
      block_bytes_(BlockBytes(config)),
      token_elems_(int64_t{config.num_kv_heads} * config.head_dim),
      token_bytes_(token_elems_ * DTypeSize(config.dtype)),
      v_offset_(block_bytes_ / 2),
      pool_blocks_(pool_blocks),
      width_(width) {}

void BlockIO::WriteRun(BlockId id, bool values, int64_t slot,
                       const std::byte* src, DType from, int64_t count) {
  const int64_t offset = (values ? v_offset_ : 0) + slot * token_bytes_;
  const int64_t elems = count * token_elems_;
  if (host_base_ != nullptr) {
    ConvertElements(src, from, host_base_ + id * block_bytes_ + offset, dtype_,
                    elems);
    return;
  }
  staging_.resize(static_cast<size_t>(count * token_bytes_));
  ConvertElements(src, from, staging_.data(), dtype_, elems);
  storage_.Write(id, offset, staging_.data(), count * token_bytes_);
}

void BlockIO::ReadRun(BlockId id, bool values, int64_t slot, int64_t count,
                      float* out) const {
  const int64_t offset = (values ? v_offset_ : 0) + slot * token_bytes_;
  const int64_t elems = count * token_elems_;
  if (host_base_ != nullptr) {
    ConvertElements(host_base_ + id * block_bytes_ + offset, dtype_, out,
                    DType::kF32, elems);
    return;
  }
  std::vector<std::byte> buffer(static_cast<size_t>(count * token_bytes_));
  storage_.Read(id, offset, buffer.data(), count * token_bytes_);
  ConvertElements(buffer.data(), dtype_, out, DType::kF32, elems);
}

void BlockIO::WriteBlock(BlockId id, const std::byte* src) {
  if (host_base_ != nullptr) {
    std::memcpy(host_base_ + id * block_bytes_, src,
                static_cast<size_t>(block_bytes_));
    return;
  }
  storage_.Write(id, 0, src, block_bytes_);
}

std::pair<const std::byte*, const std::byte*> BlockIO::Source(BlockId block,
                                                              int slot) {
  const int64_t id = slot * pool_blocks_ + block;
  if (host_base_ != nullptr) {
    const std::byte* k = host_base_ + id * block_bytes_;
    return {k, k + v_offset_};
  }
  // Sized once for every slot: the addresses of other slots stay valid.
  sources_.resize(static_cast<size_t>(width_ * block_bytes_));
  std::byte* k = sources_.data() + slot * block_bytes_;
  storage_.Read(static_cast<BlockId>(id), 0, k, block_bytes_);
  return {k, k + v_offset_};
}

}  // namespace kvpage::internal
