// tools/dump/dump.h — what kvpage-dump shows of a snapshot. Each verb walks
// the snapshot once into a JSON model (stable snake_case keys, a
// schema_version); the human text is rendered from that same model, so the
// two outputs never disagree. `tables` and `blocks`, whose output grows with
// the pool, stream instead: one walk yields tables or rows that both
// renderers write as they come. Read-only by construction: every function takes
// the snapshot by const reference and returns or writes text.
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
#include <ostream>
#include <string>

#include "kvpage/snapshot.h"
#include "nlohmann/json.hpp"

namespace kvpage::dump {

using Json = nlohmann::ordered_json;

// Version of the JSON output; bumped when a key changes meaning or goes.
inline constexpr int kSchemaVersion = 2;

// Config, pool usage, internal waste, policy and compression figures, stats.
[[nodiscard]] Json Summary(const Snapshot& snap);
[[nodiscard]] std::string SummaryText(const Json& model);

// Block tables, optionally of one sequence and/or one layer.
struct TableFilter {
  std::optional<SeqId> seq;
  std::optional<int> layer;
};
// Streamed a table at a time (sequence and layer): the model of one table
// is built, written to `out` and dropped, so that memory is the largest
// table's, never the output (a 1M-block snapshot: seconds). The JSON has the
// layout of Json::dump(2): {"schema_version", "block_tokens", "sequences":
// [{"id", "salt", "token_ids", "layers": [{"layer", "overflow", "length",
// "window_start", "max_length", "visible", "evicted", "entries": [...]}]}]}.
// Stops writing once `out` fails; the caller checks it.
void TablesJson(const Snapshot& snap, const TableFilter& filter,
                std::ostream& out);
void TablesText(const Snapshot& snap, const TableFilter& filter,
                std::ostream& out);

// Each block's and quantized cell's state, reference count and owners,
// streamed: unlike the verbs above, one walk produces the rows and each is
// written to `out` as it comes (the JSON document, or the human table), so
// memory is the walk's index, O(blocks + table entries), never the output
// (a 1M-block snapshot: seconds, tens of MB). The JSON has the layout of
// Json::dump(2): {"schema_version", "hot": [{"id", "state", "ref_count",
// "owners": [...]}, ...], "quant": [...]}. Stops writing once `out` fails;
// the caller checks it.
void BlocksJson(const Snapshot& snap, std::ostream& out);
void BlocksText(const Snapshot& snap, std::ostream& out);

// VerifySnapshot's violations; the text is empty when there are none.
[[nodiscard]] Json Verify(const Snapshot& snap);
[[nodiscard]] std::string VerifyText(const Json& model);

// What changed from `a` to `b`.
[[nodiscard]] Json Diff(const Snapshot& a, const Snapshot& b);
[[nodiscard]] std::string DiffText(const Json& model);

// The pool as a picture: one cell per block, coloured by state and owner,
// with a legend. `model` (optional) receives the counts drawn. WriteMapSvg
// streams the cells to `out` as the walk reaches them (memory: the walk's
// index, not the picture, which takes ~130 bytes a block); it stops writing
// once `out` fails, and the caller checks it.
void WriteMapSvg(const Snapshot& snap, std::ostream& out,
                 Json* model = nullptr);
[[nodiscard]] std::string MapSvg(const Snapshot& snap, Json* model = nullptr);
[[nodiscard]] std::string MapText(const Json& model);

}  // namespace kvpage::dump

#endif  // KVPAGE_TOOLS_DUMP_DUMP_H_
