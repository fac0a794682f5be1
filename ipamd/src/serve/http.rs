//! The two HTTP endpoints: Prometheus metrics (`:61678/metrics`, all interfaces, as the anchor) and
//! introspection (`127.0.0.1:61679` by default, or a `unix:<path>` socket), with the anchor's paths and JSON
//! shapes (`/v1/enis`, `/v1/eni-configs`, `/v1/networkutils-env-settings`, `/v1/ipamd-env-settings`) plus
//! `/v1/pods`.
//!
//! Introspection never shows container IDs or interface names of IPAM keys: the anchor blanks them since v1.23 so
//! that nobody on the node can forge a DelNetwork for another pod from what introspection reveals.
//! Both servers are read-only views of the node; a slow client cannot block pods (requests time out after 5 s).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::FileTypeExt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::core::datastore::{Allocation, IpamKey, PodMeta};
use crate::core::family::IpVersion;
use crate::engine::Node;
use crate::metrics::Metrics;

/// Where an HTTP server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddress {
    Tcp(std::net::SocketAddr),
    Unix(std::path::PathBuf),
}

/// An address that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}={value:?}: expected host:port, :port or unix:<path>")]
pub struct BindAddressError {
    pub var: &'static str,
    pub value: String,
}

impl BindAddress {
    /// Parses `host:port`, `:port` (all interfaces) or `unix:<path>`.
    pub fn parse(var: &'static str, value: &str) -> Result<BindAddress, BindAddressError> {
        let err = || BindAddressError {
            var,
            value: value.to_string(),
        };
        if let Some(path) = value.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(err());
            }
            return Ok(BindAddress::Unix(path.into()));
        }
        let full = if value.starts_with(':') {
            format!("0.0.0.0{value}")
        } else {
            value.to_string()
        };
        full.parse().map(BindAddress::Tcp).map_err(|_| err())
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct HttpState {
    pub node: Arc<Node>,
    pub metrics: Arc<Metrics>,
    /// Effective values of the variables `/v1/networkutils-env-settings` reports.
    pub networkutils_env: BTreeMap<String, String>,
    /// Effective values of the variables `/v1/ipamd-env-settings` reports.
    pub ipamd_env: BTreeMap<String, String>,
}

