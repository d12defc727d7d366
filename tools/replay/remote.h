// tools/replay/remote.h — kvpage-replay's runs with the Redis tier
// (kvpage/remote_tier.h): the same trace and pool as a run without it, with
// a RemoteTier attached, and what the tier itself counted.
//
// Every run writes under a model id of its own (the fingerprint of a
// block's keys covers it, docs/remote.md), so that it starts from an empty
// store: no run sees another's blocks, nor an earlier invocation's, and
// nothing an operator keeps in the server is read, overwritten or deleted.
// The blocks written stay in the server (remote.bytes_written says how
// much); point the replay at a scratch server or database.
//
// Write-back is asynchronous, as in an engine: a block evicted and asked
// for again before the writer thread has sent it is a miss, and a block
// offered while the queue is full is dropped (queue_drops). The replay does
// not wait for the trace's timestamps, so it evicts faster than an engine
// would; size the queue (queue_blocks) for it and read the drops.
//
// Built with the Redis tier (CMake KVPAGE_BUILD_REMOTE) from remote.cc;
// without it, from remote_off.cc, whose functions refuse.
//
// Usage:
//   RemoteOptions remote{.url = "redis://127.0.0.1:6379"};
//   absl::StatusOr<std::string> where = CheckRemote(remote);  // before runs
//   absl::StatusOr<RemoteRun> run = ReplayWithRemote(
//       trace, pool, options, remote, "kvpage-replay/1f2e/pool=4096");
#ifndef KVPAGE_TOOLS_REPLAY_REMOTE_H_
#define KVPAGE_TOOLS_REPLAY_REMOTE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kvpage/remote_tier.h"
#include "tools/replay/replay.h"
#include "tools/replay/trace.h"

namespace kvpage::replay {

struct RemoteOptions {
  std::string url;             // RemoteTierOptions::url
  bool write_through = false;  // TierOptions::write_through
  // RemoteTierOptions::queue_blocks. Larger than the library's 256: the
  // replay evicts a request's blocks in one burst. Measured on the
  // synthetic trace of 1000 requests at 1/8 of its working set: where the
  // writer keeps up on average (a dev build, whose replay is slower), 256
  // dropped 23100 of 77030 evicted blocks and hit 0.649 of the tokens, 4096
  // dropped none and hit 0.700; where it does not (a release build), no
  // size helps: 4096 and 2^20 both hit about 0.59, the blocks written too
  // late (tools/replay/README.md).
  int64_t queue_blocks = 4096;
};

struct RemoteRun {
  std::string model_id;   // the namespace it wrote under
  ReplayResult replay;    // the cache's view: hits include fetched blocks
  RemoteTierStats stats;  // the tier's, after its queue was written
};

// Whether this build has the Redis tier.
[[nodiscard]] bool RemoteTierBuilt();

// Parses `remote.url` and connects to the server once, before any run:
// returns the URL without its password (for reports). InvalidArgument for
// a bad URL or option, Unavailable, Unauthenticated or DeadlineExceeded
// from the server (messages never hold the password); FailedPrecondition
// when this build has no Redis tier.
[[nodiscard]] absl::StatusOr<std::string> CheckRemote(
    const RemoteOptions& remote);

// Replay(trace, pool_blocks, options) with a RemoteTier attached, connected
// for this run under `model_id`; when the replay ends, waits for the tier's
// queue to be written (RemoteTier::Flush) and reads its statistics.
// Replay's errors, and Connect's; FailedPrecondition without the Redis tier.
[[nodiscard]] absl::StatusOr<RemoteRun> ReplayWithRemote(
    const std::vector<TraceRequest>& trace, int64_t pool_blocks,
    const ReplayOptions& options, const RemoteOptions& remote,
    const std::string& model_id);

}  // namespace kvpage::replay

#endif  // KVPAGE_TOOLS_REPLAY_REMOTE_H_
