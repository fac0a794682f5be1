//! One pod through the whole path: the real `aws-cni` against `ipamd run --backend sim`, in namespaces.

use std::collections::HashSet;

use integration_tests::{
    add_with_retry, arr, bin, cni, cni_raw, eventually, expected_veth, pod, result_ip, sh, Ipamd,
    Netns, PodSpec, STILL_POOL, VETH_GONE_WITHIN,
};

/// Settings that keep the pool still across one ADD/DEL (10 IPs, 1 warm), so the node's state before and after
/// can be compared exactly.

#[test]
fn add_programs_the_pod_like_the_anchor_and_del_leaves_nothing() {
    let ipamd = Ipamd::start("m5.large", STILL_POOL);
    let node = &ipamd.node;
    let before = node.snapshot();
    let pod_ns = Netns::new("act-pod-");
    let p = pod(&pod_ns, "nginx");
    let conf = ipamd.conf("1.0.0");

    let out = add_with_retry(node, &p, &conf);
    assert!(out.success, "ADD failed: {}\n{}", out.stdout, ipamd.log());
    let ip = result_ip(&out.json);
    let veth = expected_veth("default", "nginx");
    assert_eq!(out.json["cniVersion"], "1.0.0");
    assert_eq!(out.json["interfaces"][0]["name"], veth.as_str());
    assert_eq!(out.json["interfaces"][1]["sandbox"], p.netns.as_str());
    assert!(
        out.json["ips"][0].get("version").is_none(),
        "1.0.0 results have no ips[].version"
    );

    // Pod side: /32 on eth0, gateway route scope link, default via it, permanent neighbour to the host MAC.
    let addrs = pod_ns.ip_json(&["addr", "show", "dev", "eth0"]);
    let inet: Vec<String> = arr(&addrs[0]["addr_info"])
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect();
    assert_eq!(inet, vec![format!("{ip}/32")]);
    let routes = pod_ns.ip_json(&["route", "show"]);
    assert!(arr(&routes)
        .iter()
        .any(|r| r["dst"] == "169.254.1.1" && r["scope"] == "link" && r["dev"] == "eth0"));
    assert!(arr(&routes)
        .iter()
        .any(|r| r["dst"] == "default" && r["gateway"] == "169.254.1.1" && r["dev"] == "eth0"));
    let host_link = node.ip_json(&["link", "show", "dev", &veth]);
    let host_mac = host_link[0]["address"]
        .as_str()
        .expect("host veth MAC")
        .to_string();
    let neigh = pod_ns.ip_json(&["neigh", "show", "dev", "eth0"]);
    assert!(
        arr(&neigh).iter().any(|n| n["dst"] == "169.254.1.1"
            && n["lladdr"] == host_mac.as_str()
            && arr(&n["state"]).iter().any(|s| s == "PERMANENT")),
        "no permanent neighbour 169.254.1.1 -> {host_mac}: {neigh}"
    );
    // Host side: /32 route to the veth, rule 512 to main; the pod is on the primary ENI, so no 1536 rule.
    let host_routes = node.ip_json(&["route", "show", &format!("{ip}/32")]);
    assert_eq!(host_routes[0]["dev"], veth.as_str(), "{host_routes}");
    assert_eq!(host_routes[0]["scope"], "link");
    let rules = arr(&node.ip_json(&["rule", "show"]));
    assert!(rules
        .iter()
        .any(|r| r["priority"] == 512 && r["dst"] == ip.as_str() && r["table"] == "main"));
    assert!(!rules.iter().any(|r| r["priority"] == 1536));
    assert!(pod_ns.ping(&ipamd.node_ip()), "pod cannot reach the node");

    let del = cni(node, "DEL", &p, &conf);
    assert!(del.success, "DEL failed: {}", del.stdout);
    assert!(
        del.stdout.trim().is_empty(),
        "DEL prints nothing on success"
    );
    // The rules and the route are gone when DEL returns; the veth (ipamd deletes it in the background) soon.
    let rules = arr(&node.ip_json(&["rule", "show"]));
    assert!(
        !rules.iter().any(|r| r["dst"] == ip.as_str()),
        "rule for {ip} left after DEL: {rules:?}"
    );
    assert!(
        arr(&node.ip_json(&["route", "show", &format!("{ip}/32")])).is_empty(),
        "host route to {ip} left after DEL"
    );
    assert_eq!(
        node.settled_snapshot(&before),
        before,
        "node state after DEL differs from before ADD"
    );
    assert!(
        eventually(VETH_GONE_WITHIN, || arr(&pod_ns.ip_json(&["link", "show"]))
            .iter()
            .all(|l| l["ifname"] == "lo")),
        "pod netns still has interfaces"
    );
}

