// What a scheduler asks before it admits a request: the tokens a prompt
// finds cached, and the blocks a request would need. Nothing here changes
// the cache.
#include <algorithm>
#include <limits>

#include "absl/strings/str_format.h"
#include "cache/kv_cache_impl.h"
#include "kvpage/prefix.h"

namespace kvpage {

using internal::BlockRange;
using internal::BlockTable;
using internal::LayerRules;

namespace {

// The most blocks the pool supplies at once for a new table of one layer
// that attaches `matched` cached blocks and then grows to `length` tokens
// one update at a time. Without eviction that is every block up to
// `length`. Past max_seq_len a window of W - S tokens touches at most
// ring_blocks blocks besides the sink blocks, and does touch that many
// once it has slid a block further (sliding window, ring); for a context
// shift it is a bound. Attached blocks are the cache's: they count only
// while held, which past the window is certain for sink blocks only.
int64_t BlocksToGrow(const LayerRules& r, int64_t matched, int64_t length) {
  if (length <= matched * r.block_tokens) return 0;
  const int64_t all = internal::CeilDiv(length, r.block_tokens) - matched;
  if (!r.evicts() || length <= r.max_seq_len) return all;
  const int64_t at_limit =
      internal::CeilDiv(r.max_seq_len, r.block_tokens) - matched;
  const int64_t sliding =
      r.sink_blocks + r.ring_blocks - std::min(matched, r.sink_blocks);
  return std::min(all, std::max(at_limit, sliding));
}

}  // namespace

std::vector<int32_t> KVCache::Impl::MatchedEntries(
    absl::Span<const int32_t> tokens, uint64_t salt,
    const MatchOptions& options) const {
  const int64_t tokens_per_block = block_tokens();
  const int64_t limit = MatchLimit(tokens.size(), options);
  std::vector<int32_t> entries;
  uint64_t parent = 0;
  for (int64_t b = 0; b < limit; ++b) {
    parent = PrefixBlockHash(
        parent, salt,
        tokens.subspan(static_cast<size_t>(b * tokens_per_block),
                       static_cast<size_t>(tokens_per_block)));
    const int32_t entry = prefix->FindComplete(parent);
    if (entry < 0) break;
    entries.push_back(entry);
  }
  return entries;
}

int64_t KVCache::CachedPrefixTokens(absl::Span<const int32_t> tokens,
                                    uint64_t salt,
                                    const MatchOptions& options) const {
  return static_cast<int64_t>(
             impl_->MatchedEntries(tokens, salt, options).size()) *
         impl_->block_tokens();
}

absl::StatusOr<Admission> KVCache::PlanAdmission(
    absl::Span<const int32_t> prompt, uint64_t salt,
    int64_t extra_tokens) const {
  const Impl& impl = *impl_;
  const auto prompt_tokens = static_cast<int64_t>(prompt.size());
  if (extra_tokens < 0 ||
      extra_tokens > std::numeric_limits<int64_t>::max() / 2 - prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "PlanAdmission(%d prompt tokens, %d extra tokens): extra_tokens must "
        "be >= 0 and the total below 2^62",
        prompt_tokens, extra_tokens));
  }
  const int64_t total = prompt_tokens + extra_tokens;
  for (size_t layer = 0; layer < impl.rules.size(); ++layer) {
    const LayerRules& layer_rules = impl.rules[layer];
    if (!layer_rules.evicts() && total > layer_rules.max_seq_len) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "PlanAdmission(%d prompt tokens, %d extra tokens): layer %d keeps "
          "at most max_seq_len %d tokens (overflow policy error): the request "
          "can never fit",
          prompt_tokens, extra_tokens, layer, layer_rules.max_seq_len));
    }
  }
  const std::vector<int32_t> entries = impl.MatchedEntries(prompt, salt);
  const auto matched = static_cast<int64_t>(entries.size());
  Admission admission;
  admission.cached_tokens = matched * impl.block_tokens();
  for (const LayerRules& layer_rules : impl.group_rules) {  // per table
    admission.blocks_needed += BlocksToGrow(layer_rules, matched, total);
  }
  int64_t attached_idle = 0;
  for (int32_t entry : entries)
    attached_idle += impl.prefix->idle_blocks(entry);
  admission.blocks_available = impl.pool->capacity() -
                               impl.pool->used_blocks() +
                               impl.prefix->evictable_blocks() - attached_idle;
  return admission;
}

absl::StatusOr<int64_t> KVCache::BlocksNeeded(SeqId seq, int64_t seq_len,
                                              int64_t tokens) const {
  const Impl& impl = *impl_;
  auto it = impl.sequences.find(seq);
  if (it == impl.sequences.end()) {
    return absl::NotFoundError(absl::StrFormat(
        "BlocksNeeded(seq %d, seq_len %d): no such sequence", seq, seq_len));
  }
  if (tokens < 0 || seq_len < tokens) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "BlocksNeeded(seq %d, seq_len %d): %d tokens must be >= 0 and at most "
        "seq_len",
        seq, seq_len, tokens));
  }
  const int64_t start = seq_len - tokens;
  int64_t needed = 0;
  for (int layer = 0; layer < impl.config.num_layers; ++layer) {
    if (absl::Status s = impl.CheckPositions(
            "BlocksNeeded", seq, layer, impl.rules[static_cast<size_t>(layer)],
            impl.StateOf(it->second, layer), start, seq_len);
        !s.ok()) {
      return s;
    }
  }
  const internal::Sequence& sequence = it->second;
  auto refs = [&impl](internal::BlockRef ref) {
    return impl.pool->ref_count(ref);
  };
  for (size_t group = 0; group < impl.group_rules.size(); ++group) {
    const LayerRules& layer_rules = impl.group_rules[group];
    const BlockTable& table = sequence.tables[group];
    const std::vector<int>& members = impl.groups.members[group];
    if (members.size() == 1) {
      if (impl.InPlaceAppendBlock(layer_rules, table, start, seq_len) ==
          internal::kNoBlock) {
        needed +=
            internal::MakePlan(layer_rules, table, refs, start, seq_len).fresh;
      }
      continue;
    }
    // A group's layers, one Update after the other: the first takes what
    // the step needs while the others still show what they showed (its
    // table holds both); the rest take nothing more. A table whose layers
    // differ already (mid-step) is counted layer by layer against what the
    // others show now: a bound.
    const size_t first_only = table.split ? members.size() : 1;
    for (size_t i = 0; i < first_only; ++i) {
      internal::GroupNeeds others;
      for (const int m : members) {
        if (m == members[i]) continue;
        const internal::LayerState& s = impl.StateOf(sequence, m);
        internal::AddNeeds(layer_rules, s.length, s.window_start, others);
      }
      needed += internal::MakeLayerPlan(layer_rules, table,
                                        impl.StateOf(sequence, members[i]),
                                        others, refs, start, seq_len)
                    .fresh;
    }
  }
  return needed;
}

}  // namespace kvpage
