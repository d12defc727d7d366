// Prefix caching's costs per block, in the figures the prefix-caching issue
// names, each next to what it is compared with in the same run:
//
//   hash_512_ns            PrefixBlockHash of one 512-token block
//   hash_512_bytewise_ns   the same hash as one writes it by hand: the ids
//                          converted to little-endian bytes one at a time
//                          into a heap buffer, then XXH3 (what kvpage did
//                          before it hashed in place)
//   hash_16_ns             PrefixBlockHash of one 16-token block
//   publish_ns_per_block_layer  AppendTokens of a 2048-token prompt whose
//                          blocks are written in 4 layers (blocks of 16):
//                          hashing and publishing, per block and layer
//   publish_group_ns_per_block_layer  the same with the 4 layers in one
//                          group (CacheConfig::group_layers): one table
//   evict_ns_per_entry     a Reserve that must evict idle prefix entries
//                          (one block each, one layer), less the same
//                          Reserve from free blocks, per entry evicted
//
// Each figure is the median of --reps runs, with min and max; one thread,
// wall-clock: pin it (taskset -c 1) on a shared machine.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench/figures.h"
#include "kvpage/kvpage.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace {

using Clock = std::chrono::steady_clock;

double Ns(Clock::duration d) {
  return static_cast<double>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
}

void Die(const absl::Status& s) {
  if (s.ok()) return;
  std::fprintf(stderr, "kvpage_prefix_bench: %s\n", s.ToString().c_str());
  std::exit(1);
}

// The documented hash (kvpage/prefix.h) written the plain way: every byte
// of every field put in a heap buffer, then hashed.
uint64_t BytewiseHash(uint64_t parent, uint64_t salt,
                      absl::Span<const int32_t> tokens) {
  std::vector<uint8_t> bytes;
  bytes.reserve(16 + 4 * tokens.size());
  for (int i = 0; i < 8; ++i) bytes.push_back(uint8_t(parent >> (8 * i)));
  for (int i = 0; i < 8; ++i) bytes.push_back(uint8_t(salt >> (8 * i)));
  for (int32_t t : tokens) {
    const auto u = static_cast<uint32_t>(t);
    for (int i = 0; i < 4; ++i) bytes.push_back(uint8_t(u >> (8 * i)));
  }
  return XXH3_64bits(bytes.data(), bytes.size());
}

// ns per hash of `tokens`-token blocks, chained as a sequence hashes them.
template <typename Hash>
double HashNs(int tokens, Hash&& hash) {
  constexpr int kBlocks = 4096;
  std::vector<int32_t> ids(static_cast<size_t>(tokens) * kBlocks);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  uint64_t parent = 0;
  const Clock::time_point start = Clock::now();
  for (int b = 0; b < kBlocks; ++b) {
    parent = hash(parent, 7,
                  absl::MakeConstSpan(ids).subspan(
                      static_cast<size_t>(b) * tokens, tokens));
  }
  const double ns = Ns(Clock::now() - start) / kBlocks;
  if (parent == 42) std::printf("-");  // keep the chain alive
  return ns;
}

std::unique_ptr<kvpage::KVCache> MakeCache(int layers, int64_t num_blocks,
                                           bool group_layers = false) {
  auto cache = kvpage::KVCache::Create({.num_layers = layers,
                                        .num_kv_heads = 1,
                                        .head_dim = 32,
                                        .dtype = kvpage::DType::kF16,
                                        .block_tokens = 16,
                                        .num_blocks = num_blocks,
                                        .max_seq_len = 1 << 20,
                                        .group_layers = group_layers});
  Die(cache.status());
  return *std::move(cache);
}

