// tests/readme_snippets/snippet_context.h — what the documents' snippets
// may name without declaring it (README.md says so where it uses them).
#ifndef KVPAGE_TESTS_README_SNIPPETS_SNIPPET_CONTEXT_H_
#define KVPAGE_TESTS_README_SNIPPETS_SNIPPET_CONTEXT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "kvpage/kvpage.h"

namespace kvpage::testing {

// A function-body snippet sees these as `kv`, `seq`, `layer` and `config`.
struct SnippetContext {
  // 4 layers x 2 kv-heads x head_dim 64, f16, blocks of 16 tokens, 256
  // blocks, max_seq_len 4096, int8 compression (hot_tokens 16, 64 slots).
  std::unique_ptr<KVCache> cache;
  // A sequence holding 64 tokens on every layer, no token ids told.
  SeqId seq = 0;
  int layer = 0;
  // The cache's shape alone: compression off, policy kError.
  CacheConfig config;
};

[[nodiscard]] absl::StatusOr<SnippetContext> MakeSnippetContext();

}  // namespace kvpage::testing

#endif  // KVPAGE_TESTS_README_SNIPPETS_SNIPPET_CONTEXT_H_
