// tools/stress/remote.h — `kvpage-stress --remote URL`: the Redis tier
// (kvpage/remote_tier.h) under the serving workload. Each paged shard is
// one engine instance: it connects a RemoteTier of its own (its own
// connections and writer thread) with the run's model id, so that a block
// one shard writes is found by the others, and attaches it to its cache.
//
// This header does not need the Redis tier: a kvpage-stress built without
// it (KVPAGE_BUILD_REMOTE off) refuses --remote in CheckRemote.
//
// Thread safety: a ShardTier is used by its shard's thread (Stats and
// Flush from any thread, as RemoteTier's); the functions are pure or make
// their own connections.
#ifndef KVPAGE_TOOLS_STRESS_REMOTE_H_
#define KVPAGE_TOOLS_STRESS_REMOTE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvpage/tier.h"
#include "tools/stress/report.h"
#include "tools/stress/workload.h"

namespace kvpage::stress {

// Whether this kvpage-stress was built with the Redis tier.
[[nodiscard]] bool RemoteTierBuilt();

// A model id no other run uses: the seed, the process id and the time, so
// that runs never read each other's blocks (and never overwrite the keys
// of an engine's model) unless --remote-model-id names one.
[[nodiscard]] std::string FreshModelId(uint64_t seed);

// Before any backend runs: --remote is refused by a build without the
// tier (FailedPrecondition); its URL is parsed and the server (or the
// cluster's seed nodes) connected once, with AUTH and SELECT, then
// closed. The tier's own error otherwise (InvalidArgument for a bad URL;
// Unavailable, Unauthenticated, DeadlineExceeded from the server),
// prefixed with "--remote" and the URL without its password; the tier's
// messages never carry it. OK when --remote is not given.
[[nodiscard]] absl::Status CheckRemote(const Options& options);

// The URL as the report shows it: without its password.
[[nodiscard]] std::string RedactedRemoteUrl(const std::string& url);

// What a shard's tier needs.
struct ShardTierOptions {
  std::string url, model_id;
  int64_t fetch_timeout_ms = 0;  // 0: RemoteTierOptions' default
  // Testing: flip a byte of the first block fetched, before the cache
  // loads it (--inject-tier-corruption; the run must then exit 1).
  bool inject_corruption = false;
  int shard = 0;  // for the injection's message
};

// One shard's tier: the RemoteTier, and what the tool counts around it.
class ShardTier : public BlockTier {
 public:
  // Connects (RemoteTier::Connect's errors).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<ShardTier>> Connect(
      const ShardTierOptions& options);
  ~ShardTier() override = default;

  // Waits until every block queued so far is written or failed.
  virtual void Flush() = 0;
  // The tier's statistics under the report's names (one shard's; the
  // fetch latencies are this shard's p50 and p99).
  [[nodiscard]] virtual RemoteTierCounters Counters() const = 0;
};

}  // namespace kvpage::stress

#endif  // KVPAGE_TOOLS_STRESS_REMOTE_H_
