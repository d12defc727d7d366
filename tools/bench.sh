#!/usr/bin/env bash
# kvpage's micro-benchmarks: set up, build the release preset and print how an
# append to the paged cache compares with a memcpy of the same bytes (the
# physical limit) and with the naive cache that copies its whole history.
# Extra arguments go to the benchmark binary (e.g. --benchmark_filter=Decode).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cmake --preset release --log-level=WARNING >/dev/null
cmake --build --preset release --target kvpage_bench >/dev/null
exec build/release/bench/kvpage_bench "$@"
