// tests/cache_fingerprint.h — everything a caller can observe of a cache,
// taken whole, to hold the promise of kv_cache.h: "when [a non-const
// method] returns an error the cache, its statistics included, is exactly as
// it was before the call".
//
// A fingerprint holds every CacheStats field; every sequence's
// SequenceStats; per sequence and layer its Length(), Gather() (values bit
// for bit) and View() (each run's block, slots, positions, format and
// error); and a snapshot with token data: both pools (reference counts,
// free lists, the bytes of every block and quantized cell in use, each
// cell's format, partner and error), every block table, and the prefix
// cache's index with its LRU order.
//
// Usage:
//   const CacheFingerprint before = Fingerprint(*cache);
//   EXPECT_EQ(cache->Update(...).code(), absl::StatusCode::kOutOfRange);
//   EXPECT_UNCHANGED(*cache, before);
// On failure the message names each field that moved, e.g.
//   stats.compressions_skipped: 3 -> 4
//   snapshot.hot.ref_counts[5]: 1 -> 2 (2 of 96 differ)
//   seq 1 layer 0 Gather k[8]: 1.5 -> 2 (5 of 40 differ)
#ifndef KVPAGE_TESTS_CACHE_FINGERPRINT_H_
#define KVPAGE_TESTS_CACHE_FINGERPRINT_H_

#include <bit>
#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "kvpage/kvpage.h"
#include "kvpage/stats_fields.h"

