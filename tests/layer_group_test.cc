// Layer groups (CacheConfig::group_layers): one block table per group of
// layers with the same policy. The promise under test: every layer of a
// grouped cache shows exactly what the same layer of a per-layer cache
// shows, under the same calls, while the group takes one block where the
// per-layer cache takes one per layer; and engine mode reserves once for a
// whole group, whose kernels write each layer at its own base.
#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvpage/kvpage.h"
#include "tests/cache_fingerprint.h"
#include "tests/test_util.h"

namespace kvpage {
namespace {

using kvpage::testing::Fingerprint;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr int kHeads = 2, kDim = 4, kElems = kHeads * kDim, kBlock = 4;
constexpr int kLayers = 6;

// Six layers in two groups: the even ones under the cache-wide policy, the
// odd ones under an override (a sliding window with sinks, a ring, or a
// context shift), as hybrid models mix global and windowed layers.
CacheConfig Config(int variant, bool grouped, int64_t num_blocks) {
  CacheConfig c{.num_layers = kLayers,
                .num_kv_heads = kHeads,
                .head_dim = kDim,
                .dtype = DType::kF32,
                .block_tokens = kBlock,
                .num_blocks = num_blocks,
                .max_seq_len = 64};
  const LayerPolicy odd[] = {
      {.overflow = OverflowPolicy::kSlidingWindow,
       .max_seq_len = 14,
       .sink_tokens = 3},
      {.overflow = OverflowPolicy::kCircularBuffer, .max_seq_len = 10},
      {.overflow = OverflowPolicy::kTruncate,
       .max_seq_len = 20,
       .sink_tokens = 2,
       .truncate_to = 9}};
  for (int layer = 1; layer < kLayers; layer += 2) {
    LayerPolicy p = odd[variant];
    p.layer = layer;
    c.layer_policies.push_back(p);
  }
  c.group_layers = grouped;
  return c;
}

std::unique_ptr<KVCache> Make(const CacheConfig& c) {
  auto cache = KVCache::Create(c);
  EXPECT_TRUE(cache.ok()) << cache.status();
  return cache.ok() ? *std::move(cache) : nullptr;
}

std::vector<float> Keys(int64_t family, int layer, int64_t first,
                        int64_t count) {
  return testing::Tokens(
      first, count,
      {.elems = kElems,
       .step = 1,
       .offset = static_cast<float>(family * 4096 + layer * 512)});
}

TEST(LayerGroups, ConfigAndLayout) {
  CacheConfig c = Config(0, true, 32);
  ASSERT_TRUE(ValidateConfig(c).ok());
  EXPECT_EQ(LayerGroupWidth(c), 3);
  EXPECT_EQ(StorageBlocks(c), 32 * 3);
  EXPECT_EQ(LayerGroupWidth(Config(0, false, 32)), 1);
  auto cache = Make(c);
  ASSERT_NE(cache, nullptr);
  // Layer l's slot of block b: LayerBase(l) + b * BlockBytes; the layers of
  // a group take consecutive slots, the groups share them.
  auto base = [&](int layer) {
    return static_cast<const std::byte*>(*cache->LayerBase(layer));
  };
  const int64_t slot_bytes = 32 * BlockBytes(c);
  EXPECT_EQ(base(2) - base(0), slot_bytes);
  EXPECT_EQ(base(4) - base(0), 2 * slot_bytes);
  EXPECT_EQ(base(1), base(0));
  EXPECT_EQ(base(5) - base(1), 2 * slot_bytes);
  EXPECT_EQ(cache->Stats().block_bytes, 3 * BlockBytes(c));
  // Compression: a cell holds a slot per layer of the widest group too
  // (tests/group_compression_test.cc).
  c.compression = {.enabled = true, .group_size = 4, .quant_cells = 8};
  auto compressed = Make(c);
  ASSERT_NE(compressed, nullptr);
  CacheConfig per_layer = c;
  per_layer.group_layers = false;
  EXPECT_EQ(compressed->Stats().quant_cell_bytes,
            3 * Make(per_layer)->Stats().quant_cell_bytes);
}

// A random walk on twin caches, per-layer and grouped, through forward
// passes that stop part-way (the grouped tables split, other sequences
// move, the pass goes on), rollbacks, truncation, forks, prefix caching and
// removal. Every layer of every sequence reads the same in both, both stay
// valid, and once every pass is complete the grouped cache holds one block
// per group where the other holds one per layer.
class GroupedWalk : public ::testing::TestWithParam<int> {};

TEST_P(GroupedWalk, EveryLayerReadsAsInPerLayerTables) {
  const int variant = GetParam();
  // Pools that never run short (at most 12 sequences of 64 tokens): the
  // twins would run short at different calls.
  auto flat = Make(Config(variant, false, 3 * 600));
  auto grouped = Make(Config(variant, true, 600));
  ASSERT_NE(flat, nullptr);
  ASSERT_NE(grouped, nullptr);
  std::mt19937 rng(1234 + variant);
  auto pick = [&](int n) {
    return static_cast<int>(rng() % static_cast<unsigned>(n));
  };
  struct Pass {  // a forward pass under way: layers [0, next) are done
    int next = 0;
    int64_t seq_len = 0, tokens = 0;
  };
  std::map<SeqId, Pass> passes;  // same ids in both caches
  std::map<SeqId, int64_t> family;
  auto check_all = [&](const std::string& where) {
    ASSERT_EQ(flat->Sequences(), grouped->Sequences()) << where;
    for (SeqId seq : flat->Sequences()) {
      for (int layer = 0; layer < kLayers; ++layer) {
        absl::StatusOr<GatheredLayer> a = flat->Gather(seq, layer);
        absl::StatusOr<GatheredLayer> b = grouped->Gather(seq, layer);
        ASSERT_TRUE(a.ok() && b.ok()) << where;
        ASSERT_EQ(a->positions, b->positions)
            << where << " seq " << seq << " layer " << layer;
        ASSERT_EQ(a->k, b->k) << where << " seq " << seq << " layer " << layer;
        ASSERT_EQ(a->v, b->v) << where << " seq " << seq << " layer " << layer;
        ASSERT_EQ(*flat->Length(seq, layer), *grouped->Length(seq, layer));
      }
    }
    ASSERT_TRUE(flat->Validate().ok()) << where << flat->Validate();
    ASSERT_TRUE(grouped->Validate().ok()) << where << grouped->Validate();
    EXPECT_EQ(flat->Stats().tokens_stored, grouped->Stats().tokens_stored)
        << where;
  };
  // Runs `fn` on both caches and expects the same outcome.
  auto both = [&](const std::string& what, auto fn) {
    const absl::Status a = fn(*flat);
    const absl::Status b = fn(*grouped);
    EXPECT_EQ(a.code(), b.code()) << what << ": " << a << " / " << b;
    return a.ok() && b.ok();
  };
  auto advance = [&](SeqId seq, int layers) {
    Pass& p = passes[seq];
    const int64_t fam = family[seq];
    for (int i = 0; i < layers && p.next < kLayers; ++i, ++p.next) {
      const int layer = p.next;
      const std::vector<float> k =
          Keys(fam, layer, p.seq_len - p.tokens, p.tokens);
      const std::vector<float> v =
          Keys(fam + 1000, layer, p.seq_len - p.tokens, p.tokens);
      both("Update", [&](KVCache& c) {
        return c.Update(seq, layer, {k.data(), DType::kF32, p.tokens},
                        {v.data(), DType::kF32, p.tokens}, p.seq_len);
      });
    }
    if (p.next == kLayers) passes.erase(seq);
  };
  int64_t next_family = 1;
  int checks_mid_pass = 0;  // checks while some grouped table was split
  for (int step = 0; step < 5000; ++step) {
    const std::vector<SeqId> seqs = flat->Sequences();
    const int op = pick(20);
    if (seqs.empty() || (op == 0 && seqs.size() < 12)) {
      SeqId a = *flat->AddSequence(), b = *grouped->AddSequence();
      ASSERT_EQ(a, b);
      family[a] = next_family++;
      if (pick(2) == 0) {  // a prompt with a prefix others may share
        std::vector<int32_t> ids(static_cast<size_t>(8 + pick(12)));
        for (size_t i = 0; i < ids.size(); ++i) {
          ids[i] = static_cast<int32_t>(i < 8 ? i : 100 + a);
        }
        absl::StatusOr<int64_t> ma = flat->MatchPrefix(a, ids);
        absl::StatusOr<int64_t> mb = grouped->MatchPrefix(a, ids);
        ASSERT_TRUE(ma.ok() && mb.ok());
        ASSERT_EQ(*ma, *mb) << "step " << step;
        if (*ma > 0) family[a] = 0;  // prefixes hold family 0's data
        passes[a] = {.next = 0,
                     .seq_len = static_cast<int64_t>(ids.size()),
                     .tokens = static_cast<int64_t>(ids.size()) - *ma};
        both("AppendTokens", [&](KVCache& c) {
          return c.AppendTokens(
              a, absl::MakeSpan(ids).subspan(static_cast<size_t>(*ma)));
        });
      }
      continue;
    }
    const SeqId seq =
        seqs[static_cast<size_t>(pick(static_cast<int>(seqs.size())))];
    if (passes.count(seq) != 0) {  // a pass under way goes on, maybe not to
      advance(seq, 1 + pick(kLayers));  // its end
    } else if (op < 12) {  // a new pass: append, overwrite or roll back
      const int64_t length = *flat->Length(seq, 0);
      const int kind = pick(8);
      Pass p;
      if (kind < 6) {
        p.tokens = 1 + pick(kind == 0 ? 9 : 2);
        p.seq_len = length + p.tokens;
      } else if (kind == 6 && length > 2) {
        p.tokens = 1;
        p.seq_len = length - pick(2);
      } else {
        p.tokens = 0;
        p.seq_len = std::max<int64_t>(0, length - 1 - pick(3));
      }
      passes[seq] = p;
      advance(seq, pick(3) == 0 ? 1 + pick(kLayers) : kLayers);
    } else if (op < 14 && seqs.size() < 12) {
      const SeqId child = *flat->Fork(seq);
      ASSERT_EQ(*grouped->Fork(seq), child);
      family[child] = family[seq];
    } else if (op < 15) {
      const int64_t to = std::max<int64_t>(0, *flat->Length(seq, 0) - pick(6));
      both("Truncate", [&](KVCache& c) { return c.Truncate(seq, to); });
      passes.erase(seq);  // a pass cut short by a truncation ends
    } else if (op >= 15 && op < 18 && seqs.size() > 3) {
      both("RemoveSequence", [&](KVCache& c) { return c.RemoveSequence(seq); });
      passes.erase(seq);
    }
    if (HasFailure()) return;
    if (step % 25 == 0) {
      checks_mid_pass += !passes.empty();
      check_all("step " + std::to_string(step));
      if (HasFailure()) return;
    }
  }
  // Finish every pass: the grouped tables agree again, and each lists the
  // blocks each per-layer table of its layers lists (a ring's spares, held
  // without a visible token, follow the history of the union and may
  // differ). One block per group where the other cache takes one per layer.
  EXPECT_GT(checks_mid_pass, 20);
  while (!passes.empty()) advance(passes.begin()->first, kLayers);
  check_all("end");
  absl::StatusOr<Snapshot> flat_snap = flat->TakeSnapshot({});
  absl::StatusOr<Snapshot> grouped_snap = grouped->TakeSnapshot({});
  ASSERT_TRUE(flat_snap.ok() && grouped_snap.ok());
  auto shown = [](const SnapshotLayer& l) {
    std::vector<std::pair<int64_t, int32_t>> out;  // (logical, visible)
    for (const SnapshotEntry& e : l.entries) {
      if (e.role != TableRole::kSpare) out.push_back({e.logical, e.visible});
    }
    return out;
  };
  for (size_t i = 0; i < flat_snap->sequences.size(); ++i) {
    for (int layer = 0; layer < kLayers; ++layer) {
      EXPECT_EQ(shown(flat_snap->sequences[i].layers[layer]),
                shown(grouped_snap->sequences[i].layers[layer]))
          << "seq " << flat_snap->sequences[i].id << " layer " << layer;
    }
  }
  const CacheStats a = flat->Stats(), b = grouped->Stats();
  EXPECT_GT(b.blocks_used, 0);
  if (variant != 1) {  // no spares
    EXPECT_EQ(a.blocks_used + a.blocks_cached,
              3 * (b.blocks_used + b.blocks_cached));
    for (SeqId seq : flat->Sequences()) {
      EXPECT_EQ(flat->Stats(seq)->blocks, 3 * grouped->Stats(seq)->blocks);
    }
  }
  // The snapshot of a grouped cache reads back and verifies.
  absl::StatusOr<Snapshot> snap =
      grouped->TakeSnapshot({.include_token_data = true});
  ASSERT_TRUE(snap.ok()) << snap.status();
  absl::StatusOr<Snapshot> parsed = ParseSnapshot(EncodeSnapshot(*snap));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(*parsed == *snap);
  EXPECT_TRUE(parsed->config.group_layers);
  EXPECT_THAT(VerifySnapshot(*parsed), IsEmpty());
}

INSTANTIATE_TEST_SUITE_P(Policies, GroupedWalk, ::testing::Values(0, 1, 2));

// A layer that starts after the rest of its group slid past a block reaches
// back into blocks the group let go of: refused, nothing changed.
TEST(LayerGroups, ALayerCannotReachBackPastItsGroup) {
  auto cache = Make(Config(0, true, 64));
  ASSERT_NE(cache, nullptr);
  const SeqId seq = *cache->AddSequence();
  const std::vector<float> k = Keys(1, 1, 0, 40);
  ASSERT_TRUE(cache
                  ->Update(seq, 1, {k.data(), DType::kF32, 40},
                           {k.data(), DType::kF32, 40}, 40)
                  .ok());
  const testing::CacheFingerprint before = Fingerprint(*cache);
  const absl::Status s = cache->Update(seq, 3, {k.data(), DType::kF32, 8},
                                       {k.data(), DType::kF32, 8}, 8);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("let go of"));
  EXPECT_THAT(testing::Differences(before, Fingerprint(*cache)), IsEmpty());
  // Joining at the window is fine: the same 40 tokens at once.
  EXPECT_TRUE(cache
                  ->Update(seq, 3, {k.data(), DType::kF32, 40},
                           {k.data(), DType::kF32, 40}, 40)
                  .ok());
  EXPECT_TRUE(cache->Validate().ok());
}

// Engine mode on groups: one reservation per group and step, the kernels
// write every layer of the group at its own base, and every layer reads
// back what its kernel wrote, through Gather and the exported tables.
TEST(LayerGroups, ReserveBatchServesEveryLayerOfAGroup) {
  const CacheConfig c = Config(0, true, 64);
  auto cache = Make(c);
  ASSERT_NE(cache, nullptr);
  std::vector<SeqId> seqs;
  for (int i = 0; i < 3; ++i) seqs.push_back(*cache->AddSequence());
  const int64_t block_bytes = BlockBytes(c);
  const int64_t token_bytes = kElems * sizeof(float);
  std::vector<int64_t> lengths(seqs.size(), 0);
  for (int step = 0; step < 12; ++step) {
    const int64_t tokens = step == 0 ? 6 : 1;  // a prompt, then decoding
    for (int group_first : {0, 1}) {           // a layer of each group names it
      std::vector<ReserveRequest> requests;
      for (size_t i = 0; i < seqs.size(); ++i) {
        requests.push_back(
            {.seq = seqs[i], .seq_len = lengths[i] + tokens, .tokens = tokens});
      }
      std::vector<int64_t> slots(seqs.size() * static_cast<size_t>(tokens));
      ASSERT_TRUE(
          cache->ReserveBatch(group_first, requests, absl::MakeSpan(slots))
              .ok());
      for (int layer = group_first; layer < kLayers; layer += 2) {
        auto* base = static_cast<std::byte*>(*cache->LayerBase(layer));
        for (size_t i = 0; i < seqs.size(); ++i) {
          const std::vector<float> k =
              Keys(static_cast<int64_t>(i), layer, lengths[i], tokens);
          for (int64_t t = 0; t < tokens; ++t) {
            const int64_t s =
                slots[i * static_cast<size_t>(tokens) + static_cast<size_t>(t)];
            if (s == kNoSlot) continue;
            std::byte* block = base + (s / kBlock) * block_bytes;
            std::memcpy(block + (s % kBlock) * token_bytes,
                        k.data() + t * kElems, token_bytes);
            std::memcpy(block + (kBlock + s % kBlock) * token_bytes,
                        k.data() + t * kElems, token_bytes);
          }
        }
      }
    }
    for (int64_t& length : lengths) length += tokens;
  }
  // 17 tokens: 5 blocks of the global group, and of the window group a
  // sink block and the 4 its window of 11 touches.
  EXPECT_EQ(cache->Stats(seqs[0])->blocks, 10);
  ASSERT_TRUE(cache->Validate().ok()) << cache->Validate();
  auto per_layer = Make(Config(0, false, 3 * 64));
  for (size_t i = 0; i < seqs.size(); ++i) {
    const SeqId twin = *per_layer->AddSequence();
    for (int layer = 0; layer < kLayers; ++layer) {
      const std::vector<float> k =
          Keys(static_cast<int64_t>(i), layer, 0, lengths[i]);
      ASSERT_TRUE(per_layer
                      ->Update(twin, layer, {k.data(), DType::kF32, lengths[i]},
                               {k.data(), DType::kF32, lengths[i]}, lengths[i])
                      .ok());
      absl::StatusOr<GatheredLayer> want = per_layer->Gather(twin, layer);
      absl::StatusOr<GatheredLayer> have = cache->Gather(seqs[i], layer);
      ASSERT_TRUE(want.ok() && have.ok());
      EXPECT_EQ(have->positions, want->positions) << "layer " << layer;
      EXPECT_EQ(have->k, want->k) << "layer " << layer;
      EXPECT_EQ(have->v, want->v) << "layer " << layer;
    }
    EXPECT_EQ(3 * cache->Stats(seqs[i])->blocks,
              per_layer->Stats(twin)->blocks);
  }
  // The blocks allocated count group blocks: a third of the per-layer
  // cache's, which took one per layer.
  EXPECT_EQ(3 * cache->Stats().blocks_used, per_layer->Stats().blocks_used);
}

// Reservations are for a whole group: a group whose layers Update moved
// apart is refused, with nothing changed, until the step is finished.
TEST(LayerGroups, ReserveRefusesAGroupWhoseLayersDiffer) {
  auto cache = Make(Config(0, true, 64));
  ASSERT_NE(cache, nullptr);
  const SeqId seq = *cache->AddSequence();
  const std::vector<float> k = Keys(1, 0, 0, 5);
  ASSERT_TRUE(cache
                  ->Update(seq, 0, {k.data(), DType::kF32, 5},
                           {k.data(), DType::kF32, 5}, 5)
                  .ok());
  std::vector<int64_t> slots(1);
  const testing::CacheFingerprint before = Fingerprint(*cache);
  absl::Status s = cache->Reserve(seq, 2, 6, 1, absl::MakeSpan(slots));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("group"));
  EXPECT_THAT(testing::Differences(before, Fingerprint(*cache)), IsEmpty());
  // In a batch too, behind a request that would succeed.
  const SeqId other = *cache->AddSequence();
  const testing::CacheFingerprint before_batch = Fingerprint(*cache);
  const ReserveRequest step[] = {{.seq = other, .seq_len = 1, .tokens = 1},
                                 {.seq = seq, .seq_len = 6, .tokens = 1}};
  std::vector<int64_t> step_slots(2);
  s = cache->ReserveBatch(0, step, absl::MakeSpan(step_slots));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(testing::Differences(before_batch, Fingerprint(*cache)),
              IsEmpty());
  // The odd group never moved: it reserves.
  EXPECT_TRUE(cache->Reserve(seq, 1, 1, 1, absl::MakeSpan(slots)).ok());
  for (int layer : {2, 4}) {
    ASSERT_TRUE(cache
                    ->Update(seq, layer, {k.data(), DType::kF32, 5},
                             {k.data(), DType::kF32, 5}, 5)
                    .ok());
  }
  EXPECT_TRUE(cache->Reserve(seq, 2, 6, 1, absl::MakeSpan(slots)).ok());
  EXPECT_EQ(*cache->Length(seq, 4), 6);
  EXPECT_TRUE(cache->Validate().ok()) << cache->Validate();
}

