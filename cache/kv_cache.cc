#include "kvpage/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/strings/str_format.h"
#include "allocator/block_pool.h"
#include "allocator/check.h"
#include "allocator/convert.h"
#include "allocator/host_arena.h"
#include "allocator/quantize.h"
#include "cache/block_table.h"
#include "cache/kv_cache_internal.h"
#include "cache/quant_pool_config.h"
#include "kvpage/prefix.h"
#include "kvpage/snapshot.h"

namespace kvpage {

using internal::BlockId;
using internal::BlockPool;
using internal::BlockRange;
using internal::BlockRef;
using internal::BlockTable;
using internal::CeilDiv;
using internal::IsQuant;
using internal::kNoBlock;
using internal::LayerRules;
using internal::QuantFormat;
using internal::RefId;

namespace {

struct Sequence {
  std::vector<BlockTable> layers;
  uint64_t salt = 0;                   // prefix-cache salt
  std::vector<int32_t> token_ids;      // AppendTokens / MatchPrefix
  std::vector<uint64_t> block_hashes;  // chain hash of each full block
};

// A block of the prefix cache: for one chain hash, the block of each layer
// that holds those tokens. The cache holds one reference on each.
// Invariants: layers_present == blocks that are not kNoBlock;
//   layers_in_use == present blocks some sequence also holds (ref_count > 1);
//   on the LRU list (evictable) exactly when layers_in_use == 0.
struct PrefixEntry {
  uint64_t hash = 0;
  std::vector<BlockId> blocks;  // per layer
  int layers_present = 0;
  int layers_in_use = 0;
  int32_t lru_prev = -1, lru_next = -1;
  bool in_lru = false;
};

// What an update or rollback does to one layer, worked out before anything
// changes. `fresh` blocks must come from the pool; everything else is
// reused from the hot blocks the layer lets go of (and a ring's spares).
// Repacked or shared blocks that will be written get a new hot block first.
struct Plan {
  int64_t length = 0;        // L'
  int64_t window_start = 0;  // ws'
  int64_t sink_blocks = 0;   // sink blocks held afterwards
  BlockRange window;         // window blocks held afterwards
  int64_t new_blocks = 0;    // logical blocks that need a block
  int64_t fresh = 0;         // of those, and of promotions, from the pool
  int64_t evicted = 0;       // tokens the policy evicts
  int64_t visible_before = 0, visible_after = 0;
  // Kept logical blocks to rewrite before writing: (block, repacked?). A
  // repacked one is made hot again, a shared hot one copied.
  absl::InlinedVector<std::pair<int64_t, bool>, 4> rewrite;
};

// `start` is the first position the caller writes (seq_len for a rollback).
Plan MakePlan(const LayerRules& r, const BlockTable& t, const BlockPool& pool,
              int64_t start, int64_t seq_len) {
  Plan plan;
  plan.length = seq_len;
  // A rollback below the window start can only reach into the sinks (the
  // callers refuse the rest): then nothing stays evicted.
  const int64_t ws0 =
      seq_len < t.length ? std::min(t.window_start, seq_len) : t.window_start;
  int64_t ws = ws0;
  const int64_t visible = internal::VisibleTokens(r, seq_len, ws0);
  if (visible > r.max_seq_len) {
    switch (r.overflow) {
      case OverflowPolicy::kSlidingWindow:
      case OverflowPolicy::kCircularBuffer:
        ws = seq_len - (r.max_seq_len - r.sinks);
        break;
      case OverflowPolicy::kTruncate:
        ws = seq_len - (r.truncate_to - r.sinks);
        break;
      case OverflowPolicy::kError:
        break;  // refused before planning
    }
  }
  plan.window_start = ws;
  plan.evicted = std::max<int64_t>(0, ws - std::max(ws0, r.sinks));
  plan.visible_before = internal::VisibleTokens(r, t.length, t.window_start);
  plan.visible_after = internal::VisibleTokens(r, seq_len, ws);

  plan.sink_blocks = internal::SinkBlocks(r, seq_len);
  plan.window = internal::WindowRange(r, seq_len, ws);
  const int64_t cur_first = t.window_first;
  const int64_t cur_last = t.window_first + t.window_blocks();
  int64_t kept_first = std::max(cur_first, plan.window.first);
  int64_t kept_last = std::min(cur_last, plan.window.last);
  if (kept_last <= kept_first) kept_first = kept_last = cur_last;
  const int64_t kept = kept_last - kept_first;
  const int64_t sinks_now = static_cast<int64_t>(t.sink_blocks.size());
  // A block let go of is reused here only when it is hot and this layer is
  // its only holder: a repacked one goes back to the quantized pool, a
  // shared one (a fork, the prefix cache) stays with its other holders.
  auto reusable_block = [&](BlockRef ref) {
    return !IsQuant(ref) && pool.ref_count(ref) == 1;
  };
  int64_t reusable = 0;
  for (int64_t b = plan.sink_blocks; b < sinks_now; ++b) {
    reusable += reusable_block(t.sink_blocks[static_cast<size_t>(b)]);
  }
  for (int64_t b = cur_first; b < kept_first; ++b) {
    reusable += reusable_block(t.Block(b));
  }
  for (int64_t b = kept_last; b < cur_last; ++b) {
    reusable += reusable_block(t.Block(b));
  }
  plan.new_blocks = (plan.window.size() - kept) +
                    std::max<int64_t>(0, plan.sink_blocks - sinks_now);
  if (r.ring()) reusable += static_cast<int64_t>(t.spares.size());
  plan.fresh = std::max<int64_t>(0, plan.new_blocks - reusable);

  // Kept blocks this update writes into: a repacked one is made hot again,
  // a shared one is copied first (copy-on-write).
  const int64_t bt = r.block_tokens;
  const int64_t sinks_kept = std::min(sinks_now, plan.sink_blocks);
  auto touch = [&](int64_t b) {
    const bool kept_block =
        b < sinks_kept || (b >= kept_first && b < kept_last && kept > 0);
    if (!kept_block) return;
    if (!plan.rewrite.empty() && plan.rewrite.back().first == b) return;
    const BlockRef ref = t.Block(b);
    if (IsQuant(ref) || pool.ref_count(ref) > 1) {
      plan.rewrite.push_back({b, IsQuant(ref)});
    }
  };
  const int64_t sink_hi = std::min(seq_len, r.sinks);
  for (int64_t b = start / bt; b * bt < sink_hi && start < sink_hi; ++b) {
    touch(b);
  }
  const int64_t write_lo = std::max({start, ws, r.sinks});
  for (int64_t b = write_lo / bt; b * bt < seq_len && write_lo < seq_len; ++b) {
    touch(b);
  }
  plan.fresh += static_cast<int64_t>(plan.rewrite.size());
  return plan;
}

}  // namespace

// Invariants (Validate() walks them):
//   ref_count(b) == holdings of b over all tables (sink, window, spare), in
//     each pool; the V slot of a two-slot int8 block is held with its K slot
//   pool->used_blocks() == distinct hot blocks held, likewise quant slots
//   blocks_allocated - blocks_released == hot blocks used
//   tokens_stored == visible tokens summed over sequences and layers
//   every table satisfies the invariants in cache/block_table.h; sink blocks,
//     spares and circular-buffer layers are hot
struct KVCache::Impl {
  CacheConfig config;
  std::vector<LayerRules> rules;  // per layer
  int64_t block_bytes = 0;
  int64_t token_elems = 0;  // num_kv_heads * head_dim
  int64_t token_bytes = 0;  // token_elems * DTypeSize(dtype)
  int64_t v_offset = 0;     // bytes from a block's start to its V region
  // Declared before `local` so that the cache is flushed before the pool
  // goes away.
  std::unique_ptr<BlockPool> pool;
  std::unique_ptr<BlockPool::LocalCache> local;
  std::byte* host_base = nullptr;  // null when the storage is not host memory

  // The quantized pool (compression enabled): slots of `slot_bytes`; a block
  // takes one slot, or two (K part, V part) for int8 in mixed mode.
  bool compress = false;
  bool mixed = false;  // max_rel_error > 0
  QuantFormat fixed_format = QuantFormat::kInt8;
  internal::QuantShape qshape{};
  internal::QuantLayout int8_layout, int4_layout;
  int64_t slot_bytes = 0;
  std::unique_ptr<BlockPool> qpool;
  std::unique_ptr<BlockPool::LocalCache> qlocal;
  std::byte* qbase = nullptr;
  std::vector<QuantFormat> qformat;  // per primary slot
  std::vector<BlockId> qpartner;     // V slot of a two-slot block, or kNoBlock
  std::vector<float> qerror;         // per primary slot, relative MSE

  absl::flat_hash_map<SeqId, Sequence> sequences;
  SeqId next_seq = 1;

  int64_t tokens_stored = 0;
  int64_t hits = 0, misses = 0, evictions = 0;
  int64_t bytes_written = 0, bytes_copied = 0;
  int64_t blocks_released_by_policy = 0, blocks_reused_by_ring = 0;
  int64_t blocks_allocated = 0, blocks_released = 0;
  int64_t compressions_applied = 0, compressions_skipped = 0;
  int64_t decompressions = 0;
  int64_t quant_blocks_int8 = 0, quant_blocks_int4 = 0;
  double error_sum = 0, error_max = 0;

  // Scratch space reused across calls (never part of the cache's state).
  absl::InlinedVector<BlockId, 16> fresh_ids;
  absl::InlinedVector<BlockRef, 16> recycled;
  std::vector<std::byte> staging;
  std::vector<std::byte> promote_scratch;

  ~Impl() {
    for (auto& [id, sequence] : sequences) {
      for (BlockTable& table : sequence.layers) ReleaseAll(table);
    }
    while (lru_head >= 0) EvictOne();  // every entry is idle now
  }

