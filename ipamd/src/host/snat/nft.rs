//! The native nftables backend: the whole SNAT/connmark job in one table of our own, `table ip aws-cni`,
//! replaced atomically.
//!
//! ```text
//!   table ip aws-cni {
//!     chain nat-prerouting {   type nat hook prerouting priority -90      (after kube-proxy's DNAT at -100)
//!       fib daddr type local return                 (traffic to the node itself is never marked)
//!       iifname "<veth prefix>*" jump snat-mark     (new connections from pods, after DNAT: the backend pod's
//!                                                    address, not the ClusterIP)
//!       per mark bit: ct mark & bit == 0 → clear the bit in meta mark; == bit → set it   (restore, first packet)
//!     }
//!     chain snat-mark { ip daddr <VPC and excluded CIDRs> return; ct mark set ct mark | <mark> }
//!     chain mangle-prerouting {  type filter hook prerouting priority -150
//!       iifname "<veth prefix>*" <restore per bit>                         (every later packet)
//!       iifname "<primary>" fib daddr . iif type local ct mark set ct mark | <mark>   (NodePort support)
//!     }
//!     chain nat-postrouting {  type nat hook postrouting priority 100
//!       ip daddr <VPC and excluded CIDRs> return
//!       oifname != "vlan*" fib daddr type != local snat to <primary IP> [fully-random | random]
//!     }
//!   }
//! ```
//!
//! The table and chain names and the -90 priority are the anchor's (its nftables connmark backend), so a node
//! upgraded from the anchor has its table replaced rather than doubled. The restore is per bit so that mark bits
//! owned by other components are left alone.
//!
//! Every apply is one `nft -f -` script: `table ip aws-cni` (create if missing), `delete table ip aws-cni`, then the
//! full table. nft sends a script as a single netlink batch, which the kernel commits or refuses as a whole, so no
//! packet ever sees a half-written table and a failed apply leaves the previous one in place. (The Rust nftables
//! crates either drive the same binary with JSON or would add a netlink expression encoder of our own to
//! maintain; the text script keeps the transaction and is what an operator reads back with `nft list table`.)

use std::path::PathBuf;

use async_trait::async_trait;

use super::backend::{BackendKind, SnatBackend};
use super::iptables::{run_blocking, SnatError};
use super::plan::SnatPlan;
use crate::config::RandomizeSnat;

/// Our table's family and name.
pub const NFT_TABLE: &str = "aws-cni";
/// The nat prerouting chain: after DNAT (-100).
pub const NAT_PREROUTING_PRIORITY: i32 = -90;

/// nft as the daemon uses it.
#[async_trait]
pub trait Nft: Send + Sync + std::fmt::Debug + 'static {
    /// Runs `script` as one transaction (`nft -f -`).
    async fn run(&self, script: &str) -> Result<(), SnatError>;
    /// `nft list table <family> <name>`; `None` when there is no such table.
    async fn list_table(&self, family: &str, name: &str) -> Result<Option<String>, SnatError>;
}

/// The machine's `nft` binary, optionally inside another network namespace.
#[derive(Debug, Clone)]
pub struct CommandNft {
    pub nft: String,
    pub netns: Option<PathBuf>,
}

impl Default for CommandNft {
    fn default() -> Self {
        CommandNft {
            nft: "nft".into(),
            netns: None,
        }
    }
}

impl CommandNft {
    /// nft in another network namespace (a path such as `/run/netns/NAME` or `/proc/PID/fd/N`).
    pub fn in_netns(path: impl Into<PathBuf>) -> CommandNft {
        CommandNft {
            netns: Some(path.into()),
            ..CommandNft::default()
        }
    }

    async fn exec(&self, args: Vec<String>, stdin: Option<String>) -> Result<String, SnatError> {
        let (bin, args) = match &self.netns {
            None => (self.nft.clone(), args),
            Some(ns) => {
                let mut full = vec![format!("--net={}", ns.display()), self.nft.clone()];
                full.extend(args);
                ("nsenter".to_string(), full)
            }
        };
        tokio::task::spawn_blocking(move || run_blocking(&bin, &args, stdin.as_deref()))
            .await
            .map_err(|e| SnatError::Spawn {
                cmd: "nft".into(),
                message: e.to_string(),
            })?
    }
}

#[async_trait]
impl Nft for CommandNft {
    async fn run(&self, script: &str) -> Result<(), SnatError> {
        self.exec(vec!["-f".into(), "-".into()], Some(script.to_string()))
            .await
            .map(|_| ())
    }

