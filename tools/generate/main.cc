// kvpage-generate: runs a llama2-family model (the shipped stories260K by
// default) with kvpage as its only key/value cache.
//   kvpage-generate [flags]          generate token ids
//   kvpage-generate quality [flags]  the quality table (docs/model.md)
//   kvpage-generate speed [flags]    tokens/s on kvpage and on a contiguous
//                                    cache, same run
// Exit codes: 0 done, 1 the run failed (the cache refused an update: a pool
// too small, a window policy that cannot hold a rollback), 2 bad usage or a
// model file that is not a checkpoint (one line naming what is wrong).
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "kvpage/stats_fields.h"
#include "nlohmann/json.hpp"
#include "tools/flag_ranges.h"
#include "tools/generate/generate.h"
#include "tools/generate/quality.h"
#include "tools/generate/settings.h"
#include "tools/generate/speed.h"
#include "tools/generate/stores.h"

namespace kvpage::generate {
namespace {

constexpr int64_t kMaxTokens = int64_t{1} << 24;

struct Flags {
  std::string model = KVPAGE_DEFAULT_MODEL;
  std::string prompt = "1";
  std::string dtype = "f32";
  std::string policy = "error";
  std::string compress = "none";
  std::string rope = "absolute";
  int64_t compress_every = 0;
  bool json = false;
  CacheSettings cache;
  GenerateOptions gen;
  QualityOptions quality;
  SpeedOptions speed;
};

void DefineCacheFlags(CLI::App& app, Flags& f) {
  app.add_option("--dtype", f.dtype, "hot pool dtype")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}))
      ->capture_default_str();
  app.add_option("--block-tokens", f.cache.block_tokens,
                 "token slots per block")
      ->transform(tools::IntRange(1, 65535))
      ->capture_default_str();
  app.add_option("--blocks", f.cache.blocks,
                 "hot pool capacity in blocks (0: enough for the run)")
      ->transform(tools::IntRange(0, (int64_t{1} << 31) - 1))
      ->capture_default_str();
  app.add_option("--policy", f.policy, "overflow policy")
      ->check(CLI::IsMember(
          {"error", "sliding-window", "circular-buffer", "truncate"}))
      ->capture_default_str();
  app.add_option("--window", f.cache.window,
                 "max_seq_len: most visible tokens (0: the run's longest "
                 "sequence)")
      ->transform(tools::IntRange(0, kMaxTokens))
      ->capture_default_str();
  app.add_option("--sinks", f.cache.sinks, "attention-sink tokens kept")
      ->transform(tools::IntRange(0, kMaxTokens))
      ->capture_default_str();
  app.add_option("--truncate-to", f.cache.truncate_to,
                 "tokens a context shift keeps (0: window / 2)")
      ->transform(tools::IntRange(0, kMaxTokens))
      ->capture_default_str();
  app.add_option("--compress", f.compress,
                 "compress cold blocks: int8, int4, or mixed (int4 where its "
                 "error is within --max-rel-error, else int8)")
      ->check(CLI::IsMember({"none", "int8", "int4", "mixed"}))
      ->capture_default_str();
  app.add_option("--group-size", f.cache.group_size,
                 "values per scale along head_dim (0: head_dim)")
      ->transform(tools::IntRange(0, 65536))
      ->capture_default_str();
  app.add_option("--hot-tokens", f.cache.hot_tokens,
                 "most recent tokens that always stay hot")
      ->transform(tools::IntRange(0, kMaxTokens))
      ->capture_default_str();
  app.add_option("--compress-every", f.compress_every,
                 "compress every N decode steps (0: in the update that makes "
                 "a block cold)")
      ->transform(tools::IntRange(0, kMaxTokens))
      ->capture_default_str();
  app.add_option("--max-rel-error", f.cache.max_rel_error,
                 "mixed: the relative error int4 may have")
      ->transform(tools::FiniteRange(1e-9, 1))
      ->capture_default_str();
  app.add_option("--quant-cells", f.cache.quant_cells,
                 "quantized pool capacity (0: as many as hot blocks)")
      ->transform(tools::IntRange(0, (int64_t{1} << 31) - 1))
      ->capture_default_str();
  app.add_flag("--group-layers", f.cache.group_layers,
               "one block table for all layers: a block per block_tokens "
               "tokens serves every layer (CacheConfig::group_layers)");
  app.add_option("--rope-positions", f.rope,
                 "rotate keys by absolute position (stored rotated) or by "
                 "index among the visible tokens (stored unrotated, rotated "
                 "at each read: StreamingLLM)")
      ->check(CLI::IsMember({"absolute", "visible-index"}))
      ->capture_default_str();
}

