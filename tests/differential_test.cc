// Randomized differential test: thousands of seeded operations, invalid ones
// included, on a KVCache and on a plain reference model (a vector of tokens
// per sequence and layer). After every operation the cache must agree with
// the model: same status code, same tokens, same block usage; a failed call
// must leave the cache exactly as it was; Validate() must pass.
#include <algorithm>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "allocator/convert.h"
#include "cache/kv_cache_internal.h"
#include "gtest/gtest.h"
#include "kvpage/kvpage.h"
#include "tests/cache_fingerprint.h"
#include "tests/policy_model.h"
#include "tests/test_util.h"

namespace kvpage {
namespace {

using kvpage::testing::CacheFingerprint;
using kvpage::testing::ExactValues;
using kvpage::testing::Fingerprint;
using kvpage::testing::IsValid;
using kvpage::testing::Unchanged;

// The reference: every position [0, length) of a layer with its data and
// whether it is visible, and the overflow rules applied position by
// position. Block accounting follows the documented contract: a layer holds
// the blocks with a visible position (and a ring up to its size in spares);
// an update takes from the pool only what it cannot reuse.
class ReferenceModel {
 public:
  explicit ReferenceModel(const CacheConfig& c)
      : c_(c),
        elems_(int64_t{c.num_kv_heads} * c.head_dim),
        policies_(kvpage::testing::LayerPolicies(c)) {
    // Layer groups: layers whose policies act alike share a table. The
    // walk moves a group's layers together, so that they agree between
    // operations and a group's blocks are any of its layers'.
    for (int layer = 0; layer < c.num_layers; ++layer) {
      int group = static_cast<int>(members_.size());
      for (size_t g = 0; c.group_layers && g < members_.size(); ++g) {
        if (SameRules(policies_[static_cast<size_t>(members_[g][0])],
                      policies_[static_cast<size_t>(layer)])) {
          group = static_cast<int>(g);
          break;
        }
      }
      if (group == static_cast<int>(members_.size())) members_.emplace_back();
      members_[static_cast<size_t>(group)].push_back(layer);
    }
  }
  // The layers of `layer`'s group, ascending.
  const std::vector<int>& Members(int layer) const {
    for (const std::vector<int>& m : members_) {
      if (std::find(m.begin(), m.end(), layer) != m.end()) return m;
    }
    return members_.front();
  }

  struct Token {
    std::vector<float> k, v;
    bool visible = true;
  };
  struct Layer {
    std::vector<Token> tokens;  // positions [0, length)
    int64_t spares = 0;         // ring blocks held with no visible token
  };

  void Add(SeqId seq) {
    seqs_[seq] = std::vector<Layer>(static_cast<size_t>(c_.num_layers));
  }
  // A fork sees the parent's tokens; a ring's spares stay with the parent.
  void Fork(SeqId parent, SeqId child) {
    seqs_[child] = seqs_.at(parent);
    for (Layer& l : seqs_[child]) l.spares = 0;
  }
  bool Has(SeqId seq) const { return seqs_.count(seq) > 0; }
  void Remove(SeqId seq) { seqs_.erase(seq); }
  int64_t Length(SeqId seq, int layer) const {
    return static_cast<int64_t>(At(seq, layer).tokens.size());
  }
  const Layer& At(SeqId seq, int layer) const {
    return seqs_.at(seq)[static_cast<size_t>(layer)];
  }
  std::vector<SeqId> Ids() const {
    std::vector<SeqId> ids;
    for (const auto& [seq, layers] : seqs_) ids.push_back(seq);
    return ids;
  }

  // A group's layers agree: its table holds what its first layer holds.
  int64_t BlocksUsed() const {
    int64_t blocks = 0;
    for (const auto& [seq, layers] : seqs_) {
      for (const std::vector<int>& m : members_) {
        const Layer& l = layers[static_cast<size_t>(m[0])];
        blocks += static_cast<int64_t>(Held(l).size()) + l.spares;
      }
    }
    return blocks;
  }
  int64_t TokensStored() const {
    int64_t tokens = 0;
    for (const auto& [seq, layers] : seqs_) {
      for (const Layer& l : layers) tokens += Visible(l);
    }
    return tokens;
  }
  int64_t evictions() const { return evictions_; }
  int64_t bytes_written() const { return bytes_written_; }
  // Engine mode writes through the slot mapping, not through Update.
  void set_bytes_written(int64_t bytes) { bytes_written_ = bytes; }

