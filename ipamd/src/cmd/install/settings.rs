//! The installer's settings: every variable of the table in [`super`], read and validated before anything on
//! the node is touched.

use std::path::PathBuf;

use super::InstallError;
use crate::config::EnvFn;

pub const ENV_HOST_CNI_BIN_PATH: &str = "HOST_CNI_BIN_PATH";
pub const ENV_HOST_CNI_CONFDIR_PATH: &str = "HOST_CNI_CONFDIR_PATH";
pub const ENV_VETH_PREFIX: &str = "AWS_VPC_K8S_CNI_VETHPREFIX";
pub const ENV_POD_MTU: &str = "POD_MTU";
pub const ENV_ENI_MTU: &str = "AWS_VPC_ENI_MTU";
pub const ENV_SG_MODE: &str = "POD_SECURITY_GROUP_ENFORCING_MODE";
pub const ENV_PLUGIN_LOG_FILE: &str = "AWS_VPC_K8S_PLUGIN_LOG_FILE";
pub const ENV_PLUGIN_LOG_LEVEL: &str = "AWS_VPC_K8S_PLUGIN_LOG_LEVEL";
pub const ENV_DISABLE_TCP_EARLY_DEMUX: &str = "DISABLE_TCP_EARLY_DEMUX";
pub const ENV_ENABLE_IPV6: &str = "ENABLE_IPv6";
pub const ENV_ENABLE_V6_EGRESS: &str = "ENABLE_V6_EGRESS";
pub const ENV_ENABLE_BANDWIDTH_PLUGIN: &str = "ENABLE_BANDWIDTH_PLUGIN";
pub const ENV_DISABLE_POD_V6: &str = "DISABLE_POD_V6";
pub const ENV_ENABLE_V4_EGRESS: &str = "ENABLE_V4_EGRESS";
pub const ENV_RANDOMIZE_SNAT: &str = "AWS_VPC_K8S_CNI_RANDOMIZESNAT";
pub const ENV_EGRESS_V4_LOG_FILE: &str = "AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE";
pub const ENV_EGRESS_V6_LOG_FILE: &str = "AWS_VPC_K8S_EGRESS_V6_PLUGIN_LOG_FILE";

pub const DEFAULT_HOST_CNI_BIN_PATH: &str = "/host/opt/cni/bin";
pub const DEFAULT_HOST_CNI_CONFDIR_PATH: &str = "/host/etc/cni/net.d";
pub const DEFAULT_PLUGIN_LOG_FILE: &str = "/var/log/aws-routed-eni/plugin.log";
pub const DEFAULT_EGRESS_V4_LOG_FILE: &str = "/var/log/aws-routed-eni/egress-v4-plugin.log";
pub const DEFAULT_EGRESS_V6_LOG_FILE: &str = "/var/log/aws-routed-eni/egress-v6-plugin.log";

/// Pod security group enforcement (`POD_SECURITY_GROUP_ENFORCING_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SgMode {
    Strict,
    Standard,
}

impl SgMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SgMode::Strict => "strict",
            SgMode::Standard => "standard",
        }
    }
}

/// Everything the installer reads from the environment, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub veth_prefix: String,
    pub pod_mtu: u32,
    pub sg_mode: SgMode,
    pub plugin_log_file: String,
    /// As written in the environment (the plugin reads it case-insensitively).
    pub plugin_log_level: String,
    pub disable_tcp_early_demux: bool,
    pub enable_ipv6: bool,
    pub enable_v6_egress: bool,
    pub bandwidth_plugin: bool,
    pub disable_pod_v6: bool,
    /// `ENABLE_V4_EGRESS` (default true): IPv4 egress for IPv6 pods through `egress-cni` (IPv6 mode only).
    pub enable_v4_egress: bool,
    /// `AWS_VPC_K8S_CNI_RANDOMIZESNAT` as the egress plugin's `randomizeSNAT` (prng, hashrandom or none).
    pub randomize_snat: String,
    /// The egress plugin's log file: `AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE` in IPv6 mode, the V6 one otherwise.
    pub egress_log_file: String,
}

impl Settings {
    /// Whether the conflist chains `egress-cni` (as the anchor's, with `enabled` true): IPv4 egress for the
    /// pods of an IPv6 node (`ENABLE_V4_EGRESS`, default on), or IPv6 egress for the pods of an IPv4 node
    /// (`ENABLE_V6_EGRESS`).
    pub fn egress_enabled(&self) -> bool {
        if self.enable_ipv6 {
            self.enable_v4_egress
        } else {
            self.enable_v6_egress
        }
    }
}

