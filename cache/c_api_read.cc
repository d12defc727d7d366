// The C API's reads (kvpage/kvpage_c.h): views, gathers, dequantizing and
// attending over a view, statistics, validation and snapshots.
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "cache/c_api_internal.h"
#include "kvpage/attention.h"
#include "kvpage/kv_cache.h"
#include "kvpage/kvpage_c.h"
#include "kvpage/snapshot.h"

namespace kvpage::c_api {
namespace {

kvpage_block_view FromBlock(const BlockView& b) {
  return {.k = b.k,
          .v = b.v,
          .block_id = b.block_id,
          .begin_slot = b.begin_slot,
          .tokens = b.tokens,
          .first_position = b.first_position,
          .format = static_cast<kvpage_block_format>(b.format),
          .quant_k_codes = b.quant.k_codes,
          .quant_k_scales = b.quant.k_scales,
          .quant_k_mins = b.quant.k_mins,
          .quant_v_codes = b.quant.v_codes,
          .quant_v_scales = b.quant.v_scales,
          .quant_v_mins = b.quant.v_mins,
          .quant_error = b.quant_error};
}

absl::StatusOr<BlockView> ToBlock(const kvpage_block_view& b) {
  if (absl::Status s = CheckEnum(AsInt(b.format), 3, "block.format"); !s.ok()) {
    return s;
  }
  return BlockView{.k = b.k,
                   .v = b.v,
                   .block_id = b.block_id,
                   .begin_slot = b.begin_slot,
                   .tokens = b.tokens,
                   .first_position = b.first_position,
                   .format = static_cast<BlockFormat>(b.format),
                   .quant = {.k_codes = b.quant_k_codes,
                             .k_scales = b.quant_k_scales,
                             .k_mins = b.quant_k_mins,
                             .v_codes = b.quant_v_codes,
                             .v_scales = b.quant_v_scales,
                             .v_mins = b.quant_v_mins},
                   .quant_error = b.quant_error};
}

// A LayerView from what kvpage_view handed out, with `blocks` of them.
// A caller's view info, read only as far as its struct_size goes.
absl::StatusOr<kvpage_view_info> InfoOf(const kvpage_view_info* in) {
  if (in == nullptr) return absl::InvalidArgumentError("info is NULL");
  if (absl::Status s = CheckSize(in->struct_size, sizeof(kvpage_view_info),
                                 "kvpage_view_info");
      !s.ok()) {
    return s;
  }
  kvpage_view_info info{};
  CopyIn(*in, info);
  return info;
}

// A LayerView from what kvpage_view handed out (`info` as InfoOf read it),
// with `n` of its blocks.
absl::StatusOr<LayerView> ToView(const kvpage_view_info* info,
                                 const kvpage_block_view* blocks, size_t n) {
  if (absl::Status s = CheckEnum(AsInt(info->dtype), 3, "info.dtype");
      !s.ok()) {
    return s;
  }
  if (info->num_kv_heads <= 0 || info->head_dim <= 0 ||
      info->block_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "info has num_kv_heads %d, head_dim %d, block_tokens %d: not a view "
        "kvpage_view filled",
        info->num_kv_heads, info->head_dim, info->block_tokens));
  }
  if (n > 0 && blocks == nullptr) {
    return absl::InvalidArgumentError("blocks is NULL");
  }
  LayerView v{.dtype = static_cast<DType>(info->dtype),
              .num_kv_heads = info->num_kv_heads,
              .head_dim = info->head_dim,
              .block_tokens = info->block_tokens,
              .token_stride = info->token_stride,
              .quant_group_size = info->quant_group_size,
              .host_accessible = info->host_accessible != 0,
              .length = info->length};
  for (size_t i = 0; i < n; ++i) {
    absl::StatusOr<BlockView> b = ToBlock(blocks[i]);
    if (!b.ok()) return b.status();
    v.blocks.push_back(*b);
  }
  return v;
}

}  // namespace
}  // namespace kvpage::c_api

using kvpage::c_api::CheckHandle;
using kvpage::c_api::CheckOut;
using kvpage::c_api::CheckSize;
using kvpage::c_api::Fail;
using kvpage::c_api::Guard;
using kvpage::c_api::Return;

