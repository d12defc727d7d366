/* kvpage/kvpage_c.h — kvpage's C API (C99): what Rust, Python and C engines
 * call. The same cache as kvpage/kv_cache.h, behind an opaque handle; every
 * function returns a kvpage_status and, when it fails, leaves everything as it
 * was.
 *
 * Usage:
 *   kvpage_config config;
 *   kvpage_config_init(&config);  // defaults; sets config.struct_size
 *   config.num_layers = 2; config.num_kv_heads = 8; config.head_dim = 128;
 *   config.num_blocks = 64; config.max_seq_len = 4096;
 *   kvpage_cache* cache = NULL;
 *   if (kvpage_cache_create(&config, &cache) != KVPAGE_OK) {
 *     fprintf(stderr, "%s\n", kvpage_last_error());
 *   }
 *   kvpage_seq_id seq;
 *   kvpage_add_sequence(cache, 0, &seq);
 *   kvpage_token_span k = {keys, KVPAGE_F32, 5}, v = {values, KVPAGE_F32, 5};
 *   kvpage_update(cache, seq, 0, &k, &v, 5);
 *   kvpage_cache_destroy(cache);
 *
 * Errors. Codes are absl::StatusCode's numbers. The message of the last call
 * that failed is kvpage_last_error(): thread-local, so concurrent callers
 * never see each other's; it stays valid until the next failing call on the
 * same thread. A successful call leaves it alone.
 *
 * Threads. A kvpage_cache is thread-compatible, as KVCache is: the functions
 * taking `const kvpage_cache*` may run concurrently with each other, any other
 * function on a cache needs exclusive access; addresses in a view stay valid
 * until the next non-const call on its cache. Functions without a cache are
 * thread-safe.
 *
 * Sizes. Structs that may grow carry `struct_size` (set by their _init
 * function, or to sizeof by the caller): kvpage reads and writes only the
 * fields a caller's struct has, so code built against an older header keeps
 * working. Buffers are passed with their capacity; a function that needs more
 * says how much through its count argument and returns
 * KVPAGE_RESOURCE_EXHAUSTED without writing.
 *
 * Linking: `pkg-config --cflags --libs kvpage` (libkvpage.so, whose only
 * exported symbols are this header's), or CMake's kvpage::kvpage_c target.
 */
#ifndef KVPAGE_KVPAGE_C_H_
#define KVPAGE_KVPAGE_C_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(KVPAGE_C_BUILDING)
#define KVPAGE_C_EXPORT __attribute__((visibility("default")))
#else
#define KVPAGE_C_EXPORT
#endif

/* The version of this header; kvpage_version() gives the library's. */
#define KVPAGE_VERSION_MAJOR 0
#define KVPAGE_VERSION_MINOR 2
#define KVPAGE_VERSION_PATCH 0
#define KVPAGE_VERSION                                         \
  (KVPAGE_VERSION_MAJOR * 10000 + KVPAGE_VERSION_MINOR * 100 + \
   KVPAGE_VERSION_PATCH)

/* absl::StatusCode's values. */
typedef enum kvpage_status {
  KVPAGE_OK = 0,
  KVPAGE_CANCELLED = 1,
  KVPAGE_UNKNOWN = 2,
  KVPAGE_INVALID_ARGUMENT = 3,
  KVPAGE_DEADLINE_EXCEEDED = 4,
  KVPAGE_NOT_FOUND = 5,
  KVPAGE_ALREADY_EXISTS = 6,
  KVPAGE_PERMISSION_DENIED = 7,
  KVPAGE_RESOURCE_EXHAUSTED = 8,
  KVPAGE_FAILED_PRECONDITION = 9,
  KVPAGE_ABORTED = 10,
  KVPAGE_OUT_OF_RANGE = 11,
  KVPAGE_UNIMPLEMENTED = 12,
  KVPAGE_INTERNAL = 13,
  KVPAGE_UNAVAILABLE = 14,
  KVPAGE_DATA_LOSS = 15,
  KVPAGE_UNAUTHENTICATED = 16
} kvpage_status;

typedef enum kvpage_dtype {
  KVPAGE_F32 = 0,
  KVPAGE_F16 = 1,
  KVPAGE_BF16 = 2
} kvpage_dtype;

