// Storage the engine owns (kvpage/storage.h): host memory it hands over, and
// storage reached only through callbacks, whose addresses are not host
// pointers, so that nothing in kvpage may assume one.
#include "kvpage/storage.h"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvpage/kvpage.h"
#include "tests/test_util.h"

namespace kvpage {
namespace {

using ::testing::HasSubstr;

constexpr int kElems = 8, kBlock = 4;

CacheConfig Config() {
  return {.num_layers = 2,
          .num_kv_heads = 2,
          .head_dim = 4,
          .dtype = DType::kF32,
          .block_tokens = kBlock,
          .num_blocks = 24,
          .max_seq_len = 40,
          .layer_policies = {{.layer = 1,
                              .overflow = OverflowPolicy::kSlidingWindow,
                              .max_seq_len = 10,
                              .sink_tokens = 2}}};
}

std::vector<float> Tokens(int64_t first, int64_t count, float offset) {
  return testing::Tokens(first, count,
                         {.elems = kElems, .step = 1, .offset = offset});
}

absl::Status Put(KVCache& cache, SeqId seq, int layer, int64_t first,
                 int64_t n) {
  const std::vector<float> k = Tokens(first, n, 0), v = Tokens(first, n, 500);
  return cache.Update(
      seq, layer, {.data = k.data(), .dtype = DType::kF32, .tokens = n},
      {.data = v.data(), .dtype = DType::kF32, .tokens = n}, first + n);
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

TEST(HostMemoryTest, TheCacheLivesInTheEnginesMemory) {
  const CacheConfig config = Config();
  const int64_t bytes = StorageBytes(config);
  EXPECT_EQ(bytes, config.num_blocks * BlockBytes(config));
  std::unique_ptr<std::byte, FreeDeleter> memory(
      static_cast<std::byte*>(std::aligned_alloc(64, bytes)));
  {
    auto storage = WrapHostMemory(config, memory.get(), bytes);
    ASSERT_TRUE(storage.ok()) << storage.status();
    auto cache = KVCache::Create(config, *std::move(storage));
    ASSERT_TRUE(cache.ok()) << cache.status();
    EXPECT_EQ(*(*cache)->LayerBase(1), memory.get());
    const SeqId seq = *(*cache)->AddSequence();
    ASSERT_TRUE(Put(**cache, seq, 0, 0, 6).ok());
    const LayerView view = *(*cache)->View(seq, 0);
    ASSERT_TRUE(view.host_accessible);
    // Position 5's keys sit where the block table says, in our memory.
    const std::byte* block =
        memory.get() + view.blocks[1].block_id * BlockBytes(config);
    float k[kElems];
    std::memcpy(k, block + 1 * kElems * sizeof(float), sizeof(k));
    EXPECT_EQ(k[0], 5.0f);
    EXPECT_EQ(view.blocks[1].k, block);
  }
  // The cache is gone; the memory is still ours (ASan: no free, no poison).
  std::memset(memory.get(), 0, static_cast<size_t>(bytes));
}

TEST(HostMemoryTest, RefusesMemoryThatDoesNotFit) {
  const CacheConfig config = Config();
  const int64_t bytes = StorageBytes(config);
  std::unique_ptr<std::byte, FreeDeleter> memory(
      static_cast<std::byte*>(std::aligned_alloc(64, bytes + 64)));
  auto small = WrapHostMemory(config, memory.get(), bytes - 1);
  EXPECT_EQ(small.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(small.status().message(), HasSubstr(std::to_string(bytes)));
  EXPECT_EQ(WrapHostMemory(config, memory.get() + 8, bytes).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WrapHostMemory(config, nullptr, bytes).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A storage of another shape.
  CacheConfig other = config;
  other.num_blocks = 8;
  auto storage = WrapHostMemory(other, memory.get(), bytes);
  ASSERT_TRUE(storage.ok());
  EXPECT_EQ(KVCache::Create(config, *std::move(storage)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KVCache::Create(config, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// "Device" memory: bytes the test keeps, addresses that are not pointers to
// them (a device's address space), reached through the callbacks.
struct Device {
  explicit Device(const CacheConfig& config)
      : block_bytes(BlockBytes(config)),
        bytes(static_cast<size_t>(StorageBytes(config))) {}
  static constexpr uintptr_t kBase = uintptr_t{0xd0} << 40;
  int64_t block_bytes;
  std::vector<std::byte> bytes;
  int copies = 0, writes = 0, reads = 0, releases = 0;

  std::byte* At(uintptr_t address) {  // what the device's kernels do
    return bytes.data() + (address - kBase);
  }
  static StorageCallbacks Callbacks(Device* device, bool host_io) {
    StorageCallbacks c{
        .context = device,
        .address = [](void* ctx, uint32_t block) -> const void* {
          auto* d = static_cast<Device*>(ctx);
          return reinterpret_cast<const void*>(kBase + block * d->block_bytes);
        },
        .copy =
            [](void* ctx, uint32_t from, uint32_t to) {
              auto* d = static_cast<Device*>(ctx);
              ++d->copies;
              std::memcpy(d->bytes.data() + to * d->block_bytes,
                          d->bytes.data() + from * d->block_bytes,
                          static_cast<size_t>(d->block_bytes));
            },
        .release = [](void* ctx) { ++static_cast<Device*>(ctx)->releases; }};
    if (host_io) {
      c.write = [](void* ctx, uint32_t block, int64_t offset, const void* src,
                   int64_t n) {
        auto* d = static_cast<Device*>(ctx);
        ++d->writes;
        std::memcpy(d->bytes.data() + block * d->block_bytes + offset, src,
                    static_cast<size_t>(n));
      };
      c.read = [](void* ctx, uint32_t block, int64_t offset, void* dst,
                  int64_t n) {
        auto* d = static_cast<Device*>(ctx);
        ++d->reads;
        std::memcpy(dst, d->bytes.data() + block * d->block_bytes + offset,
                    static_cast<size_t>(n));
      };
    }
    return c;
  }
};

// The same random walk on a host cache and on one over callbacks: every
// read agrees, and every byte went through the callbacks.
TEST(CallbackStorageTest, AgreesWithTheHostArena) {
  const CacheConfig config = Config();
  Device device(config);
  std::unique_ptr<KVCache> host = *KVCache::Create(config);
  {
    std::unique_ptr<KVCache> cache = *KVCache::Create(
        config, *NewCallbackStorage(config, Device::Callbacks(&device, true)));
    std::mt19937_64 rng(7);
    auto uniform = [&](int64_t lo, int64_t hi) {
      return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
    };
    for (int op = 0; op < 400; ++op) {
      std::vector<SeqId> ids = host->Sequences();
      if (ids.empty() || uniform(0, 9) == 0) {
        ASSERT_EQ(*host->AddSequence(), *cache->AddSequence());
        continue;
      }
      const SeqId seq = ids[static_cast<size_t>(uniform(0, ids.size() - 1))];
      if (ids.size() < 4 && uniform(0, 9) == 0) {
        ASSERT_EQ(*host->Fork(seq), *cache->Fork(seq));
        continue;
      }
      if (uniform(0, 12) == 0) {
        ASSERT_TRUE(host->RemoveSequence(seq).ok());
        ASSERT_TRUE(cache->RemoveSequence(seq).ok());
        continue;
      }
      const int layer = static_cast<int>(uniform(0, 1));
      const int64_t len = *host->Length(seq, layer);
      const int64_t first = uniform(std::max<int64_t>(0, len - 2), len);
      const int64_t n = uniform(1, 6);
      const absl::Status a = Put(*host, seq, layer, first, n);
      const absl::Status b = Put(*cache, seq, layer, first, n);
      ASSERT_EQ(a.code(), b.code()) << a << " / " << b;
      for (SeqId id : host->Sequences()) {
        for (int l = 0; l < 2; ++l) {
          const GatheredLayer want = *host->Gather(id, l);
          const GatheredLayer got = *cache->Gather(id, l);
          ASSERT_EQ(got.positions, want.positions) << "op " << op;
          ASSERT_EQ(got.k, want.k) << "op " << op;
          ASSERT_EQ(got.v, want.v) << "op " << op;
          const LayerView view = *cache->View(id, l);
          ASSERT_FALSE(view.host_accessible);
          for (const BlockView& block : view.blocks) {
            ASSERT_EQ(reinterpret_cast<uintptr_t>(block.k),
                      Device::kBase + block.block_id * device.block_bytes);
          }
        }
      }
      ASSERT_TRUE(cache->Validate().ok());
    }
    EXPECT_GT(device.writes, 0);
    EXPECT_GT(device.reads, 0);
    EXPECT_GT(device.copies, 0);  // forks wrote into shared blocks
    EXPECT_EQ(cache->Stats().bytes_copied, device.copies * BlockBytes(config));
    EXPECT_EQ(device.releases, 0);
  }
  EXPECT_EQ(device.releases, 1);
}

// Storage only the engine's kernels touch: engine mode works; what needs
// host reads or writes says so and changes nothing.
TEST(CallbackStorageTest, DeviceOnlyStorageServesEngineMode) {
  CacheConfig config = Config();
  Device device(config);
  std::unique_ptr<KVCache> cache = *KVCache::Create(
      config, *NewCallbackStorage(config, Device::Callbacks(&device, false)));
  const SeqId seq = *cache->AddSequence();
  std::vector<int64_t> slots(6);
  ASSERT_TRUE(cache->Reserve(seq, 0, 6, 6, absl::MakeSpan(slots)).ok());
  // The engine's kernel writes the keys of position p at its slot.
  const auto base = reinterpret_cast<uintptr_t>(*cache->LayerBase(0));
  EXPECT_EQ(base, Device::kBase);
  for (int64_t p = 0; p < 6; ++p) {
    const int64_t block = slots[p] / kBlock, slot = slots[p] % kBlock;
    const float key = static_cast<float>(p);
    std::memcpy(device.At(base + block * device.block_bytes +
                          slot * kElems * sizeof(float)),
                &key, sizeof(key));
  }
  // A fork, then a write into the shared last block: the copy goes through
  // the callback and the writer's slot names its own block.
  const SeqId child = *cache->Fork(seq);
  std::vector<int64_t> one(1);
  ASSERT_TRUE(cache->Reserve(child, 0, 7, 1, absl::MakeSpan(one)).ok());
  EXPECT_EQ(device.copies, 1);
  EXPECT_NE(one[0] / kBlock, slots[5] / kBlock);
  const std::byte* copied =
      device.At(base + (one[0] / kBlock) * device.block_bytes +
                1 * kElems * sizeof(float));
  float key5;
  std::memcpy(&key5, copied, sizeof(key5));
  EXPECT_EQ(key5, 5.0f);
  // Block tables export as usual.
  std::vector<int32_t> table(2 * 4), lens(2);
  ASSERT_TRUE(cache
                  ->ExportBlockTables(
                      0, {seq, child},
                      PaddedBlockTables{.block_table = absl::MakeSpan(table),
                                        .max_blocks = 4,
                                        .seq_lens = absl::MakeSpan(lens)})
                  .ok());
  EXPECT_EQ(lens[1], 7);
  EXPECT_EQ(table[4 + 1], one[0] / kBlock);
  EXPECT_TRUE(cache->Validate().ok());
  // What needs the host.
  const std::vector<float> k = Tokens(7, 1, 0);
  absl::Status s = cache->Update(seq, 0, {.data = k.data(), .tokens = 1},
                                 {.data = k.data(), .tokens = 1}, 7);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("Reserve"));
  EXPECT_EQ(cache->Gather(seq, 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(cache->TakeSnapshot({.include_token_data = true}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(cache->TakeSnapshot({}).ok());
  EXPECT_EQ(*cache->Length(seq, 0), 6);
  // Compression reads blocks on the host: refused at Create.
  config.compression = {.enabled = true, .group_size = 4, .quant_cells = 8};
  const absl::Status refused =
      KVCache::Create(config, *NewCallbackStorage(
                                  config, Device::Callbacks(&device, false)))
          .status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.message(), HasSubstr("compression"));
}

TEST(CallbackStorageTest, RefusesMissingCallbacks) {
  const CacheConfig config = Config();
  Device device(config);
  StorageCallbacks c = Device::Callbacks(&device, true);
  c.address = nullptr;
  EXPECT_THAT(NewCallbackStorage(config, c).status().message(),
              HasSubstr("address"));
  c = Device::Callbacks(&device, true);
  c.copy = nullptr;
  EXPECT_THAT(NewCallbackStorage(config, c).status().message(),
              HasSubstr("copy"));
  c = Device::Callbacks(&device, true);
  c.read = nullptr;
  EXPECT_EQ(NewCallbackStorage(config, c).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(device.releases, 0);  // refused storages release nothing
}

}  // namespace
}  // namespace kvpage
