// kvpage/config.h — the vocabulary types of kvpage: element types
// (kvpage/dtype.h, included here), overflow policies, the cache
// configuration and the span an engine hands to Update().
//
// Usage:
//   kvpage::CacheConfig config{.num_layers = 32, .num_kv_heads = 8,
//                              .head_dim = 128, .dtype = kvpage::DType::kF16,
//                              .block_tokens = 16, .num_blocks = 65536,
//                              .max_seq_len = 8192};
//   std::vector<float> k(n * 8 * 128), v(n * 8 * 128);
//   kvpage::TokenSpan ks{.data = k.data(), .dtype = kvpage::DType::kF32,
//                        .tokens = n};
//
// Everything here is a plain value type: thread-compatible.
#ifndef KVPAGE_CONFIG_H_
#define KVPAGE_CONFIG_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "kvpage/dtype.h"  // IWYU pragma: export

namespace kvpage {

// What a layer does when an update would take it past `max_seq_len` visible
// tokens. The visible tokens of a layer are its first `sink_tokens` positions
// (attention sinks, never evicted) and then its window, oldest first; no
// policy moves a token: they change which blocks a table points at.
enum class OverflowPolicy : uint8_t {
  // Refuse the update: ResourceExhausted, nothing changes. Sinks do not
  // apply (nothing is ever evicted).
  kError,
  // Context shift: when an update would exceed max_seq_len, the oldest
  // non-sink tokens are discarded in one step, leaving `truncate_to` visible
  // tokens (0 means max_seq_len / 2); then the layer grows again.
  kTruncate,
  // The most recent max_seq_len - sink_tokens tokens stay visible; a block
  // that falls wholly out of sinks and window goes back to the pool.
  kSlidingWindow,
  // The same visible tokens as the window, but the layer keeps a fixed ring
  // of blocks and reuses the oldest as the newest: after warm-up a decode
  // step neither allocates nor frees.
  kCircularBuffer,
};

[[nodiscard]] std::string_view OverflowPolicyName(OverflowPolicy policy);

// Another policy for one layer (hybrid models alternate sliding-window and
// global layers). Every field replaces the cache-wide one for that layer.
struct LayerPolicy {
  int layer = 0;
  OverflowPolicy overflow = OverflowPolicy::kError;
  int64_t max_seq_len = 0;
  int64_t sink_tokens = 0;
  int64_t truncate_to = 0;
  bool operator==(const LayerPolicy&) const = default;
};

// Bits per code of the quantized pool.
enum class QuantBits : uint8_t { kInt8 = 8, kInt4 = 4 };

// Compressing cold blocks into a second, smaller pool of quantized blocks.
// A block is cold when its newest position is older than the `hot_tokens`
// most recent of its layer. Keys are grouped per channel across the block's
// tokens (the block is the group), values per token along head_dim in groups
// of `group_size`; int8 is symmetric, int4 asymmetric (scale and minimum)
// with two codes per byte; scales and minimums are f16, stored in the block.
// Sink blocks and circular-buffer layers are never compressed, nor a block
// holding a NaN, an infinity or a magnitude above 65504 (KVCache::Update).
struct CompressionConfig {
  bool enabled = false;
  QuantBits bits = QuantBits::kInt8;
  int group_size = 32;       // values per scale along head_dim
  int64_t hot_tokens = 256;  // the most recent tokens always stay hot
  int64_t quant_cells = 0;   // capacity of the quantized pool, in cells
  // Compress blocks in the update that makes them cold, and before refusing an
  // update for lack of hot blocks.
  bool auto_compress = false;
  // > 0: per block, int4 where its measured relative error is within this
  // bound, else int8 (`bits` is then ignored). The pool's cells are then
  // int4-sized and an int8 block takes two (keys in one, values in the other).
  double max_rel_error = 0;
  // Measure each compression's relative error for the statistics
  // (CacheStats::max_quant_error, mean_quant_error, BlockView::quant_error),
  // which are 0 without it. Mixed mode (max_rel_error > 0) always measures:
  // it picks the format by the error. Costs ~4 vector instructions per 16
  // values: an int8 compression runs ~1.5x slower with it
  // (bench/compress_bench).
  bool measure_error = false;
  bool operator==(const CompressionConfig&) const = default;
};

// The shape and budget of one cache. All layers share one hot pool of
// `num_blocks` blocks; a block holds K and V of `block_tokens` consecutive
// positions of one layer of one sequence, for every kv-head.
struct CacheConfig {
  int num_layers = 0, num_kv_heads = 0, head_dim = 0;
  DType dtype = DType::kF16;  // what the hot pool stores
  int block_tokens = 16;      // token slots per block
  int64_t num_blocks = 0;     // hot pool capacity
  int64_t max_seq_len = 0;    // most visible tokens per sequence and layer
  OverflowPolicy overflow = OverflowPolicy::kError;
  int64_t sink_tokens = 0;
  int64_t truncate_to = 0;  // 0 means max_seq_len / 2
  // Per-layer overrides of the four fields above; at most one per layer.
  std::vector<LayerPolicy> layer_policies;
  CompressionConfig compression;
  // The arena's pages, both pools. A page of the arena touched for the
  // first time costs a page fault (on virtual machines ~10-20 µs): without
  // these options a decode Update that lands in a fresh page pays it, and
  // with 2 KiB tokens every other step does. Both on (the default), Create
  // touches every page: the arena is resident from the start (its whole
  // size) and creation takes ~0.12 s per GiB; decode Updates then pay
  // nothing. prefault alone takes ~0.43 s per GiB (4 KiB faults);
  // huge_pages alone makes faults rare but each costs up to milliseconds
  // (a 2 MiB page is zeroed on the hot path). Measured by
  // bench/first_touch_bench.cc (docs/benchmarks.md). prefault also sizes
  // and touches the prefix cache's index for the entries a full pool can
  // list (num_blocks / tables; 50 to 70 bytes and 4 per table an entry), so
  // that publishing into a fresh cache pays no page faults either. Turn both
  // off for a cache much larger than what it will hold, to keep it out of
  // memory.
  bool prefault = true;
  // Transparent huge pages for the arena (madvise), where the kernel
  // allows them.
  bool huge_pages = true;
  // One block table per group of layers instead of one per layer. Layers
  // whose resolved policies are equal (overflow, max_seq_len, sinks,
  // truncate_to) form a group; a sequence then has one table per group, and
  // one block id names the same slot in every layer of the group: layer l's
  // part of block b is its own block_bytes at slot(l) * num_blocks + b of
  // the storage (KVCache::LayerBase(l) + b * BlockBytes), the per-layer
  // paged tensors that paged-attention kernels read. One allocation per
  // block_tokens tokens serves a whole group, and Reserve and ReserveBatch
  // reserve for every layer of the group at once.
  //   - Per-layer tables (false, the default): every layer has its own
  //     blocks, lengths and evictions; a block is block_bytes. Choose them
  //     for host-side caches fed by Update layer by layer, whose layers
  //     may differ for long.
  //   - Groups (true): an engine whose kernels write all layers of a step
  //     (engine mode, kvpage/engine.h): 1/num_layers the allocations, the
  //     tables and the bookkeeping. The storage holds LayerGroupWidth()
  //     slots per block (a smaller group leaves its other slots unused),
  //     num_blocks counts group blocks. With compression a quantized cell
  //     holds a slot per layer too, and a group's block is compressed whole
  //     (docs/compression.md).
  //     Update still takes one layer at a time: a group's layers may differ
  //     in length during a step, and the group holds the blocks of the
  //     union of what they show until they agree again.
  bool group_layers = false;
  bool operator==(const CacheConfig&) const = default;
};

// Checks a configuration without building anything: every dimension positive,
// block_tokens at most 65535, num_blocks below 2^31, the arena's byte size
// representable; for the cache-wide policy and every override:
// 1 <= max_seq_len <= 2^62, 0 <= sink_tokens < max_seq_len, and for kTruncate
// an effective truncate_to in (sink_tokens, max_seq_len]; compression.bits 8
// or 4 and a finite compression.max_rel_error >= 0 (even with compression
// off: a snapshot records them); with compression: 1 <= quant_cells < 2^31,
// group_size dividing head_dim, an even head_dim for int4, hot_tokens >= 0.
// Returns InvalidArgument naming the offending field (and layer).
[[nodiscard]] absl::Status ValidateConfig(const CacheConfig& config);

// The layers of the largest group: the storage slots per block (1 without
// group_layers). Assumes a config that passed ValidateConfig(). O(layers^2).
[[nodiscard]] int LayerGroupWidth(const CacheConfig& config);

// truncate_to as kTruncate applies it: 0 means max_seq_len / 2.
[[nodiscard]] int64_t EffectiveTruncateTo(int64_t max_seq_len,
                                          int64_t truncate_to);

// Bytes of one block: K and V of block_tokens * num_kv_heads * head_dim
// elements each. Assumes a config that passed ValidateConfig().
[[nodiscard]] int64_t BlockBytes(const CacheConfig& config);

// `tokens` tokens of keys or of values, laid out [tokens][num_kv_heads]
// [head_dim], contiguous. `data` may be null only when tokens == 0.
struct TokenSpan {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t tokens = 0;
};

using SeqId = uint64_t;

}  // namespace kvpage

#endif  // KVPAGE_CONFIG_H_
