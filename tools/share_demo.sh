#!/usr/bin/env bash
# The Redis tier across processes (docs/remote.md): starts a 3-node Redis
# Cluster on loopback ports (Debian's redis-server and redis-cli), runs
# kvpage-share as process A (turns 1..4 of the conversations, writing their
# blocks through to the cluster) and, after A has exited, as process B
# (turn 5: it restores the histories from the cluster and computes only
# the rest), then stops the cluster. Extra arguments go to both processes
# (e.g. --conversations 8 --group-layers); the defaults are a Llama-3-8B
# shape, 4 conversations, a 512-token system prompt and 128-token messages
# and answers.
#   tools/share_demo.sh [kvpage-share flags]
# KVPAGE_SHARE=path picks the binary (default: build/release's, built here).
set -euo pipefail
cd "$(dirname "$0")/.."
share="${KVPAGE_SHARE:-}"
if [ -z "$share" ]; then
  cmake --preset release --log-level=WARNING >/dev/null
  cmake --build --preset release --target kvpage-share >/dev/null
  share=build/release/tools/share/kvpage-share
fi
for tool in redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "share_demo: $tool missing (tools/setup.sh installs it)" >&2; exit 2; }
done

dir="$(mktemp -d /tmp/kvpage-share-demo-XXXXXX)"
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap stop EXIT

# Three ports whose cluster bus ports (+10000) are free too.
free_port() {
  python3 - <<'EOF'
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if p + 10000 > 65535: continue
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 10000)); b.close(); print(p); break
    except OSError:
        b.close()
EOF
}
nodes=()
for i in 0 1 2; do
  port="$(free_port)"
  redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file "nodes-$i.conf" --dir "$dir" --save "" \
    --appendonly no --daemonize no >"$dir/redis-$i.log" 2>&1 &
  pids+=($!)
  nodes+=("127.0.0.1:$port")
done
for node in "${nodes[@]}"; do
  until redis-cli -h 127.0.0.1 -p "${node#*:}" ping >/dev/null 2>&1; do sleep 0.1; done
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log"
for node in "${nodes[@]}"; do
  until redis-cli -h 127.0.0.1 -p "${node#*:}" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
done
url="redis-cluster://$(IFS=,; echo "${nodes[*]}")"
model="share-demo-$$"

echo "== process A (pid of its own): turns 1-4, writing through to $url"
"$share" --url "$url" --model-id "$model" --turns 1-4 "$@"
echo
echo "== process B, started after A exited: turn 5"
"$share" --url "$url" --model-id "$model" --turns 5 "$@"
echo
used="$(for node in "${nodes[@]}"; do redis-cli -h 127.0.0.1 -p "${node#*:}" info memory | grep '^used_memory:' | cut -d: -f2 | tr -d '\r'; done | paste -sd+ | bc)"
echo "== the cluster holds $(( used / 1048576 )) MiB over ${#nodes[@]} nodes"
