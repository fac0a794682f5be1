//! A pod on a secondary ENI calls a ClusterIP whose backend is elsewhere in the VPC (the anchor's #3563).
//!
//! ```text
//!   pod ns ── veth ── node ns (ipamd, kube-proxy's DNAT) ── eth0 / eth1 ── fabric ns (bridge "vpc", router) ── backend ns
//! ```
//!
//! kube-proxy DNATs the ClusterIP to the backend's VPC address. If our connmark chain judges the packet before
//! that DNAT, it sees a non-VPC destination (the ClusterIP), marks the connection, and rule 1024 sends it out of
//! eth0 with the pod's secondary-ENI address as source, which EC2's source/destination check drops. The fabric
//! here plays that check: a frame from eth0's MAC with the pod's address as source is dropped (and counted).
//!
//! The matrix: the nftables backend with kube-proxy in nftables mode and in iptables mode, each iptables backend
//! with kube-proxy in iptables mode in the same flavour, all answered through eth1; and the old layout
//! (iptables-nft) with kube-proxy in nftables mode installed after ipamd (as a kube-proxy restart does), which
//! misroutes: the reproduction of the bug the nftables backend fixes.

use std::process::{Child, Command, Stdio};

use integration_tests::{add_two_pods, arr, result_ip, Ipamd, Netns, TempDir};

const CLUSTER_IP: &str = "172.20.0.10";

/// A process in a namespace, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone, Copy, Debug)]
enum KubeProxy {
    Nftables,
    Iptables(&'static str),
}

fn run(ns: &Netns, cmd: &[&str]) {
    let out = ns.exec(cmd);
    assert!(out.status.success(), "{cmd:?} in {}: {out:?}", ns.name);
}

fn nft(ns: &Netns, script: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(script.as_bytes()).expect("script");
    }
    let out = child.wait_with_output().expect("nft");
    assert!(out.status.success(), "nft -f:\n{script}\n{out:?}");
}

/// kube-proxy's ClusterIP service to `backend:8080`, written as its nftables or iptables mode writes it.
fn install_kube_proxy(node: &Netns, mode: KubeProxy, backend: &str) {
    match mode {
        KubeProxy::Nftables => nft(
            node,
            &format!(
                "table ip kube-proxy {{
  map service-ips {{
    type ipv4_addr . inet_proto . inet_service : verdict
    elements = {{ {CLUSTER_IP} . tcp . 80 : goto service-ABCD-default/web/tcp/http }}
  }}
  chain nat-prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    jump services
  }}
  chain nat-output {{
    type nat hook output priority -100; policy accept;
    jump services
  }}
  chain services {{
    ip daddr . meta l4proto . th dport vmap @service-ips
  }}
  chain service-ABCD-default/web/tcp/http {{
    ip daddr {CLUSTER_IP} tcp dport 80 jump endpoint-EFGH-default/web/tcp/http__{backend}/8080
  }}
  chain endpoint-EFGH-default/web/tcp/http__{backend}/8080 {{
    meta l4proto tcp dnat to {backend}:8080
  }}
}}
"
            ),
        ),
        KubeProxy::Iptables(bin) => {
            let svc = "KUBE-SVC-ABCDEFGHIJKLMNOP";
            let sep = "KUBE-SEP-QRSTUVWXYZ012345";
            for args in [
                vec!["-t", "nat", "-N", "KUBE-SERVICES"],
                vec!["-t", "nat", "-N", svc],
                vec!["-t", "nat", "-N", sep],
                vec![
                    "-t",
                    "nat",
                    "-I",
                    "PREROUTING",
                    "-m",
                    "comment",
                    "--comment",
                    "kubernetes service portals",
                    "-j",
                    "KUBE-SERVICES",
                ],
                vec![
                    "-t",
                    "nat",
                    "-A",
                    "KUBE-SERVICES",
                    "-d",
                    "172.20.0.10/32",
                    "-p",
                    "tcp",
                    "-m",
                    "tcp",
                    "--dport",
                    "80",
                    "-j",
                    svc,
                ],
                vec!["-t", "nat", "-A", svc, "-j", sep],
            ] {
                let mut cmd = vec![bin, "-w", "5"];
                cmd.extend(args);
                run(node, &cmd);
            }
            let to = format!("{backend}:8080");
            run(
                node,
                &[
                    bin,
                    "-w",
                    "5",
                    "-t",
                    "nat",
                    "-A",
                    sep,
                    "-p",
                    "tcp",
                    "-m",
                    "tcp",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &to,
                ],
            );
        }
    }
}

