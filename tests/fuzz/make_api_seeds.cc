// Writes the API fuzzer's seed corpus into the directory named by argv[1]:
// a program reaching each defect issue 15 found (each one a regression
// test: tests/fuzz/CMakeLists.txt replays them in every build), a tour of
// the API under every overflow policy and compression mode, non-finite
// values, opaque storage, and raw (mostly invalid) configurations. The
// programs are written with the layout of api_program.h.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/fuzz/api_program.h"

namespace kvpage::fuzz {
namespace {

// A configuration, as DecodeConfig reads it (not raw).
struct Spec {
  int layers = 1, heads = 1, head_dim = 4, dtype = 0, block_tokens = 4;
  int blocks = 16, max_seq_len = 40, overflow = 0, sinks = 0, truncate_to = 0;
  struct Policy {
    int layer, overflow, max_seq_len, sinks, truncate_to;
  };
  std::vector<Policy> policies;
  int compression = 0;  // 0 off, 1 int8, 2 int4, 3 mixed
  int group = 0;        // index of a divisor of head_dim
  int hot_tokens = 0, quant_cells = 8, flags = 0, rel = 10;
  int storage = 0, special = 0;
};

// Writes a program: its config, then operations, as api_fuzz.cc reads them.
class Program {
 public:
  explicit Program(const Spec& s) {
    w_.Put(0);  // not raw
    w_.Put(s.layers - 1).Put(s.heads - 1).Put(s.head_dim - 1).Put(s.dtype);
    w_.Put(s.block_tokens - 1).Put(s.blocks - 1).Put(s.max_seq_len - 1);
    w_.Put(s.overflow).Put(s.sinks).Put(s.truncate_to);
    w_.Put(static_cast<int>(s.policies.size()));
    for (const Spec::Policy& p : s.policies) {
      w_.Put(p.layer).Put(p.overflow).Put(p.max_seq_len - 1).Put(p.sinks);
      w_.Put(p.truncate_to);
    }
    w_.Put(s.compression);
    if (s.compression != 0) {
      w_.Put(s.group).Put(s.hot_tokens).Put(s.quant_cells - 1).Put(s.flags);
      if (s.compression == 3) w_.Put(s.rel - 1);
    }
    w_.Put(s.storage).Put(s.special);
  }
  // `seq` is an index into the live sequences (ascending ids).
  Program& Add(int salt = 0, int family = 0) {
    w_.Op(Op::kAddSequence).Put(salt).Put(family);
    return *this;
  }
  Program& Fork(int seq) { return Seq(Op::kFork, seq); }
  Program& Remove(int seq) { return Seq(Op::kRemove, seq); }
  Program& Decode(int seq, int layer) {
    Seq(Op::kDecode, seq).w_.Put(layer);
    return *this;
  }
  Program& Append(int seq, int layer, int n) {
    Seq(Op::kAppend, seq).w_.Put(layer).Put(n - 1);
    return *this;
  }
  Program& Step(int seq, int n) {
    Seq(Op::kStep, seq).w_.Put(n - 1);
    return *this;
  }
  Program& Rewrite(int seq, int layer, int seq_len, int n) {
    Seq(Op::kRewrite, seq).w_.Put(layer).Put(seq_len).Put(n);
    return *this;
  }
  Program& Bad(int seq, int layer, int mistake) {
    Seq(Op::kBadUpdate, seq).w_.Put(layer).Put(mistake);
    return *this;
  }
  Program& Truncate(int seq, int to, int family = 6) {
    Seq(Op::kTruncate, seq).w_.Put(to + 1).Put(family);
    return *this;
  }
  Program& Tokens(int seq, int count, int family = 6) {
    Seq(Op::kAppendTokens, seq).w_.Put(count).Put(family);
    return *this;
  }
  Program& MatchOwn(int seq, int count) {
    Seq(Op::kMatchPrefix, seq).w_.Put(0).Put(count);
    return *this;
  }
  Program& MatchOther(int seq, int other, int count) {
    Seq(Op::kMatchPrefix, seq).w_.Put(1).Put(other).Put(count);
    return *this;
  }
  Program& MatchFamily(int seq, int family, int count) {
    Seq(Op::kMatchPrefix, seq).w_.Put(2).Put(family).Put(count);
    return *this;
  }
  // fraction: index into {0, .25, .5, .75, 1, -.5, 1.5, NaN}
  Program& Compress(int seq, int layer, int fraction) {
    Seq(Op::kCompress, seq).w_.Put(layer).Put(fraction);
    return *this;
  }
  Program& Query(int seq, int layer_plus_one) {
    Seq(Op::kQuery, seq).w_.Put(layer_plus_one);
    return *this;
  }
  const std::string& bytes() const { return w_.bytes(); }