fn json_response(v: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

async fn metrics_handler(State(st): State<HttpState>) -> Response {
    st.metrics.refresh(&st.node.snapshot());
    st.metrics.refresh_vpc(&st.node.refresh_counts());
    st.metrics.refresh_schedule(&st.node.ec2_schedule());
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// `/v1/enis`: network card -> {TotalIPs, AssignedIPs, ENIs: id -> ENI}, in the anchor's field names.
fn enis_json(node: &Node) -> Value {
    let ds = node.datastore();
    let assigned: BTreeMap<Ipv4Addr, (String, String, String)> = ds
        .assignments()
        .into_iter()
        .map(|(k, m, a)| (a.ip, (k.network_name, m.namespace, m.name)))
        .collect();
    let stats = node.stats();
    let mut enis = serde_json::Map::new();
    if node.ipv6() {
        enis_json6(node, &mut enis);
    }
    for eni in ds.enis() {
        let mut cidrs = serde_json::Map::new();
        for ip in eni.ips() {
            let (key, meta) = match assigned.get(&ip) {
                // Container ID and interface name are blanked, as the anchor does since v1.23.
                Some((net, ns, name)) => (
                    json!({"networkName": net, "containerID": "", "ifName": ""}),
                    json!({"k8sPodNamespace": ns, "k8sPodName": name, "interfacesCount": 1}),
                ),
                None => (
                    json!({"networkName": "", "containerID": "", "ifName": ""}),
                    json!({"k8sPodNamespace": "", "k8sPodName": "", "interfacesCount": 0}),
                ),
            };
            let cidr = format!("{ip}/32");
            cidrs.insert(
                cidr,
                json!({
                    // Go's net.IPNet: IP as text, Mask as base64 bytes (/32 = ffffffff).
                    "Cidr": {"IP": ip.to_string(), "Mask": "/////w=="},
                    "IPAddresses": {
                        ip.to_string(): {
                            "Address": ip.to_string(),
                            "IPAMKey": key,
                            "IPAMMetadata": meta,
                            "AssignedTime": GO_ZERO_TIME,
                            "UnassignedTime": GO_ZERO_TIME,
                        }
                    },
                    "IsPrefix": false,
                    "AddressFamily": "4",
                }),
            );
        }
        enis.insert(
            eni.id.clone(),
            json!({
                "ID": eni.id,
                "IsPrimary": eni.is_primary,
                "IsTrunk": false,
                "IsEFA": false,
                "DeviceNumber": eni.device_number,
                "AvailableIPv4Cidrs": cidrs,
                "IPv6Cidrs": {},
                "IsExcludedForPodIPs": false,
                "RouteTableID": eni.route_table,
                "SubnetID": "",
            }),
        );
    }
    json!({
        "0": {
            "TotalIPs": stats.total,
            "AssignedIPs": stats.assigned,
            "ENIs": enis,
        }
    })
}

/// IPv6 mode's ENIs for `/v1/enis`: the primary ENI with its /80 under `IPv6Cidrs` (the anchor's field; `IsPrefix`
/// true, `AddressFamily` "6"), listing the addresses carved so far.
fn enis_json6(node: &Node, enis: &mut serde_json::Map<String, Value>) {
    let ds = node.datastore6();
    let assigned: BTreeMap<std::net::Ipv6Addr, (String, String, String)> = ds
        .assignments()
        .into_iter()
        .map(|(k, m, a)| (a.ip, (k.network_name, m.namespace, m.name)))
        .collect();
    for eni in ds.enis() {
        let mut cidrs = serde_json::Map::new();
        for p in eni.prefixes() {
            let mut addrs = serde_json::Map::new();
            for ip in eni.ips().filter(|ip| p.contains(*ip)) {
                let (key, meta) = match assigned.get(&ip) {
                    Some((net, ns, name)) => (
                        json!({"networkName": net, "containerID": "", "ifName": ""}),
                        json!({"k8sPodNamespace": ns, "k8sPodName": name, "interfacesCount": 1}),
                    ),
                    None => (
                        json!({"networkName": "", "containerID": "", "ifName": ""}),
                        json!({"k8sPodNamespace": "", "k8sPodName": "", "interfacesCount": 0}),
                    ),
                };
                addrs.insert(
                    ip.to_string(),
                    json!({
                        "Address": ip.to_string(),
                        "IPAMKey": key,
                        "IPAMMetadata": meta,
                        "AssignedTime": GO_ZERO_TIME,
                        "UnassignedTime": GO_ZERO_TIME,
                    }),
                );
            }
            cidrs.insert(
                p.to_string(),
                json!({
                    "Cidr": {"IP": p.network().to_string(), "Prefix": p.prefix()},
                    "IPAddresses": addrs,
                    "IsPrefix": true,
                    "AddressFamily": "6",
                }),
            );
        }
        enis.insert(
            eni.id.clone(),
            json!({
                "ID": eni.id,
                "IsPrimary": eni.is_primary,
                "IsTrunk": false,
                "IsEFA": false,
                "DeviceNumber": eni.device_number,
                "AvailableIPv4Cidrs": {},
                "IPv6Cidrs": cidrs,
                "IsExcludedForPodIPs": false,
                "RouteTableID": eni.route_table,
                "SubnetID": "",
            }),
        );
    }
}

/// `/v1/pods` (ours; the anchor's docs list it but it no longer serves it): pods without container IDs, of
/// either IP version.
fn pods_json(node: &Node) -> Value {
    fn pod<V: IpVersion>((k, m, a): (IpamKey, PodMeta, Allocation<V>)) -> Value {
        json!({
            "namespace": m.namespace,
            "name": m.name,
            "network": k.network_name,
            "ip": a.ip.to_string(),
            "eni": a.eni_id,
            "deviceNumber": a.device_number,
            "routeTable": a.route_table,
        })
    }
    let v4 = node.datastore().assignments().into_iter().map(pod);
    let v6 = node.datastore6().assignments().into_iter().map(pod);
    Value::Array(v4.chain(v6).collect())
}

const PATHS: [&str; 5] = [
    "/v1/enis",
    "/v1/eni-configs",
    "/v1/networkutils-env-settings",
    "/v1/ipamd-env-settings",
    "/v1/pods",
];

/// `/v1/eni-configs`: the name of the node's ENIConfig as a JSON string, as the anchor answers; `null` when custom
/// networking is off or the node object is not known yet.
fn eni_configs_json(node: &Node) -> Value {
    json!(node.eni_config_status().and_then(|c| c.name))
}

/// The introspection router.
pub fn introspection_router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(|| async { json_response(json!(PATHS)) }))
        .route(
            "/v1/enis",
            get(|State(st): State<HttpState>| async move { json_response(enis_json(&st.node)) }),
        )
        .route(
            "/v1/pods",
            get(|State(st): State<HttpState>| async move { json_response(pods_json(&st.node)) }),
        )
        .route(
            "/v1/eni-configs",
            get(|State(st): State<HttpState>| async move { json_response(eni_configs_json(&st.node)) }),
        )
        .route(
            "/v1/networkutils-env-settings",
            get(|State(st): State<HttpState>| async move { json_response(json!(st.networkutils_env)) }),
        )
        .route(
            "/v1/ipamd-env-settings",
            get(|State(st): State<HttpState>| async move { json_response(json!(st.ipamd_env)) }),
        )
        .with_state(state)
}

