// remote/redis_url.h — where a remote tier's Redis lives: a URL, parsed.
//
//   redis://[[user]:password@]host[:port][/db]        one server
//   redis-cluster://[[user]:password@]host:port[,host:port...]
//                                                     a cluster's seed nodes
//
// host is a name, an IPv4 address or an IPv6 address in brackets; port
// defaults to 6379; db (one server only) to 0. User and password are
// percent-decoded. Anything else (another scheme, an empty host, a port
// outside 1..65535, a db that is not a number, text after the path) is
// InvalidArgument naming what is wrong.
#ifndef KVPAGE_REMOTE_REDIS_URL_H_
#define KVPAGE_REMOTE_REDIS_URL_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvpage::remote {

struct RedisEndpoint {
  std::string host;
  int port = 6379;
  bool operator==(const RedisEndpoint&) const = default;
};

struct RedisTarget {
  std::vector<RedisEndpoint> seeds;  // one, unless `cluster`
  bool cluster = false;
  std::string user;      // empty: the default user
  std::string password;  // empty: no AUTH
  int db = 0;
  bool operator==(const RedisTarget&) const = default;
};

[[nodiscard]] absl::StatusOr<RedisTarget> ParseRedisUrl(std::string_view url);

// The URL without its password (for messages and statistics).
[[nodiscard]] std::string RedactedUrl(const RedisTarget& target);

}  // namespace kvpage::remote

#endif  // KVPAGE_REMOTE_REDIS_URL_H_
