// What a failed internal check does (allocator/check.h).
#include "allocator/check.h"

#include <cstdio>
#include <cstdlib>

namespace kvpage::internal {

void CheckFailed(const char* file, int line, const char* cond) {
  std::fprintf(stderr, "kvpage: internal check failed at %s:%d: %s\n", file,
               line, cond);
  std::abort();
}

}  // namespace kvpage::internal
