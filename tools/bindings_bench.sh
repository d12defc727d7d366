#!/usr/bin/env bash
# What a decode step's Update costs through each binding: the same loop (1
# token, 8 kv-heads of 128, f32 into f16; 200,000 updates) in C++, C, Rust
# and Python, alternated for N rounds (default 5), each pinned to one core;
# prints the medians (min-max) and each one's cost over C++'s
# (docs/bindings.md).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
tools/setup.sh
echo "kvpage: building build/release" >&2
cmake --preset release --log-level=WARNING >/dev/null
cmake --build --preset release --target kvpage_update_overhead kvpage_c kvpage_python >&2
export KVPAGE_LIB_DIR="$PWD/build/release" CARGO_TARGET_DIR="$PWD/build/release/cargo"
(cd bindings/rust && cargo build --offline --release --quiet --example update_overhead)
out="$(mktemp)"
for _ in $(seq "$rounds"); do
  taskset -c 1 build/release/bench/kvpage_update_overhead 1
  taskset -c 1 "$CARGO_TARGET_DIR/release/examples/update_overhead" 1
  PYTHONPATH=build/release/bindings/python taskset -c 1 /usr/bin/python3 bindings/python/update_overhead.py 1
done >"$out"
/usr/bin/python3 - "$out" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, ns = line.split()
    runs.setdefault(name, []).append(float(ns))
base = statistics.median(runs["cpp"])
print(f"{len(runs['cpp'])} alternated rounds of 200,000 one-token updates; ns per update, median (min-max)\n")
print("| through | ns per update | over C++ |\n| --- | ---: | ---: |")
for name in ["cpp", "c", "rust", "python", "python_copy"]:
    v = runs[name]
    m = statistics.median(v)
    print(f"| {name} | {m:.1f} ({min(v):.1f}-{max(v):.1f}) | {m - base:+.1f} ns |")
PY
rm -f "$out"
