//! CHECK, STATUS, GC and the hard cases of ADD and DEL, through the real binaries.

use integration_tests::{
    add_with_retry, arr, cni, cni_raw, pod, result_ip, sh, with_prev, Ipamd, Netns, PodSpec,
    TempDir, STILL_POOL,
};
use serde_json::json;

fn msg(out: &integration_tests::CniOut) -> String {
    out.json["msg"].as_str().unwrap_or_default().to_string()
}

#[test]
fn check_passes_on_a_fresh_pod_and_names_every_drift() {
    let ipamd = Ipamd::start("m5.large", STILL_POOL);
    let ns = Netns::new("act-pod-");
    let p = pod(&ns, "checked");
    let conf = ipamd.conf("1.0.0");
    let add = add_with_retry(&ipamd.node, &p, &conf);
    assert!(add.success, "{}", add.stdout);
    let ip = result_ip(&add.json);

    let ok = cni(&ipamd.node, "CHECK", &p, &with_prev(&conf, &add.json));
    assert!(ok.success, "CHECK of a fresh pod failed: {}", ok.stdout);
    assert!(ok.stdout.trim().is_empty());

    let no_prev = cni(&ipamd.node, "CHECK", &p, &conf);
    assert_eq!(no_prev.code(), 7, "{}", no_prev.stdout);

    // Break two things, one in the pod and one on the host: both are named.
    assert!(ns.exec(&["ip", "route", "del", "default"]).status.success());
    assert!(ipamd
        .node
        .exec(&["ip", "rule", "del", "priority", "512", "to", &ip])
        .status
        .success());
    let drift = cni(&ipamd.node, "CHECK", &p, &with_prev(&conf, &add.json));
    assert!(!drift.success);
    assert_eq!(drift.code(), 113, "{}", drift.stdout);
    let m = msg(&drift);
    assert!(m.contains("default route"), "{m}");
    assert!(m.contains("512"), "{m}");
}

#[test]
fn status_is_ready_until_the_node_is_full_then_50_with_the_reason() {
    // t3.nano with MAX_ENI=1: one ENI with one secondary address.
    let mut ipamd = Ipamd::start("t3.nano", &[("MAX_ENI", "1")]);
    let conf = ipamd.conf("1.1.0");
    let probe = PodSpec {
        container_id: "status".into(),
        namespace: String::new(),
        name: String::new(),
        netns: String::new(),
        ifname: String::new(),
    };
    let ready = cni(&ipamd.node, "STATUS", &probe, &conf);
    assert!(ready.success, "STATUS on an idle node: {}", ready.stdout);

    let ns = Netns::new("act-pod-");
    let add = add_with_retry(&ipamd.node, &pod(&ns, "only"), &conf);
    assert!(add.success, "{}", add.stdout);
    let full = cni(&ipamd.node, "STATUS", &probe, &conf);
    assert_eq!(full.code(), 50, "{}", full.stdout);
    assert!(msg(&full).contains("ENI"), "{}", full.stdout);

    // The next ADD fails at once with its own code (102: every ENI attached and full), not "try again".
    let ns2 = Netns::new("act-pod-");
    let second = cni(&ipamd.node, "ADD", &pod(&ns2, "second"), &conf);
    assert!(!second.success);
    assert_eq!(second.code(), 102, "{}", second.stdout);

    // STATUS is a 1.1.0 verb: with a 0.4.0 config it is an incompatible-version error.
    let old = cni(&ipamd.node, "STATUS", &probe, &ipamd.conf("0.4.0"));
    assert_eq!(old.code(), 1, "{}", old.stdout);

    // ipamd down: 50, naming the socket.
    assert!(ipamd.stop());
    let down = cni(&ipamd.node, "STATUS", &probe, &conf);
    assert_eq!(down.code(), 50, "{}", down.stdout);
    assert!(
        msg(&down).contains(ipamd.socket().to_str().unwrap_or("?")),
        "{}",
        down.stdout
    );
}

