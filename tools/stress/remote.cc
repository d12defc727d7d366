#include "tools/stress/remote.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#ifdef KVPAGE_STRESS_REMOTE
#include "kvpage/remote_tier.h"
#include "remote/redis_url.h"
#endif

namespace kvpage::stress {

std::string FreshModelId(uint64_t seed) {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return absl::StrFormat(
      "kvpage-stress-seed%d-pid%d-%x", seed, static_cast<int>(getpid()),
      std::chrono::duration_cast<std::chrono::nanoseconds>(now).count());
}

#ifdef KVPAGE_STRESS_REMOTE

bool RemoteTierBuilt() { return true; }

std::string RedactedRemoteUrl(const std::string& url) {
  absl::StatusOr<remote::RedisTarget> target = remote::ParseRedisUrl(url);
  return target.ok() ? remote::RedactedUrl(*target) : std::string("?");
}

absl::Status CheckRemote(const Options& options) {
  if (options.remote.empty()) return absl::OkStatus();
  absl::StatusOr<std::unique_ptr<RemoteTier>> tier = RemoteTier::Connect(
      {.url = options.remote, .model_id = options.remote_model_id});
  if (tier.ok()) return absl::OkStatus();
  // A URL that does not parse is not shown at all: its text may hold the
  // password in a place the parser did not get to.
  const std::string shown = RedactedRemoteUrl(options.remote);
  return absl::Status(
      tier.status().code(),
      absl::StrCat("--remote", shown == "?" ? "" : absl::StrCat(" ", shown),
                   ": ", tier.status().message()));
}

namespace {

class RedisShardTier final : public ShardTier {
 public:
  RedisShardTier(const ShardTierOptions& options,
                 std::unique_ptr<RemoteTier> tier)
      : options_(options), tier_(std::move(tier)) {}

  absl::Status Attach(const TierShape& shape) override {
    return tier_->Attach(shape);
  }

  bool Store(uint64_t hash,
             absl::Span<const absl::Span<const std::byte>> tables,
             bool evicted) override {
    return tier_->Store(hash, tables, evicted);
  }

  int64_t Fetch(absl::Span<const uint64_t> hashes,
                std::vector<std::vector<std::string>>& blocks) override {
    const int64_t found = tier_->Fetch(hashes, blocks);
    if (options_.inject_corruption && !injected_ && found > 0 &&
        !blocks.empty() && !blocks[0].empty() && !blocks[0][0].empty()) {
      // The low byte of the first key element of the block's first token
      // in its first table: the pattern's bits then differ there.
      blocks[0][0][0] = static_cast<char>(blocks[0][0][0] ^ 0x01);
      injected_ = true;
      std::fprintf(stderr,
                   "kvpage-stress: shard %d: flipped a byte of block %016llx "
                   "(table 0, byte 0) fetched from the tier\n",
                   options_.shard, static_cast<unsigned long long>(hashes[0]));
    }
    return found;
  }

  void Flush() override { tier_->Flush(); }

  RemoteTierCounters Counters() const override {
    const RemoteTierStats s = tier_->Stats();
    return {.shards = 1,
            .blocks_written_back = s.blocks_written_back,
            .blocks_written_through = s.blocks_written_through,
            .queue_drops = s.queue_drops,
            .write_errors = s.write_errors,
            .fetch_calls = s.fetch_calls,
            .blocks_fetched = s.blocks_fetched,
            .fetch_misses = s.fetch_misses,
            .fetch_errors = s.fetch_errors,
            .corrupt_blocks = s.corrupt_blocks,
            .foreign_blocks = s.foreign_blocks,
            .bytes_written = s.bytes_written,
            .bytes_fetched = s.bytes_fetched,
            .fetch_p50_us_by_shard = {s.fetch_p50_us},
            .fetch_p99_us_by_shard = {s.fetch_p99_us},
            .fetch_p50_us_max = s.fetch_p50_us,
            .fetch_p99_us_max = s.fetch_p99_us,
            .blocks_corrupted_by_test = injected_ ? 1 : 0};
  }

 private:
  ShardTierOptions options_;
  std::unique_ptr<RemoteTier> tier_;
  bool injected_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ShardTier>> ShardTier::Connect(
    const ShardTierOptions& options) {
  RemoteTierOptions remote{.url = options.url, .model_id = options.model_id};
  if (options.fetch_timeout_ms > 0) {
    remote.fetch_timeout = absl::Milliseconds(options.fetch_timeout_ms);
  }
  absl::StatusOr<std::unique_ptr<RemoteTier>> tier =
      RemoteTier::Connect(remote);
  if (!tier.ok()) return tier.status();
  return std::unique_ptr<ShardTier>(
      std::make_unique<RedisShardTier>(options, *std::move(tier)));
}

#else  // !KVPAGE_STRESS_REMOTE

bool RemoteTierBuilt() { return false; }

std::string RedactedRemoteUrl(const std::string&) { return "?"; }

absl::Status CheckRemote(const Options& options) {
  if (options.remote.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      "--remote: this kvpage-stress was built without the Redis tier "
      "(configure with -DKVPAGE_BUILD_REMOTE=ON and libhiredis-dev)");
}

absl::StatusOr<std::unique_ptr<ShardTier>> ShardTier::Connect(
    const ShardTierOptions&) {
  return absl::FailedPreconditionError(
      "this kvpage-stress was built without the Redis tier");
}

#endif  // KVPAGE_STRESS_REMOTE

}  // namespace kvpage::stress
