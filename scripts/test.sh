#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the netns integration tests (which drive the built
# binaries, so they are built first). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --bins --quiet
cargo test --workspace
leftover=$(ip netns list | grep -E '^(act-|awscni-)' || true)
if [ -n "$leftover" ]; then
  echo "tests left network namespaces behind:" >&2
  echo "$leftover" >&2
  exit 1
fi
