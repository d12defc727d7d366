// tools/generate/decoder.h — the forward pass of a llama2-family model in
// f32 (RMSNorm, rotary positions on adjacent channel pairs, grouped-query
// attention, SwiGLU, tied classifier) whose attention reads keys and values
// only from a KvStore.
//
// Usage:
//   PagedStore store(...);                  // or ContiguousStore
//   Decoder decoder(model, store, {});
//   StepInput in{.seq = seq, .tokens = prompt, .start = 0};
//   std::vector<std::vector<float>> logits;
//   absl::Status s = decoder.Forward({&in, 1}, logits);  // logits[0]: [vocab]
//
// Attention is one pass over the visible tokens, oldest first, with a running
// maximum and sum (online softmax) updated token by token: its result depends
// on the tokens and their order, never on how a store splits them into runs,
// so two stores holding the same keys and values give bit-identical logits.
//
// Thread safety: thread-compatible (scratch buffers are members).
#ifndef KVPAGE_TOOLS_GENERATE_DECODER_H_
#define KVPAGE_TOOLS_GENERATE_DECODER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "tools/generate/kv_store.h"
#include "tools/generate/model.h"

namespace kvpage::generate {

// The position a key and a query are rotated by.
enum class RopePositions : uint8_t {
  // The token's position in its sequence: keys are stored rotated, as most
  // engines store them. Past a window, a sink keeps its distance to the
  // query, however far that grows.
  kAbsolute,
  // The token's index among the visible tokens, oldest first (StreamingLLM):
  // keys are stored unrotated and rotated at every read, so sinks and window
  // stay within the distances the model was trained on.
  kVisibleIndex,
};

struct DecoderOptions {
  RopePositions rope = RopePositions::kAbsolute;
};

// One sequence's share of a step: `tokens` at positions [start, start + n).
struct StepInput {
  SeqHandle seq = 0;
  absl::Span<const int32_t> tokens;
  int64_t start = 0;
  bool all_logits = false;  // logits of every token, not only the last
};

class Decoder {
 public:
  Decoder(const Model& model, KvStore& store, DecoderOptions options);

  // Runs every input's tokens through the model, layer by layer across the
  // batch: each layer writes the tokens' keys and values into the store, then
  // each token attends over the store's visible positions up to its own.
  // logits[i] receives [all_logits ? n : 1][vocab] for input i.
  // InvalidArgument for a token id outside the vocabulary or an empty input;
  // the store's errors as they come (then the store may hold part of the
  // step: the caller truncates the sequence back).
  [[nodiscard]] absl::Status Forward(absl::Span<const StepInput> batch,
                                     std::vector<std::vector<float>>& logits);

  const Model& model() const { return model_; }

 private:
  absl::Status Attention(const StepInput& in, int layer, const float* q,
                         float* out);
  const float* Rotation(int64_t position);  // [head_dim / 2] (cos, sin) pairs

  const Model& model_;
  KvStore& store_;
  DecoderOptions options_;
  std::vector<float> rope_;  // Rotation() table, grown on demand
  std::vector<KvRun> runs_;
  // Per-input activations of the step being computed.
  std::vector<std::vector<float>> x_;
  std::vector<float> xb_, q_, k_, v_, out_, att_, h1_, h3_, key_;
  std::vector<float> max_, sum_, acc_;
};

}  // namespace kvpage::generate

#endif  // KVPAGE_TOOLS_GENERATE_DECODER_H_
