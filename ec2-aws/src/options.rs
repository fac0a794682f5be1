//! Settings of the EC2 client, read from the anchor's environment variables through an injectable lookup.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `AWS_EC2_ENDPOINT` | (the regional endpoint) | EC2 endpoint URL override |
//! | `HTTP_TIMEOUT` | `10` | seconds per HTTP attempt; values below 10 are raised to 10, as the anchor does |
//! | `AWS_EC2_MAX_ATTEMPTS` | `1` under ipamd, else `3` | attempts per call (first try + SDK retries), 1..=10 |
//!
//! **Who retries.** The SDK's standard retry loop (3 attempts, backoff with full jitter, a retry quota) is the
//! default of [`AwsOptions::default`]. ipamd starts from [`AwsOptions::caller_retries`] instead: one attempt per
//! call, because its pacer retries through the API's throttle gate and the node's bucket, and an SDK loop
//! under it would multiply every throttled call by its own attempts without seeing the gate. An operator who
//! sets `AWS_EC2_MAX_ATTEMPTS` gets that many SDK attempts either way.
//!
//! The SDK's own variables keep working: credentials (`AWS_ACCESS_KEY_ID`, `AWS_WEB_IDENTITY_TOKEN_FILE` for
//! IRSA, the instance profile through IMDS, ...), `AWS_ENDPOINT_URL_EC2`, `AWS_EC2_METADATA_SERVICE_ENDPOINT`.

use std::time::Duration;

use crate::bucket::BucketConfig;

pub const ENV_EC2_ENDPOINT: &str = "AWS_EC2_ENDPOINT";
pub const ENV_HTTP_TIMEOUT: &str = "HTTP_TIMEOUT";
pub const ENV_MAX_ATTEMPTS: &str = "AWS_EC2_MAX_ATTEMPTS";

/// The anchor's floor (and default) for `HTTP_TIMEOUT`.
pub const MIN_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The SDK standard retry mode's default.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The application name the SDK puts in the user agent (`app/aws-cni-<version>`).
pub fn app_name() -> String {
    format!("aws-cni-{}", env!("CARGO_PKG_VERSION"))
}

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var}={value:?}: {reason}")]
pub struct OptionsError {
    pub var: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsOptions {
    /// EC2 endpoint override.
    pub endpoint: Option<String>,
    /// Per-attempt HTTP timeout (at least [`MIN_HTTP_TIMEOUT`]).
    pub http_timeout: Duration,
    /// Attempts per call.
    pub max_attempts: u32,
    /// First backoff of the SDK's retries (later ones double, with full jitter, up to `max_backoff`).
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// One bucket setting for every API instead of the defaults of [`BucketConfig::for_api`].
    pub uniform_bucket: Option<BucketConfig>,
}

impl Default for AwsOptions {
    fn default() -> Self {
        AwsOptions {
            endpoint: None,
            http_timeout: MIN_HTTP_TIMEOUT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
            uniform_bucket: None,
        }
    }
}

impl AwsOptions {
    /// The defaults for a caller that retries on its own (ipamd's pacer): one SDK attempt per call (see the
    /// module docs).
    pub fn caller_retries() -> AwsOptions {
        AwsOptions {
            max_attempts: 1,
            ..AwsOptions::default()
        }
    }

    /// Reads the variables of the module docs through `get` (e.g. `|k| std::env::var(k).ok()`) over the SDK's
    /// defaults.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<AwsOptions, OptionsError> {
        AwsOptions::from_env_over(AwsOptions::default(), get)
    }

