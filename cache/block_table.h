// cache/block_table.h — which blocks hold which positions, for one sequence
// and one layer, and the overflow rules that decide what stays visible.
//
// A layer of length L (the seq_len of its last update) with window start ws
// has these visible positions, oldest first:
//   sinks   [0, min(S, L))
//   window  [max(ws, S), L)
// where S is the layer's sink count (0 under kError). Positions in [S, ws)
// were evicted by the policy. Position p lives in logical block p / bt, slot
// p % bt; logical blocks are held, in order, by `sink_blocks` (logical
// blocks [0, ceil(min(S, L) / bt)), those with a sink position) and
// `window` (the logical blocks from `window_first` on that hold visible
// window positions and are not sink blocks). A block partly evicted stays;
// the view masks its evicted slots.
//
// Invariants (checked by KVCache::Validate()):
//   sink_blocks.size() == ceil(min(S, L) / bt)
//   the live window blocks are exactly WindowRange(rules, L, ws)
//   visible tokens <= max_seq_len (every policy); ws only moves forward,
//     except a rollback into the sinks, which leaves nothing evicted
//   spares is empty unless the policy is kCircularBuffer, and then
//     window blocks + spares <= rules.ring_blocks
//   max_length >= L
//
// Thread safety: thread-compatible, owned by its KVCache.
#ifndef KVPAGE_CACHE_BLOCK_TABLE_H_
#define KVPAGE_CACHE_BLOCK_TABLE_H_

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/types/span.h"
#include "allocator/block_storage.h"
#include "allocator/check.h"
#include "kvpage/config.h"

namespace kvpage::internal {

// One layer's overflow policy, resolved from the config.
struct LayerRules {
  OverflowPolicy overflow = OverflowPolicy::kError;
  int64_t max_seq_len = 0;   // W: most visible tokens
  int64_t sinks = 0;         // S: pinned leading positions (0 under kError)
  int64_t truncate_to = 0;   // T: visible tokens after a context shift
  int64_t block_tokens = 0;  // bt
  int64_t sink_blocks = 0;   // ceil(S / bt): logical blocks with a sink slot
  // kCircularBuffer: window blocks a ring keeps, the most a window of
  // W - S tokens can touch: ceil((W - S - 1) / bt) + 1.
  int64_t ring_blocks = 0;
  // The layers whose blocks a table of these rules holds: a group's
  // (TableRules), else 1. Compressing and decompressing a block take every
  // one of its layer slots.
  int64_t layers = 1;

