// kvpage_update_overhead: one decode step's Update (1 token, 8 kv-heads of
// 128, f32 input into an f16 cache) through C++ and through the C API, in
// alternated rounds; prints "<language> <ns per update>" per round. The Rust
// and Python sides of the comparison are bindings/rust/examples/
// update_overhead.rs and bindings/python/update_overhead.py, with the same
// loop; tools/bindings_bench.sh runs all four and prints the table
// (docs/bindings.md).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "kvpage/kv_cache.h"
#include "kvpage/kvpage_c.h"

namespace {

constexpr int kHeads = 8, kDim = 128, kWindow = 1024;
constexpr int64_t kUpdates = 200000;

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
      .count();
}

kvpage::CacheConfig Config() {
  return {.num_layers = 1,
          .num_kv_heads = kHeads,
          .head_dim = kDim,
          .dtype = kvpage::DType::kF16,
          .block_tokens = 16,
          .num_blocks = kWindow / 16 + 2,
          .max_seq_len = kWindow};
}

// ns per update through the C++ API.
double Cpp(const std::vector<float>& token) {
  auto cache = kvpage::KVCache::Create(Config());
  if (!cache.ok()) std::abort();
  const kvpage::SeqId seq = *(*cache)->AddSequence();
  const kvpage::TokenSpan k{.data = token.data(), .tokens = 1};
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < kUpdates; ++i) {
    const int64_t len = i % kWindow + 1;
    if (!(*cache)->Update(seq, 0, k, k, len).ok()) std::abort();
    if (len == kWindow && !(*cache)->Truncate(seq, 0).ok()) std::abort();
  }
  return Seconds(t0) * 1e9 / kUpdates;
}

// ns per update through the C API.
double C(const std::vector<float>& token) {
  kvpage_config c;
  kvpage_config_init(&c);
  c.num_layers = 1;
  c.num_kv_heads = kHeads;
  c.head_dim = kDim;
  c.dtype = KVPAGE_F16;
  c.num_blocks = kWindow / 16 + 2;
  c.max_seq_len = kWindow;
  kvpage_cache* cache = nullptr;
  kvpage_seq_id seq = 0;
  if (kvpage_cache_create(&c, &cache) != KVPAGE_OK ||
      kvpage_add_sequence(cache, 0, &seq) != KVPAGE_OK) {
    std::abort();
  }
  const kvpage_token_span k{token.data(), KVPAGE_F32, 1};
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < kUpdates; ++i) {
    const int64_t len = i % kWindow + 1;
    if (kvpage_update(cache, seq, 0, &k, &k, len) != KVPAGE_OK) std::abort();
    if (len == kWindow && kvpage_truncate(cache, seq, 0) != KVPAGE_OK) {
      std::abort();
    }
  }
  const double ns = Seconds(t0) * 1e9 / kUpdates;
  kvpage_cache_destroy(cache);
  return ns;
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 3;
  std::vector<float> token(kHeads * kDim, 0.25f);
  for (int r = 0; r < rounds; ++r) {
    std::printf("cpp %.1f\n", Cpp(token));
    std::printf("c %.1f\n", C(token));
  }
  return 0;
}
