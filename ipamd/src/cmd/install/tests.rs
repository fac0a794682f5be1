//! The installer's tests: settings, rendering, sysctls.

use super::conflist::leftover_placeholder;
use super::*;
use serde_json::Value;
use std::collections::HashMap;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

fn deploy_file(name: &str) -> (PathBuf, String) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    let text = std::fs::read_to_string(&p).expect("deploy file");
    (p, text)
}

#[test]
fn defaults_are_the_anchors() {
    let s = Settings::from_env(&env(&[])).expect("defaults");
    assert_eq!(s.bin_dir, PathBuf::from("/host/opt/cni/bin"));
    assert_eq!(s.conf_dir, PathBuf::from("/host/etc/cni/net.d"));
    assert_eq!(s.veth_prefix, "eni");
    assert_eq!(s.pod_mtu, 9001);
    assert_eq!(s.sg_mode, SgMode::Strict);
    assert_eq!(s.plugin_log_file, "/var/log/aws-routed-eni/plugin.log");
    assert_eq!(s.plugin_log_level, "DEBUG");
    assert!(!s.disable_tcp_early_demux && !s.enable_ipv6 && !s.bandwidth_plugin);
}

#[test]
fn pod_mtu_falls_back_to_the_eni_mtu_and_ipv6_raises_the_floor() {
    let s = Settings::from_env(&env(&[("AWS_VPC_ENI_MTU", "1500")])).expect("eni mtu");
    assert_eq!(s.pod_mtu, 1500);
    let s = Settings::from_env(&env(&[("AWS_VPC_ENI_MTU", "1500"), ("POD_MTU", "1400")]))
        .expect("pod mtu");
    assert_eq!(s.pod_mtu, 1400);
    let e = Settings::from_env(&env(&[("POD_MTU", "1000"), ("ENABLE_IPv6", "true")]))
        .expect_err("v6 floor");
    assert!(e.to_string().contains("POD_MTU"), "{e}");
    assert!(Settings::from_env(&env(&[("POD_MTU", "1000")])).is_ok());
}

#[test]
fn every_bad_value_names_its_variable() {
    for (var, value) in [
        ("AWS_VPC_K8S_CNI_VETHPREFIX", "toolong"),
        ("AWS_VPC_K8S_CNI_VETHPREFIX", "eth"),
        ("AWS_VPC_K8S_CNI_VETHPREFIX", "a\"b"),
        ("POD_MTU", "100"),
        ("POD_MTU", "nine"),
        ("AWS_VPC_ENI_MTU", "9002"),
        ("POD_SECURITY_GROUP_ENFORCING_MODE", "loose"),
        ("AWS_VPC_K8S_PLUGIN_LOG_FILE", "stdout"),
        ("AWS_VPC_K8S_PLUGIN_LOG_FILE", "relative/plugin.log"),
        ("AWS_VPC_K8S_PLUGIN_LOG_LEVEL", "chatty"),
        ("DISABLE_TCP_EARLY_DEMUX", "maybe"),
        ("ENABLE_IPv6", "2"),
        ("ENABLE_V6_EGRESS", "on?"),
        ("ENABLE_BANDWIDTH_PLUGIN", "y"),
        ("DISABLE_POD_V6", "nope"),
        ("HOST_CNI_BIN_PATH", "opt/cni/bin"),
        ("HOST_CNI_CONFDIR_PATH", "net.d"),
    ] {
        let e = Settings::from_env(&env(&[(var, value)])).expect_err(var);
        let text = e.to_string();
        assert!(text.contains(var), "{var}={value}: {text}");
    }
}

#[test]
fn default_rendering_of_the_template_is_deploy_conflist_byte_for_byte() {
    let (tpath, template) = deploy_file(TEMPLATE_NAME);
    let (_, expected) = deploy_file(CONFLIST_NAME);
    let s = Settings::from_env(&env(&[])).expect("defaults");
    let out = render_conflist(&template, &s, &tpath).expect("render");
    assert_eq!(out, expected);
    assert!(template.contains("__MTU__") && template.contains("__VETHPREFIX__"));
}

