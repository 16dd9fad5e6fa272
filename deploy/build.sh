#!/usr/bin/env bash
# Build the serving image: the wheels of busdx's serving set (no torch) from this checkout,
# then the image from deploy/Containerfile, then its size.
#   deploy/build.sh [IMAGE] [BASE]
set -euo pipefail
cd "$(dirname "$0")/.."
image="${1:-localhost/busdx:latest}"
base="${2:-localhost/busdx-base:bookworm}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/containers.conf}"
python="${PYTHON:-python3}"
rm -rf dist/wheels
"$python" -m pip wheel --quiet --wheel-dir dist/wheels .
# The install step below mounts the wheels, and a mount is not part of a layer's cache key: a
# host that built the image before would reuse its old install, with an older busdx beside newer
# models. Their checksums are copied in first, so new wheels always mean a new install.
(cd dist/wheels && sha256sum -- *.whl > SHA256SUMS)
podman build --format docker --build-arg BASE="$base" -f deploy/Containerfile -t "$image" .
podman image inspect "$image" --format '{{.Size}}' \
  | awk '{printf "image size: %.0f MB\n", $1 / 1e6}'
