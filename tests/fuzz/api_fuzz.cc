// The whole public API under a structure-aware fuzzer. Each input is a
// program (tests/fuzz/api_program.h): a small cache configuration (every
// policy, per-layer overrides, compression off/int8/int4/mixed, tiny pools,
// host or opaque storage, sometimes raw and invalid), then up to kMaxOps
// operations (sequences added, forked and removed with salts; decode steps,
// prefill chunks, overwrites, rollbacks and deliberately bad updates;
// truncation; AppendTokens and MatchPrefix; compression; queries).
//
// Beside the cache runs a model of what was written: per sequence, layer and
// position, the keys and values and whether the position is visible (the
// overflow rules applied position by position), and the status each call
// must return. After every operation the harness checks:
//   - Validate(), and VerifySnapshot() of a snapshot taken with token data;
//   - the snapshot's encoding parses back to an equal snapshot;
//   - Stats() against the model (sequences, tokens stored, evictions, bytes
//     written, prefix hits and misses) and finite error statistics;
//   - for every sequence and layer: Length(), Gather()'s positions and
//     values, View()'s runs and Dequantize() of each block against Gather().
//     Hot positions read back exactly what was written (a NaN as a NaN); a
//     repacked block reads back within its format's bound of what it held,
//     and never holds a value the formats cannot represent;
//   - a refused call returned the status the model predicts and left Stats()
//     and the snapshot (token data included) exactly as they were; a
//     ResourceExhausted the model cannot predict (the pool) is accepted only
//     when free and idle cached blocks could not have served the update.
// Token values are a function of the token ids the sequence will be told
// (its "script") and its salt, so a block attached by MatchPrefix must hold
// exactly what the matched ids' writer wrote (unless a repack made it lossy).
//
// A failed check prints the operations so far and aborts: libFuzzer keeps
// the input. Built twice: with libFuzzer (clang, ASan + UBSan, coverage of
// the library) and as a replay of the seed corpus for every other build
// (api_replay.cc).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "allocator/convert.h"
#include "cache/kv_cache_internal.h"
#include "kvpage/kvpage.h"
#include "tests/fuzz/api_program.h"
#include "tests/test_util.h"

