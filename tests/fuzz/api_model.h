// tests/fuzz/api_model.h — the API fuzzer's model (api_fuzz.cc): what a
// program writes (token ids, their values), what the cache must hold
// (per sequence, layer and position: the keys and values, whether visible,
// whether read back lossy) and the overflow rules and status codes of the
// update rule, applied position by position. Independent of kvpage's own
// arithmetic: block tables appear only as counts of logical blocks.
//
// Thread safety: plain values and functions.
#ifndef KVPAGE_TESTS_FUZZ_API_MODEL_H_
#define KVPAGE_TESTS_FUZZ_API_MODEL_H_

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "allocator/convert.h"
#include "kvpage/kvpage.h"
#include "tests/fuzz/api_program.h"
#include "tests/policy_model.h"

namespace kvpage::fuzz {

inline constexpr int kMaxSequences = 8;
inline constexpr int64_t kMaxLength = 400;          // positions the model keeps
inline constexpr int64_t kMaxArenaBytes = 8 << 20;  // raw configs: not built

inline uint64_t Mix(uint64_t a, uint64_t b) {  // splitmix64 of a combination
  uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Equal, a NaN to any NaN.
inline bool Same(float a, float b) {
  return a == b || (std::isnan(a) && std::isnan(b));
}

// What a cache of `dtype` stores for x.
inline float RoundTo(DType dtype, float x) {
  uint32_t bytes = 0;
  float out = 0;
  internal::ConvertElements(&x, DType::kF32, &bytes, dtype, 1);
  internal::ConvertElements(&bytes, dtype, &out, DType::kF32, 1);
  return out;
}

// The token ids a sequence is (or will be) told: fixed ones, then a family's.
struct Script {
  std::vector<int32_t> fixed;
  int32_t family = 0;
  int32_t Id(int64_t p) const {
    return p < static_cast<int64_t>(fixed.size())
               ? fixed[static_cast<size_t>(p)]
               : family * 100003 + static_cast<int32_t>(p);
  }
  // Ids from `at` on become `new_family`'s.
  void Branch(int64_t at, int32_t new_family) {
    while (static_cast<int64_t>(fixed.size()) < at) {
      fixed.push_back(Id(static_cast<int64_t>(fixed.size())));
    }
    fixed.resize(static_cast<size_t>(at));
    family = new_family;
  }
  std::vector<int32_t> Ids(int64_t from, int64_t count) const {
    std::vector<int32_t> out;
    for (int64_t p = from; p < from + count; ++p) out.push_back(Id(p));
    return out;
  }
};

struct Pos {
  bool visible = true;
  bool lossy = false;    // has been read back from a compressed block
  bool foreign = false;  // written for other ids than the ones told since
  std::vector<float> k, v;
};

struct Layer {
  std::vector<Pos> pos;  // [0, length)
  int64_t max_length = 0;
  int64_t evicted = 0;
};

struct Seq {
  uint64_t salt = 0;
  Script script;
  int64_t told = 0;  // ids told (AppendTokens, MatchPrefix)
  std::vector<Layer> layers;
  std::vector<uint64_t> chain;  // running hash of salt and ids, per position

  void Rescript(const Script& s) {
    script = s;
    chain.clear();
  }
  uint64_t Chain(int64_t p) {
    while (static_cast<int64_t>(chain.size()) <= p) {
      const uint64_t prev =
          chain.empty() ? Mix(0x6b767061, salt) : chain.back();
      chain.push_back(Mix(prev, static_cast<uint32_t>(script.Id(
                                    static_cast<int64_t>(chain.size())))));
    }
    return chain[static_cast<size_t>(p)];
  }
};

struct Setup {
  CacheConfig config;
  bool opaque = false;
  int special_every = 0;  // 0: never
};

// The configuration of a program (api_program.h gives the layout); nullopt
// never (every input decodes to some configuration, maybe an invalid one).
std::optional<Setup> DecodeConfig(ByteSource& in);

using testing::LayerPolicies;
using testing::UpdateCall;

// The status the update rule gives `call` on sequence `s` (null: unknown),
// its checks in the documented order; kOk where only the pool can refuse.
absl::StatusCode PredictUpdate(const CacheConfig& c,
                               const std::vector<LayerPolicy>& policies,
                               const Seq* s, const UpdateCall& call);

// Visible positions of a layer.
int64_t VisibleCount(const Layer& l);

// Evicts the oldest visible non-sink positions as the policy says; returns
// how many.
int64_t Evict(const LayerPolicy& p, Layer& l);

// Logical blocks of `block_tokens` holding a visible position of [from, to).
int64_t BlocksWithVisible(const Layer& l, int64_t block_tokens, int64_t from,
                          int64_t to);

}  // namespace kvpage::fuzz

#endif  // KVPAGE_TESTS_FUZZ_API_MODEL_H_
