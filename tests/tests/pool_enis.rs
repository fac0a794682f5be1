//! The pool engine seen from outside: the built `ipamd` on a simulated node and the real `aws-cni`. As pods
//! arrive the daemon attaches ENIs (tagged, DeleteOnTermination, configured on the host: MTU, table N+1, rule
//! 32765); when the node cannot hold another pod the ADD fails at once with the reason.

use std::time::{Duration, Instant};

use integration_tests::{add_with_retry, arr, cni, pod, result_ip, Ipamd, Netns};

#[test]
fn pods_spread_over_enis_that_are_tagged_and_configured_on_the_host() {
    let ipamd = Ipamd::start("m5.large", &[("CLUSTER_NAME", "test-cluster")]);
    let node = &ipamd.node;
    let conf = ipamd.conf("1.0.0");
    let mut pods = Vec::new();
    for i in 0..12 {
        let ns = Netns::new("act-pool-");
        let p = pod(&ns, &format!("p{i}"));
        let out = add_with_retry(node, &p, &conf);
        assert!(out.success, "ADD {i}: {}\n{}", out.stdout, ipamd.log());
        pods.push((ns, p, out));
    }
    // 9 on the primary ENI, the rest on a second one; WARM_ENI_TARGET=1 keeps a third ready. That warm ENI may
    // still be on its way (attached, DeleteOnTermination or host setup pending) when the last ADD answers, so the
    // checks below are retried until the pool has settled.
    let ips: Vec<String> = pods.iter().map(|(_, _, o)| result_ip(&o.json)).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match check_attached_enis(&ipamd, &ips) {
            Ok(()) => break,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(why) => panic!("{why}\n{}", ipamd.log()),
        }
    }
    for (_, p, out) in &pods {
        let mut conf = conf.clone();
        conf["prevResult"] = out.json.clone();
        assert!(cni(node, "DEL", p, &conf).success);
    }
}

/// Every attached secondary ENI is tagged, DeleteOnTermination and configured on the host, and exactly three of
/// the pods' addresses are on secondary ENIs.
fn check_attached_enis(ipamd: &Ipamd, ips: &[String]) -> Result<(), String> {
    let node = &ipamd.node;
    let st = ipamd.sim_state();
    let enis: Vec<_> = st["enis"]
        .as_object()
        .ok_or("sim state has no enis")?
        .values()
        .cloned()
        .collect();
    let attached: Vec<_> = enis.iter().filter(|e| e["status"] == "in-use").collect();
    if attached.len() < 2 {
        return Err(format!("fewer than 2 ENIs attached: {st}"));
    }
    let on_secondary = ips
        .iter()
        .filter(|ip| {
            attached.iter().any(|e| {
                e["device_index"] != 0 && arr(&e["secondary_ips"]).iter().any(|x| x == ip.as_str())
            })
        })
        .count();
    if on_secondary != 3 {
        return Err(format!(
            "{on_secondary} pods beyond the primary ENI's 9 IPs, expected 3: {st}"
        ));
    }
    let iid = st["instance_id"].as_str().ok_or("no instance id")?;
    for e in attached.iter().filter(|e| e["device_index"] != 0) {
        let want = [
            (
                e["description"] == format!("aws-K8S-{iid}").as_str(),
                "description",
            ),
            (
                e["tags"]["node.k8s.amazonaws.com/instance_id"] == iid,
                "instance tag",
            ),
            (
                e["tags"]["cluster.k8s.amazonaws.com/name"] == "test-cluster",
                "cluster tag",
            ),
            (e["delete_on_termination"] == true, "DeleteOnTermination"),
        ];
        if let Some((_, what)) = want.iter().find(|(ok, _)| !ok) {
            return Err(format!("ENI {}: {what} not set: {e}", e["id"]));
        }
        let dev = e["device_index"].as_u64().ok_or("no device index")?;
        let name = format!("eth{dev}");
        let links = arr(&node.ip_json(&["link", "show"]));
        let link = links.iter().find(|l| l["ifname"] == name.as_str());
        if !link.is_some_and(|l| l["address"] == e["mac"] && l["mtu"] == 9001) {
            return Err(format!(
                "{name} does not carry the ENI's MAC and MTU 9001: {link:?}"
            ));
        }
        let table = (dev + 1).to_string();
        let routes = arr(&node.ip_json(&["route", "show", "table", &table]));
        if !routes
            .iter()
            .any(|r| r["dst"] == "default" && r["dev"] == format!("eth{dev}").as_str())
        {
            return Err(format!("table {table}: {routes:?}"));
        }
        let rules = arr(&node.ip_json(&["rule", "show"]));
        if !rules.iter().any(|r| {
            r["priority"] == 32765 && r["src"] == e["primary_ip"] && r["table"] == table.as_str()
        }) {
            return Err(format!("rule 32765 for {}: {rules:?}", e["primary_ip"]));
        }
    }
    Ok(())
}

#[test]
fn a_full_node_fails_the_add_at_once_and_says_why() {
    // t3.nano with MAX_ENI=1: one secondary IP in all.
    let ipamd = Ipamd::start("t3.nano", &[("MAX_ENI", "1")]);
    let node = &ipamd.node;
    let conf = ipamd.conf("1.0.0");
    let ns1 = Netns::new("act-full-");
    let ns2 = Netns::new("act-full-");
    let first = add_with_retry(node, &pod(&ns1, "first"), &conf);
    assert!(first.success, "{}\n{}", first.stdout, ipamd.log());
    let started = Instant::now();
    let second = cni(node, "ADD", &pod(&ns2, "second"), &conf);
    assert!(!second.success);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failed at once, not after waiting on EC2"
    );
    assert_eq!(
        second.json["details"], "NODE_AT_ENI_LIMIT",
        "{}",
        second.stdout
    );
    assert!(
        second.json["msg"].as_str().unwrap_or("").contains("ENI"),
        "{}",
        second.stdout
    );
    let mut conf = conf.clone();
    conf["prevResult"] = first.json.clone();
    assert!(cni(node, "DEL", &pod(&ns1, "first"), &conf).success);
}
