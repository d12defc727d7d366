// RedisStore on one server and on a 3-node Redis Cluster started here on
// loopback ports: keys spread over the nodes by slot, one pipeline per
// node, MOVED and ASK followed while a slot migrates, a node killed
// mid-run fails its own keys only, and a server or node restarted between
// two calls serves the next.
#include "remote/redis_store.h"

#include <signal.h>

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "remote/redis_test_server.h"

namespace kvpage::remote {
namespace {

using testing::RedisTestCluster;
using testing::RedisTestServer;

RedisOptions Fast() {
  return {.connect_timeout = absl::Milliseconds(300),
          .io_timeout = absl::Milliseconds(500)};
}

std::vector<std::pair<std::string, std::string>> Items(int n, int tag) {
  std::vector<std::pair<std::string, std::string>> items;
  for (int i = 0; i < n; ++i) {
    items.push_back({absl::StrCat("key:", tag, ":", i),
                     absl::StrCat("value ", tag, " ", i, std::string(i, 'v'))});
  }
  return items;
}

std::vector<std::string> Keys(
    const std::vector<std::pair<std::string, std::string>>& items) {
  std::vector<std::string> keys;
  for (const auto& [k, v] : items) keys.push_back(k);
  return keys;
}

TEST(KeySlot, RedisClusterSlots) {
  EXPECT_EQ(KeySlot("foo"), 12182);
  EXPECT_EQ(KeySlot("123456789"), 0x31C3 % 16384);
  EXPECT_EQ(KeySlot("{user1000}.following"), KeySlot("user1000"));
  EXPECT_EQ(KeySlot("foo{}{bar}"), KeySlot("foo{}{bar}"));
  EXPECT_NE(KeySlot("foo{}{bar}"), KeySlot("bar"));
  EXPECT_EQ(KeySlot("foo{{bar}}zap"), KeySlot("{bar"));
}

// A Get with a deadline reads no reply after it: 64 MiB of values cannot
// cross loopback in a millisecond, so the keys it had no time for are
// DeadlineExceeded, those read before stand (in order), and the next call
// reads them all on a new connection. A deadline already past reads none.
TEST(RedisStore, AGetReadsNoReplyAfterItsDeadline) {
  auto server = RedisTestServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  auto store = RedisStore::Connect(*ParseRedisUrl((*server)->url()), Fast());
  ASSERT_TRUE(store.ok()) << store.status();
  std::vector<std::pair<std::string, std::string>> items;
  for (int i = 0; i < 64; ++i) {
    items.push_back(
        {absl::StrCat("big:", i), std::string(1 << 20, 'a' + i % 26)});
  }
  for (const absl::Status& s : (*store)->Set(items)) ASSERT_TRUE(s.ok()) << s;
  const std::vector<std::string> keys = Keys(items);
  const auto late = (*store)->Get(keys, absl::Now() + absl::Milliseconds(1));
  ASSERT_EQ(late.size(), keys.size());
  size_t read = 0;
  while (read < late.size() && late[read].ok()) {
    EXPECT_EQ(**late[read], items[read].second);
    ++read;
  }
  ASSERT_LT(read, keys.size());
  for (size_t i = read; i < late.size(); ++i) {
    EXPECT_EQ(late[i].status().code(), absl::StatusCode::kDeadlineExceeded)
        << late[i].status();
  }
  const auto all = (*store)->Get(keys);
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_TRUE(all[i].ok()) << all[i].status();
    EXPECT_EQ(**all[i], items[i].second);
  }
  const auto past = (*store)->Get(keys, absl::Now() - absl::Seconds(1));
  for (const auto& r : past) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  }
  EXPECT_TRUE((*store)->Get({keys[0]})[0].ok());
}

