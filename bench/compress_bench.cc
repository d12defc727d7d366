// bench/compress_bench.cc — compression: one hot block into int8 or
// int4 and dequantizing it, against a memcpy of the same hot block (the
// physical limit of moving it); and decode attention at 4k context over all
// hot blocks, half int8 and half int4, and over one contiguous buffer.
//
// Block shape: the model shape of bench_common.h (16 tokens x 8 kv-heads x
// head_dim 128, f16: 64 KiB a block), values grouped by 32. Each kernel is
// measured on one block that stays in L2 (against memcpy L2 -> L2), and
// cycling through 2048 blocks (128 MiB, more than the last-level cache) so
// that each comes from DRAM, as a block does when it turns cold in a running
// cache. From DRAM, what the kernel writes decides the baseline: the
// compression writes a stream of compressed blocks, against memcpy DRAM -> DRAM
// of the hot block; the dequantization writes one scratch block that stays in
// L2 (a kernel consumes it at once), against memcpy DRAM -> one L2 scratch
// block. Throughput is bytes of the f16 hot block per second for all, so the
// ratios compare like with like. The compression is measured as the cache runs
// it by default (the range check that keeps blocks with NaN, infinities or |x|
// > 65504 hot, then the kernel without error sums), with the error sums (mixed
// int4/int8 mode, or CompressionConfig::measure_error), and as the kernel
// alone; the dequantization into f16 (the hot block's dtype and size: what the
// memcpy moves) and into f32 (twice the bytes). From DRAM, the dequantization
// is measured as Attend and Gather run it, each call naming the next block
// (internal::NextBlock) so that its lines stream in under this block's
// decoding, and each block alone. The same hint given to memcpy (a 32nd of the
// next block prefetched after each 32nd copied) is measured too: it makes
// memcpy slower, so the plain memcpy stays the baseline. Targets (issue #4):
// compress >= 0.5x and dequantize >= 1x the memcpy, judged from DRAM.
//
// Attention: kvpage::Attend (the reference decode attention of
// kvpage/attention.h) for one query token with 32 query heads over the 8
// kv-heads (grouped-query attention), on one layer holding 4096 tokens. "half
// int8/int4" compresses the oldest half. "contiguous" runs the same Attend over
// the view with its blocks pointed at one contiguous f16 buffer, 16 tokens
// after 16 tokens: the same kernel, the same steps, no paging. Target: paged
// hot within 1.15x of contiguous.

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "allocator/convert.h"
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

// Where the benchmarks' blocks live: kL2 cycles through 1 block (it stays
// in L2); kDram through 2048 (128 MiB, more than the last-level cache: each
// block comes from DRAM, as a block does when it turns cold in a running
// cache, or when attention reads a block compressed long ago).
enum Where : int { kL2 = 0, kDram = 1 };
int64_t Blocks(const benchmark::State& state, int arg) {
  return state.range(arg) == kDram ? 2048 : 1;
}

// `blocks` hot blocks (K then V, f16) of deterministic values.
std::vector<uint16_t> HotBlocks(int64_t blocks) {
  return RandomF16(blocks * 2 * kBlockTokens * kTokenElems, 11);
}
constexpr int64_t kBlockElems = 2 * kBlockTokens * kTokenElems;

