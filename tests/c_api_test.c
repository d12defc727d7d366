/* The C API (kvpage/kvpage_c.h), compiled as C99 and linked against
 * libkvpage.so: every function, its error paths, and that a refused call
 * changes nothing (the cache's statistics, every sequence's statistics and
 * every visible token are compared before and after). Prints one line per
 * failed check and exits 1 when any failed. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvpage/kvpage_c.h"

static int failures = 0;

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, \
              __LINE__, #cond, kvpage_last_error());                         \
      ++failures;                                                            \
    }                                                                        \
  } while (0)

#define CHECK_STATUS(call, want)                                          \
  do {                                                                    \
    kvpage_status got_ = (call);                                          \
    if (got_ != (want)) {                                                 \
      fprintf(stderr, "%s:%d: %s returned %s, want %s; last error: %s\n", \
              __FILE__, __LINE__, #call, kvpage_status_name(got_),        \
              kvpage_status_name(want), kvpage_last_error());             \
      ++failures;                                                         \
    }                                                                     \
  } while (0)

#define OK(call) CHECK_STATUS(call, KVPAGE_OK)

enum { kLayers = 2, kHeads = 2, kDim = 8, kElems = kHeads * kDim };

/* Token t's keys are t + channel / 100, its values the negation. */
static void FillTokens(float* k, float* v, int64_t first, int64_t n) {
  for (int64_t t = 0; t < n; ++t) {
    for (int e = 0; e < kElems; ++e) {
      k[t * kElems + e] = (float)(first + t) + (float)e / 100.0f;
      v[t * kElems + e] = -k[t * kElems + e];
    }
  }
}

static kvpage_status Write(kvpage_cache* c, kvpage_seq_id seq, int32_t layer,
                           int64_t first, int64_t n) {
  static float k[256 * kElems], v[256 * kElems];
  if (n > 256) n = 256; /* the refused calls ask for at most 200 */
  FillTokens(k, v, first, n);
  kvpage_token_span ks = {k, KVPAGE_F32, n}, vs = {v, KVPAGE_F32, n};
  return kvpage_update(c, seq, layer, &ks, &vs, first + n);
}

/* Everything a caller can observe of a cache, for "changes nothing". */
typedef struct Fingerprint {
  kvpage_cache_stats stats;
  size_t sequences;
  kvpage_seq_id ids[8];
  kvpage_sequence_stats seq_stats[8];
  float k[8][kLayers][128 * kElems];
  size_t tokens[8][kLayers];
} Fingerprint;

static void Take(const kvpage_cache* c, Fingerprint* f) {
  memset(f, 0, sizeof *f);
  f->stats.struct_size = sizeof f->stats;
  OK(kvpage_stats(c, &f->stats));
  OK(kvpage_sequences(c, f->ids, 8, &f->sequences));
  for (size_t i = 0; i < f->sequences; ++i) {
    f->seq_stats[i].struct_size = sizeof f->seq_stats[i];
    OK(kvpage_seq_stats(c, f->ids[i], &f->seq_stats[i]));
    for (int l = 0; l < kLayers; ++l) {
      static float v[128 * kElems];
      OK(kvpage_gather(c, f->ids[i], l, f->k[i][l], v, NULL, 128,
                       &f->tokens[i][l]));
    }
  }
}

static void ExpectUnchanged(const kvpage_cache* c, const Fingerprint* before,
                            int line) {
  static Fingerprint after;
  Take(c, &after);
  if (memcmp(before, &after, sizeof after) != 0) {
    fprintf(stderr, "%s:%d: a refused call changed the cache\n", __FILE__,
            line);
    ++failures;
  }
}

static kvpage_config SmallConfig(void) {
  kvpage_config c;
  kvpage_config_init(&c);
  c.num_layers = kLayers;
  c.num_kv_heads = kHeads;
  c.head_dim = kDim;
  c.dtype = KVPAGE_F32;
  c.block_tokens = 4;
  c.num_blocks = 64;
  c.max_seq_len = 128;
  return c;
}

static void TestVersionAndNames(void) {
  char want[32];
  CHECK(kvpage_version() == KVPAGE_VERSION);
  snprintf(want, sizeof want, "%d.%d.%d", KVPAGE_VERSION_MAJOR,
           KVPAGE_VERSION_MINOR, KVPAGE_VERSION_PATCH);
  CHECK(strcmp(kvpage_version_string(), want) == 0);
  CHECK(strcmp(kvpage_version_string(), KVPAGE_PROJECT_VERSION) == 0);
  CHECK(strcmp(kvpage_status_name(KVPAGE_NOT_FOUND), "NOT_FOUND") == 0);
  CHECK(strcmp(kvpage_status_name((kvpage_status)99), "UNKNOWN_CODE") == 0);
}

