#include "snippet_context.h"

#include <utility>
#include <vector>

namespace kvpage::testing {

absl::StatusOr<SnippetContext> MakeSnippetContext() {
  SnippetContext context;
  context.config = {.num_layers = 4,
                    .num_kv_heads = 2,
                    .head_dim = 64,
                    .dtype = DType::kF16,
                    .block_tokens = 16,
                    .num_blocks = 256,
                    .max_seq_len = 4096};
  CacheConfig with_compression = context.config;
  with_compression.compression = {.enabled = true,
                                  .bits = QuantBits::kInt8,
                                  .group_size = 32,
                                  .hot_tokens = 16,
                                  .quant_cells = 64};
  absl::StatusOr<std::unique_ptr<KVCache>> cache =
      KVCache::Create(with_compression);
  if (!cache.ok()) return cache.status();
  context.cache = *std::move(cache);
  absl::StatusOr<SeqId> seq = context.cache->AddSequence();
  if (!seq.ok()) return seq.status();
  context.seq = *seq;
  constexpr int64_t kTokens = 64;
  std::vector<float> values(kTokens * 2 * 64);
  for (size_t i = 0; i < values.size(); ++i) {
    values[i] = static_cast<float>(i % 61) / 8.0f - 3.0f;
  }
  const TokenSpan span{.data = values.data(), .tokens = kTokens};
  for (int layer = 0; layer < context.config.num_layers; ++layer) {
    absl::Status status =
        context.cache->Update(context.seq, layer, span, span, kTokens);
    if (!status.ok()) return status;
  }
  return context;
}

}  // namespace kvpage::testing
