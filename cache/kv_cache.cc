#include "kvpage/kv_cache.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/strings/str_format.h"
#include "allocator/block_pool.h"
#include "allocator/check.h"
#include "allocator/convert.h"
#include "allocator/host_arena.h"
#include "cache/block_table.h"
#include "cache/kv_cache_internal.h"

namespace kvpage {

using internal::BlockId;
using internal::BlockPool;
using internal::BlockRange;
using internal::BlockTable;
using internal::CeilDiv;
using internal::kNoBlock;
using internal::LayerRules;

namespace internal {

LayerRules LayerRules::Resolve(const LayerPolicy& p, int block_tokens) {
  LayerRules r;
  r.overflow = p.overflow;
  r.max_seq_len = p.max_seq_len;
  r.sinks = p.overflow == OverflowPolicy::kError ? 0 : p.sink_tokens;
  r.truncate_to = EffectiveTruncateTo(p.max_seq_len, p.truncate_to);
  r.block_tokens = block_tokens;
  r.sink_blocks = CeilDiv(r.sinks, block_tokens);
  r.ring_blocks = CeilDiv(r.max_seq_len - r.sinks - 1, block_tokens) + 1;
  return r;
}

}  // namespace internal

namespace {

struct Sequence {
  std::vector<BlockTable> layers;
};

// What an update or rollback does to one layer, worked out before anything
// changes. `fresh` blocks must come from the pool; everything else is
// reused from the blocks the layer lets go of (and a ring's spares).
struct Plan {
  int64_t length = 0;        // L'
  int64_t window_start = 0;  // ws'
  int64_t sink_blocks = 0;   // sink blocks held afterwards
  BlockRange window;         // window blocks held afterwards
  int64_t new_blocks = 0;    // logical blocks that need a block
  int64_t fresh = 0;         // of those, taken from the pool
  int64_t evicted = 0;       // tokens the policy evicts
  int64_t visible_before = 0, visible_after = 0;
};

Plan MakePlan(const LayerRules& r, const BlockTable& t, int64_t seq_len) {
  Plan plan;
  plan.length = seq_len;
  // A rollback below the window start can only reach into the sinks (the
  // callers refuse the rest): then nothing stays evicted.
  const int64_t ws0 =
      seq_len < t.length ? std::min(t.window_start, seq_len) : t.window_start;
  int64_t ws = ws0;
  const int64_t visible = internal::VisibleTokens(r, seq_len, ws0);
  if (visible > r.max_seq_len) {
    switch (r.overflow) {
      case OverflowPolicy::kSlidingWindow:
      case OverflowPolicy::kCircularBuffer:
        ws = seq_len - (r.max_seq_len - r.sinks);
        break;
      case OverflowPolicy::kTruncate:
        ws = seq_len - (r.truncate_to - r.sinks);
        break;
      case OverflowPolicy::kError:
        break;  // refused before planning
    }
  }
  plan.window_start = ws;
  plan.evicted = std::max<int64_t>(0, ws - std::max(ws0, r.sinks));
  plan.visible_before = internal::VisibleTokens(r, t.length, t.window_start);
  plan.visible_after = internal::VisibleTokens(r, seq_len, ws);

  plan.sink_blocks = internal::SinkBlocks(r, seq_len);
  plan.window = internal::WindowRange(r, seq_len, ws);
  const int64_t cur_first = t.window_first;
  const int64_t cur_last = t.window_first + t.window_blocks();
  const int64_t kept = std::max<int64_t>(
      0, std::min(cur_last, plan.window.last) -
             std::max(cur_first, plan.window.first));
  const int64_t sinks_now = static_cast<int64_t>(t.sink_blocks.size());
  const int64_t released = (t.window_blocks() - kept) +
                           std::max<int64_t>(0, sinks_now - plan.sink_blocks);
  plan.new_blocks = (plan.window.size() - kept) +
                    std::max<int64_t>(0, plan.sink_blocks - sinks_now);
  const int64_t reusable =
      released + (r.ring() ? static_cast<int64_t>(t.spares.size()) : 0);
  plan.fresh = std::max<int64_t>(0, plan.new_blocks - reusable);
  return plan;
}

}  // namespace

// Invariants (Validate() walks them):
//   ref_count(b) == holdings of b over all tables (sink, window, spare)
//   pool->used_blocks() == distinct blocks held
//   tokens_stored == visible tokens summed over sequences and layers
//   every table satisfies the invariants in cache/block_table.h
struct KVCache::Impl {
  CacheConfig config;
  std::vector<LayerRules> rules;  // per layer
  int64_t block_bytes = 0;
  int64_t token_elems = 0;  // num_kv_heads * head_dim
  int64_t token_bytes = 0;  // token_elems * DTypeSize(dtype)
  int64_t v_offset = 0;     // bytes from a block's start to its V region
  // Declared before `local` so that the cache is flushed before the pool
  // goes away.
  std::unique_ptr<BlockPool> pool;
  std::unique_ptr<BlockPool::LocalCache> local;
  std::byte* host_base = nullptr;  // null when the storage is not host memory

