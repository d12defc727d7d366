// tools/stress/backend.h — the three caches kvpage-stress drives with one
// workload: kvpage's paged KVCache (paged_backend.h), and the baselines
// (baseline_backends.h): a contiguous per-sequence buffer sized for the
// longest request (what engines did before paging), and the naive cache of
// the original report (every update rebuilds the layer's whole tensors).
//
// A backend is one worker's shard: thread-compatible, used by one thread.
// Sequence ids are the backend's own (kvpage's SeqId for the paged one).
// Every method returns the library's error with the call named, or DataLoss
// when what was read back is not what was written.
#ifndef KVPAGE_TOOLS_STRESS_BACKEND_H_
#define KVPAGE_TOOLS_STRESS_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "tools/stress/remote.h"
#include "tools/stress/report.h"
#include "tools/stress/workload.h"

namespace kvpage::stress {

// The shape every backend stores, and what verification expects.
struct Shape {
  int layers = 0, kv_heads = 0, head_dim = 0;
  int64_t token_elems = 0;  // kv_heads * head_dim
  DType dtype = DType::kF16;
  OverflowPolicy policy = OverflowPolicy::kError;
  int64_t max_seq_len = 0, sink_tokens = 0;
  // Rollbacks (speculative decoding) under a window: a rollback does not
  // bring evicted tokens back, so the window may hold fewer than it can.
  bool rollbacks = false;
  double quant_bound_int8 = 4e-5, quant_bound_int4 = 1e-2;  // README
};

// Memory of one shard at one moment.
struct MemorySample {
  int64_t bytes_held = 0;     // KV bytes the backend holds for sequences
  int64_t tokens_stored = 0;  // visible tokens x layers
  int64_t token_slots = 0;    // token x layer slots of what it holds
  int64_t bytes_saved = 0;    // compression
};

// How a failure names a sequence: "sequence 12 (request 5, sample 0)".
struct SeqLabel {
  uint64_t id = 0;
  int64_t request = 0;
  int sample = 0;
};
[[nodiscard]] std::string Describe(const SeqLabel& label);

class Backend {
 public:
  virtual ~Backend() = default;

  [[nodiscard]] virtual absl::StatusOr<uint64_t> Add() = 0;
  // Prefix caching: attaches the cached blocks that match `ids`, tells the
  // cache every id; returns the tokens matched (0 without prefix caching).
  [[nodiscard]] virtual absl::StatusOr<int64_t> MatchPrefix(
      uint64_t seq, absl::Span<const int32_t> ids) = 0;
  // The update rule: `n` tokens (dtype bits, [n][token_elems]) at positions
  // [seq_len - n, seq_len) of `layer`.
  [[nodiscard]] virtual absl::Status Write(uint64_t seq, int layer,
                                           const uint16_t* k, const uint16_t* v,
                                           int64_t n, int64_t seq_len) = 0;
  [[nodiscard]] virtual absl::Status Truncate(uint64_t seq,
                                              int64_t seq_len) = 0;
  [[nodiscard]] virtual absl::StatusOr<uint64_t> Fork(uint64_t parent) = 0;
  // Compresses cold blocks of one layer (paged with compression only).
  [[nodiscard]] virtual absl::Status Compress(uint64_t seq, int layer) = 0;
  [[nodiscard]] virtual absl::Status Release(uint64_t seq) = 0;

  // Reads back every visible token of every layer of `seq` (its length is
  // `length`, its writers `lineage`) and compares it with the pattern:
  // exactly for stored tokens, within the README's relative-MSE bound for
  // compressed blocks. DataLoss naming sequence, layer and position.
  // `only_layer` >= 0 reads back that layer alone.
  [[nodiscard]] virtual absl::Status Verify(const SeqLabel& label,
                                            const Lineage& lineage,
                                            int64_t length,
                                            int only_layer = -1) = 0;
  // The backend's invariant walk (KVCache::Validate for paged).
  [[nodiscard]] virtual absl::Status Check() = 0;
  // After every sequence was released: nothing may be left in use.
  [[nodiscard]] virtual absl::Status Finish() = 0;
  // A snapshot for kvpage-dump (KVCache::WriteSnapshot); the paged backend
  // only, FailedPrecondition elsewhere.
  [[nodiscard]] virtual absl::Status WriteSnapshot(
      const std::string& path) const {
    return absl::FailedPreconditionError(absl::StrCat(
        "no snapshot of ", path, ": only the paged backend has one"));
  }

  [[nodiscard]] virtual MemorySample Sample() const = 0;
  [[nodiscard]] virtual BackendCounters Counters() const = 0;
  // Bytes admission reserves for `request` (with its samples).
  [[nodiscard]] virtual int64_t Cost(const Request& request) const = 0;
  [[nodiscard]] virtual int64_t Budget() const = 0;
};

struct BackendParams {
  BackendKind kind = BackendKind::kPaged;
  Shape shape;
  CacheConfig paged;              // paged: the shard's cache
  int64_t contiguous_tokens = 0;  // contiguous: tokens per sequence buffer
  int64_t budget_bytes = 0;       // the shard's KV budget
  int samples = 1, spec_tokens = 0;
  bool prefix_caching = false;
  // Paged, --remote: the shard's Redis tier (url "": none; remote.h), and
  // whether the cache writes through to it.
  ShardTierOptions remote;
  bool remote_write_through = false;
};

[[nodiscard]] absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(
    const BackendParams& params);

}  // namespace kvpage::stress

#endif  // KVPAGE_TOOLS_STRESS_BACKEND_H_
