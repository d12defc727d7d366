// VerifySnapshot: the invariants of KVCache::Validate(), on a snapshot that
// may have been corrupted in any field ParseSnapshot cannot judge alone.
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cache/block_table.h"
#include "kvpage/snapshot.h"

namespace kvpage {
namespace {

using internal::LayerRules;

// Sums of fields read from a file: modulo 2^64, never undefined.
int64_t Wrap(int64_t a, uint64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + b);
}

// A hostile file could break every block; past this many, one summary line.
constexpr size_t kMaxViolations = 10000;

class Verifier {
 public:
  explicit Verifier(const Snapshot& snap)
      : snap_(snap), rules_(internal::ResolveLayers(snap.config)) {}

  std::vector<SnapshotViolation> Run() {
    if (!Structure()) return std::move(out_);
    hot_holds_.assign(snap_.hot.ref_counts.size(), 0);
    quant_holds_.assign(snap_.quant.ref_counts.size(), 0);
    quant_primary_.assign(snap_.quant.ref_counts.size(), 0);
    for (const SnapshotSequence& s : snap_.sequences) Sequence(s);
    Prefix();
    RefCounts(snap_.hot, hot_holds_, "block");
    RefCounts(snap_.quant, quant_holds_, "quantized cell");
    FreeList(snap_.hot, "hot pool", "block");
    FreeList(snap_.quant, "quantized pool", "cell");
    Stats();
    if (dropped_ > 0) {
      out_.push_back({"truncated", absl::StrFormat("%d more violations not "
                                                   "listed",
                                                   dropped_)});
    }
    return std::move(out_);
  }

 private:
  template <typename... Args>
  void Report(const char* check, const absl::FormatSpec<Args...>& format,
              const Args&... args) {
    if (out_.size() >= kMaxViolations) {
      ++dropped_;
      return;
    }
    out_.push_back({check, absl::StrFormat(format, args...)});
  }

  // What ParseSnapshot guarantees, for snapshots built some other way: a
  // valid config and arrays of the sizes it implies. False when the rest
  // of the walk cannot run.
  bool Structure() {
    const CacheConfig& c = snap_.config;
    if (absl::Status s = ValidateConfig(c); !s.ok()) {
      Report("config", "%s", s.message());
      return false;
    }
    const size_t layers = static_cast<size_t>(c.num_layers);
    const size_t slots = static_cast<size_t>(
        c.compression.enabled ? c.compression.quant_cells : 0);
    const SnapshotPool& q = snap_.quant;
    if (snap_.hot.ref_counts.size() != static_cast<size_t>(c.num_blocks) ||
        q.ref_counts.size() != slots || q.bits.size() != slots ||
        q.partners.size() != slots || q.errors.size() != slots) {
      Report("config",
             "pool arrays do not match the config's %d blocks and "
             "%d quantized cells",
             c.num_blocks, slots);
      return false;
    }
    groups_ = internal::ResolveGroups(c, rules_);
    bool ok = true;
    for (const SnapshotSequence& s : snap_.sequences) {
      if (s.layers.size() != layers) {
        Report("config", "seq %d has %d layers, the config %d", s.id,
               s.layers.size(), layers);
        ok = false;
      }
    }
    for (const SnapshotPrefixEntry& p : snap_.prefix) {
      if (p.blocks.size() != groups_.size()) {
        Report("config", "prefix entry %016x has %d tables, the config %d",
               p.hash, p.blocks.size(), groups_.size());
        ok = false;
      }
    }
    return ok;
  }

