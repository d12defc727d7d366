// The C API (kvpage/kvpage_c.h): a KVCache behind a registered handle.
//
// Invariants:
//   a kvpage_cache* is usable  <=>  it is in Registry() (created by
//     kvpage_cache_create, not yet destroyed); any other pointer, a destroyed
//     one included, is refused with INVALID_ARGUMENT before it is read.
//   no exception leaves a function of this file: each body runs in Guard(),
//     which turns std::bad_alloc into RESOURCE_EXHAUSTED and anything else
//     into INTERNAL.
#include <atomic>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "cache/c_api_internal.h"
#include "kvpage/attention.h"
#include "kvpage/kv_cache.h"
#include "kvpage/kvpage_c.h"
#include "kvpage/prefix.h"
#include "kvpage/snapshot.h"

namespace kvpage::c_api {

std::string& LastError() {
  thread_local std::string message;
  return message;
}

Handles& Registry() {
  static Handles* handles = new Handles;
  return *handles;
}

namespace {

// Bumped by every Forget(), before the handle's memory is freed: a thread's
// remembered validation holds only while it is unchanged.
std::atomic<uint64_t> destroy_epoch{0};

struct Validated {
  const void* handle = nullptr;
  HandleKind kind = HandleKind::kCache;
  uint64_t epoch = ~uint64_t{0};
};
thread_local Validated last_validated;

}  // namespace

// Measured (tools/bindings_bench.sh): the registry's mutex alone made a
// 1-token update through C 30 ns slower than through C++; with this
// thread's last validation remembered the fast path is a TLS compare and an
// atomic load.
bool IsLive(const void* handle, HandleKind kind) {
  const uint64_t epoch = destroy_epoch.load(std::memory_order_acquire);
  if (last_validated.handle == handle && last_validated.kind == kind &&
      last_validated.epoch == epoch) {
    return true;
  }
  Handles& h = Registry();
  bool live = false;
  {
    absl::MutexLock lock(&h.mu);
    auto it = h.live.find(handle);
    live = it != h.live.end() && it->second == kind;
  }
  if (live) last_validated = {handle, kind, epoch};
  return live;
}

void Remember(const void* handle, HandleKind kind) {
  Handles& h = Registry();
  absl::MutexLock lock(&h.mu);
  h.live[handle] = kind;
}

bool Forget(const void* handle, HandleKind kind) {
  Handles& h = Registry();
  absl::MutexLock lock(&h.mu);
  auto it = h.live.find(handle);
  if (it == h.live.end() || it->second != kind) return false;
  h.live.erase(it);
  destroy_epoch.fetch_add(1, std::memory_order_acq_rel);
  return true;
}

void SetError(const char* message) noexcept {
  try {
    LastError() = message;
  } catch (...) {
  }
}

absl::StatusOr<CacheConfig> ToConfig(const kvpage_config* in) {
  if (in == nullptr) return absl::InvalidArgumentError("config is NULL");
  if (absl::Status s =
          CheckSize(in->struct_size, sizeof(kvpage_config), "kvpage_config");
      !s.ok()) {
    return s;
  }
  kvpage_config c;
  kvpage_config_init(&c);
  CopyIn(*in, c);
  struct Enum {
    int value, count;
    const char* name;
  };
  for (const Enum& e :
       {Enum{AsInt(c.dtype), 3, "dtype"},
        Enum{AsInt(c.overflow), 4, "overflow"},
        Enum{c.compression_enabled, 2, "compression_enabled"},
        Enum{c.compression_auto_compress, 2, "compression_auto_compress"},
        Enum{c.compression_measure_error, 2, "compression_measure_error"},
        Enum{c.prefault, 2, "prefault"}, Enum{c.huge_pages, 2, "huge_pages"},
        Enum{c.group_layers, 2, "group_layers"}}) {
    if (absl::Status s = CheckEnum(e.value, e.count, e.name); !s.ok()) {
      return s;
    }
  }
  if (c.compression_bits != 8 && c.compression_bits != 4) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "compression_bits is %d, not 8 or 4", c.compression_bits));
  }
  if (c.num_layer_policies > 0 && c.layer_policies == nullptr) {
    return absl::InvalidArgumentError(
        "layer_policies is NULL with num_layer_policies > 0");
  }
  if (c.num_layer_policies > (size_t{1} << 20)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "num_layer_policies is %d, more than 2^20", c.num_layer_policies));
  }
  CacheConfig out{
      .num_layers = c.num_layers,
      .num_kv_heads = c.num_kv_heads,
      .head_dim = c.head_dim,
      .dtype = static_cast<DType>(c.dtype),
      .block_tokens = c.block_tokens,
      .num_blocks = c.num_blocks,
      .max_seq_len = c.max_seq_len,
      .overflow = PolicyOf(c.overflow),
      .sink_tokens = c.sink_tokens,
      .truncate_to = c.truncate_to,
      .compression = {.enabled = c.compression_enabled != 0,
                      .bits = c.compression_bits == 4 ? QuantBits::kInt4
                                                      : QuantBits::kInt8,
                      .group_size = c.compression_group_size,
                      .hot_tokens = c.compression_hot_tokens,
                      .quant_cells = c.compression_quant_cells,
                      .auto_compress = c.compression_auto_compress != 0,
                      .max_rel_error = c.compression_max_rel_error,
                      .measure_error = c.compression_measure_error != 0},
      .prefault = c.prefault != 0,
      .huge_pages = c.huge_pages != 0,
      .group_layers = c.group_layers != 0};
  for (size_t i = 0; i < c.num_layer_policies; ++i) {
    const kvpage_layer_policy& p = c.layer_policies[i];
    if (absl::Status s =
            CheckEnum(AsInt(p.overflow), 4, "layer_policies[].overflow");
        !s.ok()) {
      return s;
    }
    out.layer_policies.push_back({.layer = p.layer,
                                  .overflow = PolicyOf(p.overflow),
                                  .max_seq_len = p.max_seq_len,
                                  .sink_tokens = p.sink_tokens,
                                  .truncate_to = p.truncate_to});
  }
  if (absl::Status s = ValidateConfig(out); !s.ok()) return s;
  return out;
}

