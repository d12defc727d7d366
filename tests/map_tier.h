// tests/map_tier.h — an in-memory second tier (kvpage/tier.h) for tests.
#ifndef KVPAGE_TESTS_MAP_TIER_H_
#define KVPAGE_TESTS_MAP_TIER_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kvpage/tier.h"

namespace kvpage::testing {

// A tier that keeps every block it is given, in a map; or, told to, gets
// things wrong: refuses to attach, drops what it is given, hands out
// values cut short or with a flipped bit, overstates what it found.
class MapTier final : public BlockTier {
 public:
  absl::Status Attach(const TierShape& shape) override {
    if (refuse) return absl::FailedPreconditionError("refused by the tier");
    shapes.push_back(shape);
    return absl::OkStatus();
  }
  bool Store(uint64_t hash,
             absl::Span<const absl::Span<const std::byte>> tables,
             bool evicted) override {
    if (drop_stores) {
      ++dropped;
      return false;
    }
    std::vector<std::string>& block = blocks[hash];
    block.clear();
    for (const auto& t : tables) {
      block.emplace_back(reinterpret_cast<const char*>(t.data()), t.size());
    }
    ++(evicted ? written_back : written_through);
    return true;
  }
  int64_t Fetch(absl::Span<const uint64_t> hashes,
                std::vector<std::vector<std::string>>& out) override {
    ++fetches;
    int64_t n = 0;
    for (const uint64_t h : hashes) {
      auto it = blocks.find(h);
      if (it == blocks.end()) break;
      out.push_back(it->second);
      if (truncate) out.back()[0].pop_back();
      if (flip) out.back()[0][0] ^= 1;
      ++n;
    }
    fetched += n;
    return overstate ? n + 100 : n;
  }

  std::map<uint64_t, std::vector<std::string>> blocks;
  std::vector<TierShape> shapes;
  int64_t written_back = 0, written_through = 0, fetches = 0, fetched = 0,
          dropped = 0;
  bool refuse = false, truncate = false, overstate = false, flip = false;
  bool drop_stores = false;  // Store drops every block (a full queue)
};

}  // namespace kvpage::testing

#endif  // KVPAGE_TESTS_MAP_TIER_H_