// A host that stops answering (its packets dropped): the Get that finds
// its connection broken connects again within what is left of its
// deadline, not connect_timeout, and says so; once the host answers
// again, the next call is served.
TEST(RedisStore, AReconnectWaitsNoLongerThanTheDeadline) {
  auto server = RedisTestServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  RedisOptions slow_connect = Fast();
  slow_connect.connect_timeout = absl::Seconds(30);
  auto store =
      RedisStore::Connect(*ParseRedisUrl((*server)->url()), slow_connect);
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->Set({{"k", "v"}})[0].ok());
  (*server)->Stop(SIGKILL);
  {
    testing::BlackHole hole(port);
    ASSERT_TRUE(hole.ok());
    // The kept connection fails (the server is gone), then connecting to
    // the silent port is cut at the deadline: 30 s of connect_timeout
    // would hang the test.
    const auto got =
        (*store)->Get({"k"}, absl::Now() + absl::Milliseconds(200));
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].status().code(), absl::StatusCode::kDeadlineExceeded)
        << got[0].status();
    EXPECT_THAT(std::string(got[0].status().message()),
                ::testing::HasSubstr("deadline"));
  }
  auto again = RedisTestServer::Start({}, port);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_TRUE((*store)->Set({{"k", "w"}})[0].ok());
  const auto got = (*store)->Get({"k"}, absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(got[0].ok()) << got[0].status();
  EXPECT_EQ(**got[0], "w");
}

TEST(RedisStore, OneServer) {
  auto server = RedisTestServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<RedisTarget> target = ParseRedisUrl((*server)->url());
  ASSERT_TRUE(target.ok());
  auto store = RedisStore::Connect(*target, Fast());
  ASSERT_TRUE(store.ok()) << store.status();
  const auto items = Items(300, 1);
  for (const absl::Status& s : (*store)->Set(items)) ASSERT_TRUE(s.ok()) << s;
  std::vector<std::string> keys = Keys(items);
  keys.push_back("missing");
  const auto got = (*store)->Get(keys);
  ASSERT_EQ(got.size(), keys.size());
  for (size_t i = 0; i < items.size(); ++i) {
    ASSERT_TRUE(got[i].ok());
    ASSERT_EQ(**got[i], items[i].second);
  }
  ASSERT_TRUE(got.back().ok());
  EXPECT_FALSE(got.back()->has_value());
  // The server dies: every key fails, nothing crashes; a server back on
  // the same port serves the next call (empty: nothing persisted).
  const int port = (*server)->port();
  (*server)->Stop(SIGKILL);
  for (const auto& r : (*store)->Get(keys)) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  }
  auto again = RedisTestServer::Start({}, port);
  ASSERT_TRUE(again.ok()) << again.status();
  const auto after = (*store)->Get(keys);
  ASSERT_TRUE(after[0].ok()) << after[0].status();
  EXPECT_FALSE(after[0]->has_value());
  // Killed and started again between two calls: the connection the store
  // kept is closed, unknown to it; the next call opens another and
  // succeeds.
  (*again)->Stop(SIGKILL);
  auto third = RedisTestServer::Start({}, port);
  ASSERT_TRUE(third.ok()) << third.status();
  for (const absl::Status& s : (*store)->Set(items)) ASSERT_TRUE(s.ok()) << s;
  (*third)->Stop(SIGTERM);
  auto fourth = RedisTestServer::Start({}, port);
  ASSERT_TRUE(fourth.ok()) << fourth.status();
  const auto empty = (*store)->Get(keys);
  for (const auto& r : empty) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_FALSE(r->has_value());
  }
  // A redis-cluster:// URL for a server not in cluster mode.
  absl::StatusOr<RedisTarget> wrong =
      ParseRedisUrl(absl::StrCat("redis-cluster://127.0.0.1:", port));
  ASSERT_TRUE(wrong.ok());
  EXPECT_EQ(RedisStore::Connect(*wrong, Fast()).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

class RedisClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto cluster = RedisTestCluster::Start(3);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = *std::move(cluster);
    absl::StatusOr<RedisTarget> target = ParseRedisUrl(cluster_->url());
    ASSERT_TRUE(target.ok()) << target.status();
    target_ = *target;
  }
  // A plain connection to node i, for checks behind the store's back.
  std::unique_ptr<RedisConnection> Direct(int i) {
    auto c = RedisConnection::Open(cluster_->node(i).endpoint(), {}, Fast());
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }
  std::unique_ptr<RedisTestCluster> cluster_;
  RedisTarget target_;
};

