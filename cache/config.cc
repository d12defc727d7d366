#include "kvpage/config.h"

#include <string>

#include "absl/strings/str_format.h"
#include "cache/block_table.h"
#include "cache/quant_pool_config.h"

namespace kvpage {

namespace {
constexpr int64_t kMaxArenaBytes = int64_t{1} << 46;  // 64 TiB
constexpr int64_t kAlign = 64;
// Positions and lengths stay far from int64 overflow.
constexpr int64_t kMaxSeqLen = int64_t{1} << 62;

int64_t RoundUp(int64_t value, int64_t to) {
  return (value + to - 1) / to * to;
}

absl::Status Bad(std::string_view field, int64_t value, std::string_view want) {
  return absl::InvalidArgumentError(
      absl::StrFormat("CacheConfig.%s is %d; want %s", field, value, want));
}

// `prefix` names where the policy sits ("" for the cache-wide fields).
absl::Status ValidatePolicy(const LayerPolicy& p, const std::string& prefix) {
  if (p.overflow != OverflowPolicy::kError &&
      p.overflow != OverflowPolicy::kTruncate &&
      p.overflow != OverflowPolicy::kSlidingWindow &&
      p.overflow != OverflowPolicy::kCircularBuffer) {
    return Bad(prefix + "overflow", static_cast<int64_t>(p.overflow),
               "a known policy");
  }
  if (p.max_seq_len < 1 || p.max_seq_len > kMaxSeqLen) {
    return Bad(prefix + "max_seq_len", p.max_seq_len, "1 to 2^62");
  }
  if (p.sink_tokens < 0 || p.sink_tokens >= p.max_seq_len) {
    return Bad(prefix + "sink_tokens", p.sink_tokens,
               absl::StrFormat("0 to max_seq_len - 1 (%d)", p.max_seq_len - 1));
  }
  if (p.truncate_to < 0 || p.truncate_to > p.max_seq_len) {
    return Bad(prefix + "truncate_to", p.truncate_to,
               absl::StrFormat("0 to max_seq_len (%d)", p.max_seq_len));
  }
  if (p.overflow == OverflowPolicy::kTruncate &&
      EffectiveTruncateTo(p.max_seq_len, p.truncate_to) <= p.sink_tokens) {
    return Bad(prefix + "truncate_to",
               EffectiveTruncateTo(p.max_seq_len, p.truncate_to),
               absl::StrFormat("more than sink_tokens (%d): a context shift "
                               "must keep a window",
                               p.sink_tokens));
  }
  return absl::OkStatus();
}
}  // namespace

int64_t EffectiveTruncateTo(int64_t max_seq_len, int64_t truncate_to) {
  return truncate_to == 0 ? max_seq_len / 2 : truncate_to;
}

std::string_view OverflowPolicyName(OverflowPolicy policy) {
  switch (policy) {
    case OverflowPolicy::kError:
      return "error";
    case OverflowPolicy::kTruncate:
      return "truncate";
    case OverflowPolicy::kSlidingWindow:
      return "sliding_window";
    case OverflowPolicy::kCircularBuffer:
      return "circular_buffer";
  }
  return "unknown";
}

absl::Status ValidateConfig(const CacheConfig& c) {
  const auto& bad = Bad;
  if (c.num_layers < 1 || c.num_layers > 4096) {
    return bad("num_layers", c.num_layers, "1 to 4096");
  }
  if (c.num_kv_heads < 1 || c.num_kv_heads > 4096) {
    return bad("num_kv_heads", c.num_kv_heads, "1 to 4096");
  }
  if (c.head_dim < 1 || c.head_dim > 65536) {
    return bad("head_dim", c.head_dim, "1 to 65536");
  }
  if (c.dtype != DType::kF32 && c.dtype != DType::kF16 &&
      c.dtype != DType::kBF16) {
    return bad("dtype", static_cast<int64_t>(c.dtype), "f32, f16 or bf16");
  }
  if (c.block_tokens < 1 || c.block_tokens > 65535) {
    return bad("block_tokens", c.block_tokens, "1 to 65535");
  }
  if (c.num_blocks < 1 || c.num_blocks > int64_t{0x7fffffff}) {
    return bad("num_blocks", c.num_blocks, "1 to 2147483647");
  }
  const LayerPolicy global{.overflow = c.overflow,
                           .max_seq_len = c.max_seq_len,
                           .sink_tokens = c.sink_tokens,
                           .truncate_to = c.truncate_to};
  if (absl::Status s = ValidatePolicy(global, ""); !s.ok()) return s;
  std::vector<bool> seen(static_cast<size_t>(c.num_layers), false);
  for (const LayerPolicy& p : c.layer_policies) {
    if (p.layer < 0 || p.layer >= c.num_layers) {
      return bad("layer_policies[].layer", p.layer,
                 absl::StrFormat("0 to num_layers - 1 (%d)", c.num_layers - 1));
    }
    if (seen[static_cast<size_t>(p.layer)]) {
      return bad("layer_policies[].layer", p.layer, "at most one per layer");
    }
    seen[static_cast<size_t>(p.layer)] = true;
    if (absl::Status s = ValidatePolicy(
            p, absl::StrFormat("layer_policies[layer %d].", p.layer));
        !s.ok()) {
      return s;
    }
  }
  // The format and the error bound are checked even with compression off:
  // a snapshot records them, and must read back what it wrote.
  const CompressionConfig& q = c.compression;
  if (q.bits != QuantBits::kInt8 && q.bits != QuantBits::kInt4) {
    return bad("compression.bits", static_cast<int64_t>(q.bits), "8 or 4");
  }
  if (!(q.max_rel_error >= 0) || q.max_rel_error > 1e300) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CacheConfig.compression.max_rel_error is %g; want a finite value "
        ">= 0",
        q.max_rel_error));
  }
  if (q.enabled) {
    if (q.quant_cells < 1 || q.quant_cells > int64_t{0x7fffffff}) {
      return bad("compression.quant_cells", q.quant_cells, "1 to 2147483647");
    }
    if (q.group_size < 1 || c.head_dim % q.group_size != 0) {
      return bad("compression.group_size", q.group_size,
                 absl::StrFormat("a divisor of head_dim (%d)", c.head_dim));
    }
    const bool int4 = q.bits == QuantBits::kInt4 || q.max_rel_error > 0;
    if (int4 && c.head_dim % 2 != 0) {
      return bad("head_dim", c.head_dim, "even for int4 codes (two per byte)");
    }
    if (q.hot_tokens < 0) {
      return bad("compression.hot_tokens", q.hot_tokens, ">= 0");
    }
  }
  const int64_t block_bytes = BlockBytes(c);
  const int width = LayerGroupWidth(c);
  if (block_bytes * width > kMaxArenaBytes / c.num_blocks) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CacheConfig: %d blocks of %d layers of %d bytes exceed the %d-byte "
        "arena limit",
        c.num_blocks, width, block_bytes, kMaxArenaBytes));
  }
  if (q.enabled) {
    const int64_t cell_bytes = internal::QuantSlotBytes(c) * width;
    if (cell_bytes > kMaxArenaBytes / q.quant_cells) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "CacheConfig.compression: %d cells of %d layers of %d bytes exceed "
          "the %d-byte arena limit",
          q.quant_cells, width, cell_bytes / width, kMaxArenaBytes));
    }
  }
  return absl::OkStatus();
}

int LayerGroupWidth(const CacheConfig& c) {
  if (!c.group_layers) return 1;
  return internal::ResolveGroups(c, internal::ResolveLayers(c)).width;
}

int64_t BlockBytes(const CacheConfig& c) {
  // K region, then V region, each rounded up to a cache line so that every
  // block and both of its halves start 64-byte aligned.
  const int64_t half = int64_t{c.block_tokens} * c.num_kv_heads * c.head_dim *
                       DTypeSize(c.dtype);
  return 2 * RoundUp(half, kAlign);
}

}  // namespace kvpage
