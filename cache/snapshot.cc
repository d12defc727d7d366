// The snapshot format: encoding, and a parser that trusts nothing it reads
// (the file I/O is in snapshot_file.cc).
#include "kvpage/snapshot.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "allocator/quantize.h"
#include "cache/block_table.h"
#include "cache/quant_pool_config.h"
#include "cache/snapshot_internal.h"
#include "kvpage/stats_fields.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvpage {
namespace {

constexpr char kMagic[8] = {'K', 'V', 'P', 'G', 'S', 'N', 'A', 'P'};
using internal::kSnapshotHeaderBytes;
constexpr uint32_t kFlagTokenData = 1;

// Appends little-endian fields.
class Encoder {
 public:
  template <typename T>
  void Put(T value) {
    static_assert(std::is_arithmetic_v<T> || std::is_enum_v<T>);
    uint64_t bits = 0;
    if constexpr (std::is_floating_point_v<T>) {
      using U = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;
      U u;
      std::memcpy(&u, &value, sizeof(u));
      bits = u;
    } else {
      bits = static_cast<uint64_t>(value);
    }
    for (size_t i = 0; i < sizeof(T); ++i) {
      out_.push_back(static_cast<char>((bits >> (8 * i)) & 0xff));
    }
  }
  template <typename T>
  void PutVector(const std::vector<T>& values) {
    Put<uint64_t>(values.size());
    for (const T& v : values) Put(v);
  }
  void PutBytes(const std::vector<uint8_t>& bytes) {
    out_.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  std::string& out() { return out_; }

 private:
  std::string out_;
};

// Reads little-endian fields; the first failure sticks and every later read
// returns zeros, so a parse function checks ok() once per allocation.
class Decoder {
 public:
  explicit Decoder(std::string_view bytes) : bytes_(bytes) {}

  bool ok() const { return status_.ok(); }
  const absl::Status& status() const { return status_; }
  size_t remaining() const { return bytes_.size() - pos_; }

  template <typename T>
  T Get(const char* what) {
    static_assert(std::is_arithmetic_v<T>);
    if (!ok()) return T{};
    if (remaining() < sizeof(T)) {
      Fail(absl::StrFormat("%s: needs %d bytes, %d left", what, sizeof(T),
                           remaining()));
      return T{};
    }
    uint64_t bits = 0;
    for (size_t i = 0; i < sizeof(T); ++i) {
      bits |= uint64_t{static_cast<uint8_t>(bytes_[pos_ + i])} << (8 * i);
    }
    pos_ += sizeof(T);
    if constexpr (std::is_floating_point_v<T>) {
      using U = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;
      const U u = static_cast<U>(bits);
      T value;
      std::memcpy(&value, &u, sizeof(value));
      return value;
    } else {
      return static_cast<T>(bits);
    }
  }

  // An enum stored as a byte, accepted only when it is one of `valid`.
  template <typename E>
  E GetEnum(const char* what, std::initializer_list<E> valid) {
    const uint8_t raw = Get<uint8_t>(what);
    for (E e : valid) {
      if (static_cast<uint8_t>(e) == raw) return e;
    }
    if (ok()) Fail(absl::StrFormat("%s: unknown value %d", what, raw));
    return *valid.begin();
  }
  bool GetBool(const char* what) {
    const uint8_t raw = Get<uint8_t>(what);
    if (raw > 1 && ok())
      Fail(absl::StrFormat("%s: %d is not 0 or 1", what, raw));
    return raw == 1;
  }

  // A count of elements of at least `min_bytes` each: no larger than what
  // the bytes left can hold, so that nothing is sized by a field unchecked.
  size_t GetCount(const char* what, size_t min_bytes) {
    const uint64_t n = Get<uint64_t>(what);
    if (ok() && n > remaining() / min_bytes) {
      Fail(absl::StrFormat("%s: %d elements of %d+ bytes, but %d bytes left",
                           what, n, min_bytes, remaining()));
      return 0;
    }
    return ok() ? static_cast<size_t>(n) : 0;
  }
  // As GetCount, and equal to `want`.
  size_t GetCountEq(const char* what, size_t min_bytes, uint64_t want) {
    const size_t n = GetCount(what, min_bytes);
    if (ok() && n != want) {
      Fail(absl::StrFormat("%s: %d, want %d", what, n, want));
      return 0;
    }
    return n;
  }
  template <typename T>
  void GetVector(const char* what, size_t n, std::vector<T>& out) {
    if (!ok() || n > remaining() / sizeof(T)) {
      if (ok()) Fail(absl::StrFormat("%s: %d values do not fit", what, n));
      return;
    }
    out.resize(n);
    for (T& v : out) v = Get<T>(what);
  }
  void GetBytes(const char* what, size_t n, std::vector<uint8_t>& out) {
    if (!ok() || n > remaining()) {
      if (ok()) Fail(absl::StrFormat("%s: %d bytes do not fit", what, n));
      return;
    }
    out.assign(bytes_.begin() + static_cast<ptrdiff_t>(pos_),
               bytes_.begin() + static_cast<ptrdiff_t>(pos_ + n));
    pos_ += n;
  }

