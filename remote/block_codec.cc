#include "remote/block_codec.h"

#include <bit>
#include <cstring>

#include "absl/strings/str_format.h"

#define XXH_INLINE_ALL
#include "xxhash.h"

namespace kvpage::remote {

namespace {

constexpr char kMagic[4] = {'K', 'V', 'P', 'B'};

template <typename T>
void Put(std::string& out, size_t at, T value) {
  static_assert(std::endian::native == std::endian::little);
  std::memcpy(out.data() + at, &value, sizeof(T));
}

template <typename T>
T Get(std::string_view in, size_t at) {
  T value;
  std::memcpy(&value, in.data() + at, sizeof(T));
  return value;
}

uint64_t Checksum(std::string_view head, std::string_view payload) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  XXH3_64bits_update(&state, head.data(), head.size());
  XXH3_64bits_update(&state, payload.data(), payload.size());
  return XXH3_64bits_digest(&state);
}

}  // namespace

uint64_t BlockFingerprint(const CacheConfig& config, std::string_view model_id,
                          absl::Span<const int> table_layers) {
  std::string bytes;
  auto add = [&bytes](int64_t v) {
    bytes.append(reinterpret_cast<const char*>(&v), sizeof(v));
  };
  add(kBlockFormatVersion);
  add(static_cast<int64_t>(config.dtype));
  add(config.num_kv_heads);
  add(config.head_dim);
  add(config.block_tokens);
  add(BlockBytes(config));
  add(static_cast<int64_t>(table_layers.size()));
  for (const int layer : table_layers) add(layer);
  add(static_cast<int64_t>(model_id.size()));
  bytes.append(model_id);
  return XXH3_64bits(bytes.data(), bytes.size());
}

std::string BlockKey(uint64_t fingerprint, uint64_t chain_hash, int table) {
  return absl::StrFormat("kvpage:1:%016x:%016x:%d", fingerprint, chain_hash,
                         table);
}

void EncodeBlockInPlace(const BlockHeader& header, std::string& out) {
  const auto room = static_cast<size_t>(kBlockHeaderBytes);
  const std::string_view payload = std::string_view(out).substr(room);
  std::memset(out.data(), 0, room);
  std::memcpy(out.data(), kMagic, 4);
  Put<uint16_t>(out, 4, kBlockFormatVersion);
  Put<uint64_t>(out, 8, header.fingerprint);
  Put<uint64_t>(out, 16, header.chain_hash);
  Put<uint32_t>(out, 24, header.table);
  Put<uint8_t>(out, 28, static_cast<uint8_t>(header.format));
  Put<uint64_t>(out, 32, payload.size());
  Put<uint64_t>(out, 40,
                Checksum(std::string_view(out).substr(0, 40), payload));
}

std::string EncodeBlock(const BlockHeader& header, std::string_view payload) {
  std::string out(static_cast<size_t>(kBlockHeaderBytes), '\0');
  out.append(payload);
  EncodeBlockInPlace(header, out);
  return out;
}

absl::StatusOr<DecodedBlock> DecodeBlock(std::string_view value,
                                         const BlockHeader& want) {
  if (value.size() < static_cast<size_t>(kBlockHeaderBytes)) {
    return absl::DataLossError(absl::StrFormat(
        "remote block: %d bytes, shorter than its %d-byte header", value.size(),
        kBlockHeaderBytes));
  }
  if (std::memcmp(value.data(), kMagic, 4) != 0) {
    return absl::DataLossError("remote block: not a kvpage block (magic)");
  }
  if (const auto version = Get<uint16_t>(value, 4);
      version != kBlockFormatVersion) {
    return absl::DataLossError(
        absl::StrFormat("remote block: format version %d, this reader knows %d",
                        version, kBlockFormatVersion));
  }
  const auto payload_bytes = Get<uint64_t>(value, 32);
  if (payload_bytes != value.size() - kBlockHeaderBytes) {
    return absl::DataLossError(absl::StrFormat(
        "remote block: the header says %d payload bytes, the value holds %d",
        payload_bytes, value.size() - kBlockHeaderBytes));
  }
  const std::string_view payload = value.substr(kBlockHeaderBytes);
  if (Get<uint64_t>(value, 40) != Checksum(value.substr(0, 40), payload)) {
    return absl::DataLossError("remote block: checksum mismatch");
  }
  const auto format = Get<uint8_t>(value, 28);
  if (format > static_cast<uint8_t>(RemoteFormat::kInt4)) {
    return absl::DataLossError(
        absl::StrFormat("remote block: unknown format %d", format));
  }
  if (Get<uint64_t>(value, 8) != want.fingerprint) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "remote block: fingerprint %016x, this cache's is %016x (another "
        "model or shape)",
        Get<uint64_t>(value, 8), want.fingerprint));
  }
  if (Get<uint64_t>(value, 16) != want.chain_hash ||
      Get<uint32_t>(value, 24) != want.table) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "remote block: holds hash %016x table %d, asked for %016x table %d",
        Get<uint64_t>(value, 16), Get<uint32_t>(value, 24), want.chain_hash,
        want.table));
  }
  return DecodedBlock{.format = static_cast<RemoteFormat>(format),
                      .payload = payload};
}

}  // namespace kvpage::remote
