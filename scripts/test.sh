#!/bin/bash
# The whole test suite: dependencies, release build, lints, unit tests, then the integration
# tests against the release porta (scripts/integration.sh; the leak check runs last).
# Every stage runs even when an earlier one failed (only a failed build stops the run:
# there is nothing to test then); the end prints every failed stage and test file, and
# the exit status is non-zero if anything failed.
# Run as root on Debian/Ubuntu: bash scripts/test.sh
# PORTA_BIN=/path/to/runtime overrides the runtime the integration tests drive.
set -uo pipefail
cd "$(dirname "$0")/.."

failed=()
notes=()
summary() {
  echo "=== summary"
  for n in "${notes[@]}"; do echo "test.sh: note: $n"; done
  if [ "${#failed[@]}" -gt 0 ]; then
    echo "test.sh: FAILED:" >&2
    for f in "${failed[@]}"; do echo "  $f" >&2; done
    exit 1
  fi
  echo "test.sh: every stage passed"
  exit 0
}

echo "=== dependencies"
if ! bash scripts/deps.sh; then
  echo "test.sh: scripts/deps.sh failed" >&2
  exit 1
fi
if [ -f "$HOME/.cargo/env" ] && ! command -v cargo >/dev/null 2>&1; then . "$HOME/.cargo/env"; fi
command -v cargo >/dev/null 2>&1 || { echo "test.sh: cargo not found (see scripts/deps.sh)" >&2; exit 1; }

echo "=== build"
if ! cargo build --release --workspace; then
  echo "test.sh: the build failed; nothing to test" >&2
  exit 1
fi
target="${CARGO_TARGET_DIR:-$PWD/target}"
# The release porta never carries the file server's fault injection (the feature
# fault-injection): it does not even read the variables that set faults. A second porta
# with it, for the integration tests that crash servers on purpose (PORTA_FAULT_BIN):
if ! bash scripts/build-faults.sh; then
  echo "test.sh: the build with fault injection failed; nothing to test" >&2
  exit 1
fi
export PORTA_FAULT_BIN="${PORTA_FAULT_BIN:-$target/faults/porta}"

echo "=== lint"
# The workspace's lints ([workspace.lints] in Cargo.toml: missing docs, unsafe blocks
# without a SAFETY comment, …) and clippy's defaults, as errors; formatting as rustfmt.
if ! cargo fmt --version >/dev/null 2>&1; then
  notes+=("formatting not checked: rustfmt is not installed (see scripts/deps.sh)")
elif ! cargo fmt --all --check >/dev/null; then
  cargo fmt --all --check 2>&1 | head -40
  failed+=("lint: cargo fmt --all --check (run cargo fmt --all)")
fi
if ! cargo clippy --version >/dev/null 2>&1; then
  notes+=("clippy not run: it is not installed (see scripts/deps.sh)")
elif ! cargo clippy --release --workspace --all-targets -- -D warnings; then
  failed+=("lint: cargo clippy --workspace --all-targets -- -D warnings")
fi

echo "=== unit tests"
# --no-fail-fast: a failing crate does not hide the tests of the others
unit_log="$(mktemp)"
trap 'rm -f "$unit_log"' EXIT
if ! cargo test --release --workspace --exclude porta-integration --no-fail-fast 2>&1 | tee "$unit_log"; then
  # name every failed unit test (cargo prints "    <test> ... FAILED" lines; a test
  # binary that failed to build or crashed shows in cargo's "error:" lines)
  mapfile -t bad < <(grep -E '^test .* \.\.\. FAILED$' "$unit_log" | sed -E 's/^test (.*) \.\.\. FAILED$/\1/')
  mapfile -t err < <(grep -E '^error: |^    `-p .*`$' "$unit_log" | sed -E 's/^ +//')
  if [ "${#bad[@]}" -eq 0 ] && [ "${#err[@]}" -eq 0 ]; then
    failed+=("unit tests (see the output above)")
  fi
  for t in "${bad[@]}"; do failed+=("unit test: $t"); done
  for e in "${err[@]}"; do failed+=("unit tests: ${e#error: }"); done
fi

echo "=== integration tests"
if [ "$(id -u)" != 0 ]; then
  echo "test.sh: integration tests need root; skipped" >&2
  notes+=("integration tests not run: they need root")
  summary
fi
int_log="$(mktemp)"
trap 'rm -f "$unit_log" "$int_log"' EXIT
if ! bash scripts/integration.sh 2>&1 | tee "$int_log"; then
  line="$(grep -E '^integration.sh: FAILED: ' "$int_log" | tail -1)"
  if [ -n "$line" ]; then
    for t in ${line#integration.sh: FAILED: }; do failed+=("integration test file: $t"); done
  else
    failed+=("integration tests (see the output above)")
  fi
fi

summary
