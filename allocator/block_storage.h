// allocator/block_storage.h — where a pool's bytes live, as the allocator
// names it: the public BlockStorage (kvpage/storage.h) and block ids.
//
// The pool's bookkeeping (ids, reference counts, the free list) never touches
// block bytes; everything that does goes through a BlockStorage. Code above
// the pool asks `host_base()` for a direct path and falls back to
// Write/Read/Copy when it is null: nothing assumes host pointers.
#ifndef KVPAGE_ALLOCATOR_BLOCK_STORAGE_H_
#define KVPAGE_ALLOCATOR_BLOCK_STORAGE_H_

#include <cstdint>

#include "kvpage/storage.h"

namespace kvpage::internal {

using BlockStorage = ::kvpage::BlockStorage;

// A block's name: an index into the pool's dense arrays, never a pointer.
using BlockId = uint32_t;
inline constexpr BlockId kNoBlock = 0xffffffffu;

}  // namespace kvpage::internal

#endif  // KVPAGE_ALLOCATOR_BLOCK_STORAGE_H_
