// tools/generate/settings.h — a kvpage configuration for the decoder, as the
// command line and the quality table describe it: hot dtype, overflow policy
// and window, sinks, compression, and the pool sized for the run.
//
// Usage:
//   CacheSettings s{.policy = OverflowPolicy::kSlidingWindow, .window = 128};
//   absl::StatusOr<CacheConfig> c = MakeCacheConfig(model.shape(), s,
//                                                   /*sequences=*/4,
//                                                   /*max_length=*/1024);
#ifndef KVPAGE_TOOLS_GENERATE_SETTINGS_H_
#define KVPAGE_TOOLS_GENERATE_SETTINGS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "kvpage/config.h"
#include "tools/generate/model.h"

namespace kvpage::generate {

enum class Compression : uint8_t { kNone, kInt8, kInt4, kMixed };

struct CacheSettings {
  DType dtype = DType::kF32;
  int block_tokens = 16;
  int64_t blocks = 0;  // 0: enough for every sequence at max_length
  OverflowPolicy policy = OverflowPolicy::kError;
  int64_t window = 0;  // max_seq_len; 0: the run's longest sequence
  int64_t sinks = 0;
  int64_t truncate_to = 0;  // kTruncate; 0: window / 2
  Compression compression = Compression::kNone;
  int group_size = 0;  // values per scale; 0: head_dim
  int64_t hot_tokens = 64;
  bool auto_compress = true;    // else the caller compresses every N steps
  double max_rel_error = 0.02;  // kMixed
  int64_t quant_cells = 0;      // 0: as many as the hot pool has blocks (x2
                                // for kMixed)
  // One block table for all layers (CacheConfig::group_layers).
  bool group_layers = false;
};

// The CacheConfig of `settings` for a model of `shape` running `sequences`
// sequences of at most `max_length` positions. InvalidArgument as
// ValidateConfig says, naming the flag's field.
[[nodiscard]] absl::StatusOr<CacheConfig> MakeCacheConfig(
    const ModelShape& shape, const CacheSettings& settings, int64_t sequences,
    int64_t max_length);

// "none", "int8", "int4", "mixed".
[[nodiscard]] std::string CompressionName(Compression c);

}  // namespace kvpage::generate

#endif  // KVPAGE_TOOLS_GENERATE_SETTINGS_H_
