//! Result encoding per version and decoding of every supported shape. Expected JSON is written
//! out from the spec's examples, not produced by the code under test.

use std::net::IpAddr;

use cni_types::{codes, CniResult, Dns, Interface, IpConfig, Route};
use serde_json::{json, Value};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

fn net(s: &str) -> cni_types::ipnetwork::IpNetwork {
    s.parse().expect("test CIDR")
}

/// The bridge result from the spec's 0.4.0 chaining example.
fn spec_example() -> CniResult {
    CniResult {
        interfaces: vec![
            Interface {
                mac: Some("00:11:22:33:44:55".into()),
                ..Interface::new("cni0")
            },
            Interface {
                mac: Some("55:44:33:22:11:11".into()),
                ..Interface::new("veth3243")
            },
            Interface {
                mac: Some("99:88:77:66:55:44".into()),
                sandbox: Some("/var/run/netns/blue".into()),
                ..Interface::new("eth0")
            },
        ],
        ips: vec![IpConfig {
            address: net("10.0.0.5/32"),
            gateway: None,
            interface: Some(2),
        }],
        routes: vec![],
        dns: Dns {
            nameservers: vec!["10.1.0.1".into()],
            ..Dns::default()
        },
    }
}

/// The same document as the spec prints it for 0.4.0 (plus `cniVersion`).
fn spec_example_json_040() -> Value {
    json!({
        "cniVersion": "0.4.0",
        "ips": [
            {"version": "4", "address": "10.0.0.5/32", "interface": 2}
        ],
        "interfaces": [
            {"name": "cni0", "mac": "00:11:22:33:44:55"},
            {"name": "veth3243", "mac": "55:44:33:22:11:11"},
            {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
        ],
        "dns": {"nameservers": ["10.1.0.1"]}
    })
}

#[test]
fn v040_matches_spec_example_exactly() {
    let got = spec_example().to_json("0.4.0").expect("0.4.0");
    assert_eq!(got, spec_example_json_040());
}

#[test]
fn v040_spec_example_decodes_to_the_same_value() {
    let decoded = CniResult::from_json(&spec_example_json_040()).expect("decode");
    assert_eq!(decoded, spec_example());
}

#[test]
fn v03x_carry_version_like_040() {
    for v in ["0.3.0", "0.3.1"] {
        let mut want = spec_example_json_040();
        want["cniVersion"] = json!(v);
        assert_eq!(spec_example().to_json(v).expect(v), want, "{v}");
    }
}

#[test]
fn v100_drops_ip_version() {
    let got = spec_example().to_json("1.0.0").expect("1.0.0");
    assert_eq!(
        got,
        json!({
            "cniVersion": "1.0.0",
            "ips": [{"address": "10.0.0.5/32", "interface": 2}],
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "veth3243", "mac": "55:44:33:22:11:11"},
                {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
            ],
            "dns": {"nameservers": ["10.1.0.1"]}
        })
    );
}

/// A result using every 1.1.0 field, v4 and v6, gateway and routes.
fn rich() -> CniResult {
    CniResult {
        interfaces: vec![
            Interface {
                mac: Some("0a:58:0a:00:00:01".into()),
                mtu: Some(9001),
                ..Interface::new("enia1b2c3d4e5f")
            },
            Interface {
                mac: Some("0a:58:0a:00:00:02".into()),
                sandbox: Some("/var/run/netns/cni-1".into()),
                mtu: Some(9001),
                socket_path: Some("/run/vhost/sock0".into()),
                pci_id: Some("0000:00:06.0".into()),
                ..Interface::new("eth0")
            },
        ],
        ips: vec![
            IpConfig {
                address: net("10.0.12.34/32"),
                gateway: Some(ip("169.254.1.1")),
                interface: Some(1),
            },
            IpConfig {
                address: net("2600:1f14::5/128"),
                gateway: Some(ip("fe80::1")),
                interface: Some(1),
            },
        ],
        routes: vec![
            Route {
                dst: "169.254.1.1/32".into(),
                scope: Some(253),
                ..Route::default()
            },
            Route {
                dst: "0.0.0.0/0".into(),
                gw: Some(ip("169.254.1.1")),
                mtu: Some(9001),
                advmss: Some(8961),
                priority: Some(100),
                table: Some(2),
                scope: Some(0),
            },
        ],
        dns: Dns {
            nameservers: vec!["10.100.0.10".into()],
            domain: Some("cluster.local".into()),
            search: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        },
    }
}

