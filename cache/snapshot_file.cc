// Snapshot files: a reader that checks the file and its header before it
// reads (or allocates) the payload, and the writer.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cache/snapshot_internal.h"
#include "kvpage/snapshot.h"

namespace kvpage {
namespace {

using internal::kSnapshotHeaderBytes;

// What a file that is not a regular file is, for messages.
const char* FileKind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "a special file";
}

absl::Status NotRegular(const char* what, const std::string& path,
                        mode_t mode) {
  return absl::FailedPreconditionError(
      absl::StrCat(what, path, " is ", FileKind(mode), ", not a regular file"));
}

// Prefixes a parser's message with the file it came from.
absl::Status InFile(const std::string& path, const absl::Status& status) {
  return absl::Status(status.code(),
                      absl::StrCat(path, ": ", status.message()));
}

// A file descriptor, closed when it goes out of scope.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { (void)Close(); }

  int get() const { return fd_; }
  // Closes now: 0, or close's errno (the descriptor is released either way).
  int Close() {
    if (fd_ < 0) return 0;
    const int result = close(fd_);
    fd_ = -1;
    return result == 0 ? 0 : errno;
  }

 private:
  int fd_;
};

// Reads up to `n` bytes, retrying short reads and EINTR: the bytes read
// (fewer than `n` only at the end of the file), or -errno.
int64_t ReadFully(int fd, char* out, size_t n) {
  size_t done = 0;
  while (done < n) {
    const ssize_t got = read(fd, out + done, n - done);
    if (got < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (got == 0) break;
    done += static_cast<size_t>(got);
  }
  return static_cast<int64_t>(done);
}

}  // namespace

absl::StatusOr<Snapshot> ReadSnapshot(const std::string& path) {
  const auto error = [&](int e) {
    return absl::ErrnoToStatus(e, absl::StrCat("snapshot ", path));
  };
  // stat before open: opening a FIFO waits for a writer, and opening a
  // device may act on it. O_NONBLOCK covers a FIFO put there in between.
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return error(errno);
  if (!S_ISREG(st.st_mode)) return NotRegular("snapshot ", path, st.st_mode);
  Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (fd.get() < 0) return error(errno);
  if (fstat(fd.get(), &st) != 0) return error(errno);
  if (!S_ISREG(st.st_mode)) return NotRegular("snapshot ", path, st.st_mode);

  // The header first; then the payload it declares, within the limit and
  // the file's size, before anything is allocated for it.
  char head[kSnapshotHeaderBytes];
  const int64_t got = ReadFully(fd.get(), head, sizeof(head));
  if (got < 0) return error(static_cast<int>(-got));
  absl::StatusOr<internal::SnapshotHeader> header =
      internal::ParseSnapshotHeader(
          std::string_view(head, static_cast<size_t>(got)));
  if (!header.ok()) return InFile(path, header.status());
  constexpr uint64_t kMaxPayload =
      static_cast<uint64_t>(kMaxSnapshotBytes) - kSnapshotHeaderBytes;
  if (header->payload_bytes > kMaxPayload) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: snapshot: the header says %d payload bytes, above the %d-byte "
        "limit on a snapshot file (kMaxSnapshotBytes)",
        path, header->payload_bytes, kMaxSnapshotBytes));
  }
  const uint64_t file_payload =
      static_cast<uint64_t>(st.st_size) > kSnapshotHeaderBytes
          ? static_cast<uint64_t>(st.st_size) - kSnapshotHeaderBytes
          : 0;
  if (absl::Status s = internal::CheckPayloadBytes(*header, file_payload);
      !s.ok()) {
    return InFile(path, s);
  }
  std::string bytes(kSnapshotHeaderBytes + header->payload_bytes, '\0');
  std::memcpy(bytes.data(), head, sizeof(head));
  const int64_t read = ReadFully(fd.get(), bytes.data() + kSnapshotHeaderBytes,
                                 static_cast<size_t>(header->payload_bytes));
  if (read < 0) return error(static_cast<int>(-read));
  // The file changed size while it was read: a writer that truncates or
  // appends in place (WriteSnapshot renames a new file over it instead).
  char extra;
  const int64_t more = ReadFully(fd.get(), &extra, 1);
  if (more < 0) return error(static_cast<int>(-more));
  if (absl::Status s = internal::CheckPayloadBytes(
          *header, static_cast<uint64_t>(read + more));
      !s.ok()) {
    return InFile(path, s);
  }
  absl::StatusOr<Snapshot> snap = ParseSnapshot(bytes);
  if (!snap.ok()) return InFile(path, snap.status());
  return snap;
}

absl::Status WriteSnapshotFile(const Snapshot& snapshot,
                               const std::string& path) {
  const std::string bytes = EncodeSnapshot(snapshot);
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    return absl::ErrnoToStatus(errno,
                               absl::StrCat("WriteSnapshot: open ", tmp));
  }
  const bool written =
      std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  const int write_error = errno;
  const bool closed = std::fclose(f) == 0;
  const int close_error = errno;
  if (!written || !closed) {
    std::remove(tmp.c_str());
    return absl::ErrnoToStatus(written ? close_error : write_error,
                               absl::StrCat("WriteSnapshot: write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    std::remove(tmp.c_str());
    return absl::ErrnoToStatus(error,
                               absl::StrCat("WriteSnapshot: rename to ", path));
  }
  return absl::OkStatus();
}

}  // namespace kvpage
