//! [`AwsImds`]: the [`Imds`] trait on IMDSv2, through aws-config's IMDS client.
//!
//! The client does the IMDSv2 handshake: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
//! (6 h), then every `GET` carries `X-aws-ec2-metadata-token`; it caches the token until shortly before it
//! expires and retries 5xx. It does not drop a token that IMDS rejects before its TTL (401, e.g. after an IMDS
//! restart); [`AwsImds`] does, by replacing the client, so a new token is fetched. The endpoint is
//! `http://169.254.169.254` unless `AWS_EC2_METADATA_SERVICE_ENDPOINT` (or the profile's
//! `ec2_metadata_service_endpoint`) says otherwise, exactly as for every AWS SDK.
//!
//! **Hop limit.** The token `PUT` answer is sent with the IP TTL set to the instance's
//! `HttpPutResponseHopLimit`. ipamd runs with host networking, one hop from IMDS, so the default of 1 works;
//! from inside a container network namespace the answer is dropped on the way and the `PUT` times out. Such a
//! failure is reported with that explanation instead of a bare timeout.
//!
//! Paths read (as the anchor reads them at startup and on reconcile), under `/latest/meta-data/`:
//!
//! ```text
//!   node():  instance-id  instance-type  placement/availability-zone  placement/region  mac  local-ipv4
//!            network/interfaces/macs/<primary mac>/{vpc-id, subnet-id, vpc-ipv4-cidr-blocks, security-group-ids}
//!   enis():  network/interfaces/macs/                      one "<mac>/" per line
//!            network/interfaces/macs/<mac>/                the ENI's field names (which optional ones exist)
//!            .../<mac>/{interface-id, device-number, subnet-id, subnet-ipv4-cidr-block}
//!            .../<mac>/local-ipv4s   .../<mac>/ipv4-prefix   .../<mac>/network-card      (when listed)
//!            .../<mac>/subnet-ipv6-cidr-blocks   .../<mac>/ipv6s   .../<mac>/ipv6-prefix    (when listed)
//! ```
//!
//! **Eventual consistency.** IMDS follows EC2 with a delay: right after an attach, a new MAC can be listed
//! while its fields still answer 404, and freshly assigned addresses can be missing from `local-ipv4s`. A 404
//! on a required field of a listed MAC is therefore retried a few times with growing pauses (about 3 s in
//! all) before it is an error. Addresses are never taken as the truth about EC2: the daemon confirms them with
//! DescribeNetworkInterfaces (the `Imds` trait docs).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::imds::client::error::ImdsError as SdkImdsError;
use aws_config::imds::Client;
use ec2_api::{Imds, ImdsEni, ImdsError, NodeMetadata};
use ipnetwork::Ipv4Network;

/// Requested token lifetime (the maximum, 6 h).
pub const TOKEN_TTL: Duration = Duration::from_secs(21600);
const MAX_ATTEMPTS: u32 = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Pauses between tries of a field that a listed MAC does not have yet (eventual consistency).
const NOT_YET_PAUSES: [Duration; 4] = [
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
    Duration::from_millis(1600),
];

/// See the module docs.
#[derive(Debug, Clone)]
pub struct AwsImds {
    endpoint: Option<String>,
    /// Replaced (with a fresh token cache) when IMDS rejects the cached token.
    client: Arc<Mutex<Client>>,
}

impl Default for AwsImds {
    fn default() -> Self {
        AwsImds::from_env()
    }
}

fn builder() -> aws_config::imds::client::Builder {
    Client::builder()
        .max_attempts(MAX_ATTEMPTS)
        .token_ttl(TOKEN_TTL)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
}

fn build(endpoint: Option<&str>) -> Result<Client, ImdsError> {
    match endpoint {
        None => Ok(builder().build()),
        Some(ep) => Ok(builder()
            .endpoint(ep)
            .map_err(|e| ImdsError::Request {
                path: ep.to_string(),
                message: format!("invalid IMDS endpoint: {e}"),
            })?
            .build()),
    }
}

