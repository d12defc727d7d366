#include "tools/stress/workload.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace kvpage::stress {
namespace {

struct NamedModel {
  const char* name;
  int layers, kv_heads, head_dim;
};

// Shapes of the KV cache only (layers, kv-heads, head_dim), as published in
// the models' configuration files.
constexpr NamedModel kModels[] = {
    {"llama3-8b", 32, 8, 128},   // 128 KiB per token in f16
    {"llama3-70b", 80, 8, 128},  // 320 KiB per token
    {"llama2-7b", 32, 32, 128},  // multi-head attention: 512 KiB per token
    {"qwen2-7b", 28, 4, 128},    // 56 KiB per token
    {"tiny", 2, 2, 32},          // for tests: 512 bytes per token
};

// Long-tailed token counts: a log-normal with the preset's mean. The means
// are the published statistics of the traces (ShareGPT: about 161 prompt and
// 338 output tokens; Alpaca: about 19 and 58); the spreads (sigma of the
// logarithm) are this tool's choice, to give a long tail.
struct LengthPreset {
  const char* name;
  double prompt_mean, prompt_sigma, output_mean, output_sigma;
};
constexpr LengthPreset kPresets[] = {
    {"sharegpt", 161, 1.0, 338, 0.9},
    {"alpaca", 19, 0.6, 58, 0.7},
};

int64_t Draw(std::mt19937_64& rng, double mean, double sigma) {
  std::lognormal_distribution<double> dist(std::log(mean) - sigma * sigma / 2,
                                           sigma);
  return std::max<int64_t>(1, std::llround(dist(rng)));
}

}  // namespace

std::string_view BackendName(BackendKind kind) {
  switch (kind) {
    case BackendKind::kPaged:
      return "paged";
    case BackendKind::kContiguous:
      return "contiguous";
    case BackendKind::kNaive:
      return "naive";
  }
  return "?";
}

std::string ModelNames() {
  std::vector<std::string> names;
  for (const NamedModel& m : kModels) {
    names.push_back(absl::StrFormat("%s (%d layers, %d kv-heads, head_dim %d)",
                                    m.name, m.layers, m.kv_heads, m.head_dim));
  }
  return absl::StrJoin(names, ", ");
}

absl::StatusOr<ModelShape> ResolveModel(const Options& options) {
  ModelShape shape;
  bool found = false;
  for (const NamedModel& m : kModels) {
    if (options.model == m.name) {
      shape = {m.name, m.layers, m.kv_heads, m.head_dim};
      found = true;
    }
  }
  if (!found) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown --model '", options.model, "'; known: ", ModelNames()));
  }
  const bool custom =
      options.layers > 0 || options.kv_heads > 0 || options.head_dim > 0;
  if (options.layers > 0) shape.layers = options.layers;
  if (options.kv_heads > 0) shape.kv_heads = options.kv_heads;
  if (options.head_dim > 0) shape.head_dim = options.head_dim;
  if (custom) {
    shape.name = absl::StrFormat(
        "custom (%s with %d layers, %d kv-heads, "
        "head_dim %d)",
        options.model, shape.layers, shape.kv_heads, shape.head_dim);
  }
  return shape;
}

int64_t EffectiveMaxSeqLen(const Options& options) {
  return options.max_seq_len > 0 ? options.max_seq_len : options.max_len;
}

CacheConfig PagedConfig(const Options& options, const ModelShape& shape) {
  CacheConfig config{.num_layers = shape.layers,
                     .num_kv_heads = shape.kv_heads,
                     .head_dim = shape.head_dim,
                     .dtype = options.dtype,
                     .block_tokens = options.block_tokens,
                     .max_seq_len = EffectiveMaxSeqLen(options),
                     .overflow = options.policy,
                     .sink_tokens = options.sink_tokens,
                     .prefault = options.prefault,
                     .huge_pages = options.huge_pages,
                     .group_layers = options.group_layers};
  // A block of a group takes a slot of each of its layers.
  const int64_t block_bytes = BlockBytes(config) * LayerGroupWidth(config);
  const double shard_bytes =
      options.pool_gib * 1024.0 * 1024.0 * 1024.0 / options.threads;
  config.num_blocks =
      block_bytes > 0 ? static_cast<int64_t>(shard_bytes / block_bytes) : 0;
  if (options.compress != "off") {
    config.compression = {
        .enabled = true,
        .bits =
            options.compress == "int4" ? QuantBits::kInt4 : QuantBits::kInt8,
        .group_size = std::min(32, shape.head_dim),
        .hot_tokens = options.hot_tokens,
        .quant_cells = std::max<int64_t>(1, config.num_blocks / 2),
        .auto_compress = false};
  }
  return config;
}

