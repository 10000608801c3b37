#!/bin/bash
# Runs the fuzz targets with cargo-fuzz on the stable toolchain.
#   fuzz/run.sh [SECONDS] [TARGET...]    (default: 60 s each, every target)
# A crash leaves its input in fuzz/artifacts/TARGET/; copy it into
# fuzz/regressions/TARGET/ so core/tests/fuzz_regressions.rs keeps it.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(footer toc tar_header layer_open chunk_inflate layer_toc exec_file fuse_request registry_answer token_answer docker_config config image_layers)
python3 seed-corpus.py >/dev/null
# cargo-fuzz passes nightly-only flags (-Zsanitizer); the stable compiler
# accepts them with RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== fuzzing $t for ${secs}s"
  cargo fuzz run "$t" "corpus/$t" "regressions/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 -max_len=131072 -print_final_stats=1 2>&1 |
    grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|==|INFO: seed corpus|.*(panicked|ERROR|SUMMARY|Test unit written))" || true
  # grep hides the run's status; the pipeline above must not, so re-check.
  if compgen -G "artifacts/$t/*-*" >/dev/null; then
    echo "fuzz target $t found a failing input: see fuzz/artifacts/$t" >&2
    exit 1
  fi
done
