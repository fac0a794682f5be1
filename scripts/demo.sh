#!/usr/bin/env bash
# The main job on the embedded default: a simulated m5.large node, 10 pods through the real aws-cni, pings,
# a table, full cleanup. Extra arguments go to `ipamd demo` (e.g. --pods 20 --instance-type c5.large;
# --custom-networking: pods on ENIs in the subnets of the node's ENIConfig, from a cluster-objects file;
# --ipv6: an IPv6 node, pods with addresses of the primary ENI's /80 and IPv4 egress through egress-cni).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --workspace --bins --quiet
exec target/debug/ipamd demo "$@"
