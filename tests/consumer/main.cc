// Uses kvpage through its installed umbrella header only: prefill 5 tokens,
// decode 3, roll back 1, and check what comes back. Exit code 0 on success.
#include <kvpage/kvpage.h>

#include <cstdio>
#include <vector>

int main() {
  absl::StatusOr<std::unique_ptr<kvpage::KVCache>> cache =
      kvpage::KVCache::Create({.num_layers = 2,
                               .num_kv_heads = 2,
                               .head_dim = 4,
                               .dtype = kvpage::DType::kF16,
                               .block_tokens = 4,
                               .num_blocks = 8,
                               .max_seq_len = 32});
  if (!cache.ok()) {
    std::fprintf(stderr, "%s\n", cache.status().ToString().c_str());
    return 1;
  }
  kvpage::KVCache& kv = **cache;
  absl::StatusOr<kvpage::SeqId> seq = kv.AddSequence();
  if (!seq.ok()) return 1;
  std::vector<float> data(8 * 2 * 4);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i);
  for (int layer = 0; layer < 2; ++layer) {
    kvpage::TokenSpan five{.data = data.data(), .tokens = 5};
    if (!kv.Update(*seq, layer, five, five, 5).ok()) return 1;
    kvpage::TokenSpan three{.data = data.data() + 5 * 8, .tokens = 3};
    if (!kv.Update(*seq, layer, three, three, 8).ok()) return 1;
  }
  if (!kv.Truncate(*seq, 7).ok()) return 1;
  absl::StatusOr<kvpage::GatheredLayer> got = kv.Gather(*seq, 1);
  if (!got.ok() || got->positions.size() != 7) return 1;
  for (size_t i = 0; i < got->k.size(); ++i) {
    if (got->k[i] != data[i]) return 1;
  }
  std::printf("consumer: %lld tokens, %lld blocks used\n",
              static_cast<long long>(kv.Stats().tokens_stored),
              static_cast<long long>(kv.Stats().blocks_used));
  return kv.Validate().ok() ? 0 : 1;
}
