// tools/generate/speed.h — tokens per second of generation with the decoder
// on kvpage (PagedStore, f32) and on its plain contiguous cache
// (ContiguousStore), alternated in one run, for each batch size: the cache's
// share of a real forward pass. Reported, never asserted.
//
// Usage: kvpage-generate speed [--batches 1,32 --steps 256 --reps 5]
#ifndef KVPAGE_TOOLS_GENERATE_SPEED_H_
#define KVPAGE_TOOLS_GENERATE_SPEED_H_

#include <cstdint>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "tools/generate/model.h"

namespace kvpage::generate {

struct SpeedOptions {
  std::vector<int> batches = {1, 32};
  int64_t prompt = 16;  // prompt tokens (BOS, then the model's own greedy ids)
  int64_t steps = 256;  // tokens generated per sequence
  int reps = 5;
  int block_tokens = 16;  // kvpage's block size
};

void DefineSpeedFlags(CLI::App& app, SpeedOptions& options);
// Prints the table (markdown); exit code as main() returns it.
int RunSpeed(const Model& model, const SpeedOptions& options);

}  // namespace kvpage::generate

#endif  // KVPAGE_TOOLS_GENERATE_SPEED_H_
