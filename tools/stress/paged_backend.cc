#include "tools/stress/paged_backend.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kvpage/attention.h"
#include "kvpage/kv_cache.h"
#include "tools/stress/remote.h"
#include "tools/stress/verifier.h"

namespace kvpage::stress {
namespace {

// `status` with the call that returned it named.
absl::Status Annotate(const absl::Status& status, absl::string_view call) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat(call, ": ", status.message()));
}

class PagedBackend final : public Backend {
 public:
  // `tier` (may be null) is attached to `cache` already.
  PagedBackend(const BackendParams& params, std::unique_ptr<KVCache> cache,
               std::unique_ptr<ShardTier> tier)
      : params_(params),
        tier_(std::move(tier)),
        cache_(std::move(cache)),
        verifier_(params.shape) {}

  // The cache lets go of its tier before the tier goes (which writes what
  // is still queued).
  ~PagedBackend() override {
    if (tier_ != nullptr) (void)cache_->AttachTier(nullptr, {});
  }

  absl::StatusOr<uint64_t> Add() override { return cache_->AddSequence(); }

  absl::StatusOr<int64_t> MatchPrefix(uint64_t seq,
                                      absl::Span<const int32_t> ids) override {
    if (!params_.prefix_caching) return 0;
    // Blocks loaded from the tier are the only ones MatchPrefix allocates
    // (a table's block each): the rest it attaches from the cache.
    const int64_t allocated =
        tier_ != nullptr ? cache_->Stats().blocks_allocated : 0;
    absl::StatusOr<int64_t> matched = cache_->MatchPrefix(seq, ids);
    if (!matched.ok()) return Annotate(matched.status(), "MatchPrefix");
    if (tier_ != nullptr) {
      const int64_t tables =
          params_.paged.group_layers ? 1 : params_.paged.num_layers;
      tokens_from_tier_ += (cache_->Stats().blocks_allocated - allocated) /
                           tables * params_.paged.block_tokens;
    }
    absl::Status s =
        cache_->AppendTokens(seq, ids.subspan(static_cast<size_t>(*matched)));
    if (!s.ok()) return Annotate(s, "AppendTokens");
    return *matched;
  }

  absl::Status Write(uint64_t seq, int layer, const uint16_t* k,
                     const uint16_t* v, int64_t n, int64_t seq_len) override {
    const DType dtype = params_.shape.dtype;
    const TokenSpan keys{.data = k, .dtype = dtype, .tokens = n};
    const TokenSpan values{.data = v, .dtype = dtype, .tokens = n};
    return cache_->Update(seq, layer, keys, values, seq_len);
  }

  absl::Status Truncate(uint64_t seq, int64_t seq_len) override {
    return cache_->Truncate(seq, seq_len);
  }

  absl::StatusOr<uint64_t> Fork(uint64_t parent) override {
    return cache_->Fork(parent);
  }

  absl::Status Compress(uint64_t seq, int layer) override {
    return cache_->CompressOldEntries(seq, layer, 0.0);
  }

  absl::Status Release(uint64_t seq) override {
    return cache_->RemoveSequence(seq);
  }

