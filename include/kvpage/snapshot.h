// kvpage/snapshot.h — a cache's state, written to a file and read back as
// plain structs: what kvpage-dump inspects and verifies offline.
//
// A snapshot holds the configuration, both pools (capacity, reference counts,
// the free list, the format of each quantized cell), every sequence's block
// tables per layer, the prefix-cache index and the statistics; with
// `include_token_data`, the bytes of every block in use as well.
//
// Usage:
//   absl::Status s = cache.WriteSnapshot("/tmp/kv.snap");
//   absl::StatusOr<kvpage::Snapshot> snap =
//   kvpage::ReadSnapshot("/tmp/kv.snap"); if (!snap.ok()) return snap.status();
//   for (const kvpage::SnapshotViolation& v : kvpage::VerifySnapshot(*snap))
//     std::cerr << v.check << ": " << v.message << "\n";
//
// With layer groups (CacheConfig::group_layers) every layer still lists its
// table: the layers of a group list the same blocks (the group's), each
// with the slots it shows; a hot block's bytes are those of all its
// storage slots, and a prefix entry names a block per group.
//
// File format (version 3, which reads versions 1 and 2 too;
// docs/snapshot-format.md has every field):
//   header   "KVPGSNAP", u32 version, u32 flags (bit 0: token data),
//            u64 payload bytes, u64 XXH3-64 (seed 0) of the payload
//   payload  little-endian fields in a fixed order: config, stats, hot pool,
//            quantized pool, sequences, prefix-cache entries, token data
// The reader trusts nothing in a file: it reads only regular files, checks
// the header and the size it declares (against the file and
// kMaxSnapshotBytes) before reading the rest, then the checksum, every count
// against the bytes that remain (so no allocation is sized by an unchecked
// field), every enum value, the configuration (ValidateConfig) and the pool
// sizes it implies; whatever else is wrong is for VerifySnapshot to report.
//
// Thread safety: plain value types and pure functions.
#ifndef KVPAGE_SNAPSHOT_H_
#define KVPAGE_SNAPSHOT_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvpage/config.h"
#include "kvpage/kv_cache.h"
#include "kvpage/stats_fields.h"  // IWYU pragma: export

