#include "tools/dump/dump.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "kvpage/stats_fields.h"

namespace kvpage::dump {
namespace {

// ---- The one walk: who holds each block and slot ----

struct Holder {
  bool prefix = false;
  SeqId seq = 0;
  int layer = 0;
  int64_t logical = 0;  // table entries (-1: a ring's spare)
  uint64_t hash = 0;    // prefix entries
};

std::string HolderName(const Holder& h) {
  if (h.prefix)
    return absl::StrFormat("prefix %016x layer %d", h.hash, h.layer);
  if (h.logical < 0)
    return absl::StrFormat("seq %d layer %d spare", h.seq, h.layer);
  return absl::StrFormat("seq %d layer %d block %d", h.seq, h.layer, h.logical);
}

struct Holdings {
  std::vector<std::vector<Holder>> hot, quant;
  std::vector<uint8_t> quant_v_part;   // slot is the V part of an int8 block
  std::vector<int32_t> hot_visible;    // most visible slots any table shows
  std::vector<int32_t> quant_visible;  // the same per block's first slot;
                                       // -1 where no block starts
  int64_t dangling = 0;                // entries whose id is out of range
};

Holdings Walk(const Snapshot& snap) {
  Holdings h;
  h.hot.resize(snap.hot.ref_counts.size());
  h.quant.resize(snap.quant.ref_counts.size());
  h.quant_v_part.assign(snap.quant.ref_counts.size(), 0);
  h.hot_visible.assign(snap.hot.ref_counts.size(), 0);
  h.quant_visible.assign(snap.quant.ref_counts.size(), -1);
  for (const SnapshotSequence& s : snap.sequences) {
    for (size_t layer = 0; layer < s.layers.size(); ++layer) {
      for (const SnapshotEntry& e : s.layers[layer].entries) {
        const Holder holder{.seq = s.id,
                            .layer = static_cast<int>(layer),
                            .logical = e.logical};
        const bool hot = e.format == BlockFormat::kHot;
        auto& pool = hot ? h.hot : h.quant;
        if (e.id >= pool.size()) {
          ++h.dangling;
          continue;
        }
        pool[e.id].push_back(holder);
        if (hot) {
          h.hot_visible[e.id] = std::max(h.hot_visible[e.id], e.visible);
          continue;
        }
        h.quant_visible[e.id] = std::max(h.quant_visible[e.id], e.visible);
        const uint32_t partner = e.id < snap.quant.partners.size()
                                     ? snap.quant.partners[e.id]
                                     : kSnapshotNoBlock;
        if (partner < h.quant.size()) {
          h.quant[partner].push_back(holder);
          h.quant_v_part[partner] = 1;
        }
      }
    }
  }
  for (const SnapshotPrefixEntry& p : snap.prefix) {
    for (size_t layer = 0; layer < p.blocks.size(); ++layer) {
      const uint32_t id = p.blocks[layer];
      if (id == kSnapshotNoBlock) continue;
      if (id >= h.hot.size()) {
        ++h.dangling;
        continue;
      }
      h.hot[id].push_back(
          {.prefix = true, .layer = static_cast<int>(layer), .hash = p.hash});
    }
  }
  return h;
}

uint32_t RefCount(const SnapshotPool& pool, size_t id) {
  return id < pool.ref_counts.size() ? pool.ref_counts[id] : 0;
}

// free: no reference; cached: only the prefix cache holds it (evictable);
// shared: tables of more than one sequence hold it; used: one sequence.
std::string HotState(const Snapshot& snap, const Holdings& h, size_t id) {
  if (RefCount(snap.hot, id) == 0) return "free";
  const SeqId* first = nullptr;  // the first sequence holding it
  bool shared = false;           // and another one
  for (const Holder& holder : h.hot[id]) {
    if (holder.prefix) continue;
    if (first == nullptr) {
      first = &holder.seq;
    } else {
      shared |= holder.seq != *first;
    }
  }
  if (first == nullptr) return h.hot[id].empty() ? "used" : "cached";
  return shared ? "shared" : "used";
}

std::string QuantState(const Snapshot& snap, const Holdings& h, size_t id) {
  if (RefCount(snap.quant, id) == 0) return "free";
  if (h.quant_v_part[id]) return "int8_v";
  const uint8_t bits = id < snap.quant.bits.size() ? snap.quant.bits[id] : 0;
  return bits == 8 ? "int8" : bits == 4 ? "int4" : "used";
}

std::string FormatName(BlockFormat f, DType dtype) {
  switch (f) {
    case BlockFormat::kHot:
      return std::string(DTypeName(dtype));
    case BlockFormat::kInt8:
      return "int8";
    case BlockFormat::kInt4:
      return "int4";
  }
  return "?";
}

std::string RoleName(TableRole r) {
  switch (r) {
    case TableRole::kSink:
      return "sink";
    case TableRole::kWindow:
      return "window";
    case TableRole::kSpare:
      return "spare";
  }
  return "?";
}

// The policy of each layer, as the cache resolves it.
LayerPolicy PolicyOf(const CacheConfig& c, int layer) {
  for (const LayerPolicy& p : c.layer_policies) {
    if (p.layer == layer) return p;
  }
  return {.layer = layer,
          .overflow = c.overflow,
          .max_seq_len = c.max_seq_len,
          .sink_tokens = c.sink_tokens,
          .truncate_to = c.truncate_to};
}

Json StatsJson(const CacheStats& stats) {
  Json j;
  ForEachStatsField(stats,
                    [&j](const char* name, auto value) { j[name] = value; });
  return j;
}

Json ConfigJson(const CacheConfig& c) {
  Json j;
  j["num_layers"] = c.num_layers;
  j["num_kv_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["dtype"] = DTypeName(c.dtype);
  j["block_tokens"] = c.block_tokens;
  j["num_blocks"] = c.num_blocks;
  j["max_seq_len"] = c.max_seq_len;
  j["overflow"] = OverflowPolicyName(c.overflow);
  j["sink_tokens"] = c.sink_tokens;
  j["truncate_to"] = c.truncate_to;
  j["layer_policies"] = Json::array();
  for (const LayerPolicy& p : c.layer_policies) {
    j["layer_policies"].push_back({{"layer", p.layer},
                                   {"overflow", OverflowPolicyName(p.overflow)},
                                   {"max_seq_len", p.max_seq_len},
                                   {"sink_tokens", p.sink_tokens},
                                   {"truncate_to", p.truncate_to}});
  }
  const CompressionConfig& q = c.compression;
  j["compression"] = {{"enabled", q.enabled},
                      {"bits", static_cast<int>(q.bits)},
                      {"group_size", q.group_size},
                      {"hot_tokens", q.hot_tokens},
                      {"quant_blocks", q.quant_blocks},
                      {"auto_compress", q.auto_compress},
                      {"max_rel_error", q.max_rel_error},
                      {"measure_error", q.measure_error}};
  j["prefault"] = c.prefault;
  j["huge_pages"] = c.huge_pages;
  return j;
}

// A number as text: integers plainly, fractions with 4 significant digits.
std::string Num(const Json& v) {
  if (v.is_null()) return "-";
  if (v.is_number_float()) return absl::StrFormat("%.4g", v.get<double>());
  if (v.is_number_unsigned()) return absl::StrCat(v.get<uint64_t>());
  if (v.is_number_integer()) return absl::StrCat(v.get<int64_t>());
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

std::string Bytes(int64_t b) {
  if (b >= (int64_t{1} << 30)) {
    return absl::StrFormat("%.2f GiB", static_cast<double>(b) / (1 << 30));
  }
  if (b >= (1 << 20)) {
    return absl::StrFormat("%.2f MiB", static_cast<double>(b) / (1 << 20));
  }
  if (b >= (1 << 10)) {
    return absl::StrFormat("%.2f KiB", static_cast<double>(b) / (1 << 10));
  }
  return absl::StrFormat("%d B", b);
}

// Lines of "key  value" with the keys padded to one width.
std::string KeyValues(
    const std::vector<std::pair<std::string, std::string>>& kv,
    const std::string& indent = "  ") {
  size_t width = 0;
  for (const auto& [k, v] : kv) width = std::max(width, k.size());
  std::string out;
  for (const auto& [k, v] : kv) {
    absl::StrAppend(&out, indent, k, std::string(width - k.size() + 2, ' '), v,
                    "\n");
  }
  return out;
}

// Rows padded into columns; the first row is the header.
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

}  // namespace

// ---- summary ----

Json Summary(const Snapshot& snap) {
  const Holdings h = Walk(snap);
  const CacheConfig& c = snap.config;
  Json j;
  j["schema_version"] = kSchemaVersion;
  j["snapshot_version"] = snap.version;
  j["token_data"] = snap.has_token_data;
  j["config"] = ConfigJson(c);

  std::map<std::string, int64_t> hot_states;
  int64_t held_slots = 0, visible_slots = 0, spare_blocks = 0;
  for (size_t id = 0; id < h.hot.size(); ++id) {
    const std::string state = HotState(snap, h, id);
    ++hot_states[state];
    if (state == "used" || state == "shared") {
      held_slots += c.block_tokens;
      visible_slots += h.hot_visible[id];
    }
  }
  std::map<std::string, int64_t> quant_states;
  for (size_t id = 0; id < h.quant.size(); ++id) {
    ++quant_states[QuantState(snap, h, id)];
    if (h.quant_visible[id] >= 0) {  // a repacked block starts here
      held_slots += c.block_tokens;
      visible_slots += h.quant_visible[id];
    }
  }
  int64_t tokens = 0, longest = 0, evicted = 0, quant_entries = 0;
  for (const SnapshotSequence& s : snap.sequences) {
    for (const SnapshotLayer& l : s.layers) {
      longest = std::max(longest, l.length);
      evicted = static_cast<int64_t>(static_cast<uint64_t>(evicted) +
                                     static_cast<uint64_t>(l.evicted));
      for (const SnapshotEntry& e : l.entries) {
        tokens += e.visible;
        spare_blocks += e.role == TableRole::kSpare;
        quant_entries += e.format != BlockFormat::kHot;
      }
    }
  }
  const int64_t used = hot_states["used"] + hot_states["shared"];
  // Blocks of idle prefix entries: what an allocation may evict.
  int64_t evictable = 0;
  for (const SnapshotPrefixEntry& p : snap.prefix) {
    if (p.lru_rank < 0) continue;
    for (uint32_t id : p.blocks) evictable += id != kSnapshotNoBlock;
  }
  j["hot_pool"] = {
      {"capacity", snap.hot.capacity},
      {"block_bytes", snap.hot.unit_bytes},
      {"used", used},
      {"shared", hot_states["shared"]},
      {"cached", hot_states["cached"]},
      {"cached_evictable", evictable},
      {"free", hot_states["free"]},
      {"utilization", snap.hot.capacity == 0
                          ? 0.0
                          : static_cast<double>(used) /
                                static_cast<double>(snap.hot.capacity)},
      {"bytes_in_use", (used + hot_states["cached"]) * snap.hot.unit_bytes}};
  if (c.compression.enabled) {
    j["quant_pool"] = {
        {"capacity", snap.quant.capacity},
        {"slot_bytes", snap.quant.unit_bytes},
        {"int8_blocks", quant_states["int8"]},
        {"int4_blocks", quant_states["int4"]},
        {"int8_v_slots", quant_states["int8_v"]},
        {"free", quant_states["free"]},
        {"bytes_in_use",
         (snap.quant.capacity - quant_states["free"]) * snap.quant.unit_bytes}};
  } else {
    j["quant_pool"] = nullptr;
  }
  j["sequences"] = {{"count", snap.sequences.size()},
                    {"visible_tokens", tokens},
                    {"longest", longest}};
  // Internal waste: slots of blocks the tables hold that no table shows
  // (partly filled last blocks, evicted slots of partly evicted blocks, a
  // ring's spares). A shared block counts once.
  j["waste"] = {
      {"slots_held", held_slots},
      {"slots_visible", visible_slots},
      {"slots_wasted", held_slots - visible_slots},
      {"waste_fraction", held_slots == 0
                             ? 0.0
                             : static_cast<double>(held_slots - visible_slots) /
                                   static_cast<double>(held_slots)}};
  j["policy"] = {
      {"evicted_tokens", evicted},
      {"blocks_released_by_policy", snap.stats.blocks_released_by_policy},
      {"blocks_reused_by_ring", snap.stats.blocks_reused_by_ring},
      {"spare_blocks", spare_blocks}};
  const CacheStats& s = snap.stats;
  j["compression"] = {{"enabled", c.compression.enabled},
                      {"table_entries_repacked", quant_entries},
                      {"bytes_saved", s.bytes_saved},
                      {"bytes_per_token_hot", s.bytes_per_token_hot},
                      {"bytes_per_token_cold", s.bytes_per_token_cold},
                      {"max_quant_error", s.max_quant_error},
                      {"mean_quant_error", s.mean_quant_error},
                      {"compressions_applied", s.compressions_applied},
                      {"compressions_skipped", s.compressions_skipped},
                      {"decompressions", s.decompressions}};
  int64_t idle = 0;
  for (const SnapshotPrefixEntry& p : snap.prefix) idle += p.lru_rank >= 0;
  j["prefix_cache"] = {{"entries", snap.prefix.size()},
                       {"idle_entries", idle},
                       {"cached_blocks", hot_states["cached"]},
                       {"hits", s.hits},
                       {"misses", s.misses}};
  j["dangling_references"] = h.dangling;
  j["stats"] = StatsJson(s);
  return j;
}

std::string SummaryText(const Json& m) {
  const Json& c = m["config"];
  std::string out = absl::StrFormat(
      "kvpage snapshot v%s%s\n\nconfig\n", Num(m["snapshot_version"]),
      m["token_data"].get<bool>() ? " (with token data)" : "");
  out += KeyValues({
      {"shape", absl::StrFormat("%s layers x %s kv-heads x %s head_dim, %s",
                                Num(c["num_layers"]), Num(c["num_kv_heads"]),
                                Num(c["head_dim"]), Num(c["dtype"]))},
      {"blocks", absl::StrFormat("%s of %s tokens", Num(c["num_blocks"]),
                                 Num(c["block_tokens"]))},
      {"policy", absl::StrFormat("%s, max_seq_len %s, sinks %s, truncate_to %s",
                                 Num(c["overflow"]), Num(c["max_seq_len"]),
                                 Num(c["sink_tokens"]), Num(c["truncate_to"]))},
  });
  for (const Json& p : c["layer_policies"]) {
    out += absl::StrFormat("    layer %s: %s, max_seq_len %s, sinks %s\n",
                           Num(p["layer"]), Num(p["overflow"]),
                           Num(p["max_seq_len"]), Num(p["sink_tokens"]));
  }
  const Json& hp = m["hot_pool"];
  out += "\nhot pool\n";
  out += KeyValues({
      {"capacity", absl::StrFormat("%s blocks of %s", Num(hp["capacity"]),
                                   Bytes(hp["block_bytes"].get<int64_t>()))},
      {"used", absl::StrFormat("%s (%s shared by sequences)", Num(hp["used"]),
                               Num(hp["shared"]))},
      {"cached",
       absl::StrFormat("%s (held by the prefix cache only; %s "
                       "evictable)",
                       Num(hp["cached"]), Num(hp["cached_evictable"]))},
      {"free", Num(hp["free"])},
      {"utilization",
       absl::StrFormat("%.1f%%", 100 * hp["utilization"].get<double>())},
      {"in use", Bytes(hp["bytes_in_use"].get<int64_t>())},
  });
  if (!m["quant_pool"].is_null()) {
    const Json& qp = m["quant_pool"];
    out += "\nquantized pool\n";
    out += KeyValues({
        {"capacity", absl::StrFormat("%s slots of %s", Num(qp["capacity"]),
                                     Bytes(qp["slot_bytes"].get<int64_t>()))},
        {"blocks", absl::StrFormat(
                       "%s int8 (+%s V slots), %s int4", Num(qp["int8_blocks"]),
                       Num(qp["int8_v_slots"]), Num(qp["int4_blocks"]))},
        {"free", Num(qp["free"])},
        {"in use", Bytes(qp["bytes_in_use"].get<int64_t>())},
    });
  }
  const Json& w = m["waste"];
  out += "\nsequences and waste\n";
  out += KeyValues({
      {"sequences",
       absl::StrFormat("%s, longest %s tokens", Num(m["sequences"]["count"]),
                       Num(m["sequences"]["longest"]))},
      {"visible tokens", Num(m["sequences"]["visible_tokens"])},
      {"internal waste",
       absl::StrFormat("%s of %s held slots (%.1f%%)", Num(w["slots_wasted"]),
                       Num(w["slots_held"]),
                       100 * w["waste_fraction"].get<double>())},
  });
  const Json& p = m["policy"];
  out += "\npolicies\n";
  out += KeyValues({
      {"evicted tokens", Num(p["evicted_tokens"])},
      {"blocks released", Num(p["blocks_released_by_policy"])},
      {"ring reuses", Num(p["blocks_reused_by_ring"])},
      {"ring spares", Num(p["spare_blocks"])},
  });
  const Json& q = m["compression"];
  if (q["enabled"].get<bool>()) {
    out += "\ncompression\n";
    out += KeyValues({
        {"repacked entries", Num(q["table_entries_repacked"])},
        {"bytes saved", Bytes(q["bytes_saved"].get<int64_t>())},
        {"bytes per token",
         absl::StrFormat("%s hot, %s cold", Num(q["bytes_per_token_hot"]),
                         Num(q["bytes_per_token_cold"]))},
        {"error (rel. MSE)",
         absl::StrFormat("max %s, mean %s", Num(q["max_quant_error"]),
                         Num(q["mean_quant_error"]))},
        {"repacks", absl::StrFormat("%s applied, %s skipped, %s undone",
                                    Num(q["compressions_applied"]),
                                    Num(q["compressions_skipped"]),
                                    Num(q["decompressions"]))},
    });
  }
  const Json& pc = m["prefix_cache"];
  out += "\nprefix cache\n";
  out += KeyValues({
      {"entries", absl::StrFormat("%s (%s idle)", Num(pc["entries"]),
                                  Num(pc["idle_entries"]))},
      {"cached blocks", Num(pc["cached_blocks"])},
      {"lookups", absl::StrFormat("%s hits, %s misses", Num(pc["hits"]),
                                  Num(pc["misses"]))},
  });
  if (m["dangling_references"].get<int64_t>() > 0) {
    out += absl::StrFormat(
        "\n%s table or prefix entries point outside their pool (run verify)\n",
        Num(m["dangling_references"]));
  }
  out += "\nstats\n";
  std::vector<std::pair<std::string, std::string>> stats;
  for (const auto& [k, v] : m["stats"].items()) stats.push_back({k, Num(v)});
  out += KeyValues(stats);
  return out;
}

// ---- tables ----

namespace {

// One layer's block table: the unit `tables` walks and renders, so that its
// memory is the model of one table, never the whole file's.
Json LayerTable(const Snapshot& snap, const SnapshotSequence& s, size_t layer) {
  const CacheConfig& c = snap.config;
  const int64_t bt = c.block_tokens;
  const SnapshotLayer& l = s.layers[layer];
  const LayerPolicy p = PolicyOf(c, static_cast<int>(layer));
  Json entries = Json::array();
  int64_t visible = 0;
  for (const SnapshotEntry& e : l.entries) {
    visible += e.visible;
    const bool hot = e.format == BlockFormat::kHot;
    const SnapshotPool& pool = hot ? snap.hot : snap.quant;
    Json entry = {{"role", RoleName(e.role)},
                  {"logical", e.logical},
                  {"pool", hot ? "hot" : "quant"},
                  {"format", FormatName(e.format, c.dtype)},
                  {"id", e.id}};
    entry["ref_count"] = e.id < pool.ref_counts.size()
                             ? Json(pool.ref_counts[e.id])
                             : Json(nullptr);
    entry["visible"] = e.visible;
    entry["begin_slot"] = e.begin_slot;
    entry["end_slot"] = e.end_slot;
    // Positions of the first and last visible slot (null for spares and
    // for logical blocks too large to be real).
    const bool sane = e.visible > 0 && e.logical >= 0 &&
                      e.logical < (int64_t{1} << 62) / bt &&
                      e.begin_slot >= 0 && e.end_slot > e.begin_slot &&
                      e.end_slot <= bt;
    entry["first_position"] =
        sane ? Json(e.logical * bt + e.begin_slot) : Json(nullptr);
    entry["last_position"] =
        sane ? Json(e.logical * bt + e.end_slot - 1) : Json(nullptr);
    entries.push_back(std::move(entry));
  }
  return {{"layer", layer},
          {"overflow", OverflowPolicyName(p.overflow)},
          {"length", l.length},
          {"window_start", l.window_start},
          {"max_length", l.max_length},
          {"visible", visible},
          {"evicted", l.evicted},
          {"entries", std::move(entries)}};
}

// The tables `filter` selects, in file order: `on_seq(s)` before the layers
// of each sequence, `on_layer(s, layer)` for each layer; the walk stops once
// `out` fails.
template <typename OnSeq, typename OnLayer>
void WalkTables(const Snapshot& snap, const TableFilter& filter,
                std::ostream& out, OnSeq on_seq, OnLayer on_layer) {
  for (const SnapshotSequence& s : snap.sequences) {
    if (filter.seq && *filter.seq != s.id) continue;
    if (!out) return;
    on_seq(s);
    for (size_t layer = 0; layer < s.layers.size(); ++layer) {
      if (filter.layer && *filter.layer != static_cast<int>(layer)) continue;
      if (!out) return;
      on_layer(s, layer);
    }
  }
}

// `text` with `spaces` more indentation on every line but the first.
std::string Indented(const std::string& text, int spaces) {
  return absl::StrReplaceAll(
      text, {{"\n", "\n" + std::string(static_cast<size_t>(spaces), ' ')}});
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
      [&](const SnapshotSequence& s) {
        close_seq();
        out << (any_seq ? ",\n" : "\n") << "    {\n      \"id\": " << s.id
            << ",\n      \"salt\": " << s.salt
            << ",\n      \"token_ids\": " << s.token_ids
            << ",\n      \"layers\": [";
        any_seq = true;
        any_layer = false;
      },
      [&](const SnapshotSequence& s, size_t layer) {
        out << (any_layer ? ",\n" : "\n") << "        "
            << Indented(LayerTable(snap, s, layer).dump(2), 8);
        any_layer = true;
      });
  close_seq();
  out << (any_seq ? "\n  ]" : "]") << "\n}\n";
}

void TablesText(const Snapshot& snap, const TableFilter& filter,
                std::ostream& out) {
  const int64_t bt = snap.config.block_tokens;
  WalkTables(
      snap, filter, out,
      [&](const SnapshotSequence& s) {
        out << absl::StrFormat("seq %d  salt %d  token ids %d\n", s.id, s.salt,
                               s.token_ids);
      },
      [&](const SnapshotSequence& s, size_t layer) {
        const Json l = LayerTable(snap, s, layer);
        out << absl::StrFormat(
            "  layer %s  %s  length %s  visible %s  window start %s  "
            "evicted %s\n",
            Num(l["layer"]), Num(l["overflow"]), Num(l["length"]),
            Num(l["visible"]), Num(l["window_start"]), Num(l["evicted"]));
        std::vector<std::vector<std::string>> rows = {
            {"role", "logical", "pool", "block", "format", "refs", "valid",
             "positions"}};
        for (const Json& e : l["entries"]) {
          const std::string positions =
              e["first_position"].is_null()
                  ? "-"
                  : absl::StrCat(Num(e["first_position"]), "-",
                                 Num(e["last_position"]));
          rows.push_back(
              {Num(e["role"]),
               e["logical"].get<int64_t>() < 0 ? "-" : Num(e["logical"]),
               Num(e["pool"]), Num(e["id"]), Num(e["format"]),
               Num(e["ref_count"]), absl::StrCat(Num(e["visible"]), "/", bt),
               positions});
        }
        out << Columns(rows, "    ");
      });
}

// ---- blocks ----

namespace {

// One row of `blocks`: a hot block or a quantized slot.
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
  explicit BlockRows(const Snapshot& snap) : snap_(snap), h_(Walk(snap)) {}

  // Pool `quant` (false: hot): its rows, its reference counts.
  [[nodiscard]] size_t size(bool quant) const {
    return (quant ? h_.quant : h_.hot).size();
  }
  [[nodiscard]] std::string State(bool quant, size_t id) const {
    return quant ? QuantState(snap_, h_, id) : HotState(snap_, h_, id);
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
    for (const Holder& holder : (quant ? h_.quant : h_.hot)[id]) {
      row.owners.push_back(HolderName(holder));
    }
  }

 private:
  const Snapshot& snap_;
  const Holdings h_;
};

constexpr const char* kBlockPools[] = {"hot", "quant"};

size_t Digits(uint64_t v) {
  size_t n = 1;
  while (v >= 10) {
    v /= 10;
    ++n;
  }
  return n;
}

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
    const int state_w = static_cast<int>(state_width + 2);
    const int refs_width =
        static_cast<int>(std::max<size_t>(4, Digits(refs_max)) + 2);
    out << absl::StreamFormat("  %-*s%-*s%-*sowners\n", id_width, "id", state_w,
                              "state", refs_width, "refs");
    for (size_t id = 0; id < n && out; ++id) {
      rows.Row(quant, id, row);
      out << absl::StreamFormat(
          "  %-*d%-*s%-*d%s\n", id_width, row.id, state_w, row.state,
          refs_width, row.ref_count,
          row.owners.empty() ? "-" : absl::StrJoin(row.owners, ", "));
    }
  }
}

// ---- verify ----

Json Verify(const Snapshot& snap) {
  Json j;
  j["schema_version"] = kSchemaVersion;
  const std::vector<SnapshotViolation> found = VerifySnapshot(snap);
  j["ok"] = found.empty();
  j["violations"] = Json::array();
  for (const SnapshotViolation& v : found) {
    j["violations"].push_back({{"check", v.check}, {"message", v.message}});
  }
  return j;
}

std::string VerifyText(const Json& m) {
  std::string out;
  for (const Json& v : m["violations"]) {
    absl::StrAppend(&out, Num(v["check"]), ": ", Num(v["message"]), "\n");
  }
  return out;
}

// ---- diff ----

Json Diff(const Snapshot& a, const Snapshot& b) {
  Json j;
  j["schema_version"] = kSchemaVersion;
  j["config_changed"] = !(a.config == b.config);
  auto pool_diff = [](const SnapshotPool& pa, const SnapshotPool& pb) {
    Json allocated = Json::array(), freed = Json::array();
    const size_t n = std::max(pa.ref_counts.size(), pb.ref_counts.size());
    for (size_t id = 0; id < n; ++id) {
      const bool was = RefCount(pa, id) > 0, is = RefCount(pb, id) > 0;
      if (!was && is) allocated.push_back(id);
      if (was && !is) freed.push_back(id);
    }
    return Json{{"allocated", allocated.size()},
                {"freed", freed.size()},
                {"allocated_ids", allocated},
                {"freed_ids", freed}};
  };
  j["hot_blocks"] = pool_diff(a.hot, b.hot);
  j["quant_slots"] = pool_diff(a.quant, b.quant);
  // Compressed: a table entry (sequence, layer, logical block) hot in a and
  // repacked in b; decompressed the other way.
  std::map<std::tuple<SeqId, size_t, int64_t>, BlockFormat> before;
  for (const SnapshotSequence& s : a.sequences) {
    for (size_t layer = 0; layer < s.layers.size(); ++layer) {
      for (const SnapshotEntry& e : s.layers[layer].entries) {
        if (e.role != TableRole::kSpare) {
          before[{s.id, layer, e.logical}] = e.format;
        }
      }
    }
  }
  int64_t compressed = 0, decompressed = 0;
  for (const SnapshotSequence& s : b.sequences) {
    for (size_t layer = 0; layer < s.layers.size(); ++layer) {
      for (const SnapshotEntry& e : s.layers[layer].entries) {
        auto it = before.find({s.id, layer, e.logical});
        if (it == before.end() || e.role == TableRole::kSpare) continue;
        const bool was_hot = it->second == BlockFormat::kHot;
        const bool is_hot = e.format == BlockFormat::kHot;
        compressed += was_hot && !is_hot;
        decompressed += !was_hot && is_hot;
      }
    }
  }
  j["blocks_compressed"] = compressed;
  j["blocks_decompressed"] = decompressed;
  auto length = [](const SnapshotSequence& s) {
    int64_t n = 0;
    for (const SnapshotLayer& l : s.layers) n = std::max(n, l.length);
    return n;
  };
  std::map<SeqId, int64_t> la, lb;
  for (const SnapshotSequence& s : a.sequences) la[s.id] = length(s);
  for (const SnapshotSequence& s : b.sequences) lb[s.id] = length(s);
  Json added = Json::array(), removed = Json::array(), grown = Json::array(),
       shrunk = Json::array();
  for (const auto& [id, n] : lb) {
    auto it = la.find(id);
    if (it == la.end()) {
      added.push_back({{"id", id}, {"length", n}});
    } else if (n != it->second) {
      (n > it->second ? grown : shrunk)
          .push_back({{"id", id}, {"from", it->second}, {"to", n}});
    }
  }
  for (const auto& [id, n] : la) {
    if (!lb.contains(id)) removed.push_back({{"id", id}, {"length", n}});
  }
  j["sequences"] = {{"added", added},
                    {"removed", removed},
                    {"grown", grown},
                    {"shrunk", shrunk}};
  Json stats = Json::object();
  const Json sa = StatsJson(a.stats), sb = StatsJson(b.stats);
  for (const auto& [k, v] : sb.items()) {
    if (sa[k] == v) continue;
    Json change = {{"from", sa[k]}, {"to", v}};
    if (v.is_number_integer()) {
      // Modulo 2^64: the fields come from files and may be anything.
      change["delta"] =
          static_cast<int64_t>(static_cast<uint64_t>(v.get<int64_t>()) -
                               static_cast<uint64_t>(sa[k].get<int64_t>()));
    }
    stats[k] = std::move(change);
  }
  j["stats"] = std::move(stats);
  return j;
}

std::string DiffText(const Json& m) {
  std::string out;
  if (m["config_changed"].get<bool>()) out += "config changed\n";
  auto ids = [](const Json& list) {
    std::vector<std::string> parts;
    for (const Json& id : list) {
      if (parts.size() == 16) {
        parts.push_back("...");
        break;
      }
      parts.push_back(Num(id));
    }
    return parts.empty() ? std::string()
                         : " (" + absl::StrJoin(parts, " ") + ")";
  };
  const Json& hot = m["hot_blocks"];
  const Json& quant = m["quant_slots"];
  out += KeyValues(
      {{"blocks allocated",
        absl::StrCat(Num(hot["allocated"]), ids(hot["allocated_ids"]))},
       {"blocks freed", absl::StrCat(Num(hot["freed"]), ids(hot["freed_ids"]))},
       {"blocks compressed", Num(m["blocks_compressed"])},
       {"blocks decompressed", Num(m["blocks_decompressed"])},
       {"quantized slots",
        absl::StrFormat("%s allocated, %s freed", Num(quant["allocated"]),
                        Num(quant["freed"]))}},
      "");
  const Json& s = m["sequences"];
  for (const Json& x : s["added"]) {
    out += absl::StrFormat("seq %s added (length %s)\n", Num(x["id"]),
                           Num(x["length"]));
  }
  for (const Json& x : s["removed"]) {
    out += absl::StrFormat("seq %s removed (length %s)\n", Num(x["id"]),
                           Num(x["length"]));
  }
  for (const char* kind : {"grown", "shrunk"}) {
    for (const Json& x : s[kind]) {
      out += absl::StrFormat("seq %s %s %s -> %s\n", Num(x["id"]), kind,
                             Num(x["from"]), Num(x["to"]));
    }
  }
  if (!m["stats"].empty()) {
    out += "stats\n";
    std::vector<std::vector<std::string>> rows = {{"field", "from", "to"}};
    for (const auto& [k, v] : m["stats"].items()) {
      rows.push_back({k, Num(v["from"]), Num(v["to"])});
    }
    out += Columns(rows, "  ");
  }
  return out;
}

// ---- map ----

namespace {

constexpr const char* kFree = "#e6e6e6";
constexpr const char* kCached = "#f0c05a";
constexpr const char* kShared = "#5e3c99";
constexpr const char* kInt8 = "#2166ac";
constexpr const char* kInt8V = "#67a9cf";
constexpr const char* kInt4 = "#1b9e77";
constexpr const char* kUnknown = "#000000";
// One colour per sequence, cycled (none of them close to the state colours).
constexpr const char* kSequenceColours[] = {
    "#e15759", "#59a14f", "#f28e2b", "#76b7b2", "#b07aa1",
    "#ff9da7", "#9c755f", "#8cd17d", "#d37295", "#a0cbe8"};
constexpr int kSequenceColourCount = 10;

std::string Escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    switch (ch) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += ch;
    }
  }
  return out;
}

