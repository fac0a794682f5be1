//! An IPv6 node end to end (issue 20): the real `ipamd run --backend sim` in IPv6 mode, the real `aws-cni` and
//! `egress-cni` chained as `10-aws.conflist` chains them, on the simulator's fabric with IPv6 (ec2-sim's
//! `fabric` module: the VPC router on a bridge, the /80 routed to the primary ENI) and two peer "instances" of
//! the VPC in namespaces the test owns.
//!
//! ```text
//!   pods (IPv6 /128 of the /80,       node netns (ipamd; all/forwarding=1     fabric netns (test-owned, the VPC
//!   v4if0 169.254.172.x for egress)   as the installer sets it)                router, --sim-fabric-netns)
//!   eth0 ── eniXXX ──┐                eth0 10.0.x.y/20, 2600:..:c800::1xxx ── vpc bridge: 10.0.0.1/20,
//!   v4if0 ─ vethXXX ─┘                     default via 10.0.0.1 / c800::1           2600:..:c800::1/64,
//!                                                                                   10.0.255.1/24, c8ff::1/64,
//!                                                                                   <the /80> via <ENI IPv6>
//!     peer6 (VPC peer): 2600:1f14:ab:c8ff::10/64, default via c8ff::1  ─┤ on the bridge
//!     peer4 (IPv4 only, no IPv6): 10.0.255.10/24, default via 10.0.255.1 ─┘
//! ```
//!
//! Pods reach each other, the node and the VPC peer over IPv6 (and the peer reaches them: the fabric routes the
//! /80 to the ENI), and the IPv4-only peer through egress-cni: its replies come back only through the node's
//! SNAT to its primary IPv4 (the fabric has no route to 169.254.172.0/22). DEL, and GC of pods whose sandbox
//! vanished, leave the node exactly as before; an ipamd killed and started again keeps the pods (their
//! addresses, and the fabric's route to the /80) and gives a new pod another address.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use integration_tests::{
    arr, bin, cni_at, cni_gc_at, eventually, pod, require_root, with_prev, Chain, Ipamd, Netns,
    PodSpec, IPV6_MODE,
};
use serde_json::{json, Value};

/// The VPC peers' addresses, in the fabric's peer subnets (`ec2_sim::fabric::PEER_SUBNET` and the last /64 of
/// the simulator's VPC /56 2600:1f14:ab:c800::/56).
const PEER6: &str = "2600:1f14:ab:c8ff::10";
const PEER6_ROUTER: &str = "2600:1f14:ab:c8ff::1";
const PEER4: &str = "10.0.255.10";
const PEER4_ROUTER: &str = "10.0.255.1";

fn ok(o: Output) {
    assert!(o.status.success(), "{o:?}");
}

/// ipamd in IPv6 mode on a simulated m5.large whose fabric lives in a namespace the test owns (so it and the
/// peers attached to it outlive a restart of ipamd, as a VPC does), with its two peers. The daemon is dropped
/// (stopped) first, then the fabric and the peers.
struct V6Node {
    ipamd: Ipamd,
    fabric: Netns,
    peer6: Netns,
    peer4: Netns,
}

