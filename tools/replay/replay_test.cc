// kvpage-replay: the trace format, the synthetic generator, the replay
// against a reference model of the prefix cache's eviction order written
// here, the replay with a second tier (an in-memory one here;
// replay_remote_test.cc has the Redis tier), and the command line.
#include "tools/replay/replay.h"

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <list>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvpage/prefix.h"
#include "nlohmann/json.hpp"
#include "tests/cli_run.h"
#include "tests/map_tier.h"
#include "tools/replay/remote.h"
#include "tools/replay/trace.h"

namespace kvpage::replay {
namespace {

using kvpage::testing::MapTier;
using ::testing::HasSubstr;

absl::StatusOr<std::vector<TraceRequest>> Parse(
    const std::string& text, int64_t trace_block_tokens = 4) {
  std::istringstream in(text);
  return ParseTrace(in, trace_block_tokens);
}

TEST(TraceTest, ReadsTheFormatOfPublicTraces) {
  absl::StatusOr<std::vector<TraceRequest>> t = Parse(
      "{\"timestamp\": 27482, \"input_length\": 9, \"output_length\": 52, "
      "\"hash_ids\": [46, 47, 2353]}\n"
      "\n"
      "{\"hash_ids\": [1], \"output_length\": 0, \"input_length\": 4, "
      "\"timestamp\": 1.5, \"extra\": true}\n");
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->size(), 2u);
  EXPECT_EQ((*t)[0].timestamp, 27482);
  EXPECT_EQ((*t)[0].input_length, 9);
  EXPECT_EQ((*t)[0].output_length, 52);
  EXPECT_EQ((*t)[0].hash_ids, (std::vector<int64_t>{46, 47, 2353}));
  EXPECT_EQ((*t)[1].timestamp, 1.5);
  // Equal ids, equal tokens; a partial last block is its id's beginning.
  const std::vector<int32_t> a = PromptTokens((*t)[0], 4);
  ASSERT_EQ(a.size(), 9u);
  EXPECT_EQ(a[8], TraceToken(2353, 0));
  EXPECT_EQ(a[5], TraceToken(47, 1));
  EXPECT_NE(TraceToken(46, 0), TraceToken(47, 0));
  EXPECT_NE(OutputToken(0, 0), OutputToken(1, 0));
}

TEST(TraceTest, NamesTheLineAndTheFieldOfABadLine) {
  const std::string good =
      "{\"timestamp\": 0, \"input_length\": 4, \"output_length\": 1, "
      "\"hash_ids\": [7]}\n";
  const struct {
    std::string line, message;
  } cases[] = {
      {"not json", "line 2: not JSON"},
      {"[1, 2]", "line 2: not a JSON object"},
      {"{\"input_length\": 4, \"output_length\": 1, \"hash_ids\": [7]}",
       "line 2: timestamp is missing"},
      {"{\"timestamp\": \"x\", \"input_length\": 4, \"output_length\": 1, "
       "\"hash_ids\": [7]}",
       "line 2: timestamp is not a finite number"},
      {"{\"timestamp\": 0, \"output_length\": 1, \"hash_ids\": [7]}",
       "line 2: input_length is missing"},
      {"{\"timestamp\": 0, \"input_length\": 0, \"output_length\": 1, "
       "\"hash_ids\": []}",
       "line 2: input_length is not in [1, 16777216]"},
      {"{\"timestamp\": 0, \"input_length\": 4.5, \"output_length\": 1, "
       "\"hash_ids\": [7]}",
       "line 2: input_length is not an integer"},
      {"{\"timestamp\": 0, \"input_length\": 4, \"output_length\": -1, "
       "\"hash_ids\": [7]}",
       "line 2: output_length is not in [0, 16777216]"},
      {"{\"timestamp\": 0, \"input_length\": 4, \"output_length\": 1, "
       "\"hash_ids\": 7}",
       "line 2: hash_ids is not an array"},
      {"{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, "
       "\"hash_ids\": [7]}",
       "line 2: hash_ids holds 1 ids where input_length 5 needs 2"},
      {"{\"timestamp\": 0, \"input_length\": 4, \"output_length\": 1, "
       "\"hash_ids\": [18446744073709551615]}",
       "line 2: hash_ids holds a value that is not a 64-bit integer"},
      {"{\"timestamp\": 0, \"input_length\": 4, \"output_length\": 1, "
       "\"hash_ids\": [\"7\"]}",
       "line 2: hash_ids holds a value that is not a 64-bit integer"},
  };
  for (const auto& c : cases) {
    absl::StatusOr<std::vector<TraceRequest>> t = Parse(good + c.line + "\n");
    ASSERT_FALSE(t.ok()) << c.line;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(t.status().message(), HasSubstr(c.message)) << c.line;
  }
}

SyntheticTraceOptions SmallTrace() {
  return SyntheticTraceOptions{.requests = 150,
                               .trace_block_tokens = 64,
                               .system_prompts = 3,
                               .system_prompt_tokens_max = 256,
                               .max_turns = 5,
                               .user_tokens_max = 160,
                               .output_tokens_max = 40,
                               .mean_gap_ms = 50,
                               .think_time_ms = 400,
                               .seed = 7};
}

TEST(TraceTest, TheSyntheticTraceSharesPromptsAndRoundTrips) {
  absl::StatusOr<std::vector<TraceRequest>> t = GenerateTrace(SmallTrace());
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->size(), 150u);
  int64_t extends_an_earlier_prompt = 0;
  absl::flat_hash_map<int64_t, int> first_id_uses;
  for (size_t i = 0; i < t->size(); ++i) {
    const TraceRequest& r = (*t)[i];
    EXPECT_EQ(static_cast<int64_t>(r.hash_ids.size()),
              (r.input_length + 63) / 64);
    if (i > 0) {
      EXPECT_LE((*t)[i - 1].timestamp, r.timestamp);
    }
    if (!r.hash_ids.empty() && r.input_length >= 64)
      ++first_id_uses[r.hash_ids[0]];
    for (size_t j = 0; j < i; ++j) {
      const TraceRequest& e = (*t)[j];
      const size_t full = static_cast<size_t>(e.input_length / 64);
      if (full > 0 && r.hash_ids.size() > full &&
          std::equal(e.hash_ids.begin(),
                     e.hash_ids.begin() + static_cast<std::ptrdiff_t>(full),
                     r.hash_ids.begin()) &&
          r.input_length > e.input_length + e.output_length) {
        ++extends_an_earlier_prompt;
        break;
      }
    }
  }
  // Multi-turn conversations, and system prompts shared between them.
  EXPECT_GT(extends_an_earlier_prompt, 30);
  int shared = 0;
  for (const auto& [id, uses] : first_id_uses) shared += uses > 5 ? 1 : 0;
  EXPECT_GE(shared, 2);
  // Deterministic for a seed, another for another seed.
  EXPECT_EQ(GenerateTrace(SmallTrace())->at(40).hash_ids, (*t)[40].hash_ids);
  SyntheticTraceOptions other = SmallTrace();
  other.seed = 8;
  EXPECT_NE(GenerateTrace(other)->at(40).hash_ids, (*t)[40].hash_ids);
  // What WriteTrace writes, ParseTrace reads back.
  std::stringstream text;
  WriteTrace(*t, text);
  absl::StatusOr<std::vector<TraceRequest>> back = ParseTrace(text, 64);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), t->size());
  for (size_t i = 0; i < t->size(); ++i) {
    EXPECT_EQ((*back)[i].timestamp, (*t)[i].timestamp);
    EXPECT_EQ((*back)[i].input_length, (*t)[i].input_length);
    EXPECT_EQ((*back)[i].output_length, (*t)[i].output_length);
    EXPECT_EQ((*back)[i].hash_ids, (*t)[i].hash_ids);
  }
  SyntheticTraceOptions bad = SmallTrace();
  bad.shared_system_prompt = 1.5;
  EXPECT_EQ(GenerateTrace(bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The prefix cache's policy, written from its contract (kv_cache.h,
// AppendTokens) for one block table per sequence and one request at a time:
// a pool of `capacity` blocks; a block is taken free first, else by evicting
// the least recently idle entry; a full block whose ids are known and whose
// tokens are written is published unless its hash is cached already; a
// release leaves its entries idle from the last block to the first
// (tail_first) or, as before #20's first item, from the first to the last.
class LruModel {
 public:
  LruModel(int64_t capacity, bool tail_first)
      : capacity_(capacity), tail_first_(tail_first) {}

  // The tokens matched for one request, replayed as kvpage-replay does.
  int64_t Request(const TraceRequest& request, size_t index,
                  const ReplayOptions& o) {
    const int64_t bt = o.block_tokens;
    const int64_t input = request.input_length;
    const int64_t total = input + request.output_length;
    std::vector<int32_t> tokens = PromptTokens(request, o.trace_block_tokens);
    for (int64_t j = 0; j < request.output_length; ++j) {
      tokens.push_back(OutputToken(static_cast<int64_t>(index), j));
    }
    std::vector<uint64_t> keys;
    for (int64_t b = 0; (b + 1) * bt <= total; ++b) {
      keys.push_back(PrefixBlockHash(
          keys.empty() ? 0 : keys.back(), 0,
          absl::MakeConstSpan(tokens).subspan(static_cast<size_t>(b * bt),
                                              static_cast<size_t>(bt))));
    }
    const int64_t matchable = (o.leave_last_token ? input - 1 : input) / bt;
    std::vector<bool> owns;  // block b holds a cache entry
    int64_t matched = 0;
    while (matched < matchable &&
           idle_.contains(keys[static_cast<size_t>(matched)])) {
      auto it = idle_.find(keys[static_cast<size_t>(matched)]);
      lru_.erase(it->second);
      idle_.erase(it);
      in_use_.insert({keys[static_cast<size_t>(matched)], true});
      owns.push_back(true);
      ++matched;
    }
    used_ = matched;
    int64_t written = matched * bt;
    while (written < total) {
      const int64_t n =
          written < input ? std::min(o.chunk_tokens, input - written) : 1;
      const int64_t blocks = (written + n + bt - 1) / bt;
      for (int64_t b = (written + bt - 1) / bt; b < blocks; ++b) Take();
      written += n;
      for (int64_t b = static_cast<int64_t>(owns.size()); b < written / bt;
           ++b) {
        const uint64_t key = keys[static_cast<size_t>(b)];
        const bool cached = idle_.contains(key) || in_use_.contains(key);
        if (!cached) in_use_.insert({key, true});
        owns.push_back(!cached);
      }
    }
    const int64_t blocks = (total + bt - 1) / bt;
    for (int64_t i = 0; i < blocks; ++i) {
      const int64_t b = tail_first_ ? blocks - 1 - i : i;
      if (b < static_cast<int64_t>(owns.size()) &&
          owns[static_cast<size_t>(b)]) {
        const uint64_t key = keys[static_cast<size_t>(b)];
        in_use_.erase(key);
        lru_.push_back(key);
        idle_[key] = std::prev(lru_.end());
      }
    }
    used_ = 0;
    return matched * bt;
  }

 private:
  void Take() {
    if (capacity_ - used_ - static_cast<int64_t>(lru_.size()) == 0) {
      idle_.erase(lru_.front());
      lru_.pop_front();
    }
    ++used_;
  }

  int64_t capacity_;
  bool tail_first_;
  int64_t used_ = 0;
  std::list<uint64_t> lru_;  // idle entries, least recently idle first
  absl::flat_hash_map<uint64_t, std::list<uint64_t>::iterator> idle_;
  absl::flat_hash_map<uint64_t, bool> in_use_;
};

ReplayOptions ModelOptions(bool group_layers) {
  return ReplayOptions{.num_layers = group_layers ? 3 : 1,
                       .num_kv_heads = 1,
                       .head_dim = 4,
                       .block_tokens = 16,
                       .trace_block_tokens = 64,
                       .chunk_tokens = 48,
                       .concurrency = 1,
                       .group_layers = group_layers,
                       .verify = true};
}

// The token hit rate of the model over the trace.
double ModelHitRate(const std::vector<TraceRequest>& trace, int64_t pool,
                    const ReplayOptions& o, bool tail_first,
                    std::vector<int64_t>* matched = nullptr) {
  LruModel model(pool, tail_first);
  int64_t queried = 0, hit = 0;
  for (size_t i = 0; i < trace.size(); ++i) {
    const int64_t m = model.Request(trace[i], i, o);
    if (matched != nullptr) matched->push_back(m);
    queried += trace[i].input_length;
    hit += m;
  }
  return static_cast<double>(hit) / static_cast<double>(queried);
}

TEST(ReplayTest, MatchesTheReferenceModelRequestByRequest) {
  absl::StatusOr<std::vector<TraceRequest>> trace = GenerateTrace(SmallTrace());
  ASSERT_TRUE(trace.ok());
  for (bool grouped : {false, true}) {
    const ReplayOptions o = ModelOptions(grouped);
    // From a pool that holds a few requests to one that holds them all.
    for (int64_t pool : {64, 200, 600, 4000}) {
      SCOPED_TRACE(::testing::Message()
                   << "grouped " << grouped << ", pool " << pool);
      absl::StatusOr<ReplayResult> r = Replay(*trace, pool, o);
      ASSERT_TRUE(r.ok()) << r.status();
      std::vector<int64_t> want;
      const double model_rate = ModelHitRate(*trace, pool, o, true, &want);
      ASSERT_EQ(r->outcomes.size(), want.size());
      for (size_t i = 0; i < want.size(); ++i) {
        ASSERT_EQ(r->outcomes[i].matched_tokens, want[i]) << "request " << i;
      }
      EXPECT_EQ(r->requests, 150);
      EXPECT_DOUBLE_EQ(r->token_hit_rate, model_rate);
    }
  }
}

TEST(ReplayTest, TheTailFirstOrderKeepsMoreOfTheTraceMatchable) {
  absl::StatusOr<std::vector<TraceRequest>> trace = GenerateTrace(SmallTrace());
  ASSERT_TRUE(trace.ok());
  const ReplayOptions o = ModelOptions(false);
  // The model with the old order hits less when the pool is tight, and as
  // much when it holds everything.
  EXPECT_GT(ModelHitRate(*trace, 200, o, true),
            ModelHitRate(*trace, 200, o, false));
  EXPECT_DOUBLE_EQ(ModelHitRate(*trace, 4000, o, true),
                   ModelHitRate(*trace, 4000, o, false));
}

TEST(ReplayTest, ManyInFlightVerifyEveryMatchedToken) {
  absl::StatusOr<std::vector<TraceRequest>> trace = GenerateTrace(SmallTrace());
  ASSERT_TRUE(trace.ok());
  for (bool grouped : {false, true}) {
    ReplayOptions o = ModelOptions(grouped);
    o.num_layers = 3;
    o.concurrency = 6;
    absl::StatusOr<ReplayResult> r = Replay(*trace, 300, o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->requests, 150);
    EXPECT_GT(r->token_hit_rate, 0.2);
    EXPECT_EQ(r->peak_blocks_held, 300);  // the cache fills the pool
    int64_t matched = 0;
    for (const RequestOutcome& outcome : r->outcomes)
      matched += outcome.matched_tokens;
    EXPECT_EQ(matched, r->tokens_matched);
  }
}

TEST(ReplayTest, ARequestLargerThanThePoolIsRejectedAndCounted) {
  std::vector<TraceRequest> trace(3);
  for (size_t i = 0; i < trace.size(); ++i) {
    trace[i].input_length = i == 1 ? 640 : 64;
    trace[i].output_length = 4;
    for (int64_t b = 0; b < trace[i].input_length / 64; ++b)
      trace[i].hash_ids.push_back(b);
  }
  absl::StatusOr<ReplayResult> r = Replay(trace, 20, ModelOptions(false));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->requests, 2);
  EXPECT_EQ(r->rejected, 1);
  EXPECT_TRUE(r->outcomes[1].rejected);
  // The first request's block, less the last token left to compute.
  EXPECT_EQ(r->outcomes[2].matched_tokens, 48);
}

TEST(ReplayTest, AWholePromptMatchWithNoOutputEndsAtItsPrompt) {
  // Two equal 512-token prompts, no output, the whole prompt matchable.
  std::vector<TraceRequest> trace(2);
  for (TraceRequest& r : trace) {
    r.input_length = 512;
    r.hash_ids = {1};
  }
  ReplayOptions o = ModelOptions(false);
  o.trace_block_tokens = 512;
  o.leave_last_token = false;
  for (int64_t pool : {32, 1000}) {
    absl::StatusOr<ReplayResult> r = Replay(trace, pool, o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->outcomes[1].matched_tokens, 512);
  }
}

TEST(ReplayTierTest, ATierThatKeepsEveryBlockMatchesWhatAPoolOfEverythingDoes) {
  // Every block the small pool evicts is in the tier, and a prefix the
  // pool holds part of continues from it: each request matches what it
  // would in a pool that never evicts, and reads what was computed
  // (--verify).
  absl::StatusOr<std::vector<TraceRequest>> trace = GenerateTrace(SmallTrace());
  ASSERT_TRUE(trace.ok());
  for (bool grouped : {false, true}) {
    const ReplayOptions o = ModelOptions(grouped);
    absl::StatusOr<ReplayResult> all = Replay(*trace, 4000, o);
    ASSERT_TRUE(all.ok()) << all.status();
    for (int64_t pool : {64, 200}) {
      for (bool write_through : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << "grouped " << grouped << ", pool " << pool
                     << ", write-through " << write_through);
        absl::StatusOr<ReplayResult> plain = Replay(*trace, pool, o);
        ASSERT_TRUE(plain.ok()) << plain.status();
        MapTier tier;
        absl::StatusOr<ReplayResult> r = Replay(
            *trace, pool, o,
            {.tier = &tier, .options = {.write_through = write_through}});
        ASSERT_TRUE(r.ok()) << r.status();
        ASSERT_EQ(r->outcomes.size(), all->outcomes.size());
        int64_t fetched = 0;
        for (size_t i = 0; i < r->outcomes.size(); ++i) {
          ASSERT_EQ(r->outcomes[i].matched_tokens,
                    all->outcomes[i].matched_tokens)
              << "request " << i;
          EXPECT_LE(r->outcomes[i].fetched_tokens,
                    r->outcomes[i].matched_tokens);
          EXPECT_EQ(plain->outcomes[i].fetched_tokens, 0);
          fetched += r->outcomes[i].fetched_tokens;
        }
        EXPECT_DOUBLE_EQ(r->token_hit_rate, all->token_hit_rate);
        EXPECT_EQ(r->blocks_hit, all->blocks_hit);
        EXPECT_GT(r->token_hit_rate, plain->token_hit_rate);
        EXPECT_GT(r->block_hit_rate, plain->block_hit_rate);
        // What the pool held and what the tier gave add up to the match.
        EXPECT_EQ(r->tokens_fetched, fetched);
        EXPECT_EQ(r->blocks_fetched * o.block_tokens, fetched);
        EXPECT_EQ(tier.fetched, r->blocks_fetched);
        EXPECT_GE(r->tokens_matched - r->tokens_fetched,
                  plain->tokens_matched / 2);
        EXPECT_EQ(plain->tokens_fetched, 0);
        EXPECT_EQ(plain->blocks_fetched, 0);
        // Written through, a block is not written back again.
        EXPECT_EQ(tier.written_back > 0, !write_through);
        EXPECT_EQ(tier.written_through > 0, write_through);
      }
    }
  }
}