 private:
  Program& Seq(fuzz::Op op, int seq) {
    w_.Op(op).Put(seq);
    return *this;
  }
  ProgramWriter w_;
};

std::vector<std::pair<std::string, std::string>> Seeds() {
  std::vector<std::pair<std::string, std::string>> out;
  auto add = [&](std::string name, const Program& p) {
    out.emplace_back(std::move(name), p.bytes());
  };
  // Defect 1: a layer published into an entry idle in its other layers.
  add("defect1_idle_count", Program({.layers = 2, .blocks = 3})
                                .Add()
                                .Tokens(0, 4)
                                .Append(0, 0, 4)
                                .Remove(0)
                                .Add()
                                .Tokens(0, 4)
                                .Append(0, 1, 4)
                                .Remove(0)
                                .Add(0, 1)
                                .Append(0, 0, 8)
                                .Append(0, 0, 4));
  // Defect 2: a block shared by a fork, told other ids by the parent.
  add("defect2_empty_entry", Program({.layers = 2})
                                 .Add()
                                 .Append(0, 0, 4)
                                 .Append(0, 1, 4)
                                 .Fork(0)
                                 .Tokens(1, 4)
                                 .Tokens(0, 4, /*family=*/1)
                                 .Remove(1)
                                 .Remove(0));
  // Defect 3: a prefix matched into a ring emptied by Truncate.
  add("defect3_ring_match", Program({.max_seq_len = 8, .overflow = 3})
                                .Add()
                                .Tokens(0, 8)
                                .Append(0, 0, 8)
                                .Add(0, 1)
                                .Append(1, 0, 9)
                                .Truncate(1, 0)
                                .MatchOther(1, 0, 8)
                                .Append(1, 0, 5));
  // Defect 4: int8 with an odd head_dim (group 3: divisor index 1 of 3).
  add("defect4_int8_odd_head_dim", Program({.heads = 2,
                                            .head_dim = 3,
                                            .dtype = 1,
                                            .compression = 1,
                                            .group = 1,
                                            .hot_tokens = 4,
                                            .quant_cells = 16,
                                            .flags = 2})
                                       .Add()
                                       .Append(0, 0, 10)
                                       .Append(0, 0, 6)
                                       .Compress(0, 0, 0)
                                       .Rewrite(0, 0, 3, 3));
  // Defect 5: a quantized cell larger than a hot block.
  add("defect5_small_block_snapshot",
      Program({.head_dim = 2, .block_tokens = 1, .compression = 1})
          .Add()
          .Append(0, 0, 4)
          .Compress(0, 0, 0));
  // Non-finite values: one in three; auto-compress, mixed formats.
  for (int compression : {1, 3}) {
    add("nonfinite_" + std::to_string(compression),
        Program({.layers = 2,
                 .dtype = 2,
                 .blocks = 12,
                 .compression = compression,
                 .hot_tokens = 2,
                 .flags = 3,
                 .special = 3})
            .Add()
            .Append(0, 0, 10)
            .Append(0, 1, 10)
            .Step(0, 4)
            .Compress(0, 0, 0)
            .Compress(0, 1, 0)
            .Add()
            .Step(1, 5)
            .Step(1, 5));
  }
  // A tour of the API under every policy and compression mode, on a pool
  // small enough to run out, with a layer of its own policy.
  for (int overflow = 0; overflow < 4; ++overflow) {
    for (int compression = 0; compression < 4; ++compression) {
      Spec spec{.layers = 2,
                .heads = 2,
                .head_dim = 4,
                .dtype = compression % 3,
                .block_tokens = 3,
                .blocks = 14,
                .max_seq_len = 12,
                .overflow = overflow,
                .sinks = overflow == 0 ? 0 : 2,
                .compression = compression,
                .hot_tokens = 3,
                .quant_cells = 10,
                .flags = compression == 1 ? 3 : 1,
                .storage = overflow % 2};
      spec.policies = {{.layer = 1,
                        .overflow = 2,
                        .max_seq_len = 7,
                        .sinks = 1,
                        .truncate_to = 0}};
      Program p(spec);
      p.Add(1, 0).Tokens(0, 6).Step(0, 4).Step(0, 4).Step(0, 4);
      p.Decode(0, 0).Decode(0, 1).Compress(0, 0, 1).Fork(0);
      p.Rewrite(1, 0, 10, 3).Decode(1, 0).Add(1, 0).MatchOther(2, 0, 12);
      p.Step(2, 2).Truncate(0, 5, 2).Step(0, 3).Tokens(0, 6);
      p.Add(0, 3).Append(3, 0, 8).Append(3, 1, 8).Compress(3, 0, 0);
      for (int mistake = 0; mistake < 8; ++mistake) p.Bad(1, 0, mistake);
      p.Query(0, 0).Query(1, 1).Query(13, 2).Remove(13).Compress(13, 0, 7);
      p.Compress(0, 2, 0).Compress(0, 0, 5).Remove(1).Remove(0).Step(0, 4);
      p.Add(1, 0).MatchOwn(2, 20).Step(2, 1).Truncate(2, 0).Remove(0);
      add("tour_policy" + std::to_string(overflow) + "_compression" +
              std::to_string(compression),
          p);
    }
  }
  // Raw configurations: a valid one and some invalid ones.
  auto raw = [&](std::string name, std::vector<int> fields) {
    ProgramWriter w;
    w.Put(7);
    for (int f : fields) w.Put(f);
    out.emplace_back(std::move(name), w.bytes());
  };
  // layers heads dim dtype bt blocks max overflow sinks truncate policies
  // enabled bits group hot slots rel auto
  raw("raw_valid", {2, 1, 4, 1, 4, 8, 16, 2, 1, 0, 0, 1, 8, 4, 4, 8, 0, 1});
  raw("raw_bad_dtype", {1, 1, 4, 9, 4, 8, 16, 0, 0, 0, 0, 0});
  raw("raw_negative", {1, 255, 4, 1, 4, 8, 16, 0, 0, 0, 0, 0});
  raw("raw_int4_odd", {1, 1, 3, 1, 4, 8, 16, 0, 0, 0, 0, 1, 4, 3, 4, 8, 0, 0});
  raw("raw_nan_error", {1, 1, 4, 1, 4, 8, 16, 0, 0, 0, 0, 1, 8, 4, 4, 8, 128});
  return out;
}

}  // namespace
}  // namespace kvpage::fuzz

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_api_seeds DIR\n");
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    std::fprintf(stderr, "%s: %s\n", dir.c_str(), error.message().c_str());
    return 1;
  }
  for (const auto& [name, bytes] : kvpage::fuzz::Seeds()) {
    std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) {
      std::fprintf(stderr, "%s: cannot write\n", (dir / name).c_str());
      return 1;
    }
  }
  return 0;
}
