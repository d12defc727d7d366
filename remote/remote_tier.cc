#include "kvpage/remote_tier.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "remote/block_codec.h"
#include "remote/redis_store.h"
#include "remote/redis_url.h"

namespace kvpage {

using remote::BlockHeader;
using remote::RedisStore;

namespace {

// A block waiting to be written: its tables' values, the bytes copied
// after room for the header (remote/block_codec.h) that the writer fills
// in, and the fingerprints of the cache that stored it (the tier may be
// attached to another by the time it is written).
struct Pending {
  uint64_t hash = 0;
  std::vector<std::string> tables;
  std::vector<uint64_t> fingerprints;  // per table
  bool evicted = false;
};

}  // namespace

struct RemoteTier::State {
  RemoteTierOptions options;
  std::unique_ptr<RedisStore> writer_store;  // the writer thread's
  std::unique_ptr<RedisStore> fetch_store;   // Fetch's (the cache's thread)
  // Set by Attach, read by Store and Fetch (the cache's thread) and by the
  // writer for the blocks queued after it.
  std::vector<uint64_t> fingerprints;  // per table
  std::vector<int64_t> table_bytes;

  mutable std::mutex mu;
  std::condition_variable wake;  // work queued, or stop
  std::condition_variable idle;  // the queue drained
  std::deque<Pending> queue;
  bool writing = false;
  bool stop = false;
  RemoteTierStats stats;
  std::vector<double> latencies_us;  // a ring of the last 1024
  size_t next_latency = 0;
  std::thread writer;

  void WriterLoop();
};

void RemoteTier::State::WriterLoop() {
  std::vector<Pending> batch;
  std::vector<std::pair<std::string, std::string>> items;
  std::vector<int64_t> sizes;  // of items' values
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu);
      wake.wait(lock, [&] { return stop || !queue.empty(); });
      if (queue.empty()) return;  // stopped, and drained
      batch.clear();
      while (!queue.empty() &&
             static_cast<int64_t>(batch.size()) < options.write_batch) {
        batch.push_back(std::move(queue.front()));
        queue.pop_front();
      }
      writing = true;
    }
    items.clear();
    sizes.clear();
    for (Pending& p : batch) {
      const std::vector<uint64_t>& fps = p.fingerprints;
      for (size_t t = 0; t < p.tables.size(); ++t) {
        remote::EncodeBlockInPlace({.fingerprint = fps[t],
                                    .chain_hash = p.hash,
                                    .table = static_cast<uint32_t>(t)},
                                   p.tables[t]);
        sizes.push_back(static_cast<int64_t>(p.tables[t].size()));
        items.emplace_back(
            remote::BlockKey(fps[t], p.hash, static_cast<int>(t)),
            std::move(p.tables[t]));
      }
    }
    const std::vector<absl::Status> results =
        writer_store->Set(std::move(items));
    std::unique_lock<std::mutex> lock(mu);
    size_t next = 0;
    for (const Pending& p : batch) {
      bool ok = true;
      for (size_t t = 0; t < p.tables.size(); ++t) {
        if (results[next].ok()) {
          stats.bytes_written += sizes[next];
        } else {
          ok = false;
        }
        ++next;
      }
      if (!ok) {
        ++stats.write_errors;
      } else if (p.evicted) {
        ++stats.blocks_written_back;
      } else {
        ++stats.blocks_written_through;
      }
    }
    writing = false;
    idle.notify_all();
  }
}

RemoteTier::RemoteTier(std::unique_ptr<State> state)
    : state_(std::move(state)) {
  state_->writer = std::thread([s = state_.get()] { s->WriterLoop(); });
}

RemoteTier::~RemoteTier() {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->stop = true;
  }
  state_->wake.notify_all();
  state_->writer.join();
}

absl::StatusOr<std::unique_ptr<RemoteTier>> RemoteTier::Connect(
    const RemoteTierOptions& options) {
  if (options.queue_blocks < 1 || options.write_batch < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "RemoteTier: queue_blocks %d and write_batch %d must be >= 1",
        options.queue_blocks, options.write_batch));
  }
  absl::StatusOr<remote::RedisTarget> target =
      remote::ParseRedisUrl(options.url);
  if (!target.ok()) return target.status();
  auto state = std::make_unique<State>();
  state->options = options;
  absl::StatusOr<std::unique_ptr<RedisStore>> writer =
      RedisStore::Connect(*target, {.connect_timeout = options.connect_timeout,
                                    .io_timeout = options.write_timeout});
  if (!writer.ok()) return writer.status();
  absl::StatusOr<std::unique_ptr<RedisStore>> fetcher =
      RedisStore::Connect(*target, {.connect_timeout = options.connect_timeout,
                                    .io_timeout = options.fetch_timeout});
  if (!fetcher.ok()) return fetcher.status();
  state->writer_store = *std::move(writer);
  state->fetch_store = *std::move(fetcher);
  return std::unique_ptr<RemoteTier>(new RemoteTier(std::move(state)));
}

absl::Status RemoteTier::Attach(const TierShape& shape) {
  State& s = *state_;
  std::vector<uint64_t> fps;
  for (const std::vector<int>& layers : shape.table_layers) {
    fps.push_back(
        remote::BlockFingerprint(shape.config, s.options.model_id, layers));
  }
  s.fingerprints = std::move(fps);
  s.table_bytes = shape.table_bytes;
  return absl::OkStatus();
}

