#include "cache/block_table.h"

namespace kvpage::internal {

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
  to.length = from.length;
  to.window_start = from.window_start;
  to.max_length = from.max_length;
  to.cold_done = from.cold_done;
  to.published = from.published;
  to.reserved_from = from.reserved_from;
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

bool WriteRowEntries(const BlockTable& t, int32_t* out) {
  for (const BlockRef ref : t.sink_blocks) {
    if (IsQuant(ref)) return false;
    *out++ = static_cast<int32_t>(ref);
  }
  for (size_t i = t.head; i < t.window.size(); ++i) {
    if (IsQuant(t.window[i])) return false;
    *out++ = static_cast<int32_t>(t.window[i]);
  }
  return true;
}

}  // namespace kvpage::internal
