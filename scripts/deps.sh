#!/usr/bin/env bash
# Installs what the demo and the tests need on a Debian machine (run as root). Idempotent and quiet when
# everything is already there.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip || need+=(iproute2)
have iptables || need+=(iptables)
# nft: ipamd's nftables SNAT/connmark backend, and the tests that write kube-proxy's nftables-mode rules.
have nft || need+=(nftables)
have ping || need+=(iputils-ping)
have conntrack || need+=(conntrack)
have jq || need+=(jq)
have sha1sum || need+=(coreutils)
have curl || need+=(curl)
[ -x /usr/lib/cni/ptp ] || need+=(containernetworking-plugins)
# The real-runtime test: podman with its CNI backend, runc, and a busybox image from busybox-static.
have podman || need+=(podman uidmap fuse-overlayfs)
have runc || need+=(runc)
[ -x /bin/busybox ] || need+=(busybox-static)
have nsenter || need+=(util-linux)
# The CRI benchmark (scripts/bench.sh): two containerd instances driven through their CRI socket.
have containerd || need+=(containerd)
# The image (scripts/image.sh, tests/tests/image_pod.rs): debootstrap makes the Debian base when no registry can
# be reached; strip takes the debug info off host-built binaries before they go in.
have debootstrap || need+=(debootstrap)
have strip || need+=(binutils)
# podman kube play builds its pods' infra (pause) image locally around catatonit.
have catatonit || need+=(catatonit)
# deploy-check renders deploy/ with `kubectl kustomize` (any kubectl will do; Debian ships it as kubernetes-client).
have kubectl || need+=(kubernetes-client)

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! have cargo; then
  echo "cargo not found: install a Rust toolchain (1.94.1 or newer; aws-sdk-ec2 needs it), e.g. with rustup" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "run as root: the demo and the tests create network namespaces" >&2
  exit 1
fi

# moto, the EC2 API emulator that the aws backend's integration tests run against, in a venv of its own.
# Pinned within moto 5.x: the committed instance-limits table is generated from moto's instance-type data, and
# a test compares the two byte for byte. AWS_CNI_TEST_VENV moves the venv (the tests read it too).
moto_venv=${AWS_CNI_TEST_VENV:-/opt/aws-cni-test-venv}
moto_version=5.2.5
if [ ! -x "$moto_venv/bin/moto_server" ] ||
  ! "$moto_venv/bin/python" -c "import sys, moto; sys.exit(moto.__version__ != '$moto_version')" 2>/dev/null; then
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "installing: python3 python3-venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
  fi
  echo "installing moto[server]==$moto_version into $moto_venv"
  python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$moto_version"
fi

# gRPC clients and servers of other languages in the tests, in the same venv: a Python grpcio client with
# default options against ipamd's socket (stubs generated from proto/ at test time), and the network policy
# tests' stand-in for the policy agent (generated from tests/npa/rpc.proto).
if ! "$moto_venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
  echo "installing grpcio and grpcio-tools into $moto_venv"
  "$moto_venv/bin/pip" install -q --disable-pip-version-check grpcio grpcio-tools
fi

# cargo-fuzz for the short fuzz run (scripts/fuzz.sh); it builds with the nightly toolchain, or with
# RUSTC_BOOTSTRAP=1 on stable when no nightly is installed.
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install -q cargo-fuzz --locked
fi
