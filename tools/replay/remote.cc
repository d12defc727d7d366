// kvpage-replay's runs with the Redis tier (tools/replay/remote.h), for
// builds with it (KVPAGE_BUILD_REMOTE).
#include "tools/replay/remote.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kvpage/remote_tier.h"
#include "remote/redis_url.h"

namespace kvpage::replay {
namespace {

RemoteTierOptions TierOptionsOf(const RemoteOptions& remote,
                                const std::string& model_id) {
  return RemoteTierOptions{.url = remote.url,
                           .model_id = model_id,
                           .queue_blocks = remote.queue_blocks};
}

}  // namespace

bool RemoteTierBuilt() { return true; }

absl::StatusOr<std::string> CheckRemote(const RemoteOptions& remote) {
  absl::StatusOr<std::unique_ptr<RemoteTier>> tier =
      RemoteTier::Connect(TierOptionsOf(remote, "kvpage-replay/check"));
  if (!tier.ok()) return tier.status();
  absl::StatusOr<remote::RedisTarget> target =
      remote::ParseRedisUrl(remote.url);
  if (!target.ok()) return target.status();  // Connect parsed it already
  return remote::RedactedUrl(*target);
}

absl::StatusOr<RemoteRun> ReplayWithRemote(
    const std::vector<TraceRequest>& trace, int64_t pool_blocks,
    const ReplayOptions& options, const RemoteOptions& remote,
    const std::string& model_id) {
  absl::StatusOr<std::unique_ptr<RemoteTier>> tier =
      RemoteTier::Connect(TierOptionsOf(remote, model_id));
  if (!tier.ok()) return tier.status();
  absl::StatusOr<ReplayResult> replay =
      Replay(trace, pool_blocks, options,
             {.tier = tier->get(),
              .options = {.write_through = remote.write_through}});
  if (!replay.ok()) return replay.status();
  // The hit rates are in; the counts of blocks written are complete once
  // what is still queued is written.
  (*tier)->Flush();
  return RemoteRun{.model_id = model_id,
                   .replay = *std::move(replay),
                   .stats = (*tier)->Stats()};
}

}  // namespace kvpage::replay
