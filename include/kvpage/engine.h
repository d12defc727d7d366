// kvpage/engine.h — engine mode: the engine's own kernels write and read the
// blocks; kvpage decides where every token goes.
//
// Instead of handing keys and values to Update(), an engine reserves the
// positions of a step (KVCache::Reserve / ReserveBatch: the update rule
// without data) and gets back a slot mapping, `block_id * block_tokens +
// slot` per token, the convention of paged-attention kernels; its kernel
// writes the keys and values there, and its attention kernel reads them
// through block tables that kvpage exports in the kernels' formats
// (KVCache::ExportBlockTables, padded or CSR). A block id b of layer l
// starts at KVCache::LayerBase(l) + b * BlockBytes(config): its keys
// [block_tokens][num_kv_heads][head_dim], then from BlockBytes(config) / 2
// its values alike. Each half is rounded up to 64 bytes, which real shapes
// never need (16 tokens x 128 dims x 2 bytes is 4096): then a block is
// [2][block_tokens][num_kv_heads][head_dim], the per-layer paged KV tensor
// (FlashInfer's NHD page layout, vLLM's per-layer KV tensors). A scheduler
// asks first what a request would cost (KVCache::CachedPrefixTokens,
// KVCache::PlanAdmission, BlocksNeeded).
//
// With CacheConfig::group_layers the layers of a group share one table: a
// reservation for any of them serves the group (every layer's kernel writes
// the same slots at its own LayerBase), and KVCache::GroupOf says which
// group a layer is in.
//
// An engine step, one table (a group of layers, or one layer):
//   std::vector<kvpage::ReserveRequest> step;      // one per running request
//   for (auto& r : running) step.push_back({.seq = r.seq,
//                                           .seq_len = r.len + r.new_tokens,
//                                           .tokens = r.new_tokens});
//   std::vector<int64_t> slots(total_new_tokens);
//   if (auto s = cache->ReserveBatch(layer, step, slots); !s.ok()) ...;
//   std::vector<int32_t> table(batch * max_blocks), lens(batch);
//   (void)cache->ExportBlockTables(layer, seqs, {.block_table = table,
//                                  .max_blocks = max_blocks, .seq_lens =
//                                  lens});
//   my_write_kernel(k, v, slots);  my_attention_kernel(q, table, lens);
//
// Thread safety: plain value types.
#ifndef KVPAGE_ENGINE_H_
#define KVPAGE_ENGINE_H_

#include <cstdint>

#include "absl/types/span.h"
#include "kvpage/config.h"

namespace kvpage {

// A slot-mapping entry for a reserved position that is not kept (an update
// that carries more tokens than the window evicts the oldest at once): a
// write kernel skips it, as paged kernels skip negative slots.
inline constexpr int64_t kNoSlot = -1;

// One sequence's part of a scheduler step: positions [seq_len - tokens,
// seq_len), as KVCache::Update's seq_len and the tokens of its k and v.
struct ReserveRequest {
  SeqId seq = 0;
  int64_t seq_len = 0;
  int64_t tokens = 0;
};

// A row per sequence: the blocks its table holds, oldest first: its sink
// blocks (the first ceil(min(sink_tokens, seq_len) / block_tokens) entries),
// then its window blocks. Entry j of a row holds logical block j (positions
// [j * block_tokens, (j + 1) * block_tokens)) for a sink entry, and logical
// block j + block_offsets[row] for a window entry; with nothing evicted the
// offset is 0 and the row is the plain paged block table. Of the positions
// a row covers, the visible ones are the sinks below min(sink_tokens,
// seq_len) and [window_starts[row], seq_len): a kernel that masks by
// position reads exactly the visible tokens (a sliding window's first block
// may hold evicted slots; a kernel with its own window mask of
// max_seq_len - sink_tokens tokens masks the same ones).
//
// The padded form (FlashAttention / vLLM): row i at block_table[i *
// max_blocks], entries past the row's blocks set to `pad`.
struct PaddedBlockTables {
  absl::Span<int32_t> block_table;  // [rows][max_blocks]
  int64_t max_blocks = 0;
  int32_t pad = 0;
  absl::Span<int32_t> seq_lens;       // [rows]: the table's length
  absl::Span<int32_t> block_offsets;  // [rows] or empty: not written
  absl::Span<int32_t> window_starts;  // [rows] or empty: not written
};

// The CSR form (FlashInfer): row i's entries are indices[indptr[i],
// indptr[i + 1]); last_page_len[i] = the slots used in its last entry
// (0 for a row without entries). `indices` needs room for every entry.
struct CsrBlockTables {
  absl::Span<int32_t> indptr;         // [rows + 1]
  absl::Span<int32_t> indices;        // at least the total entries
  absl::Span<int32_t> last_page_len;  // [rows]
  absl::Span<int32_t> seq_lens;       // [rows] or empty
  absl::Span<int32_t> block_offsets;  // [rows] or empty
  absl::Span<int32_t> window_starts;  // [rows] or empty
};

// Where a layer's blocks are (KVCache::GroupOf): the layers of a group
// share one block table, and block b of layer l lies in the storage's slot
// `slot` of block b, at LayerBase(l) + b * BlockBytes(config).
struct LayerGroup {
  int group = 0;   // the table it reads: the same for every layer of a group
  int slot = 0;    // its index in its group
  int layers = 1;  // the layers of its group
  bool operator==(const LayerGroup&) const = default;
};

// What admitting a new request would take (KVCache::PlanAdmission).
struct Admission {
  int64_t cached_tokens = 0;  // what MatchPrefix would attach now
  // The most blocks the pool must supply at once, over every layer, while
  // the request grows to its length (the prompt's cached blocks are the
  // cache's). Exact without eviction, and for a sliding window or ring once
  // the request decodes a block past its window and its prompt (a window of
  // W - S tokens touches at most ceil((W - S - 1) / block_tokens) + 1
  // blocks besides the sink blocks); otherwise, and for a context shift, an
  // upper bound.
  int64_t blocks_needed = 0;
  // Blocks the pool can supply now for it: free blocks, plus idle prefix
  // cache blocks except those the match itself would attach.
  int64_t blocks_available = 0;
  bool fits() const { return blocks_needed <= blocks_available; }
};

}  // namespace kvpage

#endif  // KVPAGE_ENGINE_H_