  static LayerRules Resolve(const LayerPolicy& policy, int block_tokens);
  bool operator==(const LayerRules&) const = default;
  bool evicts() const { return overflow != OverflowPolicy::kError; }
  bool ring() const { return overflow == OverflowPolicy::kCircularBuffer; }
};

// For a >= 0, b > 0; no overflow near INT64_MAX.
inline int64_t CeilDiv(int64_t a, int64_t b) { return a / b + (a % b != 0); }

inline LayerRules LayerRules::Resolve(const LayerPolicy& p, int block_tokens) {
  LayerRules r;
  r.overflow = p.overflow;
  r.max_seq_len = p.max_seq_len;
  r.sinks = p.overflow == OverflowPolicy::kError ? 0 : p.sink_tokens;
  r.truncate_to = EffectiveTruncateTo(p.max_seq_len, p.truncate_to);
  r.block_tokens = block_tokens;
  r.sink_blocks = CeilDiv(r.sinks, block_tokens);
  r.ring_blocks = CeilDiv(r.max_seq_len - r.sinks - 1, block_tokens) + 1;
  return r;
}

// The rules of every layer of a config that passed ValidateConfig(): the
// cache-wide policy, replaced where layer_policies name a layer. O(layers).
inline std::vector<LayerRules> ResolveLayers(const CacheConfig& config) {
  const LayerPolicy global{.overflow = config.overflow,
                           .max_seq_len = config.max_seq_len,
                           .sink_tokens = config.sink_tokens,
                           .truncate_to = config.truncate_to};
  std::vector<LayerRules> rules(
      static_cast<size_t>(config.num_layers),
      LayerRules::Resolve(global, config.block_tokens));
  for (const LayerPolicy& p : config.layer_policies) {
    rules[static_cast<size_t>(p.layer)] =
        LayerRules::Resolve(p, config.block_tokens);
  }
  return rules;
}

// The rules of a table shared by `layers` layers with rules `r`: theirs,
// except that a ring keeps room for its layers a token apart (one ahead
// shows a block the others have not left yet): ceil((W - S) / bt) + 1
// window blocks. O(1).
inline LayerRules TableRules(const LayerRules& r, size_t layers) {
  LayerRules t = r;
  t.layers = static_cast<int64_t>(layers);
  if (layers > 1) {
    t.ring_blocks = CeilDiv(r.max_seq_len - r.sinks, r.block_tokens) + 1;
  }
  return t;
}

// Which table each layer's blocks are in (CacheConfig::group_layers).
// Without grouping every layer is a group of its own; with it, layers with
// the same resolved rules form one group, in the order of their first
// layer. A layer's slot is its index in its group: block b of the group is
// storage block slot * num_blocks + b for that layer.
struct LayerGroups {
  std::vector<int> group_of, slot_of;     // per layer
  std::vector<std::vector<int>> members;  // per group, ascending layers
  int width = 1;                          // the most layers of one group
  size_t size() const { return members.size(); }
};
LayerGroups ResolveGroups(const CacheConfig& config,
                          const std::vector<LayerRules>& rules);

// Visible tokens of a layer of length `length` and window start `ws`.
inline int64_t VisibleTokens(const LayerRules& r, int64_t length, int64_t ws) {
  const int64_t lo = std::max(ws, r.sinks);
  return std::min(r.sinks, length) + std::max<int64_t>(0, length - lo);
}

// The logical blocks [first, last) the window list holds; first == last when
// every visible window position lies in a sink block (or there is none).
struct BlockRange {
  int64_t first = 0, last = 0;
  int64_t size() const { return last - first; }
};
inline BlockRange WindowRange(const LayerRules& r, int64_t length, int64_t ws) {
  const int64_t lo = std::max(ws, r.sinks);
  const int64_t first = std::max(r.sink_blocks, lo / r.block_tokens);
  const int64_t last = CeilDiv(length, r.block_tokens);
  if (length <= lo || last <= first) return {first, first};
  return {first, last};
}

inline int64_t SinkBlocks(const LayerRules& r, int64_t length) {
  return CeilDiv(std::min(r.sinks, length), r.block_tokens);
}

// What the layers of a group need their table to hold: the most sink
// blocks and the union of their window ranges (empty: none).
struct GroupNeeds {
  int64_t sink_blocks = 0;
  BlockRange window;
};
// Adds what a layer of `length` and window start `window_start` shows.
// O(1).
inline void AddNeeds(const LayerRules& r, int64_t length, int64_t window_start,
                     GroupNeeds& needs) {
  needs.sink_blocks = std::max(needs.sink_blocks, SinkBlocks(r, length));
  const BlockRange w = WindowRange(r, length, window_start);
  if (w.size() <= 0) return;
  needs.window = needs.window.size() <= 0
                     ? w
                     : BlockRange{std::min(needs.window.first, w.first),
                                  std::max(needs.window.last, w.last)};
}

// A table entry: a block of the hot pool, or (top bit set) the first cell of
// a block of the quantized pool. Hot pools hold fewer than 2^31 blocks.
using BlockRef = uint32_t;
inline constexpr BlockRef kQuantTag = 0x80000000u;
inline bool IsQuant(BlockRef ref) { return (ref & kQuantTag) != 0; }
inline BlockId RefId(BlockRef ref) { return ref & ~kQuantTag; }
inline BlockRef QuantRef(BlockId cell) { return cell | kQuantTag; }

// What one layer holds, as the update rule sees it. A table of one layer
// (the default) holds its own; the layers of a group (CacheConfig::
// group_layers) share one table, which holds the state while they agree and
// holds their union while they differ (BlockTable::split).
struct LayerState {
  int64_t length = 0;        // seq_len of the last update
  int64_t window_start = 0;  // ws; <= S means nothing is evicted
  int64_t max_length = 0;    // the largest length this layer has had
  int64_t evicted = 0;       // tokens evicted by the overflow policy
  bool operator==(const LayerState&) const = default;
};

struct BlockTable : LayerState {
  std::vector<BlockRef> sink_blocks;  // always hot: sinks are not compressed
  std::vector<BlockRef> window;  // live from `head` on; a deque without nodes
  size_t head = 0;
  int64_t window_first = 0;      // logical block of window[head]
  std::vector<BlockRef> spares;  // kCircularBuffer: held, hot, no visible token
  // A group's layers differ: each holds its own LayerState
  // (Sequence::layer_states), and this table's state is their union: the
  // longest length, and blocks for every layer's visible positions.
  bool split = false;
  // While split: the layers whose state equals the table's (the union); the
  // table rejoins when all do.
  int32_t agree = 0;
  int64_t cold_done = 0;  // auto_compress: logical blocks below this
                          // were considered for compressing
  int64_t published = 0;  // logical blocks below this were offered to the
                          // prefix cache
  // Positions from here on were reserved by the last Reserve and may not
  // be written yet: no block holding one is compressed. The table's next
  // Reserve or Update counts them written.
  int64_t reserved_from = kNothingReserved;
  static constexpr int64_t kNothingReserved = INT64_MAX;