namespace kvpage::fuzz {
namespace {

constexpr int kMaxSequences = 8;
constexpr int64_t kMaxLength = 400;          // positions the model keeps
constexpr int64_t kMaxArenaBytes = 8 << 20;  // raw configs above: not built

uint64_t Mix(uint64_t a, uint64_t b) {  // splitmix64 of a combination
  uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

bool Same(float a, float b) {
  return a == b || (std::isnan(a) && std::isnan(b));
}

float RoundTo(DType dtype, float x) {
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
  bool lossy = false;    // has been read back from a repacked block
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

std::optional<Setup> DecodeConfig(ByteSource& in) {
  Setup s;
  CacheConfig& c = s.config;
  if (in.Take(8) == 7) {  // raw: whatever the bytes say
    c.num_layers = in.Signed();
    c.num_kv_heads = in.Signed();
    c.head_dim = in.Signed();
    c.dtype = static_cast<DType>(in.Take(256));
    c.block_tokens = in.Signed();
    c.num_blocks = in.Signed();
    c.max_seq_len = in.Signed();
    c.overflow = static_cast<OverflowPolicy>(in.Take(256));
    c.sink_tokens = in.Signed();
    c.truncate_to = in.Signed();
    const int policies = in.Take(3);
    for (int i = 0; i < policies; ++i) {
      c.layer_policies.push_back(
          {.layer = in.Signed(),
           .overflow = static_cast<OverflowPolicy>(in.Take(256)),
           .max_seq_len = in.Signed(),
           .sink_tokens = in.Signed(),
           .truncate_to = in.Signed()});
    }
    CompressionConfig& q = c.compression;
    q.enabled = in.Take(2) == 1;
    q.bits = static_cast<QuantBits>(in.Take(256));
    q.group_size = in.Signed();
    q.hot_tokens = in.Signed();
    q.quant_blocks = in.Signed();
    const int8_t rel = in.Signed();
    q.max_rel_error =
        rel == -128 ? std::nan("") : static_cast<double>(rel) / 100.0;
    q.auto_compress = in.Take(2) == 1;
    s.special_every = 13;
    return s;
  }
  c.num_layers = 1 + in.Take(3);
  c.num_kv_heads = 1 + in.Take(2);
  c.head_dim = 1 + in.Take(8);
  c.dtype = static_cast<DType>(in.Take(3));
  c.block_tokens = 1 + in.Take(5);
  c.num_blocks = 1 + in.Take(32);
  c.max_seq_len = 1 + in.Take(40);
  c.overflow = static_cast<OverflowPolicy>(in.Take(4));
  c.sink_tokens = in.Take(6);
  c.truncate_to = in.Take(41);
  const int policies = in.Take(3);
  for (int i = 0; i < policies; ++i) {
    c.layer_policies.push_back(
        {.layer = in.Take(3),
         .overflow = static_cast<OverflowPolicy>(in.Take(4)),
         .max_seq_len = 1 + in.Take(40),
         .sink_tokens = in.Take(6),
         .truncate_to = in.Take(41)});
  }
  const int compression = in.Take(4);
  if (compression != 0) {
    CompressionConfig& q = c.compression;
    q.enabled = true;
    q.bits = compression == 2 ? QuantBits::kInt4 : QuantBits::kInt8;
    std::vector<int> divisors;
    for (int d = 1; d <= c.head_dim; ++d) {
      if (c.head_dim % d == 0) divisors.push_back(d);
    }
    q.group_size = divisors[static_cast<size_t>(in.Take(8)) % divisors.size()];
    q.hot_tokens = in.Take(12);
    q.quant_blocks = 1 + in.Take(16);
    const int flags = in.Take(4);
    q.auto_compress = (flags & 1) != 0;
    q.measure_error = (flags & 2) != 0;
    if (compression == 3) q.max_rel_error = 0.001 * (1 + in.Take(50));
  }
  s.opaque = in.Take(2) == 1;
  static constexpr int kEvery[] = {0, 97, 13, 3};
  s.special_every = kEvery[in.Take(4)];
  return s;
}

class Harness {
 public:
  Harness(ByteSource& in, const Setup& setup)
      : in_(in),
        setup_(setup),
        c_(setup.config),
        elems_(int64_t{c_.num_kv_heads} * c_.head_dim) {
    policies_.assign(static_cast<size_t>(c_.num_layers),
                     {.overflow = c_.overflow,
                      .max_seq_len = c_.max_seq_len,
                      .sink_tokens = c_.sink_tokens,
                      .truncate_to = c_.truncate_to});
    for (const LayerPolicy& p : c_.layer_policies) {
      policies_[static_cast<size_t>(p.layer)] = p;
    }
  }

  void Run() {
    absl::StatusOr<std::unique_ptr<KVCache>> created =
        setup_.opaque ? internal::KVCacheAccess::CreateWithStorage(
                            c_, std::make_unique<testing::OpaqueStorage>(
                                    c_.num_blocks, BlockBytes(c_)))
                      : KVCache::Create(c_);
    Expect(created.ok(), "Create: ", created.status().ToString());
    cache_ = *std::move(created);
    for (int op = 0; op < kMaxOps && !in_.exhausted(); ++op) {
      op_ = op;
      Step();
      CheckAll();
    }
    if (std::getenv("KVPAGE_FUZZ_TRACE") != nullptr) {  // what a program did
      std::fprintf(stderr, "config %s\n", DescribeConfig().c_str());
      for (const std::string& line : trace_) {
        std::fprintf(stderr, "  %s\n", line.c_str());
      }
      const CacheStats s = cache_->Stats();
      std::fprintf(stderr,
                   "  stats: %lld hits, %lld misses, %lld entries, %lld "
                   "repacked, %lld skipped, %lld evictions, %lld copied\n",
                   static_cast<long long>(s.hits),
                   static_cast<long long>(s.misses),
                   static_cast<long long>(s.prefix_entries),
                   static_cast<long long>(s.compressions_applied),
                   static_cast<long long>(s.compressions_skipped),
                   static_cast<long long>(s.evictions),
                   static_cast<long long>(s.bytes_copied));
    }
  }

 private:
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
  std::string DescribeConfig() const {
    std::string out = absl::StrFormat(
        "layers %d heads %d dim %d %s bt %d blocks %d max %d %s sinks %d "
        "truncate_to %d",
        c_.num_layers, c_.num_kv_heads, c_.head_dim, DTypeName(c_.dtype),
        c_.block_tokens, c_.num_blocks, c_.max_seq_len,
        OverflowPolicyName(c_.overflow), c_.sink_tokens, c_.truncate_to);
    for (const LayerPolicy& p : c_.layer_policies) {
      absl::StrAppendFormat(&out, "; layer %d: %s max %d sinks %d to %d",
                            p.layer, OverflowPolicyName(p.overflow),
                            p.max_seq_len, p.sink_tokens, p.truncate_to);
    }
    const CompressionConfig& q = c_.compression;
    if (q.enabled) {
      absl::StrAppendFormat(
          &out, "; compression int%d group %d hot %d slots %d auto %d rel %g",
          static_cast<int>(q.bits), q.group_size, q.hot_tokens, q.quant_blocks,
          q.auto_compress, q.max_rel_error);
    }
    absl::StrAppendFormat(&out, "; %s storage; special 1/%d",
                          setup_.opaque ? "opaque" : "host",
                          setup_.special_every);
    return out;
  }
  void Trace(std::string line) { trace_.push_back(std::move(line)); }

  // ---- Picking ----
  std::vector<SeqId> Live() const {
    std::vector<SeqId> ids;
    for (const auto& [id, s] : seqs_) ids.push_back(id);
    return ids;
  }
  SeqId PickSeq() {
    const int b = in_.Take(kSeqChoices);
    const std::vector<SeqId> live = Live();
    if (b < kLiveChoices && !live.empty()) {
      return live[static_cast<size_t>(b) % live.size()];
    }
    return 1'000'000 + static_cast<SeqId>(b);
  }
  Seq* Find(SeqId id) {
    auto it = seqs_.find(id);
    return it == seqs_.end() ? nullptr : &it->second;
  }
  int64_t LengthOf(SeqId id, int layer) {
    Seq* s = Find(id);
    if (s == nullptr || layer < 0 || layer >= c_.num_layers) return 0;
    return static_cast<int64_t>(
        s->layers[static_cast<size_t>(layer)].pos.size());
  }

  // ---- Values: a function of the script, the salt, the layer ----
  float Value(Seq& s, int layer, int64_t p, int half, int64_t e) {
    const uint64_t x =
        Mix(Mix(s.Chain(p), static_cast<uint64_t>(layer * 2 + half)),
            static_cast<uint64_t>(e));
    if (setup_.special_every > 0 &&
        (x >> 40) % static_cast<uint64_t>(setup_.special_every) == 0) {
      static constexpr float kSpecial[] = {
          std::numeric_limits<float>::quiet_NaN(),
          std::numeric_limits<float>::infinity(),
          -std::numeric_limits<float>::infinity(),
          1e6f,
          -70000.0f,
          1e-40f,
          -0.0f};
      return kSpecial[(x >> 50) % 7];
    }
    return static_cast<float>(static_cast<int>((x >> 8) % 511) - 255) / 4.0f;
  }
  // Keys or values of positions [from, from + n) as written (f32).
  std::vector<float> Values(Seq& s, int layer, int64_t from, int64_t n,
                            int half) {
    std::vector<float> out(static_cast<size_t>(n * elems_));
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t e = 0; e < elems_; ++e) {
        out[static_cast<size_t>(t * elems_ + e)] =
            Value(s, layer, from + t, half, e);
      }
    }
    return out;
  }

  // ---- The model's overflow rules ----
  int64_t Sinks(const LayerPolicy& p) const {
    return p.overflow == OverflowPolicy::kError ? 0 : p.sink_tokens;
  }
  static int64_t VisibleCount(const Layer& l) {
    return std::count_if(l.pos.begin(), l.pos.end(),
                         [](const Pos& p) { return p.visible; });
  }
  // Evicts the oldest visible non-sink positions as the policy says.
  int64_t Evict(const LayerPolicy& p, Layer& l) const {
    const int64_t visible = VisibleCount(l);
    if (p.overflow == OverflowPolicy::kError || visible <= p.max_seq_len) {
      return 0;
    }
    const int64_t keep = p.overflow == OverflowPolicy::kTruncate
                             ? EffectiveTruncateTo(p.max_seq_len, p.truncate_to)
                             : p.max_seq_len;
    int64_t evicted = 0;
    for (size_t i = static_cast<size_t>(Sinks(p));
         i < l.pos.size() && visible - evicted > keep; ++i) {
      if (l.pos[i].visible) {
        l.pos[i] = Pos{.visible = false};
        ++evicted;
      }
    }
    return evicted;
  }
  // Logical blocks holding a position of [from, to) that is visible: an
  // update takes at most one block from the pool for each it writes into
  // (a new block, a copy-on-write or a repacked block made hot).
  int64_t WrittenBlocks(const Layer& l, int64_t from, int64_t to) const {
    std::set<int64_t> blocks;
    for (int64_t p = from; p < to; ++p) {
      if (l.pos[static_cast<size_t>(p)].visible) {
        blocks.insert(p / c_.block_tokens);
      }
    }
    return static_cast<int64_t>(blocks.size());
  }
  int64_t HeldBlocks(const Layer& l) const {
    std::set<int64_t> held;
    for (size_t p = 0; p < l.pos.size(); ++p) {
      if (l.pos[p].visible)
        held.insert(static_cast<int64_t>(p) / c_.block_tokens);
    }
    return static_cast<int64_t>(held.size());
  }

  // ---- Observing the cache ----
  struct Observed {
    CacheStats stats;
    Snapshot snapshot;
  };
  Observed Observe() {
    absl::StatusOr<Snapshot> snap =
        cache_->TakeSnapshot({.include_token_data = true});
    Expect(snap.ok(), "TakeSnapshot: ", snap.status().ToString());
    return {cache_->Stats(), *std::move(snap)};
  }
  // A refused call: the predicted code, and nothing changed.
  void ExpectRefused(const absl::Status& s, absl::StatusCode want,
                     const Observed& before) {
    Expect(s.code() == want, "want ", absl::StatusCodeToString(want), ", got ",
           s.ToString());
    Expect(!s.message().empty(), "an error without a message");
    const Observed after = Observe();
    Expect(after.stats == before.stats, "a refused call changed Stats()");
    Expect(after.snapshot == before.snapshot,
           "a refused call changed the snapshot");
  }

  // ---- Operations ----
  void Step() {
    const Op op = static_cast<Op>(in_.Take(static_cast<int>(Op::kOpCount)));
    switch (op) {
      case Op::kAddSequence:
        return AddSequence();
      case Op::kFork:
        return Fork();
      case Op::kRemove:
        return Remove();
      case Op::kDecode: {
        const SeqId seq = PickSeq();
        const int layer = in_.Take(c_.num_layers);
        const int64_t len = LengthOf(seq, layer);
        return Update(seq, layer, len + 1, 1, "decode");
      }
      case Op::kAppend: {
        const SeqId seq = PickSeq();
        const int layer = in_.Take(c_.num_layers);
        const int64_t n = 1 + in_.Take(2 * c_.block_tokens + 2);
        return Update(seq, layer, LengthOf(seq, layer) + n, n, "append");
      }
      case Op::kStep: {
        const SeqId seq = PickSeq();
        const int64_t n = 1 + in_.Take(c_.block_tokens + 1);
        for (int layer = 0; layer < c_.num_layers; ++layer) {
          Update(seq, layer, LengthOf(seq, layer) + n, n, "step");
        }
        return;
      }
      case Op::kRewrite: {
        const SeqId seq = PickSeq();
        const int layer = in_.Take(c_.num_layers);
        const int64_t seq_len =
            in_.Take(static_cast<int>(LengthOf(seq, layer)) + 4);
        const int64_t n =
            std::min<int64_t>(seq_len, in_.Take(3 * c_.block_tokens + 1));
        return Update(seq, layer, seq_len, n, "rewrite");
      }
      case Op::kBadUpdate:
        return BadUpdate();
      case Op::kTruncate:
        return Truncate();
      case Op::kAppendTokens:
        return AppendTokens();
      case Op::kMatchPrefix:
        return MatchPrefix();
      case Op::kCompress:
        return Compress();
      case Op::kQuery:
        return Query();
      case Op::kOpCount:
        break;
    }
  }

  void AddSequence() {
    const uint64_t salt = static_cast<uint64_t>(in_.Take(3));
    const int32_t family = in_.Take(6);
    if (seqs_.size() >= kMaxSequences) return;
    absl::StatusOr<SeqId> id = cache_->AddSequence({.salt = salt});
    Expect(id.ok(), "AddSequence: ", id.status().ToString());
    Expect(*id > last_id_, "AddSequence reused or lowered an id: ", *id);
    last_id_ = *id;
    Seq s{.salt = salt};
    s.script.family = family;
    s.layers.resize(static_cast<size_t>(c_.num_layers));
    seqs_.emplace(*id, std::move(s));
    Trace(absl::StrFormat("add -> %d (salt %d, family %d)", *id, salt, family));
  }

  void Fork() {
    const SeqId parent = PickSeq();
    if (seqs_.size() >= kMaxSequences) return;
    Trace(absl::StrFormat("fork %d", parent));
    const Observed before = Observe();
    absl::StatusOr<SeqId> id = cache_->Fork(parent);
    Seq* p = Find(parent);
    if (p == nullptr) {
      return ExpectRefused(id.status(), absl::StatusCode::kNotFound, before);
    }
    Expect(id.ok(), "Fork: ", id.status().ToString());
    Expect(*id > last_id_, "Fork reused or lowered an id: ", *id);
    last_id_ = *id;
    Seq child = *p;
    for (Layer& l : child.layers) l.evicted = 0;  // counted per table
    seqs_.emplace(*id, std::move(child));
    trace_.back() += absl::StrCat(" -> ", *id);
  }

  void Remove() {
    const SeqId seq = PickSeq();
    Trace(absl::StrFormat("remove %d", seq));
    const Observed before = Observe();
    const absl::Status s = cache_->RemoveSequence(seq);
    if (Find(seq) == nullptr) {
      return ExpectRefused(s, absl::StatusCode::kNotFound, before);
    }
    Expect(s.ok(), "RemoveSequence: ", s.ToString());
    seqs_.erase(seq);
  }

  struct Call {
    SeqId seq = 0;
    int layer = 0;
    int64_t seq_len = 0, n = 0, v_tokens = 0;
    DType k_dtype = DType::kF32, v_dtype = DType::kF32;
    bool k_null = false, v_null = false;
  };

  // The status the update rule gives, its checks in the documented order.
  absl::StatusCode Predict(const Call& call) {
    Seq* s = Find(call.seq);
    if (s == nullptr) return absl::StatusCode::kNotFound;
    if (call.layer < 0 || call.layer >= c_.num_layers) {
      return absl::StatusCode::kInvalidArgument;
    }
    const int64_t n = call.n;
    if (call.v_tokens != n || n < 0) return absl::StatusCode::kInvalidArgument;
    for (DType d : {call.k_dtype, call.v_dtype}) {
      if (d != DType::kF32 && d != c_.dtype) {
        return absl::StatusCode::kInvalidArgument;
      }
    }
    if (n > 0 && (call.k_null || call.v_null)) {
      return absl::StatusCode::kInvalidArgument;
    }
    if (n > (int64_t{1} << 62) / (elems_ * 4)) {
      return absl::StatusCode::kInvalidArgument;
    }
    if (call.seq_len < n) return absl::StatusCode::kInvalidArgument;
    const Layer& l = s->layers[static_cast<size_t>(call.layer)];
    const int64_t len = static_cast<int64_t>(l.pos.size());
    const int64_t start = call.seq_len - n;
    if (start > len) return absl::StatusCode::kInvalidArgument;
    for (int64_t p = start; p < std::min(call.seq_len, len); ++p) {
      if (!l.pos[static_cast<size_t>(p)].visible) {
        return absl::StatusCode::kOutOfRange;
      }
    }
    if (call.seq_len < len && call.seq_len > 0 &&
        !l.pos[static_cast<size_t>(call.seq_len - 1)].visible) {
      return absl::StatusCode::kOutOfRange;
    }
    const LayerPolicy& policy = policies_[static_cast<size_t>(call.layer)];
    if (policy.overflow == OverflowPolicy::kError &&
        call.seq_len > policy.max_seq_len) {
      return absl::StatusCode::kResourceExhausted;
    }
    return absl::StatusCode::kOk;
  }

  // A well-formed update of [seq_len - n, seq_len).
  void Update(SeqId seq, int layer, int64_t seq_len, int64_t n,
              const char* what) {
    if (seq_len > kMaxLength) return;
    const DType in_dtype = op_ % 2 == 0 ? DType::kF32 : c_.dtype;
    RunUpdate({.seq = seq,
               .layer = layer,
               .seq_len = seq_len,
               .n = n,
               .v_tokens = n,
               .k_dtype = in_dtype,
               .v_dtype = in_dtype},
              what);
  }

  void BadUpdate() {
    const SeqId seq = PickSeq();
    const int layer = in_.Take(c_.num_layers);
    const int mistake = in_.Take(8);
    const int64_t len = LengthOf(seq, layer);
    Call call{
        .seq = seq, .layer = layer, .seq_len = len + 1, .n = 1, .v_tokens = 1};
    switch (mistake) {
      case 0:
        call.layer = op_ % 2 == 0 ? -1 : c_.num_layers;
        break;
      case 1:
        call.v_tokens = 2;
        break;
      case 2:
        call.k_dtype = c_.dtype == DType::kBF16 ? DType::kF16 : DType::kBF16;
        break;
      case 3:
        call.v_null = true;
        break;
      case 4:
        call.n = call.v_tokens = -1;
        break;
      case 5:  // a gap
        call.seq_len = len + 2;
        break;
      case 6:  // more tokens than can exist
        call.n = call.v_tokens = int64_t{1} << 61;
        call.seq_len = call.n;
        break;
      case 7:  // past max_seq_len in one go (refused only under kError)
        call.seq_len = std::max<int64_t>(len, c_.max_seq_len) + 1;
        call.n = call.v_tokens = call.seq_len - len;
        if (call.seq_len > kMaxLength) return;
        break;
    }
    RunUpdate(call, "bad update");
  }

  void RunUpdate(const Call& call, const char* what) {
    Trace(absl::StrFormat("%s seq %d layer %d seq_len %d n %d%s", what,
                          call.seq, call.layer, call.seq_len, call.n,
                          call.k_dtype == DType::kF32 ? "" : " (cache dtype)"));
    const absl::StatusCode want = Predict(call);
    Seq* s = Find(call.seq);
    const int64_t start = call.seq_len - call.n;
    // The data: what the script says where the call is well-formed; small
    // buffers otherwise (the cache must refuse before reading them).
    std::vector<float> kf, vf;
    if (s != nullptr && call.layer >= 0 && call.layer < c_.num_layers &&
        call.n >= 0 && call.n <= kMaxLength && start >= 0) {
      kf = Values(*s, call.layer, start, call.n, 0);
      vf = Values(*s, call.layer, start, call.n, 1);
    }
    kf.resize(std::max<size_t>(kf.size(), 1));
    vf.resize(std::max<size_t>(vf.size(), 1));
    std::vector<std::byte> kb(kf.size() * 4), vb(vf.size() * 4);
    const int64_t count = static_cast<int64_t>(kf.size());
    internal::ConvertElements(
        kf.data(), DType::kF32, kb.data(),
        call.k_dtype == DType::kF32 ? DType::kF32 : c_.dtype, count);
    internal::ConvertElements(
        vf.data(), DType::kF32, vb.data(),
        call.v_dtype == DType::kF32 ? DType::kF32 : c_.dtype, count);
    const TokenSpan k{.data = call.k_null ? nullptr : kb.data(),
                      .dtype = call.k_dtype,
                      .tokens = call.n};
    const TokenSpan v{.data = call.v_null ? nullptr : vb.data(),
                      .dtype = call.v_dtype,
                      .tokens = call.v_tokens};
    const Observed before = Observe();
    const absl::Status status =
        cache_->Update(call.seq, call.layer, k, v, call.seq_len);
    if (want != absl::StatusCode::kOk) {
      return ExpectRefused(status, want, before);
    }
    Layer next = s->layers[static_cast<size_t>(call.layer)];
    next.pos.resize(static_cast<size_t>(call.seq_len));
    for (int64_t p = start; p < call.seq_len; ++p) {
      Pos& at = next.pos[static_cast<size_t>(p)];
      at = Pos{};
      for (int64_t e = 0; e < elems_; ++e) {
        const size_t i = static_cast<size_t>((p - start) * elems_ + e);
        at.k.push_back(RoundTo(c_.dtype, kf[i]));
        at.v.push_back(RoundTo(c_.dtype, vf[i]));
      }
    }
    const int64_t evicted =
        Evict(policies_[static_cast<size_t>(call.layer)], next);
    if (status.code() == absl::StatusCode::kResourceExhausted) {
      // The pool: it may be short only when free and idle cached blocks
      // could not give the update a block for each block it writes into.
      ExpectRefused(status, absl::StatusCode::kResourceExhausted, before);
      const int64_t written = WrittenBlocks(next, start, call.seq_len);
      Expect(before.stats.blocks_free + before.stats.blocks_cached < written,
             "ResourceExhausted with ", before.stats.blocks_free, " free and ",
             before.stats.blocks_cached, " idle blocks for an update writing ",
             "into ", written, " blocks: ", status.ToString());
      trace_.back() += " -> pool full";
      return;
    }
    Expect(status.ok(), "Update: ", status.ToString());
    for (int64_t p = start; p < call.seq_len; ++p) {
      if (next.pos[static_cast<size_t>(p)].visible) {
        bytes_written_ += 2 * elems_ * DTypeSize(c_.dtype);
      }
    }
    next.evicted += evicted;
    next.max_length = std::max(next.max_length, call.seq_len);
    evictions_ += evicted;
    s->layers[static_cast<size_t>(call.layer)] = std::move(next);
  }

  void Truncate() {
    const SeqId seq = PickSeq();
    int64_t longest = 0;
    if (Seq* s = Find(seq)) {
      for (const Layer& l : s->layers) {
        longest =
            std::max<int64_t>(longest, static_cast<int64_t>(l.pos.size()));
      }
    }
    const int64_t to = in_.Take(static_cast<int>(longest) + 3) - 1;
    const int branch = in_.Take(7);
    Trace(absl::StrFormat("truncate %d to %d%s", seq, to,
                          branch < 6 ? absl::StrCat(", family ", branch) : ""));
    const Observed before = Observe();
    const absl::Status status = cache_->Truncate(seq, to);
    Seq* s = Find(seq);
    if (s == nullptr) {
      return ExpectRefused(status, absl::StatusCode::kNotFound, before);
    }
    if (to < 0) {
      return ExpectRefused(status, absl::StatusCode::kInvalidArgument, before);
    }
    for (const Layer& l : s->layers) {
      if (static_cast<int64_t>(l.pos.size()) > to && to > 0 &&
          !l.pos[static_cast<size_t>(to - 1)].visible) {
        return ExpectRefused(status, absl::StatusCode::kOutOfRange, before);
      }
    }
    Expect(status.ok(), "Truncate: ", status.ToString());
    for (Layer& l : s->layers) {
      if (static_cast<int64_t>(l.pos.size()) > to) {
        l.pos.resize(static_cast<size_t>(to));
      }
    }
    s->told = std::min(s->told, to);
    if (branch < 6) {
      Script script = s->script;
      script.Branch(to, branch);
      s->Rescript(script);
    }
  }

  // Tells the next ids of the script; or, as an engine that lies (family <
  // 6), another family's ids from the told ones on. Then the positions
  // already written there hold values of other ids (foreign), and the blocks
  // holding them may be published under ids whose values they are not.
  void AppendTokens() {
    const SeqId seq = PickSeq();
    const int64_t count = in_.Take(2 * c_.block_tokens + 2);
    const int family = in_.Take(7);
    Seq* s = Find(seq);
    if (s != nullptr && family < 6) {
      Script script = s->script;
      script.Branch(s->told, family);
      s->Rescript(script);
      for (Layer& l : s->layers) {
        for (int64_t p = s->told; p < static_cast<int64_t>(l.pos.size()); ++p) {
          l.pos[static_cast<size_t>(p)].foreign = true;
        }
      }
    }
    const std::vector<int32_t> ids =
        s != nullptr ? s->script.Ids(s->told, count)
                     : std::vector<int32_t>(static_cast<size_t>(count), 7);
    Trace(
        absl::StrFormat("append_tokens %d, %d ids%s", seq, count,
                        family < 6 ? absl::StrCat(" of family ", family) : ""));
    const Observed before = Observe();
    const absl::Status status = cache_->AppendTokens(seq, ids);
    if (s == nullptr) {
      return ExpectRefused(status, absl::StatusCode::kNotFound, before);
    }
    Expect(status.ok(), "AppendTokens: ", status.ToString());
    s->told += count;
  }

  void MatchPrefix() {
    const SeqId seq = PickSeq();
    const int source = in_.Take(3);
    Script script;
    if (source == 0) {
      if (Seq* s = Find(seq)) script = s->script;
    } else if (source == 1) {
      if (Seq* other = Find(PickSeq())) script = other->script;
    } else {
      script.family = in_.Take(6);
    }
    const int64_t count = in_.Take(48);
    const std::vector<int32_t> ids = script.Ids(0, count);
    Trace(absl::StrFormat("match_prefix %d, %d ids (source %d)", seq, count,
                          source));
    const Observed before = Observe();
    absl::StatusOr<int64_t> matched = cache_->MatchPrefix(seq, ids);
    Seq* s = Find(seq);
    if (s == nullptr) {
      return ExpectRefused(matched.status(), absl::StatusCode::kNotFound,
                           before);
    }
    bool empty = s->told == 0;
    for (const Layer& l : s->layers) empty = empty && l.pos.empty();
    if (!empty) {
      return ExpectRefused(matched.status(),
                           absl::StatusCode::kFailedPrecondition, before);
    }
    Expect(matched.ok(), "MatchPrefix: ", matched.status().ToString());
    const int64_t bt = c_.block_tokens;
    int64_t limit = count / bt;
    for (const LayerPolicy& p : policies_) {
      limit = std::min(limit, p.max_seq_len / bt);
    }
    const int64_t m = *matched;
    Expect(m >= 0 && m % bt == 0 && m / bt <= limit, "matched ", m,
           " tokens of ", count, ", at most ", limit, " blocks of ", bt);
    trace_.back() += absl::StrCat(" -> ", m);
    hits_ += m / bt;
    misses_ += m / bt < count / bt;
    s->Rescript(script);
    s->told = m;
    for (int layer = 0; layer < c_.num_layers; ++layer) {
      Layer& l = s->layers[static_cast<size_t>(layer)];
      l.pos.resize(static_cast<size_t>(m));
      for (int64_t p = 0; p < m; ++p) {
        Pos& at = l.pos[static_cast<size_t>(p)];
        at = Pos{};
        for (int64_t e = 0; e < elems_; ++e) {
          at.k.push_back(RoundTo(c_.dtype, Value(*s, layer, p, 0, e)));
          at.v.push_back(RoundTo(c_.dtype, Value(*s, layer, p, 1, e)));
        }
      }
      l.max_length = std::max(l.max_length, m);
      AdoptPublished(seq, *s, layer, m / bt);
    }
  }

  // The first `blocks` blocks of a layer just attached by MatchPrefix hold
  // what their ids' writer wrote (the model's values already), or one of the
  // contents a sequence held, lossy or foreign, in a block under those ids
  // and layer (RecordVersions), which the model then takes.
  void AdoptPublished(SeqId id, Seq& s, int layer, int64_t blocks) {
    Layer& l = s.layers[static_cast<size_t>(layer)];
    absl::StatusOr<GatheredLayer> g = cache_->Gather(id, layer);
    Expect(g.ok(), "Gather: ", g.status().ToString());
    const int64_t bt = c_.block_tokens;
    for (int64_t b = 0; b < blocks; ++b) {
      const std::vector<float> read = Content(*g, b * bt, bt);
      std::vector<float> wrote;
      for (int64_t p = b * bt; p < (b + 1) * bt; ++p) {
        const Pos& at = l.pos[static_cast<size_t>(p)];
        wrote.insert(wrote.end(), at.k.begin(), at.k.end());
        wrote.insert(wrote.end(), at.v.begin(), at.v.end());
      }
      if (SameContent(read, wrote)) continue;
      const auto it = versions_.find({BlockKey(s, b * bt), layer});
      const bool known = it != versions_.end() &&
                         std::any_of(it->second.begin(), it->second.end(),
                                     [&](const std::vector<float>& v) {
                                       return SameContent(read, v);
                                     });
      Expect(known, "MatchPrefix attached to seq ", id, " layer ", layer,
             " block ", b,
             " a block holding what no sequence held under those ids");
      for (int64_t p = b * bt; p < (b + 1) * bt; ++p) {
        Pos& at = l.pos[static_cast<size_t>(p)];
        at.lossy = at.foreign = true;
        const size_t from = static_cast<size_t>(p * elems_);
        at.k.assign(g->k.begin() + from, g->k.begin() + from + elems_);
        at.v.assign(g->v.begin() + from, g->v.begin() + from + elems_);
      }
    }
  }

  // Keys then values of positions [from, from + n) of a gathered layer that
  // shows every position from 0 on.
  std::vector<float> Content(const GatheredLayer& g, int64_t from,
                             int64_t n) const {
    std::vector<float> out;
    for (int64_t p = from; p < from + n; ++p) {
      const size_t at = static_cast<size_t>(p * elems_);
      out.insert(out.end(), g.k.begin() + at, g.k.begin() + at + elems_);
      out.insert(out.end(), g.v.begin() + at, g.v.begin() + at + elems_);
    }
    return out;
  }
  static bool SameContent(const std::vector<float>& a,
                          const std::vector<float>& b) {
    return a.size() == b.size() &&
           std::equal(a.begin(), a.end(), b.begin(), Same);
  }

  // Keeps the content of every whole, visible block of the layer that holds
  // lossy or foreign values: what the prefix cache may have been given for
  // it under its ids.
  void RecordVersions(Seq& s, int layer) {
    const Layer& l = s.layers[static_cast<size_t>(layer)];
    const int64_t bt = c_.block_tokens;
    for (int64_t b = 0; (b + 1) * bt <= static_cast<int64_t>(l.pos.size());
         ++b) {
      bool whole = true, special = false;
      std::vector<float> content;
      for (int64_t p = b * bt; p < (b + 1) * bt && whole; ++p) {
        const Pos& at = l.pos[static_cast<size_t>(p)];
        whole = at.visible;
        special = special || at.lossy || at.foreign;
        content.insert(content.end(), at.k.begin(), at.k.end());
        content.insert(content.end(), at.v.begin(), at.v.end());
      }
      if (!whole || !special) continue;
      std::vector<std::vector<float>>& known =
          versions_[{BlockKey(s, b * bt), layer}];
      if (std::none_of(known.begin(), known.end(),
                       [&](const std::vector<float>& v) {
                         return SameContent(v, content);
                       })) {
        known.push_back(std::move(content));
      }
    }
  }

  void Compress() {
    const SeqId seq = PickSeq();
    const int layer = in_.Take(c_.num_layers + 1);  // num_layers: invalid
    static constexpr double kFractions[] = {0, 0.25, 0.5, 0.75, 1, -0.5, 1.5};
    const int which = in_.Take(8);
    const double fraction = which == 7 ? std::nan("") : kFractions[which];
    Trace(
        absl::StrFormat("compress %d layer %d keep %g", seq, layer, fraction));
    const Observed before = Observe();
    const absl::Status status =
        cache_->CompressOldEntries(seq, layer, fraction);
    absl::StatusCode want = absl::StatusCode::kOk;
    if (Find(seq) == nullptr) {
      want = absl::StatusCode::kNotFound;
    } else if (layer >= c_.num_layers) {
      want = absl::StatusCode::kInvalidArgument;
    } else if (!c_.compression.enabled) {
      want = absl::StatusCode::kFailedPrecondition;
    } else if (!(fraction >= 0 && fraction <= 1)) {
      want = absl::StatusCode::kInvalidArgument;
    }
    if (want != absl::StatusCode::kOk) {
      return ExpectRefused(status, want, before);
    }
    Expect(status.ok(), "CompressOldEntries: ", status.ToString());
  }

  void Query() {
    const SeqId seq = PickSeq();
    const int layer = in_.Take(c_.num_layers + 2) - 1;
    Trace(absl::StrFormat("query %d layer %d", seq, layer));
    const bool known = Find(seq) != nullptr;
    const absl::StatusCode want = !known ? absl::StatusCode::kNotFound
                                  : layer < 0 || layer >= c_.num_layers
                                      ? absl::StatusCode::kInvalidArgument
                                      : absl::StatusCode::kOk;
    const absl::Status statuses[] = {cache_->Length(seq, layer).status(),
                                     cache_->Gather(seq, layer).status(),
                                     cache_->View(seq, layer).status()};
    for (const absl::Status& s : statuses) {
      Expect(s.code() == want, "query: want ", absl::StatusCodeToString(want),
             ", got ", s.ToString());
    }
    Expect(cache_->Stats(seq).ok() == known,
           "Stats(seq): ", cache_->Stats(seq).status().ToString());
  }

  // ---- Checks after every operation ----
  uint64_t BlockKey(Seq& s, int64_t p) {
    const int64_t bt = c_.block_tokens;
    return s.Chain((p / bt + 1) * bt - 1);
  }

  void CheckAll() {
    const absl::Status valid = cache_->Validate();
    Expect(valid.ok(), "Validate: ", valid.ToString());
    const Observed now = Observe();
    const std::vector<SnapshotViolation> violations =
        VerifySnapshot(now.snapshot);
    Expect(violations.empty(), "VerifySnapshot: ",
           violations.empty() ? "" : violations.front().check, ": ",
           violations.empty() ? "" : violations.front().message);
    absl::StatusOr<Snapshot> parsed =
        ParseSnapshot(EncodeSnapshot(now.snapshot));
    Expect(parsed.ok(), "ParseSnapshot: ", parsed.status().ToString());
    Expect(*parsed == now.snapshot, "a snapshot does not round-trip");
    const CacheStats& s = now.stats;
    Expect(s == now.snapshot.stats, "Stats() and the snapshot disagree");
    Expect(s.sequences == static_cast<int64_t>(seqs_.size()), "sequences ",
           s.sequences, ", model ", seqs_.size());
    Expect(cache_->Sequences() == Live(), "Sequences() differs");
    Expect(s.blocks_used + s.blocks_cached + s.blocks_free == s.blocks_total &&
               s.blocks_used >= 0 && s.blocks_cached >= 0 && s.blocks_free >= 0,
           "blocks: ", s.blocks_used, " used ", s.blocks_cached, " cached ",
           s.blocks_free, " free of ", s.blocks_total);
    Expect(s.evictions == evictions_, "evictions ", s.evictions, ", model ",
           evictions_);
    Expect(s.bytes_written == bytes_written_, "bytes_written ", s.bytes_written,
           ", model ", bytes_written_);
    Expect(s.hits == hits_ && s.misses == misses_, "hits/misses ", s.hits, "/",
           s.misses, ", model ", hits_, "/", misses_);
    Expect(
        std::isfinite(s.max_quant_error) && std::isfinite(s.mean_quant_error) &&
            s.max_quant_error >= s.mean_quant_error,
        "quant error statistics ", s.max_quant_error, " ", s.mean_quant_error);
    int64_t visible = 0;
    for (auto& [id, seq] : seqs_) {
      int64_t longest = 0, max_length = 0, tokens = 0, evicted = 0, held = 0;
      for (int layer = 0; layer < c_.num_layers; ++layer) {
        Layer& l = seq.layers[static_cast<size_t>(layer)];
        CheckLayer(id, seq, layer);
        RecordVersions(seq, layer);
        longest =
            std::max<int64_t>(longest, static_cast<int64_t>(l.pos.size()));
        max_length = std::max(max_length, l.max_length);
        tokens += VisibleCount(l);
        evicted += l.evicted;
        held += HeldBlocks(l);
      }
      visible += tokens;
      absl::StatusOr<SequenceStats> ss = cache_->Stats(id);
      Expect(ss.ok(), "Stats(", id, "): ", ss.status().ToString());
      Expect(ss->current_length == longest && ss->max_length == max_length &&
                 ss->tokens_stored == tokens && ss->evictions == evicted &&
                 ss->blocks >= held,
             "Stats(", id, "): length ", ss->current_length, "/", longest,
             " max ", ss->max_length, "/", max_length, " tokens ",
             ss->tokens_stored, "/", tokens, " evictions ", ss->evictions, "/",
             evicted, " blocks ", ss->blocks, " >= ", held);
    }
    Expect(s.tokens_stored == visible, "tokens_stored ", s.tokens_stored,
           ", model ", visible);
  }

  void CheckLayer(SeqId id, Seq& seq, int layer) {
    Layer& l = seq.layers[static_cast<size_t>(layer)];
    const auto where = [&](int64_t p) {
      return absl::StrFormat("seq %d layer %d position %d", id, layer, p);
    };
    absl::StatusOr<int64_t> length = cache_->Length(id, layer);
    Expect(length.ok() && *length == static_cast<int64_t>(l.pos.size()),
           "Length(", id, ", ", layer, ") ", length.ok() ? *length : -1,
           ", model ", l.pos.size());
    absl::StatusOr<GatheredLayer> g = cache_->Gather(id, layer);
    absl::StatusOr<LayerView> view = cache_->View(id, layer);
    Expect(g.ok() && view.ok(), "Gather/View failed");
    std::vector<int64_t> want;
    for (size_t p = 0; p < l.pos.size(); ++p) {
      if (l.pos[p].visible) want.push_back(static_cast<int64_t>(p));
    }
    Expect(g->positions == want, "Gather(", id, ", ", layer, ") gives ",
           g->positions.size(), " positions, the model ", want.size());
    Expect(view->length == static_cast<int64_t>(l.pos.size()) &&
               view->tokens() == static_cast<int64_t>(want.size()),
           "View(", id, ", ", layer, "): length ", view->length, " tokens ",
           view->tokens());
    size_t next = 0;  // into g->positions
    std::vector<float> bk, bv;
    for (const BlockView& b : view->blocks) {
      for (int i = 0; i < b.tokens; ++i) {
        Expect(next + static_cast<size_t>(i) < want.size() &&
                   want[next + static_cast<size_t>(i)] == b.first_position + i,
               "View(", id, ", ", layer, "): block ", b.block_id,
               " names position ", b.first_position + i, " out of order");
      }
      const size_t from = next * static_cast<size_t>(elems_);
      const size_t n = static_cast<size_t>(b.tokens * elems_);
      if (view->host_accessible) {
        bk.assign(n, 0);
        bv.assign(n, 0);
        const absl::Status s =
            Dequantize(*view, b, absl::MakeSpan(bk), absl::MakeSpan(bv));
        Expect(s.ok(), "Dequantize: ", s.ToString());
        for (size_t i = 0; i < n; ++i) {
          Expect(Same(bk[i], g->k[from + i]) && Same(bv[i], g->v[from + i]),
                 "Dequantize and Gather disagree at ",
                 where(b.first_position + static_cast<int64_t>(i) / elems_));
        }
      }
      if (b.format == BlockFormat::kHot) {
        CheckHot(seq, layer, *g, next, b.tokens, where);
      } else {
        CheckRepacked(seq, layer, *g, next, b, view->quant_group_size, where);
      }
      next += static_cast<size_t>(b.tokens);
    }
    Expect(next == want.size(), "View covers ", next, " of ", want.size(),
           " visible positions");
  }

  // Hot positions read back exactly what they hold: what was written, or
  // what a repack left, rounded to the cache's dtype when made hot again.
  template <typename Where>
  void CheckHot(Seq& seq, int layer, const GatheredLayer& g, size_t first,
                int tokens, const Where& where) {
    Layer& l = seq.layers[static_cast<size_t>(layer)];
    for (size_t t = first; t < first + static_cast<size_t>(tokens); ++t) {
      const int64_t p = g.positions[t];
      Pos& at = l.pos[static_cast<size_t>(p)];
      for (int64_t e = 0; e < elems_; ++e) {
        const size_t i =
            t * static_cast<size_t>(elems_) + static_cast<size_t>(e);
        float& k = at.k[static_cast<size_t>(e)];
        float& v = at.v[static_cast<size_t>(e)];
        const float want_k = at.lossy ? RoundTo(c_.dtype, k) : k;
        const float want_v = at.lossy ? RoundTo(c_.dtype, v) : v;
        Expect(Same(g.k[i], want_k) && Same(g.v[i], want_v), where(p),
               " element ", e, ": read ", g.k[i], "/", g.v[i], ", wrote ",
               want_k, "/", want_v);
        k = g.k[i];
        v = g.v[i];
      }
    }
  }

  // A repacked block: it may hold only values the formats represent, and
  // reads back within its format's bound of them. Keys are grouped per
  // channel over the block's visible slots, values per token in groups of
  // `group` channels; the bound is half a step plus the f16 rounding of the
  // scales and minimums (and of a round trip through the hot dtype).
  template <typename Where>
  void CheckRepacked(Seq& seq, int layer, const GatheredLayer& g, size_t first,
                     const BlockView& b, int group, const Where& where) {
    Layer& l = seq.layers[static_cast<size_t>(layer)];
    const bool int4 = b.format == BlockFormat::kInt4;
    const double steps = int4 ? 15.0 : 127.0;
    const auto tolerance = [&](double lo, double hi) {
      const double magnitude = std::max(std::fabs(lo), std::fabs(hi));
      const double span = int4 ? hi - lo : magnitude;
      return span * (0.5 / steps + 1.0 / 512) + magnitude / 512 + 1e-5;
    };
    const size_t tokens = static_cast<size_t>(b.tokens);
    auto pos = [&](size_t t) -> Pos& {
      return l.pos[static_cast<size_t>(g.positions[first + t])];
    };
    for (size_t t = 0; t < tokens; ++t) {
      Pos& at = pos(t);
      for (int64_t e = 0; e < elems_; ++e) {
        for (float x :
             {at.k[static_cast<size_t>(e)], at.v[static_cast<size_t>(e)]}) {
          Expect(std::isfinite(x) && std::fabs(x) <= 65504.0f,
                 where(g.positions[first + t]), " holds ", x,
                 " but its block was repacked");
        }
      }
    }
    for (int64_t e = 0; e < elems_; ++e) {  // keys, per channel
      double lo = INFINITY, hi = -INFINITY;
      for (size_t t = 0; t < tokens; ++t) {
        const double x = pos(t).k[static_cast<size_t>(e)];
        lo = std::min(lo, x);
        hi = std::max(hi, x);
      }
      const double tol = tolerance(lo, hi);
      for (size_t t = 0; t < tokens; ++t) {
        const size_t i =
            (first + t) * static_cast<size_t>(elems_) + static_cast<size_t>(e);
        const double want = pos(t).k[static_cast<size_t>(e)];
        Expect(std::fabs(g.k[i] - want) <= tol, where(g.positions[first + t]),
               " key ", e, ": read ", g.k[i], " from an int", int4 ? 4 : 8,
               " block, held ", want, " (bound ", tol, ")");
      }
    }
    for (size_t t = 0; t < tokens; ++t) {  // values, per token and group
      for (int64_t g0 = 0; g0 < elems_; g0 += group) {
        double lo = INFINITY, hi = -INFINITY;
        for (int64_t e = g0; e < g0 + group; ++e) {
          const double x = pos(t).v[static_cast<size_t>(e)];
          lo = std::min(lo, x);
          hi = std::max(hi, x);
        }
        const double tol = tolerance(lo, hi);
        for (int64_t e = g0; e < g0 + group; ++e) {
          const size_t i = (first + t) * static_cast<size_t>(elems_) +
                           static_cast<size_t>(e);
          const double want = pos(t).v[static_cast<size_t>(e)];
          Expect(std::fabs(g.v[i] - want) <= tol, where(g.positions[first + t]),
                 " value ", e, ": read ", g.v[i], " from an int", int4 ? 4 : 8,
                 " block, held ", want, " (bound ", tol, ")");
        }
      }
    }
    for (size_t t = 0; t < tokens; ++t) {
      Pos& at = pos(t);
      const size_t from = (first + t) * static_cast<size_t>(elems_);
      for (int64_t e = 0; e < elems_; ++e) {
        at.k[static_cast<size_t>(e)] = g.k[from + static_cast<size_t>(e)];
        at.v[static_cast<size_t>(e)] = g.v[from + static_cast<size_t>(e)];
      }
      at.lossy = true;
    }
  }

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

}  // namespace

// Runs one program. A config that ValidateConfig refuses must be refused by
// Create with the same status, and end the program.
void RunProgram(const uint8_t* data, size_t size) {
  ByteSource in(data, size);
  std::optional<Setup> setup = DecodeConfig(in);
  if (!setup) return;
  const CacheConfig& c = setup->config;
  const absl::Status valid = ValidateConfig(c);
  if (!valid.ok()) {
    absl::StatusOr<std::unique_ptr<KVCache>> created = KVCache::Create(c);
    if (created.status() != valid || valid.message().empty() ||
        valid.code() != absl::StatusCode::kInvalidArgument) {
      std::fprintf(stderr, "api_fuzz: ValidateConfig says %s, Create says %s\n",
                   valid.ToString().c_str(),
                   created.status().ToString().c_str());
      std::abort();
    }
    return;
  }
  if (BlockBytes(c) * c.num_blocks > kMaxArenaBytes) return;
  Harness(in, *setup).Run();
}

}  // namespace kvpage::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvpage::fuzz::RunProgram(data, size);
  return 0;
}
