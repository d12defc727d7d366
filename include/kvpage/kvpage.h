// kvpage/kvpage.h — the one header an engine includes.
//
// kvpage manages the memory of a transformer's key/value cache: a fixed pool
// of blocks, a block table per sequence and layer, and an update that writes
// only the tokens that are new. Start with kvpage/kv_cache.h.
//
// Usage:
//   #include <kvpage/kvpage.h>
//   auto cache = kvpage::KVCache::Create({.num_layers = 32, .num_kv_heads = 8,
//                                         .head_dim = 128, .num_blocks = 4096,
//                                         .max_seq_len = 8192});
#ifndef KVPAGE_KVPAGE_H_
#define KVPAGE_KVPAGE_H_

#include "kvpage/attention.h"  // IWYU pragma: export
#include "kvpage/config.h"     // IWYU pragma: export
#include "kvpage/engine.h"     // IWYU pragma: export
#include "kvpage/kv_cache.h"   // IWYU pragma: export
#include "kvpage/prefix.h"     // IWYU pragma: export
#include "kvpage/snapshot.h"   // IWYU pragma: export
#include "kvpage/storage.h"    // IWYU pragma: export

#endif  // KVPAGE_KVPAGE_H_
