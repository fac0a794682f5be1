//! Plugin config parsing: leniency toward runtime-injected keys, the GC attachment keys, error
//! codes, version selection and prevResult decoding.

use cni_types::{
    codes, negotiate_version, parse_plugin_conf, Attachment, CniResult, IpConfig, NetConf,
};
use serde::Deserialize;
use serde_json::json;

/// The aws-cni entry of the default conflist as a runtime hands it to the plugin: name and
/// version copied from the list, `runtimeConfig` filled for the advertised capability, plus
/// keys containerd/Multus add.
const AWS_CONF: &str = r#"{
    "cniVersion": "0.4.0",
    "name": "aws-cni",
    "type": "aws-cni",
    "vethPrefix": "eni",
    "mtu": "9001",
    "podSGEnforcingMode": "strict",
    "pluginLogFile": "/var/log/aws-routed-eni/plugin.log",
    "pluginLogLevel": "DEBUG",
    "capabilities": {"io.kubernetes.cri.pod-annotations": true},
    "runtimeConfig": {
        "io.kubernetes.cri.pod-annotations": {"k8s.amazonaws.com/nicConfig": "multi-nic-attachment"}
    },
    "args": {"cni": {"ips": ["10.0.0.9"]}, "labels": {"appVersion": "1.0"}},
    "cni.dev/unknown-future-key": {"x": 1}
}"#;

#[test]
fn lenient_about_runtime_and_plugin_keys() {
    let conf = NetConf::parse(AWS_CONF.as_bytes()).expect("parse");
    assert_eq!(conf.cni_version, "0.4.0");
    assert_eq!(conf.name, "aws-cni");
    assert_eq!(conf.plugin_type, "aws-cni");
    assert_eq!(
        conf.runtime_config.as_ref().expect("runtimeConfig")["io.kubernetes.cri.pod-annotations"]
            ["k8s.amazonaws.com/nicConfig"],
        "multi-nic-attachment"
    );
    assert_eq!(
        conf.capabilities
            .as_ref()
            .and_then(|c| c.get("io.kubernetes.cri.pod-annotations").copied()),
        Some(true)
    );
    assert_eq!(
        conf.args.as_ref().expect("args")["labels"]["appVersion"],
        "1.0"
    );
    assert!(conf.prev_result.is_none());
    assert!(conf.valid_attachments.is_none());
    assert!(!conf.disable_check);
    assert_eq!(negotiate_version(&conf).as_deref(), Ok("0.4.0"));
}

#[derive(Debug, Deserialize)]
struct AwsConf {
    #[serde(flatten)]
    net: NetConf,
    #[serde(rename = "vethPrefix", default)]
    veth_prefix: Option<String>,
    #[serde(default)]
    mtu: Option<String>,
    #[serde(rename = "podSGEnforcingMode", default)]
    sg_mode: Option<String>,
}

#[test]
fn typed_plugin_conf_with_flattened_netconf() {
    let conf: AwsConf = parse_plugin_conf(AWS_CONF.as_bytes()).expect("typed");
    assert_eq!(conf.veth_prefix.as_deref(), Some("eni"));
    assert_eq!(conf.mtu.as_deref(), Some("9001"));
    assert_eq!(conf.sg_mode.as_deref(), Some("strict"));
    assert_eq!(conf.net.name, "aws-cni");
    assert!(conf.net.runtime_config.is_some());
}

#[test]
fn typed_plugin_conf_shape_errors_are_code_7() {
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)] // only the decode outcome matters
    struct Strict {
        #[serde(flatten)]
        net: NetConf,
        mtu: u32,
    }
    // "mtu" is a string in the config, a number in this type.
    let err = parse_plugin_conf::<Strict>(AWS_CONF.as_bytes()).expect_err("wrong type");
    assert_eq!(err.code, codes::INVALID_CONFIG);
    assert!(!err.details.is_empty());
}

fn gc_conf(keys: serde_json::Value) -> Vec<u8> {
    let mut base = json!({"cniVersion": "1.1.0", "name": "aws-cni", "type": "aws-cni"});
    for (k, v) in keys.as_object().expect("object").clone() {
        base[k] = v;
    }
    serde_json::to_vec(&base).expect("serialize")
}

fn att(id: &str, ifname: &str) -> Attachment {
    Attachment {
        container_id: id.into(),
        ifname: ifname.into(),
    }
}

#[test]
fn valid_attachments_new_key() {
    let conf = NetConf::parse(&gc_conf(json!({
        "cni.dev/valid-attachments": [
            {"containerID": "abc", "ifname": "eth0"},
            {"containerID": "def", "ifname": "eth0"}
        ]
    })))
    .expect("parse");
    assert_eq!(
        conf.valid_attachments,
        Some(vec![att("abc", "eth0"), att("def", "eth0")])
    );
}

