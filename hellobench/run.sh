#!/usr/bin/env bash
# The full HelloBench matrix on a fresh machine, in one command (as root):
#
#   hellobench/run.sh [hellobench options…]      e.g. --reps 1 --networks wan
#
# Installs what is missing (Debian's containerd, runc, ctr-remote,
# docker-registry, debootstrap, strace, protoc, and the Go sources the
# reference daemon is built from), builds ringstar, builds the reference
# daemon with ../shared/bench-env/10-build-stargz-grpc.sh (the peer), then
# runs hellobench: 4 images × {overlayfs on org, ringstar and the reference
# on esgz-noopt and esgz} × lo and wan × 3 repetitions, results under
# hellobench-results/. Images are built once and cached in
# /var/cache/ringstar-hellobench.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "hellobench/run.sh: run as root" >&2; exit 1; }
shared=$(realpath "${RINGSTAR_SHARED:-../shared}")
bench_env=$shared/bench-env

. scripts/debian-packages.sh
need_debian_packages "${RINGSTAR_RUNTIME_PACKAGES[@]}" debootstrap=debootstrap strace=strace

peer=${PEER:-/tmp/benchenv/bin/containerd-stargz-grpc}
if [ ! -x "$peer" ]; then
  echo "hellobench/run.sh: building the reference daemon (peer) from Debian's sources"
  "$bench_env/00-install.sh" >/dev/null
  "$bench_env/10-build-stargz-grpc.sh" >/dev/null
fi

cargo build --release --locked -q -p ringstar-hellobench -p ringstar-daemon
exec target/release/hellobench --peer "$peer" "$@"
