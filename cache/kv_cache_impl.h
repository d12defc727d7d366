// cache/kv_cache_impl.h — the parts a KVCache is made of, and the steps
// that change them. KVCache (cache/kv_cache.cc) is the public face that
// checks arguments and sequences these steps.
//
//   pool, local     the hot pool (allocator/block_pool.h)
//   io              reading and writing tokens in hot blocks (block_io.h)
//   prefix          the prefix cache (prefix_cache.h)
//   quant           the quantized pool, null without compression
//                   (quant_store.h)
//   sequences       a block table per layer, or per group of layers
//                   (sequence.h, block_table.h)
//
// The steps live in files named for their job: holding blocks
// (block_holds.cc), applying an update plan (apply_plan.cc), compressing
// cold blocks (cold_blocks.cc), the layers of a group that differ
// (layer_groups.cc).
//
// Invariants (Validate() walks them, cache/validate.cc):
//   ref_count(b) == holdings of b over all tables (sink, window, spare) and
//     the prefix cache, in each pool; the V cell of a two-cell int8 block is
//     held with its K cell
//   pool->used_blocks() == distinct hot blocks held, likewise cells
//   blocks_allocated - blocks_released == hot blocks used
//   tokens_stored == visible tokens summed over sequences and layers
//   every table satisfies the invariants in cache/block_table.h; sink
//     blocks, spares and circular-buffer layers are hot
//
// Thread safety: thread-compatible, as KVCache.
#ifndef KVPAGE_CACHE_KV_CACHE_IMPL_H_
#define KVPAGE_CACHE_KV_CACHE_IMPL_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/statusor.h"
#include "allocator/block_pool.h"
#include "cache/block_io.h"
#include "cache/block_table.h"
#include "cache/prefix_cache.h"
#include "cache/quant_store.h"
#include "cache/sequence.h"
#include "cache/update_plan.h"
#include "kvpage/kv_cache.h"

namespace kvpage {

// What the cache counts besides what its parts count.
struct CacheCounters {
  int64_t tokens_stored = 0;
  int64_t hits = 0, misses = 0, evictions = 0;
  int64_t bytes_written = 0, bytes_copied = 0;
  int64_t blocks_released_by_policy = 0, blocks_reused_by_ring = 0;
  int64_t blocks_allocated = 0, blocks_released = 0;
  int64_t prefix_queries = 0, prefix_blocks_queried = 0;
  int64_t prefix_tokens_queried = 0, prefix_tokens_matched = 0;
};

struct KVCache::Impl {
  CacheConfig config;
  std::vector<internal::LayerRules> rules;  // per layer
  internal::LayerGroups groups;  // one group per layer without group_layers
  std::vector<internal::LayerRules> group_rules;  // per group
  // Declared before `local` so that the cache is flushed before the pool
  // goes away.
  std::unique_ptr<internal::BlockPool> pool;
  std::unique_ptr<internal::BlockPool::LocalCache> local;
  std::unique_ptr<internal::BlockIO> io;
  std::unique_ptr<internal::PrefixCache> prefix;
  std::unique_ptr<internal::QuantStore> quant;  // null: compression off
  BlockTier* tier = nullptr;  // kvpage/tier.h; null: none attached
  TierOptions tier_options;

  absl::flat_hash_map<SeqId, internal::Sequence> sequences;
  // Bumped by every insertion into `sequences` and every erasure: while it
  // stands, a Sequence* found earlier is still the sequence's.
  uint64_t sequences_epoch = 0;
  SeqId next_seq = 1;
  CacheCounters counters;
  // ReserveBatch marks the sequences of the step being reserved with this
  // serial (Sequence::batch_mark): a sequence named twice is refused, and
  // compressing to make room never touches one of them. Bumped at the
  // start and the end of every batch.
  uint64_t batch_serial = 1;

