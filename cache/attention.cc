#include "kvpage/attention.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "absl/strings/str_format.h"
#include "allocator/convert.h"
#include "allocator/quantize.h"

namespace kvpage {

namespace {

// The quantization shape of the view's repacked blocks.
internal::QuantShape ShapeOf(const LayerView& view) {
  return {.block_tokens = view.block_tokens,
          .num_kv_heads = view.num_kv_heads,
          .head_dim = view.head_dim,
          .group_size = view.quant_group_size};
}

// The repacked block's format and parts, from its codes pointers (the
// layout puts the codes first in each part).
struct QuantParts {
  internal::QuantFormat format;
  const std::byte* k_part;
  const std::byte* v_part;
};
QuantParts PartsOf(const LayerView& view, const BlockView& block) {
  const internal::QuantFormat format = block.format == BlockFormat::kInt8
                                           ? internal::QuantFormat::kInt8
                                           : internal::QuantFormat::kInt4;
  const internal::QuantLayout layout =
      internal::QuantLayout::For(format, ShapeOf(view));
  return {format,
          static_cast<const std::byte*>(block.quant.k_codes) - layout.k_codes,
          static_cast<const std::byte*>(block.quant.v_codes) - layout.v_codes};
}

// Dequantize, told the block that will be read after this one (may be
// null): when it is repacked too, its parts stream in under this block's
// decoding (internal::NextBlock). `requested`: the previous call named this
// block so.
absl::Status DequantizeBefore(const LayerView& view, const BlockView& block,
                              const BlockView* next, bool requested,
                              absl::Span<float> k_out,
                              absl::Span<float> v_out) {
  const int64_t elems =
      int64_t{block.tokens} * view.num_kv_heads * view.head_dim;
  if (static_cast<int64_t>(k_out.size()) < elems ||
      static_cast<int64_t>(v_out.size()) < elems) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Dequantize(block %d): %d tokens need %d floats each; got %d and %d",
        block.block_id, block.tokens, elems, k_out.size(), v_out.size()));
  }
  if (!view.host_accessible) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "Dequantize(block %d): the view is not host memory", block.block_id));
  }
  if (block.format == BlockFormat::kHot) {
    const int64_t offset =
        int64_t{block.begin_slot} * view.token_stride * DTypeSize(view.dtype);
    internal::ConvertElements(static_cast<const std::byte*>(block.k) + offset,
                              view.dtype, k_out.data(), DType::kF32, elems);
    internal::ConvertElements(static_cast<const std::byte*>(block.v) + offset,
                              view.dtype, v_out.data(), DType::kF32, elems);
    return absl::OkStatus();
  }
  internal::NextBlock hint;
  if (next != nullptr && next->format != BlockFormat::kHot) {
    const QuantParts n = PartsOf(view, *next);
    hint = {n.format, n.k_part, n.v_part};
  }
  hint.this_block_requested = requested;
  const QuantParts p = PartsOf(view, block);
  internal::DequantizeBlock(p.format, ShapeOf(view), p.k_part, p.v_part,
                            block.begin_slot, block.tokens, k_out.data(),
                            v_out.data(), hint);
  return absl::OkStatus();
}

}  // namespace

absl::Status Dequantize(const LayerView& view, const BlockView& block,
                        absl::Span<float> k_out, absl::Span<float> v_out) {
  return DequantizeBefore(view, block, nullptr, false, k_out, v_out);
}

absl::Status Attend(const LayerView& view, absl::Span<const float> query,
                    absl::Span<float> out) {
  const int64_t dim = view.head_dim;
  const int64_t kv_heads = view.num_kv_heads;
  if (dim <= 0 || kv_heads <= 0 || query.empty() ||
      static_cast<int64_t>(query.size()) % dim != 0 ||
      (static_cast<int64_t>(query.size()) / dim) % kv_heads != 0 ||
      out.size() != query.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Attend: query of %d and out of %d floats for %d kv-heads of %d dims; "
        "want a multiple of kv-heads * head_dim, and out the size of query",
        query.size(), out.size(), kv_heads, dim));
  }
  if (view.tokens() == 0) {
    return absl::InvalidArgumentError("Attend: the view holds no token");
  }
  const int64_t q_heads = static_cast<int64_t>(query.size()) / dim;
  const int64_t group = q_heads / kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  // Online softmax per query head, a block at a time: the running max, the
  // denominator and the weighted sum of values, rescaled when the max grows.
  std::vector<float> max_score(static_cast<size_t>(q_heads),
                               -std::numeric_limits<float>::infinity());
  std::vector<float> denom(static_cast<size_t>(q_heads), 0.0f);
  std::vector<float> acc(static_cast<size_t>(q_heads * dim), 0.0f);
  std::vector<float> k, v, scores;
  for (size_t b = 0; b < view.blocks.size(); ++b) {
    const BlockView& block = view.blocks[b];
    const BlockView* next =
        b + 1 < view.blocks.size() ? &view.blocks[b + 1] : nullptr;
    const int64_t tokens = block.tokens;
    const int64_t elems = tokens * kv_heads * dim;
    k.resize(static_cast<size_t>(elems));
    v.resize(static_cast<size_t>(elems));
    scores.resize(static_cast<size_t>(tokens));
    const bool requested = b > 0 &&
                           view.blocks[b - 1].format != BlockFormat::kHot &&
                           block.format != BlockFormat::kHot;
    if (absl::Status s = DequantizeBefore(view, block, next, requested,
                                          absl::MakeSpan(k), absl::MakeSpan(v));
        !s.ok()) {
      return s;
    }
    for (int64_t h = 0; h < q_heads; ++h) {
      const float* q = query.data() + h * dim;
      const int64_t head_offset = (h / group) * dim;
      float block_max = -std::numeric_limits<float>::infinity();
      for (int64_t t = 0; t < tokens; ++t) {
        const float* kt = k.data() + t * kv_heads * dim + head_offset;
        // Eight partial sums: a reduction the compiler can vectorize.
        float partial[8] = {};
        int64_t d = 0;
        for (; d + 8 <= dim; d += 8) {
          for (int j = 0; j < 8; ++j) partial[j] += q[d + j] * kt[d + j];
        }
        float dot = 0;
        for (; d < dim; ++d) dot += q[d] * kt[d];
        for (float p : partial) dot += p;
        scores[static_cast<size_t>(t)] = dot * scale;
        block_max = std::max(block_max, dot * scale);
      }
      float& m = max_score[static_cast<size_t>(h)];
      float* a = acc.data() + h * dim;
      if (block_max > m) {
        const float shrink = std::exp(m - block_max);
        denom[static_cast<size_t>(h)] *= shrink;
        for (int64_t d = 0; d < dim; ++d) a[d] *= shrink;
        m = block_max;
      }
      for (int64_t t = 0; t < tokens; ++t) {
        const float w = std::exp(scores[static_cast<size_t>(t)] - m);
        denom[static_cast<size_t>(h)] += w;
        const float* vt = v.data() + t * kv_heads * dim + head_offset;
        for (int64_t d = 0; d < dim; ++d) a[d] += w * vt[d];
      }
    }
  }
  for (int64_t h = 0; h < q_heads; ++h) {
    for (int64_t d = 0; d < dim; ++d) {
      out[static_cast<size_t>(h * dim + d)] =
          acc[static_cast<size_t>(h * dim + d)] / denom[static_cast<size_t>(h)];
    }
  }
  return absl::OkStatus();
}

}  // namespace kvpage
