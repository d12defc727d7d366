// KVCache: the public face. Each call checks its arguments, then sequences
// the steps of the cache's parts (cache/kv_cache_impl.h).
#include "kvpage/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_format.h"
#include "allocator/check.h"
#include "allocator/host_arena.h"
#include "cache/kv_cache_impl.h"
#include "cache/kv_cache_internal.h"

namespace kvpage {

using internal::BlockId;
using internal::BlockPool;
using internal::BlockRef;
using internal::BlockTable;
using internal::LayerRules;
using internal::Plan;
using internal::Sequence;

int64_t LayerView::tokens() const {
  int64_t total = 0;
  for (const BlockView& b : blocks) total += b.tokens;
  return total;
}

KVCache::KVCache(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KVCache::~KVCache() = default;

absl::StatusOr<std::unique_ptr<KVCache>> KVCache::Create(
    const CacheConfig& config) {
  if (absl::Status s = ValidateConfig(config); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<internal::HostArena>> arena =
      internal::HostArena::Create(
          StorageBlocks(config), BlockBytes(config),
          {.prefault = config.prefault, .huge_pages = config.huge_pages});
  if (!arena.ok()) return arena.status();
  return Create(config, *std::move(arena));
}

absl::StatusOr<std::unique_ptr<KVCache>>
internal::KVCacheAccess::CreateWithStorage(
    const CacheConfig& config, std::unique_ptr<BlockStorage> storage) {
  return KVCache::Create(config, std::move(storage));
}

absl::StatusOr<std::unique_ptr<KVCache>> KVCache::Create(
    const CacheConfig& config, std::unique_ptr<BlockStorage> storage) {
  if (absl::Status s = ValidateConfig(config); !s.ok()) return s;
  if (storage == nullptr || storage->num_blocks() != StorageBlocks(config) ||
      storage->block_bytes() != BlockBytes(config)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "KVCache storage: %d blocks of %d bytes; the config needs %d of %d",
        storage == nullptr ? 0 : storage->num_blocks(),
        storage == nullptr ? 0 : storage->block_bytes(), StorageBlocks(config),
        BlockBytes(config)));
  }
  if (config.compression.enabled && !storage->host_io()) {
    return absl::InvalidArgumentError(
        "KVCache storage: compression reads and writes blocks on the host; "
        "this storage has no host reads and writes (StorageCallbacks read "
        "and write)");
  }
  auto impl = std::make_unique<KVCache::Impl>();
  impl->config = config;
  impl->rules = internal::ResolveLayers(config);
  impl->groups = internal::ResolveGroups(config, impl->rules);
  for (const std::vector<int>& members : impl->groups.members) {
    impl->group_rules.push_back(internal::TableRules(
        impl->rules[static_cast<size_t>(members[0])], members.size()));
  }
  absl::StatusOr<std::unique_ptr<BlockPool>> pool =
      BlockPool::Create(std::move(storage), impl->groups.width);
  if (!pool.ok()) return pool.status();
  impl->pool = *std::move(pool);
  impl->local = std::make_unique<BlockPool::LocalCache>(*impl->pool);
  impl->io = std::make_unique<internal::BlockIO>(config, impl->pool->storage(),
                                                 impl->pool->capacity(),
                                                 impl->groups.width);
  impl->prefix = std::make_unique<internal::PrefixCache>(
      static_cast<int>(impl->groups.size()), config.num_blocks,
      config.prefault);
  if (config.compression.enabled) {
    absl::StatusOr<std::unique_ptr<internal::QuantStore>> quant =
        internal::QuantStore::Create(config);
    if (!quant.ok()) return quant.status();
    impl->quant = *std::move(quant);
  }
  return std::unique_ptr<KVCache>(new KVCache(std::move(impl)));
}

const CacheConfig& KVCache::config() const { return impl_->config; }

absl::StatusOr<SeqId> KVCache::AddSequence() { return AddSequence({}); }

absl::StatusOr<SeqId> KVCache::AddSequence(const SequenceOptions& options) {
  Impl& impl = *impl_;
  const SeqId id = impl.next_seq++;
  Sequence sequence;
  sequence.salt = options.salt;
  for (const LayerRules& rules : impl.group_rules) {
    sequence.tables.push_back(internal::NewTable(rules));
  }
  impl.sequences.emplace(id, std::move(sequence));
  ++impl.sequences_epoch;
  return id;
}

absl::StatusOr<SeqId> KVCache::Fork(SeqId parent) {
  Impl& impl = *impl_;
  auto it = impl.sequences.find(parent);
  if (it == impl.sequences.end()) {
    return absl::NotFoundError(
        absl::StrFormat("Fork(seq %d): no such sequence", parent));
  }
  const Sequence& from = it->second;
  Sequence child;
  child.salt = from.salt;
  child.token_ids = from.token_ids;
  child.block_hashes = from.block_hashes;
  child.tier_offered = from.tier_offered;
  child.layer_states = from.layer_states;
  for (internal::LayerState& state : child.layer_states) state.evicted = 0;
  for (const BlockTable& from_table : from.tables) {
    BlockTable& table =
        child.tables.emplace_back(internal::ForkTable(from_table));
    for (BlockRef ref : table.sink_blocks) impl.RetainRef(ref);
    for (BlockRef ref : table.window) impl.RetainRef(ref);
  }
  for (size_t group = 0; group < child.tables.size(); ++group) {
    if (child.tables[group].split) impl.Rejoin(child, group);
  }
  for (int layer = 0; layer < impl.config.num_layers; ++layer) {
    const internal::LayerState& state = impl.StateOf(child, layer);
    impl.counters.tokens_stored +=
        internal::VisibleTokens(impl.rules[static_cast<size_t>(layer)],
                                state.length, state.window_start);
  }
  const SeqId id = impl.next_seq++;
  impl.sequences.emplace(id, std::move(child));
  ++impl.sequences_epoch;
  return id;
}

absl::Status KVCache::AppendTokens(SeqId seq,
                                   absl::Span<const int32_t> token_ids) {
  Impl& impl = *impl_;
  auto it = impl.sequences.find(seq);
  if (it == impl.sequences.end()) {
    return absl::NotFoundError(
        absl::StrFormat("AppendTokens(seq %d, %d tokens): no such sequence",
                        seq, token_ids.size()));
  }
  Sequence& sequence = it->second;
  sequence.token_ids.insert(sequence.token_ids.end(), token_ids.begin(),
                            token_ids.end());
  internal::ExtendBlockHashes(sequence, impl.block_tokens());
  impl.PublishAll(sequence);
  if (impl.tier != nullptr && impl.tier_options.write_through) {
    impl.WriteThrough(sequence);
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> KVCache::MatchPrefix(SeqId seq,
                                             absl::Span<const int32_t> tokens,
                                             const MatchOptions& options) {
  Impl& impl = *impl_;
  auto it = impl.sequences.find(seq);
  if (it == impl.sequences.end()) {
    return absl::NotFoundError(
        absl::StrFormat("MatchPrefix(seq %d, %d tokens): no such sequence", seq,
                        tokens.size()));
  }
  Sequence& sequence = it->second;
  for (int layer = 0; layer < impl.config.num_layers; ++layer) {
    const int64_t length = impl.StateOf(sequence, layer).length;
    if (length != 0 || !sequence.token_ids.empty()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "MatchPrefix(seq %d, %d tokens): the sequence already holds %d "
          "tokens; a prefix attaches to an empty sequence",
          seq, tokens.size(),
          std::max<int64_t>(length, sequence.token_ids.size())));
    }
  }
  const int64_t tokens_per_block = impl.block_tokens();
  const int64_t blocks = static_cast<int64_t>(tokens.size()) / tokens_per_block;
  // No layer may be asked to keep more than it shows, and with
  // leave_last_token the last token stays to compute.
  const int64_t limit = impl.MatchLimit(tokens.size(), options);
  // The hash chain AppendTokens keeps, grown one block at a time until a
  // block is not cached in every layer.
  sequence.token_ids.assign(tokens.begin(), tokens.end());
  std::vector<int32_t> matched;  // entries, in order
  for (int64_t b = 0; b < limit; ++b) {
    internal::ExtendBlockHashes(sequence, tokens_per_block, b + 1);
    const int32_t entry = impl.prefix->FindComplete(
        sequence.block_hashes[static_cast<size_t>(b)]);
    if (entry < 0) break;
    matched.push_back(entry);
  }
  // The sequence's holds on what matched, taken now: where the blocks held
  // here end, the tier may have the next ones, and loading them takes
  // fresh blocks, which may evict idle entries. A loaded entry is held once
  // already.
  for (const int32_t entry : matched) {
    for (size_t group = 0; group < sequence.tables.size(); ++group) {
      impl.Retain(impl.prefix->block(entry, group));
    }
  }
  if (impl.tier != nullptr && static_cast<int64_t>(matched.size()) < limit) {
    impl.MatchFromTier(sequence, limit, matched);
  }
  const int64_t length =
      static_cast<int64_t>(matched.size()) * tokens_per_block;
  CacheCounters& c = impl.counters;
  c.hits += static_cast<int64_t>(matched.size());
  if (static_cast<int64_t>(matched.size()) < limit) ++c.misses;
  ++c.prefix_queries;
  c.prefix_blocks_queried += blocks;
  c.prefix_tokens_queried += static_cast<int64_t>(tokens.size());
  c.prefix_tokens_matched += length;
  sequence.token_ids.resize(static_cast<size_t>(length));
  sequence.block_hashes.resize(matched.size());
  // Matched blocks are in the prefix cache already: no write-through.
  sequence.tier_offered = static_cast<int64_t>(matched.size());
  std::vector<BlockId> blocks_of_table(matched.size());
  for (size_t group = 0; group < sequence.tables.size(); ++group) {
    for (size_t b = 0; b < matched.size(); ++b) {
      blocks_of_table[b] = impl.prefix->block(matched[b], group);
    }
    BlockTable& table = sequence.tables[group];
    internal::AttachPrefix(impl.group_rules[group], blocks_of_table, length,
                           table);
    if (table.split) {  // every layer was empty: each now holds the prefix
      for (const int layer : impl.groups.members[group]) {
        internal::LayerState& state =
            sequence.layer_states[static_cast<size_t>(layer)];
        state.length = length;
        state.max_length = std::max(state.max_length, length);
      }
      impl.Rejoin(sequence, group);
    }
    // A ring emptied by Truncate kept its blocks as spares: the attached
    // blocks take their place, the surplus goes back.
    impl.DropSurplusSpares(impl.group_rules[group], table);
    impl.counters.tokens_stored += length * impl.group_layers(group);
  }
  return length;
}

absl::Status KVCache::RemoveSequence(SeqId seq) {
  Impl& impl = *impl_;
  auto it = impl.sequences.find(seq);
  if (it == impl.sequences.end()) {
    return absl::NotFoundError(
        absl::StrFormat("RemoveSequence(seq %d): no such sequence", seq));
  }
  for (int layer = 0; layer < impl.config.num_layers; ++layer) {
    const internal::LayerState& state = impl.StateOf(it->second, layer);
    impl.counters.tokens_stored -=
        internal::VisibleTokens(impl.rules[static_cast<size_t>(layer)],
                                state.length, state.window_start);
  }
  for (BlockTable& table : it->second.tables) impl.ReleaseAll(table);
  impl.sequences.erase(it);
  ++impl.sequences_epoch;
  return absl::OkStatus();
}

namespace {

// Update's own refusals, about its data: InvalidArgument for the caller's
// mistakes. The positions are checked by Impl::CheckPositions.
absl::Status CheckSpans(DType dtype, int64_t token_elems, SeqId seq, int layer,
                        TokenSpan k, TokenSpan v, int64_t seq_len) {
  const int64_t n = k.tokens;
  auto invalid = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Update(seq %d, layer %d, seq_len %d): %s", seq, layer, seq_len, why));
  };
  if (ABSL_PREDICT_FALSE(k.tokens != v.tokens || n < 0)) {
    return invalid(
        absl::StrFormat("k has %d tokens, v has %d", k.tokens, v.tokens));
  }
  for (const TokenSpan* span : {&k, &v}) {
    const char* name = span == &k ? "k" : "v";
    if (ABSL_PREDICT_FALSE(span->dtype != DType::kF32 &&
                           span->dtype != dtype)) {
      return invalid(
          absl::StrFormat("%s is %s; the cache takes f32 or its own dtype %s",
                          name, DTypeName(span->dtype), DTypeName(dtype)));
    }
    if (ABSL_PREDICT_FALSE(n > 0 && span->data == nullptr)) {
      return invalid(absl::StrFormat("%s is null with %d tokens", name, n));
    }
  }
  if (ABSL_PREDICT_FALSE(n > (int64_t{1} << 62) / (token_elems * 4))) {
    return invalid(absl::StrFormat("%d tokens of %d elements cannot exist", n,
                                   token_elems));
  }
  if (ABSL_PREDICT_FALSE(seq_len < n)) {
    return invalid(absl::StrFormat(
        "%d tokens end at seq_len %d: they would start below position 0", n,
        seq_len));
  }
  return absl::OkStatus();
}

// Writes the positions of [start, seq_len) that are visible now; those
// evicted by this very update are skipped. Returns the tokens written.
int64_t WriteTokens(internal::BlockIO& io, const LayerRules& rules,
                    const internal::LayerState& state, const BlockTable& table,
                    const BlockPool& pool, int slot, TokenSpan k, TokenSpan v,
                    int64_t start, int64_t seq_len) {
  const auto* k_src = static_cast<const std::byte*>(k.data);
  const auto* v_src = static_cast<const std::byte*>(v.data);
  const int64_t k_stride = io.token_elems() * DTypeSize(k.dtype);
  const int64_t v_stride = io.token_elems() * DTypeSize(v.dtype);
  int64_t written = 0;
  internal::ForEachVisibleRun(
      rules, state, table, start, seq_len,
      [&](BlockId id, int64_t at, int64_t count, int64_t position) {
        const int64_t done = position - start;
        const BlockId storage_id = pool.StorageId(id, slot);
        io.WriteRun(storage_id, false, at, k_src + done * k_stride, k.dtype,
                    count);
        io.WriteRun(storage_id, true, at, v_src + done * v_stride, v.dtype,
                    count);
        written += count;
      });
  return written;
}

}  // namespace

