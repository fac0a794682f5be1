//! EC2 instance networking limits, compiled in, and the max-pods calculator.
//!
//! # What is here
//!
//! * A table of every known EC2 instance type's networking limits ([`lookup`],
//!   [`all`], [`suggest`]), built at compile time from the committed
//!   `data/instance-limits.tsv` by `build.rs` into one `static` sorted slice.
//!   A lookup is a binary search over `&'static` data: no parsing and no heap
//!   at run time.
//! * [`max_pods`]: the kubelet `--max-pods` value for a type and CNI settings,
//!   with every step of the computation kept for display.
//! * [`cli`]: the `ipamd max-pods` subcommand (clap args + [`cli::run`]).
//! * [`imds`]: reading the instance type from IMDSv2.
//! * [`format`](mod@format): the TSV parser/renderer shared by `build.rs` and any writer.
//!
//! # Where the table comes from
//!
//! `gen/gen_limits.py` pages through EC2 `DescribeInstanceTypes` (boto3,
//! following `NextToken`) against a given endpoint and writes the TSV. The
//! committed table was generated against a local moto server (moto 5.x ships
//! a snapshot of the real API's instance-type catalogue), so it needs no AWS
//! account. To regenerate:
//!
//! ```text
//! python3 -m venv /tmp/venv-moto
//! /tmp/venv-moto/bin/pip install 'moto[server]>=5,<6' boto3
//! /tmp/venv-moto/bin/moto_server -H 127.0.0.1 -p 5055 &
//! /tmp/venv-moto/bin/python instance-limits/gen/gen_limits.py \
//!     --endpoint http://127.0.0.1:5055 --out instance-limits/data/instance-limits.tsv
//! kill %1
//! ```
//!
//! Pointing `--endpoint` at a real regional EC2 endpoint (with real
//! credentials in the usual `AWS_*` variables) works the same way.
//!
//! # The anchor's additions (`data/anchor-additions.tsv`)
//!
//! The anchor's table (`pkg/vpc/vpc_ip_resource_limit.go`, and its published
//! `misc/eni-max-pods.txt`) holds types that the API data lacks: those its
//! generator adds by hand (`addManualLimits` in `scripts/gen_vpc_ip_limits.go`:
//! `cr1.8xlarge`, `hs1.8xlarge`, the `u-*tb1.metal`, `c5a.metal`, `c5ad.metal`,
//! `bmn-sf1.metal`, `f1.*`, `p3.*`, `c7i.32xlarge`, `dl1.24xlarge`, ...) and
//! types no longer offered everywhere (`g4ad.*`); and for `i7ie.48xlarge`,
//! `i7ie.metal-48xl`, `i8ge.48xlarge`, `i8ge.metal-48xl` its ENI counts differ
//! from the snapshot the generated table came from. `build.rs` lays this file
//! (same format) over the generated one, so a regenerated table keeps them and
//! `ipamd max-pods --show-max-allowed` agrees with every line of the anchor's
//! `eni-max-pods.txt` (checked in as `data/anchor-eni-max-pods.txt`; the test
//! `tests/anchor_max_pods.rs`). The anchor's table has no IPv6 or vCPU
//! columns: `ipv6_per_eni` is the IPv4 count (0 for the two previous-generation
//! types), `vcpus` EC2's published count, 0 where unknown (`bmn-sf1.metal`:
//! then the 110 cap applies unless `--show-max-allowed`).
//!
//! # Table format (`data/instance-limits.tsv`), exactly
//!
//! Any other writer (e.g. a Rust `ipamd gen-limits`) must produce the same
//! bytes from the same API answers; [`format::render`] does the layout.
//!
//! * ASCII, lines end with a single LF, including the last; no CR, no blank
//!   lines, no comments.
//! * Line 1 is the header [`format::HEADER`]:
//!   `instance_type enis default_network_card_index network_cards ipv4_per_eni
//!   ipv6_per_eni hypervisor bare_metal vcpus`, separated by TABs.
//! * Then one line per instance type, 9 fields separated by a single TAB,
//!   sorted by `instance_type` in byte order, each name once.
//! * Integers are plain unsigned decimal (`0`, `15`; no sign, no leading zero).
//!
//! | column | from `DescribeInstanceTypes` |
//! |---|---|
//! | `instance_type` | `InstanceType` (ASCII letters, digits, `.`, `-`, `_`) |
//! | `enis` | `MaximumNetworkInterfaces` of the network card whose index is the default one |
//! | `default_network_card_index` | `NetworkInfo.DefaultNetworkCardIndex` (absent → 0) |
//! | `network_cards` | every `NetworkInfo.NetworkCards[]` as `NetworkCardIndex:MaximumNetworkInterfaces`, sorted by index, joined by `,` (e.g. `0:5,1:5`); when `NetworkCards` is absent, one card `DEFAULT:NetworkInfo.MaximumNetworkInterfaces` |
//! | `ipv4_per_eni` | `NetworkInfo.Ipv4AddressesPerInterface` (absent → 0) |
//! | `ipv6_per_eni` | `NetworkInfo.Ipv6AddressesPerInterface` (absent → 0) |
//! | `hypervisor` | `Hypervisor` if it is `nitro` or `xen`, else `unknown` (metal types have none) |
//! | `bare_metal` | `BareMetal`: `true` or `false` (absent → `false`) |
//! | `vcpus` | `VCpuInfo.DefaultVCpus` (absent → 0) |
//!
//! The same type appearing twice in the answer is dropped if identical and an
//! error otherwise; a default card index not among the cards is an error.
//! `build.rs` refuses (fails the build on) any table that does not re-render
//! to exactly its own bytes.
//!
//! # The max-pods formula
//!
//! Same as the upstream calculator (`max-pods-calculator.sh`) and the
//! `eni-max-pods.txt` header; see [`max_pods`]:
//!
//! * `enis = min(--cni-max-eni, ENIs on the default network card)`; with
//!   custom networking `enis - 1` (the primary ENI takes no pod IPs).
//! * secondary-IP mode: `enis * (ipv4_per_eni - 1) + 2` (the first address of
//!   each ENI is the ENI's own; +2 for the host-network aws-node and
//!   kube-proxy pods).
//! * prefix delegation (Nitro or bare metal only, VPC CNI >= 1.9.0):
//!   `enis * ((ipv4_per_eni - 1) * 16) + 2`.
//! * unless `--show-max-allowed`, the result is capped at 110 when the type
//!   has <= 30 vCPUs and at 250 otherwise.
//!
//! Only the default network card counts, as upstream: e.g. `p5.48xlarge`
//! (32 cards of 2 ENIs) gives 2 * 49 + 2 = 100.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;