  // Scratch space reused across calls (never part of the cache's state).
  absl::InlinedVector<internal::BlockId, 16> fresh_ids;
  absl::InlinedVector<internal::BlockRef, 16> recycled;
  std::vector<std::byte> decompressed;
  std::vector<internal::QuantStore::HotParts> hot_parts;
  std::vector<std::vector<std::byte>> tier_bytes;  // per table
  std::vector<std::vector<std::string>> tier_fetched;
  std::vector<internal::Plan> batch_plans;
  // ReserveBatch's requests, one row each. `sequence` and `id` outlive the
  // call: the last batch's sequences by request, valid while
  // sequences_epoch is batch_epoch (an engine names mostly the same
  // sequences in the same order step after step: found again without
  // hashing).
  struct BatchRow {
    internal::Sequence* sequence = nullptr;
    SeqId id = 0;
    enum Kind : uint8_t { kPlanned, kInPlace, kNewBlock } kind = kPlanned;
    internal::BlockId block = 0;  // kInPlace: the block appended into
    int64_t slot = 0;             // kInPlace: the first slot
    // kNewBlock, and a planned request whose plan only appends entries: the
    // row before (window_entries -1 otherwise: the row is written whole).
    internal::RowShape before;
  };
  std::vector<BatchRow> batch_rows;
  uint64_t batch_epoch = ~uint64_t{0};
  absl::flat_hash_map<internal::BlockRef, uint32_t> batch_dropped;

  ~Impl();

  int64_t block_bytes() const { return io->block_bytes(); }
  int64_t block_tokens() const { return config.block_tokens; }
  bool auto_compress() const {
    return quant != nullptr && config.compression.auto_compress;
  }

  // The group of `layer` (its table's index in Sequence::tables) and the
  // layers it holds.
  size_t group_of(int layer) const {
    return static_cast<size_t>(groups.group_of[static_cast<size_t>(layer)]);
  }
  int64_t group_layers(size_t group) const {
    return static_cast<int64_t>(groups.members[group].size());
  }
  // What `layer` of `sequence` holds: its table's state, or its own while
  // the table is split.
  const internal::LayerState& StateOf(const internal::Sequence& sequence,
                                      int layer) const {
    const internal::BlockTable& t = sequence.tables[group_of(layer)];
    return ABSL_PREDICT_TRUE(!t.split)
               ? t
               : sequence.layer_states[static_cast<size_t>(layer)];
  }

  // The sequence `seq` for `op` on `layer`: NotFound for an unknown
  // sequence, InvalidArgument for a layer out of range.
  absl::StatusOr<const internal::Sequence*> FindSequence(std::string_view op,
                                                         SeqId seq,
                                                         int layer) const;
  // The table holding (seq, layer) for `op`, with FindSequence's errors.
  absl::StatusOr<internal::BlockTable*> FindTable(std::string_view op,
                                                  SeqId seq, int layer);
  absl::StatusOr<const internal::BlockTable*> FindTable(std::string_view op,
                                                        SeqId seq,
                                                        int layer) const;

  // ---- Holding blocks (block_holds.cc). Every table's hold on a hot block
  // goes through Retain / Release, which tell the prefix cache when a
  // listed block's last other reader leaves or a first one arrives. O(1).
  void Retain(internal::BlockId id);
  void Release(internal::BlockId id);
  void RetainRef(internal::BlockRef ref);  // hot block or compressed block
  void ReleaseRef(internal::BlockRef ref);
  void ReleaseAll(internal::BlockTable& table);  // O(blocks)
  // A ring's spares beyond its size go back to the pool.
  void DropSurplusSpares(const internal::LayerRules& rules,
                         internal::BlockTable& table);
  // Evicts the least recently used idle prefix entry. O(layers).
  // Evicts the least recently used idle entry; offers it to the tier
  // first when `to_tier` (the write-back).
  void EvictOldest(bool to_tier = true);
  // Offers the full, hashed, fully visible hot blocks of table `group` not
  // yet offered to the prefix cache (none while it is split). O(blocks
  // published).
  void PublishTable(internal::Sequence& sequence, size_t group);
  // PublishTable for every table, block by block (one index lookup per
  // block). O(blocks published).
  void PublishAll(internal::Sequence& sequence);
  // Offers logical block `logical` (chain hash `hash`) of table `group` when
  // it is fully visible and hot; `entry` as PrefixCache::Publish. O(1).
  void PublishBlock(const internal::BlockTable& table, size_t group,
                    int64_t logical, uint64_t hash, int32_t* entry);
  // The logical blocks below this are hashed and fully written in table
  // `group` (0 while it is split: its layers publish once they agree).
  int64_t PublishLimit(const internal::Sequence& sequence, size_t group) const;

