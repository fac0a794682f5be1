#!/usr/bin/env bash
# Builds the shipped aws-cni plugin and puts it at $CARGO_TARGET_DIR/release/aws-cni (default target/), where
# scripts/bench.sh, scripts/image.sh --binaries target/release and the Dockerfile take it:
#
#   release profile, linked statically against musl at a fixed address (not PIE), allocating with dlmalloc
#   (cni-plugin/src/main.rs says why: glibc's static start-up costs 0.29 ms of cpuid traps per exec on a VM)
#
# The musl target comes from rustup (`rustup target add x86_64-unknown-linux-musl`, tried here when missing).
# Without it (no rustup, offline) the plugin is linked statically against glibc instead, as before, and the
# script says so. The last line of output names the build; scripts/bench.sh records it in BENCHMARKS.md.
#
# Usage: scripts/plugin-release.sh [--locked]
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
musl=x86_64-unknown-linux-musl
locked=()
if [ "${1:-}" = --locked ]; then
  locked=(--locked)
fi
have_musl() { command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$musl"; }
if ! have_musl && command -v rustup >/dev/null; then
  rustup target add "$musl" >&2 || echo "could not add the $musl target: linking against glibc instead" >&2
fi
mkdir -p "$target/release"
if have_musl; then
  # musl targets link statically by default; relocation-model=static makes the executable non-PIE.
  cargo rustc "${locked[@]}" --release --quiet -p aws-cni --bin aws-cni --target "$musl" -- -C relocation-model=static
  cp -f "$target/$musl/release/aws-cni" "$target/release/aws-cni"
  echo "aws-cni: static musl, dlmalloc, not PIE"
else
  # Only the final link gets the flags, so the dependencies are shared with ipamd's release build.
  cargo rustc "${locked[@]}" --release --quiet -p aws-cni --bin aws-cni -- -C target-feature=+crt-static -C relocation-model=static
  echo "aws-cni: static glibc, not PIE (no $musl target)"
fi
