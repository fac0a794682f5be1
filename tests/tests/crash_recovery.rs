//! Crash safety of ipamd, through the real binaries on a simulated node that survives the daemon: restarts after
//! SIGKILL keep every pod; a DEL made while ipamd recovers is honoured; SIGTERM finishes in-flight requests and
//! exits 0 with the checkpoint flushed; a bad checkpoint stops ipamd with a clear error and is kept.

mod crash_support;

use std::time::Duration;

use crash_support::{Pod, SimNode};
use integration_tests::arr;

fn status_pods(node: &SimNode) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = arr(&node.status()["pods"])
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["ip"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn pods_of(pods: &[Pod]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pods
        .iter()
        .map(|p| (p.spec.name.clone(), p.ip.clone().unwrap_or_default()))
        .collect();
    v.sort();
    v
}

/// Enough addresses that the second ENI is attached and pods land on it.
const TWO_ENIS: &[(&str, &str)] = &[("WARM_IP_TARGET", "2"), ("MINIMUM_IP_TARGET", "14")];

#[test]
fn sigkill_and_restart_keep_every_pod_its_address_and_its_connectivity() {
    let node = SimNode::new("m5.large", TWO_ENIS);
    node.start();
    let mut pods = Vec::new();
    for i in 0..12 {
        let mut p = Pod::new(&format!("keep-{i}"), &format!("ctr-keep-{i}"));
        let out = p.add(&node);
        assert!(out.success, "ADD: {}\n{}", out.stdout, node.log_tail(30));
        pods.push(p);
    }
    let tables: Vec<u64> = arr(&node.status()["pods"])
        .iter()
        .filter_map(|p| p["routeTable"].as_u64())
        .collect();
    assert!(
        tables.iter().any(|t| *t != 254),
        "no pod on a secondary ENI: {tables:?}"
    );
    let before = node.node.snapshot();
    let held = pods_of(&pods);

    node.kill9();
    node.start();
    assert_eq!(
        status_pods(&node),
        held,
        "ipamd lost or changed pods:\n{}",
        node.log_tail(30)
    );
    let mut on_disk: Vec<String> = node.checkpoint().0.into_iter().map(|(_, ip)| ip).collect();
    on_disk.sort();
    let mut want: Vec<String> = held.iter().map(|(_, ip)| ip.clone()).collect();
    want.sort();
    assert_eq!(on_disk, want);
    assert_eq!(
        node.node.snapshot(),
        before,
        "the restart changed the node's networking"
    );
    let node_ip = node.node_ip();
    for p in &pods {
        assert!(p.netns.ping(&node_ip), "{} lost connectivity", p.spec.name);
    }
    // New pods never get a restored pod's address.
    for i in 0..3 {
        let mut p = Pod::new(&format!("new-{i}"), &format!("ctr-new-{i}"));
        let out = p.add(&node);
        assert!(out.success, "ADD: {}", out.stdout);
        assert!(
            !want.contains(p.ip.as_ref().expect("ip")),
            "restored address handed out again"
        );
        pods.push(p);
    }
    for p in &pods {
        assert!(p.del(&node).success);
    }
    let (status, _) = node.term(Duration::from_secs(20)).expect("stops");
    assert!(status.success());
    assert!(node.checkpoint().0.is_empty());
}

#[test]
fn del_during_recovery_is_honoured_and_not_failed() {
    let node = SimNode::new("m5.large", TWO_ENIS);
    node.start();
    let mut gone = Pod::new("gone", "ctr-gone");
    let mut stays = Pod::new("stays", "ctr-stays");
    assert!(gone.add(&node).success);
    assert!(stays.add(&node).success);
    let gone_ip = gone.ip.clone().expect("ip");
    // Let the assignments age past the grace a just-answered ADD gets (its plugin may still be building).
    std::thread::sleep(Duration::from_secs(16));

    node.kill9();
    // A slow EC2 (every call 1.5 s) keeps the new daemon recovering for seconds.
    node.spawn(&["--sim-api-latency", "1500ms"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !node.log().contains("simulated EC2 resumed") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            node.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!node.socket().exists(), "recovery was too quick to test");
    let out = gone.del(&node);
    assert!(
        out.success,
        "a DEL during recovery must not fail: {}",
        out.stdout
    );
    assert!(
        !node.socket().exists(),
        "the DEL did not come during recovery"
    );
    node.wait_ready(Duration::from_secs(60));

    assert_eq!(
        status_pods(&node),
        vec![("stays".to_string(), stays.ip.clone().expect("ip"))],
        "{}",
        node.log_tail(30)
    );
    assert!(!node.checkpoint().0.iter().any(|(_, ip)| *ip == gone_ip));
    let rules = node.node.ip_json(&["rule", "show"]);
    assert!(
        !arr(&rules)
            .iter()
            .any(|r| r["dst"] == gone_ip.as_str() || r["src"] == gone_ip.as_str()),
        "rules of the deleted pod remain: {rules}"
    );
    assert!(stays.netns.ping(&node.node_ip()));
    assert!(node.log().contains("released its address"));
}

#[test]
fn sigterm_finishes_in_flight_adds_flushes_and_exits_zero() {
    let node = SimNode::new(
        "m5.large",
        &[("WARM_IP_TARGET", "20"), ("MINIMUM_IP_TARGET", "20")],
    );
    node.start();
    let mut pods: Vec<Pod> = (0..10)
        .map(|i| Pod::new(&format!("term-{i}"), &format!("ctr-term-{i}")))
        .collect();
    let pid = node.pid().expect("pid");
    let results: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter_mut()
            .enumerate()
            .map(|(i, p)| {
                let node = &node;
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(i as u64 * 15));
                    let out = p.add(node);
                    assert!(out.success || out.code() == 11, "ADD: {}", out.stdout);
                    out.success
                })
            })
            .collect();
        // SIGTERM while the ADDs are arriving.
        std::thread::sleep(Duration::from_millis(60));
        let _ = integration_tests::sh("kill", &["-TERM", &pid.to_string()]);
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let (status, took) = node.term(Duration::from_secs(30)).expect("exited");
    assert!(status.success(), "exit {status}:\n{}", node.log_tail(30));
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(node.log().contains("SIGTERM: shutting down"));
    // Exactly the ADDs that succeeded are in the checkpoint: none lost, none extra.
    let mut succeeded: Vec<String> = pods
        .iter()
        .zip(&results)
        .filter(|(_, ok)| **ok)
        .map(|(p, _)| p.spec.container_id.clone())
        .collect();
    succeeded.sort();
    let mut on_disk: Vec<String> = node.checkpoint().0.into_iter().map(|(c, _)| c).collect();
    on_disk.sort();
    assert_eq!(on_disk, succeeded);
    assert!(!node.socket().exists(), "socket left behind");
    // The next daemon serves the same pods.
    node.start();
    assert_eq!(status_pods(&node).len(), succeeded.len());
    for (p, ok) in pods.iter().zip(&results) {
        if *ok {
            assert!(p.del(&node).success);
        }
    }
}

