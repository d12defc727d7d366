// tests/snapshot_fixture.h — a small cache that shows every kind of state a
// snapshot can hold: each overflow policy (one per layer), sinks, compressed
// blocks, a fork sharing blocks, a prefix-cache hit and idle cached blocks.
// The snapshot tests, kvpage-dump's golden tests and the fuzzer's seed corpus
// build it; it is deterministic, so its snapshot is byte-for-byte stable.
#ifndef KVPAGE_TESTS_SNAPSHOT_FIXTURE_H_
#define KVPAGE_TESTS_SNAPSHOT_FIXTURE_H_

#include <memory>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvpage/kvpage.h"

namespace kvpage::testing {

// Layer 0 kError, 1 sliding window (4 sinks), 2 circular buffer (4 sinks),
// 3 context shift; int8 compression (mixed with int4 when `mixed`).
inline CacheConfig ShowcaseConfig(bool mixed = false) {
  return CacheConfig{
      .num_layers = 4,
      .num_kv_heads = 2,
      .head_dim = 8,
      .dtype = DType::kF16,
      .block_tokens = 8,
      .num_blocks = 96,
      .max_seq_len = 128,
      .layer_policies = {{.layer = 1,
                          .overflow = OverflowPolicy::kSlidingWindow,
                          .max_seq_len = 36,
                          .sink_tokens = 4},
                         {.layer = 2,
                          .overflow = OverflowPolicy::kCircularBuffer,
                          .max_seq_len = 36,
                          .sink_tokens = 4},
                         {.layer = 3,
                          .overflow = OverflowPolicy::kTruncate,
                          .max_seq_len = 64,
                          .truncate_to = 40}},
      .compression = {.enabled = true,
                      .bits = QuantBits::kInt8,
                      .group_size = 4,
                      .hot_tokens = 16,
                      .quant_cells = 24,
                      .max_rel_error = mixed ? 0.004 : 0.0,
                      .measure_error = true}};
}

// Appends `n` tokens to every layer of `seq` (positions from its length on)
// in chunks of `chunk`, with the ids `first_id`, `first_id + 1`, ...
// (no ids when `first_id` < 0).
inline absl::Status Grow(KVCache& cache, SeqId seq, int64_t n, int64_t chunk,
                         int32_t first_id, std::mt19937_64& rng) {
  const CacheConfig& c = cache.config();
  const int64_t elems = int64_t{c.num_kv_heads} * c.head_dim;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  absl::StatusOr<int64_t> start = cache.Length(seq, 0);
  if (!start.ok()) return start.status();
  for (int64_t done = 0; done < n; done += chunk) {
    const int64_t m = std::min(chunk, n - done);
    std::vector<int32_t> ids(static_cast<size_t>(m));
    for (int64_t i = 0; i < m; ++i) {
      ids[static_cast<size_t>(i)] = first_id + static_cast<int32_t>(done + i);
    }
    if (first_id >= 0) {
      if (absl::Status s = cache.AppendTokens(seq, ids); !s.ok()) return s;
    }
    std::vector<float> k(static_cast<size_t>(m * elems));
    std::vector<float> v(k.size());
    for (int layer = 0; layer < c.num_layers; ++layer) {
      for (float& x : k) x = normal(rng);
      for (float& x : v) x = normal(rng);
      const TokenSpan ks{.data = k.data(), .tokens = m};
      const TokenSpan vs{.data = v.data(), .tokens = m};
      if (absl::Status s = cache.Update(seq, layer, ks, vs, *start + done + m);
          !s.ok()) {
        return s;
      }
    }
  }
  return absl::OkStatus();
}

// The showcase: seq 1 grows to 100 tokens; seq 2 forks it and writes its own
// last token (copy-on-write); seq 3 finds 16 of its tokens in the prefix cache;
// seq 4 is released, leaving its cached blocks idle; seq 5 (below). The error
// of any step is returned.
inline absl::StatusOr<std::unique_ptr<KVCache>> BuildShowcase(
    bool mixed = false) {
  absl::StatusOr<std::unique_ptr<KVCache>> made =
      KVCache::Create(ShowcaseConfig(mixed));
  if (!made.ok()) return made.status();
  KVCache& cache = **made;
  std::mt19937_64 rng(20261127);
  absl::StatusOr<SeqId> a = cache.AddSequence();
  if (!a.ok()) return a.status();
  if (absl::Status s = Grow(cache, *a, 40, 20, 1000, rng); !s.ok()) return s;
  if (absl::Status s = Grow(cache, *a, 60, 1, 1040, rng); !s.ok()) return s;
  absl::StatusOr<SeqId> b = cache.Fork(*a);
  if (!b.ok()) return b.status();
  if (absl::Status s = cache.Truncate(*b, 99); !s.ok()) return s;
  if (absl::Status s = Grow(cache, *b, 1, 1, 5000, rng); !s.ok()) return s;
  absl::StatusOr<SeqId> c = cache.AddSequence();
  if (!c.ok()) return c.status();
  std::vector<int32_t> prompt;
  for (int32_t i = 0; i < 20; ++i) prompt.push_back(1000 + i);
  absl::StatusOr<int64_t> matched = cache.MatchPrefix(*c, prompt);
  if (!matched.ok()) return matched.status();
  if (absl::Status s = Grow(cache, *c, 20 - *matched, 20 - *matched,
                            1000 + static_cast<int32_t>(*matched), rng);
      !s.ok()) {
    return s;
  }
  absl::StatusOr<SeqId> d = cache.AddSequence();
  if (!d.ok()) return d.status();
  if (absl::Status s = Grow(cache, *d, 24, 24, 7000, rng); !s.ok()) return s;
  if (absl::Status s = cache.RemoveSequence(*d); !s.ok()) return s;
  // Without token ids nothing is published, so nothing is shared: layers 0
  // and 3 compress their history; the ring's rollback leaves a spare block.
  absl::StatusOr<SeqId> e = cache.AddSequence();
  if (!e.ok()) return e.status();
  if (absl::Status s = Grow(cache, *e, 60, 30, -1, rng); !s.ok()) return s;
  for (int layer : {0, 3}) {
    if (absl::Status s = cache.CompressOldEntries(*e, layer, 0.2); !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = cache.Truncate(*e, 52); !s.ok()) return s;
  return made;
}

}  // namespace kvpage::testing

#endif  // KVPAGE_TESTS_SNAPSHOT_FIXTURE_H_
