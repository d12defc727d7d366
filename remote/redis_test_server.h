// remote/redis_test_server.h — a redis-server (Debian's) that a test starts
// on a free loopback port and stops, and a fake server that answers every
// request with the bytes a test gives it (garbage, a truncated reply,
// nothing at all). For the remote tier's tests only.
#ifndef KVPAGE_REMOTE_REDIS_TEST_SERVER_H_
#define KVPAGE_REMOTE_REDIS_TEST_SERVER_H_

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "remote/redis_connection.h"

namespace kvpage::remote::testing {

// A port nobody listens on now: bound, read, closed.
inline int FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (fd < 0 ||
      bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  close(fd);
  return ntohs(addr.sin_port);
}

// Starts `args` (args[0] looked up on PATH), its output to /dev/null; its
// pid, or -1.
inline pid_t Spawn(std::vector<std::string> args) {
  const pid_t pid = fork();
  if (pid != 0) return pid;
  const int null = open("/dev/null", O_WRONLY);
  if (null >= 0) {
    dup2(null, 1);
    dup2(null, 2);
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  _exit(127);
}

// Whether nobody listens on `port` of the loopback now.
inline bool LoopbackPortFree(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool free = fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&addr),
                                    sizeof(addr)) == 0;
  if (fd >= 0) close(fd);
  return free;
}

// A free port for a cluster node: its bus port (port + 10000) must be a
// port too, and free.
inline int FreeClusterPort() {
  for (int attempt = 0; attempt < 200; ++attempt) {
    const int port = FreeLoopbackPort();
    if (port > 0 && port + 10000 <= 65535 && LoopbackPortFree(port + 10000)) {
      return port;
    }
  }
  return -1;
}

class RedisTestServer {
 public:
  // Starts redis-server on 127.0.0.1 (on `port`, else a free one) with
  // `extra` arguments (e.g. {"--requirepass", "secret"}), no persistence
  // unless `extra` asks for it, and waits until it answers, its data
  // loaded (5 s at most).
  static absl::StatusOr<std::unique_ptr<RedisTestServer>> Start(
      std::vector<std::string> extra = {}, int fixed_port = 0) {
    for (int attempt = 0; attempt < (fixed_port != 0 ? 1 : 5); ++attempt) {
      const int port = fixed_port != 0 ? fixed_port : FreeLoopbackPort();
      if (port < 0) return absl::InternalError("no free loopback port");
      std::vector<std::string> args = {"redis-server",
                                       "--port",
                                       absl::StrCat(port),
                                       "--bind",
                                       "127.0.0.1",
                                       "--save",
                                       "",
                                       "--appendonly",
                                       "no",
                                       "--protected-mode",
                                       "no",
                                       "--daemonize",
                                       "no",
                                       "--loglevel",
                                       "warning"};
      args.insert(args.end(), extra.begin(), extra.end());
      const pid_t pid = Spawn(std::move(args));
      if (pid < 0) return absl::InternalError("fork failed");
      std::unique_ptr<RedisTestServer> server(new RedisTestServer(pid, port));
      if (server->WaitReady()) return server;
    }
    return absl::UnavailableError(
        "redis-server did not start (is it installed? tools/setup.sh)");
  }

  ~RedisTestServer() { Stop(SIGTERM); }

