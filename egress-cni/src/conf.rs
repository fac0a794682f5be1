//! `egress-cni`'s entry in `10-aws.conflist`, with the anchor's keys:
//!
//! ```json
//! {"name": "egress-cni", "type": "egress-cni", "mtu": "9001", "enabled": "true", "randomizeSNAT": "prng",
//!  "nodeIP": "10.0.0.10",
//!  "ipam": {"type": "host-local", "ranges": [[{"subnet": "169.254.172.0/22"}]], "routes": [{"dst": "0.0.0.0/0"}],
//!           "dataDir": "/run/cni/v6pd/egress-v4-ipam"},
//!  "pluginLogFile": "/var/log/aws-routed-eni/egress-v4-plugin.log", "pluginLogLevel": "DEBUG"}
//! ```
//!
//! The family of `nodeIP` picks the direction, as in the anchor: an IPv4 node address gives IPv6 pods an IPv4 way
//! out (`v4if0`, chains `E4-`), an IPv6 one gives IPv4 pods an IPv6 way out (`v6if0`, chains `E6-`). The `ipam`
//! section keeps the anchor's host-local shape; the addresses are handed out by this plugin's own allocator
//! ([`crate::alloc`]) in host-local's on-disk layout, so no IPAM binary is executed.

use std::net::IpAddr;
use std::path::PathBuf;

use cni_types::{CniError, NetConf};
use ipnetwork::IpNetwork;
use serde::Deserialize;

/// The anchor's egress interface names.
pub const V4_IFNAME: &str = "v4if0";
pub const V6_IFNAME: &str = "v6if0";
/// The anchor's default ranges: IPv6 clusters' IPv4 egress, IPv4 clusters' IPv6 egress.
pub const DEFAULT_V4_RANGE: &str = "169.254.172.0/22";
pub const DEFAULT_V6_RANGE: &str = "fd00::ac:00/118";
/// The anchor's default state directories (host-local `dataDir`).
pub const DEFAULT_V4_DATA_DIR: &str = "/run/cni/v6pd/egress-v4-ipam";
pub const DEFAULT_V6_DATA_DIR: &str = "/run/cni/v4pd/egress-v6-ipam";
/// The anchor's default log files.
pub const DEFAULT_V4_LOG: &str = "/var/log/aws-routed-eni/egress-v4-plugin.log";
pub const DEFAULT_V6_LOG: &str = "/var/log/aws-routed-eni/egress-v6-plugin.log";

#[derive(Debug, Clone, Deserialize)]
struct Wire {
    #[serde(default)]
    mtu: Option<serde_json::Value>,
    #[serde(default)]
    enabled: Option<serde_json::Value>,
    #[serde(rename = "randomizeSNAT", default)]
    randomize_snat: Option<String>,
    #[serde(rename = "nodeIP", default)]
    node_ip: Option<String>,
    #[serde(default)]
    ipam: Option<Ipam>,
    #[serde(rename = "pluginLogFile", default)]
    plugin_log_file: Option<String>,
    #[serde(rename = "pluginLogLevel", default)]
    plugin_log_level: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Ipam {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    ranges: Vec<Vec<RangeWire>>,
    #[serde(rename = "dataDir", default)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
struct RangeWire {
    subnet: String,
}

/// How the SNAT rule spreads source ports (`AWS_VPC_K8S_CNI_RANDOMIZESNAT`, passed as `randomizeSNAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Randomize {
    /// `prng` (the default): `--random-fully`, falling back to `--random` where unsupported.
    Fully,
    /// `hashrandom`: `--random`.
    Hash,
    /// `none`.
    Off,
}

/// Which way out the plugin builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// IPv6 pods get IPv4 (`v4if0`, `E4-` chains, iptables).
    V4Egress,
    /// IPv4 pods get IPv6 (`v6if0`, `E6-` chains, ip6tables).
    V6Egress,
}

/// The validated entry.
#[derive(Debug, Clone)]
pub struct EgressConf {
    pub net: NetConf,
    /// `enabled: "true"`; anything else passes prevResult through (ADD) or does nothing (DEL), as the anchor.
    pub enabled: bool,
    pub mtu: u32,
    pub randomize: Randomize,
    /// The SNAT target: the node's primary IPv4 (IPv6 clusters) or IPv6 (IPv4 clusters with v6 egress).
    pub node_ip: Option<IpAddr>,
    pub direction: Direction,
    pub subnet: IpNetwork,
    pub data_dir: PathBuf,
    pub log_file: String,
    pub log_level: String,
}