  absl::flat_hash_map<SeqId, Sequence> sequences;
  SeqId next_seq = 1;

  int64_t tokens_stored = 0;
  int64_t hits = 0, misses = 0, compressions_applied = 0, evictions = 0;
  int64_t bytes_written = 0, bytes_copied = 0;
  int64_t blocks_released_by_policy = 0, blocks_reused_by_ring = 0;
  int64_t blocks_allocated = 0, blocks_released = 0;

  // Scratch space reused across calls (never part of the cache's state).
  absl::InlinedVector<BlockId, 16> fresh_ids;
  absl::InlinedVector<BlockId, 16> recycled;
  std::vector<std::byte> staging;

  ~Impl() {
    for (auto& [id, sequence] : sequences) {
      for (BlockTable& table : sequence.layers) ReleaseAll(table);
    }
  }

  // Gives one table's hold on `id` back to the pool.
  void Release(BlockId id) {
    local->Release(id);
    ++blocks_released;
  }

  void ReleaseAll(BlockTable& t) {
    for (BlockId id : t.sink_blocks) Release(id);
    for (size_t i = t.head; i < t.window.size(); ++i) Release(t.window[i]);
    for (BlockId id : t.spares) Release(id);
    t.sink_blocks.clear();
    t.ResetWindow(0);
    t.spares.clear();
  }

  // Moves `t` to the plan's blocks, taking new blocks from what it lets go
  // of, the ring's spares and then `fresh` (exactly plan.fresh ids). Cannot
  // fail. O(blocks changed).
  void ApplyBlocks(const LayerRules& r, BlockTable& t, const Plan& plan,
                   absl::Span<const BlockId> fresh) {
    recycled.clear();
    int64_t evicted_blocks = 0;  // window blocks the policy pushed out
    while (static_cast<int64_t>(t.sink_blocks.size()) > plan.sink_blocks) {
      recycled.push_back(t.sink_blocks.back());
      t.sink_blocks.pop_back();
    }
    if (t.window_blocks() > 0) {
      KVPAGE_DCHECK(plan.window.size() == 0 ||
                    t.window_first <= plan.window.first);
      while (t.window_blocks() > 0 && t.window_first < plan.window.first) {
        recycled.push_back(t.PopWindowFront());
        ++evicted_blocks;
      }
      while (t.window_blocks() > 0 &&
             t.window_first + t.window_blocks() > plan.window.last) {
        recycled.push_back(t.PopWindowBack());
      }
    }
    if (t.window_blocks() == 0) t.ResetWindow(plan.window.first);
    if (!r.ring()) blocks_released_by_policy += evicted_blocks;

    // Sources, in order: a ring's spares, what was let go of, the pool.
    size_t next_fresh = 0;
    size_t next_recycled = 0;
    auto take = [&]() -> BlockId {
      if (r.ring() && !t.spares.empty()) {
        const BlockId id = t.spares.back();
        t.spares.pop_back();
        ++blocks_reused_by_ring;
        return id;
      }
      if (next_recycled < recycled.size()) {
        if (r.ring()) ++blocks_reused_by_ring;
        return recycled[next_recycled++];
      }
      return fresh[next_fresh++];
    };
    if (r.ring()) {
      // What the window let go of becomes spare first, so that the oldest
      // block is the one reused.
      while (next_recycled < recycled.size()) {
        t.spares.push_back(recycled[next_recycled++]);
      }
    }
    while (static_cast<int64_t>(t.sink_blocks.size()) < plan.sink_blocks) {
      t.sink_blocks.push_back(take());
    }
    while (t.window_blocks() < plan.window.size()) t.window.push_back(take());
    KVPAGE_DCHECK(next_fresh == fresh.size());
    // Leftovers: a ring keeps up to its size as spares, the rest goes back.
    while (r.ring() && !t.spares.empty() &&
           t.window_blocks() + static_cast<int64_t>(t.spares.size()) >
               r.ring_blocks) {
      Release(t.spares.back());
      t.spares.pop_back();
    }
    for (; next_recycled < recycled.size(); ++next_recycled) {
      Release(recycled[next_recycled]);
    }
  }