int64_t LongestRequest(const Options& options,
                       const std::vector<Request>& requests) {
  int64_t longest = 0;
  for (const Request& r : requests) {
    longest = std::max(longest, r.prompt + r.output + options.spec_tokens);
  }
  return longest;
}

namespace {

// Each numeric option in its range (a nan fails every comparison).
absl::Status CheckRanges(const Options& o) {
  auto bad = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(parts...));
  };
  struct IntOption {
    const char* flag;
    int64_t value;
    OptionRange range;
    bool zero_is_unset = false;  // 0: the flag was not given
  };
  for (const IntOption& f : {
           IntOption{"--requests", o.requests, kRequestsRange},
           IntOption{"--concurrency", o.concurrency, kConcurrencyRange},
           IntOption{"--max-len", o.max_len, kMaxLenRange},
           IntOption{"--prefill-chunk", o.prefill_chunk, kPrefillChunkRange},
           IntOption{"--samples", o.samples, kSamplesRange},
           IntOption{"--shared-prefix-tokens", o.shared_prefix_tokens,
                     kSharedPrefixTokensRange},
           IntOption{"--shared-prefixes", o.shared_prefixes,
                     kSharedPrefixesRange},
           IntOption{"--spec-tokens", o.spec_tokens, kSpecTokensRange},
           IntOption{"--layers", o.layers, kLayersRange, true},
           IntOption{"--kv-heads", o.kv_heads, kKvHeadsRange, true},
           IntOption{"--head-dim", o.head_dim, kHeadDimRange, true},
           IntOption{"--block-tokens", o.block_tokens, kBlockTokensRange},
           IntOption{"--max-seq-len", o.max_seq_len, kMaxSeqLenRange, true},
           IntOption{"--sink-tokens", o.sink_tokens, kSinkTokensRange},
           IntOption{"--hot-tokens", o.hot_tokens, kHotTokensRange},
           IntOption{"--compress-every", o.compress_every, kEveryRange},
           IntOption{"--threads", o.threads, kThreadsRange},
           IntOption{"--check-every", o.check_every, kEveryRange},
       }) {
    if (f.zero_is_unset && f.value == 0) continue;
    if (f.value < f.range.lo || f.value > f.range.hi) {
      return bad(f.flag, " is ", f.value, "; want ", f.range.lo, " to ",
                 f.range.hi);
    }
  }
  struct RealOption {
    const char* flag;
    double value;
    RealRange range;
  };
  for (const RealOption& f : {
           RealOption{"--arrival-rate", o.arrival_rate, kArrivalRateRange},
           RealOption{"--shared-prefix-fraction", o.shared_prefix_fraction,
                      kFractionRange},
           RealOption{"--spec-accept", o.spec_accept, kFractionRange},
           RealOption{"--pool-gib", o.pool_gib, kPoolGibRange},
           RealOption{"--naive-budget", o.naive_budget_s, kNaiveBudgetRange},
       }) {
    if (!(f.value >= f.range.lo && f.value <= f.range.hi)) {
      return bad(f.flag, " is ", absl::StrFormat("%g", f.value), "; want ",
                 absl::StrFormat("%g", f.range.lo), " to ",
                 absl::StrFormat("%g", f.range.hi));
    }
  }
  return absl::OkStatus();
}

