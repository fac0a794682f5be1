#!/usr/bin/env python3
"""Generate instance-limits/data/instance-limits.tsv from EC2 DescribeInstanceTypes.

Usage:
    gen_limits.py --endpoint URL --out PATH [--region us-east-1]

The endpoint is any EC2-compatible API (the committed table was produced
against a local moto server: `moto_server -H 127.0.0.1 -p PORT`). Credentials
default to the dummy pair `testing`/`testing` unless the usual AWS_* variables
are set. The output format is documented in instance-limits/src/lib.rs and
must stay byte-identical to what `ipamd gen-limits` writes:

  * first line is the header below, then one line per instance type;
  * fields separated by a single TAB, lines end with LF (also the last one);
  * rows sorted by instance type name (byte order), names unique;
  * network_cards = `index:max_enis` pairs sorted by index, joined by `,`;
  * hypervisor is `nitro`, `xen` or `unknown` (absent or anything else);
  * bare_metal is `true` or `false`; integers in plain decimal.
"""

import argparse
import os
import sys

import boto3

HEADER = (
    "instance_type",
    "enis",
    "default_network_card_index",
    "network_cards",
    "ipv4_per_eni",
    "ipv6_per_eni",
    "hypervisor",
    "bare_metal",
    "vcpus",
)


def fetch_instance_types(endpoint, region):
    client = boto3.client(
        "ec2",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    )
    token = None
    pages = 0
    while True:
        kwargs = {"MaxResults": 100}
        if token:
            kwargs["NextToken"] = token
        resp = client.describe_instance_types(**kwargs)
        pages += 1
        for it in resp.get("InstanceTypes", []):
            yield it
        token = resp.get("NextToken")
        if not token:
            break
        if pages > 10000:
            raise SystemExit("gen_limits: too many pages, NextToken loop?")


def uint(value, what, name):
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SystemExit(f"gen_limits: {name}: bad {what}: {value!r}")
    return value


def to_row(it):
    name = it["InstanceType"]
    if not name or any(c.isspace() for c in name):
        raise SystemExit(f"gen_limits: bad instance type name {name!r}")
    net = it.get("NetworkInfo") or {}
    default_idx = uint(net.get("DefaultNetworkCardIndex"), "DefaultNetworkCardIndex", name)
    cards = {}
    for card in net.get("NetworkCards") or []:
        idx = uint(card.get("NetworkCardIndex"), "NetworkCardIndex", name)
        enis = uint(card.get("MaximumNetworkInterfaces"), "MaximumNetworkInterfaces", name)
        if idx in cards:
            raise SystemExit(f"gen_limits: {name}: duplicate network card {idx}")
        cards[idx] = enis
    if not cards:
        # Older responses have no NetworkCards: one card holding every ENI.
        cards[default_idx] = uint(
            net.get("MaximumNetworkInterfaces"), "MaximumNetworkInterfaces", name
        )
    if default_idx not in cards:
        raise SystemExit(f"gen_limits: {name}: default card {default_idx} not listed")
    hypervisor = it.get("Hypervisor")
    if hypervisor not in ("nitro", "xen"):
        hypervisor = "unknown"
    bare_metal = it.get("BareMetal") is True
    vcpus = uint((it.get("VCpuInfo") or {}).get("DefaultVCpus"), "DefaultVCpus", name)
    return (
        name,
        str(cards[default_idx]),
        str(default_idx),
        ",".join(f"{i}:{cards[i]}" for i in sorted(cards)),
        str(uint(net.get("Ipv4AddressesPerInterface"), "Ipv4AddressesPerInterface", name)),
        str(uint(net.get("Ipv6AddressesPerInterface"), "Ipv6AddressesPerInterface", name)),
        hypervisor,
        "true" if bare_metal else "false",
        str(vcpus),
    )


def render(rows):
    by_name = {}
    for row in rows:
        prev = by_name.get(row[0])
        if prev is not None and prev != row:
            raise SystemExit(f"gen_limits: {row[0]} listed twice with different limits")
        by_name[row[0]] = row
    lines = ["\t".join(HEADER)]
    # Python orders str by code point; names are ASCII, so this is byte order.
    lines += ["\t".join(by_name[n]) for n in sorted(by_name)]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True, help="EC2 API endpoint URL")
    ap.add_argument("--out", required=True, help="output TSV path ('-' for stdout)")
    ap.add_argument("--region", default="us-east-1")
    args = ap.parse_args()

    text = render(to_row(it) for it in fetch_instance_types(args.endpoint, args.region))
    if args.out == "-":
        sys.stdout.write(text)
    else:
        tmp = args.out + ".tmp"
        with open(tmp, "w", encoding="ascii", newline="\n") as f:
            f.write(text)
        os.replace(tmp, args.out)
    print(f"gen_limits: wrote {text.count(chr(10)) - 1} instance types", file=sys.stderr)


if __name__ == "__main__":
    main()