absl::Status KVCache::Update(SeqId seq, int layer, TokenSpan k, TokenSpan v,
                             int64_t seq_len) {
  Impl& impl = *impl_;
  auto it = impl.sequences.find(seq);
  if (ABSL_PREDICT_FALSE(it == impl.sequences.end() || layer < 0 ||
                         layer >= impl.config.num_layers)) {
    return impl.FindTable("Update", seq, layer).status();
  }
  Sequence& sequence = it->second;
  const size_t group = impl.group_of(layer);
  BlockTable& table = sequence.tables[group];
  const LayerRules& layer_rules = impl.rules[static_cast<size_t>(layer)];
  if (absl::Status s = CheckSpans(impl.config.dtype, impl.io->token_elems(),
                                  seq, layer, k, v, seq_len);
      ABSL_PREDICT_FALSE(!s.ok())) {
    return s;
  }
  if (ABSL_PREDICT_FALSE(!impl.pool->storage().host_io())) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "Update(seq %d, layer %d, seq_len %d): the storage has no host "
        "writes; an engine that writes with its own kernels calls Reserve",
        seq, layer, seq_len));
  }
  const int64_t start = seq_len - k.tokens;
  if (absl::Status s =
          impl.CheckPositions("Update", seq, layer, layer_rules,
                              impl.StateOf(sequence, layer), start, seq_len);
      ABSL_PREDICT_FALSE(!s.ok())) {
    return s;
  }
  // A layer of a group of several moves with the union of its group's
  // layers (layer_groups.cc); a table of its own as before.
  const bool in_group = impl.group_layers(group) > 1;
  const int slot = impl.groups.slot_of[static_cast<size_t>(layer)];
  int64_t at = 0;
  const BlockId block =
      ABSL_PREDICT_FALSE(in_group)
          ? impl.GroupAppendBlock(sequence, layer, start, seq_len, &at)
          : impl.InPlaceAppendBlock(layer_rules, table, start, seq_len, &at);
  int64_t written = k.tokens;
  if (block != internal::kNoBlock) {  // the fast path: one run, one block
    if (ABSL_PREDICT_FALSE(in_group)) {
      impl.GroupAppendInPlace(sequence, layer, start, seq_len);
    } else {
      impl.AppendInPlace(table, start, seq_len);
    }
    const BlockId storage_id = impl.pool->StorageId(block, slot);
    impl.io->WriteRun(storage_id, false, at,
                      static_cast<const std::byte*>(k.data), k.dtype, k.tokens);
    impl.io->WriteRun(storage_id, true, at,
                      static_cast<const std::byte*>(v.data), v.dtype, v.tokens);
  } else {
    if (absl::Status s =
            in_group ? impl.PlaceLayerOfGroup("Update", seq, layer, sequence,
                                              start, seq_len)
                     : impl.PlaceGeneral("Update", seq, layer, layer_rules,
                                         table, start, seq_len);
        !s.ok()) {
      return s;
    }
    written = WriteTokens(*impl.io, layer_rules, impl.StateOf(sequence, layer),
                          table, *impl.pool, slot, k, v, start, seq_len);
  }
  table.reserved_from = BlockTable::kNothingReserved;  // all written now
  impl.counters.bytes_written += 2 * written * impl.io->token_bytes();
  impl.Settle(sequence, group, start, seq_len);
  return absl::OkStatus();
}

