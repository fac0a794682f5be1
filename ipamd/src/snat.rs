//! SNAT and connmark rules for pod traffic leaving the VPC (anchor-facts §3.6), through iptables.
//!
//! Pods have VPC addresses. Traffic to the VPC keeps them; traffic anywhere else must leave from the node's primary
//! IP (an internet or NAT gateway only translates the primary ENI's primary IP). With `AWS_VPC_K8S_CNI_EXTERNALSNAT`
//! unset the node does it itself:
//!
//! ```text
//!   nat POSTROUTING  -m comment "AWS SNAT CHAIN" -j AWS-SNAT-CHAIN-0
//!   AWS-SNAT-CHAIN-0:   -d <each VPC CIDR> RETURN; -d <each excluded CIDR> RETURN;
//!                       ! -o vlan+ -m addrtype ! --dst-type LOCAL -j SNAT --to-source <primary IP> [--random-fully]
//!   nat PREROUTING   -i eni+ -j AWS-CONNMARK-CHAIN-0        (new connections from pods)
//!   AWS-CONNMARK-CHAIN-0: -d <VPC / excluded CIDRs> RETURN; CONNMARK --set-xmark <mark>/<mark>
//!   nat PREROUTING   CONNMARK --restore-mark --mask <mark>
//!   mangle PREROUTING -i eni+ CONNMARK --restore-mark --mask <mark>     (every later packet of those connections)
//!   mangle PREROUTING -i <primary> -m addrtype --dst-type LOCAL --limit-iface-in CONNMARK --set-xmark <mark>
//!                                                                        (NodePort support)
//!   rule 1024: fwmark <mark>/<mark> lookup main                          (hostnet, netlink)
//! ```
//!
//! So a pod on a secondary ENI that talks to the internet is routed by the fwmark rule through the main table and
//! eth0 (not its ENI's table, whose gateway would drop a foreign source), and SNATed to the primary IP on the way
//! out; its VPC traffic still leaves through its own ENI (rule 1536).
//!
//! Applying is idempotent and converges from any state: the two chains are rewritten whole in one
//! `iptables-restore --noflush` transaction, each jump is added only if `iptables -C` does not find it, and chains
//! of older layouts (`AWS-SNAT-CHAIN-1..n`, `AWS-CONNMARK-CHAIN-1..n`) are removed. Turning SNAT off removes the
//! jumps and the chains again. The [`Iptables`] trait has the real implementation ([`CommandIptables`]) and an
//! in-memory model ([`RecordingIptables`]) with iptables' semantics for the commands used, for tests without root.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ipnetwork::Ipv4Network;

use crate::config::RandomizeSnat;

pub const SNAT_CHAIN: &str = "AWS-SNAT-CHAIN-0";
pub const CONNMARK_CHAIN: &str = "AWS-CONNMARK-CHAIN-0";

/// An iptables failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnatError {
    #[error("running {cmd}: {message}")]
    Spawn { cmd: String, message: String },
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
}

