#include "tools/dump/holdings.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"
#include "kvpage/stats_fields.h"

namespace kvpage::dump {

namespace {

// One table entry of `seq`'s `layer`: its block, or its cell and the
// partner cell holding the V part of an int8 block.
void AddTableEntry(const Snapshot& snap, const SnapshotSequence& seq, int layer,
                   const SnapshotEntry& entry, Holdings& holdings) {
  const Holder holder{.seq = seq.id, .layer = layer, .logical = entry.logical};
  const bool hot = entry.format == BlockFormat::kHot;
  auto& pool = hot ? holdings.hot : holdings.quant;
  if (entry.id >= pool.size()) {
    ++holdings.dangling;
    return;
  }
  pool[entry.id].push_back(holder);
  auto& visible = hot ? holdings.hot_visible : holdings.quant_visible;
  visible[entry.id] = std::max(visible[entry.id], entry.visible);
  if (hot) return;
  const uint32_t partner = entry.id < snap.quant.partners.size()
                               ? snap.quant.partners[entry.id]
                               : kSnapshotNoBlock;
  if (partner < holdings.quant.size()) {
    holdings.quant[partner].push_back(holder);
    holdings.quant_v_part[partner] = 1;
  }
}

// The hot blocks of one prefix-cache entry, a table (layer, or group of
// layers) each.
void AddPrefixEntry(const SnapshotPrefixEntry& prefix, bool grouped,
                    Holdings& holdings) {
  for (size_t layer = 0; layer < prefix.blocks.size(); ++layer) {
    const uint32_t id = prefix.blocks[layer];
    if (id == kSnapshotNoBlock) continue;
    if (id >= holdings.hot.size()) {
      ++holdings.dangling;
      continue;
    }
    holdings.hot[id].push_back({.prefix = true,
                                .layer = static_cast<int>(layer),
                                .hash = prefix.hash,
                                .group = grouped});
  }
}

}  // namespace

std::string HolderName(const Holder& holder) {
  if (holder.prefix) {
    return absl::StrFormat("prefix %016x %s %d", holder.hash,
                           holder.group ? "group" : "layer", holder.layer);
  }
  if (holder.logical < 0) {
    return absl::StrFormat("seq %d layer %d spare", holder.seq, holder.layer);
  }
  return absl::StrFormat("seq %d layer %d block %d", holder.seq, holder.layer,
                         holder.logical);
}

Holdings Walk(const Snapshot& snap) {
  Holdings holdings;
  holdings.hot.resize(snap.hot.ref_counts.size());
  holdings.quant.resize(snap.quant.ref_counts.size());
  holdings.quant_v_part.assign(snap.quant.ref_counts.size(), 0);
  holdings.hot_visible.assign(snap.hot.ref_counts.size(), 0);
  holdings.quant_visible.assign(snap.quant.ref_counts.size(), -1);
  // With layer groups every layer of a group lists the block id (hot, or a
  // compressed block's first cell): its slots are the group's layers', each
  // showing what its own layer shows.
  // Keyed by (hot, id, layer).
  absl::flat_hash_map<std::tuple<bool, uint32_t, size_t>, int32_t>
      layer_visible;
  for (const SnapshotSequence& seq : snap.sequences) {
    for (size_t layer = 0; layer < seq.layers.size(); ++layer) {
      for (const SnapshotEntry& entry : seq.layers[layer].entries) {
        AddTableEntry(snap, seq, static_cast<int>(layer), entry, holdings);
        const bool hot = entry.format == BlockFormat::kHot;
        if (snap.config.group_layers &&
            entry.id < (hot ? holdings.hot : holdings.quant).size()) {
          int32_t& v = layer_visible[{hot, entry.id, layer}];
          v = std::max(v, entry.visible);
        }
      }
    }
  }
  if (snap.config.group_layers) {
    std::fill(holdings.hot_visible.begin(), holdings.hot_visible.end(), 0);
    for (const auto& [key, visible] : layer_visible) {
      const auto [hot, id, layer] = key;
      if (!hot) holdings.quant_visible[id] = 0;
    }
    for (const auto& [key, visible] : layer_visible) {
      const auto [hot, id, layer] = key;
      (hot ? holdings.hot_visible : holdings.quant_visible)[id] += visible;
    }
  }
  for (const SnapshotPrefixEntry& prefix : snap.prefix) {
    AddPrefixEntry(prefix, snap.config.group_layers, holdings);
  }
  return holdings;
}

uint32_t RefCount(const SnapshotPool& pool, size_t id) {
  return id < pool.ref_counts.size() ? pool.ref_counts[id] : 0;
}

std::string HotState(const Snapshot& snap, const Holdings& holdings,
                     size_t id) {
  if (RefCount(snap.hot, id) == 0) return "free";
  const SeqId* first = nullptr;  // the first sequence holding it
  bool shared = false;           // and another one
  for (const Holder& holder : holdings.hot[id]) {
    if (holder.prefix) continue;
    if (first == nullptr) {
      first = &holder.seq;
    } else {
      shared |= holder.seq != *first;
    }
  }
  if (first == nullptr) return holdings.hot[id].empty() ? "used" : "cached";
  return shared ? "shared" : "used";
}

std::string QuantState(const Snapshot& snap, const Holdings& holdings,
                       size_t id) {
  if (RefCount(snap.quant, id) == 0) return "free";
  if (holdings.quant_v_part[id]) return "int8_v";
  const uint8_t bits = id < snap.quant.bits.size() ? snap.quant.bits[id] : 0;
  return bits == 8 ? "int8" : bits == 4 ? "int4" : "used";
}

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
                      {"quant_cells", q.quant_cells},
                      {"auto_compress", q.auto_compress},
                      {"max_rel_error", q.max_rel_error},
                      {"measure_error", q.measure_error}};
  j["prefault"] = c.prefault;
  j["huge_pages"] = c.huge_pages;
  j["group_layers"] = c.group_layers;
  return j;
}

}  // namespace kvpage::dump
