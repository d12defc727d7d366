#include "tools/generate/decoder.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_format.h"

namespace kvpage::generate {
namespace {

// Positions whose rotation Rotation() keeps in its table; past it, one is
// computed per call.
constexpr int64_t kRopeTablePositions = int64_t{1} << 18;

// out[i] = sum_j w[i][j] * x[j] for w [rows][cols]: eight partial sums in a
// fixed order, so the result is the same whatever the compiler vectorizes.
void MatVec(const float* w, const float* x, int rows, int cols, float* out) {
  for (int i = 0; i < rows; ++i) {
    const float* row = w + static_cast<int64_t>(i) * cols;
    float lane[8] = {};
    int j = 0;
    for (; j + 8 <= cols; j += 8) {
      for (int u = 0; u < 8; ++u) lane[u] += row[j + u] * x[j + u];
    }
    for (; j < cols; ++j) lane[0] += row[j] * x[j];
    out[i] = ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
             ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  }
}

void RmsNorm(const float* x, const float* weight, int n, float* out) {
  float ss = 0;
  for (int i = 0; i < n; ++i) ss += x[i] * x[i];
  ss = 1.0f / std::sqrt(ss / static_cast<float>(n) + 1e-5f);
  for (int i = 0; i < n; ++i) out[i] = weight[i] * (ss * x[i]);
}

// Rotates each adjacent pair (x[2i], x[2i + 1]) of every head of `x` ([heads]
// [head_dim]) by the angles of `rot` ((cos, sin) per pair).
void Rotate(float* x, int heads, int head_dim, const float* rot) {
  for (int h = 0; h < heads; ++h) {
    float* p = x + h * head_dim;
    for (int i = 0; i < head_dim; i += 2) {
      const float c = rot[i], s = rot[i + 1];
      const float a = p[i], b = p[i + 1];
      p[i] = a * c - b * s;
      p[i + 1] = a * s + b * c;
    }
  }
}

void FillRotation(int64_t position, int head_dim, float* rot) {
  for (int i = 0; i < head_dim; i += 2) {
    const float freq =
        1.0f / std::pow(10000.0f,
                        static_cast<float>(i) / static_cast<float>(head_dim));
    const float angle = static_cast<float>(position) * freq;
    rot[i] = std::cos(angle);
    rot[i + 1] = std::sin(angle);
  }
}

float Dot(const float* a, const float* b, int n) {
  float s = 0;
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

Decoder::Decoder(const Model& model, KvStore& store, DecoderOptions options)
    : model_(model), store_(store), options_(options) {}

const float* Decoder::Rotation(int64_t position) {
  const int hd = model_.shape().head_dim();
  if (position >= kRopeTablePositions) {
    key_.resize(static_cast<size_t>(model_.shape().kv_dim() + hd));
    float* rot = key_.data() + model_.shape().kv_dim();
    FillRotation(position, hd, rot);
    return rot;
  }
  const int64_t have = static_cast<int64_t>(rope_.size()) / hd;
  if (position >= have) {
    const int64_t want =
        std::min(kRopeTablePositions, std::max(position + 1, 2 * have));
    rope_.resize(static_cast<size_t>(want * hd));
    for (int64_t p = have; p < want; ++p) {
      FillRotation(p, hd, rope_.data() + p * hd);
    }
  }
  return rope_.data() + position * hd;
}

absl::Status Decoder::Attention(const StepInput& in, int layer, const float* q,
                                float* out) {
  const ModelShape& s = model_.shape();
  const int hd = s.head_dim(), heads = s.n_heads, kv_dim = s.kv_dim();
  const int group = s.n_heads / s.n_kv_heads;
  const int64_t n = static_cast<int64_t>(in.tokens.size());
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  if (absl::Status st = store_.Open(in.seq, layer, runs_); !st.ok()) return st;
  const bool by_index = options_.rope == RopePositions::kVisibleIndex;

  // Queries rotated now when positions are visible indices: a query sits
  // after the visible tokens older than it.
  att_.assign(q, q + n * s.dim);
  if (by_index) {
    for (int64_t t = 0; t < n; ++t) {
      int64_t older = 0;
      for (const KvRun& r : runs_) {
        older +=
            std::clamp<int64_t>(in.start + t - r.first_position, 0, r.tokens);
      }
      Rotate(att_.data() + t * s.dim, heads, hd, Rotation(older));
    }
  }
  const size_t states = static_cast<size_t>(n * heads);
  max_.assign(states, -std::numeric_limits<float>::infinity());
  sum_.assign(states, 0.0f);
  acc_.assign(states * static_cast<size_t>(hd), 0.0f);
  key_.resize(static_cast<size_t>(kv_dim + hd));

  const int64_t last = in.start + n - 1;
  int64_t index = 0;  // the visible index of the key being read
  for (size_t r = 0; r < runs_.size(); ++r) {
    const KvRun& run = runs_[r];
    if (run.first_position > last) break;
    absl::StatusOr<KvRunData> data = store_.Fetch(r);
    if (!data.ok()) return data.status();
    for (int64_t j = 0; j < run.tokens; ++j, ++index) {
      const int64_t pos = run.first_position + j;
      if (pos > last) break;
      const float* k = data->k + j * data->stride;
      const float* v = data->v + j * data->stride;
      if (by_index) {
        std::copy(k, k + kv_dim, key_.begin());
        Rotate(key_.data(), s.n_kv_heads, hd, Rotation(index));
        k = key_.data();
      }
      // Tokens of this input at or past `pos` see it.
      for (int64_t t = std::max<int64_t>(0, pos - in.start); t < n; ++t) {
        const float* qt = att_.data() + t * s.dim;
        for (int h = 0; h < heads; ++h) {
          const int g = h / group;
          const size_t st = static_cast<size_t>(t * heads + h);
          const float score = Dot(qt + h * hd, k + g * hd, hd) * scale;
          float* acc = acc_.data() + st * static_cast<size_t>(hd);
          if (score > max_[st]) {
            const float c = std::exp(max_[st] - score);
            sum_[st] *= c;
            for (int i = 0; i < hd; ++i) acc[i] *= c;
            max_[st] = score;
          }
          const float p = std::exp(score - max_[st]);
          sum_[st] += p;
          const float* vg = v + g * hd;
          for (int i = 0; i < hd; ++i) acc[i] += p * vg[i];
        }
      }
    }
  }
  for (size_t st = 0; st < states; ++st) {
    const float inv = sum_[st] > 0 ? 1.0f / sum_[st] : 0.0f;
    const float* acc = acc_.data() + st * static_cast<size_t>(hd);
    float* o = out + st * static_cast<size_t>(hd);
    for (int i = 0; i < hd; ++i) o[i] = acc[i] * inv;
  }
  return absl::OkStatus();
}

absl::Status Decoder::Forward(absl::Span<const StepInput> batch,
                              std::vector<std::vector<float>>& logits) {
  const ModelShape& s = model_.shape();
  const int dim = s.dim, kv_dim = s.kv_dim(), hd = s.head_dim();
  for (const StepInput& in : batch) {
    if (in.tokens.empty()) {
      return absl::InvalidArgumentError("a step input has no tokens");
    }
    for (int32_t id : in.tokens) {
      if (id < 0 || id >= s.vocab_size) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "token id %d is outside the vocabulary [0, %d)", id, s.vocab_size));
      }
    }
  }
  x_.resize(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    const StepInput& in = batch[i];
    x_[i].resize(in.tokens.size() * static_cast<size_t>(dim));
    for (size_t t = 0; t < in.tokens.size(); ++t) {
      const float* e = model_.embedding() + int64_t{in.tokens[t]} * dim;
      std::copy(e, e + dim, x_[i].begin() + static_cast<int64_t>(t) * dim);
    }
  }
  xb_.resize(static_cast<size_t>(std::max(dim, s.hidden_dim)));
  h1_.resize(static_cast<size_t>(s.hidden_dim));
  h3_.resize(static_cast<size_t>(s.hidden_dim));
  for (int layer = 0; layer < s.n_layers; ++layer) {
    const LayerWeights& w = model_.Layer(layer);
    for (size_t i = 0; i < batch.size(); ++i) {
      const StepInput& in = batch[i];
      const int64_t n = static_cast<int64_t>(in.tokens.size());
      float* x = x_[i].data();
      q_.resize(static_cast<size_t>(n * dim));
      k_.resize(static_cast<size_t>(n * kv_dim));
      v_.resize(static_cast<size_t>(n * kv_dim));
      for (int64_t t = 0; t < n; ++t) {
        RmsNorm(x + t * dim, w.rms_att, dim, xb_.data());
        MatVec(w.wq, xb_.data(), dim, dim, q_.data() + t * dim);
        MatVec(w.wk, xb_.data(), kv_dim, dim, k_.data() + t * kv_dim);
        MatVec(w.wv, xb_.data(), kv_dim, dim, v_.data() + t * kv_dim);
        if (options_.rope == RopePositions::kAbsolute) {
          const float* rot = Rotation(in.start + t);
          Rotate(q_.data() + t * dim, s.n_heads, hd, rot);
          Rotate(k_.data() + t * kv_dim, s.n_kv_heads, hd, rot);
        }
      }
      if (absl::Status st = store_.Write(in.seq, layer, k_.data(), v_.data(), n,
                                         in.start + n);
          !st.ok()) {
        return st;
      }
      out_.resize(static_cast<size_t>(n * dim));
      if (absl::Status st = Attention(in, layer, q_.data(), out_.data());
          !st.ok()) {
        return st;
      }
      for (int64_t t = 0; t < n; ++t) {
        float* xt = x + t * dim;
        MatVec(w.wo, out_.data() + t * dim, dim, dim, xb_.data());
        for (int d = 0; d < dim; ++d) xt[d] += xb_[static_cast<size_t>(d)];
        RmsNorm(xt, w.rms_ffn, dim, xb_.data());
        MatVec(w.w1, xb_.data(), s.hidden_dim, dim, h1_.data());
        MatVec(w.w3, xb_.data(), s.hidden_dim, dim, h3_.data());
        for (int j = 0; j < s.hidden_dim; ++j) {
          const float a = h1_[static_cast<size_t>(j)];
          h1_[static_cast<size_t>(j)] =
              a / (1.0f + std::exp(-a)) * h3_[static_cast<size_t>(j)];
        }
        MatVec(w.w2, h1_.data(), dim, s.hidden_dim, xb_.data());
        for (int d = 0; d < dim; ++d) xt[d] += xb_[static_cast<size_t>(d)];
      }
    }
  }
  logits.resize(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    const StepInput& in = batch[i];
    const int64_t n = static_cast<int64_t>(in.tokens.size());
    const int64_t first = in.all_logits ? 0 : n - 1;
    logits[i].resize(static_cast<size_t>((n - first) * s.vocab_size));
    for (int64_t t = first; t < n; ++t) {
      RmsNorm(x_[i].data() + t * dim, model_.rms_final(), dim, xb_.data());
      MatVec(model_.classifier(), xb_.data(), s.vocab_size, dim,
             logits[i].data() + (t - first) * s.vocab_size);
    }
  }
  return absl::OkStatus();
}

}  // namespace kvpage::generate