namespace {

kvpage_config FromConfig(const CacheConfig& c,
                         const std::vector<kvpage_layer_policy>& policies) {
  kvpage_config out;
  kvpage_config_init(&out);
  out.num_layers = c.num_layers;
  out.num_kv_heads = c.num_kv_heads;
  out.head_dim = c.head_dim;
  out.dtype = static_cast<kvpage_dtype>(c.dtype);
  out.block_tokens = c.block_tokens;
  out.num_blocks = c.num_blocks;
  out.max_seq_len = c.max_seq_len;
  out.overflow = PolicyOf(c.overflow);
  out.sink_tokens = c.sink_tokens;
  out.truncate_to = c.truncate_to;
  out.layer_policies = policies.empty() ? nullptr : policies.data();
  out.num_layer_policies = policies.size();
  out.prefault = c.prefault;
  out.huge_pages = c.huge_pages;
  out.compression_enabled = c.compression.enabled;
  out.compression_bits = static_cast<int32_t>(c.compression.bits);
  out.compression_group_size = c.compression.group_size;
  out.compression_hot_tokens = c.compression.hot_tokens;
  out.compression_quant_cells = c.compression.quant_cells;
  out.compression_auto_compress = c.compression.auto_compress;
  out.compression_measure_error = c.compression.measure_error;
  out.compression_max_rel_error = c.compression.max_rel_error;
  out.group_layers = c.group_layers ? 1 : 0;
  return out;
}

}  // namespace

