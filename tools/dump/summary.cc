// kvpage-dump summary: config, pool usage, internal waste, policy and
// compression figures, statistics.
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "tools/dump/dump.h"
#include "tools/dump/holdings.h"
#include "tools/dump/text.h"

namespace kvpage::dump {
namespace {

// Blocks and slots by state, and the token slots of what the tables hold.
struct PoolTally {
  std::map<std::string, int64_t> hot_states, quant_states;
  int64_t held_slots = 0, visible_slots = 0;  // internal waste: the gap
  int64_t evictable = 0;  // blocks of idle prefix entries: what an
                          // allocation may evict
  int64_t used() const {
    return hot_states.at("used") + hot_states.at("shared");
  }
};

PoolTally TallyPools(const Snapshot& snap, const Holdings& holdings) {
  // A block id's slots: one per layer of its group (kvpage/config.h).
  const int64_t block_tokens =
      snap.config.block_tokens *
      (snap.config.group_layers ? LayerGroupWidth(snap.config) : 1);
  PoolTally tally;
  for (const char* state : {"free", "used", "shared", "cached"}) {
    tally.hot_states[state] = 0;
  }
  for (const char* state : {"free", "int8", "int4", "int8_v"}) {
    tally.quant_states[state] = 0;
  }
  for (size_t id = 0; id < holdings.hot.size(); ++id) {
    const std::string state = HotState(snap, holdings, id);
    ++tally.hot_states[state];
    if (state == "used" || state == "shared") {
      tally.held_slots += block_tokens;
      tally.visible_slots += holdings.hot_visible[id];
    }
  }
  for (size_t id = 0; id < holdings.quant.size(); ++id) {
    ++tally.quant_states[QuantState(snap, holdings, id)];
    if (holdings.quant_visible[id] >= 0) {  // a compressed block starts here
      tally.held_slots += block_tokens;
      tally.visible_slots += holdings.quant_visible[id];
    }
  }
  for (const SnapshotPrefixEntry& prefix : snap.prefix) {
    if (prefix.lru_rank < 0) continue;
    for (uint32_t id : prefix.blocks) tally.evictable += id != kSnapshotNoBlock;
  }
  return tally;
}

// What the block tables show, over every sequence and layer.
struct TableTally {
  int64_t visible_tokens = 0, longest = 0, evicted = 0;
  int64_t compressed_entries = 0, spare_blocks = 0;
};

TableTally TallyTables(const Snapshot& snap) {
  TableTally tally;
  for (const SnapshotSequence& seq : snap.sequences) {
    for (const SnapshotLayer& layer : seq.layers) {
      tally.longest = std::max(tally.longest, layer.length);
      // Modulo 2^64: the fields come from files and may be anything.
      tally.evicted =
          static_cast<int64_t>(static_cast<uint64_t>(tally.evicted) +
                               static_cast<uint64_t>(layer.evicted));
      for (const SnapshotEntry& entry : layer.entries) {
        tally.visible_tokens += entry.visible;
        tally.spare_blocks += entry.role == TableRole::kSpare;
        tally.compressed_entries += entry.format != BlockFormat::kHot;
      }
    }
  }
  return tally;
}

double Fraction(int64_t part, int64_t whole) {
  return whole == 0 ? 0.0
                    : static_cast<double>(part) / static_cast<double>(whole);
}

Json HotPoolJson(const Snapshot& snap, const PoolTally& pools) {
  const int64_t cached = pools.hot_states.at("cached");
  return {{"capacity", snap.hot.capacity},
          {"block_bytes", snap.hot.unit_bytes},
          {"used", pools.used()},
          {"shared", pools.hot_states.at("shared")},
          {"cached", cached},
          {"cached_evictable", pools.evictable},
          {"free", pools.hot_states.at("free")},
          {"utilization", Fraction(pools.used(), snap.hot.capacity)},
          {"bytes_in_use", (pools.used() + cached) * snap.hot.unit_bytes}};
}

Json QuantPoolJson(const Snapshot& snap, const PoolTally& pools) {
  if (!snap.config.compression.enabled) return nullptr;
  const int64_t free = pools.quant_states.at("free");
  return {
      {"capacity", snap.quant.capacity},
      {"cell_bytes", snap.quant.unit_bytes},
      {"int8_blocks", pools.quant_states.at("int8")},
      {"int4_blocks", pools.quant_states.at("int4")},
      {"int8_v_cells", pools.quant_states.at("int8_v")},
      {"free", free},
      {"bytes_in_use", (snap.quant.capacity - free) * snap.quant.unit_bytes}};
}

// Internal waste: slots of blocks the tables hold that no table shows
// (partly filled last blocks, evicted slots of partly evicted blocks, a
// ring's spares). A shared block counts once.
Json WasteJson(const PoolTally& pools) {
  const int64_t wasted = pools.held_slots - pools.visible_slots;
  return {{"slots_held", pools.held_slots},
          {"slots_visible", pools.visible_slots},
          {"slots_wasted", wasted},
          {"waste_fraction", Fraction(wasted, pools.held_slots)}};
}

Json CompressionJson(const Snapshot& snap, const TableTally& tables) {
  const CacheStats& s = snap.stats;
  return {{"enabled", snap.config.compression.enabled},
          {"table_entries_compressed", tables.compressed_entries},
          {"bytes_saved", s.bytes_saved},
          {"bytes_per_token_hot", s.bytes_per_token_hot},
          {"bytes_per_token_cold", s.bytes_per_token_cold},
          {"max_quant_error", s.max_quant_error},
          {"mean_quant_error", s.mean_quant_error},
          {"compressions_applied", s.compressions_applied},
          {"compressions_skipped", s.compressions_skipped},
          {"decompressions", s.decompressions}};
}

Json PrefixCacheJson(const Snapshot& snap, const PoolTally& pools) {
  int64_t idle = 0;
  for (const SnapshotPrefixEntry& prefix : snap.prefix) {
    idle += prefix.lru_rank >= 0;
  }
  return {{"entries", snap.prefix.size()},
          {"idle_entries", idle},
          {"cached_blocks", pools.hot_states.at("cached")},
          {"hits", snap.stats.hits},
          {"misses", snap.stats.misses},
          {"queries", snap.stats.prefix_queries},
          {"tokens_queried", snap.stats.prefix_tokens_queried},
          {"tokens_matched", snap.stats.prefix_tokens_matched},
          {"blocks_queried", snap.stats.prefix_blocks_queried},
          // The hit rates, of what MatchPrefix was asked (0 when nothing).
          {"token_hit_rate", Fraction(snap.stats.prefix_tokens_matched,
                                      snap.stats.prefix_tokens_queried)},
          {"block_hit_rate",
           Fraction(snap.stats.hits, snap.stats.prefix_blocks_queried)}};
}

}  // namespace

Json Summary(const Snapshot& snap) {
  const Holdings holdings = Walk(snap);
  const PoolTally pools = TallyPools(snap, holdings);
  const TableTally tables = TallyTables(snap);
  Json j;
  j["schema_version"] = kSchemaVersion;
  j["snapshot_version"] = snap.version;
  j["token_data"] = snap.has_token_data;
  j["config"] = ConfigJson(snap.config);
  j["hot_pool"] = HotPoolJson(snap, pools);
  j["quant_pool"] = QuantPoolJson(snap, pools);
  j["sequences"] = {{"count", snap.sequences.size()},
                    {"visible_tokens", tables.visible_tokens},
                    {"longest", tables.longest}};
  j["waste"] = WasteJson(pools);
  j["policy"] = {
      {"evicted_tokens", tables.evicted},
      {"blocks_released_by_policy", snap.stats.blocks_released_by_policy},
      {"blocks_reused_by_ring", snap.stats.blocks_reused_by_ring},
      {"spare_blocks", tables.spare_blocks}};
  j["compression"] = CompressionJson(snap, tables);
  j["prefix_cache"] = PrefixCacheJson(snap, pools);
  j["dangling_references"] = holdings.dangling;
  j["stats"] = StatsJson(snap.stats);
  return j;
}

namespace {

std::string ConfigText(const Json& m) {
  const Json& c = m["config"];
  std::string out = absl::StrFormat(
      "kvpage snapshot v%s%s\n\nconfig\n", Num(m["snapshot_version"]),
      m["token_data"].get<bool>() ? " (with token data)" : "");
  out += KeyValues({
      {"shape", absl::StrFormat("%s layers x %s kv-heads x %s head_dim, %s",
                                Num(c["num_layers"]), Num(c["num_kv_heads"]),
                                Num(c["head_dim"]), Num(c["dtype"]))},
      {"blocks", absl::StrFormat("%s of %s tokens%s", Num(c["num_blocks"]),
                                 Num(c["block_tokens"]),
                                 c.value("group_layers", false)
                                     ? ", one table per group of layers"
                                     : "")},
      {"policy", absl::StrFormat("%s, max_seq_len %s, sinks %s, truncate_to %s",
                                 Num(c["overflow"]), Num(c["max_seq_len"]),
                                 Num(c["sink_tokens"]), Num(c["truncate_to"]))},
  });
  for (const Json& p : c["layer_policies"]) {
    out += absl::StrFormat("    layer %s: %s, max_seq_len %s, sinks %s\n",
                           Num(p["layer"]), Num(p["overflow"]),
                           Num(p["max_seq_len"]), Num(p["sink_tokens"]));
  }
  return out;
}

std::string PoolsText(const Json& m) {
  const Json& hp = m["hot_pool"];
  std::string out = "\nhot pool\n";
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
  if (m["quant_pool"].is_null()) return out;
  const Json& qp = m["quant_pool"];
  out += "\nquantized pool\n";
  out += KeyValues({
      {"capacity", absl::StrFormat("%s cells of %s", Num(qp["capacity"]),
                                   Bytes(qp["cell_bytes"].get<int64_t>()))},
      {"blocks",
       absl::StrFormat("%s int8 (+%s V cells), %s int4", Num(qp["int8_blocks"]),
                       Num(qp["int8_v_cells"]), Num(qp["int4_blocks"]))},
      {"free", Num(qp["free"])},
      {"in use", Bytes(qp["bytes_in_use"].get<int64_t>())},
  });
  return out;
}

std::string SequencesAndPoliciesText(const Json& m) {
  const Json& w = m["waste"];
  std::string out = "\nsequences and waste\n";
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
  return out;
}

std::string CompressionText(const Json& m) {
  const Json& q = m["compression"];
  if (!q["enabled"].get<bool>()) return "";
  return "\ncompression\n" +
         KeyValues({
             {"compressed entries", Num(q["table_entries_compressed"])},
             {"bytes saved", Bytes(q["bytes_saved"].get<int64_t>())},
             {"bytes per token",
              absl::StrFormat("%s hot, %s cold", Num(q["bytes_per_token_hot"]),
                              Num(q["bytes_per_token_cold"]))},
             {"error (rel. MSE)",
              absl::StrFormat("max %s, mean %s", Num(q["max_quant_error"]),
                              Num(q["mean_quant_error"]))},
             {"compressions",
              absl::StrFormat("%s applied, %s skipped, %s undone",
                              Num(q["compressions_applied"]),
                              Num(q["compressions_skipped"]),
                              Num(q["decompressions"]))},
         });
}

std::string PrefixCacheAndStatsText(const Json& m) {
  const Json& pc = m["prefix_cache"];
  std::string out = "\nprefix cache\n";
  out += KeyValues({
      {"entries", absl::StrFormat("%s (%s idle)", Num(pc["entries"]),
                                  Num(pc["idle_entries"]))},
      {"cached blocks", Num(pc["cached_blocks"])},
      {"lookups", absl::StrFormat("%s hits, %s misses", Num(pc["hits"]),
                                  Num(pc["misses"]))},
      {"hit rate",
       absl::StrFormat("%.1f%% of %s tokens queried, %.1f%% of %s blocks "
                       "(%s queries)",
                       100 * pc["token_hit_rate"].get<double>(),
                       Num(pc["tokens_queried"]),
                       100 * pc["block_hit_rate"].get<double>(),
                       Num(pc["blocks_queried"]), Num(pc["queries"]))},
  });
  if (m["dangling_references"].get<int64_t>() > 0) {
    out += absl::StrFormat(
        "\n%s table or prefix entries point outside their pool (run verify)\n",
        Num(m["dangling_references"]));
  }
  out += "\nstats\n";
  KeyValueList stats;
  for (const auto& [key, value] : m["stats"].items()) {
    stats.push_back({key, Num(value)});
  }
  return out + KeyValues(stats);
}

}  // namespace

std::string SummaryText(const Json& model) {
  return ConfigText(model) + PoolsText(model) +
         SequencesAndPoliciesText(model) + CompressionText(model) +
         PrefixCacheAndStatsText(model);
}

}  // namespace kvpage::dump
