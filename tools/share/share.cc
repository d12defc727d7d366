#include "tools/share/share.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kvpage/kv_cache.h"

namespace kvpage::share {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

uint64_t Mix(uint64_t x) {  // splitmix64's finalizer
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

enum class Part : uint64_t { kSystem = 1, kMessage = 2, kAnswer = 3 };

// Token `i` of a part of a conversation: an id in [3, 32003).
int32_t Id(const ShareOptions& o, Part part, int conversation, int turn,
           int64_t i) {
  uint64_t x = Mix(o.seed ^ (static_cast<uint64_t>(part) << 56));
  x = Mix(x ^ static_cast<uint64_t>(conversation));
  x = Mix(x ^ static_cast<uint64_t>(turn));
  x = Mix(x ^ static_cast<uint64_t>(i));
  return static_cast<int32_t>(3 + x % 32000);
}

void AppendPart(const ShareOptions& o, Part part, int conversation, int turn,
                int64_t n, std::vector<int32_t>& out) {
  for (int64_t i = 0; i < n; ++i) {
    out.push_back(Id(o, part, conversation, turn, i));
  }
}

// A request: a conversation's turn.
struct Request {
  std::vector<int32_t> tokens;  // the prompt, then the answer
  int64_t prompt = 0;           // tokens.size() - answer
  // Per position: the running hash of the ids up to it.
  std::vector<uint64_t> prefix;
};

Request MakeRequest(const ShareOptions& o, int conversation, int turn) {
  Request r;
  r.tokens = Prompt(o, conversation, turn);
  r.prompt = static_cast<int64_t>(r.tokens.size());
  AppendPart(o, Part::kAnswer, conversation, turn, o.answer_tokens, r.tokens);
  uint64_t h = o.seed;
  for (const int32_t id : r.tokens) {
    h = Mix(h ^ static_cast<uint32_t>(id));
    r.prefix.push_back(h);
  }
  return r;
}

// Channel `c` of the key (kv 0) or value (kv 1) of a position whose ids
// hash to `prefix`, in `layer`: an integer in [-1000, 1000], exact in f16.
float Value(uint64_t prefix, int layer, int kv, int64_t c) {
  const uint64_t base = (prefix >> 20) + static_cast<uint64_t>(layer) * 131 +
                        static_cast<uint64_t>(kv) * 977;
  return static_cast<float>((base + static_cast<uint64_t>(c) * 7) % 2001) -
         1000.0f;
}

class Server {
 public:
  Server(const ShareOptions& o, std::unique_ptr<KVCache> cache)
      : o_(o),
        cache_(std::move(cache)),
        width_(static_cast<int64_t>(o.num_kv_heads) * o.head_dim) {}

  KVCache& cache() { return *cache_; }
  bool verify() const { return o_.verify; }

  // Update of every layer for positions [from, to), chunk by chunk (each
  // chunk through every layer, as a forward pass goes); returns the seconds
  // inside Update.
  absl::StatusOr<double> Write(SeqId seq, const Request& r, int64_t from,
                               int64_t to) {
    double seconds = 0;
    for (int64_t start = from; start < to; start += o_.chunk_tokens) {
      const int64_t n = std::min(o_.chunk_tokens, to - start);
      k_.resize(static_cast<size_t>(n * width_));
      v_.resize(k_.size());
      for (int layer = 0; layer < o_.num_layers; ++layer) {
        Fill(r, layer, start, n);
        const TokenSpan k{.data = k_.data(), .dtype = DType::kF32, .tokens = n};
        const TokenSpan v{.data = v_.data(), .dtype = DType::kF32, .tokens = n};
        const Clock::time_point t0 = Clock::now();
        absl::Status s = cache_->Update(seq, layer, k, v, start + n);
        seconds += Since(t0);
        if (!s.ok()) {
          return absl::InternalError(absl::StrFormat(
              "Update of layer %d at %d: %s", layer, start, s.message()));
        }
      }
    }
    return seconds;
  }

  // Every layer's positions [0, matched) read back and compared with what
  // their writer wrote; returns the tokens compared (all layers).
  absl::StatusOr<int64_t> Verify(SeqId seq, const Request& r,
                                 int64_t matched) const {
    for (int layer = 0; layer < o_.num_layers; ++layer) {
      absl::StatusOr<GatheredLayer> g = cache_->Gather(seq, layer);
      if (!g.ok()) return g.status();
      if (static_cast<int64_t>(g->positions.size()) != matched) {
        return absl::InternalError(
            absl::StrFormat("layer %d shows %d tokens after a match of %d",
                            layer, g->positions.size(), matched));
      }
      for (int64_t t = 0; t < matched; ++t) {
        const int64_t pos = g->positions[static_cast<size_t>(t)];
        const uint64_t prefix = r.prefix[static_cast<size_t>(pos)];
        for (int64_t c = 0; c < width_; ++c) {
          const auto at = static_cast<size_t>(t * width_ + c);
          if (g->k[at] != Value(prefix, layer, 0, c) ||
              g->v[at] != Value(prefix, layer, 1, c)) {
            return absl::InternalError(absl::StrFormat(
                "matched position %d of layer %d holds other keys or values "
                "than its writer wrote",
                pos, layer));
          }
        }
      }
    }
    return matched * o_.num_layers;
  }

 private:
  void Fill(const Request& r, int layer, int64_t start, int64_t n) {
    for (int64_t t = 0; t < n; ++t) {
      const uint64_t prefix = r.prefix[static_cast<size_t>(start + t)];
      for (int64_t c = 0; c < width_; ++c) {
        k_[static_cast<size_t>(t * width_ + c)] = Value(prefix, layer, 0, c);
        v_[static_cast<size_t>(t * width_ + c)] = Value(prefix, layer, 1, c);
      }
    }
  }

  const ShareOptions& o_;
  std::unique_ptr<KVCache> cache_;
  const int64_t width_;
  std::vector<float> k_, v_;
};

absl::Status CheckOptions(const ShareOptions& o) {
  if (o.conversations < 1 || o.first_turn < 1 || o.last_turn < o.first_turn ||
      o.system_tokens < 0 || o.message_tokens < 1 || o.answer_tokens < 0 ||
      o.chunk_tokens < 1 || o.pool_blocks < 0) {
    return absl::InvalidArgumentError(
        "share: want conversations >= 1, 1 <= first_turn <= last_turn, "
        "system_tokens >= 0, message_tokens >= 1, answer_tokens >= 0, "
        "chunk_tokens >= 1, pool_blocks >= 0");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<KVCache>> MakeCache(const ShareOptions& o,
                                                   int64_t longest,
                                                   int64_t pool_blocks) {
  CacheConfig config;
  config.num_layers = o.num_layers;
  config.num_kv_heads = o.num_kv_heads;
  config.head_dim = o.head_dim;
  config.dtype = DType::kF16;
  config.block_tokens = o.block_tokens;
  config.num_blocks = pool_blocks;
  config.max_seq_len = longest;
  config.group_layers = o.group_layers;
  absl::StatusOr<std::unique_ptr<KVCache>> cache = KVCache::Create(config);
  if (!cache.ok()) return absl::InvalidArgumentError(cache.status().message());
  return cache;
}

// What a restore left to compare: a request's tokens the tier restored.
struct Restored {
  Request request;
  int64_t local = 0, matched = 0;
};

// Writes each restored range again into `server`'s cache (no tier): the
// tokens before it untimed, the range timed (AppendTokens and Update).
absl::Status Rewrite(Server& server, const std::vector<Restored>& restored,
                     ShareResult& result) {
  KVCache& cache = server.cache();
  for (const Restored& x : restored) {
    const Request& r = x.request;
    absl::StatusOr<SeqId> seq = cache.AddSequence();
    if (!seq.ok()) return seq.status();
    const auto ids = absl::MakeConstSpan(r.tokens);
    absl::Status s =
        cache.AppendTokens(*seq, ids.subspan(0, static_cast<size_t>(x.local)));
    if (!s.ok()) return s;
    absl::StatusOr<double> before = server.Write(*seq, r, 0, x.local);
    if (!before.ok()) return before.status();
    const Clock::time_point t0 = Clock::now();
    s = cache.AppendTokens(
        *seq, ids.subspan(static_cast<size_t>(x.local),
                          static_cast<size_t>(x.matched - x.local)));
    result.rewrite_s += Since(t0);
    if (!s.ok()) return s;
    absl::StatusOr<double> timed = server.Write(*seq, r, x.local, x.matched);
    if (!timed.ok()) return timed.status();
    result.rewrite_s += *timed;
    result.rewritten += x.matched - x.local;
    if (s = cache.RemoveSequence(*seq); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// Serves one request (see share.h), adding to `result`; a request the tier
// restored tokens for goes to `restored` when `compare`.
absl::Status ServeRequest(Server& server, bool compare, Request r,
                          ShareResult& result,
                          std::vector<Restored>& restored) {
  KVCache& c = server.cache();
  const MatchOptions match{.leave_last_token = true};
  const auto ids = absl::MakeConstSpan(r.tokens);
  const auto prompt = ids.subspan(0, static_cast<size_t>(r.prompt));
  const int64_t local = c.CachedPrefixTokens(prompt, 0, match);
  absl::StatusOr<SeqId> seq = c.AddSequence();
  if (!seq.ok()) return seq.status();
  Clock::time_point t0 = Clock::now();
  absl::StatusOr<int64_t> matched = c.MatchPrefix(*seq, prompt, match);
  result.match_s += Since(t0);
  if (!matched.ok()) return matched.status();
  const int64_t from_cache = std::min(local, *matched);
  result.matched_local += from_cache;
  result.matched_tier += *matched - from_cache;
  if (server.verify()) {
    absl::StatusOr<int64_t> verified = server.Verify(*seq, r, *matched);
    if (!verified.ok()) return verified.status();
    result.tokens_verified += *verified;
  }
  // The prompt's tokens not matched, then the answer one at a time.
  t0 = Clock::now();
  absl::Status s =
      c.AppendTokens(*seq, prompt.subspan(static_cast<size_t>(*matched)));
  result.prefill_s += Since(t0);
  if (!s.ok()) return s;
  absl::StatusOr<double> written = server.Write(*seq, r, *matched, r.prompt);
  if (!written.ok()) return written.status();
  result.prefill_s += *written;
  result.computed += r.prompt - *matched;
  for (int64_t pos = r.prompt; pos < static_cast<int64_t>(ids.size()); ++pos) {
    t0 = Clock::now();
    s = c.AppendTokens(*seq, ids.subspan(static_cast<size_t>(pos), 1));
    result.decode_s += Since(t0);
    if (!s.ok()) return s;
    written = server.Write(*seq, r, pos, pos + 1);
    if (!written.ok()) return written.status();
    result.decode_s += *written;
  }
  result.answer_tokens += static_cast<int64_t>(ids.size()) - r.prompt;
  t0 = Clock::now();
  s = c.RemoveSequence(*seq);
  result.decode_s += Since(t0);
  if (!s.ok()) return s;
  ++result.requests;
  result.prompt_tokens += r.prompt;
  if (compare && *matched > from_cache) {
    restored.push_back(
        {.request = std::move(r), .local = from_cache, .matched = *matched});
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<int32_t> Prompt(const ShareOptions& o, int conversation, int turn) {
  std::vector<int32_t> ids;
  AppendPart(o, Part::kSystem, 0, 0, o.system_tokens, ids);
  for (int t = 1; t < turn; ++t) {
    AppendPart(o, Part::kMessage, conversation, t, o.message_tokens, ids);
    AppendPart(o, Part::kAnswer, conversation, t, o.answer_tokens, ids);
  }
  AppendPart(o, Part::kMessage, conversation, turn, o.message_tokens, ids);
  return ids;
}

absl::StatusOr<ShareResult> Serve(
    const ShareOptions& o, BlockTier* tier,
    const std::function<void(int64_t, int64_t)>& progress) {
  if (absl::Status s = CheckOptions(o); !s.ok()) return s;
  const int64_t longest =
      o.system_tokens + o.last_turn * (o.message_tokens + o.answer_tokens);
  const int64_t tables = o.group_layers ? 1 : o.num_layers;
  const int64_t pool_blocks =
      o.pool_blocks > 0 ? o.pool_blocks
                        : 2 * CeilDiv(longest, o.block_tokens) * tables;
  absl::StatusOr<std::unique_ptr<KVCache>> cache =
      MakeCache(o, longest, pool_blocks);
  if (!cache.ok()) return cache.status();
  Server server(o, *std::move(cache));
  KVCache& c = server.cache();
  if (tier != nullptr) {
    absl::Status s = c.AttachTier(
        tier, {.write_through = o.write_through, .fetch_batch = o.fetch_batch});
    if (!s.ok()) return s;
  }
  ShareResult result{
      .token_bytes = BlockBytes(c.config()) / o.block_tokens * o.num_layers,
      .pool_blocks = pool_blocks};
  std::vector<Restored> restored;
  const int64_t total =
      int64_t{o.last_turn - o.first_turn + 1} * o.conversations;
  for (int turn = o.first_turn; turn <= o.last_turn; ++turn) {
    for (int conversation = 0; conversation < o.conversations; ++conversation) {
      absl::Status s =
          ServeRequest(server, o.compare, MakeRequest(o, conversation, turn),
                       result, restored);
      if (!s.ok()) {
        return absl::InternalError(absl::StrFormat(
            "conversation %d turn %d: %s", conversation, turn, s.message()));
      }
      if (progress) progress(result.requests, total);
    }
  }
  if (tier != nullptr) {
    if (absl::Status s = c.AttachTier(nullptr, {}); !s.ok()) return s;
  }
  if (!restored.empty()) {
    absl::StatusOr<std::unique_ptr<KVCache>> plain =
        MakeCache(o, longest, pool_blocks);
    if (!plain.ok()) return plain.status();
    Server rewriter(o, *std::move(plain));
    if (absl::Status s = Rewrite(rewriter, restored, result); !s.ok()) {
      return absl::InternalError(absl::StrCat("writing again: ", s.message()));
    }
  }
  return result;
}

}  // namespace kvpage::share
