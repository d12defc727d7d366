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
#include <limits>
#include <string>
#include <type_traits>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvpage::tools {

// "[lo, hi]", the type's largest value written as a power of two.
template <typename Int>
std::string IntegerRangeText(Int lo, Int hi) {
  std::string high = absl::StrCat(hi);
  if (hi == std::numeric_limits<Int>::max()) {
    high = absl::StrCat("2^", std::numeric_limits<Int>::digits, " - 1");
  }
  return absl::StrCat("[", lo, ", ", high, "]");
}

// A decimal integer in [lo, hi] of type Int (for an unsigned Int, no sign).
template <typename Int>
CLI::Validator IntegerRange(Int lo, Int hi) {
  const std::string range = IntegerRangeText(lo, hi);
  return CLI::Validator(
      [lo, hi, range](std::string& value) -> std::string {
        Int v = 0;
        const bool negative =
            std::is_unsigned_v<Int> && value.find('-') != std::string::npos;
        if (negative || !absl::SimpleAtoi(value, &v) || v < lo || v > hi) {
          return absl::StrCat(value, " is not an integer in ", range);
        }
        value = absl::StrCat(v);
        return "";
      },
      range);
}

// A decimal integer in [lo, hi] (a signed flag).
inline CLI::Validator IntRange(int64_t lo, int64_t hi) {
  return IntegerRange<int64_t>(lo, hi);
}

// A decimal integer in [lo, hi] (an unsigned flag).
inline CLI::Validator UintRange(uint64_t lo, uint64_t hi) {
  return IntegerRange<uint64_t>(lo, hi);
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
