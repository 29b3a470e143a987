#!/usr/bin/env bash
# Starts or stops an N-node creek cluster on this machine (loopback only), to try replication.
#
#   deploy/local-cluster.sh start N DIR   start nodes 1..N with data in DIR/node-<id>; prints one
#                                         line per node: `node <id> pid <pid> kafka 127.0.0.1:<port>`
#   deploy/local-cluster.sh add DIR       start one more node (the next id) that joins the running
#                                         cluster as a new broker; prints its `node ...` line
#   deploy/local-cluster.sh stop DIR      SIGTERM each node recorded in DIR (SIGKILL after 60 s)
#
# Added nodes are not in internal.peers (recorded in DIR/peers): they announce their own
# internal listener and join. Decommission one with UnregisterBroker (Kafka's
# `kafka-cluster.sh unregister --bootstrap-server ... --id N`): its replicas move to the others,
# then it leaves Metadata and can be stopped.
#
# Data of node <id> is in DIR/node-<id>/data. Kafka ports are CREEK_KAFKA_BASE_PORT (9092) .. +N-1, internal Raft/RPC ports
# CREEK_INTERNAL_BASE_PORT (19092) .. +N-1. Node <id> logs to DIR/node-<id>/creek.log and records
# its pid in DIR/node-<id>/pid. The binary is $CREEK_BIN, else target/release/creek of this
# repository, else `creek` on PATH. Only processes whose pids this script recorded are signalled.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ready_timeout_s="${CREEK_READY_TIMEOUT_S:-30}"
# A clean stop closes every log (a few fsyncs each): about 10 s for 1,000 partitions per node
# on a VM disk. Like the systemd unit, wait a minute before SIGKILL.
stop_timeout_s="${CREEK_STOP_TIMEOUT_S:-60}"

fail() { echo "local-cluster.sh: ERROR: $*" >&2; exit 1; }
usage() { fail "usage: $0 start N DIR | $0 add DIR | $0 stop DIR"; }

creek_bin() {
  if [[ -n "${CREEK_BIN:-}" ]]; then
    [[ -x "$CREEK_BIN" ]] || fail "CREEK_BIN=$CREEK_BIN is not an executable file"
    echo "$CREEK_BIN"
  elif [[ -x "$repo/target/release/creek" ]]; then
    echo "$repo/target/release/creek"
  elif command -v creek >/dev/null; then
    command -v creek
  else
    fail "no creek binary: build it with \`cargo build --release -p creek\` in $repo (or set CREEK_BIN)"
  fi
}

# True if the pid recorded in $1 (DIR/node-<id>/pid) is a live creek serving that node's directory:
# a zombie, or a pid reused by another program, does not count (and is never signalled).
alive() {
  local pidfile="$1" pid state cmdline
  [[ -f "$pidfile" ]] || return 1
  pid="$(cat "$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  [[ -r "/proc/$pid/stat" ]] || return 0 # no /proc: trust kill -0
  state="$(sed 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)"
  [[ "$state" != Z ]] || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  [[ "$cmdline" == *"--data-dir $(dirname "$pidfile")/data "* ]]
}

start() {
  local n="$1" dir="$2" bin kafka_base internal_base peers="" id
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || fail "N must be a positive number, not \`$n\`"
  bin="$(creek_bin)"
  kafka_base="${CREEK_KAFKA_BASE_PORT:-9092}"
  internal_base="${CREEK_INTERNAL_BASE_PORT:-19092}"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  for pidfile in "$dir"/node-*/pid; do
    if alive "$pidfile"; then
      fail "a cluster already runs in $dir (pid $(cat "$pidfile") in $pidfile); stop it first: $0 stop $dir"
    fi
  done
  for ((id = 1; id <= n; id++)); do
    peers+="${peers:+,}$id@127.0.0.1:$((internal_base + id - 1))"
  done
  echo "$peers" >"$dir/peers"

  for ((id = 1; id <= n; id++)); do
    launch "$bin" "$dir" "$id" "$peers"
  done
  local deadline=$((SECONDS + ready_timeout_s))
  for ((id = 1; id <= n; id++)); do
    await_ready "$dir" "$id" "$deadline"
  done
  for ((id = 1; id <= n; id++)); do
    echo "node $id pid $(cat "$dir/node-$id/pid") kafka 127.0.0.1:$((kafka_base + id - 1))"
  done
}

