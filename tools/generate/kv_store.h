// tools/generate/kv_store.h — where the decoder keeps keys and values: the
// interface its attention reads through, so that one decoder runs on kvpage
// (PagedStore) and on a plain contiguous array per layer (ContiguousStore,
// and the tests' reference stores) with the same arithmetic.
//
// A store holds, per sequence and layer, the keys and values of the tokens
// written so far, each [kv_dim] f32 as the decoder hands them over; what a
// layer may attend to is its visible positions, in runs of consecutive
// positions, oldest first.
//
// Thread safety: thread-compatible.
#ifndef KVPAGE_TOOLS_GENERATE_KV_STORE_H_
#define KVPAGE_TOOLS_GENERATE_KV_STORE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvpage::generate {

using SeqHandle = uint64_t;

// Consecutive visible positions [first_position, first_position + tokens).
struct KvRun {
  int64_t first_position = 0;
  int64_t tokens = 0;
};

// The keys and values of one run as f32: token t's [kv_dim] keys start at
// k + t * stride, its values at v + t * stride. Valid until the next call on
// the store.
struct KvRunData {
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t stride = 0;
};

class KvStore {
 public:
  virtual ~KvStore() = default;

  virtual absl::StatusOr<SeqHandle> Add() = 0;
  // A sequence that starts as a copy of `parent` (what it holds, every layer).
  virtual absl::StatusOr<SeqHandle> Fork(SeqHandle parent) = 0;
  virtual absl::Status Remove(SeqHandle seq) = 0;
  // Forgets every position at or past `length` in every layer.
  virtual absl::Status Truncate(SeqHandle seq, int64_t length) = 0;
  // Writes `n` tokens' keys and values ([n][kv_dim] each) at positions
  // [length - n, length) of `layer` (kvpage's update rule).
  virtual absl::Status Write(SeqHandle seq, int layer, const float* k,
                             const float* v, int64_t n, int64_t length) = 0;
  // Prepares `layer` of `seq` for reading; `runs` receives its visible
  // positions, oldest first. Fetch() then reads them, run by run.
  virtual absl::Status Open(SeqHandle seq, int layer,
                            std::vector<KvRun>& runs) = 0;
  // The data of run `index` of the last Open().
  virtual absl::StatusOr<KvRunData> Fetch(size_t index) = 0;

  // Prefix caching, for stores that have it: the token ids of `seq` so far,
  // appended (their blocks become shareable), and the longest cached prefix
  // of `tokens` attached to the empty `seq` (returns the tokens it holds).
  // A store without it shares nothing: OK and 0.
  virtual absl::Status AppendTokens(SeqHandle seq,
                                    absl::Span<const int32_t> tokens) {
    (void)seq;
    (void)tokens;
    return absl::OkStatus();
  }
  virtual absl::StatusOr<int64_t> MatchPrefix(
      SeqHandle seq, absl::Span<const int32_t> tokens) {
    (void)seq;
    (void)tokens;
    return 0;
  }
  // Compresses the cold blocks of every layer of `seq`, for stores that
  // compress; others keep everything as it is: OK.
  virtual absl::Status CompressCold(SeqHandle seq) {
    (void)seq;
    return absl::OkStatus();
  }
};

}  // namespace kvpage::generate

#endif  // KVPAGE_TOOLS_GENERATE_KV_STORE_H_
