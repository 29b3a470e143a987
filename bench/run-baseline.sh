#!/usr/bin/env bash
# Runs presets against the null sink and against Creek, one after the other in one run on this
# machine, and writes bench/results/<date>-<host>.{jsonl,md}. Release builds; fresh data
# directories per run; nothing else should be running.
# Usage: bash bench/run-baseline.sh [preset ...]   (default: every preset)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/servers.sh"
presets=("$@")
((${#presets[@]})) || mapfile -t presets < <("$bench" presets | awk '{print $1}')
stamp="$(date -u +%F)-$(hostname -s)"
out="bench/results/$stamp.jsonl"
: >"$out"
for preset in "${presets[@]}"; do
  for label in sink creek; do
    if [[ $label == sink && ($preset == idempotent-16p || $preset == txn-16p) ]]; then
      echo "== $preset: skipped on the sink (it has no producer ids or transactions)" >&2
      continue
    fi
    start_server "$label"
    echo "== $preset on $label ($addr, pid $pid)" >&2
    "$bench" run --preset "$preset" --bootstrap "$addr" --broker-pid "$pid" --label "$label" --json | tee -a "$out"
    stop_server
  done
done
"$bench" table "$out" >"bench/results/$stamp.md"
echo "results: $out and bench/results/$stamp.md" >&2
