//! The plugin's netconf: the common CNI keys plus the anchor's plugin keys, parsed leniently.

use std::path::PathBuf;

use cni_types::{CniError, NetConf};
use serde::Deserialize;

/// Default log file of the anchor's plugin.
pub const DEFAULT_LOG_FILE: &str = "/var/log/aws-routed-eni/plugin.log";

/// Longest `ipamdTimeoutMs` accepted: 10 minutes (kubelet gives up on a sandbox long before).
pub const MAX_IPAMD_TIMEOUT_MS: u64 = 600_000;
/// The `pluginLogLevel` values accepted (any case).
pub const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// `aws-cni`'s entry in the conflist.
#[derive(Debug, Clone, Deserialize)]
pub struct PluginConf {
    #[serde(flatten)]
    pub net: NetConf,
    /// Prefix of host-side veth names (anchor: at most 4 characters, default "eni").
    #[serde(rename = "vethPrefix", default = "default_prefix")]
    pub veth_prefix: String,
    /// Pod MTU; the anchor writes it as a string.
    #[serde(default)]
    pub mtu: Option<serde_json::Value>,
    /// Where ipamd listens (ours; default the anchor's socket).
    #[serde(rename = "ipamdSocket", default)]
    pub ipamd_socket: Option<PathBuf>,
    /// Deadline of each call to ipamd, in milliseconds (ours).
    #[serde(rename = "ipamdTimeoutMs", default)]
    pub ipamd_timeout_ms: Option<u64>,
    /// Where the network policy agent listens (ours; default the anchor's npa.sock).
    #[serde(rename = "npaSocket", default)]
    pub npa_socket: Option<PathBuf>,
    /// Deadline of `EnforceNpToPod`, in milliseconds (ours; see `netpol`).
    #[serde(rename = "npaTimeoutMs", default)]
    pub npa_timeout_ms: Option<u64>,
    #[serde(rename = "pluginLogFile", default)]
    pub plugin_log_file: Option<String>,
    #[serde(rename = "pluginLogLevel", default)]
    pub plugin_log_level: Option<String>,
    #[serde(rename = "podSGEnforcingMode", default)]
    pub pod_sg_enforcing_mode: Option<String>,
}

fn default_prefix() -> String {
    "eni".into()
}