bool RemoteTier::Store(uint64_t hash,
                       absl::Span<const absl::Span<const std::byte>> tables,
                       bool evicted) {
  State& s = *state_;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (static_cast<int64_t>(s.queue.size()) >= s.options.queue_blocks) {
      ++s.stats.queue_drops;
      return false;
    }
  }
  if (tables.size() != s.fingerprints.size()) return false;  // not attached
  Pending p{.hash = hash, .fingerprints = s.fingerprints, .evicted = evicted};
  for (const auto& t : tables) {
    std::string& value = p.tables.emplace_back();
    value.reserve(static_cast<size_t>(remote::kBlockHeaderBytes) + t.size());
    value.append(static_cast<size_t>(remote::kBlockHeaderBytes), '\0');
    value.append(reinterpret_cast<const char*>(t.data()), t.size());
  }
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.queue.push_back(std::move(p));
  }
  s.wake.notify_one();
  return true;
}

int64_t RemoteTier::Fetch(absl::Span<const uint64_t> hashes,
                          std::vector<std::vector<std::string>>& blocks) {
  State& s = *state_;
  const size_t tables = s.fingerprints.size();
  if (tables == 0 || hashes.empty()) return 0;
  std::vector<std::string> keys;
  keys.reserve(hashes.size() * tables);
  for (const uint64_t hash : hashes) {
    for (size_t t = 0; t < tables; ++t) {
      keys.push_back(
          remote::BlockKey(s.fingerprints[t], hash, static_cast<int>(t)));
    }
  }
  const auto start = std::chrono::steady_clock::now();
  std::vector<absl::StatusOr<std::optional<std::string>>> got =
      s.fetch_store->Get(keys, absl::Now() + s.options.fetch_timeout);
  const double us = std::chrono::duration<double, std::micro>(
                        std::chrono::steady_clock::now() - start)
                        .count();
  int64_t found = 0, bytes = 0;
  enum { kAll, kMiss, kError, kCorrupt, kForeign } stopped = kAll;
  for (size_t i = 0; i < hashes.size() && stopped == kAll; ++i) {
    std::vector<std::string> block;
    int64_t block_bytes = 0;
    for (size_t t = 0; t < tables && stopped == kAll; ++t) {
      absl::StatusOr<std::optional<std::string>>& r = got[i * tables + t];
      if (!r.ok()) {
        stopped = kError;
      } else if (!r->has_value()) {
        stopped = kMiss;
      } else {
        absl::StatusOr<remote::DecodedBlock> d =
            remote::DecodeBlock(**r, {.fingerprint = s.fingerprints[t],
                                      .chain_hash = hashes[i],
                                      .table = static_cast<uint32_t>(t)});
        if (!d.ok()) {
          stopped = d.status().code() == absl::StatusCode::kFailedPrecondition
                        ? kForeign
                        : kCorrupt;
        } else if (d->format != remote::RemoteFormat::kHot ||
                   static_cast<int64_t>(d->payload.size()) !=
                       s.table_bytes[t]) {
          stopped = kForeign;
        } else {
          // The payload moves to the front of its own buffer: no allocation.
          std::string& value = **r;
          block_bytes += static_cast<int64_t>(value.size());
          const auto offset =
              static_cast<size_t>(d->payload.data() - value.data());
          const size_t size = d->payload.size();
          value.erase(0, offset);
          value.resize(size);
          block.push_back(std::move(value));
        }
      }
    }
    if (stopped == kAll) {  // handed over: counted
      blocks.push_back(std::move(block));
      bytes += block_bytes;
      ++found;
    }
  }
  std::lock_guard<std::mutex> lock(s.mu);
  RemoteTierStats& st = s.stats;
  ++st.fetch_calls;
  st.blocks_fetched += found;
  st.bytes_fetched += bytes;
  st.fetch_misses += stopped == kMiss;
  st.fetch_errors += stopped == kError;
  st.corrupt_blocks += stopped == kCorrupt;
  st.foreign_blocks += stopped == kForeign;
  if (s.latencies_us.size() < 1024) {
    s.latencies_us.push_back(us);
  } else {
    s.latencies_us[s.next_latency] = us;
  }
  s.next_latency = (s.next_latency + 1) % 1024;
  return found;
}

void RemoteTier::Flush() {
  State& s = *state_;
  std::unique_lock<std::mutex> lock(s.mu);
  s.idle.wait(lock, [&] { return s.queue.empty() && !s.writing; });
}

RemoteTierStats RemoteTier::Stats() const {
  const State& s = *state_;
  std::lock_guard<std::mutex> lock(s.mu);
  RemoteTierStats out = s.stats;
  if (!s.latencies_us.empty()) {
    std::vector<double> sorted = s.latencies_us;
    std::sort(sorted.begin(), sorted.end());
    // Nearest rank.
    auto rank = [&](double q) {
      const auto n = static_cast<double>(sorted.size());
      const auto i = static_cast<size_t>(std::max(1.0, std::ceil(q * n)) - 1);
      return sorted[std::min(i, sorted.size() - 1)];
    };
    out.fetch_p50_us = rank(0.5);
    out.fetch_p99_us = rank(0.99);
  }
  return out;
}

}  // namespace kvpage
