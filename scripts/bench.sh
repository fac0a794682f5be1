#!/usr/bin/env bash
# The benchmark suite: installs what it needs, builds release binaries, runs every benchmark and rewrites
# BENCHMARKS.md. Run as root (it creates network namespaces).
#
#   scripts/bench.sh            # the published run (about 4 minutes on 2 cores after the release build)
#   scripts/bench.sh --quick    # smaller samples, a smoke run (a few minutes)
#
# Other options go to `aws-cni-bench run`, e.g. `--only pod-setup,burst --out /tmp/b.md` (see --help).
# CARGO_TARGET_DIR is honoured. Everything the run creates (namespaces awsbench-<pid>-*, its ipamd daemons,
# scratch directories) is removed at the end, also after Ctrl-C or a crash.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "run as root: the benchmarks create network namespaces" >&2
  exit 1
fi

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip || need+=(iproute2)
have iptables || need+=(iptables)
have git || need+=(git)
[ -x /usr/lib/cni/ptp ] && [ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
# The CRI benchmark: containerd (with its shim and ctr), runc, and a static busybox for the sandbox image.
have containerd || need+=(containerd)
have runc || need+=(runc)
[ -x /bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! have cargo; then
  echo "cargo not found: install a Rust toolchain (1.94.1 or newer), e.g. with rustup" >&2
  exit 1
fi

# Leftovers of a run whose driver is gone: its daemons (found by the run's unique path), namespaces, scratch.
sweep() {
  local ns pid p
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^awsbench-' || true); do
    pid=${ns#awsbench-}
    pid=${pid%%-*}
    if ! kill -0 "$pid" 2>/dev/null; then
      for p in $(pgrep -f -- "awsbench-$pid-" || true); do
        kill "$p" 2>/dev/null || true
      done
      sleep 0.2
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
  for d in /tmp/awsbench-*; do
    [ -e "$d" ] || continue
    pid=${d#/tmp/awsbench-}
    pid=${pid%%-*}
    if ! kill -0 "$pid" 2>/dev/null; then
      # containerd and its shims of the CRI benchmark name their socket under the run's directory.
      for p in $(pgrep -f -- "$d/" || true); do
        kill -9 "$p" 2>/dev/null || true
      done
      for m in $(awk -v d="$d/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
        umount -l "$m" 2>/dev/null || true
      done
      rm -rf "$d"
    fi
  done
}
trap sweep EXIT
sweep

target=${CARGO_TARGET_DIR:-target}
echo "building release binaries (aws-cni, ipamd, aws-cni-bench) in $target"
cargo build --release --quiet -p ipamd -p aws-cni-bench
# The plugin as it is shipped (static musl with dlmalloc, or static glibc without the musl target); the report
# names which.
AWS_CNI_BENCH_PLUGIN_BUILD=$(scripts/plugin-release.sh | tail -n 1)
export AWS_CNI_BENCH_PLUGIN_BUILD
echo "$AWS_CNI_BENCH_PLUGIN_BUILD"
"$target/release/aws-cni-bench" run --bin-dir "$target/release" "$@"