extern "C" {

kvpage_status kvpage_view(const kvpage_cache* cache, kvpage_seq_id seq,
                          int32_t layer, kvpage_view_info* info,
                          kvpage_block_view* blocks, size_t capacity) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckOut(info, "info"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckSize(info->struct_size, sizeof(kvpage_view_info),
                                   "kvpage_view_info");
        !s.ok()) {
      return Fail(s);
    }
    absl::StatusOr<kvpage::LayerView> view = cache->cache->View(seq, layer);
    if (!view.ok()) return Fail(view.status());
    const kvpage_view_info full{
        .struct_size = sizeof(kvpage_view_info),
        .dtype = static_cast<kvpage_dtype>(view->dtype),
        .num_kv_heads = view->num_kv_heads,
        .head_dim = view->head_dim,
        .block_tokens = view->block_tokens,
        .token_stride = view->token_stride,
        .quant_group_size = view->quant_group_size,
        .host_accessible = view->host_accessible,
        .length = view->length,
        .num_blocks = static_cast<int64_t>(view->blocks.size())};
    if (capacity < view->blocks.size()) {
      kvpage::c_api::CopyOut(full, info);
      return Fail(absl::ResourceExhaustedError(
          absl::StrFormat("the view has %d blocks; the array holds %d",
                          view->blocks.size(), capacity)));
    }
    if (!view->blocks.empty() && blocks == nullptr) {
      return Fail(absl::InvalidArgumentError("blocks is NULL"));
    }
    kvpage::c_api::CopyOut(full, info);
    for (size_t i = 0; i < view->blocks.size(); ++i) {
      blocks[i] = kvpage::c_api::FromBlock(view->blocks[i]);
    }
    return KVPAGE_OK;
  });
}

kvpage_status kvpage_gather(const kvpage_cache* cache, kvpage_seq_id seq,
                            int32_t layer, float* k, float* v,
                            int64_t* positions, size_t capacity_tokens,
                            size_t* tokens) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckOut(tokens, "tokens"); !s.ok()) return Fail(s);
    if (capacity_tokens > 0 && (k == nullptr || v == nullptr)) {
      return Fail(
          absl::InvalidArgumentError("k or v is NULL with capacity > 0"));
    }
    absl::StatusOr<kvpage::GatheredLayer> g = cache->cache->Gather(seq, layer);
    if (!g.ok()) return Fail(g.status());
    *tokens = g->positions.size();
    if (capacity_tokens < g->positions.size()) {
      return Fail(absl::ResourceExhaustedError(absl::StrFormat(
          "the layer holds %d visible tokens; the buffers hold %d",
          g->positions.size(), capacity_tokens)));
    }
    std::copy(g->k.begin(), g->k.end(), k);
    std::copy(g->v.begin(), g->v.end(), v);
    if (positions != nullptr) {
      std::copy(g->positions.begin(), g->positions.end(), positions);
    }
    return KVPAGE_OK;
  });
}

kvpage_status kvpage_dequantize(const kvpage_view_info* info,
                                const kvpage_block_view* block, float* k_out,
                                size_t k_capacity, float* v_out,
                                size_t v_capacity) {
  return Guard([&] {
    if (block == nullptr) {
      return Fail(absl::InvalidArgumentError("block is NULL"));
    }
    absl::StatusOr<kvpage_view_info> in = kvpage::c_api::InfoOf(info);
    if (!in.ok()) return Fail(in.status());
    absl::StatusOr<kvpage::LayerView> view =
        kvpage::c_api::ToView(&*in, block, 1);
    if (!view.ok()) return Fail(view.status());
    if ((k_capacity > 0 && k_out == nullptr) ||
        (v_capacity > 0 && v_out == nullptr)) {
      return Fail(absl::InvalidArgumentError("k_out or v_out is NULL"));
    }
    return Return(kvpage::Dequantize(*view, view->blocks[0],
                                     {k_out, k_capacity}, {v_out, v_capacity}));
  });
}

kvpage_status kvpage_attend(const kvpage_view_info* info,
                            const kvpage_block_view* blocks, const float* query,
                            size_t query_floats, float* out,
                            size_t out_floats) {
  return Guard([&] {
    if (info == nullptr)
      return Fail(absl::InvalidArgumentError("info is NULL"));
    if (info->num_blocks < 0 || info->num_blocks > (int64_t{1} << 31)) {
      return Fail(absl::InvalidArgumentError(
          absl::StrFormat("info.num_blocks is %d", info->num_blocks)));
    }
    absl::StatusOr<kvpage::LayerView> view = kvpage::c_api::ToView(
        info, blocks, static_cast<size_t>(info->num_blocks));
    if (!view.ok()) return Fail(view.status());
    if ((query_floats > 0 && query == nullptr) ||
        (out_floats > 0 && out == nullptr)) {
      return Fail(absl::InvalidArgumentError("query or out is NULL"));
    }
    return Return(
        kvpage::Attend(*view, {query, query_floats}, {out, out_floats}));
  });
}