TEST(ReplayTierTest, CountsWhatThePoolHeldAndWhatTheTierGave) {
  // A (two trace blocks), B (two others), A again, in a pool of 12 blocks
  // of 16 tokens: a request takes 9 (132 tokens). B takes the 4 free
  // blocks and evicts A's 5 least recently idle (its last ones: a release
  // leaves the tail idle first); the second A holds A's first 3 blocks
  // here, fetches the next 4 (the last token stays to compute: 7 blocks),
  // evicting 3 of B's, and computes 2, evicting 2 more.
  std::vector<TraceRequest> trace(3);
  trace[0] = {.input_length = 128, .output_length = 4, .hash_ids = {1, 2}};
  trace[1] = {.input_length = 128, .output_length = 4, .hash_ids = {3, 4}};
  trace[2] = trace[0];
  const ReplayOptions o = ModelOptions(false);
  absl::StatusOr<ReplayResult> plain = Replay(trace, 12, o);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->outcomes[2].matched_tokens, 48);
  MapTier tier;
  absl::StatusOr<ReplayResult> r = Replay(trace, 12, o, {.tier = &tier});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->outcomes[0].matched_tokens, 0);
  EXPECT_EQ(r->outcomes[1].matched_tokens, 0);
  EXPECT_EQ(r->outcomes[2].matched_tokens, 112);
  EXPECT_EQ(r->outcomes[2].fetched_tokens, 64);
  EXPECT_EQ(r->tokens_matched, 112);
  EXPECT_EQ(r->tokens_fetched, 64);
  EXPECT_EQ(r->blocks_hit, 7);
  EXPECT_EQ(r->blocks_fetched, 4);
  EXPECT_EQ(tier.written_back, 10);
  EXPECT_EQ(tier.written_through, 0);
}