  // Gives one table's hold on a hot block back to the pool.
  // Every hold of a table on a hot block goes through these two, which keep
  // the prefix cache's count of layers in use. O(1).
  void Release(BlockId id) {
    const uint32_t before = pool->ref_count(id);
    if (before == 2 && cached_entry[id] >= 0) {
      LayerLeft(cached_entry[id]);
    }
    local->Release(id);
    if (before == 1) ++blocks_released;
  }
  void Retain(BlockId id) {
    if (pool->ref_count(id) == 1 && cached_entry[id] >= 0) {
      LayerJoined(cached_entry[id]);
    }
    pool->Retain(id);
  }
  void RetainRef(BlockRef ref) {
    if (!IsQuant(ref)) {
      Retain(ref);
      return;
    }
    qpool->Retain(RefId(ref));
    if (qpartner[RefId(ref)] != kNoBlock) qpool->Retain(qpartner[RefId(ref)]);
  }

  // ---- The prefix cache: entries by hash, an LRU list of idle ones. ----
  std::vector<PrefixEntry> entries;
  std::vector<int32_t> free_entries;
  absl::flat_hash_map<uint64_t, int32_t> by_hash;
  std::vector<int32_t> cached_entry;     // per hot block: its entry, or -1
  int32_t lru_head = -1, lru_tail = -1;  // head: least recently used
  int64_t evictable_blocks = 0;          // blocks of entries on the list

  void LruPush(int32_t e) {  // as most recently used
    PrefixEntry& entry = entries[static_cast<size_t>(e)];
    entry.lru_prev = lru_tail;
    entry.lru_next = -1;
    if (lru_tail >= 0) {
      entries[static_cast<size_t>(lru_tail)].lru_next = e;
    } else {
      lru_head = e;
    }
    lru_tail = e;
    entry.in_lru = true;
    evictable_blocks += entry.layers_present;
  }
  void LruRemove(int32_t e) {
    PrefixEntry& entry = entries[static_cast<size_t>(e)];
    if (entry.lru_prev >= 0) {
      entries[static_cast<size_t>(entry.lru_prev)].lru_next = entry.lru_next;
    } else {
      lru_head = entry.lru_next;
    }
    if (entry.lru_next >= 0) {
      entries[static_cast<size_t>(entry.lru_next)].lru_prev = entry.lru_prev;
    } else {
      lru_tail = entry.lru_prev;
    }
    entry.lru_prev = entry.lru_next = -1;
    entry.in_lru = false;
    evictable_blocks -= entry.layers_present;
  }
  void LayerLeft(int32_t e) {
    if (--entries[static_cast<size_t>(e)].layers_in_use == 0) LruPush(e);
  }
  void LayerJoined(int32_t e) {
    PrefixEntry& entry = entries[static_cast<size_t>(e)];
    if (entry.layers_in_use++ == 0 && entry.in_lru) LruRemove(e);
  }

  // Evicts the least recently used idle entry: its blocks go back to the
  // pool. O(layers).
  void EvictOne() {
    const int32_t e = lru_head;
    KVPAGE_DCHECK(e >= 0);
    LruRemove(e);
    PrefixEntry& entry = entries[static_cast<size_t>(e)];
    for (BlockId& id : entry.blocks) {
      if (id == kNoBlock) continue;
      cached_entry[id] = -1;
      Release(id);  // the cache's own reference: the last one
      id = kNoBlock;
    }
    by_hash.erase(entry.hash);
    entry = PrefixEntry{};
    free_entries.push_back(e);
  }

  // Offers `layer`'s block `logical` of `seq` to the prefix cache under its
  // chain hash: the first block offered for a hash and layer is kept.
  // A block already cached (under this hash or another: a fork told other
  // ids than its parent) is left as it is, and makes no entry.
  void Publish(const Sequence& seq, size_t layer, BlockId id, int64_t logical) {
    if (cached_entry[id] >= 0) return;
    const uint64_t hash = seq.block_hashes[static_cast<size_t>(logical)];
    int32_t e;
    if (auto it = by_hash.find(hash); it != by_hash.end()) {
      e = it->second;
      if (entries[static_cast<size_t>(e)].blocks[layer] != kNoBlock) return;
    } else {
      if (free_entries.empty()) {
        entries.emplace_back();
        free_entries.push_back(static_cast<int32_t>(entries.size() - 1));
      }
      e = free_entries.back();
      free_entries.pop_back();
      PrefixEntry& fresh_entry = entries[static_cast<size_t>(e)];
      fresh_entry.hash = hash;
      fresh_entry.blocks.assign(static_cast<size_t>(config.num_layers),
                                kNoBlock);
      by_hash.emplace(hash, e);
    }
    PrefixEntry& entry = entries[static_cast<size_t>(e)];
    // Idle in its other layers: no longer. Off the list before the count
    // changes, so that the list's block count loses what it had added.
    if (entry.in_lru) LruRemove(e);
    entry.blocks[layer] = id;
    ++entry.layers_present;
    ++entry.layers_in_use;  // the publishing sequence holds it
    cached_entry[id] = e;
    pool->Retain(id);
  }

  // Publishes the full, hashed, fully visible hot blocks of `layer` not yet
  // offered. O(blocks published).
  void PublishLayer(Sequence& seq, size_t layer) {
    BlockTable& t = seq.layers[layer];
    const LayerRules& r = rules[layer];
    const int64_t bt = r.block_tokens;
    const int64_t limit =
        std::min(static_cast<int64_t>(seq.block_hashes.size()), t.length / bt);
    for (int64_t b = t.published; b < limit; ++b) {
      const bool visible = b * bt >= std::max(t.window_start, r.sinks) ||
                           (b + 1) * bt <= r.sinks || t.window_start <= r.sinks;
      if (!visible || !t.Holds(b) || IsQuant(t.Block(b))) continue;
      Publish(seq, layer, t.Block(b), b);
    }
    t.published = std::max(t.published, limit);
  }

  // Gives back a repacked block: its slot(s) return to the quantized pool.
  void ReleaseQuant(BlockId slot) {
    if (qpool->ref_count(slot) == 1) {
      (qformat[slot] == QuantFormat::kInt8 ? quant_blocks_int8
                                           : quant_blocks_int4) -= 1;
    }
    const BlockId partner = qpartner[slot];
    qlocal->Release(slot);
    if (partner != kNoBlock) qlocal->Release(partner);
  }

  void ReleaseRef(BlockRef ref) {
    if (IsQuant(ref)) {
      ReleaseQuant(RefId(ref));
    } else {
      Release(ref);
    }
  }

  void ReleaseAll(BlockTable& t) {
    for (BlockRef ref : t.sink_blocks) ReleaseRef(ref);
    for (size_t i = t.head; i < t.window.size(); ++i) ReleaseRef(t.window[i]);
    for (BlockRef ref : t.spares) ReleaseRef(ref);
    t.sink_blocks.clear();
    t.ResetWindow(0);
    t.spares.clear();
  }

  // The K and V parts of a repacked block.
  const internal::QuantLayout& Layout(QuantFormat f) const {
    return f == QuantFormat::kInt8 ? int8_layout : int4_layout;
  }
  std::byte* KPart(BlockId slot) const { return qbase + slot * slot_bytes; }
  std::byte* VPart(BlockId slot) const {
    return qpartner[slot] != kNoBlock
               ? qbase + qpartner[slot] * slot_bytes
               : KPart(slot) + Layout(qformat[slot]).k_part_bytes;
  }

  // Host addresses of a hot block's K and V regions; storage that is not
  // host memory is read into `staging` first.
  std::pair<const std::byte*, const std::byte*> HotSource(BlockId id) {
    if (host_base != nullptr) {
      const std::byte* k = host_base + id * block_bytes;
      return {k, k + v_offset};
    }
    staging.resize(static_cast<size_t>(block_bytes));
    pool->storage().Read(id, 0, staging.data(), block_bytes);
    return {staging.data(), staging.data() + v_offset};
  }

  // Whether logical block `logical` of `t` may be repacked now.
  bool Repackable(const LayerRules& r, const BlockTable& t,
                  int64_t logical) const {
    const int64_t bt = r.block_tokens;
    return compress && !r.ring() && logical >= r.sink_blocks &&
           logical >= t.window_first &&
           logical < t.window_first + t.window_blocks() &&
           !IsQuant(t.Block(logical)) &&
           pool->ref_count(t.Block(logical)) == 1 &&  // shared stays hot
           (logical + 1) * bt <= t.length - config.compression.hot_tokens;
  }

  // The visible slots [first, first + count) of window block `logical`: a
  // block partly evicted by a window keeps stale data in its other slots.
  std::pair<int, int> VisibleSlots(const LayerRules& r, const BlockTable& t,
                                   int64_t logical) const {
    const int64_t bt = r.block_tokens;
    const int64_t lo = std::max({logical * bt, t.window_start, r.sinks});
    return {static_cast<int>(lo - logical * bt),
            static_cast<int>((logical + 1) * bt - lo)};
  }

  // Whether slots [first, first + count) of a hot block (HotSource) hold
  // only values the quantized formats represent (finite, |x| <= 65504).
  // O(block size).
  bool Representable(const std::byte* k_src, const std::byte* v_src, int first,
                     int count) const {
    const int64_t offset = first * token_bytes;
    const int64_t elems = count * token_elems;
    return internal::AllWithinQuantRange(k_src + offset, config.dtype, elems) &&
           internal::AllWithinQuantRange(v_src + offset, config.dtype, elems);
  }

