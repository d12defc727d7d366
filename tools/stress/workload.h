// tools/stress/workload.h — what kvpage-stress runs: its options, the model
// shapes and length presets it knows by name, the seeded list of requests,
// and the pattern every written token carries.
//
// The workload is a pure function of the options (the seed included): every
// backend, and every rerun, sees the same requests, the same forks, the same
// accepted draft tokens and the same verification points.
//
// Thread safety: plain values and pure functions.
#ifndef KVPAGE_TOOLS_STRESS_WORKLOAD_H_
#define KVPAGE_TOOLS_STRESS_WORKLOAD_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvpage/config.h"

namespace kvpage::stress {

enum class BackendKind : uint8_t { kPaged, kContiguous, kNaive };
[[nodiscard]] std::string_view BackendName(BackendKind kind);

// Every option of a run, with the defaults of the main job. Lengths are in
// tokens; "steps" are scheduler iterations (one decode token for every
// decoding sequence), the virtual clock of arrivals.
struct Options {
  // Requests.
  std::string preset = "sharegpt";     // sharegpt | alpaca
  int64_t requests = 256;              // total requests of the run
  int64_t concurrency = 32;            // closed loop: requests kept in flight
  double arrival_rate = 0;             // > 0: Poisson arrivals per step
  int64_t max_len = 4096;              // prompt + output capped to this
  int64_t prefill_chunk = 512;         // prompt tokens per prefill step
  int samples = 1;                     // parallel samples per request (forks)
  double shared_prefix_fraction = 0;   // requests that start with a system
  int64_t shared_prefix_tokens = 256;  //   prompt (prefix caching), one of
  int64_t shared_prefixes = 1;         //   this many, drawn uniformly
  int spec_tokens = 0;                 // > 0: draft tokens per decode step
  double spec_accept = 0.7;            // chance each draft token is accepted
  // Model and cache.
  std::string model = "llama3-8b";
  int layers = 0, kv_heads = 0, head_dim = 0;  // > 0: override the model
  DType dtype = DType::kF16;
  int block_tokens = 16;
  double pool_gib = 4;  // KV memory budget (split between threads)
  OverflowPolicy policy = OverflowPolicy::kError;
  int64_t max_seq_len = 0;  // policy limit; 0 means max_len
  int64_t sink_tokens = 0;
  std::string compress = "off";  // off | int8 | int4 (paged only)
  int64_t hot_tokens = 128;
  int64_t compress_every = 32;  // decode steps between CompressOldEntries
  // Run.
  std::vector<BackendKind> backends = {
      BackendKind::kPaged, BackendKind::kContiguous, BackendKind::kNaive};
  int threads = 2;
  double naive_budget_s = 3;  // the naive backend stops after this long
  int64_t check_every = 64;   // steps between spot checks (Validate + views)
  bool huge_pages = true;     // madvise the pool (and contiguous buffers)
  // Touch the paged pool at creation (the library's default): no page
  // faults on the decode path, the pool resident from the start.
  bool prefault = true;
  // One block table per group of layers (CacheConfig::group_layers): every
  // layer shares one table, so a step allocates one block per block_tokens
  // tokens for all layers. The budget buys the same bytes.
  bool group_layers = false;
  // Paged and contiguous both run: run them at equal concurrency too.
  bool equal_concurrency = true;
  uint64_t seed = 1;
  bool json = false;
  bool quiet = false;
  bool inject_corruption = false;  // testing: one wrong token mid-run
  // Paged backend: a snapshot of each shard's cache at the end of the run,
  // for kvpage-dump: FILE for the first shard, FILE.1, FILE.2, ... after.
  std::string snapshot;
  // The Redis tier (tools/stress/remote.h): each paged shard attaches a
  // RemoteTier of its own to this URL ("": none), with this model id (""
  // until the run is prepared: a fresh one, FreshModelId), writing back
  // the blocks its prefix cache evicts, and with write-through every block
  // it publishes.
  std::string remote;
  std::string remote_model_id;
  bool remote_write_through = false;
  // RemoteTierOptions::fetch_timeout; 0: the library's default.
  int64_t remote_fetch_timeout_ms = 0;
  bool inject_tier_corruption = false;  // testing: a wrong fetched block
};

// The range of every numeric option. kvpage-stress refuses a flag outside
// its range as it parses it (exit 2, naming the flag); ValidateOptions checks
// the ranges again (options built in code) and the rules that tie options
// together. The bounds are what no arithmetic of a run can overflow with and
// what keeps the memory a flag alone sizes bounded:
// - 10^6 requests: the run holds a Request (48 bytes) and a pointer for each,
//   about 56 MB;
// - at most 2^18 sequences in flight (--concurrency x --samples): a worker
//   keeps ~2.6 KB of state for each (its draft generator mostly), ~700 MB
//   at most; the naive backend admits without a budget;
// - lengths in tokens below 2^24, so that positions, lengths and the products
//   a run forms with them (times samples, drafts, layers) stay far from 2^63;
//   the worker's prefill buffer is sized by the longest request, not by
//   --prefill-chunk alone;
// - the model shape and --block-tokens within the library's own limits
//   (ValidateConfig), where a block is at most 2^46 bytes; a request's bytes
//   (up to 2^72 at those limits) are compared with the budget in floating
//   point;
// - --pool-gib at most the library's arena limit, 64 TiB (2^46 bytes), and
//   then at most 2^31 - 1 blocks per shard (ValidateOptions);
// - seconds and rates finite: --naive-budget at most a day (a deadline in
//   int64 nanoseconds), --arrival-rate 0 or 10^-6..10^6 per step (arrival
//   steps in int64).
struct OptionRange {
  int64_t lo, hi;
};
struct RealRange {
  double lo, hi;
};
inline constexpr int64_t kMaxTokens = int64_t{1} << 24;
inline constexpr OptionRange kRequestsRange{1, 1'000'000};
inline constexpr OptionRange kConcurrencyRange{1, 65536};
inline constexpr int64_t kMaxSequencesInFlight = int64_t{1} << 18;
inline constexpr RealRange kArrivalRateRange{0,
                                             1e6};  // 0, or >= kMinArrivalRate
inline constexpr double kMinArrivalRate = 1e-6;
inline constexpr OptionRange kMaxLenRange{2, kMaxTokens};
inline constexpr OptionRange kPrefillChunkRange{1, kMaxTokens};
inline constexpr OptionRange kSamplesRange{1, 64};
inline constexpr RealRange kFractionRange{0, 1};  // --shared-prefix-fraction,
                                                  // --spec-accept
inline constexpr OptionRange kSharedPrefixTokensRange{1, kMaxTokens};
inline constexpr OptionRange kSharedPrefixesRange{1, 1'000'000};
inline constexpr OptionRange kSpecTokensRange{0, 64};
// --layers, --kv-heads, --head-dim and --max-seq-len: an Options field of 0
// means the flag was not given (the model's, --max-len).
inline constexpr OptionRange kLayersRange{1, 4096};
inline constexpr OptionRange kKvHeadsRange{1, 4096};
inline constexpr OptionRange kHeadDimRange{1, 65536};
inline constexpr OptionRange kBlockTokensRange{1, 65535};
inline constexpr RealRange kPoolGibRange{1e-6, 65536};
inline constexpr OptionRange kMaxSeqLenRange{1, kMaxTokens};
inline constexpr OptionRange kSinkTokensRange{0, kMaxTokens};
inline constexpr OptionRange kHotTokensRange{0, kMaxTokens};
inline constexpr OptionRange kEveryRange{1, 1'000'000'000};  // --check-every,
                                                             // --compress-every
inline constexpr OptionRange kThreadsRange{1, 64};
inline constexpr RealRange kNaiveBudgetRange{1e-3, 86400};

// The model shape a run uses, after names and overrides.
struct ModelShape {
  std::string name;
  int layers = 0, kv_heads = 0, head_dim = 0;
};

// Resolves --model and the --layers/--kv-heads/--head-dim overrides.
// InvalidArgument for an unknown name.
[[nodiscard]] absl::StatusOr<ModelShape> ResolveModel(const Options& options);
// The names ResolveModel knows, for --help.
[[nodiscard]] std::string ModelNames();

// Checks the options: each numeric one against its range above, then
// together (sequences in flight, sinks below the window, the shared prompt
// inside --max-len, a budget that gives each shard 1 to 2^31 - 1 blocks,
// paged-only features on other backends, --remote's companions without
// it, --remote without the paged backend alone or without prefix caching).
// InvalidArgument naming the flag. Whether the tier is built and its URL
// answers is CheckRemote's (remote.h).
[[nodiscard]] absl::Status ValidateOptions(const Options& options,
                                           const ModelShape& shape);

// The cache configuration of one paged shard (budget / threads).
[[nodiscard]] CacheConfig PagedConfig(const Options& options,
                                      const ModelShape& shape);
[[nodiscard]] int64_t EffectiveMaxSeqLen(const Options& options);

struct Request {
  int64_t id = 0;
  int64_t prompt = 0;          // prompt tokens, the shared prefix included
  int64_t output = 0;          // tokens each sample decodes
  bool shared_prefix = false;  // starts with a system prompt: this one
  int64_t prefix_id = 0;       //   (0 .. --shared-prefixes - 1)
  int64_t arrival_step = 0;    // Poisson arrivals; 0 in the closed loop
  int shard = 0;               // the worker that owns it
};

// The requests of the run, in arrival order (pure function of options).
[[nodiscard]] std::vector<Request> GenerateRequests(const Options& options);

// Longest prompt + output + draft tokens over `requests`.
[[nodiscard]] int64_t LongestRequest(const Options& options,
                                     const std::vector<Request>& requests);

// ---------------------------------------------------------------------------
// The pattern. Every token a run writes is identified by a stream key (whose
// tokens these are: the system prompt, a request, a fork's own continuation,
// or a rejected draft), its layer and its position; its keys and values are
// derived from that and from the element index (head * head_dim + dim).
// Element values are quarters in [-32, 32): exact in f16 and bf16.

// SplitMix64's finalizer: a bijective 64-bit mix.
[[nodiscard]] inline uint64_t Mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

[[nodiscard]] inline uint64_t StreamKey(uint64_t seed, uint64_t kind,
                                        uint64_t a, uint64_t b) {
  return Mix64(Mix64(Mix64(seed ^ (kind << 56)) ^ a) + b);
}

// The key of one token's keys (values: `value` true) in one layer.
[[nodiscard]] inline uint64_t TokenKey(uint64_t stream, int layer,
                                       int64_t position, bool value) {
  return Mix64(stream ^ Mix64((static_cast<uint64_t>(position) << 9) ^
                              (static_cast<uint64_t>(layer) << 1) ^
                              static_cast<uint64_t>(value)));
}

// The byte (0..255) of element `e` of the token whose key is `key`:
// value (byte - 128) / 4.
[[nodiscard]] inline int PatternByte(uint64_t key, int64_t e) {
  return static_cast<int>(
      (Mix64(key + static_cast<uint64_t>(e >> 3)) >> ((e & 7) * 8)) & 255);
}

// Bit patterns of (b - 128) / 4 in f16 or bf16, and as float.
struct PatternTable {
  explicit PatternTable(DType dtype);
  uint16_t bits[256];
  float value[256];
};

// Writes `elems` elements of the token with key `key` as dtype bits.
inline void FillToken(const PatternTable& table, uint64_t key, int64_t elems,
                      uint16_t* out) {
  for (int64_t e = 0; e < elems; e += 8) {
    const uint64_t x = Mix64(key + static_cast<uint64_t>(e >> 3));
    const int64_t n = elems - e < 8 ? elems - e : 8;
    for (int64_t j = 0; j < n; ++j) {
      out[e + j] = table.bits[(x >> (j * 8)) & 255];
    }
  }
}

// Which stream wrote which positions of a sequence: runs [previous end, end)
// each written by one stream, ascending.
class Lineage {
 public:
  void Push(int64_t end, uint64_t stream) {
    if (!runs_.empty() && runs_.back().second == stream) {
      runs_.back().first = end;
    } else {
      runs_.emplace_back(end, stream);
    }
  }
  // Drops the positions at or past `length`.
  void Truncate(int64_t length);
  // The stream of `position` (which must be below the last end).
  [[nodiscard]] uint64_t StreamAt(int64_t position) const;
  [[nodiscard]] int64_t length() const {
    return runs_.empty() ? 0 : runs_.back().first;
  }

 private:
  std::vector<std::pair<int64_t, uint64_t>> runs_;
};

// Prompt token ids (for prefix caching): a system prompt's ids are the same
// for every request that shares it, and so is its pattern (its stream is
// the prompt's, not the request's): a block's contents are a function of
// the tokens it follows, as a model's are, whichever shard computed it.
[[nodiscard]] int32_t TokenId(uint64_t stream, int64_t position);

}  // namespace kvpage::stress

#endif  // KVPAGE_TOOLS_STRESS_WORKLOAD_H_