pub mod cli;
pub mod format;
pub mod imds;
pub mod max_pods;

pub use cli::{run, MaxPodsArgs, MaxPodsCliError, OutputFormat};
pub use imds::{ImdsError, Imdsv2, InstanceTypeSource};
pub use max_pods::{MaxPodsError, MaxPodsOptions, MaxPodsReport};

/// The hypervisor an instance type runs on. Serializes as `nitro`, `xen`,
/// `unknown` (bare-metal types report no hypervisor and are `Unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hypervisor {
    Nitro,
    Xen,
    Unknown,
}

impl Hypervisor {
    /// The lowercase name used in the table and in JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Hypervisor::Nitro => "nitro",
            Hypervisor::Xen => "xen",
            Hypervisor::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Hypervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error from parsing a [`Hypervisor`] name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hypervisor {0:?} (expected nitro, xen or unknown)")]
pub struct ParseHypervisorError(pub String);

impl FromStr for Hypervisor {
    type Err = ParseHypervisorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nitro" => Ok(Hypervisor::Nitro),
            "xen" => Ok(Hypervisor::Xen),
            "unknown" => Ok(Hypervisor::Unknown),
            other => Err(ParseHypervisorError(other.to_string())),
        }
    }
}

/// One network card of an instance type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct NetworkCard {
    /// `NetworkCardIndex`.
    pub index: u32,
    /// `MaximumNetworkInterfaces` on this card.
    pub max_enis: u32,
}

/// Networking limits of one EC2 instance type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct InstanceLimits {
    /// e.g. `m5.large`.
    pub instance_type: &'static str,
    /// Max ENIs on the default network card (what max-pods and ipamd use).
    pub enis: u32,
    /// Index of the default network card (0 for every type known today).
    pub default_network_card_index: u32,
    /// Every network card, sorted by index.
    pub network_cards: &'static [NetworkCard],
    /// IPv4 addresses per ENI, the ENI's primary address included.
    pub ipv4_per_eni: u32,
    /// IPv6 addresses per ENI.
    pub ipv6_per_eni: u32,
    pub hypervisor: Hypervisor,
    pub bare_metal: bool,
    /// Default vCPU count.
    pub vcpus: u32,
}

impl InstanceLimits {
    /// Prefix delegation needs a Nitro-based or a bare-metal instance.
    pub fn supports_prefix_delegation(&self) -> bool {
        self.hypervisor == Hypervisor::Nitro || self.bare_metal
    }

    /// Sum of max ENIs over all network cards (saturating).
    pub fn total_enis(&self) -> u32 {
        self.network_cards
            .iter()
            .fold(0u32, |acc, card| acc.saturating_add(card.max_enis))
    }

    /// The card with this index, if the type has it.
    pub fn network_card(&self, index: u32) -> Option<&'static NetworkCard> {
        self.network_cards.iter().find(|card| card.index == index)
    }
}

include!(concat!(env!("OUT_DIR"), "/table.rs"));

/// The limits of `instance_type` (exact, case-sensitive name) in the compiled-in table, by binary search.
pub fn lookup(instance_type: &str) -> Option<&'static InstanceLimits> {
    TABLE
        .binary_search_by(|limits| limits.instance_type.cmp(instance_type))
        .ok()
        .and_then(|index| TABLE.get(index))
}