static void TestConfig(void) {
  kvpage_config c = SmallConfig();
  kvpage_cache* cache = NULL;
  OK(kvpage_validate_config(&c));
  CHECK_STATUS(kvpage_validate_config(NULL), KVPAGE_INVALID_ARGUMENT);
  c.head_dim = 0;
  CHECK_STATUS(kvpage_validate_config(&c), KVPAGE_INVALID_ARGUMENT);
  CHECK(strstr(kvpage_last_error(), "head_dim") != NULL);
  CHECK_STATUS(kvpage_cache_create(&c, &cache), KVPAGE_INVALID_ARGUMENT);
  CHECK(cache == NULL);
  c = SmallConfig();
  c.struct_size = 0;
  CHECK_STATUS(kvpage_validate_config(&c), KVPAGE_INVALID_ARGUMENT);
  CHECK(strstr(kvpage_last_error(), "struct_size") != NULL);
  c = SmallConfig();
  c.dtype = (kvpage_dtype)7;
  CHECK_STATUS(kvpage_validate_config(&c), KVPAGE_INVALID_ARGUMENT);
  c = SmallConfig();
  c.overflow = (kvpage_overflow_policy)-1;
  CHECK_STATUS(kvpage_validate_config(&c), KVPAGE_INVALID_ARGUMENT);
  c = SmallConfig();
  c.compression_bits = 5;
  CHECK_STATUS(kvpage_validate_config(&c), KVPAGE_INVALID_ARGUMENT);
  c = SmallConfig();
  c.num_layer_policies = 1;
  CHECK_STATUS(kvpage_validate_config(&c), KVPAGE_INVALID_ARGUMENT);
  c = SmallConfig();
  CHECK_STATUS(kvpage_cache_create(&c, NULL), KVPAGE_INVALID_ARGUMENT);
  {
    /* Defaults for an older, shorter struct write only its bytes. */
    kvpage_config short_one;
    memset(&short_one, 0x5a, sizeof short_one);
    short_one.struct_size = offsetof(kvpage_config, max_seq_len);
    OK(kvpage_config_defaults(&short_one));
    CHECK(short_one.struct_size == offsetof(kvpage_config, max_seq_len));
    CHECK(short_one.block_tokens == 16 && short_one.dtype == KVPAGE_F16);
    CHECK(short_one.max_seq_len == 0x5a5a5a5a5a5a5a5aLL); /* untouched */
    CHECK_STATUS(kvpage_config_defaults(NULL), KVPAGE_INVALID_ARGUMENT);
  }
  /* A caller built against an older, shorter kvpage_config: the fields it
   * lacks take their defaults (no compression). */
  c = SmallConfig();
  c.compression_enabled = 1; /* beyond the short size: ignored */
  c.struct_size = offsetof(kvpage_config, prefault);
  OK(kvpage_cache_create(&c, &cache));
  {
    kvpage_config back;
    kvpage_config_init(&back);
    OK(kvpage_cache_config(cache, &back));
    CHECK(back.num_layers == kLayers && back.head_dim == kDim);
    CHECK(back.compression_enabled == 0);
    CHECK(back.dtype == KVPAGE_F32 && back.block_tokens == 4);
    CHECK(back.prefault == 1 && back.huge_pages == 1); /* the defaults */
  }
  kvpage_cache_destroy(cache);
}

