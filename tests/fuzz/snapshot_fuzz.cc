// libFuzzer target: any bytes through the snapshot reader, and whatever it
// accepts through VerifySnapshot and every kvpage-dump renderer. A crash, a
// sanitizer report, an exception or a hang here is a bug: hostile snapshot
// files must give an error, never take the tool down.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <string_view>

#include "kvpage/snapshot.h"
#include "tools/dump/dump.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace {

void Exercise(std::string_view bytes) {
  absl::StatusOr<kvpage::Snapshot> snap = kvpage::ParseSnapshot(bytes);
  if (!snap.ok()) return;
  namespace dump = kvpage::dump;
  (void)dump::VerifyText(dump::Verify(*snap));
  (void)dump::SummaryText(dump::Summary(*snap));
  std::ostringstream streamed;
  dump::TablesText(*snap, {}, streamed);
  dump::TablesJson(*snap, {}, streamed);
  dump::BlocksText(*snap, streamed);
  dump::BlocksJson(*snap, streamed);
  (void)dump::DiffText(dump::Diff(*snap, *snap));
  dump::Json map;
  (void)dump::MapSvg(*snap, &map);
  (void)dump::MapText(map);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  // As given: the header checks (magic, version, size, checksum).
  Exercise(bytes);
  // Resealed: a mutated payload gets a valid size and checksum, so that the
  // field checks behind the checksum are fuzzed too.
  if (size >= 32 && bytes.substr(0, 8) == "KVPGSNAP") {
    const std::string_view payload = bytes.substr(32);
    std::string sealed(bytes.substr(0, 16));
    const uint64_t fields[2] = {payload.size(),
                                XXH3_64bits(payload.data(), payload.size())};
    for (uint64_t field : fields) {
      for (int i = 0; i < 8; ++i) {
        sealed.push_back(static_cast<char>((field >> (8 * i)) & 0xff));
      }
    }
    sealed.append(payload);
    Exercise(sealed);
  }
  return 0;
}