#[test]
fn valid_attachments_old_key_only() {
    let conf = NetConf::parse(&gc_conf(json!({
        "cni.dev/attachments": [{"containerID": "old", "ifname": "net1"}]
    })))
    .expect("parse");
    assert_eq!(conf.valid_attachments, Some(vec![att("old", "net1")]));
}

/// libcni sends both names at once; a naive serde alias would reject that as a duplicate.
#[test]
fn valid_attachments_both_keys_prefers_new() {
    let bytes = gc_conf(json!({
        "cni.dev/attachments": [{"containerID": "legacy", "ifname": "eth0"}],
        "cni.dev/valid-attachments": [{"containerID": "current", "ifname": "eth0"}]
    }));
    let conf = NetConf::parse(&bytes).expect("parse");
    assert_eq!(conf.valid_attachments, Some(vec![att("current", "eth0")]));
    // Same through a flattened plugin type.
    let typed: AwsConf = parse_plugin_conf(&bytes).expect("typed");
    assert_eq!(
        typed.net.valid_attachments,
        Some(vec![att("current", "eth0")])
    );
}

#[test]
fn empty_valid_attachments_is_not_absent() {
    let conf = NetConf::parse(&gc_conf(json!({"cni.dev/valid-attachments": []}))).expect("parse");
    assert_eq!(conf.valid_attachments, Some(vec![]));
}

#[test]
fn attachment_without_ifname_is_code_7() {
    let err = NetConf::parse(&gc_conf(json!({
        "cni.dev/valid-attachments": [{"containerID": "abc"}]
    })))
    .expect_err("no ifname");
    assert_eq!(err.code, codes::INVALID_CONFIG);
}

#[test]
fn disable_flags() {
    let conf =
        NetConf::parse(&gc_conf(json!({"disableCheck": true, "disableGC": true}))).expect("parse");
    assert!(conf.disable_check);
    assert!(conf.disable_gc);
    let err = NetConf::parse(&gc_conf(json!({"disableCheck": "yes"}))).expect_err("bad type");
    assert_eq!(err.code, codes::INVALID_CONFIG);
}