  // The status the update rule gives (PredictUpdate, then the pool); on kOk
  // the update is applied.
  absl::StatusCode Update(SeqId seq, int layer, const TokenSpan& k,
                          const TokenSpan& v, int64_t seq_len,
                          const std::vector<float>& kf,
                          const std::vector<float>& vf) {
    const absl::StatusCode refused = kvpage::testing::PredictUpdate(
        c_, policies_, Has(seq),
        {.seq = seq,
         .layer = layer,
         .seq_len = seq_len,
         .n = k.tokens,
         .v_tokens = v.tokens,
         .k_dtype = k.dtype,
         .v_dtype = v.dtype,
         .k_null = k.data == nullptr,
         .v_null = v.data == nullptr},
        [&](int l) -> const std::vector<Token>& { return At(seq, l).tokens; });
    if (refused != absl::StatusCode::kOk) return refused;
    const int64_t n = k.tokens;
    const Layer& old = At(seq, layer);
    const int64_t start = seq_len - n;
    const LayerPolicy& policy = policies_[static_cast<size_t>(layer)];
    Layer next = old;
    next.tokens.resize(static_cast<size_t>(seq_len));
    for (int64_t p = start; p < seq_len; ++p) {
      Token& t = next.tokens[static_cast<size_t>(p)];
      const size_t from = static_cast<size_t>((p - start) * elems_);
      t.k.assign(kf.begin() + from, kf.begin() + from + elems_);
      t.v.assign(vf.begin() + from, vf.begin() + from + elems_);
      t.visible = true;
    }
    const int64_t evicted = Evict(policy, next);
    const int64_t fresh = Rebalance(policy, old, next);
    if (fresh > c_.num_blocks - BlocksUsed()) {
      return absl::StatusCode::kResourceExhausted;
    }
    for (int64_t p = start; p < seq_len; ++p) {
      bytes_written_ += next.tokens[static_cast<size_t>(p)].visible
                            ? 2 * elems_ * DTypeSize(c_.dtype)
                            : 0;
    }
    evictions_ += evicted;
    seqs_.at(seq)[static_cast<size_t>(layer)] = std::move(next);
    return absl::StatusCode::kOk;
  }

  // A forward pass over the group of `call.layer`: every layer of it gets
  // `call` with its own data (data[i] for member i), in order. The status
  // of the first layer's call (PredictUpdate, then the pool); on kOk all of
  // them are applied. With `reserve` the group moves in one step, as one
  // table does (the per-layer rule, Update); else layer by layer: while the
  // first layer has moved and the others not, the table holds the blocks
  // of both, its window the hull of theirs (kvpage/config.h), so the pass
  // takes the blocks the first layer gains and gives back at the end what
  // none shows any more. `bytes` reports written bytes as Update does.
  absl::StatusCode GroupPass(const kvpage::testing::UpdateCall& call,
                             const std::vector<std::vector<float>>& k_data,
                             const std::vector<std::vector<float>>& v_data,
                             bool reserve) {
    const absl::StatusCode refused =
        kvpage::testing::PredictUpdate(c_, policies_, Has(call.seq), call,
                                       [&](int l) -> const std::vector<Token>& {
                                         return At(call.seq, l).tokens;
                                       });
    if (refused != absl::StatusCode::kOk) return refused;
    const std::vector<int>& members = Members(call.layer);
    const LayerPolicy& policy = policies_[static_cast<size_t>(members[0])];
    std::vector<Layer> next;
    int64_t evicted = 0;
    for (size_t i = 0; i < members.size(); ++i) {
      const Layer& old = At(call.seq, members[i]);
      Layer n = old;
      n.tokens.resize(static_cast<size_t>(call.seq_len));
      const int64_t start = call.seq_len - call.n;
      for (int64_t p = start; p < call.seq_len; ++p) {
        Token& t = n.tokens[static_cast<size_t>(p)];
        const size_t from = static_cast<size_t>((p - start) * elems_);
        t.k.assign(k_data[i].begin() + from, k_data[i].begin() + from + elems_);
        t.v.assign(v_data[i].begin() + from, v_data[i].begin() + from + elems_);
        t.visible = true;
      }
      evicted += Evict(policy, n);
      next.push_back(std::move(n));
    }
    const Layer& old = At(call.seq, members[0]);
    int64_t fresh = 0, spares = 0;
    if (reserve) {
      fresh = Rebalance(policy, old, next[0], members.size());
      spares = next[0].spares;
    } else {
      const std::set<int64_t> before = Held(old), after = Held(next[0]);
      const std::set<int64_t> during = Hull(policy, before, after);
      int64_t gained = 0, released = 0;
      for (int64_t b : during) gained += before.count(b) == 0;
      for (int64_t b : during) released += after.count(b) == 0;
      const bool ring = policy.overflow == OverflowPolicy::kCircularBuffer;
      const int64_t reused = ring ? std::min(gained, old.spares) : 0;
      fresh = gained - reused;
      if (ring) {
        const int64_t bt = c_.block_tokens;
        const int64_t sink_blocks = (Sinks(policy) + bt - 1) / bt;
        const int64_t ring_blocks = RingBlocks(policy, members.size());
        int64_t window_blocks = 0;
        for (int64_t b : after) window_blocks += b >= sink_blocks;
        spares = std::min(old.spares - reused + released,
                          std::max<int64_t>(0, ring_blocks - window_blocks));
      }
    }
    if (fresh > c_.num_blocks - BlocksUsed()) {
      return absl::StatusCode::kResourceExhausted;
    }
    for (size_t i = 0; i < members.size(); ++i) {
      for (int64_t p = call.seq_len - call.n; p < call.seq_len; ++p) {
        bytes_written_ += next[i].tokens[static_cast<size_t>(p)].visible
                              ? 2 * elems_ * DTypeSize(c_.dtype)
                              : 0;
      }
      next[i].spares = spares;
      seqs_.at(call.seq)[static_cast<size_t>(members[i])] = std::move(next[i]);
    }
    evictions_ += evicted;
    return absl::StatusCode::kOk;
  }