// ---- Cases a review found (each in both forms of tables).

CacheConfig Plain(int layers, OverflowPolicy p, int64_t max_seq_len,
                  bool grouped, int64_t num_blocks) {
  return {.num_layers = layers,
          .num_kv_heads = kHeads,
          .head_dim = kDim,
          .dtype = DType::kF32,
          .block_tokens = kBlock,
          .num_blocks = num_blocks,
          .max_seq_len = max_seq_len,
          .overflow = p,
          .group_layers = grouped};
}

absl::Status Up(KVCache& c, SeqId seq, int layer, int64_t from, int64_t to) {
  const std::vector<float> k = Keys(1, layer, from, to - from);
  return c.Update(seq, layer, {k.data(), DType::kF32, to - from},
                  {k.data(), DType::kF32, to - from}, to);
}

// A pass cut short by Truncate leaves the layers with different statistics
// (one evicted a token the others never held): they still show the same
// positions, so the group agrees again: it reserves and publishes.
TEST(LayerGroups, APassCutShortAgreesAgain) {
  for (bool grouped : {false, true}) {
    SCOPED_TRACE(grouped ? "grouped" : "per-layer");
    auto cache = Make(Plain(2, OverflowPolicy::kSlidingWindow, 8, grouped, 64));
    const SeqId seq = *cache->AddSequence();
    ASSERT_TRUE(Up(*cache, seq, 0, 0, 8).ok());
    ASSERT_TRUE(Up(*cache, seq, 1, 0, 8).ok());
    ASSERT_TRUE(Up(*cache, seq, 0, 8, 9).ok());  // layer 0 evicts position 0
    ASSERT_TRUE(cache->Truncate(seq, 0).ok());
    std::vector<int32_t> ids = {7, 8, 9, 10, 11, 12, 13, 14};
    ASSERT_TRUE(cache->AppendTokens(seq, ids).ok());
    for (int layer = 0; layer < 2; ++layer) {
      ASSERT_TRUE(Up(*cache, seq, layer, 0, 8).ok());
    }
    const SeqId other = *cache->AddSequence();
    EXPECT_EQ(*cache->MatchPrefix(other, ids), 8);
    std::vector<int64_t> slots(1);
    EXPECT_TRUE(cache->Reserve(seq, 0, 9, 1, absl::MakeSpan(slots)).ok());
    // Each layer keeps its own statistics; the reservation moved layer 0,
    // or with groups both.
    absl::StatusOr<Snapshot> snap = cache->TakeSnapshot({});
    ASSERT_TRUE(snap.ok());
    EXPECT_EQ(snap->sequences[0].layers[0].evicted, 1 + 1);
    EXPECT_EQ(snap->sequences[0].layers[1].evicted, grouped ? 1 : 0);
    EXPECT_EQ(cache->Stats(seq)->evictions, grouped ? 3 : 2);
    EXPECT_TRUE(cache->Validate().ok()) << cache->Validate();
  }
}

