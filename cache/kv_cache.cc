#include "kvpage/kv_cache.h"

#include <algorithm>
#include <cstddef>
#include <cstring>

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
using internal::BlockTable;
using internal::kNoBlock;
using internal::TableEntry;

namespace {

struct Sequence {
  std::vector<BlockTable> layers;
};

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

// Invariants (Validate() walks them):
//   pool->used_blocks() == number of distinct blocks in all tables
//   ref_count(b) == table entries pointing at b
//   tokens_stored == sum over sequences and layers of visible tokens
//   every table satisfies the invariants in cache/block_table.h
struct KVCache::Impl {
  CacheConfig config;
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

  // Scratch space reused across calls (never part of the cache's state).
  absl::InlinedVector<BlockId, 16> new_ids;
  std::vector<std::byte> staging;

  ~Impl() {
    for (auto& [id, sequence] : sequences) {
      for (BlockTable& table : sequence.layers) ReleaseBlocks(table, 0);
    }
  }

  // Releases the entries from `keep` on.
  void ReleaseBlocks(BlockTable& table, size_t keep) {
    for (size_t i = keep; i < table.entries.size(); ++i) {
      local->Release(table.entries[i].id);
    }
    table.entries.resize(std::min(keep, table.entries.size()));
  }

  // Sets entry ends from index `from` on for a layer holding [0, length).
  void SetEnds(BlockTable& table, size_t from, int64_t length) {
    const int64_t bt = config.block_tokens;
    for (size_t i = from; i < table.entries.size(); ++i) {
      TableEntry& e = table.entries[i];
      e.end = static_cast<uint16_t>(std::min(bt, length - e.position0));
    }
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
  for (BlockTable& table : it->second.layers) {
    m.tokens_stored -= table.length;
    m.ReleaseBlocks(table, 0);
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
  const CacheConfig& c = m.config;
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
                           span->dtype != c.dtype)) {
      return invalid(absl::StrFormat(
          "%s is %s; the cache takes f32 or its own dtype %s",
          span == &k ? "k" : "v", DTypeName(span->dtype),
          DTypeName(c.dtype)));
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
  if (ABSL_PREDICT_FALSE(seq_len > c.max_seq_len)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "Update(seq %d, layer %d, seq_len %d): exceeds max_seq_len %d "
        "(overflow policy %s)",
        seq, layer, seq_len, c.max_seq_len, OverflowPolicyName(c.overflow)));
  }

  // The one step that can fail for lack of memory comes first.
  const int64_t bt = c.block_tokens;
  const size_t have = table.entries.size();
  const size_t need = static_cast<size_t>(CeilDiv(seq_len, bt));
  if (need > have) {
    const size_t extra = need - have;
    m.new_ids.resize(extra);
    if (extra == 1) {
      m.new_ids[0] = m.local->AllocateOne();
      if (ABSL_PREDICT_FALSE(m.new_ids[0] == kNoBlock)) {
        return absl::ResourceExhaustedError(absl::StrFormat(
            "Update(seq %d, layer %d, seq_len %d): needs 1 block, the pool of "
            "%d has none free",
            seq, layer, seq_len, m.pool->capacity()));
      }
    } else if (absl::Status s = m.local->Allocate(absl::MakeSpan(m.new_ids));
               !s.ok()) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "Update(seq %d, layer %d, seq_len %d): needs %d blocks: %s", seq,
          layer, seq_len, extra, s.message()));
    }
    for (size_t i = 0; i < extra; ++i) {
      table.entries.push_back(
          {.id = m.new_ids[i],
           .begin = 0,
           .end = 0,
           .position0 = static_cast<int64_t>(have + i) * bt});
    }
  } else if (need < have) {
    m.ReleaseBlocks(table, need);  // rollback: blocks past seq_len go back
  }
  m.SetEnds(table, std::min(have, need) == 0 ? 0 : std::min(have, need) - 1,
            seq_len);

  // Write [start, seq_len), one run per block.
  const auto* k_src = static_cast<const std::byte*>(k.data);
  const auto* v_src = static_cast<const std::byte*>(v.data);
  const int64_t k_stride = m.token_elems * DTypeSize(k.dtype);
  const int64_t v_stride = m.token_elems * DTypeSize(v.dtype);
  for (int64_t pos = start; pos < seq_len;) {
    const BlockId id = table.entries[static_cast<size_t>(pos / bt)].id;
    const int64_t slot = pos % bt;
    const int64_t count = std::min(bt - slot, seq_len - pos);
    const int64_t done = pos - start;
    m.WriteRun(id, false, slot, k_src + done * k_stride, k.dtype, count);
    m.WriteRun(id, true, slot, v_src + done * v_stride, v.dtype, count);
    pos += count;
  }

  m.tokens_stored += seq_len - table.length;
  m.bytes_written += 2 * n * m.token_bytes;
  table.length = seq_len;
  table.max_length = std::max(table.max_length, seq_len);
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
  const int64_t bt = m.config.block_tokens;
  for (BlockTable& table : it->second.layers) {
    if (table.length <= seq_len) continue;
    const size_t need = static_cast<size_t>(CeilDiv(seq_len, bt));
    m.ReleaseBlocks(table, need);
    m.SetEnds(table, need == 0 ? 0 : need - 1, seq_len);
    m.tokens_stored -= table.length - seq_len;
    table.length = seq_len;
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
  GatheredLayer out;
  int64_t tokens = 0;
  for (const TableEntry& e : table.entries) tokens += e.tokens();
  out.k.resize(static_cast<size_t>(tokens * m.token_elems));
  out.v.resize(static_cast<size_t>(tokens * m.token_elems));
  out.positions.reserve(static_cast<size_t>(tokens));
  int64_t done = 0;
  for (const TableEntry& e : table.entries) {
    float* k_out = out.k.data() + done * m.token_elems;
    float* v_out = out.v.data() + done * m.token_elems;
    m.ReadRun(e.id, false, e.begin, e.tokens(), k_out);
    m.ReadRun(e.id, true, e.begin, e.tokens(), v_out);
    for (int s = e.begin; s < e.end; ++s) {
      out.positions.push_back(e.position0 + s);
    }
    done += e.tokens();
  }
  return out;
}

