//! Daemon configuration from the environment, with the anchor's variable names and defaults.
//!
//! All reads go through [`EnvSource`], so tests pass a map and nothing deep in the daemon reads `std::env`.
//! Every invalid value stops startup with an error that names the variable and the value.

use std::collections::HashMap;
use std::time::Duration;

/// Where configuration values come from.
pub trait EnvSource {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

pub const ENV_WARM_ENI_TARGET: &str = "WARM_ENI_TARGET";
pub const ENV_WARM_IP_TARGET: &str = "WARM_IP_TARGET";
pub const ENV_MINIMUM_IP_TARGET: &str = "MINIMUM_IP_TARGET";
pub const ENV_MAX_ENI: &str = "MAX_ENI";
pub const ENV_IP_COOLDOWN_PERIOD: &str = "IP_COOLDOWN_PERIOD";
pub const ENV_ENI_MTU: &str = "AWS_VPC_ENI_MTU";
pub const ENV_POD_MTU: &str = "POD_MTU";
pub const ENV_DISABLE_NETWORK_RESOURCE_PROVISIONING: &str = "DISABLE_NETWORK_RESOURCE_PROVISIONING";

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {var}={value:?}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Free ENIs' worth of IPs to keep ready (ignored when an IP target is set).
    pub warm_eni_target: u32,
    /// Free IPs to keep ready; 0 = unset.
    pub warm_ip_target: u32,
    /// Floor on the total number of IPs; 0 = unset.
    pub minimum_ip_target: u32,
    /// Cap on ENIs below the instance limit; `None` = instance limit.
    pub max_eni: Option<u32>,
    /// How long a released IP is kept out of circulation.
    pub ip_cooldown: Duration,
    /// MTU of the ENIs.
    pub eni_mtu: u32,
    /// MTU of pod veths (reported to the plugin through the conflist; kept here for validation).
    pub pod_mtu: u32,
    /// Never call EC2 to change anything.
    pub disable_provisioning: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            warm_eni_target: 1,
            warm_ip_target: 0,
            minimum_ip_target: 0,
            max_eni: None,
            ip_cooldown: Duration::from_secs(30),
            eni_mtu: 9001,
            pod_mtu: 9001,
            disable_provisioning: false,
        }
    }
}

fn parse_u32(env: &dyn EnvSource, var: &'static str) -> Result<Option<u32>, ConfigError> {
    match env.get(var) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => v.trim().parse::<u32>().map(Some).map_err(|_| ConfigError {
            var,
            value: v.clone(),
            reason: "expected a non-negative integer".into(),
        }),
    }
}

fn parse_bool(env: &dyn EnvSource, var: &'static str) -> Result<Option<bool>, ConfigError> {
    match env.get(var) {
        None => Ok(None),
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "true" | "1" | "yes" => Ok(Some(true)),
            "false" | "0" | "no" => Ok(Some(false)),
            _ => Err(ConfigError {
                var,
                value: v.clone(),
                reason: "expected true or false".into(),
            }),
        },
    }
}

fn check_mtu(var: &'static str, mtu: u32) -> Result<u32, ConfigError> {
    if (576..=9001).contains(&mtu) {
        Ok(mtu)
    } else {
        Err(ConfigError {
            var,
            value: mtu.to_string(),
            reason: "IPv4 MTU must be between 576 and 9001".into(),
        })
    }
}

impl Config {
    /// Reads and validates every variable this daemon understands.
    pub fn from_env(env: &dyn EnvSource) -> Result<Config, ConfigError> {
        let d = Config::default();
        let max_eni = match env.get(ENV_MAX_ENI) {
            None => None,
            Some(v) => match v.trim().parse::<i64>() {
                Ok(n) if n < 1 => None, // the anchor treats -1 (and anything below 1) as "unset"
                Ok(n) => Some(u32::try_from(n).map_err(|_| ConfigError {
                    var: ENV_MAX_ENI,
                    value: v.clone(),
                    reason: "too large".into(),
                })?),
                Err(_) => {
                    return Err(ConfigError {
                        var: ENV_MAX_ENI,
                        value: v,
                        reason: "expected an integer".into(),
                    })
                }
            },
        };
        let eni_mtu = check_mtu(
            ENV_ENI_MTU,
            parse_u32(env, ENV_ENI_MTU)?.unwrap_or(d.eni_mtu),
        )?;
        let pod_mtu = check_mtu(ENV_POD_MTU, parse_u32(env, ENV_POD_MTU)?.unwrap_or(eni_mtu))?;
        Ok(Config {
            warm_eni_target: parse_u32(env, ENV_WARM_ENI_TARGET)?.unwrap_or(d.warm_eni_target),
            warm_ip_target: parse_u32(env, ENV_WARM_IP_TARGET)?.unwrap_or(0),
            minimum_ip_target: parse_u32(env, ENV_MINIMUM_IP_TARGET)?.unwrap_or(0),
            max_eni,
            ip_cooldown: Duration::from_secs(u64::from(
                parse_u32(env, ENV_IP_COOLDOWN_PERIOD)?.unwrap_or(30),
            )),
            eni_mtu,
            pod_mtu,
            disable_provisioning: parse_bool(env, ENV_DISABLE_NETWORK_RESOURCE_PROVISIONING)?
                .unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_anchors() {
        let c = Config::from_env(&env(&[])).expect("defaults");
        assert_eq!(c.warm_eni_target, 1);
        assert_eq!(c.ip_cooldown, Duration::from_secs(30));
        assert_eq!(c.eni_mtu, 9001);
        assert_eq!(c.pod_mtu, 9001);
        assert_eq!(c.max_eni, None);
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let e = Config::from_env(&env(&[("WARM_IP_TARGET", "five")])).expect_err("invalid");
        assert_eq!(e.var, "WARM_IP_TARGET");
        assert!(e.to_string().contains("five"));
        let e = Config::from_env(&env(&[("AWS_VPC_ENI_MTU", "100")])).expect_err("mtu");
        assert_eq!(e.var, "AWS_VPC_ENI_MTU");
    }

    #[test]
    fn pod_mtu_follows_eni_mtu_and_max_eni_minus_one_is_unset() {
        let c = Config::from_env(&env(&[("AWS_VPC_ENI_MTU", "1500"), ("MAX_ENI", "-1")]))
            .expect("valid");
        assert_eq!(c.pod_mtu, 1500);
        assert_eq!(c.max_eni, None);
        let c = Config::from_env(&env(&[("MAX_ENI", "2")])).expect("valid");
        assert_eq!(c.max_eni, Some(2));
    }
}
