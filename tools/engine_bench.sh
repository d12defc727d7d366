#!/usr/bin/env bash
# Engine mode's bookkeeping against vLLM v1's block manager, in one run:
# builds bench/engine_bench.cc (release preset), runs it and
# bench/peers/vllm_v1_blocks.py on the same workload, pinned to one CPU when
# taskset is there, and prints each figure of both with the ratio. Extra
# arguments go to both (e.g. --reps=9 is --reps 9 for the peer: use --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
echo "kvpage: configuring build/release" >&2
cmake --preset release --log-level=WARNING >/dev/null
echo "kvpage: building kvpage_engine_bench in build/release" >&2
cmake --build --preset release --target kvpage_engine_bench >&2
pin=()
if command -v taskset >/dev/null; then pin=(taskset -c 1); fi
quick=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick=(--quick) ;;
    *) echo "usage: tools/engine_bench.sh [--quick]" >&2; exit 2 ;;
  esac
done
ours=$("${pin[@]}" build/release/bench/kvpage_engine_bench "${quick[@]}")
peer=$("${pin[@]}" python3 bench/peers/vllm_v1_blocks.py "${quick[@]}")
python3 - "$ours" "$peer" <<'PY'
import json, sys
ours, peer = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rows = [  # (what, kvpage key, vLLM key, unit)
    ("request-step: reserve + slot mapping + table", "request_step_ns",
     "request_step_ns", "ns"),
    ("request-step without the table (vLLM: without slots)",
     "request_step_no_table_ns", "request_step_manager_only_ns", "ns"),
    ("allocate, per block", "allocate_ns_per_block", "allocate_ns_per_block",
     "ns"),
    ("release a finished request, per block", "release_ns_per_block",
     "release_ns_per_block", "ns"),
    ("admit 2k tokens, 1k cached", "admit_2k_with_1k_cached_us",
     "admit_2k_with_1k_cached_us", "us"),
]
def show(f):
    return f"{f['median']:.1f} [{f['min']:.1f}, {f['max']:.1f}]"
print(f"{'figure':54} {'kvpage':>22} {'vLLM v1 (Python)':>24} {'ratio':>8}")
for what, k, v, unit in rows:
    a, b = ours[k], peer[v]
    print(f"{what + ' (' + unit + ')':54} {show(a):>22} {show(b):>24} "
          f"{b['median'] / a['median']:>7.0f}x")
f = ours["floor_request_step_ns"]
print(f"{'floor: the bookkeeping alone, per request-step (ns)':54} {show(f):>22}")
g = ours["request_step_group32_ns"]
print(f"{'request-step, 32 layers in one group (ns)':54} {show(g):>22} "
      f"{show(peer['request_step_ns']):>24} "
      f"{peer['request_step_ns']['median'] / g['median']:>7.0f}x")
a, b = ours["release_32_layers_us"], ours["release_32_layers_group_us"]
print(f"{'release a 512-token request of 32 layers (us)':54}")
print(f"{'  per-layer tables':54} {show(a):>22}")
print(f"{'  one group':54} {show(b):>22} "
      f"{a['median'] / b['median']:>7.0f}x faster")
PY
