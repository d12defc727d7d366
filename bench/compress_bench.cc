// bench/compress_bench.cc — compression: repacking one hot block into int8 or
// int4 and dequantizing it, against a memcpy of the same hot block (the
// physical limit of moving it); and decode attention at 4k context over all
// hot blocks, half int8 and half int4, and over one contiguous buffer.
//
// Block shape: the model shape of bench_common.h (16 tokens x 8 kv-heads x
// head_dim 128, f16: 64 KiB a block), values grouped by 32. The block and its
// destination stay in L2, as a repack in a running cache reads a block it
// wrote recently. Throughput is bytes of the hot block per second for all
// three, so the ratios compare like with like. Targets: repack >= 0.5x and
// dequantize >= 1x the memcpy.
//
// Attention: kvpage::Attend (the reference decode attention of
// kvpage/attention.h) for one query token with 32 query heads over the 8
// kv-heads (grouped-query attention), on one layer holding 4096 tokens. "half
// int8/int4" repacks the oldest half. "contiguous" runs the same Attend over
// the view with its blocks pointed at one contiguous f16 buffer, 16 tokens
// after 16 tokens: the same kernel, the same steps, no paging. Target: paged
// hot within 1.15x of contiguous.

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "allocator/quantize.h"
#include "bench/bench_common.h"
#include "benchmark/benchmark.h"
#include "kvpage/kvpage.h"

namespace kvpage::bench {
namespace {

constexpr int kGroup = 32;
constexpr int kQueryHeads = 32;
constexpr int64_t kContext = 4096;

const internal::QuantShape kShape{.block_tokens = kBlockTokens,
                                  .num_kv_heads = kKvHeads,
                                  .head_dim = kHeadDim,
                                  .group_size = kGroup};

internal::QuantFormat FormatArg(const benchmark::State& state) {
  return state.range(0) == 8 ? internal::QuantFormat::kInt8
                             : internal::QuantFormat::kInt4;
}

// A hot block (K then V, f16) of Gaussian-like values.
std::vector<uint16_t> HotBlock() {
  return RandomF16(2 * kBlockTokens * kTokenElems, 11);
}

void BM_Compress_Memcpy(benchmark::State& state) {
  const std::vector<uint16_t> src = HotBlock();
  std::vector<uint16_t> dst(src.size());
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), kBlockBytes);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * kBlockBytes);
}

void BM_Compress_Repack(benchmark::State& state) {
  const internal::QuantFormat format = FormatArg(state);
  const std::vector<uint16_t> src = HotBlock();
  const internal::QuantLayout layout =
      internal::QuantLayout::For(format, kShape);
  std::vector<std::byte> dst(static_cast<size_t>(layout.block_bytes()));
  const uint16_t* k = src.data();
  const uint16_t* v = k + kBlockTokens * kTokenElems;
  for (auto _ : state) {
    internal::QuantError e = internal::QuantizeBlock(
        format, kShape, DType::kF16, k, v, 0, kBlockTokens, dst.data(),
        dst.data() + layout.k_part_bytes);
    benchmark::DoNotOptimize(e);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * kBlockBytes);
}

void BM_Compress_Dequantize(benchmark::State& state) {
  const internal::QuantFormat format = FormatArg(state);
  const std::vector<uint16_t> src = HotBlock();
  const internal::QuantLayout layout =
      internal::QuantLayout::For(format, kShape);
  std::vector<std::byte> packed(static_cast<size_t>(layout.block_bytes()));
  const uint16_t* k = src.data();
  const uint16_t* v = k + kBlockTokens * kTokenElems;
  (void)internal::QuantizeBlock(format, kShape, DType::kF16, k, v, 0,
                                kBlockTokens, packed.data(),
                                packed.data() + layout.k_part_bytes);
  std::vector<float> out(static_cast<size_t>(2 * kBlockTokens * kTokenElems));
  for (auto _ : state) {
    internal::DequantizeBlock(
        format, kShape, packed.data(), packed.data() + layout.k_part_bytes, 0,
        kBlockTokens, out.data(), out.data() + kBlockTokens * kTokenElems);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * kBlockBytes);
}

BENCHMARK(BM_Compress_Memcpy)->UseRealTime();
BENCHMARK(BM_Compress_Repack)->Arg(8)->Arg(4)->UseRealTime();
BENCHMARK(BM_Compress_Dequantize)->Arg(8)->Arg(4)->UseRealTime();

// One layer of 4096 tokens, possibly with its oldest half repacked.
struct AttentionFixture {
  std::unique_ptr<KVCache> cache;
  SeqId seq = 0;
  std::vector<uint16_t> contiguous_k, contiguous_v;
  std::vector<float> query;
};

enum AttentionCase : int { kAllHot, kHalfInt8, kHalfInt4, kContiguous };

absl::StatusOr<std::unique_ptr<AttentionFixture>> BuildAttention(int which) {
  auto f = std::make_unique<AttentionFixture>();
  CacheConfig c{.num_layers = 1,
                .num_kv_heads = kKvHeads,
                .head_dim = kHeadDim,
                .dtype = DType::kF16,
                .block_tokens = kBlockTokens,
                .num_blocks = kContext / kBlockTokens,
                .max_seq_len = kContext,
                .prefault = true};
  if (which == kHalfInt8 || which == kHalfInt4) {
    c.compression = {
        .enabled = true,
        .bits = which == kHalfInt8 ? QuantBits::kInt8 : QuantBits::kInt4,
        .group_size = kGroup,
        .hot_tokens = 0,
        .quant_blocks = kContext / kBlockTokens};
  }
  absl::StatusOr<std::unique_ptr<KVCache>> cache = KVCache::Create(c);
  if (!cache.ok()) return cache.status();
  f->cache = *std::move(cache);
  absl::StatusOr<SeqId> seq = f->cache->AddSequence();
  if (!seq.ok()) return seq.status();
  f->seq = *seq;
  f->contiguous_k = RandomF16(kContext * kTokenElems, 21);
  f->contiguous_v = RandomF16(kContext * kTokenElems, 22);
  if (absl::Status s = f->cache->Update(
          f->seq, 0, Span(f->contiguous_k.data(), DType::kF16, kContext),
          Span(f->contiguous_v.data(), DType::kF16, kContext), kContext);
      !s.ok()) {
    return s;
  }
  if (which == kHalfInt8 || which == kHalfInt4) {
    if (absl::Status s = f->cache->CompressOldEntries(f->seq, 0, 0.5);
        !s.ok()) {
      return s;
    }
  }
  f->query = RandomF32(kQueryHeads * kHeadDim, 23);
  return f;
}