// --remote's flags together. The tier is the paged cache's (a baseline has
// none, and the equal-concurrency rerun would restore the first run's
// blocks); what it shares is what the prefix cache names, so prefix
// caching must be on: --shared-prefix-fraction > 0 turns it on, and the
// tool does not turn it on behind the workload's back.
absl::Status CheckRemoteOptions(const Options& o) {
  auto bad = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(parts...));
  };
  if (o.remote.empty()) {
    if (o.remote_write_through)
      return bad("--remote-write-through needs --remote");
    if (!o.remote_model_id.empty())
      return bad("--remote-model-id needs --remote");
    if (o.remote_fetch_timeout_ms != 0)
      return bad("--remote-fetch-timeout-ms needs --remote");
    if (o.inject_tier_corruption) {
      return bad("--inject-tier-corruption needs --remote");
    }
    return absl::OkStatus();
  }
  if (o.backends.size() != 1 || o.backends[0] != BackendKind::kPaged) {
    return bad(
        "--remote applies to the paged backend only: add --backend paged");
  }
  if (!(o.shared_prefix_fraction > 0)) {
    return bad(
        "--remote needs prefix caching: give --shared-prefix-fraction > 0 "
        "(the system prompt is what the shards share)");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateOptions(const Options& o, const ModelShape& shape) {
  if (absl::Status s = CheckRanges(o); !s.ok()) return s;
  auto bad = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(parts...));
  };
  if (o.arrival_rate > 0 && o.arrival_rate < kMinArrivalRate) {
    return bad("--arrival-rate is ", absl::StrFormat("%g", o.arrival_rate),
               "; want 0 (closed loop) or ", kMinArrivalRate, " to ",
               kArrivalRateRange.hi, " arrivals per step");
  }
  if (o.concurrency * o.samples > kMaxSequencesInFlight) {
    return bad("--concurrency ", o.concurrency, " x --samples ", o.samples,
               " is ", o.concurrency * o.samples,
               " sequences in flight; want at most ", kMaxSequencesInFlight);
  }
  bool known_preset = false;
  for (const LengthPreset& p : kPresets) known_preset |= o.preset == p.name;
  if (!known_preset) return bad("unknown --preset '", o.preset, "'");
  if (shape.layers < 1 || shape.kv_heads < 1 || shape.head_dim < 1) {
    return bad("the model shape needs layers, kv-heads and head_dim >= 1");
  }
  if (shape.head_dim % 8 != 0 && o.compress != "off") {
    return bad("--compress needs a head_dim that is a multiple of 8");
  }
  // A request is a prompt token past the shared prompt and an output token
  // at least (draft tokens never pass the request's end).
  if (o.shared_prefix_fraction > 0 && o.shared_prefix_tokens > o.max_len - 2) {
    return bad("--shared-prefix-tokens is ", o.shared_prefix_tokens,
               "; want 1 to --max-len - 2 (", o.max_len - 2, ")");
  }
  if (o.compress != "off" && o.compress != "int8" && o.compress != "int4") {
    return bad("--compress must be off, int8 or int4");
  }
  if (o.backends.empty()) return bad("--backend names no backend");
  const bool paged_only =
      o.backends.size() == 1 && o.backends[0] == BackendKind::kPaged;
  if (!paged_only &&
      (o.policy != OverflowPolicy::kError || o.compress != "off")) {
    return bad(
        "--policy other than error and --compress apply to the paged "
        "backend only: add --backend paged");
  }
  if (absl::Status s = CheckRemoteOptions(o); !s.ok()) return s;
  const int64_t max_seq_len = EffectiveMaxSeqLen(o);
  if (o.policy == OverflowPolicy::kError && max_seq_len < o.max_len) {
    return bad("--max-seq-len ", max_seq_len, " is below --max-len ", o.max_len,
               ": the error policy would refuse long requests");
  }
  if (o.sink_tokens >= max_seq_len) {
    return bad("--sink-tokens is ", o.sink_tokens,
               "; want 0 to --max-seq-len - 1 (", max_seq_len - 1, ")");
  }
  if (o.policy == OverflowPolicy::kTruncate &&
      o.sink_tokens >= EffectiveTruncateTo(max_seq_len, 0)) {
    return bad("--sink-tokens is ", o.sink_tokens,
               "; a context shift keeps --max-seq-len / 2 tokens, so want 0 "
               "to ",
               EffectiveTruncateTo(max_seq_len, 0) - 1);
  }
  if (o.policy != OverflowPolicy::kError &&
      max_seq_len - o.sink_tokens < 2 * (o.spec_tokens + 1) + o.block_tokens) {
    return bad(
        "the window (--max-seq-len minus --sink-tokens) must hold at "
        "least 2 * (--spec-tokens + 1) + --block-tokens tokens, so "
        "that a rollback stays inside it");
  }
  const CacheConfig config = PagedConfig(o, shape);
  const int64_t max_blocks = 0x7fffffff;
  if (config.num_blocks < 1 || config.num_blocks > max_blocks) {
    return bad("--pool-gib ", absl::StrFormat("%g", o.pool_gib), " over ",
               o.threads, " threads gives ", config.num_blocks, " blocks of ",
               BlockBytes(config), " bytes per thread; want 1 to ", max_blocks);
  }
  if (absl::Status s = ValidateConfig(config); !s.ok()) {
    return bad("cache configuration: ", s.message());
  }
  return absl::OkStatus();
}

