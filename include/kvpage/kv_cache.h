// kvpage/kv_cache.h — the key/value cache of a transformer serving engine.
//
// A KVCache keeps, for every sequence and layer, the keys and values of the
// tokens seen so far, in fixed-size blocks of one pool. Update() writes only
// what is new; View() hands an attention kernel the blocks without a copy.
//
// Usage:
//   auto cache = kvpage::KVCache::Create({.num_layers = 2, .num_kv_heads = 8,
//                                         .head_dim = 128, .num_blocks = 1024,
//                                         .max_seq_len = 4096});
//   if (!cache.ok()) return cache.status();
//   absl::StatusOr<kvpage::SeqId> seq = (*cache)->AddSequence();
//   // Prefill 5 tokens, then decode one: positions [0, 5), then 5.
//   (*cache)->Update(*seq, /*layer=*/0, k5, v5, /*seq_len=*/5);
//   (*cache)->Update(*seq, /*layer=*/0, k1, v1, /*seq_len=*/6);
//   // Rejected draft token: roll back to 5.
//   (*cache)->Truncate(*seq, 5);
//   absl::StatusOr<kvpage::LayerView> view = (*cache)->View(*seq, 0);
//
// Thread safety: thread-compatible. Const methods may run concurrently with
// each other; any non-const method needs exclusive access to the cache.
// Addresses in a LayerView stay valid until the next non-const call.
//
// Every non-const method is all-or-nothing: when it returns an error the
// cache, its statistics included, is exactly as it was before the call.
#ifndef KVPAGE_KV_CACHE_H_
#define KVPAGE_KV_CACHE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvpage/config.h"
#include "kvpage/engine.h"
#include "kvpage/storage.h"
#include "kvpage/tier.h"

namespace kvpage {

namespace internal {
struct KVCacheAccess;  // cache/kv_cache_internal.h: other storages, tests
}  // namespace internal

struct Snapshot;         // kvpage/snapshot.h
struct SnapshotOptions;  // kvpage/snapshot.h

// A copy of a layer's visible tokens as f32, oldest first.
// `k` and `v` are [positions.size()][num_kv_heads][head_dim].
struct GatheredLayer {
  std::vector<float> k, v;
  std::vector<int64_t> positions;
};

// How a block stores its tokens.
enum class BlockFormat : uint8_t {
  kHot,   // the cache's dtype, in the hot pool
  kInt8,  // compressed into the quantized pool, int8 codes
  kInt4,  // compressed into the quantized pool, int4 codes, two per byte
};

// The codes and scales of a compressed block (docs/compression.md gives
// the byte layout). Keys: codes [block_tokens][num_kv_heads][head_dim] (int4:
// [..][head_dim / 2] bytes, even channel in the low nibble), f16 scales (and
// int4 minimums) [num_kv_heads][head_dim], one per channel over the block's
// slots. Values: codes likewise, f16 scales (and minimums)
// [block_tokens][num_kv_heads][head_dim / group_size]. int8 decodes as
// code * scale; int4 as min + code * scale.
struct QuantBlockView {
  const void* k_codes = nullptr;
  const void* k_scales = nullptr;
  const void* k_mins = nullptr;  // int4 only
  const void* v_codes = nullptr;
  const void* v_scales = nullptr;
  const void* v_mins = nullptr;  // int4 only
};

// One block of a layer as an attention kernel reads it. Slot s of the block
// holds the token at position `first_position + (s - begin_slot)`. A hot
// block's keys start at `k + s * token_stride` elements (of the view's
// dtype), laid out [num_kv_heads][head_dim]; values likewise from `v`. A
// compressed block has null k and v and its codes in `quant`; Dequantize()
// (kvpage/attention.h) turns either kind into f32.
struct BlockView {
  const void* k = nullptr;     // slot 0 of the block's keys (hot blocks)
  const void* v = nullptr;     // slot 0 of the block's values (hot blocks)
  uint32_t block_id = 0;       // the block's id in its pool
  int begin_slot = 0;          // first valid slot
  int tokens = 0;              // valid slots, from begin_slot on
  int64_t first_position = 0;  // position of the token in begin_slot
  BlockFormat format = BlockFormat::kHot;
  QuantBlockView quant;    // compressed blocks
  double quant_error = 0;  // compressed blocks: measured relative MSE (0 unless
                           // compression.measure_error or max_rel_error > 0)
};

// The visible tokens of one sequence and layer, block by block, oldest first:
// the sink tokens, then the window. Positions are absolute (eviction never
// renumbers them), so an engine that renumbers after a context shift can
// re-rotate keys. A block partly evicted appears with only its visible slots;
// a block holding both sinks and window tokens appears twice, once per run.
struct LayerView {
  DType dtype = DType::kF16;
  int num_kv_heads = 0;
  int head_dim = 0;
  int block_tokens = 0;
  int64_t token_stride = 0;  // elements from one slot to the next
  int quant_group_size = 0;  // values per scale in compressed blocks
  // True when k/v are host addresses (the default host arena). Storage that
  // lives elsewhere hands out addresses in its own address space.
  bool host_accessible = true;
  int64_t length = 0;  // seq_len of the layer's last update
  std::vector<BlockView> blocks;