  int64_t window_blocks() const {
    return static_cast<int64_t>(window.size() - head);
  }
  int64_t held_blocks() const {
    return static_cast<int64_t>(sink_blocks.size()) + window_blocks() +
           static_cast<int64_t>(spares.size());
  }
  // The block holding logical block `logical`, which must be held. O(1).
  BlockRef Block(int64_t logical) const {
    return const_cast<BlockTable*>(this)->MutableBlock(logical);
  }
  BlockRef& MutableBlock(int64_t logical) {
    if (logical < static_cast<int64_t>(sink_blocks.size())) {
      return sink_blocks[static_cast<size_t>(logical)];
    }
    KVPAGE_DCHECK(logical >= window_first &&
                  logical < window_first + window_blocks());
    return window[head + static_cast<size_t>(logical - window_first)];
  }
  // Whether logical block `logical` is held (by the sink or window list).
  bool Holds(int64_t logical) const {
    return logical < static_cast<int64_t>(sink_blocks.size()) ||
           (logical >= window_first &&
            logical < window_first + window_blocks());
  }
  BlockRef PopWindowFront() {
    const BlockRef id = window[head++];
    ++window_first;
    if (head >= 32 && head * 2 >= window.size()) {  // amortized O(1)
      window.erase(window.begin(),
                   window.begin() + static_cast<ptrdiff_t>(head));
      head = 0;
    }
    return id;
  }
  BlockRef PopWindowBack() {
    const BlockRef id = window.back();
    window.pop_back();
    return id;
  }
  // Empties the window list and makes `first` its next logical block.
  void ResetWindow(int64_t first) {
    window.clear();
    head = 0;
    window_first = first;
  }
  // Whether a ring holds more window blocks and spares than it may.
  bool HasSurplusSpare(const LayerRules& r) const {
    return r.ring() && !spares.empty() &&
           window_blocks() + static_cast<int64_t>(spares.size()) >
               r.ring_blocks;
  }
};

// Building tables (cache/block_table.cc). They arrange entries only: the
// caller takes a hold on each block a table gains and drops the holds of
// those it loses.

// The empty table of a new sequence's layer. O(1).
BlockTable NewTable(const LayerRules& rules);

// A fork's copy of `from`: the same blocks and lengths; a ring's spares stay
// with the parent (the child takes new blocks). O(blocks).
BlockTable ForkTable(const BlockTable& from);

// Attaches `blocks`, the prefix cache's blocks of logical blocks [0, n) of
// this layer, as the first `length` positions of `table`, which holds no
// position (a ring emptied by Truncate may still hold spares: the caller
// then drops its surplus, HasSurplusSpare). O(n).
void AttachPrefix(const LayerRules& rules, absl::Span<const BlockId> blocks,
                  int64_t length, BlockTable& table);

// Engine mode's rows (kvpage/engine.h): a layer's blocks, sink blocks then
// window blocks; window entry j holds logical block j + block_offset().
struct RowShape {
  int64_t sink_entries = 0;
  int64_t window_first = 0;  // logical block of the first window entry
  int64_t window_entries = 0;
  int64_t entries() const { return sink_entries + window_entries; }
  int64_t block_offset() const { return window_first - sink_entries; }
  // One past the last logical block listed.
  int64_t end() const {
    return window_entries > 0 ? window_first + window_entries : sink_entries;
  }
};
// The row of a table's own layer: what it holds.
inline RowShape RowOf(const BlockTable& t) {
  return {static_cast<int64_t>(t.sink_blocks.size()), t.window_first,
          t.window_blocks()};
}
// The row of layer `s` of a split table: what the layer shows (the table
// holds that and more for its other layers). O(1).
inline RowShape RowOf(const LayerRules& r, const LayerState& s) {
  const BlockRange w = WindowRange(r, s.length, s.window_start);
  return {SinkBlocks(r, s.length), w.first, w.size()};
}
// The row of `s`, a layer whose blocks `t` holds.
inline RowShape RowOf(const LayerRules& r, const LayerState& s,
                      const BlockTable& t) {
  return t.split ? RowOf(r, s) : RowOf(t);
}
// The first visible position at or past the sinks (the length when none).
inline int64_t RowWindowStart(const LayerRules& r, const LayerState& t) {
  return std::min(std::max(t.window_start, r.sinks), t.length);
}
// Writes the row's row.entries() block ids to `out`; false (with `out`
// partly written) at a compressed block, which a kernel cannot read. O(row).
bool WriteRowEntries(const BlockTable& t, const RowShape& row, int32_t* out);

// Calls fn(block_ref, slot, count, position) for each run of visible
// positions in [lo, hi), oldest first, one run per block and range (a block
// holding sinks and window positions with evicted slots between gives two
// runs). O(runs).
// `s` is the layer's state, `t` the table holding its blocks.
template <typename Fn>
void ForEachVisibleRun(const LayerRules& r, const LayerState& s,
                       const BlockTable& t, int64_t lo, int64_t hi, Fn&& fn) {
  const int64_t bt = r.block_tokens;
  auto range = [&](int64_t from, int64_t to) {
    int64_t p = std::max(from, lo);
    const int64_t end = std::min(to, hi);
    if (p >= end) return;
    // One division for the first block; the next runs start at slot 0.
    int64_t block = p / bt, slot = p - block * bt;
    while (p < end) {
      const int64_t count = std::min(bt - slot, end - p);
      fn(t.Block(block), slot, count, p);
      p += count;
      ++block;
      slot = 0;
    }
  };
  const int64_t sink_end = std::min(r.sinks, s.length);
  const int64_t window_begin = std::max(s.window_start, r.sinks);
  if (window_begin <= sink_end) {  // nothing evicted: one contiguous range
    range(0, s.length);
    return;
  }
  range(0, sink_end);
  range(window_begin, s.length);
}
template <typename Fn>
void ForEachVisibleRun(const LayerRules& r, const BlockTable& t, int64_t lo,
                       int64_t hi, Fn&& fn) {
  ForEachVisibleRun(r, t, t, lo, hi, std::forward<Fn>(fn));
}

}  // namespace kvpage::internal

#endif  // KVPAGE_CACHE_BLOCK_TABLE_H_
