#include "allocator/block_pool.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <vector>

#include "allocator/host_arena.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace kvpage::internal {
namespace {

constexpr int64_t kBlockBytes = 128;

std::unique_ptr<BlockPool> MakePool(int64_t blocks) {
  auto arena = HostArena::Create(blocks, kBlockBytes, {.prefault = true});
  EXPECT_TRUE(arena.ok()) << arena.status();
  auto pool = BlockPool::Create(*std::move(arena));
  EXPECT_TRUE(pool.ok()) << pool.status();
  return *std::move(pool);
}

TEST(HostArenaTest, RejectsBadSizes) {
  EXPECT_EQ(HostArena::Create(0, 64, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HostArena::Create(4, 100, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HostArena::Create(-1, 64, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(HostArenaTest, WriteReadCopyAndAddresses) {
  auto arena =
      *HostArena::Create(4, 64, {.prefault = true, .huge_pages = true});
  ASSERT_NE(arena->host_base(), nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(arena->host_base()) % 64, 0u);
  EXPECT_EQ(arena->Address(2), arena->host_base() + 128);
  const char text[] = "kvpage";
  arena->Write(1, 10, text, sizeof(text));
  arena->Copy(1, 3);
  char back[sizeof(text)] = {};
  arena->Read(3, 10, back, sizeof(back));
  EXPECT_STREQ(back, "kvpage");
}

TEST(BlockPoolTest, AllocateIsAllOrNothing) {
  auto pool = MakePool(8);
  std::vector<BlockId> ids(3);
  ASSERT_TRUE(pool->Allocate(absl::MakeSpan(ids)).ok());
  EXPECT_EQ(std::set<BlockId>(ids.begin(), ids.end()).size(), 3u);
  for (BlockId id : ids) EXPECT_EQ(pool->ref_count(id), 1u);
  EXPECT_EQ(pool->used_blocks(), 3);
  EXPECT_EQ(pool->free_blocks(), 5);
  ASSERT_VALID(pool);

  std::vector<BlockId> too_many(6, kNoBlock);
  const absl::Status s = pool->Allocate(absl::MakeSpan(too_many));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("6 blocks requested, 5 free of 8"),
            std::string::npos)
      << s;
  EXPECT_EQ(pool->free_blocks(), 5);  // nothing taken
  EXPECT_TRUE(std::all_of(too_many.begin(), too_many.end(),
                          [](BlockId id) { return id == kNoBlock; }));
  ASSERT_VALID(pool);

  pool->Release(ids);
  EXPECT_EQ(pool->used_blocks(), 0);
  EXPECT_EQ(pool->free_blocks(), 8);
  ASSERT_VALID(pool);
}

TEST(BlockPoolTest, ReferenceCountsKeepSharedBlocks) {
  auto pool = MakePool(4);
  BlockId id;
  ASSERT_TRUE(pool->Allocate(absl::MakeSpan(&id, 1)).ok());
  pool->Retain(id);
  EXPECT_EQ(pool->ref_count(id), 2u);
  pool->Release(absl::MakeConstSpan(&id, 1));
  EXPECT_EQ(pool->ref_count(id), 1u);
  EXPECT_EQ(pool->used_blocks(), 1);
  ASSERT_VALID(pool);
  pool->Release(absl::MakeConstSpan(&id, 1));
  EXPECT_EQ(pool->used_blocks(), 0);
  ASSERT_VALID(pool);
}

TEST(BlockPoolTest, FreedBlocksAreReusedMostRecentFirst) {
  auto pool = MakePool(4);
  std::vector<BlockId> ids(2);
  ASSERT_TRUE(pool->Allocate(absl::MakeSpan(ids)).ok());
  EXPECT_EQ(ids, (std::vector<BlockId>{1, 0}));
  pool->Release(absl::MakeConstSpan(&ids[1], 1));
  BlockId again;
  ASSERT_TRUE(pool->Allocate(absl::MakeSpan(&again, 1)).ok());
  EXPECT_EQ(again, ids[1]);
  pool->Release(absl::MakeConstSpan(&again, 1));
  pool->Release(absl::MakeConstSpan(&ids[0], 1));
}

TEST(LocalCacheTest, HandsOutEveryBlockThenReportsExhaustion) {
  auto pool = MakePool(10);
  BlockPool::LocalCache local(*pool, 4);
  std::set<BlockId> seen;
  for (int i = 0; i < 10; ++i) {
    const BlockId id = local.AllocateOne();
    ASSERT_NE(id, kNoBlock) << i;
    EXPECT_TRUE(seen.insert(id).second) << "block " << id << " handed twice";
    EXPECT_EQ(pool->ref_count(id), 1u);
    ASSERT_VALID(pool);
  }
  EXPECT_EQ(local.AllocateOne(), kNoBlock);
  EXPECT_EQ(pool->used_blocks(), 10);
  for (BlockId id : seen) {
    local.Release(id);
    EXPECT_EQ(pool->ref_count(id), 0u);
    ASSERT_VALID(pool);
  }
  // The cache never holds more than its capacity: the rest went back.
  EXPECT_LE(local.size(), 4);
  EXPECT_EQ(pool->used_blocks(), 0);
  EXPECT_EQ(pool->free_blocks() + local.size(), 10);
  local.Flush();
  EXPECT_EQ(pool->free_blocks(), 10);
  ASSERT_VALID(pool);
}

TEST(LocalCacheTest, BatchAllocateIsAllOrNothing) {
  auto pool = MakePool(8);
  BlockPool::LocalCache local(*pool, 4);
  std::vector<BlockId> four(4);
  ASSERT_TRUE(local.Allocate(absl::MakeSpan(four)).ok());
  // The refill took half a cache more than asked: 2 held here, 2 on the pool.
  EXPECT_EQ(local.size(), 2);
  EXPECT_EQ(pool->free_blocks(), 2);
  std::vector<BlockId> five(5, kNoBlock);
  const absl::Status s = local.Allocate(absl::MakeSpan(five));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("5 blocks requested, 4 free of 8"),
            std::string::npos)
      << s;
  EXPECT_EQ(local.size(), 2);
  EXPECT_EQ(pool->free_blocks(), 2);
  EXPECT_EQ(pool->used_blocks(), 4);
  ASSERT_VALID(pool);
  std::vector<BlockId> rest(4);
  ASSERT_TRUE(local.Allocate(absl::MakeSpan(rest)).ok());
  EXPECT_EQ(pool->used_blocks(), 8);
  ASSERT_VALID(pool);
  for (BlockId id : four) local.Release(id);
  for (BlockId id : rest) local.Release(id);
  EXPECT_EQ(pool->used_blocks(), 0);
  ASSERT_VALID(pool);
}

TEST(LocalCacheTest, ReleaseOfASharedBlockKeepsItUsed) {
  auto pool = MakePool(4);
  BlockPool::LocalCache local(*pool);
  const BlockId id = local.AllocateOne();
  pool->Retain(id);
  local.Release(id);
  EXPECT_EQ(pool->ref_count(id), 1u);
  EXPECT_EQ(local.size() + pool->free_blocks(), 3);
  ASSERT_VALID(pool);
  local.Release(id);
  EXPECT_EQ(pool->used_blocks(), 0);
  ASSERT_VALID(pool);
}

TEST(LocalCacheTest, DestructorGivesBlocksBack) {
  auto pool = MakePool(8);
  {
    BlockPool::LocalCache local(*pool);
    local.Release(local.AllocateOne());
    EXPECT_GT(local.size(), 0);
  }
  EXPECT_EQ(pool->free_blocks(), 8);
  ASSERT_VALID(pool);
}

#if KVPAGE_HAS_ASAN
// A read through the address of a freed block is an ASan report, not a
// silent read of another sequence's tokens.
TEST(BlockPoolDeathTest, FreeBlocksArePoisoned) {
  auto pool = MakePool(4);
  BlockId id;
  ASSERT_TRUE(pool->Allocate(absl::MakeSpan(&id, 1)).ok());
  const auto* bytes =
      static_cast<const volatile char*>(pool->storage().Address(id));
  EXPECT_EQ(bytes[0], 0);  // used: readable
  pool->Release(absl::MakeConstSpan(&id, 1));
  EXPECT_DEATH((void)bytes[0], "use-after-poison");
}
#endif

}  // namespace
}  // namespace kvpage::internal