fn env_err(var: &'static str, value: &str, reason: impl Into<String>) -> InstallError {
    InstallError::Env {
        var,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The value of `var`, with empty (or blank) treated as unset, as the anchor does.
fn get_set(get: &dyn Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    get(var).filter(|v| !v.trim().is_empty())
}

/// A boolean variable through the daemon's one parser ([`crate::config::parse_bool`]); unset is false.
fn parse_bool(
    get: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<bool, InstallError> {
    Ok(crate::config::parse_bool(&EnvFn(get), var)?.unwrap_or(false))
}

fn parse_dir(
    get: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
    default: &str,
) -> Result<PathBuf, InstallError> {
    match get_set(get, var) {
        None => Ok(PathBuf::from(default)),
        Some(v) if v.trim().starts_with('/') => Ok(PathBuf::from(v.trim())),
        Some(v) => Err(env_err(var, &v, "expected an absolute path")),
    }
}

fn parse_mtu(var: &'static str, v: &str, min: u32) -> Result<u32, InstallError> {
    match v.trim().parse::<u32>() {
        Ok(m) if (min..=9001).contains(&m) => Ok(m),
        _ => Err(env_err(
            var,
            v,
            format!("expected an MTU between {min} and 9001"),
        )),
    }
}

impl Settings {
    /// Reads and validates every variable of the module docs through `get` (e.g. `|k| std::env::var(k).ok()`).
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Settings, InstallError> {
        let bin_dir = parse_dir(get, ENV_HOST_CNI_BIN_PATH, DEFAULT_HOST_CNI_BIN_PATH)?;
        let conf_dir = parse_dir(
            get,
            ENV_HOST_CNI_CONFDIR_PATH,
            DEFAULT_HOST_CNI_CONFDIR_PATH,
        )?;

        // The one reading of the prefix, shared with ipamd run (recovery, reaper, SNAT rules).
        let veth_prefix = crate::config::env::veth_prefix(get)
            .map_err(|e| env_err(ENV_VETH_PREFIX, &e.value, e.reason))?;

        let enable_ipv6 = parse_bool(get, ENV_ENABLE_IPV6)?;
        let min_mtu = if enable_ipv6 { 1280 } else { 576 };
        let eni_mtu = match get_set(get, ENV_ENI_MTU) {
            None => 9001,
            Some(v) => parse_mtu(ENV_ENI_MTU, &v, min_mtu)?,
        };
        let pod_mtu = match get_set(get, ENV_POD_MTU) {
            None => eni_mtu,
            Some(v) => parse_mtu(ENV_POD_MTU, &v, min_mtu)?,
        };

        let sg_mode = match get_set(get, ENV_SG_MODE) {
            None => SgMode::Strict,
            Some(v) => match v.trim() {
                "strict" => SgMode::Strict,
                "standard" => SgMode::Standard,
                _ => return Err(env_err(ENV_SG_MODE, &v, "expected strict or standard")),
            },
        };

        let plugin_log_file = get_set(get, ENV_PLUGIN_LOG_FILE)
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| DEFAULT_PLUGIN_LOG_FILE.into());
        if plugin_log_file.eq_ignore_ascii_case("stdout") {
            return Err(env_err(
                ENV_PLUGIN_LOG_FILE,
                &plugin_log_file,
                "stdout carries the CNI result; use a file or stderr",
            ));
        }
        if plugin_log_file != "stderr" && !plugin_log_file.starts_with('/') {
            return Err(env_err(
                ENV_PLUGIN_LOG_FILE,
                &plugin_log_file,
                "expected an absolute path or stderr",
            ));
        }

        let plugin_log_level = get_set(get, ENV_PLUGIN_LOG_LEVEL)
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "DEBUG".into());
        if !["trace", "debug", "info", "warn", "error"]
            .contains(&plugin_log_level.to_ascii_lowercase().as_str())
        {
            return Err(env_err(
                ENV_PLUGIN_LOG_LEVEL,
                &plugin_log_level,
                "expected trace, debug, info, warn or error",
            ));
        }

        let randomize_snat = match get_set(get, ENV_RANDOMIZE_SNAT) {
            None => "prng".to_string(),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                m @ ("prng" | "hashrandom" | "none") => m.to_string(),
                _ => {
                    return Err(env_err(
                        ENV_RANDOMIZE_SNAT,
                        &v,
                        "expected prng, hashrandom or none",
                    ))
                }
            },
        };
        let (log_var, log_default) = if enable_ipv6 {
            (ENV_EGRESS_V4_LOG_FILE, DEFAULT_EGRESS_V4_LOG_FILE)
        } else {
            (ENV_EGRESS_V6_LOG_FILE, DEFAULT_EGRESS_V6_LOG_FILE)
        };
        let egress_log_file = get_set(get, log_var)
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| log_default.into());
        if egress_log_file.eq_ignore_ascii_case("stdout")
            || (egress_log_file != "stderr" && !egress_log_file.starts_with('/'))
        {
            return Err(env_err(
                log_var,
                &egress_log_file,
                "expected an absolute path or stderr (stdout carries CNI results)",
            ));
        }
        let enable_v4_egress =
            crate::config::parse_bool(&EnvFn(get), ENV_ENABLE_V4_EGRESS)?.unwrap_or(true);

        Ok(Settings {
            bin_dir,
            conf_dir,
            veth_prefix,
            pod_mtu,
            sg_mode,
            plugin_log_file,
            plugin_log_level,
            disable_tcp_early_demux: parse_bool(get, ENV_DISABLE_TCP_EARLY_DEMUX)?,
            enable_ipv6,
            enable_v6_egress: parse_bool(get, ENV_ENABLE_V6_EGRESS)?,
            bandwidth_plugin: parse_bool(get, ENV_ENABLE_BANDWIDTH_PLUGIN)?,
            disable_pod_v6: parse_bool(get, ENV_DISABLE_POD_V6)?,
            enable_v4_egress,
            randomize_snat,
            egress_log_file,
        })
    }
}