  void Commit(BlockTable& t, const Plan& plan) {
    tokens_stored += plan.visible_after - plan.visible_before;
    evictions += plan.evicted;
    t.evicted += plan.evicted;
    t.length = plan.length;
    t.window_start = plan.window_start;
    t.max_length = std::max(t.max_length, plan.length);
  }

  // Refuses a write of [start, seq_len) or a rollback to seq_len that would
  // reach positions the policy already evicted: OutOfRange.
  absl::Status CheckEvicted(std::string_view op, SeqId seq, int layer,
                            const BlockTable& t, int64_t start,
                            int64_t seq_len) const {
    const LayerRules& r = rules[static_cast<size_t>(layer)];
    if (t.window_start <= r.sinks) return absl::OkStatus();  // none evicted
    const int64_t evicted_lo = r.sinks, evicted_hi = t.window_start;
    const int64_t write_lo = std::max(start, evicted_lo);
    const int64_t write_hi = std::min({seq_len, t.length, evicted_hi});
    const bool rollback_into =
        seq_len < t.length && seq_len - 1 >= evicted_lo &&
        seq_len - 1 < evicted_hi;
    if (write_lo >= write_hi && !rollback_into) return absl::OkStatus();
    return absl::OutOfRangeError(absl::StrFormat(
        "%s(seq %d, layer %d, seq_len %d): positions [%d, %d) were evicted by "
        "the %s policy; the layer keeps sinks [0, %d) and window [%d, %d)%s",
        op, seq, layer, seq_len, evicted_lo, evicted_hi,
        OverflowPolicyName(r.overflow), std::min(r.sinks, t.length),
        t.window_start, t.length,
        rollback_into ? "; a rollback must keep a visible window token or go "
                        "back into the sinks"
                      : ""));
  }

  // Writes `count` tokens of one half (keys or values) into slots
  // [slot, slot + count) of block `id`.
  void WriteRun(BlockId id, bool values, int64_t slot, const std::byte* src,
                DType from, int64_t count) {
    const int64_t offset = (values ? v_offset : 0) + slot * token_bytes;
    const int64_t elems = count * token_elems;
    if (host_base != nullptr) {
      internal::ConvertElements(src, from,
                                host_base + id * block_bytes + offset,
                                config.dtype, elems);
      return;
    }
    staging.resize(static_cast<size_t>(count * token_bytes));
    internal::ConvertElements(src, from, staging.data(), config.dtype, elems);
    pool->storage().Write(id, offset, staging.data(), count * token_bytes);
  }

