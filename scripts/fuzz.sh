#!/usr/bin/env bash
# A short fuzz run of every target in fuzz/ (default 30 s each): exits non-zero when a target crashes (the input
# is left in fuzz/artifacts/<target>/), never because time ran out. Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-30}
shift || true
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: run scripts/deps.sh" >&2
  exit 1
fi
# cargo-fuzz needs nightly flags (-Z sanitizer): nightly when installed, else stable with RUSTC_BOOTSTRAP.
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
fi
failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "fuzz: $t for ${seconds}s"
  # -max_total_time ends the run with exit 0; a crash, a leak or a timeout on one input exits non-zero.
  if ! cargo "${toolchain[@]}" fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
      -timeout=10 >"/tmp/aws-cni-fuzz-$t.log" 2>&1; then
    tail -40 "/tmp/aws-cni-fuzz-$t.log" >&2
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each without a crash"
