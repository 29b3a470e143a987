#!/usr/bin/env bash
# kcat (Debian's, on librdkafka 2.0.2) against a running Creek broker: produce with every codec, read back byte-exact.
#
# Usage: kcat_client.sh --bootstrap HOST:PORT --topic NAME [--records N] [--codecs none,gzip,...]
#
# kcat has no admin API: the topic is auto-created by the first produce's Metadata request, so the
# broker must run with auto.create.topics.enable=true and num.partitions=1, and there is no
# DescribeConfigs step. kcat cannot set per-record timestamps or per-record headers: every record of a
# run carries the same two headers (same key, one value not UTF-8), and timestamps are checked to lie
# inside the wall-clock window of their produce call. Offsets are not reported by kcat -P, so they are
# read with kcat -Q (ListOffsets, timestamp -1 = latest) before and after each run.
# Values hold bytes that are not UTF-8 but no NUL: kcat's line input cannot carry one through a key.
set -euo pipefail

bootstrap="" topic="" records=20 codecs="none,gzip,snappy,lz4,zstd"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bootstrap) bootstrap="$2"; shift 2 ;;
    --topic) topic="$2"; shift 2 ;;
    --records) records="$2"; shift 2 ;;
    --codecs) codecs="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ -n "$bootstrap" && -n "$topic" ]] || { echo "usage: $0 --bootstrap HOST:PORT --topic NAME" >&2; exit 2; }