  // Reads `count` tokens of one half from slot `slot` of block `id` as f32.
  // Const: storage that is not host memory reads through a local buffer.
  void ReadRun(BlockId id, bool values, int64_t slot, int64_t count,
               float* out) const {
    const int64_t offset = (values ? v_offset : 0) + slot * token_bytes;
    const int64_t elems = count * token_elems;
    if (host_base != nullptr) {
      internal::ConvertElements(host_base + id * block_bytes + offset,
                                config.dtype, out, DType::kF32, elems);
      return;
    }
    std::vector<std::byte> buffer(static_cast<size_t>(count * token_bytes));
    pool->storage().Read(id, offset, buffer.data(), count * token_bytes);
    internal::ConvertElements(buffer.data(), config.dtype, out, DType::kF32,
                              elems);
  }
};

int64_t LayerView::tokens() const {
  int64_t total = 0;
  for (const BlockView& b : blocks) total += b.tokens;
  return total;
}

KVCache::KVCache(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KVCache::~KVCache() = default;

absl::StatusOr<std::unique_ptr<KVCache>> KVCache::Create(
    const CacheConfig& config) {
  if (absl::Status s = ValidateConfig(config); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<internal::HostArena>> arena =
      internal::HostArena::Create(
          config.num_blocks, BlockBytes(config),
          {.prefault = config.prefault, .huge_pages = config.huge_pages});
  if (!arena.ok()) return arena.status();
  return internal::KVCacheAccess::CreateWithStorage(config, *std::move(arena));
}

absl::StatusOr<std::unique_ptr<KVCache>>
internal::KVCacheAccess::CreateWithStorage(
    const CacheConfig& config, std::unique_ptr<BlockStorage> storage) {
  if (absl::Status s = ValidateConfig(config); !s.ok()) return s;
  if (storage == nullptr || storage->num_blocks() != config.num_blocks ||
      storage->block_bytes() != BlockBytes(config)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "KVCache storage: %d blocks of %d bytes; the config needs %d of %d",
        storage == nullptr ? 0 : storage->num_blocks(),
        storage == nullptr ? 0 : storage->block_bytes(), config.num_blocks,
        BlockBytes(config)));
  }
  auto impl = std::make_unique<KVCache::Impl>();
  impl->config = config;
  const LayerPolicy global{.overflow = config.overflow,
                           .max_seq_len = config.max_seq_len,
                           .sink_tokens = config.sink_tokens,
                           .truncate_to = config.truncate_to};
  impl->rules.assign(static_cast<size_t>(config.num_layers),
                     LayerRules::Resolve(global, config.block_tokens));
  for (const LayerPolicy& p : config.layer_policies) {
    impl->rules[static_cast<size_t>(p.layer)] =
        LayerRules::Resolve(p, config.block_tokens);
  }
  impl->block_bytes = BlockBytes(config);
  impl->token_elems = int64_t{config.num_kv_heads} * config.head_dim;
  impl->token_bytes = impl->token_elems * DTypeSize(config.dtype);
  impl->v_offset = impl->block_bytes / 2;
  absl::StatusOr<std::unique_ptr<BlockPool>> pool =
      BlockPool::Create(std::move(storage));
  if (!pool.ok()) return pool.status();
  impl->pool = *std::move(pool);
  impl->local = std::make_unique<BlockPool::LocalCache>(*impl->pool);
  impl->host_base = impl->pool->storage().host_base();
  return std::unique_ptr<KVCache>(new KVCache(std::move(impl)));
}

const CacheConfig& KVCache::config() const { return impl_->config; }

absl::StatusOr<SeqId> KVCache::AddSequence() {
  Impl& m = *impl_;
  const SeqId id = m.next_seq++;
  Sequence sequence;
  sequence.layers.resize(static_cast<size_t>(m.config.num_layers));
  for (size_t layer = 0; layer < sequence.layers.size(); ++layer) {
    sequence.layers[layer].window_first = m.rules[layer].sink_blocks;
  }
  m.sequences.emplace(id, std::move(sequence));
  return id;
}

absl::Status KVCache::RemoveSequence(SeqId seq) {
  Impl& m = *impl_;
  auto it = m.sequences.find(seq);
  if (it == m.sequences.end()) {
    return absl::NotFoundError(
        absl::StrFormat("RemoveSequence(seq %d): no such sequence", seq));
  }
  for (size_t layer = 0; layer < it->second.layers.size(); ++layer) {
    BlockTable& table = it->second.layers[layer];
    m.tokens_stored -=
        internal::VisibleTokens(m.rules[layer], table.length, table.window_start);
    m.ReleaseAll(table);
  }
  m.sequences.erase(it);
  return absl::OkStatus();
}

namespace {

// Looks up a sequence and layer for `op`, or says why not.
template <typename ImplT>
auto FindTable(ImplT& m, std::string_view op, SeqId seq, int layer)
    -> absl::StatusOr<decltype(&m.sequences.begin()->second.layers[0])> {
  auto it = m.sequences.find(seq);
  if (ABSL_PREDICT_FALSE(it == m.sequences.end())) {
    return absl::NotFoundError(absl::StrFormat(
        "%s(seq %d, layer %d): no such sequence", op, seq, layer));
  }
  if (ABSL_PREDICT_FALSE(layer < 0 || layer >= m.config.num_layers)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s(seq %d, layer %d): layer out of range [0, %d)", op,
                        seq, layer, m.config.num_layers));
  }
  return &it->second.layers[static_cast<size_t>(layer)];
}

}  // namespace

