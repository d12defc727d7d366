// What the first touch of arena memory costs a decode step, and what
// avoiding it costs at Create: for the arena options (none, huge_pages,
// prefault, both), the time to create the cache, its resident memory, and
// the latency of decode Updates that land in fresh blocks (mean, p99, max).
//
// The workload: 8 layers of 8 kv-heads x 128 dims, f16, blocks of 16 tokens
// (64 KiB), 64 sequences prefilled with 16 tokens and decoding 512 more, so
// that every layer of every sequence takes a fresh block every 16 steps and
// a token's 2 KiB of keys (and of values) meet a page never touched before
// every other step. One JSON object per option on stdout.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "kvpage/kvpage.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr int kLayers = 8, kHeads = 8, kDim = 128, kBlock = 16;
constexpr int kSeqs = 64, kPrefill = 16, kDecode = 512;

int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

void Run(const char* name, bool huge_pages, bool prefault) {
  kvpage::CacheConfig config{.num_layers = kLayers,
                             .num_kv_heads = kHeads,
                             .head_dim = kDim,
                             .dtype = kvpage::DType::kF16,
                             .block_tokens = kBlock,
                             .num_blocks = int64_t{kSeqs} * kLayers *
                                           ((kPrefill + kDecode) / kBlock + 1),
                             .max_seq_len = 4096,
                             .prefault = prefault,
                             .huge_pages = huge_pages};
  const int64_t rss_before = ResidentBytes();
  const Clock::time_point t0 = Clock::now();
  auto created = kvpage::KVCache::Create(config);
  const double create_ms =
      std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  if (!created.ok()) {
    std::fprintf(stderr, "%s\n", created.status().ToString().c_str());
    std::exit(1);
  }
  kvpage::KVCache& cache = **created;
  const int64_t rss_created = ResidentBytes() - rss_before;
  std::vector<uint16_t> tokens(kPrefill * kHeads * kDim, 0x3c00);
  std::vector<kvpage::SeqId> seqs;
  for (int s = 0; s < kSeqs; ++s) {
    seqs.push_back(*cache.AddSequence());
    for (int l = 0; l < kLayers; ++l) {
      const kvpage::TokenSpan span{.data = tokens.data(),
                                   .dtype = kvpage::DType::kF16,
                                   .tokens = kPrefill};
      if (!cache.Update(seqs.back(), l, span, span, kPrefill).ok())
        std::exit(1);
    }
  }
  std::vector<double> ns;
  ns.reserve(size_t{kSeqs} * kLayers * kDecode);
  const kvpage::TokenSpan one{
      .data = tokens.data(), .dtype = kvpage::DType::kF16, .tokens = 1};
  for (int64_t len = kPrefill + 1; len <= kPrefill + kDecode; ++len) {
    for (kvpage::SeqId seq : seqs) {
      for (int l = 0; l < kLayers; ++l) {
        const Clock::time_point a = Clock::now();
        const absl::Status s = cache.Update(seq, l, one, one, len);
        ns.push_back(
            std::chrono::duration<double, std::nano>(Clock::now() - a).count());
        if (!s.ok()) std::exit(1);
      }
    }
  }
  double mean = 0;
  for (double x : ns) mean += x;
  mean /= static_cast<double>(ns.size());
  std::sort(ns.begin(), ns.end());
  std::printf(
      "{\"arena\": \"%s\", \"create_ms\": %.1f, \"resident_mib_after_create\": "
      "%.0f, \"arena_mib\": %.0f, \"decode_update_ns\": {\"mean\": %.0f, "
      "\"p50\": %.0f, \"p99\": %.0f, \"max\": %.0f}}\n",
      name, create_ms, static_cast<double>(rss_created) / (1 << 20),
      static_cast<double>(cache.Stats().arena_bytes) / (1 << 20), mean,
      ns[ns.size() / 2], ns[ns.size() * 99 / 100], ns.back());
}

}  // namespace

int main(int argc, char** argv) {
  const std::string only = argc > 1 ? argv[1] : "";
  struct Option {
    const char* name;
    bool huge_pages, prefault;
  };
  for (const Option& o :
       {Option{"plain", false, false}, Option{"huge_pages", true, false},
        Option{"prefault", false, true},
        Option{"huge_pages+prefault", true, true}}) {
    if (only.empty() || only == o.name) Run(o.name, o.huge_pages, o.prefault);
  }
  return 0;
}
