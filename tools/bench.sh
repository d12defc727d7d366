#!/usr/bin/env bash
# kvpage's micro-benchmarks: set up, build the release preset and print how an
# append to the paged cache compares with a memcpy of the same bytes (the
# physical limit) and with the naive cache that copies its whole history.
# Extra arguments go to the benchmark binary (e.g. --benchmark_filter=Decode).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
# Progress goes to stderr (ninja prints [done/total]), the report to stdout.
echo "kvpage: configuring build/release" >&2
cmake --preset release --log-level=WARNING >/dev/null
echo "kvpage: building kvpage_bench in build/release" >&2
cmake --build --preset release --target kvpage_bench >&2
exec build/release/bench/kvpage_bench "$@"
