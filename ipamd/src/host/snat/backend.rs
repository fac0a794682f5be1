//! The SNAT/connmark backends behind one trait: [`SnatBackend`] (`apply(plan)`, `remove()`), with an iptables
//! implementation ([`IptablesBackend`], over iptables-nft or iptables-legacy) and the native nftables one
//! ([`super::nft::NftBackend`]).
//!
//! Exactly one backend owns the job on a node; [`Backends`] applies the plan through it and, the first time,
//! removes whatever the other backends left (our own earlier rules, or the anchor's `AWS-SNAT-CHAIN-0`,
//! `AWS-CONNMARK-CHAIN-0` and `table ip aws-cni`), so that two layouts never mark or translate the same packet.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::iptables::{Iptables, SnatError};
use super::plan::{s, split_rule, SnatPlan, CONNMARK_CHAIN, SNAT_CHAIN};

/// Which backend programs the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Our own `table ip aws-cni`, through `nft`.
    Nftables,
    /// iptables rules in the kernel's nf_tables (`iptables-nft`).
    IptablesNft,
    /// iptables rules in the legacy x_tables (`iptables-legacy`).
    IptablesLegacy,
}

impl BackendKind {
    /// Every backend.
    pub const ALL: [BackendKind; 3] = [
        BackendKind::Nftables,
        BackendKind::IptablesNft,
        BackendKind::IptablesLegacy,
    ];

    /// The name used in the env override, the metric label and `ipamd status`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Nftables => "nftables",
            BackendKind::IptablesNft => "iptables-nft",
            BackendKind::IptablesLegacy => "iptables-legacy",
        }
    }

    /// Parses a name of [`BackendKind::as_str`].
    pub fn parse(name: &str) -> Option<BackendKind> {
        BackendKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A way of programming the SNAT/connmark rules of a [`SnatPlan`].
#[async_trait]
pub trait SnatBackend: Send + Sync + std::fmt::Debug + 'static {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Brings this backend's rules to `plan`. Idempotent.
    async fn apply(&self, plan: &SnatPlan) -> Result<(), SnatError>;
    /// Removes every rule and chain this backend (or the anchor, in the same backend) may have left. Idempotent;
    /// nothing to remove is fine.
    async fn remove(&self) -> Result<(), SnatError>;
}

/// The iptables layout of [`super::apply`], through one iptables binary pair.
#[derive(Debug, Clone)]
pub struct IptablesBackend {
    pub kind: BackendKind,
    pub iptables: Arc<dyn Iptables>,
}

#[async_trait]
impl SnatBackend for IptablesBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    async fn apply(&self, plan: &SnatPlan) -> Result<(), SnatError> {
        super::apply(self.iptables.as_ref(), plan).await
    }

    async fn remove(&self) -> Result<(), SnatError> {
        remove_iptables(self.iptables.as_ref()).await
    }
}

/// Whether a chain name is one of the SNAT/connmark chains (ours or the anchor's, any layout).
fn is_aws_chain(chain: &str) -> bool {
    [SNAT_CHAIN, CONNMARK_CHAIN]
        .iter()
        .any(|c| chain.starts_with(c.trim_end_matches('0')))
}

/// Whether a rule of a built-in chain is one of ours: it jumps to an AWS chain or carries one of the `AWS`
/// comments the layout uses (whatever veth prefix it was written with).
fn is_aws_rule(words: &[String]) -> bool {
    words.windows(2).any(|w| {
        (w[0] == "-j" && is_aws_chain(&w[1]))
            || (w[0] == "--comment" && (w[1].starts_with("AWS,") || w[1].starts_with("AWS ")))
    })
}

