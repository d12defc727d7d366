#!/usr/bin/env bash
# Builds kvpage and runs its whole test suite with CTest.
#   tools/test.sh          developer build (debug, expensive internal checks)
#   tools/test.sh asan     AddressSanitizer + UndefinedBehaviorSanitizer
#   tools/test.sh tsan     ThreadSanitizer, the threaded tests
#   tools/test.sh clang    clang with -Wthread-safety as errors, and the
#                          whole API and the snapshot reader fuzzed for
#                          30 s each (libFuzzer; tests/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-dev}"
if [ "$preset" = clang ]; then tools/setup.sh clang libclang-rt-14-dev; else tools/setup.sh; fi
# Each phase says what it does; ninja prints [done/total] as it compiles (the
# first build of a preset compiles every suite, benchmark and tool: about 10
# minutes on 2 cores).
echo "kvpage: configuring build/$preset" >&2
cmake --preset "$preset" --log-level=WARNING >/dev/null
echo "kvpage: building build/$preset" >&2
cmake --build --preset "$preset"
echo "kvpage: running the tests of build/$preset" >&2
ctest --preset "$preset"
