// The C API of engine mode and of storage the engine owns
// (kvpage/kvpage_c.h): the same checks as the rest of the C API (live
// handles, non-null outputs, versioned structs) in front of
// kvpage/engine.h and kvpage/storage.h.
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "cache/c_api_internal.h"
#include "kvpage/kv_cache.h"
#include "kvpage/kvpage_c.h"
#include "kvpage/storage.h"

using kvpage::c_api::CheckHandle;
using kvpage::c_api::CheckOut;
using kvpage::c_api::CheckSize;
using kvpage::c_api::Fail;
using kvpage::c_api::Guard;
using kvpage::c_api::MatchOptionsOf;
using kvpage::c_api::Return;

namespace {

// A caller's array of `n` entries: null only when n is 0.
absl::Status CheckArray(const void* p, size_t n, const char* what) {
  if (p == nullptr && n > 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s is NULL with %d entries", what, n));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Span<T> SpanOf(T* p, size_t n) {
  return p == nullptr ? absl::Span<T>() : absl::Span<T>(p, n);
}

// The padded tables of a caller's struct, for `rows` rows.
absl::StatusOr<kvpage::PaddedBlockTables> Padded(const kvpage_padded_tables* in,
                                                 size_t rows) {
  if (absl::Status s = CheckOut(in, "tables"); !s.ok()) return s;
  if (absl::Status s = CheckSize(in->struct_size, sizeof(kvpage_padded_tables),
                                 "kvpage_padded_tables");
      !s.ok()) {
    return s;
  }
  kvpage_padded_tables t{};
  kvpage::c_api::CopyIn(*in, t);
  if (t.max_blocks <= 0 || t.block_table == nullptr || t.seq_lens == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "kvpage_padded_tables: block_table %p, seq_lens %p, max_blocks %d: "
        "both arrays and max_blocks > 0 are needed",
        static_cast<void*>(t.block_table), static_cast<void*>(t.seq_lens),
        t.max_blocks));
  }
  return kvpage::PaddedBlockTables{
      .block_table = absl::MakeSpan(t.block_table,
                                    rows * static_cast<size_t>(t.max_blocks)),
      .max_blocks = t.max_blocks,
      .pad = t.pad,
      .seq_lens = absl::MakeSpan(t.seq_lens, rows),
      .block_offsets = SpanOf(t.block_offsets, rows),
      .window_starts = SpanOf(t.window_starts, rows)};
}

}  // namespace

kvpage_status kvpage_storage_bytes(const kvpage_config* config, int64_t* out) {
  return Guard([&] {
    if (absl::Status s = CheckOut(out, "bytes"); !s.ok()) return Fail(s);
    absl::StatusOr<kvpage::CacheConfig> c = kvpage::c_api::ToConfig(config);
    if (!c.ok()) return Fail(c.status());
    *out = kvpage::StorageBytes(*c);
    return KVPAGE_OK;
  });
}

kvpage_status kvpage_cache_create_in_memory(const kvpage_config* config,
                                            void* memory, int64_t bytes,
                                            kvpage_cache** out) {
  return Guard([&] {
    if (absl::Status s = CheckOut(out, "out"); !s.ok()) return Fail(s);
    absl::StatusOr<kvpage::CacheConfig> c = kvpage::c_api::ToConfig(config);
    if (!c.ok()) return Fail(c.status());
    absl::StatusOr<std::unique_ptr<kvpage::BlockStorage>> storage =
        kvpage::WrapHostMemory(*c, memory, bytes);
    if (!storage.ok()) return Fail(storage.status());
    return kvpage::c_api::Adopt(
        kvpage::KVCache::Create(*c, *std::move(storage)), {}, out);
  });
}

