// bench/append_bench.cc — what an append costs in kvpage, next to the naive
// cache of the original bug report and to memcpy of the same bytes (the
// physical limit), plus the block pool's allocate+release pair, and the
// comparison tables and foundation targets that go with them (reported, not
// asserted; bench_main.cc prints them).
//
// The model shape is the one of bench_common.h. Four layers keep the naive
// baseline at 16k context within memory (256 MiB of history, twice that with
// its spare buffers) and time.
// Inputs are f16, the cache's dtype, so paged and memcpy move the same bytes
// (one variant feeds f32 to show the conversion cost).

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "allocator/block_pool.h"
#include "allocator/host_arena.h"
#include "baselines/naive_cache.h"
#include "bench/bench_common.h"
#include "benchmark/benchmark.h"
#include "kvpage/config.h"
#include "kvpage/kv_cache.h"

namespace kvpage::bench {
namespace {

using baselines::NaiveCache;
using internal::BlockId;
using internal::BlockPool;
using internal::HostArena;
using internal::kNoBlock;

// Decode: steps taken past the nominal context before resetting to it.
constexpr int64_t kDecodeRun = 64;
// Prefill: tokens per chunk, and the length at which the sequence restarts.
constexpr int64_t kChunkTokens = 512;
constexpr int64_t kPrefillTokens = 8192;
constexpr int64_t kChunkBytes = kChunkTokens * kStepBytes;

// Block pairs: a pool big enough never to run dry.
constexpr int64_t kPairPoolBlocks = 1024;

// A cache of the model shape holding up to `max_tokens` per layer, its arena
// pre-faulted so that no page fault is timed.
absl::StatusOr<std::unique_ptr<KVCache>> MakeCache(int64_t max_tokens) {
  return KVCache::Create(
      {.num_layers = kLayers,
       .num_kv_heads = kKvHeads,
       .head_dim = kHeadDim,
       .dtype = DType::kF16,
       .block_tokens = kBlockTokens,
       .num_blocks = kLayers * CeilDiv(max_tokens, kBlockTokens),
       .max_seq_len = max_tokens,
       .prefault = true});
}

struct PagedSequence {
  std::unique_ptr<KVCache> cache;
  SeqId seq = 0;
};

// A paged cache for `max_tokens` with one sequence holding `history` tokens
// on every layer (one Update of `history` tokens per layer; keys and values
// share the data, only the bytes matter).
absl::StatusOr<std::unique_ptr<PagedSequence>> MakePagedSequence(
    int64_t max_tokens, int64_t history) {
  auto out = std::make_unique<PagedSequence>();
  absl::StatusOr<std::unique_ptr<KVCache>> cache = MakeCache(max_tokens);
  if (!cache.ok()) return cache.status();
  out->cache = *std::move(cache);
  absl::StatusOr<SeqId> seq = out->cache->AddSequence();
  if (!seq.ok()) return seq.status();
  out->seq = *seq;
  if (history > 0) {
    const std::vector<uint16_t> data = RandomF16(history * kTokenElems, 1);
    const TokenSpan span = Span(data.data(), DType::kF16, history);
    for (int layer = 0; layer < kLayers; ++layer) {
      absl::Status s = out->cache->Update(out->seq, layer, span, span, history);
      if (!s.ok()) return s;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Decode: one iteration is one decode step, an Update of 1 token on every
// layer at the current context. The context starts at the nominal value
// ctx; after kDecodeRun steps it is rolled back to ctx (Truncate for paged,
// NaiveCache::Truncate for naive, the write offset for memcpy) inside
// PauseTiming/ResumeTiming, so every timed step runs within
// [ctx, ctx + 64) and the timer's own pause costs spread over 64 steps.

void SetDecodeCounters(benchmark::State& state) {
  state.SetBytesProcessed(state.iterations() * kStepBytes);
  state.SetItemsProcessed(state.iterations());  // tokens
}

void BM_Decode_Paged(benchmark::State& state) {
  const int64_t ctx = state.range(0);
  absl::StatusOr<PagedSequence*> fixture = Reuse<PagedSequence>(
      absl::StrFormat("decode_paged/%d", ctx),
      [&] { return MakePagedSequence(ctx + kDecodeRun, ctx); });
  if (Failed(state, fixture.status())) return;
  KVCache& cache = *(*fixture)->cache;
  const SeqId seq = (*fixture)->seq;
  if (Failed(state, cache.Truncate(seq, ctx))) return;
  const std::vector<uint16_t> input = DecodeStepInput();
  auto step = [&](int64_t seq_len) -> absl::Status {
    for (int layer = 0; layer < kLayers; ++layer) {
      const uint16_t* k = input.data() + 2 * layer * kTokenElems;
      absl::Status s =
          cache.Update(seq, layer, Span(k, DType::kF16, 1),
                       Span(k + kTokenElems, DType::kF16, 1), seq_len);
      if (ABSL_PREDICT_FALSE(!s.ok())) return s;
    }
    return absl::OkStatus();
  };
  int64_t len = ctx;
  for (auto _ : state) {
    if (len == ctx + kDecodeRun) {
      state.PauseTiming();
      const absl::Status s = cache.Truncate(seq, ctx);
      state.ResumeTiming();
      if (Failed(state, s)) break;
      len = ctx;
    }
    if (Failed(state, step(++len))) break;
  }
  SetDecodeCounters(state);
}

// One decode step of the naive cache: 1 token on every layer.
absl::Status NaiveStep(NaiveCache& cache, const std::vector<uint16_t>& input,
                       int64_t seq_len) {
  for (int layer = 0; layer < kLayers; ++layer) {
    const uint16_t* k = input.data() + 2 * layer * kTokenElems;
    absl::Status s = cache.Update(
        layer, absl::MakeConstSpan(k, kTokenElems),
        absl::MakeConstSpan(k + kTokenElems, kTokenElems), seq_len);
    if (ABSL_PREDICT_FALSE(!s.ok())) return s;
  }
  return absl::OkStatus();
}

// A naive cache holding `ctx` tokens on every layer, warmed up: three steps
// grow both buffers of each tensor (see NaiveCache::Replace) past
// ctx + kDecodeRun, so that no timed step allocates.
absl::StatusOr<std::unique_ptr<NaiveCache>> MakeNaive(int64_t ctx) {
  auto cache = std::make_unique<NaiveCache>(kLayers, kTokenElems);
  {
    const std::vector<uint16_t> history = RandomF16(ctx * kTokenElems, 1);
    for (int layer = 0; layer < kLayers; ++layer) {
      absl::Status s = cache->Update(layer, history, history, ctx);
      if (!s.ok()) return s;
    }
  }
  const std::vector<uint16_t> input = DecodeStepInput();
  for (int64_t len = ctx + 1; len <= ctx + 3; ++len) {
    absl::Status s = NaiveStep(*cache, input, len);
    if (!s.ok()) return s;
  }
  return cache;
}

void BM_Decode_Naive(benchmark::State& state) {
  const int64_t ctx = state.range(0);
  absl::StatusOr<NaiveCache*> fixture = Reuse<NaiveCache>(
      absl::StrFormat("decode_naive/%d", ctx), [&] { return MakeNaive(ctx); });
  if (Failed(state, fixture.status())) return;
  NaiveCache& cache = **fixture;
  cache.Truncate(ctx);
  const std::vector<uint16_t> input = DecodeStepInput();
  int64_t len = ctx;
  int64_t tokens_moved = 0;  // history copied plus new tokens, all layers
  for (auto _ : state) {
    if (len == ctx + kDecodeRun) {
      state.PauseTiming();
      cache.Truncate(ctx);
      state.ResumeTiming();
      len = ctx;
    }
    if (Failed(state, NaiveStep(cache, input, ++len))) break;
    tokens_moved += len;
  }
  // Bytes are what the naive cache really moves (its whole history per
  // step), so its bytes/s is a bandwidth; items/s compares with the others.
  state.SetBytesProcessed(tokens_moved * kStepBytes);
  state.SetItemsProcessed(state.iterations());
  state.SetLabel("bytes = history copied per step");
}

void BM_Decode_Memcpy(benchmark::State& state) {
  // The same bytes the paged cache writes per step (K and V of one token on
  // every layer), with the same rollback every 64 steps, into a preallocated
  // destination laid out like the 64 steps' worth of blocks: per layer the
  // keys of 64 tokens, then their values. Zero-filled, so faulted in. The
  // context does not change what memcpy does; it is an argument only to
  // sit beside the other two in the output.
  std::vector<uint16_t> dst(
      static_cast<size_t>(kLayers * 2 * kDecodeRun * kTokenElems));
  benchmark::DoNotOptimize(dst.data());
  const std::vector<uint16_t> input = DecodeStepInput();
  int64_t slot = 0;
  for (auto _ : state) {
    if (slot == kDecodeRun) {
      state.PauseTiming();
      slot = 0;
      state.ResumeTiming();
    }
    for (int layer = 0; layer < kLayers; ++layer) {
      const uint16_t* k = input.data() + 2 * layer * kTokenElems;
      uint16_t* layer_dst = dst.data() + layer * 2 * kDecodeRun * kTokenElems;
      std::memcpy(layer_dst + slot * kTokenElems, k, kTokenBytes);
      std::memcpy(layer_dst + (kDecodeRun + slot) * kTokenElems,
                  k + kTokenElems, kTokenBytes);
    }
    ++slot;
    benchmark::ClobberMemory();
  }
  SetDecodeCounters(state);
}

// ---------------------------------------------------------------------------
// Prefill: one iteration appends a chunk of 512 tokens on every layer (8 MiB
// stored). The sequence restarts (Truncate to 0, outside timing) when it
// reaches 8192 tokens, which fills the whole arena: each chunk lands in
// memory last written 120 MiB earlier, so both paged and memcpy write cold,
// faulted-in memory rather than cache-hot lines. (One exception on the paged
// side: the pool reuses the most recently freed blocks first, so the first
// chunk after a restart goes to the blocks of the last one, as it would in
// serving.)

void SetPrefillCounters(benchmark::State& state) {
  // Bytes stored (f16), whatever the input dtype.
  state.SetBytesProcessed(state.iterations() * kChunkBytes);
  state.SetItemsProcessed(state.iterations() * kChunkTokens);
}

// Chunk input of every layer in `dtype`: layer l's keys at 2l, values at
// 2l + 1, each kChunkTokens tokens.
std::vector<std::byte> PrefillInput(DType dtype) {
  const int64_t elems = 2 * kLayers * kChunkTokens * kTokenElems;
  std::vector<std::byte> out(static_cast<size_t>(elems * DTypeSize(dtype)));
  if (dtype == DType::kF32) {
    const std::vector<float> values = RandomF32(elems, 3);
    std::memcpy(out.data(), values.data(), out.size());
  } else {
    const std::vector<uint16_t> values = RandomF16(elems, 3);
    std::memcpy(out.data(), values.data(), out.size());
  }
  return out;
}

void BM_Prefill_Paged(benchmark::State& state, DType input_dtype) {
  // Both input dtypes share one fixture (they run one after the other).
  absl::StatusOr<PagedSequence*> fixture = Reuse<PagedSequence>(
      "prefill_paged", [] { return MakePagedSequence(kPrefillTokens, 0); });
  if (Failed(state, fixture.status())) return;
  KVCache& cache = *(*fixture)->cache;
  const SeqId seq = (*fixture)->seq;
  if (Failed(state, cache.Truncate(seq, 0))) return;
  const std::vector<std::byte> input = PrefillInput(input_dtype);
  const int64_t half_bytes =
      kChunkTokens * kTokenElems * DTypeSize(input_dtype);
  auto chunk = [&](int64_t seq_len) -> absl::Status {
    for (int layer = 0; layer < kLayers; ++layer) {
      const std::byte* k = input.data() + 2 * layer * half_bytes;
      absl::Status s = cache.Update(
          seq, layer, Span(k, input_dtype, kChunkTokens),
          Span(k + half_bytes, input_dtype, kChunkTokens), seq_len);
      if (ABSL_PREDICT_FALSE(!s.ok())) return s;
    }
    return absl::OkStatus();
  };
  int64_t len = 0;
  for (auto _ : state) {
    if (len == kPrefillTokens) {
      state.PauseTiming();
      const absl::Status s = cache.Truncate(seq, 0);
      state.ResumeTiming();
      if (Failed(state, s)) break;
      len = 0;
    }
    len += kChunkTokens;
    if (Failed(state, chunk(len))) break;
  }
  SetPrefillCounters(state);
  if (input_dtype == DType::kF32) state.SetLabel("f32 in, f16 stored");
}

// As big as the paged cache's arena (8192 tokens x 4 layers), zero-filled so
// faulted in.
absl::StatusOr<std::unique_ptr<std::vector<std::byte>>> MakePrefillDst() {
  return std::make_unique<std::vector<std::byte>>(
      static_cast<size_t>(kPrefillTokens * kStepBytes));
}

void BM_Prefill_Memcpy(benchmark::State& state) {
  // The destination is written at advancing offsets and wrapped where the
  // paged sequence restarts.
  absl::StatusOr<std::vector<std::byte>*> fixture =
      Reuse<std::vector<std::byte>>("prefill_memcpy", MakePrefillDst);
  if (Failed(state, fixture.status())) return;
  std::vector<std::byte>& dst = **fixture;
  benchmark::DoNotOptimize(dst.data());
  const std::vector<std::byte> input = PrefillInput(DType::kF16);
  const int64_t half_bytes = kChunkTokens * kTokenBytes;
  int64_t offset = 0;
  for (auto _ : state) {
    if (offset == static_cast<int64_t>(dst.size())) {
      state.PauseTiming();
      offset = 0;
      state.ResumeTiming();
    }
    for (int layer = 0; layer < kLayers; ++layer) {
      const std::byte* k = input.data() + 2 * layer * half_bytes;
      std::memcpy(dst.data() + offset, k, half_bytes);
      std::memcpy(dst.data() + offset + half_bytes, k + half_bytes, half_bytes);
      offset += 2 * half_bytes;
    }
    benchmark::ClobberMemory();
  }
  SetPrefillCounters(state);
}

// ---------------------------------------------------------------------------
// Block allocate+release pairs, on a pool of the model's block size.

absl::StatusOr<std::unique_ptr<BlockPool>> MakePool() {
  absl::StatusOr<std::unique_ptr<HostArena>> arena =
      HostArena::Create(kPairPoolBlocks, kBlockBytes, {});
  if (!arena.ok()) return arena.status();
  return BlockPool::Create(*std::move(arena));
}

// The hot path the cache uses: LocalCache::AllocateOne, then Release.
void BM_BlockPair_LocalCache(benchmark::State& state) {
  absl::StatusOr<std::unique_ptr<BlockPool>> pool = MakePool();
  if (Failed(state, pool.status())) return;
  BlockPool::LocalCache local(**pool);
  for (auto _ : state) {
    const BlockId id = local.AllocateOne();
    benchmark::DoNotOptimize(id);
    if (ABSL_PREDICT_FALSE(id == kNoBlock)) {
      state.SkipWithError("LocalCache::AllocateOne: pool exhausted");
      break;
    }
    local.Release(id);
  }
  state.SetItemsProcessed(state.iterations());
}

// The thread-safe path: BlockPool::Allocate/Release of a span of one (one
// mutex acquisition each).
void BM_BlockPair_Pool(benchmark::State& state) {
  absl::StatusOr<std::unique_ptr<BlockPool>> pool = MakePool();
  if (Failed(state, pool.status())) return;
  BlockPool& p = **pool;
  BlockId id = kNoBlock;
  for (auto _ : state) {
    absl::Status s = p.Allocate(absl::MakeSpan(&id, 1));
    benchmark::DoNotOptimize(id);
    if (Failed(state, s)) break;
    p.Release(absl::MakeConstSpan(&id, 1));
  }
  state.SetItemsProcessed(state.iterations());
}

// Naive decode copies the whole history per step (~16 MiB at 1k to 256 MiB
// at 16k): a few iterations say enough, so it gets a shorter minimum time.
BENCHMARK(BM_Decode_Paged)
    ->Arg(1024)
    ->Arg(4096)
    ->Arg(16384)
    ->UseRealTime()
    ->Unit(benchmark::kNanosecond);
BENCHMARK(BM_Decode_Naive)
    ->Arg(1024)
    ->Arg(4096)
    ->Arg(16384)
    ->MinTime(0.3)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Decode_Memcpy)
    ->Arg(1024)
    ->Arg(4096)
    ->Arg(16384)
    ->UseRealTime()
    ->Unit(benchmark::kNanosecond);
BENCHMARK_CAPTURE(BM_Prefill_Paged, f16, DType::kF16)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_Prefill_Paged, f32, DType::kF32)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Prefill_Memcpy)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_BlockPair_LocalCache)->UseRealTime();
BENCHMARK(BM_BlockPair_Pool)->UseRealTime();

}  // namespace

