// The decoder on kvpage against the same decoder on a reference store that
// keeps every layer's keys and values in one plain contiguous array and
// decides what is visible with the tests' policy model (tests/policy_model.h),
// independent of kvpage's blocks.
//
// The bound: the decoder's attention is a token-by-token online softmax whose
// arithmetic depends only on the visible tokens and their order (decoder.h),
// and an f32 hot pool stores the f32 keys and values bit for bit. So the same
// visible positions give the same operations in the same order on both
// stores, and every logit must be bit-identical: these tests compare with ==,
// no tolerance.
#include "tools/generate/generate.h"

#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/policy_model.h"
#include "tools/generate/decoder.h"
#include "tools/generate/model.h"
#include "tools/generate/settings.h"
#include "tools/generate/stores.h"

namespace kvpage::generate {
namespace {

using ::testing::HasSubstr;

const Model& Stories() {
  static const Model* model = [] {
    absl::StatusOr<Model> m = LoadModel(KVPAGE_TEST_MODEL);
    if (!m.ok()) {
      ADD_FAILURE() << m.status();
      std::abort();
    }
    return new Model(std::move(*m));
  }();
  return *model;
}

// Every position of a layer, visible or evicted by the policy.
struct Position {
  bool visible = true;
};

// Keys and values in one contiguous array per sequence and layer, indexed by
// position; evicted positions stay in the array but are never read.
class ReferenceStore final : public KvStore {
 public:
  ReferenceStore(const ModelShape& shape, const LayerPolicy& policy)
      : layers_(shape.n_layers), kv_dim_(shape.kv_dim()), policy_(policy) {}

  absl::StatusOr<SeqHandle> Add() override {
    seqs_[next_] = Sequence(static_cast<size_t>(layers_));
    return next_++;
  }
  absl::StatusOr<SeqHandle> Fork(SeqHandle parent) override {
    Sequence copy = seqs_.at(parent);  // before the insertion rehashes
    seqs_[next_] = std::move(copy);
    return next_++;
  }
  absl::Status Remove(SeqHandle seq) override {
    seqs_.erase(seq);
    return absl::OkStatus();
  }
  absl::Status Truncate(SeqHandle seq, int64_t length) override {
    for (Layer& l : seqs_.at(seq)) {
      if (static_cast<int64_t>(l.positions.size()) > length) {
        if (testing::EndsOnEvicted(l.positions, length)) {
          return absl::OutOfRangeError("rollback onto an evicted position");
        }
        l.positions.resize(static_cast<size_t>(length));
      }
    }
    return absl::OkStatus();
  }
  absl::Status Write(SeqHandle seq, int layer, const float* k, const float* v,
                     int64_t n, int64_t length) override {
    Layer& l = seqs_.at(seq)[static_cast<size_t>(layer)];
    const int64_t start = length - n;
    EXPECT_LE(start, static_cast<int64_t>(l.positions.size()));
    l.positions.resize(static_cast<size_t>(length));
    for (int64_t p = start; p < length; ++p) {
      l.positions[static_cast<size_t>(p)] = Position{};
    }
    const size_t need = static_cast<size_t>(length * kv_dim_);
    if (l.k.size() < need) {
      l.k.resize(need);
      l.v.resize(need);
    }
    std::copy(k, k + n * kv_dim_, l.k.begin() + start * kv_dim_);
    std::copy(v, v + n * kv_dim_, l.v.begin() + start * kv_dim_);
    testing::EvictOldest(policy_, l.positions);
    return absl::OkStatus();
  }
  absl::Status Open(SeqHandle seq, int layer,
                    std::vector<KvRun>& runs) override {
    open_ = &seqs_.at(seq)[static_cast<size_t>(layer)];
    runs.clear();
    for (size_t p = 0; p < open_->positions.size(); ++p) {
      if (!open_->positions[p].visible) continue;
      if (!runs.empty() && runs.back().first_position + runs.back().tokens ==
                               static_cast<int64_t>(p)) {
        ++runs.back().tokens;
      } else {
        runs.push_back(
            {.first_position = static_cast<int64_t>(p), .tokens = 1});
      }
    }
    runs_ = runs;
    return absl::OkStatus();
  }
  absl::StatusOr<KvRunData> Fetch(size_t index) override {
    const int64_t first = runs_[index].first_position * kv_dim_;
    return KvRunData{.k = open_->k.data() + first,
                     .v = open_->v.data() + first,
                     .stride = kv_dim_};
  }

