#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the netns integration tests (which drive the built
# binaries, so they are built first). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
# What the leftover checks at the end look for, listed now: a runtime's namespace (containerd's CRI names them
# cni-<uuid>, podman netns-<uuid>) or a moto server, policy agent double or conmon that was already here is not the
# suite's; only what appears during the run is.
netns_names() { ip netns list | awk '{print $1}' | sort; }
suite_procs() { pgrep -f 'bin/moto_server|npa_double\.py|(^|/)conmon ' | sort || true; }
# The lines of $2 not in $1 (both sorted).
new_since() { comm -13 <(printf '%s\n' "$1") <(printf '%s\n' "$2") | grep -v '^$' || true; }
netns_before=$(netns_names)
procs_before=$(suite_procs)
cargo fmt --all -- --check
# The aws backend (ipamd's `aws` feature: aws-sdk-ec2, a long build) and its tests against moto
# (integration-tests' `aws` feature) are part of every run.
features=ipamd/aws,integration-tests/aws
cargo clippy --workspace --all-targets --features "$features" --quiet -- -D warnings
cargo build --workspace --bins --features "$features" --quiet
cargo test --workspace --features "$features"
# The plugin as it is shipped (a static musl release build, see scripts/plugin-release.sh) through one pod's life.
scripts/plugin-release.sh
shipped=$(realpath "${CARGO_TARGET_DIR:-target}/release/aws-cni")
# --workspace: the features name other packages (ipamd/aws), which -p integration-tests alone refuses.
AWS_CNI_SHIPPED_PLUGIN=$shipped cargo test --workspace --features "$features" --test shipped_plugin -- --ignored
# Every parser under libFuzzer for a short while: a crash fails the run, running out of time does not.
scripts/fuzz.sh "${AWS_CNI_FUZZ_SECONDS:-30}"
netns_after=$(netns_names)
leftover=$({
  printf '%s\n' "$netns_after" | grep -E '^(act-|awscni-)'
  new_since "$netns_before" "$netns_after" | grep -E '^(cni-|netns-)'
} || true)
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
leftover=$(new_since "$procs_before" "$(suite_procs)")
if [ -n "$leftover" ]; then
  echo "tests left moto servers, policy agent doubles or container monitors running:" >&2
  ps -o pid=,args= -p "$(paste -sd, <<<"$leftover")" >&2 || true
  exit 1
fi
