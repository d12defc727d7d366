#include "tools/stress/backend.h"

#include "absl/strings/str_format.h"
#include "tools/stress/baseline_backends.h"
#include "tools/stress/paged_backend.h"

namespace kvpage::stress {

std::string Describe(const SeqLabel& label) {
  return absl::StrFormat("sequence %d (request %d, sample %d)", label.id,
                         label.request, label.sample);
}

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(
    const BackendParams& params) {
  switch (params.kind) {
    case BackendKind::kPaged:
      return MakePagedBackend(params);
    case BackendKind::kContiguous:
      return MakeContiguousBackend(params);
    case BackendKind::kNaive:
      return MakeNaiveBackend(params);
  }
  return absl::InvalidArgumentError("unknown backend");
}

}  // namespace kvpage::stress