  absl::Status Verify(const SeqLabel& label, const Lineage& lineage,
                      int64_t length, int only_layer) override {
    for (int layer = 0; layer < params_.shape.layers; ++layer) {
      if (only_layer >= 0 && layer != only_layer) continue;
      if (absl::Status s = VerifyLayer(label, layer, lineage, length);
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  absl::Status Check() override {
    absl::Status s = cache_->Validate();
    if (s.ok()) ++verifier_.counters.validations;
    return Annotate(s, "KVCache::Validate");
  }

  absl::Status WriteSnapshot(const std::string& path) const override {
    return cache_->WriteSnapshot(path);
  }

  absl::Status Finish() override {
    // What the tier still has queued is written before its figures are read.
    if (tier_ != nullptr) tier_->Flush();
    if (absl::Status s = Check(); !s.ok()) return s;
    const CacheStats stats = cache_->Stats();
    if (stats.blocks_used != 0 || stats.sequences != 0) {
      return absl::DataLossError(absl::StrFormat(
          "after every sequence was released, %d blocks are still in use by "
          "%d sequences",
          stats.blocks_used, stats.sequences));
    }
    return absl::OkStatus();
  }

  MemorySample Sample() const override {
    const CacheStats s = cache_->Stats();
    return {.bytes_held = s.blocks_used * s.block_bytes +
                          s.quant_cells_used * s.quant_cell_bytes,
            .tokens_stored = s.tokens_stored,
            .token_slots = s.slots_allocated,
            .bytes_saved = s.bytes_saved};
  }

  // The verifier's counters and the cache's own, under the report's names.
  BackendCounters Counters() const override {
    const CacheStats s = cache_->Stats();
    BackendCounters c = verifier_.counters;
    c.bytes_written = s.bytes_written;
    c.bytes_copied = s.bytes_copied;
    c.evictions = s.evictions;
    c.prefix_hits = s.hits;
    c.prefix_misses = s.misses;
    c.prefix_tokens_queried = s.prefix_tokens_queried;
    c.prefix_tokens_matched = s.prefix_tokens_matched;
    c.compressions = s.compressions_applied;
    c.compressions_skipped = s.compressions_skipped;
    c.decompressions = s.decompressions;
    c.max_quant_error = s.max_quant_error;
    if (tier_ != nullptr) {
      c.remote_tier = tier_->Counters();
      c.remote_tier.tokens_from_tier = tokens_from_tier_;
    }
    return c;
  }

  // Blocks for every layer of the longest the request's sequences get
  // (prompt, output and draft tokens; two more per layer for a partly
  // filled sink block and a window's partly evicted block), the forks'
  // own blocks besides (one more each for the copy of the shared last
  // block).
  int64_t Cost(const Request& request) const override {
    const CacheConfig& c = params_.paged;
    auto blocks = [&](int64_t tokens) {
      return (std::min(tokens, c.max_seq_len) + c.block_tokens - 1) /
                 c.block_tokens +
             2;
    };
    const int64_t per_layer =
        blocks(request.prompt + request.output + params_.spec_tokens) +
        (params_.samples - 1) *
            (blocks(request.output + params_.spec_tokens) + 1);
    return per_layer * c.num_layers * BlockBytes(c);
  }

  int64_t Budget() const override {
    return params_.paged.num_blocks * BlockBytes(params_.paged);
  }

 private:
  // One layer through View(): its positions as the policy defines them,
  // then each block's tokens.
  absl::Status VerifyLayer(const SeqLabel& label, int layer,
                           const Lineage& lineage, int64_t length) {
    absl::StatusOr<LayerView> view = cache_->View(label.id, layer);
    if (!view.ok()) return Annotate(view.status(), "View");
    if (view->length != length) {
      return LengthMismatch(label, layer, view->length, length);
    }
    positions_.clear();
    for (const BlockView& b : view->blocks) {
      for (int t = 0; t < b.tokens; ++t) {
        positions_.push_back(b.first_position + t);
      }
    }
    if (absl::Status s = verifier_.Positions(label, layer, length, positions_);
        !s.ok()) {
      return s;
    }
    for (const BlockView& block : view->blocks) {
      absl::Status s =
          block.format == BlockFormat::kHot
              ? VerifyHotBlock(label, layer, *view, block, lineage)
              : VerifyCompressedBlock(label, layer, *view, block, lineage);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

  absl::Status VerifyHotBlock(const SeqLabel& label, int layer,
                              const LayerView& view, const BlockView& block,
                              const Lineage& lineage) {
    const auto* k = static_cast<const uint16_t*>(block.k);
    const auto* v = static_cast<const uint16_t*>(block.v);
    for (int t = 0; t < block.tokens; ++t) {
      const int64_t position = block.first_position + t;
      const int64_t offset = (block.begin_slot + t) * view.token_stride;
      if (absl::Status s =
              verifier_.Row(label, layer, position, lineage.StreamAt(position),
                            k + offset, v + offset);
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  absl::Status VerifyCompressedBlock(const SeqLabel& label, int layer,
                                     const LayerView& view,
                                     const BlockView& block,
                                     const Lineage& lineage) {
    const auto elems =
        static_cast<size_t>(block.tokens * params_.shape.token_elems);
    dequantized_k_.resize(elems);
    dequantized_v_.resize(elems);
    if (absl::Status s = Dequantize(view, block, absl::MakeSpan(dequantized_k_),
                                    absl::MakeSpan(dequantized_v_));
        !s.ok()) {
      return Annotate(s, "Dequantize");
    }
    return verifier_.Quantized(label, layer, block, lineage,
                               dequantized_k_.data(), dequantized_v_.data());
  }

  BackendParams params_;
  std::unique_ptr<ShardTier> tier_;  // --remote; else null
  std::unique_ptr<KVCache> cache_;
  int64_t tokens_from_tier_ = 0;  // MatchPrefix's, from the tier's blocks
  Verifier verifier_;
  std::vector<int64_t> positions_;                    // Verify's scratch
  std::vector<float> dequantized_k_, dequantized_v_;  // Verify's scratch
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> MakePagedBackend(
    const BackendParams& params) {
  absl::StatusOr<std::unique_ptr<KVCache>> cache =
      KVCache::Create(params.paged);
  if (!cache.ok()) return Annotate(cache.status(), "KVCache::Create");
  std::unique_ptr<ShardTier> tier;
  if (!params.remote.url.empty()) {
    absl::StatusOr<std::unique_ptr<ShardTier>> connected =
        ShardTier::Connect(params.remote);
    if (!connected.ok()) {
      return Annotate(
          connected.status(),
          absl::StrCat("shard ", params.remote.shard, ": the remote tier"));
    }
    tier = *std::move(connected);
    if (absl::Status s = (*cache)->AttachTier(
            tier.get(), {.write_through = params.remote_write_through});
        !s.ok()) {
      return Annotate(s, "AttachTier");
    }
  }
  return std::unique_ptr<Backend>(std::make_unique<PagedBackend>(
      params, std::move(*cache), std::move(tier)));
}

}  // namespace kvpage::stress
