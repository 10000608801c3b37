#!/usr/bin/env bash
# Runs every test ringstar has: formatting, lints, unit tests, the eStargz
# conformance folder, round trips (also through the reference eStargz
# reader), fuzz regressions, and a short fuzz run (installing cargo-fuzz
# when missing). Every step runs even when an earlier one failed; the exit
# status is non-zero if any did. Needs ../shared beside the checkout (or RINGSTAR_SHARED).
#
#   ./test.sh                 everything
#   FUZZ_SECONDS=0 ./test.sh  skip the fuzz run
set -euo pipefail
cd "$(dirname "$0")"
# The tests make files that containerd, runc and the registry read: give
# them the umask a login shell has, whatever the caller's.
umask 022
shared=$(realpath "${RINGSTAR_SHARED:-../shared}")
[ -d "$shared/testdata/estargz" ] || { echo "test.sh: no conformance data at $shared/testdata/estargz" >&2; exit 1; }
export RINGSTAR_TESTDATA="$shared/testdata/estargz"

# One build from a clean tree: incremental caches only help repeated local
# builds, and on a busy machine they filled the disk (21 GB in a session).
export CARGO_INCREMENTAL=0

# Each step says when it started (seconds into the run): CI has a budget.
step() { echo; echo "== [${SECONDS}s] $*"; }
failed=()

# The reference eStargz reader (Go, from Debian's sources), so round-trip
# tests prove our writer's layers open in the reference too.
esgz=target/tools/esgz-check
if [ ! -x "$esgz" ]; then
  step "building the reference eStargz reader"
  mkdir -p target/tools
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/github.com/containerd/stargz-snapshotter/estargz ]; then
      apt-get update -q >/dev/null
    fi
    bash "$shared/tools/build-esgz-check.sh" "$esgz"
  else
    echo "not root or no apt-get: round trips run without the reference reader"
  fi
fi
[ -x "$esgz" ] && ESGZ_CHECK=$(realpath "$esgz") && export ESGZ_CHECK

# Debian's parts the tests run for real: docker-registry (fetcher, layer
# filesystem), containerd + runc + ctr-remote (the snapshotter end to end),
# busybox-static (the test images), protoc (containerd's snapshots API),
# podman (ringstar-store, the additional layer store),
# valgrind (the performance gate counts instructions with callgrind).
. scripts/debian-packages.sh
step "Debian packages"
need_debian_packages "${RINGSTAR_RUNTIME_PACKAGES[@]}" valgrind=valgrind ||
  echo "tests needing them will fail" >&2

# An image no one here wrote (Debian minbase by debootstrap, written by
# shared/bench-env's mkoci.py) and the reference daemon built from Debian's
# sources, for the image tools' tests (cached under target/: ~2 min once).
step "bench images and the reference daemon (scripts/bench-images.sh)"
if exports=$(scripts/bench-images.sh "$shared"); then
  eval "$exports"
else
  echo "tests needing them will fail" >&2
fi

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "structural checks (docs/architecture.md)"
cargo run -q --locked -p ringstar-structure || failed+=("structural checks")

# A short fuzz pass over every target, so a fresh CI machine fuzzes too
# (cargo-fuzz is installed when missing: ~3 min once).
fuzz_seconds=${FUZZ_SECONDS:-15}
if [ "$fuzz_seconds" -gt 0 ]; then
  if ! cargo fuzz --version >/dev/null 2>&1; then
    step "installing cargo-fuzz"
    cargo install cargo-fuzz --locked -q || echo "cargo-fuzz did not install" >&2
  fi
  step "fuzzing each target for ${fuzz_seconds}s"
  bash fuzz/run.sh "$fuzz_seconds" || failed+=("fuzz run")
else
  step "fuzz run skipped (FUZZ_SECONDS=0)"
fi

step "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# Every test binary runs even when one fails, so one failure hides none.
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The FUSE transport tests once more the way a background job starts
# them, with SIGINT ignored (inherited by cargo, the tests and their
# children): the interrupt tests must set up the signals they send.
step "FUSE transport tests with SIGINT ignored"
# (--workspace, as above: the same features, so nothing is built again.)
(trap '' INT; cargo test --workspace --locked --test transport) || status=1
set -e
[ "$status" = 0 ] || failed+=("cargo test")
step "summary"
# One closing line over every test binary of the workspace run (cargo's
# last line is a doc-test run that may well hold no test).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\nsummary: %d passed, %d failed\n", p, f }' "$log"

# What follows runs whatever the tests said, so a failure there hides
# nothing after it; the script still exits non-zero at the end.
# The startup benchmark's quick mode, as a smoke test of the whole path
# (build the image, convert and optimize it with ringstar's tools, pull
# and run it through overlayfs and ringstar, lazily or it fails), on the
# test build: its times are not figures, so it needs no release build of
# its own (docs/hellobench.md has the real runs).
step "hellobench --quick (test build)"
cargo build --workspace --locked -q --bins
target/debug/hellobench --quick --out target/hellobench-quick --cache target/hellobench-cache ||
  failed+=("hellobench --quick")

# The performance gate: instruction counts of the hot paths against
# bench/baseline.json (docs/benchmarks.md); PERF_GATE=0 skips it.
if [ "${PERF_GATE:-1}" != 0 ]; then
  step "performance gate (callgrind instruction counts vs bench/baseline.json)"
  cargo build --release --locked -q -p ringstar-bench --bin perf-gate
  target/release/perf-gate || failed+=("performance gate")
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo; echo "test.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo; echo "test.sh: all passed"
