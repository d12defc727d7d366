// tools/stress/flags.h — kvpage-stress's command line: every flag with its
// range (workload.h), its default and its help, parsed into Options.
//
// Bad usage is one line on stderr that names the flag, and exit code 2: a
// value outside the flag's range or not a number, an unknown flag or name,
// a flag given without its value. Flags are matched whole (no
// abbreviations); a flag given twice takes its last value.
#ifndef KVPAGE_TOOLS_STRESS_FLAGS_H_
#define KVPAGE_TOOLS_STRESS_FLAGS_H_

#include "tools/stress/workload.h"

namespace kvpage::stress {

inline constexpr int kExitOk = 0, kExitFailed = 1, kExitUsage = 2;

struct ParsedFlags {
  bool run = false;  // false: exit with exit_code now (--help, bad usage)
  int exit_code = kExitOk;
  Options options;  // when run
};

// Parses the command line; prints --help, or the usage error, itself.
// Checks each flag alone; ValidateOptions checks them together.
[[nodiscard]] ParsedFlags ParseFlags(int argc, char** argv);

}  // namespace kvpage::stress

#endif  // KVPAGE_TOOLS_STRESS_FLAGS_H_