// BlocksNeeded says what a pass of Updates takes. A group's table holds the
// blocks of both its states until its last layer moves: a chunk longer
// than the window takes the blocks between (Reserve for the group, or
// chunks no longer than the window, do not).
TEST(LayerGroups, BlocksNeededCountsTheStepLayerByLayer) {
  auto cache = Make(Plain(3, OverflowPolicy::kSlidingWindow, 8, true, 64));
  const SeqId seq = *cache->AddSequence();
  for (int layer = 0; layer < 3; ++layer) {
    ASSERT_TRUE(Up(*cache, seq, layer, 0, 40).ok());
  }
  for (const int64_t chunk : {1, 4, 8, 40}) {
    const int64_t len = *cache->Length(seq, 0);
    const int64_t needed = *cache->BlocksNeeded(seq, len + chunk, chunk);
    const int64_t before = cache->Stats().blocks_allocated;
    ASSERT_TRUE(Up(*cache, seq, 0, len, len + chunk).ok());
    EXPECT_EQ(cache->Stats().blocks_allocated - before, needed)
        << "chunk " << chunk;
    for (int layer = 1; layer < 3; ++layer) {
      ASSERT_TRUE(Up(*cache, seq, layer, len, len + chunk).ok());
    }
    EXPECT_EQ(cache->Stats().blocks_allocated - before, needed);
  }
  EXPECT_TRUE(cache->Validate().ok()) << cache->Validate();
}