typedef enum kvpage_overflow_policy {
  KVPAGE_POLICY_ERROR = 0,
  KVPAGE_POLICY_TRUNCATE = 1,
  KVPAGE_POLICY_SLIDING_WINDOW = 2,
  KVPAGE_POLICY_CIRCULAR_BUFFER = 3
} kvpage_overflow_policy;

typedef enum kvpage_block_format {
  KVPAGE_BLOCK_HOT = 0,
  KVPAGE_BLOCK_INT8 = 1,
  KVPAGE_BLOCK_INT4 = 2
} kvpage_block_format;

typedef uint64_t kvpage_seq_id;
typedef struct kvpage_cache kvpage_cache;       /* opaque */
typedef struct kvpage_snapshot kvpage_snapshot; /* opaque */

/* kvpage::LayerPolicy: another policy for one layer. */
typedef struct kvpage_layer_policy {
  int32_t layer;
  kvpage_overflow_policy overflow;
  int64_t max_seq_len;
  int64_t sink_tokens;
  int64_t truncate_to;
} kvpage_layer_policy;

/* kvpage::CacheConfig and its CompressionConfig (kvpage/config.h has every
 * field's meaning); `bits` is 8 or 4, booleans are 0 or 1. */
typedef struct kvpage_config {
  size_t struct_size;
  int32_t num_layers, num_kv_heads, head_dim;
  kvpage_dtype dtype;
  int32_t block_tokens;
  int64_t num_blocks;
  int64_t max_seq_len;
  kvpage_overflow_policy overflow;
  int64_t sink_tokens;
  int64_t truncate_to;
  const kvpage_layer_policy* layer_policies; /* read by create only */
  size_t num_layer_policies;
  int32_t prefault, huge_pages;
  int32_t compression_enabled;
  int32_t compression_bits;
  int32_t compression_group_size;
  int64_t compression_hot_tokens;
  int64_t compression_quant_cells;
  int32_t compression_auto_compress;
  int32_t compression_measure_error;
  double compression_max_rel_error;
  int32_t group_layers; /* one block table per group of layers */
} kvpage_config;

/* A run of tokens' keys or values, [tokens][num_kv_heads][head_dim]. */
typedef struct kvpage_token_span {
  const void* data;
  kvpage_dtype dtype;
  int64_t tokens;
} kvpage_token_span;

/* kvpage::CacheStats, field for field (docs/statistics.md). */
typedef struct kvpage_cache_stats {
  size_t struct_size;
  int64_t blocks_total, blocks_used, blocks_cached, blocks_free;
  double utilization;
  int64_t block_bytes, memory_usage_bytes, arena_bytes, sequences;
  int64_t tokens_stored, slots_allocated, hits, misses, prefix_entries;
  int64_t quant_cells_total, quant_cells_used, quant_cell_bytes;
  int64_t quant_blocks_int8, quant_blocks_int4;
  double bytes_per_token_hot, bytes_per_token_cold;
  int64_t bytes_saved, compressions_applied, compressions_skipped;
  int64_t decompressions;
  double max_quant_error, mean_quant_error;
  int64_t evictions, blocks_released_by_policy, blocks_reused_by_ring;
  int64_t blocks_allocated, blocks_released, bytes_written, bytes_copied;
  int64_t prefix_queries, prefix_blocks_queried, prefix_tokens_queried,
      prefix_tokens_matched;
} kvpage_cache_stats;

/* kvpage::SequenceStats. */
typedef struct kvpage_sequence_stats {
  size_t struct_size;
  int64_t current_length, max_length, tokens_stored, blocks;
  double utilization;
  int64_t memory_usage_bytes, evictions;
} kvpage_sequence_stats;

/* A LayerView without its blocks. */
typedef struct kvpage_view_info {
  size_t struct_size;
  kvpage_dtype dtype;
  int32_t num_kv_heads, head_dim, block_tokens;
  int64_t token_stride;
  int32_t quant_group_size;
  int32_t host_accessible;
  int64_t length;
  int64_t num_blocks;
} kvpage_view_info;

