// Snapshots: what a cache writes is what it holds, the reader survives
// hostile bytes, and VerifySnapshot catches each kind of corruption.
#include "kvpage/snapshot.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cache/kv_cache_internal.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cache_fingerprint.h"
#include "tests/snapshot_fixture.h"
#include "tests/test_util.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvpage {
namespace {

using ::testing::IsEmpty;

std::string TempPath(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "/", getpid(), "_", name);
}

std::string Checks(const std::vector<SnapshotViolation>& violations) {
  std::string out;
  for (const SnapshotViolation& v : violations) {
    absl::StrAppend(&out, v.check, ": ", v.message, "\n");
  }
  return out;
}

class SnapshotTest : public ::testing::TestWithParam<bool> {};

// The snapshot shows exactly what the live cache's views and stats show.
TEST_P(SnapshotTest, TablesMatchTheViews) {
  auto cache = testing::BuildShowcase(/*mixed=*/GetParam());
  ASSERT_TRUE(cache.ok()) << cache.status();
  KVCache& kv = **cache;
  ASSERT_VALID(kv);
  absl::StatusOr<Snapshot> snap = kv.TakeSnapshot({});
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_THAT(VerifySnapshot(*snap), IsEmpty())
      << Checks(VerifySnapshot(*snap));
  EXPECT_EQ(snap->config, kv.config());
  EXPECT_EQ(snap->stats, kv.Stats());
  ASSERT_EQ(snap->sequences.size(), kv.Sequences().size());
  const int bt = kv.config().block_tokens;
  bool saw_quant = false, saw_spare = false, saw_shared = false;
  for (const SnapshotSequence& s : snap->sequences) {
    for (int layer = 0; layer < kv.config().num_layers; ++layer) {
      const SnapshotLayer& l = s.layers[static_cast<size_t>(layer)];
      EXPECT_EQ(l.length, *kv.Length(s.id, layer));
      // Rebuild the view's runs from the entries: one per contiguous run of
      // visible slots of a block.
      const LayerView view = *kv.View(s.id, layer);
      size_t next = 0;
      for (const SnapshotEntry& e : l.entries) {
        saw_spare |= e.role == TableRole::kSpare;
        saw_quant |= e.format != BlockFormat::kHot;
        if (e.format == BlockFormat::kHot) {
          saw_shared |= snap->hot.ref_counts[e.id] > 1;
        }
        int seen = 0;
        while (seen < e.visible) {
          ASSERT_LT(next, view.blocks.size()) << "seq " << s.id;
          const BlockView& b = view.blocks[next++];
          EXPECT_EQ(b.block_id, e.id);
          EXPECT_EQ(b.format, e.format);
          EXPECT_EQ(b.first_position, e.logical * bt + b.begin_slot);
          EXPECT_GE(b.begin_slot, e.begin_slot);
          EXPECT_LE(b.begin_slot + b.tokens, e.end_slot);
          seen += b.tokens;
        }
        EXPECT_EQ(seen, e.visible);
      }
      EXPECT_EQ(next, view.blocks.size())
          << "seq " << s.id << " layer " << layer;
    }
  }
  EXPECT_TRUE(saw_quant);
  EXPECT_TRUE(saw_spare);
  EXPECT_TRUE(saw_shared);
  EXPECT_FALSE(snap->prefix.empty());
  EXPECT_GT(snap->stats.blocks_cached, 0);
}

