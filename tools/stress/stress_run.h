// tools/stress/stress_run.h — runs the kvpage-stress binary for the tests
// (stress_test.cc, stress_cli_test.cc) and collects what it printed.
#ifndef KVPAGE_TOOLS_STRESS_STRESS_RUN_H_
#define KVPAGE_TOOLS_STRESS_STRESS_RUN_H_

#include <sys/wait.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvpage::stress {

struct RunResult {
  int exit_code = -1;
  std::string out, err;
  nlohmann::json json;  // when --json and it parsed
};

inline std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs kvpage-stress with `args` (its output files named after the test).
inline RunResult RunStress(const std::string& args) {
  const std::string dir = ::testing::TempDir();
  const std::string name =
      ::testing::UnitTest::GetInstance()->current_test_info()->name();
  const std::string out = dir + "/stress_" + name + ".out";
  const std::string err = dir + "/stress_" + name + ".err";
  const std::string cmd =
      std::string(KVPAGE_STRESS_BINARY) + " " + args + " >" + out + " 2>" + err;
  RunResult r;
  const int status = std::system(cmd.c_str());
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = Slurp(out);
  r.err = Slurp(err);
  r.json = nlohmann::json::parse(r.out, nullptr, false);
  return r;
}

// Every backend of a --json run completed `requests` requests, verified.
inline void ExpectAllVerifiedRequests(const RunResult& r, int64_t requests) {
  ASSERT_FALSE(r.json.is_discarded()) << r.out;
  for (const auto& b : r.json["backends"]) {
    EXPECT_EQ(b["status"], "ok") << b["backend"];
    EXPECT_EQ(b["requests_completed"], requests) << b["backend"];
  }
}

}  // namespace kvpage::stress

#endif  // KVPAGE_TOOLS_STRESS_STRESS_RUN_H_
