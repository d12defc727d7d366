#!/usr/bin/env bash
# Installs the Debian 12 packages kvpage builds with, as root, from Debian's
# archive, plus any package named as an argument (tools/test.sh clang asks
# for clang). Idempotent: silent when everything is already there; otherwise
# it says what it installs and shows apt's progress, on stderr.
set -euo pipefail

packages=(
  cmake ninja-build g++ git
  libabsl-dev libmimalloc-dev libxxhash-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev nlohmann-json3-dev libexpat1-dev pkg-config
  python3-dev python3-pybind11 python3-numpy python3-pytest
  libhiredis-dev redis-server redis-tools
  "$@"
)
# The Rust crate's toolchain: Debian's cargo where no cargo is on PATH.
command -v cargo >/dev/null 2>&1 || packages+=(cargo)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "kvpage setup: missing Debian packages: ${missing[*]}; run as root or install them" >&2
  exit 1
fi
# apt's own lines (to stderr, so that a caller's stdout stays its report) show
# the progress: on a fresh machine this takes a few minutes.
echo "kvpage setup: installing ${missing[*]} and their dependencies" >&2
export DEBIAN_FRONTEND=noninteractive
echo "kvpage setup: apt-get update" >&2
apt-get update -q >&2
echo "kvpage setup: apt-get install" >&2
apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
echo "kvpage setup: done" >&2
