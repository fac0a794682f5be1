//! ENIs of other components on the node (the VPC resource controller's trunk, EFA ENIs, Multus's untagged ENIs),
//! seen from outside: the built `ipamd` on a simulated instance that has them attached at launch
//! (`--sim-foreign-eni`) and the real `aws-cni`. They get no address, no rule 32765, are never detached, and take
//! their ENI slots: a node whose remaining slots are full fails the next ADD at once with CNI code 102, without
//! asking EC2 for an ENI it cannot attach.

use std::time::{Duration, Instant};

use integration_tests::{add_with_retry, arr, cni, pod, AddedPod, Ipamd, Netns};
use serde_json::Value;

/// The attached ENIs but the primary (ipamd creates none in these tests).
fn foreign(st: &Value) -> Vec<Value> {
    st["enis"]
        .as_object()
        .map(|m| {
            m.values()
                .filter(|e| e["device_index"] != 0 && !e["device_index"].is_null())
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Adds pods until an ADD fails; returns the pods and the failure.
fn fill(ipamd: &Ipamd, want: usize) -> (Vec<AddedPod>, integration_tests::CniOut) {
    let conf = ipamd.conf("1.0.0");
    let mut pods = Vec::new();
    for i in 0..want {
        let ns = Netns::new("act-forn-");
        let p = pod(&ns, &format!("p{i}"));
        let out = add_with_retry(&ipamd.node, &p, &conf);
        assert!(out.success, "ADD {i}: {}\n{}", out.stdout, ipamd.log());
        pods.push((ns, p, out));
    }
    let ns = Netns::new("act-forn-");
    let started = Instant::now();
    let last = cni(&ipamd.node, "ADD", &pod(&ns, "one-too-many"), &conf);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failed at once, not after waiting on EC2"
    );
    (pods, last)
}

fn del_all(ipamd: &Ipamd, pods: &[AddedPod]) {
    let conf = ipamd.conf("1.0.0");
    for (_, p, out) in pods {
        let mut conf = conf.clone();
        conf["prevResult"] = out.json.clone();
        assert!(cni(&ipamd.node, "DEL", p, &conf).success);
    }
}

#[test]
fn trunk_and_efa_enis_take_their_slots_and_get_nothing_and_a_full_node_fails_with_102() {
    // t3.small: 3 ENIs of 4 addresses; the trunk and the EFA-only ENI leave the primary's 3 secondaries.
    let ipamd = Ipamd::start_with_args(
        "t3.small",
        &[],
        &[
            "--sim-foreign-eni",
            "trunk",
            "--sim-foreign-eni",
            "efa-only",
        ],
    );
    let (pods, last) = fill(&ipamd, 3);
    assert!(!last.success, "{}", last.stdout);
    assert_eq!(last.code(), 102, "{}\n{}", last.stdout, ipamd.log());
    assert_eq!(last.json["details"], "NODE_AT_ENI_LIMIT", "{}", last.stdout);
    let msg = last.json["msg"].as_str().unwrap_or("");
    assert!(msg.contains("does not manage"), "{msg}");
    let st = ipamd.sim_state();
    let others = foreign(&st);
    assert_eq!(others.len(), 2, "{st}");
    let rules = arr(&ipamd.node.ip_json(&["rule", "show"]));
    for e in &others {
        assert_eq!(e["status"], "in-use", "never detached: {e}");
        assert!(
            arr(&e["secondary_ips"]).is_empty(),
            "no address of ours: {e}"
        );
        assert!(
            !rules.iter().any(|r| r["src"] == e["primary_ip"]),
            "no rule for {e}: {rules:?}"
        );
    }
    for api in [
        "CreateNetworkInterface",
        "AttachNetworkInterface",
        "DetachNetworkInterface",
    ] {
        assert!(st["calls"][api].is_null(), "{api} called: {}", st["calls"]);
    }
    del_all(&ipamd, &pods);
}

#[test]
fn manage_untagged_eni_false_leaves_an_untagged_eni_alone() {
    let ipamd = Ipamd::start_with_args(
        "t3.small",
        &[("MANAGE_UNTAGGED_ENI", "false"), ("MAX_ENI", "2")],
        &["--sim-foreign-eni", "untagged"],
    );
    let (pods, last) = fill(&ipamd, 3);
    assert_eq!(last.code(), 102, "{}\n{}", last.stdout, ipamd.log());
    let st = ipamd.sim_state();
    let untagged: Vec<_> = st["enis"]
        .as_object()
        .map(|m| {
            m.values()
                .filter(|e| e["device_index"] == 1)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(untagged.len(), 1, "{st}");
    assert!(arr(&untagged[0]["secondary_ips"]).is_empty(), "{st}");
    assert!(
        st["calls"]["CreateNetworkInterface"].is_null(),
        "{}",
        st["calls"]
    );
    del_all(&ipamd, &pods);
}
