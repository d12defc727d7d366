// tools/generate/quality.h — what each kvpage setting costs the model: text
// the model samples itself (seeded, temperature 1) is teacher-forced through
// the decoder on each setting and compared, position by position, with the
// f32 full-context run: mean negative log-likelihood per token and its
// change, top-1 agreement of the next-token distributions, their mean KL
// divergence, and the bytes the cache holds per position.
//
// Usage: kvpage-generate quality [--sequences 4 --length 768 --seed 1]
#ifndef KVPAGE_TOOLS_GENERATE_QUALITY_H_
#define KVPAGE_TOOLS_GENERATE_QUALITY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "tools/generate/decoder.h"
#include "tools/generate/settings.h"

namespace kvpage::generate {

struct QualityOptions {
  int sequences = 4;
  int64_t length = 768;  // tokens per sequence, BOS included
  uint64_t seed = 1;
  std::string only;  // run only the rows whose name contains this
};

// One row of the table: a setting and how it compares with the reference.
struct QualitySetting {
  std::string name;
  CacheSettings cache;
  RopePositions rope = RopePositions::kAbsolute;
  int64_t compress_every = 0;
};

struct QualityRow {
  std::string name;
  double bytes_per_position = 0;  // memory_usage_bytes / positions, all layers
  double nll = 0, delta_nll = 0;  // nats per token
  double delta_nll_late = 0;      // the same over positions past 512
  double top1 = 0;                // fraction of positions
  double top1_clear = 0;   // the same where the reference's top token leads
                           // the next by >= 0.05 probability
  double clear_share = 0;  // fraction of positions that are clear
  double kl = 0;           // mean KL(reference || setting), nats
  int64_t tokens = 0;      // positions compared
  double quant_error = 0;  // mean relative MSE of the compressions
};

// The settings the table covers (docs/model.md), for a model of `shape`.
[[nodiscard]] std::vector<QualitySetting> QualitySettings(
    const ModelShape& shape);

// Samples the text and measures every setting of `settings`.
[[nodiscard]] absl::StatusOr<std::vector<QualityRow>> MeasureQuality(
    const Model& model, const QualityOptions& options,
    const std::vector<QualitySetting>& settings);

void DefineQualityFlags(CLI::App& app, QualityOptions& options);
// Prints the table (markdown); exit code as main() returns it.
int RunQuality(const Model& model, const QualityOptions& options);

}  // namespace kvpage::generate

#endif  // KVPAGE_TOOLS_GENERATE_QUALITY_H_
