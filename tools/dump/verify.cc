// kvpage-dump verify: VerifySnapshot's violations, nothing when all hold.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tools/dump/dump.h"
#include "tools/dump/text.h"

namespace kvpage::dump {

Json Verify(const Snapshot& snap) {
  Json j;
  j["schema_version"] = kSchemaVersion;
  const std::vector<SnapshotViolation> found = VerifySnapshot(snap);
  j["ok"] = found.empty();
  j["violations"] = Json::array();
  for (const SnapshotViolation& v : found) {
    j["violations"].push_back({{"check", v.check}, {"message", v.message}});
  }
  return j;
}

std::string VerifyText(const Json& model) {
  std::string out;
  for (const Json& v : model["violations"]) {
    absl::StrAppend(&out, Num(v["check"]), ": ", Num(v["message"]), "\n");
  }
  return out;
}

}  // namespace kvpage::dump
