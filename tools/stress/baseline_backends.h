// tools/stress/baseline_backends.h — the baselines as kvpage-stress
// backends: a contiguous buffer per sequence sized for the longest request
// (what engines did before paging; baselines/contiguous_buffer.h) and the
// naive cache of the original report (baselines/naive_cache.h: every update
// rebuilds the layer's whole tensors). Neither caches prefixes nor
// compresses; both read back every token exactly.
#ifndef KVPAGE_TOOLS_STRESS_BASELINE_BACKENDS_H_
#define KVPAGE_TOOLS_STRESS_BASELINE_BACKENDS_H_

#include <memory>

#include "tools/stress/backend.h"

namespace kvpage::stress {

// Buffers of params.contiguous_tokens tokens; admission reserves one per
// sample against params.budget_bytes.
[[nodiscard]] std::unique_ptr<Backend> MakeContiguousBackend(
    const BackendParams& params);

// Admits without a budget (its steps cost O(context), the run's
// --naive-budget bounds it instead).
[[nodiscard]] std::unique_ptr<Backend> MakeNaiveBackend(
    const BackendParams& params);

}  // namespace kvpage::stress

#endif  // KVPAGE_TOOLS_STRESS_BASELINE_BACKENDS_H_
