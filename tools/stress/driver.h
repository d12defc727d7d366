// tools/stress/driver.h — runs the workload on one backend: one worker
// thread per shard, each owning its own cache (KVCache is thread-compatible,
// so shards share nothing), a scheduler loop per worker that admits,
// prefills in chunks, decodes one token per step across every layer, forks,
// rolls back rejected drafts, compresses, verifies and releases, and the
// merge of what the workers measured into one BackendResult.
#ifndef KVPAGE_TOOLS_STRESS_DRIVER_H_
#define KVPAGE_TOOLS_STRESS_DRIVER_H_

#include <vector>

#include "tools/stress/report.h"
#include "tools/stress/workload.h"

namespace kvpage::stress {

struct RunContext {
  Options options;
  ModelShape shape;
  std::vector<Request> requests;
  int64_t longest = 0;  // LongestRequest(): the contiguous buffers' size
  // Requests each shard keeps in flight at most: empty, --concurrency split
  // evenly between the shards; else one per shard (the equal-concurrency
  // pass, main.cc).
  std::vector<int64_t> shard_concurrency;
};

// Runs the whole workload (the naive backend: until --naive-budget) on
// `kind`. A failure stops every worker; `status` and `error` then say what
// failed (verification_failed: the message names sequence, layer and
// position). Draws a progress bar on stderr when `progress`.
[[nodiscard]] BackendResult RunBackend(BackendKind kind, const RunContext& ctx,
                                       bool progress);

}  // namespace kvpage::stress

#endif  // KVPAGE_TOOLS_STRESS_DRIVER_H_
