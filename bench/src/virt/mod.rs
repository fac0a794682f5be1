//! Benchmarks in virtual time: the pool engines against the EC2 simulator on a paused tokio clock, so hours of
//! pool behaviour (cooldowns, 5 s loops, 60 s reconciles, token-bucket refills, attach latency) run in seconds.
//!
//! Two engines drive the same simulator through the same `Ec2` and `Imds` traits:
//! - **ours**: `ipamd::engine::Node` with its pool task (`run_pool`), client-side pacing and reconcile, exactly as
//!   `ipamd run` wires them, with the host double (no kernel side);
//! - **anchor model**: [`anchor::AnchorNode`], the anchor's pool policy (see
//!   that module), behind a model of the AWS SDK's standard retryer ([`SdkRetryEc2`]).
//!
//! Both use the same datastore type (`ipamd::core::datastore::Datastore`) for who holds which address and for the
//! cooldown, so an ADD succeeds or fails by the same rule in both; only the pool policy and the EC2 discipline
//! differ. EC2 calls are counted where EC2 would count them: by the simulator (single node) or by the shared
//! account ([`AccountEc2`], cluster), throttled calls included.

pub mod anchor;
pub mod calls;
pub mod scaleup;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ec2_api::bucket::TokenBucket;
use ec2_api::clock::Clock;
use ec2_api::layer::{Attempt, Call};
use ec2_api::{Api, Ec2, Ec2Error, Ec2Layer, Imds, Layered};
use ec2_sim::ThrottleSpec;
use ipamd::config::Config;
use ipamd::core::datastore::{IpamKey, PodMeta};
use ipamd::engine::{Node, NodeDeps, NodeFacts};
use ipamd::host::fakes::FakeHost;
use ipamd::kube::NoCluster;
use ipamd::ratelimit::PacingConfig;
use tokio::sync::Notify;

use crate::error::BenchError;

/// Which pool engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Ours,
    Anchor,
}

impl Engine {
    pub fn label(self) -> &'static str {
        match self {
            Engine::Ours => "ours",
            Engine::Anchor => "anchor model",
        }
    }
}

/// A node under either engine, as the workload sees it.
pub trait PoolNode: Send + Sync {
    /// One ADD; false when no address was free.
    fn add(&self, key: &IpamKey) -> bool;
    /// One DEL.
    fn del(&self, key: &IpamKey);
    /// One ADD as the gRPC service makes it (`AddNetwork`): ours waits up to `bound` for an address on its way
    /// (the plugin's deadline less the margin), the anchor fails at once.
    fn add_waiting<'a>(
        &'a self,
        key: &'a IpamKey,
        bound: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + 'a>> {
        let _ = bound;
        let ok = self.add(key);
        Box::pin(async move { ok })
    }
}

impl PoolNode for Node {
    fn add(&self, key: &IpamKey) -> bool {
        Node::add(self, key, &PodMeta::default()).is_ok()
    }
    fn add_waiting<'a>(
        &'a self,
        key: &'a IpamKey,
        bound: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + 'a>> {
        Box::pin(async move {
            self.add_durable_within(key, &PodMeta::default(), bound)
                .await
                .is_ok()
        })
    }
    fn del(&self, key: &IpamKey) {
        let _ = Node::del(self, key);
    }
}

/// A started node and the handle to stop its pool task.
pub struct Running {
    pub node: Arc<dyn PoolNode>,
    pub shutdown: Arc<Notify>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.notify_one();
        self.shutdown.notify_waiters();
        let _ = self.task.await;
    }
}

/// Starts a node under `engine`: startup (one DescribeNetworkInterfaces, ...), the initial fill, the pool task.
pub async fn start(
    engine: Engine,
    ec2: Arc<dyn Ec2>,
    imds: Arc<dyn Imds>,
    clock: Arc<dyn Clock>,
    config: Config,
    max_pods: Option<u32>,
) -> Result<Running, BenchError> {
    start_paced(
        engine,
        ec2,
        imds,
        clock,
        config,
        max_pods,
        PacingConfig::default(),
    )
    .await
}

/// [`start`] with ours paced by `pacing` (e.g. with a cluster's EC2 schedule shared by every node); the anchor
/// model has no such thing and ignores it.
pub async fn start_paced(
    engine: Engine,
    ec2: Arc<dyn Ec2>,
    imds: Arc<dyn Imds>,
    clock: Arc<dyn Clock>,
    config: Config,
    max_pods: Option<u32>,
    pacing: PacingConfig,
) -> Result<Running, BenchError> {
    let shutdown = Arc::new(Notify::new());
    match engine {
        Engine::Ours => {
            let deps = NodeDeps {
                ec2,
                imds,
                // The virtual benchmarks have no kernel side.
                hostnet: Arc::new(FakeHost::default()),
                clock,
                cluster: Arc::new(NoCluster),
            };
            let facts = NodeFacts::discover(deps.imds.as_ref())
                .await
                .map_err(|e| BenchError::Node(e.to_string()))?;
            let node = Node::init_with(deps, facts, config, max_pods, pacing)
                .await
                .map_err(|e| BenchError::Node(e.to_string()))?;
            // As `ipamd run`: a failed fill is not fatal, the pool task retries.
            let _ = node.fill().await;
            let task = tokio::task::spawn_local(
                Arc::clone(&node).run_pool(Duration::from_secs(5), Arc::clone(&shutdown)),
            );
            Ok(Running {
                node,
                shutdown,
                task,
            })
        }
        Engine::Anchor => {
            let ec2: Arc<dyn Ec2> =
                Arc::new(SdkRetryEc2::new(SdkRetry::new(Arc::clone(&clock)), ec2));
            let node = anchor::AnchorNode::init(ec2, imds, clock, config, max_pods).await?;
            let task = tokio::task::spawn_local(Arc::clone(&node).run(Arc::clone(&shutdown)));
            Ok(Running {
                node,
                shutdown,
                task,
            })
        }
    }
}