  // ---- The update rule's steps, shared by Update and Reserve
  // (update_steps.cc).
  // Refuses positions [start, seq_len) of `table` as Update documents: a
  // gap (InvalidArgument), evicted positions (OutOfRange), max_seq_len
  // under kError (ResourceExhausted), each message naming `op`. O(1).
  // Inline: the checks that pass go by without a call.
  [[nodiscard]] absl::Status CheckPositions(std::string_view op, SeqId seq,
                                            int layer,
                                            const internal::LayerRules& rules,
                                            const internal::LayerState& table,
                                            int64_t start,
                                            int64_t seq_len) const {
    if (ABSL_PREDICT_TRUE(
            start <= table.length &&
            !(rules.evicts() && table.window_start > rules.sinks) &&
            (rules.evicts() || seq_len <= rules.max_seq_len))) {
      return absl::OkStatus();
    }
    return RefusePositions(op, seq, layer, rules, table, start, seq_len);
  }
  [[nodiscard]] absl::Status RefusePositions(std::string_view op, SeqId seq,
                                             int layer,
                                             const internal::LayerRules& rules,
                                             const internal::LayerState& table,
                                             int64_t start,
                                             int64_t seq_len) const;
  // The fast path: positions [start, seq_len) appended into the table's
  // private, hot, non-full last block with no policy action due. Returns
  // that block, or kNoBlock when the general path must plan. O(1), no
  // division.
  // `slot`, when given, receives start's slot in it. Inline: every decode
  // step of Update, Reserve and ReserveBatch asks it.
  internal::BlockId InPlaceAppendBlock(const internal::LayerRules& rules,
                                       const internal::BlockTable& table,
                                       int64_t start, int64_t seq_len,
                                       int64_t* slot = nullptr) const {
    // The last held logical block, without a division: sink blocks are
    // logical [0, sink_blocks.size()), the window's end follows them.
    const int64_t last =
        table.window_blocks() > 0
            ? table.window_first + table.window_blocks() - 1
            : static_cast<int64_t>(table.sink_blocks.size()) - 1;
    const int64_t block_end = (last + 1) * rules.block_tokens;
    if (start != table.length || seq_len <= start || seq_len > block_end ||
        last < 0 || table.length <= last * rules.block_tokens) {
      return internal::kNoBlock;  // not an append into the last block
    }
    if (internal::VisibleTokens(rules, seq_len, table.window_start) >
        rules.max_seq_len) {
      return internal::kNoBlock;  // the policy acts
    }
    const internal::BlockRef ref = table.Block(last);
    if (internal::IsQuant(ref) || pool->ref_count(ref) != 1) {
      return internal::kNoBlock;
    }
    if (slot != nullptr) *slot = start - last * rules.block_tokens;
    return ref;
  }
  // The decode step that starts a block: positions [start, seq_len)
  // appended at a block boundary into one new window block after the
  // table's last, with no policy action due and no ring (a ring reuses its
  // spares). Then the general path's plan takes one fresh block and appends
  // it, and nothing else: NewBlockAppend does that without planning. O(1),
  // no division.
  bool NewBlockAppends(const internal::LayerRules& rules,
                       const internal::BlockTable& table, int64_t start,
                       int64_t seq_len) const {
    const int64_t bt = rules.block_tokens;
    return start == table.length && seq_len > start && seq_len - start <= bt &&
           !rules.ring() && table.window_blocks() > 0 &&
           (table.window_first + table.window_blocks()) * bt == start &&
           internal::VisibleTokens(rules, seq_len, table.window_start) <=
               rules.max_seq_len;
  }
  void NewBlockAppend(internal::BlockTable& table, internal::BlockId id,
                      int64_t start, int64_t seq_len, int64_t layers) {
    table.window.push_back(id);
    AppendInPlace(table, start, seq_len, layers);
  }
  // Takes the fast path InPlaceAppendBlock allowed: sets the lengths of the
  // table's `layers` layers.
  void AppendInPlace(internal::BlockTable& table, int64_t start,
                     int64_t seq_len, int64_t layers = 1) {
    counters.tokens_stored += (seq_len - start) * layers;
    table.length = seq_len;
    table.max_length = std::max(table.max_length, seq_len);
  }
  // The general path: plans, takes the plan's fresh blocks (ResourceExhausted
  // naming `op`, nothing changed) and moves the table, not split, of
  // `layers` layers to the plan.
  [[nodiscard]] absl::Status PlaceGeneral(std::string_view op, SeqId seq,
                                          int layer,
                                          const internal::LayerRules& rules,
                                          internal::BlockTable& table,
                                          int64_t start, int64_t seq_len,
                                          int64_t layers = 1);
  // What follows a change of table `group` whose positions [start, end)
  // are (to be) written: publishing full hashed blocks, compressing blocks
  // made cold.
  // Inline: with nothing to publish or compress it costs two tests.
  void Settle(internal::Sequence& sequence, size_t group, int64_t start,
              int64_t end) {
    internal::BlockTable& table = sequence.tables[group];
    if (ABSL_PREDICT_FALSE(start < table.published * config.block_tokens)) {
      table.published = start / config.block_tokens;  // rewritten
    }
    if (!sequence.block_hashes.empty()) {
      PublishTable(sequence, group);
      if (tier != nullptr && tier_options.write_through) {
        WriteThrough(sequence);
      }
    }
    if (auto_compress()) CompressNewlyCold(sequence, group, end);
  }

