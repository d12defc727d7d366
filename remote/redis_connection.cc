#include "remote/redis_connection.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <sys/time.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvpage::remote {

namespace {

timeval TimevalOf(absl::Duration d) {
  if (d < absl::ZeroDuration()) d = absl::ZeroDuration();
  return absl::ToTimeval(d);
}

std::string Where(const RedisEndpoint& e) {
  return absl::StrFormat("Redis %s:%d", e.host, e.port);
}

// Copies a hiredis reply, counting its bytes against `budget`; false when
// it would exceed it.
bool Convert(const redisReply& in, RedisReply& out, int64_t& budget) {
  budget -= static_cast<int64_t>(sizeof(RedisReply));
  switch (in.type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
      out.type = in.type == REDIS_REPLY_STRING   ? RedisReply::kString
                 : in.type == REDIS_REPLY_STATUS ? RedisReply::kStatus
                                                 : RedisReply::kError;
      budget -= static_cast<int64_t>(in.len);
      if (budget < 0) return false;
      out.str.assign(in.str, in.len);
      return true;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::kInteger;
      out.integer = in.integer;
      return budget >= 0;
    case REDIS_REPLY_NIL:
      out.type = RedisReply::kNil;
      return budget >= 0;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReply::kArray;
      budget -= static_cast<int64_t>(in.elements * sizeof(RedisReply));
      if (budget < 0) return false;
      out.elements.resize(in.elements);
      for (size_t i = 0; i < in.elements; ++i) {
        if (in.element[i] == nullptr ||
            !Convert(*in.element[i], out.elements[i], budget)) {
          return false;
        }
      }
      return true;
    default:
      return false;
  }
}

// hiredis writes with write(2): to a peer that closed its end the kernel
// answers EPIPE and raises SIGPIPE, whose default action ends the process.
// A library must not: SIGPIPE is blocked in this thread while a pipeline
// runs, and one it raised is taken back before the mask is restored (a
// SIGPIPE the thread had pending before stays pending).
class SigpipeBlocked {
 public:
  SigpipeBlocked() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~SigpipeBlocked() {
    if (!was_pending_) {
      sigset_t pending;
      sigpending(&pending);
      if (sigismember(&pending, SIGPIPE) == 1) {
        const timespec now{0, 0};
        while (sigtimedwait(&pipe_, nullptr, &now) == -1 && errno == EINTR) {
        }
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  SigpipeBlocked(const SigpipeBlocked&) = delete;
  SigpipeBlocked& operator=(const SigpipeBlocked&) = delete;

 private:
  sigset_t pipe_, old_;
  bool was_pending_ = false;
};

}  // namespace

RedisConnection::RedisConnection(redisContext* context, RedisEndpoint endpoint,
                                 RedisOptions options)
    : context_(context), endpoint_(std::move(endpoint)), options_(options) {}

RedisConnection::~RedisConnection() {
  if (context_ != nullptr) redisFree(context_);
}

absl::StatusOr<std::unique_ptr<RedisConnection>> RedisConnection::Open(
    const RedisEndpoint& endpoint, const RedisTarget& target,
    const RedisOptions& options) {
  redisContext* c = redisConnectWithTimeout(
      endpoint.host.c_str(), endpoint.port, TimevalOf(options.connect_timeout));
  if (c == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat(Where(endpoint), ": cannot allocate a connection"));
  }
  if (c->err != 0) {
    const std::string why = c->errstr;
    redisFree(c);
    return absl::UnavailableError(
        absl::StrCat(Where(endpoint), ": cannot connect: ", why));
  }
  if (redisSetTimeout(c, TimevalOf(options.io_timeout)) != REDIS_OK) {
    const std::string why = c->errstr;
    redisFree(c);
    return absl::UnavailableError(
        absl::StrCat(Where(endpoint), ": cannot set its timeout: ", why));
  }
  std::unique_ptr<RedisConnection> connection(
      new RedisConnection(c, endpoint, options));
  std::vector<RedisCommand> hello;
  if (!target.password.empty()) {
    hello.push_back(target.user.empty()
                        ? RedisCommand{"AUTH", target.password}
                        : RedisCommand{"AUTH", target.user, target.password});
  }
  if (target.db != 0) {
    hello.push_back({"SELECT", absl::StrCat(target.db)});
  }
  if (hello.empty()) return connection;
  std::vector<RedisReply> replies;
  if (absl::Status s = connection->Pipeline(hello, replies); !s.ok()) return s;
  for (size_t i = 0; i < replies.size(); ++i) {
    if (replies[i].type != RedisReply::kError) continue;
    const bool auth = hello[i][0] == "AUTH";
    return auth ? absl::UnauthenticatedError(absl::StrCat(
                      Where(endpoint), ": AUTH refused: ", replies[i].str))
                : absl::InvalidArgumentError(absl::StrCat(
                      Where(endpoint), ": SELECT refused: ", replies[i].str));
  }
  return connection;
}

absl::Status RedisConnection::Fail(absl::StatusCode code,
                                   std::string_view what) {
  broken_ = true;
  return absl::Status(code, absl::StrFormat("%s: %s", Where(endpoint_), what));
}

absl::Status RedisConnection::Pipeline(absl::Span<const RedisCommand> commands,
                                       std::vector<RedisReply>& replies) {
  replies.clear();
  if (broken_) {
    return absl::UnavailableError(
        absl::StrCat(Where(endpoint_), ": the connection was dropped"));
  }
  std::vector<const char*> argv;
  std::vector<size_t> argvlen;
  for (const RedisCommand& command : commands) {
    argv.clear();
    argvlen.clear();
    for (const std::string& word : command) {
      argv.push_back(word.data());
      argvlen.push_back(word.size());
    }
    if (redisAppendCommandArgv(context_, static_cast<int>(argv.size()),
                               argv.data(), argvlen.data()) != REDIS_OK) {
      return Fail(absl::StatusCode::kResourceExhausted,
                  "cannot buffer a command");
    }
  }
  int64_t budget = options_.max_reply_bytes;
  const SigpipeBlocked no_sigpipe;
  for (size_t i = 0; i < commands.size(); ++i) {
    void* raw = nullptr;
    if (redisGetReply(context_, &raw) != REDIS_OK || raw == nullptr) {
      const int err = context_->err;
      const std::string why = context_->errstr;
      // hiredis reports a read that timed out as an I/O error of EAGAIN.
      if (err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK ||
                                  why == std::strerror(EAGAIN))) {
        return Fail(absl::StatusCode::kDeadlineExceeded,
                    absl::StrFormat("no reply within %s",
                                    absl::FormatDuration(options_.io_timeout)));
      }
      if (err == REDIS_ERR_PROTOCOL) {
        return Fail(absl::StatusCode::kDataLoss,
                    absl::StrCat("a reply that does not parse: ", why));
      }
      return Fail(absl::StatusCode::kUnavailable,
                  absl::StrCat("the connection failed: ", why));
    }
    auto* reply = static_cast<redisReply*>(raw);
    replies.emplace_back();
    const bool ok = Convert(*reply, replies.back(), budget);
    freeReplyObject(reply);
    if (!ok) {
      replies.pop_back();
      return Fail(
          absl::StatusCode::kDataLoss,
          absl::StrFormat("replies beyond %d bytes", options_.max_reply_bytes));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<RedisReply> RedisConnection::Command(
    const RedisCommand& command) {
  std::vector<RedisReply> replies;
  if (absl::Status s = Pipeline({&command, 1}, replies); !s.ok()) return s;
  return std::move(replies[0]);
}

}  // namespace kvpage::remote
