// tests/fuzz/api_program.h — how the API fuzzer (api_fuzz.cc) reads its input
// as a program: a cache configuration, then operations, each field one byte
// taken modulo the number of its choices. Shared by the decoder and by
// make_api_seeds.cc, which writes programs (the seed corpus) with it.
//
// Layout (every item one byte; "k of n" means the byte modulo n):
//   config   raw (7 of 8 means raw: the numeric fields below are signed
//            bytes, unchecked, to exercise ValidateConfig), then layers - 1
//            (of 3), kv_heads - 1 (of 2), head_dim - 1 (of 8), dtype (of 3),
//            block_tokens - 1 (of 5), num_blocks - 1 (of 32), max_seq_len - 1
//            (of 40), overflow (of 4), sink_tokens (of 6), truncate_to (of
//            41), policies (of 3) and per policy: layer (of 3), overflow (of
//            4), max_seq_len - 1 (of 40), sink_tokens (of 6), truncate_to (of
//            41); compression (of 4: off, int8, int4, mixed) and when on:
//            group (of 8: the index of a divisor of head_dim), hot_tokens (of
//            12), quant_cells - 1 (of 16), flags (of 4: 1 auto_compress, 2
//            measure_error), for mixed max_rel_error / 0.001 - 1 (of 50);
//            storage (of 2: host arena, opaque); special (of 4: how often a
//            written value is NaN, an infinity, beyond f16 or subnormal:
//            never, 1 in 97, 1 in 13, 1 in 3)
//   ops      until the input ends (at most kMaxOps): an Op (of kOpCount),
//            then its fields, as api_fuzz.cc's Harness::Step reads them.
//            A sequence is picked by one byte (of 16): below 12, the live
//            sequence at that index modulo their count (ascending ids);
//            otherwise an id that does not exist.
//
// Thread safety: plain functions and values.
#ifndef KVPAGE_TESTS_FUZZ_API_PROGRAM_H_
#define KVPAGE_TESTS_FUZZ_API_PROGRAM_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace kvpage::fuzz {

inline constexpr int kMaxOps = 160;
inline constexpr int kSeqChoices = 16;  // below kLiveChoices: a live one
inline constexpr int kLiveChoices = 12;

enum class Op : uint8_t {
  kAddSequence,   // salt (of 3), family (of 6)
  kFork,          // seq
  kRemove,        // seq
  kDecode,        // seq, layer: one token after the layer's length
  kAppend,        // seq, layer, n - 1 (of 2 * block_tokens + 2)
  kStep,          // seq, n - 1 (of block_tokens + 1): every layer in order
  kRewrite,       // seq, layer, seq_len (of length + 4), n (of 3 * bt + 1)
  kBadUpdate,     // seq, layer, mistake (of 8)
  kTruncate,      // seq, seq_len + 1 (of longest + 3), branch (of 7: 6 is
                  // "keep", else the new family of the ids past seq_len)
  kAppendTokens,  // seq, count (of 2 * block_tokens + 2), family (of 7: 6
                  // tells the script's ids, else that family's from the
                  // ids told on, written or not: an engine that lies)
  kMatchPrefix,   // seq, source (of 3: own ids, another's, a family),
                  // which (another: seq; a family: of 6), tokens (of 48)
  kCompress,      // seq, layer (of layers + 1), fraction (of 8)
  kQuery,         // seq, layer (of layers + 2, minus 1)
  kOpCount,
};

// Reads choices from the input; past its end every choice is 0 and
// exhausted() is true.
class ByteSource {
 public:
  ByteSource(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  int Take(int choices) {
    if (pos_ >= size_) {
      exhausted_ = true;
      return 0;
    }
    return data_[pos_++] % choices;
  }
  int8_t Signed() {
    if (pos_ >= size_) {
      exhausted_ = true;
      return 0;
    }
    return static_cast<int8_t>(data_[pos_++]);
  }
  bool exhausted() const { return exhausted_ || pos_ >= size_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  bool exhausted_ = false;
};

// Writes choices: the inverse of ByteSource::Take.
class ProgramWriter {
 public:
  ProgramWriter& Put(int choice) {
    bytes_.push_back(static_cast<char>(static_cast<uint8_t>(choice)));
    return *this;
  }
  ProgramWriter& Op(fuzz::Op op) { return Put(static_cast<int>(op)); }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

}  // namespace kvpage::fuzz

#endif  // KVPAGE_TESTS_FUZZ_API_PROGRAM_H_