// Memcpy of one f16 hot block (64 KiB), the baselines:
//   0  L2 -> L2                         (for everything in L2)
//   1  DRAM -> DRAM, both streamed      (for the compression from DRAM: it also
//                                        writes a stream of compressed blocks)
//   2  DRAM -> one destination in L2    (for the dequantization from DRAM:
//                                        it also writes one L2 scratch)
//   3  as 2, in 32 pieces, each followed by a 32nd of the next block
//      prefetched: the hint the dequantization gets, given to memcpy
void BM_Compress_Memcpy(benchmark::State& state) {
  const int which = static_cast<int>(state.range(0));
  const int64_t blocks = which == 0 ? 1 : 2048;
  const std::vector<uint16_t> src = HotBlocks(blocks);
  std::vector<uint16_t> dst(which == 1 ? src.size() : kBlockElems);
  constexpr int64_t kPieces = 32, kPiece = kBlockBytes / kPieces;
  int64_t b = 0;
  for (auto _ : state) {
    if (which == 3) {
      const auto* from =
          reinterpret_cast<const std::byte*>(src.data() + b * kBlockElems);
      const auto* next = reinterpret_cast<const std::byte*>(
          src.data() + (b + 1 == blocks ? 0 : b + 1) * kBlockElems);
      auto* to = reinterpret_cast<std::byte*>(dst.data());
      for (int64_t p = 0; p < kPieces; ++p) {
        std::memcpy(to + p * kPiece, from + p * kPiece, kPiece);
        for (int64_t i = 0; i < kPiece; i += 64) {
          __builtin_prefetch(next + p * kPiece + i, 0, 3);
        }
      }
    } else {
      std::memcpy(dst.data() + (which == 1 ? b * kBlockElems : 0),
                  src.data() + b * kBlockElems, kBlockBytes);
    }
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
    if (++b == blocks) b = 0;
  }
  state.SetBytesProcessed(state.iterations() * kBlockBytes);
}

// Compresses f16 hot blocks into a stream of quantized blocks. Arguments:
// bits (8, 4), where (kL2, kDram), what (0: what a cache compresses by default,
// the range check that keeps NaN, infinities and |x| > 65504 hot and then
// the kernel; 1: also the squared-error sums, as mixed int4/int8 and
// CompressionConfig::measure_error need; 2: the kernel alone).
void BM_Compress_Block(benchmark::State& state) {
  const internal::QuantFormat format = FormatArg(state);
  const int64_t blocks = Blocks(state, 1);
  const bool range_check = state.range(2) != 2;
  const internal::QuantizeOptions options{.measure_error = state.range(2) == 1};
  const std::vector<uint16_t> src = HotBlocks(blocks);
  const internal::QuantLayout layout =
      internal::QuantLayout::For(format, kShape);
  std::vector<std::byte> dst(
      static_cast<size_t>(blocks * layout.block_bytes()));
  int64_t b = 0;
  for (auto _ : state) {
    const uint16_t* k = src.data() + b * kBlockElems;
    const uint16_t* v = k + kBlockTokens * kTokenElems;
    std::byte* out = dst.data() + b * layout.block_bytes();
    internal::QuantError e = internal::QuantizeBlock(
        format, kShape, DType::kF16, k, v, 0, kBlockTokens, out,
        out + layout.k_part_bytes, options);
    if (range_check) {  // after the kernel, as the cache runs it
      const bool representable =
          internal::AllWithinQuantRange(k, DType::kF16,
                                        kBlockTokens * kTokenElems) &&
          internal::AllWithinQuantRange(v, DType::kF16,
                                        kBlockTokens * kTokenElems);
      benchmark::DoNotOptimize(representable);
    }
    benchmark::DoNotOptimize(e);
    benchmark::ClobberMemory();
    if (++b == blocks) b = 0;
  }
  state.SetBytesProcessed(state.iterations() * kBlockBytes);
}

