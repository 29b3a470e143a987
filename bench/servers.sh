# Shared by run-baseline.sh and run-rounds.sh (sourced, not run): builds the release binaries and
# starts the null sink or Creek on a fresh data directory.
# After sourcing: $bench, $creek, $work (removed on exit); `start_server sink|creek` sets $addr
# and $pid once the server is ready; `stop_server` stops it.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release -p creek -p creek-bench
bench="$target/release/creek-bench"
creek="$target/release/creek"
mkdir -p bench/results
work="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

wait_ready() { # file
  for _ in $(seq 100); do grep -q "ready kafka=" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "server did not become ready: $(cat "$1")" >&2; return 1
}

start_server() { # sink|creek
  rm -rf "$work/data" "$work/ready"
  if [[ $1 == sink ]]; then
    "$bench" sink --listen 127.0.0.1:19192 --data "$work/data" >"$work/ready" 2>&1 &
    addr=127.0.0.1:19192
  else
    "$creek" --listen 127.0.0.1:19093 --data-dir "$work/data" >"$work/ready" 2>"$work/creek.log" &
    addr=127.0.0.1:19093
  fi
  pid=$!
  wait_ready "$work/ready"
}

stop_server() {
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
