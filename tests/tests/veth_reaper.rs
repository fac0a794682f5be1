//! DEL hands the pod's veth to ipamd's reaper (`ipamd::reaper`): the rules and the host route are gone when DEL
//! returns, the veth soon after; an ipamd that does not take it leaves the plugin to delete it at once; a re-ADD
//! while the old veth is pending gets a new veth that the reaper never deletes; DEL stays idempotent.

use integration_tests::{
    add_with_retry, arr, cni, eventually, expected_veth, pod, result_ip, with_prev, Ipamd, Netns,
    STILL_POOL, VETH_GONE_WITHIN,
};

fn plugin_log(ipamd: &Ipamd) -> String {
    std::fs::read_to_string(ipamd.dir.path().join("plugin.log")).unwrap_or_default()
}

/// The `DEL done` lines of the plugin's log.
fn del_lines(ipamd: &Ipamd) -> Vec<String> {
    plugin_log(ipamd)
        .lines()
        .filter(|l| l.contains("DEL done"))
        .map(str::to_string)
        .collect()
}

/// Pod-side interfaces other than `lo`.
fn pod_links(ns: &Netns) -> Vec<String> {
    arr(&ns.ip_json(&["link", "show"]))
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .filter(|n| n != "lo")
        .collect()
}

/// Rules and the host route of `ip` are gone (they are removed before DEL returns).
fn assert_routing_gone(node: &Netns, ip: &str) {
    let rules = arr(&node.ip_json(&["rule", "show"]));
    assert!(
        !rules.iter().any(|r| r["dst"] == ip || r["src"] == ip),
        "rules of {ip} left after DEL: {rules:?}"
    );
    assert!(
        arr(&node.ip_json(&["route", "show", &format!("{ip}/32")])).is_empty(),
        "host route to {ip} left after DEL"
    );
}

#[test]
fn del_hands_the_veth_to_ipamd_which_deletes_it_soon() {
    let ipamd = Ipamd::start("m5.large", STILL_POOL);
    let node = &ipamd.node;
    let before = node.snapshot();
    let ns = Netns::new("act-pod-");
    let p = pod(&ns, "reaped");
    let conf = ipamd.conf("1.0.0");
    let add = add_with_retry(node, &p, &conf);
    assert!(add.success, "ADD: {}\n{}", add.stdout, ipamd.log());
    let ip = result_ip(&add.json);
    let veth = expected_veth("default", "reaped");
    assert!(node.link_index(&veth).is_some(), "no host veth {veth}");

    let del = cni(node, "DEL", &p, &with_prev(&conf, &add.json));
    assert!(del.success, "DEL: {}\n{}", del.stdout, plugin_log(&ipamd));
    assert_routing_gone(node, &ip);
    let lines = del_lines(&ipamd);
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("veth_deferred=true")),
        "ipamd did not take the veth: {lines:?}\n{}",
        ipamd.log()
    );
    assert!(
        eventually(VETH_GONE_WITHIN, || node.link_index(&veth).is_none()),
        "ipamd's reaper did not delete {veth}:\n{}",
        ipamd.log()
    );
    // Deleting the host end took the pair: the pod's netns (kept, as podman keeps it) is empty too.
    assert!(
        eventually(VETH_GONE_WITHIN, || pod_links(&ns).is_empty()),
        "pod end left: {:?}",
        pod_links(&ns)
    );
    assert_eq!(node.settled_snapshot(&before), before);
}

#[test]
fn an_ipamd_that_does_not_take_the_veth_leaves_the_plugin_to_delete_it_at_once() {
    let ipamd = Ipamd::start(
        "m5.large",
        &[
            ("WARM_IP_TARGET", "1"),
            ("MINIMUM_IP_TARGET", "10"),
            ("AWS_CNI_DISABLE_VETH_REAPER", "true"),
        ],
    );
    let node = &ipamd.node;
    let before = node.snapshot();
    let ns = Netns::new("act-pod-");
    let p = pod(&ns, "synchronous");
    let conf = ipamd.conf("1.0.0");
    let add = add_with_retry(node, &p, &conf);
    assert!(add.success, "ADD: {}\n{}", add.stdout, ipamd.log());
    let ip = result_ip(&add.json);

    let del = cni(node, "DEL", &p, &with_prev(&conf, &add.json));
    assert!(del.success, "DEL: {}", del.stdout);
    let lines = del_lines(&ipamd);
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("veth_deferred=false")),
        "{lines:?}"
    );
    // No waiting: the plugin deleted the pair before it returned.
    assert_routing_gone(node, &ip);
    assert_eq!(node.snapshot(), before, "the veth outlived the DEL");
    assert!(
        pod_links(&ns).is_empty(),
        "pod end left: {:?}",
        pod_links(&ns)
    );
}

