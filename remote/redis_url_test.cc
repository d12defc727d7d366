#include "remote/redis_url.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvpage::remote {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(RedisUrl, OneServer) {
  absl::StatusOr<RedisTarget> t = ParseRedisUrl("redis://localhost");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->seeds, (std::vector<RedisEndpoint>{{"localhost", 6379}}));
  EXPECT_FALSE(t->cluster);
  EXPECT_EQ(t->db, 0);
  EXPECT_TRUE(t->password.empty());

  t = ParseRedisUrl("redis://app:s%40cr%3At@10.0.0.5:7000/3");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->seeds, (std::vector<RedisEndpoint>{{"10.0.0.5", 7000}}));
  EXPECT_EQ(t->user, "app");
  EXPECT_EQ(t->password, "s@cr:t");
  EXPECT_EQ(t->db, 3);
  EXPECT_EQ(RedactedUrl(*t), "redis://app:***@10.0.0.5:7000/3");

  t = ParseRedisUrl("redis://:pw@[::1]:6380");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->seeds, (std::vector<RedisEndpoint>{{"::1", 6380}}));
  EXPECT_EQ(t->password, "pw");
  EXPECT_TRUE(t->user.empty());
  EXPECT_EQ(RedactedUrl(*t), "redis://:***@[::1]:6380");
}

TEST(RedisUrl, ClusterSeeds) {
  absl::StatusOr<RedisTarget> t =
      ParseRedisUrl("redis-cluster://127.0.0.1:7001,127.0.0.1:7002,h:7003");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->cluster);
  EXPECT_EQ(t->seeds,
            (std::vector<RedisEndpoint>{
                {"127.0.0.1", 7001}, {"127.0.0.1", 7002}, {"h", 7003}}));
  EXPECT_EQ(RedactedUrl(*t),
            "redis-cluster://127.0.0.1:7001,127.0.0.1:7002,h:7003");
}

TEST(RedisUrl, BadUrlsSayWhatIsWrongAndNeverThePassword) {
  const std::pair<const char*, const char*> cases[] = {
      {"http://h:1", "want redis://"},
      {"redis://", "empty host"},
      {"redis://h:", "empty port"},
      {"redis://h:0", "port '0'"},
      {"redis://h:65536", "port '65536'"},
      {"redis://h:12x", "port '12x'"},
      {"redis://h/db", "db 'db'"},
      {"redis://a:1,b:2", "names one server"},
      {"redis-cluster://a:1/2", "one database"},
      {"redis://[::1", "closing ']'"},
      {"redis://[::1]x", "not ':port'"},
      {"redis://user@h", "[user]:password"},
      {"redis://u:p%4@h", "percent escape in the password"},
      {"redis://h h", "cannot have"},
      {"redis-cluster://a:1,,b:2", "empty host"},
  };
  for (const auto& [url, why] : cases) {
    absl::StatusOr<RedisTarget> t = ParseRedisUrl(url);
    ASSERT_FALSE(t.ok()) << url;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << url;
    EXPECT_THAT(t.status().message(), HasSubstr(why)) << url;
  }
  absl::StatusOr<RedisTarget> t = ParseRedisUrl("redis://u:hunter2@h:0");
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), Not(HasSubstr("hunter2")));
}

}  // namespace
}  // namespace kvpage::remote
