#!/bin/bash
# A long fuzz campaign: every target for SECONDS, JOBS targets at a time,
# and a markdown table of what each run did (docs/fuzzing.md records one).
#   fuzz/campaign.sh [SECONDS] [JOBS] [TARGET...]   (default 600 s, 2 jobs, all)
# Logs go to fuzz/campaign/TARGET.log; the table to fuzz/campaign/table.md.
# Exits non-zero if any run left a crash, leak, OOM or timeout.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
jobs=${2:-2}
[ $# -gt 0 ] && shift
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^ringstar-fuzz$')
python3 seed-corpus.py >/dev/null
export RUSTC_BOOTSTRAP=1
cargo fuzz build >/dev/null 2>&1 || cargo fuzz build
mkdir -p campaign
one() {
  local t=$1
  mkdir -p "corpus/$t"
  cargo fuzz run "$t" "corpus/$t" "regressions/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
    -max_len=1048576 -print_final_stats=1 >"campaign/$t.log" 2>&1 || true
}
export -f one
export secs
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'one {}'
{
  echo "| target | seconds | executions | exec/s | coverage (edges) | features | corpus | crashes |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  for t in "${targets[@]}"; do
    log="campaign/$t.log"
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
    crashes=$(compgen -G "artifacts/$t/*-*" | wc -l || true)
    echo "| \`$t\` | $secs | ${execs:-?} | ${rate:-?} | ${cov:-?} | ${ft:-?} | ${corp:-?} | $crashes |"
  done
} > campaign/table.md
cat campaign/table.md
! compgen -G "artifacts/*/*-*" >/dev/null