namespace kvpage::testing {

// What the read API shows of one sequence's layer. Floats are kept as bits,
// so that a NaN equals itself and -0 differs from 0.
struct LayerReadout {
  SeqId seq = 0;
  int layer = 0;
  int64_t length = 0;
  std::vector<int64_t> positions;
  std::vector<uint32_t> k_bits, v_bits;
  std::vector<std::string> runs;  // View(): one per BlockView, no addresses
  bool operator==(const LayerReadout&) const = default;
};

struct CacheFingerprint {
  CacheStats stats;
  std::vector<SeqId> sequences;                    // Sequences()
  std::vector<SequenceStats> sequence_stats;       // Stats(seq), same order
  std::vector<LayerReadout> layers;                // per sequence, per layer
  absl::StatusOr<Snapshot> snapshot = Snapshot{};  // with token data
};

namespace fingerprint_internal {

using Lines = std::vector<std::string>;

template <typename T>
std::string Show(const T& x) {
  if constexpr (std::is_floating_point_v<T>) {
    return absl::StrFormat("%.9g", x);
  } else if constexpr (std::is_integral_v<T>) {
    return absl::StrCat(+x);  // uint8_t as a number
  } else {
    return absl::StrCat(x);
  }
}

template <typename T>
bool Same(const T& a, const T& b) {
  if constexpr (std::is_same_v<T, double>) {
    return std::bit_cast<uint64_t>(a) == std::bit_cast<uint64_t>(b);
  } else if constexpr (std::is_same_v<T, float>) {
    return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
  } else {
    return a == b;
  }
}

// "name[i]: a -> b (n of m differ)" for the first index that differs, or
// the sizes when they differ.
template <typename T>
void DiffVector(const std::string& name, const std::vector<T>& a,
                const std::vector<T>& b, Lines& out,
                const std::function<std::string(const T&)>& show = Show<T>) {
  if (a.size() != b.size()) {
    out.push_back(absl::StrCat(name, ": ", a.size(), " entries -> ", b.size()));
    return;
  }
  size_t first = a.size(), differ = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (Same(a[i], b[i])) continue;
    if (differ++ == 0) first = i;
  }
  if (differ == 0) return;
  out.push_back(absl::StrCat(name, "[", first, "]: ", show(a[first]), " -> ",
                             show(b[first]), " (", differ, " of ", a.size(),
                             " differ)"));
}

template <typename T>
void DiffField(const std::string& name, const T& a, const T& b, Lines& out) {
  if (!Same(a, b)) {
    out.push_back(absl::StrCat(name, ": ", Show(a), " -> ", Show(b)));
  }
}

inline void DiffStats(const std::string& prefix, const CacheStats& a,
                      const CacheStats& b, Lines& out) {
  const size_t was = out.size();
  // The fields of `a` by name, then each field of `b` against its twin.
  std::vector<const void*> fields_of_a;
  ForEachStatsField(a, [&](const char*, const auto& field) {
    fields_of_a.push_back(&field);
  });
  size_t i = 0;
  ForEachStatsField(b, [&](const char* name, const auto& field) {
    using Field = std::remove_cvref_t<decltype(field)>;
    DiffField(absl::StrCat(prefix, name),
              *static_cast<const Field*>(fields_of_a[i++]), field, out);
  });
  if (out.size() == was && !(a == b)) {
    out.push_back(absl::StrCat(prefix,
                               " differs in a field that "
                               "kvpage/stats_fields.h does not list"));
  }
}

inline void DiffSequenceStats(const std::string& prefix, const SequenceStats& a,
                              const SequenceStats& b, Lines& out) {
  DiffField(absl::StrCat(prefix, "current_length"), a.current_length,
            b.current_length, out);
  DiffField(absl::StrCat(prefix, "max_length"), a.max_length, b.max_length,
            out);
  DiffField(absl::StrCat(prefix, "tokens_stored"), a.tokens_stored,
            b.tokens_stored, out);
  DiffField(absl::StrCat(prefix, "blocks"), a.blocks, b.blocks, out);
  DiffField(absl::StrCat(prefix, "utilization"), a.utilization, b.utilization,
            out);
  DiffField(absl::StrCat(prefix, "memory_usage_bytes"), a.memory_usage_bytes,
            b.memory_usage_bytes, out);
  DiffField(absl::StrCat(prefix, "evictions"), a.evictions, b.evictions, out);
}

inline void DiffLayer(const LayerReadout& a, const LayerReadout& b,
                      Lines& out) {
  const std::string at = absl::StrCat("seq ", a.seq, " layer ", a.layer, " ");
  DiffField(at + "Length", a.length, b.length, out);
  DiffVector(at + "Gather positions", a.positions, b.positions, out);
  const std::function<std::string(const uint32_t&)> as_float =
      [](const uint32_t& bits) { return Show(std::bit_cast<float>(bits)); };
  DiffVector(at + "Gather k", a.k_bits, b.k_bits, out, as_float);
  DiffVector(at + "Gather v", a.v_bits, b.v_bits, out, as_float);
  DiffVector(at + "View", a.runs, b.runs, out);
}

inline std::string ShowEntry(const SnapshotEntry& e) {
  return absl::StrCat("{role ", static_cast<int>(e.role), " logical ",
                      e.logical, " format ", static_cast<int>(e.format), " id ",
                      e.id, " visible ", e.visible, " slots [", e.begin_slot,
                      ", ", e.end_slot, ")}");
}

inline std::string ShowPrefixEntry(const SnapshotPrefixEntry& e) {
  return absl::StrFormat("{hash %016x lru_rank %d blocks %s}", e.hash,
                         e.lru_rank, absl::StrJoin(e.blocks, ","));
}

inline void DiffPool(const std::string& name, const SnapshotPool& a,
                     const SnapshotPool& b, Lines& out) {
  DiffField(absl::StrCat(name, ".capacity"), a.capacity, b.capacity, out);
  DiffField(absl::StrCat(name, ".unit_bytes"), a.unit_bytes, b.unit_bytes, out);
  DiffVector(absl::StrCat(name, ".ref_counts"), a.ref_counts, b.ref_counts,
             out);
  DiffVector(absl::StrCat(name, ".free_ids"), a.free_ids, b.free_ids, out);
  DiffVector(absl::StrCat(name, ".bits"), a.bits, b.bits, out);
  DiffVector(absl::StrCat(name, ".partners"), a.partners, b.partners, out);
  DiffVector(absl::StrCat(name, ".errors"), a.errors, b.errors, out);
  DiffVector(absl::StrCat(name, ".data_ids"), a.data_ids, b.data_ids, out);
  DiffVector(absl::StrCat(name, ".data"), a.data, b.data, out);
}

inline void DiffSequence(const SnapshotSequence& a, const SnapshotSequence& b,
                         Lines& out) {
  const std::string at = absl::StrCat("snapshot seq ", a.id, " ");
  DiffField(at + "salt", a.salt, b.salt, out);
  DiffField(at + "token_ids", a.token_ids, b.token_ids, out);
  for (size_t i = 0; i < a.layers.size() && i < b.layers.size(); ++i) {
    const SnapshotLayer &x = a.layers[i], &y = b.layers[i];
    const std::string layer = absl::StrCat(at, "layer ", i, " ");
    DiffField(layer + "length", x.length, y.length, out);
    DiffField(layer + "window_start", x.window_start, y.window_start, out);
    DiffField(layer + "max_length", x.max_length, y.max_length, out);
    DiffField(layer + "evicted", x.evicted, y.evicted, out);
    DiffVector<SnapshotEntry>(layer + "entries", x.entries, y.entries, out,
                              ShowEntry);
  }
}

inline void DiffSnapshot(const Snapshot& a, const Snapshot& b, Lines& out) {
  const size_t was = out.size();
  if (!(a.config == b.config)) out.push_back("snapshot.config differs");
  DiffField("snapshot.has_token_data", a.has_token_data, b.has_token_data, out);
  DiffStats("snapshot.stats.", a.stats, b.stats, out);
  DiffPool("snapshot.hot", a.hot, b.hot, out);
  DiffPool("snapshot.quant", a.quant, b.quant, out);
  if (a.sequences.size() != b.sequences.size()) {
    out.push_back(absl::StrCat("snapshot.sequences: ", a.sequences.size(),
                               " -> ", b.sequences.size()));
  } else {
    for (size_t i = 0; i < a.sequences.size(); ++i) {
      DiffSequence(a.sequences[i], b.sequences[i], out);
    }
  }
  DiffVector<SnapshotPrefixEntry>("snapshot.prefix", a.prefix, b.prefix, out,
                                  ShowPrefixEntry);
  if (out.size() == was && !(a == b)) out.push_back("snapshot differs");
}

}  // namespace fingerprint_internal

