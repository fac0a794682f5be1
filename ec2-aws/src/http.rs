//! The HTTP client under the EC2 SDK client: the SDK's default HTTPS client, with every request gated by the
//! per-action token bucket ([`crate::bucket`]).
//!
//! ```text
//!   ipamd's pacer (retries, throttle gates) ──▶ AwsEc2 ──▶ aws-sdk-ec2 operation (one attempt per call by
//!                                                           │  default; more with AWS_EC2_MAX_ATTEMPTS)
//!                                                           ▼  every attempt
//!                                     BucketedConnector: bucket(Action).acquire()  ── refused ─▶ ConnectorError
//!                                                           │                          (ThrottlingError kind)
//!                                                           ▼
//!                                     default hyper/rustls connector ──▶ EC2
//!                                                           │
//!                                                           └─ HTTP 503 (RequestLimitExceeded, Unavailable):
//!                                                              drain the bucket
//! ```
//!
//! The bucket sits at the connector so that nothing reaches EC2 without a token, whoever retries: the caller
//! (ipamd's pacer, the default) or, when configured for more attempts, the SDK's retry loop above the
//! connector. The EC2 query protocol carries the operation name in the form body
//! (`Action=DescribeNetworkInterfaces&...`), which is how the connector picks the bucket without any help from
//! the caller.
//!
//! When the bucket refuses, the attempt fails with a connector error of kind `ThrottlingError` whose source is
//! [`ClientThrottled`]; [`crate::errors`] turns it into `Ec2Error::Throttled`, and the caller's throttle
//! handling takes over.

use std::sync::Arc;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::retry::ErrorKind;

use crate::bucket::{Buckets, Exhausted};

/// Our client-side rate limit refused an attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{action}: {source}")]
pub struct ClientThrottled {
    pub action: String,
    #[source]
    pub source: Exhausted,
}

/// The EC2 action of a query-protocol request (`Action=...` in the form body).
pub fn action_of(body: &[u8]) -> Option<&str> {
    let body = std::str::from_utf8(body).ok()?;
    body.split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .filter(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// An [`HttpClient`] whose connectors take a token before each request; see the module docs.
#[derive(Debug, Clone)]
pub struct BucketedHttpClient {
    inner: SharedHttpClient,
    buckets: Arc<Buckets>,
}

impl BucketedHttpClient {
    pub fn new(inner: SharedHttpClient, buckets: Arc<Buckets>) -> BucketedHttpClient {
        BucketedHttpClient { inner, buckets }
    }
}

impl HttpClient for BucketedHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(BucketedConnector {
            inner: self.inner.http_connector(settings, components),
            buckets: Arc::clone(&self.buckets),
        })
    }

    fn validate_base_client_config(
        &self,
        runtime_components: &RuntimeComponentsBuilder,
        cfg: &ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        self.inner
            .validate_base_client_config(runtime_components, cfg)
    }

    fn validate_final_config(
        &self,
        runtime_components: &RuntimeComponents,
        cfg: &ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        self.inner.validate_final_config(runtime_components, cfg)
    }

    fn connector_metadata(
        &self,
    ) -> Option<aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata> {
        self.inner.connector_metadata()
    }
}

#[derive(Debug)]
struct BucketedConnector {
    inner: SharedHttpConnector,
    buckets: Arc<Buckets>,
}

impl HttpConnector for BucketedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let action = request
            .body()
            .bytes()
            .and_then(action_of)
            .unwrap_or("Unknown")
            .to_string();
        let bucket = self.buckets.get(&action);
        let inner = self.inner.clone();
        HttpConnectorFuture::new(async move {
            if let Err(source) = bucket.acquire().await {
                tracing::debug!(%action, %source, "client-side rate limit");
                return Err(ConnectorError::other(
                    Box::new(ClientThrottled { action, source }),
                    Some(ErrorKind::ThrottlingError),
                ));
            }
            let response = inner.call(request).await?;
            if response.status().as_u16() == 503 {
                // EC2 answers RequestLimitExceeded (and Unavailable) with 503: the account is over its
                // budget, so stop spending this node's burst.
                bucket.drain();
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_action_is_read_from_the_form_body() {
        assert_eq!(
            action_of(b"Action=DescribeNetworkInterfaces&Version=2016-11-15"),
            Some("DescribeNetworkInterfaces")
        );
        assert_eq!(
            action_of(b"Version=2016-11-15&Action=CreateTags&ResourceId.1=eni-1"),
            Some("CreateTags")
        );
        assert_eq!(action_of(b"Version=2016-11-15"), None);
        assert_eq!(action_of(b"Action=&Version=1"), None);
        assert_eq!(action_of(b"Action=Evil%20Name"), None);
        assert_eq!(action_of(&[0xff, 0xfe]), None);
    }
}
