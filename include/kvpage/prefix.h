// kvpage/prefix.h — the block hash of prefix caching, reproducible byte for
// byte in any process, on any machine, by any version of kvpage.
//
// A full block of token ids (block_tokens of them) is named by a chain hash:
//   hash(block i) = XXH3_64bits(seed 0) over the bytes
//     parent  8 bytes, little-endian: hash(block i - 1), or 0 for block 0
//     salt    8 bytes, little-endian: the sequence's salt (LoRA adapter,
//             tenant; 0 when none)
//     tokens  block_tokens x 4 bytes, little-endian two's complement int32
// so two sequences share block i only when they share every token before it
// and the salt. (XXH3 is xxHash 0.8's 64-bit hash, here Debian's libxxhash.)
//
// Usage:
//   uint64_t h0 = kvpage::PrefixBlockHash(0, salt, tokens.subspan(0, 16));
//   uint64_t h1 = kvpage::PrefixBlockHash(h0, salt, tokens.subspan(16, 16));
//
// Thread safety: a pure function.
#ifndef KVPAGE_PREFIX_H_
#define KVPAGE_PREFIX_H_

#include <cstdint>

#include "absl/types/span.h"

namespace kvpage {

// The chain hash of one block of token ids given its parent's hash. O(tokens).
[[nodiscard]] uint64_t PrefixBlockHash(uint64_t parent, uint64_t salt,
                                       absl::Span<const int32_t> tokens);

}  // namespace kvpage

#endif  // KVPAGE_PREFIX_H_
