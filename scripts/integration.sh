#!/bin/bash
# Runs Porta's integration tests (crates/porta-integration/tests) against the runtime
# in $PORTA_BIN (default: the workspace's release build of porta), one test binary after
# the other, then the leak check (zz_leaks) last. Needs root. The test harness itself is
# built in the dev profile (quick to build); the runtime under test is whatever PORTA_BIN names.
#   PORTA_BIN=/usr/sbin/runc bash scripts/integration.sh     # validate the tests on runc
#   bash scripts/integration.sh lifecycle exec               # only some test files
# Tests that crash file servers on purpose drive $PORTA_FAULT_BIN, a porta built with the
# feature fault-injection (default: target/faults/porta, built here by build-faults.sh when unset).
set -uo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-$PWD/target}"
export PORTA_BIN="${PORTA_BIN:-$target/release/porta}"
if [ ! -x "$PORTA_BIN" ]; then
  echo "integration.sh: runtime $PORTA_BIN not found; build it (cargo build --release) or set PORTA_BIN" >&2
  exit 1
fi
echo "integration.sh: testing $PORTA_BIN"

if [ "$#" -gt 0 ]; then
  tests=("$@")
else
  tests=()
  for f in crates/porta-integration/tests/*.rs; do
    t="$(basename "$f" .rs)"
    [ "$t" = zz_leaks ] || tests+=("$t")
  done
fi

# The fault-injection build for the tests that need it (rootless, uring), unless given.
if [ -z "${PORTA_FAULT_BIN:-}" ] && [[ " ${tests[*]} " == *" rootless "* || " ${tests[*]} " == *" uring "* ]]; then
  echo "integration.sh: building porta with fault injection into $target/faults/porta"
  if ! bash scripts/build-faults.sh; then
    echo "integration.sh: the fault-injection build failed" >&2
    exit 1
  fi
  export PORTA_FAULT_BIN="$target/faults/porta"
fi

cargo test -p porta-integration --no-run -q 2>&1 | tail -5 || true

failed=()
for t in "${tests[@]}"; do
  echo "=== integration: $t"
  if ! timeout 900 cargo test -q -p porta-integration --test "$t"; then
    failed+=("$t")
  fi
done

echo "=== integration: zz_leaks (must run last)"
if ! timeout 300 cargo test -q -p porta-integration --test zz_leaks; then
  failed+=("zz_leaks")
fi

if [ "${#failed[@]}" -gt 0 ]; then
  echo "integration.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "integration.sh: all integration test files passed"
