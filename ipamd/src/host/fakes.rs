//! The host's test doubles, compiled only for tests and with the `fakes` feature: [`FakeHost`], the one
//! [`HostNetwork`] double, and [`RecordingIptables`], an in-memory iptables with the real tool's semantics.
//!
//! [`FakeHost`] is cheap to clone: every clone shares the same state, so a test keeps one and hands another to
//! the code under test.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use datapath::NetlinkError;

use super::snat::plan::quote;
use super::snat::{self, split_rule, Iptables, SnatError, SnatPlan};
use super::{HostNetError, HostNetwork, HostPlan};
use crate::core::datastore::Eni;

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A [`HostNetwork`] without a kernel.
///
/// - ENIs: records which were set up and torn down (in order, repeats included); node-wide settings apply the
///   SNAT plan to [`FakeHost::iptables`] with `eth0` as the primary interface.
/// - Pods: the veths that exist ([`FakeHost::veths`]), the addresses whose routing was removed, and those whose
///   conntrack flows were deleted ([`FakeHost::forgotten`]).
/// - Links: the links that exist by index, the indexes whose deletion fails, the deleted indexes, and an
///   optional gate that holds every deletion until [`FakeHost::release`] lets it through.
#[derive(Debug, Default, Clone)]
pub struct FakeHost {
    pub setups: Arc<Mutex<Vec<String>>>,
    pub teardowns: Arc<Mutex<Vec<String>>>,
    pub iptables: RecordingIptables,
    pub veths: Arc<Mutex<BTreeSet<String>>>,
    pub removed: Arc<Mutex<Vec<Ipv4Addr>>>,
    /// The pods of every drift repair asked for.
    pub repaired: Arc<Mutex<Vec<Vec<super::drift::PodRoute>>>>,
    /// Addresses whose conntrack flows were deleted.
    pub forgotten: Arc<Mutex<Vec<Ipv4Addr>>>,
    pub links: Arc<Mutex<BTreeMap<u32, String>>>,
    pub failing: Arc<Mutex<BTreeSet<u32>>>,
    pub deleted: Arc<Mutex<Vec<u32>>>,
    pub gate: Option<Arc<tokio::sync::Semaphore>>,
    /// The next this many ENI setups fail as if the ENI's link never appeared.
    pub failing_eni_setups: Arc<Mutex<u32>>,
    /// Every node-wide plan applied ([`HostNetwork::setup_host`]), in order.
    pub host_plans: Arc<Mutex<Vec<HostPlan>>>,
    /// The next this many node-wide setups fail (as if iptables refused).
    pub failing_host_setups: Arc<Mutex<u32>>,
}

impl FakeHost {
    /// A double whose link deletions wait for [`FakeHost::release`].
    pub fn gated() -> FakeHost {
        FakeHost {
            gate: Some(Arc::new(tokio::sync::Semaphore::new(0))),
            ..FakeHost::default()
        }
    }

    /// Lets `n` more link deletions through the gate.
    pub fn release(&self, n: usize) {
        if let Some(g) = &self.gate {
            g.add_permits(n);
        }
    }

    /// Adds a link at `index`.
    pub fn add(&self, index: u32, name: &str) {
        guard(&self.links).insert(index, name.to_string());
    }

    /// Whether a link is at `index`.
    pub fn exists(&self, index: u32) -> bool {
        guard(&self.links).contains_key(&index)
    }

    /// ENIs set up (in order, repeats included).
    pub fn setups(&self) -> Vec<String> {
        guard(&self.setups).clone()
    }

    /// ENIs torn down.
    pub fn teardowns(&self) -> Vec<String> {
        guard(&self.teardowns).clone()
    }

    /// Every node-wide plan applied, in order.
    pub fn host_plans(&self) -> Vec<HostPlan> {
        guard(&self.host_plans).clone()
    }

    /// Makes the next node-wide setup fail (`true`) or not.
    pub fn fail_setup_host(&self, fail: bool) {
        *guard(&self.failing_host_setups) = u32::from(fail);
    }
}