  absl::StatusCode Truncate(SeqId seq, int64_t seq_len) {
    if (!Has(seq)) return absl::StatusCode::kNotFound;
    if (seq_len < 0) return absl::StatusCode::kInvalidArgument;
    std::vector<Layer>& layers = seqs_.at(seq);
    for (const Layer& l : layers) {
      if (kvpage::testing::EndsOnEvicted(l.tokens, seq_len)) {
        return absl::StatusCode::kOutOfRange;
      }
    }
    for (size_t i = 0; i < layers.size(); ++i) {
      if (static_cast<int64_t>(layers[i].tokens.size()) <= seq_len) continue;
      Layer next = layers[i];
      next.tokens.resize(static_cast<size_t>(seq_len));
      Rebalance(policies_[i], layers[i], next,
                Members(static_cast<int>(i)).size());
      layers[i] = std::move(next);
    }
    return absl::StatusCode::kOk;
  }

  int64_t Visible(const Layer& l) const {
    return kvpage::testing::CountVisible(l.tokens);
  }

 private:
  int64_t Sinks(const LayerPolicy& p) const {
    return kvpage::testing::ModelSinks(p);
  }

  // Evicts the oldest visible non-sink tokens as the policy says; returns
  // how many.
  int64_t Evict(const LayerPolicy& p, Layer& l) const {
    return kvpage::testing::EvictOldest(p, l.tokens);
  }

  static bool SameRules(const LayerPolicy& a, const LayerPolicy& b) {
    return a.overflow == b.overflow && a.max_seq_len == b.max_seq_len &&
           kvpage::testing::ModelSinks(a) == kvpage::testing::ModelSinks(b) &&
           EffectiveTruncateTo(a.max_seq_len, a.truncate_to) ==
               EffectiveTruncateTo(b.max_seq_len, b.truncate_to);
  }

  // What a table holds for two states of its layers at once: the sink
  // blocks of both, and one run of window blocks from the first of either
  // to the last of either.
  std::set<int64_t> Hull(const LayerPolicy& p, const std::set<int64_t>& a,
                         const std::set<int64_t>& b) const {
    const int64_t bt = c_.block_tokens;
    const int64_t sink_blocks = (Sinks(p) + bt - 1) / bt;
    std::set<int64_t> out;
    int64_t lo = INT64_MAX, hi = -1;
    for (const std::set<int64_t>* s : {&a, &b}) {
      for (int64_t block : *s) {
        if (block < sink_blocks) {
          out.insert(block);
        } else {
          lo = std::min(lo, block);
          hi = std::max(hi, block);
        }
      }
    }
    for (int64_t block = lo; block <= hi; ++block) out.insert(block);
    return out;
  }

  // Logical blocks with a visible position.
  std::set<int64_t> Held(const Layer& l) const {
    std::set<int64_t> held;
    for (size_t p = 0; p < l.tokens.size(); ++p) {
      if (l.tokens[p].visible)
        held.insert(static_cast<int64_t>(p) / c_.block_tokens);
    }
    return held;
  }

  // Moves `next`'s spares after the change from `old`; returns the blocks
  // the change takes from the pool.
  // A ring's blocks: those its window touches, and in a table of several
  // layers one more, for layers a token apart.
  int64_t RingBlocks(const LayerPolicy& p, size_t layers = 1) const {
    const int64_t bt = c_.block_tokens;
    const int64_t span = p.max_seq_len - Sinks(p) - (layers > 1 ? 0 : 1);
    return (span + bt - 1) / bt + 1;
  }

  int64_t Rebalance(const LayerPolicy& p, const Layer& old, Layer& next,
                    size_t layers = 1) const {
    const std::set<int64_t> before = Held(old), after = Held(next);
    int64_t released = 0, needed = 0;
    for (int64_t b : before) released += after.count(b) == 0;
    for (int64_t b : after) needed += before.count(b) == 0;
    if (p.overflow != OverflowPolicy::kCircularBuffer) {
      next.spares = 0;
      return std::max<int64_t>(0, needed - released);
    }
    const int64_t bt = c_.block_tokens;
    const int64_t sink_blocks = (Sinks(p) + bt - 1) / bt;
    const int64_t ring = RingBlocks(p, layers);
    int64_t window_blocks = 0;
    for (int64_t b : after) window_blocks += b >= sink_blocks;
    const int64_t available = old.spares + released;
    const int64_t reused = std::min(needed, available);
    next.spares = std::min(available - reused,
                           std::max<int64_t>(0, ring - window_blocks));
    return needed - reused;
  }

