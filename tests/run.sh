#!/usr/bin/env bash
# The whole test suite, from a fresh clone: install test tools, build the creek binary, run every test.
# Usage (from anywhere): bash tests/run.sh [extra cargo-nextest arguments]
# Honours a preset CARGO_TARGET_DIR. Needs cargo-nextest (present on the project's machines).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
fail() { echo "run.sh: ERROR: $*" >&2; exit 1; }

bash tests/setup.sh || fail "tests/setup.sh failed"

command -v cargo >/dev/null || fail "cargo not found"
cargo nextest --version >/dev/null 2>&1 \
  || fail "cargo-nextest is not installed (cargo install cargo-nextest --locked)"

echo "run.sh: building creek (debug)"
cargo build -p creek || fail "cargo build -p creek failed"

echo "run.sh: running the test suite"
exec cargo nextest run --workspace --no-fail-fast "$@"