std::vector<Request> GenerateRequests(const Options& o) {
  const LengthPreset* preset = &kPresets[0];
  for (const LengthPreset& p : kPresets) {
    if (o.preset == p.name) preset = &p;
  }
  std::mt19937_64 rng(Mix64(o.seed ^ 0x5eed));
  std::exponential_distribution<double> gap(o.arrival_rate > 0 ? o.arrival_rate
                                                               : 1.0);
  std::bernoulli_distribution shared(o.shared_prefix_fraction);
  // The system prompts from a generator of their own: --shared-prefixes
  // changes which prompt a request starts with, and nothing else.
  std::mt19937_64 prefix_rng(Mix64(o.seed ^ 0x5fe1));
  std::uniform_int_distribution<int64_t> which(0, o.shared_prefixes - 1);
  std::vector<Request> out;
  out.reserve(static_cast<size_t>(o.requests));
  double t = 0;
  for (int64_t i = 0; i < o.requests; ++i) {
    Request r{.id = i};
    r.shared_prefix = shared(rng);
    if (r.shared_prefix) r.prefix_id = which(prefix_rng);
    const int64_t prefix = r.shared_prefix ? o.shared_prefix_tokens : 0;
    const int64_t limit = o.max_len - o.spec_tokens;
    r.prompt =
        std::min(prefix + Draw(rng, preset->prompt_mean, preset->prompt_sigma),
                 std::max<int64_t>(prefix + 1, limit / 2));
    r.output = std::clamp<int64_t>(
        Draw(rng, preset->output_mean, preset->output_sigma), 1,
        std::max<int64_t>(1, limit - r.prompt));
    if (o.arrival_rate > 0) {
      t += gap(rng);
      r.arrival_step = static_cast<int64_t>(t);
    }
    r.shard = static_cast<int>(i % o.threads);
    out.push_back(r);
  }
  return out;
}

PatternTable::PatternTable(DType dtype) {
  for (int b = 0; b < 256; ++b) {
    const float x = static_cast<float>(b - 128) / 4.0f;
    value[b] = x;
    uint32_t f;
    std::memcpy(&f, &x, sizeof f);
    if (dtype == DType::kBF16) {
      bits[b] = static_cast<uint16_t>(f >> 16);  // exact: <= 8 bits
    } else if (x == 0) {
      bits[b] = 0;
    } else {
      // A normal f16 with the float's sign, exponent and top 10 mantissa
      // bits (the rest are zero for quarters below 64).
      const uint32_t sign = f >> 31;
      const int exponent = static_cast<int>((f >> 23) & 255) - 127 + 15;
      bits[b] = static_cast<uint16_t>((sign << 15) |
                                      (static_cast<uint32_t>(exponent) << 10) |
                                      ((f >> 13) & 1023));
    }
  }
}

void Lineage::Truncate(int64_t length) {
  while (!runs_.empty()) {
    const size_t n = runs_.size();
    const int64_t begin = n > 1 ? runs_[n - 2].first : 0;
    if (begin >= length) {
      runs_.pop_back();
    } else {
      runs_.back().first = std::min(runs_.back().first, length);
      break;
    }
  }
}

uint64_t Lineage::StreamAt(int64_t position) const {
  for (const auto& [end, stream] : runs_) {
    if (position < end) return stream;
  }
  return runs_.empty() ? 0 : runs_.back().second;
}

int32_t TokenId(uint64_t stream, int64_t position) {
  return static_cast<int32_t>(
      Mix64(stream ^ static_cast<uint64_t>(position) * 0x9e3779b97f4a7c15ULL) &
      0x7fffffff);
}

}  // namespace kvpage::stress
