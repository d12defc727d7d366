// tools/dump/text.h — how kvpage-dump's human renderers write numbers and
// line things up. Internal to kvpage-dump.
#ifndef KVPAGE_TOOLS_DUMP_TEXT_H_
#define KVPAGE_TOOLS_DUMP_TEXT_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tools/dump/dump.h"

namespace kvpage::dump {

// A JSON value as text: integers plainly, fractions with 4 significant
// digits, booleans yes/no, null "-".
[[nodiscard]] std::string Num(const Json& value);

// "512 B", "4.00 KiB", "1.27 MiB", "2.00 GiB".
[[nodiscard]] std::string Bytes(int64_t bytes);

// Lines of "key  value" with the keys padded to one width.
using KeyValueList = std::vector<std::pair<std::string, std::string>>;
[[nodiscard]] std::string KeyValues(const KeyValueList& rows,
                                    const std::string& indent = "  ");

// Rows padded into columns (trailing blanks trimmed); the first row is the
// header.
[[nodiscard]] std::string Columns(
    const std::vector<std::vector<std::string>>& rows,
    const std::string& indent);

// `text` with `spaces` more indentation on every line but the first.
[[nodiscard]] std::string Indented(const std::string& text, int spaces);

// Decimal digits of `value`.
[[nodiscard]] size_t Digits(uint64_t value);

}  // namespace kvpage::dump

#endif  // KVPAGE_TOOLS_DUMP_TEXT_H_