command -v kcat >/dev/null || { echo "FAIL kcat: kcat is not installed: run tests/setup.sh" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fail() { echo "FAIL kcat: $*" >&2; exit 1; }
now_ms() { date +%s%3N; }
common=(-b "$bootstrap" -m 30 -q -X api.version.request=true)

# Latest (-1), earliest (-2) or by-timestamp offset of partition 0, through ListOffsets.
query_offset() {
  local out
  out="$(kcat "${common[@]}" -Q -t "$topic:0:$1")" || fail "kcat -Q $topic:0:$1 failed"
  # Output: "<topic> [0] offset <n>"
  awk '{print $NF}' <<<"$out"
}

# Writes run input (key<TAB>value lines) and the consume output expected for it with FORMAT below.
FORMAT='%o|%K|%k|%S|%s|%h\n'
write_run() { # codec first_offset from_index input_file expected_file
  local codec="$1" base="$2" from="$3" input="$4" expected="$5" i keyp valp value_len
  : >"$input"; : >"$expected"
  for ((i = 0; i < records; i++)); do
    keyp="key-$codec-$i-"
    valp="value-$codec-$i-"
    local pad
    pad="$(head -c $((i * 37)) /dev/zero | tr '\0' a)"
    if ((i == 3)); then
      # Tombstone: with -Z an empty value is sent as NULL, and printed as "NULL" with length -1.
      printf '%s\xff\xfe\x80\t\n' "$keyp" >>"$input"
      if ((i >= from)); then
        printf '%d|%d|%s\xff\xfe\x80|-1|NULL|h=first-%s,h=\xff\x01\n' \
          $((base + i)) $((${#keyp} + 3)) "$keyp" "$codec" >>"$expected"
      fi
    else
      printf '%s\xff\xfe\x80\t%s\xc3\x28\xff%s\n' "$keyp" "$valp" "$pad" >>"$input"
      value_len=$((${#valp} + 3 + ${#pad}))
      if ((i >= from)); then
        printf '%d|%d|%s\xff\xfe\x80|%d|%s\xc3\x28\xff%s|h=first-%s,h=\xff\x01\n' \
          $((base + i)) $((${#keyp} + 3)) "$keyp" "$value_len" "$valp" "$pad" "$codec" >>"$expected"
      fi
    fi
  done
}

consume() { # start count output_file format
  kcat "${common[@]}" -C -t "$topic" -p 0 -o "$1" -c "$2" -e -Z -f "$4" >"$3" \
    || fail "kcat -C from offset $1 failed"
}

produced=0 consumed=0 expected_base=0
declare -a run_codecs=() run_bases=() run_t0=() run_t1=()
IFS=',' read -r -a codec_list <<<"$codecs"
for codec in "${codec_list[@]}"; do
  write_run "$codec" "$expected_base" 0 "$work/in-$codec" "$work/want-$codec"
  t0="$(now_ms)"
  kcat "${common[@]}" -P -t "$topic" -p 0 -z "$codec" -K '\t' -Z \
    -H "h=first-$codec" -H "h=$(printf '\xff\x01')" \
    -X enable.idempotence=false -X acks=all -X linger.ms=50 -X allow.auto.create.topics=true \
    -l "$work/in-$codec" || fail "$codec: kcat -P failed"
  t1="$(now_ms)"
  latest="$(query_offset -1)"
  [[ "$latest" == $((expected_base + records)) ]] \
    || fail "$codec: latest offset after produce is $latest, want $((expected_base + records))"
  run_codecs+=("$codec"); run_bases+=("$expected_base"); run_t0+=("$t0"); run_t1+=("$t1")
  expected_base=$((expected_base + records))
  produced=$((produced + records))
done

meta="$(kcat "${common[@]}" -L -t "$topic")" || fail "kcat -L failed"
grep -q "topic \"$topic\" with 1 partitions" <<<"$meta" || fail "metadata: $meta"

mid=$((records / 2))
for idx in "${!run_codecs[@]}"; do
  codec="${run_codecs[$idx]}" base="${run_bases[$idx]}"
  consume "$base" "$records" "$work/got-$codec" "$FORMAT"
  cmp "$work/want-$codec" "$work/got-$codec" \
    || fail "$codec from $base: records differ (want vs got):$(diff <(od -c "$work/want-$codec") <(od -c "$work/got-$codec") | head -20)"
  write_run "$codec" "$base" "$mid" "$work/in-mid" "$work/want-mid"
  consume $((base + mid)) $((records - mid)) "$work/got-mid" "$FORMAT"
  cmp "$work/want-mid" "$work/got-mid" \
    || fail "$codec from $((base + mid)): records differ:$(diff <(od -c "$work/want-mid") <(od -c "$work/got-mid") | head -20)"
  consumed=$((consumed + records + records - mid))

  # CreateTime stamps set by librdkafka at send time: inside the produce call's window, non-decreasing.
  consume "$base" "$records" "$work/ts-$codec" '%o %T\n'
  prev=0 n=0
  while read -r off ts; do
    [[ "$off" == $((base + n)) ]] || fail "$codec: offset $off, want $((base + n))"
    ((ts >= run_t0[idx] - 1000 && ts <= run_t1[idx] + 1000)) \
      || fail "$codec: offset $off timestamp $ts outside [${run_t0[$idx]}, ${run_t1[$idx]}]"
    ((ts >= prev)) || fail "$codec: offset $off timestamp $ts before previous $prev"
    prev="$ts" n=$((n + 1))
  done <"$work/ts-$codec"
  [[ $n == "$records" ]] || fail "$codec: $n timestamps, want $records"
done

earliest="$(query_offset -2)"
[[ "$earliest" == 0 ]] || fail "earliest offset $earliest, want 0"
latest="$(query_offset -1)"
[[ "$latest" == "$produced" ]] || fail "latest offset $latest, want $produced"
# By timestamp: the first record whose timestamp is >= the probe's is at or before the probe record.
probe_codec="${run_codecs[-1]}" probe_base="${run_bases[-1]}"
read -r probe_off probe_ts < <(sed -n '8p' "$work/ts-$probe_codec")
found="$(query_offset "$probe_ts")"
first_same_ts="$(awk -v ts="$probe_ts" '$2 == ts {print $1; exit}' "$work/ts-$probe_codec")"
[[ "$found" == "$first_same_ts" ]] \
  || fail "offset for timestamp $probe_ts is $found, want $first_same_ts (record $probe_off, run from $probe_base)"
before="$(query_offset $((run_t0[0] - 60000)))"
[[ "$before" == 0 ]] || fail "offset for a timestamp before all records is $before, want 0"

echo "OK kcat produced=$produced consumed=$consumed codecs=$codecs"
