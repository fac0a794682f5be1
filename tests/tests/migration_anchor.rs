//! Migration from the anchor: ipamd started on a node where aws-node ran adopts every running pod from the
//! anchor's `ipam.json` (`vpc-cni-ipam/1`, as its Go encoder writes it), keeps each pod's IP, rules and routes
//! exactly as they are, never hands an adopted address to a new pod, and honours the anchor's CRI-migration
//! placeholder keys (`_migrated-from-cri`/`unknown`) on DEL.
//!
//! The node's pods are built by the real plugin (our datapath is the anchor's, bit for bit: veth names, /32
//! routes, rules 512/1536, tables), then the daemon is killed and its checkpoint replaced with the anchor's file
//! describing the same pods, as aws-node leaves it behind when its DaemonSet pod is replaced.

mod crash_support;

use std::time::Duration;

use crash_support::{Pod, SimNode};
use integration_tests::arr;

/// One `CheckpointEntry` as the anchor's Go encoder writes it: embedded IPAMKey fields first, `ipv6` omitted,
/// `allocationTimestamp` in Unix nanoseconds, `metadata` members omitted when empty.
fn anchor_entry(
    network: &str,
    container: &str,
    ifname: &str,
    ip: &str,
    ns: &str,
    name: &str,
) -> String {
    let mut meta = Vec::new();
    if !ns.is_empty() {
        meta.push(format!(r#""k8sPodNamespace":"{ns}""#));
    }
    if !name.is_empty() {
        meta.push(format!(r#""k8sPodName":"{name}""#));
    }
    format!(
        r#"{{"networkName":"{network}","containerID":"{container}","ifName":"{ifname}","ipv4":"{ip}","allocationTimestamp":1767225600123456789,"metadata":{{{}}}}}"#,
        meta.join(",")
    )
}

#[test]
fn ipamd_adopts_the_anchors_pods_untouched_and_honours_placeholder_keys_on_del() {
    let node = SimNode::new(
        "m5.large",
        &[("WARM_IP_TARGET", "2"), ("MINIMUM_IP_TARGET", "14")],
    );
    node.start();
    let mut pods = Vec::new();
    for i in 0..11 {
        let mut p = Pod::new(&format!("web-{i}"), &format!("anchor{i:02}c0ffee"));
        let out = p.add(&node);
        assert!(out.success, "ADD: {}", out.stdout);
        pods.push(p);
    }
    node.kill9();

    // aws-node's checkpoint for these pods. web-1 was migrated by the anchor from CRI: its key is the
    // placeholder, with the real container ID.
    let entries: Vec<String> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let ip = p.ip.as_deref().expect("ip");
            if i == 1 {
                anchor_entry(
                    "_migrated-from-cri",
                    &p.spec.container_id,
                    "unknown",
                    ip,
                    "default",
                    &p.spec.name,
                )
            } else {
                anchor_entry(
                    "aws-cni",
                    &p.spec.container_id,
                    "eth0",
                    ip,
                    "default",
                    &p.spec.name,
                )
            }
        })
        .collect();
    let anchor_file = format!(
        "{{\"version\":\"vpc-cni-ipam/1\",\"allocations\":[{}]}}\n",
        entries.join(",")
    );
    std::fs::write(node.checkpoint_path(), &anchor_file).expect("write the anchor's checkpoint");
    let before = node.node.snapshot();

    node.start();
    // Every pod adopted with its address, and the node's networking not touched at all.
    let adopted: Vec<(String, String, String)> = arr(&node.status()["pods"])
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["ip"].as_str().unwrap_or("").to_string(),
                p["network"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        adopted.len(),
        pods.len(),
        "{adopted:?}\n{}",
        node.log_tail(30)
    );
    for (i, p) in pods.iter().enumerate() {
        let network = if i == 1 {
            "_migrated-from-cri"
        } else {
            "aws-cni"
        };
        let want = (
            p.spec.name.clone(),
            p.ip.clone().expect("ip"),
            network.to_string(),
        );
        assert!(adopted.contains(&want), "{want:?} not adopted: {adopted:?}");
    }
    assert_eq!(
        node.node.snapshot(),
        before,
        "adoption changed the node's networking"
    );
    let node_ip = node.node_ip();
    for p in &pods {
        assert!(p.netns.ping(&node_ip), "{} lost connectivity", p.spec.name);
    }
    // The file is rewritten in the same format, placeholder key kept: the anchor can read it after a rollback.
    let (_, written) = node.checkpoint();
    assert_eq!(written["version"], "vpc-cni-ipam/1");
    let placeholder = arr(&written["allocations"])
        .into_iter()
        .find(|a| a["containerID"] == pods[1].spec.container_id.as_str())
        .expect("placeholder entry kept");
    assert_eq!(placeholder["networkName"], "_migrated-from-cri");
    assert_eq!(placeholder["ifName"], "unknown");
    assert_eq!(placeholder["ipv4"], pods[1].ip.as_deref().expect("ip"));
    assert_eq!(
        placeholder["allocationTimestamp"],
        1_767_225_600_123_456_789_u64
    );

    // New pods get addresses no adopted pod holds.
    let adopted_ips: Vec<String> = pods.iter().filter_map(|p| p.ip.clone()).collect();
    for i in 0..3 {
        let mut p = Pod::new(&format!("new-{i}"), &format!("new{i}"));
        let out = p.add(&node);
        assert!(out.success, "ADD: {}", out.stdout);
        assert!(
            !adopted_ips.contains(p.ip.as_ref().expect("ip")),
            "adopted address handed out"
        );
        pods.push(p);
    }

    // The kubelet's DEL of the CRI-migrated pod carries the real key (aws-cni, container, eth0): the placeholder
    // entry is what it releases.
    let out = pods[1].del(&node);
    assert!(out.success, "DEL: {}", out.stdout);
    let (cp, _) = node.checkpoint();
    assert!(
        !cp.iter().any(|(c, _)| *c == pods[1].spec.container_id),
        "placeholder entry not released: {cp:?}"
    );
    let held: Vec<String> = arr(&node.status()["pods"])
        .iter()
        .filter_map(|p| p["ip"].as_str().map(str::to_string))
        .collect();
    assert!(!held.contains(pods[1].ip.as_ref().expect("ip")));
    let rules = node.node.ip_json(&["rule", "show"]);
    let ip1 = pods[1].ip.clone().expect("ip");
    assert!(
        !arr(&rules)
            .iter()
            .any(|r| r["dst"] == ip1.as_str() || r["src"] == ip1.as_str()),
        "the released pod's rules remain"
    );

    for (i, p) in pods.iter().enumerate() {
        if i != 1 {
            assert!(p.del(&node).success, "DEL {}", p.spec.name);
        }
    }
    let (status, _) = node.term(Duration::from_secs(20)).expect("stops");
    assert!(status.success());
    assert!(node.checkpoint().0.is_empty());
}
