#include "tools/replay/trace.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace kvpage::replay {
namespace {

using nlohmann::json;

// SplitMix64's finalizer: a bijection on 64 bits that mixes every bit.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The integer at `key` of `line_object` in [lo, hi], or why not.
absl::StatusOr<int64_t> IntegerField(const json& object, const char* key,
                                     int64_t lo, int64_t hi) {
  auto it = object.find(key);
  if (it == object.end())
    return absl::InvalidArgumentError(absl::StrCat(key, " is missing"));
  if (!it->is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat(key, " is not an integer"));
  }
  const bool too_big =
      it->is_number_unsigned() &&
      it->get<uint64_t>() >
          static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  const int64_t v = too_big ? 0 : it->get<int64_t>();
  if (too_big || v < lo || v > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat(key, " is not in [", lo, ", ", hi, "]"));
  }
  return v;
}

absl::StatusOr<TraceRequest> ParseLine(const std::string& line,
                                       int64_t trace_block_tokens) {
  const json object = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (object.is_discarded()) return absl::InvalidArgumentError("not JSON");
  if (!object.is_object())
    return absl::InvalidArgumentError("not a JSON object");
  TraceRequest request;
  auto ts = object.find("timestamp");
  if (ts == object.end())
    return absl::InvalidArgumentError("timestamp is missing");
  if (!ts->is_number() || !std::isfinite(ts->get<double>())) {
    return absl::InvalidArgumentError("timestamp is not a finite number");
  }
  request.timestamp = ts->get<double>();
  absl::StatusOr<int64_t> input =
      IntegerField(object, "input_length", 1, kMaxTraceTokens);
  if (!input.ok()) return input.status();
  absl::StatusOr<int64_t> output =
      IntegerField(object, "output_length", 0, kMaxTraceTokens);
  if (!output.ok()) return output.status();
  request.input_length = *input;
  request.output_length = *output;
  auto ids = object.find("hash_ids");
  if (ids == object.end())
    return absl::InvalidArgumentError("hash_ids is missing");
  if (!ids->is_array())
    return absl::InvalidArgumentError("hash_ids is not an array");
  const int64_t want =
      (request.input_length + trace_block_tokens - 1) / trace_block_tokens;
  if (static_cast<int64_t>(ids->size()) != want) {
    return absl::InvalidArgumentError(
        absl::StrCat("hash_ids holds ", ids->size(), " ids where input_length ",
                     request.input_length, " needs ", want, " (blocks of ",
                     trace_block_tokens, " tokens)"));
  }
  request.hash_ids.reserve(ids->size());
  for (const json& id : *ids) {
    const bool fits =
        id.is_number_integer() &&
        !(id.is_number_unsigned() &&
          id.get<uint64_t>() >
              static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
    if (!fits) {
      return absl::InvalidArgumentError(
          "hash_ids holds a value that is not a 64-bit integer");
    }
    request.hash_ids.push_back(id.get<int64_t>());
  }
  return request;
}

// A uniform integer in [lo, hi] (the generator's own, so that a trace does
// not depend on the standard library's distributions).
int64_t Uniform(std::mt19937_64& rng, int64_t lo, int64_t hi) {
  return lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
}

// An exponential variate of mean `mean`.
double Exponential(std::mt19937_64& rng, double mean) {
  const double u = (static_cast<double>(rng() >> 11) + 0.5) * 0x1.0p-53;
  return -mean * std::log(u);
}

}  // namespace

absl::StatusOr<std::vector<TraceRequest>> ParseTrace(
    std::istream& in, int64_t trace_block_tokens) {
  if (trace_block_tokens < 1) {
    return absl::InvalidArgumentError("trace block tokens must be at least 1");
  }
  std::vector<TraceRequest> trace;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    absl::StatusOr<TraceRequest> request = ParseLine(line, trace_block_tokens);
    if (!request.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", number, ": ", request.status().message()));
    }
    trace.push_back(*std::move(request));
  }
  if (in.bad())
    return absl::InvalidArgumentError("the trace could not be read");
  return trace;
}

void WriteTrace(const std::vector<TraceRequest>& trace, std::ostream& out) {
  for (const TraceRequest& r : trace) {
    const json line = {{"timestamp", r.timestamp},
                       {"input_length", r.input_length},
                       {"output_length", r.output_length},
                       {"hash_ids", r.hash_ids}};
    out << line.dump() << '\n';
  }
}

int32_t TraceToken(int64_t hash_id, int64_t j) {
  const uint64_t h =
      Mix(Mix(static_cast<uint64_t>(hash_id)) + static_cast<uint64_t>(j));
  return static_cast<int32_t>(h & 0x7fffffffU);
}

