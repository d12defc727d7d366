// The Redis client against a real redis-server (started here on a loopback
// port) and against fake servers that misbehave: every failure is a Status
// within the timeout, never a crash or a hang.
#include "remote/redis_connection.h"

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "remote/redis_test_server.h"

namespace kvpage::remote {
namespace {

using testing::FakeServer;
using ::testing::HasSubstr;
using testing::RedisTestServer;

RedisOptions Fast() {
  return {.connect_timeout = absl::Milliseconds(300),
          .io_timeout = absl::Milliseconds(300)};
}

TEST(RedisConnection, BinaryValuesAndPipelines) {
  auto server = RedisTestServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  auto c = RedisConnection::Open((*server)->endpoint(), {}, Fast());
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string binary("a\0b\r\n$3\r\n\xff", 10);
  absl::StatusOr<RedisReply> set = (*c)->Command({"SET", "k", binary});
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->type, RedisReply::kStatus);
  EXPECT_EQ(set->str, "OK");
  absl::StatusOr<RedisReply> get = (*c)->Command({"GET", "k"});
  ASSERT_TRUE(get.ok());
  EXPECT_EQ(get->type, RedisReply::kString);
  EXPECT_EQ(get->str, binary);
  EXPECT_EQ((*c)->Command({"GET", "missing"})->type, RedisReply::kNil);
  // One round trip for many commands; a server's error reply is that
  // command's reply, the others go on.
  std::vector<RedisCommand> commands;
  for (int i = 0; i < 200; ++i) {
    commands.push_back({"SET", "key" + std::to_string(i), std::string(i, 'x')});
  }
  commands.push_back({"NOSUCHCOMMAND"});
  commands.push_back({"MGET", "key0", "key5", "nope"});
  std::vector<RedisReply> replies;
  ASSERT_TRUE((*c)->Pipeline(commands, replies).ok());
  ASSERT_EQ(replies.size(), commands.size());
  EXPECT_EQ(replies[199].str, "OK");
  EXPECT_EQ(replies[200].type, RedisReply::kError);
  const RedisReply& mget = replies[201];
  ASSERT_EQ(mget.type, RedisReply::kArray);
  ASSERT_EQ(mget.elements.size(), 3u);
  EXPECT_EQ(mget.elements[1].str, "xxxxx");
  EXPECT_EQ(mget.elements[2].type, RedisReply::kNil);
  EXPECT_FALSE((*c)->broken());
}

TEST(RedisConnection, PasswordsAndDatabases) {
  auto server = RedisTestServer::Start({"--requirepass", "s3cret"});
  ASSERT_TRUE(server.ok()) << server.status();
  RedisTarget target{.password = "wrong"};
  auto refused = RedisConnection::Open((*server)->endpoint(), target, Fast());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(refused.status().message(), ::testing::Not(HasSubstr("wrong")));
  // Without one, the server refuses each command (an error reply).
  auto anonymous = RedisConnection::Open((*server)->endpoint(), {}, Fast());
  ASSERT_TRUE(anonymous.ok());
  EXPECT_EQ((*anonymous)->Command({"GET", "k"})->type, RedisReply::kError);
  target.password = "s3cret";
  target.db = 2;
  auto c = RedisConnection::Open((*server)->endpoint(), target, Fast());
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE((*c)->Command({"SET", "k", "in db 2"}).ok());
  target.db = 0;
  auto db0 = RedisConnection::Open((*server)->endpoint(), target, Fast());
  ASSERT_TRUE(db0.ok());
  EXPECT_EQ((*db0)->Command({"GET", "k"})->type, RedisReply::kNil);
}

TEST(RedisConnection, NobodyListening) {
  const int port = testing::FreeLoopbackPort();
  auto c = RedisConnection::Open({"127.0.0.1", port}, {}, Fast());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(c.status().message(), HasSubstr("cannot connect"));
}

TEST(RedisConnection, AServerThatDiesMidRun) {
  auto server = RedisTestServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  auto c = RedisConnection::Open((*server)->endpoint(), {}, Fast());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->Command({"SET", "k", "v"}).ok());
  (*server)->Stop(SIGKILL);
  absl::StatusOr<RedisReply> r = (*c)->Command({"GET", "k"});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_TRUE((*c)->broken());
  EXPECT_EQ((*c)->Command({"PING"}).status().code(),
            absl::StatusCode::kUnavailable);
}

// A peer that closes while a large pipeline is being written: the writes
// fail with EPIPE, and the SIGPIPE the kernel raises does not end the
// process (its default action would).
TEST(RedisConnection, APeerThatClosesRaisesNoSignal) {
  FakeServer closing("", /*close_after=*/true);
  auto c = RedisConnection::Open(closing.endpoint(), {}, Fast());
  ASSERT_TRUE(c.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // it closed
  std::vector<RedisCommand> commands(
      64, RedisCommand{"SET", "k", std::string(1 << 20, 'x')});
  std::vector<RedisReply> replies;
  const absl::Status s = (*c)->Pipeline(commands, replies);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE((*c)->broken());
  sigset_t pending;
  sigpending(&pending);
  EXPECT_EQ(sigismember(&pending, SIGPIPE), 0);  // none left behind
}

// Hostile or broken servers: garbage, a reply cut short, silence, a reply
// larger than the client accepts.
TEST(RedisConnection, MisbehavingServers) {
  struct Case {
    std::string answer;
    bool close_after;
    absl::StatusCode want;
  };
  const Case cases[] = {
      {"this is not RESP\r\n", false, absl::StatusCode::kDataLoss},
      {"$10\r\nabc", true, absl::StatusCode::kUnavailable},
      {"*3\r\n:1\r\n", true, absl::StatusCode::kUnavailable},
      {"", false, absl::StatusCode::kDeadlineExceeded},
      {"$-7\r\n", false, absl::StatusCode::kDataLoss},
      {"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
       false, absl::StatusCode::kDataLoss},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.answer);
    FakeServer fake(k.answer, k.close_after);
    auto c = RedisConnection::Open(fake.endpoint(), {}, Fast());
    ASSERT_TRUE(c.ok()) << c.status();
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<RedisReply> r = (*c)->Command({"GET", "k"});
    EXPECT_EQ(r.status().code(), k.want) << r.status();
    EXPECT_TRUE((*c)->broken());
    EXPECT_LT(std::chrono::steady_clock::now() - start,
              std::chrono::seconds(3));
  }
  FakeServer big("$100000\r\n" + std::string(100000, 'x') + "\r\n", false);
  RedisOptions small = Fast();
  small.max_reply_bytes = 4096;
  auto c = RedisConnection::Open(big.endpoint(), {}, small);
  ASSERT_TRUE(c.ok());
  absl::StatusOr<RedisReply> r = (*c)->Command({"GET", "k"});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("beyond 4096 bytes"));
  // An array header that announces 10^8 elements: refused as it is parsed,
  // before anything that large is allocated.
  FakeServer huge("*100000000\r\n", false);
  auto h = RedisConnection::Open(huge.endpoint(), {}, Fast());
  ASSERT_TRUE(h.ok());
  absl::StatusOr<RedisReply> a = (*h)->Command({"GET", "k"});
  EXPECT_EQ(a.status().code(), absl::StatusCode::kDataLoss) << a.status();
  EXPECT_TRUE((*h)->broken());
}

}  // namespace
}  // namespace kvpage::remote
