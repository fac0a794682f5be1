//! [`ImdsServer`]: an instance metadata service for one moto instance, with IMDSv2 token checking.
//!
//! moto's own `/latest/meta-data` is a static stub unrelated to its EC2 state and has no
//! `network/interfaces/macs/`. This server answers the paths the daemon reads at startup (the instance, and
//! the ENIs by MAC) from moto's live state ([`crate::aws::node_view`], refreshed at most every
//! 200 ms), so an ENI attached or an IP assigned through EC2 shows up in IMDS as on a real instance.
//!
//! IMDSv2 as AWS does it:
//! * `PUT /latest/api/token` needs `X-aws-ec2-metadata-token-ttl-seconds` between 1 and 21600 (else 400) and
//!   answers a token valid that long;
//! * every `GET` needs a valid, unexpired `X-aws-ec2-metadata-token` (else 401, which makes clients fetch a new
//!   token);
//! * a request with `X-Forwarded-For` is refused (403), as IMDS refuses proxied token requests;
//! * other methods: 405.
//!
//! [`ImdsServer::set_lag`] imitates IMDS's eventual consistency: for that long after the server first sees an
//! ENI (one that appears after the call), its MAC is listed but every field under it answers 404.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ec2_aws::aws_sdk_ec2::Client;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::aws::{node_view, NodeView};

const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const META: &str = "/latest/meta-data/";
const REFRESH: Duration = Duration::from_millis(200);

/// Request counters, for tests that check the client's behaviour.
#[derive(Debug, Default)]
pub struct Counters {
    pub token_puts: AtomicUsize,
    pub gets: AtomicUsize,
    /// GETs refused for a missing, unknown or expired token.
    pub unauthorized: AtomicUsize,
}

struct State {
    sdk: Client,
    instance_id: String,
    tokens: Mutex<HashMap<String, Instant>>,
    next_token: AtomicUsize,
    view: Mutex<Option<(Instant, NodeView)>>,
    first_seen: Mutex<HashMap<String, Instant>>,
    /// How long new ENIs lag, and since when (ENIs seen before then never lag).
    lag: Mutex<(Duration, Instant)>,
    counters: Arc<Counters>,
    /// Quirks of a real IMDS: extra MACs listed, and paths answered differently (`None`: 404).
    quirks: Mutex<Quirks>,
    /// Every path asked for (relative to `/latest/meta-data/`).
    asked: Mutex<Vec<String>>,
}

/// See [`ImdsServer::set_quirks`].
#[derive(Debug, Clone, Default)]
pub struct Quirks {
    /// MACs listed under `network/interfaces/macs/` besides the instance's ENIs.
    pub extra_macs: Vec<String>,
    /// Answers that replace the instance's (`None`: 404).
    pub paths: HashMap<String, Option<String>>,
}

