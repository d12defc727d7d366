// tools/dump/dump.h — what kvpage-dump shows of a snapshot. Each verb walks
// the snapshot once into a JSON model (stable snake_case keys, a
// schema_version); the human text is rendered from that same model, so the
// two outputs never disagree. Read-only by construction: every function takes
// the snapshot by const reference and returns text.
//
// Usage:
//   kvpage::Snapshot snap = *kvpage::ReadSnapshot(path);
//   nlohmann::ordered_json model = kvpage::dump::Summary(snap);
//   std::cout << kvpage::dump::SummaryText(model);
//
// Every function accepts any snapshot ParseSnapshot returns, however corrupt
// its tables: ids out of range are shown as such, never followed.
#ifndef KVPAGE_TOOLS_DUMP_DUMP_H_
#define KVPAGE_TOOLS_DUMP_DUMP_H_

#include <optional>
#include <string>

#include "kvpage/snapshot.h"
#include "nlohmann/json.hpp"

namespace kvpage::dump {

using Json = nlohmann::ordered_json;

// Version of the JSON output; bumped when a key changes meaning or goes.
inline constexpr int kSchemaVersion = 1;

// Config, pool usage, internal waste, policy and compression figures, stats.
[[nodiscard]] Json Summary(const Snapshot& snap);
[[nodiscard]] std::string SummaryText(const Json& model);

// Block tables, optionally of one sequence and/or one layer.
struct TableFilter {
  std::optional<SeqId> seq;
  std::optional<int> layer;
};
[[nodiscard]] Json Tables(const Snapshot& snap, const TableFilter& filter);
[[nodiscard]] std::string TablesText(const Json& model);

// Each block's and quantized slot's state, reference count and owners.
[[nodiscard]] Json Blocks(const Snapshot& snap);
[[nodiscard]] std::string BlocksText(const Json& model);

// VerifySnapshot's violations; the text is empty when there are none.
[[nodiscard]] Json Verify(const Snapshot& snap);
[[nodiscard]] std::string VerifyText(const Json& model);

// What changed from `a` to `b`.
[[nodiscard]] Json Diff(const Snapshot& a, const Snapshot& b);
[[nodiscard]] std::string DiffText(const Json& model);

// The pool as a picture: one cell per block, coloured by state and owner,
// with a legend. `model` (optional) receives the counts drawn.
[[nodiscard]] std::string MapSvg(const Snapshot& snap, Json* model = nullptr);
[[nodiscard]] std::string MapText(const Json& model);

}  // namespace kvpage::dump

#endif  // KVPAGE_TOOLS_DUMP_DUMP_H_