/* kvpage::BlockView: slot s of the block holds position first_position +
 * (s - begin_slot); a hot block's keys start at k + s * token_stride
 * elements. Compressed blocks have null k and v and their codes in the
 * quant_ pointers (docs/compression.md). */
typedef struct kvpage_block_view {
  const void* k;
  const void* v;
  uint32_t block_id;
  int32_t begin_slot;
  int32_t tokens;
  int64_t first_position;
  kvpage_block_format format;
  const void* quant_k_codes;
  const void* quant_k_scales;
  const void* quant_k_mins;
  const void* quant_v_codes;
  const void* quant_v_scales;
  const void* quant_v_mins;
  double quant_error;
} kvpage_block_view;

/* The library's version: KVPAGE_VERSION as it was built, and its text. */
KVPAGE_C_EXPORT int kvpage_version(void);
KVPAGE_C_EXPORT const char* kvpage_version_string(void);

/* The message of the last failing call on this thread ("" when none). */
KVPAGE_C_EXPORT const char* kvpage_last_error(void);

/* A status code's name ("NOT_FOUND"); "UNKNOWN_CODE" for other numbers. */
KVPAGE_C_EXPORT const char* kvpage_status_name(kvpage_status status);

/* Fills the fields of *config that its struct_size covers with the defaults
 * of kvpage::CacheConfig (f16, blocks of 16, no compression,
 * compression_bits 8, compression_group_size 32, hot_tokens 256; every
 * dimension 0) and sets struct_size to the bytes written. INVALID_ARGUMENT
 * for NULL or a struct_size that is not a struct's. */
KVPAGE_C_EXPORT kvpage_status kvpage_config_defaults(kvpage_config* config);

/* kvpage_config_defaults for this header's kvpage_config: compiled into the
 * caller, so that it never writes past the struct the caller has. */
static inline void kvpage_config_init(kvpage_config* config) {
  kvpage_config zero = {0};
  if (config == NULL) return;
  *config = zero;
  config->struct_size = sizeof *config;
  (void)kvpage_config_defaults(config);
}

/* ValidateConfig: KVPAGE_INVALID_ARGUMENT naming the field. */
KVPAGE_C_EXPORT kvpage_status
kvpage_validate_config(const kvpage_config* config);

/* KVCache::Create: *out receives the cache (unchanged on error).
 * INVALID_ARGUMENT for a bad config (or struct_size), RESOURCE_EXHAUSTED when
 * the pool cannot be reserved. */
KVPAGE_C_EXPORT kvpage_status kvpage_cache_create(const kvpage_config* config,
                                                  kvpage_cache** out);
/* Releases the cache and every sequence's blocks. NULL is ignored. */
KVPAGE_C_EXPORT void kvpage_cache_destroy(kvpage_cache* cache);
/* The cache's configuration (layer_policies points into the cache). */
KVPAGE_C_EXPORT kvpage_status kvpage_cache_config(const kvpage_cache* cache,
                                                  kvpage_config* out);

/* Sequences: AddSequence (with its prefix-cache salt), Fork,
 * RemoveSequence. */
KVPAGE_C_EXPORT kvpage_status kvpage_add_sequence(kvpage_cache* cache,
                                                  uint64_t salt,
                                                  kvpage_seq_id* out);
KVPAGE_C_EXPORT kvpage_status kvpage_fork(kvpage_cache* cache,
                                          kvpage_seq_id parent,
                                          kvpage_seq_id* out);
KVPAGE_C_EXPORT kvpage_status kvpage_remove_sequence(kvpage_cache* cache,
                                                     kvpage_seq_id seq);
/* Live sequence ids, ascending: *count receives how many there are. */
KVPAGE_C_EXPORT kvpage_status kvpage_sequences(const kvpage_cache* cache,
                                               kvpage_seq_id* ids,
                                               size_t capacity, size_t* count);

/* The update rule (KVCache::Update): k and v hold the tokens at positions
 * [seq_len - tokens, seq_len). */
KVPAGE_C_EXPORT kvpage_status kvpage_update(kvpage_cache* cache,
                                            kvpage_seq_id seq, int32_t layer,
                                            const kvpage_token_span* k,
                                            const kvpage_token_span* v,
                                            int64_t seq_len);