declare -a log_start # per node: where this start's output begins in its (appended) log

# Starts node $3 of the cluster in $2 with internal.peers $4 (and more `--set` arguments after).
launch() {
  local bin="$1" dir="$2" id="$3" peers="$4" node_dir kafka
  shift 4
  node_dir="$dir/node-$id"
  kafka="127.0.0.1:$((${CREEK_KAFKA_BASE_PORT:-9092} + id - 1))"
  mkdir -p "$node_dir"
  rm -f "$node_dir/pid"
  log_start[id]="$(stat -c %s "$node_dir/creek.log" 2>/dev/null || echo 0)"
  # stdout (the ready line) and stderr (logs) both go to the log file.
  NO_COLOR=1 "$bin" serve --node-id "$id" --listen "$kafka" --advertised-listener "$kafka" --data-dir "$node_dir/data" \
    --set "internal.peers=$peers" "$@" >>"$node_dir/creek.log" 2>&1 </dev/null &
  echo "$!" >"$node_dir/pid"
}

# Waits until node $2 of the cluster in $1 is ready, or stops the cluster and fails at time $3.
await_ready() {
  local dir="$1" id="$2" deadline="$3" node_dir pid
  node_dir="$dir/node-$id"
  pid="$(cat "$node_dir/pid")"
  until tail -c "+$((log_start[id] + 1))" "$node_dir/creek.log" | grep -q "^creek ready kafka="; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "local-cluster.sh: node $id (pid $pid) exited before it was ready; $node_dir/creek.log ends with:" >&2
      tail -n 30 "$node_dir/creek.log" >&2
      stop "$dir" >/dev/null
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "local-cluster.sh: node $id (pid $pid) not ready within ${ready_timeout_s} s; $node_dir/creek.log ends with:" >&2
      tail -n 30 "$node_dir/creek.log" >&2
      stop "$dir" >/dev/null
      exit 1
    fi
    sleep 0.1
  done
}

# Starts one more node, the next id, which joins the running cluster in $1.
add() {
  local dir="$1" bin peers id=0 n
  [[ -f "$dir/peers" ]] || fail "$dir holds no cluster started by this script (no $dir/peers)"
  dir="$(cd "$dir" && pwd)"
  bin="$(creek_bin)"
  peers="$(cat "$dir/peers")"
  for node_dir in "$dir"/node-*; do
    n="${node_dir##*/node-}"
    [[ "$n" =~ ^[0-9]+$ ]] && ((n > id)) && id="$n"
  done
  id=$((id + 1))
  launch "$bin" "$dir" "$id" "$peers" --set "internal.listener=127.0.0.1:$((${CREEK_INTERNAL_BASE_PORT:-19092} + id - 1))"
  await_ready "$dir" "$id" $((SECONDS + ready_timeout_s))
  echo "node $id pid $(cat "$dir/node-$id/pid") kafka 127.0.0.1:$((${CREEK_KAFKA_BASE_PORT:-9092} + id - 1))"
}

stop() {
  local dir="$1" pidfile pid waited
  local -a running=()
  [[ -d "$dir" ]] || { echo "local-cluster.sh: $dir does not exist; nothing to stop"; return 0; }
  # SIGTERM every node first, so they shut down in parallel; then wait for each.
  for pidfile in "$dir"/node-*/pid; do
    if alive "$pidfile"; then
      kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
      running+=("$pidfile")
    else
      rm -f "$pidfile"
    fi
  done
  for pidfile in "${running[@]}"; do
    pid="$(cat "$pidfile")"
    waited=0
    while alive "$pidfile" && ((waited < stop_timeout_s * 10)); do
      sleep 0.1
      waited=$((waited + 1))
    done
    if alive "$pidfile"; then
      echo "local-cluster.sh: pid $pid ($pidfile) ignored SIGTERM for ${stop_timeout_s} s; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      waited=0
      while alive "$pidfile" && ((waited < 50)); do
        sleep 0.1
        waited=$((waited + 1))
      done
    fi
    echo "stopped pid $pid ($pidfile)"
    rm -f "$pidfile"
  done
}

case "${1:-}" in
  start) (($# == 3)) || usage; start "$2" "$3" ;;
  add) (($# == 2)) || usage; add "$2" ;;
  stop) (($# == 2)) || usage; stop "$2" ;;
  *) usage ;;
esac