#[test]
fn twenty_pods_get_twenty_distinct_ips_across_enis() {
    let ipamd = Ipamd::start("m5.large", &[]);
    let conf = ipamd.conf("0.4.0");
    let mut pods = Vec::new();
    let mut ips = HashSet::new();
    let mut tables = HashSet::new();
    for i in 0..20 {
        let ns = Netns::new("act-pod-");
        let p = pod(&ns, &format!("web-{i}"));
        let out = add_with_retry(&ipamd.node, &p, &conf);
        assert!(
            out.success,
            "ADD {i} failed: {}\n{}",
            out.stdout,
            ipamd.log()
        );
        assert_eq!(
            out.json["ips"][0]["version"], "4",
            "0.4.0 results carry ips[].version"
        );
        let ip = result_ip(&out.json);
        assert!(ip.starts_with("10.0."), "{ip} outside the simulated subnet");
        assert!(ips.insert(ip.clone()), "IP {ip} handed out twice");
        tables.insert(
            out.json["interfaces"][2]["sandbox"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
        pods.push((ns, p, out.json));
    }
    assert_eq!(ips.len(), 20);
    assert!(
        tables.len() >= 2,
        "20 pods on m5.large need more than one ENI: {tables:?}"
    );

    // Pods on secondary ENIs get `from <ip> lookup <table>` at 1536, one per pod.
    let rules = arr(&ipamd.node.ip_json(&["rule", "show"]));
    let from_rules = rules.iter().filter(|r| r["priority"] == 1536).count();
    let secondary = pods
        .iter()
        .filter(|(_, _, r)| r["interfaces"][2]["sandbox"] != "0")
        .count();
    assert_eq!(from_rules, secondary);

    for (_, p, prev) in &pods {
        let mut c = conf.clone();
        c["prevResult"] = prev.clone();
        let del = cni(&ipamd.node, "DEL", p, &c);
        assert!(del.success, "DEL failed: {}", del.stdout);
    }
    let rules = arr(&ipamd.node.ip_json(&["rule", "show"]));
    assert!(
        !rules
            .iter()
            .any(|r| r["priority"] == 512 || r["priority"] == 1536),
        "pod rules left: {rules:?}"
    );
    let no_pod_veths = || {
        !arr(&ipamd.node.ip_json(&["link", "show"]))
            .iter()
            .any(|l| l["ifname"].as_str().is_some_and(|n| n.starts_with("eni")))
    };
    assert!(eventually(VETH_GONE_WITHIN, no_pod_veths), "pod veths left");
}

#[test]
fn traffic_flows_pod_to_pod_pod_to_node_and_out_of_the_secondary_eni() {
    // t3.nano: 2 ENIs x 2 IPv4, so the second pod lands on the secondary ENI.
    let ipamd = Ipamd::start("t3.nano", &[]);
    let conf = ipamd.conf("1.1.0");
    let a_ns = Netns::new("act-pod-");
    let b_ns = Netns::new("act-pod-");
    let a = add_with_retry(&ipamd.node, &pod(&a_ns, "a"), &conf);
    assert!(a.success, "{}\n{}", a.stdout, ipamd.log());
    let b = add_with_retry(&ipamd.node, &pod(&b_ns, "b"), &conf);
    assert!(b.success, "{}\n{}", b.stdout, ipamd.log());
    let (a_ip, b_ip) = (result_ip(&a.json), result_ip(&b.json));
    assert_eq!(a.json["interfaces"][2]["sandbox"], "0");
    assert_eq!(
        b.json["interfaces"][2]["sandbox"], "1",
        "second pod should be on eth1"
    );

    let node_ip = ipamd.node_ip();
    assert!(a_ns.ping(&node_ip), "pod a -> node");
    assert!(b_ns.ping(&node_ip), "pod b -> node");
    assert!(a_ns.ping(&b_ip), "pod a -> pod b");
    assert!(b_ns.ping(&a_ip), "pod b -> pod a");
    // The VPC router lives behind the ENIs: pod b reaches it only through eth1 and table 2.
    assert!(b_ns.ping("10.0.0.1"), "pod b -> VPC router");
    let veth_b = b.json["interfaces"][0]["name"]
        .as_str()
        .expect("veth")
        .to_string();
    let route = ipamd.node.exec(&[
        "ip", "route", "get", "10.0.0.1", "from", &b_ip, "iif", &veth_b,
    ]);
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        route.contains("dev eth1") && route.contains("table 2"),
        "pod b's traffic should leave through eth1/table 2: {route}"
    );
}

#[test]
fn repeated_add_returns_the_same_ip_and_rebuilds_the_pod() {
    let ipamd = Ipamd::start("m5.large", STILL_POOL);
    let ns = Netns::new("act-pod-");
    let p = pod(&ns, "again");
    let conf = ipamd.conf("1.0.0");
    let first = add_with_retry(&ipamd.node, &p, &conf);
    assert!(first.success, "{}", first.stdout);
    let second = cni(&ipamd.node, "ADD", &p, &conf);
    assert!(second.success, "{}", second.stdout);
    assert_eq!(result_ip(&first.json), result_ip(&second.json));
    assert!(ns.ping(&ipamd.node_ip()));
}

#[test]
fn del_succeeds_when_ipamd_is_down_and_when_netns_is_gone() {
    let mut ipamd = Ipamd::start("m5.large", STILL_POOL);
    let ns = Netns::new("act-pod-");
    let p = pod(&ns, "orphan");
    let conf = ipamd.conf("1.0.0");
    let out = add_with_retry(&ipamd.node, &p, &conf);
    assert!(out.success, "{}", out.stdout);
    let ip = result_ip(&out.json);
    assert!(
        ipamd.stop(),
        "ipamd did not exit cleanly on SIGTERM:\n{}",
        ipamd.log()
    );
    assert!(!ipamd.socket().exists(), "socket left behind");

    // ipamd down: DEL tears down from prevResult and succeeds.
    let mut c = conf.clone();
    c["prevResult"] = out.json.clone();
    let del = cni(&ipamd.node, "DEL", &p, &c);
    assert!(del.success, "DEL with ipamd down failed: {}", del.stdout);
    let rules = arr(&ipamd.node.ip_json(&["rule", "show"]));
    assert!(
        !rules.iter().any(|r| r["dst"] == ip.as_str()),
        "rule for {ip} left"
    );
    // containerd's second DEL: no netns, no prevResult.
    let mut p2 = p.clone();
    p2.netns = String::new();
    let del2 = cni(&ipamd.node, "DEL", &p2, &conf);
    assert!(del2.success, "second DEL failed: {}", del2.stdout);
}

#[test]
fn errors_are_cni_json_with_the_right_code_and_cause() {
    let node = Netns::new("act-node-");
    // Bad JSON -> 6.
    let out = cni_raw(
        &node,
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "x"),
            ("CNI_NETNS", "/run/netns/none"),
            ("CNI_IFNAME", "eth0"),
        ],
        b"{not json",
    );
    assert!(!out.success);
    assert_eq!(out.code(), 6, "{}", out.stdout);
    // Missing CNI_CONTAINERID -> 4, naming the variable.
    let conf = br#"{"cniVersion":"1.0.0","name":"aws-cni","type":"aws-cni"}"#;
    let out = cni_raw(
        &node,
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/x"),
        ],
        conf,
    );
    assert_eq!(out.code(), 4, "{}", out.stdout);
    assert!(
        out.json["msg"]
            .as_str()
            .unwrap_or("")
            .contains("CNI_CONTAINERID"),
        "{}",
        out.stdout
    );
    // ipamd not running -> 11 (try again later), naming the socket.
    let pod_ns = Netns::new("act-pod-");
    let conf = serde_json::json!({"cniVersion":"1.0.0","name":"aws-cni","type":"aws-cni",
        "ipamdSocket":"/tmp/nobody-listens-here.sock","ipamdTimeoutMs":500,"pluginLogFile":"stderr"});
    let out = cni(&node, "ADD", &pod(&pod_ns, "p"), &conf);
    assert_eq!(out.code(), 11, "{}", out.stdout);
    assert!(
        out.json["msg"]
            .as_str()
            .unwrap_or("")
            .contains("/tmp/nobody-listens-here.sock"),
        "{}",
        out.stdout
    );
    // The veth pair the ADD built while it asked ipamd is gone again: only lo in the pod, no veth on the node.
    let links = |ns: &Netns| -> Vec<String> {
        arr(&ns.ip_json(&["link", "show"]))
            .iter()
            .map(|l| l["ifname"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(
        links(&pod_ns),
        ["lo"],
        "a failed ADD left a link in the pod"
    );
    assert!(
        !links(&node).iter().any(|l| l.starts_with("eni")),
        "a failed ADD left a veth on the node: {:?}",
        links(&node)
    );
    // VERSION lists the versions.
    let out = cni_raw(
        &node,
        &[("CNI_COMMAND", "VERSION")],
        br#"{"cniVersion":"1.0.0"}"#,
    );
    assert!(out.success);
    let versions: Vec<&str> = arr(&out.json["supportedVersions"])
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .map(|s| Box::leak(s.into_boxed_str()) as &str)
        .collect();
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(versions.contains(&v), "{v} missing from {versions:?}");
    }
}

#[test]
fn sim_backend_refuses_the_hosts_network_namespace() {
    let out = sh(
        bin("ipamd").to_str().expect("path"),
        &[
            "run",
            "--backend",
            "sim",
            "--socket",
            "/tmp/never-created.sock",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("initial network namespace"), "{err}");
    assert!(!std::path::Path::new("/tmp/never-created.sock").exists());
}

/// The plugin asks ipamd on a thread of its own while it builds the veth pair (`aws-cni`'s `add::ask`); what can
/// refuse an ADD without ipamd (a sandbox namespace that is gone, a bad MTU) is checked before ipamd is asked, so
/// such an ADD leaves no address assigned.
#[test]
fn an_add_refused_before_ipamd_is_asked_holds_no_address() {
    let ipamd = Ipamd::start("m5.large", STILL_POOL);
    let conf = ipamd.conf("1.0.0");
    let assigned = || ipamd.status_json()["pool"]["assigned"].as_u64();
    assert_eq!(assigned(), Some(0));
    let gone = PodSpec {
        container_id: "ctr-refused-early".into(),
        namespace: "default".into(),
        name: "gone".into(),
        netns: format!("/run/netns/{}", integration_tests::unique("act-gone-")),
        ifname: "eth0".into(),
    };
    let out = cni(&ipamd.node, "ADD", &gone, &conf);
    assert_eq!(out.code(), 111, "{}", out.stdout);
    let mut bad_mtu = conf.clone();
    bad_mtu["mtu"] = serde_json::json!("70000");
    let ns = Netns::new("act-pod-");
    let out = cni(&ipamd.node, "ADD", &pod(&ns, "bad-mtu"), &bad_mtu);
    assert!(!out.success, "{}", out.stdout);
    assert_eq!(
        assigned(),
        Some(0),
        "a refused ADD left an address assigned: {}",
        ipamd.log()
    );
    // The same pod with a good netconf gets an address: the refusals above were the checks, not a broken node.
    let out = cni(&ipamd.node, "ADD", &pod(&ns, "bad-mtu"), &conf);
    assert!(out.success, "{}", out.stdout);
    assert_eq!(assigned(), Some(1));
    let out = cni(&ipamd.node, "DEL", &pod(&ns, "bad-mtu"), &conf);
    assert!(out.success, "{}", out.stdout);
}