#[test]
fn v110_writes_new_fields() {
    let got = rich().to_json("1.1.0").expect("1.1.0");
    assert_eq!(
        got,
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": "enia1b2c3d4e5f", "mac": "0a:58:0a:00:00:01", "mtu": 9001},
                {"name": "eth0", "mac": "0a:58:0a:00:00:02", "sandbox": "/var/run/netns/cni-1",
                 "mtu": 9001, "socketPath": "/run/vhost/sock0", "pciID": "0000:00:06.0"}
            ],
            "ips": [
                {"address": "10.0.12.34/32", "gateway": "169.254.1.1", "interface": 1},
                {"address": "2600:1f14::5/128", "gateway": "fe80::1", "interface": 1}
            ],
            "routes": [
                {"dst": "169.254.1.1/32", "scope": 253},
                {"dst": "0.0.0.0/0", "gw": "169.254.1.1", "mtu": 9001, "advmss": 8961,
                 "priority": 100, "table": 2, "scope": 0}
            ],
            "dns": {
                "nameservers": ["10.100.0.10"],
                "domain": "cluster.local",
                "search": ["default.svc.cluster.local", "svc.cluster.local"],
                "options": ["ndots:5"]
            }
        })
    );
}

#[test]
fn older_versions_drop_110_fields() {
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        let got = rich().to_json(v).expect(v);
        for i in got["interfaces"].as_array().expect("interfaces") {
            for k in ["mtu", "socketPath", "pciID"] {
                assert!(i.get(k).is_none(), "{v}: interface has {k}: {i}");
            }
        }
        let routes = got["routes"].as_array().expect("routes");
        assert_eq!(routes[0], json!({"dst": "169.254.1.1/32"}), "{v}");
        assert_eq!(
            routes[1],
            json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"}),
            "{v}"
        );
    }
    let ips = rich().to_json("0.4.0").expect("0.4.0")["ips"].clone();
    assert_eq!(ips[0]["version"], "4");
    assert_eq!(ips[1]["version"], "6");
}

#[test]
fn round_trip_every_version() {
    let mut without_110 = rich();
    for i in &mut without_110.interfaces {
        i.mtu = None;
        i.socket_path = None;
        i.pci_id = None;
    }
    for r in &mut without_110.routes {
        r.mtu = None;
        r.advmss = None;
        r.priority = None;
        r.table = None;
        r.scope = None;
    }
    for v in cni_types::SUPPORTED_VERSIONS {
        let back = CniResult::from_json(&rich().to_json(v).expect(v)).expect(v);
        let want = if *v == "1.1.0" {
            rich()
        } else {
            without_110.clone()
        };
        assert_eq!(back, want, "{v}");
    }
}

#[test]
fn empty_result_has_only_version_and_ips() {
    let got = CniResult::default().to_json("1.0.0").expect("1.0.0");
    assert_eq!(got, json!({"cniVersion": "1.0.0", "ips": []}));
}

#[test]
fn unsupported_output_version_is_code_1() {
    for v in ["0.2.0", "0.1.0", "2.0.0", "1.0", ""] {
        let err = spec_example().to_json(v).expect_err(v);
        assert_eq!(err.code, codes::INCOMPATIBLE_VERSION, "{v}");
    }
}

/// The AWS VPC CNI parks a route-table ID in the container interface's `mac` and a device number
/// in the dummy interface's `sandbox`; DEL reads them back from `prevResult`.
#[test]
fn non_mac_strings_in_mac_and_sandbox_survive() {
    let prev = json!({
        "cniVersion": "0.4.0",
        "interfaces": [
            {"name": "eni0a1b2c3d4e5"},
            {"name": "eth0", "mac": "2", "sandbox": "/var/run/netns/cni-9"},
            {"name": "dummy0a1b2c3d4e5", "mac": "0", "sandbox": "1"}
        ],
        "ips": [{"version": "4", "address": "10.0.3.7/32", "interface": 1}]
    });
    let r = CniResult::from_json(&prev).expect("decode");
    assert_eq!(r.interfaces[1].mac.as_deref(), Some("2"));
    assert_eq!(r.interfaces[2].mac.as_deref(), Some("0"));
    assert_eq!(r.interfaces[2].sandbox.as_deref(), Some("1"));
    assert_eq!(r.to_json("0.4.0").expect("encode"), prev);
}

