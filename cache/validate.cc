// KVCache::Validate: one invariant walk. The invariants a snapshot shows
// (tables, reference counts, free lists, statistics) are checked by
// VerifySnapshot on a snapshot of the cache's metadata; what only the live
// structures hold (the pools' free lists, the prefix cache's LRU links and
// back pointers) by their own Validate.
#include "absl/strings/str_format.h"
#include "cache/kv_cache_impl.h"
#include "kvpage/snapshot.h"

namespace kvpage {

absl::Status KVCache::Validate() const {
  const Impl& impl = *impl_;
  if (absl::Status s = impl.pool->Validate(); !s.ok()) return s;
  if (impl.quant != nullptr) {
    if (absl::Status s = impl.quant->pool().Validate(); !s.ok()) return s;
  }
  absl::StatusOr<Snapshot> snapshot = TakeSnapshot({});
  if (!snapshot.ok()) return snapshot.status();
  const std::vector<SnapshotViolation> violations = VerifySnapshot(*snapshot);
  if (!violations.empty()) {
    const SnapshotViolation& first = violations.front();
    return absl::InternalError(absl::StrFormat(
        "%s: %s%s", first.check, first.message,
        violations.size() == 1
            ? ""
            : absl::StrFormat(" (and %d more)", violations.size() - 1)));
  }
  return impl.prefix->Validate(*impl.pool);
}

}  // namespace kvpage
