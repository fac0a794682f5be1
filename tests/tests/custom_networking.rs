//! Custom networking through the real binaries: `ipamd run --backend sim` with
//! `AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true`, the node and its ENIConfigs from the development source
//! `--cluster-objects FILE` (no API server here), subnets of the simulated VPC from `--sim-subnet`, and pods added
//! by the real `aws-cni` in throwaway namespaces. What EC2 holds is read from the simulator's state file.

use std::path::Path;
use std::time::Duration;

use integration_tests::{
    add_two_pods, add_with_retry, bin, cni, eventually, pod, result_ip, sh, Ipamd, Netns, TempDir,
};
use serde_json::{json, Value};

const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The simulator names subnets in order: the node's, then each `--sim-subnet`.
const PODS_SUBNET: &str = "subnet-0sim0000000000002";
const OTHER_ZONE_SUBNET: &str = "subnet-0sim0000000000003";
const PODS_SG: &str = "sg-0pods0000000000001";

fn objects(eni_configs: Value) -> Value {
    json!({
        "node": {"metadata": {"name": "sim-node", "labels": {ZONE_LABEL: "us-west-2a"}}},
        "eniConfigs": eni_configs,
    })
}

fn write(path: &Path, v: &Value) {
    std::fs::write(path, v.to_string()).expect("write cluster objects");
}

/// ipamd with custom networking on (ENIConfig named by the zone label), the pods' subnet 10.0.64.0/20 in the
/// node's zone and 10.0.96.0/20 in another.
fn start(objects_file: &Path) -> Ipamd {
    Ipamd::start_with_args(
        "m5.large",
        &[
            ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true"),
            ("ENI_CONFIG_LABEL_DEF", ZONE_LABEL),
        ],
        &[
            "--sim-subnet",
            "10.0.64.0/20",
            "--sim-subnet",
            "10.0.96.0/20@us-west-2b",
            "--cluster-objects",
            objects_file.to_str().expect("path"),
        ],
    )
}

