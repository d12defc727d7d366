#include "tools/stress/verifier.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "tools/names.h"

namespace kvpage::stress {

Verifier::Verifier(const Shape& shape)
    : shape_(shape),
      table_(shape.dtype),
      k_(static_cast<size_t>(shape.token_elems)),
      v_(static_cast<size_t>(shape.token_elems)) {}

absl::Status Verifier::Rows(const SeqLabel& label, int layer,
                            const Lineage& lineage, int64_t length,
                            const uint16_t* k, const uint16_t* v) {
  const int64_t elems = shape_.token_elems;
  for (int64_t p = 0; p < length; ++p) {
    if (absl::Status s = Row(label, layer, p, lineage.StreamAt(p),
                             k + p * elems, v + p * elems);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status Verifier::Row(const SeqLabel& label, int layer, int64_t position,
                           uint64_t stream, const uint16_t* k,
                           const uint16_t* v) {
  const int64_t n = shape_.token_elems;
  FillToken(table_, TokenKey(stream, layer, position, false), n, k_.data());
  FillToken(table_, TokenKey(stream, layer, position, true), n, v_.data());
  ++counters.tokens_verified;
  const size_t bytes = static_cast<size_t>(n) * sizeof(uint16_t);
  if (std::memcmp(k, k_.data(), bytes) == 0 &&
      std::memcmp(v, v_.data(), bytes) == 0) {
    return absl::OkStatus();
  }
  const bool in_keys = std::memcmp(k, k_.data(), bytes) != 0;
  const uint16_t* got = in_keys ? k : v;
  const uint16_t* want = in_keys ? k_.data() : v_.data();
  int64_t e = 0;
  while (e < n && got[e] == want[e]) ++e;
  return absl::DataLossError(absl::StrFormat(
      "%s layer %d position %d: %s element %d (head %d, dim %d) holds bits "
      "0x%04x, the pattern is 0x%04x",
      Describe(label), layer, position, in_keys ? "key" : "value", e,
      e / shape_.head_dim, e % shape_.head_dim, got[e], want[e]));
}

absl::Status Verifier::Quantized(const SeqLabel& label, int layer,
                                 const BlockView& block, const Lineage& lineage,
                                 const float* k, const float* v) {
  const int64_t n = shape_.token_elems;
  double err = 0, ref = 0, worst = -1;
  int64_t worst_position = block.first_position;
  for (int t = 0; t < block.tokens; ++t) {
    const int64_t p = block.first_position + t;
    const uint64_t stream = lineage.StreamAt(p);
    double token_err = 0;
    for (int half = 0; half < 2; ++half) {
      const uint64_t key = TokenKey(stream, layer, p, half == 1);
      const float* got = (half == 0 ? k : v) + t * n;
      for (int64_t e = 0; e < n; ++e) {
        const double want = table_.value[PatternByte(key, e)];
        const double d = got[e] - want;
        token_err += d * d;
        ref += want * want;
      }
    }
    err += token_err;
    if (token_err > worst) {
      worst = token_err;
      worst_position = p;
    }
  }
  counters.tokens_verified += block.tokens;
  ++counters.quantized_blocks_verified;
  const double rel = ref > 0 ? err / ref : err;
  const double bound = block.format == BlockFormat::kInt4
                           ? shape_.quant_bound_int4
                           : shape_.quant_bound_int8;
  if (rel <= bound) return absl::OkStatus();
  return absl::DataLossError(absl::StrFormat(
      "%s layer %d position %d: the %s block holding positions [%d, %d) "
      "reads back with relative MSE %.3g, above the bound %.0e (position "
      "%d is its worst token)",
      Describe(label), layer, worst_position,
      tools::BlockFormatName(block.format, shape_.dtype), block.first_position,
      block.first_position + block.tokens, rel, bound, worst_position));
}

absl::Status Verifier::Positions(const SeqLabel& label, int layer,
                                 int64_t length,
                                 const std::vector<int64_t>& got) const {
  const int64_t count = static_cast<int64_t>(got.size());
  const int64_t sinks = shape_.policy == OverflowPolicy::kError
                            ? 0
                            : std::min(shape_.sink_tokens, length);
  int64_t window = length - sinks;
  const bool loose =
      shape_.policy == OverflowPolicy::kTruncate ||
      (shape_.policy != OverflowPolicy::kError && shape_.rollbacks);
  if (loose) {
    // Sinks, then any run of window tokens ending at the last position.
    window = count - sinks;
    if (count > shape_.max_seq_len || (length > sinks && window < 1)) {
      window = -1;
    }
  } else if (shape_.policy != OverflowPolicy::kError) {
    window = std::min(window, shape_.max_seq_len - sinks);
  }
  bool ok = window >= 0 && count == sinks + window;
  for (int64_t i = 0; ok && i < count; ++i) {
    const int64_t want = i < sinks ? i : length - window + (i - sinks);
    ok = got[static_cast<size_t>(i)] == want;
  }
  if (ok) return absl::OkStatus();
  return absl::DataLossError(absl::StrFormat(
      "%s layer %d: %d visible positions from %d to %d for length %d "
      "under policy %s (max_seq_len %d, sinks %d)",
      Describe(label), layer, count, got.empty() ? -1 : got.front(),
      got.empty() ? -1 : got.back(), length, OverflowPolicyName(shape_.policy),
      shape_.max_seq_len, shape_.sink_tokens));
}

absl::Status LengthMismatch(const SeqLabel& label, int layer, int64_t got,
                            int64_t want) {
  return absl::DataLossError(
      absl::StrFormat("%s layer %d: length %d, the workload wrote %d",
                      Describe(label), layer, got, want));
}

}  // namespace kvpage::stress
