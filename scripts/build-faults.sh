#!/bin/bash
# Builds porta with the cargo feature fault-injection (the file server's test faults,
# which release builds never carry) into $target/faults/porta, for the integration tests
# that crash file servers on purpose (PORTA_FAULT_BIN). It builds in the same target
# directory as the release build, so only the crates the feature changes are compiled
# again, then puts the release binary without the feature back (cargo keeps both builds:
# that is a copy, not a compile) and checks that it carries no fault code.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p porta --features fault-injection
mkdir -p "$target/faults"
cp "$target/release/porta" "$target/faults/porta.new"
mv -f "$target/faults/porta.new" "$target/faults/porta"
cargo build --release -q --workspace
if grep -qa PORTA_FS_FAULT "$target/release/porta"; then
  echo "build-faults.sh: $target/release/porta carries the fault injection" >&2
  exit 1
fi
if ! grep -qa PORTA_FS_FAULT "$target/faults/porta"; then
  echo "build-faults.sh: $target/faults/porta lacks the fault injection" >&2
  exit 1
fi
