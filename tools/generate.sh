#!/usr/bin/env bash
# Runs a real model (models/stories260K) with kvpage as its only key/value
# cache: sets up, builds the release preset's kvpage-generate and runs it
# with the arguments (docs/model.md). `tools/generate.sh quality` prints the
# quality table, `tools/generate.sh speed` tokens/s against a contiguous
# cache, `tools/generate.sh --help` every flag.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
echo "kvpage: configuring build/release" >&2
cmake --preset release --log-level=WARNING >/dev/null
echo "kvpage: building kvpage-generate in build/release" >&2
cmake --build --preset release --target kvpage-generate >&2
exec build/release/tools/generate/kvpage-generate "$@"
