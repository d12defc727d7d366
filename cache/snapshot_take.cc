// KVCache::TakeSnapshot: the cache's state as a Snapshot (kvpage/snapshot.h)
// — pools, tables with their visible slots, the prefix cache and, when
// asked, the bytes of every block in use.
#include <algorithm>
#include <cstring>

#include "cache/kv_cache_impl.h"
#include "kvpage/snapshot.h"

namespace kvpage {

using internal::BlockId;
using internal::BlockPool;
using internal::BlockRef;
using internal::BlockTable;
using internal::IsQuant;
using internal::QuantFormat;
using internal::RefId;

namespace {

void DescribePool(const BlockPool& pool, int64_t unit_bytes,
                  SnapshotPool& out) {
  out.capacity = pool.capacity();
  out.unit_bytes = unit_bytes;
  out.ref_counts.resize(static_cast<size_t>(pool.capacity()));
  for (BlockId id = 0; id < pool.capacity(); ++id) {
    out.ref_counts[id] = pool.ref_count(id);
  }
  out.free_ids = pool.FreeIds();
}

// Sets each entry's visible slots, run by run (both in logical order).
void MarkVisible(const internal::LayerRules& rules,
                 const internal::LayerState& state, const BlockTable& table,
                 SnapshotLayer& out) {
  size_t next = 0;
  internal::ForEachVisibleRun(
      rules, state, table, 0, state.length,
      [&](BlockRef, int64_t slot, int64_t count, int64_t position) {
        const int64_t logical = position / rules.block_tokens;
        while (next < out.entries.size() &&
               out.entries[next].logical != logical) {
          ++next;
        }
        if (next == out.entries.size()) return;
        SnapshotEntry& e = out.entries[next];
        if (e.visible == 0) e.begin_slot = static_cast<int32_t>(slot);
        e.visible += static_cast<int32_t>(count);
        e.end_slot = static_cast<int32_t>(slot + count);
      });
}

// One layer: its state and the table holding its blocks; records what each
// compressed block it holds is.
SnapshotLayer DescribeLayer(const internal::LayerRules& rules,
                            const internal::LayerState& state,
                            const BlockTable& table,
                            const internal::QuantStore* quant,
                            SnapshotPool& quant_out) {
  SnapshotLayer out;
  out.length = state.length;
  out.window_start = state.window_start;
  out.max_length = state.max_length;
  out.evicted = state.evicted;
  auto entry = [&](TableRole role, int64_t logical, BlockRef ref) {
    SnapshotEntry e{.role = role, .logical = logical, .id = RefId(ref)};
    if (IsQuant(ref)) {
      const BlockId cell = RefId(ref);
      const bool int8 = quant->format(cell) == QuantFormat::kInt8;
      e.format = int8 ? BlockFormat::kInt8 : BlockFormat::kInt4;
      quant_out.bits[cell] = int8 ? 8 : 4;
      quant_out.partners[cell] = quant->partner(cell);
      quant_out.errors[cell] = quant->error(cell);
    }
    out.entries.push_back(e);
  };
  for (size_t i = 0; i < table.sink_blocks.size(); ++i) {
    entry(TableRole::kSink, static_cast<int64_t>(i), table.sink_blocks[i]);
  }
  for (int64_t b = table.window_first;
       b < table.window_first + table.window_blocks(); ++b) {
    entry(TableRole::kWindow, b, table.Block(b));
  }
  for (BlockRef ref : table.spares) entry(TableRole::kSpare, -1, ref);
  MarkVisible(rules, state, table, out);
  return out;
}

// The prefix cache, with each idle entry's place in the eviction order,
// sorted by hash.
std::vector<SnapshotPrefixEntry> DescribePrefix(
    const internal::PrefixCache& prefix) {
  std::vector<SnapshotPrefixEntry> out;
  prefix.ForEachEntry(
      [&](uint64_t hash, int64_t rank, absl::Span<const BlockId> blocks) {
        out.push_back(
            {.hash = hash,
             .lru_rank = rank,
             .blocks = std::vector<uint32_t>(blocks.begin(), blocks.end())});
      });
  std::sort(out.begin(), out.end(),
            [](const SnapshotPrefixEntry& a, const SnapshotPrefixEntry& b) {
              return a.hash < b.hash;
            });
  return out;
}

// Copies the bytes of every unit in use; read(id, dst) reads one.
template <typename Read>
void CopyUsed(SnapshotPool& out, Read&& read) {
  for (uint32_t id = 0; id < out.ref_counts.size(); ++id) {
    if (out.ref_counts[id] > 0) out.data_ids.push_back(id);
  }
  const auto unit = static_cast<size_t>(out.unit_bytes);
  out.data.resize(out.data_ids.size() * unit);
  for (size_t i = 0; i < out.data_ids.size(); ++i) {
    read(out.data_ids[i], out.data.data() + i * unit);
  }
}

}  // namespace

absl::StatusOr<Snapshot> KVCache::TakeSnapshot(
    const SnapshotOptions& options) const {
  const Impl& impl = *impl_;
  const internal::QuantStore* quant = impl.quant.get();
  if (options.include_token_data && !impl.pool->storage().host_io()) {
    return absl::FailedPreconditionError(
        "TakeSnapshot: token data needs host reads; the storage has none "
        "(take the snapshot without include_token_data)");
  }
  Snapshot snap;
  snap.has_token_data = options.include_token_data;
  snap.config = impl.config;
  snap.stats = Stats();
  const int64_t block_bytes = impl.block_bytes();  // one storage slot
  const int width = impl.groups.width;
  DescribePool(*impl.pool, block_bytes * width, snap.hot);
  if (quant != nullptr) {
    DescribePool(quant->pool(), quant->cell_bytes(), snap.quant);
    const auto cells = static_cast<size_t>(quant->pool().capacity());
    snap.quant.bits.assign(cells, 0);
    snap.quant.partners.assign(cells, kSnapshotNoBlock);
    snap.quant.errors.assign(cells, 0.0f);
  }
  for (SeqId id : Sequences()) {
    const internal::Sequence& sequence = impl.sequences.find(id)->second;
    SnapshotSequence& out = snap.sequences.emplace_back();
    out.id = id;
    out.salt = sequence.salt;
    out.token_ids = static_cast<int64_t>(sequence.token_ids.size());
    for (int layer = 0; layer < impl.config.num_layers; ++layer) {
      out.layers.push_back(DescribeLayer(
          impl.rules[static_cast<size_t>(layer)], impl.LayerOf(sequence, layer),
          sequence.tables[impl.group_of(layer)], quant, snap.quant));
    }
  }
  snap.prefix = DescribePrefix(*impl.prefix);
  if (options.include_token_data) {
    CopyUsed(snap.hot, [&](uint32_t id, uint8_t* dst) {
      for (int j = 0; j < width; ++j) {
        impl.pool->storage().Read(impl.pool->StorageId(id, j), 0,
                                  dst + j * block_bytes, block_bytes);
      }
    });
    if (quant != nullptr) {
      CopyUsed(snap.quant, [&](uint32_t id, uint8_t* dst) {
        std::memcpy(dst, quant->cell_data(id),
                    static_cast<size_t>(quant->cell_bytes()));
      });
    }
  }
  return snap;
}

absl::Status KVCache::WriteSnapshot(const std::string& path) const {
  return WriteSnapshot(path, SnapshotOptions{});
}

absl::Status KVCache::WriteSnapshot(const std::string& path,
                                    const SnapshotOptions& options) const {
  absl::StatusOr<Snapshot> snapshot = TakeSnapshot(options);
  if (!snapshot.ok()) return snapshot.status();
  return WriteSnapshotFile(*snapshot, path);
}

}  // namespace kvpage
