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

// A socket timeout: at least 1 us (a zero timeout waits forever).
timeval TimevalOf(absl::Duration d) {
  return absl::ToTimeval(std::max(d, absl::Microseconds(1)));
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
// exception crosses hiredis: an allocation that fails, or one past the
// pipeline's max_reply_bytes (ReplyBudget, the reader's privdata), is a
// null object, which hiredis reports as out of memory.
bool Charge(const redisReadTask* task, int64_t bytes) {
  auto* budget = static_cast<ReplyBudget*>(task->privdata);
  if (budget == nullptr) return true;
  budget->left -= bytes;
  if (budget->left >= 0) return true;
  budget->exceeded = true;
  return false;
}

RedisReply* Place(const redisReadTask* task, RedisReply::Type type) {
  RedisReply* r = nullptr;
  if (task->parent == nullptr) {  // an array's elements are charged with it
    if (!Charge(task, static_cast<int64_t>(sizeof(RedisReply)))) {
      return nullptr;
    }
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
  const RedisReply::Type type =
      task->type == REDIS_REPLY_STRING   ? RedisReply::kString
      : task->type == REDIS_REPLY_STATUS ? RedisReply::kStatus
                                         : RedisReply::kError;
  if (!Charge(task, static_cast<int64_t>(len))) return nullptr;
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
  const auto n = static_cast<size_t>(std::max(elements, 0));
  // Charged before anything is built: a hostile count is refused, not
  // allocated.
  if (!Charge(task, static_cast<int64_t>(n * sizeof(RedisReply)))) {
    return nullptr;
  }
  RedisReply* r = Place(task, RedisReply::kArray);
  if (r == nullptr) return nullptr;
  try {
    r->elements.resize(n);
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
  context_->reader->privdata = &budget_;
  // Keep the read buffer between replies (hiredis frees one past 16 KiB
  // whenever it empties, and a block's reply is larger).
  context_->reader->maxbuf = 0;
}

RedisConnection::~RedisConnection() {
  if (context_ != nullptr) redisFree(context_);
}

absl::StatusOr<std::unique_ptr<RedisConnection>> RedisConnection::Open(
    const RedisEndpoint& endpoint, const RedisTarget& target,
    const RedisOptions& options, absl::Time deadline) {
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
  std::vector<const RedisCommand*> pointers;
  for (const RedisCommand& command : hello) pointers.push_back(&command);
  std::vector<RedisReply> replies;
  if (absl::Status s = connection->Send(pointers); !s.ok()) return s;
  if (absl::Status s = connection->Receive(hello.size(), replies, deadline);
      !s.ok()) {
    return s;
  }
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
  if (budget_.exceeded) {  // a reader function refused (ReplyBudget)
    return Fail(
        absl::StatusCode::kDataLoss,
        absl::StrFormat("replies beyond %d bytes", options_.max_reply_bytes));
  }
  // hiredis reports a read that timed out as an I/O error of EAGAIN.
  if (err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK ||
                              why == std::strerror(EAGAIN))) {
    return Fail(absl::StatusCode::kDeadlineExceeded,
                absl::StrFormat("no reply within %s",
                                absl::FormatDuration(read_timeout_)));
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
  budget_ = {.left = options_.max_reply_bytes};
  // A deadline's shorter timeout (Receive) is not for writes.
  if (absl::Status s = SetReadTimeout(options_.io_timeout); !s.ok()) return s;
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

absl::Status RedisConnection::SetReadTimeout(absl::Duration want) {
  if (want == read_timeout_) return absl::OkStatus();
  if (redisSetTimeout(context_, TimevalOf(want)) != REDIS_OK) {
    return FailedIo();
  }
  read_timeout_ = want;
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
  if (!bounded) {
    if (absl::Status s = SetReadTimeout(options_.io_timeout); !s.ok()) {
      return s;
    }
  }
  const SigpipeBlocked no_sigpipe;
  for (size_t i = 0; i < count; ++i) {
    // A reply from what hiredis holds, else one read(2) more. With a
    // deadline, none starts after it, and each waits no longer than what
    // is left (within 1 ms: the socket's timeout is set again when it
    // would allow more than that past the deadline).
    void* raw = nullptr;
    while (true) {
      if (redisGetReplyFromReader(context_, &raw) != REDIS_OK) {
        return FailedIo();
      }
      if (raw != nullptr) break;
      if (bounded) {
        const absl::Duration left = deadline - absl::Now();
        if (left <= absl::ZeroDuration()) {
          return Fail(absl::StatusCode::kDeadlineExceeded,
                      absl::StrFormat("%d of %d replies read by the deadline",
                                      i, count));
        }
        const absl::Duration want = std::min(left, options_.io_timeout);
        if (want > read_timeout_ ||
            read_timeout_ - want > absl::Milliseconds(1)) {
          if (absl::Status s = SetReadTimeout(want); !s.ok()) return s;
        }
      }
      if (redisBufferRead(context_) != REDIS_OK) return FailedIo();
    }
    std::unique_ptr<RedisReply> reply(static_cast<RedisReply*>(raw));
    replies.push_back(std::move(*reply));
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