void DefineRunFlags(CLI::App& app, Flags& f) {
  app.add_option("--prompt", f.prompt,
                 "prompt token ids, space- or comma-separated (BOS is 1)")
      ->capture_default_str();
  app.add_option("--steps", f.gen.steps, "tokens each sample generates")
      ->transform(tools::IntRange(1, kMaxTokens))
      ->capture_default_str();
  app.add_option("--requests", f.gen.requests, "requests in the batch")
      ->transform(tools::IntRange(1, 4096))
      ->capture_default_str();
  app.add_option("--samples", f.gen.samples,
                 "samples per request: forks after the prompt")
      ->transform(tools::IntRange(1, 256))
      ->capture_default_str();
  app.add_option("--prefill-chunk", f.gen.prefill_chunk,
                 "prompt tokens per forward pass")
      ->transform(tools::IntRange(1, kMaxTokens))
      ->capture_default_str();
  app.add_flag("--prefix-cache", f.gen.prefix_cache,
               "requests share their prompt's blocks (MatchPrefix)");
  app.add_option("--speculate", f.gen.speculate,
                 "tokens drafted per step from the history, verified in one "
                 "pass; rejected ones are truncated")
      ->transform(tools::IntRange(0, 64))
      ->capture_default_str();
  app.add_option("--temperature", f.gen.temperature, "0: greedy")
      ->transform(tools::FiniteRange(0, 100))
      ->capture_default_str();
  app.add_option("--seed", f.gen.seed, "sampling seed")
      ->transform(tools::UintRange(0, UINT64_MAX))
      ->capture_default_str();
  app.add_flag("--json", f.json,
               "JSON: ids, per-step logit summaries, cache statistics");
}

absl::StatusOr<std::vector<int32_t>> ParsePrompt(const std::string& text,
                                                 int vocab) {
  std::vector<int32_t> ids;
  for (absl::string_view part :
       absl::StrSplit(text, absl::ByAnyChar(" ,"), absl::SkipEmpty())) {
    int32_t id = 0;
    if (!absl::SimpleAtoi(part, &id) || id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "--prompt: %s is not a token id in [0, %d)", part, vocab));
    }
    ids.push_back(id);
  }
  if (ids.empty()) return absl::InvalidArgumentError("--prompt: no token ids");
  return ids;
}

// The flags' names turned into settings.
void ResolveNames(Flags& f) {
  f.cache.dtype = f.dtype == "f16"    ? DType::kF16
                  : f.dtype == "bf16" ? DType::kBF16
                                      : DType::kF32;
  f.cache.policy = f.policy == "sliding-window" ? OverflowPolicy::kSlidingWindow
                   : f.policy == "circular-buffer"
                       ? OverflowPolicy::kCircularBuffer
                   : f.policy == "truncate" ? OverflowPolicy::kTruncate
                                            : OverflowPolicy::kError;
  f.cache.compression = f.compress == "int8"    ? Compression::kInt8
                        : f.compress == "int4"  ? Compression::kInt4
                        : f.compress == "mixed" ? Compression::kMixed
                                                : Compression::kNone;
  f.cache.auto_compress = f.compress_every == 0;
  f.gen.compress_every =
      f.cache.compression == Compression::kNone ? 0 : f.compress_every;
}

int Usage(const absl::Status& s) {
  absl::FPrintF(stderr, "kvpage-generate: %s\n",
                std::string(s.message()).c_str());
  return 2;
}

nlohmann::json StatsJson(const CacheStats& stats) {
  nlohmann::json j;
  ForEachStatsField(stats, [&](const char* name, auto v) { j[name] = v; });
  return j;
}