/// The metrics router.
pub fn metrics_router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(state)
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ServeError {
    pub addr: String,
    pub source: std::io::Error,
}

/// Binds `addr` and serves `router` until `shutdown` fires. Returns once bound, serving in the background.
pub async fn spawn(
    addr: &BindAddress,
    router: Router,
    shutdown: Arc<Notify>,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let router = router.layer(axum::middleware::from_fn(time_limit));
    let stop = async move { shutdown.notified().await };
    match addr {
        BindAddress::Tcp(sa) => {
            let listener =
                tokio::net::TcpListener::bind(sa)
                    .await
                    .map_err(|source| ServeError {
                        addr: sa.to_string(),
                        source,
                    })?;
            Ok(tokio::spawn(serve_bounded(listener, router, stop)))
        }
        BindAddress::Unix(path) => {
            // Only a socket (a previous run's) is replaced: anything else at that path is refused, never deleted.
            match std::fs::symlink_metadata(path) {
                Ok(md) if md.file_type().is_socket() => {
                    let _ = std::fs::remove_file(path);
                }
                Ok(_) => {
                    return Err(ServeError {
                        addr: format!("unix:{}", path.display()),
                        source: std::io::Error::new(
                            std::io::ErrorKind::AlreadyExists,
                            "the path exists and is not a socket; not replacing it",
                        ),
                    })
                }
                Err(_) => {}
            }
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let listener = tokio::net::UnixListener::bind(path).map_err(|source| ServeError {
                addr: format!("unix:{}", path.display()),
                source,
            })?;
            Ok(tokio::spawn(serve_bounded(listener, router, stop)))
        }
    }
}

/// Connections each endpoint serves at once; one more is closed as soon as it is accepted, so slow or idle
/// clients can never hold more file descriptors than this.
pub const MAX_CONNECTIONS: usize = 64;
/// A client has this long to send a request's headers (then the connection is closed).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection, keep-alive included.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// Serves HTTP/1 on `listener` until `stop` completes: at most [`MAX_CONNECTIONS`] at once, headers within
/// [`HEADER_READ_TIMEOUT`], each connection closed after [`CONNECTION_LIFETIME`]. (`axum::serve` has neither a
/// header timeout nor a cap: a thousand slowloris connections held a thousand descriptors.)
async fn serve_bounded<L>(
    mut listener: L,
    router: Router,
    stop: impl std::future::Future<Output = ()> + Send,
) where
    L: axum::serve::Listener,
    L::Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(stop);
    loop {
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            () = &mut stop => return,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!(
                max = MAX_CONNECTIONS,
                "http: connection limit reached; closing a new connection"
            );
            drop(io);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(io), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(permit);
        });
    }
}

/// Requests that take longer than 5 s are cut (the anchor's read/write timeouts).
async fn time_limit(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(Duration::from_secs(5), next.run(req)).await {
        Ok(r) => r,
        Err(_) => StatusCode::REQUEST_TIMEOUT.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses() {
        assert_eq!(
            BindAddress::parse("X", "127.0.0.1:61679").expect("tcp"),
            BindAddress::Tcp("127.0.0.1:61679".parse().expect("addr"))
        );
        assert_eq!(
            BindAddress::parse("X", ":61678").expect("all"),
            BindAddress::Tcp("0.0.0.0:61678".parse().expect("addr"))
        );
        assert_eq!(
            BindAddress::parse("X", "unix:/run/x.sock").expect("unix"),
            BindAddress::Unix("/run/x.sock".into())
        );
        for bad in ["", "unix:", "localhost", "1.2.3.4:99999"] {
            let e = BindAddress::parse("INTROSPECTION_BIND_ADDRESS", bad).expect_err(bad);
            assert!(e.to_string().contains("INTROSPECTION_BIND_ADDRESS"));
        }
    }
}