// Dequantizes quantized blocks into one scratch block that stays in L2 (what
// a kernel consumes at once). Arguments: bits (8, 4), where the quantized
// blocks are (kL2, kDram), output dtype (16: f16, the size of the hot block;
// 32: f32, twice its size), hint (1: each call names the next block, as
// Attend and Gather do when they walk a table: internal::NextBlock; 0: each
// block alone).
void BM_Compress_Dequantize(benchmark::State& state) {
  const internal::QuantFormat format = FormatArg(state);
  const int64_t blocks = Blocks(state, 1);
  const DType out_dtype = state.range(2) == 16 ? DType::kF16 : DType::kF32;
  const std::vector<uint16_t> src = HotBlocks(blocks);
  const internal::QuantLayout layout =
      internal::QuantLayout::For(format, kShape);
  std::vector<std::byte> packed(
      static_cast<size_t>(blocks * layout.block_bytes()));
  for (int64_t b = 0; b < blocks; ++b) {
    const uint16_t* k = src.data() + b * kBlockElems;
    std::byte* out = packed.data() + b * layout.block_bytes();
    (void)internal::QuantizeBlock(format, kShape, DType::kF16, k,
                                  k + kBlockTokens * kTokenElems, 0,
                                  kBlockTokens, out, out + layout.k_part_bytes);
  }
  std::vector<std::byte> out(
      static_cast<size_t>(kBlockElems * DTypeSize(out_dtype)));
  const int64_t v_offset = kBlockTokens * kTokenElems * DTypeSize(out_dtype);
  const bool hint = state.range(3) != 0;
  int64_t b = 0;
  for (auto _ : state) {
    const std::byte* in = packed.data() + b * layout.block_bytes();
    internal::NextBlock next;
    if (hint) {
      const std::byte* n =
          packed.data() + (b + 1 == blocks ? 0 : b + 1) * layout.block_bytes();
      next = {format, n, n + layout.k_part_bytes,
              /*this_block_requested=*/true};
    }
    internal::DequantizeBlock(format, kShape, in, in + layout.k_part_bytes, 0,
                              kBlockTokens, out_dtype, out.data(),
                              out.data() + v_offset, next);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    if (++b == blocks) b = 0;
  }
  state.SetBytesProcessed(state.iterations() * kBlockBytes);
}

BENCHMARK(BM_Compress_Memcpy)->DenseRange(0, 3)->UseRealTime();
BENCHMARK(BM_Compress_Block)
    ->ArgsProduct({{8, 4}, {kL2, kDram}, {0, 1, 2}})
    ->UseRealTime();
BENCHMARK(BM_Compress_Dequantize)
    ->ArgsProduct({{8, 4}, {kL2, kDram}, {16, 32}, {0, 1}})
    ->UseRealTime();