impl V6Node {
    fn new(tag: &str) -> V6Node {
        require_root();
        let node = Netns::new(&format!("{tag}n-"));
        // What `ipamd install` sets with ENABLE_IPv6 (the anchor's init container): forwarding on. No DAD on the
        // test's links, so the baseline snapshot is final at once.
        ok(node.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]));
        ok(node.exec(&["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"]));
        let fabric = Netns::new(&format!("{tag}f-"));
        let ipamd = Ipamd::start_in(
            node,
            integration_tests::TempDir::new(),
            "m5.large",
            IPV6_MODE,
            &["--sim-fabric-netns", &fabric.path()],
        );
        let me = V6Node {
            ipamd,
            fabric,
            peer6: Netns::new(&format!("{tag}6-")),
            peer4: Netns::new(&format!("{tag}4-")),
        };
        me.attach_peers();
        me
    }

    fn node(&self) -> &Netns {
        &self.ipamd.node
    }

    /// Two other instances of the VPC on the fabric's bridge: one dual-stack in the IPv6 peer subnet, one
    /// IPv4-only.
    fn attach_peers(&self) {
        ok(self
            .peer6
            .exec(&["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"]));
        ok(self
            .peer4
            .exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]));
        ok(self
            .peer4
            .exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]));
        for (end, peer) in [("peer6", &self.peer6), ("peer4", &self.peer4)] {
            ok(self.fabric.exec(&[
                "ip", "link", "add", end, "type", "veth", "peer", "name", "eth0", "netns",
                &peer.name,
            ]));
            ok(self
                .fabric
                .exec(&["ip", "link", "set", end, "master", "vpc", "up"]));
            ok(peer.exec(&["ip", "link", "set", "lo", "up"]));
            ok(peer.exec(&["ip", "link", "set", "eth0", "up"]));
        }
        ok(self.peer6.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{PEER6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]));
        ok(self
            .peer6
            .exec(&["ip", "-6", "route", "add", "default", "via", PEER6_ROUTER]));
        ok(self
            .peer4
            .exec(&["ip", "addr", "add", &format!("{PEER4}/24"), "dev", "eth0"]));
        ok(self
            .peer4
            .exec(&["ip", "route", "add", "default", "via", PEER4_ROUTER]));
    }

    fn ip6(&self) -> String {
        self.ipamd.primary_eni()["ipv6_addresses"][0]
            .as_str()
            .expect("the ENI's IPv6")
            .to_string()
    }

    fn prefix(&self) -> String {
        let p = arr(&self.ipamd.primary_eni()["ipv6_prefixes"]);
        assert_eq!(p.len(), 1, "one /80: {p:?}");
        p[0].as_str().expect("prefix").to_string()
    }

    /// aws-cni then egress-cni, as the runtime runs the conflist on this node (failures show ipamd's log).
    fn with_chain<T>(&self, f: impl FnOnce(&Chain) -> T) -> T {
        let egress_of = |prev: &Value| self.egress_conf(prev);
        let log = || self.ipamd.log();
        f(&Chain {
            node: self.node(),
            aws: self.ipamd.conf("1.0.0"),
            egress_of: &egress_of,
            context: &log,
        })
    }

    /// egress-cni's entry as `ipamd install` renders it on an IPv6 node (SNAT to the node's primary IPv4), with
    /// the data directory in the test's own directory.
    fn egress_conf(&self, prev: &Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0", "name": "aws-cni", "type": "egress-cni", "mtu": "9001", "enabled": "true",
            "randomizeSNAT": "prng", "nodeIP": self.ipamd.node_ip(),
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "169.254.172.0/22"}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": self.egress_dir()},
            "pluginLogFile": self.ipamd.dir.path().join("egress.log"), "pluginLogLevel": "debug",
        });
        if !prev.is_null() {
            c["prevResult"] = prev.clone();
        }
        c
    }

    fn egress_dir(&self) -> PathBuf {
        self.ipamd.dir.path().join("egress-v4-ipam")
    }

    /// Everything pod plumbing, egress and ipamd could leave on the node, both families, comparable.
    fn snapshot(&self) -> Vec<String> {
        let ns = self.node();
        let mut out = Vec::new();
        for l in arr(&ns.ip_json(&["link", "show"])) {
            out.push(format!("link {} {}", l["ifname"], l["address"]));
        }
        for a in arr(&ns.ip_json(&["addr", "show"])) {
            for i in arr(&a["addr_info"]) {
                out.push(format!(
                    "addr {} {}/{}",
                    a["ifname"], i["local"], i["prefixlen"]
                ));
            }
        }
        for fam in ["-4", "-6"] {
            for r in arr(&ns.ip_json(&[fam, "route", "show", "table", "all"])) {
                out.push(format!(
                    "route {fam} {} via {} dev {} table {}",
                    r["dst"], r["gateway"], r["dev"], r["table"]
                ));
            }
            for r in arr(&ns.ip_json(&[fam, "rule", "show"])) {
                out.push(format!("rule {fam} {r}"));
            }
            for nb in arr(&ns.ip_json(&[fam, "neigh", "show", "nud", "permanent"])) {
                out.push(format!(
                    "neigh {} {} {}",
                    nb["dst"], nb["dev"], nb["lladdr"]
                ));
            }
        }
        for tool in ["iptables-save", "ip6tables-save"] {
            let o = ns.exec(&[tool, "-t", "nat"]);
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                if line.contains("CNI-E") {
                    out.push(format!("{tool} {line}"));
                }
            }
        }
        // host-local's leases of the egress range (one file per address).
        if let Ok(dirs) = std::fs::read_dir(self.egress_dir()) {
            for d in dirs.flatten() {
                if let Ok(files) = std::fs::read_dir(d.path()) {
                    for f in files.flatten() {
                        let name = f.file_name().to_string_lossy().into_owned();
                        if name.starts_with("169.254.") {
                            out.push(format!("lease {name}"));
                        }
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// The snapshot once two in a row agree (link-local addresses and their routes settle after a link is up).
    fn settled(&self) -> Vec<String> {
        let mut last = self.snapshot();
        assert!(
            eventually(Duration::from_secs(10), || {
                std::thread::sleep(Duration::from_millis(200));
                let now = self.snapshot();
                let same = now == last;
                last = now;
                same
            }),
            "the node settles"
        );
        last
    }

    /// The fabric's IPv6 routes through the bridge with a gateway (EC2's routing of prefixes to ENIs).
    fn fabric_prefix_routes(&self) -> Vec<String> {
        arr(&self.fabric.ip_json(&["-6", "route", "show"]))
            .iter()
            .filter(|r| r["gateway"].is_string() && r["dev"] == "vpc")
            .map(|r| {
                format!(
                    "{} via {}",
                    r["dst"].as_str().unwrap_or(""),
                    r["gateway"].as_str().unwrap_or("")
                )
            })
            .collect()
    }
}

/// ADD through the chain; returns (pod IPv6, final result).
fn add_chain(n: &V6Node, pod: &PodSpec) -> (String, Value) {
    let (aws, result) = n.with_chain(|c| c.add(pod));
    let ip = aws["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.strip_suffix("/128"))
        .unwrap_or_else(|| panic!("an IPv6 /128: {aws}"))
        .to_string();
    (ip, result)
}

fn del_chain(n: &V6Node, pod: &PodSpec, result: &Value) {
    n.with_chain(|c| c.del(pod, result));
}

/// The pod's egress IPv4 (on `v4if0`, egress-cni's interface).
fn egress_address(pod: &Netns) -> String {
    arr(&pod.ip_json(&["-4", "addr", "show", "dev", "v4if0"]))
        .iter()
        .flat_map(|a| arr(&a["addr_info"]))
        .find_map(|i| i["local"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no address on v4if0 in {}", pod.name))
}

fn in_prefix(ip: &str, prefix: &str) -> bool {
    let ip: std::net::Ipv6Addr = ip.parse().expect("ip");
    let (net, len) = prefix.split_once('/').expect("cidr");
    let net: std::net::Ipv6Addr = net.parse().expect("net");
    let len: u32 = len.parse().expect("len");
    let mask = u128::MAX << (128 - len);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// GC of `plugin` on the node, which must succeed.
fn gc(n: &V6Node, plugin: &str, conf: &Value) {
    let (ok, out) = cni_gc_at(n.node(), plugin, conf);
    assert!(ok, "{plugin} GC: {out}\n{}", n.ipamd.log());
}

#[test]
fn an_ipv6_node_serves_pods_over_ipv6_with_ipv4_egress_and_keeps_them_across_a_crash() {
    let mut n = V6Node::new("v6n");
    let prefix = n.prefix();
    assert!(prefix.ends_with("/80"), "{prefix}");
    // The fabric routes the node's /80 to its primary ENI, as EC2 does a delegated prefix.
    let routes = n.fabric_prefix_routes();
    assert_eq!(
        routes,
        vec![format!("{prefix} via {}", n.ip6())],
        "{routes:?}"
    );
    let before = n.settled();

    let (a_ns, b_ns) = (Netns::new("v6na-"), Netns::new("v6nb-"));
    let (a, b) = (pod(&a_ns, "web-a"), pod(&b_ns, "web-b"));
    let (a_ip, a_res) = add_chain(&n, &a);
    let (b_ip, b_res) = add_chain(&n, &b);
    assert!(
        in_prefix(&a_ip, &prefix) && in_prefix(&b_ip, &prefix),
        "{a_ip} {b_ip} {prefix}"
    );
    assert_ne!(a_ip, b_ip);
    assert!(
        arr(&a_res["interfaces"])
            .iter()
            .any(|i| i["name"] == "v4if0"),
        "egress-cni gave the pod its IPv4 interface: {a_res}"
    );

    // IPv6: pod to pod, pod to node, pod to a VPC peer and back (the peer starts it too).
    assert!(a_ns.ping6(&b_ip), "pod a -> pod b over IPv6");
    assert!(b_ns.ping6(&a_ip), "pod b -> pod a over IPv6");
    assert!(a_ns.ping6(&n.ip6()), "pod -> node over IPv6");
    assert!(a_ns.ping6(PEER6), "pod -> VPC peer over IPv6");
    assert!(
        n.peer6.ping6(&b_ip),
        "VPC peer -> pod over IPv6 (the /80 routed to the ENI)"
    );
    // IPv4: only through egress, SNATed to the node's primary IPv4; the VPC cannot route the egress range back.
    assert!(
        a_ns.ping4(PEER4),
        "pod -> IPv4-only peer through egress-cni"
    );
    assert!(
        b_ns.ping4(PEER4),
        "second pod -> IPv4-only peer through egress-cni"
    );
    let nat = String::from_utf8_lossy(&n.node().exec(&["iptables-save", "-t", "nat"]).stdout)
        .into_owned();
    assert!(
        nat.contains("CNI-E4-") && nat.contains(&format!("--to-source {}", n.ipamd.node_ip())),
        "{nat}"
    );
    // The egress range is the node's own: another instance of the VPC that routes it to the node cannot open a
    // connection to a pod's egress address (the anchor's FORWARD REJECT of NEW connections to 169.254.172.0/22),
    // while the pods' own egress (established connections) still works.
    let egress_a = egress_address(&a_ns);
    ok(n.peer4.exec(&[
        "ip",
        "route",
        "add",
        "169.254.172.0/22",
        "via",
        &n.ipamd.node_ip(),
        "dev",
        "eth0",
        "onlink",
    ]));
    assert!(
        !n.peer4.ping4(&egress_a),
        "a VPC peer reached pod a's egress address {egress_a} through the node"
    );
    let filter = String::from_utf8_lossy(&n.node().exec(&["iptables-save", "-t", "filter"]).stdout)
        .into_owned();
    let rejects: Vec<&str> = filter
        .lines()
        .filter(|l| l.contains("Block Node Local Pod access"))
        .collect();
    assert!(
        rejects.len() == 1
            && rejects[0].starts_with("-A FORWARD -d 169.254.172.0/22")
            && rejects[0].contains("--ctstate NEW")
            && rejects[0].contains("Block Node Local Pod access via IPv4")
            && rejects[0].ends_with("-j REJECT --reject-with icmp-port-unreachable"),
        "one rule for both pods: {filter}"
    );
    assert!(a_ns.ping4(PEER4), "the pod's own egress is not blocked");
    assert!(
        !n.fabric
            .exec(&["ip", "route", "get", "169.254.172.2"])
            .status
            .success(),
        "the VPC has no route to the egress range: replies came back through SNAT"
    );

    // ipamd crashes and starts again: the pods keep their addresses and their traffic, EC2 is not asked for a
    // second /80, and a new pod gets another address.
    n.ipamd.crash();
    n.ipamd.restart();
    assert_eq!(n.prefix(), prefix);
    assert_eq!(
        n.ipamd.ec2_calls("AssignIpv6Addresses"),
        1,
        "{}",
        n.ipamd.log()
    );
    assert_eq!(n.fabric_prefix_routes(), routes);
    let cp = n.ipamd.checkpoint();
    assert!(
        cp.contains(&format!("\"ipv6\":\"{a_ip}\""))
            && cp.contains(&format!("\"ipv6\":\"{b_ip}\"")),
        "{cp}"
    );
    let c_ns = Netns::new("v6nc-");
    let c = pod(&c_ns, "web-c");
    let (c_ip, c_res) = add_chain(&n, &c);
    assert!(
        c_ip != a_ip && c_ip != b_ip && in_prefix(&c_ip, &prefix),
        "{c_ip}"
    );
    assert!(c_ns.ping6(&a_ip), "new pod -> old pod after the restart");
    assert!(
        n.peer6.ping6(&a_ip),
        "VPC peer -> old pod after the restart"
    );
    assert!(c_ns.ping4(PEER4), "new pod's egress after the restart");

    // CHECK passes for both plugins (the runtime calls it with the final result).
    let chk = cni_at(
        &bin("aws-cni"),
        n.node(),
        "CHECK",
        &a,
        &with_prev(&n.ipamd.conf("1.0.0"), &a_res),
    );
    assert!(chk.success, "aws-cni CHECK: {}", chk.stdout);
    let chk = cni_at(
        &bin("egress-cni"),
        n.node(),
        "CHECK",
        &a,
        &n.egress_conf(&a_res),
    );
    assert!(chk.success, "egress-cni CHECK: {}", chk.stdout);

    for (p, res) in [(&a, &a_res), (&b, &b_res), (&c, &c_res)] {
        del_chain(&n, p, res);
    }
    let after = n.settled();
    assert_eq!(after, before, "DEL leaves nothing on the node");
    let cp = n.ipamd.checkpoint();
    for ip in [&a_ip, &b_ip, &c_ip] {
        assert!(!cp.contains(ip.as_str()), "{ip} still held: {cp}");
    }
}

#[test]
fn gc_of_vanished_ipv6_pods_leaves_the_node_as_it_was() {
    let n = V6Node::new("v6g");
    let before = n.settled();
    let keep_ns = Netns::new("v6gk-");
    let keep = pod(&keep_ns, "keep");
    let (keep_ip, keep_res) = add_chain(&n, &keep);
    let with_keep = n.settled();
    let gone_ip = {
        let gone_ns = Netns::new("v6gg-");
        let gone = pod(&gone_ns, "gone");
        add_chain(&n, &gone).0
        // The sandbox disappears without a DEL (its namespace is dropped here).
    };
    assert!(n.ipamd.checkpoint().contains(&gone_ip));
    let valid = json!([{"containerID": keep.container_id, "ifname": "eth0"}]);
    let mut gc_aws = n.ipamd.conf("1.0.0");
    gc_aws["cniVersion"] = json!("1.1.0");
    gc_aws["cni.dev/valid-attachments"] = valid.clone();
    let mut gc_eg = n.egress_conf(&Value::Null);
    gc_eg["cniVersion"] = json!("1.1.0");
    gc_eg["cni.dev/valid-attachments"] = valid;
    gc(&n, "egress-cni", &gc_eg);
    gc(&n, "aws-cni", &gc_aws);
    // GC's releases reach the checkpoint in ipamd's next group commit.
    let mut cp = String::new();
    eventually(Duration::from_secs(5), || {
        cp = n.ipamd.checkpoint();
        !cp.contains(&gone_ip)
    });
    assert!(
        !cp.contains(&gone_ip) && cp.contains(&keep_ip),
        "ipamd released the vanished pod only: {cp}"
    );
    assert_eq!(
        n.settled(),
        with_keep,
        "GC removed the vanished pod's plumbing and egress, nothing else"
    );
    assert!(keep_ns.ping6(PEER6), "the kept pod still reaches the VPC");
    assert!(keep_ns.ping4(PEER4), "the kept pod still has its egress");
    del_chain(&n, &keep, &keep_res);
    assert_eq!(n.settled(), before, "DEL leaves nothing on the node");
}

#[test]
fn the_demo_with_ipv6_shows_ipv6_pods_with_working_ipv4_egress() {
    require_root();
    let child = Command::new(bin("ipamd"))
        .args(["demo", "--ipv6", "--pods", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ipamd demo");
    let tag = format!("awscni-demo-{}", child.id());
    let out = child.wait_with_output().expect("demo output");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = text
        .lines()
        .find_map(|l| l.strip_prefix("ipv6: 3 pod(s) in "))
        .and_then(|l| l.split(',').next())
        .unwrap_or_else(|| panic!("no summary line: {text}"))
        .to_string();
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("demo-pod-") && l.contains("169.254.17"))
        .collect();
    assert_eq!(rows.len(), 3, "{text}");
    for r in rows {
        let ip = r.split_whitespace().nth(1).expect("ip column");
        assert!(in_prefix(ip, &prefix), "{ip} outside {prefix}: {text}");
    }
    let egress_ok = text
        .lines()
        .filter(|l| l.contains("-> internet (egress) 198.51.100.1: ok"))
        .count();
    assert_eq!(
        egress_ok, 3,
        "every pod reached IPv4 through egress: {text}"
    );
    assert!(
        text.contains("0 failed; 0 DEL errors; cleaned up"),
        "{text}"
    );
    let left = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let left = String::from_utf8_lossy(&left.stdout).into_owned();
    assert!(
        !left.lines().any(|l| l.starts_with(&tag)),
        "the demo left namespaces: {left}"
    );
}