  // Repacks one repackable block into the quantized pool and releases its
  // hot block. False (and compressions_skipped) when the quantized pool has
  // no room or the block holds a value the formats cannot represent (NaN,
  // an infinity, |x| > 65504): the block stays hot. O(block size).
  bool Repack(const LayerRules& r, BlockTable& t, int64_t logical) {
    const BlockId hot = t.Block(logical);
    const auto [first, count] = VisibleSlots(r, t, logical);
    const auto [k_src, v_src] = HotSource(hot);
    const BlockId slot = qlocal->AllocateOne();
    if (slot == kNoBlock) {
      ++compressions_skipped;
      return false;
    }
    QuantFormat format = mixed ? QuantFormat::kInt4 : fixed_format;
    BlockId partner = kNoBlock;
    std::byte* k_part = qbase + slot * slot_bytes;
    std::byte* v_part = k_part + Layout(format).k_part_bytes;
    // The error sums cost a third of the repack: only when asked for.
    const internal::QuantizeOptions options{
        .measure_error = mixed || config.compression.measure_error};
    internal::QuantError error =
        internal::QuantizeBlock(format, qshape, config.dtype, k_src, v_src,
                                first, count, k_part, v_part, options);
    // The range check runs after the kernel, which has brought the block
    // into the caches while its prefetches overlapped the reads with its
    // work: checked first, the block's trip from DRAM came before the
    // kernel's, and a default int8 repack from DRAM fell from 0.80x to
    // 0.66x memcpy (bench/compress_bench.cc); checked after, it costs a pass
    // over L2. A block that fails it wasted a repack: such blocks are rare.
    if (!Representable(k_src, v_src, first, count)) {
      qlocal->Release(slot);
      ++compressions_skipped;
      return false;
    }
    if (mixed && error.rel() > config.compression.max_rel_error) {
      partner = qlocal->AllocateOne();
      if (partner == kNoBlock) {  // no room for int8: keep the block hot
        qlocal->Release(slot);
        ++compressions_skipped;
        return false;
      }
      format = QuantFormat::kInt8;
      v_part = qbase + partner * slot_bytes;
      error =
          internal::QuantizeBlock(format, qshape, config.dtype, k_src, v_src,
                                  first, count, k_part, v_part, options);
    }
    qformat[slot] = format;
    qpartner[slot] = partner;
    qerror[slot] = static_cast<float>(error.rel());
    (format == QuantFormat::kInt8 ? quant_blocks_int8 : quant_blocks_int4) += 1;
    ++compressions_applied;
    error_sum += error.rel();
    error_max = std::max(error_max, error.rel());
    t.MutableBlock(logical) = internal::QuantRef(slot);
    Release(hot);
    return true;
  }

  // Makes repacked logical block `logical` hot again in block `id`.
  void Promote(BlockTable& t, int64_t logical, BlockId id) {
    const BlockId slot = RefId(t.Block(logical));
    const int64_t bt = config.block_tokens;
    // Decoded straight into the cache's dtype: what a hot block holds.
    const int64_t run_bytes = bt * token_bytes;
    promote_scratch.resize(static_cast<size_t>(2 * run_bytes));
    std::byte* k = promote_scratch.data();
    std::byte* v = k + run_bytes;
    internal::DequantizeBlock(qformat[slot], qshape, KPart(slot), VPart(slot),
                              0, static_cast<int>(bt), config.dtype, k, v);
    WriteRun(id, false, 0, k, config.dtype, bt);
    WriteRun(id, true, 0, v, config.dtype, bt);
    t.MutableBlock(logical) = id;
    ReleaseQuant(slot);
    ++decompressions;
  }

  // Gives `logical` its own copy in block `id` before a write: copy-on-write.
  void CopyOnWrite(BlockTable& t, int64_t logical, BlockId id) {
    const BlockId shared = t.Block(logical);
    pool->storage().Copy(shared, id);
    bytes_copied += block_bytes;
    t.MutableBlock(logical) = id;
    Release(shared);
  }

  // auto_compress: repacks the blocks an update made cold.
  void RepackNewlyCold(const LayerRules& r, BlockTable& t) {
    const int64_t limit =
        std::max<int64_t>(0, t.length - config.compression.hot_tokens) /
        r.block_tokens;
    for (int64_t b = std::max(t.cold_done, t.window_first); b < limit; ++b) {
      if (Repackable(r, t, b)) Repack(r, t, b);
    }
    t.cold_done = std::max(t.cold_done, limit);
  }

  // Moves `t` to the plan's blocks, taking new blocks from the hot blocks it
  // lets go of, the ring's spares and then `fresh` (plan.fresh ids, the
  // promotions' last). Cannot fail. O(blocks changed).
  void ApplyBlocks(const LayerRules& r, BlockTable& t, const Plan& plan,
                   absl::Span<const BlockId> fresh) {
    recycled.clear();
    int64_t evicted_blocks = 0;  // window blocks the policy pushed out
    auto let_go = [&](BlockRef ref) {
      if (IsQuant(ref)) {
        ReleaseQuant(RefId(ref));
      } else if (pool->ref_count(ref) > 1) {
        Release(ref);  // others still read it: never reused for writing
      } else {
        recycled.push_back(ref);
      }
    };
    while (static_cast<int64_t>(t.sink_blocks.size()) > plan.sink_blocks) {
      let_go(t.sink_blocks.back());
      t.sink_blocks.pop_back();
    }
    if (t.window_blocks() > 0) {
      KVPAGE_DCHECK(plan.window.size() == 0 ||
                    t.window_first <= plan.window.first);
      while (t.window_blocks() > 0 && t.window_first < plan.window.first) {
        let_go(t.PopWindowFront());
        ++evicted_blocks;
      }
      while (t.window_blocks() > 0 &&
             t.window_first + t.window_blocks() > plan.window.last) {
        let_go(t.PopWindowBack());
      }
    }
    if (t.window_blocks() == 0) t.ResetWindow(plan.window.first);
    if (!r.ring()) blocks_released_by_policy += evicted_blocks;

    // Sources, in order: a ring's spares, what was let go of, the pool.
    size_t next_fresh = 0;
    size_t next_recycled = 0;
    auto take = [&]() -> BlockRef {
      if (r.ring() && !t.spares.empty()) {
        const BlockRef id = t.spares.back();
        t.spares.pop_back();
        ++blocks_reused_by_ring;
        return id;
      }
      if (next_recycled < recycled.size()) return recycled[next_recycled++];
      return fresh[next_fresh++];
    };
    if (r.ring()) {
      // What the window let go of becomes spare first, so that the oldest
      // block is the one reused.
      while (next_recycled < recycled.size()) {
        t.spares.push_back(recycled[next_recycled++]);
      }
    }
    while (static_cast<int64_t>(t.sink_blocks.size()) < plan.sink_blocks) {
      t.sink_blocks.push_back(take());
    }
    while (t.window_blocks() < plan.window.size()) t.window.push_back(take());
    for (const auto& [logical, repacked] : plan.rewrite) {
      if (repacked) {
        Promote(t, logical, fresh[next_fresh++]);
      } else {
        CopyOnWrite(t, logical, fresh[next_fresh++]);
      }
    }
    KVPAGE_DCHECK(next_fresh == fresh.size());
    // Leftovers: a ring keeps up to its size as spares, the rest goes back.
    while (r.ring() && !t.spares.empty() &&
           t.window_blocks() + static_cast<int64_t>(t.spares.size()) >
               r.ring_blocks) {
      Release(t.spares.back());
      t.spares.pop_back();
    }
    for (; next_recycled < recycled.size(); ++next_recycled) {
      Release(recycled[next_recycled]);
    }
  }

  void Commit(const LayerRules& r, BlockTable& t, const Plan& plan) {
    tokens_stored += plan.visible_after - plan.visible_before;
    evictions += plan.evicted;
    t.evicted += plan.evicted;
    t.length = plan.length;
    t.window_start = plan.window_start;
    t.max_length = std::max(t.max_length, plan.length);
    if (compress) {
      const int64_t limit =
          std::max<int64_t>(0, t.length - config.compression.hot_tokens) /
          r.block_tokens;
      t.cold_done = std::min(t.cold_done, limit);
    }
  }

  // Fills fresh_ids with n blocks of the hot pool. With auto_compress, when
  // the pool is short, first repacks cold blocks of other layers, but only
  // if that frees enough: otherwise nothing changes. ResourceExhausted
  // naming the sizes.
  absl::Status TakeFresh(int64_t n, const BlockTable* updating) {
    fresh_ids.resize(static_cast<size_t>(n));
    if (n == 1) {
      fresh_ids[0] = local->AllocateOne();
      if (ABSL_PREDICT_TRUE(fresh_ids[0] != kNoBlock)) return absl::OkStatus();
    } else if (local->Allocate(absl::MakeSpan(fresh_ids)).ok()) {
      return absl::OkStatus();
    }
    const int64_t free = pool->capacity() - pool->used_blocks();
    int64_t short_by = n - free;
    // Idle prefix-cache blocks go first, least recently used first.
    if (evictable_blocks >= short_by) {
      while (pool->capacity() - pool->used_blocks() < n) EvictOne();
      const absl::Status s = local->Allocate(absl::MakeSpan(fresh_ids));
      KVPAGE_DCHECK(s.ok());
      if (s.ok()) return s;
    }
    short_by -= evictable_blocks;
    if (compress && config.compression.auto_compress) {
      // Worst case two quantized slots a block (int8 in mixed mode).
      const int64_t slots_free = qpool->capacity() - qpool->used_blocks();
      const int64_t room = mixed ? slots_free / 2 : slots_free;
      std::vector<Candidate> candidates;
      if (room >= short_by) candidates = RepackCandidates(updating, short_by);
      if (static_cast<int64_t>(candidates.size()) >= short_by) {
        while (lru_head >= 0) EvictOne();
        for (const Candidate& c : candidates) {
          const bool done = Repack(rules[c.layer], *c.table, c.logical);
          KVPAGE_DCHECK(done);
          (void)done;
        }
        const absl::Status s = local->Allocate(absl::MakeSpan(fresh_ids));
        KVPAGE_DCHECK(s.ok());
        if (s.ok()) return s;
      }
    }
    return absl::ResourceExhaustedError(
        absl::StrFormat("needs %d %s, the pool of %d has %d free and %d "
                        "idle in the prefix cache%s",
                        n, n == 1 ? "block" : "blocks", pool->capacity(), free,
                        evictable_blocks,
                        compress && config.compression.auto_compress
                            ? "; repacking cold blocks cannot free enough"
                            : ""));
  }