TEST_P(SnapshotTest, FileRoundTripIsExact) {
  auto cache = testing::BuildShowcase(GetParam());
  ASSERT_TRUE(cache.ok()) << cache.status();
  const testing::CacheFingerprint before = testing::Fingerprint(**cache);
  const std::string path = TempPath("round_trip.snap");
  for (bool data : {false, true}) {
    ASSERT_TRUE(
        (*cache)->WriteSnapshot(path, {.include_token_data = data}).ok());
    absl::StatusOr<Snapshot> read = ReadSnapshot(path);
    ASSERT_TRUE(read.ok()) << read.status();
    absl::StatusOr<Snapshot> taken =
        (*cache)->TakeSnapshot({.include_token_data = data});
    ASSERT_TRUE(taken.ok());
    EXPECT_TRUE(*read == *taken);
    EXPECT_EQ(read->has_token_data, data);
    EXPECT_EQ(read->hot.data.empty(), !data);
    EXPECT_EQ(read->quant.data.empty(), !data);
  }
  EXPECT_UNCHANGED(**cache, before);  // writing changed nothing
  std::remove(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(FixedAndMixed, SnapshotTest, ::testing::Bool());

// ---- Every shape Create accepts round-trips ----

// Small shapes, every dtype, and with int8, int4 and mixed compression each
// group size: among them quantized cells larger than a hot block (8 kv-heads
// x 64, f16, one token a block, int8 group 64: 2,112 bytes against 2,048).
// An odd head_dim takes int8 only (int4 codes go two to a byte).
std::vector<CacheConfig> SweepConfigs() {
  std::vector<CacheConfig> configs;
  for (int heads : {1, 8}) {
    for (int head_dim : {2, 3, 8, 64}) {
      for (int block_tokens : {1, 2, 3, 16}) {
        for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
          const CacheConfig plain{.num_layers = 2,
                                  .num_kv_heads = heads,
                                  .head_dim = head_dim,
                                  .dtype = dtype,
                                  .block_tokens = block_tokens,
                                  .num_blocks = 16,
                                  .max_seq_len = 1024};
          configs.push_back(plain);
          std::vector<int> groups = {1, head_dim / 2, head_dim};
          if (head_dim % 2 != 0) groups = {1, head_dim};
          groups.erase(std::unique(groups.begin(), groups.end()), groups.end());
          for (int group : groups) {
            for (int mode = 0; mode < 3; ++mode) {
              if (head_dim % 2 != 0 && mode != 0) continue;  // int8 only
              CacheConfig c = plain;
              c.compression = {
                  .enabled = true,
                  .bits = mode == 1 ? QuantBits::kInt4 : QuantBits::kInt8,
                  .group_size = group,
                  .hot_tokens = 0,
                  .quant_cells = 8,
                  .max_rel_error = mode == 2 ? 0.002 : 0.0,
                  .measure_error = true};
              configs.push_back(c);
            }
          }
        }
      }
    }
  }
  return configs;
}

std::string Describe(const CacheConfig& c) {
  const CompressionConfig& q = c.compression;
  return absl::StrCat(c.num_kv_heads, " heads x ", c.head_dim, " ",
                      std::string(DTypeName(c.dtype)), ", ", c.block_tokens,
                      " tokens a block, ",
                      !q.enabled                   ? "no compression"
                      : q.max_rel_error > 0        ? "mixed"
                      : q.bits == QuantBits::kInt4 ? "int4"
                                                   : "int8",
                      q.enabled ? absl::StrCat(" group ", q.group_size) : "");
}

TEST(SnapshotSweep, EveryShapeCreateAcceptsRoundTrips) {
  const std::string path = TempPath("sweep.snap");
  std::mt19937_64 rng(7);
  int configs = 0, quantized = 0, larger_slots = 0;
  for (const CacheConfig& config : SweepConfigs()) {
    SCOPED_TRACE(Describe(config));
    ASSERT_TRUE(ValidateConfig(config).ok()) << ValidateConfig(config);
    auto cache = KVCache::Create(config);
    ASSERT_TRUE(cache.ok()) << cache.status();
    KVCache& kv = **cache;
    // Three and a half blocks per layer; layer 0's whole blocks compressed.
    absl::StatusOr<SeqId> seq = kv.AddSequence();
    ASSERT_TRUE(seq.ok());
    const int64_t tokens = 3 * config.block_tokens + config.block_tokens / 2;
    ASSERT_TRUE(testing::Grow(kv, *seq, tokens, tokens, -1, rng).ok());
    if (config.compression.enabled) {
      ASSERT_TRUE(kv.CompressOldEntries(*seq, 0, 0.0).ok());
      EXPECT_GT(kv.Stats().quant_cells_used, 0);
    }
    // Through a file with token data, in memory without (each write to a
    // file costs an fsync).
    for (bool data : {false, true}) {
      SCOPED_TRACE(data ? "with token data" : "metadata only");
      absl::StatusOr<Snapshot> taken =
          kv.TakeSnapshot({.include_token_data = data});
      ASSERT_TRUE(taken.ok()) << taken.status();
      absl::StatusOr<Snapshot> read = ParseSnapshot(EncodeSnapshot(*taken));
      if (data) {
        ASSERT_TRUE(kv.WriteSnapshot(path, {.include_token_data = true}).ok());
        read = ReadSnapshot(path);
      }
      ASSERT_TRUE(read.ok()) << read.status();
      EXPECT_TRUE(*read == *taken);
      EXPECT_THAT(VerifySnapshot(*read), IsEmpty())
          << Checks(VerifySnapshot(*read));
    }
    ++configs;
    quantized += config.compression.enabled;
    larger_slots += kv.Stats().quant_cell_bytes > BlockBytes(config);
  }
  // The sweep reaches the shapes the reader used to refuse.
  EXPECT_GT(quantized, 100);
  EXPECT_GT(larger_slots, 10);
  RecordProperty("configs", configs);
  std::remove(path.c_str());
}

TEST(SnapshotData, HotBytesAreTheBlocksBytes) {
  auto cache = testing::BuildShowcase();
  ASSERT_TRUE(cache.ok());
  KVCache& kv = **cache;
  absl::StatusOr<Snapshot> snap = kv.TakeSnapshot({.include_token_data = true});
  ASSERT_TRUE(snap.ok());
  const SnapshotPool& hot = snap->hot;
  ASSERT_EQ(hot.data.size(), hot.data_ids.size() * hot.unit_bytes);
  int checked = 0;
  for (SeqId seq : kv.Sequences()) {
    const LayerView view = *kv.View(seq, 0);
    for (const BlockView& b : view.blocks) {
      if (b.format != BlockFormat::kHot) continue;
      auto it = std::find(hot.data_ids.begin(), hot.data_ids.end(), b.block_id);
      ASSERT_NE(it, hot.data_ids.end());
      const uint8_t* bytes =
          hot.data.data() + (it - hot.data_ids.begin()) * hot.unit_bytes;
      EXPECT_EQ(std::memcmp(bytes, b.k, hot.unit_bytes / 2), 0);
      EXPECT_EQ(
          std::memcmp(bytes + hot.unit_bytes / 2, b.v, hot.unit_bytes / 2), 0);
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

TEST(SnapshotData, OpaqueStorageIsReadThroughTheStorage) {
  CacheConfig config{.num_layers = 1,
                     .num_kv_heads = 1,
                     .head_dim = 4,
                     .block_tokens = 4,
                     .num_blocks = 8,
                     .max_seq_len = 32};
  auto cache = internal::KVCacheAccess::CreateWithStorage(
      config, std::make_unique<testing::OpaqueStorage>(8, BlockBytes(config)));
  ASSERT_TRUE(cache.ok());
  SeqId seq = *(*cache)->AddSequence();
  std::vector<float> k(6 * 4, 1.5f), v(6 * 4, -2.0f);
  ASSERT_TRUE((*cache)
                  ->Update(seq, 0, {.data = k.data(), .tokens = 6},
                           {.data = v.data(), .tokens = 6}, 6)
                  .ok());
  absl::StatusOr<Snapshot> snap =
      (*cache)->TakeSnapshot({.include_token_data = true});
  ASSERT_TRUE(snap.ok());
  ASSERT_EQ(snap->hot.data_ids.size(), 2u);
  uint16_t first;  // f16 of 1.5 is 0x3e00
  std::memcpy(&first, snap->hot.data.data(), 2);
  EXPECT_EQ(first, 0x3e00);
  EXPECT_THAT(VerifySnapshot(*snap), IsEmpty());
  // Without compression the quantized pool is empty, and still round-trips.
  EXPECT_EQ(snap->quant.capacity, 0);
  absl::StatusOr<Snapshot> parsed = ParseSnapshot(EncodeSnapshot(*snap));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(*parsed == *snap);
}

// Version 2 added CacheConfig::group_layers, version 3 four statistics; a
// version-1 file (written here by encoding a snapshot marked version 1,
// which leaves them out) still reads, as a cache of per-layer tables whose
// new statistics are 0.
TEST(SnapshotFile, ReadsVersionOne) {
  auto cache = testing::BuildShowcase();
  ASSERT_TRUE(cache.ok()) << cache.status();
  absl::StatusOr<Snapshot> snap = (*cache)->TakeSnapshot({});
  ASSERT_TRUE(snap.ok());
  Snapshot v1 = *snap;
  v1.version = 1;
  v1.stats.prefix_queries = v1.stats.prefix_blocks_queried = 0;
  v1.stats.prefix_tokens_queried = v1.stats.prefix_tokens_matched = 0;
  EXPECT_GT(snap->stats.prefix_queries, 0);
  const std::string v1_bytes = EncodeSnapshot(v1);
  EXPECT_EQ(v1_bytes.size() + 1 + 4 * 8, EncodeSnapshot(*snap).size());
  absl::StatusOr<Snapshot> parsed = ParseSnapshot(v1_bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->version, 1u);
  EXPECT_FALSE(parsed->config.group_layers);
  EXPECT_TRUE(*parsed == v1);
  EXPECT_THAT(VerifySnapshot(*parsed), IsEmpty());
}

// ---- Hostile bytes ----

std::string ShowcaseBytes(bool data = true) {
  auto cache = testing::BuildShowcase();
  if (!cache.ok()) return "";
  return EncodeSnapshot(*(*cache)->TakeSnapshot({.include_token_data = data}));
}

// Rewrites the payload checksum, so that a corruption reaches the parser's
// field checks instead of stopping at the checksum.
void Reseal(std::string& bytes) {
  const uint64_t sum = XXH3_64bits(bytes.data() + 32, bytes.size() - 32);
  for (int i = 0; i < 8; ++i) bytes[24 + i] = static_cast<char>(sum >> (8 * i));
}

TEST(SnapshotParse, EveryTruncationIsAnError) {
  const std::string bytes = ShowcaseBytes();
  ASSERT_FALSE(bytes.empty());
  ASSERT_TRUE(ParseSnapshot(bytes).ok());
  for (size_t n = 0; n < bytes.size(); n += 1 + n / 64) {
    absl::StatusOr<Snapshot> s = ParseSnapshot(bytes.substr(0, n));
    ASSERT_FALSE(s.ok()) << n;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << n;
  }
}

TEST(SnapshotParse, BitFlipsAreCaughtByTheChecksum) {
  const std::string bytes = ShowcaseBytes(false);
  for (size_t i = 32; i < bytes.size(); i += 7) {
    std::string bad = bytes;
    bad[i] = static_cast<char>(bad[i] ^ (1 << (i % 8)));
    absl::StatusOr<Snapshot> s = ParseSnapshot(bad);
    ASSERT_FALSE(s.ok()) << i;
    EXPECT_THAT(std::string(s.status().message()),
                ::testing::HasSubstr("checksum"));
  }
}

TEST(SnapshotParse, ResealedCorruptionNeverCrashes) {
  // Past the checksum, every byte flipped still parses or fails cleanly;
  // whatever parses can be verified.
  const std::string bytes = ShowcaseBytes(false);
  int parsed = 0;
  for (size_t i = 32; i < bytes.size(); ++i) {
    std::string bad = bytes;
    bad[i] = static_cast<char>(bad[i] ^ 0x80);
    Reseal(bad);
    absl::StatusOr<Snapshot> s = ParseSnapshot(bad);
    if (!s.ok()) continue;
    ++parsed;
    (void)VerifySnapshot(*s);
  }
  EXPECT_GT(parsed, 0);
}

TEST(SnapshotParse, HeaderErrors) {
  std::string bytes = ShowcaseBytes(false);
  std::string magic = bytes;
  magic[0] = 'X';
  EXPECT_THAT(std::string(ParseSnapshot(magic).status().message()),
              ::testing::HasSubstr("magic"));
  std::string version = bytes;
  version[8] = static_cast<char>(kSnapshotVersion + 1);
  EXPECT_EQ(ParseSnapshot(version).status().code(),
            absl::StatusCode::kFailedPrecondition);
  version[8] = 0;
  EXPECT_EQ(ParseSnapshot(version).status().code(),
            absl::StatusCode::kFailedPrecondition);
  std::string flags = bytes;
  flags[12] = 4;
  EXPECT_THAT(std::string(ParseSnapshot(flags).status().message()),
              ::testing::HasSubstr("flags"));
  std::string longer = bytes + "x";
  EXPECT_THAT(std::string(ParseSnapshot(longer).status().message()),
              ::testing::HasSubstr("payload bytes"));
}

// A count field set to 2^60 with a valid checksum: refused before anything
// is allocated for it (ASan would report the allocation otherwise).
TEST(SnapshotParse, AbsurdCountsAreRefused) {
  auto cache = testing::BuildShowcase();
  ASSERT_TRUE(cache.ok());
  Snapshot snap = *(*cache)->TakeSnapshot({});
  const std::string bytes = EncodeSnapshot(snap);
  // The sequence count follows config, stats and the two pools; find it by
  // encoding a snapshot without sequences and prefix entries.
  Snapshot empty = snap;
  empty.sequences.clear();
  empty.prefix.clear();
  const size_t at = EncodeSnapshot(empty).size() - 16;  // two u64 counts
  std::string bad = bytes;
  for (int i = 0; i < 8; ++i) {
    bad[at + i] = static_cast<char>((uint64_t{1} << 60) >> (8 * i));
  }
  Reseal(bad);
  absl::StatusOr<Snapshot> s = ParseSnapshot(bad);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()),
              ::testing::HasSubstr("sequences"));
}

TEST(SnapshotParse, InvalidConfigIsRefused) {
  auto cache = testing::BuildShowcase();
  ASSERT_TRUE(cache.ok());
  Snapshot snap = *(*cache)->TakeSnapshot({});
  snap.config.block_tokens = 0;
  absl::StatusOr<Snapshot> s = ParseSnapshot(EncodeSnapshot(snap));
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()),
              ::testing::HasSubstr("block_tokens"));
}

