#include "tools/generate/stores.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "kvpage/attention.h"

namespace kvpage::generate {

absl::StatusOr<std::unique_ptr<PagedStore>> PagedStore::Create(
    const CacheConfig& config) {
  absl::StatusOr<std::unique_ptr<KVCache>> cache = KVCache::Create(config);
  if (!cache.ok()) return cache.status();
  return std::unique_ptr<PagedStore>(new PagedStore(std::move(*cache)));
}

PagedStore::PagedStore(std::unique_ptr<KVCache> cache)
    : cache_(std::move(cache)) {
  const CacheConfig& c = cache_->config();
  const size_t block =
      static_cast<size_t>(c.block_tokens) * c.num_kv_heads * c.head_dim;
  scratch_k_.resize(block);
  scratch_v_.resize(block);
}

absl::StatusOr<SeqHandle> PagedStore::Add() { return cache_->AddSequence(); }

absl::StatusOr<SeqHandle> PagedStore::Fork(SeqHandle parent) {
  return cache_->Fork(parent);
}

absl::Status PagedStore::Remove(SeqHandle seq) {
  return cache_->RemoveSequence(seq);
}

absl::Status PagedStore::Truncate(SeqHandle seq, int64_t length) {
  return cache_->Truncate(seq, length);
}

absl::Status PagedStore::Write(SeqHandle seq, int layer, const float* k,
                               const float* v, int64_t n, int64_t length) {
  return cache_->Update(seq, layer,
                        {.data = k, .dtype = DType::kF32, .tokens = n},
                        {.data = v, .dtype = DType::kF32, .tokens = n}, length);
}

absl::Status PagedStore::Open(SeqHandle seq, int layer,
                              std::vector<KvRun>& runs) {
  absl::StatusOr<LayerView> view = cache_->View(seq, layer);
  if (!view.ok()) return view.status();
  view_ = std::move(*view);
  runs.clear();
  for (const BlockView& b : view_.blocks) {
    runs.push_back({.first_position = b.first_position, .tokens = b.tokens});
  }
  return absl::OkStatus();
}

absl::StatusOr<KvRunData> PagedStore::Fetch(size_t index) {
  if (index >= view_.blocks.size()) {
    return absl::OutOfRangeError(absl::StrFormat(
        "run %d of a view of %d blocks", index, view_.blocks.size()));
  }
  const BlockView& b = view_.blocks[index];
  if (b.format == BlockFormat::kHot && view_.dtype == DType::kF32) {
    const int64_t first = b.begin_slot * view_.token_stride;
    return KvRunData{.k = static_cast<const float*>(b.k) + first,
                     .v = static_cast<const float*>(b.v) + first,
                     .stride = view_.token_stride};
  }
  if (absl::Status s = Dequantize(view_, b, absl::MakeSpan(scratch_k_),
                                  absl::MakeSpan(scratch_v_));
      !s.ok()) {
    return s;
  }
  return KvRunData{.k = scratch_k_.data(),
                   .v = scratch_v_.data(),
                   .stride = int64_t{view_.num_kv_heads} * view_.head_dim};
}

absl::Status PagedStore::AppendTokens(SeqHandle seq,
                                      absl::Span<const int32_t> tokens) {
  return cache_->AppendTokens(seq, tokens);
}

absl::StatusOr<int64_t> PagedStore::MatchPrefix(
    SeqHandle seq, absl::Span<const int32_t> tokens) {
  return cache_->MatchPrefix(seq, tokens);
}

absl::Status PagedStore::CompressCold(SeqHandle seq) {
  for (int layer = 0; layer < cache_->config().num_layers; ++layer) {
    if (absl::Status s = cache_->CompressOldEntries(seq, layer, 0.0); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

ContiguousStore::ContiguousStore(int num_layers, int kv_dim)
    : num_layers_(num_layers), kv_dim_(kv_dim) {}

absl::StatusOr<ContiguousStore::Sequence*> ContiguousStore::Find(
    SeqHandle seq) {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrFormat("no sequence %d", seq));
  }
  return it->second.get();
}

absl::StatusOr<SeqHandle> ContiguousStore::Add() {
  sequences_[next_] = std::make_unique<Sequence>(num_layers_);
  return next_++;
}

absl::StatusOr<SeqHandle> ContiguousStore::Fork(SeqHandle parent) {
  absl::StatusOr<Sequence*> p = Find(parent);
  if (!p.ok()) return p.status();
  sequences_[next_] = std::make_unique<Sequence>(**p);
  return next_++;
}

absl::Status ContiguousStore::Remove(SeqHandle seq) {
  if (sequences_.erase(seq) == 0) {
    return absl::NotFoundError(absl::StrFormat("no sequence %d", seq));
  }
  return absl::OkStatus();
}

absl::Status ContiguousStore::Truncate(SeqHandle seq, int64_t length) {
  absl::StatusOr<Sequence*> s = Find(seq);
  if (!s.ok()) return s.status();
  const size_t keep = static_cast<size_t>(length * kv_dim_);
  for (Layer& l : **s) {
    if (l.k.size() > keep) {
      l.k.resize(keep);
      l.v.resize(keep);
    }
  }
  return absl::OkStatus();
}

absl::Status ContiguousStore::Write(SeqHandle seq, int layer, const float* k,
                                    const float* v, int64_t n, int64_t length) {
  absl::StatusOr<Sequence*> s = Find(seq);
  if (!s.ok()) return s.status();
  Layer& l = (**s)[static_cast<size_t>(layer)];
  const int64_t start = length - n;
  if (n < 0 || start < 0 ||
      start * kv_dim_ > static_cast<int64_t>(l.k.size())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "write of %d tokens ending at %d leaves a gap", n, length));
  }
  const size_t at = static_cast<size_t>(start * kv_dim_);
  l.k.resize(static_cast<size_t>(length * kv_dim_));
  l.v.resize(l.k.size());
  std::copy(k, k + n * kv_dim_, l.k.begin() + static_cast<int64_t>(at));
  std::copy(v, v + n * kv_dim_, l.v.begin() + static_cast<int64_t>(at));
  return absl::OkStatus();
}

absl::Status ContiguousStore::Open(SeqHandle seq, int layer,
                                   std::vector<KvRun>& runs) {
  absl::StatusOr<Sequence*> s = Find(seq);
  if (!s.ok()) return s.status();
  open_ = &(**s)[static_cast<size_t>(layer)];
  runs.assign(1, {.first_position = 0,
                  .tokens = static_cast<int64_t>(open_->k.size()) / kv_dim_});
  return absl::OkStatus();
}

absl::StatusOr<KvRunData> ContiguousStore::Fetch(size_t index) {
  if (open_ == nullptr || index != 0) {
    return absl::OutOfRangeError(absl::StrFormat("run %d", index));
  }
  return KvRunData{
      .k = open_->k.data(), .v = open_->v.data(), .stride = kv_dim_};
}

int64_t ContiguousStore::bytes() const {
  int64_t total = 0;
  for (const auto& [id, seq] : sequences_) {
    for (const Layer& l : *seq) {
      total += static_cast<int64_t>(l.k.capacity() + l.v.capacity()) * 4;
    }
  }
  return total;
}

}  // namespace kvpage::generate
