// bench/policy_bench.cc — a decode step under kvpage's evicting overflow
// policies (kSlidingWindow, kCircularBuffer) next to the hand-written window
// caches of baselines/window_baselines.h, early and late in a long sequence,
// with the comparison table and targets that go with them.
//
// The window: max_seq_len 1024 with 4 sink tokens, on the model shape of
// bench_common.h (f16, prefaulted). A step is one token on every layer,
// positions absolute. Each variant is measured at two points: when the
// sequence has written 1k tokens (the window just full) and 64k tokens (the
// window slid ~63k positions). The target is a step cost independent of how
// long the sequence has run: step(64k) / step(1k) <= 1.1 for each policy.
//
// Positions only grow and evicted ones cannot be rolled back to, so a point
// cannot be revisited by a rollback. Instead a sequence is rebuilt to its
// point outside timing when it has no room left: timed steps at "1k" run
// between 1024 and 1024 + 256 tokens written (the first 256 steps after the
// window filled), at "64k" between 65536 and 65536 + 16384 (64k..80k). A
// rebuild restarts the sequence (a rollback to 0, into the sinks, which
// every policy allows; a ring keeps its blocks), fills it back to the
// point, and takes its last kWarmSteps tokens as decode steps. kvpage
// reaches the point by decode steps after a first window-sized prefill: its
// history is what is under test (~63k steps, ~40 ms, for 64k). The
// baselines' state after n tokens depends only on n and the last window of
// tokens, so they reach it with window-sized appends.
//
// Measuring the two points fairly on this shared 2-core VM takes care (each
// measure below was needed: without it even the token ring, whose step is
// the same code at any point, showed 64k/1k ratios from 0.87x to 2.7x):
// - the points alternate in segments of 64 steps within one benchmark, each
//   segment timed on its own (manual time: rebuilds are never timed), and
//   each point's figure is the median of its segments, so that drift and
//   preemption hit both points alike;
// - each point has kSequencesPerPoint sequences (separate caches) used in
//   turns of kTurn steps, and a sequence is rebuilt right after its turn,
//   so that, as in a long-running sequence, the memory a step writes was
//   last touched long before (a just-rebuilt window is still in the CPU
//   caches and made "1k" look up to 2.7x faster);
// - the sequences of both points are allocated alternately, so that both
//   get memory of the same history (with the 1k sequences allocated first,
//   in memory an earlier benchmark had freed, the token ring's 1k figure
//   came out 5-13% slower).
//
// The cache's statistics over the timed steps become counters (per step:
// evictions, blocks released by the policy, blocks reused by the ring; in
// total: bytes copied inside the pool, which must stay 0) and every cache's
// Validate() runs after each benchmark call. The pool holds exactly the
// blocks the window can need (sink block + ring blocks per layer), so a
// policy that held more would fail with ResourceExhausted.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/memory/memory.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "baselines/window_baselines.h"
#include "bench/bench_common.h"
#include "benchmark/benchmark.h"
#include "kvpage/config.h"
#include "kvpage/kv_cache.h"

namespace kvpage::bench {
namespace {

using baselines::ShiftWindow;
using baselines::TokenRing;

constexpr int64_t kWindow = 1024;  // max_seq_len: sinks + window tokens
constexpr int64_t kSinks = 4;
// Blocks a layer can hold: its sink block, and the most blocks a window of
// kWindow - kSinks tokens can touch (what a ring keeps).
constexpr int64_t kBlocksPerLayer =
    CeilDiv(kSinks, kBlockTokens) +
    CeilDiv(kWindow - kSinks - 1, kBlockTokens) + 1;

// The two points: tokens written when a sequence's timed steps start.
constexpr int64_t kAt1k = 1024;
constexpr int64_t kAt64k = 65536;
// Sequences (each in its own cache) per point, used in turn; steps a
// sequence takes in one turn (a multiple of every segment length).
constexpr int kSequencesPerPoint = 4;
constexpr int64_t kTurn = 256;
// Timed steps from each point before its sequence is rebuilt: one turn at
// 1k, 64 turns at 64k (so within 64k..80k).
constexpr int64_t kRunAt1k = kTurn;
constexpr int64_t kRunAt64k = 16384;
// Steps timed together: 64 for the O(1) variants; the memmove shift moves
// ~16 MiB per step (~0.5 ms), so 2.
constexpr int64_t kSegment = 64;
constexpr int64_t kMemmoveSegment = 2;
// The last steps of a rebuild, taken one token at a time.
constexpr int64_t kWarmSteps = 16;

// The data every variant appends. Keys and values of history share the same
// kWindow tokens (only bytes matter); a step appends DecodeStepInput().
struct WindowInputs {
  std::vector<uint16_t> history = RandomF16(kWindow * kTokenElems, 1);
  std::vector<uint16_t> step = DecodeStepInput();
};

// A kvpage cache under `policy` with one sequence.
class PagedWindow {
 public:
  static absl::StatusOr<std::unique_ptr<PagedWindow>> Create(
      OverflowPolicy policy) {
    absl::StatusOr<std::unique_ptr<KVCache>> cache =
        KVCache::Create({.num_layers = kLayers,
                         .num_kv_heads = kKvHeads,
                         .head_dim = kHeadDim,
                         .dtype = DType::kF16,
                         .block_tokens = kBlockTokens,
                         .num_blocks = kLayers * kBlocksPerLayer,
                         .max_seq_len = kWindow,
                         .overflow = policy,
                         .sink_tokens = kSinks,
                         .prefault = true});
    if (!cache.ok()) return cache.status();
    absl::StatusOr<SeqId> seq = (*cache)->AddSequence();
    if (!seq.ok()) return seq.status();
    return absl::WrapUnique(new PagedWindow(*std::move(cache), *seq));
  }

