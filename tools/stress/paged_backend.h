// tools/stress/paged_backend.h — kvpage's paged KVCache as a kvpage-stress
// backend: one cache per shard, read back through View() (hot blocks
// compared exactly, compressed blocks dequantized and held to their bound).
#ifndef KVPAGE_TOOLS_STRESS_PAGED_BACKEND_H_
#define KVPAGE_TOOLS_STRESS_PAGED_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "tools/stress/backend.h"

namespace kvpage::stress {

// A shard's cache of `params.paged` (KVCache::Create's error, with the call
// named, for a configuration it refuses).
[[nodiscard]] absl::StatusOr<std::unique_ptr<Backend>> MakePagedBackend(
    const BackendParams& params);

}  // namespace kvpage::stress

#endif  // KVPAGE_TOOLS_STRESS_PAGED_BACKEND_H_