static void TestHandles(void) {
  kvpage_config c = SmallConfig();
  kvpage_cache* cache = NULL;
  kvpage_seq_id seq;
  int64_t len;
  kvpage_cache_stats stats;
  int foreign = 42;
  kvpage_seq_id seq_unused;
  (void)seq_unused;
  OK(kvpage_cache_create(&c, &cache));
  kvpage_cache_destroy(cache);
  /* A destroyed handle and a pointer kvpage never made are refused. */
  CHECK_STATUS(kvpage_add_sequence(cache, 0, &seq), KVPAGE_INVALID_ARGUMENT);
  CHECK(strstr(kvpage_last_error(), "not a live handle") != NULL);
  CHECK_STATUS(kvpage_add_sequence((kvpage_cache*)&foreign, 0, &seq),
               KVPAGE_INVALID_ARGUMENT);
  CHECK_STATUS(kvpage_length(NULL, 1, 0, &len), KVPAGE_INVALID_ARGUMENT);
  stats.struct_size = sizeof stats;
  CHECK_STATUS(kvpage_stats(cache, &stats), KVPAGE_INVALID_ARGUMENT);
  kvpage_cache_destroy(cache); /* twice: ignored */
  {
    /* A snapshot handle is no cache, and the reverse. */
    kvpage_cache* live = NULL;
    kvpage_snapshot* snap = NULL;
    char path[128];
    size_t violations = 0;
    snprintf(path, sizeof path, "/tmp/kvpage_c_handles_%d.snap", (int)getpid());
    OK(kvpage_cache_create(&c, &live));
    OK(kvpage_write_snapshot(live, path, 0));
    OK(kvpage_snapshot_read(path, &snap));
    CHECK_STATUS(kvpage_add_sequence((kvpage_cache*)snap, 0, &seq),
                 KVPAGE_INVALID_ARGUMENT);
    CHECK_STATUS(kvpage_snapshot_verify((kvpage_snapshot*)live, &violations),
                 KVPAGE_INVALID_ARGUMENT);
    kvpage_cache_destroy((kvpage_cache*)snap);       /* not a cache: ignored */
    kvpage_snapshot_destroy((kvpage_snapshot*)live); /* not a snapshot */
    OK(kvpage_snapshot_verify(snap, &violations));
    OK(kvpage_add_sequence(live, 0, &seq));
    kvpage_snapshot_destroy(snap);
    kvpage_cache_destroy(live);
    unlink(path);
  }
  kvpage_cache_destroy((kvpage_cache*)&foreign); /* not ours: ignored */
  kvpage_cache_destroy(NULL);
  CHECK(foreign == 42);
}

static void TestSequencesAndUpdates(void) {
  kvpage_config c = SmallConfig();
  kvpage_cache* cache = NULL;
  kvpage_seq_id a, b, ids[4];
  size_t count = 0;
  int64_t len = -1;
  static Fingerprint before;
  float k[kElems];
  kvpage_token_span ks = {k, KVPAGE_F32, 1}, vs = {k, KVPAGE_F32, 1};
  kvpage_token_span bad_dtype = {k, (kvpage_dtype)9, 1};
  OK(kvpage_cache_create(&c, &cache));
  OK(kvpage_add_sequence(cache, 0, &a));
  OK(kvpage_add_sequence(cache, 7, &b));
  CHECK(a != b);
  CHECK_STATUS(kvpage_add_sequence(cache, 0, NULL), KVPAGE_INVALID_ARGUMENT);
  OK(Write(cache, a, 0, 0, 10));
  OK(Write(cache, a, 1, 0, 10));
  OK(kvpage_length(cache, a, 0, &len));
  CHECK(len == 10);
  CHECK_STATUS(kvpage_length(cache, a, 5, &len), KVPAGE_INVALID_ARGUMENT);
  CHECK_STATUS(kvpage_length(cache, 999, 0, &len), KVPAGE_NOT_FOUND);
  CHECK_STATUS(kvpage_sequences(cache, ids, 1, &count),
               KVPAGE_RESOURCE_EXHAUSTED);
  CHECK(count == 2);
  OK(kvpage_sequences(cache, ids, 4, &count));
  CHECK(count == 2 && ids[0] == a && ids[1] == b);

  /* Refused updates change nothing. */
  Take(cache, &before);
  CHECK_STATUS(Write(cache, a, 0, 12, 1), KVPAGE_INVALID_ARGUMENT); /* gap */
  CHECK(strstr(kvpage_last_error(), "gap") != NULL ||
        strlen(kvpage_last_error()) > 0);
  CHECK_STATUS(Write(cache, 999, 0, 0, 1), KVPAGE_NOT_FOUND);
  CHECK_STATUS(Write(cache, a, 0, 10, 200), KVPAGE_RESOURCE_EXHAUSTED);
  CHECK_STATUS(kvpage_update(cache, a, 0, NULL, &vs, 11),
               KVPAGE_INVALID_ARGUMENT);
  CHECK_STATUS(kvpage_update(cache, a, 0, &bad_dtype, &vs, 11),
               KVPAGE_INVALID_ARGUMENT);
  ks.tokens = 2;
  CHECK_STATUS(kvpage_update(cache, a, 0, &ks, &vs, 11),
               KVPAGE_INVALID_ARGUMENT); /* k and v token counts differ */
  ks.tokens = -1;
  vs.tokens = -1;
  CHECK_STATUS(kvpage_update(cache, a, 0, &ks, &vs, 11),
               KVPAGE_INVALID_ARGUMENT);
  CHECK_STATUS(kvpage_truncate(cache, a, -1), KVPAGE_INVALID_ARGUMENT);
  CHECK_STATUS(kvpage_fork(cache, 999, &b), KVPAGE_NOT_FOUND);
  CHECK_STATUS(kvpage_remove_sequence(cache, 999), KVPAGE_NOT_FOUND);
  CHECK_STATUS(kvpage_compress_old_entries(cache, a, 0, 0.5),
               KVPAGE_FAILED_PRECONDITION); /* compression is off */
  ExpectUnchanged(cache, &before, __LINE__);

  /* A fork shares the blocks; truncate rolls back every layer. */
  {
    kvpage_seq_id child;
    kvpage_sequence_stats s;
    OK(kvpage_fork(cache, a, &child));
    s.struct_size = sizeof s;
    OK(kvpage_seq_stats(cache, child, &s));
    CHECK(s.current_length == 10 && s.tokens_stored == 20);
    OK(kvpage_truncate(cache, child, 3));
    OK(kvpage_length(cache, child, 1, &len));
    CHECK(len == 3);
    OK(kvpage_length(cache, a, 1, &len));
    CHECK(len == 10);
    OK(kvpage_remove_sequence(cache, child));
    CHECK_STATUS(kvpage_seq_stats(cache, child, &s), KVPAGE_NOT_FOUND);
  }
  OK(kvpage_validate(cache));
  kvpage_cache_destroy(cache);
}

