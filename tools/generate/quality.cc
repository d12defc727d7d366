#include "tools/generate/quality.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/flag_ranges.h"
#include "tools/generate/generate.h"
#include "tools/generate/sampler.h"
#include "tools/generate/stores.h"

namespace kvpage::generate {
namespace {

// stories260K's trained context: positions predicted past it are reported
// apart.
constexpr int64_t kTrainedContext = 512;
// A reference top-1 that leads its runner-up by this much probability is
// "clear": rounding alone cannot swap them.
constexpr double kClearLead = 0.05;

// The log-probabilities of every next token the decoder on `setting` gives
// over `texts`, teacher-forced one position per step for all texts at once
// ([text][position][vocab]), and the bytes the cache held at the end.
struct Forced {
  std::vector<std::vector<float>> logprobs;
  double bytes_per_position = 0;
  double quant_error = 0;  // CacheStats::mean_quant_error
};

absl::StatusOr<Forced> TeacherForce(
    const Model& model, const std::vector<std::vector<int32_t>>& texts,
    const QualitySetting& setting) {
  const int64_t length = static_cast<int64_t>(texts[0].size());
  absl::StatusOr<CacheConfig> config = MakeCacheConfig(
      model.shape(), setting.cache, static_cast<int64_t>(texts.size()), length);
  if (!config.ok()) return config.status();
  absl::StatusOr<std::unique_ptr<PagedStore>> store =
      PagedStore::Create(*config);
  if (!store.ok()) return store.status();
  Decoder decoder(model, **store, {.rope = setting.rope});
  std::vector<SeqHandle> seqs;
  for (size_t i = 0; i < texts.size(); ++i) {
    absl::StatusOr<SeqHandle> s = (*store)->Add();
    if (!s.ok()) return s.status();
    seqs.push_back(*s);
  }
  Forced out;
  out.logprobs.resize(texts.size());
  std::vector<StepInput> batch(texts.size());
  std::vector<std::vector<float>> logits;
  std::vector<double> probs;
  for (int64_t p = 0; p + 1 < length; ++p) {
    for (size_t i = 0; i < texts.size(); ++i) {
      batch[i] = {.seq = seqs[i],
                  .tokens = absl::MakeConstSpan(texts[i]).subspan(p, 1),
                  .start = p};
    }
    if (absl::Status s = decoder.Forward(batch, logits); !s.ok()) return s;
    for (size_t i = 0; i < texts.size(); ++i) {
      Softmax(logits[i], 1.0, probs);
      for (double q : probs) {
        out.logprobs[i].push_back(static_cast<float>(std::log(q)));
      }
    }
    if (setting.compress_every > 0 && (p + 1) % setting.compress_every == 0) {
      for (SeqHandle s : seqs) {
        if (absl::Status st = (*store)->CompressCold(s); !st.ok()) return st;
      }
    }
  }
  const CacheStats stats = (*store)->cache().Stats();
  out.bytes_per_position =
      static_cast<double>(stats.memory_usage_bytes) /
      static_cast<double>(texts.size() * static_cast<size_t>(length));
  out.quant_error = stats.mean_quant_error;
  return out;
}

QualityRow Compare(const QualitySetting& setting, const Forced& ref,
                   const Forced& got,
                   const std::vector<std::vector<int32_t>>& texts, int vocab) {
  QualityRow row{.name = setting.name,
                 .bytes_per_position = got.bytes_per_position,
                 .quant_error = got.quant_error};
  double ref_nll = 0, agree = 0, ref_late = 0, late = 0, clear_agree = 0;
  int64_t late_positions = 0, clear = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const int64_t positions =
        static_cast<int64_t>(ref.logprobs[i].size()) / vocab;
    for (int64_t p = 0; p < positions; ++p) {
      const float* r = ref.logprobs[i].data() + p * vocab;
      const float* g = got.logprobs[i].data() + p * vocab;
      const int32_t next = texts[i][static_cast<size_t>(p + 1)];
      ref_nll -= r[next];
      row.nll -= g[next];
      if (p + 1 >= kTrainedContext) {
        ref_late -= r[next];
        late -= g[next];
        ++late_positions;
      }
      const int32_t top = ArgMax({r, static_cast<size_t>(vocab)});
      const bool same = top == ArgMax({g, static_cast<size_t>(vocab)});
      agree += same;
      float second = -std::numeric_limits<float>::infinity();
      for (int t = 0; t < vocab; ++t) {
        if (t != top) second = std::max(second, r[t]);
      }
      if (std::exp(double{r[top]}) - std::exp(double{second}) >= kClearLead) {
        ++clear;
        clear_agree += same;
      }
      double kl = 0;
      for (int t = 0; t < vocab; ++t) {
        kl += std::exp(double{r[t]}) * (double{r[t]} - double{g[t]});
      }
      row.kl += kl;
      ++row.tokens;
    }
  }
  const double n = static_cast<double>(row.tokens);
  row.nll /= n;
  row.delta_nll = row.nll - ref_nll / n;
  row.top1 = agree / n;
  row.top1_clear =
      clear_agree / static_cast<double>(std::max<int64_t>(clear, 1));
  row.clear_share = static_cast<double>(clear) / n;
  row.kl /= n;
  if (late_positions > 0) {
    row.delta_nll_late =
        (late - ref_late) / static_cast<double>(late_positions);
  }
  return row;
}

}  // namespace