#[async_trait]
impl HostNetwork for FakeHost {
    async fn setup_eni(&self, eni: &Eni, _mtu: u32) -> Result<(), HostNetError> {
        {
            let mut failing = guard(&self.failing_eni_setups);
            if *failing > 0 {
                *failing -= 1;
                return Err(HostNetError::LinkNotFound {
                    eni: eni.id.clone(),
                    mac: eni.mac,
                    tries: 1,
                });
            }
        }
        guard(&self.setups).push(eni.id.clone());
        Ok(())
    }

    async fn teardown_eni(&self, eni: &Eni) -> Result<(), HostNetError> {
        guard(&self.teardowns).push(eni.id.clone());
        Ok(())
    }

    async fn setup_host(&self, plan: &HostPlan) -> Result<(), HostNetError> {
        {
            let mut failing = guard(&self.failing_host_setups);
            if *failing > 0 {
                *failing -= 1;
                return Err(HostNetError::Snat(snat::SnatError::Failed {
                    cmd: "iptables-restore".into(),
                    stderr: "injected failure".into(),
                }));
            }
        }
        guard(&self.host_plans).push(plan.clone());
        let snat = SnatPlan {
            primary_if: "eth0".into(),
            ..plan.snat.clone()
        };
        snat::apply(&self.iptables, &snat).await?;
        Ok(())
    }

    async fn veth_exists(&self, name: &str) -> Result<bool, NetlinkError> {
        Ok(guard(&self.veths).contains(name))
    }

    async fn remove_pod_routing(&self, ip: Ipv4Addr) -> Vec<NetlinkError> {
        guard(&self.removed).push(ip);
        Vec::new()
    }

    async fn repair_pods(
        &self,
        pods: &[super::drift::PodRoute],
        _pool: &BTreeSet<Ipv4Addr>,
    ) -> Result<super::drift::Repairs, NetlinkError> {
        guard(&self.repaired).push(pods.to_vec());
        Ok(super::drift::Repairs::default())
    }

    fn forget_flows(&self, ip: Ipv4Addr) {
        guard(&self.forgotten).push(ip);
    }

    async fn link_name(&self, index: u32) -> Result<Option<String>, NetlinkError> {
        Ok(guard(&self.links).get(&index).cloned())
    }

    async fn delete_link(&self, index: u32) -> Result<bool, NetlinkError> {
        if let Some(g) = &self.gate {
            if let Ok(permit) = g.acquire().await {
                permit.forget();
            }
        }
        if guard(&self.failing).contains(&index) {
            return Err(NetlinkError::Conflict(format!(
                "link {index}: operation not permitted"
            )));
        }
        let removed = guard(&self.links).remove(&index).is_some();
        if removed {
            guard(&self.deleted).push(index);
        }
        Ok(removed)
    }
}

type Tables = BTreeMap<String, BTreeMap<String, Vec<Vec<String>>>>;

/// An in-memory iptables with the semantics of the commands [`super::snat::apply`] uses (`-N -X -F -A -I -C -D -S` and
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
        guard(&self.tables)
            .get(table)
            .and_then(|t| t.get(chain))
            .cloned()
    }

    /// Every command run so far (`restore` shows as `iptables-restore`).
    pub fn log(&self) -> Vec<String> {
        guard(&self.log).clone()
    }

    /// The whole state, as `-S` would print it for every table.
    pub fn dump(&self) -> String {
        let tables = guard(&self.tables);
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
        guard(&self.log).push(cmd.clone());
        let mut rest: &[String] = args;
        let mut table = "filter".to_string();
        if rest.first().map(String::as_str) == Some("-t") {
            table = rest.get(1).cloned().unwrap_or_default();
            rest = rest.get(2..).unwrap_or_default();
        }
        let op = rest.first().cloned().unwrap_or_default();
        let chain = rest.get(1).cloned().unwrap_or_default();
        let rule: Vec<String> = rest.get(2..).unwrap_or_default().to_vec();
        let mut tables = guard(&self.tables);
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
        guard(&self.log).push(format!("iptables-restore --noflush\n{input}"));
        let mut tables = guard(&self.tables);
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