void BM_Attend(benchmark::State& state) {
  const int which = static_cast<int>(state.range(0));
  absl::StatusOr<AttentionFixture*> f =
      Reuse<AttentionFixture>(absl::StrFormat("attend/%d", which),
                              [&] { return BuildAttention(which); });
  if (!f.ok()) {
    state.SkipWithError(f.status().ToString().c_str());
    return;
  }
  absl::StatusOr<LayerView> view = (*f)->cache->View((*f)->seq, 0);
  if (Failed(state, view.status())) return;
  if (which == kContiguous) {
    // The same tokens in one contiguous buffer, read in the same 16-token
    // steps as the paged view: what differs is only where the blocks are.
    for (int64_t b = 0; b < kContext / kBlockTokens; ++b) {
      const int64_t offset = b * kBlockTokens * kTokenElems;
      BlockView& block = view->blocks[static_cast<size_t>(b)];
      block.k = (*f)->contiguous_k.data() + offset;
      block.v = (*f)->contiguous_v.data() + offset;
      block.format = BlockFormat::kHot;
      block.begin_slot = 0;
    }
  }
  std::vector<float> out((*f)->query.size());
  for (auto _ : state) {
    if (Failed(state, Attend(*view, (*f)->query, absl::MakeSpan(out)))) return;
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["repacked_blocks"] =
      static_cast<double>((*f)->cache->Stats().compressions_applied);
}

BENCHMARK(BM_Attend)
    ->Arg(kAllHot)
    ->Arg(kHalfInt8)
    ->Arg(kHalfInt4)
    ->Arg(kContiguous)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace

void PrintCompressionTables(const CapturingReporter& r, std::FILE* out,
                            std::vector<TargetLine>& targets) {
  const Figure memcpy_ns = r.Ns("BM_Compress_Memcpy");
  auto gbps = [&](Figure ns) {
    return Div(Figure(static_cast<double>(kBlockBytes)), ns);
  };
  absl::FPrintF(out,
                "\nCompression of one hot block (16 tokens x 8 kv-heads x 128, "
                "f16, 64 KiB; values in groups of %d; GB/s of the hot block)\n",
                kGroup);
  absl::FPrintF(out, "%-24s %10s %12s\n", "", "GB/s", "vs memcpy");
  absl::FPrintF(out, "%-24s %10s %12s\n", "memcpy", FormatGbps(gbps(memcpy_ns)),
                "1.00x");
  Figure worst_repack, worst_dequant;
  for (int bits : {8, 4}) {
    for (const char* what : {"Repack", "Dequantize"}) {
      const Figure ns = r.Ns(absl::StrFormat("BM_Compress_%s/%d", what, bits));
      const Figure ratio = Div(memcpy_ns, ns);
      absl::FPrintF(
          out, "%-24s %10s %12s\n",
          absl::StrFormat(
              "%s int%d",
              std::string(what) == "Repack" ? "repack" : "dequantize", bits),
          FormatGbps(gbps(ns)), FormatRatio(ratio));
      Figure& worst =
          std::string(what) == "Repack" ? worst_repack : worst_dequant;
      if (ratio && (!worst || *ratio < *worst)) worst = ratio;
    }
  }
  targets.push_back(
      {"repack a block >= 0.5x memcpy (slower format)",
       FormatRatio(worst_repack),
       Verdict(worst_repack, worst_repack && *worst_repack >= 0.5)});
  targets.push_back(
      {"dequantize a block >= 1x memcpy (slower format)",
       FormatRatio(worst_dequant),
       Verdict(worst_dequant, worst_dequant && *worst_dequant >= 1.0)});

  absl::FPrintF(out,
                "\nDecode attention at 4k context (kvpage::Attend, one query "
                "token, 32 query heads over 8 kv-heads; us per call)\n");
  const Figure hot = r.Ns("BM_Attend/0");
  const Figure contiguous = r.Ns("BM_Attend/3");
  const char* names[] = {"paged, all hot", "paged, oldest half int8",
                         "paged, oldest half int4", "one contiguous buffer"};
  absl::FPrintF(out, "%-26s %10s %14s\n", "", "us", "vs all hot");
  for (int i = 0; i < 4; ++i) {
    const Figure ns = r.Ns(absl::StrFormat("BM_Attend/%d", i));
    absl::FPrintF(out, "%-26s %10s %14s\n", names[i],
                  ns ? absl::StrFormat("%.1f", *ns / 1000) : "n/a",
                  FormatRatio(Div(ns, hot)));
  }
  const Figure paged_vs_contiguous = Div(hot, contiguous);
  targets.push_back(
      {"paged attention <= 1.15x contiguous (4k, hot)",
       FormatRatio(paged_vs_contiguous),
       Verdict(paged_vs_contiguous,
               paged_vs_contiguous && *paged_vs_contiguous <= 1.15)});
}

}  // namespace kvpage::bench
