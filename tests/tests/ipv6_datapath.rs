//! IPv6 clusters through the real binaries (issue 20, the plugin half): `aws-cni` builds IPv6 pods from what an
//! ipamd double hands out (`integration_tests::ipamd_double`; ipamd's IPv6 mode is another branch), `egress-cni`
//! chained after it gives them IPv4 (or, for IPv4 pods, IPv6) egress with SNAT to the node.
//!
//! ```text
//!   pod A, pod B (IPv6 /128)          node netns (forwarding on)                 peers
//!   eth0 ── eniXXX ─┐                 up4 10.99.N.1/24 ───────────── p4 eth0 10.99.N.2/24 (IPv4 only, no route
//!   v4if0 ─ vethXXX ┤                                                            to 169.254.172.0/22)
//!                   └─ routes ─────   up6 2001:db8:99:N::1/64 ─────── p6 eth0 2001:db8:99:N::2/64 (route to the
//!                                                                     pods' /80 via the node; none to fd00::)
//! ```
//!
//! A peer answering a pod's egress address can only do so through the node's SNAT: it has no route back to the
//! egress ranges. After DEL (and after GC of pods whose namespace vanished without a DEL) the node's links,
//! addresses, routes, rules, permanent neighbours and NAT chains are exactly what they were before.

use std::path::Path;

use integration_tests::ipamd_double::IpamdDouble;
use integration_tests::{
    arr, bin, cni_at, cni_gc_at, pod, require_root, with_prev, Chain, Netns, TempDir,
};
use serde_json::{json, Value};

/// A node with an IPv4-only peer and an IPv6 peer, unique per test.
struct Node {
    ns: Netns,
    p4: Netns,
    p6: Netns,
    n: u8,
}

const POD_PREFIX: &str = "2001:db8:1:2:3::";

