#include "tools/generate/settings.h"

#include <algorithm>

namespace kvpage::generate {

std::string CompressionName(Compression c) {
  switch (c) {
    case Compression::kNone:
      return "none";
    case Compression::kInt8:
      return "int8";
    case Compression::kInt4:
      return "int4";
    case Compression::kMixed:
      return "mixed";
  }
  return "unknown";
}

absl::StatusOr<CacheConfig> MakeCacheConfig(const ModelShape& shape,
                                            const CacheSettings& s,
                                            int64_t sequences,
                                            int64_t max_length) {
  CacheConfig c{.num_layers = shape.n_layers,
                .num_kv_heads = shape.n_kv_heads,
                .head_dim = shape.head_dim(),
                .dtype = s.dtype,
                .block_tokens = s.block_tokens,
                .max_seq_len = s.window > 0 ? s.window : max_length,
                .overflow = s.policy,
                .sink_tokens = s.sinks,
                .truncate_to = s.truncate_to,
                .group_layers = s.group_layers};
  if (s.blocks > 0) {
    c.num_blocks = s.blocks;
  } else if (s.block_tokens > 0) {
    // Every sequence holding its own blocks at its longest, plus a ring's
    // spare and a rollback's partial block, per table (one for every layer
    // with group_layers: the model's layers share one policy).
    const int64_t visible = std::min(c.max_seq_len, max_length);
    c.num_blocks = sequences * (s.group_layers ? 1 : shape.n_layers) *
                   ((visible + s.block_tokens - 1) / s.block_tokens + 2);
  }
  if (s.compression != Compression::kNone) {
    c.compression = {
        .enabled = true,
        .bits = s.compression == Compression::kInt4 ? QuantBits::kInt4
                                                    : QuantBits::kInt8,
        .group_size = s.group_size > 0 ? s.group_size : shape.head_dim(),
        .hot_tokens = s.hot_tokens,
        .quant_cells =
            s.quant_cells > 0
                ? s.quant_cells
                : c.num_blocks * (s.compression == Compression::kMixed ? 2 : 1),
        .auto_compress = s.auto_compress,
        .max_rel_error =
            s.compression == Compression::kMixed ? s.max_rel_error : 0.0,
        .measure_error = true};
  }
  if (absl::Status st = ValidateConfig(c); !st.ok()) return st;
  return c;
}

}  // namespace kvpage::generate