namespace {

// One compression setting of the table.
struct Quant {
  Compression c;
  int group;
  int64_t hot;
  double max_rel_error = 0;  // kMixed
};

QualitySetting QuantRow(const Quant& q, const std::string& suffix) {
  const std::string bound =
      q.c == Compression::kMixed ? absl::StrFormat(" %g", q.max_rel_error) : "";
  return {
      .name = absl::StrFormat("%s%s, group %d, hot %d%s", CompressionName(q.c),
                              bound, q.group, q.hot, suffix),
      .cache = {.compression = q.c,
                .group_size = q.group,
                .hot_tokens = q.hot,
                .max_rel_error = q.max_rel_error}};
}

// int8, int4 and mixed at value groups head_dim / 1, 2, 4 and several hot
// token counts; then two knobs of the key scales: the block size, and keys
// stored before rotation.
void AddCompressionRows(int hd, std::vector<QualitySetting>& rows) {
  for (Compression c : {Compression::kInt8, Compression::kInt4}) {
    for (int g : {hd, hd / 2, hd / 4}) {
      if (g >= 1 && hd % g == 0) rows.push_back(QuantRow({c, g, 64}, ""));
    }
    rows.push_back(QuantRow({c, hd, 16}, ""));
    rows.push_back(QuantRow({c, hd, 256}, ""));
  }
  for (double bound : {0.01, 0.002}) {
    rows.push_back(QuantRow({Compression::kMixed, hd, 64, bound}, ""));
  }
  // A key's scales span its block's tokens: smaller blocks, finer scales.
  for (int tokens : {8, 4}) {
    for (const Quant& q : {Quant{Compression::kInt8, hd, 64},
                           Quant{Compression::kInt4, hd / 4, 64}}) {
      QualitySetting row =
          QuantRow(q, absl::StrFormat(", blocks of %d", tokens));
      row.cache.block_tokens = tokens;
      rows.push_back(row);
    }
  }
  // Keys stored before rotation (what kVisibleIndex stores; with nothing
  // evicted a visible index is the position): a channel keeps its scale
  // across a block's tokens instead of turning with the position.
  for (const Quant& q :
       {Quant{Compression::kInt8, hd, 64}, Quant{Compression::kInt4, hd, 64}}) {
    QualitySetting row = QuantRow(q, ", keys unrotated");
    row.rope = RopePositions::kVisibleIndex;
    rows.push_back(row);
  }
}

// Sliding windows and context shifts with 0 and 4 sinks, keys rotated by
// absolute position and by visible index.
void AddWindowRows(std::vector<QualitySetting>& rows) {
  for (RopePositions rope :
       {RopePositions::kAbsolute, RopePositions::kVisibleIndex}) {
    const char* how =
        rope == RopePositions::kAbsolute ? "absolute" : "visible-index";
    for (int64_t window : {64, 256, 512}) {
      for (int64_t sinks : {0, 4}) {
        rows.push_back(
            {.name = absl::StrFormat("window %d, %d sinks, %s positions",
                                     window, sinks, how),
             .cache = {.policy = OverflowPolicy::kSlidingWindow,
                       .window = window,
                       .sinks = sinks},
             .rope = rope});
      }
    }
    for (int64_t sinks : {0, 4}) {
      rows.push_back(
          {.name = absl::StrFormat("shift 256 to 128, %d sinks, %s positions",
                                   sinks, how),
           .cache = {.policy = OverflowPolicy::kTruncate,
                     .window = 256,
                     .sinks = sinks,
                     .truncate_to = 128},
           .rope = rope});
    }
  }
}

}  // namespace

