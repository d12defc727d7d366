// tests/cli_run.h — runs one of kvpage's command-line tools for a test and
// collects its exit code, stdout and stderr (kvpage-stress, kvpage-generate,
// kvpage-replay).
//
// Usage:
//   const CliRun r = RunCli(KVPAGE_REPLAY_BINARY, "run --synthetic 10");
//   EXPECT_EQ(r.exit_code, 0) << r.err;
#ifndef KVPAGE_TESTS_CLI_RUN_H_
#define KVPAGE_TESTS_CLI_RUN_H_

#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace kvpage::testing {

struct CliRun {
  int exit_code = -1;  // -1: killed by a signal
  std::string out, err;
};

inline std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs `binary args` through the shell, its output in files named after the
// running test (in the test's temporary directory).
inline CliRun RunCli(const std::string& binary, const std::string& args) {
  const std::string name =
      ::testing::UnitTest::GetInstance()->current_test_info()->name();
  const std::string base = ::testing::TempDir() + "/cli_" + name;
  const std::string cmd =
      binary + " " + args + " >" + base + ".out 2>" + base + ".err";
  CliRun r;
  const int status = std::system(cmd.c_str());
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = Slurp(base + ".out");
  r.err = Slurp(base + ".err");
  return r;
}

}  // namespace kvpage::testing

#endif  // KVPAGE_TESTS_CLI_RUN_H_