#[test]
fn values_are_substituted_json_escaped_and_optional_plugins_are_chained() {
    let (tpath, template) = deploy_file(TEMPLATE_NAME);
    let s = Settings::from_env(&env(&[
        ("AWS_VPC_K8S_CNI_VETHPREFIX", "veth"),
        ("POD_MTU", "1500"),
        ("POD_SECURITY_GROUP_ENFORCING_MODE", "standard"),
        (
            "AWS_VPC_K8S_PLUGIN_LOG_FILE",
            "/var/log/a \"quoted\" dir\\x.log",
        ),
        ("AWS_VPC_K8S_PLUGIN_LOG_LEVEL", "info"),
        ("ENABLE_BANDWIDTH_PLUGIN", "true"),
        ("DISABLE_POD_V6", "true"),
    ]))
    .expect("settings");
    let out = render_conflist(&template, &s, &tpath).expect("render");
    let v: Value = serde_json::from_str(&out).expect("json");
    let aws = &v["plugins"][0];
    assert_eq!(aws["vethPrefix"], "veth");
    assert_eq!(aws["mtu"], "1500");
    assert_eq!(aws["podSGEnforcingMode"], "standard");
    assert_eq!(aws["pluginLogFile"], "/var/log/a \"quoted\" dir\\x.log");
    assert_eq!(aws["pluginLogLevel"], "info");
    let types: Vec<&str> = v["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(types, ["aws-cni", "portmap", "bandwidth", "tuning"]);
    assert_eq!(
        v["plugins"][3]["sysctl"]["net.ipv6.conf.all.disable_ipv6"],
        "1"
    );
}

#[test]
fn templates_with_unknown_placeholders_or_broken_json_are_refused() {
    let s = Settings::from_env(&env(&[])).expect("defaults");
    let p = Path::new("t");
    let e = render_conflist(
        r#"{"plugins":[{"type":"aws-cni","nodeIP":"__NODEIP__"}]}"#,
        &s,
        p,
    )
    .expect_err("placeholder");
    assert!(e.to_string().contains("__NODEIP__"), "{e}");
    let e = render_conflist(r#"{"plugins":[{"type":"aws-cni""#, &s, p).expect_err("json");
    assert!(e.to_string().contains("not JSON"), "{e}");
    let e = render_conflist(r#"{"plugins":[{"type":"bridge"}]}"#, &s, p).expect_err("no aws-cni");
    assert!(e.to_string().contains("aws-cni"), "{e}");
    // Underscores that are not a placeholder are fine.
    assert_eq!(leftover_placeholder("a__b c__ __x__"), None);
    assert_eq!(
        leftover_placeholder("x __A_B__ y").as_deref(),
        Some("__A_B__")
    );
    assert_eq!(
        leftover_placeholder("x __AB1__ y").as_deref(),
        Some("__AB1__")
    );
}

#[test]
fn sysctls_follow_the_anchors_init_container() {
    let s = Settings::from_env(&env(&[])).expect("defaults");
    let keys: Vec<(String, &str)> = sysctls("ens5", &s)
        .into_iter()
        .map(|x| (x.key, x.value))
        .collect();
    assert_eq!(
        keys,
        [
            ("net/ipv4/conf/ens5/rp_filter".to_string(), "2"),
            ("net/ipv4/tcp_early_demux".to_string(), "1")
        ]
    );
    let s = Settings::from_env(&env(&[
        ("DISABLE_TCP_EARLY_DEMUX", "true"),
        ("ENABLE_V6_EGRESS", "true"),
    ]))
    .expect("v6 egress");
    let all = sysctls("ens5", &s);
    assert!(all.contains(&Sysctl {
        key: "net/ipv4/tcp_early_demux".into(),
        value: "0"
    }));
    assert!(all.iter().any(|x| x.key == "net/ipv6/conf/ens5/accept_ra"));
    assert!(!all.iter().any(|x| x.key.ends_with("disable_ipv6")));
    let s = Settings::from_env(&env(&[("ENABLE_IPv6", "true")])).expect("v6");
    assert_eq!(sysctls("ens5", &s).len(), 5);
}

#[test]
fn macs_are_normalized_and_checked() {
    assert_eq!(
        normalize_mac(" 0A:1b:2C:3d:4E:5f\n").expect("mac"),
        "0a:1b:2c:3d:4e:5f"
    );
    for bad in ["", "0a:1b:2c:3d:4e", "0a:1b:2c:3d:4e:5g", "0a1b2c3d4e5f"] {
        assert!(normalize_mac(bad).is_err(), "{bad}");
    }
}

#[test]
fn egress_cni_is_chained_after_aws_cni_with_the_anchors_ranges_when_egress_is_on() {
    let (tpath, template) = deploy_file(TEMPLATE_NAME);
    // Off (an IPv4 node by default, and an IPv6 node with ENABLE_V4_EGRESS=false): no entry, no node IP needed.
    for pairs in [
        vec![],
        vec![("ENABLE_IPv6", "true"), ("ENABLE_V4_EGRESS", "false")],
    ] {
        let s = Settings::from_env(&env(&pairs)).expect("settings");
        assert!(!s.egress_enabled(), "{pairs:?}");
        let out = render_conflist_with_egress(&template, &s, &tpath, None).expect("render");
        assert!(!out.contains("egress-cni"), "{out}");
    }
    // IPv6 node: IPv4 egress from 169.254.172.0/22, SNAT to the node's IPv4.
    let s = Settings::from_env(&env(&[
        ("ENABLE_IPv6", "true"),
        ("POD_MTU", "1500"),
        ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "hashrandom"),
    ]))
    .expect("settings");
    assert!(s.egress_enabled());
    assert!(render_conflist_with_egress(&template, &s, &tpath, None).is_err());
    let out =
        render_conflist_with_egress(&template, &s, &tpath, Some("10.0.0.10")).expect("render");
    let v: Value = serde_json::from_str(&out).expect("json");
    let types: Vec<&str> = v["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(types, ["aws-cni", "egress-cni", "portmap"]);
    let e = &v["plugins"][1];
    assert_eq!(e["name"], "egress-cni");
    assert_eq!(e["enabled"], "true");
    assert_eq!(e["mtu"], "1500");
    assert_eq!(e["randomizeSNAT"], "hashrandom");
    assert_eq!(e["nodeIP"], "10.0.0.10");
    assert_eq!(e["ipam"]["type"], "host-local");
    assert_eq!(e["ipam"]["ranges"][0][0]["subnet"], "169.254.172.0/22");
    assert_eq!(e["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(e["ipam"]["dataDir"], "/run/cni/v6pd/egress-v4-ipam");
    assert_eq!(
        e["pluginLogFile"],
        "/var/log/aws-routed-eni/egress-v4-plugin.log"
    );
    // IPv4 node with ENABLE_V6_EGRESS: IPv6 egress from fd00::ac:00/118, SNAT to the node's IPv6.
    let s = Settings::from_env(&env(&[("ENABLE_V6_EGRESS", "true")])).expect("settings");
    let out = render_conflist_with_egress(&template, &s, &tpath, Some("2600:1f14:ab:c800::1001"))
        .expect("render");
    let v: Value = serde_json::from_str(&out).expect("json");
    let e = &v["plugins"][1];
    assert_eq!(e["ipam"]["ranges"][0][0]["subnet"], "fd00::ac:00/118");
    assert_eq!(e["ipam"]["routes"][0]["dst"], "::/0");
    assert_eq!(e["ipam"]["dataDir"], "/run/cni/v4pd/egress-v6-ipam");
    assert_eq!(e["randomizeSNAT"], "prng");
    assert_eq!(
        e["pluginLogFile"],
        "/var/log/aws-routed-eni/egress-v6-plugin.log"
    );
    for (var, value) in [
        ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "sometimes"),
        ("ENABLE_V4_EGRESS", "perhaps"),
        ("AWS_VPC_K8S_EGRESS_V6_PLUGIN_LOG_FILE", "stdout"),
    ] {
        let e = Settings::from_env(&env(&[(var, value)])).expect_err(var);
        assert!(e.to_string().contains(var), "{e}");
    }
}
