// cache/snapshot_internal.h — the snapshot file's fixed header, shared by the
// parser (snapshot.cc) and the file reader (snapshot_file.cc), which checks
// the header before it reads, or allocates, anything else.
#ifndef KVPAGE_CACHE_SNAPSHOT_INTERNAL_H_
#define KVPAGE_CACHE_SNAPSHOT_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvpage::internal {

// "KVPGSNAP", u32 version, u32 flags, u64 payload bytes, u64 checksum.
inline constexpr size_t kSnapshotHeaderBytes = 32;

struct SnapshotHeader {
  uint32_t version = 0;
  uint32_t flags = 0;
  uint64_t payload_bytes = 0;
  uint64_t checksum = 0;
};

// Parses the first kSnapshotHeaderBytes of `bytes`: InvalidArgument when
// there are fewer, for a bad magic or unknown flags; FailedPrecondition for
// another version. O(1).
[[nodiscard]] absl::StatusOr<SnapshotHeader> ParseSnapshotHeader(
    std::string_view bytes);

// InvalidArgument ("truncated", or bytes after the payload) unless the
// header's payload size is `payload_bytes`, what follows the header. O(1).
[[nodiscard]] absl::Status CheckPayloadBytes(const SnapshotHeader& header,
                                             uint64_t payload_bytes);

}  // namespace kvpage::internal

#endif  // KVPAGE_CACHE_SNAPSHOT_INTERNAL_H_