// ---- Verify: each corruption, injected alone into a valid snapshot ----

struct Corruption {
  const char* name;
  const char* check;  // the violation it must raise
  std::function<void(Snapshot&)> apply;
};

SnapshotEntry* FirstEntry(Snapshot& s, TableRole role, BlockFormat format) {
  for (SnapshotSequence& seq : s.sequences) {
    for (SnapshotLayer& l : seq.layers) {
      for (SnapshotEntry& e : l.entries) {
        if (e.role == role && e.format == format) return &e;
      }
    }
  }
  return nullptr;
}

uint32_t FirstFree(const SnapshotPool& p) { return p.free_ids.front(); }

std::vector<Corruption> Corruptions() {
  return {
      {"ref count off by one", "ref_count",
       [](Snapshot& s) {
         ++s.hot.ref_counts[FirstEntry(s, TableRole::kWindow, BlockFormat::kHot)
                                ->id];
       }},
      {"quantized cell ref count", "ref_count",
       [](Snapshot& s) {
         ++s.quant.ref_counts
               [FirstEntry(s, TableRole::kWindow, BlockFormat::kInt8)->id];
       }},
      {"table points at a free block", "ref_count",
       [](Snapshot& s) {
         FirstEntry(s, TableRole::kWindow, BlockFormat::kHot)->id =
             FirstFree(s.hot);
       }},
      {"used block on the free list", "free_list",
       [](Snapshot& s) {
         s.hot.free_ids.push_back(
             FirstEntry(s, TableRole::kSink, BlockFormat::kHot)->id);
       }},
      {"free block missing from the free list", "free_list",
       [](Snapshot& s) { s.hot.free_ids.pop_back(); }},
      {"block id out of range", "table",
       [](Snapshot& s) {
         FirstEntry(s, TableRole::kWindow, BlockFormat::kHot)->id = 1000000;
       }},
      {"positions go backwards", "positions",
       [](Snapshot& s) {
         for (SnapshotEntry& e : s.sequences[0].layers[0].entries) {
           if (e.logical == 3) e.logical = 1;
         }
       }},
      {"more visible slots than the policy keeps", "visible",
       [](Snapshot& s) {
         for (SnapshotEntry& e : s.sequences[0].layers[1].entries) {
           if (e.role == TableRole::kWindow) {
             e.visible += 1;
             break;
           }
         }
       }},
      {"window start moved under the error policy", "policy",
       [](Snapshot& s) { s.sequences[0].layers[0].window_start = 8; }},
      {"a window block dropped", "table",
       [](Snapshot& s) {
         auto& entries = s.sequences[0].layers[0].entries;
         entries.erase(entries.begin() + 3);
       }},
      {"spares outside a ring", "policy",
       [](Snapshot& s) {
         SnapshotEntry spare =
             *FirstEntry(s, TableRole::kSpare, BlockFormat::kHot);
         s.sequences[0].layers[0].entries.push_back(spare);
       }},
      {"quantized entry of the wrong format", "quant",
       [](Snapshot& s) {
         FirstEntry(s, TableRole::kWindow, BlockFormat::kInt8)->format =
             BlockFormat::kInt4;
       }},
      {"prefix entry idle while in use", "prefix",
       [](Snapshot& s) {
         for (SnapshotPrefixEntry& p : s.prefix) {
           if (p.lru_rank < 0) {
             p.lru_rank = 1000;
             return;
           }
         }
       }},
      {"stats disagree with the tables", "stats",
       [](Snapshot& s) { s.stats.tokens_stored += 1; }},
      {"blocks_free disagrees", "stats",
       [](Snapshot& s) { s.stats.blocks_free -= 1; }},
  };
}

