// Snapshot files: the reader reads only regular files and checks the
// declared size before it reads or allocates the payload.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvpage/snapshot.h"
#include "tests/snapshot_fixture.h"
#include "tests/test_util.h"

namespace kvpage {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

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

// A sparse file just above kMaxSnapshotBytes whose header agrees with its
// size: refused by the limit, without reading a byte of the payload.
TEST_F(SnapshotFileTest, AFileAboveTheLimitIsRefused) {
  std::string header = EncodeSnapshot(*cache_->TakeSnapshot({})).substr(0, 32);
  const uint64_t total = static_cast<uint64_t>(kMaxSnapshotBytes) + 1;
  SetDeclaredSize(header, total - 32);
  const std::string path = Path("huge.snap");
  WriteFile(path, header);
  if (truncate(path.c_str(), static_cast<off_t>(total)) != 0) {
    GTEST_SKIP() << "no sparse file of " << total
                 << " bytes here: " << std::strerror(errno);
  }
  absl::StatusOr<Snapshot> s = ReadWithin(path, std::chrono::seconds(20));
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument)
      << s.status();
  EXPECT_THAT(Message(s.status()), HasSubstr("limit"));
}

}  // namespace
}  // namespace kvpage
