//! The egress SNAT rules, per container as the anchor names them, through iptables (IPv4) or ip6tables (IPv6).
//!
//! ```text
//!   nat POSTROUTING  -s <egress address> -m comment --comment "name: \"aws-cni\" id: \"<ctr>\"" -j CNI-E4-<hash>
//!   CNI-E4-<hash>:   -d 224.0.0.0/4 -j ACCEPT                          (ff00::/8 in CNI-E6-<hash>)
//!                    -j SNAT --to-source <nodeIP> [--random-fully | --random]
//! ```
//!
//! The chain name is containernetworking's `MustFormatChainNameWithPrefix(network, containerID, "E4-"|"E6-")`:
//! `CNI-E4-` plus the hex SHA-512 of network name and container ID, cut to 28 characters; the comment is its
//! `FormatComment`. Keeping both means the anchor's DEL finds our rules and ours finds the anchor's.
//!
//! Which iptables: the one kube-proxy's rules live in (`iptables-legacy` when its marker chains
//! `KUBE-IPTABLES-HINT`/`KUBE-KUBELET-CANARY` are there, or when it holds more rules than `iptables-nft`), else
//! `iptables-nft`, the same decision ipamd's SNAT backend makes (`ipamd::host::snat::detect`, whose idea this
//! follows without linking ipamd). On a node whose kube-proxy runs in nftables mode, `iptables-nft` puts these
//! rules in nf_tables' `ip nat` table, which sees the pods' egress packets like kube-proxy's own table does.
//!
//! The egress range is the node's own: other hosts must not open connections to the pods' egress addresses through
//! the node. As the anchor (its ipamd does it at startup in IPv6 mode, and for IPv6 egress on an IPv4 node), a
//! node-level rule rejects new forwarded connections to the range, inserted first in `filter FORWARD` when missing
//! ([`ensure_forward_reject`]); the pods' own egress (replies of connections they opened) is unaffected:
//!
//! ```text
//!   filter FORWARD  -d 169.254.172.0/22 -m conntrack --ctstate NEW
//!                   -m comment --comment "Block Node Local Pod access via IPv4" -j REJECT   (fd00::ac:00/118, IPv6)
//! ```
//!
//! Every change is idempotent: ADD creates what is missing, DEL removes every jump to the chain (whatever its
//! source), then the chain; GC removes the chains and jumps whose comment names a container that is no longer
//! valid. Commands go through the [`Iptables`] trait; [`CommandIptables`] runs the tools, the tests' double keeps
//! tables in memory.

use std::net::IpAddr;
use std::process::Command;

use sha2::{Digest, Sha512};

/// A failed iptables command.
#[derive(Debug, thiserror::Error)]
pub enum SnatError {
    #[error("running {bin}: {source}")]
    Spawn { bin: String, source: std::io::Error },
    #[error("{bin} {args}: {stderr}")]
    Failed {
        bin: String,
        args: String,
        stderr: String,
    },
}

impl SnatError {
    /// True when iptables says the chain or rule does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            SnatError::Failed { stderr, .. } => {
                let s = stderr.to_ascii_lowercase();
                s.contains("does not exist")
                    || s.contains("no chain/target/match by that name")
                    || s.contains("bad rule")
                    || s.contains("no such file")
            }
            SnatError::Spawn { .. } => false,
        }
    }
}

/// One iptables tool for one family.
pub trait Iptables {
    /// Runs `<tool> -w <args>` and returns stdout.
    fn run(&self, args: &[String]) -> Result<String, SnatError>;
}

/// The real tool.
#[derive(Debug, Clone)]
pub struct CommandIptables {
    pub bin: String,
}

