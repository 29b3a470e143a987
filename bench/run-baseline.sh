#!/usr/bin/env bash
# Runs presets against the null sink and against Creek, one after the other in one run on this
# machine, and writes bench/results/<date>-<host>.{jsonl,md}. Release builds; fresh data
# directories per run; nothing else should be running.
# Usage: bash bench/run-baseline.sh [preset ...]   (default: every preset)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release -p creek -p creek-bench
bench="$target/release/creek-bench"
creek="$target/release/creek"
presets=("$@")
((${#presets[@]})) || mapfile -t presets < <("$bench" presets | awk '{print $1}')
mkdir -p bench/results
stamp="$(date -u +%F)-$(hostname -s)"
out="bench/results/$stamp.jsonl"
: >"$out"
work="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

wait_ready() { # file
  for _ in $(seq 100); do grep -q "ready kafka=" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "server did not become ready: $(cat "$1")" >&2; return 1
}

for preset in "${presets[@]}"; do
  for label in sink creek; do
    if [[ $label == sink && ($preset == idempotent-16p || $preset == txn-16p) ]]; then
      echo "== $preset: skipped on the sink (it has no producer ids or transactions)" >&2
      continue
    fi
    rm -rf "$work/data" "$work/ready"
    if [[ $label == sink ]]; then
      "$bench" sink --listen 127.0.0.1:19192 --data "$work/data" >"$work/ready" 2>&1 &
      addr=127.0.0.1:19192
    else
      "$creek" --listen 127.0.0.1:19093 --data-dir "$work/data" >"$work/ready" 2>"$work/creek.log" &
      addr=127.0.0.1:19093
    fi
    pid=$!
    wait_ready "$work/ready"
    echo "== $preset on $label ($addr, pid $pid)" >&2
    "$bench" run --preset "$preset" --bootstrap "$addr" --broker-pid "$pid" --label "$label" --json | tee -a "$out"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
"$bench" table "$out" >"bench/results/$stamp.md"
echo "results: $out and bench/results/$stamp.md" >&2
