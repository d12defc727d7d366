#include "tools/generate/model.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvpage::generate {
namespace {

constexpr int64_t kHeaderBytes = 7 * 4;

int32_t ReadInt32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return static_cast<int32_t>(v);
}

absl::Status CheckDimension(const char* name, int64_t value) {
  if (value <= 0 || value > kMaxModelDimension) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "header field %s is %d, not in [1, %d]: not a llama2.c checkpoint of "
        "version 0",
        name, value, kMaxModelDimension));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelShape> ParseHeader(absl::Span<const char> bytes) {
  if (static_cast<int64_t>(bytes.size()) < kHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("truncated: ", bytes.size(),
                     " bytes, shorter than the 28-byte header"));
  }
  int32_t f[7];
  for (int i = 0; i < 7; ++i) f[i] = ReadInt32(bytes.data() + 4 * i);
  ModelShape s;
  s.dim = f[0];
  s.hidden_dim = f[1];
  s.n_layers = f[2];
  s.n_heads = f[3];
  s.n_kv_heads = f[4];
  s.tied_classifier = f[5] > 0;
  const int64_t vocab = f[5] < 0 ? -int64_t{f[5]} : f[5];
  s.seq_len = f[6];
  const char* names[] = {"dim", "hidden_dim", "n_layers", "n_heads",
                         "n_kv_heads"};
  for (int i = 0; i < 5; ++i) {
    if (absl::Status st = CheckDimension(names[i], f[i]); !st.ok()) return st;
  }
  if (absl::Status st = CheckDimension("vocab_size", vocab); !st.ok())
    return st;
  if (absl::Status st = CheckDimension("seq_len", s.seq_len); !st.ok())
    return st;
  s.vocab_size = static_cast<int>(vocab);
  if (s.dim % s.n_heads != 0 || s.head_dim() % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "dim %d is not n_heads %d times an even head_dim", s.dim, s.n_heads));
  }
  if (s.n_heads % s.n_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("n_heads %d is not a multiple of n_kv_heads %d",
                        s.n_heads, s.n_kv_heads));
  }
  return s;
}

// Floats the file holds after the header, in the order they appear.
struct Layout {
  int64_t embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final,
      rope, classifier, total;
};

Layout LayoutOf(const ModelShape& s) {
  const int64_t d = s.dim, h = s.hidden_dim, l = s.n_layers, kv = s.kv_dim();
  Layout o{};
  int64_t at = 0;
  auto take = [&at](int64_t n) {
    const int64_t start = at;
    at += n;
    return start;
  };
  o.embedding = take(int64_t{s.vocab_size} * d);
  o.rms_att = take(l * d);
  o.wq = take(l * d * d);
  o.wk = take(l * kv * d);
  o.wv = take(l * kv * d);
  o.wo = take(l * d * d);
  o.rms_ffn = take(l * d);
  o.w1 = take(l * h * d);
  o.w2 = take(l * d * h);
  o.w3 = take(l * h * d);
  o.rms_final = take(d);
  o.rope = take(int64_t{s.seq_len} * s.head_dim());
  o.classifier =
      s.tied_classifier ? o.embedding : take(int64_t{s.vocab_size} * d);
  o.total = at;
  return o;
}

}  // namespace

absl::StatusOr<Model> ParseModel(absl::Span<const char> bytes) {
  absl::StatusOr<ModelShape> shape = ParseHeader(bytes);
  if (!shape.ok()) return shape.status();
  const Layout o = LayoutOf(*shape);
  const int64_t want = kHeaderBytes + 4 * o.total;
  const int64_t have = static_cast<int64_t>(bytes.size());
  if (have < want) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "truncated: %d bytes, the header (dim %d, %d layers, vocabulary %d) "
        "implies %d",
        have, shape->dim, shape->n_layers, shape->vocab_size, want));
  }
  if (have > want) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "has %d bytes past the %d its header (dim %d, %d layers, vocabulary "
        "%d) implies",
        have - want, want, shape->dim, shape->n_layers, shape->vocab_size));
  }
  Model m;
  m.shape_ = *shape;
  m.weights_.resize(static_cast<size_t>(o.total));
  // The file is little-endian f32, as this machine (x86-64, AArch64) is.
  std::memcpy(m.weights_.data(), bytes.data() + kHeaderBytes,
              static_cast<size_t>(4 * o.total));
  const float* w = m.weights_.data();
  const ModelShape& s = m.shape_;
  const int64_t d = s.dim, h = s.hidden_dim, kv = s.kv_dim();
  for (int64_t l = 0; l < s.n_layers; ++l) {
    m.layers_.push_back({.rms_att = w + o.rms_att + l * d,
                         .wq = w + o.wq + l * d * d,
                         .wk = w + o.wk + l * kv * d,
                         .wv = w + o.wv + l * kv * d,
                         .wo = w + o.wo + l * d * d,
                         .rms_ffn = w + o.rms_ffn + l * d,
                         .w1 = w + o.w1 + l * h * d,
                         .w2 = w + o.w2 + l * d * h,
                         .w3 = w + o.w3 + l * h * d});
  }
  m.embedding_ = w + o.embedding;
  m.rms_final_ = w + o.rms_final;
  m.classifier_ = w + o.classifier;
  return m;
}

absl::StatusOr<Model> LoadModel(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    const int err = errno;
    const std::string what = absl::StrCat(path, ": ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(what);
    if (err == EACCES) return absl::PermissionDeniedError(what);
    return absl::InvalidArgumentError(what);
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a regular file"));
  }
  // A checkpoint of the largest shape ParseModel accepts is far larger than
  // any real one; refuse files past 16 GiB before reading them.
  if (st.st_size > (int64_t{16} << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", st.st_size, " bytes, more than 16 GiB"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open"));
  }
  std::vector<char> bytes(static_cast<size_t>(st.st_size));
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (in.gcount() != static_cast<std::streamsize>(bytes.size())) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": short read"));
  }
  absl::StatusOr<Model> model = ParseModel(bytes);
  if (!model.ok()) {
    return absl::Status(model.status().code(),
                        absl::StrCat(path, ": ", model.status().message()));
  }
  return model;
}

}  // namespace kvpage::generate
