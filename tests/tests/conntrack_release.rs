//! A released address loses its conntrack flows (the anchor's #3634: a freed IP reused by a new pod while
//! conntrack still holds the old pod's flows, so the new pod's packets inherit the old NAT and connmark).
//!
//! A pod gets an address; a flow of that address sits in the node's conntrack table with the connmark bit set
//! (as a marked service or internet connection would). After the pod's DEL, ipamd deletes it over ctnetlink; a
//! flow of another address stays.

use std::time::Duration;

use integration_tests::{add_with_retry, cni, eventually, pod, result_ip, Ipamd, Netns};

fn insert_flow(node: &Netns, src: &str, sport: &str) {
    let out = node.exec(&[
        "conntrack",
        "-I",
        "-p",
        "udp",
        "-s",
        src,
        "-d",
        "172.20.0.10",
        "--sport",
        sport,
        "--dport",
        "53",
        "--timeout",
        "300",
        "--mark",
        "0x80",
    ]);
    assert!(out.status.success(), "conntrack -I: {out:?}");
}

fn flows_of(node: &Netns, src: &str) -> usize {
    let out = node.exec(&["conntrack", "-L", "-s", src]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("src={src} ")))
        .count()
}

#[test]
fn a_released_address_loses_its_stale_conntrack_flows() {
    let ipamd = Ipamd::start("t3.nano", &[]);
    let node = &ipamd.node;
    let conf = ipamd.conf("1.0.0");
    let ns = Netns::new("act-ct-");
    let p = pod(&ns, "old");
    let add = add_with_retry(node, &p, &conf);
    assert!(add.success, "ADD: {}\n{}", add.stdout, ipamd.log());
    let ip = result_ip(&add.json);

    insert_flow(node, &ip, "5000");
    insert_flow(node, "10.255.255.77", "5001");
    assert_eq!(flows_of(node, &ip), 1, "the stale flow is there");

    let mut del_conf = conf.clone();
    del_conf["prevResult"] = add.json.clone();
    let del = cni(node, "DEL", &p, &del_conf);
    assert!(del.success, "DEL: {}", del.stdout);
    assert!(
        eventually(Duration::from_secs(5), || flows_of(node, &ip) == 0),
        "the released address's flow is still tracked\n{}",
        ipamd.log()
    );
    assert_eq!(
        flows_of(node, "10.255.255.77"),
        1,
        "other addresses' flows stay"
    );
}
