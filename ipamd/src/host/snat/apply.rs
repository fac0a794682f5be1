//! Converging the node's iptables to a [`SnatPlan`]: idempotent, from any earlier state or layout. The two chains
//! are rewritten (one `iptables-restore --noflush`) only when `iptables -S` shows other rules than the plan's.

use super::iptables::{Iptables, SnatError};
use super::plan::{quote, s, split_rule, SnatPlan, CONNMARK_CHAIN, SNAT_CHAIN};

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

/// The rules of `chain` in `table` as `iptables -S` prints them (split into words); `None` when the chain does
/// not exist.
async fn chain_rules(
    ipt: &dyn Iptables,
    table: &str,
    chain: &str,
) -> Result<Option<Vec<Vec<String>>>, SnatError> {
    let out = ipt.run(&s(&["-t", table, "-S"])).await?;
    if !out.lines().any(|l| l.trim() == format!("-N {chain}")) {
        return Ok(None);
    }
    let prefix = format!("-A {chain} ");
    Ok(Some(
        out.lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .map(split_rule)
            .collect(),
    ))
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
    } else if chain_rules(ipt, "nat", SNAT_CHAIN).await?.as_ref() == Some(&plan.snat_chain())
        && chain_rules(ipt, "nat", CONNMARK_CHAIN).await?.as_ref() == Some(&plan.connmark_chain())
    {
        // Both chains already hold the plan's rules: not rewritten (a rewrite would flush and re-add them, and
        // reset their counters, at every reconcile). Anything iptables prints differently is rewritten.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RandomizeSnat;
    use crate::host::fakes::RecordingIptables;
    use crate::host::snat::testing::plan;

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
        let restores = || {
            ipt.log()
                .iter()
                .filter(|l| l.starts_with("iptables-restore"))
                .count()
        };
        assert_eq!(restores(), 1);
        apply(&ipt, &plan()).await.expect("again");
        assert_eq!(ipt.dump(), first, "re-applying changes nothing");
        assert_eq!(restores(), 1, "unchanged chains are not rewritten");
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