KVPAGE_C_EXPORT kvpage_status kvpage_truncate(kvpage_cache* cache,
                                              kvpage_seq_id seq,
                                              int64_t seq_len);
KVPAGE_C_EXPORT kvpage_status kvpage_length(const kvpage_cache* cache,
                                            kvpage_seq_id seq, int32_t layer,
                                            int64_t* out);
KVPAGE_C_EXPORT kvpage_status
kvpage_compress_old_entries(kvpage_cache* cache, kvpage_seq_id seq,
                            int32_t layer, double keep_recent_fraction);

/* PrefixBlockHash (kvpage/prefix.h): the chain hash naming one block of
 * token ids given its parent's hash (0 for the first block) and the salt.
 * `ids` may be NULL only when count is 0. Pure: no cache, thread-safe. */
KVPAGE_C_EXPORT uint64_t kvpage_prefix_block_hash(uint64_t parent,
                                                  uint64_t salt,
                                                  const int32_t* ids,
                                                  size_t count);

/* Prefix caching: AppendTokens; MatchPrefix (*matched: tokens attached). */
KVPAGE_C_EXPORT kvpage_status kvpage_append_tokens(kvpage_cache* cache,
                                                   kvpage_seq_id seq,
                                                   const int32_t* ids,
                                                   size_t count);
KVPAGE_C_EXPORT kvpage_status kvpage_match_prefix(kvpage_cache* cache,
                                                  kvpage_seq_id seq,
                                                  const int32_t* ids,
                                                  size_t count,
                                                  int64_t* matched);

/* MatchOptions (struct_size = sizeof): leave_last_token 1 stops a match so
 * that the prompt's last token is left to compute (0: a prompt cached whole
 * is matched whole). kvpage_match_prefix_ex and
 * kvpage_cached_prefix_tokens_ex take them; `options` NULL is all zero.
 * INVALID_ARGUMENT for a bad struct_size or leave_last_token other than 0
 * or 1, with nothing changed. */
typedef struct kvpage_match_options {
  size_t struct_size;
  int32_t leave_last_token;
} kvpage_match_options;

KVPAGE_C_EXPORT kvpage_status kvpage_match_prefix_ex(
    kvpage_cache* cache, kvpage_seq_id seq, const int32_t* ids, size_t count,
    const kvpage_match_options* options, int64_t* matched);

/* View: *info receives the view's shape and info->num_blocks; `blocks`
 * receives the blocks when capacity >= num_blocks (RESOURCE_EXHAUSTED, and
 * no block written, otherwise: call again with a larger array). */
KVPAGE_C_EXPORT kvpage_status kvpage_view(const kvpage_cache* cache,
                                          kvpage_seq_id seq, int32_t layer,
                                          kvpage_view_info* info,
                                          kvpage_block_view* blocks,
                                          size_t capacity);

/* Gather: the layer's visible tokens as f32, oldest first: k and v
 * [tokens][num_kv_heads][head_dim], positions [tokens]; *tokens receives the
 * count; RESOURCE_EXHAUSTED (nothing written) when capacity_tokens is
 * smaller. `positions` may be NULL. */
KVPAGE_C_EXPORT kvpage_status kvpage_gather(
    const kvpage_cache* cache, kvpage_seq_id seq, int32_t layer, float* k,
    float* v, int64_t* positions, size_t capacity_tokens, size_t* tokens);

/* Dequantize one block of a view (info and block as kvpage_view gave them)
 * into k_out and v_out, each block->tokens * num_kv_heads * head_dim floats
 * (*_capacity: floats available). */
KVPAGE_C_EXPORT kvpage_status kvpage_dequantize(const kvpage_view_info* info,
                                                const kvpage_block_view* block,
                                                float* k_out, size_t k_capacity,
                                                float* v_out,
                                                size_t v_capacity);

/* Attend: one query token, [num_q_heads][head_dim], over the view's blocks;
 * `out` likewise. num_q_heads = query_floats / head_dim. */
KVPAGE_C_EXPORT kvpage_status kvpage_attend(const kvpage_view_info* info,
                                            const kvpage_block_view* blocks,
                                            const float* query,
                                            size_t query_floats, float* out,
                                            size_t out_floats);

