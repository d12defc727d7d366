// bench/bench_common.h — what the benchmark files of kvpage_bench share: the
// model shape, deterministic input data, the fixture that survives Google
// Benchmark's sizing calls, the reporter that keeps every run's time and
// counters, and the helpers that format the comparison table.
//
// Each benchmark file (append_bench.cc, policy_bench.cc) registers its
// benchmarks and exports one Print*Tables() function; bench_main.cc runs
// them all, prints the tables in order and then the collected targets.
#ifndef KVPAGE_BENCH_BENCH_COMMON_H_
#define KVPAGE_BENCH_BENCH_COMMON_H_

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/optimization.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "benchmark/benchmark.h"
#include "kvpage/config.h"

namespace kvpage::bench {

// The model shape of every kvpage benchmark: 4 layers x 8 kv-heads x
// head_dim 128, f16 stored, block_tokens 16. A token is 2 KiB of keys plus
// 2 KiB of values per layer, so a decode step writes 16 KiB and a block is
// 64 KiB.
inline constexpr int kLayers = 4;
inline constexpr int kKvHeads = 8;
inline constexpr int kHeadDim = 128;
inline constexpr int kBlockTokens = 16;
inline constexpr int64_t kTokenElems = int64_t{kKvHeads} * kHeadDim;
// Keys (or values) of one token in one layer.
inline constexpr int64_t kTokenBytes = kTokenElems * sizeof(uint16_t);
// One decode step: K and V of one token on every layer.
inline constexpr int64_t kStepBytes = 2 * kTokenBytes * kLayers;
inline constexpr int64_t kBlockBytes = 2 * kBlockTokens * kTokenBytes;

inline constexpr char kModelShape[] =
    "4 layers x 8 kv-heads x head_dim 128, f16 stored, block_tokens 16 "
    "(4 KiB/token/layer K+V, 16 KiB per decode step)";

constexpr int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Deterministic values in +-[0.5, 1), finite in f16 and f32 alike: the
// benchmarks move bytes, only the f32 variant looks at values. `seed` picks
// the sequence.
std::vector<uint16_t> RandomF16(int64_t elems, uint32_t seed);
std::vector<float> RandomF32(int64_t elems, uint32_t seed);

// The 1-token K and V of every layer of one decode step: layer l's keys at
// element 2l * kTokenElems, its values right after.
std::vector<uint16_t> DecodeStepInput();

inline TokenSpan Span(const void* data, DType dtype, int64_t tokens) {
  return {.data = data, .dtype = dtype, .tokens = tokens};
}

// Reports `status` as the benchmark's error; true when it is one.
inline bool Failed(benchmark::State& state, const absl::Status& status) {
  if (ABSL_PREDICT_TRUE(status.ok())) return false;
  state.SkipWithError(status.ToString().c_str());
  return true;
}

// Google Benchmark calls a benchmark function several times while it sizes
// the iteration count. Building a pre-faulted cache and its history each
// time would dominate the wall time (page faults cost ~10 us each on this
// VM), so the last fixture built is kept under a key and reused by the next
// call with the same key; building another frees it first. Each benchmark
// puts the fixture back in its starting state before timing.
struct FixtureSlot {
  std::string key;
  std::shared_ptr<void> fixture;
};

// The one slot; emptied by main(), never destroyed.
FixtureSlot& CurrentFixture();

// The fixture under `key`, built by `build()` (returning
// absl::StatusOr<std::unique_ptr<T>>) unless it is the current one.
template <typename T, typename Build>
absl::StatusOr<T*> Reuse(const std::string& key, Build build) {
  FixtureSlot& slot = CurrentFixture();
  if (slot.key != key) {
    slot = {};  // free the previous fixture before building this one
    absl::StatusOr<std::unique_ptr<T>> built = build();
    if (!built.ok()) return built.status();
    slot.fixture = std::shared_ptr<T>(*std::move(built));
    slot.key = key;
  }
  return static_cast<T*>(slot.fixture.get());
}

// Forwards everything to the normal display reporter and keeps each run's
// real time per iteration and its user counters, for the comparison table.
// Runs are keyed by function name, then "/args" (e.g. "BM_Decode_Paged/1024",
// "BM_Prefill_Paged/f16").
class CapturingReporter : public benchmark::BenchmarkReporter {
 public:
  // Does not own `display`.
  explicit CapturingReporter(benchmark::BenchmarkReporter* display)
      : display_(display) {}

  bool ReportContext(const Context& context) override;
  void ReportRuns(const std::vector<Run>& runs) override;
  void Finalize() override;

  // Real nanoseconds per iteration of the benchmark `key`: the median over
  // repetitions. nullopt when it did not run (or failed).
  std::optional<double> Ns(const std::string& key) const;

  // The user counter `name` of the benchmark `key` as reported (already
  // divided by iterations etc.), from its last repetition, or the median
  // aggregate when only aggregates were reported. nullopt when absent.
  std::optional<double> Counter(const std::string& key,
                                const std::string& name) const;

  int errors() const { return errors_; }

 private:
  struct Times {
    std::vector<double> iterations;  // one per repetition
    std::optional<double> median;    // when only aggregates were reported
    std::map<std::string, double> counters;
  };

  benchmark::BenchmarkReporter* display_;
  std::map<std::string, Times> times_;
  int errors_ = 0;
};

// A figure of the comparison table; nullopt ("n/a") when the benchmarks it
// derives from did not run, e.g. under --benchmark_filter.
using Figure = std::optional<double>;

Figure Div(Figure a, Figure b);
std::string FormatNs(Figure ns);        // "496.1", "650489", "n/a"
std::string FormatRatio(Figure ratio);  // "0.59x", "1311x", "n/a"
std::string FormatGbps(Figure bytes_per_ns);
// "n/a" without a value, else "PASS" or "MISS".
std::string Verdict(Figure value, bool pass);

// One line of the "Targets" section.
struct TargetLine {
  std::string what;     // "prefill append >= 0.8x memcpy"
  std::string value;    // "0.95x"
  std::string verdict;  // PASS, MISS or n/a
};

// The tables of each benchmark file: print their sections to `out` and
// append their targets to `targets`.
void PrintAppendTables(const CapturingReporter& r, std::FILE* out,
                       std::vector<TargetLine>& targets);
void PrintWindowTables(const CapturingReporter& r, std::FILE* out,
                       std::vector<TargetLine>& targets);
void PrintCompressionTables(const CapturingReporter& r, std::FILE* out,
                            std::vector<TargetLine>& targets);
void PrintSharingTables(const CapturingReporter& r, std::FILE* out,
                        std::vector<TargetLine>& targets);

}  // namespace kvpage::bench

#endif  // KVPAGE_BENCH_BENCH_COMMON_H_
