//! `ipamd health` (the probe command) and `ipamd status` against a running ipamd.

use std::process::Output;

use integration_tests::{add_with_retry, bin, result_ip, sh, Ipamd, Netns, PodSpec};

fn ipamd_cmd(args: &[&str]) -> Output {
    sh(bin("ipamd").to_str().expect("path"), args)
}

#[test]
fn health_follows_grpc_health_probe_exit_codes_and_ready_means_can_serve_pods() {
    // t3.nano with MAX_ENI=1 holds exactly one pod address, so "ready" turns false after one pod.
    let mut ipamd = Ipamd::start("t3.nano", &[("MAX_ENI", "1")]);
    let sock = ipamd.socket().display().to_string();
    let live = ipamd_cmd(&["health", "--socket", &sock]);
    assert_eq!(live.status.code(), Some(0), "{live:?}");
    let ready = ipamd_cmd(&["health", "--socket", &sock, "--ready"]);
    assert_eq!(ready.status.code(), Some(0), "{ready:?}");

    let ns = Netns::new("act-pod-");
    let p = PodSpec {
        container_id: "ctr-health".into(),
        namespace: "default".into(),
        name: "only".into(),
        netns: ns.path(),
        ifname: "eth0".into(),
    };
    let add = add_with_retry(&ipamd.node, &p, &ipamd.conf("1.0.0"));
    assert!(add.success, "{}", add.stdout);

    let live = ipamd_cmd(&["health", "--socket", &sock]);
    assert_eq!(live.status.code(), Some(0), "alive even when full");
    let full = ipamd_cmd(&["health", "--socket", &sock, "--ready"]);
    assert_eq!(full.status.code(), Some(4), "{full:?}");
    assert!(String::from_utf8_lossy(&full.stderr).contains("not ready"));

    // Status shows the pod, the counts and why the node is not ready.
    let text = ipamd_cmd(&["status", "--socket", &sock]);
    assert!(text.status.success(), "{text:?}");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("default/only"), "{text}");
    assert!(text.contains(&result_ip(&add.json)), "{text}");
    assert!(text.contains("ready      NO"), "{text}");
    assert!(
        text.contains("PRIMARY") && text.contains("COOLDOWN"),
        "ENI table: {text}"
    );
    assert!(text.contains("pool last"), "last decision: {text}");
    assert!(
        text.contains("snat       nftables (no kube-proxy rules found"),
        "SNAT backend and why: {text}"
    );
    let json = ipamd_cmd(&["status", "--socket", &sock, "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(v["ready"], false);
    assert_eq!(v["pool"]["assigned"], 1);
    assert_eq!(v["pods"][0]["ip"], result_ip(&add.json).as_str());
    assert_eq!(v["instanceType"], "t3.nano");
    assert_eq!(v["snatBackend"], "nftables");
    assert_eq!(v["enis"][0]["assigned"], 1);
    assert_eq!(v["enis"][0]["primary"], true);
    assert!(
        v["lastDecision"].as_str().is_some_and(|d| !d.is_empty()),
        "{v}"
    );

    // Daemon gone: exit 2 (cannot connect), as grpc-health-probe.
    assert!(ipamd.stop());
    let down = ipamd_cmd(&["health", "--socket", &sock, "--timeout", "1s"]);
    assert_eq!(down.status.code(), Some(2), "{down:?}");
    let st = ipamd_cmd(&["status", "--socket", &sock, "--timeout", "1s"]);
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains(&sock));
}