/// iptables as the daemon uses it.
#[async_trait]
pub trait Iptables: Send + Sync + std::fmt::Debug + 'static {
    /// Runs `iptables <args>`; returns stdout.
    async fn run(&self, args: &[String]) -> Result<String, SnatError>;
    /// Feeds `input` to `iptables-restore --noflush`.
    async fn restore(&self, input: &str) -> Result<(), SnatError>;
}

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
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Quotes an argument for `iptables-restore` input (and `-S` output parsing).
fn quote(arg: &str) -> String {
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

impl SnatPlan {
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
    fn fixed_rules(&self) -> Vec<(&'static str, &'static str, Vec<String>, bool)> {
        let snat = !self.external_snat;
        let mark = format!("{:#x}", self.connmark);
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
                    "eni+",
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
                    "eni+",
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

fn args(table: &str, op: &str, chain: &str, rule: &[String]) -> Vec<String> {
    let mut v = s(&["-t", table, op, chain]);
    v.extend(rule.iter().cloned());
    v
}

async fn exists(ipt: &dyn Iptables, table: &str, chain: &str, rule: &[String]) -> bool {
    ipt.run(&args(table, "-C", chain, rule)).await.is_ok()
}

async fn chains(ipt: &dyn Iptables, table: &str) -> Result<Vec<String>, SnatError> {
    let out = ipt.run(&s(&["-t", table, "-S"])).await?;
    Ok(out
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .map(|c| c.trim().to_string())
        .collect())
}

/// Removes every rule jumping to `chain`, then the chain itself. Missing chains are fine.
async fn remove_chain(ipt: &dyn Iptables, table: &str, chain: &str) -> Result<(), SnatError> {
    let out = ipt.run(&s(&["-t", table, "-S"])).await?;
    for line in out.lines() {
        let words = split_rule(line);
        if words.first().map(String::as_str) == Some("-A")
            && words.windows(2).any(|w| w[0] == "-j" && w[1] == chain)
        {
            let mut del = s(&["-t", table, "-D"]);
            del.extend(words.into_iter().skip(1));
            ipt.run(&del).await?;
        }
    }
    if chains(ipt, table).await?.iter().any(|c| c == chain) {
        ipt.run(&s(&["-t", table, "-F", chain])).await?;
        ipt.run(&s(&["-t", table, "-X", chain])).await?;
    }
    Ok(())
}

/// Brings the node's SNAT/connmark rules to `plan` (see the module docs). Idempotent.
pub async fn apply(ipt: &dyn Iptables, plan: &SnatPlan) -> Result<(), SnatError> {
    // Chains of older layouts (per-CIDR chains 1..n) go first.
    for c in chains(ipt, "nat").await? {
        let stale = [SNAT_CHAIN, CONNMARK_CHAIN].iter().any(|ours| {
            let prefix = ours.trim_end_matches('0');
            c.starts_with(prefix) && c != *ours
        });
        if stale {
            remove_chain(ipt, "nat", &c).await?;
        }
    }
    if plan.external_snat {
        for (table, chain, rule, wanted) in plan.fixed_rules() {
            if !wanted && exists(ipt, table, chain, &rule).await {
                ipt.run(&args(table, "-D", chain, &rule)).await?;
            }
        }
        remove_chain(ipt, "nat", SNAT_CHAIN).await?;
        remove_chain(ipt, "nat", CONNMARK_CHAIN).await?;
    } else {
        let mut input = String::from("*nat\n");
        input.push_str(&format!(
            ":{SNAT_CHAIN} - [0:0]\n:{CONNMARK_CHAIN} - [0:0]\n"
        ));
        for (chain, rules) in [
            (SNAT_CHAIN, plan.snat_chain()),
            (CONNMARK_CHAIN, plan.connmark_chain()),
        ] {
            for r in rules {
                let words: Vec<String> = r.iter().map(|w| quote(w)).collect();
                input.push_str(&format!("-A {chain} {}\n", words.join(" ")));
            }
        }
        input.push_str("COMMIT\n");
        ipt.restore(&input).await?;
    }
    for (table, chain, rule, wanted) in plan.fixed_rules() {
        let present = exists(ipt, table, chain, &rule).await;
        if wanted && !present {
            ipt.run(&args(table, "-A", chain, &rule)).await?;
        } else if !wanted && present {
            ipt.run(&args(table, "-D", chain, &rule)).await?;
        }
    }
    Ok(())
}

/// The real iptables (whichever backend `iptables` is on this machine), in the process's network namespace.
#[derive(Debug, Clone)]
pub struct CommandIptables {
    pub iptables: String,
    pub iptables_restore: String,
    /// Run inside this network namespace (through `nsenter --net=`) instead of the process's own.
    pub netns: Option<std::path::PathBuf>,
}

impl Default for CommandIptables {
    fn default() -> Self {
        CommandIptables {
            iptables: "iptables".into(),
            iptables_restore: "iptables-restore".into(),
            netns: None,
        }
    }
}

impl CommandIptables {
    /// iptables in another network namespace (a path such as `/run/netns/NAME` or `/proc/PID/fd/N`).
    pub fn in_netns(path: impl Into<std::path::PathBuf>) -> CommandIptables {
        CommandIptables {
            netns: Some(path.into()),
            ..CommandIptables::default()
        }
    }

    fn command(&self, bin: &str, args: Vec<String>) -> (String, Vec<String>) {
        match &self.netns {
            None => (bin.to_string(), args),
            Some(ns) => {
                let mut full = vec![format!("--net={}", ns.display()), bin.to_string()];
                full.extend(args);
                ("nsenter".to_string(), full)
            }
        }
    }
}

fn run_blocking(bin: &str, args: &[String], stdin: Option<&str>) -> Result<String, SnatError> {
    use std::io::Write;
    let cmd = format!("{bin} {}", args.join(" "));
    let spawn = |e: std::io::Error| SnatError::Spawn {
        cmd: cmd.clone(),
        message: e.to_string(),
    };
    let mut child = Command::new(bin)
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(SnatError::Failed {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[async_trait]
impl Iptables for CommandIptables {
    async fn run(&self, args: &[String]) -> Result<String, SnatError> {
        let mut full = s(&["-w", "5"]);
        full.extend(args.iter().cloned());
        let (bin, full) = self.command(&self.iptables, full);
        tokio::task::spawn_blocking(move || run_blocking(&bin, &full, None))
            .await
            .map_err(|e| SnatError::Spawn {
                cmd: "iptables".into(),
                message: e.to_string(),
            })?
    }

    async fn restore(&self, input: &str) -> Result<(), SnatError> {
        let input = input.to_string();
        let (bin, args) = self.command(&self.iptables_restore, s(&["-w", "5", "--noflush"]));
        tokio::task::spawn_blocking(move || run_blocking(&bin, &args, Some(&input)).map(|_| ()))
            .await
            .map_err(|e| SnatError::Spawn {
                cmd: "iptables-restore".into(),
                message: e.to_string(),
            })?
    }
}

type Tables = BTreeMap<String, BTreeMap<String, Vec<Vec<String>>>>;

/// An in-memory iptables with the semantics of the commands [`apply`] uses (`-N -X -F -A -I -C -D -S` and
/// `iptables-restore --noflush`), recording every command. Built-in chains exist from the start.
#[derive(Debug, Clone)]
pub struct RecordingIptables {
    tables: Arc<Mutex<Tables>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Default for RecordingIptables {
    fn default() -> Self {
        let mut tables = Tables::new();
        for (t, cs) in [
            ("nat", &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"][..]),
            (
                "mangle",
                &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"][..],
            ),
            ("filter", &["INPUT", "FORWARD", "OUTPUT"][..]),
        ] {
            let chains = tables.entry(t.to_string()).or_default();
            for c in cs {
                chains.insert(c.to_string(), Vec::new());
            }
        }
        RecordingIptables {
            tables: Arc::new(Mutex::new(tables)),
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

const BUILTIN: &[&str] = &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

impl RecordingIptables {
    /// The rules of a chain (`None`: no such chain).
    pub fn rules(&self, table: &str, chain: &str) -> Option<Vec<Vec<String>>> {
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(table)
            .and_then(|t| t.get(chain))
            .cloned()
    }

    /// Every command run so far (`restore` shows as `iptables-restore`).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The whole state, as `-S` would print it for every table.
    pub fn dump(&self) -> String {
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (t, chains) in tables.iter() {
            out.push_str(&format!("*{t}\n{}", dump_table(chains)));
        }
        out
    }
}

fn dump_table(chains: &BTreeMap<String, Vec<Vec<String>>>) -> String {
    let mut out = String::new();
    for c in chains.keys() {
        if BUILTIN.contains(&c.as_str()) {
            out.push_str(&format!("-P {c} ACCEPT\n"));
        } else {
            out.push_str(&format!("-N {c}\n"));
        }
    }
    for (c, rules) in chains {
        for r in rules {
            let words: Vec<String> = r.iter().map(|w| quote(w)).collect();
            out.push_str(&format!("-A {c} {}\n", words.join(" ")));
        }
    }
    out
}

fn fail(cmd: &str, msg: &str) -> SnatError {
    SnatError::Failed {
        cmd: cmd.to_string(),
        stderr: msg.to_string(),
    }
}

#[async_trait]
impl Iptables for RecordingIptables {
    async fn run(&self, args: &[String]) -> Result<String, SnatError> {
        let cmd = format!("iptables {}", args.join(" "));
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(cmd.clone());
        let mut rest: &[String] = args;
        let mut table = "filter".to_string();
        if rest.first().map(String::as_str) == Some("-t") {
            table = rest.get(1).cloned().unwrap_or_default();
            rest = rest.get(2..).unwrap_or_default();
        }
        let op = rest.first().cloned().unwrap_or_default();
        let chain = rest.get(1).cloned().unwrap_or_default();
        let rule: Vec<String> = rest.get(2..).unwrap_or_default().to_vec();
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let t = tables
            .get_mut(&table)
            .ok_or_else(|| fail(&cmd, "no such table"))?;
        match op.as_str() {
            "-S" => Ok(dump_table(t)),
            "-N" => {
                if t.contains_key(&chain) {
                    return Err(fail(&cmd, "Chain already exists."));
                }
                t.insert(chain, Vec::new());
                Ok(String::new())
            }
            "-X" => {
                let referenced = t
                    .values()
                    .flatten()
                    .any(|r| r.windows(2).any(|w| w[0] == "-j" && w[1] == chain));
                match t.get(&chain) {
                    None => Err(fail(&cmd, "No chain/target/match by that name.")),
                    Some(r) if !r.is_empty() || referenced => {
                        Err(fail(&cmd, "Directory not empty / chain in use"))
                    }
                    Some(_) => {
                        t.remove(&chain);
                        Ok(String::new())
                    }
                }
            }
            "-F" => {
                let c = t
                    .get_mut(&chain)
                    .ok_or_else(|| fail(&cmd, "No chain/target/match by that name."))?;
                c.clear();
                Ok(String::new())
            }
            "-A" | "-I" | "-C" | "-D" => {
                if let Some(target) = rule.windows(2).find(|w| w[0] == "-j").map(|w| w[1].clone()) {
                    let builtin_target = target.chars().all(|c| c.is_ascii_uppercase());
                    if !builtin_target && !t.contains_key(&target) {
                        return Err(fail(&cmd, "Couldn't load target"));
                    }
                }
                let c = t
                    .get_mut(&chain)
                    .ok_or_else(|| fail(&cmd, "No chain/target/match by that name."))?;
                match op.as_str() {
                    "-A" => c.push(rule),
                    "-I" => c.insert(0, rule),
                    "-C" => {
                        if !c.contains(&rule) {
                            return Err(fail(&cmd, "Bad rule (does a matching rule exist?)"));
                        }
                    }
                    _ => {
                        let pos = c
                            .iter()
                            .position(|r| *r == rule)
                            .ok_or_else(|| fail(&cmd, "Bad rule (does a matching rule exist?)"))?;
                        c.remove(pos);
                    }
                }
                Ok(String::new())
            }
            _ => Err(fail(&cmd, "unsupported by the recording double")),
        }
    }

    async fn restore(&self, input: &str) -> Result<(), SnatError> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("iptables-restore --noflush\n{input}"));
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        // All or nothing, as the kernel transaction.
        let mut work = tables.clone();
        let mut table: Option<String> = None;
        for line in input.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(t) = line.strip_prefix('*') {
                table = Some(t.to_string());
            } else if line == "COMMIT" {
                table = None;
            } else if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                let t = work
                    .get_mut(table.as_deref().unwrap_or_default())
                    .ok_or_else(|| fail("iptables-restore", "no table"))?;
                // --noflush: a declared chain is created, or flushed if it exists.
                t.insert(name.to_string(), Vec::new());
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let words = split_rule(rest);
                let t = work
                    .get_mut(table.as_deref().unwrap_or_default())
                    .ok_or_else(|| fail("iptables-restore", "no table"))?;
                let c = t
                    .get_mut(&words[0])
                    .ok_or_else(|| fail("iptables-restore", "no such chain"))?;
                c.push(words[1..].to_vec());
            } else {
                return Err(fail("iptables-restore", line));
            }
        }
        *tables = work;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> SnatPlan {
        SnatPlan {
            primary_ip: "10.0.0.4".parse().expect("ip"),
            primary_if: "eth0".into(),
            vpc_cidrs: vec!["10.0.0.0/16".parse().expect("cidr")],
            exclude_cidrs: vec!["192.168.0.0/16".parse().expect("cidr")],
            external_snat: false,
            randomize: RandomizeSnat::Prng,
            connmark: 0x80,
            node_port_support: true,
        }
    }

    #[test]
    fn rule_words_round_trip_through_quoting() {
        let words = s(&["-m", "comment", "--comment", "AWS, SNAT", "-j", "RETURN"]);
        let line: Vec<String> = words.iter().map(|w| quote(w)).collect();
        assert_eq!(split_rule(&line.join(" ")), words);
    }

    #[tokio::test]
    async fn snat_chain_has_vpc_and_excluded_returns_then_snat_to_primary() {
        let ipt = RecordingIptables::default();
        apply(&ipt, &plan()).await.expect("apply");
        let chain = ipt.rules("nat", SNAT_CHAIN).expect("chain");
        assert_eq!(chain.len(), 3);
        assert_eq!(chain[0][..2], s(&["-d", "10.0.0.0/16"])[..]);
        assert!(chain[1].contains(&"192.168.0.0/16".to_string()));
        let last = chain.last().expect("snat");
        assert!(last
            .windows(2)
            .any(|w| w == s(&["--to-source", "10.0.0.4"])));
        assert_eq!(last.last().map(String::as_str), Some("--random-fully"));
        let post = ipt.rules("nat", "POSTROUTING").expect("post");
        assert_eq!(post.len(), 1);
        assert!(post[0].ends_with(&s(&["-j", SNAT_CHAIN])));
        let connmark = ipt.rules("nat", CONNMARK_CHAIN).expect("connmark");
        assert!(connmark
            .last()
            .expect("mark")
            .ends_with(&s(&["--set-xmark", "0x80/0x80"])));
        assert_eq!(ipt.rules("nat", "PREROUTING").map(|r| r.len()), Some(2));
        assert_eq!(ipt.rules("mangle", "PREROUTING").map(|r| r.len()), Some(2));
    }

    #[tokio::test]
    async fn apply_is_idempotent_and_follows_changes() {
        let ipt = RecordingIptables::default();
        apply(&ipt, &plan()).await.expect("apply");
        let first = ipt.dump();
        apply(&ipt, &plan()).await.expect("again");
        assert_eq!(ipt.dump(), first, "re-applying changes nothing");
        let mut p = plan();
        p.exclude_cidrs.clear();
        p.randomize = RandomizeSnat::HashRandom;
        apply(&ipt, &p).await.expect("changed");
        let chain = ipt.rules("nat", SNAT_CHAIN).expect("chain");
        assert_eq!(chain.len(), 2);
        assert_eq!(
            chain[1].last().map(String::as_str),
            Some("--random"),
            "{chain:?}"
        );
    }

    #[tokio::test]
    async fn external_snat_removes_everything_but_node_port_rules() {
        let ipt = RecordingIptables::default();
        apply(&ipt, &plan()).await.expect("apply");
        let mut p = plan();
        p.external_snat = true;
        apply(&ipt, &p).await.expect("off");
        assert_eq!(ipt.rules("nat", SNAT_CHAIN), None);
        assert_eq!(ipt.rules("nat", CONNMARK_CHAIN), None);
        assert_eq!(ipt.rules("nat", "POSTROUTING"), Some(vec![]));
        assert_eq!(ipt.rules("nat", "PREROUTING"), Some(vec![]));
        assert_eq!(
            ipt.rules("mangle", "PREROUTING").map(|r| r.len()),
            Some(2),
            "NodePort support stays"
        );
        p.node_port_support = false;
        apply(&ipt, &p).await.expect("all off");
        assert_eq!(ipt.rules("mangle", "PREROUTING"), Some(vec![]));
        // And back on.
        apply(&ipt, &plan()).await.expect("on again");
        assert_eq!(ipt.rules("nat", SNAT_CHAIN).map(|r| r.len()), Some(3));
    }

    #[tokio::test]
    async fn stale_chains_of_older_layouts_are_removed() {
        let ipt = RecordingIptables::default();
        for a in [
            s(&["-t", "nat", "-N", "AWS-SNAT-CHAIN-1"]),
            s(&["-t", "nat", "-A", "AWS-SNAT-CHAIN-1", "-j", "RETURN"]),
            s(&["-t", "nat", "-A", "POSTROUTING", "-j", "AWS-SNAT-CHAIN-1"]),
        ] {
            ipt.run(&a).await.expect("setup");
        }
        apply(&ipt, &plan()).await.expect("apply");
        assert_eq!(ipt.rules("nat", "AWS-SNAT-CHAIN-1"), None);
        assert_eq!(ipt.rules("nat", "POSTROUTING").map(|r| r.len()), Some(1));
    }
}
