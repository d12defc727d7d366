// tools/stress/worker.h — one shard's scheduler loop. A Worker admits its
// requests while the batch size and the shard's budget allow, prefills them
// in chunks, forks the other samples once the prompt is in, decodes one
// token per step across every layer (writing and rolling back draft
// tokens), compresses, spot-checks, verifies every sequence before it
// releases it, and samples memory as it goes.
//
// Each worker owns its backend (a shard) and shares only WorkerShared with
// the others: progress, and the stop flag the first failure raises. A
// Worker is used by one thread.
#ifndef KVPAGE_TOOLS_STRESS_WORKER_H_
#define KVPAGE_TOOLS_STRESS_WORKER_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "tools/stress/backend.h"
#include "tools/stress/driver.h"
#include "tools/stress/report.h"
#include "tools/stress/workload.h"

namespace kvpage::stress {

using Clock = std::chrono::steady_clock;

// The backend calls a worker times, in the report's order.
enum class TimedCall {
  kUpdateDecode,
  kUpdatePrefill,
  kUpdateDraft,
  kTruncate,
  kFork,
  kMatchPrefix,
  kRelease,
  kCompress,
};
inline constexpr int kTimedCalls = 8;
// Their names in the report (LatencySummary::name).
inline constexpr const char* kTimedCallNames[kTimedCalls] = {
    "update_decode", "update_prefill", "update_draft", "truncate",
    "fork",          "match_prefix",   "release",      "compress"};
using CallLatencies = std::array<LatencyRecorder, kTimedCalls>;

// What every worker of one backend shares: progress, and a stop flag raised
// by the first failure.
struct WorkerShared {
  std::atomic<int64_t> requests_done{0};
  std::atomic<bool> stop{false};
};

class Worker {
 public:
  // Runs the requests of `shard` on `backend`; stops early (cutting what is
  // in flight) at `deadline` when given.
  Worker(const RunContext& ctx, int shard, Backend& backend,
         WorkerShared& shared, Clock::time_point start,
         std::optional<Clock::time_point> deadline);

  // Runs the shard's workload to its end. The first failure stops it: the
  // backend's error with the sequence and the call named, DataLoss for a
  // verification failure, Cancelled when another worker failed first.
  [[nodiscard]] absl::Status Run();

  // What the worker measured; read once Run() has returned.
  CallLatencies latencies;
  int64_t cache_ns = 0;  // time inside the backend's calls
  WorkloadCounts counts;
  std::vector<std::pair<double, MemorySample>> memory_series;  // (s, sample)

 private:
  // One sequence of a request: the parent, or a sample forked from it.
  struct Sequence {
    uint64_t id = 0;
    int sample = 0;
    Lineage lineage;
    int64_t length = 0;    // tokens written (every layer)
    int64_t produced = 0;  // output tokens decoded
    uint64_t output_stream = 0, draft_stream = 0;
    std::mt19937_64 draft_rng;  // draft acceptance
    int64_t steps_since_compress = 0;
    bool done = false;
    // This step's draft tokens and how many of them are accepted.
    int drafts = 0, accepted = 0;
  };
  // An admitted request.
  struct InFlight {
    const Request* request = nullptr;
    int64_t cost = 0;  // bytes admission reserved for it
    bool decoding = false;
    std::vector<Sequence> seqs;  // [0] is the parent; forks after the prompt
  };
  // A sequence that decodes this step.
  struct Decoding {
    InFlight* in_flight;
    Sequence* seq;
  };

  // Steps of Run().
  absl::Status AdmitWhatFits(size_t& next);
  absl::Status SkipToNextArrival(size_t next);
  absl::Status PrefillStep(bool& expired);
  void RetireFinishedRequests();
  absl::Status Admit(const Request& request, int64_t cost);
  absl::Status MatchPrefix(InFlight& in_flight, Sequence& seq);
  absl::Status Prefill(InFlight& in_flight);
  absl::Status ForkSamples(InFlight& in_flight);
  // Steps of one decode step, over the batch of decoding sequences.
  absl::Status DecodeStep();
  std::vector<Decoding> DecodingBatch();
  bool PlanDrafts(const std::vector<Decoding>& batch);
  absl::Status WriteDrafts(const std::vector<Decoding>& batch);
  absl::Status RollBackRejectedDrafts(const std::vector<Decoding>& batch);
  absl::Status WriteNextTokens(const std::vector<Decoding>& batch);
  absl::Status FinishDecodeStep(const std::vector<Decoding>& batch);
  absl::Status CompressAllLayers(InFlight& in_flight, Sequence& seq);
  absl::Status Retire(InFlight& in_flight, Sequence& seq);
  absl::Status SpotCheck();
  absl::Status InjectCorruption();
  absl::Status Cut();

  // Runs `call` and adds its time to `which`'s latencies and to cache_ns.
  template <typename F>
  absl::Status Timed(TimedCall which, F&& call);
  // Fills rows [0, n) of keys_ and values_ with positions [first, first + n)
  // of `layer`, position p written by stream_of(p).
  template <typename StreamOf>
  void Fill(int layer, int64_t first, int64_t n, StreamOf stream_of);

  SeqLabel Label(const InFlight& in_flight, const Sequence& seq) const {
    return {
        .id = seq.id, .request = in_flight.request->id, .sample = seq.sample};
  }
  void SampleMemory();
  // Slow steps (the naive backend) still get a sample every 50 ms.
  void MaybeSampleMemory();
  // The naive backend's budget is spent.
  bool Expired() const;

  const RunContext& ctx_;
  const Options& options_;
  int shard_;
  Backend& backend_;
  WorkerShared& shared_;
  Clock::time_point start_;
  std::optional<Clock::time_point> deadline_;
  Clock::time_point last_sample_;
  PatternTable pattern_;
  int64_t token_elems_;
  std::mt19937_64 spot_check_rng_;
  std::vector<uint16_t> keys_, values_;  // what the next Write writes
  std::vector<const Request*> pending_;  // the shard's requests, in order
  int64_t max_in_flight_ = 1;            // the shard's share of concurrency
  std::vector<std::unique_ptr<InFlight>> in_flight_;
  int64_t reserved_ = 0;  // bytes the requests in flight reserved
  int64_t step_ = 0;
  bool injected_ = false;
};

}  // namespace kvpage::stress

#endif  // KVPAGE_TOOLS_STRESS_WORKER_H_
