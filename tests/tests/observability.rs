//! Metrics and introspection of a running ipamd, scraped over HTTP inside the node's namespace.

use integration_tests::{
    add_with_retry, cni, eventually, result_ip, Ipamd, Netns, PodSpec, TempDir, VETH_GONE_WITHIN,
};
use serde_json::Value;

/// Every series the anchor exports (`awscni_*`) and ours; each must be present in a scrape.
const DECLARED: &[&str] = &[
    "awscni_ipamd_error_count",
    "awscni_ipamd_action_inprogress",
    "awscni_eni_max",
    "awscni_ip_max",
    "awscni_reconcile_count",
    "awscni_add_ip_req_count",
    "awscni_del_ip_req_count",
    "awscni_pod_eni_error_count",
    "awscni_aws_api_latency_ms",
    "awscni_aws_api_error_count",
    "awscni_aws_utils_error_count",
    "awscni_ec2api_req_count",
    "awscni_ec2api_error_count",
    "awscni_eni_allocated",
    "awscni_total_ip_addresses",
    "awscni_assigned_ip_addresses",
    "awscni_force_removed_enis",
    "awscni_force_removed_ips",
    "awscni_total_ipv4_prefixes",
    "awscni_assigned_ip_per_cidr",
    "awscni_no_available_ip_addresses",
    "awscni_assigned_ip_per_eni",
    "awscni_ipamd_startup_duration_seconds",
    "awscni_ipamd_node_initialization_duration_seconds",
    "awscni_connmark_backend",
    "awscni_connmark_reconcile_total",
    "awscni_build_info",
    "awscni_ipamd_add_network_seconds",
    "awscni_ipamd_del_network_seconds",
    "awscni_ipamd_add_network_failures_total",
    "awscni_ec2_calls_total",
    "awscni_pool_ips",
    "awscni_checkpoint_write_seconds",
    "awscni_veth_reaper_total",
    "awscni_veth_reaper_pending",
];

fn curl(node: &Netns, args: &[&str]) -> String {
    let mut full = vec!["curl", "-sS", "--max-time", "5"];
    full.extend_from_slice(args);
    let out = node.exec(&full);
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The value of an unlabelled series, or of the first line starting with `series` (labels included).
fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series}"))
}

