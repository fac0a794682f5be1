//! [`AwsEc2`]: the [`Ec2`] trait on aws-sdk-ec2.
//!
//! Each trait method is one EC2 operation (two for calls whose answer lacks a field the trait needs, see
//! below), with the anchor's parameters. Failures go through [`crate::errors`]; list calls
//! follow `NextToken` until EC2 stops sending one ([`paginate`]), and refuse to loop on a token EC2 repeats.
//!
//! Two places where EC2's answer and the trait differ:
//!
//! * `EniDescription::subnet_cidr`: ENIs do not carry their subnet's CIDR. It comes from `DescribeSubnets`,
//!   once per subnet for the life of the client (a subnet's IPv4 CIDR never changes).
//! * `AssignPrivateIpAddresses` documents that `AssignedPrivateIpAddresses` lists only the new addresses; moto
//!   lists every address of the ENI, the new ones last. When more come back than were asked for, the last
//!   `n` are kept (and a warning logged), which is exact for both.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_config::{AppName, BehaviorVersion, Region};
use aws_sdk_ec2::types::{
    Filter, InstanceType, NetworkInterface, NetworkInterfaceAttachmentChanges, ResourceType, Tag,
    TagSpecification,
};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use ec2_api::{
    Assigned, CreateEniRequest, Ec2, Ec2Error, EniDescription, EniFilter, InstanceDescription,
    InstanceTypeInfo, IpRequest, SubnetDescription, SubnetFilter,
};
use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::bucket::Buckets;
use crate::errors::{from_sdk, Context};
use crate::http::BucketedHttpClient;
use crate::options::{app_name, AwsOptions};

/// Most pages a list call follows before it gives up (a broken endpoint must not hang the daemon).
pub const MAX_PAGES: usize = 1000;
/// `MaxResults` of DescribeNetworkInterfaces (the anchor's page size).
const ENI_PAGE: i32 = 1000;
/// `MaxResults` of DescribeInstanceTypes (the API's maximum).
const TYPES_PAGE: i32 = 100;
/// Instance types per DescribeInstanceTypes request when asking for named types.
const TYPES_PER_REQUEST: usize = 100;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct AwsEc2 {
    client: aws_sdk_ec2::Client,
    subnet_cidrs: Arc<Mutex<HashMap<String, Ipv4Network>>>,
}

/// The SDK's default HTTPS client (hyper 1, rustls with aws-lc), honouring `HTTPS_PROXY`/`NO_PROXY`.
pub fn default_https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    use aws_smithy_http_client::{proxy::ProxyConfig, Builder, ConnectorBuilder};
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut conn =
            ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::AwsLc));
        conn.set_connector_settings(settings.cloned());
        if let Some(rc) = components {
            conn.set_sleep_impl(rc.sleep_impl());
        }
        conn.set_proxy_config(Some(ProxyConfig::from_env()));
        conn.build()
    })
}

/// The shared SDK configuration the daemon uses: `region`, the default credential chain (override it on the
/// returned loader, e.g. for tests), timeouts (`HTTP_TIMEOUT` per attempt), the SDK's standard retries
/// (`max_attempts`, exponential backoff with full jitter) and the user agent `app/aws-cni-<version>`.
pub fn loader(region: &str, opts: &AwsOptions) -> aws_config::ConfigLoader {
    let loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(opts.connect_timeout())
                .operation_attempt_timeout(opts.http_timeout)
                .build(),
        )
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(opts.max_attempts)
                .with_initial_backoff(opts.initial_backoff)
                .with_max_backoff(opts.max_backoff),
        );
    match AppName::new(app_name()) {
        Ok(name) => loader.app_name(name),
        Err(e) => {
            tracing::warn!(error = %e, "user agent without our app name");
            loader
        }
    }
}

impl AwsEc2 {
    /// A client for `region` with credentials from the default chain (environment, web identity / IRSA,
    /// profile, container, instance profile through IMDS), our user agent, timeouts, retries and buckets.
    pub async fn connect(region: &str, opts: &AwsOptions) -> AwsEc2 {
        let sdk = loader(region, opts).load().await;
        AwsEc2::new(&sdk, opts)
    }

