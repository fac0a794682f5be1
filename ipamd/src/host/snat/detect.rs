//! Choosing the SNAT/connmark backend from what the node's kube-proxy uses.
//!
//! Our rules must live where kube-proxy's do: NAT chains of iptables-legacy and of nf_tables on the same hook
//! race for the first packet of a connection, and only nftables lets us order our connmark after kube-proxy's
//! DNAT by priority. `AWS_CNI_SNAT_BACKEND` (`nftables`, `iptables-nft`, `iptables-legacy`, or `auto`, the
//! default) overrides the choice; `auto` decides in this order:
//!
//! 1. `table ip kube-proxy` exists: kube-proxy runs in nftables mode → `nftables`;
//! 2. the `KUBE-IPTABLES-HINT` or `KUBE-KUBELET-CANARY` chain in `mangle` (kubelet's and kube-proxy's marker, the
//!    test iptables-wrapper uses) exists in iptables-nft → `iptables-nft`, else in iptables-legacy →
//!    `iptables-legacy`;
//! 3. more rules in iptables-legacy than in iptables-nft → `iptables-legacy`; any rules in iptables-nft →
//!    `iptables-nft`;
//! 4. nothing to follow (no kube-proxy yet): `nftables` when `nft` works, else `iptables-nft`.
//!
//! A backend whose tool is missing counts as empty.

use super::backend::{BackendKind, Selection};
use super::iptables::Iptables;
use super::nft::Nft;
use super::plan::s;

/// The override's environment variable.
pub const BACKEND_ENV: &str = "AWS_CNI_SNAT_BACKEND";

/// A bad override.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{BACKEND_ENV}={0:?}: expected auto, nftables, iptables-nft or iptables-legacy")]
pub struct BadBackend(pub String);

/// What the node's tools can tell.
pub struct Probes<'a> {
    pub nft: &'a dyn Nft,
    pub iptables_nft: &'a dyn Iptables,
    pub iptables_legacy: &'a dyn Iptables,
}

async fn has_hint(ipt: &dyn Iptables) -> bool {
    match ipt.run(&s(&["-t", "mangle", "-S"])).await {
        Ok(out) => out
            .lines()
            .any(|l| l == "-N KUBE-IPTABLES-HINT" || l == "-N KUBE-KUBELET-CANARY"),
        Err(_) => false,
    }
}

async fn rule_count(ipt: &dyn Iptables) -> usize {
    let mut n = 0;
    for table in ["nat", "mangle", "filter"] {
        if let Ok(out) = ipt.run(&s(&["-t", table, "-S"])).await {
            n += out.lines().filter(|l| l.starts_with("-A ")).count();
        }
    }
    n
}