absl::Status KVCache::Update(SeqId seq, int layer, TokenSpan k, TokenSpan v,
                             int64_t seq_len) {
  Impl& m = *impl_;
  absl::StatusOr<BlockTable*> found = FindTable(m, "Update", seq, layer);
  if (ABSL_PREDICT_FALSE(!found.ok())) return found.status();
  BlockTable& table = **found;
  const LayerRules& r = m.rules[static_cast<size_t>(layer)];
  const DType dtype = m.config.dtype;
  const int64_t n = k.tokens;

  // Validate everything before touching anything.
  auto invalid = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Update(seq %d, layer %d, seq_len %d): %s", seq, layer, seq_len, why));
  };
  if (ABSL_PREDICT_FALSE(k.tokens != v.tokens || n < 0)) {
    return invalid(absl::StrFormat("k has %d tokens, v has %d", k.tokens,
                                   v.tokens));
  }
  for (const TokenSpan* span : {&k, &v}) {
    if (ABSL_PREDICT_FALSE(span->dtype != DType::kF32 &&
                           span->dtype != dtype)) {
      return invalid(absl::StrFormat(
          "%s is %s; the cache takes f32 or its own dtype %s",
          span == &k ? "k" : "v", DTypeName(span->dtype), DTypeName(dtype)));
    }
    if (ABSL_PREDICT_FALSE(n > 0 && span->data == nullptr)) {
      return invalid(absl::StrFormat("%s is null with %d tokens",
                                     span == &k ? "k" : "v", n));
    }
  }
  if (ABSL_PREDICT_FALSE(seq_len < n)) {
    return invalid(absl::StrFormat(
        "%d tokens end at seq_len %d: they would start below position 0", n,
        seq_len));
  }
  const int64_t start = seq_len - n;
  if (ABSL_PREDICT_FALSE(start > table.length)) {
    return invalid(absl::StrFormat(
        "gap: %d tokens start at position %d but the layer holds %d", n, start,
        table.length));
  }
  if (ABSL_PREDICT_FALSE(r.evicts() && table.window_start > r.sinks)) {
    if (absl::Status s = m.CheckEvicted("Update", seq, layer, table, start,
                                        seq_len);
        !s.ok()) {
      return s;
    }
  }
  if (ABSL_PREDICT_FALSE(!r.evicts() && seq_len > r.max_seq_len)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "Update(seq %d, layer %d, seq_len %d): exceeds max_seq_len %d "
        "(overflow policy error)",
        seq, layer, seq_len, r.max_seq_len));
  }

  // The one step that can fail for lack of memory comes first.
  const Plan plan = MakePlan(r, table, seq_len);
  m.fresh_ids.resize(static_cast<size_t>(plan.fresh));
  if (plan.fresh == 1) {
    m.fresh_ids[0] = m.local->AllocateOne();
    if (ABSL_PREDICT_FALSE(m.fresh_ids[0] == kNoBlock)) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "Update(seq %d, layer %d, seq_len %d): needs 1 block, the pool of "
          "%d has none free",
          seq, layer, seq_len, m.pool->capacity()));
    }
  } else if (plan.fresh > 1) {
    if (absl::Status s = m.local->Allocate(absl::MakeSpan(m.fresh_ids));
        !s.ok()) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "Update(seq %d, layer %d, seq_len %d): needs %d blocks: %s", seq,
          layer, seq_len, plan.fresh, s.message()));
    }
  }
  m.blocks_allocated += plan.fresh;
  m.ApplyBlocks(r, table, plan, m.fresh_ids);
  m.Commit(table, plan);

  // Write the positions of [start, seq_len) that are visible now; those
  // evicted by this very update are skipped.
  const auto* k_src = static_cast<const std::byte*>(k.data);
  const auto* v_src = static_cast<const std::byte*>(v.data);
  const int64_t k_stride = m.token_elems * DTypeSize(k.dtype);
  const int64_t v_stride = m.token_elems * DTypeSize(v.dtype);
  int64_t written = 0;
  internal::ForEachVisibleRun(
      r, table, start, seq_len,
      [&](BlockId id, int64_t slot, int64_t count, int64_t position) {
        const int64_t done = position - start;
        m.WriteRun(id, false, slot, k_src + done * k_stride, k.dtype, count);
        m.WriteRun(id, true, slot, v_src + done * v_stride, v.dtype, count);
        written += count;
      });
  m.bytes_written += 2 * written * m.token_bytes;
  return absl::OkStatus();
}