fn is_status(e: &SdkImdsError, status: u16) -> bool {
    matches!(e, SdkImdsError::ErrorResponse(r) if r.response().status().as_u16() == status)
}

impl AwsImds {
    /// The instance's IMDS, or `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub fn from_env() -> AwsImds {
        AwsImds {
            endpoint: None,
            client: Arc::new(Mutex::new(builder().build())),
        }
    }

    /// IMDS at an explicit endpoint (tests).
    pub fn with_endpoint(endpoint: &str) -> Result<AwsImds, ImdsError> {
        Ok(AwsImds {
            endpoint: Some(endpoint.to_string()),
            client: Arc::new(Mutex::new(build(Some(endpoint))?)),
        })
    }

    fn client(&self) -> Client {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One GET. The SDK client keeps its token until the token's TTL runs out, even when IMDS answers 401 (the
    /// token was invalidated, e.g. by an IMDS restart), so its own retries of a 401 cannot succeed. After a 401
    /// the client is therefore replaced, which fetches a new token, and the GET is made once more.
    async fn fetch(&self, full: &str) -> Result<String, SdkImdsError> {
        match self.client().get(full).await {
            Err(e) if is_status(&e, 401) => {
                tracing::info!(
                    path = full,
                    "IMDS rejected the session token; fetching a new one"
                );
                let Ok(fresh) = build(self.endpoint.as_deref()) else {
                    return Err(e);
                };
                *self.client.lock().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
                fresh.get(full).await.map(|v| v.as_ref().to_string())
            }
            other => other.map(|v| v.as_ref().to_string()),
        }
    }

    /// One metadata value (path under `/latest/meta-data/`); `Ok(None)` on 404.
    pub async fn get_opt(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let full = format!("/latest/meta-data/{path}");
        match self.fetch(&full).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(request_error(path, &e)),
        }
    }

    /// One metadata value; 404 is an error.
    pub async fn get(&self, path: &str) -> Result<String, ImdsError> {
        self.get_opt(path).await?.ok_or_else(|| ImdsError::Request {
            path: path.to_string(),
            message: "not found (404)".into(),
        })
    }

    /// A field of a MAC that IMDS already lists: 404 is retried (eventual consistency), then an error.
    async fn get_settled(&self, path: &str) -> Result<String, ImdsError> {
        for pause in NOT_YET_PAUSES {
            if let Some(v) = self.get_opt(path).await? {
                return Ok(v);
            }
            tracing::debug!(path, ?pause, "IMDS does not have this field yet");
            tokio::time::sleep(pause).await;
        }
        self.get(path).await
    }

    /// One MAC's ENI, as the anchor reads it: the field list first; an ENI on another network card is skipped
    /// (`None`) before any other field is read; a field that is listed but answers 404 (`local-ipv4s`,
    /// `ipv4-prefix`: IMDS is eventually consistent) is empty; the subnet's CIDR is read only for an ENI with
    /// IPv4 addresses (an `efa-only` ENI has none).
    async fn eni(&self, mac: &str, primary_mac: &str) -> Result<Option<ImdsEni>, ImdsError> {
        let base = format!("network/interfaces/macs/{mac}");
        let fields = lines(&self.get_settled(&format!("{base}/")).await?);
        let has = |f: &str| fields.iter().any(|x| x.trim_end_matches('/') == f);
        let network_card = if has("network-card") {
            let p = format!("{base}/network-card");
            match self.get_opt(&p).await? {
                Some(v) => parse_u32(&p, &v)?,
                None => 0,
            }
        } else {
            0
        };
        if network_card != 0 {
            return Ok(None);
        }
        let eni_id = self.get_settled(&format!("{base}/interface-id")).await?;
        let device_path = format!("{base}/device-number");
        let device_number = parse_u32(&device_path, &self.get_settled(&device_path).await?)?;
        let subnet_id = self.get_settled(&format!("{base}/subnet-id")).await?;
        let ipv4s: Vec<std::net::Ipv4Addr> = if has("local-ipv4s") {
            let p = format!("{base}/local-ipv4s");
            match self.get_opt(&p).await? {
                Some(v) => parse_list(&p, &v)?,
                None => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let ipv4_prefixes = if has("ipv4-prefix") {
            let p = format!("{base}/ipv4-prefix");
            match self.get_opt(&p).await? {
                Some(v) => parse_list(&p, &v)?,
                None => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let subnet_ipv6_cidrs = if has("subnet-ipv6-cidr-blocks") {
            let p = format!("{base}/subnet-ipv6-cidr-blocks");
            match self.get_opt(&p).await? {
                Some(v) => parse_list(&p, &v)?,
                None => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let ipv6s = if has("ipv6s") {
            let p = format!("{base}/ipv6s");
            match self.get_opt(&p).await? {
                Some(v) => parse_list(&p, &v)?,
                None => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let ipv6_prefixes = if has("ipv6-prefix") {
            let p = format!("{base}/ipv6-prefix");
            match self.get_opt(&p).await? {
                Some(v) => parse_list(&p, &v)?,
                None => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let cidr_path = format!("{base}/subnet-ipv4-cidr-block");
        let subnet_cidr = if ipv4s.is_empty() {
            match self.get_opt(&cidr_path).await? {
                Some(v) => parse_net(&cidr_path, &v)?,
                None => Ipv4Network::from(std::net::Ipv4Addr::UNSPECIFIED),
            }
        } else {
            parse_net(&cidr_path, &self.get_settled(&cidr_path).await?)?
        };
        Ok(Some(ImdsEni {
            mac: mac.to_string(),
            eni_id: eni_id.trim().to_string(),
            // The anchor forces the primary ENI to device 0 whatever IMDS says.
            device_number: if mac == primary_mac { 0 } else { device_number },
            subnet_id: subnet_id.trim().to_string(),
            subnet_cidr,
            ipv4s,
            ipv4_prefixes,
            network_card,
            subnet_ipv6_cidrs,
            ipv6s,
            ipv6_prefixes,
        }))
    }
}

fn request_error(path: &str, e: &SdkImdsError) -> ImdsError {
    let detail = aws_smithy_types::error::display::DisplayErrorContext(e).to_string();
    let message = match e {
        SdkImdsError::FailedToLoadToken(t) if t.is_dispatch_failure() => format!(
            "{detail} (no IMDSv2 token: if ipamd runs in a network namespace of its own, the instance's \
             metadata hop limit (HttpPutResponseHopLimit) must be at least 2)"
        ),
        _ => detail,
    };
    ImdsError::Request {
        path: path.to_string(),
        message,
    }
}

/// Non-empty trimmed lines.
pub fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_u32(path: &str, v: &str) -> Result<u32, ImdsError> {
    v.trim().parse().map_err(|_| ImdsError::Parse {
        path: path.to_string(),
        value: v.to_string(),
    })
}

fn parse_net(path: &str, v: &str) -> Result<Ipv4Network, ImdsError> {
    v.trim().parse().map_err(|_| ImdsError::Parse {
        path: path.to_string(),
        value: v.to_string(),
    })
}

/// One value per line, each parsed.
pub fn parse_list<T: std::str::FromStr>(path: &str, v: &str) -> Result<Vec<T>, ImdsError> {
    lines(v)
        .iter()
        .map(|l| {
            l.parse().map_err(|_| ImdsError::Parse {
                path: path.to_string(),
                value: l.clone(),
            })
        })
        .collect()
}

/// `us-east-1a` -> `us-east-1` (for an IMDS without `placement/region`).
pub fn region_from_az(az: &str) -> String {
    az.trim_end_matches(|c: char| c.is_ascii_lowercase())
        .to_string()
}

#[async_trait]
impl Imds for AwsImds {
    async fn node(&self) -> Result<NodeMetadata, ImdsError> {
        let instance_id = self.get("instance-id").await?.trim().to_string();
        let instance_type = self.get("instance-type").await?.trim().to_string();
        let availability_zone = self
            .get("placement/availability-zone")
            .await?
            .trim()
            .to_string();
        let region = match self.get_opt("placement/region").await? {
            Some(r) if !r.trim().is_empty() => r.trim().to_string(),
            _ => region_from_az(&availability_zone),
        };
        let primary_mac = self.get("mac").await?.trim().to_ascii_lowercase();
        let local_ipv4_text = self.get("local-ipv4").await?;
        let local_ipv4 = local_ipv4_text
            .trim()
            .parse()
            .map_err(|_| ImdsError::Parse {
                path: "local-ipv4".into(),
                value: local_ipv4_text.clone(),
            })?;
        let base = format!("network/interfaces/macs/{primary_mac}");
        let cidr_path = format!("{base}/vpc-ipv4-cidr-blocks");
        let vpc_cidrs = parse_list(&cidr_path, &self.get(&cidr_path).await?)?;
        let vpc_id = self
            .get(&format!("{base}/vpc-id"))
            .await?
            .trim()
            .to_string();
        let subnet_id = self
            .get(&format!("{base}/subnet-id"))
            .await?
            .trim()
            .to_string();
        let security_groups = match self.get_opt(&format!("{base}/security-group-ids")).await? {
            Some(v) => lines(&v),
            None => Vec::new(),
        };
        Ok(NodeMetadata {
            instance_id,
            instance_type,
            availability_zone,
            primary_mac,
            local_ipv4,
            vpc_cidrs,
            region,
            vpc_id,
            subnet_id,
            security_groups,
        })
    }

    async fn enis(&self) -> Result<Vec<ImdsEni>, ImdsError> {
        let primary_mac = self.get("mac").await?.trim().to_ascii_lowercase();
        let macs: Vec<String> = lines(&self.get("network/interfaces/macs/").await?)
            .into_iter()
            .map(|m| m.trim_end_matches('/').to_ascii_lowercase())
            .collect();
        let mut out = Vec::with_capacity(macs.len());
        for mac in &macs {
            // One odd MAC (a field that never settles, a value that does not parse) does not hide the others;
            // the primary ENI's does fail the list (nothing works without it).
            match self.eni(mac, &primary_mac).await {
                Ok(Some(eni)) => out.push(eni),
                Ok(None) => tracing::debug!(mac, "ENI on another network card: skipped"),
                Err(e) if *mac != primary_mac => {
                    tracing::warn!(mac, error = %e, "cannot read this ENI from IMDS: skipped for now")
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|e| (e.network_card, e.device_number));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn lists_are_one_value_per_line() {
        let ips: Vec<Ipv4Addr> =
            parse_list("p", "10.0.0.5\n10.0.0.9\n\n 10.0.0.7 \n").expect("ips");
        assert_eq!(
            ips,
            vec![
                Ipv4Addr::new(10, 0, 0, 5),
                Ipv4Addr::new(10, 0, 0, 9),
                Ipv4Addr::new(10, 0, 0, 7)
            ]
        );
        let err = parse_list::<Ipv4Addr>("a/b", "10.0.0.5\nnope").expect_err("bad");
        assert_eq!(
            err,
            ImdsError::Parse {
                path: "a/b".into(),
                value: "nope".into()
            }
        );
        let nets: Vec<Ipv4Network> = parse_list("p", "10.0.0.0/16\n100.64.0.0/16").expect("cidrs");
        assert_eq!(nets.len(), 2);
    }

    #[test]
    fn region_is_the_zone_without_its_letter() {
        assert_eq!(region_from_az("us-east-1a"), "us-east-1");
        assert_eq!(region_from_az("eu-central-2c"), "eu-central-2");
    }
}
