// Snapshot files: a reader that checks the file and its header before it
// reads (or allocates) the payload, and a writer that replaces the file
// atomically through a temporary of its own.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <new>
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

// Writes all `n` bytes, retrying short writes and EINTR: 0, or errno.
int WriteFully(int fd, const char* data, size_t n) {
  size_t done = 0;
  while (done < n) {
    const ssize_t put = write(fd, data + done, n - done);
    if (put < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    done += static_cast<size_t>(put);
  }
  return 0;
}

// OK when `path` does not exist or is a regular file (a snapshot may replace
// it; then `mode`, when given, receives its permission bits, else -1);
// FailedPrecondition naming what it is otherwise, a symbolic link included
// (lstat: the link itself, not its target); other lstat errors as their
// Status codes.
absl::Status CheckReplaceable(const std::string& path, int* mode = nullptr) {
  if (mode != nullptr) *mode = -1;
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) {
    // A new file (or a missing directory, which creating the temporary
    // reports as NotFound).
    if (errno == ENOENT) return absl::OkStatus();
    return absl::ErrnoToStatus(errno, absl::StrCat("WriteSnapshot: ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    return NotRegular("WriteSnapshot: ", path, st.st_mode);
  }
  if (mode != nullptr) *mode = static_cast<int>(st.st_mode & 07777);
  return absl::OkStatus();
}

// Half the machine's physical memory: the most ReadSnapshot allocates for a
// payload, which it holds whole (a sparse file may declare any size its
// apparent size matches, and reads back as zeros).
uint64_t ReadableBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return static_cast<uint64_t>(kMaxSnapshotBytes);
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) / 2;
}

// Creates a new file beside `path` with a name no other writer uses
// (O_EXCL; retried on a collision), mode 0666 less the umask, as a newly
// written file gets. Returns its descriptor and sets `tmp` to its name, or
// -errno.
int CreateTemporary(const std::string& path, std::string& tmp) {
  static std::atomic<uint64_t> counter{0};
  const uint64_t salt = static_cast<uint64_t>(
      std::chrono::steady_clock::now().time_since_epoch().count());
  for (int attempt = 0; attempt < 100; ++attempt) {
    tmp = absl::StrFormat("%s.tmp-%d-%d-%06x", path, getpid(),
                          counter.fetch_add(1, std::memory_order_relaxed),
                          (salt + attempt) & 0xffffff);
    const int fd =
        open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) return fd;
    if (errno != EEXIST) return -errno;
  }
  return -EEXIST;
}

// Makes a rename in `path`'s directory durable; best effort (the file is in
// place whatever this returns, so its errors are not the writer's).
void SyncDirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : path.substr(0, slash);
  Fd fd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() >= 0) (void)fsync(fd.get());
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
  const uint64_t readable = ReadableBytes();
  if (header->payload_bytes > readable) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%s: snapshot: the header says %d payload bytes; the reader holds a "
        "snapshot whole, and takes at most half of this machine's memory "
        "(%d bytes)",
        path, header->payload_bytes, readable));
  }
  const size_t total =
      static_cast<size_t>(kSnapshotHeaderBytes + header->payload_bytes);
  std::unique_ptr<char[]> bytes(new (std::nothrow) char[total]);
  if (bytes == nullptr) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%s: snapshot: cannot allocate %d bytes to read it", path, total));
  }
  std::memcpy(bytes.get(), head, sizeof(head));
  const int64_t payload_read =
      ReadFully(fd.get(), bytes.get() + kSnapshotHeaderBytes,
                static_cast<size_t>(header->payload_bytes));
  if (payload_read < 0) return error(static_cast<int>(-payload_read));
  // The file changed size while it was read: a writer that truncates or
  // appends in place (WriteSnapshot renames a new file over it instead).
  char extra;
  const int64_t more = ReadFully(fd.get(), &extra, 1);
  if (more < 0) return error(static_cast<int>(-more));
  if (absl::Status s = internal::CheckPayloadBytes(
          *header, static_cast<uint64_t>(payload_read + more));
      !s.ok()) {
    return InFile(path, s);
  }
  absl::StatusOr<Snapshot> snap =
      ParseSnapshot(std::string_view(bytes.get(), total));
  if (!snap.ok()) return InFile(path, snap.status());
  return snap;
}

absl::Status WriteSnapshotFile(const Snapshot& snapshot,
                               const std::string& path) {
  int old_mode = -1;
  if (absl::Status s = CheckReplaceable(path, &old_mode); !s.ok()) return s;
  const std::string bytes = EncodeSnapshot(snapshot);
  if (bytes.size() > static_cast<uint64_t>(kMaxSnapshotBytes)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "WriteSnapshot: %s: %d bytes, above the %d-byte limit on a snapshot "
        "file (kMaxSnapshotBytes); write it without token data",
        path, bytes.size(), kMaxSnapshotBytes));
  }
  std::string tmp;
  Fd fd(CreateTemporary(path, tmp));
  if (fd.get() < 0) {
    return absl::ErrnoToStatus(
        -fd.get(),
        absl::StrCat("WriteSnapshot: create a temporary file beside ", path));
  }
  // From here on every error removes the temporary; `path` is untouched
  // until the rename, which replaces it whole.
  const auto fail = [&](int e, const char* step) {
    (void)fd.Close();
    unlink(tmp.c_str());
    return absl::ErrnoToStatus(e, absl::StrCat("WriteSnapshot: ", step, " ",
                                               tmp, " (for ", path, ")"));
  };
  // A replaced file keeps its permissions (a snapshot with token data holds
  // an engine's keys and values: one made private stays private).
  if (old_mode >= 0 && fchmod(fd.get(), static_cast<mode_t>(old_mode)) != 0) {
    return fail(errno, "fchmod");
  }
  if (int e = WriteFully(fd.get(), bytes.data(), bytes.size()); e != 0) {
    return fail(e, "write");
  }
  if (fsync(fd.get()) != 0) return fail(errno, "fsync");
  if (int e = fd.Close(); e != 0) return fail(e, "close");
  // Again, closer to the rename: a special file may have appeared meanwhile.
  if (absl::Status s = CheckReplaceable(path); !s.ok()) {
    unlink(tmp.c_str());
    return s;
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) return fail(errno, "rename");
  SyncDirectoryOf(path);
  return absl::OkStatus();
}

}  // namespace kvpage
