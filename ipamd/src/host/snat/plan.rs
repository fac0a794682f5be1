//! The SNAT and connmark rules a node wants, as a pure function of its settings (no I/O).

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::config::RandomizeSnat;

pub const SNAT_CHAIN: &str = "AWS-SNAT-CHAIN-0";
pub const CONNMARK_CHAIN: &str = "AWS-CONNMARK-CHAIN-0";

/// The SNAT-relevant settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnatPlan {
    pub primary_ip: Ipv4Addr,
    /// The primary ENI's interface name (for the NodePort rule).
    pub primary_if: String,
    pub vpc_cidrs: Vec<Ipv4Network>,
    pub exclude_cidrs: Vec<Ipv4Network>,
    pub external_snat: bool,
    pub randomize: RandomizeSnat,
    pub connmark: u32,
    pub node_port_support: bool,
    /// The host-side veth prefix of pods (`AWS_VPC_K8S_CNI_VETHPREFIX`); empty means the default `eni`. Rules
    /// match pod traffic by it (`-i <prefix>+`, `iifname "<prefix>*"`).
    pub veth_prefix: String,
}

pub(crate) fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Quotes an argument for `iptables-restore` input (and `-S` output parsing).
pub(crate) fn quote(arg: &str) -> String {
    if arg.is_empty() || arg.contains(char::is_whitespace) {
        format!("\"{}\"", arg.replace('"', "\\\""))
    } else {
        arg.to_string()
    }
}

/// Splits a rule line as iptables prints it (`"..."` groups words).
pub fn split_rule(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut has = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => {
                quoted = !quoted;
                has = true;
            }
            c if c.is_whitespace() && !quoted => {
                if has || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => cur.push(c),
        }
    }
    if has || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The veth prefix when none is configured.
pub const DEFAULT_VETH_PREFIX: &str = "eni";

impl SnatPlan {
    /// The configured veth prefix, or [`DEFAULT_VETH_PREFIX`].
    pub fn veth_prefix(&self) -> &str {
        if self.veth_prefix.is_empty() {
            DEFAULT_VETH_PREFIX
        } else {
            &self.veth_prefix
        }
    }

    fn mark(&self) -> String {
        format!("{:#x}/{:#x}", self.connmark, self.connmark)
    }

    /// The rules of [`SNAT_CHAIN`].
    pub fn snat_chain(&self) -> Vec<Vec<String>> {
        let mut rules = Vec::new();
        for c in &self.vpc_cidrs {
            rules.push(s(&[
                "-d",
                &c.to_string(),
                "-m",
                "comment",
                "--comment",
                "AWS SNAT CHAIN",
                "-j",
                "RETURN",
            ]));
        }
        for c in &self.exclude_cidrs {
            rules.push(s(&[
                "-d",
                &c.to_string(),
                "-m",
                "comment",
                "--comment",
                "AWS SNAT CHAIN EXCLUSION",
                "-j",
                "RETURN",
            ]));
        }
        let mut last = s(&[
            "!",
            "-o",
            "vlan+",
            "-m",
            "comment",
            "--comment",
            "AWS, SNAT",
            "-m",
            "addrtype",
            "!",
            "--dst-type",
            "LOCAL",
            "-j",
            "SNAT",
            "--to-source",
            &self.primary_ip.to_string(),
        ]);
        match self.randomize {
            RandomizeSnat::Prng => last.push("--random-fully".into()),
            RandomizeSnat::HashRandom => last.push("--random".into()),
            RandomizeSnat::None => {}
        }
        rules.push(last);
        rules
    }

    /// The rules of [`CONNMARK_CHAIN`].
    pub fn connmark_chain(&self) -> Vec<Vec<String>> {
        let mut rules: Vec<Vec<String>> = self
            .vpc_cidrs
            .iter()
            .chain(&self.exclude_cidrs)
            .map(|c| {
                s(&[
                    "-d",
                    &c.to_string(),
                    "-m",
                    "comment",
                    "--comment",
                    "AWS CONNMARK CHAIN, VPC CIDR",
                    "-j",
                    "RETURN",
                ])
            })
            .collect();
        rules.push(s(&[
            "-m",
            "comment",
            "--comment",
            "AWS, CONNMARK",
            "-j",
            "CONNMARK",
            "--set-xmark",
            &self.mark(),
        ]));
        rules
    }

    /// `(table, chain, rule)` jumps and single rules in the built-in chains, with whether they are wanted.
    pub(crate) fn fixed_rules(&self) -> Vec<(&'static str, &'static str, Vec<String>, bool)> {
        let snat = !self.external_snat;
        let mark = format!("{:#x}", self.connmark);
        let veths = format!("{}+", self.veth_prefix());
        vec![
            (
                "nat",
                "POSTROUTING",
                s(&[
                    "-m",
                    "comment",
                    "--comment",
                    "AWS SNAT CHAIN",
                    "-j",
                    SNAT_CHAIN,
                ]),
                snat,
            ),
            (
                "nat",
                "PREROUTING",
                s(&[
                    "-i",
                    &veths,
                    "-m",
                    "comment",
                    "--comment",
                    "AWS, outbound connections",
                    "-j",
                    CONNMARK_CHAIN,
                ]),
                snat,
            ),
            (
                "nat",
                "PREROUTING",
                s(&[
                    "-m",
                    "comment",
                    "--comment",
                    "AWS, CONNMARK",
                    "-j",
                    "CONNMARK",
                    "--restore-mark",
                    "--mask",
                    &mark,
                ]),
                snat,
            ),
            (
                "mangle",
                "PREROUTING",
                s(&[
                    "-i",
                    &veths,
                    "-m",
                    "comment",
                    "--comment",
                    "AWS, primary ENI",
                    "-j",
                    "CONNMARK",
                    "--restore-mark",
                    "--mask",
                    &mark,
                ]),
                snat || self.node_port_support,
            ),
            (
                "mangle",
                "PREROUTING",
                s(&[
                    "-i",
                    &self.primary_if,
                    "-m",
                    "comment",
                    "--comment",
                    "AWS, primary ENI",
                    "-m",
                    "addrtype",
                    "--dst-type",
                    "LOCAL",
                    "--limit-iface-in",
                    "-j",
                    "CONNMARK",
                    "--set-xmark",
                    &self.mark(),
                ]),
                self.node_port_support,
            ),
        ]
    }

    /// Whether the fwmark rule (priority 1024) is wanted.
    pub fn wants_fwmark_rule(&self) -> bool {
        !self.external_snat || self.node_port_support
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_words_round_trip_through_quoting() {
        let words = s(&["-m", "comment", "--comment", "AWS, SNAT", "-j", "RETURN"]);
        let line: Vec<String> = words.iter().map(|w| quote(w)).collect();
        assert_eq!(split_rule(&line.join(" ")), words);
    }
}