  const CacheConfig c_;
  const int64_t elems_;
  std::vector<LayerPolicy> policies_;
  std::map<SeqId, std::vector<Layer>> seqs_;
  std::vector<std::vector<int>> members_;  // per group, ascending layers
  int64_t evictions_ = 0;
  int64_t bytes_written_ = 0;
};

struct Scenario {
  std::string name;
  CacheConfig config;
  bool opaque_storage = false;
  // With compression, values read back within this absolute error (0: exact).
  // A block compressed, made hot by a write and compressed again carries the
  // rounding of each round in its other tokens: a few quantization steps.
  float tolerance = 0;
  // Forks share blocks, which the model does not track: the pool is made
  // large enough never to run out, and block counts are checked as bounds.
  bool forks = false;
};

void PrintTo(const Scenario& s, std::ostream* os) { *os << s.name; }

class DifferentialTest
    : public ::testing::TestWithParam<std::tuple<Scenario, int>> {};

// Encodes f32 values into `dtype` bytes (exact for ExactValues()).
std::vector<std::byte> Encode(const std::vector<float>& values, DType dtype) {
  std::vector<std::byte> out(values.size() * DTypeSize(dtype));
  internal::ConvertElements(values.data(), DType::kF32, out.data(), dtype,
                            static_cast<int64_t>(values.size()));
  return out;
}

// An engine's write kernel: the keys and values `k` and `v` (the cache's
// dtype, one token after the other) at the slots of `layer`, skipping
// kNoSlot.
void WriteKernel(KVCache& cache, int layer, const std::vector<int64_t>& slots,
                 const std::vector<std::byte>& k,
                 const std::vector<std::byte>& v) {
  const CacheConfig& c = cache.config();
  auto* base = static_cast<std::byte*>(*cache.LayerBase(layer));
  const int64_t token_bytes =
      int64_t{c.num_kv_heads} * c.head_dim * DTypeSize(c.dtype);
  const int64_t bt = c.block_tokens;
  for (size_t i = 0; i < slots.size(); ++i) {
    const int64_t slot = slots[i];
    if (slot == kNoSlot) continue;
    std::byte* block = base + slot / bt * BlockBytes(c);
    const auto from = static_cast<int64_t>(i) * token_bytes;
    std::memcpy(block + slot % bt * token_bytes, k.data() + from, token_bytes);
    std::memcpy(block + BlockBytes(c) / 2 + slot % bt * token_bytes,
                v.data() + from, token_bytes);
  }
}

TEST_P(DifferentialTest, CacheAgreesWithTheReferenceModel) {
  const auto& [scenario, seed] = GetParam();
  const CacheConfig& c = scenario.config;
  absl::StatusOr<std::unique_ptr<KVCache>> created =
      scenario.opaque_storage
          ? internal::KVCacheAccess::CreateWithStorage(
                c, std::make_unique<kvpage::testing::OpaqueStorage>(
                       StorageBlocks(c), BlockBytes(c)))
          : KVCache::Create(c);
  ASSERT_TRUE(created.ok()) << created.status();
  KVCache& cache = **created;
  ReferenceModel model(c);
  std::mt19937_64 rng(static_cast<uint64_t>(seed));
  const int64_t elems = int64_t{c.num_kv_heads} * c.head_dim;
  auto uniform = [&](int64_t lo, int64_t hi) {  // inclusive
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  std::map<absl::StatusCode, int> outcomes;
  constexpr int kOps = 3000;

  for (int op = 0; op < kOps; ++op) {
    const std::vector<SeqId> ids = model.Ids();
    const int dice = static_cast<int>(uniform(0, 99));
    if (ids.empty() || (dice < 6 && ids.size() < 6)) {
      const SeqId seq = *cache.AddSequence();
      ASSERT_FALSE(model.Has(seq)) << "sequence id " << seq << " reused";
      model.Add(seq);
      continue;
    }
    SeqId seq = ids[static_cast<size_t>(uniform(0, ids.size() - 1))];
    if (scenario.forks && dice >= 6 && dice < 9 && ids.size() < 6) {
      const SeqId child = *cache.Fork(seq);
      ASSERT_FALSE(model.Has(child)) << "sequence id " << child << " reused";
      model.Fork(seq, child);
      ASSERT_VALID(cache);
      continue;
    }
    const CacheFingerprint before = Fingerprint(cache);
    absl::Status status;
    absl::StatusCode want;
    std::string what;

    if (dice < 9) {  // remove, sometimes an unknown id
      if (uniform(0, 3) == 0) seq = 1'000'000 + op;
      want =
          model.Has(seq) ? absl::StatusCode::kOk : absl::StatusCode::kNotFound;
      status = cache.RemoveSequence(seq);
      what = "remove";
      if (want == absl::StatusCode::kOk) model.Remove(seq);
    } else if (c.compression.enabled && dice < 12) {  // compress old blocks
      const int layer = static_cast<int>(uniform(0, c.num_layers - 1));
      const double keep = static_cast<double>(uniform(0, 4)) / 4.0;
      want = absl::StatusCode::kOk;
      status = cache.CompressOldEntries(seq, layer, keep);
      what = "compress layer " + std::to_string(layer);
    } else if (dice < 15) {  // truncate, sometimes invalid
      const int64_t longest = cache.Stats(seq)->current_length;
      const int64_t to = uniform(-1, longest + 1);
      want = model.Truncate(seq, to);
      status = cache.Truncate(seq, to);
      what = "truncate to " + std::to_string(to);
    } else {  // an update: decode, prefill, overwrite/rollback or a bad call
      int layer = static_cast<int>(uniform(0, c.num_layers - 1));
      const int64_t len = model.Length(seq, layer);
      int64_t n, seq_len;
      if (dice < 55) {  // decode
        n = 1;
        seq_len = len + 1;
      } else if (dice < 70) {  // append a chunk
        n = uniform(1, 2 * c.block_tokens + 1);
        seq_len = len + n;
      } else {  // anything: overwrite, rollback, sometimes a gap or too long
        seq_len = uniform(0, len + 3);
        n = uniform(0, std::min<int64_t>(seq_len, 3 * c.block_tokens));
      }
      // One deliberate mistake in about one update in ten.
      const int mistake = dice >= 91 ? static_cast<int>(uniform(0, 5)) : -1;
      if (mistake == 5) {  // append past max_seq_len, without a gap
        seq_len = std::max(len, c.max_seq_len) + uniform(1, 3);
        n = seq_len - len;
      }
      const std::vector<float> kf = ExactValues(rng, n * elems);
      const std::vector<float> vf = ExactValues(rng, n * elems);
      const DType in_dtype = uniform(0, 1) ? c.dtype : DType::kF32;
      const std::vector<std::byte> kb = Encode(kf, in_dtype);
      const std::vector<std::byte> vb = Encode(vf, in_dtype);
      TokenSpan k{.data = kb.data(), .dtype = in_dtype, .tokens = n};
      TokenSpan v{.data = vb.data(), .dtype = in_dtype, .tokens = n};
      switch (mistake) {
        case 0:
          layer = uniform(0, 1) ? -1 : c.num_layers;
          break;
        case 1:
          v.tokens = n + 1;
          break;
        case 2:
          k.dtype = c.dtype == DType::kBF16 ? DType::kF16 : DType::kBF16;
          break;
        case 3:
          v.data = n > 0 ? nullptr : v.data;
          break;
        case 4:
          seq = 2'000'000 + op;
          break;
        default:
          break;
      }
      // One update in four goes through engine mode instead: Reserve, then
      // the test writes the tokens (in the cache's dtype) at their slots,
      // as an engine's kernel would. The same rule, no bytes_written.
      const bool reserve =
          mistake != 1 && mistake != 2 && mistake != 3 && uniform(0, 3) == 0;
      if (c.group_layers) {
        // A forward pass over a group: each of its layers in turn, or one
        // reservation for all of them. Every layer gets its own data.
        std::vector<int> members = {layer};
        if (layer >= 0 && layer < c.num_layers) members = model.Members(layer);
        std::vector<std::vector<float>> ks = {kf}, vs = {vf};
        for (size_t i = 1; i < members.size(); ++i) {
          ks.push_back(ExactValues(rng, n * elems));
          vs.push_back(ExactValues(rng, n * elems));
        }
        const int64_t bytes_before = model.bytes_written();
        want = model.GroupPass({.seq = seq,
                                .layer = members[0],
                                .seq_len = seq_len,
                                .n = k.tokens,
                                .v_tokens = v.tokens,
                                .k_dtype = k.dtype,
                                .v_dtype = v.dtype,
                                .k_null = k.data == nullptr,
                                .v_null = v.data == nullptr},
                               ks, vs, reserve);
        if (reserve) {
          model.set_bytes_written(bytes_before);
          std::vector<int64_t> slots(static_cast<size_t>(n));
          status =
              cache.Reserve(seq, members[0], seq_len, n, absl::MakeSpan(slots));
          for (size_t m = 0; status.ok() && m < members.size(); ++m) {
            WriteKernel(cache, members[m], slots, Encode(ks[m], c.dtype),
                        Encode(vs[m], c.dtype));
          }
          what = "reserve group of layer " + std::to_string(members[0]);
        } else {
          for (size_t m = 0; m < members.size(); ++m) {
            const std::vector<std::byte> km = Encode(ks[m], in_dtype);
            const std::vector<std::byte> vm = Encode(vs[m], in_dtype);
            TokenSpan k_m = k, v_m = v;
            if (m > 0) {
              k_m.data = km.data();
              v_m.data = vm.data();
            }
            const absl::Status s =
                cache.Update(seq, members[m], k_m, v_m, seq_len);
            if (m == 0) {
              status = s;
              if (!s.ok()) break;
            } else {
              ASSERT_TRUE(s.ok()) << "op " << op << " layer " << members[m]
                                  << " of a pass: " << s;
            }
          }
          what = "pass over the group of layer " + std::to_string(members[0]) +
                 " n " + std::to_string(n) + " seq_len " +
                 std::to_string(seq_len);
        }
      } else if (reserve) {
        const std::vector<std::byte> kc = Encode(kf, c.dtype);
        const std::vector<std::byte> vc = Encode(vf, c.dtype);
        const int64_t bytes_before = model.bytes_written();
        want = model.Update(seq, layer,
                            {.data = kc.data(), .dtype = c.dtype, .tokens = n},
                            {.data = vc.data(), .dtype = c.dtype, .tokens = n},
                            seq_len, kf, vf);
        model.set_bytes_written(bytes_before);
        std::vector<int64_t> slots(static_cast<size_t>(n));
        status = cache.Reserve(seq, layer, seq_len, n, absl::MakeSpan(slots));
        if (status.ok()) WriteKernel(cache, layer, slots, kc, vc);
        what = "reserve layer " + std::to_string(layer) + " n " +
               std::to_string(n) + " seq_len " + std::to_string(seq_len);
      } else {
        want = model.Update(seq, layer, k, v, seq_len, kf, vf);
        status = cache.Update(seq, layer, k, v, seq_len);
        what = "update layer " + std::to_string(layer) + " n " +
               std::to_string(k.tokens) + " seq_len " + std::to_string(seq_len);
      }
    }

    ++outcomes[status.code()];
    ASSERT_EQ(status.code(), want)
        << "op " << op << " seq " << seq << " " << what << ": " << status;
    if (!status.ok()) {
      ASSERT_TRUE(Unchanged(cache, before))
          << "op " << op << " failed (" << status << ") but changed the cache";
    }
    ASSERT_TRUE(IsValid(cache)) << "op " << op;
    // The snapshot verifier checks the same invariants offline: it must
    // agree with Validate() on every state the model reaches.
    if (op % 7 == 0) {
      const std::vector<SnapshotViolation> violations =
          VerifySnapshot(*cache.TakeSnapshot({}));
      ASSERT_TRUE(violations.empty())
          << "op " << op << ": " << violations.front().check << ": "
          << violations.front().message;
    }
    const CacheStats stats = cache.Stats();
    // A held block is hot or compressed; forks share some.
    const int64_t held =
        stats.blocks_used + stats.quant_blocks_int8 + stats.quant_blocks_int4;
    if (scenario.forks) {
      ASSERT_LE(held, model.BlocksUsed()) << "op " << op;
    } else {
      ASSERT_EQ(held, model.BlocksUsed()) << "op " << op;
    }
    ASSERT_EQ(stats.tokens_stored, model.TokensStored()) << "op " << op;
    if (!scenario.forks) {
      ASSERT_EQ(stats.bytes_copied, 0);
    }
    ASSERT_EQ(stats.evictions, model.evictions()) << "op " << op;
    ASSERT_EQ(stats.bytes_written, model.bytes_written()) << "op " << op;
    for (SeqId id : model.Ids()) {
      for (int layer = 0; layer < c.num_layers; ++layer) {
        const GatheredLayer got = *cache.Gather(id, layer);
        std::vector<float> want_k, want_v;
        std::vector<int64_t> want_positions;
        const ReferenceModel::Layer& ref = model.At(id, layer);
        for (size_t p = 0; p < ref.tokens.size(); ++p) {
          if (!ref.tokens[p].visible) continue;
          want_k.insert(want_k.end(), ref.tokens[p].k.begin(),
                        ref.tokens[p].k.end());
          want_v.insert(want_v.end(), ref.tokens[p].v.begin(),
                        ref.tokens[p].v.end());
          want_positions.push_back(static_cast<int64_t>(p));
        }
        ASSERT_EQ(got.positions, want_positions)
            << "op " << op << " seq " << id << " layer " << layer;
        if (scenario.tolerance == 0) {
          ASSERT_EQ(got.k, want_k)
              << "op " << op << " seq " << id << " layer " << layer;
          ASSERT_EQ(got.v, want_v) << "op " << op << " seq " << id;
        } else {
          ASSERT_EQ(got.k.size(), want_k.size());
          for (size_t i = 0; i < want_k.size(); ++i) {
            ASSERT_NEAR(got.k[i], want_k[i], scenario.tolerance)
                << "op " << op << " seq " << id << " layer " << layer;
            ASSERT_NEAR(got.v[i], want_v[i], scenario.tolerance)
                << "op " << op << " seq " << id << " layer " << layer;
          }
        }
        ASSERT_EQ(*cache.Length(id, layer), model.Length(id, layer));
      }
    }
  }
  // The walk covered the interesting outcomes, not only the happy path.
  EXPECT_GT(outcomes[absl::StatusCode::kOk], kOps / 2);
  EXPECT_GT(outcomes[absl::StatusCode::kInvalidArgument], 0);
  if (!scenario.forks) {  // the fork scenarios' pools never run out
    EXPECT_GT(outcomes[absl::StatusCode::kResourceExhausted], 0);
  }
  EXPECT_GT(outcomes[absl::StatusCode::kNotFound], 0);
  bool evicting = c.overflow != OverflowPolicy::kError;
  for (const LayerPolicy& p : c.layer_policies) {
    evicting |= p.overflow != OverflowPolicy::kError;
  }
  if (evicting) {
    EXPECT_GT(outcomes[absl::StatusCode::kOutOfRange], 0);
    EXPECT_GT(model.evictions(), 0);
  }

  for (SeqId id : model.Ids()) ASSERT_TRUE(cache.RemoveSequence(id).ok());
  EXPECT_EQ(cache.Stats().blocks_used, 0);
  EXPECT_EQ(cache.Stats().tokens_stored, 0);
  EXPECT_VALID(cache);
}

// Four layers of one policy each: a sliding window (2 sinks), the error
// policy, a circular buffer (`ring_sinks` sinks) and a context shift.
CacheConfig EveryPolicy(int64_t num_blocks, int64_t ring_sinks) {
  return {
      .num_layers = 4,
      .num_kv_heads = 1,
      .head_dim = 4,
      .dtype = DType::kF16,
      .block_tokens = 4,
      .num_blocks = num_blocks,
      .max_seq_len = 12,
      .overflow = OverflowPolicy::kSlidingWindow,
      .sink_tokens = 2,
      .layer_policies = {
          {.layer = 1, .overflow = OverflowPolicy::kError, .max_seq_len = 40},
          {.layer = 2,
           .overflow = OverflowPolicy::kCircularBuffer,
           .max_seq_len = 9,
           .sink_tokens = ring_sinks},
          {.layer = 3,
           .overflow = OverflowPolicy::kTruncate,
           .max_seq_len = 10,
           .sink_tokens = 1,
           .truncate_to = 6}}};
}

// `c` with one table per group of layers.
CacheConfig Grouped(CacheConfig c) {
  c.group_layers = true;
  return c;
}

// EveryPolicy's four layers twice over, grouped: four groups of two.
CacheConfig EveryPolicyTwice(int64_t num_blocks, int64_t ring_sinks) {
  CacheConfig c = Grouped(EveryPolicy(num_blocks, ring_sinks));
  c.num_layers = 8;
  const size_t n = c.layer_policies.size();
  for (size_t i = 0; i < n; ++i) {
    LayerPolicy p = c.layer_policies[i];
    p.layer += 4;
    c.layer_policies.push_back(p);
  }
  return c;
}

// Two layers of 2 x 8 f16 whose blocks are compressed to int8 as they turn
// cold.
CacheConfig AutoInt8(int64_t num_blocks, int64_t quant_cells) {
  return {.num_layers = 2,
          .num_kv_heads = 2,
          .head_dim = 8,
          .dtype = DType::kF16,
          .block_tokens = 4,
          .num_blocks = num_blocks,
          .max_seq_len = 48,
          .compression = {.enabled = true,
                          .bits = QuantBits::kInt8,
                          .group_size = 4,
                          .hot_tokens = 6,
                          .quant_cells = quant_cells,
                          .auto_compress = true}};
}

std::vector<Scenario> Scenarios() {
  // Small pools so that exhaustion is frequent; max_seq_len small enough
  // that the error policy triggers.
  return {
      {.name = "f16_blocks_of_4",
       .config = {.num_layers = 3,
                  .num_kv_heads = 2,
                  .head_dim = 4,
                  .dtype = DType::kF16,
                  .block_tokens = 4,
                  .num_blocks = 40,
                  .max_seq_len = 48}},
      {.name = "bf16_blocks_of_3",
       .config = {.num_layers = 2,
                  .num_kv_heads = 1,
                  .head_dim = 8,
                  .dtype = DType::kBF16,
                  .block_tokens = 3,
                  .num_blocks = 50,
                  .max_seq_len = 40}},
      {.name = "f32_blocks_of_1",
       .config = {.num_layers = 2,
                  .num_kv_heads = 3,
                  .head_dim = 2,
                  .dtype = DType::kF32,
                  .block_tokens = 1,
                  .num_blocks = 60,
                  .max_seq_len = 30}},
      {.name = "f16_blocks_of_16_opaque_storage",
       .config = {.num_layers = 2,
                  .num_kv_heads = 2,
                  .head_dim = 8,
                  .dtype = DType::kF16,
                  .block_tokens = 16,
                  .num_blocks = 12,
                  .max_seq_len = 64},
       .opaque_storage = true},
      {.name = "sliding_window",
       .config = {.num_layers = 2,
                  .num_kv_heads = 1,
                  .head_dim = 4,
                  .dtype = DType::kF16,
                  .block_tokens = 4,
                  .num_blocks = 30,
                  .max_seq_len = 13,
                  .overflow = OverflowPolicy::kSlidingWindow}},
      {.name = "sliding_window_sinks_share_a_block",
       .config = {.num_layers = 2,
                  .num_kv_heads = 1,
                  .head_dim = 4,
                  .dtype = DType::kBF16,
                  .block_tokens = 4,
                  .num_blocks = 30,
                  .max_seq_len = 14,
                  .overflow = OverflowPolicy::kSlidingWindow,
                  .sink_tokens = 3}},
      {.name = "circular_buffer_sinks",
       .config = {.num_layers = 2,
                  .num_kv_heads = 1,
                  .head_dim = 4,
                  .dtype = DType::kF16,
                  .block_tokens = 4,
                  .num_blocks = 30,
                  .max_seq_len = 13,
                  .overflow = OverflowPolicy::kCircularBuffer,
                  .sink_tokens = 2}},
      {.name = "circular_buffer_blocks_of_1",
       .config = {.num_layers = 2,
                  .num_kv_heads = 2,
                  .head_dim = 2,
                  .dtype = DType::kF32,
                  .block_tokens = 1,
                  .num_blocks = 40,
                  .max_seq_len = 5,
                  .overflow = OverflowPolicy::kCircularBuffer,
                  .sink_tokens = 1}},
      {.name = "truncate_half",
       .config = {.num_layers = 2,
                  .num_kv_heads = 1,
                  .head_dim = 4,
                  .dtype = DType::kF16,
                  .block_tokens = 4,
                  .num_blocks = 30,
                  .max_seq_len = 16,
                  .overflow = OverflowPolicy::kTruncate,
                  .sink_tokens = 2}},
      {.name = "truncate_to_5_sinks_4",
       .config = {.num_layers = 1,
                  .num_kv_heads = 2,
                  .head_dim = 4,
                  .dtype = DType::kF16,
                  .block_tokens = 3,
                  .num_blocks = 20,
                  .max_seq_len = 11,
                  .overflow = OverflowPolicy::kTruncate,
                  .sink_tokens = 4,
                  .truncate_to = 5}},
      {.name = "hybrid_per_layer_policies",
       .config = EveryPolicy(/*num_blocks=*/48, /*ring_sinks=*/0),
       .opaque_storage = true},
      // Compression: a hot pool large enough never to run out (the model
      // counts compressed blocks as held), a quantized pool that fills up.
      {.name = "compressed_int8_auto",
       .config = AutoInt8(/*num_blocks=*/400, /*quant_cells=*/24),
       .tolerance = 1.0f},
      {.name = "compressed_mixed_sliding",
       .config = {.num_layers = 2,
                  .num_kv_heads = 1,
                  .head_dim = 8,
                  .dtype = DType::kF16,
                  .block_tokens = 4,
                  .num_blocks = 400,
                  .max_seq_len = 24,
                  .overflow = OverflowPolicy::kSlidingWindow,
                  .sink_tokens = 2,
                  .layer_policies = {{.layer = 1,
                                      .overflow = OverflowPolicy::kError,
                                      .max_seq_len = 40}},
                  .compression = {.enabled = true,
                                  .group_size = 8,
                                  .hot_tokens = 4,
                                  .quant_cells = 30,
                                  .max_rel_error = 5e-3}},
       .opaque_storage = true,
       .tolerance = 6.0f},
      // Layer groups: a forward pass moves a group's layers one at a time
      // (the table holds the blocks of both states meanwhile) or reserves
      // once for all of them.
      {.name = "groups_every_policy",
       .config = EveryPolicyTwice(/*num_blocks=*/28, /*ring_sinks=*/1),
       .opaque_storage = true},
      {.name = "groups_windows_and_rings",
       .config = Grouped(
           {.num_layers = 4,
            .num_kv_heads = 1,
            .head_dim = 4,
            .dtype = DType::kBF16,
            .block_tokens = 3,
            .num_blocks = 16,
            .max_seq_len = 11,
            .overflow = OverflowPolicy::kSlidingWindow,
            .sink_tokens = 2,
            .layer_policies = {{.layer = 1,
                                .overflow = OverflowPolicy::kCircularBuffer,
                                .max_seq_len = 8,
                                .sink_tokens = 1},
                               {.layer = 3,
                                .overflow = OverflowPolicy::kCircularBuffer,
                                .max_seq_len = 8,
                                .sink_tokens = 1}}})},
      // Compressed groups: a group's block is compressed whole (every
      // layer's part) as it turns cold and by CompressOldEntries, and made
      // hot again by a write or a reservation. (Mixed formats per group:
      // tests/group_compression_test.cc.)
      {.name = "groups_compressed_int8_auto",
       .config =
           Grouped({.num_layers = 4,
                    .num_kv_heads = 1,
                    .head_dim = 8,
                    .dtype = DType::kF16,
                    .block_tokens = 4,
                    .num_blocks = 200,
                    .max_seq_len = 24,
                    .overflow = OverflowPolicy::kSlidingWindow,
                    .sink_tokens = 2,
                    .layer_policies = {{.layer = 1,
                                        .overflow = OverflowPolicy::kError,
                                        .max_seq_len = 24},
                                       {.layer = 3,
                                        .overflow = OverflowPolicy::kError,
                                        .max_seq_len = 40}},
                    .compression = {.enabled = true,
                                    .group_size = 8,
                                    .hot_tokens = 4,
                                    .quant_cells = 30,
                                    .auto_compress = true}}),
       .opaque_storage = true,
       .tolerance = 1.0f},
      {.name = "groups_forks",
       .config = EveryPolicyTwice(/*num_blocks=*/1000, /*ring_sinks=*/1),
       .forks = true},
      {.name = "forks_every_policy",
       .config = EveryPolicy(/*num_blocks=*/1000, /*ring_sinks=*/1),
       .forks = true},
      {.name = "forks_compressed",
       .config = AutoInt8(/*num_blocks=*/1000, /*quant_cells=*/40),
       .tolerance = 1.0f,
       .forks = true},
  };
}

INSTANTIATE_TEST_SUITE_P(Seeds, DifferentialTest,
                         ::testing::Combine(::testing::ValuesIn(Scenarios()),
                                            ::testing::Values(1, 2, 3)),
                         [](const auto& info) {
                           return std::get<0>(info.param).name + "_seed" +
                                  std::to_string(std::get<1>(info.param));
                         });

}  // namespace
}  // namespace kvpage