// ---------------------------------------------------------------------------
// The comparison tables of the append benchmarks and their targets.

void PrintAppendTables(const CapturingReporter& r, std::FILE* out,
                       std::vector<TargetLine>& targets) {
  absl::FPrintF(out,
                "\nDecode step (Update of 1 token on %d layers; ns per step, "
                "real time)\n",
                kLayers);
  absl::FPrintF(out, "%-8s %12s %14s %12s %13s %16s\n", "context", "paged",
                "naive", "memcpy", "naive/paged", "paged vs memcpy");
  Figure speedup_4k;
  for (int ctx : {1024, 4096, 16384}) {
    const Figure paged = r.Ns(absl::StrFormat("BM_Decode_Paged/%d", ctx));
    const Figure naive = r.Ns(absl::StrFormat("BM_Decode_Naive/%d", ctx));
    const Figure copy = r.Ns(absl::StrFormat("BM_Decode_Memcpy/%d", ctx));
    const Figure speedup = Div(naive, paged);
    if (ctx == 4096) speedup_4k = speedup;
    absl::FPrintF(out, "%-8d %12s %14s %12s %13s %16s\n", ctx, FormatNs(paged),
                  FormatNs(naive), FormatNs(copy), FormatRatio(speedup),
                  FormatRatio(Div(copy, paged)));
  }

  const double chunk_bytes = static_cast<double>(kChunkBytes);
  const Figure paged_gbps = Div(chunk_bytes, r.Ns("BM_Prefill_Paged/f16"));
  const Figure copy_gbps = Div(chunk_bytes, r.Ns("BM_Prefill_Memcpy"));
  const Figure f32_gbps = Div(chunk_bytes, r.Ns("BM_Prefill_Paged/f32"));
  const Figure prefill_ratio = Div(paged_gbps, copy_gbps);
  absl::FPrintF(out,
                "\nPrefill (%d-token chunks on %d layers into fresh memory; "
                "GB/s stored)\n",
                kChunkTokens, kLayers);
  absl::FPrintF(out, "%-24s %8s\n", "paged (f16 in)", FormatGbps(paged_gbps));
  absl::FPrintF(out, "%-24s %8s\n", "memcpy", FormatGbps(copy_gbps));
  absl::FPrintF(out, "%-24s %8s\n", "paged / memcpy",
                FormatRatio(prefill_ratio));
  absl::FPrintF(out, "%-24s %8s  (conversion cost; not a target)\n",
                "paged (f32 in)", FormatGbps(f32_gbps));

  const Figure local_pair = r.Ns("BM_BlockPair_LocalCache");
  const Figure pool_pair = r.Ns("BM_BlockPair_Pool");
  absl::FPrintF(out, "\nBlock allocate+release pair (ns)\n");
  absl::FPrintF(out, "%-24s %8s\n", "LocalCache", FormatNs(local_pair));
  absl::FPrintF(out, "%-24s %8s\n", "BlockPool (mutex)", FormatNs(pool_pair));

  targets.push_back(
      {"prefill append >= 0.8x memcpy", FormatRatio(prefill_ratio),
       Verdict(prefill_ratio, prefill_ratio && *prefill_ratio >= 0.8)});
  targets.push_back({"decode step at 4k >= 100x faster than naive",
                     FormatRatio(speedup_4k),
                     Verdict(speedup_4k, speedup_4k && *speedup_4k >= 100)});
  targets.push_back({"block pair (LocalCache) < 5 ns",
                     local_pair ? FormatNs(local_pair) + " ns" : "n/a",
                     Verdict(local_pair, local_pair && *local_pair < 5)});
}

}  // namespace kvpage::bench
