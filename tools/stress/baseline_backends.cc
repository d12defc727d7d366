#include "tools/stress/baseline_backends.h"

#include <type_traits>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"
#include "baselines/contiguous_buffer.h"
#include "baselines/naive_cache.h"
#include "tools/stress/verifier.h"

namespace kvpage::stress {
namespace {

using baselines::ContiguousBuffer;
using baselines::NaiveCache;

constexpr int64_t kElementBytes = sizeof(uint16_t);

// What differs between the two baselines: how a sequence's store is made,
// what it holds, what admission reserves for it.
template <typename Store>
struct StoreTraits;

template <>
struct StoreTraits<ContiguousBuffer> {
  static constexpr char kName[] = "contiguous";
  // Huge pages when the paged pool asks for them too: the same page faults
  // for both.
  static absl::StatusOr<ContiguousBuffer> Make(const BackendParams& params) {
    return ContiguousBuffer::Create({.num_layers = params.shape.layers,
                                     .token_elems = params.shape.token_elems,
                                     .capacity = params.contiguous_tokens,
                                     .huge_pages = params.paged.huge_pages});
  }
  // The reservation, whatever is written.
  static int64_t HeldBytes(const ContiguousBuffer& buffer) {
    return buffer.HeldBytes();
  }
  // A buffer per sample.
  static int64_t Cost(const BackendParams& params) {
    return params.samples * 2 * params.shape.layers * params.contiguous_tokens *
           params.shape.token_elems * kElementBytes;
  }
};

template <>
struct StoreTraits<NaiveCache> {
  static constexpr char kName[] = "naive";
  static absl::StatusOr<NaiveCache> Make(const BackendParams& params) {
    return NaiveCache(params.shape.layers, params.shape.token_elems);
  }
  // Its tensors and their spare storage.
  static int64_t HeldBytes(const NaiveCache& cache) {
    return cache.HeldElements() * kElementBytes;
  }
  static int64_t Cost(const BackendParams&) { return 0; }
};

// A baseline holds one Store per sequence (ContiguousBuffer or NaiveCache,
// which share Update, Truncate, Length, Keys and Values) and keeps the
// stores of released sequences for the next ones, as an engine reuses its
// batch slots and a caching allocator hands memory back (naive_cache.h: the
// naive cache is timed at its cheapest, copies and not page faults).
template <typename Store>
class BaselineBackend final : public Backend {
  using Traits = StoreTraits<Store>;

 public:
  explicit BaselineBackend(const BackendParams& params)
      : params_(params), verifier_(params.shape) {}

  absl::StatusOr<uint64_t> Add() override {
    absl::StatusOr<Store> store = TakeStore();
    if (!store.ok()) return store.status();
    const uint64_t id = next_id_++;
    seqs_.emplace(id, *std::move(store));
    return id;
  }

  absl::StatusOr<int64_t> MatchPrefix(uint64_t,
                                      absl::Span<const int32_t>) override {
    return 0;  // no prefix caching: the prompt is computed again
  }

  // The naive cache rebuilds the history before the n tokens: that is
  // copied too.
  absl::Status Write(uint64_t id, int layer, const uint16_t* k,
                     const uint16_t* v, int64_t n, int64_t seq_len) override {
    absl::StatusOr<Store*> store = Find(id);
    if (!store.ok()) return store.status();
    const int64_t elems = params_.shape.token_elems;
    const auto span = static_cast<size_t>(n * elems);
    absl::Status s = (*store)->Update(layer, absl::MakeConstSpan(k, span),
                                      absl::MakeConstSpan(v, span), seq_len);
    if (!s.ok()) return s;
    bytes_written_ += 2 * n * elems * kElementBytes;
    if constexpr (std::is_same_v<Store, NaiveCache>) {
      bytes_copied_ += 2 * (seq_len - n) * elems * kElementBytes;
    }
    return absl::OkStatus();
  }

