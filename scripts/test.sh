#!/bin/bash
# The whole test suite: dependencies, release build, unit tests, then the integration
# tests against the release porta (scripts/integration.sh; the leak check runs last).
# Run as root on Debian/Ubuntu: bash scripts/test.sh
# PORTA_BIN=/path/to/runtime overrides the runtime the integration tests drive.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
if [ -f "$HOME/.cargo/env" ] && ! command -v cargo >/dev/null 2>&1; then . "$HOME/.cargo/env"; fi
command -v cargo >/dev/null 2>&1 || { echo "test.sh: cargo not found (see scripts/deps.sh)" >&2; exit 1; }

echo "=== build"
cargo build --release --workspace

echo "=== unit tests"
cargo test --release --workspace --exclude porta-integration

echo "=== integration tests"
if [ "$(id -u)" != 0 ]; then
  echo "test.sh: integration tests need root; skipped" >&2
  exit 0
fi
bash scripts/integration.sh