    async fn list_table(&self, family: &str, name: &str) -> Result<Option<String>, SnatError> {
        match self
            .exec(
                vec!["list".into(), "table".into(), family.into(), name.into()],
                None,
            )
            .await
        {
            Ok(out) => Ok(Some(out)),
            Err(SnatError::Failed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

fn bits(mark: u32) -> impl Iterator<Item = u32> {
    (0..32).map(|i| 1u32 << i).filter(move |b| mark & b != 0)
}

fn restore_rules(mark: u32, prefix: &str) -> Vec<String> {
    bits(mark)
        .flat_map(|b| {
            [
                format!(
                    "{prefix}ct mark & {b:#x} == 0x0 meta mark set meta mark & {:#x}",
                    !b
                ),
                format!("{prefix}ct mark & {b:#x} == {b:#x} meta mark set meta mark | {b:#x}"),
            ]
        })
        .collect()
}

fn chain(out: &mut String, name: &str, hook: Option<&str>, rules: &[String]) {
    out.push_str(&format!("  chain {name} {{\n"));
    if let Some(h) = hook {
        out.push_str(&format!("    {h}; policy accept;\n"));
    }
    for r in rules {
        out.push_str(&format!("    {r}\n"));
    }
    out.push_str("  }\n");
}

/// The table a plan wants, as nft syntax; `None` when it wants no rules at all.
pub fn nft_table(plan: &SnatPlan) -> Option<String> {
    let snat = !plan.external_snat;
    if !snat && !plan.node_port_support {
        return None;
    }
    let veths = format!("iifname \"{}*\" ", plan.veth_prefix());
    let mark = plan.connmark;
    let returns: Vec<String> = plan
        .vpc_cidrs
        .iter()
        .chain(&plan.exclude_cidrs)
        .map(|c| format!("ip daddr {c} return"))
        .collect();
    let mut out = format!("table ip {NFT_TABLE} {{\n");
    if snat {
        let mut pre = vec![
            "fib daddr type local return".to_string(),
            format!("{veths}jump snat-mark"),
        ];
        pre.extend(restore_rules(mark, ""));
        chain(
            &mut out,
            "nat-prerouting",
            Some(&format!(
                "type nat hook prerouting priority {NAT_PREROUTING_PRIORITY}"
            )),
            &pre,
        );
        let mut set = returns.clone();
        set.push(format!("ct mark set ct mark | {mark:#x}"));
        chain(&mut out, "snat-mark", None, &set);
        let mut post = returns;
        let random = match plan.randomize {
            RandomizeSnat::Prng => " fully-random",
            RandomizeSnat::HashRandom => " random",
            RandomizeSnat::None => "",
        };
        post.push(format!(
            "oifname != \"vlan*\" fib daddr type != local snat to {}{random}",
            plan.primary_ip
        ));
        chain(
            &mut out,
            "nat-postrouting",
            Some("type nat hook postrouting priority 100"),
            &post,
        );
    }
    let mut mangle = restore_rules(mark, &veths);
    if plan.node_port_support {
        mangle.push(format!(
            "iifname \"{}\" fib daddr . iif type local ct mark set ct mark | {mark:#x}",
            plan.primary_if
        ));
    }
    chain(
        &mut out,
        "mangle-prerouting",
        Some("type filter hook prerouting priority -150"),
        &mangle,
    );
    out.push_str("}\n");
    Some(out)
}

/// The transaction that makes the table exactly what `plan` wants (or removes it).
pub fn nft_script(plan: Option<&SnatPlan>) -> String {
    // `table` first so that `delete` never fails on a node without the table.
    let mut script = format!("table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n");
    if let Some(table) = plan.and_then(nft_table) {
        script.push_str(&table);
    }
    script
}

/// Each chain of a table and how many rules it has, from our script or from `nft list table` (the two print
/// rules differently, but one per line inside `chain … { … }`, after the `type …` line of a base chain).
fn shape(table: &str) -> Shape {
    let mut out: Shape = Vec::new();
    let mut inside = false;
    for line in table.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("chain ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            out.push((name.to_string(), 0));
            inside = true;
        } else if line == "}" {
            inside = false;
        } else if inside && !line.is_empty() && !line.starts_with("type ") {
            if let Some(last) = out.last_mut() {
                last.1 += 1;
            }
        }
    }
    out.sort();
    out
}

/// A table's chains with their rule counts ([`shape`]).
type Shape = Vec<(String, usize)>;
/// The last script written, and the shape of its table.
type Written = Option<(String, Shape)>;

/// [`SnatBackend`] over our own nftables table.
///
/// The table is rewritten only when the plan changed or the kernel's copy no longer has the chains and rule counts
/// of the last one written (someone flushed or deleted it): rewriting re-registers the hooks, and an unchanged
/// table has no reason to move among the other tables' chains of the same priority.
#[derive(Debug, Clone)]
pub struct NftBackend {
    pub nft: std::sync::Arc<dyn Nft>,
    written: std::sync::Arc<std::sync::Mutex<Written>>,
}

impl NftBackend {
    /// The backend over `nft`.
    pub fn new(nft: std::sync::Arc<dyn Nft>) -> NftBackend {
        NftBackend {
            nft,
            written: std::sync::Arc::default(),
        }
    }

    fn written(&self) -> std::sync::MutexGuard<'_, Written> {
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl SnatBackend for NftBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Nftables
    }

    async fn apply(&self, plan: &SnatPlan) -> Result<(), SnatError> {
        let script = nft_script(Some(plan));
        let last = self.written().clone();
        if let Some((_, want)) = last.as_ref().filter(|(w, _)| *w == script) {
            let have = self.nft.list_table("ip", NFT_TABLE).await?;
            let intact = match &have {
                Some(listing) => shape(listing) == *want,
                None => want.is_empty(),
            };
            if intact {
                return Ok(());
            }
            tracing::warn!("table ip {NFT_TABLE} changed behind ipamd's back; rewriting it");
        }
        self.nft.run(&script).await?;
        let want = nft_table(plan).map(|t| shape(&t)).unwrap_or_default();
        *self.written() = Some((script, want));
        Ok(())
    }

    async fn remove(&self) -> Result<(), SnatError> {
        *self.written() = None;
        self.nft.run(&nft_script(None)).await
    }
}

/// An in-memory nft for tests: records every script, and keeps the tables the scripts leave (understanding only
/// the `table`/`delete table`/`table … { … }` statements the backend writes) and any added with
/// [`RecordingNft::add_table`].
#[cfg(any(test, feature = "fakes"))]
#[derive(Debug, Clone, Default)]
pub struct RecordingNft {
    tables: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// When set, every script fails (as on a host without nf_tables).
    pub broken: bool,
}

#[cfg(any(test, feature = "fakes"))]
impl RecordingNft {
    fn tables(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, String>> {
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a table (`"ip kube-proxy"`) with its listing.
    pub fn add_table(&self, family_name: &str, body: &str) {
        self.tables()
            .insert(family_name.to_string(), body.to_string());
    }

    /// The listing of a table (`"ip aws-cni"`).
    pub fn table(&self, family_name: &str) -> Option<String> {
        self.tables().get(family_name).cloned()
    }

    /// Every script run so far.
    pub fn log(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(any(test, feature = "fakes"))]
#[async_trait]
impl Nft for RecordingNft {
    async fn run(&self, script: &str) -> Result<(), SnatError> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(script.to_string());
        if self.broken {
            return Err(SnatError::Failed {
                cmd: "nft -f -".into(),
                stderr: "Operation not supported".into(),
            });
        }
        let mut work = self.tables().clone();
        let mut lines = script.lines().peekable();
        while let Some(line) = lines.next() {
            if let Some(rest) = line.strip_prefix("delete table ") {
                if work.remove(rest.trim()).is_none() {
                    return Err(SnatError::Failed {
                        cmd: "nft -f -".into(),
                        stderr: "No such file or directory".into(),
                    });
                }
            } else if let Some(rest) = line.strip_prefix("table ") {
                match rest.strip_suffix(" {") {
                    Some(name) => {
                        let mut body = format!("{line}\n");
                        for l in lines.by_ref() {
                            body.push_str(l);
                            body.push('\n');
                            if l == "}" {
                                break;
                            }
                        }
                        work.insert(name.to_string(), body);
                    }
                    None => {
                        work.entry(rest.trim().to_string()).or_default();
                    }
                }
            }
        }
        *self.tables() = work;
        Ok(())
    }

    async fn list_table(&self, family: &str, name: &str) -> Result<Option<String>, SnatError> {
        if self.broken {
            return Err(SnatError::Spawn {
                cmd: "nft".into(),
                message: "No such file or directory".into(),
            });
        }
        Ok(self.table(&format!("{family} {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> SnatPlan {
        SnatPlan {
            primary_if: "ens5".into(),
            veth_prefix: "cali".into(),
            ..crate::host::snat::testing::plan()
        }
    }

    #[test]
    fn the_table_runs_after_dnat_skips_local_and_uses_the_veth_prefix() {
        let t = nft_table(&plan()).expect("table");
        let pre = t
            .split("chain nat-prerouting {")
            .nth(1)
            .and_then(|c| c.split('}').next())
            .expect("chain");
        let lines: Vec<&str> = pre
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(
            lines[0],
            "type nat hook prerouting priority -90; policy accept;"
        );
        assert_eq!(lines[1], "fib daddr type local return");
        assert_eq!(lines[2], "iifname \"cali*\" jump snat-mark");
        assert_eq!(
            lines[3],
            "ct mark & 0x80 == 0x0 meta mark set meta mark & 0xffffff7f"
        );
        assert!(t.contains("ip daddr 192.168.0.0/16 return"), "{t}");
        assert!(t.contains("snat to 10.0.0.4 fully-random"), "{t}");
        assert!(
            t.contains("iifname \"ens5\" fib daddr . iif type local"),
            "{t}"
        );
        assert!(!t.contains("eni*"), "{t}");
    }

    #[test]
    fn external_snat_keeps_only_node_port_marking_and_nothing_removes_the_table() {
        let mut p = plan();
        p.external_snat = true;
        let t = nft_table(&p).expect("table");
        assert!(
            !t.contains("snat to") && !t.contains("nat-prerouting"),
            "{t}"
        );
        assert!(t.contains("mangle-prerouting"), "{t}");
        p.node_port_support = false;
        assert_eq!(nft_table(&p), None);
        assert_eq!(
            nft_script(Some(&p)),
            "table ip aws-cni\ndelete table ip aws-cni\n"
        );
    }

    #[test]
    fn multi_bit_marks_restore_bit_by_bit() {
        let mut p = plan();
        p.connmark = 0x180;
        let t = nft_table(&p).expect("table");
        assert_eq!(t.matches("ct mark & 0x100 ==").count(), 4, "{t}");
        assert_eq!(t.matches("ct mark & 0x80 ==").count(), 4, "{t}");
    }

    #[tokio::test]
    async fn the_backend_replaces_the_table_whole_and_removes_it() {
        let nft = RecordingNft::default();
        nft.add_table(
            "ip aws-cni",
            "table ip aws-cni {\n  chain stale {\n  }\n}\n",
        );
        let b = NftBackend::new(std::sync::Arc::new(nft.clone()));
        b.apply(&plan()).await.expect("apply");
        let t = nft.table("ip aws-cni").expect("table");
        assert!(!t.contains("stale") && t.contains("snat-mark"), "{t}");
        b.apply(&plan()).await.expect("again");
        assert_eq!(nft.table("ip aws-cni"), Some(t.clone()));
        assert_eq!(nft.log().len(), 1, "an intact table is not rewritten");
        // Flushed behind our back: rewritten.
        nft.add_table(
            "ip aws-cni",
            &t.replace("    fib daddr type local return\n", ""),
        );
        b.apply(&plan()).await.expect("repair");
        assert_eq!(nft.log().len(), 2);
        assert_eq!(nft.table("ip aws-cni"), Some(t.clone()));
        // A changed plan is written.
        let mut other = plan();
        other.connmark = 0x100;
        b.apply(&other).await.expect("changed");
        assert_eq!(nft.log().len(), 3);
        b.remove().await.expect("remove");
        b.remove().await.expect("remove twice");
        assert_eq!(nft.table("ip aws-cni"), None);
    }

    /// The script is accepted by the kernel and `nft` (in a throwaway namespace), and re-applying it is stable.
    #[tokio::test]
    async fn real_nft_accepts_the_table_and_replaces_it_atomically() {
        let Some((_ns, path)) = crate::host::snat::testing::scratch_netns_with_nft() else {
            return;
        };
        let nft = CommandNft::in_netns(&path);
        let b = NftBackend::new(std::sync::Arc::new(nft.clone()));
        assert_eq!(nft.list_table("ip", NFT_TABLE).await.expect("list"), None);
        b.apply(&plan()).await.expect("apply");
        let first = nft
            .list_table("ip", NFT_TABLE)
            .await
            .expect("list")
            .expect("table");
        assert!(
            first.contains("priority dstnat + 10") || first.contains("priority -90"),
            "{first}"
        );
        assert!(first.contains("fib daddr type local return"), "{first}");
        b.apply(&plan()).await.expect("again");
        assert_eq!(
            nft.list_table("ip", NFT_TABLE).await.expect("list"),
            Some(first.clone())
        );
        // A chain flushed behind our back is noticed through `nft list table` and rewritten.
        nft.run("flush chain ip aws-cni nat-prerouting\n")
            .await
            .expect("flush");
        b.apply(&plan()).await.expect("repair");
        assert_eq!(
            nft.list_table("ip", NFT_TABLE).await.expect("list"),
            Some(first.clone())
        );
        // A broken plan is refused whole: the table stays as it was.
        let mut bad = plan();
        bad.primary_if = "bad\"name".into();
        b.apply(&bad).await.expect_err("refused");
        assert_eq!(
            nft.list_table("ip", NFT_TABLE).await.expect("list"),
            Some(first)
        );
        b.remove().await.expect("remove");
        assert_eq!(nft.list_table("ip", NFT_TABLE).await.expect("list"), None);
    }
}
