#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the netns integration tests (which drive the built
# binaries, so they are built first). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo fmt --all -- --check
# The aws backend (ipamd's `aws` feature: aws-sdk-ec2, a long build) and its tests against moto
# (integration-tests' `aws` feature) are part of every run.
features=ipamd/aws,integration-tests/aws
cargo clippy --workspace --all-targets --features "$features" --quiet -- -D warnings
cargo build --workspace --bins --features "$features" --quiet
cargo test --workspace --features "$features"
# Every parser under libFuzzer for a short while: a crash fails the run, running out of time does not.
scripts/fuzz.sh "${AWS_CNI_FUZZ_SECONDS:-30}"
leftover=$(ip netns list | grep -E '^(act-|awscni-)' || true)
if [ -n "$leftover" ]; then
  echo "tests left network namespaces behind:" >&2
  echo "$leftover" >&2
  exit 1
fi
leftover=$(CONTAINERS_CONF=scripts/podman/containers.conf podman ps -a --format '{{.Names}}' | grep '^aws-node-' || true)
leftover+=$(CONTAINERS_CONF=scripts/podman/containers.conf podman images --format '{{.Repository}}' | grep 'awscni-image-' || true)
if [ -n "$leftover" ]; then
  echo "tests left podman containers or images behind:" >&2
  echo "$leftover" >&2
  exit 1
fi
leftover=$(pgrep -af 'bin/moto_server|npa_double.py' || true)
if [ -n "$leftover" ]; then
  echo "tests left moto servers or policy agent doubles running:" >&2
  echo "$leftover" >&2
  exit 1
fi