/// The AWS SDK for Go v2's standard retryer, as the anchor's EC2 client uses it: up to 3 attempts for retryable
/// errors (throttling, timeouts, 5xx), "full jitter" backoff `random[0,1) × 2^attempt` seconds capped at 20 s,
/// and the client's retry quota (500 tokens; a retry costs 5, 10 after a timeout; a success refunds the retry's
/// cost, or adds 1 when it needed none), which stops retries when many fail.
pub type SdkRetryEc2 = Layered<SdkRetry>;

/// The retry model of [`SdkRetryEc2`], as an [`Ec2Layer`].
pub struct SdkRetry {
    clock: Arc<dyn Clock>,
    quota: Mutex<u32>,
}

const SDK_MAX_ATTEMPTS: u32 = 3;
const SDK_QUOTA: u32 = 500;

impl SdkRetry {
    pub fn new(clock: Arc<dyn Clock>) -> SdkRetry {
        SdkRetry {
            clock,
            quota: Mutex::new(SDK_QUOTA),
        }
    }

    async fn retried<T>(&self, call: Call<'_, T>) -> Result<T, Ec2Error> {
        let mut attempt = 1;
        let mut paid = 0;
        loop {
            match call().await {
                Ok(v) => {
                    let mut q = self.quota.lock().unwrap_or_else(|p| p.into_inner());
                    *q = (*q + if paid > 0 { paid } else { 1 }).min(SDK_QUOTA);
                    return Ok(v);
                }
                Err(e) if e.is_retryable() && attempt < SDK_MAX_ATTEMPTS => {
                    let cost = if matches!(e, Ec2Error::Timeout { .. }) {
                        10
                    } else {
                        5
                    };
                    {
                        let mut q = self.quota.lock().unwrap_or_else(|p| p.into_inner());
                        if *q < cost {
                            return Err(e);
                        }
                        *q -= cost;
                    }
                    paid = cost;
                    let cap = Duration::from_secs(20);
                    let d = Duration::from_secs(1u64 << attempt.min(5)).min(cap);
                    self.clock.sleep(d.mul_f64(rand::random::<f64>())).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Ec2Layer for SdkRetry {
    fn around<'a, T: Send + 'a>(&'a self, _api: Api, call: Call<'a, T>) -> Attempt<'a, T> {
        Box::pin(self.retried(call))
    }
}

/// Calls EC2 saw from a whole cluster, by API: `(sent, throttled)`.
pub type AccountCounts = BTreeMap<&'static str, (u64, u64)>;

/// One AWS account's request-rate limits, shared by every node of a simulated cluster: a token bucket per API
/// with EC2's documented sizes (the simulator's [`ThrottleSpec`] defaults: mutating 200 tokens at 5/s,
/// Describe* 100 at 20/s). A call finding its bucket empty is answered `RequestLimitExceeded` and, as on EC2,
/// takes no token.
pub struct Account {
    spec: ThrottleSpec,
    clock: Arc<dyn Clock>,
    state: Mutex<(BTreeMap<&'static str, TokenBucket>, AccountCounts)>,
}

impl Account {
    pub fn new(spec: ThrottleSpec, clock: Arc<dyn Clock>) -> Arc<Account> {
        Arc::new(Account {
            spec,
            clock,
            state: Mutex::new((BTreeMap::new(), BTreeMap::new())),
        })
    }

    fn gate(&self, api: Api) -> Result<(), Ec2Error> {
        let now = self.clock.now();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (cap, rate) = if api.is_mutating() {
            self.spec.mutating
        } else {
            self.spec.non_mutating
        };
        let api = api.name();
        let ok =
            st.0.entry(api)
                .or_insert_with(|| TokenBucket::new(cap, rate, now))
                .try_take(now)
                .is_ok();
        let c = st.1.entry(api).or_default();
        c.0 += 1;
        if ok {
            Ok(())
        } else {
            c.1 += 1;
            Err(Ec2Error::Throttled { api })
        }
    }

    /// Calls so far.
    pub fn counts(&self) -> AccountCounts {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }
}

/// One node's EC2 endpoint in a shared [`Account`]: the account's buckets first, then the node's simulator
/// (whose own throttling is off).
pub type AccountEc2 = Layered<Arc<Account>>;

impl Ec2Layer for Account {
    fn around<'a, T: Send + 'a>(&'a self, api: Api, call: Call<'a, T>) -> Attempt<'a, T> {
        match self.gate(api) {
            Ok(()) => call(),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

/// Runs `fut` to completion on a fresh paused single-threaded tokio runtime (virtual time), inside a
/// `LocalSet` so the engines' tasks are spawned with `spawn_local` and need not be `Send`.
pub fn run_virtual<T>(fut: impl std::future::Future<Output = T>) -> Result<T, BenchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(BenchError::io("tokio runtime"))?;
    Ok(tokio::task::LocalSet::new().block_on(&rt, fut))
}

/// The pod key of pod number `i` of node `node`.
pub fn key(node: usize, i: usize) -> IpamKey {
    IpamKey {
        network_name: "aws-cni".into(),
        container_id: format!("n{node}p{i}"),
        if_name: "eth0".into(),
    }
}

/// A configuration from `VAR=value` pairs.
pub fn config_of(vars: &[(&str, &str)]) -> Result<Config, BenchError> {
    let env: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_env(&env).map_err(|e| BenchError::Other(format!("configuration: {e}")))
}