/// The limits `row` describes, for an instance type newer than the compiled-in table (the daemon's
/// DescribeInstanceTypes fallback at startup). A type the table already has keeps its compiled-in limits, which
/// are returned. Nothing is registered: [`lookup`], [`all`] and [`suggest`] still see only the table, and the
/// caller passes the limits on to whoever needs them. A new type costs one small allocation that lives for the
/// rest of the process (the table's rows are `'static`; a daemon learns at most its own type, once).
pub fn learn(row: &format::Row) -> Result<&'static InstanceLimits, String> {
    row.validate()?;
    if let Some(known) = lookup(&row.instance_type) {
        return Ok(known);
    }
    let hypervisor: Hypervisor = row
        .hypervisor
        .parse()
        .map_err(|e: ParseHypervisorError| e.to_string())?;
    let cards: Vec<NetworkCard> = row
        .network_cards
        .iter()
        .map(|&(index, max_enis)| NetworkCard { index, max_enis })
        .collect();
    let limits: &'static InstanceLimits = Box::leak(Box::new(InstanceLimits {
        instance_type: Box::leak(row.instance_type.clone().into_boxed_str()),
        enis: row.enis,
        default_network_card_index: row.default_network_card_index,
        network_cards: Box::leak(cards.into_boxed_slice()),
        ipv4_per_eni: row.ipv4_per_eni,
        ipv6_per_eni: row.ipv6_per_eni,
        hypervisor,
        bare_metal: row.bare_metal,
        vcpus: row.vcpus,
    }));
    Ok(limits)
}

/// Every known instance type, sorted by name (byte order).
pub fn all() -> &'static [InstanceLimits] {
    TABLE
}

/// Up to `n` known names closest to `instance_type` (case-insensitive):
/// ordered by edit distance, then by longest common prefix, then by name.
pub fn suggest(instance_type: &str, n: usize) -> Vec<&'static str> {
    if n == 0 {
        return Vec::new();
    }
    let query = instance_type.trim().to_ascii_lowercase();
    let query = query.as_bytes();
    let mut row = Vec::new();
    let mut scored: Vec<(usize, std::cmp::Reverse<usize>, &'static str)> = TABLE
        .iter()
        .map(|limits| {
            let name = limits.instance_type.as_bytes();
            let prefix = query.iter().zip(name).take_while(|(a, b)| a == b).count();
            (
                levenshtein(query, name, &mut row),
                std::cmp::Reverse(prefix),
                limits.instance_type,
            )
        })
        .collect();
    scored.sort_unstable();
    scored
        .into_iter()
        .take(n)
        .map(|(_, _, name)| name)
        .collect()
}

/// Byte-wise Levenshtein distance; `row` is scratch space reused across calls.
fn levenshtein(a: &[u8], b: &[u8], row: &mut Vec<usize>) -> usize {
    row.clear();
    row.extend(0..=b.len());
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = i;
        let mut left = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            let cost = usize::from(ca != cb);
            let value = (diagonal + cost).min(up + 1).min(left + 1);
            diagonal = up;
            row[j + 1] = value;
            left = value;
        }
        row[0] = i + 1;
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levenshtein_basics() {
        let mut row = Vec::new();
        assert_eq!(levenshtein(b"", b"", &mut row), 0);
        assert_eq!(levenshtein(b"abc", b"", &mut row), 3);
        assert_eq!(levenshtein(b"", b"ab", &mut row), 2);
        assert_eq!(levenshtein(b"kitten", b"sitting", &mut row), 3);
        assert_eq!(levenshtein(b"m5.lage", b"m5.large", &mut row), 1);
        assert_eq!(levenshtein(b"flaw", b"lawn", &mut row), 2);
    }

    #[test]
    fn learned_types_are_returned_not_registered_and_known_types_keep_their_limits() {
        let row = format::Row {
            instance_type: "zz9.learned".into(),
            enis: 4,
            default_network_card_index: 0,
            network_cards: vec![(0, 4), (1, 2)],
            ipv4_per_eni: 15,
            ipv6_per_eni: 15,
            hypervisor: "nitro".into(),
            bare_metal: false,
            vcpus: 8,
        };
        assert!(lookup("zz9.learned").is_none());
        let learned = learn(&row).expect("learn");
        assert_eq!(learned.total_enis(), 6);
        assert_eq!(learned.instance_type, "zz9.learned");
        assert_eq!((learned.enis, learned.ipv4_per_eni), (4, 15));
        assert!(lookup("zz9.learned").is_none(), "no process-wide registry");
        let mut known = row.clone();
        known.instance_type = "m5.large".into();
        assert_eq!(
            learn(&known).expect("known").enis,
            3,
            "the compiled-in table wins"
        );
        let mut bad = row;
        bad.instance_type = "zz9.bad".into();
        bad.default_network_card_index = 7;
        assert!(learn(&bad).is_err());
        assert!(lookup("zz9.bad").is_none());
    }

    #[test]
    fn hypervisor_round_trip() {
        for h in [Hypervisor::Nitro, Hypervisor::Xen, Hypervisor::Unknown] {
            assert_eq!(h.as_str().parse::<Hypervisor>(), Ok(h));
            assert_eq!(
                serde_json::to_string(&h).ok(),
                Some(format!("\"{}\"", h.as_str()))
            );
        }
        assert!("Nitro".parse::<Hypervisor>().is_err());
    }
}