  void Sequence(const SnapshotSequence& s) {
    if (!seen_ids_.empty() && s.id <= seen_ids_.back()) {
      Report("table", "seq %d: sequence ids are not ascending (after %d)", s.id,
             seen_ids_.back());
    }
    seen_ids_.push_back(s.id);
    for (size_t layer = 0; layer < s.layers.size(); ++layer) {
      const std::vector<int>& members =
          groups_.members[static_cast<size_t>(groups_.group_of[layer])];
      const LayerRules layer_rules =
          internal::TableRules(rules_[layer], members.size());
      const auto first = static_cast<size_t>(members[0]);
      // A group's table holds the blocks of the union of its layers; each
      // layer lists it, and the first counts its holds.
      internal::GroupNeeds needs;
      for (const int m : members) {
        const SnapshotLayer& l = s.layers[static_cast<size_t>(m)];
        if (l.length < 0 || l.window_start < 0) continue;  // Layer says so
        internal::AddNeeds(layer_rules, l.length, l.window_start, needs);
      }
      if (needs.window.size() <= 0) {
        const SnapshotLayer& l = s.layers[layer];
        needs.window =
            internal::WindowRange(layer_rules, l.length, l.window_start);
      }
      Layer(s.id, static_cast<int>(layer), layer_rules, s.layers[layer],
            members.size() > 1 ? &needs : nullptr, layer == first);
      if (layer != first && !SameBlocks(s.layers[layer], s.layers[first])) {
        Report("group",
               "seq %d, layer %d: lists other blocks than layer %d of its "
               "group",
               s.id, layer, first);
      }
    }
  }

  static bool SameBlocks(const SnapshotLayer& a, const SnapshotLayer& b) {
    if (a.entries.size() != b.entries.size()) return false;
    for (size_t i = 0; i < a.entries.size(); ++i) {
      const SnapshotEntry& x = a.entries[i];
      const SnapshotEntry& y = b.entries[i];
      if (x.role != y.role || x.logical != y.logical || x.id != y.id ||
          x.format != y.format) {
        return false;
      }
    }
    return true;
  }

  // Visible slots of logical block b in a layer of length L, window start
  // window_start: [begin, end) spanning `count` slots.
  struct Slots {
    int64_t count = 0, begin = 0, end = 0;
  };
  static Slots ExpectedSlots(const LayerRules& layer_rules, int64_t length,
                             int64_t window_start, int64_t b) {
    const int64_t tokens_per_block = layer_rules.block_tokens;
    const int64_t lo = b * tokens_per_block, hi = lo + tokens_per_block;
    const int64_t sink_end = std::min(layer_rules.sinks, length);
    const int64_t window_begin = std::max(window_start, layer_rules.sinks);
    Slots s;
    auto add = [&](int64_t from, int64_t to) {
      from = std::max(from, lo);
      to = std::min(to, hi);
      if (from >= to) return;
      if (s.count == 0) s.begin = from - lo;
      s.count += to - from;
      s.end = to - lo;
    };
    if (window_begin <= sink_end) {
      add(0, length);
    } else {
      add(0, sink_end);
      add(window_begin, length);
    }
    return s;
  }