absl::StatusOr<LayerView> KVCache::View(SeqId seq, int layer) const {
  absl::StatusOr<const BlockTable*> found =
      FindTable(*impl_, "View", seq, layer);
  if (!found.ok()) return found.status();
  const Impl& m = *impl_;
  LayerView view;
  view.dtype = m.config.dtype;
  view.num_kv_heads = m.config.num_kv_heads;
  view.head_dim = m.config.head_dim;
  view.block_tokens = m.config.block_tokens;
  view.token_stride = m.token_elems;
  view.host_accessible = m.host_base != nullptr;
  view.blocks.reserve((*found)->entries.size());
  for (const TableEntry& e : (*found)->entries) {
    const auto* k = static_cast<const std::byte*>(m.pool->storage().Address(e.id));
    view.blocks.push_back({.k = k,
                           .v = k + m.v_offset,
                           .block_id = e.id,
                           .begin_slot = e.begin,
                           .tokens = e.tokens(),
                           .first_position = e.position0 + e.begin});
  }
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
  for (const BlockTable& table : it->second.layers) {
    s.current_length = std::max(s.current_length, table.length);
    s.max_length = std::max(s.max_length, table.max_length);
    for (const TableEntry& e : table.entries) s.tokens_stored += e.tokens();
    s.blocks += static_cast<int64_t>(table.entries.size());
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
  const int64_t bt = m.config.block_tokens;
  std::vector<uint32_t> refs(static_cast<size_t>(m.pool->capacity()), 0);
  int64_t tokens = 0;
  for (SeqId seq : Sequences()) {
    const Sequence& sequence = m.sequences.find(seq)->second;
    for (size_t layer = 0; layer < sequence.layers.size(); ++layer) {
      const BlockTable& t = sequence.layers[layer];
      auto fail = [&](const std::string& what) {
        return absl::InternalError(
            absl::StrFormat("seq %d, layer %d (length %d, %d entries): %s",
                            seq, layer, t.length, t.entries.size(), what));
      };
      if (t.max_length < t.length) return fail("max_length below length");
      if (static_cast<int64_t>(t.entries.size()) != CeilDiv(t.length, bt)) {
        return fail("entry count is not ceil(length / block_tokens)");
      }
      for (size_t i = 0; i < t.entries.size(); ++i) {
        const TableEntry& e = t.entries[i];
        if (e.id >= m.pool->capacity()) {
          return fail(absl::StrFormat("entry %d: block %d out of range", i,
                                      e.id));
        }
        ++refs[e.id];
        const int64_t want_end = std::min(bt, t.length - e.position0);
        if (e.position0 != static_cast<int64_t>(i) * bt || e.begin != 0 ||
            e.end != want_end) {
          return fail(absl::StrFormat(
              "entry %d covers slots [%d, %d) from position %d; want [0, %d) "
              "from %d",
              i, e.begin, e.end, e.position0, want_end, i * bt));
        }
        tokens += e.tokens();
      }
    }
  }
  int64_t used = 0;
  for (size_t id = 0; id < refs.size(); ++id) {
    const uint32_t have = m.pool->ref_count(static_cast<BlockId>(id));
    if (have != refs[id]) {
      return absl::InternalError(absl::StrFormat(
          "block %d: ref_count %d but %d table entries point at it", id, have,
          refs[id]));
    }
    used += refs[id] > 0;
  }
  if (used != m.pool->used_blocks()) {
    return absl::InternalError(absl::StrFormat(
        "%d blocks referenced by tables, pool says %d used", used,
        m.pool->used_blocks()));
  }
  if (tokens != m.tokens_stored) {
    return absl::InternalError(absl::StrFormat(
        "tables hold %d tokens, stats say %d", tokens, m.tokens_stored));
  }
  return absl::OkStatus();
}

}  // namespace kvpage