    /// A client on a loaded shared configuration (from [`loader`]): adds the token-bucket HTTP client and the
    /// endpoint override. The override applies to EC2 only: STS (IRSA) and IMDS keep their own endpoints.
    pub fn new(sdk: &aws_config::SdkConfig, opts: &AwsOptions) -> AwsEc2 {
        let buckets = Arc::new(match opts.uniform_bucket {
            Some(b) => Buckets::uniform(b),
            None => Buckets::new(),
        });
        let mut conf = aws_sdk_ec2::config::Builder::from(sdk)
            .http_client(BucketedHttpClient::new(default_https_client(), buckets));
        if let Some(ep) = &opts.endpoint {
            conf = conf.endpoint_url(ep);
        }
        AwsEc2::from_conf(conf.build())
    }

    /// A client on a ready SDK configuration (tests inject their HTTP client here).
    pub fn from_conf(conf: aws_sdk_ec2::Config) -> AwsEc2 {
        AwsEc2 {
            client: aws_sdk_ec2::Client::from_conf(conf),
            subnet_cidrs: Arc::default(),
        }
    }

    /// The SDK client underneath (for calls outside the trait, e.g. test fixtures).
    pub fn sdk(&self) -> &aws_sdk_ec2::Client {
        &self.client
    }

    /// CIDRs of `subnet_ids`, from the cache or one DescribeSubnets for the missing ones.
    async fn subnet_cidrs(
        &self,
        api: &'static str,
        subnet_ids: &[String],
    ) -> Result<HashMap<String, Ipv4Network>, Ec2Error> {
        let missing: Vec<String> = {
            let cache = lock(&self.subnet_cidrs);
            let mut m: Vec<String> = subnet_ids
                .iter()
                .filter(|s| !cache.contains_key(*s))
                .cloned()
                .collect();
            m.sort();
            m.dedup();
            m
        };
        if !missing.is_empty() {
            // Fills the cache as a side effect.
            self.describe_subnets(&SubnetFilter {
                ids: missing.clone(),
                ..SubnetFilter::default()
            })
            .await?;
        }
        let cache = lock(&self.subnet_cidrs);
        subnet_ids
            .iter()
            .map(|s| {
                cache.get(s).map(|c| (s.clone(), *c)).ok_or_else(|| {
                    invalid(api, format!("subnet {s} of an ENI is not known to EC2"))
                })
            })
            .collect()
    }

