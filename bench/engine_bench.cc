// Engine mode's bookkeeping per scheduler step, in the figures that
// bench/peers/vllm_v1_blocks.py measures for vLLM v1's block manager (the
// same workload, the same JSON keys), and the floor: a loop that does only
// the bookkeeping (a free list, an int32 table, the slot mapping).
// tools/engine_bench.sh runs both and prints the ratios.
//
//   request_step_ns       ReserveBatch of 256 decoding requests (block 16,
//                         from 1000 tokens on), tables kept current, per
//                         request; one table (one layer, or one group)
//   request_step_no_table_ns  the same without the tables
//   allocate_ns_per_block a 2048-token Reserve of a new sequence, per block
//   release_ns_per_block  RemoveSequence of it, per block
//   admit_2k_with_1k_cached_us  a new request whose 2048-token prompt has
//                         1024 tokens cached: AddSequence, MatchPrefix,
//                         Reserve of the rest, AppendTokens (hashing and
//                         publishing)
//   floor_request_step_ns the bookkeeping alone
//   request_step_group32_ns  request_step_ns for a model of 32 layers in
//                         one group (CacheConfig::group_layers): one
//                         reservation serves every layer
//   release_32_layers_us, release_32_layers_group_us  RemoveSequence of a
//                         finished 512-token request of 32 layers: per-layer
//                         tables (32 x 32 blocks), one group (32 blocks)
//
// Each figure is the median of --reps runs, with min and max. Wall-clock
// time of one thread: pin it (taskset -c 1) on a shared machine.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bench/figures.h"
#include "kvpage/kvpage.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr int kBlock = 16, kRequests = 256, kContext = 1000, kSteps = 64;

double Ns(Clock::duration d) {
  return static_cast<double>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
}

void Die(const absl::Status& s) {
  if (s.ok()) return;
  std::fprintf(stderr, "kvpage_engine_bench: %s\n", s.ToString().c_str());
  std::exit(1);
}

// `layers` layers, in one group when `grouped`.
std::unique_ptr<kvpage::KVCache> MakeCache(int64_t num_blocks, int layers = 1,
                                           bool grouped = false) {
  // The block bytes do not matter to bookkeeping; small blocks keep the
  // arena small (nothing is written: no page is touched).
  auto cache = kvpage::KVCache::Create({.num_layers = layers,
                                        .num_kv_heads = 1,
                                        .head_dim = layers > 1 ? 8 : 32,
                                        .dtype = kvpage::DType::kF16,
                                        .block_tokens = kBlock,
                                        .num_blocks = num_blocks,
                                        .max_seq_len = 1 << 20,
                                        .group_layers = grouped});
  Die(cache.status());
  return *std::move(cache);
}

// One run of 256 requests decoding kSteps steps; ns per request-step. With
// `layers` > 1 the layers form one group.
double RequestStep(bool tables, int layers = 1) {
  std::unique_ptr<kvpage::KVCache> cache = MakeCache(
      kRequests * ((kContext + kSteps) / kBlock + 2), layers, layers > 1);
  std::vector<kvpage::SeqId> seqs;
  std::vector<int64_t> prefill(kContext);
  for (int i = 0; i < kRequests; ++i) {
    seqs.push_back(*cache->AddSequence());
    Die(cache->Reserve(seqs.back(), 0, kContext, kContext,
                       absl::MakeSpan(prefill)));
  }
  constexpr int64_t kMax = (kContext + kSteps) / kBlock + 1;
  std::vector<int32_t> table(kRequests * kMax), lens(kRequests);
  const kvpage::PaddedBlockTables out{.block_table = absl::MakeSpan(table),
                                      .max_blocks = kMax,
                                      .seq_lens = absl::MakeSpan(lens)};
  Die(cache->ExportBlockTables(0, seqs, out));
  std::vector<kvpage::ReserveRequest> step(kRequests);
  std::vector<int64_t> slots(kRequests);
  const Clock::time_point start = Clock::now();
  for (int64_t s = 1; s <= kSteps; ++s) {
    for (int i = 0; i < kRequests; ++i) {
      step[i] = {.seq = seqs[i], .seq_len = kContext + s, .tokens = 1};
    }
    Die(cache->ReserveBatch(0, step, absl::MakeSpan(slots),
                            tables ? &out : nullptr));
  }
  const double ns = Ns(Clock::now() - start) / (kSteps * kRequests);
  if (lens[0] != (tables ? kContext + kSteps : kContext)) {
    Die(absl::InternalError("the tables were not kept current"));
  }
  return ns;
}