impl PluginConf {
    /// Parses and validates stdin.
    pub fn parse(bytes: &[u8]) -> Result<PluginConf, CniError> {
        // NetConf::parse does the spec's checks (JSON, name/type, version) with the spec's codes.
        NetConf::parse(bytes)?;
        let conf: PluginConf = cni_types::parse_plugin_conf(bytes)?;
        let p = conf.veth_prefix.as_str();
        if p.is_empty()
            || p.len() > 4
            || ["eth", "lo", "vlan"].contains(&p)
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            || p.bytes().all(|b| b == b'.')
        {
            return Err(CniError::invalid_config(format!(
                "vethPrefix {p:?} must be 1 to 4 of A-Z a-z 0-9 _ . - (not only dots), and not eth, lo or vlan"
            )));
        }
        if let Some(ms) = conf.ipamd_timeout_ms {
            if ms == 0 || ms > MAX_IPAMD_TIMEOUT_MS {
                return Err(CniError::invalid_config(format!(
                    "ipamdTimeoutMs {ms} must be between 1 and {MAX_IPAMD_TIMEOUT_MS}"
                )));
            }
        }
        if let Some(level) = &conf.plugin_log_level {
            if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
                return Err(CniError::invalid_config(format!(
                    "pluginLogLevel {level:?} must be one of trace, debug, info, warn, error (any case)"
                )));
            }
        }
        if let Some(mode) = &conf.pod_sg_enforcing_mode {
            if !mode.is_empty() && mode != "strict" && mode != "standard" {
                return Err(CniError::invalid_config(format!(
                    "podSGEnforcingMode {mode:?} must be strict or standard"
                )));
            }
        }
        conf.pod_mtu()?;
        Ok(conf)
    }

    /// The pod MTU: a number or a numeric string, 576..=9001 (the anchor clamps bad values to 9001; we refuse
    /// them, naming the key, because a silently changed MTU is a hard bug to find).
    pub fn pod_mtu(&self) -> Result<u32, CniError> {
        let mtu = match &self.mtu {
            None | Some(serde_json::Value::Null) => return Ok(9001),
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) if s.is_empty() => return Ok(9001),
            Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
            Some(_) => None,
        };
        match mtu {
            Some(m @ 576..=9001) => Ok(u32::try_from(m).unwrap_or(9001)),
            _ => Err(CniError::invalid_config(format!(
                "mtu {} must be a number between 576 and 9001",
                self.mtu.as_ref().map(|v| v.to_string()).unwrap_or_default()
            ))),
        }
    }

    /// The ipamd socket.
    pub fn socket(&self) -> PathBuf {
        self.ipamd_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(aws_cni_proto::DEFAULT_IPAMD_SOCKET))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_conflist_entry_parses_with_string_mtu() {
        let c = PluginConf::parse(
            br#"{"cniVersion":"0.4.0","name":"aws-cni","type":"aws-cni","vethPrefix":"eni","mtu":"9001",
                 "pluginLogFile":"/var/log/aws-routed-eni/plugin.log","pluginLogLevel":"DEBUG",
                 "podSGEnforcingMode":"strict","capabilities":{"io.kubernetes.cri.pod-annotations":true},
                 "runtimeConfig":{"io.kubernetes.cri.pod-annotations":{}}}"#,
        )
        .expect("anchor conf");
        assert_eq!(c.pod_mtu().expect("mtu"), 9001);
        assert_eq!(c.socket(), PathBuf::from("/var/run/aws-node/ipamd.sock"));
    }

    #[test]
    fn bad_values_are_config_errors_naming_the_key() {
        for (conf, word) in [
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"aws-cni","vethPrefix":"toolong"}"#,
                "vethPrefix",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"aws-cni","mtu":"70000"}"#,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"aws-cni","vethPrefix":".."}"#,
                "vethPrefix",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"aws-cni","vethPrefix":"é"}"#,
                "vethPrefix",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"aws-cni","vethPrefix":"a/b"}"#,
                "vethPrefix",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"aws-cni","ipamdTimeoutMs":1000000000000000}"#,
                "ipamdTimeoutMs",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"aws-cni","pluginLogLevel":"garbage"}"#,
                "pluginLogLevel",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"aws-cni","mtu":"abc"}"#,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"aws-cni","podSGEnforcingMode":"lax"}"#,
                "podSGEnforcingMode",
            ),
        ] {
            let e = PluginConf::parse(conf.as_bytes()).expect_err(conf);
            assert_eq!(e.code, cni_types::codes::INVALID_CONFIG, "{conf}");
            assert!(e.msg.contains(word), "{}", e.msg);
        }
    }

    #[test]
    fn socket_override() {
        let c = PluginConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"aws-cni","ipamdSocket":"/tmp/x.sock","mtu":1500}"#,
        )
        .expect("conf");
        assert_eq!(c.socket(), PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.pod_mtu().expect("mtu"), 1500);
    }
}

#[cfg(test)]
mod props {
    use super::PluginConf;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the runtime sends, parsing either yields a usable config or a CNI error with a config code.
        #[test]
        fn plugin_conf_never_panics(
            prefix in proptest::option::of(".{0,6}"),
            mtu in proptest::option::of(prop_oneof![
                ".{0,6}".prop_map(serde_json::Value::String),
                any::<i64>().prop_map(|n| serde_json::json!(n)),
                any::<bool>().prop_map(serde_json::Value::Bool),
            ]),
            mode in proptest::option::of(".{0,10}"),
        ) {
            let mut v = serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "aws-cni"});
            if let Some(p) = prefix { v["vethPrefix"] = serde_json::json!(p); }
            if let Some(m) = mtu { v["mtu"] = m; }
            if let Some(m) = mode { v["podSGEnforcingMode"] = serde_json::json!(m); }
            match PluginConf::parse(v.to_string().as_bytes()) {
                Ok(c) => {
                    let mtu = c.pod_mtu().map_err(|e| TestCaseError::fail(e.msg))?;
                    prop_assert!((576..=9001).contains(&mtu));
                    prop_assert!((1..=4).contains(&c.veth_prefix.len()));
                }
                Err(e) => prop_assert!([1, 6, 7].contains(&e.code), "code {}", e.code),
            }
        }
    }
}
