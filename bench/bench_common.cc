#include "bench/bench_common.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "benchmark/benchmark.h"

namespace kvpage::bench {
namespace {

uint32_t NextRandom(uint32_t& state) {
  state ^= state << 13;
  state ^= state >> 17;
  state ^= state << 5;
  return state;
}

}  // namespace

std::vector<uint16_t> RandomF16(int64_t elems, uint32_t seed) {
  std::vector<uint16_t> out(static_cast<size_t>(elems));
  uint32_t state = seed * 2654435761u + 1;
  // Sign, exponent 14 (2^-1), random mantissa.
  for (uint16_t& x : out) {
    x = static_cast<uint16_t>((NextRandom(state) & 0x83ffu) | 0x3800u);
  }
  return out;
}

std::vector<float> RandomF32(int64_t elems, uint32_t seed) {
  std::vector<float> out(static_cast<size_t>(elems));
  uint32_t state = seed * 2654435761u + 1;
  for (float& x : out) {
    const uint32_t r = NextRandom(state);
    const float magnitude = 0.5f + static_cast<float>(r >> 9) * 0x1p-24f;
    x = (r & 1u) != 0 ? -magnitude : magnitude;
  }
  return out;
}

std::vector<uint16_t> DecodeStepInput() {
  return RandomF16(2 * kLayers * kTokenElems, 2);
}

FixtureSlot& CurrentFixture() {
  static auto* slot = new FixtureSlot;
  return *slot;
}

// ---------------------------------------------------------------------------
// CapturingReporter

bool CapturingReporter::ReportContext(const Context& context) {
  return display_->ReportContext(context);
}

void CapturingReporter::ReportRuns(const std::vector<Run>& runs) {
  for (const Run& run : runs) {
    if (run.error_occurred) {
      ++errors_;
      continue;
    }
    std::string key = run.run_name.function_name;
    if (!run.run_name.args.empty()) key += "/" + run.run_name.args;
    const double ns = run.GetAdjustedRealTime() * 1e9 /
                      benchmark::GetTimeUnitMultiplier(run.time_unit);
    Times& times = times_[key];
    const bool iteration = run.run_type == Run::RT_Iteration;
    const bool median = run.run_type == Run::RT_Aggregate &&
                        run.aggregate_name == "median" &&
                        run.aggregate_unit == benchmark::kTime;
    if (iteration) times.iterations.push_back(ns);
    if (median) times.median = ns;
    if (iteration || (median && times.iterations.empty())) {
      for (const auto& [name, counter] : run.counters) {
        times.counters[name] = counter.value;
      }
    }
  }
  display_->ReportRuns(runs);
}

void CapturingReporter::Finalize() { display_->Finalize(); }

std::optional<double> CapturingReporter::Ns(const std::string& key) const {
  auto it = times_.find(key);
  if (it == times_.end()) return std::nullopt;
  std::vector<double> v = it->second.iterations;
  if (v.empty()) return it->second.median;
  std::sort(v.begin(), v.end());
  const size_t mid = v.size() / 2;
  return v.size() % 2 == 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

std::optional<double> CapturingReporter::Counter(
    const std::string& key, const std::string& name) const {
  auto it = times_.find(key);
  if (it == times_.end()) return std::nullopt;
  auto counter = it->second.counters.find(name);
  if (counter == it->second.counters.end()) return std::nullopt;
  return counter->second;
}

// ---------------------------------------------------------------------------
// Formatting

Figure Div(Figure a, Figure b) {
  if (!a || !b || *b == 0) return std::nullopt;
  return *a / *b;
}

std::string FormatNs(Figure ns) {
  if (!ns) return "n/a";
  if (*ns < 10) return absl::StrFormat("%.2f", *ns);
  if (*ns < 1000) return absl::StrFormat("%.1f", *ns);
  return absl::StrFormat("%.0f", *ns);
}

std::string FormatRatio(Figure r) {
  if (!r) return "n/a";
  if (*r >= 100) return absl::StrFormat("%.0fx", *r);
  return absl::StrFormat("%.2fx", *r);
}

std::string FormatGbps(Figure bytes_per_ns) {
  return bytes_per_ns ? absl::StrFormat("%.2f", *bytes_per_ns) : "n/a";
}

std::string Verdict(Figure value, bool pass) {
  if (!value) return "n/a";
  return pass ? "PASS" : "MISS";
}

}  // namespace kvpage::bench
