// tools/generate/model.h — a llama2.c checkpoint (version 0) in memory: its
// shape and its f32 weights, read and checked.
//
// Usage:
//   absl::StatusOr<Model> model =
//   LoadModel("models/stories260K/stories260K.bin"); if (!model.ok()) return
//   model.status(); const float* wq = model->Layer(0).wq;  // [dim][dim],
//   row-major [out][in]
//
// Thread safety: a loaded Model is immutable; share it freely.
#ifndef KVPAGE_TOOLS_GENERATE_MODEL_H_
#define KVPAGE_TOOLS_GENERATE_MODEL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvpage::generate {

// The header of a checkpoint, and what follows from it.
struct ModelShape {
  int dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0;
  int vocab_size = 0;           // always positive here
  bool tied_classifier = true;  // the file's vocab_size was positive
  int seq_len = 0;              // the trained context
  int head_dim() const { return dim / n_heads; }
  int kv_dim() const { return n_kv_heads * head_dim(); }
};

// The weights of one layer, pointers into Model::weights.
struct LayerWeights {
  const float* rms_att;  // [dim]
  const float* wq;       // [dim][dim]
  const float* wk;       // [kv_dim][dim]
  const float* wv;       // [kv_dim][dim]
  const float* wo;       // [dim][dim]
  const float* rms_ffn;  // [dim]
  const float* w1;       // [hidden][dim]
  const float* w2;       // [dim][hidden]
  const float* w3;       // [hidden][dim]
};

// Invariant: every pointer of layers_, embedding_, rms_final_ and classifier_
// points into weights_, at the offsets the file format gives.
class Model {
 public:
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  Model(Model&&) = default;
  Model& operator=(Model&&) = default;

  const ModelShape& shape() const { return shape_; }
  const LayerWeights& Layer(int layer) const { return layers_[layer]; }
  const float* embedding() const { return embedding_; }    // [vocab][dim]
  const float* rms_final() const { return rms_final_; }    // [dim]
  const float* classifier() const { return classifier_; }  // [vocab][dim]

 private:
  friend absl::StatusOr<Model> ParseModel(absl::Span<const char> bytes);
  Model() = default;
  ModelShape shape_;
  std::vector<float> weights_;
  std::vector<LayerWeights> layers_;
  const float* embedding_ = nullptr;
  const float* rms_final_ = nullptr;
  const float* classifier_ = nullptr;
};

// The largest dimension a header may declare (the shipped model's are at most
// 512); larger values are taken for a foreign file.
inline constexpr int kMaxModelDimension = 1 << 16;

// Reads a checkpoint from memory. InvalidArgument naming the field for a
// header whose dimensions are not positive, exceed kMaxModelDimension or do not
// fit together (dim divisible by n_heads, n_heads by n_kv_heads, an even
// head_dim), and for a size other than the header implies ("truncated", "has N
// bytes past ...").
[[nodiscard]] absl::StatusOr<Model> ParseModel(absl::Span<const char> bytes);

// Reads the checkpoint file at `path`: NotFound / PermissionDenied /
// InvalidArgument (not a regular file) naming the path, then ParseModel's
// errors, prefixed with the path.
[[nodiscard]] absl::StatusOr<Model> LoadModel(const std::string& path);

}  // namespace kvpage::generate

#endif  // KVPAGE_TOOLS_GENERATE_MODEL_H_
