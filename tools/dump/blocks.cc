// kvpage-dump blocks: each block's and quantized cell's state, reference
// count and owners, streamed a row at a time.
#include <algorithm>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "tools/dump/dump.h"
#include "tools/dump/holdings.h"
#include "tools/dump/text.h"

namespace kvpage::dump {
namespace {

// One row of `blocks`: a hot block or a quantized cell.
struct BlockRow {
  size_t id = 0;
  std::string state;
  uint32_t ref_count = 0;
  std::vector<std::string> owners;
};

// The one walk of `blocks`: the rows of each pool in id order, each built
// when asked for, so that a renderer writes it and moves on. Memory is the
// walk's index of holders (O(blocks + table entries)), never the output.
class BlockRows {
 public:
  explicit BlockRows(const Snapshot& snap)
      : snap_(snap), holdings_(Walk(snap)) {}

  // Pool `quant` (false: hot): its rows, its reference counts.
  [[nodiscard]] size_t size(bool quant) const {
    return (quant ? holdings_.quant : holdings_.hot).size();
  }
  [[nodiscard]] std::string State(bool quant, size_t id) const {
    return quant ? QuantState(snap_, holdings_, id)
                 : HotState(snap_, holdings_, id);
  }
  [[nodiscard]] uint32_t RefCount(bool quant, size_t id) const {
    return (quant ? snap_.quant : snap_.hot).ref_counts[id];
  }
  // Fills `row` (its owners' storage reused) with row `id`.
  void Row(bool quant, size_t id, BlockRow& row) const {
    row.id = id;
    row.state = State(quant, id);
    row.ref_count = RefCount(quant, id);
    row.owners.clear();
    for (const Holder& holder : (quant ? holdings_.quant : holdings_.hot)[id]) {
      row.owners.push_back(HolderName(holder));
    }
  }

 private:
  const Snapshot& snap_;
  const Holdings holdings_;
};

constexpr const char* kBlockPools[] = {"hot", "quant"};

}  // namespace

void BlocksJson(const Snapshot& snap, std::ostream& out) {
  const BlockRows rows(snap);
  // The layout of Json::dump(2), written row by row.
  out << "{\n  \"schema_version\": " << kSchemaVersion;
  BlockRow row;
  for (const bool quant : {false, true}) {
    out << ",\n  \"" << kBlockPools[quant] << "\": [";
    const size_t n = rows.size(quant);
    for (size_t id = 0; id < n && out; ++id) {
      rows.Row(quant, id, row);
      out << (id == 0 ? "\n" : ",\n") << "    {\n      \"id\": " << row.id
          << ",\n      \"state\": " << Json(row.state).dump()
          << ",\n      \"ref_count\": " << row.ref_count
          << ",\n      \"owners\": [";
      for (size_t i = 0; i < row.owners.size(); ++i) {
        out << (i == 0 ? "\n" : ",\n") << "        "
            << Json(row.owners[i]).dump();
      }
      out << (row.owners.empty() ? "]" : "\n      ]") << "\n    }";
    }
    out << (n == 0 ? "]" : "\n  ]");
  }
  out << "\n}\n";
}

void BlocksText(const Snapshot& snap, std::ostream& out) {
  const BlockRows rows(snap);
  BlockRow row;
  for (const bool quant : {false, true}) {
    const size_t n = rows.size(quant);
    if (n == 0) continue;
    out << (quant ? "quantized pool\n" : "hot pool\n");
    // Columns padded to their widest cell, the header's included; the
    // owners column last, unpadded.
    size_t state_width = std::string_view("state").size();
    uint32_t refs_max = 0;
    for (size_t id = 0; id < n; ++id) {
      state_width = std::max(state_width, rows.State(quant, id).size());
      refs_max = std::max(refs_max, rows.RefCount(quant, id));
    }
    const int id_width =
        static_cast<int>(std::max<size_t>(2, Digits(n - 1)) + 2);
    const int state_col_width = static_cast<int>(state_width + 2);
    const int refs_width =
        static_cast<int>(std::max<size_t>(4, Digits(refs_max)) + 2);
    out << absl::StreamFormat("  %-*s%-*s%-*sowners\n", id_width, "id",
                              state_col_width, "state", refs_width, "refs");
    for (size_t id = 0; id < n && out; ++id) {
      rows.Row(quant, id, row);
      out << absl::StreamFormat(
          "  %-*d%-*s%-*d%s\n", id_width, row.id, state_col_width, row.state,
          refs_width, row.ref_count,
          row.owners.empty() ? "-" : absl::StrJoin(row.owners, ", "));
    }
  }
}

}  // namespace kvpage::dump
