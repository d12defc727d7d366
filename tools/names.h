// tools/names.h — the names kvpage-dump and kvpage-stress print for the
// library's enums that have no name function of their own (DTypeName and
// OverflowPolicyName are the library's, in kvpage/config.h).
#ifndef KVPAGE_TOOLS_NAMES_H_
#define KVPAGE_TOOLS_NAMES_H_

#include <string_view>

#include "kvpage/config.h"
#include "kvpage/kv_cache.h"
#include "kvpage/snapshot.h"

namespace kvpage::tools {

// "int8", "int4", or for a hot block the dtype it stores ("f16").
[[nodiscard]] inline std::string_view BlockFormatName(BlockFormat format,
                                                      DType hot_dtype) {
  switch (format) {
    case BlockFormat::kHot:
      return DTypeName(hot_dtype);
    case BlockFormat::kInt8:
      return "int8";
    case BlockFormat::kInt4:
      return "int4";
  }
  return "?";
}

// "sink", "window" or "spare".
[[nodiscard]] inline std::string_view TableRoleName(TableRole role) {
  switch (role) {
    case TableRole::kSink:
      return "sink";
    case TableRole::kWindow:
      return "window";
    case TableRole::kSpare:
      return "spare";
  }
  return "?";
}

}  // namespace kvpage::tools

#endif  // KVPAGE_TOOLS_NAMES_H_
