#include "remote/redis_connection.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace kvpage::remote {

namespace {

timeval TimevalOf(absl::Duration d) {
  if (d < absl::ZeroDuration()) d = absl::ZeroDuration();
  return absl::ToTimeval(d);
}

std::string Where(const RedisEndpoint& e) {
  return absl::StrFormat("Redis %s:%d", e.host, e.port);
}

// hiredis builds RedisReply values itself, through these reader functions:
// each string is copied once, from hiredis's read buffer into its
// RedisReply (the default functions would build a redisReply to be copied
// again). A root reply is allocated; an array's elements are built in
// place in its vector, sized when the array is created. hiredis frees a
// root only (freeObject), on an error mid-reply or with its context. No
// exception crosses hiredis: an allocation that fails is a null object,
// which hiredis reports as out of memory.
RedisReply* Place(const redisReadTask* task, RedisReply::Type type) {
  RedisReply* r = nullptr;
  if (task->parent == nullptr) {
    r = new (std::nothrow) RedisReply;
    if (r == nullptr) return nullptr;
  } else {
    auto* parent = static_cast<RedisReply*>(task->parent->obj);
    r = &parent->elements[static_cast<size_t>(task->idx)];
  }
  r->type = type;
  return r;
}

void* CreateString(const redisReadTask* task, char* str, size_t len) {
  const RedisReply::Type type = task->type == REDIS_REPLY_STRING
                                    ? RedisReply::kString
                                : task->type == REDIS_REPLY_STATUS
                                    ? RedisReply::kStatus
                                    : RedisReply::kError;
  RedisReply* r = Place(task, type);
  if (r == nullptr) return nullptr;
  try {
    r->str.assign(str, len);
  } catch (const std::bad_alloc&) {
    if (task->parent == nullptr) delete r;
    return nullptr;
  }
  return r;
}

void* CreateArray(const redisReadTask* task, int elements) {
  RedisReply* r = Place(task, RedisReply::kArray);
  if (r == nullptr) return nullptr;
  try {
    r->elements.resize(static_cast<size_t>(std::max(elements, 0)));
  } catch (const std::bad_alloc&) {
    if (task->parent == nullptr) delete r;
    return nullptr;
  }
  return r;
}

void* CreateInteger(const redisReadTask* task, long long value) {  // NOLINT
  RedisReply* r = Place(task, RedisReply::kInteger);
  if (r != nullptr) r->integer = value;
  return r;
}

void* CreateNil(const redisReadTask* task) {
  return Place(task, RedisReply::kNil);
}

void FreeReply(void* reply) { delete static_cast<RedisReply*>(reply); }

redisReplyObjectFunctions kReplyFunctions = {
    .createString = CreateString,
    .createArray = CreateArray,
    .createInteger = CreateInteger,
    .createNil = CreateNil,
    .freeObject = FreeReply,
};

// The bytes a reply holds, for max_reply_bytes.
int64_t ReplyBytes(const RedisReply& r) {
  int64_t bytes =
      static_cast<int64_t>(sizeof(RedisReply)) + static_cast<int64_t>(r.str.size());
  for (const RedisReply& e : r.elements) bytes += ReplyBytes(e);
  return bytes;
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
    : context_(context),
      endpoint_(std::move(endpoint)),
      options_(options),
      read_timeout_(options.io_timeout) {
  context_->reader->fn = &kReplyFunctions;
  // Keep the read buffer between replies (hiredis frees one past 16 KiB
  // whenever it empties, and a block's reply is larger).
  context_->reader->maxbuf = 0;
}

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
    // hiredis reports a connect that timed out as an I/O error of
    // ETIMEDOUT: the host did not answer (down, or packets dropped).
    if (why == std::strerror(ETIMEDOUT)) {
      return absl::DeadlineExceededError(
          absl::StrCat(Where(endpoint), ": cannot connect within ",
                       absl::FormatDuration(options.connect_timeout)));
    }
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

absl::Status RedisConnection::FailedIo() {
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

absl::Status RedisConnection::Pipeline(absl::Span<const RedisCommand> commands,
                                       std::vector<RedisReply>& replies) {
  replies.clear();
  std::vector<const RedisCommand*> pointers;
  pointers.reserve(commands.size());
  for (const RedisCommand& command : commands) pointers.push_back(&command);
  if (absl::Status s = Send(pointers); !s.ok()) return s;
  return Receive(commands.size(), replies);
}

absl::Status RedisConnection::Send(
    absl::Span<const RedisCommand* const> commands) {
  if (broken_) {
    return absl::UnavailableError(
        absl::StrCat(Where(endpoint_), ": the connection was dropped"));
  }
  // A deadline's shorter timeout (Receive) is not for writes.
  if (read_timeout_ != options_.io_timeout) {
    if (redisSetTimeout(context_, TimevalOf(options_.io_timeout)) != REDIS_OK) {
      return FailedIo();
    }
    read_timeout_ = options_.io_timeout;
  }
  std::vector<const char*> argv;
  std::vector<size_t> argvlen;
  for (const RedisCommand* command : commands) {
    argv.clear();
    argvlen.clear();
    for (const std::string& word : *command) {
      argv.push_back(word.data());
      argvlen.push_back(word.size());
    }
    if (redisAppendCommandArgv(context_, static_cast<int>(argv.size()),
                               argv.data(), argvlen.data()) != REDIS_OK) {
      return Fail(absl::StatusCode::kResourceExhausted,
                  "cannot buffer a command");
    }
  }
  const SigpipeBlocked no_sigpipe;
  int done = 0;
  while (done == 0) {
    if (redisBufferWrite(context_, &done) != REDIS_OK) return FailedIo();
  }
  return absl::OkStatus();
}

absl::Status RedisConnection::Receive(size_t count,
                                      std::vector<RedisReply>& replies,
                                      absl::Time deadline) {
  if (broken_) {
    return absl::UnavailableError(
        absl::StrCat(Where(endpoint_), ": the connection was dropped"));
  }
  const bool bounded = deadline != absl::InfiniteFuture();
  auto late = [&](size_t read) {
    return Fail(absl::StatusCode::kDeadlineExceeded,
                absl::StrFormat("%d of %d replies read by the deadline", read,
                                count));
  };
  absl::Duration want = options_.io_timeout;
  if (bounded) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return late(0);
    want = std::min(left, want);
  }
  // A read waits no longer than what is left: the socket's timeout is set
  // again when it would allow more, or less than half of it is left (a few
  // system calls per deadline, not one per reply).
  if (want > read_timeout_ || want < read_timeout_ / 2) {
    if (redisSetTimeout(context_, TimevalOf(want)) != REDIS_OK) {
      return FailedIo();
    }
    read_timeout_ = want;
  }
  int64_t budget = options_.max_reply_bytes;
  const SigpipeBlocked no_sigpipe;
  for (size_t i = 0; i < count; ++i) {
    if (bounded && i > 0 && absl::Now() >= deadline) return late(i);
    void* raw = nullptr;
    if (redisGetReply(context_, &raw) != REDIS_OK || raw == nullptr) {
      return FailedIo();
    }
    std::unique_ptr<RedisReply> reply(static_cast<RedisReply*>(raw));
    budget -= ReplyBytes(*reply);
    if (budget >= 0) replies.push_back(std::move(*reply));
    if (budget < 0) {
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
