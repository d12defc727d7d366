// kvpage-replay without the Redis tier (built with KVPAGE_BUILD_REMOTE
// OFF): tools/replay/remote.h's functions refuse.
#include <string>
#include <vector>

#include "tools/replay/remote.h"

namespace kvpage::replay {
namespace {

absl::Status NotBuilt() {
  return absl::FailedPreconditionError(
      "this kvpage-replay was built without the Redis tier "
      "(CMake option KVPAGE_BUILD_REMOTE=OFF)");
}

}  // namespace

bool RemoteTierBuilt() { return false; }

absl::StatusOr<std::string> CheckRemote(const RemoteOptions&) {
  return NotBuilt();
}

absl::StatusOr<RemoteRun> ReplayWithRemote(const std::vector<TraceRequest>&,
                                           int64_t, const ReplayOptions&,
                                           const RemoteOptions&,
                                           const std::string&) {
  return NotBuilt();
}

}  // namespace kvpage::replay
