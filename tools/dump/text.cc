#include "tools/dump/text.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"

namespace kvpage::dump {

std::string Num(const Json& value) {
  if (value.is_null()) return "-";
  if (value.is_number_float()) {
    return absl::StrFormat("%.4g", value.get<double>());
  }
  if (value.is_number_unsigned()) return absl::StrCat(value.get<uint64_t>());
  if (value.is_number_integer()) return absl::StrCat(value.get<int64_t>());
  if (value.is_boolean()) return value.get<bool>() ? "yes" : "no";
  if (value.is_string()) return value.get<std::string>();
  return value.dump();
}

std::string Bytes(int64_t bytes) {
  const auto value = static_cast<double>(bytes);
  if (bytes >= (int64_t{1} << 30)) {
    return absl::StrFormat("%.2f GiB", value / (1 << 30));
  }
  if (bytes >= (1 << 20)) return absl::StrFormat("%.2f MiB", value / (1 << 20));
  if (bytes >= (1 << 10)) return absl::StrFormat("%.2f KiB", value / (1 << 10));
  return absl::StrFormat("%d B", bytes);
}

std::string KeyValues(const KeyValueList& rows, const std::string& indent) {
  size_t width = 0;
  for (const auto& [key, value] : rows) width = std::max(width, key.size());
  std::string out;
  for (const auto& [key, value] : rows) {
    absl::StrAppend(&out, indent, key, std::string(width - key.size() + 2, ' '),
                    value, "\n");
  }
  return out;
}

std::string Columns(const std::vector<std::vector<std::string>>& rows,
                    const std::string& indent) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    width.resize(std::max(width.size(), row.size()), 0);
    for (size_t i = 0; i < row.size(); ++i) {
      width[i] = std::max(width[i], row[i].size());
    }
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line = indent;
    for (size_t i = 0; i < row.size(); ++i) {
      absl::StrAppend(&line, row[i]);
      if (i + 1 < row.size()) {
        line.append(width[i] - row[i].size() + 2, ' ');
      }
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

std::string Indented(const std::string& text, int spaces) {
  std::string line_break(static_cast<size_t>(spaces) + 1, ' ');
  line_break[0] = '\n';
  return absl::StrReplaceAll(text, {{"\n", line_break}});
}

size_t Digits(uint64_t value) {
  size_t digits = 1;
  while (value >= 10) {
    value /= 10;
    ++digits;
  }
  return digits;
}

}  // namespace kvpage::dump
