// kvpage-dump diff: what changed from one snapshot to the next.
#include <algorithm>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "tools/dump/dump.h"
#include "tools/dump/holdings.h"
#include "tools/dump/text.h"

namespace kvpage::dump {
namespace {

// Ids in use in `after` and not in `before` (allocated), and the reverse.
Json PoolDiff(const SnapshotPool& before, const SnapshotPool& after) {
  Json allocated = Json::array(), freed = Json::array();
  const size_t n = std::max(before.ref_counts.size(), after.ref_counts.size());
  for (size_t id = 0; id < n; ++id) {
    const bool was = RefCount(before, id) > 0, is = RefCount(after, id) > 0;
    if (!was && is) allocated.push_back(id);
    if (was && !is) freed.push_back(id);
  }
  return Json{{"allocated", allocated.size()},
              {"freed", freed.size()},
              {"allocated_ids", allocated},
              {"freed_ids", freed}};
}

// Compressed: a table entry (sequence, layer, logical block) hot in `a` and
// compressed in `b`; decompressed the other way. Spares do not count.
void CountCompresss(const Snapshot& a, const Snapshot& b, Json& out) {
  std::map<std::tuple<SeqId, size_t, int64_t>, BlockFormat> before;
  for (const SnapshotSequence& seq : a.sequences) {
    for (size_t layer = 0; layer < seq.layers.size(); ++layer) {
      for (const SnapshotEntry& entry : seq.layers[layer].entries) {
        if (entry.role != TableRole::kSpare) {
          before[{seq.id, layer, entry.logical}] = entry.format;
        }
      }
    }
  }
  int64_t compressed = 0, decompressed = 0;
  for (const SnapshotSequence& seq : b.sequences) {
    for (size_t layer = 0; layer < seq.layers.size(); ++layer) {
      for (const SnapshotEntry& entry : seq.layers[layer].entries) {
        auto it = before.find({seq.id, layer, entry.logical});
        if (it == before.end() || entry.role == TableRole::kSpare) continue;
        const bool was_hot = it->second == BlockFormat::kHot;
        const bool is_hot = entry.format == BlockFormat::kHot;
        compressed += was_hot && !is_hot;
        decompressed += !was_hot && is_hot;
      }
    }
  }
  out["blocks_compressed"] = compressed;
  out["blocks_decompressed"] = decompressed;
}

// Each sequence's length (its longest layer), by id.
std::map<SeqId, int64_t> Lengths(const Snapshot& snap) {
  std::map<SeqId, int64_t> lengths;
  for (const SnapshotSequence& seq : snap.sequences) {
    int64_t length = 0;
    for (const SnapshotLayer& layer : seq.layers) {
      length = std::max(length, layer.length);
    }
    lengths[seq.id] = length;
  }
  return lengths;
}

// Sequences added, removed, grown and shrunk.
Json SequenceChanges(const Snapshot& a, const Snapshot& b) {
  const std::map<SeqId, int64_t> before = Lengths(a), after = Lengths(b);
  Json added = Json::array(), removed = Json::array(), grown = Json::array(),
       shrunk = Json::array();
  for (const auto& [id, length] : after) {
    auto it = before.find(id);
    if (it == before.end()) {
      added.push_back({{"id", id}, {"length", length}});
    } else if (length != it->second) {
      (length > it->second ? grown : shrunk)
          .push_back({{"id", id}, {"from", it->second}, {"to", length}});
    }
  }
  for (const auto& [id, length] : before) {
    if (!after.contains(id))
      removed.push_back({{"id", id}, {"length", length}});
  }
  return {{"added", added},
          {"removed", removed},
          {"grown", grown},
          {"shrunk", shrunk}};
}

// The statistics that differ: from, to, and for integers the change.
Json StatsChanges(const CacheStats& a, const CacheStats& b) {
  Json changes = Json::object();
  const Json before = StatsJson(a), after = StatsJson(b);
  for (const auto& [key, value] : after.items()) {
    if (before[key] == value) continue;
    Json change = {{"from", before[key]}, {"to", value}};
    if (value.is_number_integer()) {
      // Modulo 2^64: the fields come from files and may be anything.
      change["delta"] = static_cast<int64_t>(
          static_cast<uint64_t>(value.get<int64_t>()) -
          static_cast<uint64_t>(before[key].get<int64_t>()));
    }
    changes[key] = std::move(change);
  }
  return changes;
}

// " (3 4 5)": up to 16 ids, then "...".
std::string IdList(const Json& ids) {
  std::vector<std::string> parts;
  for (const Json& id : ids) {
    if (parts.size() == 16) {
      parts.push_back("...");
      break;
    }
    parts.push_back(Num(id));
  }
  return parts.empty() ? std::string() : " (" + absl::StrJoin(parts, " ") + ")";
}

std::string SequenceChangesText(const Json& sequences) {
  std::string out;
  for (const Json& x : sequences["added"]) {
    out += absl::StrFormat("seq %s added (length %s)\n", Num(x["id"]),
                           Num(x["length"]));
  }
  for (const Json& x : sequences["removed"]) {
    out += absl::StrFormat("seq %s removed (length %s)\n", Num(x["id"]),
                           Num(x["length"]));
  }
  for (const char* kind : {"grown", "shrunk"}) {
    for (const Json& x : sequences[kind]) {
      out += absl::StrFormat("seq %s %s %s -> %s\n", Num(x["id"]), kind,
                             Num(x["from"]), Num(x["to"]));
    }
  }
  return out;
}

}  // namespace

Json Diff(const Snapshot& a, const Snapshot& b) {
  Json j;
  j["schema_version"] = kSchemaVersion;
  j["config_changed"] = !(a.config == b.config);
  j["hot_blocks"] = PoolDiff(a.hot, b.hot);
  j["quant_cells"] = PoolDiff(a.quant, b.quant);
  CountCompresss(a, b, j);
  j["sequences"] = SequenceChanges(a, b);
  j["stats"] = StatsChanges(a.stats, b.stats);
  return j;
}

std::string DiffText(const Json& model) {
  std::string out;
  if (model["config_changed"].get<bool>()) out += "config changed\n";
  const Json& hot = model["hot_blocks"];
  const Json& quant = model["quant_cells"];
  out += KeyValues(
      {{"blocks allocated",
        absl::StrCat(Num(hot["allocated"]), IdList(hot["allocated_ids"]))},
       {"blocks freed",
        absl::StrCat(Num(hot["freed"]), IdList(hot["freed_ids"]))},
       {"blocks compressed", Num(model["blocks_compressed"])},
       {"blocks decompressed", Num(model["blocks_decompressed"])},
       {"quantized cells",
        absl::StrFormat("%s allocated, %s freed", Num(quant["allocated"]),
                        Num(quant["freed"]))}},
      "");
  out += SequenceChangesText(model["sequences"]);
  if (!model["stats"].empty()) {
    out += "stats\n";
    std::vector<std::vector<std::string>> rows = {{"field", "from", "to"}};
    for (const auto& [key, change] : model["stats"].items()) {
      rows.push_back({key, Num(change["from"]), Num(change["to"])});
    }
    out += Columns(rows, "  ");
  }
  return out;
}

}  // namespace kvpage::dump
