// The second tier (kvpage/tier.h): offering the prefix cache's blocks to
// it, and loading the blocks MatchPrefix fetches from it into fresh blocks
// published as if computed here.
#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "cache/kv_cache_impl.h"

namespace kvpage {

using internal::BlockId;

absl::Status KVCache::AttachTier(BlockTier* tier, const TierOptions& options) {
  Impl& impl = *impl_;
  if (options.fetch_batch < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "AttachTier: fetch_batch is %d; want >= 1", options.fetch_batch));
  }
  if (tier != nullptr) {
    TierShape shape{.config = impl.config};
    for (const std::vector<int>& members : impl.groups.members) {
      shape.table_layers.push_back(members);
      shape.table_bytes.push_back(static_cast<int64_t>(members.size()) *
                                  impl.block_bytes());
    }
    if (absl::Status s = tier->Attach(shape); !s.ok()) return s;
  }
  // Another tier has none of the blocks: each may be offered to it.
  if (tier != impl.tier) impl.prefix->ClearInTier();
  impl.tier = tier;
  impl.tier_options = options;
  return absl::OkStatus();
}

void KVCache::Impl::StoreToTier(int32_t entry, bool evicted) {
  const absl::Span<const BlockId> ids = prefix->blocks(entry);
  tier_bytes.resize(ids.size());
  absl::InlinedVector<absl::Span<const std::byte>, 8> tables;
  const int64_t bytes = block_bytes();
  for (size_t t = 0; t < ids.size(); ++t) {
    const auto layers = static_cast<int>(groups.members[t].size());
    std::vector<std::byte>& out = tier_bytes[t];
    out.resize(static_cast<size_t>(layers * bytes));
    for (int slot = 0; slot < layers; ++slot) {
      // A block's K region, then its V region: the whole block.
      const auto [k, v] = io->Source(ids[t], slot);
      (void)v;
      std::memcpy(out.data() + slot * bytes, k, static_cast<size_t>(bytes));
    }
    tables.push_back(out);
  }
  if (tier->Store(prefix->hash_of(entry), tables, evicted)) {
    prefix->set_in_tier(entry);
  }
}

void KVCache::Impl::WriteThrough(internal::Sequence& sequence) {
  const int64_t tokens_per_block = block_tokens();
  auto limit = static_cast<int64_t>(sequence.block_hashes.size());
  for (const internal::BlockTable& table : sequence.tables) {
    // Published by every table, and written: a reservation's positions
    // from reserved_from on are not yet.
    limit = std::min(
        {limit, table.published, table.reserved_from / tokens_per_block});
  }
  sequence.tier_offered =
      std::min(sequence.tier_offered,
               static_cast<int64_t>(sequence.block_hashes.size()));
  for (int64_t b = sequence.tier_offered; b < limit; ++b) {
    const int32_t entry =
        prefix->FindComplete(sequence.block_hashes[static_cast<size_t>(b)]);
    if (entry >= 0 && !prefix->in_tier(entry)) StoreToTier(entry, false);
  }
  sequence.tier_offered = std::max(sequence.tier_offered, limit);
}

int32_t KVCache::Impl::LoadFromTier(uint64_t hash,
                                    const std::vector<std::string>& tables) {
  const size_t count = groups.size();
  const int64_t bytes = block_bytes();
  if (tables.size() != count || prefix->Lists(hash)) return -1;
  for (size_t t = 0; t < count; ++t) {
    if (static_cast<int64_t>(tables[t].size()) !=
        static_cast<int64_t>(groups.members[t].size()) * bytes) {
      return -1;
    }
  }
  fresh_ids.clear();
  if (!TakeFresh(static_cast<int64_t>(count), nullptr).ok()) return -1;
  counters.blocks_allocated += static_cast<int64_t>(count);
  // TakeFresh may have evicted idle entries, never this hash (not listed).
  const absl::Span<const BlockId> ids = fresh_ids;
  int32_t entry = -1;
  for (size_t t = 0; t < count; ++t) {
    const auto* src = reinterpret_cast<const std::byte*>(tables[t].data());
    for (size_t slot = 0; slot < groups.members[t].size(); ++slot) {
      io->WriteBlock(pool->StorageId(ids[t], static_cast<int>(slot)),
                     src + static_cast<int64_t>(slot) * bytes);
    }
    const bool listed = prefix->Publish(hash, t, ids[t], &entry);
    KVPAGE_DCHECK(listed);
    (void)listed;
    pool->Retain(ids[t]);  // the cache's reference; the allocation's is
                           // the attaching sequence's
  }
  prefix->set_in_tier(entry);  // never offered back
  return entry;
}

void KVCache::Impl::MatchFromTier(internal::Sequence& sequence, int64_t limit,
                                  std::vector<int32_t>& matched) {
  const int64_t tokens_per_block = block_tokens();
  while (static_cast<int64_t>(matched.size()) < limit) {
    const auto first = static_cast<int64_t>(matched.size());
    const int64_t ask = std::min(tier_options.fetch_batch, limit - first);
    internal::ExtendBlockHashes(sequence, tokens_per_block, first + ask);
    const absl::Span<const uint64_t> hashes =
        absl::MakeConstSpan(sequence.block_hashes)
            .subspan(static_cast<size_t>(first), static_cast<size_t>(ask));
    tier_fetched.clear();
    const int64_t found =
        std::clamp<int64_t>(tier->Fetch(hashes, tier_fetched), 0, ask);
    for (int64_t i = 0; i < found; ++i) {
      if (static_cast<size_t>(i) >= tier_fetched.size()) return;
      const int32_t entry = LoadFromTier(hashes[static_cast<size_t>(i)],
                                         tier_fetched[static_cast<size_t>(i)]);
      if (entry < 0) return;
      matched.push_back(entry);
    }
    if (found < ask) return;
  }
}

}  // namespace kvpage
