#include "kvpage/config.h"

#include "absl/strings/str_format.h"

namespace kvpage {

namespace {
constexpr int64_t kMaxArenaBytes = int64_t{1} << 46;  // 64 TiB
constexpr int64_t kAlign = 64;

int64_t RoundUp(int64_t value, int64_t to) {
  return (value + to - 1) / to * to;
}
}  // namespace

int DTypeSize(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
  }
  return "unknown";
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
  auto bad = [](std::string_view field, int64_t value, std::string_view want) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CacheConfig.%s is %d; want %s", field, value, want));
  };
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
  if (c.num_blocks < 1 || c.num_blocks > int64_t{0xfffffffe}) {
    return bad("num_blocks", c.num_blocks, "1 to 4294967294");
  }
  if (c.max_seq_len < 1) return bad("max_seq_len", c.max_seq_len, ">= 1");
  if (c.sink_tokens < 0 || c.sink_tokens >= c.max_seq_len) {
    return bad("sink_tokens", c.sink_tokens,
               absl::StrFormat("0 to max_seq_len - 1 (%d)", c.max_seq_len - 1));
  }
  if (c.truncate_to < 0 || c.truncate_to > c.max_seq_len) {
    return bad("truncate_to", c.truncate_to,
               absl::StrFormat("0 to max_seq_len (%d)", c.max_seq_len));
  }
  const int64_t block_bytes = BlockBytes(c);
  if (block_bytes > kMaxArenaBytes / c.num_blocks) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CacheConfig: %d blocks of %d bytes exceed the %d-byte arena limit",
        c.num_blocks, block_bytes, kMaxArenaBytes));
  }
  if (c.overflow != OverflowPolicy::kError) {
    return absl::UnimplementedError(absl::StrFormat(
        "CacheConfig.overflow %s: this release provides only the error policy",
        OverflowPolicyName(c.overflow)));
  }
  return absl::OkStatus();
}

int64_t BlockBytes(const CacheConfig& c) {
  // K region, then V region, each rounded up to a cache line so that every
  // block and both of its halves start 64-byte aligned.
  const int64_t half = int64_t{c.block_tokens} * c.num_kv_heads * c.head_dim *
                       DTypeSize(c.dtype);
  return 2 * RoundUp(half, kAlign);
}

}  // namespace kvpage
