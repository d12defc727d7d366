#include "cache/block_table.h"

namespace kvpage::internal {

LayerGroups ResolveGroups(const CacheConfig& config,
                          const std::vector<LayerRules>& rules) {
  LayerGroups g;
  g.group_of.resize(rules.size());
  g.slot_of.resize(rules.size());
  for (size_t layer = 0; layer < rules.size(); ++layer) {
    size_t group = g.members.size();
    if (config.group_layers) {
      for (size_t i = 0; i < g.members.size(); ++i) {
        if (rules[static_cast<size_t>(g.members[i][0])] == rules[layer]) {
          group = i;
          break;
        }
      }
    }
    if (group == g.members.size()) g.members.emplace_back();
    g.group_of[layer] = static_cast<int>(group);
    g.slot_of[layer] = static_cast<int>(g.members[group].size());
    g.members[group].push_back(static_cast<int>(layer));
    g.width = std::max(g.width, static_cast<int>(g.members[group].size()));
  }
  return g;
}

BlockTable NewTable(const LayerRules& rules) {
  BlockTable table;
  table.window_first = rules.sink_blocks;
  return table;
}

BlockTable ForkTable(const BlockTable& from) {
  BlockTable to;
  to.sink_blocks = from.sink_blocks;
  to.window.assign(from.window.begin() + static_cast<ptrdiff_t>(from.head),
                   from.window.end());
  to.window_first = from.window_first;
  static_cast<LayerState&>(to) = from;
  to.split = from.split;
  to.agree = from.agree;
  to.cold_done = from.cold_done;
  to.published = from.published;
  to.reserved_from = from.reserved_from;
  to.evicted = 0;  // the child evicted nothing yet
  return to;
}

void AttachPrefix(const LayerRules& rules, absl::Span<const BlockId> blocks,
                  int64_t length, BlockTable& table) {
  const int64_t sink_blocks = SinkBlocks(rules, length);
  for (size_t b = 0; b < blocks.size(); ++b) {
    if (static_cast<int64_t>(b) < sink_blocks) {
      table.sink_blocks.push_back(blocks[b]);
    } else {
      table.window.push_back(blocks[b]);
    }
  }
  table.window_first = std::max(sink_blocks, rules.sink_blocks);
  table.length = length;
  table.max_length = std::max(table.max_length, length);  // after Truncate(0)
  table.published = static_cast<int64_t>(blocks.size());
}

bool WriteRowEntries(const BlockTable& t, const RowShape& row, int32_t* out) {
  auto put = [&](int64_t logical) {
    const BlockRef ref = t.Block(logical);
    *out++ = static_cast<int32_t>(ref);
    return !IsQuant(ref);
  };
  for (int64_t b = 0; b < row.sink_entries; ++b) {
    if (!put(b)) return false;
  }
  for (int64_t b = row.window_first; b < row.window_first + row.window_entries;
       ++b) {
    if (!put(b)) return false;
  }
  return true;
}

}  // namespace kvpage::internal
