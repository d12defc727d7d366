#include "tools/generate/speed.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_format.h"
#include "tools/flag_ranges.h"
#include "tools/generate/generate.h"
#include "tools/generate/settings.h"
#include "tools/generate/stores.h"

namespace kvpage::generate {
namespace {

// Generated tokens per second of one run, on a fresh store of `kind`.
absl::StatusOr<double> OneRun(const Model& model, bool paged, int batch,
                              const SpeedOptions& o) {
  const GenerateOptions gen{
      .prompt = std::vector<int32_t>(static_cast<size_t>(o.prompt), 1),
      .steps = o.steps,
      .requests = batch};
  std::unique_ptr<KvStore> store;
  if (paged) {
    absl::StatusOr<CacheConfig> config =
        MakeCacheConfig(model.shape(), {.block_tokens = o.block_tokens}, batch,
                        o.prompt + o.steps);
    if (!config.ok()) return config.status();
    absl::StatusOr<std::unique_ptr<PagedStore>> p = PagedStore::Create(*config);
    if (!p.ok()) return p.status();
    store = std::move(*p);
  } else {
    store = std::make_unique<ContiguousStore>(model.shape().n_layers,
                                              model.shape().kv_dim());
  }
  Decoder decoder(model, *store, {});
  absl::StatusOr<GenerateResult> r = Generate(decoder, *store, gen);
  if (!r.ok()) return r.status();
  return static_cast<double>(batch * o.steps) / r->seconds;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

void DefineSpeedFlags(CLI::App& app, SpeedOptions& o) {
  app.add_option("--batches", o.batches, "batch sizes (sequences in flight)")
      ->delimiter(',')
      ->transform(tools::IntRange(1, 4096))
      ->capture_default_str();
  app.add_option("--prompt", o.prompt, "prompt tokens (BOS repeated)")
      ->transform(tools::IntRange(1, 1 << 16))
      ->capture_default_str();
  app.add_option("--steps", o.steps, "tokens generated per sequence")
      ->transform(tools::IntRange(1, 1 << 16))
      ->capture_default_str();
  app.add_option("--block-tokens", o.block_tokens,
                 "kvpage's token slots per block")
      ->transform(tools::IntRange(1, 65535))
      ->capture_default_str();
  app.add_option("--reps", o.reps, "runs of each store, alternated")
      ->transform(tools::IntRange(1, 1000))
      ->capture_default_str();
}

int RunSpeed(const Model& model, const SpeedOptions& o) {
  absl::PrintF(
      "prompt %d tokens, %d generated per sequence, greedy, f32, blocks of %d "
      "tokens; median of %d alternated runs (min-max)\n\n",
      o.prompt, o.steps, o.block_tokens, o.reps);
  absl::PrintF(
      "| batch | kvpage tokens/s | contiguous tokens/s | kvpage / "
      "contiguous |\n| ---: | ---: | ---: | ---: |\n");
  for (int batch : o.batches) {
    std::vector<double> paged, plain, ratio;
    for (int rep = 0; rep < o.reps; ++rep) {
      absl::StatusOr<double> a = OneRun(model, true, batch, o);
      absl::StatusOr<double> b = OneRun(model, false, batch, o);
      if (!a.ok() || !b.ok()) {
        absl::FPrintF(
            stderr, "kvpage-generate: %s\n",
            std::string((a.ok() ? b.status() : a.status()).message()).c_str());
        return 1;
      }
      paged.push_back(*a);
      plain.push_back(*b);
      ratio.push_back(*a / *b);
    }
    absl::PrintF(
        "| %d | %.0f (%.0f-%.0f) | %.0f (%.0f-%.0f) | %.3f (%.3f-%.3f) |\n",
        batch, Median(paged), *std::min_element(paged.begin(), paged.end()),
        *std::max_element(paged.begin(), paged.end()), Median(plain),
        *std::min_element(plain.begin(), plain.end()),
        *std::max_element(plain.begin(), plain.end()), Median(ratio),
        *std::min_element(ratio.begin(), ratio.end()),
        *std::max_element(ratio.begin(), ratio.end()));
  }
  return 0;
}

}  // namespace kvpage::generate