#[test]
fn a_readd_while_the_old_veth_is_pending_keeps_its_new_veth_and_shutdown_drains_the_queue() {
    // A minute's delay keeps every handed-over veth pending for the whole test, until the shutdown drains them.
    let mut ipamd = Ipamd::start(
        "m5.large",
        &[
            ("WARM_IP_TARGET", "1"),
            ("MINIMUM_IP_TARGET", "10"),
            ("AWS_CNI_VETH_REAPER_DELAY_MS", "60000"),
        ],
    );
    let conf = ipamd.conf("1.0.0");
    let ns = Netns::new("act-pod-");
    let p = pod(&ns, "again");
    let veth = expected_veth("default", "again");
    let first = add_with_retry(&ipamd.node, &p, &conf);
    assert!(first.success, "ADD: {}\n{}", first.stdout, ipamd.log());
    let old_index = ipamd.node.link_index(&veth).expect("host veth");

    let del = cni(&ipamd.node, "DEL", &p, &with_prev(&conf, &first.json));
    assert!(del.success, "DEL: {}", del.stdout);
    assert!(
        del_lines(&ipamd)
            .last()
            .is_some_and(|l| l.contains("veth_deferred=true")),
        "{:?}",
        del_lines(&ipamd)
    );
    assert_routing_gone(&ipamd.node, &result_ip(&first.json));
    assert_eq!(
        ipamd.node.link_index(&veth),
        Some(old_index),
        "the veth should still be pending"
    );

    // The same pod again, in the same (kept) namespace, whose old eth0 is still there: ADD replaces the pair.
    let second = add_with_retry(&ipamd.node, &p, &conf);
    assert!(second.success, "re-ADD: {}\n{}", second.stdout, ipamd.log());
    let new_index = ipamd.node.link_index(&veth).expect("new host veth");
    assert_ne!(new_index, old_index, "the re-ADD did not build a new veth");
    assert!(
        ns.ping(&ipamd.node_ip()),
        "re-added pod cannot reach the node"
    );

    // Another pod whose veth is pending with its namespace kept: the shutdown must delete it.
    let other_ns = Netns::new("act-pod-");
    let other = pod(&other_ns, "pending");
    let other_veth = expected_veth("default", "pending");
    let o = add_with_retry(&ipamd.node, &other, &conf);
    assert!(o.success, "ADD: {}", o.stdout);
    let d = cni(&ipamd.node, "DEL", &other, &with_prev(&conf, &o.json));
    assert!(d.success, "DEL: {}", d.stdout);
    assert!(ipamd.node.link_index(&other_veth).is_some());

    assert!(ipamd.stop(), "ipamd did not stop cleanly:\n{}", ipamd.log());
    // The drain handled both queued deletions: the pending pod's veth is gone, and the re-added pod's new veth
    // (same name, new index) is untouched.
    assert_eq!(
        ipamd.node.link_index(&other_veth),
        None,
        "the shutdown did not delete the pending veth:\n{}",
        ipamd.log()
    );
    assert_eq!(
        ipamd.node.link_index(&veth),
        Some(new_index),
        "the reaper deleted the re-added pod's veth:\n{}",
        ipamd.log()
    );
    assert_eq!(pod_links(&ns), vec!["eth0".to_string()]);
    assert!(
        ipamd.log().contains("veth reaper stopped"),
        "{}",
        ipamd.log()
    );
}

#[test]
fn repeated_dels_succeed_while_the_veth_is_pending_and_after() {
    let ipamd = Ipamd::start("m5.large", STILL_POOL);
    let node = &ipamd.node;
    let before = node.snapshot();
    let ns = Netns::new("act-pod-");
    let p = pod(&ns, "twice");
    let conf = ipamd.conf("1.0.0");
    let add = add_with_retry(node, &p, &conf);
    assert!(add.success, "ADD: {}\n{}", add.stdout, ipamd.log());
    let veth = expected_veth("default", "twice");

    for round in 0..3 {
        let del = cni(node, "DEL", &p, &with_prev(&conf, &add.json));
        assert!(del.success, "DEL {round}: {}", del.stdout);
    }
    // containerd's second DEL: no netns, no prevResult.
    let mut bare = p.clone();
    bare.netns = String::new();
    let del = cni(node, "DEL", &bare, &conf);
    assert!(del.success, "bare DEL: {}", del.stdout);
    assert!(
        eventually(VETH_GONE_WITHIN, || node.link_index(&veth).is_none()),
        "{veth} never went"
    );
    // Once it is gone, DEL still succeeds, and nothing is left.
    let del = cni(node, "DEL", &p, &with_prev(&conf, &add.json));
    assert!(del.success, "DEL after: {}", del.stdout);
    assert_eq!(node.settled_snapshot(&before), before);
    assert!(
        ipamd.log().lines().all(|l| !l.contains("panicked")),
        "{}",
        ipamd.log()
    );
}