/* Statistics: the cache's, and one sequence's. */
KVPAGE_C_EXPORT kvpage_status kvpage_stats(const kvpage_cache* cache,
                                           kvpage_cache_stats* out);
KVPAGE_C_EXPORT kvpage_status kvpage_seq_stats(const kvpage_cache* cache,
                                               kvpage_seq_id seq,
                                               kvpage_sequence_stats* out);

/* Validate: INTERNAL naming the first broken invariant. */
KVPAGE_C_EXPORT kvpage_status kvpage_validate(const kvpage_cache* cache);

/* Snapshots: write the cache's (with token data when include_token_data is
 * 1), read a file, verify what was read (*violations: how many invariants
 * are broken; the first one's message is kvpage_last_error() and the status
 * DATA_LOSS when any is), the statistics it recorded, and free it. */
KVPAGE_C_EXPORT kvpage_status kvpage_write_snapshot(const kvpage_cache* cache,
                                                    const char* path,
                                                    int32_t include_token_data);
KVPAGE_C_EXPORT kvpage_status kvpage_snapshot_read(const char* path,
                                                   kvpage_snapshot** out);
KVPAGE_C_EXPORT kvpage_status
kvpage_snapshot_verify(const kvpage_snapshot* snapshot, size_t* violations);
KVPAGE_C_EXPORT kvpage_status
kvpage_snapshot_stats(const kvpage_snapshot* snapshot, kvpage_cache_stats* out);
KVPAGE_C_EXPORT void kvpage_snapshot_destroy(kvpage_snapshot* snapshot);

/* ---- Storage the engine owns (kvpage/storage.h). */

/* Bytes of storage a cache of `config` needs (*out). */
KVPAGE_C_EXPORT kvpage_status kvpage_storage_bytes(const kvpage_config* config,
                                                   int64_t* out);
/* A cache over host memory the engine owns: `bytes` from `memory`, 64-byte
 * aligned, at least kvpage_storage_bytes; never freed by kvpage, and it must
 * outlive the cache. */
KVPAGE_C_EXPORT kvpage_status
kvpage_cache_create_in_memory(const kvpage_config* config, void* memory,
                              int64_t bytes, kvpage_cache** out);

/* Storage reached through the engine's functions (device memory: an
 * address is the engine's, never dereferenced by kvpage). `address` and
 * `copy` are required; `write` and `read` come together or not at all
 * (without them kvpage_update, kvpage_gather, snapshots with token data and
 * compression are refused: engine mode only). `release` (optional) is
 * called once, when the cache is destroyed; a creation that fails calls
 * nothing. */
typedef struct kvpage_storage_callbacks {
  size_t struct_size;
  void* context;
  const void* (*address)(void* context, uint32_t block);
  void (*copy)(void* context, uint32_t from, uint32_t to);
  void (*write)(void* context, uint32_t block, int64_t offset, const void* src,
                int64_t bytes);
  void (*read)(void* context, uint32_t block, int64_t offset, void* dst,
               int64_t bytes);
  void (*release)(void* context);
} kvpage_storage_callbacks;

KVPAGE_C_EXPORT kvpage_status kvpage_cache_create_with_storage(
    const kvpage_config* config, const kvpage_storage_callbacks* callbacks,
    kvpage_cache** out);

/* ---- Engine mode (kvpage/engine.h): the engine's kernels write and read
 * the blocks. Block b of `layer` lies at kvpage_layer_base + b *
 * block_bytes: its keys [block_tokens][num_kv_heads][head_dim], its values
 * alike from block_bytes / 2 (each half rounded up to 64 bytes). */

#define KVPAGE_NO_SLOT (-1)

KVPAGE_C_EXPORT kvpage_status kvpage_layer_base(const kvpage_cache* cache,
                                                int32_t layer, void** out);

/* The layer group of `layer` (config.group_layers): the table it reads
 * (*group), its storage slot (*slot), the layers sharing its table
 * (*layers). Without group_layers every layer is a group of one. Any out
 * pointer may be NULL. */