// A ring whose window is one token past a block boundary: layers a token
// apart touch one block more than one layer does. The group's ring keeps it
// (no allocation after warm-up), and PlanAdmission counts it: a pool of
// exactly what it says serves the request.
TEST(LayerGroups, ARingKeepsRoomForItsLayersAStepApart) {
  auto probe = Make(Plain(2, OverflowPolicy::kCircularBuffer, 9, true, 64));
  absl::StatusOr<Admission> admission = probe->PlanAdmission({}, 0, 60);
  ASSERT_TRUE(admission.ok());
  EXPECT_EQ(admission->blocks_needed, 4);  // ceil(9 / 4) + 1
  auto cache = Make(Plain(2, OverflowPolicy::kCircularBuffer, 9, true,
                          admission->blocks_needed));
  const SeqId seq = *cache->AddSequence();
  int64_t allocated_at_20 = -1;
  for (int64_t len = 1; len <= 60; ++len) {
    if (len == 20) allocated_at_20 = cache->Stats().blocks_allocated;
    for (int layer = 0; layer < 2; ++layer) {
      ASSERT_TRUE(Up(*cache, seq, layer, len - 1, len).ok())
          << "len " << len << " layer " << layer;
    }
  }
  EXPECT_EQ(cache->Stats().blocks_allocated, allocated_at_20);
  EXPECT_TRUE(cache->Validate().ok()) << cache->Validate();
}