#[test]
fn bad_checkpoints_stop_ipamd_with_the_file_named_and_are_kept() {
    let anchor = concat!(
        r#"{"version":"vpc-cni-ipam/1","allocations":[{"networkName":"aws-cni","containerID":"3f1c","#,
        r#""ifName":"eth0","ipv4":"10.0.0.7","allocationTimestamp":1767225600123456789,"#,
        r#""metadata":{"k8sPodNamespace":"default","k8sPodName":"web-0"}}]}"#,
        "\n"
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "is empty"),
        (
            "truncated",
            anchor.as_bytes()[..anchor.len() / 2].to_vec(),
            "is truncated",
        ),
        ("garbage", b"\x7fELF\x02\x01garbage".to_vec(), "is corrupt"),
        (
            "future",
            br#"{"version":"vpc-cni-ipam/2","allocations":[]}"#.to_vec(),
            "newer than this ipamd",
        ),
    ];
    let node = SimNode::new("m5.large", &[]);
    for (what, bytes, message) in cases {
        std::fs::write(node.checkpoint_path(), &bytes).expect("write");
        node.spawn(&[]);
        let status = node
            .wait_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{what}: ipamd kept running:\n{}", node.log_tail(20)));
        assert!(!status.success(), "{what}: ipamd exited 0");
        let log = node.log_tail(5);
        let path = node.checkpoint_path().display().to_string();
        assert!(
            log.contains(&path) && log.contains(message),
            "{what}: {log}"
        );
        assert_eq!(
            std::fs::read(node.checkpoint_path()).expect("kept"),
            bytes,
            "{what}: the file was changed"
        );
        assert!(!node.socket().exists(), "{what}: served anyway");
    }
    // Once the operator moves it aside, ipamd starts.
    std::fs::remove_file(node.checkpoint_path()).expect("rm");
    node.start();
}