kvpage_cache_stats FromStats(const CacheStats& s) {
  kvpage_cache_stats o{};
  o.struct_size = sizeof o;
  // Field for field in CacheStats' order (kvpage/stats_fields.h).
  o.blocks_total = s.blocks_total;
  o.blocks_used = s.blocks_used;
  o.blocks_cached = s.blocks_cached;
  o.blocks_free = s.blocks_free;
  o.utilization = s.utilization;
  o.block_bytes = s.block_bytes;
  o.memory_usage_bytes = s.memory_usage_bytes;
  o.arena_bytes = s.arena_bytes;
  o.sequences = s.sequences;
  o.tokens_stored = s.tokens_stored;
  o.slots_allocated = s.slots_allocated;
  o.hits = s.hits;
  o.misses = s.misses;
  o.prefix_entries = s.prefix_entries;
  o.quant_cells_total = s.quant_cells_total;
  o.quant_cells_used = s.quant_cells_used;
  o.quant_cell_bytes = s.quant_cell_bytes;
  o.quant_blocks_int8 = s.quant_blocks_int8;
  o.quant_blocks_int4 = s.quant_blocks_int4;
  o.bytes_per_token_hot = s.bytes_per_token_hot;
  o.bytes_per_token_cold = s.bytes_per_token_cold;
  o.bytes_saved = s.bytes_saved;
  o.compressions_applied = s.compressions_applied;
  o.compressions_skipped = s.compressions_skipped;
  o.decompressions = s.decompressions;
  o.max_quant_error = s.max_quant_error;
  o.mean_quant_error = s.mean_quant_error;
  o.evictions = s.evictions;
  o.blocks_released_by_policy = s.blocks_released_by_policy;
  o.blocks_reused_by_ring = s.blocks_reused_by_ring;
  o.blocks_allocated = s.blocks_allocated;
  o.blocks_released = s.blocks_released;
  o.bytes_written = s.bytes_written;
  o.bytes_copied = s.bytes_copied;
  o.prefix_queries = s.prefix_queries;
  o.prefix_blocks_queried = s.prefix_blocks_queried;
  o.prefix_tokens_queried = s.prefix_tokens_queried;
  o.prefix_tokens_matched = s.prefix_tokens_matched;
  return o;
}

namespace {

absl::StatusOr<TokenSpan> ToSpan(const kvpage_token_span* s, const char* what) {
  if (s == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("%s is NULL", what));
  }
  if (absl::Status st = CheckEnum(AsInt(s->dtype), 3, what); !st.ok()) {
    return st;
  }
  return TokenSpan{.data = s->data,
                   .dtype = static_cast<DType>(s->dtype),
                   .tokens = s->tokens};
}

}  // namespace
kvpage_status Adopt(absl::StatusOr<std::unique_ptr<KVCache>> cache,
                    Release release, kvpage_cache** out) {
  if (!cache.ok()) return Fail(cache.status());
  auto handle = std::make_unique<kvpage_cache>();
  handle->cache = *std::move(cache);
  for (const LayerPolicy& p : handle->cache->config().layer_policies) {
    handle->layer_policies.push_back({.layer = p.layer,
                                      .overflow = PolicyOf(p.overflow),
                                      .max_seq_len = p.max_seq_len,
                                      .sink_tokens = p.sink_tokens,
                                      .truncate_to = p.truncate_to});
  }
  handle->release = release;
  Remember(handle.get(), HandleKind::kCache);
  *out = handle.release();
  return KVPAGE_OK;
}

}  // namespace kvpage::c_api

using kvpage::c_api::CheckHandle;
using kvpage::c_api::CheckOut;
using kvpage::c_api::Fail;
using kvpage::c_api::Guard;
using kvpage::c_api::MatchOptionsOf;
using kvpage::c_api::Return;

extern "C" {

int kvpage_version(void) { return KVPAGE_VERSION; }

const char* kvpage_version_string(void) {
#define KVPAGE_STR2(x) #x
#define KVPAGE_STR(x) KVPAGE_STR2(x)
  return KVPAGE_STR(KVPAGE_VERSION_MAJOR) "." KVPAGE_STR(
      KVPAGE_VERSION_MINOR) "." KVPAGE_STR(KVPAGE_VERSION_PATCH);
#undef KVPAGE_STR
#undef KVPAGE_STR2
}

const char* kvpage_last_error(void) {
  return kvpage::c_api::LastError().c_str();
}

const char* kvpage_status_name(kvpage_status status) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  // Read as the int a C caller passed: a C++ enum need not hold 99.
  int i = 0;
  std::memcpy(&i, &status, sizeof i);
  return i >= 0 && i < 17 ? kNames[i] : "UNKNOWN_CODE";
}

