// Several threads allocate, write, check and release blocks of one pool at
// once, through their own LocalCaches and through the shared path. Runs
// under ThreadSanitizer in CI (label "threads").
#include <atomic>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "allocator/block_pool.h"
#include "allocator/host_arena.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace kvpage::internal {
namespace {

constexpr int64_t kBlockBytes = 64;
constexpr int kThreads = 4;

std::unique_ptr<BlockPool> MakePool(int64_t blocks) {
  return *BlockPool::Create(*HostArena::Create(blocks, kBlockBytes, {}));
}

// Every held block carries its holder's stamp; finding another stamp means
// two holders got the same block.
void Stamp(BlockPool& pool, BlockId id, uint64_t stamp) {
  pool.storage().Write(id, 0, &stamp, sizeof(stamp));
}
uint64_t ReadStamp(const BlockPool& pool, BlockId id) {
  uint64_t stamp;
  pool.storage().Read(id, 0, &stamp, sizeof(stamp));
  return stamp;
}

TEST(PoolThreadTest,
     ConcurrentLocalCachesAndSharedPathNeverHandOutABlockTwice) {
  // Fewer blocks than one thread wants at its peak (40): every thread runs
  // into exhaustion, whatever the scheduling.
  auto pool = MakePool(36);
  std::atomic<int> ready{0};
  std::atomic<int64_t> exhausted{0};
  std::atomic<int64_t> collisions{0};
  auto worker = [&](int t) {
    std::mt19937 rng(static_cast<unsigned>(t));
    BlockPool::LocalCache local(*pool, 8);
    ready.fetch_add(1);
    while (ready.load() < kThreads) std::this_thread::yield();
    std::vector<BlockId> held;
    for (int step = 0; step < 20000; ++step) {
      const int op = static_cast<int>(rng() % 4);
      if (op == 0 && held.size() < 40) {
        const BlockId id = local.AllocateOne();
        if (id == kNoBlock) {
          exhausted.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        Stamp(*pool, id, (uint64_t{1} << 32) * static_cast<unsigned>(t) + id);
        held.push_back(id);
      } else if (op == 1 && held.size() < 40) {
        std::vector<BlockId> batch(1 + rng() % 5);
        if (!pool->Allocate(absl::MakeSpan(batch)).ok()) {
          exhausted.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        for (BlockId id : batch) {
          Stamp(*pool, id, (uint64_t{1} << 32) * static_cast<unsigned>(t) + id);
          held.push_back(id);
        }
      } else if (!held.empty()) {
        const size_t i = rng() % held.size();
        const BlockId id = held[i];
        if (ReadStamp(*pool, id) !=
            (uint64_t{1} << 32) * static_cast<unsigned>(t) + id) {
          collisions.fetch_add(1, std::memory_order_relaxed);
        }
        held[i] = held.back();
        held.pop_back();
        if (op == 2) {
          local.Release(id);
        } else {
          pool->Release(absl::MakeConstSpan(&id, 1));
        }
      }
    }
    for (BlockId id : held) local.Release(id);
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(collisions.load(), 0);
  EXPECT_GT(exhausted.load(), 0) << "the test should reach exhaustion";
  EXPECT_EQ(pool->used_blocks(), 0);
  EXPECT_EQ(pool->free_blocks(), 36);
  ASSERT_VALID(pool);
}

TEST(PoolThreadTest, LastReleaseOfASharedBlockFreesItExactlyOnce) {
  auto pool = MakePool(16);
  for (int round = 0; round < 200; ++round) {
    BlockId id;
    ASSERT_TRUE(pool->Allocate(absl::MakeSpan(&id, 1)).ok());
    for (int i = 1; i < kThreads; ++i) pool->Retain(id);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&pool, id, t] {
        if (t % 2 == 0) {
          BlockPool::LocalCache local(*pool, 4);
          local.Release(id);
        } else {
          pool->Release(absl::MakeConstSpan(&id, 1));
        }
      });
    }
    for (std::thread& th : threads) th.join();
    ASSERT_EQ(pool->ref_count(id), 0u);
    ASSERT_EQ(pool->free_blocks(), 16);
    ASSERT_VALID(pool);
  }
}

}  // namespace
}  // namespace kvpage::internal