// Allocation and release of 2048-token sequences, per block. A first
// round, untimed, warms what a serving cache has warm (the pool's lists and
// counts; Create's pre-faulting of the arena has just swept the caches).
std::pair<double, double> AllocateRelease() {
  constexpr int kSeqs = 64, kTokens = 2048;
  std::unique_ptr<kvpage::KVCache> cache =
      MakeCache(kSeqs * kTokens / kBlock + 16);
  std::vector<int64_t> slots(kTokens);
  std::vector<kvpage::SeqId> seqs;
  for (int round = 0; round < 2; ++round) {
    seqs.clear();
    for (int i = 0; i < kSeqs; ++i) seqs.push_back(*cache->AddSequence());
    if (round == 1) break;
    for (kvpage::SeqId seq : seqs) {
      Die(cache->Reserve(seq, 0, kTokens, kTokens, absl::MakeSpan(slots)));
    }
    for (kvpage::SeqId seq : seqs) Die(cache->RemoveSequence(seq));
  }
  const Clock::time_point start = Clock::now();
  for (kvpage::SeqId seq : seqs) {
    Die(cache->Reserve(seq, 0, kTokens, kTokens, absl::MakeSpan(slots)));
  }
  const Clock::time_point middle = Clock::now();
  for (kvpage::SeqId seq : seqs) Die(cache->RemoveSequence(seq));
  const Clock::time_point end = Clock::now();
  const double blocks = static_cast<double>(kSeqs) * kTokens / kBlock;
  return {Ns(middle - start) / blocks, Ns(end - middle) / blocks};
}

// RemoveSequence of finished 512-token requests of 32 layers, µs per
// request: per-layer tables, or one group. A first round warms up, as in
// AllocateRelease.
double Release32(bool grouped) {
  constexpr int kLayers = 32, kSeqs = 64, kTokens = 512;
  std::unique_ptr<kvpage::KVCache> cache =
      MakeCache((grouped ? 1 : kLayers) * (kSeqs * kTokens / kBlock + 16),
                kLayers, grouped);
  std::vector<int64_t> slots(kTokens);
  Clock::duration spent{};
  for (int round = 0; round < 2; ++round) {
    std::vector<kvpage::SeqId> seqs;
    for (int i = 0; i < kSeqs; ++i) seqs.push_back(*cache->AddSequence());
    for (kvpage::SeqId seq : seqs) {
      for (int layer = 0; layer < (grouped ? 1 : kLayers); ++layer) {
        Die(cache->Reserve(seq, layer, kTokens, kTokens,
                           absl::MakeSpan(slots)));
      }
    }
    const Clock::time_point start = Clock::now();
    for (kvpage::SeqId seq : seqs) Die(cache->RemoveSequence(seq));
    spent = Clock::now() - start;
  }
  return Ns(spent) / kSeqs / 1000.0;
}

// Admission of 2048-token prompts whose first 1024 tokens a finished
// request left cached; µs per admission (the first kWarm untimed, as
// AllocateRelease warms up).
double Admit() {
  constexpr int kWarm = 8, kAdmissions = 64 + kWarm, kTokens = 2048,
                kShared = 1024;
  std::unique_ptr<kvpage::KVCache> cache =
      MakeCache((kAdmissions + 2) * kTokens / kBlock);
  std::vector<int32_t> prompt(kTokens);
  for (int t = 0; t < kTokens; ++t) prompt[t] = t;
  std::vector<int64_t> slots(kTokens);
  {
    const kvpage::SeqId first = *cache->AddSequence();
    Die(cache->Reserve(first, 0, kShared, kShared,
                       absl::MakeSpan(slots).subspan(0, kShared)));
    Die(cache->AppendTokens(first, absl::MakeSpan(prompt).subspan(0, kShared)));
    Die(cache->RemoveSequence(first));
  }
  std::vector<kvpage::SeqId> admitted;
  double total = 0;
  for (int a = 0; a < kAdmissions; ++a) {
    for (int t = kShared; t < kTokens; ++t) prompt[t] = (a + 1) * 100000 + t;
    const Clock::time_point start = Clock::now();
    const kvpage::SeqId seq = *cache->AddSequence();
    absl::StatusOr<int64_t> cached = cache->MatchPrefix(seq, prompt);
    Die(cached.status());
    const int64_t rest = kTokens - *cached;
    Die(cache->Reserve(seq, 0, kTokens, rest,
                       absl::MakeSpan(slots).subspan(0, rest)));
    Die(cache->AppendTokens(seq, absl::MakeSpan(prompt).subspan(*cached)));
    if (a >= kWarm) total += Ns(Clock::now() - start);
    if (*cached != kShared) Die(absl::InternalError("the prefix was missed"));
    admitted.push_back(seq);
  }
  return total / (kAdmissions - kWarm) / 1000.0;
}