/// Decides the backend (see the module docs). `override_value` is the environment variable's value, if set.
pub async fn choose(
    override_value: Option<&str>,
    probes: &Probes<'_>,
) -> Result<Selection, BadBackend> {
    match override_value.map(str::trim).filter(|v| !v.is_empty()) {
        None | Some("auto") => {}
        Some(v) => {
            let kind = BackendKind::parse(v).ok_or_else(|| BadBackend(v.to_string()))?;
            return Ok(Selection {
                kind,
                reason: format!("{BACKEND_ENV}={v}"),
            });
        }
    }
    let pick = |kind, reason: String| Ok(Selection { kind, reason });
    // `Ok(())`: nft works and kube-proxy has no table in it.
    let nft_works = match probes.nft.list_table("ip", "kube-proxy").await {
        Ok(Some(_)) => {
            return pick(
                BackendKind::Nftables,
                "kube-proxy runs in nftables mode (table ip kube-proxy)".into(),
            )
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if has_hint(probes.iptables_nft).await {
        return pick(
            BackendKind::IptablesNft,
            "kube-proxy's KUBE-IPTABLES-HINT is in iptables-nft".into(),
        );
    }
    if has_hint(probes.iptables_legacy).await {
        return pick(
            BackendKind::IptablesLegacy,
            "kube-proxy's KUBE-IPTABLES-HINT is in iptables-legacy".into(),
        );
    }
    let legacy = rule_count(probes.iptables_legacy).await;
    let nft = rule_count(probes.iptables_nft).await;
    if legacy > nft {
        return pick(
            BackendKind::IptablesLegacy,
            format!("iptables-legacy has more rules ({legacy}) than iptables-nft ({nft})"),
        );
    }
    if nft > 0 {
        return pick(
            BackendKind::IptablesNft,
            format!("iptables-nft has rules ({nft}; iptables-legacy {legacy})"),
        );
    }
    match nft_works {
        Ok(()) => pick(
            BackendKind::Nftables,
            "no kube-proxy rules found; nft works".into(),
        ),
        Err(e) => pick(
            BackendKind::IptablesNft,
            format!("no kube-proxy rules found; nft unusable ({e})"),
        ),
    }
}

/// [`choose`] with the machine's tools in `netns` (the process's own when `None`).
pub async fn choose_on_host(
    override_value: Option<&str>,
    netns: Option<&std::path::Path>,
) -> Result<Selection, BadBackend> {
    let nft = super::CommandNft {
        nft: "nft".into(),
        netns: netns.map(Into::into),
    };
    let iptables_nft = super::backend::iptables_binaries(false, netns);
    let iptables_legacy = super::backend::iptables_binaries(true, netns);
    choose(
        override_value,
        &Probes {
            nft: &nft,
            iptables_nft: &iptables_nft,
            iptables_legacy: &iptables_legacy,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fakes::RecordingIptables;
    use crate::host::snat::nft::RecordingNft;

    async fn with_rules(rules: &[&[&str]]) -> RecordingIptables {
        let ipt = RecordingIptables::default();
        for r in rules {
            ipt.run(&s(r)).await.expect("setup");
        }
        ipt
    }

    async fn decide(
        ov: Option<&str>,
        nft: &RecordingNft,
        ipt_nft: &RecordingIptables,
        legacy: &RecordingIptables,
    ) -> Result<Selection, BadBackend> {
        choose(
            ov,
            &Probes {
                nft,
                iptables_nft: ipt_nft,
                iptables_legacy: legacy,
            },
        )
        .await
    }

    #[tokio::test]
    async fn kube_proxy_nftables_mode_picks_nftables() {
        let nft = RecordingNft::default();
        nft.add_table("ip kube-proxy", "table ip kube-proxy {}");
        let legacy = with_rules(&[&["-t", "nat", "-A", "POSTROUTING", "-j", "MASQUERADE"]]).await;
        let sel = decide(None, &nft, &RecordingIptables::default(), &legacy)
            .await
            .expect("choice");
        assert_eq!(sel.kind, BackendKind::Nftables, "{sel:?}");
    }

    #[tokio::test]
    async fn the_hint_chain_decides_between_iptables_backends() {
        let hint: &[&str] = &["-t", "mangle", "-N", "KUBE-IPTABLES-HINT"];
        let many: &[&str] = &["-t", "nat", "-A", "POSTROUTING", "-j", "MASQUERADE"];
        let nft = RecordingNft::default();
        let legacy = with_rules(&[hint]).await;
        let ipt_nft = with_rules(&[many, many]).await;
        let sel = decide(Some("auto"), &nft, &ipt_nft, &legacy)
            .await
            .expect("c");
        assert_eq!(sel.kind, BackendKind::IptablesLegacy, "{sel:?}");
        let ipt_nft = with_rules(&[hint]).await;
        let sel = decide(None, &nft, &ipt_nft, &legacy).await.expect("c");
        assert_eq!(sel.kind, BackendKind::IptablesNft, "{sel:?}");
    }

    #[tokio::test]
    async fn rule_counts_decide_without_a_hint_and_an_empty_node_gets_nftables() {
        let r: &[&str] = &["-t", "filter", "-A", "INPUT", "-j", "ACCEPT"];
        let nft = RecordingNft::default();
        let legacy = with_rules(&[r, r]).await;
        let ipt_nft = with_rules(&[r]).await;
        let sel = decide(None, &nft, &ipt_nft, &legacy).await.expect("c");
        assert_eq!(sel.kind, BackendKind::IptablesLegacy, "{sel:?}");
        let sel = decide(None, &nft, &legacy, &ipt_nft).await.expect("c");
        assert_eq!(sel.kind, BackendKind::IptablesNft, "{sel:?}");
        let empty = RecordingIptables::default();
        let sel = decide(None, &nft, &empty, &empty).await.expect("c");
        assert_eq!(sel.kind, BackendKind::Nftables, "{sel:?}");
        let mut broken = RecordingNft::default();
        broken.broken = true;
        let sel = decide(None, &broken, &empty, &empty).await.expect("c");
        assert_eq!(sel.kind, BackendKind::IptablesNft, "{sel:?}");
    }

    #[tokio::test]
    async fn the_override_wins_and_a_bad_one_is_an_error() {
        let nft = RecordingNft::default();
        nft.add_table("ip kube-proxy", "table ip kube-proxy {}");
        let e = RecordingIptables::default();
        let sel = decide(Some("iptables-legacy"), &nft, &e, &e)
            .await
            .expect("c");
        assert_eq!(sel.kind, BackendKind::IptablesLegacy);
        assert!(sel.reason.contains(BACKEND_ENV), "{sel:?}");
        assert_eq!(
            decide(Some("iptables"), &nft, &e, &e).await,
            Err(BadBackend("iptables".into()))
        );
    }
}