TEST(ReplayTierTest, VerifyCatchesARestoredBlockThatDiffers) {
  std::vector<TraceRequest> trace(3);
  trace[0] = {.input_length = 128, .output_length = 4, .hash_ids = {1, 2}};
  trace[1] = {.input_length = 128, .output_length = 4, .hash_ids = {3, 4}};
  trace[2] = trace[0];
  MapTier tier;
  tier.flip = true;
  absl::StatusOr<ReplayResult> r =
      Replay(trace, 12, ModelOptions(false), {.tier = &tier});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(r.status().message(),
              HasSubstr("request 2: matched position 48 of layer 0 holds "
                        "another token's keys or values"));
}

TEST(ReplayTest, QuantilesAreNearestRank) {
  std::vector<TraceRequest> trace(2);
  trace[0] = {.input_length = 64, .output_length = 1, .hash_ids = {1}};
  trace[1] = {.input_length = 64, .output_length = 200, .hash_ids = {2}};
  absl::StatusOr<ReplayResult> r = Replay(trace, 100, ModelOptions(false));
  ASSERT_TRUE(r.ok()) << r.status();
  const double lo = std::min(r->outcomes[0].cost_us, r->outcomes[1].cost_us);
  const double hi = std::max(r->outcomes[0].cost_us, r->outcomes[1].cost_us);
  EXPECT_EQ(r->cost_p50_us, lo);
  EXPECT_EQ(r->cost_p99_us, hi);
}