  int64_t written() const { return written_; }
  KVCache& cache() { return *cache_; }

  // Back to an empty sequence: a rollback into the sinks.
  absl::Status Restart() {
    written_ = 0;
    return cache_->Truncate(seq_, 0);
  }

  // Appends tokens up to `seq_len` on every layer: what is left of the first
  // window in one Update per layer, the rest one decode step at a time.
  absl::Status Advance(int64_t seq_len) {
    const int64_t prefill_to = std::min(seq_len, kWindow);
    if (written_ < prefill_to) {
      const TokenSpan span =
          Span(inputs_.history.data(), DType::kF16, prefill_to - written_);
      for (int layer = 0; layer < kLayers; ++layer) {
        absl::Status s = cache_->Update(seq_, layer, span, span, prefill_to);
        if (!s.ok()) return s;
      }
      written_ = prefill_to;
    }
    while (written_ < seq_len) {
      if (absl::Status s = Step(); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // One decode step: one token on every layer.
  absl::Status Step() {
    ++written_;
    for (int layer = 0; layer < kLayers; ++layer) {
      const uint16_t* k = inputs_.step.data() + 2 * layer * kTokenElems;
      absl::Status s =
          cache_->Update(seq_, layer, Span(k, DType::kF16, 1),
                         Span(k + kTokenElems, DType::kF16, 1), written_);
      if (ABSL_PREDICT_FALSE(!s.ok())) return s;
    }
    return absl::OkStatus();
  }

 private:
  PagedWindow(std::unique_ptr<KVCache> cache, SeqId seq)
      : cache_(std::move(cache)), seq_(seq) {}

  std::unique_ptr<KVCache> cache_;
  SeqId seq_;
  int64_t written_ = 0;
  WindowInputs inputs_;
};

// A hand-written window (ShiftWindow or TokenRing) with the same interface.
template <typename Buffers>
class BaselineWindow {
 public:
  static absl::StatusOr<std::unique_ptr<BaselineWindow>> Create() {
    return std::make_unique<BaselineWindow>();
  }

  int64_t written() const { return buffers_.written(0); }

  absl::Status Restart() {
    buffers_.Clear();
    return absl::OkStatus();
  }

  // Appends tokens up to `seq_len` on every layer, at most a window per call.
  absl::Status Advance(int64_t seq_len) {
    while (written() < seq_len) {
      const int64_t n = std::min(seq_len - written(), kWindow);
      const auto span = absl::MakeConstSpan(
          inputs_.history.data(), static_cast<size_t>(n * kTokenElems));
      for (int layer = 0; layer < kLayers; ++layer) {
        buffers_.Append(layer, span, span);
      }
    }
    return absl::OkStatus();
  }

  absl::Status Step() {
    for (int layer = 0; layer < kLayers; ++layer) {
      const uint16_t* k = inputs_.step.data() + 2 * layer * kTokenElems;
      buffers_.Append(layer, absl::MakeConstSpan(k, kTokenElems),
                      absl::MakeConstSpan(k + kTokenElems, kTokenElems));
    }
    return absl::OkStatus();
  }

 private:
  Buffers buffers_{kLayers, kTokenElems, kWindow, kSinks};
  WindowInputs inputs_;
};

// Restarts `w` and brings it to `point` tokens written, the last kWarmSteps
// as decode steps.
template <typename Window>
absl::Status Rebuild(Window& w, int64_t point) {
  if (absl::Status s = w.Restart(); !s.ok()) return s;
  if (absl::Status s = w.Advance(point - kWarmSteps); !s.ok()) return s;
  while (w.written() < point) {
    if (absl::Status s = w.Step(); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// The cache's statistics summed over the timed segments at one point, and
// the range of blocks in use seen at their starts and ends.
class StatsTally {
 public:
  void Start(const KVCache& cache) {
    start_ = cache.Stats();
    SeeBlocksUsed(start_.blocks_used);
  }
  void Stop(const KVCache& cache) {
    const CacheStats now = cache.Stats();
    evictions += now.evictions - start_.evictions;
    released +=
        now.blocks_released_by_policy - start_.blocks_released_by_policy;
    reused += now.blocks_reused_by_ring - start_.blocks_reused_by_ring;
    copied += now.bytes_copied - start_.bytes_copied;
    SeeBlocksUsed(now.blocks_used);
  }

  int64_t evictions = 0, released = 0, reused = 0, copied = 0;
  int64_t min_blocks_used = std::numeric_limits<int64_t>::max();
  int64_t max_blocks_used = 0;

 private:
  void SeeBlocksUsed(int64_t used) {
    min_blocks_used = std::min(min_blocks_used, used);
    max_blocks_used = std::max(max_blocks_used, used);
  }

  CacheStats start_;
};

// One of the two points a benchmark alternates between, with its
// sequences, used in turn (see the file comment).
template <typename Window>
struct Point {
  int64_t at = 0;   // tokens written when a run of timed steps starts
  int64_t end = 0;  // timed steps stay below this many tokens written
  std::vector<std::unique_ptr<Window>> windows;
  size_t current = 0;     // the window being stepped
  int64_t turn_left = 0;  // steps left in its turn
  // Over one benchmark call:
  std::vector<double> segment_ns;  // ns per step of each full segment
  StatsTally tally;                // kvpage only

  // The window to step next for `segment` steps (a divisor of kTurn): the
  // current one until it has taken kTurn steps; then, rebuilt if it has no
  // room for another turn (so that it cools down while unused), it hands
  // over to the next one.
  absl::StatusOr<Window*> Next(int64_t segment) {
    if (turn_left == 0) {
      if (windows[current]->written() + kTurn > end) {
        if (absl::Status s = Rebuild(*windows[current], at); !s.ok()) return s;
      }
      current = (current + 1) % windows.size();
      turn_left = kTurn;
    }
    turn_left -= segment;
    return windows[current].get();
  }
};

// The median of `v` (not empty); reorders it.
double Median(std::vector<double>& v) {
  const auto mid = v.begin() + static_cast<ptrdiff_t>(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  return *mid;
}

// The fixture of a variant: its sequences at both points.
template <typename Window>
struct PointPair {
  Point<Window> early{.at = kAt1k, .end = kAt1k + kRunAt1k};
  Point<Window> late{.at = kAt64k, .end = kAt64k + kRunAt64k};
};

// The decode-step benchmark of one variant; `make()` builds an empty one.
// An iteration is one decode step, at 1k or at 64k: the points alternate in
// segments of `segment` steps, each timed on its own (manual time). The
// Time column is the mean over both points; the counters at_1k_ns and
// at_64k_ns are each point's median over its full segments.
template <typename Window, typename Make>
void WindowSteps(benchmark::State& state, const char* name, Make make,
                 int64_t segment) {
  constexpr bool kPaged = std::is_same_v<Window, PagedWindow>;
  absl::StatusOr<PointPair<Window>*> fixture = Reuse<PointPair<Window>>(
      absl::StrFormat("window/%s", name),
      [&]() -> absl::StatusOr<std::unique_ptr<PointPair<Window>>> {
        auto pair = std::make_unique<PointPair<Window>>();
        // Alternately, so that both points get memory of the same history.
        for (int i = 0; i < kSequencesPerPoint; ++i) {
          for (Point<Window>* p : {&pair->early, &pair->late}) {
            absl::StatusOr<std::unique_ptr<Window>> w = make();
            if (!w.ok()) return w.status();
            if (absl::Status s = Rebuild(**w, p->at); !s.ok()) return s;
            p->windows.push_back(*std::move(w));
          }
        }
        return pair;
      });
  if (Failed(state, fixture.status())) return;
  Point<Window>* points[2] = {&(*fixture)->early, &(*fixture)->late};
  for (Point<Window>* p : points) {
    p->segment_ns.clear();
    p->tally = {};
  }
  using Clock = std::chrono::steady_clock;
  Point<Window>* point = points[1];
  Window* w = nullptr;  // stepped in the current segment
  int64_t left = 0;     // steps left in the current segment
  Clock::time_point start;
  auto close_segment = [&] {
    const double seconds =
        std::chrono::duration<double>(Clock::now() - start).count();
    state.SetIterationTime(seconds);
    if (left == 0) {
      point->segment_ns.push_back(seconds * 1e9 / static_cast<double>(segment));
    }
    if constexpr (kPaged) point->tally.Stop(w->cache());
  };
  for (auto _ : state) {
    if (left == 0) {
      if (w != nullptr) close_segment();
      point = points[point == points[0] ? 1 : 0];
      absl::StatusOr<Window*> next = point->Next(segment);
      if (Failed(state, next.status())) {
        w = nullptr;
        break;
      }
      w = *next;
      if constexpr (kPaged) point->tally.Start(w->cache());
      left = segment;
      start = Clock::now();
    }
    --left;
    if (Failed(state, w->Step())) {
      w = nullptr;
      break;
    }
  }
  if (w != nullptr) close_segment();
  if (state.error_occurred()) return;

  using benchmark::Counter;
  state.SetItemsProcessed(state.iterations());  // tokens
  for (Point<Window>* p : points) {
    if (p->segment_ns.empty()) continue;  // a short sizing call
    state.counters[p == points[0] ? "at_1k_ns" : "at_64k_ns"] =
        Median(p->segment_ns);
  }
  if constexpr (kPaged) {
    StatsTally all;
    for (Point<Window>* p : points) {
      all.evictions += p->tally.evictions;
      all.released += p->tally.released;
      all.reused += p->tally.reused;
      all.copied += p->tally.copied;
      for (const std::unique_ptr<Window>& window : p->windows) {
        if (Failed(state, window->cache().Validate())) return;
      }
    }
    state.counters["evictions"] =
        Counter(static_cast<double>(all.evictions), Counter::kAvgIterations);
    state.counters["released"] =
        Counter(static_cast<double>(all.released), Counter::kAvgIterations);
    state.counters["ring_reused"] =
        Counter(static_cast<double>(all.reused), Counter::kAvgIterations);
    state.counters["bytes_copied"] = static_cast<double>(all.copied);
    // At 64k, where a ring has long finished warming up.
    state.counters["blocks_used_min"] =
        static_cast<double>(points[1]->tally.min_blocks_used);
    state.counters["blocks_used_max"] =
        static_cast<double>(points[1]->tally.max_blocks_used);
  }
}

// The CPU column includes the untimed rebuilds. The memmove shift takes
// ~0.5 ms per step: a shorter minimum time says enough.
void BM_Window_SlidingWindow(benchmark::State& state) {
  WindowSteps<PagedWindow>(
      state, "sliding",
      [] { return PagedWindow::Create(OverflowPolicy::kSlidingWindow); },
      kSegment);
}

void BM_Window_CircularBuffer(benchmark::State& state) {
  WindowSteps<PagedWindow>(
      state, "circular",
      [] { return PagedWindow::Create(OverflowPolicy::kCircularBuffer); },
      kSegment);
}

void BM_Window_MemmoveShift(benchmark::State& state) {
  WindowSteps<BaselineWindow<ShiftWindow>>(
      state, "memmove", BaselineWindow<ShiftWindow>::Create, kMemmoveSegment);
}

void BM_Window_TokenRing(benchmark::State& state) {
  WindowSteps<BaselineWindow<TokenRing>>(
      state, "ring", BaselineWindow<TokenRing>::Create, kSegment);
}

BENCHMARK(BM_Window_SlidingWindow)
    ->MinTime(0.5)
    ->UseManualTime()
    ->Unit(benchmark::kNanosecond);
BENCHMARK(BM_Window_CircularBuffer)
    ->MinTime(0.5)
    ->UseManualTime()
    ->Unit(benchmark::kNanosecond);
BENCHMARK(BM_Window_MemmoveShift)
    ->MinTime(0.2)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Window_TokenRing)
    ->MinTime(0.5)
    ->UseManualTime()
    ->Unit(benchmark::kNanosecond);

}  // namespace

// ---------------------------------------------------------------------------
// The table of the window benchmarks and their targets.

void PrintWindowTables(const CapturingReporter& r, std::FILE* out,
                       std::vector<TargetLine>& targets) {
  struct Variant {
    const char* label;
    const char* benchmark;
    bool ring;  // kCircularBuffer
  };
  constexpr Variant kSliding = {"sliding window", "BM_Window_SlidingWindow",
                                false};
  constexpr Variant kCircular = {"circular buffer", "BM_Window_CircularBuffer",
                                 true};
  constexpr Variant kMemmove = {"memmove shift", "BM_Window_MemmoveShift",
                                false};
  constexpr Variant kRing = {"token ring", "BM_Window_TokenRing", false};
  auto ns = [&](const Variant& v, int64_t point) {
    return r.Counter(v.benchmark, point == kAt1k ? "at_1k_ns" : "at_64k_ns");
  };
  auto growth = [&](const Variant& v) {
    return Div(ns(v, kAt64k), ns(v, kAt1k));
  };

  absl::FPrintF(out,
                "\nDecode step with a %d-token window (%d sinks + %d recent "
                "tokens; 1 token on %d layers; ns per step)\n"
                "(median of segments of %d steps, %d for memmove, the two "
                "points alternating; written memory cold as in a long run)\n",
                kWindow, kSinks, kWindow - kSinks, kLayers, kSegment,
                kMemmoveSegment);
  absl::FPrintF(out, "%-24s %15s %15s %8s\n", "", "at 1k written",
                "at 64k written", "64k/1k");
  for (const Variant& v : {kSliding, kCircular, kMemmove, kRing}) {
    absl::FPrintF(out, "%-24s %15s %15s %8s\n", v.label, FormatNs(ns(v, kAt1k)),
                  FormatNs(ns(v, kAt64k)), FormatRatio(growth(v)));
  }

  absl::FPrintF(out,
                "paged at 64k vs hand-written (baseline ns / paged ns; above "
                "1x paged is faster)\n");
  absl::FPrintF(out, "%-24s %15s %15s\n", "", "vs memmove", "vs token ring");
  for (const Variant& v : {kSliding, kCircular}) {
    const Figure paged = ns(v, kAt64k);
    absl::FPrintF(out, "%-24s %15s %15s\n", v.label,
                  FormatRatio(Div(ns(kMemmove, kAt64k), paged)),
                  FormatRatio(Div(ns(kRing, kAt64k), paged)));
  }

  absl::FPrintF(out,
                "kvpage statistics over the timed steps (per step on %d "
                "layers; bytes copied in total; blocks in use at 64k, of a "
                "pool of %d)\n",
                kLayers, kLayers * kBlocksPerLayer);
  absl::FPrintF(out, "%-24s %9s %9s %12s %13s %14s\n", "", "evictions",
                "released", "ring reused", "bytes copied", "blocks in use");
  auto fixed = [](Figure f, int digits) -> std::string {
    return f ? absl::StrFormat("%.*f", digits, *f) : "n/a";
  };
  // Checks over the policies that ran: nullopt when none did.
  std::optional<bool> none_copied, ring_kept;
  for (const Variant& v : {kSliding, kCircular}) {
    const Figure evictions = r.Counter(v.benchmark, "evictions");
    const Figure released = r.Counter(v.benchmark, "released");
    const Figure reused = r.Counter(v.benchmark, "ring_reused");
    const Figure copied = r.Counter(v.benchmark, "bytes_copied");
    const Figure min_used = r.Counter(v.benchmark, "blocks_used_min");
    const Figure max_used = r.Counter(v.benchmark, "blocks_used_max");
    std::string in_use = fixed(min_used, 0);
    if (min_used && max_used && *max_used != *min_used) {
      in_use += ".." + fixed(max_used, 0);
    }
    absl::FPrintF(out, "%-24s %9s %9s %12s %13s %14s\n", v.label,
                  fixed(evictions, 2), fixed(released, 3), fixed(reused, 3),
                  fixed(copied, 0), in_use);
    if (copied) none_copied = none_copied.value_or(true) && *copied == 0;
    if (v.ring && released && reused && min_used && max_used) {
      ring_kept = *released == 0 && *reused > 0 && *min_used == *max_used;
    }
  }
  auto ok = [](const std::optional<bool>& check) -> const char* {
    if (!check) return "n/a";
    return *check ? "OK" : "FAILED";
  };
  absl::FPrintF(out, "%-61s %s\n",
                "check: no policy copied token data (bytes_copied == 0)",
                ok(none_copied));
  absl::FPrintF(out, "%-61s %s\n",
                "check: ring released no block, reused its own, held steady",
                ok(ring_kept));

  const Figure sliding = growth(kSliding);
  const Figure circular = growth(kCircular);
  targets.push_back({"sliding window step 64k/1k <= 1.1", FormatRatio(sliding),
                     Verdict(sliding, sliding && *sliding <= 1.1)});
  targets.push_back({"circular buffer step 64k/1k <= 1.1",
                     FormatRatio(circular),
                     Verdict(circular, circular && *circular <= 1.1)});
}

}  // namespace kvpage::bench