impl Node {
    fn new(tag: &str) -> Node {
        // Addresses live inside the test's own namespaces: any value works, this one varies between runs.
        let n = (std::process::id() % 200) as u8 + (tag.len() as u8 % 50);
        let ns = Netns::new(&format!("{tag}n-"));
        let p4 = Netns::new(&format!("{tag}4-"));
        let p6 = Netns::new(&format!("{tag}6-"));
        let ok = |o: std::process::Output| assert!(o.status.success(), "{o:?}");
        for s in [&ns, &p4, &p6] {
            ok(s.exec(&["ip", "link", "set", "lo", "up"]));
            // Link-local addresses without DAD, so the baseline snapshot is final at once.
            ok(s.exec(&["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"]));
        }
        ok(ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]));
        ok(ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]));
        ok(p4.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]));
        ok(p4.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]));
        for (up, peer) in [("up4", &p4), ("up6", &p6)] {
            ok(ns.exec(&[
                "ip", "link", "add", up, "type", "veth", "peer", "name", "eth0", "netns",
                &peer.name,
            ]));
            ok(ns.exec(&["ip", "link", "set", up, "up"]));
            ok(peer.exec(&["ip", "link", "set", "eth0", "up"]));
        }
        let v4 = |h: u8| format!("10.99.{n}.{h}/24");
        let v6 = |h: u8| format!("2001:db8:99:{n}::{h}/64");
        ok(ns.exec(&["ip", "addr", "add", &v4(1), "dev", "up4"]));
        ok(p4.exec(&["ip", "addr", "add", &v4(2), "dev", "eth0"]));
        ok(ns.exec(&["ip", "addr", "add", &v6(1), "dev", "up6", "nodad"]));
        ok(p6.exec(&["ip", "addr", "add", &v6(2), "dev", "eth0", "nodad"]));
        ok(p6.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            &format!("{POD_PREFIX}/80"),
            "via",
            &format!("2001:db8:99:{n}::1"),
        ]));
        let node = Node { ns, p4, p6, n };
        // The kernel adds the link-locals' local routes shortly after the links go up: wait for a stable view.
        let mut last = node.snapshot();
        assert!(
            integration_tests::eventually(std::time::Duration::from_secs(5), || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                let now = node.snapshot();
                let same =
                    now == last && now.iter().filter(|l| l.contains("\"fe80::\"")).count() == 2;
                last = now;
                same
            }),
            "the test node settles"
        );
        node
    }

    fn ip4(&self) -> String {
        format!("10.99.{}.1", self.n)
    }
    fn peer4(&self) -> String {
        format!("10.99.{}.2", self.n)
    }
    fn ip6(&self) -> String {
        format!("2001:db8:99:{}::1", self.n)
    }
    fn peer6(&self) -> String {
        format!("2001:db8:99:{}::2", self.n)
    }

    /// Everything pod plumbing and egress could leave on the node, both families, comparable.
    fn snapshot(&self) -> Vec<String> {
        let mut out = Vec::new();
        for l in arr(&self.ns.ip_json(&["link", "show"])) {
            out.push(format!("link {} {}", l["ifname"], l["address"]));
        }
        for a in arr(&self.ns.ip_json(&["addr", "show"])) {
            for i in arr(&a["addr_info"]) {
                out.push(format!(
                    "addr {} {}/{}",
                    a["ifname"], i["local"], i["prefixlen"]
                ));
            }
        }
        for fam in ["-4", "-6"] {
            for r in arr(&self.ns.ip_json(&[fam, "route", "show", "table", "all"])) {
                out.push(format!(
                    "route {fam} {} via {} dev {} table {}",
                    r["dst"], r["gateway"], r["dev"], r["table"]
                ));
            }
            for r in arr(&self.ns.ip_json(&[fam, "rule", "show"])) {
                out.push(format!("rule {fam} {r}"));
            }
            for nb in arr(&self.ns.ip_json(&[fam, "neigh", "show", "nud", "permanent"])) {
                out.push(format!(
                    "neigh {} {} {}",
                    nb["dst"], nb["dev"], nb["lladdr"]
                ));
            }
        }
        for tool in ["iptables-save", "ip6tables-save"] {
            let o = self.ns.exec(&[tool, "-t", "nat"]);
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                if line.contains("CNI-E") {
                    out.push(format!("{tool} {line}"));
                }
            }
        }
        out.sort();
        out
    }

    fn nat_rules(&self, v6: bool) -> String {
        let o = self.ns.exec(&[
            if v6 {
                "ip6tables-save"
            } else {
                "iptables-save"
            },
            "-t",
            "nat",
        ]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

fn aws_conf(socket: &Path, dir: &TempDir) -> Value {
    json!({
        "cniVersion": "0.4.0", "name": "aws-cni", "type": "aws-cni", "vethPrefix": "eni", "mtu": "9001",
        "ipamdSocket": socket, "ipamdTimeoutMs": 3000,
        "pluginLogFile": dir.path().join("plugin.log"), "pluginLogLevel": "debug",
    })
}

/// The conflist entry as `ipamd install` renders it for an IPv6 cluster (v4 egress) or an IPv4 cluster with
/// ENABLE_V6_EGRESS (v6 egress), with the network name a runtime injects.
fn egress_conf(node_ip: &str, v6: bool, dir: &TempDir, prev: &Value) -> Value {
    let (subnet, dst, data) = if v6 {
        ("fd00::ac:00/118", "::/0", "egress-v6-ipam")
    } else {
        ("169.254.172.0/22", "0.0.0.0/0", "egress-v4-ipam")
    };
    json!({
        "cniVersion": "0.4.0", "name": "aws-cni", "type": "egress-cni", "mtu": "9001", "enabled": "true",
        "randomizeSNAT": "prng", "nodeIP": node_ip,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": dst}],
                 "dataDir": dir.path().join(data)},
        "pluginLogFile": dir.path().join("egress.log"), "pluginLogLevel": "debug",
        "prevResult": prev,
    })
}

#[test]
fn ipv6_pods_reach_each_other_the_node_a_vpc_peer_and_ipv4_through_egress() {
    require_root();
    let dir = TempDir::new();
    let double = IpamdDouble::start(
        dir.path(),
        &[&format!("{POD_PREFIX}a"), &format!("{POD_PREFIX}b")],
    );
    let node = Node::new("v6p");
    let before = node.snapshot();
    let aws = aws_conf(double.socket(), &dir);
    let egress_of = |prev: &Value| egress_conf(&node.ip4(), false, &dir, prev);
    let chain = Chain::new(&node.ns, aws.clone(), &egress_of);
    let (a_ns, b_ns) = (Netns::new("v6pa-"), Netns::new("v6pb-"));
    let (a, b) = (pod(&a_ns, "a"), pod(&b_ns, "b"));
    let (a_aws, a_res) = chain.add(&a);
    let (_, b_res) = chain.add(&b);

    // The result: the pod's IPv6 /128, version 6, on interface 1 (eth0 in the sandbox); egress-cni appends its
    // two interfaces and no address.
    let ip = &a_aws["ips"][0];
    assert_eq!(ip["version"], "6", "{a_aws}");
    assert_eq!(ip["address"], format!("{POD_PREFIX}a/128"));
    assert_eq!(ip["interface"], 1);
    assert_eq!(a_aws["interfaces"][1]["name"], "eth0");
    assert_eq!(a_aws["interfaces"][1]["sandbox"], a_ns.path());
    assert_eq!(
        a_res["ips"], a_aws["ips"],
        "egress-cni adds no address: {a_res}"
    );
    let interfaces = arr(&a_res["interfaces"]);
    assert!(
        interfaces
            .iter()
            .any(|i| i["name"] == "v4if0" && i["sandbox"] == a_ns.path()),
        "{a_res}"
    );

    // The pod side as the anchor builds it.
    let routes = a_ns.ip_json(&["-6", "route", "show"]);
    assert!(
        arr(&routes)
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "fe80::1" && r["dev"] == "eth0"),
        "{routes}"
    );
    let neigh = a_ns.ip_json(&["-6", "neigh", "show", "nud", "permanent"]);
    assert!(arr(&neigh).iter().any(|n| n["dst"] == "fe80::1"), "{neigh}");
    let addrs = a_ns.ip_json(&["-6", "addr", "show", "dev", "eth0"]);
    let tentative = arr(&addrs)
        .iter()
        .flat_map(|a| arr(&a["addr_info"]))
        .any(|i| i["tentative"].as_bool().unwrap_or(false));
    assert!(!tentative, "no address waits for DAD: {addrs}");

    // IPv6: pod to pod, pod to node, pod to a VPC peer; IPv4: pod to an IPv4-only peer through egress (SNAT).
    assert!(
        a_ns.ping6(&format!("{POD_PREFIX}b")),
        "pod a -> pod b over IPv6"
    );
    assert!(
        b_ns.ping6(&format!("{POD_PREFIX}a")),
        "pod b -> pod a over IPv6"
    );
    assert!(a_ns.ping6(&node.ip6()), "pod -> node over IPv6");
    assert!(a_ns.ping6(&node.peer6()), "pod -> VPC peer over IPv6");
    assert!(
        a_ns.ping4(&node.peer4()),
        "pod -> IPv4-only peer through egress-cni"
    );
    assert!(
        b_ns.ping4(&node.peer4()),
        "second pod -> IPv4-only peer through egress-cni"
    );
    assert!(a_ns.ping4(&node.ip4()), "pod -> node's IPv4");
    let nat = node.nat_rules(false);
    assert!(
        nat.contains("CNI-E4-") && nat.contains(&format!("--to-source {}", node.ip4())),
        "{nat}"
    );
    assert!(
        !node
            .p4
            .exec(&["ip", "route", "get", "169.254.172.2"])
            .status
            .success(),
        "the peer cannot route back"
    );

    // CHECK (the runtime calls it with the final result) passes for both plugins.
    let chk = cni_at(
        &bin("aws-cni"),
        &node.ns,
        "CHECK",
        &a,
        &with_prev(&aws, &a_res),
    );
    assert!(chk.success, "aws-cni CHECK: {}", chk.stdout);
    let chk = cni_at(
        &bin("egress-cni"),
        &node.ns,
        "CHECK",
        &a,
        &egress_of(&a_res),
    );
    assert!(chk.success, "egress-cni CHECK: {}", chk.stdout);

    // Drift is named: a pod whose default route is gone fails CHECK with 113.
    assert!(a_ns
        .exec(&["ip", "-6", "route", "del", "default"])
        .status
        .success());
    let chk = cni_at(
        &bin("aws-cni"),
        &node.ns,
        "CHECK",
        &a,
        &with_prev(&aws, &a_res),
    );
    assert_eq!(chk.code(), 113, "{}", chk.stdout);
    assert!(
        chk.stdout.contains("default route via fe80::1"),
        "{}",
        chk.stdout
    );

    chain.del(&a, &a_res);
    chain.del(&b, &b_res);
    assert_eq!(node.snapshot(), before, "DEL leaves nothing on the node");
    assert!(double.held().is_empty(), "{:?}", double.held());
    // A repeated DEL finds nothing and succeeds.
    chain.del(&a, &a_res);
}