  // Hot blocks that repacking could free now, outside `skip`, oldest first
  // per layer, at most `want`.
  struct Candidate {
    BlockTable* table;
    size_t layer;
    int64_t logical;
  };
  std::vector<Candidate> RepackCandidates(const BlockTable* skip,
                                          int64_t want) {
    std::vector<Candidate> out;
    std::vector<SeqId> ids;
    for (const auto& [id, sequence] : sequences) ids.push_back(id);
    std::sort(ids.begin(), ids.end());
    for (SeqId id : ids) {
      Sequence& sequence = sequences.find(id)->second;
      for (size_t layer = 0; layer < sequence.layers.size(); ++layer) {
        BlockTable& t = sequence.layers[layer];
        if (&t == skip) continue;
        const LayerRules& r = rules[layer];
        for (int64_t b = t.window_first; b < t.window_first + t.window_blocks();
             ++b) {
          if (static_cast<int64_t>(out.size()) >= want) return out;
          if (!Repackable(r, t, b)) continue;
          const auto [first, count] = VisibleSlots(r, t, b);
          const auto [k_src, v_src] = HotSource(t.Block(b));
          if (Representable(k_src, v_src, first, count)) {
            out.push_back({&t, layer, b});
          }
        }
      }
    }
    return out;
  }

  // Refuses a write of [start, seq_len) or a rollback to seq_len that would
  // reach positions the policy already evicted: OutOfRange.
  absl::Status CheckEvicted(std::string_view op, SeqId seq, int layer,
                            const BlockTable& t, int64_t start,
                            int64_t seq_len) const {
    const LayerRules& r = rules[static_cast<size_t>(layer)];
    if (t.window_start <= r.sinks) return absl::OkStatus();  // none evicted
    const int64_t evicted_lo = r.sinks, evicted_hi = t.window_start;
    const int64_t write_lo = std::max(start, evicted_lo);
    const int64_t write_hi = std::min({seq_len, t.length, evicted_hi});
    const bool rollback_into = seq_len < t.length &&
                               seq_len - 1 >= evicted_lo &&
                               seq_len - 1 < evicted_hi;
    if (write_lo >= write_hi && !rollback_into) return absl::OkStatus();
    return absl::OutOfRangeError(absl::StrFormat(
        "%s(seq %d, layer %d, seq_len %d): positions [%d, %d) were evicted by "
        "the %s policy; the layer keeps sinks [0, %d) and window [%d, %d)%s",
        op, seq, layer, seq_len, evicted_lo, evicted_hi,
        OverflowPolicyName(r.overflow), std::min(r.sinks, t.length),
        t.window_start, t.length,
        rollback_into ? "; a rollback must keep a visible window token or go "
                        "back into the sinks"
                      : ""));
  }

  // Writes `count` tokens of one half (keys or values) into slots
  // [slot, slot + count) of block `id`.
  void WriteRun(BlockId id, bool values, int64_t slot, const std::byte* src,
                DType from, int64_t count) {
    const int64_t offset = (values ? v_offset : 0) + slot * token_bytes;
    const int64_t elems = count * token_elems;
    if (host_base != nullptr) {
      internal::ConvertElements(src, from,
                                host_base + id * block_bytes + offset,
                                config.dtype, elems);
      return;
    }
    staging.resize(static_cast<size_t>(count * token_bytes));
    internal::ConvertElements(src, from, staging.data(), config.dtype, elems);
    pool->storage().Write(id, offset, staging.data(), count * token_bytes);
  }