absl::Status KVCache::Truncate(SeqId seq, int64_t seq_len) {
  Impl& impl = *impl_;
  auto it = impl.sequences.find(seq);
  if (it == impl.sequences.end()) {
    return absl::NotFoundError(absl::StrFormat(
        "Truncate(seq %d, seq_len %d): no such sequence", seq, seq_len));
  }
  if (seq_len < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Truncate(seq %d, seq_len %d): seq_len must be >= 0", seq, seq_len));
  }
  Sequence& sequence = it->second;
  for (int layer = 0; layer < impl.config.num_layers; ++layer) {
    const internal::LayerState& state = impl.StateOf(sequence, layer);
    if (state.length <= seq_len) continue;
    if (absl::Status s = internal::CheckEvicted(
            "Truncate", seq, layer, impl.rules[static_cast<size_t>(layer)],
            state, seq_len, seq_len);
        !s.ok()) {
      return s;
    }
  }
  if (static_cast<int64_t>(sequence.token_ids.size()) > seq_len) {
    sequence.token_ids.resize(static_cast<size_t>(seq_len));
    sequence.block_hashes.resize(
        static_cast<size_t>(seq_len / impl.block_tokens()));
    sequence.tier_offered =
        std::min(sequence.tier_offered,
                 static_cast<int64_t>(sequence.block_hashes.size()));
  }
  for (size_t group = 0; group < sequence.tables.size(); ++group) {
    BlockTable& table = sequence.tables[group];
    table.published = std::min(table.published, seq_len / impl.block_tokens());
    if (table.length <= seq_len) continue;  // the longest of its layers
    if (table.split) {
      impl.TruncateSplit(sequence, group, seq_len);
      continue;
    }
    const LayerRules& group_layer_rules = impl.group_rules[group];
    const Plan plan = internal::MakePlan(group_layer_rules, table, *impl.pool,
                                         seq_len, seq_len);
    KVPAGE_DCHECK(plan.fresh == 0);
    impl.ApplyPlan(group_layer_rules, table, plan, {}, nullptr,
                   impl.group_layers(group));
  }
  return absl::OkStatus();
}

