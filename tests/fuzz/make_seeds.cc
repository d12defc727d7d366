// Writes the snapshot fuzzer's seed corpus into the directory named by argv[1]:
// the showcase (every policy, compression, sharing) with and without token
// data, its mixed-format variant, and an empty cache.
#include <cstdio>
#include <filesystem>
#include <string>

#include "kvpage/snapshot.h"
#include "tests/snapshot_fixture.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    std::fprintf(stderr, "%s: %s\n", dir.c_str(), error.message().c_str());
    return 1;
  }
  int failures = 0;
  auto write = [&](const kvpage::KVCache& cache, const std::string& name,
                   bool data) {
    absl::Status s =
        cache.WriteSnapshot(dir + "/" + name, {.include_token_data = data});
    if (!s.ok()) {
      std::fprintf(stderr, "%s: %s\n", name.c_str(), s.ToString().c_str());
      ++failures;
    }
  };
  for (bool mixed : {false, true}) {
    auto cache = kvpage::testing::BuildShowcase(mixed);
    if (!cache.ok()) {
      std::fprintf(stderr, "%s\n", cache.status().ToString().c_str());
      return 1;
    }
    write(**cache, mixed ? "mixed.snap" : "showcase.snap", false);
    write(**cache, mixed ? "mixed_data.snap" : "showcase_data.snap", true);
  }
  auto empty = kvpage::KVCache::Create({.num_layers = 1,
                                        .num_kv_heads = 1,
                                        .head_dim = 4,
                                        .num_blocks = 4,
                                        .max_seq_len = 16});
  if (!empty.ok()) return 1;
  write(**empty, "empty.snap", true);
  return failures == 0 ? 0 : 1;
}