TEST_F(RedisClusterTest, KeysSpreadOverTheNodesBySlot) {
  auto store = RedisStore::Connect(target_, Fast());
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->nodes(), 3);
  const auto items = Items(600, 2);
  for (const absl::Status& s : (*store)->Set(items)) ASSERT_TRUE(s.ok()) << s;
  const auto got = (*store)->Get(Keys(items));
  for (size_t i = 0; i < items.size(); ++i) {
    ASSERT_TRUE(got[i].ok()) << got[i].status();
    ASSERT_EQ(**got[i], items[i].second);
  }
  int64_t total = 0;
  for (int i = 0; i < 3; ++i) {
    auto c = Direct(i);
    const int64_t keys = c->Command({"DBSIZE"})->integer;
    EXPECT_GT(keys, 100) << "node " << i;
    total += keys;
  }
  EXPECT_EQ(total, 600);
  // The server's own slot of a key is ours.
  auto c = Direct(0);
  for (int i = 0; i < 50; ++i) {
    const std::string& key = items[static_cast<size_t>(i)].first;
    EXPECT_EQ(c->Command({"CLUSTER", "KEYSLOT", key})->integer, KeySlot(key));
  }
  EXPECT_EQ((*store)->slot_refreshes(), 1);
}

// A slot moves from one node to another while the store holds the old
// map: during the migration its keys are found by ASK, after it by MOVED
// (the store learns the slots again).
TEST_F(RedisClusterTest, FollowsMovedAndAsk) {
  auto store = RedisStore::Connect(target_, Fast());
  ASSERT_TRUE(store.ok()) << store.status();
  const std::string a_key = "{moving}a", b_key = "{moving}b";
  const int slot = KeySlot(a_key);
  ASSERT_TRUE((*store)->Set({{a_key, "A"}})[0].ok());
  // Which node has the slot, and another one.
  int from = -1;
  for (int i = 0; i < 3; ++i) {
    if (Direct(i)->Command({"GET", a_key})->type == RedisReply::kString) {
      from = i;
    }
  }
  ASSERT_GE(from, 0);
  const int to = (from + 1) % 3;
  auto source = Direct(from);
  auto target = Direct(to);
  const std::string from_id = source->Command({"CLUSTER", "MYID"})->str;
  const std::string to_id = target->Command({"CLUSTER", "MYID"})->str;
  const std::string s = absl::StrCat(slot);
  ASSERT_EQ(
      target->Command({"CLUSTER", "SETSLOT", s, "IMPORTING", from_id})->str,
      "OK");
  ASSERT_EQ(source->Command({"CLUSTER", "SETSLOT", s, "MIGRATING", to_id})->str,
            "OK");
  // b_key is written on the importing node (with ASKING, as a client
  // redirected there would): the source, which lacks it, answers ASK.
  std::vector<RedisReply> replies;
  ASSERT_TRUE(
      target->Pipeline({{"ASKING"}, {"SET", b_key, "B"}}, replies).ok());
  ASSERT_EQ(replies[1].str, "OK");
  const auto during = (*store)->Get({a_key, b_key});
  ASSERT_TRUE(during[0].ok() && during[1].ok())
      << during[0].status() << " " << during[1].status();
  EXPECT_EQ(**during[0], "A");               // still on the source
  EXPECT_EQ(**during[1], "B");               // ASK: on the target
  EXPECT_EQ((*store)->slot_refreshes(), 1);  // ASK changes no map
  // The migration ends: a_key moves, the slot is the target's.
  ASSERT_EQ(source
                ->Command({"MIGRATE", "127.0.0.1",
                           absl::StrCat(cluster_->node(to).port()), a_key, "0",
                           "5000"})
                ->str,
            "OK");
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(Direct(i)->Command({"CLUSTER", "SETSLOT", s, "NODE", to_id})->str,
              "OK");
  }
  const auto after = (*store)->Get({a_key, b_key});
  ASSERT_TRUE(after[0].ok() && after[1].ok()) << after[0].status();
  EXPECT_EQ(**after[0], "A");
  EXPECT_EQ(**after[1], "B");
  EXPECT_EQ((*store)->slot_refreshes(), 2);  // MOVED: learned again
  const auto later = (*store)->Get({a_key});
  EXPECT_EQ(**later[0], "A");
  EXPECT_EQ((*store)->slot_refreshes(), 2);  // the new map holds
}