// AppendTokens of 2048-token prompts whose 4 layers are reserved (written,
// as far as the cache knows): ns per block and layer published. A first
// round, untimed, warms the pool and the index. With `grouped`, the layers
// share one table: a block id (and one publication) serves all four.
double PublishNs(bool grouped) {
  constexpr int kLayers = 4, kTokens = 2048, kSeqs = 32;
  const int tables = grouped ? 1 : kLayers;
  std::unique_ptr<kvpage::KVCache> cache =
      MakeCache(kLayers, tables * 2 * kSeqs * kTokens / 16 + 16, grouped);
  std::vector<int64_t> slots(kTokens);
  std::vector<int32_t> ids(kTokens);
  Clock::duration spent{};
  for (int round = 0; round < 2; ++round) {
    for (int s = 0; s < kSeqs; ++s) {
      const kvpage::SeqId seq = *cache->AddSequence();
      for (int layer = 0; layer < tables; ++layer) {  // a group: all
        Die(cache->Reserve(seq, layer, kTokens, kTokens,
                           absl::MakeSpan(slots)));
      }
      for (int t = 0; t < kTokens; ++t) {
        ids[t] = (round * kSeqs + s) * kTokens + t;  // nothing shared
      }
      const Clock::time_point start = Clock::now();
      Die(cache->AppendTokens(seq, ids));
      if (round == 1) spent += Clock::now() - start;
    }
  }
  if (cache->Stats().prefix_entries != 2 * kSeqs * kTokens / 16) {
    Die(absl::InternalError("not every block was published"));
  }
  return Ns(spent) / (double{kSeqs} * kTokens / 16 * kLayers);
}

// Reserves of 256 blocks for new sequences in a pool whose free blocks are
// gone and whose idle prefix entries (one block each) must be evicted,
// against the same reserves from free blocks: ns per entry evicted.
double EvictNs() {
  constexpr int kChunk = 256 * 16, kRounds = 16;
  // Cached: kRounds chunks of released prefixes; then as many free blocks.
  const int64_t cached_blocks = int64_t{kRounds} * kChunk / 16;
  std::unique_ptr<kvpage::KVCache> cache = MakeCache(1, 2 * cached_blocks);
  std::vector<int64_t> slots(kChunk);
  std::vector<int32_t> ids(kChunk);
  for (int r = 0; r < kRounds; ++r) {
    const kvpage::SeqId seq = *cache->AddSequence();
    Die(cache->Reserve(seq, 0, kChunk, kChunk, absl::MakeSpan(slots)));
    for (int t = 0; t < kChunk; ++t) ids[t] = r * kChunk + t;
    Die(cache->AppendTokens(seq, ids));
    Die(cache->RemoveSequence(seq));
  }
  // Free blocks first (the pool's other half), then evictions.
  Clock::duration from_free{}, evicting{};
  for (int r = 0; r < 2 * kRounds; ++r) {
    const kvpage::SeqId seq = *cache->AddSequence();
    const Clock::time_point start = Clock::now();
    Die(cache->Reserve(seq, 0, kChunk, kChunk, absl::MakeSpan(slots)));
    (r < kRounds ? from_free : evicting) += Clock::now() - start;
  }
  if (cache->Stats().blocks_cached != 0) {
    Die(absl::InternalError("the cached blocks were not all evicted"));
  }
  return (Ns(evicting) - Ns(from_free)) / static_cast<double>(cached_blocks);
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      reps = 1;
    } else if (std::strncmp(argv[i], "--reps=", 7) == 0) {
      reps = std::atoi(argv[i] + 7);
    } else {
      std::fprintf(stderr, "usage: kvpage_prefix_bench [--quick] [--reps=N]\n");
      return 2;
    }
  }
  if (reps < 1) {
    std::fprintf(stderr, "kvpage_prefix_bench: --reps must be >= 1\n");
    return 2;
  }
  std::vector<kvpage::bench::Figure> figures = {
      {"hash_512_ns", {}},        {"hash_512_bytewise_ns", {}},
      {"hash_16_ns", {}},         {"publish_ns_per_block_layer", {}},
      {"evict_ns_per_entry", {}}, {"publish_group_ns_per_block_layer", {}}};
  for (int r = 0; r < reps; ++r) {
    figures[0].runs.push_back(HashNs(512, kvpage::PrefixBlockHash));
    figures[1].runs.push_back(HashNs(512, BytewiseHash));
    figures[2].runs.push_back(HashNs(16, kvpage::PrefixBlockHash));
    figures[3].runs.push_back(PublishNs(false));
    figures[4].runs.push_back(EvictNs());
    figures[5].runs.push_back(PublishNs(true));
  }
  kvpage::bench::PrintFigures(figures);
  return 0;
}