  // Reads `count` tokens of one half from slot `slot` of block `id` as f32.
  // Const: storage that is not host memory reads through a local buffer.
  void ReadRun(BlockId id, bool values, int64_t slot, int64_t count,
               float* out) const {
    const int64_t offset = (values ? v_offset : 0) + slot * token_bytes;
    const int64_t elems = count * token_elems;
    if (host_base != nullptr) {
      internal::ConvertElements(host_base + id * block_bytes + offset,
                                config.dtype, out, DType::kF32, elems);
      return;
    }
    std::vector<std::byte> buffer(static_cast<size_t>(count * token_bytes));
    pool->storage().Read(id, offset, buffer.data(), count * token_bytes);
    internal::ConvertElements(buffer.data(), config.dtype, out, DType::kF32,
                              elems);
  }
};

int64_t LayerView::tokens() const {
  int64_t total = 0;
  for (const BlockView& b : blocks) total += b.tokens;
  return total;
}

KVCache::KVCache(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KVCache::~KVCache() = default;

absl::StatusOr<std::unique_ptr<KVCache>> KVCache::Create(
    const CacheConfig& config) {
  if (absl::Status s = ValidateConfig(config); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<internal::HostArena>> arena =
      internal::HostArena::Create(
          config.num_blocks, BlockBytes(config),
          {.prefault = config.prefault, .huge_pages = config.huge_pages});
  if (!arena.ok()) return arena.status();
  return internal::KVCacheAccess::CreateWithStorage(config, *std::move(arena));
}

absl::StatusOr<std::unique_ptr<KVCache>>
internal::KVCacheAccess::CreateWithStorage(
    const CacheConfig& config, std::unique_ptr<BlockStorage> storage) {
  if (absl::Status s = ValidateConfig(config); !s.ok()) return s;
  if (storage == nullptr || storage->num_blocks() != config.num_blocks ||
      storage->block_bytes() != BlockBytes(config)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "KVCache storage: %d blocks of %d bytes; the config needs %d of %d",
        storage == nullptr ? 0 : storage->num_blocks(),
        storage == nullptr ? 0 : storage->block_bytes(), config.num_blocks,
        BlockBytes(config)));
  }
  auto impl = std::make_unique<KVCache::Impl>();
  impl->config = config;
  impl->rules = internal::ResolveLayers(config);
  impl->block_bytes = BlockBytes(config);
  impl->token_elems = int64_t{config.num_kv_heads} * config.head_dim;
  impl->token_bytes = impl->token_elems * DTypeSize(config.dtype);
  impl->v_offset = impl->block_bytes / 2;
  absl::StatusOr<std::unique_ptr<BlockPool>> pool =
      BlockPool::Create(std::move(storage));
  if (!pool.ok()) return pool.status();
  impl->pool = *std::move(pool);
  impl->local = std::make_unique<BlockPool::LocalCache>(*impl->pool);
  impl->host_base = impl->pool->storage().host_base();
  impl->cached_entry.assign(static_cast<size_t>(config.num_blocks), -1);
  if (const CompressionConfig& q = config.compression; q.enabled) {
    KVCache::Impl& m = *impl;
    m.compress = true;
    m.mixed = q.max_rel_error > 0;
    m.fixed_format =
        q.bits == QuantBits::kInt4 ? QuantFormat::kInt4 : QuantFormat::kInt8;
    m.qshape = {.block_tokens = config.block_tokens,
                .num_kv_heads = config.num_kv_heads,
                .head_dim = config.head_dim,
                .group_size = q.group_size};
    // Only the formats this cache writes: int4 needs an even head_dim,
    // which an int8-only cache does not.
    if (m.mixed || m.fixed_format == QuantFormat::kInt8) {
      m.int8_layout = internal::QuantLayout::For(QuantFormat::kInt8, m.qshape);
    }
    if (m.mixed || m.fixed_format == QuantFormat::kInt4) {
      m.int4_layout = internal::QuantLayout::For(QuantFormat::kInt4, m.qshape);
    }
    m.slot_bytes = internal::QuantSlotBytes(config);
    absl::StatusOr<std::unique_ptr<internal::HostArena>> qarena =
        internal::HostArena::Create(
            q.quant_blocks, m.slot_bytes,
            {.prefault = config.prefault, .huge_pages = config.huge_pages});
    if (!qarena.ok()) return qarena.status();
    absl::StatusOr<std::unique_ptr<BlockPool>> qpool =
        BlockPool::Create(*std::move(qarena));
    if (!qpool.ok()) return qpool.status();
    m.qpool = *std::move(qpool);
    m.qlocal = std::make_unique<BlockPool::LocalCache>(*m.qpool);
    m.qbase = m.qpool->storage().host_base();
    m.qformat.assign(static_cast<size_t>(q.quant_blocks), QuantFormat::kInt8);
    m.qpartner.assign(static_cast<size_t>(q.quant_blocks), kNoBlock);
    m.qerror.assign(static_cast<size_t>(q.quant_blocks), 0.0f);
  }
  return std::unique_ptr<KVCache>(new KVCache(std::move(impl)));
}

const CacheConfig& KVCache::config() const { return impl_->config; }

absl::StatusOr<SeqId> KVCache::AddSequence() { return AddSequence({}); }

absl::StatusOr<SeqId> KVCache::AddSequence(const SequenceOptions& options) {
  Impl& m = *impl_;
  const SeqId id = m.next_seq++;
  Sequence sequence;
  sequence.salt = options.salt;
  sequence.layers.resize(static_cast<size_t>(m.config.num_layers));
  for (size_t layer = 0; layer < sequence.layers.size(); ++layer) {
    sequence.layers[layer].window_first = m.rules[layer].sink_blocks;
  }
  m.sequences.emplace(id, std::move(sequence));
  return id;
}

absl::StatusOr<SeqId> KVCache::Fork(SeqId parent) {
  Impl& m = *impl_;
  auto it = m.sequences.find(parent);
  if (it == m.sequences.end()) {
    return absl::NotFoundError(
        absl::StrFormat("Fork(seq %d): no such sequence", parent));
  }
  Sequence child;
  child.salt = it->second.salt;
  child.token_ids = it->second.token_ids;
  child.block_hashes = it->second.block_hashes;
  child.layers.resize(it->second.layers.size());
  for (size_t layer = 0; layer < child.layers.size(); ++layer) {
    const BlockTable& from = it->second.layers[layer];
    BlockTable& to = child.layers[layer];
    to.sink_blocks = from.sink_blocks;
    to.window.assign(from.window.begin() + static_cast<ptrdiff_t>(from.head),
                     from.window.end());
    to.window_first = from.window_first;
    to.length = from.length;
    to.window_start = from.window_start;
    to.max_length = from.max_length;
    to.cold_done = from.cold_done;
    to.published = from.published;
    // A ring's spares stay with the parent: the child takes new blocks.
    for (BlockRef ref : to.sink_blocks) m.RetainRef(ref);
    for (BlockRef ref : to.window) m.RetainRef(ref);
    m.tokens_stored +=
        internal::VisibleTokens(m.rules[layer], to.length, to.window_start);
  }
  const SeqId id = m.next_seq++;
  m.sequences.emplace(id, std::move(child));
  return id;
}

absl::Status KVCache::AppendTokens(SeqId seq,
                                   absl::Span<const int32_t> token_ids) {
  Impl& m = *impl_;
  auto it = m.sequences.find(seq);
  if (it == m.sequences.end()) {
    return absl::NotFoundError(
        absl::StrFormat("AppendTokens(seq %d, %d tokens): no such sequence",
                        seq, token_ids.size()));
  }
  Sequence& s = it->second;
  s.token_ids.insert(s.token_ids.end(), token_ids.begin(), token_ids.end());
  const size_t bt = static_cast<size_t>(m.config.block_tokens);
  while ((s.block_hashes.size() + 1) * bt <= s.token_ids.size()) {
    const size_t b = s.block_hashes.size();
    s.block_hashes.push_back(
        PrefixBlockHash(b == 0 ? 0 : s.block_hashes[b - 1], s.salt,
                        absl::MakeConstSpan(s.token_ids).subspan(b * bt, bt)));
  }
  for (size_t layer = 0; layer < s.layers.size(); ++layer) {
    m.PublishLayer(s, layer);
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> KVCache::MatchPrefix(SeqId seq,
                                             absl::Span<const int32_t> tokens) {
  Impl& m = *impl_;
  auto it = m.sequences.find(seq);
  if (it == m.sequences.end()) {
    return absl::NotFoundError(
        absl::StrFormat("MatchPrefix(seq %d, %d tokens): no such sequence", seq,
                        tokens.size()));
  }
  Sequence& s = it->second;
  for (const BlockTable& t : s.layers) {
    if (t.length != 0 || !s.token_ids.empty()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "MatchPrefix(seq %d, %d tokens): the sequence already holds %d "
          "tokens; a prefix attaches to an empty sequence",
          seq, tokens.size(), std::max<int64_t>(t.length, s.token_ids.size())));
    }
  }
  const int64_t bt = m.config.block_tokens;
  // No layer may be asked to keep more than it shows.
  int64_t limit = static_cast<int64_t>(tokens.size()) / bt;
  for (const LayerRules& r : m.rules)
    limit = std::min(limit, r.max_seq_len / bt);
  std::vector<int32_t> matched;  // entries, in order
  uint64_t parent = 0;
  for (int64_t b = 0; b < static_cast<int64_t>(tokens.size()) / bt; ++b) {
    const uint64_t hash = PrefixBlockHash(
        parent, s.salt,
        tokens.subspan(static_cast<size_t>(b * bt), static_cast<size_t>(bt)));
    auto found = m.by_hash.find(hash);
    if (b >= limit || found == m.by_hash.end() ||
        m.entries[static_cast<size_t>(found->second)].layers_present !=
            m.config.num_layers) {
      ++m.misses;
      break;
    }
    ++m.hits;
    matched.push_back(found->second);
    s.block_hashes.push_back(hash);
    parent = hash;
  }
  const int64_t length = static_cast<int64_t>(matched.size()) * bt;
  s.token_ids.assign(tokens.begin(), tokens.begin() + length);
  for (size_t layer = 0; layer < s.layers.size(); ++layer) {
    BlockTable& t = s.layers[layer];
    const LayerRules& r = m.rules[layer];
    const int64_t sink_blocks = internal::SinkBlocks(r, length);
    for (size_t b = 0; b < matched.size(); ++b) {
      const BlockId id =
          m.entries[static_cast<size_t>(matched[b])].blocks[layer];
      m.Retain(id);
      if (static_cast<int64_t>(b) < sink_blocks) {
        t.sink_blocks.push_back(id);
      } else {
        t.window.push_back(id);
      }
    }
    t.window_first = std::max(sink_blocks, r.sink_blocks);
    // A ring emptied by Truncate kept its blocks as spares: the attached
    // blocks take their place, the surplus goes back.
    while (r.ring() && !t.spares.empty() &&
           t.window_blocks() + static_cast<int64_t>(t.spares.size()) >
               r.ring_blocks) {
      m.Release(t.spares.back());
      t.spares.pop_back();
    }
    t.length = length;
    t.max_length = std::max(t.max_length, length);  // after Truncate(0)
    t.published = static_cast<int64_t>(matched.size());
    m.tokens_stored += length;
  }
  return length;
}

absl::Status KVCache::RemoveSequence(SeqId seq) {
  Impl& m = *impl_;
  auto it = m.sequences.find(seq);
  if (it == m.sequences.end()) {
    return absl::NotFoundError(
        absl::StrFormat("RemoveSequence(seq %d): no such sequence", seq));
  }
  for (size_t layer = 0; layer < it->second.layers.size(); ++layer) {
    BlockTable& table = it->second.layers[layer];
    m.tokens_stored -= internal::VisibleTokens(m.rules[layer], table.length,
                                               table.window_start);
    m.ReleaseAll(table);
  }
  m.sequences.erase(it);
  return absl::OkStatus();
}

namespace {

// Looks up a sequence and layer for `op`, or says why not.
template <typename ImplT>
auto FindTable(ImplT& m, std::string_view op, SeqId seq, int layer)
    -> absl::StatusOr<decltype(&m.sequences.begin()->second.layers[0])> {
  auto it = m.sequences.find(seq);
  if (ABSL_PREDICT_FALSE(it == m.sequences.end())) {
    return absl::NotFoundError(absl::StrFormat(
        "%s(seq %d, layer %d): no such sequence", op, seq, layer));
  }
  if (ABSL_PREDICT_FALSE(layer < 0 || layer >= m.config.num_layers)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s(seq %d, layer %d): layer out of range [0, %d)", op,
                        seq, layer, m.config.num_layers));
  }
  return &it->second.layers[static_cast<size_t>(layer)];
}

}  // namespace

absl::Status KVCache::Update(SeqId seq, int layer, TokenSpan k, TokenSpan v,
                             int64_t seq_len) {
  Impl& m = *impl_;
  auto it = m.sequences.find(seq);
  if (ABSL_PREDICT_FALSE(it == m.sequences.end() || layer < 0 ||
                         layer >= m.config.num_layers)) {
    return FindTable(m, "Update", seq, layer).status();
  }
  Sequence& sequence = it->second;
  BlockTable& table = sequence.layers[static_cast<size_t>(layer)];
  const LayerRules& r = m.rules[static_cast<size_t>(layer)];
  const DType dtype = m.config.dtype;
  const int64_t n = k.tokens;

  // Validate everything before touching anything.
  auto invalid = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Update(seq %d, layer %d, seq_len %d): %s", seq, layer, seq_len, why));
  };
  if (ABSL_PREDICT_FALSE(k.tokens != v.tokens || n < 0)) {
    return invalid(
        absl::StrFormat("k has %d tokens, v has %d", k.tokens, v.tokens));
  }
  for (const TokenSpan* span : {&k, &v}) {
    if (ABSL_PREDICT_FALSE(span->dtype != DType::kF32 &&
                           span->dtype != dtype)) {
      return invalid(absl::StrFormat(
          "%s is %s; the cache takes f32 or its own dtype %s",
          span == &k ? "k" : "v", DTypeName(span->dtype), DTypeName(dtype)));
    }
    if (ABSL_PREDICT_FALSE(n > 0 && span->data == nullptr)) {
      return invalid(absl::StrFormat("%s is null with %d tokens",
                                     span == &k ? "k" : "v", n));
    }
  }
  if (ABSL_PREDICT_FALSE(n > (int64_t{1} << 62) / (m.token_elems * 4))) {
    return invalid(absl::StrFormat("%d tokens of %d elements cannot exist", n,
                                   m.token_elems));
  }
  if (ABSL_PREDICT_FALSE(seq_len < n)) {
    return invalid(absl::StrFormat(
        "%d tokens end at seq_len %d: they would start below position 0", n,
        seq_len));
  }
  const int64_t start = seq_len - n;
  if (ABSL_PREDICT_FALSE(start > table.length)) {
    return invalid(absl::StrFormat(
        "gap: %d tokens start at position %d but the layer holds %d", n, start,
        table.length));
  }
  if (ABSL_PREDICT_FALSE(r.evicts() && table.window_start > r.sinks)) {
    if (absl::Status s =
            m.CheckEvicted("Update", seq, layer, table, start, seq_len);
        !s.ok()) {
      return s;
    }
  }
  if (ABSL_PREDICT_FALSE(!r.evicts() && seq_len > r.max_seq_len)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "Update(seq %d, layer %d, seq_len %d): exceeds max_seq_len %d "
        "(overflow policy error)",
        seq, layer, seq_len, r.max_seq_len));
  }

  // The one step that can fail for lack of memory comes first.
  const Plan plan = MakePlan(r, table, *m.pool, start, seq_len);
  m.fresh_ids.clear();
  if (ABSL_PREDICT_FALSE(plan.fresh > 0)) {
    if (absl::Status s = m.TakeFresh(plan.fresh, &table); !s.ok()) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("Update(seq %d, layer %d, seq_len %d): %s", seq,
                          layer, seq_len, s.message()));
    }
  }
  m.blocks_allocated += plan.fresh;
  m.ApplyBlocks(r, table, plan, m.fresh_ids);
  m.Commit(r, table, plan);

  // Write the positions of [start, seq_len) that are visible now; those
  // evicted by this very update are skipped.
  const auto* k_src = static_cast<const std::byte*>(k.data);
  const auto* v_src = static_cast<const std::byte*>(v.data);
  const int64_t k_stride = m.token_elems * DTypeSize(k.dtype);
  const int64_t v_stride = m.token_elems * DTypeSize(v.dtype);
  int64_t written = 0;
  internal::ForEachVisibleRun(
      r, table, start, seq_len,
      [&](BlockId id, int64_t slot, int64_t count, int64_t position) {
        const int64_t done = position - start;
        m.WriteRun(id, false, slot, k_src + done * k_stride, k.dtype, count);
        m.WriteRun(id, true, slot, v_src + done * v_stride, v.dtype, count);
        written += count;
      });
  m.bytes_written += 2 * written * m.token_bytes;
  table.published = std::min(table.published, start / r.block_tokens);
  if (!sequence.block_hashes.empty()) {
    m.PublishLayer(sequence, static_cast<size_t>(layer));
  }
  if (m.compress && m.config.compression.auto_compress) {
    m.RepackNewlyCold(r, table);
  }
  return absl::OkStatus();
}

