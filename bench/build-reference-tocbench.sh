#!/usr/bin/env bash
# Builds the reference's TOC-open benchmark (shared/bench-env/anchors/
# tocbench: stargz-snapshotter's metadata/memory.NewReader on a local blob)
# from Debian's Go sources, for toc-bench to run in the same session.
#   bench/build-reference-tocbench.sh [OUT]   (default target/tools/tocbench)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-target/tools/tocbench}")
shared=$(realpath "${RINGSTAR_SHARED:-../shared}")
command -v go >/dev/null || apt-get install -y -q golang-go >/dev/null
[ -d /usr/share/gocode/src/github.com/containerd/stargz-snapshotter/metadata ] ||
  apt-get install -y -q golang-github-containerd-stargz-snapshotter-dev >/dev/null
gp=$(mktemp -d)
trap 'rm -rf "$gp"' EXIT
mkdir -p "$gp/src/tocbench" "$(dirname "$out")"
cp "$shared/bench-env/anchors/tocbench/main.go" "$gp/src/tocbench/"
(cd "$gp/src/tocbench" && GO111MODULE=off GOPATH="$gp:/usr/share/gocode" GOCACHE="$gp/cache" GOFLAGS= go build -o "$out" .)
echo "built $out"