#[test]
fn decodes_100_shape_without_version() {
    let r = CniResult::from_json(&json!({
        "cniVersion": "1.0.0",
        "ips": [{"address": "fd00::ac:5/118", "gateway": "fd00::ac:1"}],
        "routes": [{"dst": "::/0"}]
    }))
    .expect("1.0.0");
    assert_eq!(r.ips[0].address, net("fd00::ac:5/118"));
    assert_eq!(r.ips[0].address.ip(), ip("fd00::ac:5"), "host bits kept");
    assert_eq!(r.ips[0].gateway, Some(ip("fd00::ac:1")));
    assert_eq!(r.ips[0].interface, None);
    assert_eq!(r.routes[0].dst, "::/0");
    assert!(r.interfaces.is_empty());
    assert!(r.dns.is_empty());
}

#[test]
fn decodes_110_fields_and_ignores_unknown_keys() {
    let r = CniResult::from_json(&json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "mtu": 1500, "pciID": "0000:3b:00.1", "future": true}],
        "ips": [{"address": "10.1.0.9/24", "interface": 0, "extra": {}}],
        "routes": [{"dst": "10.2.0.0/16", "gw": "10.1.0.1", "table": 100, "scope": 0}],
        "somethingNew": [1, 2, 3]
    }))
    .expect("1.1.0");
    assert_eq!(r.interfaces[0].mtu, Some(1500));
    assert_eq!(r.interfaces[0].pci_id.as_deref(), Some("0000:3b:00.1"));
    assert_eq!(r.routes[0].table, Some(100));
    assert_eq!(r.routes[0].scope, Some(0));
    assert_eq!(r.routes[0].gw, Some(ip("10.1.0.1")));
}

#[test]
fn empty_and_null_mean_absent() {
    let r = CniResult::from_json(&json!({
        "interfaces": null,
        "ips": [{"address": "10.0.0.2/32", "gateway": ""}],
        "routes": [{"dst": "0.0.0.0/0", "gw": ""}],
        "dns": {"domain": "", "nameservers": null}
    }))
    .expect("decode");
    assert_eq!(r.ips[0].gateway, None);
    assert_eq!(r.routes[0].gw, None);
    assert!(r.dns.is_empty());
    assert!(r.interfaces.is_empty());
}

#[test]
fn bad_values_are_code_6() {
    let cases = [
        json!({"ips": [{"address": "10.0.0.5"}]}),
        json!({"ips": [{"address": "10.0.0.5/33"}]}),
        json!({"ips": [{"address": "10.0.0.5/255.255.255.0"}]}),
        json!({"ips": [{"address": "not-an-ip/24"}]}),
        json!({"ips": [{"address": "10.0.0.5/32", "gateway": "10.0.0"}]}),
        json!({"ips": [{"version": "6", "address": "10.0.0.5/32"}]}),
        json!({"ips": [{"version": "5", "address": "10.0.0.5/32"}]}),
        json!({"ips": [{"address": "10.0.0.5/32", "interface": -1}]}),
        json!({"ips": [{"address": 17}]}),
        json!({"routes": [{"dst": "default"}]}),
        json!({"routes": [{"gw": "10.0.0.1"}]}),
        json!({"interfaces": [{"mac": "00:11:22:33:44:55"}]}),
        json!({"cniVersion": "one", "ips": []}),
        json!([1, 2]),
    ];
    for c in cases {
        let err = CniResult::from_json(&c).expect_err(&c.to_string());
        assert_eq!(err.code, codes::DECODING, "{c}: {err:?}");
    }
}

#[test]
fn legacy_results_are_code_1() {
    for c in [
        json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.5/24"}}),
        json!({"ip4": {"ip": "10.0.0.5/24"}}),
        json!({"cniVersion": "0.1.0", "ips": []}),
    ] {
        let err = CniResult::from_json(&c).expect_err(&c.to_string());
        assert_eq!(err.code, codes::INCOMPATIBLE_VERSION, "{c}");
    }
}

#[test]
fn route_helpers() {
    let r = Route::new(net("0.0.0.0/0"), Some(ip("169.254.1.1")));
    assert_eq!(r.dst, "0.0.0.0/0");
    assert_eq!(r.dst_network().expect("cidr"), net("0.0.0.0/0"));
    let bad = Route {
        dst: "nope".into(),
        ..Route::default()
    };
    assert_eq!(bad.dst_network().map_err(|e| e.code), Err(codes::DECODING));
}