fn sum_of(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn every_declared_metric_is_exported_and_moves_with_pods() {
    // t3.nano, MAX_ENI=1: one address, so the second ADD fails for want of addresses.
    let ipamd = Ipamd::start("t3.nano", &[("MAX_ENI", "1")]);
    let scrape = || curl(&ipamd.node, &["http://127.0.0.1:61678/metrics"]);
    let before = scrape();
    for name in DECLARED {
        assert!(
            before.contains(&format!("# TYPE {name} ")),
            "{name} not exported"
        );
    }
    assert!(before.contains("# TYPE awscni_aws_api_latency_ms summary"));
    assert!(before.contains("# TYPE awscni_add_ip_req_count counter"));
    assert_eq!(value(&before, "awscni_eni_max"), 1.0);
    // The test node has no kube-proxy, and nft works: the nftables backend is chosen.
    assert_eq!(
        value(&before, "awscni_connmark_backend{backend=\"nftables\"}"),
        1.0
    );
    assert_eq!(
        value(&before, "awscni_snat_backend{backend=\"nftables\"}"),
        1.0
    );
    assert!(
        sum_of(&before, "awscni_ec2api_req_count") >= 1.0,
        "startup fill called EC2"
    );
    assert!(
        before.contains("awscni_aws_api_latency_ms_count{api=\"GetMetadata\""),
        "IMDS reads timed"
    );

    let a_ns = Netns::new("act-pod-");
    let b_ns = Netns::new("act-pod-");
    let pod = |ns: &Netns, name: &str| PodSpec {
        container_id: format!("ctr-{}", ns.name),
        namespace: "default".into(),
        name: name.into(),
        netns: ns.path(),
        ifname: "eth0".into(),
    };
    let conf = ipamd.conf("1.0.0");
    let a = add_with_retry(&ipamd.node, &pod(&a_ns, "a"), &conf);
    assert!(a.success);
    let fail = cni(&ipamd.node, "ADD", &pod(&b_ns, "b"), &conf);
    assert!(!fail.success);
    let mut c = conf.clone();
    c["prevResult"] = a.json.clone();
    assert!(cni(&ipamd.node, "DEL", &pod(&a_ns, "a"), &c).success);

    let after = scrape();
    assert_eq!(
        value(&after, "awscni_add_ip_req_count") - value(&before, "awscni_add_ip_req_count"),
        2.0
    );
    assert_eq!(value(&after, "awscni_no_available_ip_addresses"), 1.0);
    assert_eq!(
        value(&after, "awscni_del_ip_req_count{reason=\"PodDeleted\"}"),
        1.0
    );
    assert_eq!(value(&after, "awscni_ipamd_add_network_seconds_count"), 2.0);
    assert_eq!(value(&after, "awscni_ipamd_del_network_seconds_count"), 1.0);
    // The DEL handed its veth (the pod's namespace is kept) to the reaper, which deleted it.
    let reaped = || {
        scrape()
            .lines()
            .any(|l| l == "awscni_veth_reaper_total{outcome=\"deleted\"} 1")
    };
    assert!(eventually(VETH_GONE_WITHIN, reaped), "{}", scrape());
    assert_eq!(value(&scrape(), "awscni_veth_reaper_pending"), 0.0);
    assert!(
        after.contains("awscni_ipamd_add_network_failures_total{reason=\"NODE_AT_ENI_LIMIT\"} 1"),
        "{after}"
    );
    assert_eq!(value(&after, "awscni_total_ip_addresses"), 1.0);
    assert_eq!(value(&after, "awscni_assigned_ip_addresses"), 0.0);
    // Per ENI: the released address is cooling down on the one ENI, nothing is available.
    let cooldown: f64 = after
        .lines()
        .filter(|l| l.starts_with("awscni_pool_ips{") && l.contains("state=\"cooldown\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(cooldown, 1.0, "{after}");
    assert!(after.contains("state=\"available\"} 0"), "{after}");
    assert!(after.contains(&format!(
        "awscni_assigned_ip_per_cidr{{cidr=\"{}/32\"}} 0",
        result_ip(&a.json)
    )));
}

#[test]
fn introspection_serves_the_anchors_paths_without_container_ids() {
    let dir = TempDir::new();
    let sock = dir.path().join("introspection.sock");
    let ipamd = Ipamd::start(
        "m5.large",
        &[
            (
                "INTROSPECTION_BIND_ADDRESS",
                &format!("unix:{}", sock.display()),
            ),
            ("WARM_ENI_TARGET", "1"),
            ("DISABLE_METRICS", "true"),
        ],
    );
    let ns = Netns::new("act-pod-");
    let p = PodSpec {
        container_id: "secret-container-id".into(),
        namespace: "shop".into(),
        name: "cart".into(),
        netns: ns.path(),
        ifname: "eth0".into(),
    };
    let add = add_with_retry(&ipamd.node, &p, &ipamd.conf("1.0.0"));
    assert!(add.success);
    let ip = result_ip(&add.json);
    let get = |path: &str| -> Value {
        let body = curl(
            &ipamd.node,
            &[
                "--unix-socket",
                sock.to_str().unwrap_or("?"),
                &format!("http://localhost{path}"),
            ],
        );
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    };
    let paths = get("/");
    assert!(paths
        .as_array()
        .is_some_and(|a| a.iter().any(|p| p == "/v1/enis")));

    let enis = get("/v1/enis");
    let card = &enis["0"];
    assert!(card["TotalIPs"].as_u64().unwrap_or(0) >= 9);
    assert_eq!(card["AssignedIPs"], 1);
    let eni = card["ENIs"]
        .as_object()
        .and_then(|m| m.values().find(|e| e["IsPrimary"] == true))
        .expect("primary ENI");
    assert_eq!(eni["DeviceNumber"], 0);
    let entry = &eni["AvailableIPv4Cidrs"][format!("{ip}/32")]["IPAddresses"][&ip];
    assert_eq!(entry["IPAMMetadata"]["k8sPodName"], "cart");
    assert_eq!(
        entry["IPAMKey"]["containerID"], "",
        "container IDs must be blanked"
    );
    let whole = serde_json::to_string(&enis).unwrap_or_default();
    assert!(!whole.contains("secret-container-id"));

    let pods = get("/v1/pods");
    assert_eq!(pods[0]["name"], "cart");
    assert_eq!(pods[0]["ip"], ip.as_str());
    assert!(!pods.to_string().contains("secret-container-id"));
    assert_eq!(get("/v1/ipamd-env-settings")["WARM_ENI_TARGET"], "1");
    assert_eq!(
        get("/v1/networkutils-env-settings")["AWS_VPC_K8S_CNI_VETHPREFIX"],
        "eni"
    );

    // DISABLE_METRICS=true: nothing listens on 61678.
    let out = ipamd.node.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "2",
        "http://127.0.0.1:61678/metrics",
    ]);
    assert!(!out.status.success(), "metrics served although disabled");
}