fn counter(ns: &Netns, dev: &str, dir: &str) -> u64 {
    let v = ns.ip_json(&["-s", "link", "show", "dev", dev]);
    v[0]["stats64"][dir]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no {dir} counter for {dev}: {v}"))
}

/// Packets the fabric's source/destination check dropped.
fn dropped(fabric: &Netns) -> u64 {
    let out = fabric.exec(&["nft", "-j", "list", "table", "bridge", "srccheck"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nft json");
    arr(&v["nftables"])
        .iter()
        .filter_map(|o| o["rule"]["expr"].as_array().cloned())
        .flatten()
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum()
}

struct Outcome {
    answered: bool,
    eth1_tx: u64,
    eth0_tx: u64,
    dropped: u64,
}

/// A node with `backend`, a pod on its secondary ENI, kube-proxy in `mode`; the pod calls the ClusterIP.
fn scenario(backend: &str, mode: KubeProxy) -> Outcome {
    let fabric = Netns::new("act-fab-");
    let fabric_path = fabric.path();
    let ipamd = Ipamd::start_with_args(
        "t3.nano",
        &[("AWS_CNI_SNAT_BACKEND", backend)],
        &["--sim-fabric-netns", &fabric_path],
    );
    let node = &ipamd.node;
    let conf = ipamd.conf("1.0.0");

    // Two pods: the second lands on the secondary ENI (eth1).
    let [_first, (ns2, _, out2)] = add_two_pods(&ipamd, &conf, "act-svc-");
    let ip2 = result_ip(&out2.json);

    // The backend: a namespace on the VPC bridge, at the top of the subnet, routed through the VPC router.
    let bridge = arr(&fabric.ip_json(&["-4", "addr", "show", "dev", "vpc"]));
    let info = arr(&bridge[0]["addr_info"]);
    let router = info[0]["local"].as_str().expect("router").to_string();
    let prefix = info[0]["prefixlen"].as_u64().expect("prefix") as u32;
    let router_u: u32 = router.parse::<std::net::Ipv4Addr>().expect("ip").into();
    let broadcast = router_u - 1 + (1u32 << (32 - prefix)) - 1;
    let backend_ip = std::net::Ipv4Addr::from(broadcast - 5).to_string();
    let be = Netns::new("act-be-");
    let peer = integration_tests::unique("be");
    let peer = &peer[..peer.len().min(15)];
    run(
        &fabric,
        &[
            "ip", "link", "add", peer, "type", "veth", "peer", "name", "be0", "netns", &be.name,
        ],
    );
    run(&fabric, &["ip", "link", "set", peer, "master", "vpc", "up"]);
    run(&fabric, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    run(&be, &["ip", "link", "set", "lo", "up"]);
    run(&be, &["ip", "link", "set", "be0", "up"]);
    run(
        &be,
        &[
            "ip",
            "addr",
            "add",
            &format!("{backend_ip}/32"),
            "dev",
            "be0",
        ],
    );
    run(&be, &["ip", "route", "add", &router, "dev", "be0"]);
    run(&be, &["ip", "route", "add", "default", "via", &router]);
    let www = TempDir::new();
    std::fs::write(www.path().join("index.html"), "hello-from-backend").expect("page");
    let _server = Server(
        Command::new("ip")
            .args(["netns", "exec", &be.name, "busybox", "httpd", "-f", "-p"])
            .arg(format!("{backend_ip}:8080"))
            .arg("-h")
            .arg(www.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("httpd"),
    );

    // EC2's source/destination check: the pod's secondary-ENI address may not leave through the primary ENI.
    let eth0_mac = node.ip_json(&["link", "show", "dev", "eth0"])[0]["address"]
        .as_str()
        .expect("eth0 mac")
        .to_string();
    nft(
        &fabric,
        &format!(
            "table bridge srccheck {{
  chain pre {{
    type filter hook prerouting priority -200; policy accept;
    ether saddr {eth0_mac} ip saddr {ip2} counter drop
  }}
}}
"
        ),
    );

    install_kube_proxy(node, mode, &backend_ip);
    // On a real node kube-proxy is there first and aws-node starts (or restarts) after it. A netfilter hook
    // registered later runs first among equal priorities, so recreate our rules now, as a restarted ipamd would:
    // drop the table holding them and let a reconcile (SIGUSR1) write them again.
    let ours = match backend {
        "nftables" => Some(("aws-cni", vec!["nft", "list", "table", "ip", "aws-cni"])),
        "iptables-nft" => Some(("nat", vec!["iptables-nft", "-w", "5", "-t", "nat", "-S"])),
        _ => None,
    };
    let shares_table = matches!(mode, KubeProxy::Iptables(_)) && backend != "nftables";
    if let (Some((table, probe)), false) = (ours, shares_table) {
        run(node, &["nft", "delete", "table", "ip", table]);
        let pid = ipamd.pid().expect("ipamd runs").to_string();
        assert!(integration_tests::sh("kill", &["-USR1", &pid])
            .status
            .success());
        assert!(
            integration_tests::eventually(std::time::Duration::from_secs(10), || {
                let out = node.exec(&probe);
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains("mark")
            }),
            "ipamd did not re-apply its rules:\n{}",
            ipamd.log()
        );
    }

    // The backend is up (directly, from the fabric) before the pod tries.
    let url = format!("http://{backend_ip}:8080/");
    assert!(
        integration_tests::eventually(std::time::Duration::from_secs(5), || {
            fabric
                .exec(&["curl", "-s", "--max-time", "1", &url])
                .status
                .success()
        }),
        "backend never answered"
    );

    let eth0 = counter(node, "eth0", "tx");
    let eth1 = counter(node, "eth1", "tx");
    let reply = ns2.exec(&[
        "curl",
        "-s",
        "--max-time",
        "3",
        &format!("http://{CLUSTER_IP}/"),
    ]);
    let outcome = Outcome {
        answered: String::from_utf8_lossy(&reply.stdout) == "hello-from-backend",
        eth1_tx: counter(node, "eth1", "tx") - eth1,
        eth0_tx: counter(node, "eth0", "tx") - eth0,
        dropped: dropped(&fabric),
    };
    drop(ipamd);
    outcome
}

fn assert_answered_through_eth1(backend: &str, mode: KubeProxy) {
    let o = scenario(backend, mode);
    assert!(
        o.answered,
        "{backend} with kube-proxy {mode:?}: no answer (dropped by the source check: {}, eth0 tx {}, eth1 tx {})",
        o.dropped, o.eth0_tx, o.eth1_tx
    );
    assert_eq!(o.dropped, 0, "{backend} / {mode:?}: nothing misrouted");
    assert!(
        o.eth1_tx >= 3,
        "{backend} / {mode:?}: the connection left through eth1"
    );
}

#[test]
fn nftables_backend_with_kube_proxy_in_nftables_mode_keeps_the_service_on_the_pods_eni() {
    assert_answered_through_eth1("nftables", KubeProxy::Nftables);
}

#[test]
fn nftables_backend_with_kube_proxy_in_iptables_mode_keeps_the_service_on_the_pods_eni() {
    assert_answered_through_eth1("nftables", KubeProxy::Iptables("iptables-nft"));
}

#[test]
fn iptables_nft_backend_with_kube_proxy_in_iptables_mode_keeps_the_service_on_the_pods_eni() {
    assert_answered_through_eth1("iptables-nft", KubeProxy::Iptables("iptables-nft"));
}

#[test]
fn iptables_legacy_backend_with_kube_proxy_in_iptables_legacy_mode_keeps_the_service_on_the_pods_eni(
) {
    assert_answered_through_eth1("iptables-legacy", KubeProxy::Iptables("iptables-legacy"));
}

/// The bug itself: the iptables layout's connmark runs before kube-proxy's nftables DNAT (same priority,
/// registered first), marks the ClusterIP connection, and it leaves through eth0 where the source check drops it.
#[test]
fn the_iptables_layout_misroutes_a_service_call_when_kube_proxy_runs_in_nftables_mode() {
    let o = scenario("iptables-nft", KubeProxy::Nftables);
    assert!(!o.answered, "the old layout was expected to misroute");
    assert!(o.dropped >= 1, "dropped by the source/destination check");
}