#[test]
fn bad_json_is_code_6() {
    for bad in [
        &b"{"[..],
        b"",
        b"{\"name\": \"x\",}",
        b"not json",
        b"\xff\xfe",
    ] {
        let err = NetConf::parse(bad).expect_err("bad json");
        assert_eq!(
            err.code,
            codes::DECODING,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn not_an_object_is_code_7() {
    let err = NetConf::parse(b"[1,2]").expect_err("array");
    assert_eq!(err.code, codes::INVALID_CONFIG);
}

#[test]
fn missing_name_or_type_is_code_7() {
    let cases = [
        (json!({"cniVersion": "1.0.0", "type": "aws-cni"}), "name"),
        (
            json!({"cniVersion": "1.0.0", "name": "", "type": "aws-cni"}),
            "name",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": 5, "type": "aws-cni"}),
            "name",
        ),
        (json!({"cniVersion": "1.0.0", "name": "aws-cni"}), "type"),
        (
            json!({"cniVersion": "1.0.0", "name": "aws-cni", "type": null}),
            "type",
        ),
    ];
    for (c, what) in cases {
        let err = NetConf::parse(&serde_json::to_vec(&c).expect("ser")).expect_err(what);
        assert_eq!(err.code, codes::INVALID_CONFIG, "{c}");
        assert!(err.msg.contains(what), "{c}: {err:?}");
    }
}

#[test]
fn unsupported_version_is_code_1() {
    for v in ["0.2.0", "0.1.0", "2.0.0", "1.0", "latest"] {
        let c = json!({"cniVersion": v, "name": "n", "type": "t"});
        let err = NetConf::parse(&serde_json::to_vec(&c).expect("ser")).expect_err(v);
        assert_eq!(err.code, codes::INCOMPATIBLE_VERSION, "{v}");
        assert!(err.details.contains(v), "{v}: {err:?}");
    }
    // No version at all means 0.1.0.
    let err = NetConf::parse(br#"{"name": "n", "type": "t"}"#).expect_err("no version");
    assert_eq!(err.code, codes::INCOMPATIBLE_VERSION);
}

#[test]
fn cni_versions_list_without_cni_version() {
    let conf = NetConf::parse(
        br#"{"cniVersions": ["0.4.0", "1.0.0", "1.1.0", "1.2.0"], "name": "n", "type": "t"}"#,
    )
    .expect("picks from list");
    assert_eq!(conf.cni_version, "1.1.0");
    assert_eq!(conf.cni_versions.as_ref().map(Vec::len), Some(4));

    let err = NetConf::parse(br#"{"cniVersions": ["0.2.0", "9.0.0"], "name": "n", "type": "t"}"#)
        .expect_err("nothing shared");
    assert_eq!(err.code, codes::INCOMPATIBLE_VERSION);

    let err = NetConf::parse(br#"{"cniVersions": "1.0.0", "name": "n", "type": "t"}"#)
        .expect_err("not a list");
    assert_eq!(err.code, codes::INVALID_CONFIG);
}

#[test]
fn cni_version_wins_over_cni_versions() {
    // The runtime already chose; answer in what it chose even if the list has something newer.
    let conf = NetConf::parse(
        br#"{"cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0"], "name": "n", "type": "t"}"#,
    )
    .expect("parse");
    assert_eq!(negotiate_version(&conf).as_deref(), Ok("1.0.0"));
}

#[test]
fn negotiate_rejects_a_hand_built_bad_version() {
    let mut conf = NetConf::parse(&gc_conf(json!({}))).expect("parse");
    conf.cni_version = "0.2.0".into();
    assert_eq!(
        negotiate_version(&conf).map_err(|e| e.code),
        Err(codes::INCOMPATIBLE_VERSION)
    );
}

fn with_prev(version: &str, prev: serde_json::Value) -> NetConf {
    let c =
        json!({"cniVersion": version, "name": "aws-cni", "type": "aws-cni", "prevResult": prev});
    NetConf::parse(&serde_json::to_vec(&c).expect("ser")).expect("parse")
}

#[test]
fn prev_result_from_each_version() {
    let want_ip = IpConfig {
        address: "10.0.0.5/32".parse().expect("cidr"),
        gateway: Some("169.254.1.1".parse().expect("ip")),
        interface: Some(1),
    };
    let shapes = [
        (
            "0.3.1",
            json!({"cniVersion": "0.3.1",
                   "interfaces": [{"name": "enia"}, {"name": "eth0", "sandbox": "/proc/1/ns/net"}],
                   "ips": [{"version": "4", "address": "10.0.0.5/32", "gateway": "169.254.1.1", "interface": 1}]}),
        ),
        (
            "0.4.0",
            json!({"cniVersion": "0.4.0",
                   "interfaces": [{"name": "enia"}, {"name": "eth0", "sandbox": "/proc/1/ns/net"}],
                   "ips": [{"version": "4", "address": "10.0.0.5/32", "gateway": "169.254.1.1", "interface": 1}]}),
        ),
        (
            "1.0.0",
            json!({"cniVersion": "1.0.0",
                   "interfaces": [{"name": "enia"}, {"name": "eth0", "sandbox": "/proc/1/ns/net"}],
                   "ips": [{"address": "10.0.0.5/32", "gateway": "169.254.1.1", "interface": 1}]}),
        ),
        (
            "1.1.0",
            json!({"cniVersion": "1.1.0",
                   "interfaces": [{"name": "enia", "mtu": 9001},
                                  {"name": "eth0", "sandbox": "/proc/1/ns/net", "mtu": 9001}],
                   "ips": [{"address": "10.0.0.5/32", "gateway": "169.254.1.1", "interface": 1}],
                   "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1", "table": 254}]}),
        ),
    ];
    for (v, prev) in shapes {
        let conf = with_prev(v, prev);
        let r: CniResult = conf.prev_result().expect(v).expect("present");
        assert_eq!(r.ips, vec![want_ip.clone()], "{v}");
        assert_eq!(
            r.interfaces[1].sandbox.as_deref(),
            Some("/proc/1/ns/net"),
            "{v}"
        );
        if v == "1.1.0" {
            assert_eq!(r.interfaces[0].mtu, Some(9001));
            assert_eq!(r.routes[0].table, Some(254));
        }
    }
}

#[test]
fn prev_result_absent_null_or_bad() {
    let conf = NetConf::parse(&gc_conf(json!({}))).expect("parse");
    assert_eq!(conf.prev_result(), Ok(None));
    let conf = with_prev("1.0.0", serde_json::Value::Null);
    assert_eq!(conf.prev_result(), Ok(None));
    let conf = with_prev("1.0.0", json!({"ips": [{"address": "bogus"}]}));
    assert_eq!(conf.prev_result().map_err(|e| e.code), Err(codes::DECODING));
}

#[test]
fn serializes_back_with_new_attachment_key_only() {
    let conf = NetConf::parse(&gc_conf(json!({
        "cni.dev/attachments": [{"containerID": "old", "ifname": "net1"}]
    })))
    .expect("parse");
    let v = serde_json::to_value(&conf).expect("ser");
    assert_eq!(
        v,
        json!({
            "cniVersion": "1.1.0", "name": "aws-cni", "type": "aws-cni",
            "cni.dev/valid-attachments": [{"containerID": "old", "ifname": "net1"}]
        })
    );
    let again = NetConf::parse(&serde_json::to_vec(&v).expect("ser")).expect("reparse");
    assert_eq!(again, conf);
}
