// Randomized differential test: thousands of seeded operations, invalid ones
// included, on a KVCache and on a plain reference model (a vector of tokens
// per sequence and layer). After every operation the cache must agree with
// the model: same status code, same tokens, same block usage; a failed call
// must leave the cache exactly as it was; Validate() must pass.
#include <algorithm>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "allocator/convert.h"
#include "cache/kv_cache_internal.h"
#include "gtest/gtest.h"
#include "kvpage/kvpage.h"
#include "tests/test_util.h"

namespace kvpage {
namespace {

using kvpage::testing::ExactValues;
using kvpage::testing::Fingerprint;

// The reference: layer l of a sequence holds positions [0, k.size() / elems).
class ReferenceModel {
 public:
  explicit ReferenceModel(const CacheConfig& c)
      : c_(c), elems_(int64_t{c.num_kv_heads} * c.head_dim) {}

  struct Layer {
    std::vector<float> k, v;
  };

  void Add(SeqId seq) {
    seqs_[seq] = std::vector<Layer>(static_cast<size_t>(c_.num_layers));
  }
  bool Has(SeqId seq) const { return seqs_.count(seq) > 0; }
  void Remove(SeqId seq) { seqs_.erase(seq); }
  int64_t Length(SeqId seq, int layer) const {
    return static_cast<int64_t>(
               seqs_.at(seq)[static_cast<size_t>(layer)].k.size()) /
           elems_;
  }
  int64_t BlocksUsed() const {
    int64_t blocks = 0;
    for (const auto& [seq, layers] : seqs_) {
      for (const Layer& l : layers) {
        const int64_t len = static_cast<int64_t>(l.k.size()) / elems_;
        blocks += (len + c_.block_tokens - 1) / c_.block_tokens;
      }
    }
    return blocks;
  }
  int64_t TokensStored() const {
    int64_t tokens = 0;
    for (const auto& [seq, layers] : seqs_) {
      for (const Layer& l : layers) {
        tokens += static_cast<int64_t>(l.k.size()) / elems_;
      }
    }
    return tokens;
  }

  // The status code the update rule gives, checks in the documented order.
  absl::StatusCode Check(SeqId seq, int layer, const TokenSpan& k,
                         const TokenSpan& v, int64_t seq_len) const {
    if (!Has(seq)) return absl::StatusCode::kNotFound;
    if (layer < 0 || layer >= c_.num_layers) {
      return absl::StatusCode::kInvalidArgument;
    }
    const int64_t n = k.tokens;
    if (k.tokens != v.tokens || n < 0) return absl::StatusCode::kInvalidArgument;
    for (const TokenSpan* s : {&k, &v}) {
      if (s->dtype != DType::kF32 && s->dtype != c_.dtype) {
        return absl::StatusCode::kInvalidArgument;
      }
      if (n > 0 && s->data == nullptr) return absl::StatusCode::kInvalidArgument;
    }
    if (seq_len < n) return absl::StatusCode::kInvalidArgument;
    const int64_t len = Length(seq, layer);
    if (seq_len - n > len) return absl::StatusCode::kInvalidArgument;
    if (seq_len > c_.max_seq_len) return absl::StatusCode::kResourceExhausted;
    const int64_t bt = c_.block_tokens;
    const int64_t extra = (seq_len + bt - 1) / bt - (len + bt - 1) / bt;
    if (extra > c_.num_blocks - BlocksUsed()) {
      return absl::StatusCode::kResourceExhausted;
    }
    return absl::StatusCode::kOk;
  }

  void Apply(SeqId seq, int layer, const std::vector<float>& k,
             const std::vector<float>& v, int64_t seq_len) {
    Layer& l = seqs_.at(seq)[static_cast<size_t>(layer)];
    const int64_t n = static_cast<int64_t>(k.size()) / elems_;
    const size_t start = static_cast<size_t>((seq_len - n) * elems_);
    l.k.resize(start);
    l.v.resize(start);
    l.k.insert(l.k.end(), k.begin(), k.end());
    l.v.insert(l.v.end(), v.begin(), v.end());
  }

  void Truncate(SeqId seq, int64_t seq_len) {
    for (Layer& l : seqs_.at(seq)) {
      const size_t keep = static_cast<size_t>(seq_len * elems_);
      if (l.k.size() > keep) {
        l.k.resize(keep);
        l.v.resize(keep);
      }
    }
  }

  const Layer& At(SeqId seq, int layer) const {
    return seqs_.at(seq)[static_cast<size_t>(layer)];
  }
  std::vector<SeqId> Ids() const {
    std::vector<SeqId> ids;
    for (const auto& [seq, layers] : seqs_) ids.push_back(seq);
    return ids;
  }

