//! The VPC refresh through the built `ipamd` on a simulated node: a CIDR block associated with the VPC and new
//! security groups on the primary ENI while ipamd runs (the simulator's `sim-ec2.vpc` file beside its state; IMDS
//! serves the new values at once, as EC2's does). The SNAT/connmark exclusions gain the CIDR without a restart and
//! are not rewritten while nothing changed (the nftables table keeps its kernel handles; the
//! `awscni_vpc_refresh_total` counters say a check ran and found nothing to do); ENIs ipamd manages get the new
//! groups, an ENI of another component (EFA) keeps its own. A refresh is forced with SIGUSR1 (a requested
//! reconcile pass refreshes first) instead of waiting for the 30 s period.

use std::time::Duration;

use integration_tests::{eventually, sh, Ipamd, Netns};
use serde_json::Value;

const NEW_CIDR: &str = "100.64.0.0/16";
const NEW_GROUPS: [&str; 2] = ["sg-0refresh000000001", "sg-0refresh000000002"];

/// `nft -a list table ip aws-cni` in the node: every rule with its kernel handle.
fn nft_table(node: &Netns) -> String {
    let out = node.exec(&["nft", "-a", "list", "table", "ip", "aws-cni"]);
    assert!(out.status.success(), "nft list: {out:?}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `iptables -t nat -S AWS-SNAT-CHAIN-0` in the node.
fn snat_chain(node: &Netns) -> String {
    let out = node.exec(&["iptables", "-w", "5", "-t", "nat", "-S", "AWS-SNAT-CHAIN-0"]);
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The SNAT chain as nf_tables holds it (iptables-nft), with every rule's kernel handle.
fn snat_chain_handles(node: &Netns) -> String {
    let out = node.exec(&[
        "nft",
        "-a",
        "list",
        "chain",
        "ip",
        "nat",
        "AWS-SNAT-CHAIN-0",
    ]);
    assert!(out.status.success(), "nft list chain: {out:?}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The value of one `awscni_vpc_refresh_total` series (0 when absent).
fn refreshes(node: &Netns, item: &str, outcome: &str) -> f64 {
    let out = node.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://127.0.0.1:61678/metrics",
    ]);
    let prefix = format!("awscni_vpc_refresh_total{{item=\"{item}\",outcome=\"{outcome}\"}} ");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `ipamd status --output json`.
fn poke(ipamd: &Ipamd) {
    let pid = ipamd.pid().expect("running").to_string();
    assert!(sh("kill", &["-USR1", &pid]).status.success());
}

/// Two requested passes (SIGUSR1), each seen through a refresh that found nothing new: the first pass's
/// reconcile (which re-applies the host rules after the refresh) has finished when the second refresh is counted.
fn unchanged_pass(ipamd: &Ipamd) {
    for _ in 0..2 {
        let checks = refreshes(&ipamd.node, "vpc_cidrs", "unchanged");
        poke(ipamd);
        assert!(
            eventually(Duration::from_secs(15), || refreshes(
                &ipamd.node,
                "vpc_cidrs",
                "unchanged"
            ) > checks),
            "a refresh ran:\n{}",
            ipamd.log()
        );
    }
}

/// The attached ENIs but the primary, from the simulator's state: `(id, interface type)`.
fn secondary_enis(st: &Value) -> Vec<(String, String)> {
    st["enis"]
        .as_object()
        .map(|m| {
            m.values()
                .filter(|e| e["device_index"] != 0 && !e["device_index"].is_null())
                .map(|e| {
                    (
                        e["id"].as_str().unwrap_or_default().to_string(),
                        e["interface_type"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn groups_of(st: &Value, eni: &str) -> Vec<String> {
    st["eni_security_groups"][eni]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn change_vpc(ipamd: &Ipamd) {
    std::fs::write(
        ipamd.dir.path().join("sim-ec2.vpc"),
        format!(
            "cidr {NEW_CIDR}\nsecurity-groups {}\n",
            NEW_GROUPS.join(" ")
        ),
    )
    .expect("write the simulator's VPC file");
}

#[test]
fn a_new_vpc_cidr_reaches_the_nft_rules_without_restart_and_unchanged_rules_are_not_rewritten() {
    // t3.small: 3 ENI slots; the EFA takes one, WARM_IP_TARGET=5 makes ipamd attach one of its own at startup.
    let ipamd = Ipamd::start_with_args(
        "t3.small",
        &[
            ("AWS_CNI_SNAT_BACKEND", "nftables"),
            ("WARM_IP_TARGET", "5"),
        ],
        &["--sim-foreign-eni", "efa"],
    );
    let node = &ipamd.node;
    let ours = || {
        secondary_enis(&ipamd.sim_state())
            .into_iter()
            .filter(|(_, t)| t == "interface")
            .map(|(id, _)| id)
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(20), || ours().len() == 1),
        "ipamd attached an ENI of its own: {}\n{}",
        ipamd.sim_state(),
        ipamd.log()
    );
    let ours = ours().remove(0);
    let st = ipamd.sim_state();
    let efa: Vec<String> = secondary_enis(&st)
        .into_iter()
        .filter(|(_, t)| t == "efa")
        .map(|(id, _)| id)
        .collect();
    assert_eq!(efa.len(), 1, "{st}");
    let efa_groups = groups_of(&st, &efa[0]);
    assert!(!efa_groups.is_empty(), "{st}");

    // Nothing changed: a refresh runs and the table is not rewritten (same kernel handles).
    let before = nft_table(node);
    assert!(!before.contains(NEW_CIDR), "{before}");
    unchanged_pass(&ipamd);
    assert_eq!(
        nft_table(node),
        before,
        "unchanged CIDRs: the table is not rewritten"
    );
    assert_eq!(refreshes(node, "vpc_cidrs", "applied"), 0.0);

    // A CIDR block associated with the VPC and new groups on the primary ENI.
    change_vpc(&ipamd);
    poke(&ipamd);
    assert!(
        eventually(Duration::from_secs(15), || nft_table(node)
            .matches(NEW_CIDR)
            .count()
            >= 2),
        "the SNAT and connmark exclusions gain {NEW_CIDR}:\n{}\n{}",
        nft_table(node),
        ipamd.log()
    );
    assert_eq!(refreshes(node, "vpc_cidrs", "applied"), 1.0);
    assert!(
        eventually(Duration::from_secs(15), || groups_of(
            &ipamd.sim_state(),
            &ours
        ) == NEW_GROUPS),
        "our ENI {ours} gets the primary ENI's new groups: {}",
        ipamd.sim_state()
    );
    let st = ipamd.sim_state();
    assert_eq!(
        groups_of(&st, &efa[0]),
        efa_groups,
        "the EFA ENI keeps its groups"
    );
    assert_eq!(refreshes(node, "security_groups", "applied"), 1.0);
    // `ipamd status` shows what is in force.
    let status = ipamd.status_json();
    assert_eq!(
        status["vpcCidrs"],
        serde_json::json!(["10.0.0.0/16", NEW_CIDR]),
        "{status}"
    );
    assert_eq!(
        status["securityGroups"],
        serde_json::json!(NEW_GROUPS),
        "{status}"
    );

    // And nothing more is written while nothing changes again.
    let after = nft_table(node);
    unchanged_pass(&ipamd);
    assert_eq!(nft_table(node), after, "applied once, not rewritten");
    assert_eq!(refreshes(node, "vpc_cidrs", "applied"), 1.0);
}

#[test]
fn a_new_vpc_cidr_reaches_the_iptables_snat_chain_without_restart_and_unchanged_chains_are_not_rewritten(
) {
    let ipamd = Ipamd::start("t3.nano", &[("AWS_CNI_SNAT_BACKEND", "iptables-nft")]);
    let node = &ipamd.node;
    assert!(
        eventually(Duration::from_secs(10), || snat_chain(node)
            .contains("10.0.0.0/16")),
        "{}\n{}",
        snat_chain(node),
        ipamd.log()
    );
    assert!(!snat_chain(node).contains(NEW_CIDR));
    // Nothing changed: neither the refresh nor reconcile's re-apply rewrites the chain (same handles).
    let before = snat_chain_handles(node);
    unchanged_pass(&ipamd);
    assert_eq!(snat_chain_handles(node), before, "not rewritten");
    change_vpc(&ipamd);
    poke(&ipamd);
    assert!(
        eventually(Duration::from_secs(15), || snat_chain(node)
            .contains(NEW_CIDR)),
        "AWS-SNAT-CHAIN-0 gains {NEW_CIDR}:\n{}\n{}",
        snat_chain(node),
        ipamd.log()
    );
}
