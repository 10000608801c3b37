#!/usr/bin/env bash
# Images no one here wrote, for the image tools' end-to-end tests, and the
# reference daemon to pull them with (both cached under target/):
#   target/bench-images/oci/minbase   Debian bookworm minbase by debootstrap,
#                                     written by shared/bench-env/mkoci.py
#                                     (tag org, `sh -c 'echo hello'`)
#   target/tools/containerd-stargz-grpc
#                                     the reference snapshotter, built from
#                                     Debian's Go sources by
#                                     shared/bench-env/10-build-stargz-grpc.sh
# Prints the two exports test.sh sets. Needs root and apt (installs
# debootstrap and the Go sources when missing).
#
#   scripts/bench-images.sh SHARED_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
shared=$(realpath "$1")
. scripts/debian-packages.sh
need_debian_packages debootstrap=debootstrap go=golang-go \
  golang-github-containerd-stargz-snapshotter-dev >&2

images=$PWD/target/bench-images
mkdir -p "$images/oci" target/tools
if [ ! -f "$images/oci/minbase.done" ]; then
  rootfs=$(mktemp -d /tmp/rs-minbase.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  mirror=${MIRROR:-http://deb.debian.org/debian}
  echo "debootstrap minbase bookworm from $mirror" >&2
  debootstrap --variant=minbase bookworm "$rootfs/base" "$mirror" > "$images/debootstrap.log" 2>&1 ||
    { tail -20 "$images/debootstrap.log" >&2; exit 1; }
  rm -rf "$rootfs"/base/var/cache/apt/*.bin "$rootfs"/base/var/cache/apt/archives/*.deb \
    "$rootfs"/base/var/lib/apt/lists/* "$rootfs"/base/var/log/apt/*
  : > "$rootfs/base/etc/resolv.conf"
  rm -rf "$images/oci/minbase"
  python3 "$shared/bench-env/mkoci.py" --out "$images/oci/minbase" --tag org \
    --cmd '["sh","-c","echo hello"]' "$rootfs/base" >&2
  touch "$images/oci/minbase.done"
fi

reference=$PWD/target/tools/containerd-stargz-grpc
if [ ! -x "$reference" ]; then
  echo "building the reference daemon (containerd-stargz-grpc)" >&2
  build=$PWD/target/tools/stargz-build
  BENCH=$build bash "$shared/bench-env/10-build-stargz-grpc.sh" > "$build.log" 2>&1 ||
    { tail -20 "$build.log" >&2; exit 1; }
  cp "$build/bin/containerd-stargz-grpc" "$reference"
fi
echo "export RINGSTAR_BENCH_OCI=$images/oci"
echo "export STARGZ_REFERENCE_BIN=$reference"
