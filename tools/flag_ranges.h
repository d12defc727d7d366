// tools/flag_ranges.h — CLI11 validators that give a numeric flag a range,
// for kvpage-stress and kvpage-dump.
//
// CLI11 2.1.2 converts an integer flag with strtoll/strtoull, base 0: a
// value past the type's end is silently clamped to it ("9223372036854775808"
// reads as INT64_MAX, "18446744073709551616" as UINT64_MAX), "-1" reads as
// UINT64_MAX for an unsigned flag, and "010" is octal. A floating-point flag
// goes through strtold: "nan", "inf" and "1e400" (inf) are accepted, and
// CLI::Range lets nan through (every comparison with it is false). These
// validators run before the conversion: they accept plain decimal integers
// within [lo, hi] (and rewrite the value in canonical decimal, so that what
// CLI11 converts is what was checked), and finite numbers within [lo, hi].
// A value outside fails the parse with "--flag: VALUE is not ...". Attach
// them with transform(), not check(): check() hands a validator a copy, so
// the canonical rewrite would be lost ("010" checked as 10, stored as 8).
//
// Usage:
//   app.add_option("--requests", n)->transform(IntRange(1, 1000000));
//   app.add_option("--pool-gib", g)->transform(FiniteRange(1e-6, 65536));
#ifndef KVPAGE_TOOLS_FLAG_RANGES_H_
#define KVPAGE_TOOLS_FLAG_RANGES_H_

#include <cmath>
#include <cstdint>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvpage::tools {

// A decimal integer in [lo, hi] (a signed flag).
inline CLI::Validator IntRange(int64_t lo, int64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& value) -> std::string {
        int64_t v = 0;
        if (!absl::SimpleAtoi(value, &v) || v < lo || v > hi) {
          return absl::StrFormat("%s is not an integer in [%d, %d]", value, lo,
                                 hi);
        }
        value = absl::StrCat(v);
        return "";
      },
      absl::StrFormat("[%d, %d]", lo, hi));
}

// A decimal integer in [lo, hi] (an unsigned flag).
inline CLI::Validator UintRange(uint64_t lo, uint64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& value) -> std::string {
        uint64_t v = 0;
        if (value.find('-') != std::string::npos ||
            !absl::SimpleAtoi(value, &v) || v < lo || v > hi) {
          return absl::StrFormat("%s is not an integer in [%d, %d]", value, lo,
                                 hi);
        }
        value = absl::StrCat(v);
        return "";
      },
      absl::StrFormat("[%d, %d]", lo, hi));
}

// A finite number in [lo, hi].
inline CLI::Validator FiniteRange(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& value) -> std::string {
        double v = 0;
        if (!absl::SimpleAtod(value, &v) || !std::isfinite(v) || v < lo ||
            v > hi) {
          return absl::StrFormat("%s is not a number in [%g, %g]", value, lo,
                                 hi);
        }
        return "";
      },
      absl::StrFormat("[%g, %g]", lo, hi));
}

}  // namespace kvpage::tools

#endif  // KVPAGE_TOOLS_FLAG_RANGES_H_
