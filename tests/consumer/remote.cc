// An engine linking the installed Redis tier (kvpage::kvpage_remote),
// hiredis included: a RemoteTier refuses a URL it cannot use with
// InvalidArgument, naming it.
#include <cstdio>
#include <memory>
#include <string>

#include "kvpage/kvpage.h"
#include "kvpage/remote_tier.h"

int main() {
  absl::StatusOr<std::unique_ptr<kvpage::RemoteTier>> tier =
      kvpage::RemoteTier::Connect({.url = "memcached://127.0.0.1:11211"});
  if (tier.ok() || tier.status().code() != absl::StatusCode::kInvalidArgument) {
    return 1;
  }
  std::printf("consumer_remote: %s\n",
              std::string(tier.status().message()).c_str());
  return 0;
}
