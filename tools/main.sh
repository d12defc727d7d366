#!/usr/bin/env bash
# kvpage's main job: set up, build the release preset and run kvpage-stress
# on its default workload — a ShareGPT-like serving run on a Llama-3-8B-like
# KV shape, on the paged cache, a contiguous per-sequence buffer and the
# naive cache, every token verified — then print the report (about 30 s on
# 2 cores). Extra arguments go to kvpage-stress (e.g. --json, --help).
# The Google Benchmark micro-benchmarks are tools/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cmake --preset release --log-level=WARNING >/dev/null
cmake --build --preset release --target kvpage-stress kvpage-dump >/dev/null
exec build/release/tools/stress/kvpage-stress "$@"
