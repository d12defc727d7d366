#include "remote/redis_store.h"

#include <algorithm>
#include <charconv>

#include "absl/strings/str_format.h"

namespace kvpage::remote {

namespace {

constexpr int kSlots = 16384;

uint16_t Crc16(std::string_view bytes) {
  // CRC-16/XMODEM: polynomial 0x1021, initial value 0, no reflection.
  uint16_t crc = 0;
  for (const char c : bytes) {
    crc ^= static_cast<uint16_t>(static_cast<uint8_t>(c) << 8);
    for (int bit = 0; bit < 8; ++bit) {
      crc = (crc & 0x8000) != 0 ? static_cast<uint16_t>((crc << 1) ^ 0x1021)
                                : static_cast<uint16_t>(crc << 1);
    }
  }
  return crc;
}

// "MOVED 3999 127.0.0.1:6381" or "ASK ...": the slot and where to go.
struct Redirect {
  bool ask = false;
  int slot = -1;
  RedisEndpoint to;
};
std::optional<Redirect> ParseRedirect(const RedisReply& reply) {
  if (reply.type != RedisReply::kError) return std::nullopt;
  std::string_view s = reply.str;
  Redirect r;
  if (s.starts_with("MOVED ")) {
    s.remove_prefix(6);
  } else if (s.starts_with("ASK ")) {
    s.remove_prefix(4);
    r.ask = true;
  } else {
    return std::nullopt;
  }
  const size_t space = s.find(' ');
  const size_t colon = s.rfind(':');
  if (space == std::string_view::npos || colon == std::string_view::npos ||
      colon < space) {
    return std::nullopt;
  }
  const std::string_view slot = s.substr(0, space);
  const std::string_view port = s.substr(colon + 1);
  if (std::from_chars(slot.data(), slot.data() + slot.size(), r.slot).ec !=
          std::errc() ||
      std::from_chars(port.data(), port.data() + port.size(), r.to.port).ec !=
          std::errc() ||
      r.slot < 0 || r.slot >= kSlots || r.to.port < 1 || r.to.port > 65535) {
    return std::nullopt;
  }
  r.to.host = std::string(s.substr(space + 1, colon - space - 1));
  if (r.to.host.empty()) return std::nullopt;
  return r;
}

absl::Status ServerError(const RedisReply& reply) {
  return absl::UnavailableError(absl::StrFormat("Redis: %s", reply.str));
}

}  // namespace

int KeySlot(std::string_view key) {
  if (const size_t open = key.find('{'); open != std::string_view::npos) {
    const size_t close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1) {
      key = key.substr(open + 1, close - open - 1);
    }
  }
  return Crc16(key) % kSlots;
}

absl::StatusOr<std::unique_ptr<RedisStore>> RedisStore::Connect(
    const RedisTarget& target, const RedisOptions& options) {
  std::unique_ptr<RedisStore> store(new RedisStore(target, options));
  if (!target.cluster) {
    store->nodes_.push_back({.endpoint = target.seeds.at(0)});
    absl::StatusOr<RedisConnection*> c = store->ConnectionOf(0);
    if (!c.ok()) return c.status();
    return store;
  }
  absl::Status last = absl::InvalidArgumentError("Redis URL: no seed");
  for (const RedisEndpoint& seed : target.seeds) {
    store->nodes_.clear();
    store->nodes_.push_back({.endpoint = seed});
    last = store->LearnSlots();
    if (last.ok()) return store;
    if (last.code() == absl::StatusCode::kFailedPrecondition) return last;
  }
  return last;
}

int RedisStore::NodeOf(const RedisEndpoint& endpoint) {
  for (size_t i = 0; i < nodes_.size(); ++i) {
    if (nodes_[i].endpoint == endpoint) return static_cast<int>(i);
  }
  nodes_.push_back({.endpoint = endpoint});
  return static_cast<int>(nodes_.size()) - 1;
}

absl::StatusOr<RedisConnection*> RedisStore::ConnectionOf(int node,
                                                          absl::Time deadline) {
  Node& n = nodes_[static_cast<size_t>(node)];
  if (n.connection != nullptr && !n.connection->broken()) {
    return n.connection.get();
  }
  n.connection.reset();
  // Connecting counts against the call's deadline too.
  RedisOptions options = options_;
  bool cut = false;  // the deadline, not connect_timeout, bounds it
  if (deadline != absl::InfiniteFuture()) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrFormat(
          "Redis %s:%d: the call's deadline passed before connecting",
          n.endpoint.host, n.endpoint.port));
    }
    cut = left < options.connect_timeout;
    options.connect_timeout = std::min(left, options.connect_timeout);
  }
  absl::StatusOr<std::unique_ptr<RedisConnection>> c =
      RedisConnection::Open(n.endpoint, target_, options, deadline);
  if (!c.ok()) {
    if (cut && c.status().code() == absl::StatusCode::kDeadlineExceeded) {
      return absl::DeadlineExceededError(
          absl::StrFormat("Redis %s:%d: cannot connect by the call's deadline",
                          n.endpoint.host, n.endpoint.port));
    }
    return c.status();
  }
  n.connection = *std::move(c);
  return n.connection.get();
}