// A node killed mid-run (by its pid): its keys fail, the other nodes'
// keys are read and written as before, and nothing crashes or hangs.
TEST_F(RedisClusterTest, ANodeKilledFailsItsOwnKeysOnly) {
  auto store = RedisStore::Connect(target_, Fast());
  ASSERT_TRUE(store.ok()) << store.status();
  const auto items = Items(300, 3);
  for (const absl::Status& s : (*store)->Set(items)) ASSERT_TRUE(s.ok());
  // Which keys node 1 holds.
  auto c = Direct(1);
  std::vector<bool> on_dead(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    on_dead[i] =
        c->Command({"GET", items[i].first})->type == RedisReply::kString;
  }
  c.reset();
  kill(cluster_->node(1).pid(), SIGKILL);
  const auto got = (*store)->Get(Keys(items));
  int failed = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    if (on_dead[i]) {
      EXPECT_FALSE(got[i].ok());
      ++failed;
    } else {
      ASSERT_TRUE(got[i].ok()) << got[i].status();
      EXPECT_EQ(**got[i], items[i].second);
    }
  }
  EXPECT_GT(failed, 50);
  const auto more = Items(100, 4);
  const auto set = (*store)->Set(more);
  int written = 0;
  for (const absl::Status& s : set) written += s.ok();
  EXPECT_GT(written, 30);
  EXPECT_LT(written, 100);
}

// A node killed and started again (its cluster config file: it serves its
// slots, empty) between two calls: the store's connection to it is closed;
// the next call opens another, and every key is written and read.
TEST_F(RedisClusterTest, ANodeRestartedServesItsSlotsAgain) {
  auto store = RedisStore::Connect(target_, Fast());
  ASSERT_TRUE(store.ok()) << store.status();
  const auto items = Items(300, 5);
  for (const absl::Status& s : (*store)->Set(items)) ASSERT_TRUE(s.ok());
  kill(cluster_->node(1).pid(), SIGKILL);
  ASSERT_TRUE(cluster_->Restart(1).ok());
  const auto fresh = Items(300, 6);
  for (const absl::Status& s : (*store)->Set(fresh)) ASSERT_TRUE(s.ok()) << s;
  const auto got = (*store)->Get(Keys(fresh));
  for (size_t i = 0; i < fresh.size(); ++i) {
    ASSERT_TRUE(got[i].ok()) << got[i].status();
    EXPECT_EQ(**got[i], fresh[i].second);
  }
  // Node 1 came back empty: the old keys it held are misses now.
  const auto old = (*store)->Get(Keys(items));
  int missing = 0;
  for (const auto& r : old) {
    ASSERT_TRUE(r.ok()) << r.status();
    missing += !r->has_value();
  }
  EXPECT_GT(missing, 50);
  EXPECT_LT(missing, 250);
  EXPECT_EQ((*store)->slot_refreshes(), 1);  // the slots did not move
}

}  // namespace
}  // namespace kvpage::remote