#[test]
fn gc_sweeps_ipv6_pods_and_egress_of_vanished_sandboxes() {
    require_root();
    let dir = TempDir::new();
    let double = IpamdDouble::start(
        dir.path(),
        &[&format!("{POD_PREFIX}c"), &format!("{POD_PREFIX}d")],
    );
    let node = Node::new("v6g");
    let before = node.snapshot();
    let aws = aws_conf(double.socket(), &dir);
    let egress_of = |prev: &Value| egress_conf(&node.ip4(), false, &dir, prev);
    let chain = Chain::new(&node.ns, aws.clone(), &egress_of);
    let keep_ns = Netns::new("v6gk-");
    let keep = pod(&keep_ns, "keep");
    let (_, keep_res) = chain.add(&keep);
    let with_keep = node.snapshot();
    {
        let gone_ns = Netns::new("v6gg-");
        let gone = pod(&gone_ns, "gone");
        chain.add(&gone);
        // The sandbox disappears without a DEL (its namespace is dropped here).
    }
    let valid = json!([{"containerID": keep.container_id, "ifname": "eth0"}]);
    let mut gc_aws = aws.clone();
    gc_aws["cniVersion"] = json!("1.1.0");
    gc_aws["cni.dev/valid-attachments"] = valid.clone();
    let mut gc_eg = egress_of(&Value::Null);
    gc_eg.as_object_mut().expect("object").remove("prevResult");
    gc_eg["cniVersion"] = json!("1.1.0");
    gc_eg["cni.dev/valid-attachments"] = valid;
    let out = cni_gc_at(&node.ns, "egress-cni", &gc_eg);
    assert!(out.0, "egress-cni GC: {}", out.1);
    let out = cni_gc_at(&node.ns, "aws-cni", &gc_aws);
    assert!(out.0, "aws-cni GC: {}", out.1);
    assert_eq!(
        node.snapshot(),
        with_keep,
        "GC removed the vanished pod's rules and egress chain, nothing else"
    );
    assert_eq!(double.held(), vec![format!("{POD_PREFIX}c")]);
    assert!(
        keep_ns.ping4(&node.peer4()),
        "the kept pod still has its egress"
    );
    chain.del(&keep, &keep_res);
    assert_eq!(node.snapshot(), before);
}