TEST(SnapshotVerify, CatchesEachCorruption) {
  auto cache = testing::BuildShowcase();
  ASSERT_TRUE(cache.ok());
  const Snapshot good = *(*cache)->TakeSnapshot({});
  ASSERT_THAT(VerifySnapshot(good), IsEmpty());
  for (const Corruption& c : Corruptions()) {
    SCOPED_TRACE(c.name);
    Snapshot bad = good;
    c.apply(bad);
    // Through the file format too: what verify sees is what the tool reads.
    absl::StatusOr<Snapshot> read = ParseSnapshot(EncodeSnapshot(bad));
    ASSERT_TRUE(read.ok()) << read.status();
    const std::vector<SnapshotViolation> found = VerifySnapshot(*read);
    ASSERT_FALSE(found.empty());
    bool named = false;
    for (const SnapshotViolation& v : found) named |= v.check == c.check;
    EXPECT_TRUE(named) << "want " << c.check << ", got:\n" << Checks(found);
  }
}

TEST(SnapshotVerify, StructureOfHandBuiltSnapshots) {
  Snapshot s;  // default config: invalid
  std::vector<SnapshotViolation> found = VerifySnapshot(s);
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].check, "config");
  auto cache = testing::BuildShowcase();
  ASSERT_TRUE(cache.ok());
  Snapshot snap = *(*cache)->TakeSnapshot({});
  snap.quant.bits.pop_back();
  found = VerifySnapshot(snap);
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].check, "config");
}

}  // namespace
}  // namespace kvpage