  // Sends `signal` and reaps the process (SIGKILL: a node that dies).
  void Stop(int signal) {
    if (pid_ <= 0) return;
    kill(pid_, signal);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  RedisEndpoint endpoint() const { return {"127.0.0.1", port_}; }
  std::string url() const { return absl::StrCat("redis://127.0.0.1:", port_); }

 private:
  RedisTestServer(pid_t pid, int port) : pid_(pid), port_(port) {}

  bool WaitReady() {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {  // exited: port taken?
        pid_ = -1;
        return false;
      }
      absl::StatusOr<std::unique_ptr<RedisConnection>> c =
          RedisConnection::Open(endpoint(), {}, {});
      if (c.ok()) {
        absl::StatusOr<RedisReply> pong = (*c)->Command({"PING"});
        // A server with a password answers NOAUTH: it is up too. One still
        // reading its append-only file answers LOADING: not yet.
        if (pong.ok() && !(pong->type == RedisReply::kError &&
                           pong->str.starts_with("LOADING"))) {
          return true;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    Stop(SIGKILL);
    return false;
  }

  pid_t pid_;
  int port_;
};

// Three (or more) redis-servers in cluster mode on loopback ports, made
// one cluster by `redis-cli --cluster create` (no replicas: each node
// serves a third of the slots), in a temporary directory removed at the
// end.
class RedisTestCluster {
 public:
  static absl::StatusOr<std::unique_ptr<RedisTestCluster>> Start(
      int nodes = 3) {
    std::unique_ptr<RedisTestCluster> cluster(new RedisTestCluster());
    char dir[] = "/tmp/kvpage-redis-cluster-XXXXXX";
    if (mkdtemp(dir) == nullptr) return absl::InternalError("mkdtemp failed");
    cluster->dir_ = dir;
    std::vector<std::string> create = {"redis-cli", "--cluster", "create"};
    for (int i = 0; i < nodes; ++i) {
      absl::StatusOr<std::unique_ptr<RedisTestServer>> node =
          absl::UnavailableError("no free cluster port");
      std::vector<std::string> args;
      for (int attempt = 0; attempt < 5 && !node.ok(); ++attempt) {
        const int port = FreeClusterPort();
        if (port < 0) break;
        args = {"--cluster-enabled", "yes", "--cluster-config-file",
                absl::StrCat("nodes-", i, "-", attempt, ".conf"), "--dir",
                cluster->dir_, "--cluster-node-timeout", "1000",
                // The nodes left serve their slots when one dies.
                "--cluster-require-full-coverage", "no"};
        node = RedisTestServer::Start(args, port);
      }
      if (!node.ok()) return node.status();
      cluster->args_.push_back(std::move(args));
      create.push_back(absl::StrCat("127.0.0.1:", (*node)->port()));
      cluster->nodes_.push_back(*std::move(node));
    }
    for (const char* a : {"--cluster-replicas", "0", "--cluster-yes"}) {
      create.push_back(a);
    }
    if (Run(create) != 0) {
      return absl::InternalError("redis-cli --cluster create failed");
    }
    // Every node sees every slot served before the cluster is used.
    for (const auto& node : cluster->nodes_) {
      if (!WaitClusterOk(*node)) {
        return absl::DeadlineExceededError("the cluster did not form");
      }
    }
    return cluster;
  }

  // Starts node i again (after a Stop, or a kill by its pid) on its port
  // with its cluster config file: it rejoins serving its slots, empty. Waits
  // until it says the cluster is ok (a master that restarts refuses
  // commands for its first 2 s).
  absl::Status Restart(int i) {
    RedisTestServer& old = node(i);
    old.Stop(SIGKILL);  // reaps one killed by its pid
    absl::StatusOr<std::unique_ptr<RedisTestServer>> again =
        RedisTestServer::Start(args_[static_cast<size_t>(i)], old.port());
    if (!again.ok()) return again.status();
    nodes_[static_cast<size_t>(i)] = *std::move(again);
    if (!WaitClusterOk(node(i))) {
      return absl::DeadlineExceededError("the node did not rejoin");
    }
    return absl::OkStatus();
  }

  ~RedisTestCluster() {
    nodes_.clear();  // stops them
    if (!dir_.empty()) {
      Run({"rm", "-rf", dir_});
    }
  }

  RedisTestServer& node(int i) { return *nodes_[static_cast<size_t>(i)]; }
  int size() const { return static_cast<int>(nodes_.size()); }
  std::string url() const {
    std::string out = "redis-cluster://";
    for (size_t i = 0; i < nodes_.size(); ++i) {
      absl::StrAppend(&out, i == 0 ? "" : ",", "127.0.0.1:", nodes_[i]->port());
    }
    return out;
  }

 private:
  RedisTestCluster() = default;

  // Whether `node` says cluster_state:ok within 10 s.
  static bool WaitClusterOk(const RedisTestServer& node) {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (true) {
      absl::StatusOr<std::unique_ptr<RedisConnection>> c =
          RedisConnection::Open(node.endpoint(), {}, {});
      if (c.ok()) {
        absl::StatusOr<RedisReply> info = (*c)->Command({"CLUSTER", "INFO"});
        if (info.ok() &&
            info->str.find("cluster_state:ok") != std::string::npos) {
          return true;
        }
      }
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  // Runs a command, its output to /dev/null; its exit status.
  static int Run(std::vector<std::string> args) {
    const pid_t pid = Spawn(std::move(args));
    if (pid < 0) return -1;
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  std::string dir_;
  std::vector<std::unique_ptr<RedisTestServer>> nodes_;
  std::vector<std::vector<std::string>> args_;  // per node: Restart's
};

// A host that does not answer: a loopback listener on `port` that never
// accepts, its backlog filled, so that a connect to it hangs until its
// timeout (as to a host whose packets are dropped). `port` 0: a free one.
class BlackHole {
 public:
  explicit BlackHole(int port = 0) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    const int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    socklen_t len = sizeof(addr);
    ok_ = bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) ==
              0 &&
          listen(listen_fd_, 0) == 0;
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    for (int i = 0; i < 4 && ok_; ++i) {  // fill the backlog
      const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
      connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
      fillers_.push_back(fd);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ~BlackHole() {
    for (const int fd : fillers_) close(fd);
    close(listen_fd_);
  }
  bool ok() const { return ok_; }
  int port() const { return port_; }

 private:
  int listen_fd_ = -1;
  int port_ = 0;
  bool ok_ = false;
  std::vector<int> fillers_;
};

// A server that accepts connections and, for each read from a client,
// writes `answer` (then closes the connection when `close_after`). An
// empty answer never replies; an empty answer with `close_after` closes
// each connection as soon as it is accepted.
class FakeServer {
 public:
  FakeServer(std::string answer, bool close_after)
      : answer_(std::move(answer)), close_after_(close_after) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    listen(listen_fd_, 4);
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeServer() {
    stop_ = true;
    shutdown(listen_fd_, SHUT_RDWR);
    close(listen_fd_);
    thread_.join();
  }
  RedisEndpoint endpoint() const { return {"127.0.0.1", port_}; }

 private:
  void Serve() {
    while (!stop_) {
      const int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) return;
      if (answer_.empty() && close_after_) {
        close(fd);
        continue;
      }
      char buffer[4096];
      timeval tv{.tv_sec = 0, .tv_usec = 200000};
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      while (!stop_) {
        const ssize_t n = read(fd, buffer, sizeof(buffer));
        if (n == 0) break;
        if (n < 0) continue;  // timed out: look at stop_ again
        if (!answer_.empty()) {
          if (write(fd, answer_.data(), answer_.size()) < 0) break;
        }
        if (close_after_) break;
      }
      close(fd);
    }
  }

  std::string answer_;
  bool close_after_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace kvpage::remote::testing

#endif  // KVPAGE_REMOTE_REDIS_TEST_SERVER_H_