kvpage_status kvpage_config_defaults(kvpage_config* config) {
  return Guard([&] {
    if (absl::Status s = CheckOut(config, "config"); !s.ok()) return Fail(s);
    if (absl::Status s = kvpage::c_api::CheckSize(
            config->struct_size, sizeof(kvpage_config), "kvpage_config");
        !s.ok()) {
      return Fail(s);
    }
    const kvpage::CacheConfig d;
    kvpage_config c{};
    c.struct_size = sizeof c;
    c.dtype = static_cast<kvpage_dtype>(d.dtype);
    c.block_tokens = d.block_tokens;
    c.overflow = KVPAGE_POLICY_ERROR;
    c.compression_bits = static_cast<int32_t>(d.compression.bits);
    c.compression_group_size = d.compression.group_size;
    c.compression_hot_tokens = d.compression.hot_tokens;
    c.compression_max_rel_error = d.compression.max_rel_error;
    c.prefault = d.prefault ? 1 : 0;
    c.huge_pages = d.huge_pages ? 1 : 0;
    kvpage::c_api::CopyOut(c, config);
    return KVPAGE_OK;
  });
}

kvpage_status kvpage_validate_config(const kvpage_config* config) {
  return Guard(
      [&] { return Return(kvpage::c_api::ToConfig(config).status()); });
}

kvpage_status kvpage_cache_create(const kvpage_config* config,
                                  kvpage_cache** out) {
  return Guard([&] {
    if (absl::Status s = CheckOut(out, "out"); !s.ok()) return Fail(s);
    absl::StatusOr<kvpage::CacheConfig> c = kvpage::c_api::ToConfig(config);
    if (!c.ok()) return Fail(c.status());
    return kvpage::c_api::Adopt(kvpage::KVCache::Create(*c), {}, out);
  });
}

void kvpage_cache_destroy(kvpage_cache* cache) {
  if (cache == nullptr) return;
  // A pointer kvpage did not hand out (or one already destroyed) is left
  // alone: freeing it would corrupt the caller's heap.
  if (!kvpage::c_api::Forget(cache, kvpage::c_api::HandleKind::kCache)) return;
  const kvpage::c_api::Release release = cache->release;
  delete cache;
  if (release.fn != nullptr) release.fn(release.context);
}

kvpage_status kvpage_cache_config(const kvpage_cache* cache,
                                  kvpage_config* out) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckOut(out, "config"); !s.ok()) return Fail(s);
    if (absl::Status s = kvpage::c_api::CheckSize(
            out->struct_size, sizeof(kvpage_config), "kvpage_config");
        !s.ok()) {
      return Fail(s);
    }
    kvpage::c_api::CopyOut(kvpage::c_api::FromConfig(cache->cache->config(),
                                                     cache->layer_policies),
                           out);
    return KVPAGE_OK;
  });
}

kvpage_status kvpage_add_sequence(kvpage_cache* cache, uint64_t salt,
                                  kvpage_seq_id* out) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckOut(out, "seq"); !s.ok()) return Fail(s);
    absl::StatusOr<kvpage::SeqId> id =
        cache->cache->AddSequence({.salt = salt});
    if (!id.ok()) return Fail(id.status());
    *out = *id;
    return KVPAGE_OK;
  });
}

kvpage_status kvpage_fork(kvpage_cache* cache, kvpage_seq_id parent,
                          kvpage_seq_id* out) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckOut(out, "seq"); !s.ok()) return Fail(s);
    absl::StatusOr<kvpage::SeqId> id = cache->cache->Fork(parent);
    if (!id.ok()) return Fail(id.status());
    *out = *id;
    return KVPAGE_OK;
  });
}

kvpage_status kvpage_remove_sequence(kvpage_cache* cache, kvpage_seq_id seq) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    return Return(cache->cache->RemoveSequence(seq));
  });
}