namespace kvpage {

inline constexpr uint32_t kSnapshotVersion = 3;
inline constexpr uint32_t kSnapshotNoBlock = 0xffffffffu;
// The largest snapshot file ReadSnapshot reads and WriteSnapshotFile writes,
// header included: 1 TiB. Reading one allocates its size, and writing one
// holds the encoded bytes beside the cache's own copy of them, so a larger
// snapshot (token data of a multi-TiB cache) would not fit in memory anyway.
inline constexpr int64_t kMaxSnapshotBytes = int64_t{1} << 40;

struct SnapshotOptions {
  // Also write the bytes of every hot block and quantized cell in use.
  bool include_token_data = false;
};

// Where a block-table entry sits: the sink blocks, the window, or a circular
// buffer's spare blocks (held, holding no visible token).
enum class TableRole : uint8_t { kSink, kWindow, kSpare };

// One entry of a block table. Slot s of a held block holds position
// logical * block_tokens + s; `visible` of its slots in
// [begin_slot, end_slot) are visible (fewer than end_slot - begin_slot when a
// block holds sinks and window tokens with evicted slots between them).
struct SnapshotEntry {
  TableRole role = TableRole::kWindow;
  int64_t logical = -1;  // logical block; -1 for spares
  BlockFormat format = BlockFormat::kHot;
  uint32_t id = 0;  // hot block id, or first cell in the quantized pool
  int32_t visible = 0;
  int32_t begin_slot = 0, end_slot = 0;
  bool operator==(const SnapshotEntry&) const = default;
};

// One sequence's table for one layer.
struct SnapshotLayer {
  int64_t length = 0;        // seq_len of the last update
  int64_t window_start = 0;  // first position the policy kept (<= sinks:
                             // nothing evicted)
  int64_t max_length = 0;    // the longest the layer has been
  int64_t evicted = 0;       // tokens the policy evicted
  std::vector<SnapshotEntry> entries;  // sinks, then window, then spares
  bool operator==(const SnapshotLayer&) const = default;
};

struct SnapshotSequence {
  SeqId id = 0;
  uint64_t salt = 0;
  int64_t token_ids = 0;              // ids known for prefix caching
  std::vector<SnapshotLayer> layers;  // config.num_layers of them
  bool operator==(const SnapshotSequence&) const = default;
};

// A pool: the hot pool (blocks) or the quantized pool (cells).
struct SnapshotPool {
  int64_t capacity = 0;
  int64_t unit_bytes = 0;            // bytes of one block or cell (a
                                     // block: of all its storage slots)
  std::vector<uint32_t> ref_counts;  // per block or cell
  std::vector<uint32_t> free_ids;    // the free list, next handed out first
  // Quantized pool only, per cell: 8 or 4 where a compressed block starts, 0
  // elsewhere; the V cell of a two-cell int8 block (kSnapshotNoBlock when
  // none); the block's measured relative MSE.
  std::vector<uint8_t> bits;
  std::vector<uint32_t> partners;
  std::vector<float> errors;
  // With token data: the blocks in use, ascending, and their bytes
  // (data_ids.size() * unit_bytes).
  std::vector<uint32_t> data_ids;
  std::vector<uint8_t> data;
  bool operator==(const SnapshotPool&) const = default;
};

// A prefix-cache entry: the block holding one chain hash's tokens, per layer.
struct SnapshotPrefixEntry {
  uint64_t hash = 0;
  int64_t lru_rank = -1;  // 0 is evicted first; -1: in use, not evictable
  std::vector<uint32_t> blocks;  // per table (layer, or group of layers);
                                 // kSnapshotNoBlock where absent
  bool operator==(const SnapshotPrefixEntry&) const = default;
};

struct Snapshot {
  uint32_t version = kSnapshotVersion;
  bool has_token_data = false;
  CacheConfig config;
  CacheStats stats;
  SnapshotPool hot;
  SnapshotPool quant;                       // capacity 0 without compression
  std::vector<SnapshotSequence> sequences;  // ascending id
  std::vector<SnapshotPrefixEntry> prefix;  // ascending hash
  bool operator==(const Snapshot&) const = default;
};

// The bytes of a snapshot file. O(size).
[[nodiscard]] std::string EncodeSnapshot(const Snapshot& snapshot);

// Parses snapshot bytes. InvalidArgument naming the field and offset for a
// bad magic, a truncated or oversized payload, a checksum mismatch, a count
// larger than the bytes left, an unknown enum value, an invalid config, or
// pool sizes (capacity, block and cell bytes) other than the config implies;
// FailedPrecondition for another version. Never allocates more than a small
// multiple of bytes.size(). O(size).
[[nodiscard]] absl::StatusOr<Snapshot> ParseSnapshot(std::string_view bytes);

// Reads and parses a snapshot file. `path` must name a regular file (a
// symbolic link to one is followed): FailedPrecondition, naming what it is,
// for a directory, FIFO, device or socket, which is never opened for reading
// (a FIFO would block, a device may never end). The 32-byte header is read
// and checked first (as ParseSnapshot checks it); InvalidArgument when the
// payload it declares is above kMaxSnapshotBytes or differs from what the
// file holds (truncated, or bytes after the payload); ResourceExhausted when
// it is above half the machine's physical memory (the payload is held whole:
// a sparse file can declare any size) or cannot be allocated; only then is
// that many bytes allocated and read, and parsed as ParseSnapshot. File-system
// errors map to their Status codes (NotFound, PermissionDenied, ...). Every
// message names `path`. O(file size).
[[nodiscard]] absl::StatusOr<Snapshot> ReadSnapshot(const std::string& path);

// Writes EncodeSnapshot(snapshot) to `path` so that a reader of `path` sees
// the old file or the new one, never part of one: the bytes go to a new
// temporary file beside `path` (`path`.tmp-<pid>-<n>-<salt>, created with
// O_EXCL, so concurrent writers, also of the same path, never share one, and
// a file of the user's named `path`.tmp is left alone), are fsync'ed, and the
// temporary is renamed over `path`; the directory is then fsync'ed (best
// effort). A new file gets mode 0666 less the umask; a replaced file keeps
// its mode.
// `path` must not exist or be a regular file: FailedPrecondition, naming
// what it is, for a symbolic link (not followed: refused, even to a regular
// file), a directory, FIFO, device or socket, which are left as they are.
// (Checked with lstat before writing and again before the rename; another
// process replacing `path` in between is not guarded against.)
// ResourceExhausted when the encoding is above kMaxSnapshotBytes. File-system
// errors map to their Status codes (NotFound for a missing directory, ...).
// On any error `path` is untouched and no temporary is left behind. Safe to
// call concurrently, also for one path (the last rename wins). O(size).
[[nodiscard]] absl::Status WriteSnapshotFile(const Snapshot& snapshot,
                                             const std::string& path);

// One broken invariant: `check` is a stable snake_case name (ref_count,
// free_list, table, positions, visible, policy, quant, prefix, stats),
// plus config when the snapshot is not self-consistent enough to walk and
// truncated after 10000 violations; `message` names the block, sequence and
// layer involved.
struct SnapshotViolation {
  std::string check;
  std::string message;
};

// Checks the invariants KVCache::Validate() checks on a live cache, on a
// snapshot: each block's and slot's reference count equals the table and
// prefix-cache entries that hold it; the free list and the blocks in use are
// disjoint and cover the pool; each table's entries have increasing logical
// blocks and positions, the sink and window blocks the layer's length and
// window start imply, and the visible slots its policy allows; quantized
// entries point at a slot of their format; the statistics agree with the
// tables. Returns every violation found (empty when all hold).
// O(blocks + sequences * layers * entries).
[[nodiscard]] std::vector<SnapshotViolation> VerifySnapshot(
    const Snapshot& snapshot);

}  // namespace kvpage

#endif  // KVPAGE_SNAPSHOT_H_