int32_t OutputToken(int64_t request_index, int64_t j) {
  // Another stream than TraceToken's: a different first mix.
  const uint64_t h = Mix(Mix(~static_cast<uint64_t>(request_index)) ^
                         (static_cast<uint64_t>(j) << 1 | 1));
  return static_cast<int32_t>(h & 0x7fffffffU);
}

std::vector<int32_t> PromptTokens(const TraceRequest& request,
                                  int64_t trace_block_tokens) {
  std::vector<int32_t> tokens;
  tokens.reserve(static_cast<size_t>(request.input_length));
  for (int64_t p = 0; p < request.input_length; ++p) {
    const int64_t id =
        request.hash_ids[static_cast<size_t>(p / trace_block_tokens)];
    tokens.push_back(TraceToken(id, p % trace_block_tokens));
  }
  return tokens;
}

absl::StatusOr<std::vector<TraceRequest>> GenerateTrace(
    const SyntheticTraceOptions& o) {
  if (o.requests < 1 || o.trace_block_tokens < 1 || o.system_prompts < 1 ||
      o.system_prompt_tokens_max < 1 || o.max_turns < 1 ||
      o.user_tokens_max < 1 || o.output_tokens_max < 1) {
    return absl::InvalidArgumentError(
        "synthetic trace: counts and lengths must be at least 1");
  }
  if (o.system_prompt_tokens_max + o.user_tokens_max > kMaxTraceTokens) {
    return absl::InvalidArgumentError(
        "synthetic trace: a first prompt could pass 2^24 tokens");
  }
  if (!(o.shared_system_prompt >= 0 && o.shared_system_prompt <= 1)) {
    return absl::InvalidArgumentError(
        "synthetic trace: the shared system prompt fraction must be in [0, 1]");
  }
  if (!(o.mean_gap_ms >= 0) || !(o.think_time_ms >= 0) ||
      !std::isfinite(o.mean_gap_ms) || !std::isfinite(o.think_time_ms)) {
    return absl::InvalidArgumentError(
        "synthetic trace: times must be finite and not negative");
  }
  const int64_t bt = o.trace_block_tokens;
  std::mt19937_64 rng(o.seed);
  int64_t next_id = 0;
  // A system prompt: its length and the ids of its full trace blocks (its
  // partial last block is mixed with what follows, so never shared).
  struct Context {
    int64_t length = 0;
    std::vector<int64_t> full_ids;
  };
  std::vector<Context> system(static_cast<size_t>(o.system_prompts));
  for (Context& s : system) {
    s.length =
        Uniform(rng, std::max<int64_t>(1, o.system_prompt_tokens_max / 4),
                o.system_prompt_tokens_max);
    for (int64_t b = 0; b < s.length / bt; ++b) s.full_ids.push_back(next_id++);
  }
  std::vector<TraceRequest> trace;
  double arrival = 0;
  while (static_cast<int64_t>(trace.size()) < o.requests) {
    arrival += Exponential(rng, o.mean_gap_ms);
    Context context;
    if (static_cast<double>(rng() >> 11) * 0x1.0p-53 < o.shared_system_prompt) {
      context =
          system[static_cast<size_t>(Uniform(rng, 0, o.system_prompts - 1))];
    }
    const int turns = static_cast<int>(Uniform(rng, 1, o.max_turns));
    double at = arrival;
    for (int t = 0;
         t < turns && static_cast<int64_t>(trace.size()) < o.requests; ++t) {
      if (context.length + o.user_tokens_max > kMaxTraceTokens) break;
      TraceRequest r;
      r.timestamp = std::round(at);
      r.input_length = context.length +
                       Uniform(rng, std::max<int64_t>(1, o.user_tokens_max / 8),
                               o.user_tokens_max);
      r.output_length =
          Uniform(rng, std::max<int64_t>(1, o.output_tokens_max / 8),
                  o.output_tokens_max);
      // The blocks the earlier context fills are shared; the rest is new
      // (the partial block the context ended in now holds other tokens).
      r.hash_ids = context.full_ids;
      const int64_t blocks = (r.input_length + bt - 1) / bt;
      while (static_cast<int64_t>(r.hash_ids.size()) < blocks) {
        r.hash_ids.push_back(next_id++);
      }
      context.full_ids.assign(r.hash_ids.begin(),
                              r.hash_ids.begin() + r.input_length / bt);
      context.length = r.input_length + r.output_length;
      trace.push_back(std::move(r));
      at += Exponential(rng, o.think_time_ms);
    }
  }
  std::stable_sort(trace.begin(), trace.end(),
                   [](const TraceRequest& a, const TraceRequest& b) {
                     return a.timestamp < b.timestamp;
                   });
  return trace;
}

}  // namespace kvpage::replay