// The command line.
using testing::CliRun;

CliRun RunReplay(const std::string& args) {
  return testing::RunCli(KVPAGE_REPLAY_BINARY, args);
}

TEST(ReplayCliTest, GeneratesAndReplaysForEachPoolSize) {
  const std::string trace = ::testing::TempDir() + "/replay_cli_trace.jsonl";
  CliRun g = RunReplay(
      "generate --requests 60 --trace-block-tokens 64 "
      "--system-prompt-tokens-max 256 --user-tokens-max 128 "
      "--output-tokens-max 16 --out " +
      trace);
  ASSERT_EQ(g.exit_code, 0) << g.err;
  CliRun r = RunReplay("run --trace " + trace +
                       " --trace-block-tokens 64 --pool-blocks 100,2000 "
                       "--layers 2 --concurrency 4 --verify --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["schema_version"], 2);
  EXPECT_TRUE(j["remote"].is_null());
  EXPECT_FALSE(j["runs"][0].contains("tier"));
  EXPECT_EQ(j["runs"][0]["blocks_fetched"], 0);
  ASSERT_EQ(j["runs"].size(), 2u);
  EXPECT_EQ(j["runs"][0]["pool_blocks"], 100);
  EXPECT_EQ(j["runs"][1]["pool_blocks"], 2000);
  EXPECT_EQ(j["runs"][1]["requests"], 60);
  // A larger pool hits at least as often on this trace.
  EXPECT_GE(j["runs"][1]["token_hit_rate"].get<double>(),
            j["runs"][0]["token_hit_rate"].get<double>());
  EXPECT_GT(j["runs"][1]["token_hit_rate"].get<double>(), 0);
  CliRun text = RunReplay("run --synthetic 30 --pool-blocks 500");
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_THAT(text.out, HasSubstr("token_hit"));
}

TEST(ReplayCliTest, BadUsageAndBadTracesExitTwoWithOneLine) {
  const std::string bad = ::testing::TempDir() + "/replay_bad_trace.jsonl";
  {
    std::ofstream out(bad);
    out << "{\"timestamp\": 0, \"input_length\": 600, \"output_length\": 1, "
           "\"hash_ids\": [1]}\n";
  }
  const struct {
    std::string args, message;
  } cases[] = {
      {"run --trace " + bad,
       "line 1: hash_ids holds 1 ids where input_length 600 needs 2"},
      {"run --trace /nonexistent/trace.jsonl", "could not be opened"},
      {"run --synthetic 10 --pool-blocks 0", "--pool-blocks"},
      {"run --synthetic 10 --concurrency -1", "--concurrency"},
      {"run --synthetic 10 --write-through",
       "--write-through requires "
       "--remote"},
      {"run --synthetic 10 --remote-queue-blocks 8", "requires --remote"},

      {"run", "--trace"},
      {"generate --shared-system-prompt 2", "--shared-system-prompt"},
      {"frobnicate", "'frobnicate' is not a verb; the verbs are generate, run"},
      {"", "a verb is required: generate, run"},
  };
  for (const auto& c : cases) {
    CliRun r = RunReplay(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.message)) << c.args;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

TEST(ReplayCliTest, ARemoteItCannotUseIsExitTwoWithNothingReplayed) {
  // A URL of another scheme; or, without the Redis tier in this build,
  // any URL.
  const CliRun r =
      RunReplay("run --synthetic 10 --remote http://127.0.0.1:6379");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_THAT(r.err,
              HasSubstr(RemoteTierBuilt()
                            ? "kvpage-replay: --remote: Redis URL: want "
                              "redis://"
                            : "kvpage-replay: --remote: this kvpage-replay was "
                              "built without the Redis tier"));
}

}  // namespace
}  // namespace kvpage::replay