  // `group`: what the layers of a group of several need held (else the
  // layer's own); `holds`: whether its entries count as holds.
  void Layer(SeqId seq, int layer, const LayerRules& layer_rules,
             const SnapshotLayer& l, const internal::GroupNeeds* group,
             bool holds) {
    constexpr int64_t kMaxLength = int64_t{1} << 62;  // as ValidateConfig
    if (l.length < 0 || l.window_start < 0 || l.max_length < l.length ||
        l.evicted < 0 || l.max_length > kMaxLength ||
        l.window_start > kMaxLength) {
      Report("table",
             "seq %d, layer %d: length %d, window start %d, max length %d, "
             "evicted %d are inconsistent",
             seq, layer, l.length, l.window_start, l.max_length, l.evicted);
      return;  // the checks below assume sane lengths
    }
    const int64_t visible =
        internal::VisibleTokens(layer_rules, l.length, l.window_start);
    if (visible > layer_rules.max_seq_len) {
      Report("policy",
             "seq %d, layer %d: %d visible tokens exceed max_seq_len %d", seq,
             layer, visible, layer_rules.max_seq_len);
    }
    if (!layer_rules.evicts() && l.window_start != 0) {
      Report("policy",
             "seq %d, layer %d: policy %s evicted tokens (window start %d)",
             seq, layer, OverflowPolicyName(layer_rules.overflow),
             l.window_start);
    }
    const int64_t want_sinks =
        group != nullptr ? group->sink_blocks
                         : internal::SinkBlocks(layer_rules, l.length);
    const internal::BlockRange want_window =
        group != nullptr
            ? group->window
            : internal::WindowRange(layer_rules, l.length, l.window_start);
    const EntryCounts counts =
        Entries(seq, layer, layer_rules, l, want_window, holds);
    const int64_t sinks = counts.sinks, window = counts.window,
                  spares = counts.spares;
    if (sinks != want_sinks || window != want_window.size()) {
      Report("table",
             "seq %d, layer %d (length %d, window start %d): %d sink and %d "
             "window blocks, want %d and %d",
             seq, layer, l.length, l.window_start, sinks, window, want_sinks,
             want_window.size());
    }
    if (spares > 0 && !layer_rules.ring()) {
      Report("policy", "seq %d, layer %d: %d spare blocks outside a ring", seq,
             layer, spares);
    }
    // A group's window may hold more while its layers differ, never a
    // spare beyond the ring's size.
    if (layer_rules.ring() && window + spares > layer_rules.ring_blocks &&
        (group == nullptr || spares > 0)) {
      Report("policy", "seq %d, layer %d: ring holds %d blocks, at most %d",
             seq, layer, window + spares, layer_rules.ring_blocks);
    }
    visible_total_ = Wrap(visible_total_, visible);
  }

  struct EntryCounts {
    int64_t sinks = 0, window = 0, spares = 0;
  };

  // Each entry of a layer: its order, its hold, its logical block and its
  // visible slots. Returns how many of each role it has.
  EntryCounts Entries(SeqId seq, int layer, const LayerRules& layer_rules,
                      const SnapshotLayer& l,
                      const internal::BlockRange& want_window, bool holds) {
    EntryCounts counts;
    int64_t& sinks = counts.sinks;
    int64_t& window = counts.window;
    int64_t& spares = counts.spares;
    int64_t last_logical = -1;
    TableRole last_role = TableRole::kSink;
    for (const SnapshotEntry& e : l.entries) {
      if (e.role < last_role) {
        Report("table",
               "seq %d, layer %d: entry for logical block %d is out of order "
               "(sinks, then window, then spares)",
               seq, layer, e.logical);
      }
      last_role = e.role;
      if (holds) Hold(seq, layer, layer_rules, e);
      if (e.role == TableRole::kSpare) {
        ++spares;
        if (e.visible != 0) {
          Report("visible", "seq %d, layer %d: spare block %d shows %d slots",
                 seq, layer, e.id, e.visible);
        }
        continue;
      }
      if (e.logical <= last_logical) {
        Report("positions",
               "seq %d, layer %d: logical block %d follows %d: positions do "
               "not increase",
               seq, layer, e.logical, last_logical);
      }
      last_logical = std::max(last_logical, e.logical);
      const int64_t index = e.role == TableRole::kSink ? sinks++ : window++;
      const int64_t want_logical =
          e.role == TableRole::kSink ? index : want_window.first + index;
      if (e.logical != want_logical) {
        Report("table",
               "seq %d, layer %d: %s entry %d holds logical block %d, want %d",
               seq, layer, e.role == TableRole::kSink ? "sink" : "window",
               index, e.logical, want_logical);
        continue;
      }
      const Slots want =
          ExpectedSlots(layer_rules, l.length, l.window_start, e.logical);
      if (e.visible != want.count ||
          (want.count > 0 &&
           (e.begin_slot != want.begin || e.end_slot != want.end))) {
        Report("visible",
               "seq %d, layer %d, logical block %d (block %d): %d visible "
               "slots in [%d, %d), the policy keeps %d in [%d, %d)",
               seq, layer, e.logical, e.id, e.visible, e.begin_slot, e.end_slot,
               want.count, want.begin, want.end);
      }
    }
    return counts;
  }