absl::Status KVCache::CompressOldEntries(SeqId seq, int layer,
                                         double keep_recent_fraction) {
  Impl& impl = *impl_;
  absl::StatusOr<BlockTable*> found =
      impl.FindTable("CompressOldEntries", seq, layer);
  if (!found.ok()) return found.status();
  if (impl.quant == nullptr) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "CompressOldEntries(seq %d, layer %d): compression is not enabled in "
        "the cache's config",
        seq, layer));
  }
  if (!(keep_recent_fraction >= 0 && keep_recent_fraction <= 1)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CompressOldEntries(seq %d, layer %d): keep_recent_fraction %g is "
        "outside [0, 1]",
        seq, layer, keep_recent_fraction));
  }
  BlockTable& table = **found;  // the layer's, or its group's
  if (table.split) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "CompressOldEntries(seq %d, layer %d): the layers of its group "
        "differ in length (a step part-way); a group's blocks are "
        "compressed once its layers agree",
        seq, layer));
  }
  const LayerRules& layer_rules = impl.group_rules[impl.group_of(layer)];
  // The oldest floor((1 - f) * visible) visible tokens end before `cutoff`.
  const int64_t visible =
      internal::VisibleTokens(layer_rules, table.length, table.window_start);
  const auto eligible = static_cast<int64_t>(
      std::floor((1.0 - keep_recent_fraction) * static_cast<double>(visible)));
  int64_t cutoff = table.length;
  if (eligible < visible) {
    // Visible token number `eligible`, oldest first: sinks, then the window.
    const int64_t sinks = std::min(layer_rules.sinks, table.length);
    cutoff = eligible < sinks
                 ? eligible
                 : std::max(table.window_start, layer_rules.sinks) +
                       (eligible - sinks);
  }
  impl.CompressBefore(layer_rules, table, cutoff);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> KVCache::Length(SeqId seq, int layer) const {
  const Impl& impl = *impl_;
  auto it = impl.sequences.find(seq);
  if (it == impl.sequences.end() || layer < 0 ||
      layer >= impl.config.num_layers) {
    return impl.FindTable("Length", seq, layer).status();
  }
  return impl.StateOf(it->second, layer).length;
}

std::vector<SeqId> KVCache::Sequences() const {
  std::vector<SeqId> ids;
  ids.reserve(impl_->sequences.size());
  for (const auto& [id, sequence] : impl_->sequences) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

}  // namespace kvpage
