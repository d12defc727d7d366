// tests/test_util.h — shared helpers of the kvpage test suites: data
// generators and EXPECT_VALID. A storage that is not host memory is in
// opaque_storage.h (included), the fingerprint of a cache's whole observable
// state in cache_fingerprint.h.
#ifndef KVPAGE_TESTS_TEST_UTIL_H_
#define KVPAGE_TESTS_TEST_UTIL_H_

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kvpage/kvpage.h"
#include "tests/opaque_storage.h"

namespace kvpage::testing {

// Token data that says where it belongs: element e of the token at position
// p is offset + p * step + e / 8. Exact in f32; in f16 and bf16 while the
// value needs no more bits than they have.
struct TokenPattern {
  int64_t elems = 0;  // elements of a token: num_kv_heads * head_dim
  float step = 1;     // from one position to the next
  float offset = 0;   // tells apart keys and values, or token families
};

// Tokens at positions [first, first + count), [count][elems].
inline std::vector<float> Tokens(int64_t first, int64_t count,
                                 const TokenPattern& pattern) {
  std::vector<float> out(static_cast<size_t>(count * pattern.elems));
  for (int64_t t = 0; t < count; ++t) {
    for (int64_t e = 0; e < pattern.elems; ++e) {
      out[static_cast<size_t>(t * pattern.elems + e)] =
          pattern.offset + static_cast<float>(first + t) * pattern.step +
          static_cast<float>(e) / 8.0f;
    }
  }
  return out;
}

// `count` draws of a standard normal, the same for the same seed.
inline std::vector<float> Gaussian(int64_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> out(static_cast<size_t>(count));
  for (float& x : out) x = normal(rng);
  return out;
}

// Values exactly representable in f16 and bf16 (quarters in [-64, 64): at
// most 8 significant bits), so that every dtype stores them unrounded.
inline std::vector<float> ExactValues(std::mt19937_64& rng, int64_t count) {
  std::uniform_int_distribution<int> dist(-255, 255);
  std::vector<float> out(static_cast<size_t>(count));
  for (float& x : out) x = static_cast<float>(dist(rng)) / 4.0f;
  return out;
}

// Success when `x.Validate()` (or `x->Validate()`: a cache, a pool, or a
// pointer to one) returns OK; else that Status.
template <typename T>
::testing::AssertionResult IsValid(const T& x) {
  absl::Status status;
  if constexpr (requires { x.Validate(); }) {
    status = x.Validate();
  } else {
    status = x->Validate();
  }
  if (status.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "Validate(): " << status;
}

}  // namespace kvpage::testing

// Every invariant of a cache or pool holds; on failure, the violation.
#define EXPECT_VALID(x) EXPECT_TRUE(::kvpage::testing::IsValid(x))
#define ASSERT_VALID(x) ASSERT_TRUE(::kvpage::testing::IsValid(x))

#endif  // KVPAGE_TESTS_TEST_UTIL_H_