static void TestReads(void) {
  kvpage_config c = SmallConfig();
  kvpage_cache* cache = NULL;
  kvpage_seq_id seq;
  kvpage_view_info info;
  kvpage_block_view blocks[16];
  float k[64 * kElems], v[64 * kElems], dk[4 * kElems], dv[4 * kElems];
  int64_t positions[64];
  size_t tokens = 0;
  OK(kvpage_cache_create(&c, &cache));
  OK(kvpage_add_sequence(cache, 0, &seq));
  OK(Write(cache, seq, 0, 0, 10));

  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK_STATUS(kvpage_view(cache, seq, 0, &info, blocks, 1),
               KVPAGE_RESOURCE_EXHAUSTED);
  CHECK(info.num_blocks == 3); /* 10 tokens in blocks of 4 */
  OK(kvpage_view(cache, seq, 0, &info, blocks, 16));
  CHECK(info.dtype == KVPAGE_F32 && info.num_kv_heads == kHeads &&
        info.head_dim == kDim && info.block_tokens == 4 && info.length == 10);
  CHECK(blocks[2].first_position == 8 && blocks[2].tokens == 2);
  CHECK(blocks[0].format == KVPAGE_BLOCK_HOT);
  {
    const float* key =
        (const float*)blocks[1].k + blocks[1].begin_slot * info.token_stride;
    CHECK(key[0] == 4.0f && key[3] == 4.03f);
  }
  OK(kvpage_dequantize(&info, &blocks[2], dk, 4 * kElems, dv, 4 * kElems));
  CHECK(dk[kElems] == 9.0f && dv[kElems] == -9.0f);
  CHECK_STATUS(kvpage_dequantize(&info, &blocks[2], dk, 1, dv, 1),
               KVPAGE_INVALID_ARGUMENT);
  CHECK_STATUS(kvpage_dequantize(NULL, &blocks[2], dk, 64, dv, 64),
               KVPAGE_INVALID_ARGUMENT);
  {
    /* One query head per kv head, all ones: the scores favor the newest
     * token, whose values are the most negative. */
    float q[kElems], out[kElems];
    int i;
    for (i = 0; i < kElems; ++i) q[i] = 1.0f;
    OK(kvpage_attend(&info, blocks, q, kElems, out, kElems));
    CHECK(out[0] < -8.0f && out[0] > -9.01f);
    CHECK_STATUS(kvpage_attend(&info, blocks, q, 3, out, kElems),
                 KVPAGE_INVALID_ARGUMENT);
  }
  CHECK_STATUS(kvpage_gather(cache, seq, 0, k, v, positions, 5, &tokens),
               KVPAGE_RESOURCE_EXHAUSTED);
  CHECK(tokens == 10);
  OK(kvpage_gather(cache, seq, 0, k, v, positions, 64, &tokens));
  CHECK(tokens == 10 && positions[9] == 9 && k[9 * kElems] == 9.0f);
  OK(kvpage_gather(cache, seq, 1, k, v, NULL, 64, &tokens));
  CHECK(tokens == 0);
  CHECK_STATUS(kvpage_gather(cache, 999, 0, k, v, NULL, 64, &tokens),
               KVPAGE_NOT_FOUND);
  kvpage_cache_destroy(cache);
}