fn status_json(ipamd: &Ipamd) -> Value {
    let out = sh(
        bin("ipamd").to_str().expect("path"),
        &[
            "status",
            "--socket",
            ipamd.socket().to_str().expect("path"),
            "--output",
            "json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("status json")
}

fn status_text(ipamd: &Ipamd) -> String {
    let out = sh(
        bin("ipamd").to_str().expect("path"),
        &["status", "--socket", ipamd.socket().to_str().expect("path")],
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The ENI (from the simulator's state) holding `ip`.
fn eni_of(state: &Value, ip: &str) -> Value {
    state["enis"]
        .as_object()
        .and_then(|m| {
            m.values().find(|e| {
                e["secondary_ips"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == ip))
            })
        })
        .cloned()
        .unwrap_or_else(|| panic!("no ENI holds {ip}: {state}"))
}

fn secondary_enis(state: &Value) -> Vec<Value> {
    state["enis"]
        .as_object()
        .map(|m| {
            m.values()
                .filter(|e| e["device_index"] != 0)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn custom_networking_puts_pods_on_an_eni_in_the_eni_configs_subnet_with_its_security_groups() {
    let files = TempDir::new();
    let objects_file = files.path().join("cluster-objects.json");
    write(
        &objects_file,
        &objects(json!([{
            "apiVersion": "crd.k8s.amazonaws.com/v1alpha1", "kind": "ENIConfig",
            "metadata": {"name": "us-west-2a"},
            // The other zone's subnet first: skipped, the node's zone has one.
            "spec": {"subnet": OTHER_ZONE_SUBNET, "subnets": [PODS_SUBNET], "securityGroups": [PODS_SG]},
        }])),
    );
    let ipamd = start(&objects_file);
    let state = ipamd.sim_state();
    assert_eq!(
        state["subnets"][PODS_SUBNET]["cidr"], "10.0.64.0/20",
        "{state}"
    );
    let conf = ipamd.conf("1.0.0");
    let pods = add_two_pods(&ipamd, &conf, "act-cn-");
    let state = ipamd.sim_state();
    for (_, _, out) in &pods {
        let ip = result_ip(&out.json);
        let octets: Vec<u8> = ip.split('.').map(|o| o.parse().expect("octet")).collect();
        assert!(
            octets[..2] == [10, 0] && (64..80).contains(&octets[2]),
            "{ip} is not in the ENIConfig's subnet 10.0.64.0/20"
        );
        let eni = eni_of(&state, &ip);
        assert_eq!(eni["subnet_id"], PODS_SUBNET, "{eni}");
        assert_ne!(eni["device_index"], 0, "never the primary ENI");
        let id = eni["id"].as_str().expect("id");
        assert_eq!(
            state["eni_security_groups"][id],
            json!([PODS_SG]),
            "the ENIConfig's security groups: {state}"
        );
    }
    let primary = state["enis"]
        .as_object()
        .and_then(|m| m.values().find(|e| e["device_index"] == 0))
        .expect("primary");
    assert_eq!(
        primary["secondary_ips"],
        json!([]),
        "the primary ENI carries no pod addresses"
    );
    // Traffic leaves through the ENI: its subnet's router answers the pod.
    assert!(
        pods[0].0.ping("10.0.64.1"),
        "pod cannot reach its subnet's router"
    );
    assert!(pods[0].0.ping(&result_ip(&pods[1].2.json)), "pod to pod");

    let st = status_json(&ipamd);
    let cn = &st["customNetworking"];
    assert_eq!(cn["eniConfig"], "us-west-2a", "{st}");
    assert!(
        cn["source"]
            .as_str()
            .is_some_and(|s| s.contains(ZONE_LABEL)),
        "{st}"
    );
    assert!(
        cn["subnet"]
            .as_str()
            .is_some_and(|s| s.contains(PODS_SUBNET)),
        "{st}"
    );
    assert_eq!(cn["problem"], "", "{st}");
    // Introspection, the anchor's path and shape: the ENIConfig's name.
    let out = ipamd.node.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://127.0.0.1:61679/v1/eni-configs",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "\"us-west-2a\"");
    let metrics = ipamd.node.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://127.0.0.1:61678/metrics",
    ]);
    let metrics = String::from_utf8_lossy(&metrics.stdout).to_string();
    assert!(
        metrics.contains(&format!(
            "awscni_eniconfig_in_use{{eniconfig=\"us-west-2a\",subnet=\"{PODS_SUBNET}\"}} 1"
        )),
        "{metrics}"
    );

    for (_, p, out) in &pods {
        let mut c = conf.clone();
        c["prevResult"] = out.json.clone();
        let del = cni(&ipamd.node, "DEL", p, &c);
        assert!(del.success, "DEL: {}", del.stdout);
    }
}

#[test]
fn a_missing_eni_config_is_a_clear_add_error_and_status_until_it_appears() {
    let files = TempDir::new();
    let objects_file = files.path().join("cluster-objects.json");
    write(&objects_file, &objects(json!([])));
    let ipamd = start(&objects_file);
    let conf = ipamd.conf("1.0.0");
    let ns = Netns::new("act-cnm-");
    let p = pod(&ns, "waiting");
    let out = cni(&ipamd.node, "ADD", &p, &conf);
    assert!(
        !out.success,
        "ADD succeeded without an ENIConfig: {}",
        out.stdout
    );
    assert_eq!(out.code(), 105, "{}", out.stdout);
    let msg = out.json["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("ENIConfig \"us-west-2a\"")
            && msg.contains("does not exist")
            && msg.contains(ZONE_LABEL),
        "the error names neither the ENIConfig nor the cause: {msg}"
    );
    assert_eq!(out.json["details"], "ENI_CONFIG_INVALID");
    assert!(
        secondary_enis(&ipamd.sim_state()).is_empty(),
        "an ENI was created anyway"
    );
    let text = status_text(&ipamd);
    assert!(
        text.contains("ENI_CONFIG_INVALID")
            && text.contains("PROBLEM")
            && text.contains("us-west-2a"),
        "{text}"
    );
    let metrics = ipamd.node.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://127.0.0.1:61678/metrics",
    ]);
    assert!(
        String::from_utf8_lossy(&metrics.stdout)
            .contains("awscni_eniconfig_invalid{cause=\"missing\",eniconfig=\"us-west-2a\"} 1"),
        "{}",
        String::from_utf8_lossy(&metrics.stdout)
    );

    // The ENIConfig appears (the file is re-read): the pod gets an address in its subnet.
    write(
        &objects_file,
        &objects(json!([{"metadata": {"name": "us-west-2a"}, "spec": {"subnet": PODS_SUBNET}}])),
    );
    let mut last = None;
    assert!(
        eventually(Duration::from_secs(15), || {
            let out = add_with_retry(&ipamd.node, &p, &conf);
            let ok = out.success;
            last = Some(out);
            ok
        }),
        "ADD still failing after the ENIConfig appeared: {:?}\n{}",
        last.map(|o| o.stdout),
        ipamd.log()
    );
    let added = last.expect("an ADD");
    let ip = result_ip(&added.json);
    let state = ipamd.sim_state();
    let eni = eni_of(&state, &ip);
    assert_eq!(eni["subnet_id"], PODS_SUBNET);
    // No security groups in the ENIConfig: the primary ENI's, as the anchor.
    let id = eni["id"].as_str().expect("id");
    assert_eq!(
        state["eni_security_groups"][id],
        json!(["sg-0sim00000000000001"])
    );
    let mut c = conf.clone();
    c["prevResult"] = added.json.clone();
    assert!(cni(&ipamd.node, "DEL", &p, &c).success);
}

#[test]
fn the_daemons_max_pods_with_custom_networking_is_the_clis() {
    for t in ["t3.medium", "m5.large", "c5.xlarge"] {
        let cli = |extra: &[&str]| -> u64 {
            let mut args = vec!["max-pods", "--instance-type", t];
            args.extend_from_slice(extra);
            let out = sh(bin("ipamd").to_str().expect("path"), &args);
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("a number")
        };
        let custom = cli(&["--cni-custom-networking-enabled"]);
        assert!(custom < cli(&[]), "{t}: the primary ENI must count less");
        // Custom networking needs the cluster: an empty development source (no node object) stands in for an API
        // server that has not answered yet.
        let files = integration_tests::TempDir::new();
        let objects = files.path().join("cluster-objects.json");
        std::fs::write(&objects, r#"{"node": null, "eniConfigs": []}"#).expect("objects file");
        let ipamd = Ipamd::start_with_args(
            t,
            &[("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true")],
            &["--cluster-objects", objects.to_str().expect("path")],
        );
        let st = status_json(&ipamd);
        assert_eq!(
            st["pool"]["maxPods"].as_u64(),
            Some(custom),
            "{t}: the daemon's cap is not `ipamd max-pods --cni-custom-networking-enabled`: {st}"
        );
        // No node object: nothing is known, nothing is attached, and status says why.
        assert!(
            st["customNetworking"]["problem"]
                .as_str()
                .is_some_and(|p| p.contains("node object is not known")),
            "{st}"
        );
        assert!(secondary_enis(&ipamd.sim_state()).is_empty());
    }
}

#[test]
fn the_demo_with_custom_networking_shows_pods_in_the_eni_configs_subnet() {
    integration_tests::require_root();
    let out = sh(
        bin("ipamd").to_str().expect("path"),
        &["demo", "--custom-networking", "--pods", "3"],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("demo-pod-") && l.contains("(eth"))
        .collect();
    assert_eq!(pod_lines.len(), 3, "{text}");
    for l in pod_lines {
        assert!(
            l.contains(" 10.0.64.") && l.contains("10.0.64.0/20") && !l.contains("(eth0)"),
            "a pod outside the ENIConfig's subnet: {l}"
        );
    }
    assert!(text.contains("0 pod(s) outside the ENIConfig"), "{text}");
}
