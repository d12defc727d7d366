// Snapshot files: the writer replaces a file atomically, through a temporary
// of its own, and only a regular file; the reader reads only regular files
// and checks the declared size before it reads or allocates the payload.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <iterator>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvpage/snapshot.h"
#include "tests/cache_fingerprint.h"
#include "tests/snapshot_fixture.h"
#include "tests/test_util.h"

namespace kvpage {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string Message(const absl::Status& s) { return std::string(s.message()); }

// Each test gets a fresh directory (removed afterwards, with all in it) and
// the showcase cache.
class SnapshotFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string dir = absl::StrCat(::testing::TempDir(), "/snapfile_XXXXXX");
    ASSERT_NE(mkdtemp(dir.data()), nullptr) << std::strerror(errno);
    dir_ = dir;
    auto cache = testing::BuildShowcase();
    ASSERT_TRUE(cache.ok()) << cache.status();
    cache_ = *std::move(cache);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  std::string Path(const std::string& name) const {
    return absl::StrCat(dir_, "/", name);
  }
  // The names in the directory, sorted.
  std::vector<std::string> Names() const {
    std::vector<std::string> names;
    for (const fs::directory_entry& e : fs::directory_iterator(dir_)) {
      names.push_back(e.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  std::string dir_;
  std::unique_ptr<KVCache> cache_;
};

// ---- The writer ----

TEST_F(SnapshotFileTest, AUsersTmpFileIsLeftAlone) {
  const std::string path = Path("kv.snap");
  WriteFile(path + ".tmp", "mine");
  ASSERT_TRUE(cache_->WriteSnapshot(path).ok());
  EXPECT_EQ(ReadFile(path + ".tmp"), "mine");
  EXPECT_TRUE(ReadSnapshot(path).ok());
  ASSERT_TRUE(cache_->WriteSnapshot(path).ok());  // replacing it, too
  EXPECT_EQ(ReadFile(path + ".tmp"), "mine");
  EXPECT_THAT(Names(), ElementsAre("kv.snap", "kv.snap.tmp"));
}

TEST_F(SnapshotFileTest, ANewFileTakesTheUmaskAReplacedOneKeepsItsMode) {
  const std::string path = Path("kv.snap");
  const mode_t old_mask = umask(027);
  const absl::Status s = cache_->WriteSnapshot(path);
  umask(old_mask);
  ASSERT_TRUE(s.ok()) << s;
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  // A replaced file keeps its own mode: a private snapshot stays private.
  ASSERT_EQ(chmod(path.c_str(), 0600), 0);
  ASSERT_TRUE(cache_->WriteSnapshot(path).ok());
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

// Writers of one path (a const call: allowed concurrently) while readers
// read it: every write succeeds, every read is a whole snapshot, one of
// those written, and no temporary is left behind.
TEST_F(SnapshotFileTest, ConcurrentWritersOfOnePathAndReaders) {
  const std::string path = Path("kv.snap");
  absl::StatusOr<Snapshot> meta = cache_->TakeSnapshot({});
  absl::StatusOr<Snapshot> data =
      cache_->TakeSnapshot({.include_token_data = true});
  ASSERT_TRUE(meta.ok() && data.ok());
  ASSERT_TRUE(cache_->WriteSnapshot(path).ok());
  constexpr int kWriters = 4, kWrites = 40, kReaders = 2;
  std::atomic<int> writers_left{kWriters}, write_errors{0}, read_errors{0};
  std::atomic<int> reads{0};
  std::mutex mu;
  std::string first_error;
  const auto note = [&](std::atomic<int>& count, const std::string& what) {
    if (count.fetch_add(1) == 0) {
      std::lock_guard<std::mutex> lock(mu);
      if (first_error.empty()) first_error = what;
    }
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      for (int i = 0; i < kWrites; ++i) {
        const absl::Status s = cache_->WriteSnapshot(
            path, {.include_token_data = (w + i) % 2 == 1});
        if (!s.ok()) note(write_errors, s.ToString());
      }
      writers_left.fetch_sub(1);
    });
  }
  for (int r = 0; r < kReaders; ++r) {
    threads.emplace_back([&] {
      do {
        absl::StatusOr<Snapshot> read = ReadSnapshot(path);
        reads.fetch_add(1);
        if (!read.ok()) {
          note(read_errors, read.status().ToString());
        } else if (!(*read == *meta) && !(*read == *data)) {
          note(read_errors, "a snapshot that was never written");
        }
      } while (writers_left.load() > 0);
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(write_errors.load(), 0) << first_error;
  EXPECT_EQ(read_errors.load(), 0)
      << first_error << " (" << reads.load() << " reads)";
  EXPECT_THAT(Names(), ElementsAre("kv.snap"));
}

// What a snapshot must not replace, made at `path`, and a check that it is
// still there as it was.
struct SpecialFile {
  std::string kind;  // as the message names it
  std::function<bool(const std::string& path)> make;
  std::function<void(const std::string& path)> expect_unchanged;
};

std::vector<SpecialFile> SpecialFiles(const std::string& dir) {
  const std::string target = dir + "/target";
  std::vector<SpecialFile> files = {
      {"symbolic link",
       [target](const std::string& path) {
         WriteFile(target, "the target's bytes");
         return symlink(target.c_str(), path.c_str()) == 0;
       },
       [target](const std::string& path) {
         EXPECT_TRUE(fs::is_symlink(path));
         EXPECT_EQ(fs::read_symlink(path).string(), target);
         EXPECT_EQ(ReadFile(target), "the target's bytes");
       }},
      {"symbolic link",  // dangling
       [dir](const std::string& path) {
         return symlink((dir + "/nowhere").c_str(), path.c_str()) == 0;
       },
       [dir](const std::string& path) {
         EXPECT_TRUE(fs::is_symlink(path));
         EXPECT_FALSE(fs::exists(dir + "/nowhere"));
       }},
      {"FIFO",
       [](const std::string& path) { return mkfifo(path.c_str(), 0600) == 0; },
       [](const std::string& path) { EXPECT_TRUE(fs::is_fifo(path)); }},
      {"directory",
       [](const std::string& path) { return mkdir(path.c_str(), 0700) == 0; },
       [](const std::string& path) {
         EXPECT_TRUE(fs::is_directory(path));
         EXPECT_TRUE(fs::is_empty(path));
       }},
      {"socket",
       [](const std::string& path) {
         sockaddr_un addr{};
         addr.sun_family = AF_UNIX;
         if (path.size() >= sizeof(addr.sun_path)) return false;
         std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
         const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
         const bool bound =
             bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
         close(fd);
         return bound;
       },
       [](const std::string& path) { EXPECT_TRUE(fs::is_socket(path)); }},
  };
  // A character device like /dev/null (1, 3), made where the test may
  // make one (root; elsewhere the case is skipped): a real device node is
  // never put at risk.
  files.push_back({"character device",
                   [](const std::string& path) {
                     return mknod(path.c_str(), S_IFCHR | 0600,
                                  makedev(1, 3)) == 0;
                   },
                   [](const std::string& path) {
                     struct stat st;
                     ASSERT_EQ(lstat(path.c_str(), &st), 0);
                     EXPECT_TRUE(S_ISCHR(st.st_mode));
                     EXPECT_EQ(st.st_rdev, makedev(1, 3));
                   }});
  return files;
}

TEST_F(SnapshotFileTest, OnlyARegularFileIsReplaced) {
  const testing::CacheFingerprint before = testing::Fingerprint(*cache_);
  int made = 0;
  for (const SpecialFile& f : SpecialFiles(dir_)) {
    SCOPED_TRACE(f.kind);
    const std::string path = Path(absl::StrCat("special", made, ".snap"));
    if (!f.make(path)) {
      std::cerr << "skipped: cannot make a " << f.kind << " here ("
                << std::strerror(errno) << ")\n";
      continue;
    }
    ++made;
    const absl::Status s = cache_->WriteSnapshot(path);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_THAT(Message(s), HasSubstr(path));
    EXPECT_THAT(Message(s), HasSubstr(f.kind));
    f.expect_unchanged(path);
    EXPECT_UNCHANGED(*cache_, before);
  }
  EXPECT_GE(made, 5);
  for (const std::string& name : Names()) {
    EXPECT_THAT(name, ::testing::Not(HasSubstr(".tmp"))) << "left behind";
  }
}

TEST_F(SnapshotFileTest, ErrorsLeaveTheTargetAlone) {
  const testing::CacheFingerprint before = testing::Fingerprint(*cache_);
  // A directory that does not exist.
  const absl::Status missing = cache_->WriteSnapshot(Path("missing/kv.snap"));
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound) << missing;
  EXPECT_THAT(Message(missing), HasSubstr(Path("missing/kv.snap")));
  EXPECT_THAT(Names(), ::testing::IsEmpty());
  EXPECT_UNCHANGED(*cache_, before);
  // A write that fails half-way (the file-size limit; SIGXFSZ ignored so
  // that write() returns EFBIG) leaves the old file as it was, and no
  // temporary.
  const std::string path = Path("kv.snap");
  WriteFile(path, "old");
  rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  rlimit small = old_limit;
  small.rlim_cur = 1000;
  const sighandler_t old_handler = signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  const absl::Status failed = cache_->WriteSnapshot(path);
  setrlimit(RLIMIT_FSIZE, &old_limit);
  signal(SIGXFSZ, old_handler);
  EXPECT_FALSE(failed.ok());
  EXPECT_THAT(Message(failed), HasSubstr(path));
  EXPECT_EQ(ReadFile(path), "old");
  EXPECT_THAT(Names(), ElementsAre("kv.snap"));
  EXPECT_UNCHANGED(*cache_, before);
}

// ---- The reader ----

// Reads `path` on another thread: a reader that blocks fails the test
// instead of hanging it (a FIFO's open is then given a writer, which ends
// the read).
absl::StatusOr<Snapshot> ReadWithin(const std::string& path,
                                    std::chrono::seconds limit) {
  std::future<absl::StatusOr<Snapshot>> result =
      std::async(std::launch::async, [path] { return ReadSnapshot(path); });
  if (result.wait_for(limit) == std::future_status::timeout) {
    ADD_FAILURE() << "ReadSnapshot(" << path << ") still blocked after "
                  << limit.count() << " s";
    const int fd = open(path.c_str(), O_WRONLY | O_NONBLOCK);
    if (fd >= 0) close(fd);
  }
  return result.get();
}

TEST_F(SnapshotFileTest, OnlyARegularFileIsRead) {
  // /dev/zero never ends: refused at once, not read until memory runs out.
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<Snapshot> zero =
      ReadWithin("/dev/zero", std::chrono::seconds(20));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kFailedPrecondition)
      << zero.status();
  EXPECT_THAT(Message(zero.status()), HasSubstr("/dev/zero"));
  EXPECT_THAT(Message(zero.status()), HasSubstr("character device"));
  // A FIFO without a writer: refused, not waited on.
  const std::string fifo = Path("fifo.snap");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  absl::StatusOr<Snapshot> from_fifo =
      ReadWithin(fifo, std::chrono::seconds(10));
  EXPECT_EQ(from_fifo.status().code(), absl::StatusCode::kFailedPrecondition)
      << from_fifo.status();
  EXPECT_THAT(Message(from_fifo.status()), HasSubstr("FIFO"));
  // A directory.
  absl::StatusOr<Snapshot> from_dir = ReadSnapshot(dir_);
  EXPECT_EQ(from_dir.status().code(), absl::StatusCode::kFailedPrecondition)
      << from_dir.status();
  EXPECT_THAT(Message(from_dir.status()), HasSubstr("directory"));
  // A symbolic link is followed: to a snapshot it reads, to a device not.
  ASSERT_TRUE(cache_->WriteSnapshot(Path("kv.snap")).ok());
  ASSERT_EQ(symlink(Path("kv.snap").c_str(), Path("link.snap").c_str()), 0);
  EXPECT_TRUE(ReadSnapshot(Path("link.snap")).ok());
  ASSERT_EQ(symlink("/dev/zero", Path("zero.snap").c_str()), 0);
  EXPECT_EQ(ReadSnapshot(Path("zero.snap")).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // A file that does not exist.
  EXPECT_EQ(ReadSnapshot(Path("none.snap")).status().code(),
            absl::StatusCode::kNotFound);
}

// Sets the header's payload size (bytes 16-23, little-endian).
void SetDeclaredSize(std::string& bytes, uint64_t size) {
  for (int i = 0; i < 8; ++i)
    bytes[16 + i] = static_cast<char>(size >> (8 * i));
}

TEST_F(SnapshotFileTest, TheDeclaredSizeIsCheckedBeforeReading) {
  absl::StatusOr<Snapshot> snap =
      cache_->TakeSnapshot({.include_token_data = true});
  ASSERT_TRUE(snap.ok());
  const std::string good = EncodeSnapshot(*snap);
  const std::string path = Path("kv.snap");
  const auto read = [&](const std::string& bytes) {
    WriteFile(path, bytes);
    absl::StatusOr<Snapshot> s = ReadSnapshot(path);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument)
        << s.status();
    EXPECT_THAT(Message(s.status()), HasSubstr(path));
    return Message(s.status());
  };
  EXPECT_THAT(read(good.substr(0, good.size() - 10)), HasSubstr("truncated"));
  EXPECT_THAT(read(good + "xyz"), HasSubstr("after the payload"));
  EXPECT_THAT(read(good.substr(0, 20)), HasSubstr("header"));
  EXPECT_THAT(read(""), HasSubstr("header"));
  std::string bigger = good;
  SetDeclaredSize(bigger, good.size() + 1000);
  EXPECT_THAT(read(bigger), HasSubstr("truncated"));
  // An absurd size is refused before anything is allocated for it (ASan
  // would report an allocation of 2^62 bytes).
  std::string absurd = good;
  SetDeclaredSize(absurd, uint64_t{1} << 62);
  EXPECT_THAT(read(absurd), HasSubstr("limit"));
  WriteFile(path, good);
  EXPECT_TRUE(ReadSnapshot(path).ok());
}

// A sparse file of `total` bytes whose header agrees with its size: refused
// at once with `code`, the message naming `why`, without reading (or
// allocating) the payload.
void ExpectSparseFileRefused(const std::string& path, const std::string& head,
                             uint64_t total, absl::StatusCode code,
                             const std::string& why) {
  std::string header = head;
  SetDeclaredSize(header, total - 32);
  WriteFile(path, header);
  if (truncate(path.c_str(), static_cast<off_t>(total)) != 0) {
    GTEST_SKIP() << "no sparse file of " << total
                 << " bytes here: " << std::strerror(errno);
  }
  absl::StatusOr<Snapshot> s = ReadWithin(path, std::chrono::seconds(20));
  EXPECT_EQ(s.status().code(), code) << s.status();
  EXPECT_THAT(Message(s.status()), HasSubstr(why));
}

// Just above kMaxSnapshotBytes; and below it but above half this machine's
// memory (the reader holds a payload whole).
TEST_F(SnapshotFileTest, SparseFilesAboveTheLimitsAreRefused) {
  const std::string head =
      EncodeSnapshot(*cache_->TakeSnapshot({})).substr(0, 32);
  ExpectSparseFileRefused(Path("huge.snap"), head,
                          static_cast<uint64_t>(kMaxSnapshotBytes) + 1,
                          absl::StatusCode::kInvalidArgument, "limit");
  const uint64_t memory = static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) *
                          static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t total = memory / 2 + (uint64_t{1} << 30);
  ASSERT_LT(total, static_cast<uint64_t>(kMaxSnapshotBytes));
  ExpectSparseFileRefused(Path("sparse.snap"), head, total,
                          absl::StatusCode::kResourceExhausted, "memory");
}

}  // namespace
}  // namespace kvpage
