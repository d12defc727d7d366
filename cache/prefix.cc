#include "kvpage/prefix.h"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstring>
#include <vector>

#include "cache/sequence.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvpage {

namespace {

void PutLittleEndian(uint64_t value, int bytes, std::byte* out) {
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(out, &value, static_cast<size_t>(bytes));  // one store
  } else {
    for (int i = 0; i < bytes; ++i) {
      out[i] = static_cast<std::byte>((value >> (8 * i)) & 0xff);
    }
  }
}

// Blocks up to this many tokens are hashed from one stack buffer; longer
// ones through XXH3's streaming state (the same hash of the same bytes).
constexpr size_t kStackTokens = 64;

}  // namespace

uint64_t PrefixBlockHash(uint64_t parent, uint64_t salt,
                         absl::Span<const int32_t> tokens) {
  std::byte head[16];
  PutLittleEndian(parent, 8, head);
  PutLittleEndian(salt, 8, head + 8);
  const size_t token_bytes = 4 * tokens.size();
  if constexpr (std::endian::native == std::endian::little) {
    // The ids' own bytes are the documented little-endian int32s: hashed
    // in place, without a conversion loop.
    if (tokens.size() <= kStackTokens) {
      std::byte bytes[16 + 4 * kStackTokens];
      std::memcpy(bytes, head, 16);
      if (token_bytes > 0) std::memcpy(bytes + 16, tokens.data(), token_bytes);
      return XXH3_64bits(bytes, 16 + token_bytes);
    }
    XXH3_state_t state;
    XXH3_64bits_reset(&state);
    XXH3_64bits_update(&state, head, 16);
    XXH3_64bits_update(&state, tokens.data(), token_bytes);
    return XXH3_64bits_digest(&state);
  } else {
    std::vector<std::byte> bytes(16 + token_bytes);
    std::memcpy(bytes.data(), head, 16);
    for (size_t i = 0; i < tokens.size(); ++i) {
      PutLittleEndian(static_cast<uint32_t>(tokens[i]), 4,
                      bytes.data() + 16 + 4 * i);
    }
    return XXH3_64bits(bytes.data(), bytes.size());
  }
}

namespace internal {

void ExtendBlockHashes(Sequence& sequence, int64_t block_tokens,
                       int64_t max_blocks) {
  const auto tokens_per_block = static_cast<size_t>(block_tokens);
  const absl::Span<const int32_t> ids = sequence.token_ids;
  std::vector<uint64_t>& hashes = sequence.block_hashes;
  // The full blocks of ids not hashed yet, hashed into place: one
  // allocation for a prompt's blocks (doubling keeps appends amortized O(1)).
  const size_t full =
      std::min(ids.size() / tokens_per_block,
               static_cast<size_t>(std::max<int64_t>(max_blocks, 0)));
  const size_t done = hashes.size();
  if (full <= done) return;
  if (full > hashes.capacity()) {
    hashes.reserve(std::max(full, 2 * hashes.capacity()));
  }
  hashes.resize(full);
  uint64_t parent = done == 0 ? 0 : hashes[done - 1];
  const int32_t* block = ids.data() + done * tokens_per_block;
  for (size_t b = done; b < full; ++b, block += tokens_per_block) {
    parent = PrefixBlockHash(parent, sequence.salt,
                             absl::MakeConstSpan(block, tokens_per_block));
    hashes[b] = parent;
  }
}

}  // namespace internal
}  // namespace kvpage
