#!/usr/bin/env bash
# The main job, end to end on this machine: a container started from an
# image that is not on the node, its layers lazily pulled through ringstar.
#
#   sudo ./demo.sh            install what is missing, build, run, clean up
#   KEEP=1 sudo ./demo.sh     leave the demo's dir (logs, registry) behind
#
# It installs Debian's docker-registry, containerd, runc, busybox-static
# and protoc when missing; builds ringstar; starts a registry, containerd
# and ringstar-snapshotter of its own (nothing of the host's containerd is
# touched); pushes a two-layer busybox image as plain gzip (an image you
# already have), converts it to eStargz with `ringstar image convert`,
# pulls it lazily with `ringstar image rpull`, creates and runs a
# container, prints
# the pull/create/run times and how much of the image was fetched; kills
# ringstar with -9 under a running container and starts it again, which
# takes the mount over (the container keeps its files); then stops
# everything it started.
set -euo pipefail
cd "$(dirname "$0")"
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (FUSE mounts, containerd)" >&2; exit 1; }

say() { printf '\n== %s\n' "$*"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f s", b - a }'; }

. scripts/debian-packages.sh
need_debian_packages docker-registry=docker-registry containerd=containerd runc=runc \
  protoc=protobuf-compiler busybox-static

say "building ringstar (release)"
cargo build --release --locked -q --bin ringstar --bin ringstar-snapshotter
bin=$(pwd)/target/release

dir=$(mktemp -d /tmp/ringstar-demo.XXXXXX)
port=5055
while (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
registry=127.0.0.1:$port
image=$registry/demo/busybox:esgz
ns=ringstar-demo
pids=()

cleanup() {
  set +e
  if [ -S "$dir/containerd.sock" ]; then
    for c in demo live; do
      ctr -a "$dir/containerd.sock" -n $ns task kill -s SIGKILL $c >/dev/null 2>&1
      ctr -a "$dir/containerd.sock" -n $ns task rm -f $c >/dev/null 2>&1
      ctr -a "$dir/containerd.sock" -n $ns container rm $c >/dev/null 2>&1
    done
    ctr -a "$dir/containerd.sock" -n $ns image rm --sync "$image" >/dev/null 2>&1
  fi
  # ringstar first (SIGINT: unmount, clean up, stop its fd keeper), then
  # containerd, then the registry.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    sig=TERM
    [ "${pids[$i]}" = "${ringstar_pid:-}" ] && sig=INT
    kill -$sig "${pids[$i]}" 2>/dev/null
    for _ in $(seq 50); do kill -0 "${pids[$i]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${pids[$i]}" 2>/dev/null && wait "${pids[$i]}" 2>/dev/null
  done
  grep " $dir" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l
  if [ "${KEEP:-0}" = 1 ]; then echo "left in $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT

say "starting a registry ($registry), containerd and ringstar-snapshotter in $dir"
cat >"$dir/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/registry
http:
  addr: $registry
EOF
docker-registry serve "$dir/registry.yml" >"$dir/registry.log" 2>&1 &
pids+=($!)
cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$dir/containerd.sock"
[proxy_plugins.ringstar]
  type = "snapshot"
  address = "$dir/ringstar.sock"
EOF
containerd --config "$dir/containerd.toml" >"$dir/containerd.log" 2>&1 &
pids+=($!)
: >"$dir/ringstar.toml"
start_ringstar() {
  "$bin/ringstar-snapshotter" --root "$dir/ringstar" --address "$dir/ringstar.sock" \
    --config "$dir/ringstar.toml" >>"$dir/ringstar.log" 2>&1 &
  ringstar_pid=$!
  pids+=($!)
}
start_ringstar
for _ in $(seq 100); do
  [ -S "$dir/containerd.sock" ] && [ -S "$dir/ringstar.sock" ] && (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
ctrx() { ctr -a "$dir/containerd.sock" -n $ns "$@"; }

say "pushing a two-layer busybox image (plain gzip) to $registry/demo/busybox:org"
mkdir -p "$dir/l1/bin" "$dir/l1/etc" "$dir/l2/etc"
cp "$(command -v busybox)" "$dir/l1/bin/busybox"
for a in sh cat echo ls; do ln -s busybox "$dir/l1/bin/$a"; done
echo "you will not see this: the top layer deletes it" >"$dir/l1/etc/removed.txt"
echo "hello from a lazily pulled container" >"$dir/l2/etc/hello.txt"
: >"$dir/l2/etc/.wh.removed.txt"
tar --numeric-owner --owner=0 --group=0 -C "$dir/l1" -cf "$dir/l1.tar" .
tar --numeric-owner --owner=0 --group=0 -C "$dir/l2" -cf "$dir/l2.tar" .
"$bin/ringstar" push --format gzip "$registry/demo/busybox:org" "$dir/l1.tar" "$dir/l2.tar" \
  --cmd sh --cmd -c --cmd 'cat /etc/hello.txt; ls /etc/removed.txt 2>/dev/null || echo "whiteout applied"; cat /.stargz-snapshotter/*.json' \
  >"$dir/pushed.json"

say "converting it to eStargz: ringstar image convert $registry/demo/busybox:org $image"
"$bin/ringstar" image convert "$registry/demo/busybox:org" "$image" >"$dir/converted.json"
# Every "size" but the last (the manifest's own) is a layer's.
blob_bytes=$(grep -o '"size":[0-9]*' "$dir/converted.json" | head -n -1 | awk -F: '{s += $2} END {print s}')
echo "converted: $blob_bytes bytes of eStargz layers"

say "lazy pull (ringstar image rpull), create, run"
t0=$(now)
"$bin/ringstar" image rpull --address "$dir/containerd.sock" --namespace $ns "$image" >"$dir/pull.log"
t1=$(now)
ctrx container create --snapshotter ringstar --net-host "$image" demo >/dev/null
t2=$(now)
ctrx task start demo | tee "$dir/run.out"
t3=$(now)

say "result"
echo "pull   $(secs "$t0" "$t1")"
echo "create $(secs "$t1" "$t2")"
echo "run    $(secs "$t2" "$t3")"
echo "total  $(secs "$t0" "$t3")"
grep -q "hello from a lazily pulled container" "$dir/run.out" || { echo "demo.sh: the container did not print its greeting" >&2; exit 1; }
fuse_layers=$(ls "$dir/ringstar/fuse" | wc -l)
echo "layers served by ringstar's FUSE mount: $fuse_layers (of 2)"
[ "$fuse_layers" = 2 ] || { echo "demo.sh: the layers were not mounted lazily" >&2; exit 1; }
echo "ringstar log: $(grep -c 'remote snapshot prepared' "$dir/ringstar.log") remote snapshots prepared"

say "kill -9 ringstar under a running container, start it again"
ctrx run -d --snapshotter ringstar --net-host "$image" live \
  sh -c 'while :; do cat /etc/hello.txt >/dev/null; busybox sleep 1; done' >/dev/null
kill -KILL "$ringstar_pid"
wait "$ringstar_pid" 2>/dev/null || true
served=$(grep -c 'serving the snapshots API' "$dir/ringstar.log")
start_ringstar
for _ in $(seq 100); do
  [ "$(grep -c 'serving the snapshots API' "$dir/ringstar.log")" -gt "$served" ] && break
  sleep 0.1
done
grep 'layer filesystem taken over' "$dir/ringstar.log" | tail -1 | sed 's/.*taken over /taken over: /'
printf 'the running container still reads its files: '
ctrx task exec --exec-id after-kill live cat /etc/hello.txt | tee "$dir/after.out"
grep -q "hello from a lazily pulled container" "$dir/after.out" || { echo "demo.sh: the container lost its files" >&2; exit 1; }