 private:
  const CacheConfig c_;
  const int64_t elems_;
  std::map<SeqId, std::vector<Layer>> seqs_;
};

struct Scenario {
  std::string name;
  CacheConfig config;
  bool opaque_storage = false;
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

TEST_P(DifferentialTest, CacheAgreesWithTheReferenceModel) {
  const auto& [scenario, seed] = GetParam();
  const CacheConfig& c = scenario.config;
  absl::StatusOr<std::unique_ptr<KVCache>> created =
      scenario.opaque_storage
          ? internal::KVCacheAccess::CreateWithStorage(
                c, std::make_unique<kvpage::testing::OpaqueStorage>(
                       c.num_blocks, BlockBytes(c)))
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
    const std::string before = Fingerprint(cache);
    absl::Status status;
    absl::StatusCode want;
    std::string what;

    if (dice < 9) {  // remove, sometimes an unknown id
      if (uniform(0, 3) == 0) seq = 1'000'000 + op;
      want = model.Has(seq) ? absl::StatusCode::kOk
                            : absl::StatusCode::kNotFound;
      status = cache.RemoveSequence(seq);
      what = "remove";
      if (want == absl::StatusCode::kOk) model.Remove(seq);
    } else if (dice < 15) {  // truncate, sometimes invalid
      const int64_t to = uniform(-1, c.max_seq_len);
      want = to < 0 ? absl::StatusCode::kInvalidArgument
                    : absl::StatusCode::kOk;
      status = cache.Truncate(seq, to);
      what = "truncate to " + std::to_string(to);
      if (want == absl::StatusCode::kOk) model.Truncate(seq, to);
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
        seq_len = uniform(0, std::min(len + 3, c.max_seq_len + 2));
        n = uniform(0, seq_len);
      }
      // One deliberate mistake in about one update in ten.
      const int mistake = dice >= 91 ? static_cast<int>(uniform(0, 5)) : -1;
      if (mistake == 5) {  // append past max_seq_len, without a gap
        seq_len = c.max_seq_len + uniform(1, 3);
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
        case 0: layer = uniform(0, 1) ? -1 : c.num_layers; break;
        case 1: v.tokens = n + 1; break;
        case 2:
          k.dtype = c.dtype == DType::kBF16 ? DType::kF16 : DType::kBF16;
          break;
        case 3: v.data = n > 0 ? nullptr : v.data; break;
        case 4: seq = 2'000'000 + op; break;
        default: break;
      }
      want = model.Check(seq, layer, k, v, seq_len);
      status = cache.Update(seq, layer, k, v, seq_len);
      what = "update layer " + std::to_string(layer) + " n " +
             std::to_string(k.tokens) + " seq_len " + std::to_string(seq_len);
      if (want == absl::StatusCode::kOk) model.Apply(seq, layer, kf, vf, seq_len);
    }

    ++outcomes[status.code()];
    ASSERT_EQ(status.code(), want)
        << "op " << op << " seq " << seq << " " << what << ": " << status;
    if (!status.ok()) {
      ASSERT_EQ(Fingerprint(cache), before)
          << "op " << op << " failed (" << status << ") but changed the cache";
    }
    ASSERT_TRUE(cache.Validate().ok()) << "op " << op << ": " << cache.Validate();
    const CacheStats stats = cache.Stats();
    ASSERT_EQ(stats.blocks_used, model.BlocksUsed()) << "op " << op;
    ASSERT_EQ(stats.tokens_stored, model.TokensStored()) << "op " << op;
    ASSERT_EQ(stats.bytes_copied, 0);
    for (SeqId id : model.Ids()) {
      for (int layer = 0; layer < c.num_layers; ++layer) {
        const GatheredLayer got = *cache.Gather(id, layer);
        const ReferenceModel::Layer& ref = model.At(id, layer);
        ASSERT_EQ(got.k, ref.k) << "op " << op << " seq " << id << " layer "
                                << layer;
        ASSERT_EQ(got.v, ref.v) << "op " << op << " seq " << id;
        ASSERT_EQ(*cache.Length(id, layer), model.Length(id, layer));
        for (size_t p = 0; p < got.positions.size(); ++p) {
          ASSERT_EQ(got.positions[p], static_cast<int64_t>(p));
        }
      }
    }
  }
  // The walk covered the interesting outcomes, not only the happy path.
  EXPECT_GT(outcomes[absl::StatusCode::kOk], kOps / 2);
  EXPECT_GT(outcomes[absl::StatusCode::kInvalidArgument], 0);
  EXPECT_GT(outcomes[absl::StatusCode::kResourceExhausted], 0);
  EXPECT_GT(outcomes[absl::StatusCode::kNotFound], 0);

  for (SeqId id : model.Ids()) ASSERT_TRUE(cache.RemoveSequence(id).ok());
  EXPECT_EQ(cache.Stats().blocks_used, 0);
  EXPECT_EQ(cache.Stats().tokens_stored, 0);
  EXPECT_TRUE(cache.Validate().ok());
}

std::vector<Scenario> Scenarios() {
  // Small pools so that exhaustion is frequent; max_seq_len small enough
  // that the error policy triggers.
  return {
      {"f16_blocks_of_4",
       {.num_layers = 3, .num_kv_heads = 2, .head_dim = 4,
        .dtype = DType::kF16, .block_tokens = 4, .num_blocks = 40,
        .max_seq_len = 48}},
      {"bf16_blocks_of_3",
       {.num_layers = 2, .num_kv_heads = 1, .head_dim = 8,
        .dtype = DType::kBF16, .block_tokens = 3, .num_blocks = 50,
        .max_seq_len = 40}},
      {"f32_blocks_of_1",
       {.num_layers = 2, .num_kv_heads = 3, .head_dim = 2,
        .dtype = DType::kF32, .block_tokens = 1, .num_blocks = 60,
        .max_seq_len = 30}},
      {"f16_blocks_of_16_opaque_storage",
       {.num_layers = 2, .num_kv_heads = 2, .head_dim = 8,
        .dtype = DType::kF16, .block_tokens = 16, .num_blocks = 12,
        .max_seq_len = 64},
       true},
  };
}

INSTANTIATE_TEST_SUITE_P(
    Seeds, DifferentialTest,
    ::testing::Combine(::testing::ValuesIn(Scenarios()),
                       ::testing::Values(1, 2, 3)),
    [](const auto& info) {
      return std::get<0>(info.param).name + "_seed" +
             std::to_string(std::get<1>(info.param));
    });

}  // namespace
}  // namespace kvpage
