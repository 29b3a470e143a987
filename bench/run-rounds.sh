#!/usr/bin/env bash
# Alternates two presets on the null sink and on Creek for several rounds (a fresh server and data
# directory per run) and prints each broker's per-round ratio of the first preset's produce MB/s
# to the second's, with the median. Single runs on a shared 2-core machine vary by ±20%; this is
# how the "1,000 partitions keyed vs 16 partitions" ratio is measured. Nothing else should run.
# Usage: bash bench/run-rounds.sh [ROUNDS [MESSAGES [OF [TO]]]]
#        (default: 5 rounds of 3,000,000 messages, p1000-keyed against acks1-16p)
set -euo pipefail
rounds="${1:-5}"; messages="${2:-3000000}"; of="${3:-p1000-keyed}"; to="${4:-acks1-16p}"
source "$(dirname "${BASH_SOURCE[0]}")/servers.sh"
out="bench/results/$(date -u +%F)-$(hostname -s)-rounds.jsonl"
: >"$out"
for round in $(seq "$rounds"); do
  for label in sink creek; do
    for preset in "$to" "$of"; do
      start_server "$label"
      echo "== round $round: $preset on $label" >&2
      "$bench" run --preset "$preset" --messages "$messages" --bootstrap "$addr" --broker-pid "$pid" \
        --label "$label" --json >>"$out"
      stop_server
    done
  done
done
"$bench" rounds "$out" --of "$of" --to "$to" | tee "${out%.jsonl}.md"
echo "results: $out" >&2
