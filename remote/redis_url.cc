#include "remote/redis_url.h"

#include <charconv>
#include <cstdint>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace kvpage::remote {

namespace {

// The URL may hold a password: messages never repeat it.
absl::Status Bad(std::string_view why) {
  return absl::InvalidArgumentError(absl::StrFormat("Redis URL: %s", why));
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

absl::StatusOr<std::string> PercentDecode(std::string_view s,
                                          std::string_view what) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    const int hi = i + 1 < s.size() ? HexDigit(s[i + 1]) : -1;
    const int lo = i + 2 < s.size() ? HexDigit(s[i + 2]) : -1;
    if (hi < 0 || lo < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("Redis URL: a bad percent escape in the %s", what));
    }
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return out;
}

absl::StatusOr<int> Number(std::string_view s, int lo, int hi,
                           std::string_view what) {
  int value = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size() ||
      value < lo || value > hi) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Redis URL: %s '%s' is not a number in [%d, %d]", what, s, lo, hi));
  }
  return value;
}

// host[:port], host an IPv6 address in brackets or a name without ':'.
absl::StatusOr<RedisEndpoint> Endpoint(std::string_view s) {
  RedisEndpoint e;
  std::string_view port;
  if (s.starts_with("[")) {
    const size_t close = s.find(']');
    if (close == std::string_view::npos) {
      return absl::InvalidArgumentError(
          "Redis URL: an IPv6 host lacks its closing ']'");
    }
    e.host = std::string(s.substr(1, close - 1));
    const std::string_view rest = s.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') {
        return absl::InvalidArgumentError(
            "Redis URL: text after an IPv6 host that is not ':port'");
      }
      port = rest.substr(1);
      if (port.empty()) {
        return absl::InvalidArgumentError("Redis URL: an empty port");
      }
    }
  } else {
    const size_t colon = s.find(':');
    e.host = std::string(s.substr(0, colon));
    if (colon != std::string_view::npos) {
      port = s.substr(colon + 1);
      if (port.empty()) {
        return absl::InvalidArgumentError("Redis URL: an empty port");
      }
    }
  }
  if (e.host.empty()) {
    return absl::InvalidArgumentError("Redis URL: an empty host");
  }
  for (const char c : e.host) {
    if (c <= ' ' || c == '/' || c == '@' || c == ',' || c == '?' || c == '#' ||
        static_cast<unsigned char>(c) >= 0x7f) {
      return absl::InvalidArgumentError(
          absl::StrFormat("Redis URL: host '%s' holds a character a host "
                          "cannot have",
                          e.host));
    }
  }
  if (!port.empty()) {
    absl::StatusOr<int> p = Number(port, 1, 65535, "port");
    if (!p.ok()) return p.status();
    e.port = *p;
  }
  return e;
}

}  // namespace

absl::StatusOr<RedisTarget> ParseRedisUrl(std::string_view url) {
  RedisTarget t;
  std::string_view rest;
  if (url.starts_with("redis://")) {
    rest = url.substr(8);
  } else if (url.starts_with("redis-cluster://")) {
    rest = url.substr(16);
    t.cluster = true;
  } else {
    return Bad(
        "want redis://host[:port][/db] or "
        "redis-cluster://host:port[,host:port...]");
  }
  // Credentials end at the last '@' (a password may hold '@' escaped).
  if (const size_t at = rest.rfind('@'); at != std::string_view::npos) {
    const std::string_view credentials = rest.substr(0, at);
    rest = rest.substr(at + 1);
    const size_t colon = credentials.find(':');
    if (colon == std::string_view::npos) {
      return Bad("credentials before '@' must be [user]:password");
    }
    absl::StatusOr<std::string> user =
        PercentDecode(credentials.substr(0, colon), "user");
    if (!user.ok()) return user.status();
    absl::StatusOr<std::string> password =
        PercentDecode(credentials.substr(colon + 1), "password");
    if (!password.ok()) return password.status();
    t.user = *std::move(user);
    t.password = *std::move(password);
  }
  std::string_view hosts = rest;
  if (const size_t slash = rest.find('/'); slash != std::string_view::npos) {
    hosts = rest.substr(0, slash);
    const std::string_view path = rest.substr(slash + 1);
    if (!path.empty()) {
      if (t.cluster) {
        return Bad("a cluster has one database: no '/db'");
      }
      absl::StatusOr<int> db = Number(path, 0, 1 << 20, "db");
      if (!db.ok()) return db.status();
      t.db = *db;
    }
  }
  while (true) {
    const size_t comma = hosts.find(',');
    absl::StatusOr<RedisEndpoint> e = Endpoint(hosts.substr(0, comma));
    if (!e.ok()) return e.status();
    t.seeds.push_back(*std::move(e));
    if (comma == std::string_view::npos) break;
    hosts = hosts.substr(comma + 1);
  }
  if (!t.cluster && t.seeds.size() != 1) {
    return Bad(
        "redis:// names one server (a cluster's seeds: "
        "redis-cluster://)");
  }
  return t;
}

std::string RedactedUrl(const RedisTarget& target) {
  std::vector<std::string> hosts;
  for (const RedisEndpoint& e : target.seeds) {
    hosts.push_back(absl::StrContains(e.host, ':')
                        ? absl::StrFormat("[%s]:%d", e.host, e.port)
                        : absl::StrFormat("%s:%d", e.host, e.port));
  }
  std::string out = target.cluster ? "redis-cluster://" : "redis://";
  if (!target.password.empty() || !target.user.empty()) {
    absl::StrAppend(&out, target.user, ":***@");
  }
  absl::StrAppend(&out, absl::StrJoin(hosts, ","));
  if (!target.cluster && target.db != 0) absl::StrAppend(&out, "/", target.db);
  return out;
}

}  // namespace kvpage::remote
