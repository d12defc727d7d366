#!/usr/bin/env bash
# kvpage's main job: set up, build the release preset and run kvpage-stress
# on its default workload — a ShareGPT-like serving run on a Llama-3-8B-like
# KV shape, on the paged cache, a contiguous per-sequence buffer and the
# naive cache, every token verified, then the paged cache again at the
# contiguous buffer's concurrency — then print the report. The run takes
# about 45 s on 2 cores; the first build, packages included, 10-15 minutes,
# its progress shown on stderr. Extra arguments go to kvpage-stress (e.g.
# --json, --help).
# The Google Benchmark micro-benchmarks are tools/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
# Progress goes to stderr (ninja prints [done/total]), the report to stdout.
echo "kvpage: configuring build/release" >&2
cmake --preset release --log-level=WARNING >/dev/null
echo "kvpage: building kvpage-stress kvpage-dump in build/release" >&2
cmake --build --preset release --target kvpage-stress kvpage-dump >&2
exec build/release/tools/stress/kvpage-stress "$@"