  absl::Status Truncate(uint64_t id, int64_t seq_len) override {
    absl::StatusOr<Store*> store = Find(id);
    if (!store.ok()) return store.status();
    (*store)->Truncate(seq_len);
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Fork(uint64_t parent_id) override {
    absl::StatusOr<Store*> parent = Find(parent_id);
    if (!parent.ok()) return parent.status();
    absl::StatusOr<Store> child = CopyOf(**parent);
    if (!child.ok()) return child.status();
    for (int layer = 0; layer < params_.shape.layers; ++layer) {
      bytes_copied_ +=
          2 * child->Length(layer) * params_.shape.token_elems * kElementBytes;
    }
    const uint64_t id = next_id_++;
    seqs_.emplace(id, *std::move(child));
    return id;
  }

  absl::Status Compress(uint64_t, int) override { return absl::OkStatus(); }

  absl::Status Release(uint64_t id) override {
    auto it = seqs_.find(id);
    if (it == seqs_.end()) return NoSequence(id);
    it->second.Truncate(0);
    spare_.push_back(std::move(it->second));
    seqs_.erase(it);
    return absl::OkStatus();
  }

  absl::Status Verify(const SeqLabel& label, const Lineage& lineage,
                      int64_t length, int only_layer) override {
    absl::StatusOr<Store*> store = Find(label.id);
    if (!store.ok()) return store.status();
    for (int layer = 0; layer < params_.shape.layers; ++layer) {
      if (only_layer >= 0 && layer != only_layer) continue;
      const int64_t got = (*store)->Length(layer);
      if (got != length) return LengthMismatch(label, layer, got, length);
      if (absl::Status s = verifier_.Rows(label, layer, lineage, length,
                                          (*store)->Keys(layer).data(),
                                          (*store)->Values(layer).data());
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  absl::Status Check() override { return absl::OkStatus(); }

  absl::Status Finish() override {
    if (seqs_.empty()) return absl::OkStatus();
    return absl::DataLossError(absl::StrFormat(
        "%s: %d sequences still held at the end", Traits::kName, seqs_.size()));
  }

  // Token slots: what the held bytes would hold.
  MemorySample Sample() const override {
    MemorySample m;
    for (const auto& [id, store] : seqs_) {
      m.bytes_held += Traits::HeldBytes(store);
      for (int layer = 0; layer < params_.shape.layers; ++layer) {
        m.tokens_stored += store.Length(layer);
      }
    }
    m.token_slots =
        m.bytes_held / (2 * params_.shape.token_elems * kElementBytes);
    return m;
  }

  BackendCounters Counters() const override {
    BackendCounters c = verifier_.counters;
    c.bytes_written = bytes_written_;
    c.bytes_copied = bytes_copied_;
    return c;
  }

  int64_t Cost(const Request&) const override { return Traits::Cost(params_); }
  int64_t Budget() const override { return params_.budget_bytes; }

 private:
  // A released sequence's store, or a new one.
  absl::StatusOr<Store> TakeStore() {
    if (spare_.empty()) return Traits::Make(params_);
    Store store = std::move(spare_.back());
    spare_.pop_back();
    return store;
  }

  // A fork's store: the naive cache is copied (its tensors at their size);
  // a contiguous fork takes a buffer and copies the parent's tokens into it.
  absl::StatusOr<Store> CopyOf(const Store& parent) {
    if constexpr (std::is_copy_constructible_v<Store>) {
      return parent;
    } else {
      absl::StatusOr<Store> child = TakeStore();
      if (child.ok()) child->CopyFrom(parent);
      return child;
    }
  }

  absl::StatusOr<Store*> Find(uint64_t id) {
    auto it = seqs_.find(id);
    if (it == seqs_.end()) return NoSequence(id);
    return &it->second;
  }
  static absl::Status NoSequence(uint64_t id) {
    return absl::NotFoundError(
        absl::StrFormat("%s: no sequence %d", Traits::kName, id));
  }

  BackendParams params_;
  Verifier verifier_;
  absl::flat_hash_map<uint64_t, Store> seqs_;
  std::vector<Store> spare_;  // stores of released sequences
  uint64_t next_id_ = 1;
  int64_t bytes_written_ = 0, bytes_copied_ = 0;
};

}  // namespace

std::unique_ptr<Backend> MakeContiguousBackend(const BackendParams& params) {
  return std::make_unique<BaselineBackend<ContiguousBuffer>>(params);
}

std::unique_ptr<Backend> MakeNaiveBackend(const BackendParams& params) {
  return std::make_unique<BaselineBackend<NaiveCache>>(params);
}

}  // namespace kvpage::stress