// One layer of 4096 tokens, possibly with its oldest half compressed.
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
        .quant_cells = kContext / kBlockTokens};
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
  state.counters["compressed_blocks"] =
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
  auto gbps = [&](Figure ns) {
    return Div(Figure(static_cast<double>(kBlockBytes)), ns);
  };
  absl::FPrintF(
      out,
      "\nCompression of one hot block (16 tokens x 8 kv-heads x 128, f16, 64 "
      "KiB; values in groups of %d). GB/s of the f16 hot block's bytes, and "
      "the ratio to a memcpy of that block in the same run: in L2, memcpy "
      "L2 -> L2; from DRAM, the compression against memcpy DRAM -> DRAM (both "
      "write a stream of blocks), the dequantization against memcpy DRAM -> "
      "an L2 scratch (both write one scratch block in L2); the "
      "dequantization rows name the next block, as Attend and Gather do "
      "(\"each block alone\": no hint)\n",
      kGroup);
  absl::FPrintF(out, "%-30s %10s %10s   %10s %10s\n", "", "in L2", "vs memcpy",
                "from DRAM", "vs memcpy");
  // [compress/dequantize][L2/DRAM]: the worse format's ratio, for the default
  // compress (no error sums) and the dequantization into f16.
  Figure worst[2][2];
  const Figure memcpy_l2 = r.Ns("BM_Compress_Memcpy/0");
  const Figure memcpy_dram[2] = {r.Ns("BM_Compress_Memcpy/1"),
                                 r.Ns("BM_Compress_Memcpy/2")};
  absl::FPrintF(out, "%-30s %10s %10s   %10s %10s\n",
                "memcpy (L2->L2 | DRAM->DRAM)", FormatGbps(gbps(memcpy_l2)),
                "1.00x", FormatGbps(gbps(memcpy_dram[0])), "1.00x");
  absl::FPrintF(out, "%-30s %10s %10s   %10s %10s\n",
                "memcpy (DRAM -> L2 scratch)", "", "",
                FormatGbps(gbps(memcpy_dram[1])), "1.00x");
  const Figure memcpy_hinted = r.Ns("BM_Compress_Memcpy/3");
  absl::FPrintF(out, "%-30s %10s %10s   %10s %10s\n",
                "  same, next block prefetched", "", "",
                FormatGbps(gbps(memcpy_hinted)),
                FormatRatio(Div(memcpy_dram[1], memcpy_hinted)));
  // The benchmark `prefix`/<where>/`suffix`.
  auto row = [&](const std::string& label, const std::string& prefix,
                 const std::string& suffix, int op, bool judged) {
    Figure ns[2], ratio[2];
    for (int cold = 0; cold < 2; ++cold) {
      ns[cold] = r.Ns(absl::StrCat(prefix, "/", cold, "/", suffix));
      ratio[cold] = Div(cold ? memcpy_dram[op] : memcpy_l2, ns[cold]);
      if (judged && ratio[cold] &&
          (!worst[op][cold] || *ratio[cold] < *worst[op][cold])) {
        worst[op][cold] = ratio[cold];
      }
    }
    absl::FPrintF(out, "%-30s %10s %10s   %10s %10s\n", label,
                  FormatGbps(gbps(ns[0])), FormatRatio(ratio[0]),
                  FormatGbps(gbps(ns[1])), FormatRatio(ratio[1]));
  };
  for (int bits : {8, 4}) {
    const std::string compress = absl::StrCat("BM_Compress_Block/", bits);
    const std::string dequant = absl::StrCat("BM_Compress_Dequantize/", bits);
    row(absl::StrFormat("compress int%d", bits), compress, "0", 0, true);
    row(absl::StrFormat("compress int%d + error sums", bits), compress, "1", 0,
        false);
    row("  kernel alone, no range check", compress, "2", 0, false);
    row(absl::StrFormat("dequantize int%d -> f16", bits), dequant, "16/1", 1,
        true);
    row(absl::StrFormat("dequantize int%d -> f32", bits), dequant, "32/1", 1,
        false);
    row("  -> f16, each block alone", dequant, "16/0", 1, false);
  }
  // The targets are judged from DRAM: the block a compression reads has just
  // turned cold (written long ago, evicted from the caches), and attention
  // reads a compressed block once per decode step, long after the last read.
  absl::FPrintF(
      out,
      "Targets judged from DRAM (a block turning cold was written "
      "long ago; attention reads a compressed block once per step): "
      "the default compression (no error sums) and the dequantization "
      "into f16, worse format; the L2 ratios are shown for the "
      "kernels' own cost.\n");
  // The dequantization from DRAM cannot run faster than it does in L2 (the
  // next-block hint at best hides the whole fetch), so how far its in-L2
  // time is below memcpy DRAM -> L2 is the room the DRAM ratio has. Another
  // tenant on the same physical core slowed the decoding 1.4-1.7x and memcpy
  // far less (README): the DRAM ratio survives such a tenant only with that
  // much headroom.
  absl::FPrintF(out,
                "Compute headroom of the dequantization into f16 "
                "(memcpy DRAM -> L2 scratch / the decoding in L2):");
  for (int bits : {8, 4}) {
    absl::FPrintF(
        out, " int%d %s", bits,
        FormatRatio(Div(
            memcpy_dram[1],
            r.Ns(absl::StrFormat("BM_Compress_Dequantize/%d/0/16/1", bits)))));
  }
  absl::FPrintF(out, "\n");
  const char* where[2] = {"in L2, not judged", "from DRAM"};
  for (int cold : {1, 0}) {
    targets.push_back(
        {absl::StrFormat("compress >= 0.5x memcpy, %s (worse format)",
                         where[cold]),
         FormatRatio(worst[0][cold]),
         Verdict(worst[0][cold], worst[0][cold] && *worst[0][cold] >= 0.5)});
    targets.push_back(
        {absl::StrFormat("dequantize -> f16 >= 1x memcpy, %s (worse format)",
                         where[cold]),
         FormatRatio(worst[1][cold]),
         Verdict(worst[1][cold], worst[1][cold] && *worst[1][cold] >= 1.0)});
  }

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
