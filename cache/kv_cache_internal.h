// cache/kv_cache_internal.h — building a KVCache over a storage other than the
// host arena (memory an engine owns, a device, a test double). Not part of
// the installed API yet: the storage interface may still change.
#ifndef KVPAGE_CACHE_KV_CACHE_INTERNAL_H_
#define KVPAGE_CACHE_KV_CACHE_INTERNAL_H_

#include <memory>

#include "absl/status/statusor.h"
#include "allocator/block_storage.h"
#include "kvpage/kv_cache.h"

namespace kvpage::internal {

struct KVCacheAccess {
  // As KVCache::Create, over `storage`, which must hold
  // StorageBlocks(config) blocks of BlockBytes(config) bytes
  // (InvalidArgument otherwise).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<KVCache>>
  CreateWithStorage(const CacheConfig& config,
                    std::unique_ptr<BlockStorage> storage);
};

}  // namespace kvpage::internal

#endif  // KVPAGE_CACHE_KV_CACHE_INTERNAL_H_