std::vector<QualitySetting> QualitySettings(const ModelShape& shape) {
  std::vector<QualitySetting> rows;
  rows.push_back({.name = "f32, full context"});
  rows.push_back({.name = "f16", .cache = {.dtype = DType::kF16}});
  rows.push_back({.name = "bf16", .cache = {.dtype = DType::kBF16}});
  AddCompressionRows(shape.head_dim(), rows);
  AddWindowRows(rows);
  return rows;
}

absl::StatusOr<std::vector<QualityRow>> MeasureQuality(
    const Model& model, const QualityOptions& o,
    const std::vector<QualitySetting>& settings) {
  // The text: each sequence sampled from BOS at temperature 1 on the f32
  // full-context cache.
  std::vector<std::vector<int32_t>> texts;
  for (int i = 0; i < o.sequences; ++i) {
    absl::StatusOr<CacheConfig> config =
        MakeCacheConfig(model.shape(), {}, 1, o.length);
    if (!config.ok()) return config.status();
    absl::StatusOr<std::unique_ptr<PagedStore>> store =
        PagedStore::Create(*config);
    if (!store.ok()) return store.status();
    Decoder decoder(model, **store, {});
    absl::StatusOr<GenerateResult> r =
        Generate(decoder, **store,
                 {.prompt = {1},
                  .steps = o.length - 1,
                  .temperature = 1.0,
                  .seed = o.seed + static_cast<uint64_t>(i)});
    if (!r.ok()) return r.status();
    std::vector<int32_t> text = {1};
    text.insert(text.end(), r->samples[0].tokens.begin(),
                r->samples[0].tokens.end());
    texts.push_back(std::move(text));
  }
  absl::StatusOr<Forced> ref = TeacherForce(model, texts, settings[0]);
  if (!ref.ok()) return ref.status();
  std::vector<QualityRow> rows;
  for (const QualitySetting& s : settings) {
    absl::StatusOr<Forced> got = TeacherForce(model, texts, s);
    if (!got.ok()) {
      return absl::Status(got.status().code(),
                          absl::StrCat(s.name, ": ", got.status().message()));
    }
    rows.push_back(Compare(s, *ref, *got, texts, model.shape().vocab_size));
  }
  return rows;
}

void DefineQualityFlags(CLI::App& app, QualityOptions& o) {
  app.add_option("--sequences", o.sequences, "self-sampled sequences")
      ->transform(tools::IntRange(1, 64))
      ->capture_default_str();
  app.add_option("--length", o.length, "tokens per sequence, BOS included")
      ->transform(tools::IntRange(2, 1 << 16))
      ->capture_default_str();
  app.add_option("--seed", o.seed, "sampling seed")
      ->transform(tools::UintRange(0, UINT64_MAX))
      ->capture_default_str();
  app.add_option("--only", o.only,
                 "only the rows whose name contains this text (the f32 "
                 "reference is always measured)");
}

int RunQuality(const Model& model, const QualityOptions& o) {
  std::vector<QualitySetting> settings;
  for (const QualitySetting& s : QualitySettings(model.shape())) {
    if (settings.empty() || s.name.find(o.only) != std::string::npos) {
      settings.push_back(s);
    }
  }
  absl::StatusOr<std::vector<QualityRow>> rows =
      MeasureQuality(model, o, settings);
  if (!rows.ok()) {
    absl::FPrintF(stderr, "kvpage-generate: %s\n",
                  std::string(rows.status().message()).c_str());
    return 1;
  }
  absl::PrintF(
      "%d self-sampled sequences of %d tokens (seed %d, temperature 1), "
      "%d positions teacher-forced per setting; at %.1f %% of them the "
      "reference's top token leads the next by at least %g (\"clear\")\n\n",
      o.sequences, o.length, o.seed, (*rows)[0].tokens,
      100 * (*rows)[0].clear_share, kClearLead);
  absl::PrintF(
      "| setting | bytes/position | NLL | ΔNLL | ΔNLL past 512 | top-1 "
      "agreement | top-1, clear | KL | quantization error |\n"
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const QualityRow& r : *rows) {
    absl::PrintF(
        "| %s | %.0f | %.4f | %+.4f | %+.4f | %.2f %% | %.2f %% | %.5f | %s "
        "|\n",
        r.name, r.bytes_per_position, r.nll, r.delta_nll, r.delta_nll_late,
        100 * r.top1, 100 * r.top1_clear, r.kl,
        r.quant_error > 0 ? absl::StrFormat("%.2e", r.quant_error)
                          : std::string("-"));
  }
  return 0;
}

}  // namespace kvpage::generate