/* The test vectors of docs/sharing.md. */
static void TestPrefixHash(void) {
  int32_t ids[32];
  const int32_t extremes[4] = {-1, 0, 2147483647, -2147483647 - 1};
  uint64_t first;
  int i;
  for (i = 0; i < 32; ++i) ids[i] = i + 1;
  first = kvpage_prefix_block_hash(0, 0, ids, 16);
  CHECK(first == 0xa53ea810e69adcedULL);
  CHECK(kvpage_prefix_block_hash(first, 0, ids + 16, 16) ==
        0xacc0109a8f0165a4ULL);
  CHECK(kvpage_prefix_block_hash(0, 42, ids, 16) == 0x2f2907c3e36cd564ULL);
  CHECK(kvpage_prefix_block_hash(0, 0, extremes, 4) == 0xfd0a72b744ecf7f6ULL);
  CHECK(kvpage_prefix_block_hash(0, 0, NULL, 0) ==
        kvpage_prefix_block_hash(0, 0, ids, 0));
}

static void TestPrefixAndCompression(void) {
  kvpage_config c = SmallConfig();
  kvpage_cache* cache = NULL;
  kvpage_seq_id a, b, d;
  int32_t ids[8] = {5, 6, 7, 8, 9, 10, 11, 12};
  int64_t matched = -1;
  kvpage_cache_stats stats;
  c.compression_enabled = 1;
  c.compression_group_size = kDim;
  c.compression_hot_tokens = 4;
  c.compression_quant_cells = 32;
  OK(kvpage_cache_create(&c, &cache));
  OK(kvpage_add_sequence(cache, 0, &a));
  OK(Write(cache, a, 0, 0, 8));
  OK(Write(cache, a, 1, 0, 8));
  OK(kvpage_append_tokens(cache, a, ids, 8));
  CHECK_STATUS(kvpage_append_tokens(cache, a, NULL, 3),
               KVPAGE_INVALID_ARGUMENT);
  OK(kvpage_add_sequence(cache, 0, &b));
  OK(kvpage_match_prefix(cache, b, ids, 8, &matched));
  CHECK(matched == 8);
  OK(kvpage_add_sequence(cache, 1, &d)); /* another salt: no match */
  OK(kvpage_match_prefix(cache, d, ids, 8, &matched));
  CHECK(matched == 0);
  CHECK_STATUS(kvpage_match_prefix(cache, b, ids, 8, &matched),
               KVPAGE_FAILED_PRECONDITION); /* b holds tokens */
  {
    /* leave_last_token: the prompt cached whole leaves its last block. */
    kvpage_match_options leave = {sizeof leave, 1};
    kvpage_match_options bad = {sizeof bad, 2};
    kvpage_seq_id e;
    int64_t cached = -1;
    OK(kvpage_cached_prefix_tokens_ex(cache, ids, 8, 0, &leave, &cached));
    CHECK(cached == 4);
    OK(kvpage_cached_prefix_tokens_ex(cache, ids, 8, 0, NULL, &cached));
    CHECK(cached == 8);
    CHECK_STATUS(kvpage_cached_prefix_tokens_ex(cache, ids, 8, 0, &bad,
                                                &cached),
                 KVPAGE_INVALID_ARGUMENT);
    OK(kvpage_add_sequence(cache, 0, &e));
    CHECK_STATUS(kvpage_match_prefix_ex(cache, e, ids, 8, &bad, &matched),
                 KVPAGE_INVALID_ARGUMENT);
    bad.leave_last_token = 1;
    bad.struct_size = 0;
    CHECK_STATUS(kvpage_match_prefix_ex(cache, e, ids, 8, &bad, &matched),
                 KVPAGE_INVALID_ARGUMENT);
    /* Nothing changed: e is still empty and matches. */
    OK(kvpage_match_prefix_ex(cache, e, ids, 8, &leave, &matched));
    CHECK(matched == 4);
    OK(kvpage_remove_sequence(cache, e));
  }
  /* d holds blocks of its own: its cold one (positions 0-3, older than
   * the 4 hot tokens) is compressed. */
  OK(Write(cache, d, 0, 0, 8));
  OK(kvpage_compress_old_entries(cache, d, 0, 0.0));
  CHECK_STATUS(kvpage_compress_old_entries(cache, d, 0, 2.0),
               KVPAGE_INVALID_ARGUMENT);
  stats.struct_size = sizeof stats;
  OK(kvpage_stats(cache, &stats));
  CHECK(stats.hits == 3 && stats.quant_blocks_int8 == 1); /* a hit a block: b 2, e 1 */
  CHECK(stats.sequences == 3);
  {
    /* A compressed block reads back through dequantize within int8's
     * error. */
    kvpage_view_info info;
    kvpage_block_view blocks[4];
    float dk[4 * kElems], dv[4 * kElems];
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    OK(kvpage_view(cache, d, 0, &info, blocks, 4));
    CHECK(blocks[0].format == KVPAGE_BLOCK_INT8 && blocks[0].k == NULL);
    OK(kvpage_dequantize(&info, &blocks[0], dk, 4 * kElems, dv, 4 * kElems));
    CHECK(fabsf(dk[kElems + 3] - 1.03f) < 0.01f);
  }
  OK(kvpage_validate(cache));
  kvpage_cache_destroy(cache);
}

