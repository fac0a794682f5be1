//! Real packets through a simulated node: a pod on a secondary ENI sends VPC traffic out of its own ENI (its route
//! table, via rule 1536), and non-VPC traffic out of the primary ENI, SNATed to the node's primary IP (connmark,
//! fwmark rule 1024, AWS-SNAT-CHAIN-0). Checked with interface counters, `ip route get`, the iptables counters
//! and conntrack, in the node's namespace. The "internet" is an address (198.51.100.1, TEST-NET-2) held by the
//! simulator's VPC namespace, outside the VPC CIDR.

use integration_tests::{add_two_pods, arr, cni, result_ip, Ipamd, Netns};
use serde_json::Value;

const INTERNET: &str = "198.51.100.1";
const VPC_ROUTER: &str = "10.0.0.1";

fn tx_packets(node: &Netns, dev: &str) -> u64 {
    let v = node.ip_json(&["-s", "link", "show", "dev", dev]);
    v[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no tx counter for {dev}: {v}"))
}

/// The ENI (device index) holding `ip`, from the simulator's state.
fn device_of(ipamd: &Ipamd, ip: &str) -> Option<u64> {
    let st = ipamd.sim_state();
    st["enis"].as_object().and_then(|m| {
        m.values()
            .find(|e| arr(&e["secondary_ips"]).iter().any(|x| x == ip))
            .and_then(|e| e["device_index"].as_u64())
    })
}

fn ping(ns: &Netns, ip: &str, count: &str) -> bool {
    ns.exec(&["ping", "-c", count, "-i", "0.2", "-W", "2", "-q", ip])
        .status
        .success()
}

/// `pkts` of the last (SNAT) rule of AWS-SNAT-CHAIN-0.
fn snat_packets(node: &Netns) -> u64 {
    let out = node.exec(&[
        "iptables",
        "-w",
        "5",
        "-t",
        "nat",
        "-L",
        "AWS-SNAT-CHAIN-0",
        "-v",
        "-x",
        "-n",
    ]);
    assert!(out.status.success(), "iptables -L: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.contains("SNAT") && l.contains("to:"))
        .unwrap_or_else(|| panic!("no SNAT rule:\n{text}"));
    line.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("cannot read counter: {line}"))
}

#[test]
fn secondary_eni_pods_use_their_table_for_vpc_and_snat_to_the_primary_ip_for_the_internet() {
    // t3.nano: 2 ENIs with one secondary IP each, so the second pod lands on the secondary ENI (eth1).
    let ipamd = Ipamd::start("t3.nano", &[("AWS_CNI_SNAT_BACKEND", "iptables-nft")]);
    let node = &ipamd.node;
    let conf = ipamd.conf("1.0.0");
    let primary_ip = ipamd.node_ip();

    let [(ns1, p1, out1), (ns2, p2, out2)] = add_two_pods(&ipamd, &conf, "act-snat-");
    let ip1 = result_ip(&out1.json);
    let ip2 = result_ip(&out2.json);
    assert_eq!(
        device_of(&ipamd, &ip1),
        Some(0),
        "first pod on the primary ENI"
    );
    assert_eq!(
        device_of(&ipamd, &ip2),
        Some(1),
        "second pod on the secondary ENI"
    );

    // The ENI's host setup: table 2 with the gateway route and default route, rule 32765 for its primary IP.
    let table2 = arr(&node.ip_json(&["route", "show", "table", "2"]));
    assert!(
        table2
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == VPC_ROUTER && r["dev"] == "eth1"),
        "table 2: {table2:?}"
    );
    let rules = arr(&node.ip_json(&["rule", "show"]));
    assert!(rules
        .iter()
        .any(|r| r["priority"] == 32765 && r["table"] == "2"));
    assert!(
        rules
            .iter()
            .any(|r| r["priority"] == 1536 && r["src"] == ip2.as_str() && r["table"] == "2"),
        "rule 1536 for the secondary-ENI pod: {rules:?}"
    );
    assert!(
        rules
            .iter()
            .any(|r| r["priority"] == 1024 && r["table"] == "main"),
        "fwmark rule: {rules:?}"
    );

    // VPC traffic of the secondary-ENI pod leaves through eth1.
    let veth2 = out2.json["interfaces"][0]["name"]
        .as_str()
        .expect("host veth")
        .to_string();
    let route: Value = node.ip_json(&["route", "get", VPC_ROUTER, "from", &ip2, "iif", &veth2]);
    assert_eq!(route[0]["dev"], "eth1", "route get: {route}");
    let eth1_before = tx_packets(node, "eth1");
    assert!(ping(&ns2, VPC_ROUTER, "5"), "pod 2 -> VPC router");
    assert!(tx_packets(node, "eth1") - eth1_before >= 5);

    // Internet traffic of the same pod leaves through eth0, SNATed to the node's primary IP.
    let snat_before = snat_packets(node);
    let eth0_before = tx_packets(node, "eth0");
    let eth1_before = tx_packets(node, "eth1");
    assert!(
        ping(&ns2, INTERNET, "5"),
        "pod 2 -> internet\n{}",
        ipamd.log()
    );
    assert!(
        tx_packets(node, "eth0") - eth0_before >= 5,
        "internet traffic left through eth0"
    );
    assert!(
        tx_packets(node, "eth1") - eth1_before < 5,
        "internet traffic did not leave through eth1"
    );
    assert!(
        snat_packets(node) > snat_before,
        "the SNAT rule matched the new connection"
    );
    let ct = node.exec(&["conntrack", "-L", "-p", "icmp", "-d", INTERNET]);
    let ct = String::from_utf8_lossy(&ct.stdout).to_string();
    let entry = ct
        .lines()
        .find(|l| l.contains(&format!("src={ip2} ")))
        .unwrap_or_else(|| panic!("no conntrack entry for {ip2}:\n{ct}"));
    assert!(
        entry.contains(&format!("dst={primary_ip} ")),
        "reply goes to the primary IP (SNAT): {entry}"
    );

    // VPC traffic is not SNATed.
    let snat_before = snat_packets(node);
    assert!(ping(&ns1, VPC_ROUTER, "2"), "pod 1 -> VPC router");
    assert_eq!(
        snat_packets(node),
        snat_before,
        "VPC traffic kept its address"
    );

    for (p, out) in [(&p1, &out1), (&p2, &out2)] {
        let mut conf = conf.clone();
        conf["prevResult"] = out.json.clone();
        let del = cni(node, "DEL", p, &conf);
        assert!(del.success, "DEL: {}", del.stdout);
    }
}

#[test]
fn external_snat_leaves_no_snat_rules() {
    let ipamd = Ipamd::start(
        "t3.nano",
        &[
            ("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true"),
            ("AWS_CNI_SNAT_BACKEND", "iptables-nft"),
        ],
    );
    let out = ipamd.node.exec(&["iptables", "-w", "5", "-t", "nat", "-S"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("AWS-SNAT-CHAIN"), "{text}");
    assert!(!text.contains("AWS-CONNMARK-CHAIN"), "{text}");
}
