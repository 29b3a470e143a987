#!/usr/bin/env bash
# Installs what the end-to-end tests need on Debian 12, idempotently: kcat and C libraries (apt),
# Python clients in tests/.venv (pip, tests/clients/python/requirements.txt), kafkajs and its codecs
# in tests/clients/node/node_modules (npm, package-lock.json). Run as root, from anywhere.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
fail() { echo "setup.sh: ERROR: $*" >&2; exit 1; }
step() { echo "setup.sh: $*"; }

# --- Debian packages -------------------------------------------------------------------------------
apt_packages=(kcat librdkafka-dev python3-venv pkg-config cmake libssl-dev libsasl2-dev zlib1g-dev
  libzstd-dev liblz4-dev)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || fail "apt-get not found; install by hand: ${missing[*]}"
  sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  step "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq || fail "apt-get update failed"
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]} failed"
else
  step "Debian packages present"
fi
command -v kcat >/dev/null || fail "kcat is not on PATH after installing it"

# --- Python clients --------------------------------------------------------------------------------
venv="$here/.venv"
req="$here/clients/python/requirements.txt"
stamp="$venv/.requirements.sha256"
want_hash="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want_hash" ]]; then
  step "Python venv up to date ($venv)"
else
  python=""
  for candidate in python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import venv, ensurepip' 2>/dev/null; then
      python="$candidate"; break
    fi
  done
  [[ -n "$python" ]] || fail "no python3 with the venv module (apt-get install python3-venv)"
  [[ -x "$venv/bin/python" ]] || { step "creating $venv with $python"; "$python" -m venv "$venv" || fail "venv creation failed"; }
  step "installing Python clients from $req"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" || fail "pip install -r $req failed"
  echo "$want_hash" >"$stamp"
fi
"$venv/bin/python" - <<'EOF' || fail "the Python clients do not import with all their codecs (see above)"
import confluent_kafka, kafka, aiokafka
from kafka import codec as k
from aiokafka import codec as a
missing = [n for n, ok in [("kafka-python snappy", k.has_snappy()), ("kafka-python lz4", k.has_lz4()),
           ("kafka-python zstd", k.has_zstd()), ("aiokafka snappy", a.has_snappy()),
           ("aiokafka lz4", a.has_lz4()), ("aiokafka zstd", a.has_zstd())] if not ok]
if missing:
    raise SystemExit(f"codec support missing: {missing}")
print(f"setup.sh: confluent-kafka {confluent_kafka.__version__} (librdkafka {confluent_kafka.libversion()[0]}), "
      f"kafka-python {kafka.__version__}, aiokafka {aiokafka.__version__}")
EOF

# --- kafkajs ---------------------------------------------------------------------------------------
node_dir="$here/clients/node"
command -v node >/dev/null || fail "node is not installed (apt-get install nodejs npm)"
command -v npm >/dev/null || fail "npm is not installed (apt-get install npm)"
lock_hash="$(cat "$node_dir/package.json" "$node_dir/package-lock.json" | sha256sum | cut -d' ' -f1)"
node_stamp="$node_dir/node_modules/.creek-lock.sha256"
if [[ -f "$node_stamp" && "$(cat "$node_stamp")" == "$lock_hash" ]]; then
  step "node_modules up to date ($node_dir)"
else
  step "installing kafkajs and codecs in $node_dir (npm ci)"
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error) || fail "npm ci in $node_dir failed"
  echo "$lock_hash" >"$node_stamp"
fi
(cd "$node_dir" && node -e '
  const zstd = require("@mongodb-js/zstd"), lz4 = require("lz4-napi"), snappy = require("kafkajs-snappy")();
  (async () => {
    const b = Buffer.from("creek creek creek creek");
    const ok = (await zstd.decompress(await zstd.compress(b, 3))).equals(b)
      && (await lz4.decompressFrame(await lz4.compressFrame(b))).equals(b)
      && (await snappy.decompress(await snappy.compress({ buffer: b }))).equals(b);
    if (!ok) throw new Error("codec round trip mismatch");
    console.log("setup.sh: kafkajs " + require("kafkajs/package.json").version + " with snappy, lz4, zstd codecs");
  })().catch(e => { console.error(e); process.exit(1) });
') || fail "kafkajs codecs do not load (see above)"

step "kcat $(kcat -V 2>&1 | sed -n 's/^Version \([^ ]*\).*/\1/p')"
step "done"
