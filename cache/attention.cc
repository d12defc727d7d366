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

// The quantization shape of the view's compressed blocks.
internal::QuantShape ShapeOf(const LayerView& view) {
  return {.block_tokens = view.block_tokens,
          .num_kv_heads = view.num_kv_heads,
          .head_dim = view.head_dim,
          .group_size = view.quant_group_size};
}

// The compressed block's format and parts, from its codes pointers (the
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
// null): when it is compressed too, its parts stream in under this block's
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

namespace {

// q . k over `dim` channels, with eight partial sums: a reduction the
// compiler can vectorize.
float Dot(const float* q, const float* k, int64_t dim) {
  float partial[8] = {};
  int64_t d = 0;
  for (; d + 8 <= dim; d += 8) {
    for (int j = 0; j < 8; ++j) partial[j] += q[d + j] * k[d + j];
  }
  float dot = 0;
  for (; d < dim; ++d) dot += q[d] * k[d];
  for (float p : partial) dot += p;
  return dot;
}

// Online softmax per query head, a block at a time: the running max, the
// denominator and the weighted sum of values, rescaled when the max grows.
class OnlineSoftmax {
 public:
  OnlineSoftmax(int64_t q_heads, int64_t kv_heads, int64_t dim)
      : q_heads_(q_heads),
        group_(q_heads / kv_heads),
        kv_heads_(kv_heads),
        dim_(dim),
        scale_(1.0f / std::sqrt(static_cast<float>(dim))),
        max_score_(static_cast<size_t>(q_heads),
                   -std::numeric_limits<float>::infinity()),
        denom_(static_cast<size_t>(q_heads), 0.0f),
        acc_(static_cast<size_t>(q_heads * dim), 0.0f) {}

  // Adds `tokens` tokens whose keys and values (f32, [tokens][kv_heads][dim])
  // are k and v.
  void AddBlock(const float* query, const float* k, const float* v,
                int64_t tokens) {
    scores_.resize(static_cast<size_t>(tokens));
    for (int64_t h = 0; h < q_heads_; ++h) {
      const float* q = query + h * dim_;
      const int64_t head_offset = (h / group_) * dim_;
      float block_max = -std::numeric_limits<float>::infinity();
      for (int64_t t = 0; t < tokens; ++t) {
        const float score =
            Dot(q, k + t * kv_heads_ * dim_ + head_offset, dim_) * scale_;
        scores_[static_cast<size_t>(t)] = score;
        block_max = std::max(block_max, score);
      }
      Accumulate(h, block_max, v + head_offset, tokens);
    }
  }

  void Finish(absl::Span<float> out) const {
    for (int64_t h = 0; h < q_heads_; ++h) {
      for (int64_t d = 0; d < dim_; ++d) {
        out[static_cast<size_t>(h * dim_ + d)] =
            acc_[static_cast<size_t>(h * dim_ + d)] /
            denom_[static_cast<size_t>(h)];
      }
    }
  }

 private:
  // Folds head h's scores of one block into its running sums; v points at
  // the head's channels of the block's first token.
  void Accumulate(int64_t h, float block_max, const float* v, int64_t tokens) {
    float& max_score = max_score_[static_cast<size_t>(h)];
    float& denom = denom_[static_cast<size_t>(h)];
    float* acc = acc_.data() + h * dim_;
    if (block_max > max_score) {
      const float shrink = std::exp(max_score - block_max);
      denom *= shrink;
      for (int64_t d = 0; d < dim_; ++d) acc[d] *= shrink;
      max_score = block_max;
    }
    for (int64_t t = 0; t < tokens; ++t) {
      const float w = std::exp(scores_[static_cast<size_t>(t)] - max_score);
      denom += w;
      const float* vt = v + t * kv_heads_ * dim_;
      for (int64_t d = 0; d < dim_; ++d) acc[d] += w * vt[d];
    }
  }

  int64_t q_heads_, group_, kv_heads_, dim_;
  float scale_;
  std::vector<float> max_score_, denom_, acc_, scores_;
};

}  // namespace

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
  OnlineSoftmax softmax(static_cast<int64_t>(query.size()) / dim, kv_heads,
                        dim);
  std::vector<float> k, v;
  for (size_t b = 0; b < view.blocks.size(); ++b) {
    const BlockView& block = view.blocks[b];
    const BlockView* next =
        b + 1 < view.blocks.size() ? &view.blocks[b + 1] : nullptr;
    const int64_t elems = int64_t{block.tokens} * kv_heads * dim;
    k.resize(static_cast<size_t>(elems));
    v.resize(static_cast<size_t>(elems));
    const bool requested = b > 0 &&
                           view.blocks[b - 1].format != BlockFormat::kHot &&
                           block.format != BlockFormat::kHot;
    if (absl::Status s = DequantizeBefore(view, block, next, requested,
                                          absl::MakeSpan(k), absl::MakeSpan(v));
        !s.ok()) {
      return s;
    }
    softmax.AddBlock(query.data(), k.data(), v.data(), block.tokens);
  }
  softmax.Finish(out);
  return absl::OkStatus();
}

}  // namespace kvpage