// The bookkeeping alone: a free list, an int32 table per request, the slot
// mapping; what any block manager must do at least.
double Floor() {
  constexpr int64_t kMax = (kContext + kSteps) / kBlock + 1;
  std::vector<int32_t> free_list;
  for (int32_t b = kRequests * kMax - 1; b >= 0; --b) free_list.push_back(b);
  std::vector<int32_t> table(kRequests * kMax);
  std::vector<int32_t> blocks(kRequests, 0), lens(kRequests, 0);
  for (int i = 0; i < kRequests; ++i) {
    for (int64_t p = 0; p < kContext; p += kBlock) {
      table[i * kMax + blocks[i]++] = free_list.back();
      free_list.pop_back();
    }
    lens[i] = kContext;
  }
  std::vector<int64_t> slots(kRequests);
  const Clock::time_point start = Clock::now();
  for (int s = 0; s < kSteps; ++s) {
    for (int i = 0; i < kRequests; ++i) {
      const int32_t len = lens[i];
      if (len % kBlock == 0) {
        table[i * kMax + blocks[i]++] = free_list.back();
        free_list.pop_back();
      }
      slots[i] =
          int64_t{table[i * kMax + blocks[i] - 1]} * kBlock + len % kBlock;
      lens[i] = len + 1;
    }
    asm volatile("" : : "r"(slots.data()) : "memory");
  }
  return Ns(Clock::now() - start) / (kSteps * kRequests);
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  std::string only;  // --figure=admit: that one alone (for a profiler)
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      reps = 1;
    } else if (std::strncmp(argv[i], "--reps=", 7) == 0) {
      reps = std::atoi(argv[i] + 7);
    } else if (std::strncmp(argv[i], "--figure=", 9) == 0) {
      only = argv[i] + 9;
    } else {
      std::fprintf(stderr,
                   "usage: kvpage_engine_bench [--quick] [--reps=N] "
                   "[--figure=step|alloc|admit|floor]\n");
      return 2;
    }
  }
  if (only == "admit") {
    for (int r = 0; r < reps; ++r) std::printf("%.3f us\n", Admit());
    return 0;
  }
  if (reps < 1) {
    std::fprintf(stderr, "kvpage_engine_bench: --reps must be >= 1\n");
    return 2;
  }
  std::vector<kvpage::bench::Figure> figures = {
      {"request_step_ns", {}},
      {"request_step_no_table_ns", {}},
      {"allocate_ns_per_block", {}},
      {"release_ns_per_block", {}},
      {"admit_2k_with_1k_cached_us", {}},
      {"floor_request_step_ns", {}},
      {"request_step_group32_ns", {}},
      {"release_32_layers_us", {}},
      {"release_32_layers_group_us", {}}};
  for (int r = 0; r < reps; ++r) {
    figures[0].runs.push_back(RequestStep(true));
    figures[1].runs.push_back(RequestStep(false));
    const auto [allocate, release] = AllocateRelease();
    figures[2].runs.push_back(allocate);
    figures[3].runs.push_back(release);
    figures[4].runs.push_back(Admit());
    figures[5].runs.push_back(Floor());
    figures[6].runs.push_back(RequestStep(true, 32));
    figures[7].runs.push_back(Release32(false));
    figures[8].runs.push_back(Release32(true));
  }
  kvpage::bench::PrintFigures(figures,
                              "  \"peer\": \"kvpage\",\n  \"block_size\": " +
                                  std::to_string(kBlock) + ",\n");
  return 0;
}