/// See the module docs. Stops on drop.
pub struct ImdsServer {
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ImdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImdsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ImdsServer {
    /// Serves instance `instance_id` of the moto behind `sdk` on `listener` (bound wherever the client is: on
    /// loopback, or inside a node namespace through [`crate::netns_port::bind_in_netns`]).
    pub fn start(sdk: Client, instance_id: &str, listener: TcpListener) -> ImdsServer {
        let addr = listener.local_addr().expect("listener address");
        listener.set_nonblocking(true).expect("nonblocking");
        let counters = Arc::new(Counters::default());
        let state = Arc::new(State {
            sdk,
            instance_id: instance_id.to_string(),
            tokens: Mutex::default(),
            next_token: AtomicUsize::new(1),
            view: Mutex::default(),
            first_seen: Mutex::default(),
            lag: Mutex::new((Duration::ZERO, Instant::now())),
            counters: Arc::clone(&counters),
            quirks: Mutex::default(),
            asked: Mutex::default(),
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        let st = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("IMDS server runtime");
            rt.block_on(serve(listener, st, rx));
        });
        ImdsServer {
            addr,
            counters,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// A server on `127.0.0.1:<free port>`.
    pub fn start_local(sdk: Client, instance_id: &str) -> ImdsServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind IMDS");
        ImdsServer::start(sdk, instance_id, l)
    }

    /// `http://<addr>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// See the module docs.
    pub fn set_lag(&self, lag: Duration) {
        *lock(&self.state.lag) = (lag, Instant::now());
    }

    /// Serves these quirks from now on (what a real IMDS does that moto's state does not show).
    pub fn set_quirks(&self, quirks: Quirks) {
        *lock(&self.state.quirks) = quirks;
    }

    /// Every path asked for so far (relative to `/latest/meta-data/`).
    pub fn asked(&self) -> Vec<String> {
        lock(&self.state.asked).clone()
    }

    /// Drops the cached view of moto, so the next request sees EC2's state as it is now.
    pub fn refresh(&self) {
        *lock(&self.state.view) = None;
    }

    /// Forgets every token issued so far (as if they had expired).
    pub fn revoke_tokens(&self) {
        lock(&self.state.tokens).clear();
    }
}

impl Drop for ImdsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let st = Arc::clone(&state);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = Arc::clone(&st);
                        async move { Ok::<_, Infallible>(handle(&st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn handle(st: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.headers().contains_key("x-forwarded-for") {
        return reply(StatusCode::FORBIDDEN, "Forbidden");
    }
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::PUT, "/latest/api/token") => {
            st.counters.token_puts.fetch_add(1, Ordering::SeqCst);
            let ttl = req
                .headers()
                .get(TTL_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|t| (1..=21600).contains(t));
            let Some(ttl) = ttl else {
                return reply(StatusCode::BAD_REQUEST, "Bad Request");
            };
            let n = st.next_token.fetch_add(1, Ordering::SeqCst);
            let token = format!("imds-test-token-{n}-{}", std::process::id());
            lock(&st.tokens).insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
            let mut r = reply(StatusCode::OK, token);
            if let Ok(v) = ttl.to_string().parse() {
                r.headers_mut().insert(TTL_HEADER, v);
            }
            r
        }
        (&Method::GET, p) if p.starts_with(META) || p == "/latest/meta-data" => {
            st.counters.gets.fetch_add(1, Ordering::SeqCst);
            let token = req
                .headers()
                .get(TOKEN_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let valid = lock(&st.tokens)
                .get(token)
                .is_some_and(|exp| *exp > Instant::now());
            if !valid {
                st.counters.unauthorized.fetch_add(1, Ordering::SeqCst);
                return reply(StatusCode::UNAUTHORIZED, "Unauthorized");
            }
            let view = match current_view(st).await {
                Ok(v) => v,
                Err(e) => return reply(StatusCode::INTERNAL_SERVER_ERROR, e),
            };
            let lagging = lagging_macs(st, &view);
            let path = p.strip_prefix(META).unwrap_or("");
            lock(&st.asked).push(path.to_string());
            let quirks = lock(&st.quirks).clone();
            let answer = match quirks.paths.get(path) {
                Some(a) => a.clone(),
                None => render(&view, path, &lagging).map(|body| {
                    if path.trim_end_matches('/') == "network/interfaces/macs" {
                        let mut all = vec![body];
                        all.extend(quirks.extra_macs.iter().map(|m| format!("{m}/")));
                        all.join("\n")
                    } else {
                        body
                    }
                }),
            };
            match answer {
                Some(body) => reply(StatusCode::OK, body),
                None => reply(StatusCode::NOT_FOUND, "Not Found"),
            }
        }
        (&Method::GET, _) => reply(StatusCode::NOT_FOUND, "Not Found"),
        _ => reply(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
    }
}

async fn current_view(st: &State) -> Result<NodeView, String> {
    if let Some((at, v)) = lock(&st.view).as_ref() {
        if at.elapsed() < REFRESH {
            return Ok(v.clone());
        }
    }
    let v = node_view(&st.sdk, &st.instance_id).await?;
    *lock(&st.view) = Some((Instant::now(), v.clone()));
    Ok(v)
}

fn lagging_macs(st: &State, view: &NodeView) -> Vec<String> {
    let (lag, since) = *lock(&st.lag);
    let now = Instant::now();
    let mut seen = lock(&st.first_seen);
    view.enis
        .values()
        .filter(|e| {
            let first = *seen.entry(e.eni_id.clone()).or_insert(now);
            first >= since && now.duration_since(first) < lag
        })
        .map(|e| e.mac.clone())
        .collect()
}

/// The answer to `path` (relative to `/latest/meta-data/`), `None` for 404.
pub fn render(view: &NodeView, path: &str, lagging: &[String]) -> Option<String> {
    let primary = view.primary();
    match path {
        "" => Some(
            [
                "instance-id",
                "instance-type",
                "local-ipv4",
                "mac",
                "network/",
                "placement/",
            ]
            .join("\n"),
        ),
        "instance-id" => Some(view.instance_id.clone()),
        "instance-type" => Some(view.instance_type.clone()),
        "local-ipv4" => Some(view.local_ipv4.clone()),
        "mac" => Some(view.primary_mac.clone()),
        "placement/availability-zone" => Some(view.az.clone()),
        "placement/region" => Some(view.region.clone()),
        "security-groups" | "security-group-ids" => Some(primary.security_groups.join("\n")),
        "network/interfaces/macs" | "network/interfaces/macs/" => Some(
            view.enis
                .keys()
                .map(|m| format!("{m}/"))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        p => {
            let rest = p.strip_prefix("network/interfaces/macs/")?;
            let (mac, field) = rest.split_once('/').unwrap_or((rest, ""));
            let eni = view.enis.get(mac)?;
            if lagging.iter().any(|m| m == mac) {
                return None;
            }
            eni_field(eni, field)
        }
    }
}

fn eni_field(eni: &crate::aws::EniView, field: &str) -> Option<String> {
    Some(match field {
        "" => [
            "device-number",
            "interface-id",
            "local-ipv4s",
            "mac",
            "network-card",
            "security-group-ids",
            "subnet-id",
            "subnet-ipv4-cidr-block",
            "vpc-id",
            "vpc-ipv4-cidr-block",
            "vpc-ipv4-cidr-blocks",
        ]
        .join("\n"),
        "device-number" => eni.device_index.to_string(),
        "interface-id" => eni.eni_id.clone(),
        "local-ipv4s" => eni.ipv4s.join("\n"),
        "mac" => eni.mac.clone(),
        "network-card" => eni.network_card.to_string(),
        "security-group-ids" => eni.security_groups.join("\n"),
        "subnet-id" => eni.subnet_id.clone(),
        "subnet-ipv4-cidr-block" => eni.subnet_cidr.clone(),
        "vpc-id" => eni.vpc_id.clone(),
        "vpc-ipv4-cidr-block" => eni.vpc_cidrs.first()?.clone(),
        "vpc-ipv4-cidr-blocks" => eni.vpc_cidrs.join("\n"),
        _ => return None,
    })
}