 private:
  struct Layer {
    std::vector<Position> positions;
    std::vector<float> k, v;  // [position][kv_dim]
  };
  using Sequence = std::vector<Layer>;
  int layers_, kv_dim_;
  LayerPolicy policy_;
  SeqHandle next_ = 1;
  absl::flat_hash_map<SeqHandle, Sequence> seqs_;
  const Layer* open_ = nullptr;
  std::vector<KvRun> runs_;
};

// A run of Generate on a store of its own.
struct Outcome {
  GenerateResult result;
  CacheStats stats;  // kvpage runs only
};

GenerateOptions Greedy(int64_t steps) {
  return {.steps = steps, .keep_logits = true};
}

Outcome OnKvpage(const GenerateOptions& o, const CacheSettings& cache = {},
                 DecoderOptions d = {}) {
  int64_t longest = static_cast<int64_t>(o.prompt.size());
  for (const auto& p : o.prompts) {
    longest = std::max(longest, static_cast<int64_t>(p.size()));
  }
  absl::StatusOr<CacheConfig> config =
      MakeCacheConfig(Stories().shape(), cache, int64_t{o.requests} * o.samples,
                      longest + o.steps + o.speculate);
  EXPECT_TRUE(config.ok()) << config.status();
  absl::StatusOr<std::unique_ptr<PagedStore>> store =
      PagedStore::Create(*config);
  EXPECT_TRUE(store.ok()) << store.status();
  Decoder decoder(Stories(), **store, d);
  absl::StatusOr<GenerateResult> r = Generate(decoder, **store, o);
  EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE((*store)->cache().Validate().ok());
  return {.result = r.ok() ? std::move(*r) : GenerateResult{},
          .stats = (*store)->cache().Stats()};
}

Outcome OnReference(const GenerateOptions& o, LayerPolicy policy = {},
                    DecoderOptions d = {}) {
  if (policy.max_seq_len == 0) policy.max_seq_len = int64_t{1} << 40;
  ReferenceStore store(Stories().shape(), policy);
  Decoder decoder(Stories(), store, d);
  absl::StatusOr<GenerateResult> r = Generate(decoder, store, o);
  EXPECT_TRUE(r.ok()) << r.status();
  return {.result = r.ok() ? std::move(*r) : GenerateResult{}};
}

// Same ids and bit-identical logits, sample by sample.
void ExpectSameSample(const GenerateResult::Sample& a,
                      const GenerateResult::Sample& b) {
  ASSERT_EQ(a.tokens, b.tokens);
  ASSERT_EQ(a.logits.size(), b.logits.size());
  for (size_t i = 0; i < a.logits.size(); ++i) {
    ASSERT_EQ(a.logits[i], b.logits[i]) << "step " << i;
  }
}

void ExpectSameRuns(const Outcome& a, const Outcome& b) {
  ASSERT_EQ(a.result.samples.size(), b.result.samples.size());
  for (size_t s = 0; s < a.result.samples.size(); ++s) {
    SCOPED_TRACE(absl::StrFormat("sample %d", s));
    ExpectSameSample(a.result.samples[s], b.result.samples[s]);
  }
}

TEST(Model, LoadsTheShippedCheckpoint) {
  const ModelShape& s = Stories().shape();
  EXPECT_EQ(s.dim, 64);
  EXPECT_EQ(s.hidden_dim, 172);
  EXPECT_EQ(s.n_layers, 5);
  EXPECT_EQ(s.n_heads, 8);
  EXPECT_EQ(s.n_kv_heads, 4);
  EXPECT_EQ(s.head_dim(), 8);
  EXPECT_EQ(s.vocab_size, 512);
  EXPECT_EQ(s.seq_len, 512);
  EXPECT_TRUE(s.tied_classifier);
}

std::vector<char> ShippedBytes() {
  std::ifstream in(KVPAGE_TEST_MODEL, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void SetHeader(std::vector<char>& bytes, int field, int32_t value) {
  std::memcpy(bytes.data() + 4 * field, &value, 4);
}

TEST(Model, RefusesTruncatedAndForeignFiles) {
  const std::vector<char> good = ShippedBytes();
  ASSERT_EQ(good.size(), 1056540u);
  std::vector<char> bytes(good.begin(), good.end() - 4);
  absl::StatusOr<Model> m = ParseModel(bytes);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m.status().message(), HasSubstr("truncated"));
  bytes = good;
  bytes.push_back(0);
  EXPECT_THAT(ParseModel(bytes).status().message(), HasSubstr("1 bytes past"));
  EXPECT_THAT(ParseModel(std::vector<char>(good.begin(), good.begin() + 20))
                  .status()
                  .message(),
              HasSubstr("header"));
  struct Bad {
    int field;
    int32_t value;
    const char* says;
  };
  for (const Bad& b :
       {Bad{0, 0, "dim"}, Bad{2, -3, "n_layers"}, Bad{3, 7, "n_heads"},
        Bad{4, 3, "n_kv_heads"}, Bad{5, 0, "vocab_size"},
        Bad{6, 1 << 30, "seq_len"}, Bad{1, 173, "implies"}}) {
    bytes = good;
    SetHeader(bytes, b.field, b.value);
    absl::StatusOr<Model> bad = ParseModel(bytes);
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument)
        << b.says;
    EXPECT_THAT(bad.status().message(), HasSubstr(b.says));
  }
  // A text file is not a checkpoint: its "dimensions" are letters.
  const std::string text = "# stories260K\nA trained model of the llama2.c";
  EXPECT_EQ(ParseModel({text.data(), text.size()}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadModel("/nonexistent/model.bin").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_THAT(LoadModel("/").status().message(), HasSubstr("not a regular"));
}

// llama2.c's own program, on this file from BOS at temperature 0, starts
// with these ids (models/stories260K/README.md): the forward pass is right.
TEST(Decoder, GreedyFromBosMatchesLlama2c) {
  const Outcome r = OnKvpage(Greedy(10));
  EXPECT_THAT(
      r.result.samples[0].tokens,
      ::testing::ElementsAre(461, 461, 401, 401, 401, 461, 378, 455, 473, 456));
}

TEST(Exactness, Greedy256FromBosOnKvpageEqualsContiguous) {
  const GenerateOptions o = Greedy(256);
  const Outcome paged = OnKvpage(o);
  ExpectSameRuns(paged, OnReference(o));
  // And the store the speed comparison uses.
  ContiguousStore plain(Stories().shape().n_layers, Stories().shape().kv_dim());
  Decoder decoder(Stories(), plain, {});
  absl::StatusOr<GenerateResult> r = Generate(decoder, plain, o);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectSameSample(paged.result.samples[0], r->samples[0]);
  EXPECT_EQ(paged.stats.tokens_stored, 5 * 256);
}

std::vector<int32_t> SomePrompt(int64_t n, int32_t salt = 0) {
  std::vector<int32_t> p = {1};
  for (int64_t i = 1; i < n; ++i) {
    p.push_back(static_cast<int32_t>((i * 37 + salt * 11) % 500 + 3));
  }
  return p;
}

TEST(Exactness, ChunkedPrefillOfOddBlocksEqualsContiguous) {
  GenerateOptions o = Greedy(64);
  o.prompt = SomePrompt(70);
  o.prefill_chunk = 13;
  ExpectSameRuns(OnKvpage(o, {.block_tokens = 7}), OnReference(o));
  // One token per pass gives the same logits as chunks of 13.
  GenerateOptions one = o;
  one.prefill_chunk = 1;
  ExpectSameRuns(OnKvpage(one), OnKvpage(o));
}

TEST(Exactness, ForkedSamplesEqualIndependentRuns) {
  GenerateOptions o = Greedy(96);
  o.prompt = SomePrompt(40);
  o.temperature = 1.0;
  o.seed = 5;
  o.samples = 3;
  const Outcome forked = OnKvpage(o);
  EXPECT_GT(forked.stats.bytes_copied, 0);  // copy-on-write of the prompt's
                                            // partly filled last block
  for (int k = 0; k < 3; ++k) {
    GenerateOptions alone = o;
    alone.samples = 1;
    alone.seed = o.seed + static_cast<uint64_t>(k);
    SCOPED_TRACE(absl::StrFormat("sample %d", k));
    ExpectSameSample(forked.result.samples[static_cast<size_t>(k)],
                     OnKvpage(alone).result.samples[0]);
  }
  // Samples differ from each other: the test could fail.
  EXPECT_NE(forked.result.samples[0].tokens, forked.result.samples[1].tokens);
  ExpectSameRuns(forked, OnReference(o));
}

TEST(Exactness, PrefixCacheHitGivesTheLogitsOfComputingThePrompt) {
  GenerateOptions o = Greedy(32);
  o.prompt = SomePrompt(53);
  o.requests = 3;
  o.prefix_cache = true;
  const Outcome cached = OnKvpage(o);
  // Requests 1 and 2 found the prompt's 3 full blocks of 16 (the last token
  // is always computed).
  EXPECT_EQ(cached.result.prompt_tokens_matched, 2 * 48);
  EXPECT_EQ(cached.result.prompt_tokens_computed, 53 + 2 * 5);
  EXPECT_EQ(cached.stats.hits, 2 * 3);
  GenerateOptions computed = o;
  computed.prefix_cache = false;
  ExpectSameRuns(cached, OnKvpage(computed));
  ExpectSameRuns(cached, OnReference(computed));
}

TEST(Exactness, SpeculativeDecodingWithRejectionsEqualsNoDrafting) {
  GenerateOptions o = Greedy(256);
  o.speculate = 4;
  const Outcome spec = OnKvpage(o);
  const GenerateResult::Sample& s = spec.result.samples[0];
  EXPECT_GT(s.accepted, 0);
  EXPECT_GT(s.drafted, s.accepted);  // rejected drafts were truncated
  EXPECT_LT(spec.result.forward_passes, 256);
  ExpectSameSample(s, OnKvpage(Greedy(256)).result.samples[0]);
  ExpectSameRuns(spec, OnReference(o));
}

struct WindowCase {
  OverflowPolicy policy;
  int64_t sinks;
  RopePositions rope;
};

class WindowExactness : public ::testing::TestWithParam<WindowCase> {};

TEST_P(WindowExactness, EqualsReferenceOverTheSameVisiblePositions) {
  const WindowCase& c = GetParam();
  GenerateOptions o = Greedy(200);
  o.prompt = SomePrompt(30);
  o.prefill_chunk = 16;
  const LayerPolicy policy{.overflow = c.policy,
                           .max_seq_len = 48,
                           .sink_tokens = c.sinks,
                           .truncate_to = 24};
  const Outcome paged = OnKvpage(
      o,
      {.policy = c.policy, .window = 48, .sinks = c.sinks, .truncate_to = 24},
      {.rope = c.rope});
  EXPECT_GT(paged.stats.evictions, 0);
  ExpectSameRuns(paged, OnReference(o, policy, {.rope = c.rope}));
}

INSTANTIATE_TEST_SUITE_P(
    Policies, WindowExactness,
    ::testing::Values(
        WindowCase{OverflowPolicy::kSlidingWindow, 0, RopePositions::kAbsolute},
        WindowCase{OverflowPolicy::kSlidingWindow, 4, RopePositions::kAbsolute},
        WindowCase{OverflowPolicy::kCircularBuffer, 0,
                   RopePositions::kAbsolute},
        WindowCase{OverflowPolicy::kCircularBuffer, 4,
                   RopePositions::kAbsolute},
        WindowCase{OverflowPolicy::kTruncate, 0, RopePositions::kAbsolute},
        WindowCase{OverflowPolicy::kTruncate, 4, RopePositions::kAbsolute},
        WindowCase{OverflowPolicy::kSlidingWindow, 4,
                   RopePositions::kVisibleIndex},
        WindowCase{OverflowPolicy::kTruncate, 4, RopePositions::kVisibleIndex}),
    [](const ::testing::TestParamInfo<WindowCase>& info) {
      std::string name = absl::StrFormat(
          "%s_%dSinks_%s", OverflowPolicyName(info.param.policy),
          info.param.sinks,
          info.param.rope == RopePositions::kAbsolute ? "Absolute"
                                                      : "VisibleIndex");
      std::erase(name, '_');
      return name;
    });

// The model on layer groups (one table for its 5 layers): a batch with
// forks, speculation and a sliding window with sinks gives the logits of
// per-layer tables, with a fifth of the blocks.
TEST(Exactness, LayerGroupsGiveThePerLayerLogits) {
  GenerateOptions o = Greedy(120);
  o.prompts = {SomePrompt(21, 1), SomePrompt(40, 2)};
  o.requests = 2;
  o.samples = 2;
  o.temperature = 0.9;
  o.seed = 3;
  o.speculate = 3;
  o.prefill_chunk = 16;
  CacheSettings window{
      .policy = OverflowPolicy::kSlidingWindow, .window = 48, .sinks = 4};
  const Outcome per_layer = OnKvpage(o, window);
  window.group_layers = true;
  const Outcome grouped = OnKvpage(o, window);
  ExpectSameRuns(grouped, per_layer);
  EXPECT_GT(grouped.stats.evictions, 0);
  EXPECT_EQ(grouped.stats.tokens_stored, per_layer.stats.tokens_stored);
  EXPECT_EQ(5 * grouped.stats.blocks_allocated,
            per_layer.stats.blocks_allocated);
}

// Compressed layer groups: a group's block is compressed whole, each layer
// into its own slot with the codes a per-layer table gives it, at the same
// step (the first layer's update compresses what turned cold when a step's
// tokens are within hot_tokens). The model reads the same keys and values
// either way: the same logits, with a fifth of the compressions.
TEST(Exactness, CompressedLayerGroupsGiveThePerLayerLogits) {
  GenerateOptions o = Greedy(100);
  o.prompts = {SomePrompt(37, 1), SomePrompt(20, 2)};
  o.requests = 2;
  o.samples = 2;
  o.temperature = 0.9;
  o.seed = 5;
  o.speculate = 3;
  o.prefill_chunk = 8;
  for (const Compression compression :
       {Compression::kInt8, Compression::kInt4}) {
    SCOPED_TRACE(compression == Compression::kInt8 ? "int8" : "int4");
    CacheSettings settings{.block_tokens = 8,
                           .compression = compression,
                           .group_size = 4,
                           .hot_tokens = 16};
    const Outcome per_layer = OnKvpage(o, settings);
    settings.group_layers = true;
    const Outcome grouped = OnKvpage(o, settings);
    ExpectSameRuns(grouped, per_layer);
    EXPECT_GT(grouped.stats.compressions_applied, 0);
    EXPECT_EQ(5 * grouped.stats.compressions_applied,
              per_layer.stats.compressions_applied);
    EXPECT_EQ(grouped.stats.memory_usage_bytes,
              per_layer.stats.memory_usage_bytes);
  }
}

TEST(Exactness, ABatchGivesTheIdsOfEachRunAlone) {
  GenerateOptions o = Greedy(80);
  o.prompts = {SomePrompt(5, 1), SomePrompt(33, 2), SomePrompt(17, 3),
               SomePrompt(50, 4)};
  o.requests = 4;
  o.temperature = 0.8;
  o.seed = 11;
  o.speculate = 2;  // and lengths that drift apart as drafts are accepted
  const Outcome batch = OnKvpage(o);
  for (int r = 0; r < 4; ++r) {
    GenerateOptions alone = o;
    alone.prompts = {o.prompts[static_cast<size_t>(r)]};
    alone.requests = 1;
    alone.seed = o.seed + 1000003ull * static_cast<uint64_t>(r);
    SCOPED_TRACE(absl::StrFormat("request %d", r));
    ExpectSameSample(batch.result.samples[static_cast<size_t>(r)],
                     OnKvpage(alone).result.samples[0]);
  }
  ExpectSameRuns(batch, OnReference(o));
}

// Blocks that are not f32 reach attention through Dequantize, one block at a
// time: what PagedStore hands out, run by run, is what KVCache::Gather (its
// own copy path) says the layer holds, position by position.
TEST(PagedStore, FetchReadsWhatGatherCopies) {
  const CacheSettings settings[] = {
      {.dtype = DType::kF16},
      {.dtype = DType::kBF16,
       .policy = OverflowPolicy::kSlidingWindow,
       .window = 64,
       .sinks = 4},
      {.compression = Compression::kInt8, .hot_tokens = 16},
      {.dtype = DType::kF16,
       .compression = Compression::kInt4,
       .group_size = 4,
       .hot_tokens = 16},
      {.compression = Compression::kMixed, .hot_tokens = 32},
  };
  for (const CacheSettings& c : settings) {
    absl::StatusOr<CacheConfig> config =
        MakeCacheConfig(Stories().shape(), c, 1, 160);
    ASSERT_TRUE(config.ok()) << config.status();
    absl::StatusOr<std::unique_ptr<PagedStore>> store =
        PagedStore::Create(*config);
    ASSERT_TRUE(store.ok());
    Decoder decoder(Stories(), **store, {});
    absl::StatusOr<GenerateResult> r = Generate(decoder, **store, Greedy(150));
    ASSERT_TRUE(r.ok()) << r.status();
    const SeqHandle seq = r->samples[0].seq;
    if (c.compression != Compression::kNone) {
      const CacheStats st = (*store)->cache().Stats();
      EXPECT_GT(st.quant_blocks_int8 + st.quant_blocks_int4, 0);
    }
    const int kv_dim = Stories().shape().kv_dim();
    for (int layer = 0; layer < Stories().shape().n_layers; ++layer) {
      absl::StatusOr<GatheredLayer> g = (*store)->cache().Gather(seq, layer);
      ASSERT_TRUE(g.ok());
      std::vector<KvRun> runs;
      ASSERT_TRUE((*store)->Open(seq, layer, runs).ok());
      size_t i = 0;  // index into the gathered positions
      for (size_t run = 0; run < runs.size(); ++run) {
        absl::StatusOr<KvRunData> d = (*store)->Fetch(run);
        ASSERT_TRUE(d.ok()) << d.status();
        for (int64_t t = 0; t < runs[run].tokens; ++t, ++i) {
          ASSERT_LT(i, g->positions.size());
          ASSERT_EQ(g->positions[i], runs[run].first_position + t);
          for (int e = 0; e < kv_dim; ++e) {
            ASSERT_EQ(d->k[t * d->stride + e], g->k[i * kv_dim + e]);
            ASSERT_EQ(d->v[t * d->stride + e], g->v[i * kv_dim + e]);
          }
        }
      }
      EXPECT_EQ(i, g->positions.size());
    }
  }
}

}  // namespace
}  // namespace kvpage::generate
