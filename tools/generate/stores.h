// tools/generate/stores.h — the decoder's two stores: PagedStore keeps every
// key and value in a kvpage::KVCache, ContiguousStore in one growing array per
// sequence and layer (what an engine writes by hand, full context only).
//
// Usage:
//   absl::StatusOr<std::unique_ptr<PagedStore>> store =
//       PagedStore::Create(config);   // a kvpage::CacheConfig
//   Decoder decoder(model, **store, {});
//
// Thread safety: thread-compatible.
#ifndef KVPAGE_TOOLS_GENERATE_STORES_H_
#define KVPAGE_TOOLS_GENERATE_STORES_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "kvpage/kv_cache.h"
#include "tools/generate/kv_store.h"

namespace kvpage::generate {

// kvpage as the decoder's only key/value cache. Write is KVCache::Update,
// Open is View; Fetch hands out a hot f32 block's slots where they lie and
// turns any other block (f16, bf16, int8, int4) into f32 with Dequantize,
// one block at a time, into one block's scratch.
class PagedStore final : public KvStore {
 public:
  static absl::StatusOr<std::unique_ptr<PagedStore>> Create(
      const CacheConfig& config);

  absl::StatusOr<SeqHandle> Add() override;
  absl::StatusOr<SeqHandle> Fork(SeqHandle parent) override;
  absl::Status Remove(SeqHandle seq) override;
  absl::Status Truncate(SeqHandle seq, int64_t length) override;
  absl::Status Write(SeqHandle seq, int layer, const float* k, const float* v,
                     int64_t n, int64_t length) override;
  absl::Status Open(SeqHandle seq, int layer,
                    std::vector<KvRun>& runs) override;
  absl::StatusOr<KvRunData> Fetch(size_t index) override;
  absl::Status AppendTokens(SeqHandle seq,
                            absl::Span<const int32_t> tokens) override;
  absl::StatusOr<int64_t> MatchPrefix(
      SeqHandle seq, absl::Span<const int32_t> tokens) override;

  // Compresses the cold blocks of every layer of `seq`
  // (KVCache::CompressOldEntries with keep_recent_fraction 0: the
  // compression.hot_tokens most recent stay hot).
  absl::Status CompressCold(SeqHandle seq) override;

  KVCache& cache() { return *cache_; }
  const KVCache& cache() const { return *cache_; }

 private:
  explicit PagedStore(std::unique_ptr<KVCache> cache);
  std::unique_ptr<KVCache> cache_;
  LayerView view_;
  std::vector<float> scratch_k_, scratch_v_;
};

// One std::vector of keys and one of values per sequence and layer, grown as
// tokens come: every position stays visible (no overflow policy), a fork
// copies, nothing is shared.
class ContiguousStore final : public KvStore {
 public:
  ContiguousStore(int num_layers, int kv_dim);

  absl::StatusOr<SeqHandle> Add() override;
  absl::StatusOr<SeqHandle> Fork(SeqHandle parent) override;
  absl::Status Remove(SeqHandle seq) override;
  absl::Status Truncate(SeqHandle seq, int64_t length) override;
  absl::Status Write(SeqHandle seq, int layer, const float* k, const float* v,
                     int64_t n, int64_t length) override;
  absl::Status Open(SeqHandle seq, int layer,
                    std::vector<KvRun>& runs) override;
  absl::StatusOr<KvRunData> Fetch(size_t index) override;

  // Bytes of keys and values held over every sequence.
  int64_t bytes() const;

 private:
  struct Layer {
    std::vector<float> k, v;  // [length][kv_dim]
  };
  using Sequence = std::vector<Layer>;
  absl::StatusOr<Sequence*> Find(SeqHandle seq);

  int num_layers_, kv_dim_;
  SeqHandle next_ = 1;
  absl::flat_hash_map<SeqHandle, std::unique_ptr<Sequence>> sequences_;
  const Layer* open_ = nullptr;
};

}  // namespace kvpage::generate

#endif  // KVPAGE_TOOLS_GENERATE_STORES_H_