  // Counts one table entry's hold on its block or slot(s).
  void Hold(SeqId seq, int layer, const LayerRules& layer_rules,
            const SnapshotEntry& e) {
    if (e.format == BlockFormat::kHot) {
      if (e.id >= hot_holds_.size()) {
        Report("table", "seq %d, layer %d: block %d out of range (capacity %d)",
               seq, layer, e.id, hot_holds_.size());
        return;
      }
      ++hot_holds_[e.id];
      return;
    }
    const CompressionConfig& q = snap_.config.compression;
    if (e.role != TableRole::kWindow || !q.enabled || layer_rules.ring()) {
      Report("quant",
             "seq %d, layer %d: quantized cell %d where only hot blocks "
             "belong",
             seq, layer, e.id);
    }
    if (e.id >= quant_holds_.size()) {
      Report("table",
             "seq %d, layer %d: quantized cell %d out of range (capacity %d)",
             seq, layer, e.id, quant_holds_.size());
      return;
    }
    ++quant_holds_[e.id];
    quant_primary_[e.id] =
        static_cast<uint8_t>(e.format == BlockFormat::kInt8 ? 8 : 4);
    const int bits = snap_.quant.bits[e.id];
    const int want_bits = e.format == BlockFormat::kInt8 ? 8 : 4;
    if (bits != want_bits) {
      Report("quant",
             "seq %d, layer %d: an int%d entry points at slot %d, which holds "
             "%s",
             seq, layer, want_bits, e.id,
             bits == 0 ? std::string("no block")
                       : absl::StrFormat("an int%d block", bits));
    }
    const bool mixed = q.max_rel_error > 0;
    const uint32_t partner = snap_.quant.partners[e.id];
    if (!mixed && want_bits != static_cast<int>(q.bits)) {
      Report("quant",
             "seq %d, layer %d: slot %d is int%d, the config says int%d", seq,
             layer, e.id, want_bits, static_cast<int>(q.bits));
    }
    const bool needs_partner = mixed && want_bits == 8;
    if (needs_partner != (partner != kSnapshotNoBlock)) {
      Report("quant", "seq %d, layer %d: cell %d %s a V cell (partner %d)", seq,
             layer, e.id, needs_partner ? "lacks" : "has", partner);
    } else if (partner != kSnapshotNoBlock) {
      if (partner >= quant_holds_.size()) {
        Report("quant", "seq %d, layer %d: cell %d's partner %d out of range",
               seq, layer, e.id, partner);
      } else {
        ++quant_holds_[partner];
      }
    }
  }

  void Prefix() {
    const size_t layers = static_cast<size_t>(snap_.config.num_layers);
    std::vector<int64_t> ranks;
    for (size_t i = 0; i < snap_.prefix.size(); ++i) {
      const SnapshotPrefixEntry& p = snap_.prefix[i];
      if (i > 0 && p.hash <= snap_.prefix[i - 1].hash) {
        Report("prefix", "prefix entry %016x: hashes are not ascending",
               p.hash);
      }
      int64_t present = 0;
      bool in_use = false;
      for (size_t layer = 0; layer < std::min(layers, p.blocks.size());
           ++layer) {
        const uint32_t id = p.blocks[layer];
        if (id == kSnapshotNoBlock) continue;
        if (id >= hot_holds_.size()) {
          Report("prefix",
                 "prefix entry %016x, layer %d: block %d out of "
                 "range",
                 p.hash, layer, id);
          continue;
        }
        ++hot_holds_[id];
        ++present;
        in_use |= snap_.hot.ref_counts[id] > 1;
      }
      if (present == 0) {
        Report("prefix", "prefix entry %016x holds no block", p.hash);
      }
      if (in_use == (p.lru_rank >= 0)) {
        Report("prefix", "prefix entry %016x: %s, but its LRU rank is %d",
               p.hash, in_use ? "a sequence uses it" : "no sequence uses it",
               p.lru_rank);
      }
      if (p.lru_rank >= 0) {
        ranks.push_back(p.lru_rank);
        cached_blocks_ += present;
      }
    }
    std::sort(ranks.begin(), ranks.end());
    for (size_t i = 0; i < ranks.size(); ++i) {
      if (ranks[i] != static_cast<int64_t>(i)) {
        Report("prefix",
               "LRU ranks of the %d idle prefix entries are not 0..%d (found "
               "%d at place %d)",
               ranks.size(), ranks.size() - 1, ranks[i], i);
        break;
      }
    }
  }

