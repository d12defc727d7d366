// The API fuzzer's model: see api_model.h.
#include "tests/fuzz/api_model.h"

#include <algorithm>
#include <set>

#include "tests/policy_model.h"

namespace kvpage::fuzz {

std::optional<Setup> DecodeConfig(ByteSource& in) {
  Setup s;
  CacheConfig& c = s.config;
  if (in.Take(8) == 7) {  // raw: whatever the bytes say
    c.num_layers = in.Signed();
    c.num_kv_heads = in.Signed();
    c.head_dim = in.Signed();
    c.dtype = static_cast<DType>(in.Take(256));
    c.block_tokens = in.Signed();
    c.num_blocks = in.Signed();
    c.max_seq_len = in.Signed();
    c.overflow = static_cast<OverflowPolicy>(in.Take(256));
    c.sink_tokens = in.Signed();
    c.truncate_to = in.Signed();
    const int policies = in.Take(3);
    for (int i = 0; i < policies; ++i) {
      c.layer_policies.push_back(
          {.layer = in.Signed(),
           .overflow = static_cast<OverflowPolicy>(in.Take(256)),
           .max_seq_len = in.Signed(),
           .sink_tokens = in.Signed(),
           .truncate_to = in.Signed()});
    }
    CompressionConfig& q = c.compression;
    q.enabled = in.Take(2) == 1;
    q.bits = static_cast<QuantBits>(in.Take(256));
    q.group_size = in.Signed();
    q.hot_tokens = in.Signed();
    q.quant_cells = in.Signed();
    const int8_t rel = in.Signed();
    q.max_rel_error =
        rel == -128 ? std::nan("") : static_cast<double>(rel) / 100.0;
    q.auto_compress = in.Take(2) == 1;
    s.special_every = 13;
    return s;
  }
  c.num_layers = 1 + in.Take(3);
  c.num_kv_heads = 1 + in.Take(2);
  c.head_dim = 1 + in.Take(8);
  c.dtype = static_cast<DType>(in.Take(3));
  c.block_tokens = 1 + in.Take(5);
  c.num_blocks = 1 + in.Take(32);
  c.max_seq_len = 1 + in.Take(40);
  c.overflow = static_cast<OverflowPolicy>(in.Take(4));
  c.sink_tokens = in.Take(6);
  c.truncate_to = in.Take(41);
  const int policies = in.Take(3);
  for (int i = 0; i < policies; ++i) {
    c.layer_policies.push_back(
        {.layer = in.Take(3),
         .overflow = static_cast<OverflowPolicy>(in.Take(4)),
         .max_seq_len = 1 + in.Take(40),
         .sink_tokens = in.Take(6),
         .truncate_to = in.Take(41)});
  }
  const int compression = in.Take(4);
  if (compression != 0) {
    CompressionConfig& q = c.compression;
    q.enabled = true;
    q.bits = compression == 2 ? QuantBits::kInt4 : QuantBits::kInt8;
    std::vector<int> divisors;
    for (int d = 1; d <= c.head_dim; ++d) {
      if (c.head_dim % d == 0) divisors.push_back(d);
    }
    q.group_size = divisors[static_cast<size_t>(in.Take(8)) % divisors.size()];
    q.hot_tokens = in.Take(12);
    q.quant_cells = 1 + in.Take(16);
    const int flags = in.Take(4);
    q.auto_compress = (flags & 1) != 0;
    q.measure_error = (flags & 2) != 0;
    if (compression == 3) q.max_rel_error = 0.001 * (1 + in.Take(50));
  }
  s.opaque = in.Take(2) == 1;
  static constexpr int kEvery[] = {0, 97, 13, 3};
  s.special_every = kEvery[in.Take(4)];
  return s;
}

int64_t VisibleCount(const Layer& l) { return testing::CountVisible(l.pos); }

int64_t Evict(const LayerPolicy& p, Layer& l) {
  return testing::EvictOldest(p, l.pos);
}

int64_t BlocksWithVisible(const Layer& l, int64_t block_tokens, int64_t from,
                          int64_t to) {
  std::set<int64_t> blocks;
  for (int64_t p = from; p < to; ++p) {
    if (l.pos[static_cast<size_t>(p)].visible) blocks.insert(p / block_tokens);
  }
  return static_cast<int64_t>(blocks.size());
}

absl::StatusCode PredictUpdate(const CacheConfig& c,
                               const std::vector<LayerPolicy>& policies,
                               const Seq* s, const UpdateCall& call) {
  return testing::PredictUpdate(
      c, policies, s != nullptr, call,
      [s](int layer) -> const std::vector<Pos>& {
        return s->layers[static_cast<size_t>(layer)].pos;
      });
}

}  // namespace kvpage::fuzz
