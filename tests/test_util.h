// tests/test_util.h — shared helpers of the kvpage test suites: a storage
// that is not host memory, data generators and a fingerprint of a cache's
// whole observable state.
#ifndef KVPAGE_TESTS_TEST_UTIL_H_
#define KVPAGE_TESTS_TEST_UTIL_H_

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "allocator/block_storage.h"
#include "kvpage/kvpage.h"

namespace kvpage::testing {

// Keeps its bytes in a vector but does not admit it: host_base() is null, so
// the cache must go through Write/Read/Copy, as with device memory.
class OpaqueStorage final : public internal::BlockStorage {
 public:
  OpaqueStorage(int64_t num_blocks, int64_t block_bytes)
      : BlockStorage(num_blocks, block_bytes),
        bytes_(static_cast<size_t>(num_blocks * block_bytes)) {}

  const void* Address(internal::BlockId id) const override {
    return bytes_.data() + id * block_bytes();
  }
  void Write(internal::BlockId id, int64_t offset, const void* src,
             int64_t bytes) override {
    ++writes;
    std::memcpy(bytes_.data() + id * block_bytes() + offset, src,
                static_cast<size_t>(bytes));
  }
  void Read(internal::BlockId id, int64_t offset, void* dst,
            int64_t bytes) const override {
    std::memcpy(dst, bytes_.data() + id * block_bytes() + offset,
                static_cast<size_t>(bytes));
  }
  void Copy(internal::BlockId from, internal::BlockId to) override {
    std::memcpy(bytes_.data() + to * block_bytes(),
                bytes_.data() + from * block_bytes(),
                static_cast<size_t>(block_bytes()));
  }

  int64_t writes = 0;

 private:
  std::vector<std::byte> bytes_;
};

// Values exactly representable in f16 and bf16 (quarters in [-64, 64): at
// most 8 significant bits), so that every dtype stores them unrounded.
inline std::vector<float> ExactValues(std::mt19937_64& rng, int64_t count) {
  std::uniform_int_distribution<int> dist(-255, 255);
  std::vector<float> out(static_cast<size_t>(count));
  for (float& x : out) x = static_cast<float>(dist(rng)) / 4.0f;
  return out;
}

// Everything a caller can observe: stats, and per sequence and layer the
// length, the gathered data and the view's block ids and slots.
inline std::string Fingerprint(const KVCache& cache) {
  const CacheStats s = cache.Stats();
  std::string out = absl::StrCat("stats ", s.blocks_used, " ", s.blocks_free,
                                 " ", s.tokens_stored, " ", s.sequences, " ",
                                 s.bytes_written, " ", s.bytes_copied, " ",
                                 s.evictions, " ", s.memory_usage_bytes, "\n");
  for (SeqId seq : cache.Sequences()) {
    for (int layer = 0; layer < cache.config().num_layers; ++layer) {
      absl::StrAppend(&out, "seq ", seq, " layer ", layer, " len ",
                      *cache.Length(seq, layer), ":");
      const GatheredLayer g = *cache.Gather(seq, layer);
      for (size_t i = 0; i < g.k.size(); ++i) {
        absl::StrAppend(&out, " ", g.k[i], "/", g.v[i]);
      }
      for (int64_t p : g.positions) absl::StrAppend(&out, " @", p);
      const LayerView view = *cache.View(seq, layer);
      for (const BlockView& b : view.blocks) {
        absl::StrAppend(&out, " #", b.block_id, ":", b.begin_slot, "+",
                        b.tokens);
      }
      out += "\n";
    }
  }
  return out;
}

}  // namespace kvpage::testing

#endif  // KVPAGE_TESTS_TEST_UTIL_H_
