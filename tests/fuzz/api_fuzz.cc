// The API fuzzer's operations: each decodes its fields from the program,
// calls the cache and moves the model the way the call's contract says
// (api_harness.h has the whole story; api_checks.cc the checks).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "allocator/convert.h"
#include "cache/kv_cache_internal.h"
#include "kvpage/kvpage.h"
#include "tests/fuzz/api_harness.h"
#include "tests/opaque_storage.h"

namespace kvpage::fuzz {

Harness::Harness(ByteSource& in, const Setup& setup)
    : in_(in),
      setup_(setup),
      c_(setup.config),
      elems_(int64_t{c_.num_kv_heads} * c_.head_dim),
      policies_(LayerPolicies(c_)) {}

void Harness::Run() {
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
                 "compressed, %lld skipped, %lld evictions, %lld copied\n",
                 static_cast<long long>(s.hits),
                 static_cast<long long>(s.misses),
                 static_cast<long long>(s.prefix_entries),
                 static_cast<long long>(s.compressions_applied),
                 static_cast<long long>(s.compressions_skipped),
                 static_cast<long long>(s.evictions),
                 static_cast<long long>(s.bytes_copied));
  }
}

std::string Harness::DescribeConfig() const {
  std::string out = absl::StrFormat(
      "layers %d heads %d dim %d %s bt %d blocks %d max %d %s sinks %d "
      "truncate_to %d",
      c_.num_layers, c_.num_kv_heads, c_.head_dim, DTypeName(c_.dtype),
      c_.block_tokens, c_.num_blocks, c_.max_seq_len,
      OverflowPolicyName(c_.overflow), c_.sink_tokens, c_.truncate_to);
  for (const LayerPolicy& p : c_.layer_policies) {
    absl::StrAppendFormat(&out, "; layer %d: %s max %d sinks %d to %d", p.layer,
                          OverflowPolicyName(p.overflow), p.max_seq_len,
                          p.sink_tokens, p.truncate_to);
  }
  const CompressionConfig& q = c_.compression;
  if (q.enabled) {
    absl::StrAppendFormat(
        &out, "; compression int%d group %d hot %d slots %d auto %d rel %g",
        static_cast<int>(q.bits), q.group_size, q.hot_tokens, q.quant_cells,
        q.auto_compress, q.max_rel_error);
  }
  absl::StrAppendFormat(&out, "; %s storage; special 1/%d",
                        setup_.opaque ? "opaque" : "host",
                        setup_.special_every);
  return out;
}

std::vector<SeqId> Harness::Live() const {
  std::vector<SeqId> ids;
  for (const auto& [id, s] : seqs_) ids.push_back(id);
  return ids;
}

SeqId Harness::PickSeq() {
  const int b = in_.Take(kSeqChoices);
  const std::vector<SeqId> live = Live();
  if (b < kLiveChoices && !live.empty()) {
    return live[static_cast<size_t>(b) % live.size()];
  }
  return 1'000'000 + static_cast<SeqId>(b);
}

Seq* Harness::Find(SeqId id) {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : &it->second;
}

int64_t Harness::LengthOf(SeqId id, int layer) {
  Seq* s = Find(id);
  if (s == nullptr || layer < 0 || layer >= c_.num_layers) return 0;
  return static_cast<int64_t>(s->layers[static_cast<size_t>(layer)].pos.size());
}

float Harness::Value(Seq& s, int layer, int64_t p, int half, int64_t e) {
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

std::vector<float> Harness::Values(Seq& s, int layer, int64_t from, int64_t n,
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

void Harness::Step() {
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

void Harness::AddSequence() {
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

void Harness::Fork() {
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

void Harness::Remove() {
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

void Harness::Update(SeqId seq, int layer, int64_t seq_len, int64_t n,
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

void Harness::BadUpdate() {
  const SeqId seq = PickSeq();
  const int layer = in_.Take(c_.num_layers);
  const int mistake = in_.Take(8);
  const int64_t len = LengthOf(seq, layer);
  UpdateCall call{
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

void Harness::RunUpdate(const UpdateCall& call, const char* what) {
  Trace(absl::StrFormat("%s seq %d layer %d seq_len %d n %d%s", what, call.seq,
                        call.layer, call.seq_len, call.n,
                        call.k_dtype == DType::kF32 ? "" : " (cache dtype)"));
  const absl::StatusCode want =
      PredictUpdate(c_, policies_, Find(call.seq), call);
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
    const int64_t written =
        BlocksWithVisible(next, c_.block_tokens, start, call.seq_len);
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

void Harness::Truncate() {
  const SeqId seq = PickSeq();
  int64_t longest = 0;
  if (Seq* s = Find(seq)) {
    for (const Layer& l : s->layers) {
      longest = std::max<int64_t>(longest, static_cast<int64_t>(l.pos.size()));
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
    if (testing::EndsOnEvicted(l.pos, to)) {
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

void Harness::AppendTokens() {
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
  Trace(absl::StrFormat("append_tokens %d, %d ids%s", seq, count,
                        family < 6 ? absl::StrCat(" of family ", family) : ""));
  const Observed before = Observe();
  const absl::Status status = cache_->AppendTokens(seq, ids);
  if (s == nullptr) {
    return ExpectRefused(status, absl::StatusCode::kNotFound, before);
  }
  Expect(status.ok(), "AppendTokens: ", status.ToString());
  s->told += count;
}

void Harness::MatchPrefix() {
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
    return ExpectRefused(matched.status(), absl::StatusCode::kNotFound, before);
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
  Expect(m >= 0 && m % bt == 0 && m / bt <= limit, "matched ", m, " tokens of ",
         count, ", at most ", limit, " blocks of ", bt);
  trace_.back() += absl::StrCat(" -> ", m);
  hits_ += m / bt;
  misses_ += m / bt < limit;  // stopped by a block not cached
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

void Harness::Compress() {
  const SeqId seq = PickSeq();
  const int layer = in_.Take(c_.num_layers + 1);  // num_layers: invalid
  static constexpr double kFractions[] = {0, 0.25, 0.5, 0.75, 1, -0.5, 1.5};
  const int which = in_.Take(8);
  const double fraction = which == 7 ? std::nan("") : kFractions[which];
  Trace(absl::StrFormat("compress %d layer %d keep %g", seq, layer, fraction));
  const Observed before = Observe();
  const absl::Status status = cache_->CompressOldEntries(seq, layer, fraction);
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

void Harness::Query() {
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