  // Visible tokens over all blocks. O(blocks).
  [[nodiscard]] int64_t tokens() const;
};

// Cache-wide figures. Counters (hits .. bytes_copied) only grow; the rest
// describe the present state. With layer groups (CacheConfig::group_layers)
// a block is a block id: it takes one slot of every layer of a group,
// LayerGroupWidth() slots in the storage, and the block figures count ids
// (a 32-layer group allocates one block per block_tokens tokens); token
// figures still count per layer.
struct CacheStats {
  int64_t blocks_total = 0;        // hot pool capacity
  int64_t blocks_used = 0;         // held by at least one sequence
  int64_t blocks_cached = 0;       // held only by the prefix cache: evictable
  int64_t blocks_free = 0;         // blocks_total - used - cached
  double utilization = 0;          // blocks_used / blocks_total
  int64_t block_bytes = 0;         // bytes of one block (K and V; with
                                   // groups, of all its storage slots)
  int64_t memory_usage_bytes = 0;  // bytes of the blocks in use or cached
  int64_t arena_bytes = 0;         // bytes reserved for the pool, used or not
  int64_t sequences = 0;           // live sequences
  int64_t tokens_stored = 0;    // visible tokens summed over sequences, layers
  int64_t slots_allocated = 0;  // token slots of the blocks in use (with
                                // groups, times LayerGroupWidth); minus
                                // tokens_stored, the internal waste
  // Prefix caching. hits: blocks MatchPrefix attached, summed over calls;
  // misses: MatchPrefix calls whose match stopped at a block not cached (a
  // call that matched every full block offered, or stopped at a layer's
  // max_seq_len, counts none). Not a hit rate: that is
  // prefix_tokens_matched / prefix_tokens_queried (by tokens) or hits /
  // prefix_blocks_queried (by blocks), below.
  int64_t hits = 0;
  int64_t misses = 0;
  int64_t prefix_entries = 0;  // hashes in the prefix cache
  // Compression. The quantized pool counts cells; an int8 block takes two
  // when max_rel_error mixes formats. memory_usage_bytes above includes the
  // cells in use.
  int64_t quant_cells_total = 0;
  int64_t quant_cells_used = 0;
  int64_t quant_cell_bytes = 0;
  int64_t quant_blocks_int8 = 0;  // compressed blocks held now, by format
  int64_t quant_blocks_int4 = 0;
  double bytes_per_token_hot = 0;    // block_bytes / block_tokens: one
                                     // layer's K and V of one token
  double bytes_per_token_cold = 0;   // the same in compressed blocks held now
  int64_t bytes_saved = 0;           // hot bytes the compressed blocks replace,
                                     // minus the slots they take
  int64_t compressions_applied = 0;  // blocks compressed, ever
  int64_t compressions_skipped = 0;  // compresses skipped: quantized pool full,
                                     // or a value the formats cannot hold
                                     // (NaN, an infinity, |x| > 65504)
  int64_t decompressions = 0;        // compressed blocks made hot again to be
                                     // written
  double max_quant_error = 0;        // relative MSE, over every compression (0
  double mean_quant_error = 0;       // unless measured: CompressionConfig)
  int64_t evictions = 0;  // tokens evicted by overflow policies (input
                          // tokens an update evicts at once count too)
  // Window blocks whose visible tokens a sliding window or context shift
  // evicted: returned to the pool, or reused at once for the tokens that
  // pushed them out (what the pool would have handed back).
  int64_t blocks_released_by_policy = 0;
  int64_t blocks_reused_by_ring = 0;  // blocks a ring took from its spares
  int64_t blocks_allocated = 0;       // blocks taken from the pool, ever
  int64_t blocks_released = 0;        // blocks given back to the pool, ever
  int64_t bytes_written = 0;          // token data written from Update() inputs
  int64_t bytes_copied = 0;           // token data moved inside the pools
  // What MatchPrefix was asked: calls, the full blocks of ids offered, the
  // tokens offered and the tokens it attached.
  int64_t prefix_queries = 0;
  int64_t prefix_blocks_queried = 0;
  int64_t prefix_tokens_queried = 0;
  int64_t prefix_tokens_matched = 0;
  bool operator==(const CacheStats&) const = default;
};

// Figures of one sequence over all its layers.
struct SequenceStats {
  int64_t current_length = 0;      // the longest layer's length
  int64_t max_length = 0;          // the longest any layer has been
  int64_t tokens_stored = 0;       // visible tokens over its layers
  int64_t blocks = 0;              // blocks referenced by its tables
  double utilization = 0;          // tokens_stored / its token slots
  int64_t memory_usage_bytes = 0;  // blocks * CacheStats::block_bytes
  int64_t evictions = 0;           // tokens evicted from it by policies
};

// How MatchPrefix matches.
struct MatchOptions {
  // Stop the match so that at least the prompt's last token is left to
  // compute: an engine needs its logits to sample the next token (vLLM
  // stops there too). Without it a prompt whose every block is cached is
  // matched whole.
  bool leave_last_token = false;
};

// Options of one sequence.
struct SequenceOptions {
  // Mixed into every prefix-cache block hash of the sequence (a LoRA
  // adapter, a tenant): sequences share cached blocks only with equal salts.
  uint64_t salt = 0;
};

class KVCache {
 public:
  // Builds a cache and reserves its whole pool (config.num_blocks blocks).
  // InvalidArgument for a bad configuration (see ValidateConfig),
  // ResourceExhausted when the arena cannot be reserved. O(num_blocks).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<KVCache>> Create(
      const CacheConfig& config);
  // As Create(config), over storage the engine provides (kvpage/storage.h),
  // which must hold StorageBlocks(config) blocks of BlockBytes(config) bytes.
  // InvalidArgument also for a storage of another shape, and for
  // compression over a storage without host reads and writes. O(num_blocks).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<KVCache>> Create(
      const CacheConfig& config, std::unique_ptr<BlockStorage> storage);

  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;
  // Releases every sequence's blocks.
  ~KVCache();

  [[nodiscard]] const CacheConfig& config() const;

  // A new, empty sequence (length 0 in every layer). Ids are never reused.
  // Takes no block. O(num_layers).
  [[nodiscard]] absl::StatusOr<SeqId> AddSequence();
  [[nodiscard]] absl::StatusOr<SeqId> AddSequence(
      const SequenceOptions& options);

  // A new sequence that shares every block of `parent` in every layer
  // (parallel samples, beams): reference counts go up, no token moves. A
  // write into a shared block first copies it for the writer (copy-on-write,
  // counted in bytes_copied); a block is freed when its last holder lets go.
  // The child inherits the token ids and the salt; a ring's spare blocks
  // stay with the parent. NotFound for an unknown parent.
  // O(layers + blocks), metadata only.
  [[nodiscard]] absl::StatusOr<SeqId> Fork(SeqId parent);

  // Prefix caching. Tells the cache the token ids of `seq`, appended to those
  // it knows; each full block of ids gets a chain hash (kvpage/prefix.h).
  // A layer's block whose ids are hashed and whose keys and values are all
  // written (and visible, and hot) is published in the prefix cache, which
  // then holds a reference on it: when the sequence is released, the block
  // stays cached with no user until an allocation needs it. The order:
  // free blocks go first, then idle cached entries, least recently used
  // first; the entries one release leaves idle count as used from its last
  // block to its first, so that a chain loses its deepest block first (a
  // match starts at block 0: its first blocks stay matchable longest).
  // Truncate() drops ids past its length. NotFound for an unknown id.
  // O(ids + blocks).
  [[nodiscard]] absl::Status AppendTokens(SeqId seq,
                                          absl::Span<const int32_t> token_ids);

  // Attaches to the empty sequence `seq`, in every layer, the longest run of
  // cached blocks whose ids match the beginning of `tokens` (whole blocks,
  // every layer present, no more than any layer's max_seq_len, and with
  // options.leave_last_token not the last token), as AppendTokens of those
  // ids would; returns the tokens matched: what the engine need not compute
  // (then it continues with Update at seq_len matched + ...). Counts a hit
  // per block found, a miss when a block not found stops the match, and
  // what was asked (CacheStats::prefix_queries and the rest). NotFound for
  // an unknown id; FailedPrecondition when `seq` already holds tokens or
  // ids. O(tokens + layers * blocks matched).
  [[nodiscard]] absl::StatusOr<int64_t> MatchPrefix(
      SeqId seq, absl::Span<const int32_t> tokens) {
    return MatchPrefix(seq, tokens, MatchOptions{});
  }
  [[nodiscard]] absl::StatusOr<int64_t> MatchPrefix(
      SeqId seq, absl::Span<const int32_t> tokens, const MatchOptions& options);

  // Attaches a second tier to the prefix cache (kvpage/tier.h): the blocks
  // it evicts are offered to `tier` (and every block it publishes with
  // options.write_through), each until the tier takes it, and MatchPrefix,
  // where the blocks it holds end, asks `tier` for the ones that follow,
  // loads them into free blocks (evicting idle cached ones as usual) and
  // attaches them as if they had been cached here. The tier must outlive
  // the cache or be detached first (null). InvalidArgument for
  // fetch_batch < 1; the tier's Attach error refuses it; either way nothing
  // changes. O(layers), plus O(prefix-cache entries) when `tier` is not the
  // one attached (what the last one took may be offered to this one).
  [[nodiscard]] absl::Status AttachTier(BlockTier* tier,
                                        const TierOptions& options);

  // Drops a sequence and releases its blocks. NotFound for an unknown id.
  // O(blocks of the sequence).
  [[nodiscard]] absl::Status RemoveSequence(SeqId seq);

  // The update rule. `k` and `v` hold the same n tokens, those at positions
  // [seq_len - n, seq_len). Afterwards the layer holds positions [0, seq_len)
  // less what its overflow policy evicts: positions at or past its old
  // length are appended (a block is taken from the pool only when the last
  // one is full), positions below it are overwritten in place, stored
  // positions at or past seq_len are dropped (rollback) and blocks left
  // without a visible token go back to the pool (a ring keeps them). Only
  // tokens that are visible after the update are written: one update may
  // carry more tokens than the window. No token is ever moved.
  // Input dtype may be kF32 or the cache's dtype; conversion to f16/bf16
  // rounds to nearest even.
  // Non-finite values are stored as given: a NaN stays a NaN (quieted when
  // converted to f16 or bf16), an infinity an infinity, and f32 input beyond
  // f16's range becomes an infinity in an f16 cache; reads return them. A
  // block holding one, or a value of magnitude above 65504 (what the
  // quantized formats' f16 scales can span), is never compressed: it stays hot
  // (compressions_skipped), so compression neither saturates it nor turns
  // the error statistics NaN.
  //   NotFound          unknown sequence
  //   InvalidArgument   layer out of range, k/v token counts differ, a dtype
  //                     that is neither f32 nor the cache's, null data with
  //                     tokens > 0, n > seq_len, or a gap (seq_len - n past
  //                     the layer's length)
  //   OutOfRange        the update would overwrite positions the policy
  //                     already evicted, or roll back to a length whose last
  //                     position was evicted (a rollback must keep a visible
  //                     window token, or go back into the sinks)
  //   FailedPrecondition the storage has no host writes (kvpage/storage.h)
  //   ResourceExhausted seq_len > max_seq_len (policy kError), or fewer free
  //                     blocks than the update needs (with auto_compress,
  //                     after compressing cold blocks could not free enough)
  // On error nothing changes. Writing into a compressed block first makes it
  // hot again (decompressions; it needs a free block). Cost: O(n * num_kv_heads
  // * head_dim) to write plus O(1) per block taken or released.
  [[nodiscard]] absl::Status Update(SeqId seq, int layer, TokenSpan k,
                                    TokenSpan v, int64_t seq_len);

  // Rolls every layer of `seq` back to at most `seq_len` tokens (layers
  // already shorter are left alone); blocks left empty go back to the pool.
  // NotFound for an unknown id, InvalidArgument for seq_len < 0, OutOfRange
  // when a layer's position seq_len - 1 was evicted (see Update); then no
  // layer changes. O(layers + blocks released).
  [[nodiscard]] absl::Status Truncate(SeqId seq, int64_t seq_len);

  // ---- Engine mode (kvpage/engine.h): the engine's kernels write and read.
  // Output arrays are the caller's so that a step allocates nothing.

  // The update rule without data: the table of `layer` (its blocks and
  // lengths, evictions, copy-on-write of shared blocks, decompression)
  // changes exactly as Update(seq, layer, k, v, seq_len) with k and v of
  // `tokens` tokens would change it (with CacheConfig::group_layers, as it
  // would for every layer of `layer`'s group: one reservation serves the
  // group, whose kernels all write the same slots, each layer at its own
  // LayerBase; FailedPrecondition while Update has moved the group's layers
  // apart), and `slot_mapping[i]` receives the slot
  // of position seq_len - tokens + i: block_id * block_tokens + slot, or
  // kNoSlot for a position the policy evicts in this very call. The engine's
  // kernel writes those slots before the next call that reads them (View,
  // Gather, a snapshot, a fork's copy) and before this layer's next Reserve
  // or Update, which counts them written: compression repacks a cold block
  // only then, never one whose reserved slots may still be empty. Prefix
  // caching publishes a reserved full block at once (vLLM does the same): a
  // sequence that matches it reads it in a later step. tokens == 0 with seq_len
  // below the length is a rollback (lookahead slots of a speculative step:
  // reserve k draft positions, then keep the accepted ones by reserving 0
  // tokens at the accepted length). Errors and costs as Update (nothing
  // written: bytes_written does not grow), and InvalidArgument when
  // slot_mapping does not hold exactly `tokens` entries. A decode step that
  // appends into the private, hot, non-full last block of a layer with no
  // policy action due is O(1) without planning.
  [[nodiscard]] absl::Status Reserve(SeqId seq, int layer, int64_t seq_len,
                                     int64_t tokens,
                                     absl::Span<int64_t> slot_mapping);

  // Reserve for every request of one scheduler step, all or nothing: the
  // first refusal (in request order) is returned and no table changes;
  // otherwise `slot_mapping` receives the requests' slot mappings one after
  // the other. InvalidArgument also for a sequence named twice and for a
  // slot_mapping whose size is not the sum of the requests' tokens.
  // ResourceExhausted when the step as a whole needs more blocks than the
  // pool can supply. With `tables` (padded rows, row i = request i's
  // sequence, current from an earlier ExportBlockTables or ReserveBatch),
  // keeps them current: a row whose blocks changed is written again, every
  // row's seq_len (and offset and window start) updated. O(requests +
  // tokens + blocks changed).
  [[nodiscard]] absl::Status ReserveBatch(
      int layer, absl::Span<const ReserveRequest> requests,
      absl::Span<int64_t> slot_mapping, const PaddedBlockTables* tables);
  [[nodiscard]] absl::Status ReserveBatch(
      int layer, absl::Span<const ReserveRequest> requests,
      absl::Span<int64_t> slot_mapping) {
    return ReserveBatch(layer, requests, slot_mapping, nullptr);
  }

  // Writes the block tables of `seqs` for `layer` in the padded form
  // (kvpage/engine.h says what a row holds). NotFound for an unknown id;
  // InvalidArgument for a layer out of range or arrays too small (naming
  // the row and what it needs: a row longer than max_blocks);
  // FailedPrecondition for a table holding a compressed block (read those
  // through View and Dequantize); OutOfRange for a length beyond int32. On
  // error the arrays may be partly written. O(rows * max_blocks).
  [[nodiscard]] absl::Status ExportBlockTables(
      int layer, absl::Span<const SeqId> seqs,
      const PaddedBlockTables& out) const;
  // The same rows in the CSR form. O(rows + entries).
  [[nodiscard]] absl::Status ExportBlockTables(int layer,
                                               absl::Span<const SeqId> seqs,
                                               const CsrBlockTables& out) const;

  // Where `layer`'s blocks live, in the storage's own address space: block b
  // at LayerBase(layer) + b * BlockBytes(config()), laid out as
  // kvpage/engine.h says (host memory for the default host arena; see
  // LayerView::host_accessible). What a slot mapping and an exported block
  // table index. InvalidArgument for a layer out of range. O(1).
  [[nodiscard]] absl::StatusOr<void*> LayerBase(int layer) const;

  // The layer group of `layer` (CacheConfig::group_layers; without it every
  // layer is a group of its own): which table it reads, its storage slot,
  // and how many layers share the table. InvalidArgument for a layer out of
  // range. O(1).
  [[nodiscard]] absl::StatusOr<LayerGroup> GroupOf(int layer) const;
  // The number of groups: tables per sequence. O(1).
  [[nodiscard]] int num_groups() const;

  // What a scheduler asks before it admits a request; both change nothing
  // (no statistics, no eviction order).
  // The tokens MatchPrefix(seq with `salt`, tokens) would attach now.
  // O(tokens + matched blocks).
  [[nodiscard]] int64_t CachedPrefixTokens(absl::Span<const int32_t> tokens,
                                           uint64_t salt) const {
    return CachedPrefixTokens(tokens, salt, MatchOptions{});
  }
  [[nodiscard]] int64_t CachedPrefixTokens(absl::Span<const int32_t> tokens,
                                           uint64_t salt,
                                           const MatchOptions& options) const;
  // For a new sequence with `salt` whose prompt is `prompt` and which will
  // grow to prompt.size() + extra_tokens tokens: the cached tokens, the
  // most blocks the pool must supply at once in all layers as it grows
  // (kvpage/engine.h, Admission), and what the pool can supply.
  // InvalidArgument for extra_tokens < 0; ResourceExhausted when a layer
  // under kError cannot hold that many tokens (the request can never fit).
  // O(tokens + layers).
  [[nodiscard]] absl::StatusOr<Admission> PlanAdmission(
      absl::Span<const int32_t> prompt, uint64_t salt,
      int64_t extra_tokens) const;
  // The blocks the pool would supply for Update (or Reserve) of positions
  // [seq_len - tokens, seq_len) of `seq` in every layer, now: new blocks,
  // copies of shared blocks and decompressions, less what the layers
  // reuse. With layer groups, what a group takes while Update moves its
  // layers one after the other (its table holds the blocks the first layer
  // gains before the last one lets go of the old ones; one Reserve for the
  // group takes at most that); a bound while its layers differ. Errors as
  // Update would return for the first layer that refuses. O(layers +
  // blocks changed).
  [[nodiscard]] absl::StatusOr<int64_t> BlocksNeeded(SeqId seq, int64_t seq_len,
                                                     int64_t tokens) const;

  // Compresses the whole blocks that lie entirely in the oldest
  // 1 - keep_recent_fraction of the layer's visible tokens into the quantized
  // pool (never sink tokens, never the compression.hot_tokens most recent,
  // never a partly filled block, never a circular-buffer layer). Idempotent
  // in what it compresses (compressions_skipped counts each call's skips).
  // A full quantized pool skips blocks (compressions_skipped), never loses
  // data; so does a block holding a value the formats cannot hold (see
  // Update: non-finite values). With layer groups the layer's blocks are
  // its group's: each is compressed whole, every layer's part.
  // FailedPrecondition when compression is not enabled, or while the
  // layers of the group differ in length (a step part-way); NotFound and
  // InvalidArgument as for Update, and for a fraction outside [0, 1].
  // O(blocks compressed * block size * layers of the group).
  [[nodiscard]] absl::Status CompressOldEntries(SeqId seq, int layer,
                                                double keep_recent_fraction);

  // The seq_len of the layer's last update (0 for a new sequence).
  // NotFound / InvalidArgument as for Update. O(1).
  [[nodiscard]] absl::StatusOr<int64_t> Length(SeqId seq, int layer) const;

  // Copies the layer's visible tokens as f32, oldest first, with their
  // positions. FailedPrecondition when the storage has no host reads
  // (kvpage/storage.h). O(tokens * num_kv_heads * head_dim).
  [[nodiscard]] absl::StatusOr<GatheredLayer> Gather(SeqId seq,
                                                     int layer) const;

  // Zero-copy view of the layer's visible tokens, block by block. O(blocks).
  [[nodiscard]] absl::StatusOr<LayerView> View(SeqId seq, int layer) const;

  [[nodiscard]] CacheStats Stats() const;  // O(1)
  // NotFound for an unknown id. O(num_layers).
  [[nodiscard]] absl::StatusOr<SequenceStats> Stats(SeqId seq) const;

  // Live sequence ids, ascending. O(sequences log sequences).
  [[nodiscard]] std::vector<SeqId> Sequences() const;

  // Walks every invariant of the cache and its pool: each block's reference
  // count equals the table entries that point at it, used blocks are exactly
  // the referenced ones, slots and positions are consistent with lengths,
  // the statistics agree with the tables. Internal on the first violation,
  // naming it. O(blocks + sequences * layers).
  [[nodiscard]] absl::Status Validate() const;

  // Snapshots (kvpage/snapshot.h). The cache's state as plain structs:
  // config, both pools, every table, the prefix-cache index, the stats, and
  // with options.include_token_data the bytes of every block in use
  // (FailedPrecondition over a storage without host reads). Changes
  // nothing. O(blocks + sequences * layers * blocks), plus the bytes copied.
  [[nodiscard]] absl::StatusOr<Snapshot> TakeSnapshot(
      const SnapshotOptions& options) const;
  // TakeSnapshot, encoded into a versioned, checksummed file at `path`
  // (metadata only unless the options say otherwise), replaced atomically
  // as WriteSnapshotFile (kvpage/snapshot.h) says: a reader never sees part
  // of a file, and concurrent writers of one path are safe. `path` must not
  // exist or be a regular file (FailedPrecondition for a symbolic link, a
  // directory, FIFO, device or socket). File-system errors return their
  // Status code (NotFound, PermissionDenied, ...); on error `path` is
  // untouched, no temporary file is left and the cache is unchanged.
  [[nodiscard]] absl::Status WriteSnapshot(const std::string& path) const;
  [[nodiscard]] absl::Status WriteSnapshot(
      const std::string& path, const SnapshotOptions& options) const;

 private:
  friend struct internal::KVCacheAccess;
  struct Impl;
  explicit KVCache(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvpage

#endif  // KVPAGE_KV_CACHE_H_
