// bench/bench_main.cc — main() of kvpage_bench: runs the benchmarks of
// append_bench.cc, policy_bench.cc, compress_bench.cc and
// sharing_bench.cc, then prints the
// comparison tables and the targets (reported, not asserted).
//
// Usage: kvpage_bench [--benchmark_filter=REGEX] [other --benchmark_* flags]
// Figures of benchmarks that did not run show as "n/a".
// Exit code 1 only when a benchmark reported an error (or for an unknown
// flag); missed targets are printed, not turned into a failure.

#include <cstdio>
#include <vector>

#include "absl/strings/str_format.h"
#include "bench/bench_common.h"
#include "benchmark/benchmark.h"

int main(int argc, char** argv) {
  namespace kb = kvpage::bench;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("kvpage_model", kb::kModelShape);
  // Owned by the library (a function-local static): never deleted here.
  benchmark::BenchmarkReporter* display =
      benchmark::CreateDefaultDisplayReporter();
  kb::CapturingReporter reporter(display);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  kb::CurrentFixture() = {};

  // The tables follow the console output; with --benchmark_format=json or
  // csv they go to stderr so that stdout stays machine-readable.
  const bool console =
      dynamic_cast<benchmark::ConsoleReporter*>(display) != nullptr;
  std::FILE* out = console ? stdout : stderr;
  absl::FPrintF(out, "\nkvpage comparison - %s\n", kb::kModelShape);
  std::vector<kb::TargetLine> targets;
  kb::PrintAppendTables(reporter, out, targets);
  kb::PrintWindowTables(reporter, out, targets);
  kb::PrintCompressionTables(reporter, out, targets);
  kb::PrintSharingTables(reporter, out, targets);
  absl::FPrintF(out, "\nTargets (reported, not asserted)\n");
  for (const kb::TargetLine& t : targets) {
    absl::FPrintF(out, "%-46s %10s  %s\n", t.what, t.value, t.verdict);
  }
  std::fflush(out);
  return reporter.errors() > 0 ? 1 : 0;
}
