// tools/stress/stress_run.h — runs the kvpage-stress binary for the tests
// (stress_test.cc, stress_cli_test.cc) and collects what it printed.
#ifndef KVPAGE_TOOLS_STRESS_STRESS_RUN_H_
#define KVPAGE_TOOLS_STRESS_STRESS_RUN_H_

#include <cstdint>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli_run.h"

namespace kvpage::stress {

struct RunResult : testing::CliRun {
  nlohmann::json json;  // when --json and it parsed
};

// Runs kvpage-stress with `args` (its output files named after the test).
inline RunResult RunStress(const std::string& args) {
  RunResult r;
  static_cast<testing::CliRun&>(r) =
      testing::RunCli(KVPAGE_STRESS_BINARY, args);
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