void RedisStore::Start(int node, Outgoing& out, absl::Time deadline) {
  const Node& n = nodes_[static_cast<size_t>(node)];
  out.kept = n.connection != nullptr && !n.connection->broken();
  absl::StatusOr<RedisConnection*> c = ConnectionOf(node, deadline);
  out.sent = c.ok() ? (*c)->Send(out.commands) : c.status();
}

absl::StatusOr<RedisReply> RedisStore::NextReply(int node, Outgoing& out,
                                                 absl::Time deadline) {
  std::vector<RedisReply> one;
  absl::Status got = out.sent;
  if (got.ok()) {
    got =
        nodes_[static_cast<size_t>(node)].connection->Receive(1, one, deadline);
  }
  // Unavailable before the first reply on a connection an earlier call
  // opened: the server closed it, most likely while it was idle (it
  // restarted, or its `timeout` passed). Once more on a new connection: the
  // store's commands (GET, SET, CLUSTER SLOTS) may run twice. A server
  // that is down costs one more connect, refused or bounded by
  // connect_timeout; a timeout (DeadlineExceeded) is never sent again.
  if (!got.ok() && out.kept && out.read == 0 &&
      got.code() == absl::StatusCode::kUnavailable) {
    absl::StatusOr<RedisConnection*> c = ConnectionOf(node, deadline);
    got = c.ok() ? (*c)->Send(out.commands) : c.status();
    if (got.ok()) got = (*c)->Receive(1, one, deadline);
  }
  out.kept = false;  // resent at most once
  if (!got.ok()) {
    out.sent = got;  // the node's later replies fail alike
    return got;
  }
  ++out.read;
  return std::move(one[0]);
}

absl::Status RedisStore::Send(int node, const RedisCommand& command,
                              std::vector<RedisReply>& replies,
                              absl::Time deadline) {
  Outgoing out{.commands = {&command}};
  Start(node, out, deadline);
  replies.clear();
  absl::StatusOr<RedisReply> reply = NextReply(node, out, deadline);
  if (!reply.ok()) return reply.status();
  replies.push_back(*std::move(reply));
  return absl::OkStatus();
}

absl::Status RedisStore::LearnSlots(absl::Time deadline) {
  // Ask the nodes known, in turn, until one answers.
  absl::Status last = absl::UnavailableError("Redis Cluster: no node known");
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const RedisEndpoint asked = nodes_[i].endpoint;
    const RedisCommand slots = {"CLUSTER", "SLOTS"};
    std::vector<RedisReply> replies;
    if (absl::Status s = Send(static_cast<int>(i), slots, replies, deadline);
        !s.ok()) {
      last = s;
      continue;
    }
    const RedisReply* reply = &replies[0];
    if (reply->type == RedisReply::kError) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "Redis %s:%d: not a cluster node (CLUSTER SLOTS: %s); a single "
          "server is redis://",
          asked.host, asked.port, reply->str));
    }
    auto malformed = [&] {
      return absl::DataLossError(absl::StrFormat(
          "Redis %s:%d: a CLUSTER SLOTS reply that does not parse", asked.host,
          asked.port));
    };
    if (reply->type != RedisReply::kArray) return malformed();
    std::vector<int> slot_node(kSlots, -1);
    for (const RedisReply& range : reply->elements) {
      if (range.type != RedisReply::kArray || range.elements.size() < 3) {
        return malformed();
      }
      const RedisReply& lo = range.elements[0];
      const RedisReply& hi = range.elements[1];
      const RedisReply& master = range.elements[2];
      if (lo.type != RedisReply::kInteger || hi.type != RedisReply::kInteger ||
          lo.integer < 0 || hi.integer >= kSlots || lo.integer > hi.integer ||
          master.type != RedisReply::kArray || master.elements.size() < 2 ||
          master.elements[0].type != RedisReply::kString ||
          master.elements[1].type != RedisReply::kInteger ||
          master.elements[1].integer < 1 ||
          master.elements[1].integer > 65535) {
        return malformed();
      }
      RedisEndpoint e{.host = master.elements[0].str,
                      .port = static_cast<int>(master.elements[1].integer)};
      if (e.host.empty()) e.host = asked.host;  // "the node you asked"
      const int node = NodeOf(e);
      std::fill(slot_node.begin() + lo.integer,
                slot_node.begin() + hi.integer + 1, node);
    }
    slot_node_ = std::move(slot_node);
    ++slot_refreshes_;
    return absl::OkStatus();
  }
  return last;
}

