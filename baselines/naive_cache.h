// baselines/naive_cache.h — the baseline of the original bug report: a KV cache
// that keeps each layer's keys and values as one contiguous tensor and, on
// every update, builds brand-new tensors of seq_len tokens (the old prefix
// copied, then the new tokens) that replace the stored ones, as
// `k = torch.cat([k[:, :start], k_new])` does. A decode step therefore copies
// the whole history: O(seq_len) bytes per token where kvpage writes O(1).
//
// The new tensor of each step is built in recycled storage (the one replaced
// the step before), as a caching allocator would hand it back, so the
// baseline pays the copy and not page faults: a lower bound on the naive
// cost. (With a fresh allocation per step, the development VM page-faults
// the whole new tensor every step: 15x to 75x slower, and erratic.)
//
// Elements are f16 bit patterns, laid out [tokens][num_kv_heads][head_dim]
// per layer, as kvpage's inputs. For the benchmarks and kvpage-stress;
// thread-compatible.
#ifndef KVPAGE_BASELINES_NAIVE_CACHE_H_
#define KVPAGE_BASELINES_NAIVE_CACHE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"

namespace kvpage::baselines {

// Invariant: for every layer, k.size() == v.size() == length * token_elems.
class NaiveCache {
 public:
  // `token_elems` is num_kv_heads * head_dim.
  NaiveCache(int num_layers, int64_t token_elems)
      : token_elems_(token_elems), layers_(static_cast<size_t>(num_layers)) {}

  // kvpage's update rule on one contiguous tensor per layer: `k` and `v` hold
  // the n tokens at positions [seq_len - n, seq_len). Builds new tensors of
  // seq_len tokens (prefix [0, seq_len - n) copied, then the n new tokens)
  // in the spare storage and makes them the stored ones. InvalidArgument for
  // a bad layer, mismatched or ragged spans, or a gap. O(seq_len) copies.
  [[nodiscard]] absl::Status Update(int layer, absl::Span<const uint16_t> k,
                                    absl::Span<const uint16_t> v,
                                    int64_t seq_len) {
    if (layer < 0 || layer >= static_cast<int>(layers_.size()) ||
        k.size() != v.size() ||
        static_cast<int64_t>(k.size()) % token_elems_ != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "NaiveCache::Update(layer %d): bad layer or spans of %d and %d "
          "elements",
          layer, k.size(), v.size()));
    }
    Layer& l = layers_[static_cast<size_t>(layer)];
    const int64_t n = static_cast<int64_t>(k.size()) / token_elems_;
    const int64_t start = seq_len - n;
    if (start < 0 || start > l.length) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "NaiveCache::Update(layer %d, seq_len %d): %d tokens leave a gap "
          "after length %d",
          layer, seq_len, n, l.length));
    }
    Replace(l.k, l.spare_k, start, k);
    Replace(l.v, l.spare_v, start, v);
    l.length = seq_len;
    return absl::OkStatus();
  }

  // Keeps the first `seq_len` tokens of every layer (a shrink in place; the
  // benchmarks call it outside timing). O(1) per layer.
  void Truncate(int64_t seq_len) {
    for (Layer& l : layers_) {
      if (l.length <= seq_len) continue;
      l.k.resize(static_cast<size_t>(seq_len * token_elems_));
      l.v.resize(static_cast<size_t>(seq_len * token_elems_));
      l.length = seq_len;
    }
  }

  int64_t Length(int layer) const {
    return layers_[static_cast<size_t>(layer)].length;
  }

  // The stored tensors of `layer`: Length(layer) tokens of keys, of values.
  absl::Span<const uint16_t> Keys(int layer) const {
    return layers_[static_cast<size_t>(layer)].k;
  }
  absl::Span<const uint16_t> Values(int layer) const {
    return layers_[static_cast<size_t>(layer)].v;
  }

  // Elements the cache holds: the capacity of the stored tensors and of the
  // spare storage, over every layer (its memory is twice this in bytes).
  int64_t HeldElements() const {
    int64_t held = 0;
    for (const Layer& l : layers_) {
      held += static_cast<int64_t>(l.k.capacity() + l.v.capacity() +
                                   l.spare_k.capacity() + l.spare_v.capacity());
    }
    return held;
  }

 private:
  struct Layer {
    std::vector<uint16_t> k, v;
    // Storage of the tensors replaced last step, reused for the next ones.
    std::vector<uint16_t> spare_k, spare_v;
    int64_t length = 0;
  };

  // Builds in `spare` the new tensor (the first `prefix` tokens of `stored`,
  // then `tail`) and makes it the stored one; the old storage becomes the
  // spare. resize() grows geometrically and zero-fills only the elements
  // past the spare's old size, so the steady state is two plain copies.
  void Replace(std::vector<uint16_t>& stored, std::vector<uint16_t>& spare,
               int64_t prefix, absl::Span<const uint16_t> tail) const {
    const auto prefix_elems = static_cast<ptrdiff_t>(prefix * token_elems_);
    spare.resize(static_cast<size_t>(prefix_elems) + tail.size());
    std::copy(stored.begin(), stored.begin() + prefix_elems, spare.begin());
    std::copy(tail.begin(), tail.end(), spare.begin() + prefix_elems);
    stored.swap(spare);
  }

  int64_t token_elems_;
  std::vector<Layer> layers_;
};

}  // namespace kvpage::baselines

#endif  // KVPAGE_BASELINES_NAIVE_CACHE_H_
