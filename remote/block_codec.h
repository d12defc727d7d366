// remote/block_codec.h — how a prefix-cache block is named and stored in a
// remote tier, so that another process, with a cache of the same shape and
// model, can find it and check what it reads.
//
// Key:   "kvpage:1:<fingerprint>:<chain hash>:<table>" (16 hex digits each,
//        the table in decimal): the chain hash names the block's tokens and
//        everything before them (kvpage/prefix.h), the table its layer or
//        group of layers, the fingerprint everything that makes two
//        caches' bytes incompatible (BlockFingerprint).
// Value: a 48-byte header, then the block's bytes:
//          0  magic "KVPB"          4  version (u16, 1), 2 bytes zero
//          8  fingerprint (u64)    16  chain hash (u64)
//         24  table (u32)          28  format (u8: 0 hot, 1 int8, 2 int4)
//         29  3 bytes zero         32  payload bytes (u64)
//         40  checksum (u64): XXH3-64 of bytes [0, 40) and the payload
//        little-endian. A value whose checksum, length, magic or version is
//        wrong is DataLoss; one of another fingerprint, hash or table (a
//        key reused by another model, a server that mixes values up) is
//        FailedPrecondition. Either way the block is a miss, never attached.
#ifndef KVPAGE_REMOTE_BLOCK_CODEC_H_
#define KVPAGE_REMOTE_BLOCK_CODEC_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvpage/config.h"

namespace kvpage::remote {

inline constexpr int64_t kBlockHeaderBytes = 48;
inline constexpr uint16_t kBlockFormatVersion = 1;

enum class RemoteFormat : uint8_t { kHot = 0, kInt8 = 1, kInt4 = 2 };

// What makes a block of table `table` of a cache of `config` readable by
// another cache: the model (`model_id`, the engine's name for its weights),
// dtype, num_kv_heads, head_dim, block_tokens, the layers the table holds
// (its layer, or its group's layers), the block layout (BlockBytes) and
// this format's version. Equal for two caches exactly when a block of one
// holds what the other would compute. O(layers).
[[nodiscard]] uint64_t BlockFingerprint(const CacheConfig& config,
                                        std::string_view model_id,
                                        absl::Span<const int> table_layers);

[[nodiscard]] std::string BlockKey(uint64_t fingerprint, uint64_t chain_hash,
                                   int table);

struct BlockHeader {
  uint64_t fingerprint = 0;
  uint64_t chain_hash = 0;
  uint32_t table = 0;
  RemoteFormat format = RemoteFormat::kHot;
};

// The value: the header, then `payload`. O(payload).
[[nodiscard]] std::string EncodeBlock(const BlockHeader& header,
                                      std::string_view payload);
// The same, in place: `value` holds kBlockHeaderBytes of room, then the
// payload; writes the header into the room (no copy of the payload).
// O(payload): the checksum.
void EncodeBlockInPlace(const BlockHeader& header, std::string& value);

// Checks `value` against what the reader asked for (`want`: fingerprint,
// hash and table) and returns its payload (a view into `value`) and
// format. O(value).
struct DecodedBlock {
  RemoteFormat format = RemoteFormat::kHot;
  std::string_view payload;
};
[[nodiscard]] absl::StatusOr<DecodedBlock> DecodeBlock(std::string_view value,
                                                       const BlockHeader& want);

}  // namespace kvpage::remote

#endif  // KVPAGE_REMOTE_BLOCK_CODEC_H_