void Print(const Flags& f, const GenerateResult& r, const CacheStats& stats) {
  int64_t generated = 0, drafted = 0, accepted = 0;
  for (const GenerateResult::Sample& s : r.samples) {
    generated += static_cast<int64_t>(s.tokens.size());
    drafted += s.drafted;
    accepted += s.accepted;
  }
  const double rate = r.seconds > 0 ? generated / r.seconds : 0;
  if (!f.json) {
    for (const GenerateResult::Sample& s : r.samples) {
      absl::PrintF("request %d sample %d: %s\n", s.request, s.sample,
                   absl::StrJoin(s.tokens, " ").c_str());
    }
    absl::PrintF(
        "%d tokens in %.3f s (%.0f tokens/s); prompt tokens computed %d, "
        "from the prefix cache %d; drafted %d, accepted %d; cache: %d of %d "
        "blocks, %d bytes, %d tokens stored\n",
        generated, r.seconds, rate, r.prompt_tokens_computed,
        r.prompt_tokens_matched, drafted, accepted, stats.blocks_used,
        stats.blocks_total, stats.memory_usage_bytes, stats.tokens_stored);
    return;
  }
  nlohmann::json out;
  out["schema_version"] = 1;
  for (const GenerateResult::Sample& s : r.samples) {
    nlohmann::json steps = nlohmann::json::array();
    for (const LogitSummary& l : s.summaries) {
      steps.push_back({{"token", l.token},
                       {"logprob", l.logprob},
                       {"top_token", l.top_token},
                       {"top_prob", l.top_prob},
                       {"entropy", l.entropy}});
    }
    out["samples"].push_back({{"request", s.request},
                              {"sample", s.sample},
                              {"tokens", s.tokens},
                              {"steps", steps},
                              {"drafted", s.drafted},
                              {"accepted", s.accepted}});
  }
  out["generated_tokens"] = generated;
  out["prompt_tokens_computed"] = r.prompt_tokens_computed;
  out["prompt_tokens_matched"] = r.prompt_tokens_matched;
  out["forward_passes"] = r.forward_passes;
  out["seconds"] = r.seconds;
  out["tokens_per_second"] = rate;
  out["stats"] = StatsJson(stats);
  absl::PrintF("%s\n", out.dump(2));
}

int Run(const Model& model, Flags& f) {
  absl::StatusOr<std::vector<int32_t>> prompt =
      ParsePrompt(f.prompt, model.shape().vocab_size);
  if (!prompt.ok()) return Usage(prompt.status());
  f.gen.prompt = *prompt;
  f.gen.summarize = f.json;
  const int64_t sequences = int64_t{f.gen.requests} * f.gen.samples;
  const int64_t longest =
      static_cast<int64_t>(prompt->size()) + f.gen.steps + f.gen.speculate;
  absl::StatusOr<CacheConfig> config =
      MakeCacheConfig(model.shape(), f.cache, sequences, longest);
  if (!config.ok()) return Usage(config.status());
  absl::StatusOr<std::unique_ptr<PagedStore>> store =
      PagedStore::Create(*config);
  if (!store.ok()) return Usage(store.status());
  Decoder decoder(
      model, **store,
      {.rope = f.rope == "visible-index" ? RopePositions::kVisibleIndex
                                         : RopePositions::kAbsolute});
  const bool progress = isatty(STDERR_FILENO) != 0;
  if (progress) {
    f.gen.progress = [](int64_t done, int64_t total) {
      absl::FPrintF(stderr, "\r\033[Kkvpage-generate: %d / %d tokens", done,
                    total);
    };
  }
  absl::StatusOr<GenerateResult> result = Generate(decoder, **store, f.gen);
  if (progress) absl::FPrintF(stderr, "\r\033[K");
  if (!result.ok()) {
    absl::FPrintF(stderr, "kvpage-generate: %s\n",
                  std::string(result.status().message()).c_str());
    return 1;
  }
  Print(f, *result, (*store)->cache().Stats());
  return 0;
}

int Main(int argc, char** argv) {
  CLI::App app{
      "Runs a llama2-family model (stories260K by default) with kvpage as its "
      "only key/value cache and prints the token ids it generates."};
  Flags f;
  app.add_option("--model", f.model, "llama2.c checkpoint")
      ->capture_default_str();
  DefineCacheFlags(app, f);
  DefineRunFlags(app, f);
  CLI::App* quality = app.add_subcommand(
      "quality",
      "teacher-forced quality of every dtype, compression and window setting "
      "against the f32 full-context run (docs/model.md)");
  DefineQualityFlags(*quality, f.quality);
  CLI::App* speed = app.add_subcommand(
      "speed", "tokens/s of generation on kvpage and on a contiguous cache");
  DefineSpeedFlags(*speed, f.speed);
  app.require_subcommand(0, 1);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    absl::FPrintF(stderr, "kvpage-generate: %s\n", e.what());
    return 2;
  }
  ResolveNames(f);
  absl::StatusOr<Model> model = LoadModel(f.model);
  if (!model.ok()) return Usage(model.status());
  if (quality->parsed()) return RunQuality(*model, f.quality);
  if (speed->parsed()) return RunSpeed(*model, f.speed);
  return Run(*model, f);
}

}  // namespace
}  // namespace kvpage::generate

int main(int argc, char** argv) { return kvpage::generate::Main(argc, argv); }
