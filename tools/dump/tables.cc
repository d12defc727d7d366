// kvpage-dump tables: every block table, streamed a table at a time.
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/dump/dump.h"
#include "tools/dump/holdings.h"
#include "tools/dump/text.h"
#include "tools/names.h"

namespace kvpage::dump {
namespace {

// One table entry: its block or slot, and the positions of its first and
// last visible slot (null for spares and for logical blocks too large to be
// real).
Json EntryJson(const Snapshot& snap, const SnapshotEntry& entry) {
  const int64_t block_tokens = snap.config.block_tokens;
  const bool hot = entry.format == BlockFormat::kHot;
  const SnapshotPool& pool = hot ? snap.hot : snap.quant;
  Json json = {
      {"role", tools::TableRoleName(entry.role)},
      {"logical", entry.logical},
      {"pool", hot ? "hot" : "quant"},
      {"format", tools::BlockFormatName(entry.format, snap.config.dtype)},
      {"id", entry.id}};
  json["ref_count"] = entry.id < pool.ref_counts.size()
                          ? Json(pool.ref_counts[entry.id])
                          : Json(nullptr);
  json["visible"] = entry.visible;
  json["begin_slot"] = entry.begin_slot;
  json["end_slot"] = entry.end_slot;
  const bool sane = entry.visible > 0 && entry.logical >= 0 &&
                    entry.logical < (int64_t{1} << 62) / block_tokens &&
                    entry.begin_slot >= 0 &&
                    entry.end_slot > entry.begin_slot &&
                    entry.end_slot <= block_tokens;
  json["first_position"] =
      sane ? Json(entry.logical * block_tokens + entry.begin_slot)
           : Json(nullptr);
  json["last_position"] =
      sane ? Json(entry.logical * block_tokens + entry.end_slot - 1)
           : Json(nullptr);
  return json;
}

// One layer's block table: the unit `tables` walks and renders, so that its
// memory is the model of one table, never the whole file's.
Json LayerTable(const Snapshot& snap, const SnapshotSequence& seq,
                size_t layer) {
  const SnapshotLayer& table = seq.layers[layer];
  const LayerPolicy policy = PolicyOf(snap.config, static_cast<int>(layer));
  Json entries = Json::array();
  int64_t visible = 0;
  for (const SnapshotEntry& entry : table.entries) {
    visible += entry.visible;
    entries.push_back(EntryJson(snap, entry));
  }
  return {{"layer", layer},
          {"overflow", OverflowPolicyName(policy.overflow)},
          {"length", table.length},
          {"window_start", table.window_start},
          {"max_length", table.max_length},
          {"visible", visible},
          {"evicted", table.evicted},
          {"entries", std::move(entries)}};
}

// The tables `filter` selects, in file order: `on_seq(seq)` before the
// layers of each sequence, `on_layer(seq, layer)` for each layer; the walk
// stops once `out` fails.
template <typename OnSeq, typename OnLayer>
void WalkTables(const Snapshot& snap, const TableFilter& filter,
                std::ostream& out, OnSeq on_seq, OnLayer on_layer) {
  for (const SnapshotSequence& seq : snap.sequences) {
    if (filter.seq && *filter.seq != seq.id) continue;
    if (!out) return;
    on_seq(seq);
    for (size_t layer = 0; layer < seq.layers.size(); ++layer) {
      if (filter.layer && *filter.layer != static_cast<int>(layer)) continue;
      if (!out) return;
      on_layer(seq, layer);
    }
  }
}

// One layer's table as text: its header line, then a row per entry.
std::string LayerTableText(const Json& table, int64_t block_tokens) {
  std::string out = absl::StrFormat(
      "  layer %s  %s  length %s  visible %s  window start %s  "
      "evicted %s\n",
      Num(table["layer"]), Num(table["overflow"]), Num(table["length"]),
      Num(table["visible"]), Num(table["window_start"]), Num(table["evicted"]));
  std::vector<std::vector<std::string>> rows = {{"role", "logical", "pool",
                                                 "block", "format", "refs",
                                                 "valid", "positions"}};
  for (const Json& e : table["entries"]) {
    const std::string positions =
        e["first_position"].is_null()
            ? "-"
            : absl::StrCat(Num(e["first_position"]), "-",
                           Num(e["last_position"]));
    rows.push_back(
        {Num(e["role"]),
         e["logical"].get<int64_t>() < 0 ? "-" : Num(e["logical"]),
         Num(e["pool"]), Num(e["id"]), Num(e["format"]), Num(e["ref_count"]),
         absl::StrCat(Num(e["visible"]), "/", block_tokens), positions});
  }
  return out + Columns(rows, "    ");
}

}  // namespace

void TablesJson(const Snapshot& snap, const TableFilter& filter,
                std::ostream& out) {
  // The layout of Json::dump(2), written a table at a time.
  out << "{\n  \"schema_version\": " << kSchemaVersion
      << ",\n  \"block_tokens\": " << snap.config.block_tokens
      << ",\n  \"sequences\": [";
  bool any_seq = false, any_layer = false;
  auto close_seq = [&] {
    if (any_seq) out << (any_layer ? "\n      ]" : "]") << "\n    }";
  };
  WalkTables(
      snap, filter, out,
      [&](const SnapshotSequence& seq) {
        close_seq();
        out << (any_seq ? ",\n" : "\n") << "    {\n      \"id\": " << seq.id
            << ",\n      \"salt\": " << seq.salt
            << ",\n      \"token_ids\": " << seq.token_ids
            << ",\n      \"layers\": [";
        any_seq = true;
        any_layer = false;
      },
      [&](const SnapshotSequence& seq, size_t layer) {
        out << (any_layer ? ",\n" : "\n") << "        "
            << Indented(LayerTable(snap, seq, layer).dump(2), 8);
        any_layer = true;
      });
  close_seq();
  out << (any_seq ? "\n  ]" : "]") << "\n}\n";
}

void TablesText(const Snapshot& snap, const TableFilter& filter,
                std::ostream& out) {
  WalkTables(
      snap, filter, out,
      [&](const SnapshotSequence& seq) {
        out << absl::StrFormat("seq %d  salt %d  token ids %d\n", seq.id,
                               seq.salt, seq.token_ids);
      },
      [&](const SnapshotSequence& seq, size_t layer) {
        out << LayerTableText(LayerTable(snap, seq, layer),
                              snap.config.block_tokens);
      });
}

}  // namespace kvpage::dump