absl::Status KVCache::Truncate(SeqId seq, int64_t seq_len) {
  Impl& m = *impl_;
  auto it = m.sequences.find(seq);
  if (it == m.sequences.end()) {
    return absl::NotFoundError(absl::StrFormat(
        "Truncate(seq %d, seq_len %d): no such sequence", seq, seq_len));
  }
  if (seq_len < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Truncate(seq %d, seq_len %d): seq_len must be >= 0", seq, seq_len));
  }
  std::vector<BlockTable>& layers = it->second.layers;
  for (size_t layer = 0; layer < layers.size(); ++layer) {
    if (layers[layer].length <= seq_len) continue;
    if (absl::Status s =
            m.CheckEvicted("Truncate", seq, static_cast<int>(layer),
                           layers[layer], seq_len, seq_len);
        !s.ok()) {
      return s;
    }
  }
  Sequence& sequence = it->second;
  if (static_cast<int64_t>(sequence.token_ids.size()) > seq_len) {
    sequence.token_ids.resize(static_cast<size_t>(seq_len));
    sequence.block_hashes.resize(
        static_cast<size_t>(seq_len / m.config.block_tokens));
  }
  for (size_t layer = 0; layer < layers.size(); ++layer) {
    BlockTable& table = layers[layer];
    table.published =
        std::min(table.published, seq_len / m.config.block_tokens);
    if (table.length <= seq_len) continue;
    const Plan plan =
        MakePlan(m.rules[layer], table, *m.pool, seq_len, seq_len);
    KVPAGE_DCHECK(plan.fresh == 0);
    m.ApplyBlocks(m.rules[layer], table, plan, {});
    m.Commit(m.rules[layer], table, plan);
  }
  return absl::OkStatus();
}