  void RefCounts(const SnapshotPool& pool, const std::vector<uint32_t>& holds,
                 const char* what) {
    for (size_t id = 0; id < holds.size(); ++id) {
      if (pool.ref_counts[id] != holds[id]) {
        Report("ref_count",
               "%s %d: ref_count %d, but %d table and prefix-cache entries "
               "hold it",
               what, id, pool.ref_counts[id], holds[id]);
      }
    }
  }

  void FreeList(const SnapshotPool& pool, const char* name, const char* what) {
    std::vector<uint8_t> free(pool.ref_counts.size(), 0);
    for (uint32_t id : pool.free_ids) {
      if (id >= free.size()) {
        Report("free_list", "%s: free %s %d out of range (capacity %d)", name,
               what, id, free.size());
        continue;
      }
      if (free[id]++ != 0) {
        Report("free_list", "%s: %s %d is on the free list twice", name, what,
               id);
      }
    }
    for (size_t id = 0; id < free.size(); ++id) {
      const bool used = pool.ref_counts[id] > 0;
      if (used && free[id] != 0) {
        Report("free_list", "%s: %s %d is free and used (ref_count %d)", name,
               what, id, pool.ref_counts[id]);
      } else if (!used && free[id] == 0) {
        Report("free_list", "%s: %s %d is neither free nor used", name, what,
               id);
      }
    }
  }

  void Stats() {
    const CacheStats& s = snap_.stats;
    int64_t used = 0, qused = 0, int8 = 0, int4 = 0;
    for (uint32_t r : snap_.hot.ref_counts) used += r > 0;
    for (uint32_t r : snap_.quant.ref_counts) qused += r > 0;
    for (uint8_t b : quant_primary_) (b == 8 ? int8 : int4) += b != 0;
    auto expect = [&](const char* name, auto have, auto want) {
      if (have != want) {
        Report("stats", "stats.%s is %d, the snapshot shows %d", name, have,
               want);
      }
    };
    expect("blocks_total", s.blocks_total, snap_.hot.capacity);
    expect("blocks_used + blocks_cached",
           Wrap(s.blocks_used, static_cast<uint64_t>(s.blocks_cached)), used);
    expect("blocks_cached", s.blocks_cached, cached_blocks_);
    expect("blocks_free", s.blocks_free,
           static_cast<int64_t>(snap_.hot.free_ids.size()));
    expect("sequences", s.sequences,
           static_cast<int64_t>(snap_.sequences.size()));
    expect("tokens_stored", s.tokens_stored, visible_total_);
    expect("prefix_entries", s.prefix_entries,
           static_cast<int64_t>(snap_.prefix.size()));
    expect(
        "blocks_allocated - blocks_released",
        Wrap(s.blocks_allocated, 0 - static_cast<uint64_t>(s.blocks_released)),
        used);
    expect("quant_cells_used", s.quant_cells_used, qused);
    expect("quant_blocks_int8", s.quant_blocks_int8, int8);
    expect("quant_blocks_int4", s.quant_blocks_int4, int4);
  }

  const Snapshot& snap_;
  const std::vector<LayerRules> rules_;
  internal::LayerGroups groups_;
  std::vector<uint32_t> hot_holds_, quant_holds_;
  std::vector<uint8_t> quant_primary_;
  std::vector<SeqId> seen_ids_;
  int64_t visible_total_ = 0, cached_blocks_ = 0;
  size_t dropped_ = 0;
  std::vector<SnapshotViolation> out_;
};

}  // namespace

std::vector<SnapshotViolation> VerifySnapshot(const Snapshot& snapshot) {
  return Verifier(snapshot).Run();
}

}  // namespace kvpage
