// kvpage/remote_tier.h — the Redis tier: prefix-cache blocks shared between
// engine instances through a Redis server or a Redis Cluster (Debian's
// redis-server; the client is Debian's hiredis). Link kvpage::kvpage_remote.
//
// Attached to a cache (KVCache::AttachTier, kvpage/tier.h), it writes the
// blocks the prefix cache evicts (and, with write_through, every block it
// publishes) to Redis from a background thread, and serves MatchPrefix the
// blocks that follow the ones the cache holds, fetched in one pipelined
// round trip per node and batch. Any process whose cache has the same
// shape and model finds them: a block's key is its chain hash, its table
// and a fingerprint of everything that makes bytes incompatible (model_id,
// dtype, heads, head_dim, block_tokens, the table's layers, the layout);
// its value carries a checksum (remote/block_codec.h).
//
// Never on the hot path, never fatal: Store copies the block into a
// bounded queue (full: dropped and counted, never waiting); Fetch reads no
// reply after fetch_timeout; a server down, slow, restarted, full or
// hostile, a cluster node killed, a value corrupted or of another model
// are counted (RemoteTierStats) and are misses: the cache goes on with
// what it holds.
//
// Usage:
//   auto tier = kvpage::RemoteTier::Connect(
//       {.url = "redis://127.0.0.1:6379", .model_id = "llama-3-8b"});
//   if (!tier.ok()) return tier.status();
//   absl::Status s = cache->AttachTier(tier->get(), {.write_through = true});
//
// Thread safety: Attach, Store and Fetch come from the attached cache's
// thread; Stats and Flush may be called from any thread.
#ifndef KVPAGE_REMOTE_TIER_H_
#define KVPAGE_REMOTE_TIER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvpage/tier.h"

namespace kvpage {

struct RemoteTierOptions {
  std::string url;       // redis://[[user]:password@]host[:port][/db], or
                         // redis-cluster://host:port[,host:port...]
  std::string model_id;  // the engine's name for its weights
  absl::Duration connect_timeout = absl::Milliseconds(500);
  absl::Duration write_timeout = absl::Milliseconds(500);
  // The most a Fetch (one batch of MatchPrefix) waits, all nodes together,
  // connecting again to a node whose connection broke included: it reads
  // no reply after it, and the match stops at the first block not read.
  // Large blocks want more: a batch of fetch_batch blocks of every table
  // must arrive within it.
  absl::Duration fetch_timeout = absl::Milliseconds(50);
  int64_t queue_blocks = 256;  // blocks waiting to be written; more: dropped
  int64_t write_batch = 32;    // blocks a write round trip carries
};

struct RemoteTierStats {
  int64_t blocks_written_back = 0;     // evicted blocks written
  int64_t blocks_written_through = 0;  // published blocks written
  int64_t queue_drops = 0;             // blocks not queued: the queue was full
  int64_t write_errors = 0;            // blocks a write failed for
  int64_t fetch_calls = 0;
  int64_t blocks_fetched = 0;  // blocks handed to the cache (fetch hits)
  int64_t fetch_misses = 0;    // Fetch calls that stopped at a block Redis
                               // lacks
  int64_t fetch_errors = 0;    // ... at a node that failed (down, slow)
  int64_t corrupt_blocks = 0;  // ... at a value that fails its checks
  int64_t foreign_blocks = 0;  // ... at a value of another model or shape
  int64_t bytes_written = 0, bytes_fetched = 0;  // values, both ways
  double fetch_p50_us = 0, fetch_p99_us = 0;     // the last 1024 calls
};

class RemoteTier final : public BlockTier {
 public:
  // Parses the URL and connects (AUTH, SELECT; a cluster's slots), twice:
  // a connection for the writer thread and one for fetches.
  // InvalidArgument for a bad URL or option; Unavailable, Unauthenticated,
  // DeadlineExceeded or DataLoss from the server.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<RemoteTier>> Connect(
      const RemoteTierOptions& options);
  // Writes what is queued (each batch bounded by write_timeout), then
  // stops the writer.
  ~RemoteTier() override;

  [[nodiscard]] absl::Status Attach(const TierShape& shape) override;
  bool Store(uint64_t hash,
             absl::Span<const absl::Span<const std::byte>> tables,
             bool evicted) override;
  int64_t Fetch(absl::Span<const uint64_t> hashes,
                std::vector<std::vector<std::string>>& blocks) override;

  // Waits until every block queued so far is written or failed.
  void Flush();
  RemoteTierStats Stats() const;

  struct State;  // remote/remote_tier.cc

 private:
  explicit RemoteTier(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace kvpage

#endif  // KVPAGE_REMOTE_TIER_H_
