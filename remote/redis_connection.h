// remote/redis_connection.h — one connection to one Redis server, through
// hiredis (Debian's libhiredis-dev): connect with a timeout, AUTH and
// SELECT, and pipelines of commands whose replies come back as owned
// values. A server that is down, slow, or answers garbage gives a Status;
// nothing here crashes or blocks past its timeout.
//
// Errors: Unavailable (cannot connect, the connection dropped: reconnect),
// DeadlineExceeded (a read or write timed out: the connection is dropped),
// Unauthenticated (AUTH refused), DataLoss (the reply does not parse, or is
// larger than max_reply_bytes: dropped). A server's error reply to one
// command is that command's RedisReply of type kError, not a failure of
// the pipeline.
//
// Thread safety: thread-compatible (one connection, one user at a time).
#ifndef KVPAGE_REMOTE_REDIS_CONNECTION_H_
#define KVPAGE_REMOTE_REDIS_CONNECTION_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "remote/redis_url.h"

struct redisContext;

namespace kvpage::remote {

struct RedisReply {
  enum Type { kString, kNil, kInteger, kStatus, kError, kArray };
  Type type = kNil;
  std::string str;  // kString, kStatus, kError
  int64_t integer = 0;
  std::vector<RedisReply> elements;  // kArray
};

// One command: its words, binary-safe.
using RedisCommand = std::vector<std::string>;

struct RedisOptions {
  absl::Duration connect_timeout = absl::Milliseconds(500);
  absl::Duration io_timeout = absl::Milliseconds(500);  // each read, write
  // The most bytes the replies to one Send (one pipeline) may take, counted
  // as they are parsed: a server that sends more (or announces an array
  // that large) is treated as hostile (DataLoss).
  int64_t max_reply_bytes = int64_t{1} << 30;
};

// What the replies to the last Send may still take (redis_connection.cc).
struct ReplyBudget {
  int64_t left = 0;
  bool exceeded = false;
};

class RedisConnection {
 public:
  // Connects to `endpoint`, then AUTH (when `target` has a password) and
  // SELECT (a db other than 0).
  // With a `deadline`, AUTH and SELECT's replies are read by then.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<RedisConnection>> Open(
      const RedisEndpoint& endpoint, const RedisTarget& target,
      const RedisOptions& options,
      absl::Time deadline = absl::InfiniteFuture());
  ~RedisConnection();
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  // Sends `commands` in one write and reads one reply each, in order. On a
  // failure the connection is broken (broken() is true) and the replies
  // read so far are in `replies`.
  [[nodiscard]] absl::Status Pipeline(absl::Span<const RedisCommand> commands,
                                      std::vector<RedisReply>& replies);
  // Pipeline in two halves, so that one client keeps several servers busy
  // at once: Send writes `commands` out, Receive then reads `count` replies
  // (appended to `replies`). Failures as for Pipeline. With a `deadline`,
  // Receive waits for no read past it and reads no reply after it: what is
  // left unread is DeadlineExceeded (the connection is dropped), the
  // replies read stand.
  [[nodiscard]] absl::Status Send(
      absl::Span<const RedisCommand* const> commands);
  [[nodiscard]] absl::Status Receive(
      size_t count, std::vector<RedisReply>& replies,
      absl::Time deadline = absl::InfiniteFuture());
  // One command.
  [[nodiscard]] absl::StatusOr<RedisReply> Command(const RedisCommand& command);

  bool broken() const { return broken_; }
  const RedisEndpoint& endpoint() const { return endpoint_; }

 private:
  RedisConnection(redisContext* context, RedisEndpoint endpoint,
                  RedisOptions options);
  absl::Status Fail(absl::StatusCode code, std::string_view what);
  // The Status of a failed hiredis call (a timeout, a protocol error, a
  // dropped connection); breaks the connection.
  absl::Status FailedIo();
  // Sets the socket's timeout (reads and writes) to `want` unless it is.
  absl::Status SetReadTimeout(absl::Duration want);

  redisContext* context_;
  RedisEndpoint endpoint_;
  RedisOptions options_;
  // The socket's timeout now: io_timeout, or less while Receive runs to a
  // deadline.
  absl::Duration read_timeout_;
  ReplyBudget budget_;  // the reader's privdata
  bool broken_ = false;
};

}  // namespace kvpage::remote

#endif  // KVPAGE_REMOTE_REDIS_CONNECTION_H_
