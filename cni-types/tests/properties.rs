//! Property tests: the parsers that see runtime input never panic, and what they accept round-trips.

use std::collections::BTreeMap;

use cni_types::{codes, CniArgs, CniEnv, CniResult, NetConf};
use proptest::prelude::*;

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        ".{0,12}".prop_map(serde_json::Value::String),
        prop_oneof![Just("1.0.0"), Just("0.4.0"), Just("1.1.0"), Just("aws-cni")]
            .prop_map(|s| serde_json::Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("cniVersion".to_string()),
                    Just("name".to_string()),
                    Just("type".to_string()),
                    Just("prevResult".to_string()),
                    Just("cniVersions".to_string()),
                    Just("cni.dev/valid-attachments".to_string()),
                    Just("runtimeConfig".to_string()),
                    "[a-z]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn netconf_parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(e) = NetConf::parse(&bytes) {
            prop_assert!([codes::INCOMPATIBLE_VERSION, codes::DECODING, codes::INVALID_CONFIG].contains(&e.code),
                "unexpected code {}", e.code);
        }
    }

    #[test]
    fn netconf_parse_never_panics_on_json(v in json_value()) {
        let bytes = serde_json::to_vec(&v).unwrap_or_default();
        match NetConf::parse(&bytes) {
            Ok(conf) => {
                // Whatever was accepted has a name and type, and its prevResult (if any) parses or errs cleanly.
                prop_assert!(!conf.name.is_empty());
                prop_assert!(!conf.plugin_type.is_empty());
                let _ = conf.prev_result();
            }
            Err(e) => prop_assert!([1, 6, 7].contains(&e.code), "code {}", e.code),
        }
    }

    #[test]
    fn prev_result_parse_never_panics(v in json_value()) {
        let _ = CniResult::from_json(&v);
    }

    #[test]
    fn cni_args_parse_never_panics(s in ".{0,200}") {
        let _ = CniArgs::parse(&s);
    }

    #[test]
    fn cni_args_round_trip(
        ns in "[a-z0-9-]{1,20}",
        name in "[a-z0-9.-]{1,30}",
        infra in "[a-f0-9]{1,64}",
        extra in prop::collection::btree_map("X[A-Za-z0-9_]{0,8}", "[A-Za-z0-9=._/-]{0,16}", 0..4),
    ) {
        let mut parts = vec![
            "IgnoreUnknown=1".to_string(),
            format!("K8S_POD_NAMESPACE={ns}"),
            format!("K8S_POD_NAME={name}"),
            format!("K8S_POD_INFRA_CONTAINER_ID={infra}"),
        ];
        parts.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
        let args = CniArgs::parse(&parts.join(";")).map_err(|e| TestCaseError::fail(e.msg))?;
        prop_assert_eq!(args.pod_namespace.as_deref(), Some(ns.as_str()));
        prop_assert_eq!(args.pod_name.as_deref(), Some(name.as_str()));
        prop_assert_eq!(args.pod_infra_container_id.as_deref(), Some(infra.as_str()));
        let non_empty: BTreeMap<String, String> = extra.into_iter().collect();
        for (k, v) in &non_empty {
            prop_assert_eq!(args.other.get(k), Some(v));
        }
    }

    #[test]
    fn cni_env_never_panics(
        cmd in prop_oneof![
            prop::sample::select(vec!["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"]).prop_map(String::from),
            ".{0,8}",
        ],
        cid in ".{0,70}",
        netns in ".{0,40}",
        ifname in ".{0,20}",
        args in ".{0,60}",
    ) {
        let vars: BTreeMap<&str, String> = [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", ifname),
            ("CNI_ARGS", args),
        ]
        .into_iter()
        .collect();
        if let Err(e) = CniEnv::from_lookup(|k| vars.get(k).cloned()) {
            prop_assert_eq!(e.code, codes::INVALID_ENV);
        }
    }
}