static void TestSnapshots(void) {
  kvpage_config c = SmallConfig();
  kvpage_cache* cache = NULL;
  kvpage_seq_id seq;
  kvpage_snapshot* snap = NULL;
  size_t violations = 99;
  kvpage_cache_stats stats;
  char path[256];
  snprintf(path, sizeof path, "%s/kvpage_c_api_test_%d.snap",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
  OK(kvpage_cache_create(&c, &cache));
  OK(kvpage_add_sequence(cache, 0, &seq));
  OK(Write(cache, seq, 0, 0, 6));
  OK(kvpage_write_snapshot(cache, path, 1));
  CHECK_STATUS(kvpage_write_snapshot(cache, NULL, 0), KVPAGE_INVALID_ARGUMENT);
  CHECK_STATUS(kvpage_write_snapshot(cache, path, 2), KVPAGE_INVALID_ARGUMENT);
  CHECK_STATUS(kvpage_write_snapshot(cache, "/nonexistent/dir/x.snap", 0),
               KVPAGE_NOT_FOUND);
  OK(kvpage_snapshot_read(path, &snap));
  OK(kvpage_snapshot_verify(snap, &violations));
  CHECK(violations == 0);
  stats.struct_size = sizeof stats;
  OK(kvpage_snapshot_stats(snap, &stats));
  CHECK(stats.tokens_stored == 6 && stats.sequences == 1);
  kvpage_snapshot_destroy(snap);
  CHECK_STATUS(kvpage_snapshot_verify(snap, &violations),
               KVPAGE_INVALID_ARGUMENT); /* destroyed */
  kvpage_snapshot_destroy(snap);         /* twice: ignored */
  CHECK_STATUS(kvpage_snapshot_read("/nonexistent.snap", &snap),
               KVPAGE_NOT_FOUND);
  CHECK_STATUS(kvpage_snapshot_read("/", &snap), KVPAGE_FAILED_PRECONDITION);
  unlink(path);
  kvpage_cache_destroy(cache);
}

/* Engine mode: reserve, the engine's "kernel" writes through the slot
 * mapping into memory it owns, block tables read the tokens back. */
static void TestEngineMode(void) {
  kvpage_config config = SmallConfig();
  int64_t bytes = 0;
  OK(kvpage_storage_bytes(&config, &bytes));
  CHECK(bytes == 64 * 2 * 4 * kElems * (int64_t)sizeof(float));
  void* allocated = NULL;
  CHECK(posix_memalign(&allocated, 64, (size_t)bytes) == 0);
  unsigned char* memory = allocated;
  kvpage_cache* cache = NULL;
  CHECK_STATUS(
      kvpage_cache_create_in_memory(&config, memory + 4, bytes, &cache),
      KVPAGE_INVALID_ARGUMENT); /* misaligned */
  OK(kvpage_cache_create_in_memory(&config, memory, bytes, &cache));
  void* base = NULL;
  OK(kvpage_layer_base(cache, 1, &base));
  CHECK(base == memory);
  kvpage_seq_id a, b;
  OK(kvpage_add_sequence(cache, 0, &a));
  OK(kvpage_add_sequence(cache, 0, &b));
  int64_t slots[8];
  kvpage_reserve_request step[2] = {{a, 5, 5}, {b, 3, 3}};
  int32_t table[2 * 4], lens[2];
  kvpage_padded_tables tables = {sizeof tables, table, 4, -1, lens, NULL, NULL};
  OK(kvpage_export_block_tables(cache, 0, (kvpage_seq_id[]){a, b}, 2, &tables));
  CHECK(lens[0] == 0 && table[0] == -1);
  OK(kvpage_reserve_batch(cache, 0, step, 2, slots, 8, &tables));
  CHECK(lens[0] == 5 && lens[1] == 3 && table[2] == -1 && table[4] >= 0);
  const int64_t block_bytes = 2 * 4 * kElems * (int64_t)sizeof(float);
  for (int i = 0; i < 8; ++i) { /* keys of token i: 100 * i */
    const int64_t block = slots[i] / 4, slot = slots[i] % 4;
    const float key = 100.0f * (float)i;
    memcpy(memory + block * block_bytes + slot * kElems * sizeof(float), &key,
           sizeof key);
  }
  /* Token 6 (b's position 1) through the table: row 1, entry 0, slot 1. */
  float read;
  memcpy(&read, memory + table[4] * block_bytes + 1 * kElems * sizeof(float),
         sizeof read);
  CHECK(read == 600.0f);
  /* CSR. */
  int32_t indptr[3], indices[4], last[2];
  kvpage_csr_tables csr = {sizeof csr, indptr, indices, 4,
                           last,       NULL,   NULL,    NULL};
  OK(kvpage_export_block_tables_csr(cache, 0, (kvpage_seq_id[]){a, b}, 2,
                                    &csr));
  CHECK(indptr[0] == 0 && indptr[1] == 2 && indptr[2] == 3);
  CHECK(last[0] == 1 && last[1] == 3 && indices[2] == table[4]);
  csr.indices_capacity = 2;
  CHECK_STATUS(kvpage_export_block_tables_csr(cache, 0, (kvpage_seq_id[]){a, b},
                                              2, &csr),
               KVPAGE_INVALID_ARGUMENT);
  /* A single reserve, refusals, a rollback. */
  int64_t one;
  OK(kvpage_reserve(cache, a, 0, 6, 1, &one));
  CHECK(one == slots[4] + 1);
  CHECK_STATUS(kvpage_reserve(cache, a, 0, 9, 1, &one),
               KVPAGE_INVALID_ARGUMENT); /* gap */
  CHECK_STATUS(kvpage_reserve(cache, a, 0, 7, 1, NULL),
               KVPAGE_INVALID_ARGUMENT);
  CHECK_STATUS(kvpage_reserve_batch(cache, 0, step, 2, slots, 7, NULL),
               KVPAGE_INVALID_ARGUMENT); /* 8 tokens, 7 slots */
  OK(kvpage_reserve(cache, a, 0, 4, 0, NULL));
  int64_t length = 0;
  OK(kvpage_length(cache, a, 0, &length));
  CHECK(length == 4);
  /* What a scheduler asks. */
  int64_t needed = -1;
  kvpage_seq_id c;
  OK(kvpage_add_sequence(cache, 0, &c));
  OK(kvpage_blocks_needed(cache, c, 9, 9, &needed));
  CHECK(needed == 2 * 3); /* 3 blocks of 4 in each layer */
  CHECK_STATUS(kvpage_blocks_needed(cache, a, 9, 5, &needed),
               KVPAGE_INVALID_ARGUMENT); /* a gap in layer 1 */
  kvpage_cache_stats stats;
  stats.struct_size = sizeof stats;
  OK(kvpage_stats(cache, &stats));
  const int32_t prompt[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  kvpage_admission admission = {sizeof admission, 0, 0, 0, 0};
  OK(kvpage_plan_admission(cache, prompt, 8, 0, 8, &admission));
  CHECK(admission.cached_tokens == 0 && admission.blocks_needed == 8);
  CHECK(admission.fits == 1 &&
        admission.blocks_available == stats.blocks_free + stats.blocks_cached);
  int64_t cached = -1;
  OK(kvpage_cached_prefix_tokens(cache, prompt, 8, 0, &cached));
  CHECK(cached == 0);
  CHECK_STATUS(kvpage_plan_admission(cache, prompt, 8, 0, -1, &admission),
               KVPAGE_INVALID_ARGUMENT);
  kvpage_cache_destroy(cache);
  free(memory);
}

/* Storage behind callbacks: addresses that are not host pointers. */
static unsigned char device_bytes[64 * 2 * 4 * kElems * sizeof(float)];
static int releases = 0, copies = 0;
static const void* DeviceAddress(void* context, uint32_t block) {
  (void)context;
  return (const void*)(uintptr_t)(0xd000000000u +
                                  block * 2u * 4u * kElems * sizeof(float));
}
static void DeviceCopy(void* context, uint32_t from, uint32_t to) {
  (void)context;
  const size_t n = 2 * 4 * kElems * sizeof(float);
  memcpy(device_bytes + to * n, device_bytes + from * n, n);
  ++copies;
}
static void DeviceRelease(void* context) {
  CHECK(context == device_bytes);
  ++releases;
}

static void TestCallbackStorage(void) {
  kvpage_config config = SmallConfig();
  kvpage_storage_callbacks callbacks = {
      sizeof callbacks, device_bytes, DeviceAddress, DeviceCopy, NULL, NULL,
      DeviceRelease};
  kvpage_cache* cache = NULL;
  OK(kvpage_cache_create_with_storage(&config, &callbacks, &cache));
  kvpage_seq_id seq, child;
  OK(kvpage_add_sequence(cache, 0, &seq));
  int64_t slots[3];
  OK(kvpage_reserve(cache, seq, 0, 3, 3, slots));
  OK(kvpage_fork(cache, seq, &child));
  OK(kvpage_reserve(cache, child, 0, 4, 1, slots));
  CHECK(copies == 1);
  CHECK_STATUS(Write(cache, seq, 0, 3, 1), KVPAGE_FAILED_PRECONDITION);
  void* base = NULL;
  OK(kvpage_layer_base(cache, 0, &base));
  CHECK((uintptr_t)base == 0xd000000000u);
  CHECK(releases == 0);
  kvpage_cache_destroy(cache);
  CHECK(releases == 1);
  /* Missing callbacks, or compression without host reads: refused, and
   * release is not called. */
  callbacks.copy = NULL;
  CHECK_STATUS(kvpage_cache_create_with_storage(&config, &callbacks, &cache),
               KVPAGE_INVALID_ARGUMENT);
  callbacks.copy = DeviceCopy;
  config.compression_enabled = 1;
  config.compression_quant_cells = 8;
  config.compression_group_size = 4;
  CHECK_STATUS(kvpage_cache_create_with_storage(&config, &callbacks, &cache),
               KVPAGE_INVALID_ARGUMENT);
  CHECK(strstr(kvpage_last_error(), "compression") != NULL);
  CHECK(releases == 1);
}

/* Layer groups: every layer of the cache shares one table, each its own
 * slot of the storage; one reservation serves them all. */
static void TestLayerGroups(void) {
  kvpage_config config = SmallConfig();
  config.group_layers = 2; /* booleans are 0 or 1 */
  kvpage_cache* cache = NULL;
  CHECK_STATUS(kvpage_cache_create(&config, &cache), KVPAGE_INVALID_ARGUMENT);
  config.group_layers = 1;
  int64_t bytes = 0;
  OK(kvpage_storage_bytes(&config, &bytes));
  const int64_t block_bytes = 2 * 4 * kElems * (int64_t)sizeof(float);
  CHECK(bytes == kLayers * 64 * block_bytes);
  OK(kvpage_cache_create(&config, &cache));
  kvpage_config back;
  kvpage_config_init(&back);
  OK(kvpage_cache_config(cache, &back));
  CHECK(back.group_layers == 1);
  int32_t group = -1, slot = -1, layers = -1;
  OK(kvpage_layer_group(cache, kLayers - 1, &group, &slot, &layers));
  CHECK(group == 0 && slot == kLayers - 1 && layers == kLayers);
  OK(kvpage_layer_group(cache, 0, NULL, NULL, NULL));
  CHECK_STATUS(kvpage_layer_group(cache, kLayers, &group, &slot, &layers),
               KVPAGE_INVALID_ARGUMENT);
  void *base0 = NULL, *base1 = NULL;
  OK(kvpage_layer_base(cache, 0, &base0));
  OK(kvpage_layer_base(cache, 1, &base1));
  CHECK((char*)base1 - (char*)base0 == 64 * block_bytes);
  kvpage_seq_id a;
  OK(kvpage_add_sequence(cache, 0, &a));
  int64_t slots[5];
  OK(kvpage_reserve(cache, a, 0, 5, 5, slots));
  for (int layer = 0; layer < kLayers; ++layer) {
    int64_t length = 0;
    OK(kvpage_length(cache, a, layer, &length));
    CHECK(length == 5);
  }
  kvpage_cache_stats stats;
  stats.struct_size = sizeof stats;
  OK(kvpage_stats(cache, &stats));
  CHECK(stats.blocks_used == 2 && stats.tokens_stored == 5 * kLayers);
  kvpage_cache_destroy(cache);
}

int main(void) {
  TestVersionAndNames();
  TestConfig();
  TestHandles();
  TestSequencesAndUpdates();
  TestReads();
  TestPrefixHash();
  TestPrefixAndCompression();
  TestSnapshots();
  TestEngineMode();
  TestCallbackStorage();
  TestLayerGroups();
  if (failures > 0) {
    fprintf(stderr, "c_api_test: %d checks failed\n", failures);
    return 1;
  }
  printf("c_api_test: all checks passed\n");
  return 0;
}