absl::Status KVCache::CompressOldEntries(SeqId seq, int layer,
                                         double keep_recent_fraction) {
  Impl& m = *impl_;
  absl::StatusOr<BlockTable*> found =
      FindTable(m, "CompressOldEntries", seq, layer);
  if (!found.ok()) return found.status();
  if (!m.compress) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "CompressOldEntries(seq %d, layer %d): compression is not enabled in "
        "the cache's config",
        seq, layer));
  }
  if (!(keep_recent_fraction >= 0 && keep_recent_fraction <= 1)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CompressOldEntries(seq %d, layer %d): keep_recent_fraction %g is "
        "outside [0, 1]",
        seq, layer, keep_recent_fraction));
  }
  BlockTable& t = **found;
  const LayerRules& r = m.rules[static_cast<size_t>(layer)];
  // The oldest floor((1 - f) * visible) visible tokens end before `cutoff`.
  const int64_t visible = internal::VisibleTokens(r, t.length, t.window_start);
  const auto eligible = static_cast<int64_t>(
      std::floor((1.0 - keep_recent_fraction) * static_cast<double>(visible)));
  int64_t cutoff = t.length;
  if (eligible < visible) {
    // Visible token number `eligible`, oldest first: sinks, then the window.
    const int64_t sinks = std::min(r.sinks, t.length);
    cutoff = eligible < sinks
                 ? eligible
                 : std::max(t.window_start, r.sinks) + (eligible - sinks);
  }
  const int64_t bt = r.block_tokens;
  for (int64_t b = t.window_first; b < t.window_first + t.window_blocks();
       ++b) {
    if ((b + 1) * bt > cutoff) break;
    if (m.Repackable(r, t, b)) m.Repack(r, t, b);
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> KVCache::Length(SeqId seq, int layer) const {
  absl::StatusOr<const BlockTable*> table =
      FindTable(*impl_, "Length", seq, layer);
  if (!table.ok()) return table.status();
  return (*table)->length;
}

absl::StatusOr<GatheredLayer> KVCache::Gather(SeqId seq, int layer) const {
  absl::StatusOr<const BlockTable*> found =
      FindTable(*impl_, "Gather", seq, layer);
  if (!found.ok()) return found.status();
  const BlockTable& table = **found;
  const Impl& m = *impl_;
  const LayerRules& r = m.rules[static_cast<size_t>(layer)];
  const int64_t tokens =
      internal::VisibleTokens(r, table.length, table.window_start);
  GatheredLayer out;
  out.k.resize(static_cast<size_t>(tokens * m.token_elems));
  out.v.resize(static_cast<size_t>(tokens * m.token_elems));
  out.positions.reserve(static_cast<size_t>(tokens));
  // Each run is read once the next one is known, so that a repacked block
  // is decoded with the next repacked one streaming in (NextBlock).
  struct Run {
    BlockRef ref;
    int64_t slot, count, position;
  };
  // Whether the run read last was repacked: it then named this one.
  bool last_repacked = false;
  auto read = [&](const Run& run, const Run* next) {
    const int64_t done = static_cast<int64_t>(out.positions.size());
    float* k_out = out.k.data() + done * m.token_elems;
    float* v_out = out.v.data() + done * m.token_elems;
    if (IsQuant(run.ref)) {
      internal::NextBlock hint;
      if (next != nullptr && IsQuant(next->ref)) {
        const BlockId n = RefId(next->ref);
        hint = {m.qformat[n], m.KPart(n), m.VPart(n)};
      }
      hint.this_block_requested = last_repacked;
      const BlockId q = RefId(run.ref);
      internal::DequantizeBlock(m.qformat[q], m.qshape, m.KPart(q), m.VPart(q),
                                static_cast<int>(run.slot),
                                static_cast<int>(run.count), k_out, v_out,
                                hint);
    } else {
      m.ReadRun(run.ref, false, run.slot, run.count, k_out);
      m.ReadRun(run.ref, true, run.slot, run.count, v_out);
    }
    for (int64_t i = 0; i < run.count; ++i)
      out.positions.push_back(run.position + i);
    last_repacked = IsQuant(run.ref);
  };
  std::optional<Run> pending;
  internal::ForEachVisibleRun(
      r, table, 0, table.length,
      [&](BlockRef ref, int64_t slot, int64_t count, int64_t position) {
        const Run run{ref, slot, count, position};
        if (pending) read(*pending, &run);
        pending = run;
      });
  if (pending) read(*pending, nullptr);
  return out;
}

absl::StatusOr<LayerView> KVCache::View(SeqId seq, int layer) const {
  absl::StatusOr<const BlockTable*> found =
      FindTable(*impl_, "View", seq, layer);
  if (!found.ok()) return found.status();
  const BlockTable& table = **found;
  const Impl& m = *impl_;
  LayerView view;
  view.dtype = m.config.dtype;
  view.num_kv_heads = m.config.num_kv_heads;
  view.head_dim = m.config.head_dim;
  view.block_tokens = m.config.block_tokens;
  view.token_stride = m.token_elems;
  view.host_accessible = m.host_base != nullptr;
  view.length = table.length;
  view.quant_group_size = m.compress ? m.qshape.group_size : 0;
  internal::ForEachVisibleRun(
      m.rules[static_cast<size_t>(layer)], table, 0, table.length,
      [&](BlockRef ref, int64_t slot, int64_t count, int64_t position) {
        BlockView b{.block_id = RefId(ref),
                    .begin_slot = static_cast<int>(slot),
                    .tokens = static_cast<int>(count),
                    .first_position = position};
        if (IsQuant(ref)) {
          const BlockId q = RefId(ref);
          const QuantFormat f = m.qformat[q];
          const internal::QuantLayout& l = m.Layout(f);
          const std::byte* k = m.KPart(q);
          const std::byte* v = m.VPart(q);
          b.format =
              f == QuantFormat::kInt8 ? BlockFormat::kInt8 : BlockFormat::kInt4;
          b.quant = {
              .k_codes = k + l.k_codes,
              .k_scales = k + l.k_scales,
              .k_mins = f == QuantFormat::kInt4 ? k + l.k_mins : nullptr,
              .v_codes = v + l.v_codes,
              .v_scales = v + l.v_scales,
              .v_mins = f == QuantFormat::kInt4 ? v + l.v_mins : nullptr};
          b.quant_error = m.qerror[q];
        } else {
          const auto* k =
              static_cast<const std::byte*>(m.pool->storage().Address(ref));
          b.k = k;
          b.v = k + m.v_offset;
        }
        view.blocks.push_back(b);
      });
  return view;
}

CacheStats KVCache::Stats() const {
  const Impl& m = *impl_;
  CacheStats s;
  s.blocks_total = m.pool->capacity();
  const int64_t held = m.pool->used_blocks();
  s.blocks_cached = m.evictable_blocks;
  s.blocks_used = held - s.blocks_cached;
  s.blocks_free = s.blocks_total - held;
  s.utilization =
      static_cast<double>(s.blocks_used) / static_cast<double>(s.blocks_total);
  s.block_bytes = m.block_bytes;
  s.memory_usage_bytes = held * m.block_bytes;
  s.prefix_entries = static_cast<int64_t>(m.by_hash.size());
  s.bytes_per_token_hot = static_cast<double>(m.block_bytes) /
                          static_cast<double>(m.config.block_tokens);
  if (m.compress) {
    s.quant_slots_total = m.qpool->capacity();
    s.quant_slots_used = m.qpool->used_blocks();
    s.quant_slot_bytes = m.slot_bytes;
    s.quant_blocks_int8 = m.quant_blocks_int8;
    s.quant_blocks_int4 = m.quant_blocks_int4;
    const int64_t quant_bytes = s.quant_slots_used * m.slot_bytes;
    const int64_t quant_blocks = m.quant_blocks_int8 + m.quant_blocks_int4;
    s.memory_usage_bytes += quant_bytes;
    s.bytes_saved = quant_blocks * m.block_bytes - quant_bytes;
    if (quant_blocks > 0) {
      s.bytes_per_token_cold =
          static_cast<double>(quant_bytes) /
          static_cast<double>(quant_blocks * m.config.block_tokens);
    }
    s.compressions_skipped = m.compressions_skipped;
    s.decompressions = m.decompressions;
    s.max_quant_error = m.error_max;
    s.mean_quant_error =
        m.compressions_applied == 0
            ? 0.0
            : m.error_sum / static_cast<double>(m.compressions_applied);
  }
  s.arena_bytes = s.blocks_total * m.block_bytes;
  s.sequences = static_cast<int64_t>(m.sequences.size());
  s.tokens_stored = m.tokens_stored;
  s.slots_allocated = s.blocks_used * m.config.block_tokens;
  s.hits = m.hits;
  s.misses = m.misses;
  s.compressions_applied = m.compressions_applied;
  s.evictions = m.evictions;
  s.blocks_released_by_policy = m.blocks_released_by_policy;
  s.blocks_reused_by_ring = m.blocks_reused_by_ring;
  s.blocks_allocated = m.blocks_allocated;
  s.blocks_released = m.blocks_released;
  s.bytes_written = m.bytes_written;
  s.bytes_copied = m.bytes_copied;
  return s;
}

absl::StatusOr<SequenceStats> KVCache::Stats(SeqId seq) const {
  const Impl& m = *impl_;
  auto it = m.sequences.find(seq);
  if (it == m.sequences.end()) {
    return absl::NotFoundError(
        absl::StrFormat("Stats(seq %d): no such sequence", seq));
  }
  SequenceStats s;
  int64_t quant = 0, quant_bytes = 0;
  for (size_t layer = 0; layer < it->second.layers.size(); ++layer) {
    const BlockTable& table = it->second.layers[layer];
    s.current_length = std::max(s.current_length, table.length);
    s.max_length = std::max(s.max_length, table.max_length);
    s.tokens_stored += internal::VisibleTokens(m.rules[layer], table.length,
                                               table.window_start);
    s.blocks += table.held_blocks();
    s.evictions += table.evicted;
    for (int64_t b = table.window_first;
         b < table.window_first + table.window_blocks(); ++b) {
      const BlockRef ref = table.Block(b);
      if (!IsQuant(ref)) continue;
      ++quant;
      quant_bytes +=
          m.slot_bytes * (m.qpartner[RefId(ref)] == kNoBlock ? 1 : 2);
    }
  }
  const int64_t slots = s.blocks * m.config.block_tokens;
  s.utilization = slots == 0 ? 0.0
                             : static_cast<double>(s.tokens_stored) /
                                   static_cast<double>(slots);
  s.memory_usage_bytes = (s.blocks - quant) * m.block_bytes + quant_bytes;
  return s;
}

std::vector<SeqId> KVCache::Sequences() const {
  std::vector<SeqId> ids;
  ids.reserve(impl_->sequences.size());
  for (const auto& [id, sequence] : impl_->sequences) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

absl::Status KVCache::Validate() const {
  const Impl& m = *impl_;
  if (absl::Status s = m.pool->Validate(); !s.ok()) return s;
  std::vector<uint32_t> refs(static_cast<size_t>(m.pool->capacity()), 0);
  std::vector<uint32_t> qrefs(
      static_cast<size_t>(m.compress ? m.qpool->capacity() : 0), 0);
  int64_t tokens = 0;
  for (SeqId seq : Sequences()) {
    const Sequence& sequence = m.sequences.find(seq)->second;
    for (size_t layer = 0; layer < sequence.layers.size(); ++layer) {
      const BlockTable& t = sequence.layers[layer];
      const LayerRules& r = m.rules[layer];
      auto fail = [&](const std::string& what) {
        return absl::InternalError(absl::StrFormat(
            "seq %d, layer %d (length %d, window start %d, %d sink and %d "
            "window blocks from %d, %d spares): %s",
            seq, layer, t.length, t.window_start, t.sink_blocks.size(),
            t.window_blocks(), t.window_first, t.spares.size(), what));
      };
      if (t.max_length < t.length) return fail("max_length below length");
      const int64_t visible =
          internal::VisibleTokens(r, t.length, t.window_start);
      if (visible > r.max_seq_len) {
        return fail(absl::StrFormat("%d visible tokens exceed max_seq_len %d",
                                    visible, r.max_seq_len));
      }
      if (!r.evicts() && t.window_start != 0) {
        return fail("the error policy evicted tokens");
      }
      if (static_cast<int64_t>(t.sink_blocks.size()) !=
          internal::SinkBlocks(r, t.length)) {
        return fail("sink block count is not ceil(min(sinks, length) / bt)");
      }
      const BlockRange want =
          internal::WindowRange(r, t.length, t.window_start);
      if (t.window_blocks() != want.size() ||
          (want.size() > 0 && t.window_first != want.first)) {
        return fail(absl::StrFormat("window blocks should be [%d, %d)",
                                    want.first, want.last));
      }
      if (!r.ring() && !t.spares.empty()) return fail("spares outside a ring");
      if (r.ring() &&
          t.window_blocks() + static_cast<int64_t>(t.spares.size()) >
              r.ring_blocks) {
        return fail(absl::StrFormat("ring holds more than its %d blocks",
                                    r.ring_blocks));
      }
      // Each holding: a hot block, or a repacked block's slot(s).
      auto count = [&](BlockRef ref, bool may_be_quant) -> absl::Status {
        const BlockId id = RefId(ref);
        if (!IsQuant(ref)) {
          if (id >= m.pool->capacity()) {
            return fail(absl::StrFormat("block %d out of range", id));
          }
          ++refs[id];
          return absl::OkStatus();
        }
        if (!may_be_quant || !m.compress || r.ring()) {
          return fail(absl::StrFormat(
              "quantized slot %d where only hot blocks belong", id));
        }
        if (id >= m.qpool->capacity()) {
          return fail(absl::StrFormat("quantized slot %d out of range", id));
        }
        ++qrefs[id];
        const BlockId partner = m.qpartner[id];
        if (partner != kNoBlock) {
          if (!m.mixed || m.qformat[id] != QuantFormat::kInt8 ||
              partner >= m.qpool->capacity()) {
            return fail(absl::StrFormat(
                "quantized slot %d has a bad partner %d", id, partner));
          }
          ++qrefs[partner];
        } else if (m.mixed && m.qformat[id] == QuantFormat::kInt8) {
          return fail(absl::StrFormat(
              "int8 slot %d lacks its V slot in mixed mode", id));
        }
        return absl::OkStatus();
      };
      for (BlockRef ref : t.sink_blocks) {
        if (absl::Status s = count(ref, false); !s.ok()) return s;
      }
      for (size_t i = t.head; i < t.window.size(); ++i) {
        if (absl::Status s = count(t.window[i], true); !s.ok()) return s;
      }
      for (BlockRef ref : t.spares) {
        if (absl::Status s = count(ref, false); !s.ok()) return s;
      }
      tokens += visible;
    }
  }
  // The prefix cache's own references, and its bookkeeping.
  int64_t evictable = 0;
  int64_t on_list = 0;
  for (int32_t e = m.lru_head, prev = -1; e >= 0;
       prev = e, e = m.entries[static_cast<size_t>(e)].lru_next) {
    const PrefixEntry& entry = m.entries[static_cast<size_t>(e)];
    if (!entry.in_lru || entry.lru_prev != prev ||
        ++on_list > static_cast<int64_t>(m.entries.size())) {
      return absl::InternalError(absl::StrFormat(
          "prefix cache: the LRU list is broken at entry %d", e));
    }
    evictable += entry.layers_present;
  }
  if (evictable != m.evictable_blocks) {
    return absl::InternalError(
        absl::StrFormat("prefix cache: %d blocks on the LRU list, counted %d",
                        evictable, m.evictable_blocks));
  }
  for (const auto& [hash, e] : m.by_hash) {
    const PrefixEntry& entry = m.entries[static_cast<size_t>(e)];
    int present = 0, in_use = 0;
    for (BlockId id : entry.blocks) {
      if (id == kNoBlock) continue;
      if (id >= m.pool->capacity() || m.cached_entry[id] != e) {
        return absl::InternalError(absl::StrFormat(
            "prefix cache: entry %d (hash %016x) holds block %d, which does "
            "not point back",
            e, hash, id));
      }
      ++refs[id];
      ++present;
      in_use += m.pool->ref_count(id) > 1;
    }
    if (entry.hash != hash || present != entry.layers_present ||
        in_use != entry.layers_in_use ||
        entry.in_lru != (entry.layers_in_use == 0)) {
      return absl::InternalError(absl::StrFormat(
          "prefix cache: entry %d (hash %016x): %d layers present, %d in use, "
          "%s the LRU list; counted %d, %d",
          e, hash, present, in_use, entry.in_lru ? "on" : "off",
          entry.layers_present, entry.layers_in_use));
    }
  }
  // Each block's count against the holdings found; the blocks held.
  auto check_counts = [](const BlockPool& pool,
                         const std::vector<uint32_t>& holdings,
                         const char* what) -> absl::StatusOr<int64_t> {
    int64_t held = 0;
    for (size_t id = 0; id < holdings.size(); ++id) {
      const uint32_t have = pool.ref_count(static_cast<BlockId>(id));
      if (have != holdings[id]) {
        return absl::InternalError(absl::StrFormat(
            "%s %d: ref_count %d but %d holdings (tables, prefix cache)", what,
            id, have, holdings[id]));
      }
      held += holdings[id] > 0;
    }
    return held;
  };
  absl::StatusOr<int64_t> counted = check_counts(*m.pool, refs, "block");
  if (!counted.ok()) return counted.status();
  const int64_t used = *counted;
  if (used != m.pool->used_blocks()) {
    return absl::InternalError(
        absl::StrFormat("%d blocks held by tables, pool says %d used", used,
                        m.pool->used_blocks()));
  }
  if (tokens != m.tokens_stored) {
    return absl::InternalError(
        absl::StrFormat("tables hold %d visible tokens, stats say %d", tokens,
                        m.tokens_stored));
  }
  if (m.compress) {
    if (absl::Status s = m.qpool->Validate(); !s.ok()) return s;
    absl::StatusOr<int64_t> qcounted =
        check_counts(*m.qpool, qrefs, "quantized slot");
    if (!qcounted.ok()) return qcounted.status();
    const int64_t qused = *qcounted;
    int64_t int8 = 0, int4 = 0;
    std::vector<bool> primary(qrefs.size(), false);
    for (const auto& [seq, sequence] : m.sequences) {
      for (const BlockTable& t : sequence.layers) {
        for (size_t i = t.head; i < t.window.size(); ++i) {
          if (IsQuant(t.window[i])) primary[RefId(t.window[i])] = true;
        }
      }
    }
    for (size_t q = 0; q < primary.size(); ++q) {
      if (primary[q]) (m.qformat[q] == QuantFormat::kInt8 ? int8 : int4) += 1;
    }
    if (qused != m.qpool->used_blocks()) {
      return absl::InternalError(absl::StrFormat(
          "%d quantized slots held by tables, the quantized pool says %d",
          qused, m.qpool->used_blocks()));
    }
    if (int8 != m.quant_blocks_int8 || int4 != m.quant_blocks_int4) {
      return absl::InternalError(absl::StrFormat(
          "tables hold %d int8 and %d int4 blocks, stats say %d and %d", int8,
          int4, m.quant_blocks_int8, m.quant_blocks_int4));
    }
  }
  if (m.blocks_allocated - m.blocks_released != used) {
    return absl::InternalError(
        absl::StrFormat("%d blocks allocated and %d released, but %d held",
                        m.blocks_allocated, m.blocks_released, used));
  }
  return absl::OkStatus();
}

absl::StatusOr<Snapshot> KVCache::TakeSnapshot(
    const SnapshotOptions& options) const {
  const Impl& m = *impl_;
  Snapshot snap;
  snap.has_token_data = options.include_token_data;
  snap.config = m.config;
  snap.stats = Stats();
  auto describe_pool = [&](const BlockPool& pool, int64_t unit_bytes,
                           SnapshotPool& out) {
    out.capacity = pool.capacity();
    out.unit_bytes = unit_bytes;
    out.ref_counts.resize(static_cast<size_t>(pool.capacity()));
    for (BlockId id = 0; id < pool.capacity(); ++id) {
      out.ref_counts[id] = pool.ref_count(id);
    }
    out.free_ids = pool.FreeIds();
  };
  describe_pool(*m.pool, m.block_bytes, snap.hot);
  if (m.compress) {
    describe_pool(*m.qpool, m.slot_bytes, snap.quant);
    const size_t slots = static_cast<size_t>(m.qpool->capacity());
    snap.quant.bits.assign(slots, 0);
    snap.quant.partners.assign(slots, kSnapshotNoBlock);
    snap.quant.errors.assign(slots, 0.0f);
  }
  const int64_t bt = m.config.block_tokens;
  for (SeqId id : Sequences()) {
    const Sequence& sequence = m.sequences.find(id)->second;
    SnapshotSequence& out = snap.sequences.emplace_back();
    out.id = id;
    out.salt = sequence.salt;
    out.token_ids = static_cast<int64_t>(sequence.token_ids.size());
    out.layers.resize(sequence.layers.size());
    for (size_t layer = 0; layer < sequence.layers.size(); ++layer) {
      const BlockTable& t = sequence.layers[layer];
      SnapshotLayer& l = out.layers[layer];
      l.length = t.length;
      l.window_start = t.window_start;
      l.max_length = t.max_length;
      l.evicted = t.evicted;
      auto entry = [&](TableRole role, int64_t logical, BlockRef ref) {
        SnapshotEntry e{.role = role, .logical = logical, .id = RefId(ref)};
        if (IsQuant(ref)) {
          const BlockId q = RefId(ref);
          const bool int8 = m.qformat[q] == QuantFormat::kInt8;
          e.format = int8 ? BlockFormat::kInt8 : BlockFormat::kInt4;
          snap.quant.bits[q] = int8 ? 8 : 4;
          snap.quant.partners[q] = m.qpartner[q];
          snap.quant.errors[q] = m.qerror[q];
        }
        l.entries.push_back(e);
      };
      for (size_t i = 0; i < t.sink_blocks.size(); ++i) {
        entry(TableRole::kSink, static_cast<int64_t>(i), t.sink_blocks[i]);
      }
      for (int64_t b = t.window_first; b < t.window_first + t.window_blocks();
           ++b) {
        entry(TableRole::kWindow, b, t.Block(b));
      }
      for (BlockRef ref : t.spares) entry(TableRole::kSpare, -1, ref);
      // Visible slots, run by run, onto the entries (both in logical order).
      size_t next = 0;
      internal::ForEachVisibleRun(
          m.rules[layer], t, 0, t.length,
          [&](BlockRef, int64_t slot, int64_t count, int64_t position) {
            const int64_t logical = position / bt;
            while (next < l.entries.size() &&
                   l.entries[next].logical != logical) {
              ++next;
            }
            if (next == l.entries.size()) return;
            SnapshotEntry& e = l.entries[next];
            if (e.visible == 0) e.begin_slot = static_cast<int32_t>(slot);
            e.visible += static_cast<int32_t>(count);
            e.end_slot = static_cast<int32_t>(slot + count);
          });
    }
  }
  // The prefix cache, with each idle entry's place in the eviction order.
  absl::flat_hash_map<int32_t, int64_t> rank;
  int64_t next_rank = 0;
  for (int32_t e = m.lru_head; e >= 0;
       e = m.entries[static_cast<size_t>(e)].lru_next) {
    rank[e] = next_rank++;
  }
  for (const auto& [hash, e] : m.by_hash) {
    const PrefixEntry& entry = m.entries[static_cast<size_t>(e)];
    auto it = rank.find(e);
    snap.prefix.push_back({.hash = hash,
                           .lru_rank = it == rank.end() ? -1 : it->second,
                           .blocks = std::vector<uint32_t>(
                               entry.blocks.begin(), entry.blocks.end())});
  }
  std::sort(snap.prefix.begin(), snap.prefix.end(),
            [](const SnapshotPrefixEntry& a, const SnapshotPrefixEntry& b) {
              return a.hash < b.hash;
            });
  if (options.include_token_data) {
    auto copy_used = [](SnapshotPool& out, auto&& read) {
      for (uint32_t id = 0; id < out.ref_counts.size(); ++id) {
        if (out.ref_counts[id] > 0) out.data_ids.push_back(id);
      }
      out.data.resize(out.data_ids.size() *
                      static_cast<size_t>(out.unit_bytes));
      for (size_t i = 0; i < out.data_ids.size(); ++i) {
        read(out.data_ids[i],
             out.data.data() + i * static_cast<size_t>(out.unit_bytes));
      }
    };
    copy_used(snap.hot, [&](uint32_t id, uint8_t* dst) {
      m.pool->storage().Read(id, 0, dst, m.block_bytes);
    });
    if (m.compress) {
      copy_used(snap.quant, [&](uint32_t id, uint8_t* dst) {
        std::memcpy(dst, m.qbase + int64_t{id} * m.slot_bytes,
                    static_cast<size_t>(m.slot_bytes));
      });
    }
  }
  return snap;
}

absl::Status KVCache::WriteSnapshot(const std::string& path) const {
  return WriteSnapshot(path, SnapshotOptions{});
}

absl::Status KVCache::WriteSnapshot(const std::string& path,
                                    const SnapshotOptions& options) const {
  absl::StatusOr<Snapshot> snapshot = TakeSnapshot(options);
  if (!snapshot.ok()) return snapshot.status();
  return WriteSnapshotFile(*snapshot, path);
}

}  // namespace kvpage