impl Iptables for CommandIptables {
    fn run(&self, args: &[String]) -> Result<String, SnatError> {
        let out = Command::new(&self.bin)
            .arg("-w")
            .arg("5")
            .args(args)
            .output()
            .map_err(|source| SnatError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(SnatError::Failed {
                bin: self.bin.clone(),
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

impl CommandIptables {
    /// The tool for the family (`v6`: ip6tables) in the variant kube-proxy uses (see the module docs).
    pub fn detect(v6: bool) -> CommandIptables {
        let base = if v6 { "ip6tables" } else { "iptables" };
        let legacy = CommandIptables {
            bin: format!("{base}-legacy"),
        };
        let nft = CommandIptables {
            bin: format!("{base}-nft"),
        };
        let usable = |t: &CommandIptables| t.run(&s(&["-t", "nat", "-S", "POSTROUTING"])).is_ok();
        let (legacy_ok, nft_ok) = (usable(&legacy), usable(&nft));
        let choice = match (legacy_ok, nft_ok) {
            (true, true) => {
                if has_hint(&legacy) && !has_hint(&nft) {
                    legacy
                } else if has_hint(&nft) || rule_count(&nft) >= rule_count(&legacy) {
                    nft
                } else {
                    legacy
                }
            }
            (true, false) => legacy,
            (false, true) => nft,
            (false, false) => CommandIptables { bin: base.into() },
        };
        tracing::debug!(bin = %choice.bin, "egress SNAT tool");
        choice
    }
}

fn has_hint(t: &CommandIptables) -> bool {
    t.run(&s(&["-t", "mangle", "-S"])).is_ok_and(|out| {
        out.lines()
            .any(|l| l == "-N KUBE-IPTABLES-HINT" || l == "-N KUBE-KUBELET-CANARY")
    })
}

fn rule_count(t: &CommandIptables) -> usize {
    ["nat", "mangle", "filter"]
        .iter()
        .filter_map(|table| t.run(&s(&["-t", table, "-S"])).ok())
        .map(|out| out.lines().filter(|l| l.starts_with("-A ")).count())
        .sum()
}

fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// containernetworking's chain name: `CNI-` + `prefix` + hex SHA-512(network + container ID), 28 characters.
pub fn chain_name(prefix: &str, network: &str, container_id: &str) -> String {
    let digest = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let mut out = format!("CNI-{prefix}");
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
        if out.len() >= 28 {
            break;
        }
    }
    out.truncate(28);
    out
}

/// containernetworking's rule comment: `name: "<network>" id: "<container ID>"`.
pub fn comment(network: &str, container_id: &str) -> String {
    format!("name: {network:?} id: {container_id:?}")
}

/// The randomisation flag for the SNAT rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Random {
    Fully,
    Hash,
    Off,
}

/// Installs the chain and the jump for `src` (idempotent).
pub fn add(
    ipt: &dyn Iptables,
    chain: &str,
    comment: &str,
    node_ip: IpAddr,
    src: IpAddr,
    random: Random,
) -> Result<(), SnatError> {
    let multicast = if src.is_ipv4() {
        "224.0.0.0/4"
    } else {
        "ff00::/8"
    };
    match ipt.run(&s(&["-t", "nat", "-N", chain])) {
        Ok(_) => {}
        Err(e) if e.to_string().to_ascii_lowercase().contains("exists") => {}
        Err(e) => return Err(e),
    }
    let accept = s(&[
        "-d",
        multicast,
        "-j",
        "ACCEPT",
        "-m",
        "comment",
        "--comment",
        comment,
    ]);
    append_unique(ipt, chain, &accept)?;
    let node = node_ip.to_string();
    let base = s(&[
        "-j",
        "SNAT",
        "--to-source",
        &node,
        "-m",
        "comment",
        "--comment",
        comment,
    ]);
    let with = |flag: &str| {
        let mut r = base.clone();
        r.push(flag.into());
        r
    };
    match random {
        Random::Off => append_unique(ipt, chain, &base)?,
        Random::Hash => append_unique(ipt, chain, &with("--random"))?,
        // --random-fully needs iptables >= 1.6.2 and a kernel that has it: fall back to --random, as the anchor.
        Random::Fully => {
            if let Err(e) = append_unique(ipt, chain, &with("--random-fully")) {
                tracing::warn!(error = %e, "--random-fully refused; using --random");
                append_unique(ipt, chain, &with("--random"))?;
            }
        }
    }
    let jump = s(&[
        "-s",
        &src.to_string(),
        "-j",
        chain,
        "-m",
        "comment",
        "--comment",
        comment,
    ]);
    append_unique(ipt, "POSTROUTING", &jump)
}

/// The anchor's comment of the FORWARD rule that protects the egress range of a family.
pub fn forward_reject_comment(v6: bool) -> &'static str {
    if v6 {
        "Block Node Local Pod access via IPv6"
    } else {
        "Block Node Local Pod access via IPv4"
    }
}

/// Makes sure `filter FORWARD` rejects new connections to the egress range `range` (see the module docs):
/// inserted first when missing, left alone when present (the anchor's rule, same words, counts). Never removed:
/// it belongs to the node, not to a pod.
pub fn ensure_forward_reject(ipt: &dyn Iptables, range: &str, v6: bool) -> Result<(), SnatError> {
    let rule = s(&[
        "-d",
        range,
        "-m",
        "conntrack",
        "--ctstate",
        "NEW",
        "-m",
        "comment",
        "--comment",
        forward_reject_comment(v6),
        "-j",
        "REJECT",
    ]);
    let mut check = s(&["-t", "filter", "-C", "FORWARD"]);
    check.extend_from_slice(&rule);
    if ipt.run(&check).is_ok() {
        return Ok(());
    }
    let mut insert = s(&["-t", "filter", "-I", "FORWARD", "1"]);
    insert.extend_from_slice(&rule);
    ipt.run(&insert).map(|_| ())
}

fn append_unique(ipt: &dyn Iptables, chain: &str, rule: &[String]) -> Result<(), SnatError> {
    let mut check = s(&["-t", "nat", "-C", chain]);
    check.extend_from_slice(rule);
    if ipt.run(&check).is_ok() {
        return Ok(());
    }
    let mut add = s(&["-t", "nat", "-A", chain]);
    add.extend_from_slice(rule);
    ipt.run(&add).map(|_| ())
}

/// Removes every POSTROUTING jump to `chain` and the chain itself; missing is fine. Returns every failure.
pub fn del(ipt: &dyn Iptables, chain: &str) -> Vec<SnatError> {
    let mut errors = Vec::new();
    match ipt.run(&s(&["-t", "nat", "-S", "POSTROUTING"])) {
        Ok(out) => {
            for line in out.lines() {
                let words = split_rule(line);
                if words.first().map(String::as_str) != Some("-A") || !jumps_to(&words, chain) {
                    continue;
                }
                let mut args = s(&["-t", "nat", "-D"]);
                args.extend(words.into_iter().skip(1));
                if let Err(e) = ipt.run(&args) {
                    if !e.is_not_found() {
                        errors.push(e);
                    }
                }
            }
        }
        Err(e) => errors.push(e),
    }
    for op in ["-F", "-X"] {
        if let Err(e) = ipt.run(&s(&["-t", "nat", op, chain])) {
            if !e.is_not_found() {
                errors.push(e);
            }
        }
    }
    errors
}

/// GC: removes the chains (and their jumps) of `network`'s containers that `is_valid` rejects, found by the
/// comments on POSTROUTING's jumps. Returns the container IDs whose rules were removed, and every failure.
pub fn gc(
    ipt: &dyn Iptables,
    prefix: &str,
    network: &str,
    is_valid: &dyn Fn(&str) -> bool,
) -> (Vec<String>, Vec<SnatError>) {
    let mut gone = Vec::new();
    let mut errors = Vec::new();
    let out = match ipt.run(&s(&["-t", "nat", "-S", "POSTROUTING"])) {
        Ok(o) => o,
        Err(e) => return (gone, vec![e]),
    };
    let want_prefix = format!("CNI-{prefix}");
    for line in out.lines() {
        let words = split_rule(line);
        let Some(chain) = target(&words).filter(|c| c.starts_with(&want_prefix)) else {
            continue;
        };
        let Some(id) = comment_id(&words, network) else {
            continue;
        };
        if is_valid(&id) || chain != chain_name(prefix, network, &id) {
            continue;
        }
        errors.extend(del(ipt, &chain));
        gone.push(id);
    }
    gone.sort();
    gone.dedup();
    (gone, errors)
}

fn target(words: &[String]) -> Option<String> {
    words
        .windows(2)
        .find(|w| w[0] == "-j")
        .map(|w| w[1].clone())
}

fn jumps_to(words: &[String], chain: &str) -> bool {
    target(words).as_deref() == Some(chain)
}

/// The container ID of a rule whose comment is `name: "<network>" id: "<id>"`.
fn comment_id(words: &[String], network: &str) -> Option<String> {
    let c = words
        .windows(2)
        .find(|w| w[0] == "--comment")
        .map(|w| w[1].clone())?;
    let rest = c.strip_prefix(&format!("name: {network:?} id: "))?;
    rest.strip_prefix('"')?
        .strip_suffix('"')
        .map(str::to_string)
}

/// Splits a line of `iptables -S` into words: double quotes group, a backslash escapes the next character.
pub fn split_rule(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    in_word = true;
                }
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// An in-memory nat table with iptables' answers for the commands used here (tests without root).
#[cfg(test)]
pub mod fake {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::{Iptables, SnatError};

    #[derive(Debug, Default)]
    pub struct FakeIptables {
        pub chains: RefCell<BTreeMap<String, Vec<Vec<String>>>>,
    }

    fn fail(args: &[String], msg: &str) -> SnatError {
        SnatError::Failed {
            bin: "iptables".into(),
            args: args.join(" "),
            stderr: msg.into(),
        }
    }

    fn quote(w: &str) -> String {
        if w.contains(' ') || w.contains('"') {
            format!("\"{}\"", w.replace('"', "\\\""))
        } else {
            w.to_string()
        }
    }

    impl FakeIptables {
        pub fn new() -> FakeIptables {
            let f = FakeIptables::default();
            for chain in ["POSTROUTING", "FORWARD"] {
                f.chains.borrow_mut().insert(chain.into(), Vec::new());
            }
            f
        }
    }

    impl Iptables for FakeIptables {
        fn run(&self, args: &[String]) -> Result<String, SnatError> {
            let mut chains = self.chains.borrow_mut();
            let (op, chain, rule) = (args[2].as_str(), args[3].clone(), args[4..].to_vec());
            match op {
                "-N" if chains.contains_key(&chain) => Err(fail(args, "Chain already exists.")),
                "-N" => {
                    chains.insert(chain, Vec::new());
                    Ok(String::new())
                }
                "-C" | "-A" | "-D" | "-F" | "-X" | "-S" if !chains.contains_key(&chain) => {
                    Err(fail(args, "No chain/target/match by that name."))
                }
                "-C" if chains[&chain].contains(&rule) => Ok(String::new()),
                "-C" => Err(fail(
                    args,
                    "Bad rule (does a matching rule exist in that chain?).",
                )),
                "-A" => {
                    chains.get_mut(&chain).expect("chain").push(rule);
                    Ok(String::new())
                }
                "-I" => {
                    let at: usize = rule[0].parse().map_err(|_| fail(args, "bad position"))?;
                    let rules = chains
                        .get_mut(&chain)
                        .ok_or_else(|| fail(args, "No chain/target/match by that name."))?;
                    rules.insert(at.saturating_sub(1).min(rules.len()), rule[1..].to_vec());
                    Ok(String::new())
                }
                "-D" => {
                    let rules = chains.get_mut(&chain).expect("chain");
                    match rules.iter().position(|r| *r == rule) {
                        Some(i) => {
                            rules.remove(i);
                            Ok(String::new())
                        }
                        None => Err(fail(
                            args,
                            "Bad rule (does a matching rule exist in that chain?).",
                        )),
                    }
                }
                "-F" => {
                    chains.get_mut(&chain).expect("chain").clear();
                    Ok(String::new())
                }
                "-X" => {
                    chains.remove(&chain);
                    Ok(String::new())
                }
                "-S" => Ok(chains[&chain]
                    .iter()
                    .map(|r| {
                        let words: Vec<String> = r.iter().map(|w| quote(w)).collect();
                        format!("-A {chain} {}\n", words.join(" "))
                    })
                    .collect()),
                _ => Err(fail(args, "unsupported by the fake")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeIptables;
    use super::*;

    #[test]
    fn the_forward_reject_is_inserted_first_once_and_kept() {
        let ipt = FakeIptables::new();
        ipt.chains
            .borrow_mut()
            .get_mut("FORWARD")
            .expect("FORWARD")
            .push(s(&["-j", "KUBE-FORWARD"]));
        ensure_forward_reject(&ipt, "169.254.172.0/22", false).expect("insert");
        ensure_forward_reject(&ipt, "169.254.172.0/22", false).expect("again");
        let forward = ipt.chains.borrow()["FORWARD"].clone();
        assert_eq!(forward.len(), 2, "{forward:?}");
        assert_eq!(
            forward[0],
            s(&[
                "-d",
                "169.254.172.0/22",
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-m",
                "comment",
                "--comment",
                "Block Node Local Pod access via IPv4",
                "-j",
                "REJECT"
            ])
        );
        // A pod's DEL and GC leave it: it is the node's.
        let c = chain_name("E4-", "aws-cni", "abc");
        add(
            &ipt,
            &c,
            &comment("aws-cni", "abc"),
            "10.0.0.4".parse().expect("ip"),
            "169.254.172.2".parse().expect("ip"),
            Random::Off,
        )
        .expect("add");
        assert!(del(&ipt, &c).is_empty());
        assert_eq!(ipt.chains.borrow()["FORWARD"].len(), 2);
        ensure_forward_reject(&ipt, "fd00::ac:0/118", true).expect("v6");
        assert!(ipt.chains.borrow()["FORWARD"][0]
            .contains(&"Block Node Local Pod access via IPv6".to_string()));
    }

    #[test]
    fn chain_and_comment_are_containernetworkings() {
        let c = chain_name("E4-", "aws-cni", "abc");
        assert_eq!(c.len(), 28);
        assert!(c.starts_with("CNI-E4-"), "{c}");
        // hex(sha512("aws-cniabc")) starts with these 21 characters (computed with sha512sum).
        let expect = std::process::Command::new("sh")
            .args(["-c", "printf %s aws-cniabc | sha512sum"])
            .output()
            .expect("sha512sum");
        let hex = String::from_utf8_lossy(&expect.stdout);
        assert_eq!(&c[7..], &hex[..21]);
        assert_eq!(comment("aws-cni", "abc"), r#"name: "aws-cni" id: "abc""#);
    }

    #[test]
    fn add_is_idempotent_and_del_and_gc_leave_nothing() {
        let ipt = FakeIptables::new();
        let node: IpAddr = "10.0.0.10".parse().expect("ip");
        let (c1, c2) = (
            chain_name("E4-", "aws-cni", "one"),
            chain_name("E4-", "aws-cni", "two"),
        );
        for _ in 0..2 {
            add(
                &ipt,
                &c1,
                &comment("aws-cni", "one"),
                node,
                "169.254.172.2".parse().expect("ip"),
                Random::Fully,
            )
            .expect("add");
        }
        add(
            &ipt,
            &c2,
            &comment("aws-cni", "two"),
            node,
            "169.254.172.3".parse().expect("ip"),
            Random::Off,
        )
        .expect("add");
        {
            let chains = ipt.chains.borrow();
            assert_eq!(chains["POSTROUTING"].len(), 2, "{chains:?}");
            assert_eq!(chains[&c1].len(), 2);
            assert!(chains[&c1][1].contains(&"--random-fully".to_string()));
            assert!(chains[&c1][1].contains(&"10.0.0.10".to_string()));
        }
        // GC keeps "one", removes "two" (found through the comment of its jump).
        let (gone, errors) = gc(&ipt, "E4-", "aws-cni", &|id| id == "one");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(gone, vec!["two".to_string()]);
        assert!(!ipt.chains.borrow().contains_key(&c2));
        assert!(del(&ipt, &c1).is_empty());
        assert!(
            del(&ipt, &c1).is_empty(),
            "a second DEL finds nothing and is fine"
        );
        let chains = ipt.chains.borrow();
        assert!(chains["POSTROUTING"].is_empty());
        assert_eq!(
            chains.keys().collect::<Vec<_>>(),
            ["FORWARD", "POSTROUTING"],
            "only the built-in chains are left: {chains:?}"
        );
    }

    #[test]
    fn rules_split_like_a_shell() {
        let w = split_rule(
            r#"-A POSTROUTING -s 169.254.172.2/32 -m comment --comment "name: \"aws-cni\" id: \"x\"" -j CNI-E4-abc"#,
        );
        assert_eq!(w[7], r#"name: "aws-cni" id: "x""#);
        assert_eq!(comment_id(&w, "aws-cni").as_deref(), Some("x"));
        assert_eq!(target(&w).as_deref(), Some("CNI-E4-abc"));
    }
}