// A layer that lags its group exports its own blocks: a kernel computes
// its length from the row, (pages - 1) * block_tokens + last_page_len.
TEST(LayerGroups, ALaggingLayerExportsItsOwnRow) {
  auto cache = Make(Plain(3, OverflowPolicy::kError, 64, true, 64));
  const SeqId seq = *cache->AddSequence();
  ASSERT_TRUE(Up(*cache, seq, 0, 0, 16).ok());
  ASSERT_TRUE(Up(*cache, seq, 1, 0, 7).ok());
  for (int layer : {0, 1, 2}) {
    std::vector<int32_t> indptr(2), indices(16), last(1), lens(1);
    std::vector<int32_t> padded(8), plens(1);
    const SeqId seqs[] = {seq};
    ASSERT_TRUE(cache
                    ->ExportBlockTables(
                        layer, seqs,
                        CsrBlockTables{.indptr = absl::MakeSpan(indptr),
                                       .indices = absl::MakeSpan(indices),
                                       .last_page_len = absl::MakeSpan(last),
                                       .seq_lens = absl::MakeSpan(lens)})
                    .ok());
    const int pages = indptr[1] - indptr[0];
    EXPECT_EQ(pages == 0 ? 0 : (pages - 1) * kBlock + last[0], lens[0])
        << "layer " << layer;
    EXPECT_EQ(lens[0], *cache->Length(seq, layer));
    ASSERT_TRUE(cache
                    ->ExportBlockTables(
                        layer, seqs,
                        PaddedBlockTables{.block_table = absl::MakeSpan(padded),
                                          .max_blocks = 8,
                                          .pad = -1,
                                          .seq_lens = absl::MakeSpan(plens)})
                    .ok());
    EXPECT_EQ(std::count_if(padded.begin(), padded.end(),
                            [](int32_t b) { return b >= 0; }),
              pages);
    EXPECT_TRUE(
        std::equal(indices.begin(), indices.begin() + pages, padded.begin()));
  }
}

}  // namespace
}  // namespace kvpage