#[test]
fn gc_releases_stale_attachments_and_sweeps_the_host() {
    let ipamd = Ipamd::start("m5.large", &[]);
    let conf = ipamd.conf("1.1.0");
    let a_ns = Netns::new("act-pod-");
    let b_ns = Netns::new("act-pod-");
    let (a, b) = (pod(&a_ns, "keep"), pod(&b_ns, "stale"));
    let a_add = add_with_retry(&ipamd.node, &a, &conf);
    let b_add = add_with_retry(&ipamd.node, &b, &conf);
    assert!(a_add.success && b_add.success);
    let b_ip = result_ip(&b_add.json);
    // A rule some earlier crash left behind, for an address nobody holds.
    assert!(ipamd
        .node
        .exec(&["ip", "rule", "add", "to", "10.0.9.9", "lookup", "main", "priority", "512"])
        .status
        .success());

    let probe = PodSpec {
        container_id: "gc".into(),
        namespace: String::new(),
        name: String::new(),
        netns: String::new(),
        ifname: String::new(),
    };
    let missing = cni(&ipamd.node, "GC", &probe, &conf);
    assert_eq!(
        missing.code(),
        7,
        "GC without valid-attachments: {}",
        missing.stdout
    );

    let mut gc_conf = conf.clone();
    gc_conf["cni.dev/valid-attachments"] =
        json!([{"containerID": a.container_id, "ifname": "eth0"}]);
    let gc = cni(&ipamd.node, "GC", &probe, &gc_conf);
    assert!(gc.success, "GC failed: {}", gc.stdout);

    let rules = arr(&ipamd.node.ip_json(&["rule", "show"]));
    assert!(
        !rules.iter().any(|r| r["dst"] == b_ip.as_str()),
        "stale pod's rule left"
    );
    assert!(
        !rules.iter().any(|r| r["dst"] == "10.0.9.9"),
        "leaked rule left"
    );
    let b_veth = b_add.json["interfaces"][0]["name"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let links = arr(&ipamd.node.ip_json(&["link", "show"]));
    assert!(
        !links.iter().any(|l| l["ifname"] == b_veth.as_str()),
        "stale veth left"
    );
    // The valid pod is untouched; the stale one is no longer known to ipamd.
    let a_check = cni(&ipamd.node, "CHECK", &a, &with_prev(&conf, &a_add.json));
    assert!(
        a_check.success,
        "valid pod damaged by GC: {}",
        a_check.stdout
    );
    let b_check = cni(&ipamd.node, "CHECK", &b, &with_prev(&conf, &b_add.json));
    assert!(
        msg(&b_check).contains("ipamd holds no address"),
        "{}",
        b_check.stdout
    );
}

#[test]
fn failed_add_undoes_everything_and_returns_the_ip() {
    let ipamd = Ipamd::start("m5.large", STILL_POOL);
    let dir = TempDir::new();
    let not_a_netns = dir.path().join("not-a-netns");
    std::fs::write(&not_a_netns, b"").expect("file");
    let conf = ipamd.conf("1.0.0");
    let before = ipamd.node.snapshot();
    let bad = PodSpec {
        container_id: "ctr-undo".into(),
        namespace: "default".into(),
        name: "undo".into(),
        netns: not_a_netns.to_string_lossy().to_string(),
        ifname: "eth0".into(),
    };
    let out = cni(&ipamd.node, "ADD", &bad, &conf);
    assert!(!out.success);
    assert_eq!(out.code(), 110, "{}", out.stdout);
    assert_eq!(
        ipamd.node.snapshot(),
        before,
        "a failed ADD left state behind"
    );
    // The address went back to ipamd: the same container now gets a different one (the first is cooling down);
    // had ipamd kept it, the idempotent assignment would return the same address.
    let log = ipamd.log();
    let released = log
        .lines()
        .find(|l| l.contains("DelNetwork") && l.contains("SetupNSFailed"))
        .unwrap_or_else(|| panic!("no SetupNSFailed release in the log:\n{log}"))
        .to_string();
    let ns = Netns::new("act-pod-");
    let good = PodSpec {
        netns: ns.path(),
        ..bad
    };
    let again = add_with_retry(&ipamd.node, &good, &conf);
    assert!(again.success, "{}", again.stdout);
    let ip = result_ip(&again.json);
    assert!(
        !released.contains(&format!("{ip})")),
        "got the released address {ip} back: {released}"
    );
}

#[test]
fn del_works_when_the_netns_is_already_gone() {
    let ipamd = Ipamd::start("m5.large", STILL_POOL);
    let conf = ipamd.conf("1.0.0");
    let before = ipamd.node.snapshot();
    let ns = Netns::new("act-pod-");
    let p = pod(&ns, "gone");
    let add = add_with_retry(&ipamd.node, &p, &conf);
    assert!(add.success, "{}", add.stdout);
    drop(ns); // the runtime removed the sandbox before DEL
    let del = cni(&ipamd.node, "DEL", &p, &with_prev(&conf, &add.json));
    assert!(del.success, "{}", del.stdout);
    // The kernel removes a deleted namespace's veths asynchronously, and ipamd's reaper may be the one that
    // deletes this one: wait for it.
    assert_eq!(ipamd.node.settled_snapshot(&before), before);
    // And again, twice in a row, as runtimes retry.
    let again = cni(&ipamd.node, "DEL", &p, &with_prev(&conf, &add.json));
    assert!(again.success, "second DEL: {}", again.stdout);
    assert_eq!(ipamd.node.snapshot(), before);
}

#[test]
fn bad_input_gets_a_cni_error_never_a_panic() {
    let node = Netns::new("act-node-");
    let conf =
        br#"{"cniVersion":"1.0.0","name":"aws-cni","type":"aws-cni","pluginLogFile":"stderr"}"#;
    let base = [
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/none"),
        ("CNI_IFNAME", "eth0"),
    ];
    let run = |extra: &[(&str, &str)], stdin: &[u8]| {
        let mut env: Vec<(&str, &str)> = base.to_vec();
        env.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        env.extend_from_slice(extra);
        cni_raw(&node, &env, stdin)
    };
    // No CNI_COMMAND, an unknown one.
    assert_eq!(run(&[], conf).code(), 4);
    let unknown = run(&[("CNI_COMMAND", "FROB")], conf);
    assert_eq!(unknown.code(), 4);
    assert!(msg(&unknown).contains("FROB"), "{}", unknown.stdout);
    // An interface name over 15 bytes.
    let long = run(
        &[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "a-very-long-ifname")],
        conf,
    );
    assert_eq!(long.code(), 4, "{}", long.stdout);
    // Empty stdin, JSON of the wrong shape, a wrong type for a known key, an unsupported version.
    assert_eq!(run(&[("CNI_COMMAND", "ADD")], b"").code(), 6);
    assert_eq!(run(&[("CNI_COMMAND", "ADD")], b"[1,2,3]").code(), 7);
    assert_eq!(
        run(
            &[("CNI_COMMAND", "ADD")],
            br#"{"cniVersion":"1.0.0","name":"n","type":"aws-cni","mtu":true}"#
        )
        .code(),
        7
    );
    assert_eq!(
        run(
            &[("CNI_COMMAND", "ADD")],
            br#"{"cniVersion":"9.9.9","name":"n","type":"aws-cni"}"#
        )
        .code(),
        1
    );
    // A netns path that does not exist: named in the error.
    let conf_sock = json!({"cniVersion":"1.0.0","name":"aws-cni","type":"aws-cni","pluginLogFile":"stderr",
        "ipamdSocket":"/tmp/none.sock"});
    let missing_ns = run(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_NETNS", "/run/netns/does-not-exist"),
        ],
        conf_sock.to_string().as_bytes(),
    );
    assert_eq!(missing_ns.code(), 111, "{}", missing_ns.stdout);
    assert!(msg(&missing_ns).contains("/run/netns/does-not-exist"));
    // A runtime that passes no pod name or namespace (podman passes only a name): ADD still works end to end
    // is covered in pod_lifecycle; here, that missing K8S_* never panics on DEL.
    let del = run(
        &[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")],
        conf_sock.to_string().as_bytes(),
    );
    assert!(del.success, "{}", del.stdout);
    let _ = sh("true", &[]);
}

#[test]
fn cni_versions_list_picks_the_highest_common_version() {
    let ipamd = Ipamd::start("m5.large", STILL_POOL);
    let mut conf = ipamd.conf("1.0.0");
    conf.as_object_mut().map(|o| o.remove("cniVersion"));
    conf["cniVersions"] = json!(["0.4.0", "1.0.0", "1.1.0"]);
    let ns = Netns::new("act-pod-");
    let add = add_with_retry(&ipamd.node, &pod(&ns, "versions"), &conf);
    assert!(add.success, "{}", add.stdout);
    assert_eq!(add.json["cniVersion"], "1.1.0");
}