/// Removes the whole iptables layout from `nat` and `mangle`: every AWS rule in a built-in chain, then every
/// AWS chain. Keeps going past failures and reports the first.
pub async fn remove_iptables(ipt: &dyn Iptables) -> Result<(), SnatError> {
    let mut first_err = None;
    for table in ["nat", "mangle"] {
        let dump = match ipt.run(&s(&["-t", table, "-S"])).await {
            Ok(d) => d,
            Err(e) => {
                first_err.get_or_insert(e);
                continue;
            }
        };
        let mut chains = Vec::new();
        for line in dump.lines() {
            let words = split_rule(line);
            match words.first().map(String::as_str) {
                Some("-N") if words.len() > 1 && is_aws_chain(&words[1]) => {
                    chains.push(words[1].clone())
                }
                Some("-A")
                    if words.len() > 1 && !is_aws_chain(&words[1]) && is_aws_rule(&words) =>
                {
                    let mut del = s(&["-t", table, "-D"]);
                    del.extend(words.into_iter().skip(1));
                    if let Err(e) = ipt.run(&del).await {
                        first_err.get_or_insert(e);
                    }
                }
                _ => {}
            }
        }
        for c in &chains {
            if let Err(e) = ipt.run(&s(&["-t", table, "-F", c])).await {
                first_err.get_or_insert(e);
            }
        }
        for c in &chains {
            if let Err(e) = ipt.run(&s(&["-t", table, "-X", c])).await {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// The active backend and the others, whose leftovers are removed once.
#[derive(Debug)]
pub struct Backends {
    active: Arc<dyn SnatBackend>,
    others: Vec<Arc<dyn SnatBackend>>,
    others_removed: AtomicBool,
}

impl Backends {
    /// `active` owns the rules; `others` are cleaned of leftovers on the first successful apply.
    pub fn new(active: Arc<dyn SnatBackend>, others: Vec<Arc<dyn SnatBackend>>) -> Backends {
        Backends {
            active,
            others,
            others_removed: AtomicBool::new(false),
        }
    }

    /// The backend in use.
    pub fn kind(&self) -> BackendKind {
        self.active.kind()
    }

    /// Applies `plan` through the active backend, then (once) removes the other backends' rules. A failure to
    /// remove leftovers is logged and retried on the next apply, never fatal: a host without legacy iptables
    /// simply has nothing to remove.
    pub async fn apply(&self, plan: &SnatPlan) -> Result<(), SnatError> {
        self.active.apply(plan).await?;
        if !self.others_removed.load(Ordering::Relaxed) {
            let mut clean = true;
            for other in &self.others {
                match other.remove().await {
                    Ok(()) => {}
                    // Its tool is not installed: it cannot have rules here either.
                    Err(SnatError::Spawn { .. }) => {}
                    Err(e) => {
                        clean = false;
                        tracing::warn!(backend = %other.kind(), error = %e,
                            "could not remove the rules of a backend not in use");
                    }
                }
            }
            self.others_removed.store(clean, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The machine's iptables-legacy (`legacy`) or iptables-nft binaries, in `netns`.
pub fn iptables_binaries(legacy: bool, netns: Option<&std::path::Path>) -> super::CommandIptables {
    let (iptables, restore) = if legacy {
        ("iptables-legacy", "iptables-legacy-restore")
    } else {
        ("iptables-nft", "iptables-nft-restore")
    };
    super::CommandIptables {
        iptables: iptables.into(),
        iptables_restore: restore.into(),
        netns: netns.map(Into::into),
    }
}

/// The real backend of `kind`, in `netns` (the process's own when `None`).
pub fn real_backend(kind: BackendKind, netns: Option<&std::path::Path>) -> Arc<dyn SnatBackend> {
    match kind {
        BackendKind::Nftables => Arc::new(super::NftBackend::new(Arc::new(super::CommandNft {
            nft: "nft".into(),
            netns: netns.map(Into::into),
        }))),
        _ => Arc::new(IptablesBackend {
            kind,
            iptables: Arc::new(iptables_binaries(
                kind == BackendKind::IptablesLegacy,
                netns,
            )),
        }),
    }
}

/// `kind` active on the real host, the two others cleaned.
pub fn real_backends(kind: BackendKind, netns: Option<&std::path::Path>) -> Backends {
    Backends::new(
        real_backend(kind, netns),
        BackendKind::ALL
            .into_iter()
            .filter(|k| *k != kind)
            .map(|k| real_backend(k, netns))
            .collect(),
    )
}

/// The backend chosen at startup, and why (for metrics and `ipamd status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub kind: BackendKind,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fakes::RecordingIptables;

    fn plan(prefix: &str) -> SnatPlan {
        SnatPlan {
            veth_prefix: prefix.into(),
            ..crate::host::snat::testing::plan()
        }
    }

    #[tokio::test]
    async fn remove_takes_every_layout_away_and_leaves_other_rules() {
        let ipt = RecordingIptables::default();
        // The anchor's rules with its default prefix, then ours with a custom one on top.
        super::super::apply(&ipt, &plan(""))
            .await
            .expect("anchor layout");
        let custom = plan("cali");
        super::super::apply(&ipt, &custom)
            .await
            .expect("custom prefix");
        ipt.run(&s(&[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-j",
            "KUBE-SERVICES-X",
        ]))
        .await
        .expect_err("unknown target is refused");
        ipt.run(&s(&["-t", "nat", "-N", "KUBE-SERVICES"]))
            .await
            .expect("kube chain");
        ipt.run(&s(&[
            "-t",
            "nat",
            "-I",
            "PREROUTING",
            "-j",
            "KUBE-SERVICES",
        ]))
        .await
        .expect("kube jump");
        let pre = ipt.rules("nat", "PREROUTING").expect("pre");
        assert!(
            pre.iter().any(|r| r.contains(&"cali+".to_string())),
            "{pre:?}"
        );
        remove_iptables(&ipt).await.expect("remove");
        remove_iptables(&ipt).await.expect("remove twice");
        let dump = ipt.dump();
        assert!(!dump.contains("AWS"), "{dump}");
        assert_eq!(
            ipt.rules("nat", "PREROUTING"),
            Some(vec![s(&["-j", "KUBE-SERVICES"])])
        );
    }

    fn nat_rules(ns: &str, bin: &str) -> String {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .args([bin, "-w", "5", "-t", "nat", "-S"])
            .output()
            .expect("iptables -S");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A node upgraded from the anchor (its iptables layout in both iptables flavours and its `table ip aws-cni`)
    /// keeps only the chosen backend's rules, and switching again moves them.
    #[tokio::test]
    async fn switching_backends_on_a_real_kernel_leaves_only_the_chosen_ones_rules() {
        let Some((_ns, path)) = crate::host::snat::testing::scratch_netns_with_nft() else {
            return;
        };
        let p = std::path::Path::new(&path);
        let anchor = plan("");
        for legacy in [false, true] {
            super::super::apply(&iptables_binaries(legacy, Some(p)), &anchor)
                .await
                .expect("anchor layout");
        }
        let nft = super::super::CommandNft::in_netns(p);
        use super::super::Nft;
        nft.run("table ip aws-cni {\n chain snat-mark {\n  ct mark set ct mark | 0x80\n }\n}\n")
            .await
            .expect("anchor table");
        assert!(nat_rules(&path, "iptables-legacy").contains(CONNMARK_CHAIN));

        let ours = plan("eni");
        let backends = real_backends(BackendKind::Nftables, Some(p));
        backends.apply(&ours).await.expect("nftables");
        for bin in ["iptables-nft", "iptables-legacy"] {
            let rules = nat_rules(&path, bin);
            assert!(!rules.contains("AWS"), "{bin}:\n{rules}");
        }
        let table = nft
            .list_table("ip", "aws-cni")
            .await
            .expect("list")
            .expect("our table");
        assert!(table.contains("nat-prerouting"), "{table}");

        let backends = real_backends(BackendKind::IptablesLegacy, Some(p));
        backends.apply(&ours).await.expect("legacy");
        assert_eq!(nft.list_table("ip", "aws-cni").await.expect("list"), None);
        assert!(nat_rules(&path, "iptables-legacy").contains(SNAT_CHAIN));
        assert!(!nat_rules(&path, "iptables-nft").contains("AWS"));
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in BackendKind::ALL {
            assert_eq!(BackendKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(BackendKind::parse("iptables"), None);
    }
}