    /// Reads the variables of the module docs through `get`; what they leave unset comes from `base`.
    pub fn from_env_over(
        base: AwsOptions,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<AwsOptions, OptionsError> {
        let mut o = base;
        if let Some(ep) = get(ENV_EC2_ENDPOINT).filter(|v| !v.trim().is_empty()) {
            let ep = ep.trim().to_string();
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return Err(OptionsError {
                    var: ENV_EC2_ENDPOINT,
                    value: ep,
                    reason: "must be an http:// or https:// URL",
                });
            }
            o.endpoint = Some(ep);
        }
        if let Some(v) = get(ENV_HTTP_TIMEOUT).filter(|v| !v.trim().is_empty()) {
            let secs: u64 = v.trim().parse().map_err(|_| OptionsError {
                var: ENV_HTTP_TIMEOUT,
                value: v.clone(),
                reason: "must be a whole number of seconds",
            })?;
            let t = Duration::from_secs(secs);
            if t < MIN_HTTP_TIMEOUT {
                tracing::warn!(
                    HTTP_TIMEOUT = secs,
                    "HTTP_TIMEOUT below the minimum of 10 s; using 10 s"
                );
            }
            o.http_timeout = t.max(MIN_HTTP_TIMEOUT);
        }
        if let Some(v) = get(ENV_MAX_ATTEMPTS).filter(|v| !v.trim().is_empty()) {
            o.max_attempts = v
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=10).contains(n))
                .ok_or(OptionsError {
                    var: ENV_MAX_ATTEMPTS,
                    value: v.clone(),
                    reason: "must be a number from 1 to 10",
                })?;
        }
        Ok(o)
    }

    /// The connect timeout: a few seconds, never more than the attempt timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.http_timeout.min(Duration::from_secs(3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn defaults_match_the_anchor() {
        let o = AwsOptions::from_env(env(&[])).expect("defaults");
        assert_eq!(o, AwsOptions::default());
        assert_eq!(o.http_timeout, Duration::from_secs(10));
        assert_eq!(o.endpoint, None);
    }

    #[test]
    fn http_timeout_has_a_floor_of_ten_seconds() {
        let o = AwsOptions::from_env(env(&[(ENV_HTTP_TIMEOUT, "3")])).expect("low");
        assert_eq!(o.http_timeout, Duration::from_secs(10));
        let o = AwsOptions::from_env(env(&[(ENV_HTTP_TIMEOUT, "25")])).expect("high");
        assert_eq!(o.http_timeout, Duration::from_secs(25));
        assert_eq!(o.connect_timeout(), Duration::from_secs(3));
        let e = AwsOptions::from_env(env(&[(ENV_HTTP_TIMEOUT, "10s")])).expect_err("unit");
        assert_eq!(e.var, ENV_HTTP_TIMEOUT);
    }

    #[test]
    fn endpoint_must_be_a_url_and_empty_means_unset() {
        let o =
            AwsOptions::from_env(env(&[(ENV_EC2_ENDPOINT, "http://127.0.0.1:5000")])).expect("url");
        assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        let o = AwsOptions::from_env(env(&[(ENV_EC2_ENDPOINT, " ")])).expect("empty");
        assert_eq!(o.endpoint, None);
        assert!(AwsOptions::from_env(env(&[(ENV_EC2_ENDPOINT, "ec2.example")])).is_err());
    }

    #[test]
    fn max_attempts_is_bounded() {
        let o = AwsOptions::from_env(env(&[(ENV_MAX_ATTEMPTS, "5")])).expect("5");
        assert_eq!(o.max_attempts, 5);
        assert!(AwsOptions::from_env(env(&[(ENV_MAX_ATTEMPTS, "0")])).is_err());
        assert!(AwsOptions::from_env(env(&[(ENV_MAX_ATTEMPTS, "11")])).is_err());
    }

    #[test]
    fn a_caller_that_retries_gets_one_sdk_attempt_unless_the_operator_says_otherwise() {
        let o = AwsOptions::from_env_over(AwsOptions::caller_retries(), env(&[])).expect("unset");
        assert_eq!(o.max_attempts, 1);
        let o = AwsOptions::from_env_over(
            AwsOptions::caller_retries(),
            env(&[(ENV_MAX_ATTEMPTS, " ")]),
        )
        .expect("empty");
        assert_eq!(o.max_attempts, 1);
        let o = AwsOptions::from_env_over(
            AwsOptions::caller_retries(),
            env(&[(ENV_MAX_ATTEMPTS, "5")]),
        )
        .expect("set");
        assert_eq!(o.max_attempts, 5);
        // Everything else is read as for the SDK's defaults.
        let o = AwsOptions::from_env_over(
            AwsOptions::caller_retries(),
            env(&[(ENV_HTTP_TIMEOUT, "25")]),
        )
        .expect("timeout");
        assert_eq!(o.http_timeout, Duration::from_secs(25));
        assert_eq!(
            AwsOptions::from_env(env(&[])).expect("sdk").max_attempts,
            DEFAULT_MAX_ATTEMPTS
        );
    }

    #[test]
    fn the_app_name_carries_our_version() {
        let name = app_name();
        assert!(name.ends_with(env!("CARGO_PKG_VERSION")));
        assert!(aws_config::AppName::new(name).is_ok(), "valid SDK app name");
    }
}