kvpage_status kvpage_cache_create_with_storage(
    const kvpage_config* config, const kvpage_storage_callbacks* callbacks,
    kvpage_cache** out) {
  return Guard([&] {
    if (absl::Status s = CheckOut(out, "out"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckOut(callbacks, "callbacks"); !s.ok()) {
      return Fail(s);
    }
    if (absl::Status s =
            CheckSize(callbacks->struct_size, sizeof(kvpage_storage_callbacks),
                      "kvpage_storage_callbacks");
        !s.ok()) {
      return Fail(s);
    }
    kvpage_storage_callbacks cb{};
    kvpage::c_api::CopyIn(*callbacks, cb);
    absl::StatusOr<kvpage::CacheConfig> c = kvpage::c_api::ToConfig(config);
    if (!c.ok()) return Fail(c.status());
    // The handle calls `release` after the cache is gone; a creation that
    // fails calls nothing.
    absl::StatusOr<std::unique_ptr<kvpage::BlockStorage>> storage =
        kvpage::NewCallbackStorage(*c, {.context = cb.context,
                                        .address = cb.address,
                                        .copy = cb.copy,
                                        .write = cb.write,
                                        .read = cb.read});
    if (!storage.ok()) return Fail(storage.status());
    return kvpage::c_api::Adopt(
        kvpage::KVCache::Create(*c, *std::move(storage)),
        {.fn = cb.release, .context = cb.context}, out);
  });
}

kvpage_status kvpage_layer_base(const kvpage_cache* cache, int32_t layer,
                                void** out) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckOut(out, "base"); !s.ok()) return Fail(s);
    absl::StatusOr<void*> base = cache->cache->LayerBase(layer);
    if (!base.ok()) return Fail(base.status());
    *out = *base;
    return KVPAGE_OK;
  });
}

kvpage_status kvpage_layer_group(const kvpage_cache* cache, int32_t layer,
                                 int32_t* group, int32_t* slot,
                                 int32_t* layers) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    absl::StatusOr<kvpage::LayerGroup> found = cache->cache->GroupOf(layer);
    if (!found.ok()) return Fail(found.status());
    if (group != nullptr) *group = found->group;
    if (slot != nullptr) *slot = found->slot;
    if (layers != nullptr) *layers = found->layers;
    return KVPAGE_OK;
  });
}

kvpage_status kvpage_reserve(kvpage_cache* cache, kvpage_seq_id seq,
                             int32_t layer, int64_t seq_len, int64_t tokens,
                             int64_t* slot_mapping) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (tokens < 0) {
      return Fail(absl::InvalidArgumentError(
          absl::StrFormat("kvpage_reserve: tokens is %d", tokens)));
    }
    if (absl::Status s = CheckArray(slot_mapping, static_cast<size_t>(tokens),
                                    "slot_mapping");
        !s.ok()) {
      return Fail(s);
    }
    return Return(cache->cache->Reserve(
        seq, layer, seq_len, tokens,
        SpanOf(slot_mapping, static_cast<size_t>(tokens))));
  });
}

kvpage_status kvpage_reserve_batch(kvpage_cache* cache, int32_t layer,
                                   const kvpage_reserve_request* requests,
                                   size_t count, int64_t* slot_mapping,
                                   size_t slots,
                                   const kvpage_padded_tables* tables) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckArray(requests, count, "requests"); !s.ok()) {
      return Fail(s);
    }
    if (absl::Status s = CheckArray(slot_mapping, slots, "slot_mapping");
        !s.ok()) {
      return Fail(s);
    }
    // The C request is the C++ one field for field; copied, not cast.
    std::vector<kvpage::ReserveRequest> step(count);
    for (size_t i = 0; i < count; ++i) {
      step[i] = {.seq = requests[i].seq,
                 .seq_len = requests[i].seq_len,
                 .tokens = requests[i].tokens};
    }
    if (tables == nullptr) {
      return Return(
          cache->cache->ReserveBatch(layer, step, SpanOf(slot_mapping, slots)));
    }
    absl::StatusOr<kvpage::PaddedBlockTables> out = Padded(tables, count);
    if (!out.ok()) return Fail(out.status());
    return Return(cache->cache->ReserveBatch(
        layer, step, SpanOf(slot_mapping, slots), &*out));
  });
}

kvpage_status kvpage_export_block_tables(const kvpage_cache* cache,
                                         int32_t layer,
                                         const kvpage_seq_id* seqs, size_t rows,
                                         const kvpage_padded_tables* out) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckArray(seqs, rows, "seqs"); !s.ok()) {
      return Fail(s);
    }
    absl::StatusOr<kvpage::PaddedBlockTables> tables = Padded(out, rows);
    if (!tables.ok()) return Fail(tables.status());
    return Return(
        cache->cache->ExportBlockTables(layer, SpanOf(seqs, rows), *tables));
  });
}