  void Fail(const std::string& what) {
    if (ok()) {
      status_ = absl::InvalidArgumentError(
          absl::StrFormat("snapshot: %s (payload offset %d)", what, pos_));
    }
  }

 private:
  std::string_view bytes_;
  size_t pos_ = 0;
  absl::Status status_;
};

constexpr std::initializer_list<DType> kDTypes = {DType::kF32, DType::kF16,
                                                  DType::kBF16};
constexpr std::initializer_list<OverflowPolicy> kPolicies = {
    OverflowPolicy::kError, OverflowPolicy::kTruncate,
    OverflowPolicy::kSlidingWindow, OverflowPolicy::kCircularBuffer};

// `version`: the format written (version 1 has no group_layers).
void PutConfig(const CacheConfig& c, uint32_t version, Encoder& e) {
  e.Put<int32_t>(c.num_layers);
  e.Put<int32_t>(c.num_kv_heads);
  e.Put<int32_t>(c.head_dim);
  e.Put<uint8_t>(static_cast<uint8_t>(c.dtype));
  e.Put<int32_t>(c.block_tokens);
  e.Put<int64_t>(c.num_blocks);
  e.Put<int64_t>(c.max_seq_len);
  e.Put<uint8_t>(static_cast<uint8_t>(c.overflow));
  e.Put<int64_t>(c.sink_tokens);
  e.Put<int64_t>(c.truncate_to);
  e.Put<uint64_t>(c.layer_policies.size());
  for (const LayerPolicy& p : c.layer_policies) {
    e.Put<int32_t>(p.layer);
    e.Put<uint8_t>(static_cast<uint8_t>(p.overflow));
    e.Put<int64_t>(p.max_seq_len);
    e.Put<int64_t>(p.sink_tokens);
    e.Put<int64_t>(p.truncate_to);
  }
  const CompressionConfig& q = c.compression;
  e.Put<uint8_t>(q.enabled);
  e.Put<uint8_t>(static_cast<uint8_t>(q.bits));
  e.Put<int32_t>(q.group_size);
  e.Put<int64_t>(q.hot_tokens);
  e.Put<int64_t>(q.quant_cells);
  e.Put<uint8_t>(q.auto_compress);
  e.Put<double>(q.max_rel_error);
  e.Put<uint8_t>(q.measure_error);
  e.Put<uint8_t>(c.prefault);
  e.Put<uint8_t>(c.huge_pages);
  if (version >= 2) e.Put<uint8_t>(c.group_layers);
}

CacheConfig GetConfig(Decoder& d, uint32_t version) {
  CacheConfig c;
  c.num_layers = d.Get<int32_t>("config.num_layers");
  c.num_kv_heads = d.Get<int32_t>("config.num_kv_heads");
  c.head_dim = d.Get<int32_t>("config.head_dim");
  c.dtype = d.GetEnum("config.dtype", kDTypes);
  c.block_tokens = d.Get<int32_t>("config.block_tokens");
  c.num_blocks = d.Get<int64_t>("config.num_blocks");
  c.max_seq_len = d.Get<int64_t>("config.max_seq_len");
  c.overflow = d.GetEnum("config.overflow", kPolicies);
  c.sink_tokens = d.Get<int64_t>("config.sink_tokens");
  c.truncate_to = d.Get<int64_t>("config.truncate_to");
  const size_t policies = d.GetCount("config.layer_policies", 29);
  c.layer_policies.resize(policies);
  for (LayerPolicy& p : c.layer_policies) {
    p.layer = d.Get<int32_t>("layer_policies[].layer");
    p.overflow = d.GetEnum("layer_policies[].overflow", kPolicies);
    p.max_seq_len = d.Get<int64_t>("layer_policies[].max_seq_len");
    p.sink_tokens = d.Get<int64_t>("layer_policies[].sink_tokens");
    p.truncate_to = d.Get<int64_t>("layer_policies[].truncate_to");
  }
  CompressionConfig& q = c.compression;
  q.enabled = d.GetBool("compression.enabled");
  q.bits = d.GetEnum("compression.bits", {QuantBits::kInt8, QuantBits::kInt4});
  q.group_size = d.Get<int32_t>("compression.group_size");
  q.hot_tokens = d.Get<int64_t>("compression.hot_tokens");
  q.quant_cells = d.Get<int64_t>("compression.quant_cells");
  q.auto_compress = d.GetBool("compression.auto_compress");
  q.max_rel_error = d.Get<double>("compression.max_rel_error");
  q.measure_error = d.GetBool("compression.measure_error");
  c.prefault = d.GetBool("config.prefault");
  c.huge_pages = d.GetBool("config.huge_pages");
  if (version >= 2) c.group_layers = d.GetBool("config.group_layers");
  return c;
}

void PutPool(const SnapshotPool& p, bool quant, Encoder& e) {
  e.Put<int64_t>(p.capacity);
  e.Put<int64_t>(p.unit_bytes);
  e.PutVector(p.ref_counts);
  e.PutVector(p.free_ids);
  if (quant) {
    e.PutVector(p.bits);
    e.PutVector(p.partners);
    e.PutVector(p.errors);
  }
}

// `capacity` and `unit_bytes` are what the config implies; the file must
// agree, which bounds every array below by the config (itself validated).
SnapshotPool GetPool(Decoder& d, bool quant, int64_t capacity,
                     int64_t unit_bytes) {
  SnapshotPool p;
  const char* name = quant ? "quantized pool" : "hot pool";
  p.capacity = d.Get<int64_t>(name);
  p.unit_bytes = d.Get<int64_t>(name);
  if (!d.ok()) return p;
  if (p.capacity != capacity) {
    d.Fail(absl::StrFormat("%s: capacity %d, the config says %d", name,
                           p.capacity, capacity));
    return p;
  }
  // A quantized cell may be larger than a hot block (small blocks: the
  // scales outweigh the codes); without compression the pool is empty and
  // its slot size 0.
  if (p.unit_bytes != unit_bytes) {
    d.Fail(absl::StrFormat("%s: %d bytes per unit, the config implies %d", name,
                           p.unit_bytes, unit_bytes));
    return p;
  }
  const size_t n = static_cast<size_t>(capacity);
  d.GetVector("ref_counts", d.GetCountEq("ref_counts", 4, n), p.ref_counts);
  const size_t free_count = d.GetCount("free_ids", 4);
  if (free_count > n) d.Fail("free_ids: more than the capacity");
  d.GetVector("free_ids", free_count, p.free_ids);
  if (quant) {
    d.GetVector("bits", d.GetCountEq("bits", 1, n), p.bits);
    d.GetVector("partners", d.GetCountEq("partners", 4, n), p.partners);
    d.GetVector("errors", d.GetCountEq("errors", 4, n), p.errors);
  }
  return p;
}

void PutData(const SnapshotPool& p, Encoder& e) {
  e.PutVector(p.data_ids);
  e.PutBytes(p.data);
}

void GetData(Decoder& d, SnapshotPool& p) {
  const size_t n = d.GetCount("data_ids", 4);
  if (n > static_cast<size_t>(p.capacity)) d.Fail("data_ids: over capacity");
  d.GetVector("data_ids", n, p.data_ids);
  if (!d.ok()) return;
  const size_t unit = static_cast<size_t>(p.unit_bytes);
  if (n > 0 && unit > d.remaining() / n) {
    d.Fail(absl::StrFormat("token data: %d units of %d bytes do not fit", n,
                           unit));
    return;
  }
  d.GetBytes("token data", n * unit, p.data);
}

}  // namespace

std::string EncodeSnapshot(const Snapshot& snap) {
  // Version 1 has no group_layers: a grouped cache's snapshot is version 2
  // whatever it says.
  const uint32_t version = snap.config.group_layers
                               ? std::max<uint32_t>(snap.version, 2)
                               : snap.version;
  Encoder e;
  PutConfig(snap.config, version, e);
  // Versions 1 and 2 store the first kCacheStatsFieldsVersion2 fields.
  const int stats_fields =
      version >= 3 ? kCacheStatsFieldCount : kCacheStatsFieldsVersion2;
  int field_index = 0;
  ForEachStatsField(snap.stats, [&](const char*, auto field) {
    if (field_index++ < stats_fields) e.Put(field);
  });
  PutPool(snap.hot, false, e);
  PutPool(snap.quant, true, e);
  e.Put<uint64_t>(snap.sequences.size());
  for (const SnapshotSequence& s : snap.sequences) {
    e.Put<uint64_t>(s.id);
    e.Put<uint64_t>(s.salt);
    e.Put<int64_t>(s.token_ids);
    e.Put<uint64_t>(s.layers.size());
    for (const SnapshotLayer& l : s.layers) {
      e.Put<int64_t>(l.length);
      e.Put<int64_t>(l.window_start);
      e.Put<int64_t>(l.max_length);
      e.Put<int64_t>(l.evicted);
      e.Put<uint64_t>(l.entries.size());
      for (const SnapshotEntry& entry : l.entries) {
        e.Put<uint8_t>(static_cast<uint8_t>(entry.role));
        e.Put<int64_t>(entry.logical);
        e.Put<uint8_t>(static_cast<uint8_t>(entry.format));
        e.Put<uint32_t>(entry.id);
        e.Put<int32_t>(entry.visible);
        e.Put<int32_t>(entry.begin_slot);
        e.Put<int32_t>(entry.end_slot);
      }
    }
  }
  e.Put<uint64_t>(snap.prefix.size());
  for (const SnapshotPrefixEntry& p : snap.prefix) {
    e.Put<uint64_t>(p.hash);
    e.Put<int64_t>(p.lru_rank);
    e.PutVector(p.blocks);
  }
  if (snap.has_token_data) {
    PutData(snap.hot, e);
    PutData(snap.quant, e);
  }
  const std::string& payload = e.out();
  Encoder header;
  header.out().append(kMagic, sizeof(kMagic));
  header.Put<uint32_t>(version);
  header.Put<uint32_t>(snap.has_token_data ? kFlagTokenData : 0);
  header.Put<uint64_t>(payload.size());
  header.Put<uint64_t>(XXH3_64bits(payload.data(), payload.size()));
  return header.out() + payload;
}

namespace internal {

absl::StatusOr<SnapshotHeader> ParseSnapshotHeader(std::string_view bytes) {
  if (bytes.size() < kSnapshotHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("snapshot: %d bytes, shorter than the %d-byte header",
                        bytes.size(), kSnapshotHeaderBytes));
  }
  if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::InvalidArgumentError(
        "snapshot: bad magic (not a kvpage snapshot)");
  }
  Decoder h(
      bytes.substr(sizeof(kMagic), kSnapshotHeaderBytes - sizeof(kMagic)));
  SnapshotHeader header;
  header.version = h.Get<uint32_t>("version");
  header.flags = h.Get<uint32_t>("flags");
  header.payload_bytes = h.Get<uint64_t>("payload size");
  header.checksum = h.Get<uint64_t>("checksum");
  if (header.version < 1 || header.version > kSnapshotVersion) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "snapshot: version %d; this reader knows versions 1 to %d",
        header.version, kSnapshotVersion));
  }
  if ((header.flags & ~kFlagTokenData) != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("snapshot: unknown flags %#x", header.flags));
  }
  return header;
}