  // ---- The layers of a group that differ (layer_groups.cc).
  // Update's path for one layer of a group of several, whose positions the
  // caller checked (CheckPositions): refuses a write into blocks the group
  // let go of (OutOfRange); plans the layer's step and the group's blocks for
  // the union of its layers; takes fresh blocks; applies. Splits the table
  // first and rejoins it when its layers agree again. O(layers of the
  // group + blocks changed).
  [[nodiscard]] absl::Status PlaceLayerOfGroup(std::string_view op, SeqId seq,
                                               int layer,
                                               internal::Sequence& sequence,
                                               int64_t start, int64_t seq_len);
  // A layer's whole state, statistics included (max_length, evicted):
  // while a group's table is not split, it holds the shared length and
  // window start and counts from its last rejoin, each layer's
  // layer_states what it had by then. O(1).
  internal::LayerState LayerOf(const internal::Sequence& sequence,
                               int layer) const;
  // Gives each layer of table `group` its own state. O(layers of the
  // group).
  void Split(internal::Sequence& sequence, size_t group);
  // Ends the split of table `group` when its layers show the same
  // positions again (the same length and window start); else sets the
  // table's state to their union (the longest length). O(layers of the
  // group).
  void Rejoin(internal::Sequence& sequence, size_t group);
  // Marks a table whose layers agree as not split; its statistics count
  // anew. O(1).
  static void Unsplit(internal::BlockTable& table);
  // Update's fast path for one layer of a group of several: positions
  // [start, seq_len) appended into one held, private, hot block, with no
  // policy action due and nothing the layer shows outside what the table
  // holds (its group's union does not change). Returns that block, start's
  // slot in `*slot`; else kNoBlock. O(1).
  internal::BlockId GroupAppendBlock(const internal::Sequence& sequence,
                                     int layer, int64_t start, int64_t seq_len,
                                     int64_t* slot) const;
  // Takes that path: the layer's lengths, the table's union, and the split
  // ends when every layer agrees. O(1), O(layers of the group) when the
  // table splits.
  void GroupAppendInPlace(internal::Sequence& sequence, int layer,
                          int64_t start, int64_t seq_len);
  // Truncate's rollback of a split table: every layer longer than seq_len
  // goes back to it. Cannot fail (the caller checked the positions).
  void TruncateSplit(internal::Sequence& sequence, size_t group,
                     int64_t seq_len);

  // The most blocks MatchPrefix may attach for `tokens` tokens: whole
  // blocks, no more than any layer's max_seq_len, the last token left out
  // with options.leave_last_token. O(layers).
  int64_t MatchLimit(size_t tokens, const MatchOptions& options) const {
    const int64_t bt = block_tokens();
    int64_t n = static_cast<int64_t>(tokens);
    if (options.leave_last_token && n > 0) --n;
    int64_t limit = n / bt;
    for (const internal::LayerRules& r : rules) {
      limit = std::min(limit, r.max_seq_len / bt);
    }
    return limit;
  }
  // The prefix-cache entries MatchPrefix would attach for `tokens` of a
  // sequence with `salt`, in order (admission.cc). O(tokens + matched).
  std::vector<int32_t> MatchedEntries(absl::Span<const int32_t> tokens,
                                      uint64_t salt,
                                      const MatchOptions& options = {}) const;

