#include "kvpage/prefix.h"

#include <cstddef>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "cache/sequence.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvpage {

namespace {
void PutLittleEndian(uint64_t value, int bytes, std::byte* out) {
  for (int i = 0; i < bytes; ++i) {
    out[i] = static_cast<std::byte>((value >> (8 * i)) & 0xff);
  }
}
}  // namespace

uint64_t PrefixBlockHash(uint64_t parent, uint64_t salt,
                         absl::Span<const int32_t> tokens) {
  absl::InlinedVector<std::byte, 16 + 4 * 64> bytes(16 + 4 * tokens.size());
  PutLittleEndian(parent, 8, bytes.data());
  PutLittleEndian(salt, 8, bytes.data() + 8);
  for (size_t i = 0; i < tokens.size(); ++i) {
    PutLittleEndian(static_cast<uint32_t>(tokens[i]), 4,
                    bytes.data() + 16 + 4 * i);
  }
  return XXH3_64bits(bytes.data(), bytes.size());
}

namespace internal {

void ExtendBlockHashes(Sequence& sequence, int64_t block_tokens,
                       int64_t max_blocks) {
  const auto tokens_per_block = static_cast<size_t>(block_tokens);
  const absl::Span<const int32_t> ids = sequence.token_ids;
  std::vector<uint64_t>& hashes = sequence.block_hashes;
  while ((hashes.size() + 1) * tokens_per_block <= ids.size() &&
         static_cast<int64_t>(hashes.size()) < max_blocks) {
    const size_t b = hashes.size();
    hashes.push_back(
        PrefixBlockHash(b == 0 ? 0 : hashes[b - 1], sequence.salt,
                        ids.subspan(b * tokens_per_block, tokens_per_block)));
  }
}

}  // namespace internal
}  // namespace kvpage