absl::Status KVCache::Truncate(SeqId seq, int64_t seq_len) {
  Impl& m = *impl_;
  auto it = m.sequences.find(seq);
  if (it == m.sequences.end()) {
    return absl::NotFoundError(absl::StrFormat(
        "Truncate(seq %d, seq_len %d): no such sequence", seq, seq_len));
  }
  if (seq_len < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Truncate(seq %d, seq_len %d): seq_len must be >= 0", seq, seq_len));
  }
  std::vector<BlockTable>& layers = it->second.layers;
  for (size_t layer = 0; layer < layers.size(); ++layer) {
    if (layers[layer].length <= seq_len) continue;
    if (absl::Status s = m.CheckEvicted("Truncate", seq, static_cast<int>(layer),
                                        layers[layer], seq_len, seq_len);
        !s.ok()) {
      return s;
    }
  }
  for (size_t layer = 0; layer < layers.size(); ++layer) {
    BlockTable& table = layers[layer];
    if (table.length <= seq_len) continue;
    const Plan plan = MakePlan(m.rules[layer], table, seq_len);
    KVPAGE_DCHECK(plan.fresh == 0);
    m.ApplyBlocks(m.rules[layer], table, plan, {});
    m.Commit(table, plan);
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> KVCache::Length(SeqId seq, int layer) const {
  absl::StatusOr<const BlockTable*> table =
      FindTable(*impl_, "Length", seq, layer);
  if (!table.ok()) return table.status();
  return (*table)->length;
}

absl::StatusOr<GatheredLayer> KVCache::Gather(SeqId seq, int layer) const {
  absl::StatusOr<const BlockTable*> found =
      FindTable(*impl_, "Gather", seq, layer);
  if (!found.ok()) return found.status();
  const BlockTable& table = **found;
  const Impl& m = *impl_;
  const LayerRules& r = m.rules[static_cast<size_t>(layer)];
  const int64_t tokens =
      internal::VisibleTokens(r, table.length, table.window_start);
  GatheredLayer out;
  out.k.resize(static_cast<size_t>(tokens * m.token_elems));
  out.v.resize(static_cast<size_t>(tokens * m.token_elems));
  out.positions.reserve(static_cast<size_t>(tokens));
  internal::ForEachVisibleRun(
      r, table, 0, table.length,
      [&](BlockId id, int64_t slot, int64_t count, int64_t position) {
        const int64_t done = static_cast<int64_t>(out.positions.size());
        m.ReadRun(id, false, slot, count, out.k.data() + done * m.token_elems);
        m.ReadRun(id, true, slot, count, out.v.data() + done * m.token_elems);
        for (int64_t i = 0; i < count; ++i) out.positions.push_back(position + i);
      });
  return out;
}

absl::StatusOr<LayerView> KVCache::View(SeqId seq, int layer) const {
  absl::StatusOr<const BlockTable*> found =
      FindTable(*impl_, "View", seq, layer);
  if (!found.ok()) return found.status();
  const BlockTable& table = **found;
  const Impl& m = *impl_;
  LayerView view;
  view.dtype = m.config.dtype;
  view.num_kv_heads = m.config.num_kv_heads;
  view.head_dim = m.config.head_dim;
  view.block_tokens = m.config.block_tokens;
  view.token_stride = m.token_elems;
  view.host_accessible = m.host_base != nullptr;
  view.length = table.length;
  internal::ForEachVisibleRun(
      m.rules[static_cast<size_t>(layer)], table, 0, table.length,
      [&](BlockId id, int64_t slot, int64_t count, int64_t position) {
        const auto* k =
            static_cast<const std::byte*>(m.pool->storage().Address(id));
        view.blocks.push_back({.k = k,
                               .v = k + m.v_offset,
                               .block_id = id,
                               .begin_slot = static_cast<int>(slot),
                               .tokens = static_cast<int>(count),
                               .first_position = position});
      });
  return view;
}

CacheStats KVCache::Stats() const {
  const Impl& m = *impl_;
  CacheStats s;
  s.blocks_total = m.pool->capacity();
  s.blocks_used = m.pool->used_blocks();
  s.blocks_free = s.blocks_total - s.blocks_used;
  s.utilization =
      static_cast<double>(s.blocks_used) / static_cast<double>(s.blocks_total);
  s.block_bytes = m.block_bytes;
  s.memory_usage_bytes = s.blocks_used * m.block_bytes;
  s.arena_bytes = s.blocks_total * m.block_bytes;
  s.sequences = static_cast<int64_t>(m.sequences.size());
  s.tokens_stored = m.tokens_stored;
  s.slots_allocated = s.blocks_used * m.config.block_tokens;
  s.hits = m.hits;
  s.misses = m.misses;
  s.compressions_applied = m.compressions_applied;
  s.evictions = m.evictions;
  s.blocks_released_by_policy = m.blocks_released_by_policy;
  s.blocks_reused_by_ring = m.blocks_reused_by_ring;
  s.blocks_allocated = m.blocks_allocated;
  s.blocks_released = m.blocks_released;
  s.bytes_written = m.bytes_written;
  s.bytes_copied = m.bytes_copied;
  return s;
}

absl::StatusOr<SequenceStats> KVCache::Stats(SeqId seq) const {
  const Impl& m = *impl_;
  auto it = m.sequences.find(seq);
  if (it == m.sequences.end()) {
    return absl::NotFoundError(
        absl::StrFormat("Stats(seq %d): no such sequence", seq));
  }
  SequenceStats s;
  for (size_t layer = 0; layer < it->second.layers.size(); ++layer) {
    const BlockTable& table = it->second.layers[layer];
    s.current_length = std::max(s.current_length, table.length);
    s.max_length = std::max(s.max_length, table.max_length);
    s.tokens_stored +=
        internal::VisibleTokens(m.rules[layer], table.length, table.window_start);
    s.blocks += table.held_blocks();
    s.evictions += table.evicted;
  }
  const int64_t slots = s.blocks * m.config.block_tokens;
  s.utilization = slots == 0 ? 0.0
                             : static_cast<double>(s.tokens_stored) /
                                   static_cast<double>(slots);
  s.memory_usage_bytes = s.blocks * m.block_bytes;
  return s;
}

std::vector<SeqId> KVCache::Sequences() const {
  std::vector<SeqId> ids;
  ids.reserve(impl_->sequences.size());
  for (const auto& [id, sequence] : impl_->sequences) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

absl::Status KVCache::Validate() const {
  const Impl& m = *impl_;
  if (absl::Status s = m.pool->Validate(); !s.ok()) return s;
  std::vector<uint32_t> refs(static_cast<size_t>(m.pool->capacity()), 0);
  int64_t tokens = 0;
  for (SeqId seq : Sequences()) {
    const Sequence& sequence = m.sequences.find(seq)->second;
    for (size_t layer = 0; layer < sequence.layers.size(); ++layer) {
      const BlockTable& t = sequence.layers[layer];
      const LayerRules& r = m.rules[layer];
      auto fail = [&](const std::string& what) {
        return absl::InternalError(absl::StrFormat(
            "seq %d, layer %d (length %d, window start %d, %d sink and %d "
            "window blocks from %d, %d spares): %s",
            seq, layer, t.length, t.window_start, t.sink_blocks.size(),
            t.window_blocks(), t.window_first, t.spares.size(), what));
      };
      if (t.max_length < t.length) return fail("max_length below length");
      const int64_t visible = internal::VisibleTokens(r, t.length, t.window_start);
      if (visible > r.max_seq_len) {
        return fail(absl::StrFormat("%d visible tokens exceed max_seq_len %d",
                                    visible, r.max_seq_len));
      }
      if (!r.evicts() && t.window_start != 0) {
        return fail("the error policy evicted tokens");
      }
      if (static_cast<int64_t>(t.sink_blocks.size()) !=
          internal::SinkBlocks(r, t.length)) {
        return fail("sink block count is not ceil(min(sinks, length) / bt)");
      }
      const BlockRange want = internal::WindowRange(r, t.length, t.window_start);
      if (t.window_blocks() != want.size() ||
          (want.size() > 0 && t.window_first != want.first)) {
        return fail(absl::StrFormat("window blocks should be [%d, %d)",
                                    want.first, want.last));
      }
      if (!r.ring() && !t.spares.empty()) return fail("spares outside a ring");
      if (r.ring() && t.window_blocks() + static_cast<int64_t>(t.spares.size()) >
                          r.ring_blocks) {
        return fail(absl::StrFormat("ring holds more than its %d blocks",
                                    r.ring_blocks));
      }
      auto count = [&](BlockId id) -> bool {
        if (id >= m.pool->capacity()) return false;
        ++refs[id];
        return true;
      };
      for (BlockId id : t.sink_blocks) {
        if (!count(id)) return fail(absl::StrFormat("block %d out of range", id));
      }
      for (size_t i = t.head; i < t.window.size(); ++i) {
        if (!count(t.window[i])) {
          return fail(absl::StrFormat("block %d out of range", t.window[i]));
        }
      }
      for (BlockId id : t.spares) {
        if (!count(id)) return fail(absl::StrFormat("block %d out of range", id));
      }
      tokens += visible;
    }
  }
  int64_t used = 0;
  for (size_t id = 0; id < refs.size(); ++id) {
    const uint32_t have = m.pool->ref_count(static_cast<BlockId>(id));
    if (have != refs[id]) {
      return absl::InternalError(absl::StrFormat(
          "block %d: ref_count %d but %d table entries hold it", id, have,
          refs[id]));
    }
    used += refs[id] > 0;
  }
  if (used != m.pool->used_blocks()) {
    return absl::InternalError(absl::StrFormat(
        "%d blocks held by tables, pool says %d used", used,
        m.pool->used_blocks()));
  }
  if (tokens != m.tokens_stored) {
    return absl::InternalError(absl::StrFormat(
        "tables hold %d visible tokens, stats say %d", tokens,
        m.tokens_stored));
  }
  if (m.blocks_allocated - m.blocks_released != used) {
    return absl::InternalError(absl::StrFormat(
        "%d blocks allocated and %d released, but %d held", m.blocks_allocated,
        m.blocks_released, used));
  }
  return absl::OkStatus();
}

}  // namespace kvpage