  // ---- Applying an update plan (apply_plan.cc).
  // Fills fresh_ids with n blocks of the hot pool; when it is short, evicts
  // idle prefix entries and then, with auto_compress, compresses cold
  // blocks of other tables than `updating`, only if that frees enough.
  // ResourceExhausted naming the sizes, with nothing changed.
  [[nodiscard]] absl::Status TakeFresh(int64_t n,
                                       const internal::BlockTable* updating);
  // Moves `table` to the plan's blocks, taking new blocks from those it
  // lets go of, the ring's spares and then `fresh` (plan.fresh ids, the
  // rewrites' last), and sets the lengths of `state` (the table itself when
  // null), which stands for `layers` layers. Cannot fail. O(blocks
  // changed).
  void ApplyPlan(const internal::LayerRules& rules, internal::BlockTable& table,
                 const internal::Plan& plan,
                 absl::Span<const internal::BlockId> fresh,
                 internal::LayerState* state = nullptr, int64_t layers = 1);

  // ---- The second tier (tier.cc).
  // Offers complete entry `entry` to the tier: each table's layer slots
  // read side by side. O(block size * layers).
  void StoreToTier(int32_t entry, bool evicted);
  // write_through: offers the tier the sequence's blocks that every table
  // has published and written (a reservation's blocks once the kernel has
  // written them: at the sequence's next update or reservation), each
  // once. O(tables + blocks offered * block size).
  void WriteThrough(internal::Sequence& sequence);
  // Makes `tables` (a fetched block's bytes) a prefix-cache entry under
  // `hash`, in fresh blocks held once (for the sequence that will attach
  // them) besides the cache's reference: its entry, or -1 when the bytes
  // have the wrong size, the hash is listed already, or the pool cannot
  // give the blocks. O(block size * layers).
  int32_t LoadFromTier(uint64_t hash, const std::vector<std::string>& tables);
  // MatchPrefix's continuation: appends to `matched` the entries of the
  // blocks after it that the tier has, up to `limit` blocks in all.
  void MatchFromTier(internal::Sequence& sequence, int64_t limit,
                     std::vector<int32_t>& matched);

  // ---- Compressing cold blocks (cold_blocks.cc).
  // Whether logical block `logical` of `table` may be compressed now, its
  // positions below `written` written by every layer of the table.
  bool Compressible(const internal::LayerRules& rules,
                    const internal::BlockTable& table, int64_t logical,
                    int64_t written) const;
  // Compresses one compressible block and releases its hot block; false
  // when the block stays hot (QuantStore::Compress). O(block size).
  bool CompressBlock(const internal::LayerRules& rules,
                     internal::BlockTable& table, int64_t logical);
  // auto_compress: compresses the blocks of table `group` an update to
  // `length` (of a layer, or of the whole table) made cold, once every
  // layer of the group has written them. O(1) when none turned cold, else
  // O(layers of the group + blocks compressed * block size).
  void CompressNewlyCold(internal::Sequence& sequence, size_t group,
                         int64_t length);
  // Compresses the blocks older than position `cutoff`. O(blocks).
  void CompressBefore(const internal::LayerRules& rules,
                      internal::BlockTable& table, int64_t cutoff);
  // Hot blocks compressing could free now, outside `skip` and the sequences
  // of the batch being reserved, oldest first per table, sequences in id
  // order, at most `want`.
  struct Candidate {
    internal::BlockTable* table;
    size_t group;  // the table's index in Sequence::tables
    int64_t logical;
  };
  std::vector<Candidate> CompressCandidates(const internal::BlockTable* skip,
                                            int64_t want);

 private:
  void LetGoOfBlocks(const internal::Plan& plan, internal::BlockTable& table,
                     int64_t& evicted_blocks);
  void FillBlocks(const internal::LayerRules& rules,
                  internal::BlockTable& table, const internal::Plan& plan,
                  absl::Span<const internal::BlockId> fresh);
  void SetLengths(const internal::LayerRules& rules,
                  internal::BlockTable& table, internal::LayerState& state,
                  const internal::Plan& plan, int64_t layers);
  void CopyOnWrite(internal::BlockTable& table, int64_t logical,
                   internal::BlockId id);
  void Decompress(const internal::LayerRules& rules,
                  internal::BlockTable& table, int64_t logical,
                  internal::BlockId id);
  // The host addresses of hot block `hot`'s layer parts, one per layer of
  // a table of `rules`, in `hot_parts`.
  absl::Span<const internal::QuantStore::HotParts> HotParts(
      const internal::LayerRules& rules, internal::BlockId hot);
  // Compresses `candidates`, which must all succeed.
  void CompressAll(absl::Span<const Candidate> candidates);
};

}  // namespace kvpage

#endif  // KVPAGE_CACHE_KV_CACHE_IMPL_H_
