// remote/redis_store.h — keys and values in one Redis server or a Redis
// Cluster, many at a time: what the remote tier reads and writes through.
//
// A cluster's keys live in 16384 hash slots (CRC16 of the key, or of its
// {hash tag}, modulo 16384), each served by one node: the store learns the
// slots from CLUSTER SLOTS at Connect, sends each node its keys in one
// pipeline (one round trip per node a call touches), follows a MOVED
// redirection once (and learns the slots again) and an ASK once. A node
// that is down, slow or hostile fails its keys only; the others' succeed.
// Connections that broke are opened again at the next call that needs them;
// one the server closed while idle (a restart, its `timeout`) fails the
// call that finds it before any reply, and that node's commands are sent
// once more on a new connection (GET and SET may be repeated).
//
// Thread safety: thread-compatible.
#ifndef KVPAGE_REMOTE_REDIS_STORE_H_
#define KVPAGE_REMOTE_REDIS_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "remote/redis_connection.h"
#include "remote/redis_url.h"

namespace kvpage::remote {

// The hash slot of `key` (Redis Cluster's: CRC16-XMODEM of the key, or of
// the text between its first '{' and the next '}' when that is not empty,
// modulo 16384).
[[nodiscard]] int KeySlot(std::string_view key);

class RedisStore {
 public:
  // Connects to the target's server, or to a cluster through its seeds (the
  // first seed that answers CLUSTER SLOTS). Errors of RedisConnection::Open
  // (the last seed's), or FailedPrecondition for a redis-cluster:// URL
  // whose server is not in cluster mode.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<RedisStore>> Connect(
      const RedisTarget& target, const RedisOptions& options);

  // GET of every key: per key its value, nullopt when the server has none,
  // or the error of its node. With a `deadline`, the keys whose replies
  // were not read by then are DeadlineExceeded (their nodes' connections
  // are dropped and opened again by the next call).
  std::vector<absl::StatusOr<std::optional<std::string>>> Get(
      absl::Span<const std::string> keys,
      absl::Time deadline = absl::InfiniteFuture());

  // SET of every (key, value): per pair OK or the error of its node. Takes
  // `items` by value: the values move into the commands (std::move them in
  // to spare a copy).
  std::vector<absl::Status> Set(
      std::vector<std::pair<std::string, std::string>> items);

  // Nodes known (one without a cluster), and how often the slots were
  // learned (Connect counts one).
  int nodes() const { return static_cast<int>(nodes_.size()); }
  int64_t slot_refreshes() const { return slot_refreshes_; }

 private:
  struct Node {
    RedisEndpoint endpoint;
    std::unique_ptr<RedisConnection> connection;  // null: not open
  };
  RedisStore(RedisTarget target, RedisOptions options)
      : target_(std::move(target)), options_(options) {}

  // CLUSTER SLOTS from the nodes known, in turn, until one answers; by
  // `deadline` when one is given.
  absl::Status LearnSlots(absl::Time deadline = absl::InfiniteFuture());
  int NodeOf(const RedisEndpoint& endpoint);
  // The node's connection, opened when it has none or it broke; with a
  // `deadline`, connecting waits no longer than what is left of it.
  absl::StatusOr<RedisConnection*> ConnectionOf(
      int node, absl::Time deadline = absl::InfiniteFuture());
  // A node's share of a call: its commands, written out by Start (opening
  // the node's connection when it has none or it broke), then their
  // replies read one at a time by NextReply, which sends the commands once
  // more, on a new connection, when one kept from an earlier call fails
  // Unavailable before its first reply. After a failure every later reply
  // of the node is that failure.
  struct Outgoing {
    std::vector<const RedisCommand*> commands;
    absl::Status sent;
    bool kept = false;  // the connection was opened by an earlier call
    size_t read = 0;    // replies read
  };
  void Start(int node, Outgoing& out, absl::Time deadline);
  absl::StatusOr<RedisReply> NextReply(int node, Outgoing& out,
                                       absl::Time deadline);
  // One command to `node`: Start, then NextReply.
  absl::Status Send(int node, const RedisCommand& command,
                    std::vector<RedisReply>& replies,
                    absl::Time deadline = absl::InfiniteFuture());
  // One command per key, each on its node; `replies[i]` the reply to
  // commands[i] or the error of its node. Follows MOVED and ASK once.
  void Run(absl::Span<const std::string> keys,
           absl::Span<const RedisCommand> commands,
           std::vector<absl::StatusOr<RedisReply>>& replies,
           absl::Time deadline = absl::InfiniteFuture());

  RedisTarget target_;
  RedisOptions options_;
  std::vector<Node> nodes_;
  std::vector<int> slot_node_;  // cluster: per slot, its node; else empty
  int64_t slot_refreshes_ = 0;
};

}  // namespace kvpage::remote

#endif  // KVPAGE_REMOTE_REDIS_STORE_H_
