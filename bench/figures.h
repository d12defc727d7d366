// bench/figures.h — the figures of the stand-alone benchmarks
// (engine_bench.cc, prefix_bench.cc): each the median of its runs with min
// and max, printed as one JSON object that tools/engine_bench.sh and the
// docs read.
#ifndef KVPAGE_BENCH_FIGURES_H_
#define KVPAGE_BENCH_FIGURES_H_

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

namespace kvpage::bench {

struct Figure {
  std::string name;
  std::vector<double> runs;
};

// Prints {`prelude` "name": {"median": .., "min": .., "max": ..}, ...};
// `prelude` is zero or more `  "key": value,\n` lines.
inline void PrintFigures(const std::vector<Figure>& figures,
                         const std::string& prelude = "") {
  std::printf("{\n%s", prelude.c_str());
  for (size_t f = 0; f < figures.size(); ++f) {
    std::vector<double> runs = figures[f].runs;
    std::sort(runs.begin(), runs.end());
    std::printf(
        "  \"%s\": {\"median\": %.3f, \"min\": %.3f, \"max\": %.3f}%s\n",
        figures[f].name.c_str(), runs[runs.size() / 2], runs.front(),
        runs.back(), f + 1 < figures.size() ? "," : "");
  }
  std::printf("}\n");
}

}  // namespace kvpage::bench

#endif  // KVPAGE_BENCH_FIGURES_H_