KVPAGE_C_EXPORT kvpage_status kvpage_layer_group(const kvpage_cache* cache,
                                                 int32_t layer, int32_t* group,
                                                 int32_t* slot,
                                                 int32_t* layers);

/* The update rule without data: slot_mapping[i] (`tokens` entries) gets
 * block_id * block_tokens + slot of position seq_len - tokens + i, or
 * KVPAGE_NO_SLOT for a position evicted in this very call. tokens == 0 below
 * the length rolls back (speculative drafts). */
KVPAGE_C_EXPORT kvpage_status kvpage_reserve(kvpage_cache* cache,
                                             kvpage_seq_id seq, int32_t layer,
                                             int64_t seq_len, int64_t tokens,
                                             int64_t* slot_mapping);

typedef struct kvpage_reserve_request {
  kvpage_seq_id seq;
  int64_t seq_len;
  int64_t tokens;
} kvpage_reserve_request;

/* Block tables for `rows` sequences. Padded: row i at block_table[i *
 * max_blocks] (rows * max_blocks entries), entries past the row's blocks
 * set to `pad`; seq_lens[rows]; block_offsets and window_starts are
 * optional (NULL), as kvpage/engine.h defines them. */
typedef struct kvpage_padded_tables {
  size_t struct_size;
  int32_t* block_table;
  int64_t max_blocks;
  int32_t pad;
  int32_t* seq_lens;
  int32_t* block_offsets;
  int32_t* window_starts;
} kvpage_padded_tables;

/* CSR (FlashInfer): indptr[rows + 1], indices (indices_capacity entries),
 * last_page_len[rows]; seq_lens, block_offsets and window_starts optional. */
typedef struct kvpage_csr_tables {
  size_t struct_size;
  int32_t* indptr;
  int32_t* indices;
  size_t indices_capacity;
  int32_t* last_page_len;
  int32_t* seq_lens;
  int32_t* block_offsets;
  int32_t* window_starts;
} kvpage_csr_tables;

/* One scheduler step, all or nothing: `slots` is the sum of the requests'
 * tokens; with `tables` (NULL for none) the padded rows of the requests'
 * sequences are kept current. */
KVPAGE_C_EXPORT kvpage_status kvpage_reserve_batch(
    kvpage_cache* cache, int32_t layer, const kvpage_reserve_request* requests,
    size_t count, int64_t* slot_mapping, size_t slots,
    const kvpage_padded_tables* tables);

KVPAGE_C_EXPORT kvpage_status kvpage_export_block_tables(
    const kvpage_cache* cache, int32_t layer, const kvpage_seq_id* seqs,
    size_t rows, const kvpage_padded_tables* out);
KVPAGE_C_EXPORT kvpage_status kvpage_export_block_tables_csr(
    const kvpage_cache* cache, int32_t layer, const kvpage_seq_id* seqs,
    size_t rows, const kvpage_csr_tables* out);

/* What a scheduler asks; nothing changes. */
typedef struct kvpage_admission {
  size_t struct_size;
  int64_t cached_tokens;
  int64_t blocks_needed;
  int64_t blocks_available;
  int32_t fits;
} kvpage_admission;

KVPAGE_C_EXPORT kvpage_status
kvpage_cached_prefix_tokens(const kvpage_cache* cache, const int32_t* tokens,
                            size_t count, uint64_t salt, int64_t* out);
KVPAGE_C_EXPORT kvpage_status kvpage_cached_prefix_tokens_ex(
    const kvpage_cache* cache, const int32_t* tokens, size_t count,
    uint64_t salt, const kvpage_match_options* options, int64_t* out);
KVPAGE_C_EXPORT kvpage_status kvpage_plan_admission(const kvpage_cache* cache,
                                                    const int32_t* prompt,
                                                    size_t count, uint64_t salt,
                                                    int64_t extra_tokens,
                                                    kvpage_admission* out);
KVPAGE_C_EXPORT kvpage_status kvpage_blocks_needed(const kvpage_cache* cache,
                                                   kvpage_seq_id seq,
                                                   int64_t seq_len,
                                                   int64_t tokens,
                                                   int64_t* out);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* KVPAGE_KVPAGE_C_H_ */