void RedisStore::Run(absl::Span<const std::string> keys,
                     absl::Span<const RedisCommand> commands,
                     std::vector<absl::StatusOr<RedisReply>>& replies,
                     absl::Time deadline) {
  replies.assign(keys.size(), absl::UnavailableError("not sent"));
  // Round 0: every key to the node of its slot; round 1: the redirected.
  std::vector<size_t> pending(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) pending[i] = i;
  std::vector<int> node_of(keys.size(), 0);
  std::vector<bool> asking(keys.size(), false);
  if (!slot_node_.empty()) {
    for (size_t i = 0; i < keys.size(); ++i) {
      node_of[i] = slot_node_[static_cast<size_t>(KeySlot(keys[i]))];
    }
  }
  bool moved = false;
  const RedisCommand asking_command = {"ASKING"};
  for (int round = 0; round < 2 && !pending.empty(); ++round) {
    std::vector<size_t> redirected;
    // Nodes in the order of their first key.
    std::vector<int> order;
    for (const size_t i : pending) {
      if (node_of[i] < 0) {
        replies[i] = absl::UnavailableError(absl::StrFormat(
            "Redis Cluster: no node serves slot %d", KeySlot(keys[i])));
      } else if (std::find(order.begin(), order.end(), node_of[i]) ==
                 order.end()) {
        order.push_back(node_of[i]);
      }
    }
    // Every node's commands go out before any reply is read: the nodes
    // work at once. Then the replies are read in the order of the keys,
    // each from its node: a deadline leaves the keys before it read (a
    // chain of blocks ends where it is, not with a hole per node).
    std::vector<Outgoing> out(order.size());
    std::vector<size_t> out_of(keys.size(), 0);  // a pending key's node
    for (size_t n = 0; n < order.size(); ++n) {
      for (const size_t i : pending) {
        if (node_of[i] != order[n]) continue;
        out_of[i] = n;
        if (asking[i]) out[n].commands.push_back(&asking_command);
        out[n].commands.push_back(&commands[i]);
      }
      Start(order[n], out[n], deadline);
    }
    for (const size_t i : pending) {
      if (node_of[i] < 0) continue;
      const size_t n = out_of[i];
      if (asking[i]) {  // ASKING's own reply
        if (absl::StatusOr<RedisReply> a =
                NextReply(order[n], out[n], deadline);
            !a.ok()) {
          replies[i] = a.status();
          continue;
        }
      }
      absl::StatusOr<RedisReply> reply = NextReply(order[n], out[n], deadline);
      if (!reply.ok()) {
        replies[i] = reply.status();
        continue;
      }
      if (const std::optional<Redirect> r = ParseRedirect(*reply);
          r.has_value() && round == 0 && !slot_node_.empty()) {
        const int to = NodeOf(r->to);
        node_of[i] = to;
        asking[i] = r->ask;
        if (!r->ask) {
          slot_node_[static_cast<size_t>(r->slot)] = to;
          moved = true;
        }
        redirected.push_back(i);
        continue;
      }
      replies[i] = *std::move(reply);
    }
    pending = std::move(redirected);
  }
  for (const size_t i : pending) {
    replies[i] = absl::UnavailableError(
        "Redis Cluster: redirected twice (the cluster is resharding)");
  }
  // The map was stale: learn it whole, by the call's deadline.
  if (moved) (void)LearnSlots(deadline);
}

std::vector<absl::StatusOr<std::optional<std::string>>> RedisStore::Get(
    absl::Span<const std::string> keys, absl::Time deadline) {
  std::vector<RedisCommand> commands;
  commands.reserve(keys.size());
  for (const std::string& key : keys) commands.push_back({"GET", key});
  std::vector<absl::StatusOr<RedisReply>> replies;
  Run(keys, commands, replies, deadline);
  std::vector<absl::StatusOr<std::optional<std::string>>> out;
  out.reserve(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    absl::StatusOr<RedisReply>& r = replies[i];
    if (!r.ok()) {
      out.push_back(r.status());
    } else if (r->type == RedisReply::kString) {
      out.push_back(std::optional<std::string>(std::move(r->str)));
    } else if (r->type == RedisReply::kNil) {
      out.push_back(std::optional<std::string>());
    } else if (r->type == RedisReply::kError) {
      out.push_back(ServerError(*r));
    } else {
      out.push_back(absl::DataLossError("Redis: GET answered a non-string"));
    }
  }
  return out;
}

std::vector<absl::Status> RedisStore::Set(
    std::vector<std::pair<std::string, std::string>> items) {
  std::vector<std::string> keys;
  std::vector<RedisCommand> commands;
  keys.reserve(items.size());
  commands.reserve(items.size());
  for (auto& [key, value] : items) {
    keys.push_back(key);
    // Word by word: an initializer list would copy the value.
    RedisCommand& set = commands.emplace_back();
    set.reserve(3);
    set.emplace_back("SET");
    set.push_back(std::move(key));
    set.push_back(std::move(value));
  }
  std::vector<absl::StatusOr<RedisReply>> replies;
  Run(keys, commands, replies);
  std::vector<absl::Status> out;
  out.reserve(items.size());
  for (absl::StatusOr<RedisReply>& r : replies) {
    if (!r.ok()) {
      out.push_back(r.status());
    } else if (r->type == RedisReply::kStatus && r->str == "OK") {
      out.push_back(absl::OkStatus());
    } else if (r->type == RedisReply::kError) {
      out.push_back(ServerError(*r));
    } else {
      out.push_back(absl::DataLossError("Redis: SET answered other than OK"));
    }
  }
  return out;
}

}  // namespace kvpage::remote
