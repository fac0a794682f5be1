//! Reading the instance type from the EC2 instance metadata service (IMDSv2).
//!
//! [`Imdsv2`] does `PUT /latest/api/token` with
//! `X-aws-ec2-metadata-token-ttl-seconds: 21600`, then
//! `GET /latest/meta-data/instance-type` with `X-aws-ec2-metadata-token`.
//! The endpoint is `$AWS_EC2_METADATA_SERVICE_ENDPOINT` or
//! `http://169.254.169.254`. Timeouts are short (1 s connect, 2 s per
//! request) and a failed exchange is retried twice (transport errors, 401 and
//! 5xx only), so an instance without IMDS access fails in a few seconds
//! instead of hanging node bootstrap. No proxy is used.

use std::time::Duration;

/// Environment variable that overrides the IMDS endpoint (same name as the AWS SDKs).
pub const IMDS_ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
/// The link-local IMDS endpoint.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// Token request path.
pub const TOKEN_PATH: &str = "/latest/api/token";
/// Instance-type path.
pub const INSTANCE_TYPE_PATH: &str = "/latest/meta-data/instance-type";
/// Header carrying the requested token lifetime on the PUT.
pub const TOKEN_TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
/// Header carrying the token on GETs.
pub const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// Requested token lifetime (6 h, the maximum).
pub const TOKEN_TTL_SECONDS: u32 = 21600;

const MAX_BODY_BYTES: u64 = 64 * 1024;

/// Anything that can tell this machine's instance type.
pub trait InstanceTypeSource {
    fn instance_type(&self) -> Result<String, ImdsError>;
}

/// Errors from IMDS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImdsError {
    #[error("IMDS {method} {url}: {message}")]
    Transport {
        method: &'static str,
        url: String,
        message: String,
    },
    #[error("IMDS {method} {url} answered HTTP {status}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
    },
    #[error("IMDS {url} answered an empty body")]
    Empty { url: String },
    #[error("IMDS {url} answered something that is not an instance type: {value:?}")]
    Malformed { url: String, value: String },
    #[error("no instance type source configured")]
    Unavailable,
}

impl ImdsError {
    fn retryable(&self) -> bool {
        match self {
            ImdsError::Transport { .. } => true,
            ImdsError::Status { status, .. } => *status == 401 || *status >= 500,
            _ => false,
        }
    }
}

/// IMDSv2 client (blocking, via `ureq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imdsv2 {
    endpoint: String,
    connect_timeout: Duration,
    request_timeout: Duration,
    retries: u32,
    retry_delay: Duration,
}

impl Default for Imdsv2 {
    fn default() -> Self {
        Self::from_env()
    }
}

fn endpoint_from(value: Option<String>) -> String {
    match value {
        Some(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => DEFAULT_IMDS_ENDPOINT.to_string(),
    }
}

impl Imdsv2 {
    /// A client for `endpoint` (e.g. `http://169.254.169.254`; a trailing `/`
    /// is ignored) with the default timeouts and 2 retries.
    pub fn new(endpoint: impl Into<String>) -> Self {
        let endpoint: String = endpoint.into();
        Imdsv2 {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            retries: 2,
            retry_delay: Duration::from_millis(200),
        }
    }

    /// A client for `$AWS_EC2_METADATA_SERVICE_ENDPOINT`, or the default endpoint.
    pub fn from_env() -> Self {
        Self::new(endpoint_from(std::env::var(IMDS_ENDPOINT_ENV).ok()))
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Overall time limit of one HTTP request (default 2 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self.connect_timeout = self.connect_timeout.min(timeout);
        self
    }

    /// Retries after the first failed attempt (default 2).
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Pause between attempts (default 200 ms).
    pub fn with_retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(self.connect_timeout))
            .timeout_global(Some(self.request_timeout))
            .user_agent(concat!("instance-limits/", env!("CARGO_PKG_VERSION")))
            .build()
            .into()
    }

    fn read(
        method: &'static str,
        url: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<String, ImdsError> {
        let transport = |e: ureq::Error| ImdsError::Transport {
            method,
            url: url.to_string(),
            message: e.to_string(),
        };
        let mut response = result.map_err(transport)?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(ImdsError::Status {
                method,
                url: url.to_string(),
                status,
            });
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_string()
            .map_err(transport)?;
        let body = body.trim().to_string();
        if body.is_empty() {
            return Err(ImdsError::Empty {
                url: url.to_string(),
            });
        }
        Ok(body)
    }

    fn get_once(&self, agent: &ureq::Agent, path: &str) -> Result<String, ImdsError> {
        let token_url = format!("{}{TOKEN_PATH}", self.endpoint);
        let token = Self::read(
            "PUT",
            &token_url,
            agent
                .put(&token_url)
                .header(TOKEN_TTL_HEADER, TOKEN_TTL_SECONDS.to_string())
                .send_empty(),
        )?;
        let url = format!("{}{path}", self.endpoint);
        Self::read(
            "GET",
            &url,
            agent.get(&url).header(TOKEN_HEADER, token.as_str()).call(),
        )
    }

    /// Fetches a metadata path (e.g. `/latest/meta-data/instance-id`) with a
    /// fresh token, retrying as described in the module docs. The body is
    /// returned trimmed.
    pub fn get_metadata(&self, path: &str) -> Result<String, ImdsError> {
        let agent = self.agent();
        let mut attempt = 0;
        loop {
            match self.get_once(&agent, path) {
                Err(e) if e.retryable() && attempt < self.retries => {
                    attempt += 1;
                    std::thread::sleep(self.retry_delay);
                }
                other => return other,
            }
        }
    }
}

impl InstanceTypeSource for Imdsv2 {
    fn instance_type(&self) -> Result<String, ImdsError> {
        let value = self.get_metadata(INSTANCE_TYPE_PATH)?;
        if !crate::format::valid_instance_type_name(&value) {
            return Err(ImdsError::Malformed {
                url: format!("{}{INSTANCE_TYPE_PATH}", self.endpoint),
                value: value.chars().take(80).collect(),
            });
        }
        Ok(value)
    }
}

/// A source that always fails with [`ImdsError::Unavailable`] (for callers
/// that never pass `--instance-type-from-imds`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoImds;

impl InstanceTypeSource for NoImds {
    fn instance_type(&self) -> Result<String, ImdsError> {
        Err(ImdsError::Unavailable)
    }
}

/// A fixed answer, for tests and for callers that already know the type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticInstanceType(pub String);

impl InstanceTypeSource for StaticInstanceType {
    fn instance_type(&self) -> Result<String, ImdsError> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_from_env_value() {
        assert_eq!(endpoint_from(None), DEFAULT_IMDS_ENDPOINT);
        assert_eq!(endpoint_from(Some("  ".into())), DEFAULT_IMDS_ENDPOINT);
        assert_eq!(
            endpoint_from(Some("http://127.0.0.1:1338".into())),
            "http://127.0.0.1:1338"
        );
        assert_eq!(
            Imdsv2::new("http://127.0.0.1:1338/").endpoint(),
            "http://127.0.0.1:1338"
        );
    }
}
