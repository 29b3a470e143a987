#!/usr/bin/env bash
# Alternates two presets on the null sink and on Creek for several rounds (a fresh server and data
# directory per run) and prints each broker's per-round ratio of the first preset's produce MB/s
# to the second's, with the median. Single runs on a shared 2-core machine vary by ±20%; this is
# how the "1,000 partitions keyed vs 16 partitions" ratio is measured. Nothing else should run.
# Usage: bash bench/run-rounds.sh [ROUNDS [MESSAGES [OF [TO]]]]
#        (default: 5 rounds of 3,000,000 messages, p1000-keyed against acks1-16p)
set -euo pipefail
rounds="${1:-5}"; messages="${2:-3000000}"; of="${3:-p1000-keyed}"; to="${4:-acks1-16p}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release -p creek -p creek-bench
bench="$target/release/creek-bench"
creek="$target/release/creek"
mkdir -p bench/results
out="bench/results/$(date -u +%F)-$(hostname -s)-rounds.jsonl"
: >"$out"
work="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

wait_ready() { # file
  for _ in $(seq 100); do grep -q "ready kafka=" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "server did not become ready: $(cat "$1")" >&2; return 1
}

for round in $(seq "$rounds"); do
  for label in sink creek; do
    for preset in "$to" "$of"; do
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
      echo "== round $round: $preset on $label" >&2
      "$bench" run --preset "$preset" --messages "$messages" --bootstrap "$addr" --broker-pid "$pid" \
        --label "$label" --json >>"$out"
      kill "$pid"; wait "$pid" 2>/dev/null || true
    done
  done
done
"$bench" rounds "$out" --of "$of" --to "$to" | tee "${out%.jsonl}.md"
echo "results: $out" >&2