kvpage_status kvpage_sequences(const kvpage_cache* cache, kvpage_seq_id* ids,
                               size_t capacity, size_t* count) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckOut(count, "count"); !s.ok()) return Fail(s);
    const std::vector<kvpage::SeqId> all = cache->cache->Sequences();
    if (capacity > 0 && ids == nullptr) {
      return Fail(absl::InvalidArgumentError("ids is NULL with capacity > 0"));
    }
    *count = all.size();
    if (capacity < all.size()) {
      return Fail(absl::ResourceExhaustedError(absl::StrFormat(
          "%d sequences do not fit an array of %d", all.size(), capacity)));
    }
    std::copy(all.begin(), all.end(), ids);
    return KVPAGE_OK;
  });
}

kvpage_status kvpage_update(kvpage_cache* cache, kvpage_seq_id seq,
                            int32_t layer, const kvpage_token_span* k,
                            const kvpage_token_span* v, int64_t seq_len) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    absl::StatusOr<kvpage::TokenSpan> ks = kvpage::c_api::ToSpan(k, "k");
    if (!ks.ok()) return Fail(ks.status());
    absl::StatusOr<kvpage::TokenSpan> vs = kvpage::c_api::ToSpan(v, "v");
    if (!vs.ok()) return Fail(vs.status());
    return Return(cache->cache->Update(seq, layer, *ks, *vs, seq_len));
  });
}

kvpage_status kvpage_truncate(kvpage_cache* cache, kvpage_seq_id seq,
                              int64_t seq_len) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    return Return(cache->cache->Truncate(seq, seq_len));
  });
}

kvpage_status kvpage_length(const kvpage_cache* cache, kvpage_seq_id seq,
                            int32_t layer, int64_t* out) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckOut(out, "length"); !s.ok()) return Fail(s);
    absl::StatusOr<int64_t> n = cache->cache->Length(seq, layer);
    if (!n.ok()) return Fail(n.status());
    *out = *n;
    return KVPAGE_OK;
  });
}

kvpage_status kvpage_compress_old_entries(kvpage_cache* cache,
                                          kvpage_seq_id seq, int32_t layer,
                                          double keep_recent_fraction) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    return Return(
        cache->cache->CompressOldEntries(seq, layer, keep_recent_fraction));
  });
}

uint64_t kvpage_prefix_block_hash(uint64_t parent, uint64_t salt,
                                  const int32_t* ids, size_t count) {
  if (ids == nullptr) count = 0;
  try {
    return kvpage::PrefixBlockHash(parent, salt, {ids, count});
  } catch (...) {  // the bytes of a block past 64 ids are allocated
    return 0;
  }
}

kvpage_status kvpage_append_tokens(kvpage_cache* cache, kvpage_seq_id seq,
                                   const int32_t* ids, size_t count) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (count > 0 && ids == nullptr) {
      return Fail(absl::InvalidArgumentError("ids is NULL with count > 0"));
    }
    return Return(cache->cache->AppendTokens(seq, {ids, count}));
  });
}

kvpage_status kvpage_match_prefix(kvpage_cache* cache, kvpage_seq_id seq,
                                  const int32_t* ids, size_t count,
                                  int64_t* matched) {
  return kvpage_match_prefix_ex(cache, seq, ids, count, nullptr, matched);
}

kvpage_status kvpage_match_prefix_ex(kvpage_cache* cache, kvpage_seq_id seq,
                                     const int32_t* ids, size_t count,
                                     const kvpage_match_options* options,
                                     int64_t* matched) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckOut(matched, "matched"); !s.ok()) return Fail(s);
    if (count > 0 && ids == nullptr) {
      return Fail(absl::InvalidArgumentError("ids is NULL with count > 0"));
    }
    absl::StatusOr<kvpage::MatchOptions> opts = MatchOptionsOf(options);
    if (!opts.ok()) return Fail(opts.status());
    absl::StatusOr<int64_t> n =
        cache->cache->MatchPrefix(seq, {ids, count}, *opts);
    if (!n.ok()) return Fail(n.status());
    *matched = *n;
    return KVPAGE_OK;
  });
}

}  // extern "C"