// Takes the fingerprint. O(everything the cache holds).
inline CacheFingerprint Fingerprint(const KVCache& cache) {
  CacheFingerprint f;
  f.stats = cache.Stats();
  f.sequences = cache.Sequences();
  for (SeqId seq : f.sequences) {
    absl::StatusOr<SequenceStats> stats = cache.Stats(seq);
    f.sequence_stats.push_back(stats.ok() ? *stats : SequenceStats{});
    for (int layer = 0; layer < cache.config().num_layers; ++layer) {
      LayerReadout& r = f.layers.emplace_back();
      r.seq = seq;
      r.layer = layer;
      r.length = cache.Length(seq, layer).value_or(-1);
      absl::StatusOr<GatheredLayer> g = cache.Gather(seq, layer);
      if (g.ok()) {
        r.positions = g->positions;
        for (float x : g->k) r.k_bits.push_back(std::bit_cast<uint32_t>(x));
        for (float x : g->v) r.v_bits.push_back(std::bit_cast<uint32_t>(x));
      }
      absl::StatusOr<LayerView> view = cache.View(seq, layer);
      if (!view.ok()) continue;
      for (const BlockView& b : view->blocks) {
        r.runs.push_back(absl::StrFormat(
            "#%u slots %d+%d from %d format %d error %a", b.block_id,
            b.begin_slot, b.tokens, b.first_position,
            static_cast<int>(b.format), b.quant_error));
      }
    }
  }
  f.snapshot = cache.TakeSnapshot({.include_token_data = true});
  return f;
}

// Each difference between two fingerprints, one line each; none when equal.
inline std::vector<std::string> Differences(const CacheFingerprint& a,
                                            const CacheFingerprint& b) {
  namespace diff = fingerprint_internal;
  diff::Lines out;
  diff::DiffStats("stats.", a.stats, b.stats, out);
  if (a.sequences != b.sequences) {
    out.push_back(absl::StrCat("Sequences(): ", absl::StrJoin(a.sequences, ","),
                               " -> ", absl::StrJoin(b.sequences, ",")));
    return out;
  }
  for (size_t i = 0; i < a.sequences.size(); ++i) {
    diff::DiffSequenceStats(absl::StrCat("seq ", a.sequences[i], " Stats()."),
                            a.sequence_stats[i], b.sequence_stats[i], out);
  }
  for (size_t i = 0; i < a.layers.size(); ++i) {
    diff::DiffLayer(a.layers[i], b.layers[i], out);
  }
  if (a.snapshot.ok() != b.snapshot.ok()) {
    out.push_back(absl::StrCat("TakeSnapshot: ", a.snapshot.status().ToString(),
                               " -> ", b.snapshot.status().ToString()));
  } else if (a.snapshot.ok()) {
    diff::DiffSnapshot(*a.snapshot, *b.snapshot, out);
  }
  return out;
}

// Success when `cache` is as `before` shows it; else the differences.
inline ::testing::AssertionResult Unchanged(const KVCache& cache,
                                            const CacheFingerprint& before) {
  const std::vector<std::string> changed =
      Differences(before, Fingerprint(cache));
  if (changed.empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "the cache changed:\n  " << absl::StrJoin(changed, "\n  ");
}

}  // namespace kvpage::testing

// The cache (a KVCache&) is exactly as the fingerprint `before` shows it.
#define EXPECT_UNCHANGED(cache, before) \
  EXPECT_TRUE(::kvpage::testing::Unchanged((cache), (before)))
#define ASSERT_UNCHANGED(cache, before) \
  ASSERT_TRUE(::kvpage::testing::Unchanged((cache), (before)))

#endif  // KVPAGE_TESTS_CACHE_FINGERPRINT_H_