impl EgressConf {
    /// Parses and validates stdin; every refusal names the key.
    pub fn parse(bytes: &[u8]) -> Result<EgressConf, CniError> {
        let net = NetConf::parse(bytes)?;
        let w: Wire = cni_types::parse_plugin_conf(bytes)?;
        let enabled = match &w.enabled {
            Some(serde_json::Value::String(s)) => s.eq_ignore_ascii_case("true"),
            Some(serde_json::Value::Bool(b)) => *b,
            _ => false,
        };
        let mtu = match &w.mtu {
            None => 9001,
            Some(serde_json::Value::String(s)) => s
                .trim()
                .parse()
                .map_err(|_| CniError::invalid_config(format!("mtu {s:?} is not a number")))?,
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| CniError::invalid_config(format!("mtu {n} is not a valid MTU")))?,
            Some(v) => return Err(CniError::invalid_config(format!("mtu {v} is not a number"))),
        };
        if !(576..=65535).contains(&mtu) {
            return Err(CniError::invalid_config(format!(
                "mtu {mtu} must be between 576 and 65535"
            )));
        }
        let randomize = match w.randomize_snat.as_deref().map(str::trim) {
            None | Some("") | Some("prng") => Randomize::Fully,
            Some("hashrandom") => Randomize::Hash,
            Some("none") => Randomize::Off,
            Some(other) => {
                return Err(CniError::invalid_config(format!(
                    "randomizeSNAT {other:?} must be prng, hashrandom or none"
                )))
            }
        };
        let node_ip = match w.node_ip.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
                CniError::invalid_config(format!("nodeIP {s:?} is not an IP address"))
            })?),
        };
        if enabled && node_ip.is_none() {
            return Err(CniError::invalid_config(
                "nodeIP is required when enabled is \"true\" (the SNAT target: the node's primary IPv4, or its IPv6 for IPv6 egress)",
            ));
        }
        let direction = match node_ip {
            Some(IpAddr::V6(_)) => Direction::V6Egress,
            _ => Direction::V4Egress,
        };
        if let Some(IpAddr::V6(ip)) = node_ip {
            if ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || (ip.segments()[0] & 0xffc0) == 0xfe80
            {
                return Err(CniError::invalid_config(format!(
                    "nodeIP {ip} is not a global unicast IPv6 address, which IPv6 egress needs"
                )));
            }
        }
        let ipam = w.ipam.clone();
        if let Some(kind) = ipam.as_ref().and_then(|i| i.kind.as_deref()) {
            if kind != "host-local" {
                return Err(CniError::invalid_config(format!(
                    "ipam.type {kind:?}: egress-cni allocates host-locally itself and understands only \"host-local\""
                )));
            }
        }
        let subnet_text = ipam
            .as_ref()
            .and_then(|i| i.ranges.first())
            .and_then(|r| r.first())
            .map(|r| r.subnet.clone())
            .unwrap_or_else(|| match direction {
                Direction::V4Egress => DEFAULT_V4_RANGE.into(),
                Direction::V6Egress => DEFAULT_V6_RANGE.into(),
            });
        let subnet: IpNetwork = subnet_text.parse().map_err(|_| {
            CniError::invalid_config(format!(
                "ipam.ranges[0][0].subnet {subnet_text:?} is not a CIDR"
            ))
        })?;
        let family_ok = matches!(
            (direction, subnet),
            (Direction::V4Egress, IpNetwork::V4(_)) | (Direction::V6Egress, IpNetwork::V6(_))
        );
        if !family_ok {
            return Err(CniError::invalid_config(format!(
                "ipam.ranges[0][0].subnet {subnet} is not in the family of nodeIP (an IPv4 nodeIP needs an IPv4 range, an IPv6 one an IPv6 range)"
            )));
        }
        let host_bits = match subnet {
            IpNetwork::V4(n) => 32 - u32::from(n.prefix()),
            IpNetwork::V6(n) => 128 - u32::from(n.prefix()),
        };
        if !(2..=24).contains(&host_bits) {
            return Err(CniError::invalid_config(format!(
                "ipam.ranges[0][0].subnet {subnet} must leave 2 to 24 host bits"
            )));
        }
        let data_dir = ipam.and_then(|i| i.data_dir).unwrap_or_else(|| {
            PathBuf::from(match direction {
                Direction::V4Egress => DEFAULT_V4_DATA_DIR,
                Direction::V6Egress => DEFAULT_V6_DATA_DIR,
            })
        });
        let log_file = w
            .plugin_log_file
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                match direction {
                    Direction::V4Egress => DEFAULT_V4_LOG,
                    Direction::V6Egress => DEFAULT_V6_LOG,
                }
                .into()
            });
        let log_level = w.plugin_log_level.unwrap_or_else(|| "info".into());
        Ok(EgressConf {
            net,
            enabled,
            mtu,
            randomize,
            node_ip,
            direction,
            subnet,
            data_dir,
            log_file,
            log_level,
        })
    }

    /// The interface this plugin adds to the pod.
    pub fn ifname(&self) -> &'static str {
        match self.direction {
            Direction::V4Egress => V4_IFNAME,
            Direction::V6Egress => V6_IFNAME,
        }
    }

    /// The anchor's chain prefix.
    pub fn chain_prefix(&self) -> &'static str {
        match self.direction {
            Direction::V4Egress => "E4-",
            Direction::V6Egress => "E6-",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: serde_json::Value) -> Result<EgressConf, CniError> {
        let mut v =
            serde_json::json!({"cniVersion": "0.4.0", "name": "aws-cni", "type": "egress-cni"});
        for (k, x) in extra.as_object().expect("object") {
            v[k] = x.clone();
        }
        EgressConf::parse(v.to_string().as_bytes())
    }

    #[test]
    fn the_anchors_template_parses() {
        let c = conf(serde_json::json!({
            "mtu": "9001", "enabled": "true", "randomizeSNAT": "prng", "nodeIP": "10.0.0.10",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "169.254.172.0/22"}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "/run/cni/v6pd/egress-v4-ipam"},
            "pluginLogFile": "/var/log/aws-routed-eni/egress-v4-plugin.log", "pluginLogLevel": "DEBUG"
        }))
        .expect("parses");
        assert!(c.enabled);
        assert_eq!(c.direction, Direction::V4Egress);
        assert_eq!(c.ifname(), "v4if0");
        assert_eq!(c.chain_prefix(), "E4-");
        assert_eq!(c.subnet.to_string(), "169.254.172.0/22");
        assert_eq!(c.randomize, Randomize::Fully);
        let v6 = conf(
            serde_json::json!({"enabled": "true", "nodeIP": "2001:db8::10",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "fd00::ac:00/118"}]]}}),
        )
        .expect("v6");
        assert_eq!(v6.direction, Direction::V6Egress);
        assert_eq!(v6.ifname(), "v6if0");
        assert_eq!(v6.data_dir, PathBuf::from(DEFAULT_V6_DATA_DIR));
    }

    #[test]
    fn bad_values_are_config_errors_naming_the_key() {
        for (extra, key) in [
            (serde_json::json!({"enabled": "true"}), "nodeIP"),
            (
                serde_json::json!({"enabled": "true", "nodeIP": "nope"}),
                "nodeIP",
            ),
            (
                serde_json::json!({"enabled": "true", "nodeIP": "fe80::1"}),
                "nodeIP",
            ),
            (serde_json::json!({"mtu": "big"}), "mtu"),
            (
                serde_json::json!({"randomizeSNAT": "sometimes"}),
                "randomizeSNAT",
            ),
            (
                serde_json::json!({"enabled": "true", "nodeIP": "10.0.0.1",
                "ipam": {"ranges": [[{"subnet": "fd00::/118"}]]}}),
                "subnet",
            ),
            (serde_json::json!({"ipam": {"type": "dhcp"}}), "ipam.type"),
        ] {
            let e = conf(extra.clone()).expect_err("refused");
            assert_eq!(e.code, 7, "{extra}: {e:?}");
            assert!(e.msg.contains(key), "{extra}: {}", e.msg);
        }
    }

    #[test]
    fn disabled_needs_nothing_else() {
        let c = conf(serde_json::json!({"enabled": "false"})).expect("parses");
        assert!(!c.enabled);
    }
}
