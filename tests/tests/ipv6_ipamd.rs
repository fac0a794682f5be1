//! IPv6 mode through the real daemon (`ipamd run --backend sim` with `ENABLE_IPv6=true`, `ENABLE_IPv4=false`,
//! `ENABLE_PREFIX_DELEGATION=true`), asked over its gRPC socket as the plugin asks it: at startup ipamd takes one
//! /80 on the primary ENI (`AssignIpv6Addresses`, once), each ADD gets one address of it in `IPv6Addr` (the IPv4
//! fields empty, as the anchor answers), the checkpoint holds `ipv6` entries, a restart keeps them (and takes no
//! second prefix), a DEL frees the address; and the combinations the anchor refuses stop startup naming the
//! variables.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use aws_cni_proto::{
    AddNetworkRequest, Allocation, CniBackendClient, DelNetworkReply, DelNetworkRequest,
    IpamdControlClient, ListAllocationsRequest,
};
use integration_tests::{arr, require_root, Ipamd, Netns, TempDir, IPV6_MODE};

/// ipamd in IPv6 mode on a simulated m5.large (restartable on the same node and files).
fn start_v6() -> Ipamd {
    Ipamd::start("m5.large", IPV6_MODE)
}

/// The primary ENI's IPv6 prefixes, as the simulated EC2 holds them.
fn prefixes(n: &Ipamd) -> Vec<String> {
    arr(&n.primary_eni()["ipv6_prefixes"])
        .iter()
        .filter_map(|p| p.as_str().map(String::from))
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn backend(sock: &Path) -> CniBackendClient<tonic::transport::Channel> {
    let ch = aws_cni_proto::unix_channel(sock, Duration::from_secs(5))
        .await
        .expect("connect");
    CniBackendClient::new(ch)
}

fn add_req(container: &str, pod: &str) -> AddNetworkRequest {
    AddNetworkRequest {
        k8s_pod_name: pod.into(),
        k8s_pod_namespace: "default".into(),
        k8s_pod_infra_container_id: container.into(),
        container_id: container.into(),
        if_name: "eth0".into(),
        network_name: "aws-cni".into(),
        netns: "/var/run/netns/none".into(),
        ..Default::default()
    }
}

fn del_req(container: &str, pod: &str) -> DelNetworkRequest {
    DelNetworkRequest {
        k8s_pod_name: pod.into(),
        k8s_pod_namespace: "default".into(),
        k8s_pod_infra_container_id: container.into(),
        container_id: container.into(),
        if_name: "eth0".into(),
        network_name: "aws-cni".into(),
        reason: "PodDeleted".into(),
        ..Default::default()
    }
}

/// ADD over gRPC; returns the reply's IPv6 address after checking the reply has the anchor's IPv6 shape.
async fn add(sock: &Path, container: &str, pod: &str) -> std::net::Ipv6Addr {
    let r = backend(sock)
        .await
        .add_network(add_req(container, pod))
        .await
        .expect("AddNetwork")
        .into_inner();
    assert!(r.success, "ADD {container}: {r:?}");
    assert_eq!(r.ip_allocation_metadata.len(), 1, "{r:?}");
    let m = &r.ip_allocation_metadata[0];
    assert!(
        m.i_pv4_addr.is_empty(),
        "IPv4 field set in IPv6 mode: {r:?}"
    );
    assert!(r.vp_cv4_cid_rs.is_empty(), "{r:?}");
    assert_eq!((m.device_number, m.route_table_id), (0, 254), "{r:?}");
    m.i_pv6_addr.parse().expect("an IPv6 address")
}

/// DEL over gRPC; returns the reply.
async fn del_network(sock: &Path, container: &str, pod: &str) -> DelNetworkReply {
    backend(sock)
        .await
        .del_network(del_req(container, pod))
        .await
        .expect("DelNetwork")
        .into_inner()
}

/// Every assignment, as the control service lists them (what CHECK, GC and `ipamd status` read).
async fn list_allocations(sock: &Path) -> Vec<Allocation> {
    let ch = aws_cni_proto::unix_channel(sock, Duration::from_secs(5))
        .await
        .expect("connect");
    IpamdControlClient::new(ch)
        .list_allocations(ListAllocationsRequest::default())
        .await
        .expect("ListAllocations")
        .into_inner()
        .allocations
}

fn in_prefix(ip: std::net::Ipv6Addr, prefix: &str) -> bool {
    let (net, len) = prefix.split_once('/').expect("cidr");
    let net: std::net::Ipv6Addr = net.parse().expect("net");
    let len: u32 = len.parse().expect("len");
    let mask = u128::MAX << (128 - len);
    u128::from(ip) & mask == u128::from(net) & mask
}

#[test]
fn ipv6_pods_get_addresses_of_the_nodes_80_over_grpc_and_keep_them_across_a_restart() {
    let mut n = start_v6();
    let held = prefixes(&n);
    assert_eq!(held.len(), 1, "{held:?}");
    let prefix = held[0].clone();
    assert!(prefix.ends_with("/80"), "{prefix}");
    assert_eq!(n.ec2_calls("AssignIpv6Addresses"), 1);
    // No warm pool and no secondary ENI in IPv6 mode.
    assert_eq!(n.ec2_calls("CreateNetworkInterface"), 0);
    assert_eq!(n.ec2_calls("AssignPrivateIpAddresses"), 0);

    let sock = n.socket();
    let rt = rt();
    let a = rt.block_on(add(&sock, "c0ffee00a", "web-a"));
    let b = rt.block_on(add(&sock, "c0ffee00b", "web-b"));
    assert!(
        in_prefix(a, &prefix) && in_prefix(b, &prefix),
        "{a} {b} {prefix}"
    );
    assert_ne!(a, b);
    let cp = n.checkpoint();
    assert!(cp.contains(&format!("\"ipv6\":\"{a}\"")), "{cp}");
    assert!(!cp.contains("\"ipv4\""), "{cp}");
    // The control service lists them with their IPv6 address (what CHECK, GC and `ipamd status` read).
    let listed = rt.block_on(list_allocations(&sock));
    let mut v6: Vec<String> = listed.iter().map(|x| x.i_pv6_addr.clone()).collect();
    v6.sort();
    let mut want = vec![a.to_string(), b.to_string()];
    want.sort();
    assert_eq!(v6, want, "{listed:?}");
    assert!(listed.iter().all(|x| x.i_pv4_addr.is_empty()));
    // `ipamd status` shows them, the /80 on the primary ENI, and the node ready.
    let st = n.status_json();
    assert_eq!(st["ready"], true, "{st}");
    let mut ips: Vec<String> = st["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .filter_map(|p| p["ip"].as_str().map(String::from))
        .collect();
    ips.sort();
    assert_eq!(ips, want, "{st}");
    assert_eq!(st["enis"][0]["prefixes"][0], prefix.as_str(), "{st}");
    assert_eq!(st["enis"][0]["assigned"], 2, "{st}");

    // Restart: both pods keep their address, and EC2 is not asked for a second prefix.
    n.restart();
    assert_eq!(prefixes(&n), vec![prefix.clone()]);
    assert_eq!(n.ec2_calls("AssignIpv6Addresses"), 1);
    assert_eq!(rt.block_on(add(&sock, "c0ffee00a", "web-a")), a);
    assert_eq!(rt.block_on(add(&sock, "c0ffee00b", "web-b")), b);
    let c = rt.block_on(add(&sock, "c0ffee00c", "web-c"));
    assert!(c != a && c != b && in_prefix(c, &prefix), "{c}");

    // DEL frees it (named in the reply); a repeated DEL frees nothing; a new pod does not get it (cooldown).
    let del = rt.block_on(del_network(&sock, "c0ffee00a", "web-a"));
    assert!(del.success, "{del:?}");
    assert_eq!(
        del.ip_allocation_metadata
            .iter()
            .map(|m| m.i_pv6_addr.clone())
            .collect::<Vec<_>>(),
        vec![a.to_string()]
    );
    let again = rt.block_on(del_network(&sock, "c0ffee00a", "web-a"));
    assert!(
        again.success && again.ip_allocation_metadata.is_empty(),
        "{again:?}"
    );
    let cp = n.checkpoint();
    assert!(!cp.contains(&a.to_string()), "{cp}");
    assert!(
        cp.contains(&b.to_string()) && cp.contains(&c.to_string()),
        "{cp}"
    );
    let d = rt.block_on(add(&sock, "c0ffee00d", "web-d"));
    assert!(d != a && d != b && d != c, "{d}");
}

/// Runs `ipamd run` with `env` and returns its output once it exits (it must, within 20 s).
fn refused(env: &[(&str, &str)]) -> String {
    require_root();
    let node = Netns::new("act-v6r-");
    let dir = TempDir::new();
    let mut cmd = Ipamd::command(&node, &dir, "m5.large");
    cmd.env("AWS_VPC_K8S_CNI_LOG_FILE", "stderr")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if child.try_wait().expect("wait").is_some() {
            let out = child.wait_with_output().expect("output");
            assert!(!out.status.success(), "{env:?}: exited 0");
            assert!(
                !dir.path().join("ipam.json").exists(),
                "{env:?}: a checkpoint was written"
            );
            return format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{env:?}: ipamd kept running");
}

#[test]
fn the_family_combinations_the_anchor_refuses_stop_startup_naming_the_variables() {
    let dual = refused(&[("ENABLE_IPv6", "true"), ("ENABLE_IPv4", "true")]);
    assert!(
        dual.contains("ENABLE_IPv6") && dual.contains("ENABLE_IPv4") && dual.contains("dual-stack"),
        "{dual}"
    );
    let neither = refused(&[("ENABLE_IPv4", "false")]);
    assert!(
        neither.contains("ENABLE_IPv4") && neither.contains("ENABLE_IPv6"),
        "{neither}"
    );
    let no_pd = refused(&[("ENABLE_IPv6", "true"), ("ENABLE_IPv4", "false")]);
    assert!(
        no_pd.contains("ENABLE_PREFIX_DELEGATION") && no_pd.contains("ENABLE_IPv6"),
        "{no_pd}"
    );
    let junk = refused(&[("ENABLE_IPv6", "maybe")]);
    assert!(junk.contains("ENABLE_IPv6"), "{junk}");
}

/// One IPv6 `CheckpointEntry` as the anchor's Go encoder writes it in IPv6 mode: `ipv4` omitted, `ipv6` set.
fn anchor_entry_v6(container: &str, ip: &str, name: &str, wall_ns: u64) -> String {
    format!(
        r#"{{"networkName":"aws-cni","containerID":"{container}","ifName":"eth0","ipv6":"{ip}","allocationTimestamp":{wall_ns},"metadata":{{"k8sPodNamespace":"default","k8sPodName":"{name}"}}}}"#
    )
}

#[test]
fn a_node_migrated_from_the_anchor_in_ipv6_mode_keeps_its_pods() {
    // The instance as aws-node left it: EC2 gave the primary ENI its /80.
    let mut n = start_v6();
    n.stop();
    let prefix = prefixes(&n)[0].clone();
    let net: std::net::Ipv6Addr = prefix
        .split_once('/')
        .expect("cidr")
        .0
        .parse()
        .expect("net");
    let at = |host: u128| std::net::Ipv6Addr::from(u128::from(net) | host);
    let (web0, web1, gone) = (at(5), at(9), at(0x1c));
    // The anchor's pods: two still running (their host veths are there), one deleted while no ipamd ran.
    for name in ["web-0", "web-1"] {
        let veth = integration_tests::expected_veth("default", name);
        let out = n.node.exec(&[
            "ip",
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            &format!("p{}", &veth[3..]),
        ]);
        assert!(out.status.success(), "{out:?}");
    }
    let file = format!(
        "{{\"version\":\"vpc-cni-ipam/1\",\"allocations\":[{},{},{}]}}\n",
        anchor_entry_v6(
            "anchor0c0ffee",
            &web0.to_string(),
            "web-0",
            1_600_000_000_000_000_000
        ),
        anchor_entry_v6(
            "anchor1c0ffee",
            &web1.to_string(),
            "web-1",
            1_600_000_000_000_000_000
        ),
        anchor_entry_v6(
            "anchor2c0ffee",
            &gone.to_string(),
            "web-2",
            1_600_000_000_000_000_000
        ),
    );
    std::fs::write(n.dir.path().join("ipam.json"), file).expect("anchor checkpoint");

    n.restart();
    assert_eq!(n.ec2_calls("AssignIpv6Addresses"), 1, "no second prefix");
    let sock = n.socket();
    let rt = rt();
    // The running pods keep their addresses (a repeated ADD answers what the key holds); the gone one is freed.
    let listed = rt.block_on(list_allocations(&sock));
    let mut held: Vec<(String, String)> = listed
        .iter()
        .map(|a| (a.k8s_pod_name.clone(), a.i_pv6_addr.clone()))
        .collect();
    held.sort();
    assert_eq!(
        held,
        vec![
            ("web-0".to_string(), web0.to_string()),
            ("web-1".to_string(), web1.to_string())
        ],
        "{}",
        n.log()
    );
    assert_eq!(rt.block_on(add(&sock, "anchor0c0ffee", "web-0")), web0);
    // A new pod never gets an adopted address.
    let fresh = rt.block_on(add(&sock, "newpod0c0ffee", "web-3"));
    assert!(
        fresh != web0 && fresh != web1 && in_prefix(fresh, &prefix),
        "{fresh}"
    );
    let del = rt.block_on(del_network(&sock, "anchor1c0ffee", "web-1"));
    assert_eq!(
        del.ip_allocation_metadata
            .iter()
            .map(|m| m.i_pv6_addr.clone())
            .collect::<Vec<_>>(),
        vec![web1.to_string()]
    );
    let cp = n.checkpoint();
    assert!(
        cp.contains(&web0.to_string()) && cp.contains(&fresh.to_string()),
        "{cp}"
    );
    assert!(
        !cp.contains(&web1.to_string()) && !cp.contains(&gone.to_string()),
        "{cp}"
    );
}
