#include "tools/replay/replay.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kvpage/kv_cache.h"

namespace kvpage::replay {
namespace {

using Clock = std::chrono::steady_clock;

// The value of channel `c` of the key (kv 0) or value (kv 1) at position
// `pos` of `layer` in a sequence whose ids up to `pos` hash to `prefix`: an
// integer in [-1000, 1000], exact in f16. Like real keys and values it
// depends on every id before it, so a matched block read back equals what
// its writer wrote only when both saw the same prefix.
float Value(int layer, int64_t pos, uint32_t prefix, int64_t c, int kv) {
  const uint32_t x = prefix * 7U + static_cast<uint32_t>(pos) * 3U +
                     static_cast<uint32_t>(layer) * 5U +
                     static_cast<uint32_t>(c) * 11U +
                     static_cast<uint32_t>(kv) * 1000U;
  return static_cast<float>(x % 2001U) - 1000.0f;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

class Replayer {
 public:
  Replayer(const std::vector<TraceRequest>& trace, const ReplayOptions& options,
           std::unique_ptr<KVCache> cache)
      : trace_(trace),
        o_(options),
        cache_(std::move(cache)),
        width_(static_cast<int64_t>(options.num_kv_heads) * options.head_dim),
        groups_(cache_->num_groups()) {}

  absl::StatusOr<ReplayResult> Run(int64_t pool_blocks);

 private:
  struct InFlight {
    size_t index = 0;
    SeqId seq = 0;
    std::vector<int32_t> prompt;
    int64_t written = 0;  // positions written in every layer
    int64_t total = 0;    // prompt and output
    int64_t matched_blocks = 0;
    int64_t need = 0;              // blocks it takes beyond its match, at most
    std::vector<uint32_t> prefix;  // per position: its ids' running hash
  };

  // Blocks the requests in flight may still take.
  int64_t Outstanding() const;
  // Admits the next request if the pool can hold it; false when it waits.
  absl::StatusOr<bool> Admit(size_t index);
  // One prefill chunk or one output token; true when the request is done.
  absl::StatusOr<bool> Step(InFlight& r);
  absl::Status Verify(const InFlight& r, int64_t matched) const;
  int32_t TokenAt(const InFlight& r, int64_t pos) const {
    return pos < static_cast<int64_t>(r.prompt.size())
               ? r.prompt[static_cast<size_t>(pos)]
               : OutputToken(static_cast<int64_t>(r.index),
                             pos - static_cast<int64_t>(r.prompt.size()));
  }
  // Times `f` into the request's cost.
  template <typename F>
  auto Timed(size_t index, F&& f) {
    const Clock::time_point start = Clock::now();
    auto result = f();
    cost_us_[index] +=
        std::chrono::duration<double, std::micro>(Clock::now() - start).count();
    return result;
  }

  const std::vector<TraceRequest>& trace_;
  const ReplayOptions o_;
  std::unique_ptr<KVCache> cache_;
  const int64_t width_;   // channels of one token's key in one layer
  const int64_t groups_;  // block tables per sequence
  std::deque<InFlight> in_flight_;
  std::vector<double> cost_us_;
  std::vector<RequestOutcome> outcomes_;
  std::vector<float> k_, v_;
  int64_t peak_held_ = 0;
};

int64_t Replayer::Outstanding() const {
  int64_t outstanding = 0;
  const int64_t bt = o_.block_tokens;
  for (const InFlight& r : in_flight_) {
    const int64_t taken = (CeilDiv(r.written, bt) - r.matched_blocks) * groups_;
    outstanding += r.need - taken;
  }
  return outstanding;
}

absl::StatusOr<bool> Replayer::Admit(size_t index) {
  const TraceRequest& request = trace_[index];
  const int64_t bt = o_.block_tokens;
  const int64_t total = request.input_length + request.output_length;
  const int64_t all_blocks = CeilDiv(total, bt) * groups_;
  if (all_blocks > cache_->Stats().blocks_total) {
    outcomes_[index].rejected = true;
    return true;
  }
  InFlight r;
  r.index = index;
  r.total = total;
  r.prompt = PromptTokens(request, o_.trace_block_tokens);
  const MatchOptions match{.leave_last_token = o_.leave_last_token};
  // The worst case: every block not matched taken from the pool, and the
  // matched blocks taken from what was idle.
  const int64_t cached_blocks =
      cache_->CachedPrefixTokens(r.prompt, 0, match) / bt;
  const CacheStats stats = cache_->Stats();
  const int64_t available =
      stats.blocks_free + stats.blocks_cached - cached_blocks * groups_;
  if (Outstanding() + all_blocks - cached_blocks * groups_ > available) {
    return false;
  }
  absl::StatusOr<SeqId> seq =
      Timed(index, [&] { return cache_->AddSequence(); });
  if (!seq.ok()) return seq.status();
  r.seq = *seq;
  absl::StatusOr<int64_t> matched =
      Timed(index, [&] { return cache_->MatchPrefix(r.seq, r.prompt, match); });
  if (!matched.ok()) return matched.status();
  absl::Status s = Timed(index, [&] {
    return cache_->AppendTokens(r.seq, absl::MakeConstSpan(r.prompt).subspan(
                                           static_cast<size_t>(*matched)));
  });
  if (!s.ok()) return s;
  r.prefix.resize(static_cast<size_t>(total));
  uint64_t h = 0xcbf29ce484222325ULL;
  for (int64_t p = 0; p < total; ++p) {
    h = (h ^ static_cast<uint32_t>(TokenAt(r, p))) * 0x100000001b3ULL;
    r.prefix[static_cast<size_t>(p)] = static_cast<uint32_t>(h >> 32);
  }
  outcomes_[index].matched_tokens = *matched;
  // What the pool held was matched first; the tier gave the rest.
  outcomes_[index].fetched_tokens =
      std::max<int64_t>(0, *matched - cached_blocks * bt);
  r.written = *matched;
  r.matched_blocks = *matched / bt;
  r.need = all_blocks - r.matched_blocks * groups_;
  if (o_.verify) {
    absl::Status v = Verify(r, *matched);
    if (!v.ok()) return v;
  }
  if (r.written >= r.total) {  // output_length 0 and the whole prompt matched
    absl::Status rm =
        Timed(index, [&] { return cache_->RemoveSequence(r.seq); });
    if (!rm.ok()) return rm;
    return true;
  }
  in_flight_.push_back(std::move(r));
  return true;
}

absl::Status Replayer::Verify(const InFlight& r, int64_t matched) const {
  for (int layer = 0; layer < o_.num_layers; ++layer) {
    absl::StatusOr<GatheredLayer> g = cache_->Gather(r.seq, layer);
    if (!g.ok()) return g.status();
    if (static_cast<int64_t>(g->positions.size()) != matched) {
      return absl::InternalError(absl::StrCat(
          "request ", r.index, ": layer ", layer, " shows ",
          g->positions.size(), " tokens after a match of ", matched));
    }
    for (int64_t t = 0; t < matched; ++t) {
      const int64_t pos = g->positions[static_cast<size_t>(t)];
      for (int64_t c = 0; c < width_; ++c) {
        const size_t at = static_cast<size_t>(t * width_ + c);
        const uint32_t prefix = r.prefix[static_cast<size_t>(pos)];
        if (g->k[at] != Value(layer, pos, prefix, c, 0) ||
            g->v[at] != Value(layer, pos, prefix, c, 1)) {
          return absl::InternalError(absl::StrCat(
              "request ", r.index, ": matched position ", pos, " of layer ",
              layer, " holds another token's keys or values"));
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> Replayer::Step(InFlight& r) {
  const int64_t input = static_cast<int64_t>(r.prompt.size());
  const int64_t n =
      r.written < input ? std::min(o_.chunk_tokens, input - r.written) : 1;
  if (r.written >= input) {
    const int32_t token = TokenAt(r, r.written);
    absl::Status s = Timed(r.index, [&] {
      return cache_->AppendTokens(r.seq, absl::MakeConstSpan(&token, 1));
    });
    if (!s.ok()) return s;
  }
  k_.resize(static_cast<size_t>(n * width_));
  v_.resize(k_.size());
  for (int layer = 0; layer < o_.num_layers; ++layer) {
    for (int64_t t = 0; t < n; ++t) {
      const int64_t pos = r.written + t;
      const uint32_t prefix = r.prefix[static_cast<size_t>(pos)];
      for (int64_t c = 0; c < width_; ++c) {
        k_[static_cast<size_t>(t * width_ + c)] =
            Value(layer, pos, prefix, c, 0);
        v_[static_cast<size_t>(t * width_ + c)] =
            Value(layer, pos, prefix, c, 1);
      }
    }
    const TokenSpan k{.data = k_.data(), .dtype = DType::kF32, .tokens = n};
    const TokenSpan v{.data = v_.data(), .dtype = DType::kF32, .tokens = n};
    absl::Status s = Timed(r.index, [&] {
      return cache_->Update(r.seq, layer, k, v, r.written + n);
    });
    if (!s.ok()) {
      return absl::InternalError(
          absl::StrCat("request ", r.index, ": Update: ", s.message()));
    }
  }
  r.written += n;
  const CacheStats stats = cache_->Stats();
  peak_held_ = std::max(peak_held_, stats.blocks_used + stats.blocks_cached);
  if (r.written < r.total) return false;
  absl::Status s =
      Timed(r.index, [&] { return cache_->RemoveSequence(r.seq); });
  if (!s.ok()) return s;
  return true;
}

absl::StatusOr<ReplayResult> Replayer::Run(int64_t pool_blocks) {
  cost_us_.assign(trace_.size(), 0);
  outcomes_.assign(trace_.size(), RequestOutcome{});
  size_t next = 0;
  bool blocked =
      false;  // the next request was refused; retry after a completion
  while (next < trace_.size() || !in_flight_.empty()) {
    while (!blocked && next < trace_.size() &&
           in_flight_.size() < static_cast<size_t>(o_.concurrency)) {
      absl::StatusOr<bool> admitted = Admit(next);
      if (!admitted.ok()) return admitted.status();
      if (!*admitted) {  // waits for blocks to come back
        blocked = true;
        break;
      }
      ++next;
    }
    for (size_t i = 0; i < in_flight_.size();) {
      absl::StatusOr<bool> done = Step(in_flight_[i]);
      if (!done.ok()) return done.status();
      if (*done) {
        blocked = false;
        in_flight_.erase(in_flight_.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        ++i;
      }
    }
  }
  ReplayResult result;
  const CacheStats stats = cache_->Stats();
  result.pool_blocks = pool_blocks;
  result.block_bytes = stats.block_bytes;
  result.tokens_queried = stats.prefix_tokens_queried;
  result.tokens_matched = stats.prefix_tokens_matched;
  result.blocks_queried = stats.prefix_blocks_queried;
  result.blocks_hit = stats.hits;
  result.token_hit_rate =
      stats.prefix_tokens_queried > 0
          ? static_cast<double>(stats.prefix_tokens_matched) /
                static_cast<double>(stats.prefix_tokens_queried)
          : 0;
  result.block_hit_rate =
      stats.prefix_blocks_queried > 0
          ? static_cast<double>(stats.hits) /
                static_cast<double>(stats.prefix_blocks_queried)
          : 0;
  result.peak_blocks_held = peak_held_;
  result.blocks_cached_end = stats.blocks_cached;
  result.prefix_entries_end = stats.prefix_entries;
  std::vector<double> costs;
  for (size_t i = 0; i < trace_.size(); ++i) {
    outcomes_[i].cost_us = cost_us_[i];
    if (outcomes_[i].rejected) {
      ++result.rejected;
      continue;
    }
    ++result.requests;
    result.tokens_fetched += outcomes_[i].fetched_tokens;
    result.blocks_fetched += outcomes_[i].fetched_tokens / o_.block_tokens;
    costs.push_back(cost_us_[i]);
  }
  if (!costs.empty()) {
    std::sort(costs.begin(), costs.end());
    const auto at = [&](double q) {
      // Nearest rank: the ceil(q * n)-th smallest.
      const double rank = std::ceil(q * static_cast<double>(costs.size()));
      return costs[std::min(costs.size() - 1,
                            static_cast<size_t>(std::max(rank, 1.0)) - 1)];
    };
    result.cost_p50_us = at(0.50);
    result.cost_p99_us = at(0.99);
    double sum = 0;
    for (double c : costs) sum += c;
    result.cost_mean_us = sum / static_cast<double>(costs.size());
  }
  result.outcomes = std::move(outcomes_);
  return result;
}

}  // namespace

absl::StatusOr<ReplayResult> Replay(const std::vector<TraceRequest>& trace,
                                    int64_t pool_blocks,
                                    const ReplayOptions& options,
                                    const ReplayTier& tier) {
  if (options.concurrency < 1 || options.chunk_tokens < 1 ||
      options.trace_block_tokens < 1) {
    return absl::InvalidArgumentError(
        "replay: concurrency, chunk tokens and trace block tokens must be at "
        "least 1");
  }
  int64_t longest = options.block_tokens;
  for (const TraceRequest& r : trace) {
    longest = std::max(longest, r.input_length + r.output_length);
    if (static_cast<int64_t>(r.hash_ids.size()) !=
        CeilDiv(r.input_length, options.trace_block_tokens)) {
      return absl::InvalidArgumentError(
          "replay: a request's hash_ids do not cover its prompt");
    }
  }
  CacheConfig config;
  config.num_layers = options.num_layers;
  config.num_kv_heads = options.num_kv_heads;
  config.head_dim = options.head_dim;
  config.dtype = DType::kF16;
  config.block_tokens = options.block_tokens;
  config.num_blocks = pool_blocks;
  config.max_seq_len = longest;
  config.group_layers = options.group_layers;
  absl::StatusOr<std::unique_ptr<KVCache>> cache = KVCache::Create(config);
  if (!cache.ok()) {
    return absl::InvalidArgumentError(cache.status().message());  // exit 2
  }
  if (tier.tier != nullptr) {
    if (absl::Status s = (*cache)->AttachTier(tier.tier, tier.options);
        !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("attaching the tier: ", s.message()));  // exit 2
    }
  }
  Replayer replayer(trace, options, *std::move(cache));
  return replayer.Run(pool_blocks);
}

}  // namespace kvpage::replay
