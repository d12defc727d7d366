// tools/remote_stats_json.h — RemoteTierStats (kvpage/remote_tier.h) as
// JSON, its fields' names as keys, for the tools that report a Redis tier
// (kvpage-replay, kvpage-share).
#ifndef KVPAGE_TOOLS_REMOTE_STATS_JSON_H_
#define KVPAGE_TOOLS_REMOTE_STATS_JSON_H_

#include "kvpage/remote_tier.h"
#include "nlohmann/json.hpp"

namespace kvpage::tools {

inline nlohmann::json RemoteTierStatsJson(const RemoteTierStats& t) {
  return {{"blocks_written_back", t.blocks_written_back},
          {"blocks_written_through", t.blocks_written_through},
          {"queue_drops", t.queue_drops},
          {"write_errors", t.write_errors},
          {"fetch_calls", t.fetch_calls},
          {"blocks_fetched", t.blocks_fetched},
          {"fetch_misses", t.fetch_misses},
          {"fetch_errors", t.fetch_errors},
          {"corrupt_blocks", t.corrupt_blocks},
          {"foreign_blocks", t.foreign_blocks},
          {"bytes_written", t.bytes_written},
          {"bytes_fetched", t.bytes_fetched},
          {"fetch_p50_us", t.fetch_p50_us},
          {"fetch_p99_us", t.fetch_p99_us}};
}

}  // namespace kvpage::tools

#endif  // KVPAGE_TOOLS_REMOTE_STATS_JSON_H_