// A cell's tooltip: "block 4: used, refs 2; seq 3 layer 1 block 1; ...".
std::string CellTitle(const char* unit, size_t id, const std::string& state,
                      uint32_t refs, const std::vector<Holder>& holders) {
  std::string out =
      absl::StrFormat("%s %d: %s, refs %d", unit, id, state, refs);
  for (const Holder& holder : holders) {
    absl::StrAppend(&out, "; ", HolderName(holder));
  }
  return out;
}

}  // namespace

void WriteMapSvg(const Snapshot& snap, std::ostream& out, Json* model) {
  const Holdings h = Walk(snap);
  std::map<SeqId, int> colour_of;
  for (const SnapshotSequence& s : snap.sequences) {
    const int next = static_cast<int>(colour_of.size());
    colour_of.emplace(s.id, next % kSequenceColourCount);
  }
  constexpr int kCell = 12, kGap = 1, kMargin = 16, kLegendWidth = 260;
  auto columns_for = [](size_t n) {
    const int c = static_cast<int>(std::ceil(std::sqrt(2.0 * n)));
    return std::clamp(c, 16, 128);
  };
  // The layout first (grids stacked on the left, the legend on the right),
  // so that the cells can be written as the walk reaches them.
  struct Grid {
    std::string title;
    bool quant = false;
    size_t cells = 0;
    int cols = 0, top = 0;  // top: the title's; the cells start 20 below
  };
  std::vector<Grid> grids = {
      {.title = absl::StrFormat("hot pool: %d blocks", h.hot.size()),
       .cells = h.hot.size()}};
  if (!h.quant.empty()) {
    grids.push_back(
        {.title = absl::StrFormat("quantized pool: %d slots", h.quant.size()),
         .quant = true,
         .cells = h.quant.size()});
  }
  int y = kMargin;
  int width = 0;
  for (Grid& g : grids) {
    g.cols = columns_for(g.cells);
    g.top = y;
    const int rows = static_cast<int>((g.cells + g.cols - 1) / g.cols);
    width = std::max(width, g.cols * (kCell + kGap));
    y += 20 + rows * (kCell + kGap) + kMargin;
  }
  std::vector<std::pair<std::string, std::string>> legend = {
      {kFree, "free"},
      {kCached, "cached (prefix cache only)"},
      {kShared, "shared by sequences"}};
  int listed = 0;
  for (const auto& [seq, colour] : colour_of) {
    if (listed++ == kSequenceColourCount) {
      legend.push_back({kUnknown, "(colours repeat for later sequences)"});
      break;
    }
    legend.push_back(
        {kSequenceColours[colour], absl::StrFormat("seq %d", seq)});
  }
  if (!h.quant.empty()) {
    legend.push_back({kInt8, "int8 block"});
    legend.push_back({kInt8V, "int8 block, V slot"});
    legend.push_back({kInt4, "int4 block"});
  }
  const int lx = kMargin + width + 2 * kMargin;
  const int legend_bottom =
      kMargin + 20 + static_cast<int>(legend.size()) * (kCell + 6);
  const int total_width = lx + kLegendWidth;
  const int total_height = std::max(y, legend_bottom + kMargin);
  out << absl::StrFormat(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
      "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"11\">\n"
      "<style>.title { font-weight: bold; font-size: 13px; }</style>\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
      total_width, total_height, total_width, total_height);

  // The cells, one per block and slot, as the walk reaches them.
  std::map<std::string, int64_t> counts;
  for (const Grid& g : grids) {
    out << absl::StrFormat(
        "<text x=\"%d\" y=\"%d\" class=\"title\">%s</text>\n", kMargin,
        g.top + 12, Escape(g.title));
    for (size_t id = 0; id < g.cells && out; ++id) {
      std::string state, title;
      const char* colour = kUnknown;
      if (!g.quant) {
        state = HotState(snap, h, id);
        colour = state == "free"     ? kFree
                 : state == "cached" ? kCached
                 : state == "shared" ? kShared
                                     : kUnknown;
        if (state == "used") {
          for (const Holder& holder : h.hot[id]) {
            if (!holder.prefix && colour_of.contains(holder.seq)) {
              colour = kSequenceColours[colour_of[holder.seq]];
              break;
            }
          }
        }
        title =
            CellTitle("block", id, state, RefCount(snap.hot, id), h.hot[id]);
      } else {
        state = QuantState(snap, h, id);
        colour = state == "free"     ? kFree
                 : state == "int8"   ? kInt8
                 : state == "int8_v" ? kInt8V
                 : state == "int4"   ? kInt4
                                     : kUnknown;
        title =
            CellTitle("slot", id, state, RefCount(snap.quant, id), h.quant[id]);
      }
      ++counts[absl::StrCat(g.quant ? "quant_" : "hot_", state)];
      const int cx = kMargin + static_cast<int>(id % g.cols) * (kCell + kGap);
      const int cy =
          g.top + 20 + static_cast<int>(id / g.cols) * (kCell + kGap);
      out << absl::StrFormat(
          "<rect class=\"cell\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
          "fill=\"%s\"><title>%s</title></rect>\n",
          cx, cy, kCell, kCell, colour, Escape(title));
    }
  }
  out << absl::StrFormat(
      "<text x=\"%d\" y=\"%d\" class=\"title\">legend</text>\n", lx,
      kMargin + 12);
  int ly = kMargin + 20;
  for (const auto& [colour, label] : legend) {
    out << absl::StrFormat(
        "<rect class=\"key\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
        "fill=\"%s\"/><text x=\"%d\" y=\"%d\">%s</text>\n",
        lx, ly, kCell, kCell, colour, lx + kCell + 6, ly + 10, Escape(label));
    ly += kCell + 6;
  }
  out << "</svg>\n";
  if (model != nullptr) {
    Json j;
    j["schema_version"] = kSchemaVersion;
    j["hot_blocks"] = h.hot.size();
    j["quant_slots"] = h.quant.size();
    j["cells"] = Json::object();
    for (const auto& [k, v] : counts) j["cells"][k] = v;
    j["legend"] = Json::array();
    for (const auto& [colour, label] : legend) {
      j["legend"].push_back({{"colour", colour}, {"label", label}});
    }
    *model = std::move(j);
  }
}

std::string MapSvg(const Snapshot& snap, Json* model) {
  std::ostringstream out;
  WriteMapSvg(snap, out, model);
  return out.str();
}

std::string MapText(const Json& m) {
  std::vector<std::pair<std::string, std::string>> kv;
  for (const auto& [k, v] : m["cells"].items()) kv.push_back({k, Num(v)});
  return absl::StrFormat("%s hot blocks, %s quantized slots drawn\n%s",
                         Num(m["hot_blocks"]), Num(m["quant_slots"]),
                         KeyValues(kv));
}

}  // namespace kvpage::dump
