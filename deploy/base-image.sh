#!/usr/bin/env bash
# A Debian bookworm base image with python3, python3-venv and ca-certificates, made with
# debootstrap from a Debian mirror (for machines that reach no container registry). Needs root.
#   deploy/base-image.sh [IMAGE] [MIRROR]
set -euo pipefail
image="${1:-localhost/busdx-base:bookworm}"
mirror="${2:-http://deb.debian.org/debian}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$(cd "$(dirname "$0")" && pwd)/containers.conf}"
if podman image exists "$image"; then echo "$image exists"; exit 0; fi
command -v debootstrap >/dev/null || { echo "debootstrap is needed (apt-get install debootstrap)"; exit 2; }
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm into $root (a few minutes)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm \
  "$root" "$mirror" >/dev/null
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$image"
echo "built $image"
