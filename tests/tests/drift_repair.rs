//! Pods' host rules and routes deleted behind ipamd's back come back at the next reconcile (the anchor's #3162,
//! #3309, #3524: host network managers that delete them), and a rule for a pool address no pod holds goes;
//! every change is counted in `awscni_pod_routing_repairs_total`.

use std::time::Duration;

use integration_tests::{add_with_retry, arr, cni, eventually, pod, result_ip, sh, Ipamd, Netns};

fn rule_exists(node: &Netns, prio: u64, key: &str, ip: &str) -> bool {
    arr(&node.ip_json(&["rule", "show"]))
        .iter()
        .any(|r| r["priority"] == prio && r[key] == ip)
}

fn route_exists(node: &Netns, ip: &str) -> bool {
    arr(&node.ip_json(&["route", "show", "table", "main"]))
        .iter()
        .any(|r| r["dst"] == ip)
}

fn repairs(node: &Netns) -> f64 {
    let out = node.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://127.0.0.1:61678/metrics",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("awscni_pod_routing_repairs_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn deleted_pod_rules_and_routes_come_back_and_stale_rules_go() {
    let ipamd = Ipamd::start("t3.nano", &[]);
    let node = &ipamd.node;
    let conf = ipamd.conf("1.0.0");
    let ns1 = Netns::new("act-drift-a-");
    let ns2 = Netns::new("act-drift-b-");
    let p1 = pod(&ns1, "first");
    let out1 = add_with_retry(node, &p1, &conf);
    assert!(out1.success, "ADD 1: {}", out1.stdout);
    let ip1 = result_ip(&out1.json);
    let out2 = add_with_retry(node, &pod(&ns2, "second"), &conf);
    assert!(out2.success, "ADD 2: {}\n{}", out2.stdout, ipamd.log());
    let ip2 = result_ip(&out2.json);
    assert!(rule_exists(node, 1536, "src", &ip2), "secondary-ENI pod");
    let before = repairs(node);

    // The first pod goes; its address stays in the pool (cooling down), held by no pod.
    let mut del = conf.clone();
    del["prevResult"] = out1.json.clone();
    assert!(cni(node, "DEL", &p1, &del).success);

    // Behind ipamd's back: the second pod's rules and route go, and a rule appears for the freed address.
    for args in [
        vec![
            "rule", "add", "priority", "512", "to", &ip1, "lookup", "main",
        ],
        vec!["rule", "del", "priority", "512", "to", &ip2],
        vec!["rule", "del", "priority", "1536", "from", &ip2],
        vec!["route", "del", &ip2],
    ] {
        let out = node.exec(&[&["ip"][..], &args].concat());
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    assert!(!rule_exists(node, 512, "dst", &ip2));
    assert!(!route_exists(node, &ip2));
    assert!(rule_exists(node, 512, "dst", &ip1));

    let pid = ipamd.pid().expect("ipamd runs").to_string();
    assert!(sh("kill", &["-USR1", &pid]).status.success());
    assert!(
        eventually(Duration::from_secs(10), || {
            rule_exists(node, 512, "dst", &ip2)
                && rule_exists(node, 1536, "src", &ip2)
                && route_exists(node, &ip2)
                && !rule_exists(node, 512, "dst", &ip1)
        }),
        "rules and route not repaired:\n{}",
        ipamd.log()
    );
    assert!(
        eventually(Duration::from_secs(5), || repairs(node) >= before + 4.0),
        "repairs counted: {}",
        repairs(node)
    );
}