    async fn enis_from_sdk(
        &self,
        api: &'static str,
        nis: &[NetworkInterface],
    ) -> Result<Vec<EniDescription>, Ec2Error> {
        let subnets: Vec<String> = nis
            .iter()
            .filter_map(|n| n.subnet_id().map(str::to_string))
            .collect();
        let cidrs = self.subnet_cidrs(api, &subnets).await?;
        nis.iter()
            .map(|n| {
                let cidr = n
                    .subnet_id()
                    .and_then(|s| cidrs.get(s))
                    .copied()
                    .ok_or_else(|| invalid(api, "ENI without a subnet"))?;
                eni_from_sdk(api, n, cidr)
            })
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An answer we cannot use (missing or malformed field).
fn invalid(api: &'static str, message: impl Into<String>) -> Ec2Error {
    Ec2Error::Other {
        api,
        code: "InvalidResponse".into(),
        message: message.into(),
    }
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn to_u32(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

fn tags_to_sdk(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

fn tags_from_sdk(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn parse_ip(api: &'static str, s: &str) -> Result<Ipv4Addr, Ec2Error> {
    s.parse()
        .map_err(|_| invalid(api, format!("{s:?} is not an IPv4 address")))
}

fn parse_net(api: &'static str, s: &str) -> Result<Ipv4Network, Ec2Error> {
    s.parse()
        .map_err(|_| invalid(api, format!("{s:?} is not an IPv4 CIDR")))
}

fn parse_net6(api: &'static str, s: &str) -> Result<Ipv6Network, Ec2Error> {
    s.parse()
        .map_err(|_| invalid(api, format!("{s:?} is not an IPv6 CIDR")))
}

/// One SDK ENI as the trait describes it.
pub fn eni_from_sdk(
    api: &'static str,
    n: &NetworkInterface,
    subnet_cidr: Ipv4Network,
) -> Result<EniDescription, Ec2Error> {
    let id = n
        .network_interface_id()
        .ok_or_else(|| invalid(api, "ENI without an ID"))?
        .to_string();
    let primary = n
        .private_ip_address()
        .or_else(|| {
            n.private_ip_addresses()
                .iter()
                .find(|a| a.primary() == Some(true))
                .and_then(|a| a.private_ip_address())
        })
        .ok_or_else(|| invalid(api, format!("{id} has no primary IPv4 address")))?;
    let primary_ip = parse_ip(api, primary)?;
    let mut secondary_ips = Vec::new();
    for a in n.private_ip_addresses() {
        let Some(ip) = a.private_ip_address() else {
            continue;
        };
        let ip = parse_ip(api, ip)?;
        if a.primary() != Some(true) && ip != primary_ip {
            secondary_ips.push(ip);
        }
    }
    let ipv4_prefixes = n
        .ipv4_prefixes()
        .iter()
        .filter_map(|p| p.ipv4_prefix())
        .map(|p| parse_net(api, p))
        .collect::<Result<Vec<_>, _>>()?;
    let ipv6_addresses = n
        .ipv6_addresses()
        .iter()
        .filter_map(|a| a.ipv6_address())
        .map(|a| {
            a.parse()
                .map_err(|_| invalid(api, format!("{a:?} is not an IPv6 address")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ipv6_prefixes = n
        .ipv6_prefixes()
        .iter()
        .filter_map(|p| p.ipv6_prefix())
        .map(|p| parse_net6(api, p))
        .collect::<Result<Vec<_>, _>>()?;
    // An attachment in state "detached" (or on its way there) no longer holds a device slot.
    let attachment = n.attachment().filter(|a| {
        !matches!(
            a.status().map(|s| s.as_str()),
            Some("detached") | Some("detaching")
        )
    });
    Ok(EniDescription {
        id,
        mac: n.mac_address().unwrap_or_default().to_ascii_lowercase(),
        primary_ip,
        secondary_ips,
        ipv4_prefixes,
        ipv6_addresses,
        ipv6_prefixes,
        subnet_id: n.subnet_id().unwrap_or_default().to_string(),
        subnet_cidr,
        // IPv6 mode reads the subnet's IPv6 CIDR from IMDS (`subnet-ipv6-cidr-blocks`), as the anchor does.
        subnet_ipv6_cidr: None,
        vpc_id: n.vpc_id().unwrap_or_default().to_string(),
        device_index: attachment.and_then(|a| a.device_index()).map(to_u32),
        network_card_index: attachment
            .and_then(|a| a.network_card_index())
            .map_or(0, to_u32),
        attachment_id: attachment
            .and_then(|a| a.attachment_id())
            .map(str::to_string),
        instance_id: attachment.and_then(|a| a.instance_id()).map(str::to_string),
        status: n
            .status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        interface_type: n
            .interface_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_else(|| "interface".to_string()),
        description: n.description().unwrap_or_default().to_string(),
        tags: tags_from_sdk(n.tag_set()),
        delete_on_termination: attachment
            .and_then(|a| a.delete_on_termination())
            .unwrap_or(false),
    })
}

/// One SDK instance type as the trait describes it, with the table's rules (instance-limits crate docs): the
/// default card's ENIs; one card `DEFAULT:MaximumNetworkInterfaces` when `NetworkCards` is absent; hypervisor
/// `nitro`/`xen`/`unknown`; absent numbers are 0.
pub fn instance_type_from_sdk(
    api: &'static str,
    it: &aws_sdk_ec2::types::InstanceTypeInfo,
) -> Result<InstanceTypeInfo, Ec2Error> {
    let name = it
        .instance_type()
        .map(|t| t.as_str().to_string())
        .ok_or_else(|| invalid(api, "instance type without a name"))?;
    let net = it.network_info();
    let default_card = net
        .and_then(|n| n.default_network_card_index())
        .map_or(0, to_u32);
    let mut cards: Vec<(u32, u32)> = net
        .map(|n| n.network_cards())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            (
                c.network_card_index().map_or(0, to_u32),
                c.maximum_network_interfaces().map_or(0, to_u32),
            )
        })
        .collect();
    if cards.is_empty() {
        cards.push((
            default_card,
            net.and_then(|n| n.maximum_network_interfaces())
                .map_or(0, to_u32),
        ));
    }
    cards.sort_unstable();
    if cards.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(invalid(
            api,
            format!("{name}: duplicate network card index"),
        ));
    }
    let enis = cards
        .iter()
        .find(|(i, _)| *i == default_card)
        .map(|(_, m)| *m)
        .ok_or_else(|| {
            invalid(
                api,
                format!("{name}: default network card {default_card} is not listed"),
            )
        })?;
    Ok(InstanceTypeInfo {
        instance_type: name,
        enis,
        default_network_card_index: default_card,
        network_cards: cards,
        ipv4_per_eni: net
            .and_then(|n| n.ipv4_addresses_per_interface())
            .map_or(0, to_u32),
        ipv6_per_eni: net
            .and_then(|n| n.ipv6_addresses_per_interface())
            .map_or(0, to_u32),
        hypervisor: instance_limits::format::hypervisor_from_api(
            it.hypervisor().map(|h| h.as_str()),
        )
        .to_string(),
        bare_metal: it.bare_metal().unwrap_or(false),
        vcpus: it
            .v_cpu_info()
            .and_then(|v| v.default_v_cpus())
            .map_or(0, to_u32),
    })
}

/// Calls `page(token)` from no token until the answer has none (or an empty one), collecting the items.
/// Fails on a token seen before (a loop) and after [`MAX_PAGES`] pages.
pub async fn paginate<T, F, Fut>(api: &'static str, mut page: F) -> Result<Vec<T>, Ec2Error>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), Ec2Error>>,
{
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    let mut seen = HashSet::new();
    for _ in 0..MAX_PAGES {
        let (items, next) = page(token.take()).await?;
        out.extend(items);
        match next.filter(|t| !t.is_empty()) {
            None => return Ok(out),
            Some(t) => {
                if !seen.insert(t.clone()) {
                    return Err(invalid(api, format!("NextToken {t:?} repeated")));
                }
                token = Some(t);
            }
        }
    }
    Err(invalid(api, format!("more than {MAX_PAGES} pages")))
}

impl AwsEc2 {
    /// CreateNetworkInterface, with EC2's `ClientToken` when given: the SDK's own retries reuse the request, and
    /// so the token; ipamd's retries pass the same token again.
    async fn create_eni(
        &self,
        req: CreateEniRequest,
        client_token: Option<&str>,
    ) -> Result<EniDescription, Ec2Error> {
        const API: &str = "CreateNetworkInterface";
        let mut call = self
            .client
            .create_network_interface()
            .subnet_id(&req.subnet_id)
            .description(&req.description)
            .set_client_token(client_token.map(str::to_string));
        if !req.security_groups.is_empty() {
            call = call.set_groups(Some(req.security_groups.clone()));
        }
        if !req.tags.is_empty() {
            call = call.tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::NetworkInterface)
                    .set_tags(Some(tags_to_sdk(&req.tags)))
                    .build(),
            );
        }
        call = match req.ips {
            IpRequest::Secondary(0) | IpRequest::Prefixes(0) => call,
            IpRequest::Secondary(n) => call.secondary_private_ip_address_count(to_i32(n)),
            IpRequest::Prefixes(n) => call.ipv4_prefix_count(to_i32(n)),
        };
        let ctx = Context {
            subnet: Some(req.subnet_id.clone()),
            resource: Some(req.subnet_id.clone()),
            ..Context::default()
        };
        let out = call.send().await.map_err(|e| from_sdk(API, &ctx, e))?;
        let ni = out
            .network_interface()
            .ok_or_else(|| invalid(API, "no NetworkInterface in the answer"))?;
        let mut enis = self.enis_from_sdk(API, std::slice::from_ref(ni)).await?;
        enis.pop().ok_or_else(|| invalid(API, "no ENI"))
    }
}

#[async_trait]
impl Ec2 for AwsEc2 {
    async fn create_network_interface(
        &self,
        req: CreateEniRequest,
    ) -> Result<EniDescription, Ec2Error> {
        self.create_eni(req, None).await
    }

    async fn create_network_interface_with_token(
        &self,
        req: CreateEniRequest,
        client_token: &str,
    ) -> Result<EniDescription, Ec2Error> {
        self.create_eni(req, Some(client_token)).await
    }

    async fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
        network_card_index: u32,
    ) -> Result<String, Ec2Error> {
        const API: &str = "AttachNetworkInterface";
        let out = self
            .client
            .attach_network_interface()
            .network_interface_id(eni_id)
            .instance_id(instance_id)
            .device_index(to_i32(device_index))
            .network_card_index(to_i32(network_card_index))
            .send()
            .await
            .map_err(|e| from_sdk(API, &Context::eni(eni_id), e))?;
        out.attachment_id()
            .map(str::to_string)
            .ok_or_else(|| invalid(API, "no AttachmentId in the answer"))
    }

    async fn set_delete_on_termination(
        &self,
        eni_id: &str,
        attachment_id: &str,
    ) -> Result<(), Ec2Error> {
        const API: &str = "ModifyNetworkInterfaceAttribute";
        self.client
            .modify_network_interface_attribute()
            .network_interface_id(eni_id)
            .attachment(
                NetworkInterfaceAttachmentChanges::builder()
                    .attachment_id(attachment_id)
                    .delete_on_termination(true)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| from_sdk(API, &Context::eni(eni_id), e))?;
        Ok(())
    }

    async fn set_security_groups(&self, eni_id: &str, groups: &[String]) -> Result<(), Ec2Error> {
        const API: &str = "ModifyNetworkInterfaceAttribute";
        self.client
            .modify_network_interface_attribute()
            .network_interface_id(eni_id)
            .set_groups(Some(groups.to_vec()))
            .send()
            .await
            .map_err(|e| from_sdk(API, &Context::eni(eni_id), e))?;
        Ok(())
    }

    async fn assign_private_ips(&self, eni_id: &str, req: IpRequest) -> Result<Assigned, Ec2Error> {
        const API: &str = "AssignPrivateIpAddresses";
        let call = self
            .client
            .assign_private_ip_addresses()
            .network_interface_id(eni_id);
        let call = match req {
            IpRequest::Secondary(0) | IpRequest::Prefixes(0) => return Ok(Assigned::default()),
            IpRequest::Secondary(n) => call.secondary_private_ip_address_count(to_i32(n)),
            IpRequest::Prefixes(n) => call.ipv4_prefix_count(to_i32(n)),
        };
        let out = call
            .send()
            .await
            .map_err(|e| from_sdk(API, &Context::eni(eni_id), e))?;
        let mut ips = out
            .assigned_private_ip_addresses()
            .iter()
            .filter_map(|a| a.private_ip_address())
            .map(|ip| parse_ip(API, ip))
            .collect::<Result<Vec<_>, _>>()?;
        let prefixes = out
            .assigned_ipv4_prefixes()
            .iter()
            .filter_map(|p| p.ipv4_prefix())
            .map(|p| parse_net(API, p))
            .collect::<Result<Vec<_>, _>>()?;
        if let IpRequest::Secondary(n) = req {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if ips.len() > n {
                tracing::warn!(
                    eni = eni_id,
                    asked = n,
                    listed = ips.len(),
                    "AssignPrivateIpAddresses listed more addresses than were assigned; keeping the last ones"
                );
                ips = ips.split_off(ips.len() - n);
            }
        }
        Ok(Assigned { ips, prefixes })
    }

    async fn assign_ipv6_prefixes(
        &self,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv6Network>, Ec2Error> {
        const API: &str = "AssignIpv6Addresses";
        if count == 0 {
            return Ok(Vec::new());
        }
        let out = self
            .client
            .assign_ipv6_addresses()
            .network_interface_id(eni_id)
            .ipv6_prefix_count(to_i32(count))
            .send()
            .await
            .map_err(|e| from_sdk(API, &Context::eni(eni_id), e))?;
        out.assigned_ipv6_prefixes()
            .iter()
            .map(|p| parse_net6(API, p))
            .collect()
    }

    async fn unassign_private_ips(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
        prefixes: &[Ipv4Network],
    ) -> Result<(), Ec2Error> {
        const API: &str = "UnassignPrivateIpAddresses";
        if ips.is_empty() && prefixes.is_empty() {
            return Ok(());
        }
        let mut call = self
            .client
            .unassign_private_ip_addresses()
            .network_interface_id(eni_id);
        if !ips.is_empty() {
            call = call.set_private_ip_addresses(Some(ips.iter().map(|i| i.to_string()).collect()));
        }
        if !prefixes.is_empty() {
            call = call.set_ipv4_prefixes(Some(prefixes.iter().map(|p| p.to_string()).collect()));
        }
        call.send()
            .await
            .map_err(|e| from_sdk(API, &Context::eni(eni_id), e))?;
        Ok(())
    }

    async fn detach_network_interface(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        const API: &str = "DetachNetworkInterface";
        self.client
            .detach_network_interface()
            .attachment_id(attachment_id)
            .send()
            .await
            .map_err(|e| from_sdk(API, &Context::resource(attachment_id), e))?;
        Ok(())
    }

    async fn delete_network_interface(&self, eni_id: &str) -> Result<(), Ec2Error> {
        const API: &str = "DeleteNetworkInterface";
        self.client
            .delete_network_interface()
            .network_interface_id(eni_id)
            .send()
            .await
            .map_err(|e| from_sdk(API, &Context::eni(eni_id), e))?;
        Ok(())
    }

    async fn describe_network_interfaces(
        &self,
        ids: &[String],
    ) -> Result<Vec<EniDescription>, Ec2Error> {
        const API: &str = "DescribeNetworkInterfaces";
        // No IDs would mean "every ENI of the account" to EC2.
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = Context::resource(ids.join(","));
        let nis = paginate(API, |token| {
            // MaxResults cannot be combined with NetworkInterfaceIds.
            let call = self
                .client
                .describe_network_interfaces()
                .set_network_interface_ids(Some(ids.to_vec()))
                .set_next_token(token);
            let ctx = &ctx;
            async move {
                let out = call.send().await.map_err(|e| from_sdk(API, ctx, e))?;
                Ok((
                    out.network_interfaces().to_vec(),
                    out.next_token().map(str::to_string),
                ))
            }
        })
        .await?;
        self.enis_from_sdk(API, &nis).await
    }

    async fn list_network_interfaces(
        &self,
        f: &EniFilter,
    ) -> Result<Vec<EniDescription>, Ec2Error> {
        const API: &str = "DescribeNetworkInterfaces";
        let mut filters = Vec::new();
        if let Some(v) = &f.vpc_id {
            filters.push(filter("vpc-id", v));
        }
        if let Some(s) = &f.status {
            filters.push(filter("status", s));
        }
        if let Some(i) = &f.attachment_instance_id {
            filters.push(filter("attachment.instance-id", i));
        }
        // One `tag-key` filter with several values would mean "any of them"; send the first, check all below.
        if let Some(k) = f.tag_keys.first() {
            filters.push(filter("tag-key", k));
        }
        for (k, v) in &f.tags {
            filters.push(filter(&format!("tag:{k}"), v));
        }
        let ctx = Context::default();
        let nis = paginate(API, |token| {
            let call = self
                .client
                .describe_network_interfaces()
                .set_filters((!filters.is_empty()).then(|| filters.clone()))
                .max_results(ENI_PAGE)
                .set_next_token(token);
            let ctx = &ctx;
            async move {
                let out = call.send().await.map_err(|e| from_sdk(API, ctx, e))?;
                Ok((
                    out.network_interfaces().to_vec(),
                    out.next_token().map(str::to_string),
                ))
            }
        })
        .await?;
        let enis = self.enis_from_sdk(API, &nis).await?;
        Ok(enis
            .into_iter()
            .filter(|e| f.tag_keys.iter().all(|k| e.tags.contains_key(k)))
            .filter(|e| f.tags.iter().all(|(k, v)| e.tags.get(k) == Some(v)))
            .collect())
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<InstanceDescription, Ec2Error> {
        const API: &str = "DescribeInstances";
        let out = self
            .client
            .describe_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(|e| from_sdk(API, &Context::resource(instance_id), e))?;
        let inst = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(instance_id))
            .ok_or_else(|| Ec2Error::NotFound {
                api: API,
                what: instance_id.to_string(),
            })?;
        let mut attachments: Vec<(u32, u32)> = inst
            .network_interfaces()
            .iter()
            .filter_map(|n| n.attachment())
            .filter_map(|a| {
                Some((
                    a.network_card_index().map_or(0, to_u32),
                    to_u32(a.device_index()?),
                ))
            })
            .collect();
        attachments.sort_unstable();
        Ok(InstanceDescription {
            instance_id: instance_id.to_string(),
            instance_type: inst
                .instance_type()
                .map(|t| t.as_str().to_string())
                .unwrap_or_default(),
            subnet_id: inst.subnet_id().unwrap_or_default().to_string(),
            vpc_id: inst.vpc_id().unwrap_or_default().to_string(),
            security_groups: inst
                .security_groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_string))
                .collect(),
            attachments,
            state: inst
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_string())
                .unwrap_or_default(),
        })
    }

    async fn describe_subnets(&self, f: &SubnetFilter) -> Result<Vec<SubnetDescription>, Ec2Error> {
        const API: &str = "DescribeSubnets";
        let mut filters = Vec::new();
        if let Some(v) = &f.vpc_id {
            filters.push(filter("vpc-id", v));
        }
        if let Some(az) = &f.availability_zone {
            filters.push(filter("availability-zone", az));
        }
        let ctx = Context::resource(f.ids.join(","));
        let subnets = paginate(API, |token| {
            let call = self
                .client
                .describe_subnets()
                .set_subnet_ids((!f.ids.is_empty()).then(|| f.ids.clone()))
                .set_filters((!filters.is_empty()).then(|| filters.clone()))
                .set_next_token(token);
            let ctx = &ctx;
            async move {
                let out = call.send().await.map_err(|e| from_sdk(API, ctx, e))?;
                Ok((out.subnets().to_vec(), out.next_token().map(str::to_string)))
            }
        })
        .await?;
        let mut out = Vec::with_capacity(subnets.len());
        for s in &subnets {
            let id = s
                .subnet_id()
                .ok_or_else(|| invalid(API, "subnet without an ID"))?;
            let cidr = parse_net(API, s.cidr_block().unwrap_or_default())?;
            out.push(SubnetDescription {
                id: id.to_string(),
                cidr,
                availability_zone: s.availability_zone().unwrap_or_default().to_string(),
                vpc_id: s.vpc_id().unwrap_or_default().to_string(),
                available_ip_count: s
                    .available_ip_address_count()
                    .map_or(0, |n| u64::try_from(n).unwrap_or(0)),
                tags: tags_from_sdk(s.tags()),
            });
        }
        let mut cache = lock(&self.subnet_cidrs);
        for s in &out {
            cache.insert(s.id.clone(), s.cidr);
        }
        Ok(out)
    }

    async fn create_tags(
        &self,
        resource_id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), Ec2Error> {
        const API: &str = "CreateTags";
        if tags.is_empty() {
            return Ok(());
        }
        self.client
            .create_tags()
            .resources(resource_id)
            .set_tags(Some(tags_to_sdk(tags)))
            .send()
            .await
            .map_err(|e| from_sdk(API, &Context::resource(resource_id), e))?;
        Ok(())
    }

    async fn describe_instance_types(
        &self,
        types: &[String],
    ) -> Result<Vec<InstanceTypeInfo>, Ec2Error> {
        const API: &str = "DescribeInstanceTypes";
        let chunks: Vec<Option<Vec<InstanceType>>> = if types.is_empty() {
            vec![None]
        } else {
            types
                .chunks(TYPES_PER_REQUEST)
                .map(|c| Some(c.iter().map(|t| InstanceType::from(t.as_str())).collect()))
                .collect()
        };
        let mut out = Vec::new();
        for chunk in chunks {
            let ctx = Context::resource(
                chunk
                    .as_ref()
                    .map(|c| {
                        c.iter()
                            .map(|t| t.as_str().to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default(),
            );
            let page_size = chunk.is_none().then_some(TYPES_PAGE);
            let infos = paginate(API, |token| {
                let call = self
                    .client
                    .describe_instance_types()
                    .set_instance_types(chunk.clone())
                    .set_max_results(page_size)
                    .set_next_token(token);
                let ctx = &ctx;
                async move {
                    let out = call.send().await.map_err(|e| from_sdk(API, ctx, e))?;
                    Ok((
                        out.instance_types().to_vec(),
                        out.next_token().map(str::to_string),
                    ))
                }
            })
            .await?;
            for it in &infos {
                out.push(instance_type_from_sdk(API, it)?);
            }
        }
        Ok(out)
    }
}