absl::Status CheckPayloadBytes(const SnapshotHeader& header,
                               uint64_t payload_bytes) {
  if (header.payload_bytes == payload_bytes) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat(
      "snapshot: the header says %d payload bytes, the file has %d (%s)",
      header.payload_bytes, payload_bytes,
      header.payload_bytes > payload_bytes ? "truncated"
                                           : "bytes after the payload"));
}

}  // namespace internal

namespace {

// One sequence with its `layers` layers; false (d.status() says why) when
// the bytes end or hold a bad value.
bool GetSequence(Decoder& d, size_t layers, SnapshotSequence& s) {
  // The smallest encodings of a layer and of an entry.
  constexpr size_t kLayerBytes = 40, kEntryBytes = 26;
  s.id = d.Get<uint64_t>("sequence id");
  s.salt = d.Get<uint64_t>("sequence salt");
  s.token_ids = d.Get<int64_t>("sequence token_ids");
  s.layers.resize(d.GetCountEq("sequence layers", kLayerBytes, layers));
  for (SnapshotLayer& l : s.layers) {
    l.length = d.Get<int64_t>("layer length");
    l.window_start = d.Get<int64_t>("layer window_start");
    l.max_length = d.Get<int64_t>("layer max_length");
    l.evicted = d.Get<int64_t>("layer evicted");
    l.entries.resize(d.GetCount("layer entries", kEntryBytes));
    for (SnapshotEntry& entry : l.entries) {
      entry.role =
          d.GetEnum("entry role",
                    {TableRole::kSink, TableRole::kWindow, TableRole::kSpare});
      entry.logical = d.Get<int64_t>("entry logical");
      entry.format = d.GetEnum(
          "entry format",
          {BlockFormat::kHot, BlockFormat::kInt8, BlockFormat::kInt4});
      entry.id = d.Get<uint32_t>("entry id");
      entry.visible = d.Get<int32_t>("entry visible");
      entry.begin_slot = d.Get<int32_t>("entry begin_slot");
      entry.end_slot = d.Get<int32_t>("entry end_slot");
    }
    if (!d.ok()) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<Snapshot> ParseSnapshot(std::string_view bytes) {
  absl::StatusOr<internal::SnapshotHeader> header =
      internal::ParseSnapshotHeader(bytes);
  if (!header.ok()) return header.status();
  const std::string_view payload = bytes.substr(kSnapshotHeaderBytes);
  if (absl::Status s = internal::CheckPayloadBytes(*header, payload.size());
      !s.ok()) {
    return s;
  }
  if (XXH3_64bits(payload.data(), payload.size()) != header->checksum) {
    return absl::InvalidArgumentError(
        "snapshot: checksum mismatch (the file is corrupt)");
  }
  Snapshot snap;
  snap.version = header->version;
  snap.has_token_data = (header->flags & kFlagTokenData) != 0;

  Decoder d(payload);
  snap.config = GetConfig(d, snap.version);
  if (!d.ok()) return d.status();
  if (absl::Status s = ValidateConfig(snap.config); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("snapshot: invalid config: ", s.message()));
  }
  const CacheConfig& c = snap.config;
  const int stats_fields =
      snap.version >= 3 ? kCacheStatsFieldCount : kCacheStatsFieldsVersion2;
  int field_index = 0;
  ForEachStatsField(snap.stats, [&](const char* name, auto& field) {
    if (field_index++ >= stats_fields) return;  // 0: not in this version
    field = d.Get<std::remove_reference_t<decltype(field)>>(name);
  });
  snap.hot =
      GetPool(d, false, c.num_blocks, BlockBytes(c) * LayerGroupWidth(c));
  snap.quant =
      GetPool(d, true, c.compression.enabled ? c.compression.quant_cells : 0,
              internal::QuantCellBytes(c));
  const size_t layers = static_cast<size_t>(c.num_layers);
  const size_t tables =
      internal::ResolveGroups(c, internal::ResolveLayers(c)).size();
  // The smallest encodings: a sequence with its layer count, a prefix
  // entry.
  constexpr size_t kSeqBytes = 32, kPrefixBytes = 24;
  snap.sequences.resize(d.GetCount("sequences", kSeqBytes));
  for (SnapshotSequence& s : snap.sequences) {
    if (!GetSequence(d, layers, s)) return d.status();
  }
  snap.prefix.resize(d.GetCount("prefix entries", kPrefixBytes));
  for (SnapshotPrefixEntry& p : snap.prefix) {
    p.hash = d.Get<uint64_t>("prefix hash");
    p.lru_rank = d.Get<int64_t>("prefix lru_rank");
    d.GetVector("prefix blocks", d.GetCountEq("prefix blocks", 4, tables),
                p.blocks);
    if (!d.ok()) return d.status();
  }
  if (snap.has_token_data) {
    GetData(d, snap.hot);
    GetData(d, snap.quant);
  }
  if (!d.ok()) return d.status();
  if (d.remaining() != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "snapshot: %d bytes after the last field", d.remaining()));
  }
  return snap;
}

}  // namespace kvpage
