#!/usr/bin/env bash
# The eviction order's effect on a trace replay (#20's first item): runs
# kvpage-replay with the library as it is, where a release leaves a chain's
# cached entries idle from its last block to its first, and with a copy of
# the library whose ReleaseAll walks first to last (the order before), on
# the same trace and pool sizes, and prints both tables. The copy is built
# in a scratch directory (release preset) and removed afterwards. Arguments
# go to `kvpage-replay run` (default: the synthetic trace of 1000 requests
# for pools from 1/64 of its distinct prompt blocks to all of them).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--synthetic 1000 --pool-blocks 2432,4864,9728,19456,38912,77824,155648)

echo "kvpage: building kvpage-replay in build/release" >&2
cmake --preset release --log-level=WARNING >/dev/null
cmake --build --preset release --target kvpage-replay >&2

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$scratch"
python3 - "$scratch/cache/block_holds.cc" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
loops = [
    ("  for (size_t i = table.window.size(); i > table.head; --i) {\n"
     "    ReleaseRef(table.window[i - 1]);\n  }\n",
     "  for (size_t i = table.head; i < table.window.size(); ++i) {\n"
     "    ReleaseRef(table.window[i]);\n  }\n"),
    ("  for (size_t i = table.sink_blocks.size(); i > 0; --i) {\n"
     "    ReleaseRef(table.sink_blocks[i - 1]);\n  }\n",
     "  for (BlockRef ref : table.sink_blocks) ReleaseRef(ref);\n"),
]
for old, new in loops:
    if text.count(old) != 1:
        sys.exit("replay_order.sh: ReleaseAll's loops changed; update the patch")
    text = text.replace(old, new)
# The sinks before the window: blocks in position order.
text = text.replace(
    "  for (BlockRef ref : table.spares) ReleaseRef(ref);\n"
    "  for (size_t i = table.head;",
    "  for (BlockRef ref : table.spares) ReleaseRef(ref);\n"
    "  for (BlockRef ref : table.sink_blocks) ReleaseRef(ref);\n"
    "  for (size_t i = table.head;", 1)
text = text.replace(
    "    ReleaseRef(table.window[i]);\n  }\n"
    "  for (BlockRef ref : table.sink_blocks) ReleaseRef(ref);\n",
    "    ReleaseRef(table.window[i]);\n  }\n", 1)
open(path, "w").write(text)
PY
echo "kvpage: building the first-to-last copy in $scratch" >&2
(cd "$scratch" && cmake --preset release --log-level=WARNING -DKVPAGE_BUILD_TESTS=OFF \
   -DKVPAGE_BUILD_BENCHMARKS=OFF -DKVPAGE_BUILD_BINDINGS=OFF >/dev/null &&
 cmake --build --preset release --target kvpage-replay >&2)

echo "== last block first (kvpage as it is)"
build/release/tools/replay/kvpage-replay run "${args[@]}"
echo "== first block first (the order before)"
"$scratch/build/release/tools/replay/kvpage-replay" run "${args[@]}"