kvpage_status kvpage_export_block_tables_csr(const kvpage_cache* cache,
                                             int32_t layer,
                                             const kvpage_seq_id* seqs,
                                             size_t rows,
                                             const kvpage_csr_tables* out) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckArray(seqs, rows, "seqs"); !s.ok()) {
      return Fail(s);
    }
    if (absl::Status s = CheckOut(out, "tables"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckSize(out->struct_size, sizeof(kvpage_csr_tables),
                                   "kvpage_csr_tables");
        !s.ok()) {
      return Fail(s);
    }
    kvpage_csr_tables t{};
    kvpage::c_api::CopyIn(*out, t);
    if (t.indptr == nullptr || t.last_page_len == nullptr) {
      return Fail(absl::InvalidArgumentError(
          "kvpage_csr_tables: indptr and last_page_len are needed"));
    }
    if (absl::Status s = CheckArray(t.indices, t.indices_capacity, "indices");
        !s.ok()) {
      return Fail(s);
    }
    return Return(cache->cache->ExportBlockTables(
        layer, SpanOf(seqs, rows),
        kvpage::CsrBlockTables{
            .indptr = absl::MakeSpan(t.indptr, rows + 1),
            .indices = SpanOf(t.indices, t.indices_capacity),
            .last_page_len = absl::MakeSpan(t.last_page_len, rows),
            .seq_lens = SpanOf(t.seq_lens, rows),
            .block_offsets = SpanOf(t.block_offsets, rows),
            .window_starts = SpanOf(t.window_starts, rows)}));
  });
}

kvpage_status kvpage_cached_prefix_tokens(const kvpage_cache* cache,
                                          const int32_t* tokens, size_t count,
                                          uint64_t salt, int64_t* out) {
  return kvpage_cached_prefix_tokens_ex(cache, tokens, count, salt, nullptr,
                                        out);
}

kvpage_status kvpage_cached_prefix_tokens_ex(
    const kvpage_cache* cache, const int32_t* tokens, size_t count,
    uint64_t salt, const kvpage_match_options* options, int64_t* out) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckArray(tokens, count, "tokens"); !s.ok()) {
      return Fail(s);
    }
    if (absl::Status s = CheckOut(out, "tokens"); !s.ok()) return Fail(s);
    absl::StatusOr<kvpage::MatchOptions> opts = MatchOptionsOf(options);
    if (!opts.ok()) return Fail(opts.status());
    *out = cache->cache->CachedPrefixTokens(SpanOf(tokens, count), salt, *opts);
    return KVPAGE_OK;
  });
}

kvpage_status kvpage_plan_admission(const kvpage_cache* cache,
                                    const int32_t* prompt, size_t count,
                                    uint64_t salt, int64_t extra_tokens,
                                    kvpage_admission* out) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckArray(prompt, count, "prompt"); !s.ok()) {
      return Fail(s);
    }
    if (absl::Status s = CheckOut(out, "admission"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckSize(out->struct_size, sizeof(kvpage_admission),
                                   "kvpage_admission");
        !s.ok()) {
      return Fail(s);
    }
    absl::StatusOr<kvpage::Admission> a =
        cache->cache->PlanAdmission(SpanOf(prompt, count), salt, extra_tokens);
    if (!a.ok()) return Fail(a.status());
    kvpage::c_api::CopyOut(
        kvpage_admission{.struct_size = sizeof(kvpage_admission),
                         .cached_tokens = a->cached_tokens,
                         .blocks_needed = a->blocks_needed,
                         .blocks_available = a->blocks_available,
                         .fits = a->fits() ? 1 : 0},
        out);
    return KVPAGE_OK;
  });
}

kvpage_status kvpage_blocks_needed(const kvpage_cache* cache, kvpage_seq_id seq,
                                   int64_t seq_len, int64_t tokens,
                                   int64_t* out) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckOut(out, "blocks"); !s.ok()) return Fail(s);
    absl::StatusOr<int64_t> n =
        cache->cache->BlocksNeeded(seq, seq_len, tokens);
    if (!n.ok()) return Fail(n.status());
    *out = *n;
    return KVPAGE_OK;
  });
}
