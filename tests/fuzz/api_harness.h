// tests/fuzz/api_harness.h — the whole public API under a structure-aware
// fuzzer. Each input is a program (tests/fuzz/api_program.h): a small cache
// configuration (every policy, per-layer overrides, compression
// off/int8/int4/mixed, tiny pools, host or opaque storage, sometimes raw and
// invalid), then up to kMaxOps operations (sequences added, forked and
// removed with salts; decode steps, prefill chunks, overwrites, rollbacks
// and deliberately bad updates; truncation; AppendTokens, sometimes lying
// about the ids, and MatchPrefix; compression; queries).
//
// Beside the cache runs a model of what was written (api_model.h): per
// sequence, layer and position, the keys and values and whether the
// position is visible (the overflow rules applied position by position),
// and the status each call must return. After every operation the harness
// checks:
//   - Validate(), and VerifySnapshot() of a snapshot taken with token data;
//   - the snapshot's encoding parses back to an equal snapshot;
//   - Stats() against the model (sequences, tokens stored, evictions, bytes
//     written, prefix hits and misses) and finite error statistics;
//   - for every sequence and layer: Length(), Gather()'s positions and
//     values, View()'s runs and Dequantize() of each block against Gather().
//     Hot positions read back exactly what was written (a NaN as a NaN); a
//     compressed block reads back within its format's bound of what it held,
//     and never holds a value the formats cannot represent;
//   - a refused call returned the status the model predicts and left Stats()
//     and the snapshot (token data included) exactly as they were; a
//     ResourceExhausted the model cannot predict (the pool) is accepted only
//     when free and idle cached blocks could not have given the update a
//     block for each block it writes into.
// Token values are a function of the token ids the sequence will be told
// (its "script") and its salt, so a block attached by MatchPrefix must hold
// what the matched ids' writer wrote, or one of the contents some sequence
// held under those ids after a compression or a lie about its ids.
//
// A failed check prints the operations so far and aborts: libFuzzer keeps
// the input. Built twice: with libFuzzer (clang, ASan + UBSan, coverage of
// the library) and as a replay of the seed corpus for every other build
// (api_replay.cc).
#ifndef KVPAGE_TESTS_FUZZ_API_HARNESS_H_
#define KVPAGE_TESTS_FUZZ_API_HARNESS_H_

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kvpage/kvpage.h"
#include "tests/fuzz/api_model.h"
#include "tests/fuzz/api_program.h"

namespace kvpage::fuzz {

// Runs one program on one cache: the operations (api_fuzz.cc) and the checks
// after each (api_checks.cc).
class Harness {
 public:
  Harness(ByteSource& in, const Setup& setup);
  // Creates the cache and runs the program's operations, checking after
  // each; aborts (printing the operations) on the first failed check.
  void Run();

 private:
  struct Observed {  // what a refused call must leave as it was
    CacheStats stats;
    Snapshot snapshot;
  };

  // ---- Failures ----
  template <typename... Args>
  void Expect(bool ok, const Args&... what) {
    if (ok) return;
    std::fprintf(stderr, "api_fuzz: config %s\n", DescribeConfig().c_str());
    for (const std::string& line : trace_) {
      std::fprintf(stderr, "  %s\n", line.c_str());
    }
    std::fprintf(stderr, "api_fuzz: op %d: %s\n", op_,
                 absl::StrCat(what...).c_str());
    std::abort();
  }
  void Trace(std::string line) { trace_.push_back(std::move(line)); }
  std::string DescribeConfig() const;

  // ---- Picking ----
  std::vector<SeqId> Live() const;
  SeqId PickSeq();
  Seq* Find(SeqId id);
  int64_t LengthOf(SeqId id, int layer);

  // ---- Values: a function of the script, the salt, the layer ----
  float Value(Seq& s, int layer, int64_t p, int half, int64_t e);
  // Keys or values of positions [from, from + n) as written (f32).
  std::vector<float> Values(Seq& s, int layer, int64_t from, int64_t n,
                            int half);
  Observed Observe();
  // A refused call: the predicted code, and nothing changed.
  void ExpectRefused(const absl::Status& s, absl::StatusCode want,
                     const Observed& before);

  // ---- Operations ----
  void Step();
  void AddSequence();
  void Fork();
  void Remove();
  // A well-formed update of [seq_len - n, seq_len).
  void Update(SeqId seq, int layer, int64_t seq_len, int64_t n,
              const char* what);
  void BadUpdate();
  void RunUpdate(const UpdateCall& call, const char* what);
  void Truncate();
  // Tells the next ids of the script; or, as an engine that lies (family <
  // 6), another family's ids from the told ones on. Then the positions
  // already written there hold values of other ids (foreign), and the blocks
  // holding them may be published under ids whose values they are not.
  void AppendTokens();
  void MatchPrefix();
  // The first `blocks` blocks of a layer just attached by MatchPrefix hold
  // what their ids' writer wrote (the model's values already), or one of the
  // contents a sequence held, lossy or foreign, in a block under those ids
  // and layer (RecordVersions), which the model then takes.
  void AdoptPublished(SeqId id, Seq& s, int layer, int64_t blocks);
  void Compress();
  void Query();

  // ---- Checks after every operation ----
  uint64_t BlockKey(Seq& s, int64_t p);
  void CheckAll();
  // Length, Gather, View and Dequantize of one layer against the model.
  void CheckLayer(SeqId id, Seq& seq, int layer);
  // Hot positions read back exactly what they hold: what was written, or
  // what a compression left, rounded to the cache's dtype when made hot again.
  void CheckHot(SeqId id, Seq& seq, int layer, const GatheredLayer& g,
                size_t first, int tokens);
  // A compressed block: it may hold only values the formats represent, and
  // reads back within its format's bound of them. Keys are grouped per
  // channel over the block's visible slots, values per token in groups of
  // `group` channels; the bound is half a step plus the f16 rounding of the
  // scales and minimums (and of a round trip through the hot dtype).
  void CheckCompressed(SeqId id, Seq& seq, int layer, const GatheredLayer& g,
                       size_t first, const BlockView& b, int group);
  // "seq S layer L position P", for messages.
  static std::string Where(SeqId id, int layer, int64_t p);
  // Keys then values of positions [from, from + n) of a gathered layer that
  // shows every position from 0 on.
  std::vector<float> Content(const GatheredLayer& g, int64_t from,
                             int64_t n) const;
  static bool SameContent(const std::vector<float>& a,
                          const std::vector<float>& b);
  // Keeps the content of every whole, visible block of the layer that holds
  // lossy or foreign values: what the prefix cache may have been given for
  // it under its ids.
  void RecordVersions(Seq& s, int layer);

  ByteSource& in_;
  const Setup setup_;
  const CacheConfig c_;
  const int64_t elems_;
  std::vector<LayerPolicy> policies_;
  std::unique_ptr<KVCache> cache_;
  std::map<SeqId, Seq> seqs_;
  SeqId last_id_ = 0;
  int64_t evictions_ = 0, bytes_written_ = 0, hits_ = 0, misses_ = 0;
  // By (block key, layer): the contents of blocks some sequence held with
  // lossy or foreign values under those ids (RecordVersions).
  std::map<std::pair<uint64_t, int>, std::vector<std::vector<float>>> versions_;
  std::vector<std::string> trace_;
  int op_ = -1;
};

// Runs one program: decodes its configuration, checks that Create refuses
// exactly what ValidateConfig refuses, and runs the operations.
void RunProgram(const uint8_t* data, size_t size);

}  // namespace kvpage::fuzz

#endif  // KVPAGE_TESTS_FUZZ_API_HARNESS_H_