#[test]
fn ipv4_pod_reaches_an_ipv6_peer_with_v6_egress() {
    require_root();
    let dir = TempDir::new();
    let double = IpamdDouble::start(dir.path(), &["10.77.0.5"]);
    let node = Node::new("v6e");
    let before = node.snapshot();
    let aws = aws_conf(double.socket(), &dir);
    let egress_of = |prev: &Value| egress_conf(&node.ip6(), true, &dir, prev);
    let chain = Chain::new(&node.ns, aws.clone(), &egress_of);
    let p_ns = Netns::new("v6ep-");
    let p = pod(&p_ns, "p");
    let (aws_res, res) = chain.add(&p);
    assert_eq!(aws_res["ips"][0]["version"], "4", "{aws_res}");
    let names: Vec<String> = arr(&res["interfaces"])
        .iter()
        .filter_map(|i| i["name"].as_str().map(str::to_string))
        .collect();
    assert!(names.iter().any(|n| n == "v6if0"), "{res}");
    assert!(
        p_ns.ping6(&node.peer6()),
        "IPv4 pod -> IPv6 peer through v6if0 and SNAT66"
    );
    assert!(p_ns.ping4(&node.ip4()), "its IPv4 still works");
    let nat = node.nat_rules(true);
    assert!(
        nat.contains("CNI-E6-") && nat.contains(&format!("--to-source {}", node.ip6())),
        "{nat}"
    );
    // The node rejects new forwarded connections to the egress range (the anchor's rule, once).
    let filter = node.ns.exec(&["ip6tables-save", "-t", "filter"]);
    let filter = String::from_utf8_lossy(&filter.stdout);
    let rejects: Vec<&str> = filter
        .lines()
        .filter(|l| l.contains("Block Node Local Pod access via IPv6"))
        .collect();
    assert!(
        rejects.len() == 1
            && rejects[0].starts_with("-A FORWARD -d fd00::ac:0/118")
            && rejects[0].contains("--ctstate NEW")
            && rejects[0].contains("-j REJECT"),
        "{filter}"
    );
    let no_route = node.p6.exec(&["ip", "-6", "route", "get", "fd00::ac:2"]);
    assert!(
        !no_route.status.success(),
        "the peer cannot route back to the egress range"
    );
    // As the anchor: the pod's own interface carries no IPv6.
    let disabled = p_ns.exec(&["sysctl", "-n", "net.ipv6.conf.eth0.disable_ipv6"]);
    assert_eq!(String::from_utf8_lossy(&disabled.stdout).trim(), "1");
    chain.del(&p, &res);
    assert_eq!(node.snapshot(), before, "DEL leaves nothing on the node");
}