kvpage_status kvpage_stats(const kvpage_cache* cache, kvpage_cache_stats* out) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckOut(out, "stats"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckSize(out->struct_size, sizeof(kvpage_cache_stats),
                                   "kvpage_cache_stats");
        !s.ok()) {
      return Fail(s);
    }
    kvpage::c_api::CopyOut(kvpage::c_api::FromStats(cache->cache->Stats()),
                           out);
    return KVPAGE_OK;
  });
}

kvpage_status kvpage_seq_stats(const kvpage_cache* cache, kvpage_seq_id seq,
                               kvpage_sequence_stats* out) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckOut(out, "stats"); !s.ok()) return Fail(s);
    if (absl::Status s =
            CheckSize(out->struct_size, sizeof(kvpage_sequence_stats),
                      "kvpage_sequence_stats");
        !s.ok()) {
      return Fail(s);
    }
    absl::StatusOr<kvpage::SequenceStats> st = cache->cache->Stats(seq);
    if (!st.ok()) return Fail(st.status());
    const kvpage_sequence_stats full{
        .struct_size = sizeof(kvpage_sequence_stats),
        .current_length = st->current_length,
        .max_length = st->max_length,
        .tokens_stored = st->tokens_stored,
        .blocks = st->blocks,
        .utilization = st->utilization,
        .memory_usage_bytes = st->memory_usage_bytes,
        .evictions = st->evictions};
    kvpage::c_api::CopyOut(full, out);
    return KVPAGE_OK;
  });
}

kvpage_status kvpage_validate(const kvpage_cache* cache) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    return Return(cache->cache->Validate());
  });
}

kvpage_status kvpage_write_snapshot(const kvpage_cache* cache, const char* path,
                                    int32_t include_token_data) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(cache, "cache"); !s.ok()) return Fail(s);
    if (path == nullptr)
      return Fail(absl::InvalidArgumentError("path is NULL"));
    if (absl::Status s = kvpage::c_api::CheckEnum(include_token_data, 2,
                                                  "include_token_data");
        !s.ok()) {
      return Fail(s);
    }
    return Return(cache->cache->WriteSnapshot(
        path, {.include_token_data = include_token_data != 0}));
  });
}

kvpage_status kvpage_snapshot_read(const char* path, kvpage_snapshot** out) {
  return Guard([&] {
    if (path == nullptr)
      return Fail(absl::InvalidArgumentError("path is NULL"));
    if (absl::Status s = CheckOut(out, "snapshot"); !s.ok()) return Fail(s);
    absl::StatusOr<kvpage::Snapshot> snap = kvpage::ReadSnapshot(path);
    if (!snap.ok()) return Fail(snap.status());
    auto handle = std::make_unique<kvpage_snapshot>();
    handle->snapshot = std::move(*snap);
    kvpage::c_api::Remember(handle.get(), kvpage::c_api::HandleKind::kSnapshot);
    *out = handle.release();
    return KVPAGE_OK;
  });
}

kvpage_status kvpage_snapshot_verify(const kvpage_snapshot* snapshot,
                                     size_t* violations) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(snapshot, "snapshot"); !s.ok()) {
      return Fail(s);
    }
    if (absl::Status s = CheckOut(violations, "violations"); !s.ok()) {
      return Fail(s);
    }
    const std::vector<kvpage::SnapshotViolation> broken =
        kvpage::VerifySnapshot(snapshot->snapshot);
    *violations = broken.size();
    if (broken.empty()) return KVPAGE_OK;
    return Fail(absl::DataLossError(
        absl::StrFormat("%d broken invariants; the first: %s: %s",
                        broken.size(), broken[0].check, broken[0].message)));
  });
}

kvpage_status kvpage_snapshot_stats(const kvpage_snapshot* snapshot,
                                    kvpage_cache_stats* out) {
  return Guard([&] {
    if (absl::Status s = CheckHandle(snapshot, "snapshot"); !s.ok()) {
      return Fail(s);
    }
    if (absl::Status s = CheckOut(out, "stats"); !s.ok()) return Fail(s);
    if (absl::Status s = CheckSize(out->struct_size, sizeof(kvpage_cache_stats),
                                   "kvpage_cache_stats");
        !s.ok()) {
      return Fail(s);
    }
    kvpage::c_api::CopyOut(kvpage::c_api::FromStats(snapshot->snapshot.stats),
                           out);
    return KVPAGE_OK;
  });
}

void kvpage_snapshot_destroy(kvpage_snapshot* snapshot) {
  if (snapshot == nullptr) return;
  if (!kvpage::c_api::Forget(snapshot, kvpage::c_api::HandleKind::kSnapshot)) {
    return;  // not ours, or destroyed
  }
  delete snapshot;
}

}  // extern "C"
