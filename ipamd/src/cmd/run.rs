//! `ipamd run`: wires the backend, the node, the pool task and the gRPC server, and shuts down cleanly.
//!
//! Order (as the anchor): read the checkpoint (`AWS_VPC_K8S_CNI_BACKING_STORE`; a bad one stops ipamd here and
//! is kept), discover the node, configure its ENIs, restore the checkpoint's pods onto the addresses EC2
//! confirms, fill the pool, bind the socket, release restored pods whose veth is gone (before the first
//! connection is accepted), and only then serve, so a runtime that sees the socket (and the health service
//! SERVING) can get IPs at once. The recovery order is in [`crate::engine::recovery`], the checkpoint's format and group
//! commit in [`crate::engine::checkpoint`].
//!
//! SIGTERM/SIGINT: stop accepting connections, let in-flight requests finish (at most [`DRAIN_TIMEOUT`]), stop
//! the pool task (at most [`POOL_STOP_TIMEOUT`]), let the veth reaper delete what DELs queued (at most
//! [`crate::reaper::SHUTDOWN_DRAIN_TIMEOUT`]), write the checkpoint one last time, remove the socket, exit 0:
//! well within Kubernetes' default 30 s grace period. SIGUSR1: run a full reconcile pass now.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_cni_proto::{
    CniBackendServer, ConfigServerBackendServer, IpamdControlServer, HEALTH_SERVICE_NAME,
};
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::{Config, ConfigError, EnvSource, ProcessEnv};
use crate::control::ControlService;
use crate::engine::checkpoint::Checkpoint;
use crate::engine::{Node, NodeDeps, NodeError, NodeFacts, Recovery};
use crate::host::{HostNetwork, NetlinkHost};
use crate::kube::{Cluster, NoCluster};
use crate::kube_api::{KubeCluster, KubeError, KubeSettings, STARTUP_SYNC_WAIT};
use crate::metered::{Meter, MeteredEc2, MeteredImds};
use crate::metrics::Metrics;
use crate::netpol::{ConfigServer, WithPolicyMode};
use crate::ratelimit::PacingConfig;
use crate::reaper::{Reaper, ReaperConfig, ReaperTask};
use crate::serve::http::{self, BindAddress, BindAddressError, HttpState, ServeError};
use crate::serve::rpc::CniService;
use ec2_api::clock::{Clock, SystemClock};
#[cfg(feature = "sim")]
use ec2_sim::SimError;

/// Which EC2 the daemon talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The real EC2 and IMDS of the instance.
    Aws,
    /// The built-in EC2 simulator, on a simulated node in the current network namespace.
    Sim,
}

/// Longest wait for in-flight requests after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the pool task (an EC2 call in flight) after SIGTERM.
pub const POOL_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `ipamd run` (its command line).
#[derive(Debug, Clone, clap::Args)]
pub struct RunOptions {
    /// Unix socket to serve gRPC on.
    #[arg(long, default_value = aws_cni_proto::DEFAULT_IPAMD_SOCKET)]
    pub socket: PathBuf,
    /// Which EC2 to use.
    #[arg(long, value_enum, default_value_t = Backend::Aws)]
    pub backend: Backend,
    /// Instance type of the simulated node (sim backend).
    #[arg(long, default_value = "m5.large")]
    pub instance_type: String,
    /// Enter this network namespace (e.g. /run/netns/NAME) before anything else.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// The simulated EC2 state (sim backend): loaded from here if present, written here (fsync'd) after every
    /// change, so the simulated instance survives ipamd's death. Default: sim-ec2.json beside the checkpoint,
    /// with the VPC fabric in a kept namespace (awscni-sim-<hash>, logged), so a restart resumes the instance.
    #[arg(long)]
    pub sim_state: Option<PathBuf>,
    /// Put the simulated VPC fabric in this existing network namespace (e.g. /run/netns/NAME), so ENI links
    /// outlive ipamd; its owner removes it. Default: the kept namespace without --sim-state, else an anonymous
    /// namespace that dies with ipamd.
    #[arg(long)]
    pub sim_fabric_netns: Option<PathBuf>,
    /// How long every simulated EC2 call takes, e.g. 200ms (sim backend).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub sim_api_latency: Duration,
    /// More subnets in the simulated VPC (sim backend, a fresh instance only): CIDR inside 10.0.0.0/16, optionally
    /// `@ZONE` for another availability zone (default: the node's, us-west-2a). Repeatable; IDs are given in
    /// order (subnet-0sim0000000000002, ...) and listed in the state file. For custom networking's ENIConfigs.
    #[arg(long = "sim-subnet", value_name = "CIDR[@ZONE]")]
    pub sim_subnets: Vec<String>,
    /// Development source of cluster objects (no API server): a JSON file with this node's object and the
    /// ENIConfigs, re-read when it changes (see `ipamd::cluster_file`). Without it, nothing is known of the
    /// cluster.
    #[arg(long, value_name = "FILE")]
    pub cluster_objects: Option<PathBuf>,
    /// Attach an ENI of another component to a fresh simulated instance at launch (repeatable): `trunk`, `efa`,
    /// `efa-only`, `untagged`, `no_manage` (sim backend).
    #[arg(long = "sim-foreign-eni")]
    pub sim_foreign_enis: Vec<String>,
    /// Override the max-pods value computed from the instance type.
    #[arg(long)]
    pub max_pods: Option<u32>,
}

/// `ipamd run`: enters `--netns` (before any thread or socket exists), then runs the daemon until a signal.
pub fn main(opts: RunOptions) -> std::process::ExitCode {
    if let Err(e) = super::init_tracing() {
        return super::failed("ipamd", e);
    }
    super::raise_nofile_limit();
    if let Some(ns) = &opts.netns {
        if let Err(e) = datapath::enter_netns(ns) {
            return super::failed("ipamd", e);
        }
    }
    let result = super::runtime()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(run(opts)).map_err(|e| e.to_string()));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            super::failed("ipamd", e)
        }
    }
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("SNAT backend: {0}")]
    SnatBackend(#[from] crate::host::snat::detect::BadBackend),
    #[error("the sim backend refuses to run in the host's initial network namespace (it would create links \
             on the machine's real network); start it in a namespace of its own, e.g. `ip netns exec NAME ipamd \
             run --backend sim` or `ipamd run --backend sim --netns /run/netns/NAME`")]
    SimInInitialNetns,
    #[error("the aws backend is not available in this build yet; use --backend sim")]
    AwsBackendUnavailable,
    #[error("the sim backend is not available in this build (built without the `sim` feature)")]
    SimBackendUnavailable,
    #[cfg(feature = "aws")]
    #[error("aws backend: {0}")]
    Aws(#[from] ec2_aws::BackendError),
    #[error("checking the network namespace: {0}")]
    NetnsCheck(std::io::Error),
    #[error("building the simulated VPC: {0}")]
    Fabric(datapath::NetlinkError),
    #[cfg(feature = "sim")]
    #[error("simulator: {0}")]
    Sim(#[from] SimError),
    #[error("netlink: {0}")]
    Netlink(datapath::NetlinkError),
    #[error("node: {0}")]
    Node(#[from] NodeError),
    #[error(transparent)]
    Checkpoint(#[from] crate::engine::checkpoint::CheckpointError),
    #[error("socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    BindAddress(#[from] BindAddressError),
    #[error(transparent)]
    Http(#[from] ServeError),
    #[error(transparent)]
    ClusterObjects(#[from] crate::cluster_file::ClusterFileError),
    #[error("--sim-subnet {value:?}: {reason}")]
    SimSubnet { value: String, reason: String },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] KubeError),
}

/// Endpoint settings, from the anchor's variables.
#[derive(Debug, Clone)]
struct Endpoints {
    metrics: Option<BindAddress>,
    introspection: Option<BindAddress>,
}

fn env_bool(env: &dyn EnvSource, var: &'static str) -> Result<bool, ConfigError> {
    Ok(crate::config::parse_bool(env, var)?.unwrap_or(false))
}

fn endpoints(env: &dyn EnvSource) -> Result<Endpoints, DaemonError> {
    let metrics = if env_bool(env, "DISABLE_METRICS")? {
        None
    } else {
        let v = env
            .get("METRICS_BIND_ADDRESS")
            .unwrap_or_else(|| ":61678".into());
        Some(BindAddress::parse("METRICS_BIND_ADDRESS", &v)?)
    };
    let introspection = if env_bool(env, "DISABLE_INTROSPECTION")? {
        None
    } else {
        let v = env
            .get("INTROSPECTION_BIND_ADDRESS")
            .unwrap_or_else(|| "127.0.0.1:61679".into());
        Some(BindAddress::parse("INTROSPECTION_BIND_ADDRESS", &v)?)
    };
    Ok(Endpoints {
        metrics,
        introspection,
    })
}

/// Starts the veth reaper ([`crate::reaper`]) unless `AWS_CNI_DISABLE_VETH_REAPER` is true;
/// `AWS_CNI_VETH_REAPER_DELAY_MS` holds each deletion back (default 0).
fn start_reaper(
    env: &dyn EnvSource,
    veth_prefix: &str,
    metrics: &Metrics,
    clock: Arc<dyn Clock>,
) -> Result<Option<(Reaper, ReaperTask)>, DaemonError> {
    if env_bool(env, "AWS_CNI_DISABLE_VETH_REAPER")? {
        tracing::info!(
            "AWS_CNI_DISABLE_VETH_REAPER: DEL deletes pod veths synchronously in the plugin"
        );
        return Ok(None);
    }
    let delay = match env
        .get("AWS_CNI_VETH_REAPER_DELAY_MS")
        .map(|v| v.trim().to_string())
    {
        None => Duration::ZERO,
        Some(v) if v.is_empty() => Duration::ZERO,
        Some(v) => Duration::from_millis(v.parse::<u64>().map_err(|e| ConfigError {
            var: "AWS_CNI_VETH_REAPER_DELAY_MS",
            value: v.clone(),
            reason: format!("expected milliseconds: {e}"),
        })?),
    };
    let netns = datapath::current_netns_id().map_err(DaemonError::NetnsCheck)?;
    let links = NetlinkHost::new(
        datapath::Netlink::connect(None).map_err(DaemonError::Netlink)?,
        clock,
    );
    Ok(Some(Reaper::spawn(
        ReaperConfig {
            veth_prefix: veth_prefix.to_string(),
            netns,
            capacity: crate::reaper::DEFAULT_QUEUE_CAPACITY,
            delay,
        },
        Arc::new(links),
        metrics.reaper_metrics(),
    )))
}

/// Effective values of the variables the anchor's introspection reports, with the anchor's defaults.
fn env_settings(env: &dyn EnvSource, vars: &[(&str, &str)]) -> BTreeMap<String, String> {
    vars.iter()
        .map(|(k, default)| {
            (
                k.to_string(),
                env.get(k).unwrap_or_else(|| default.to_string()),
            )
        })
        .collect()
}

/// Removes a stale socket and binds a new one with mode 0660 (root only, as the anchor).
pub fn bind_socket(path: &Path) -> Result<UnixListener, DaemonError> {
    let err = |source| DaemonError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(listener)
}

/// The EC2 and IMDS clients as the engine uses them, and the node's facts when connecting already read them.
type Ec2Stack = (
    Arc<dyn ec2_api::Ec2>,
    Arc<dyn ec2_api::Imds>,
    Option<NodeFacts>,
);

/// The EC2 and IMDS the node talks to, assembled in one place: the backend (the instance's EC2 and IMDS, or the
/// simulator on a simulated node), each call metered. (The pacing layer, the node's token bucket and throttle
/// gate, is added by the node itself.)
async fn ec2_stack(
    opts: &RunOptions,
    config: &Config,
    checkpoint_path: Option<&Path>,
    metrics: &Arc<Metrics>,
    clock: &Arc<dyn Clock>,
) -> Result<Ec2Stack, DaemonError> {
    let (ec2, imds, facts): (Arc<dyn ec2_api::Ec2>, Arc<dyn ec2_api::Imds>, _) = match opts.backend
    {
        #[cfg(not(feature = "aws"))]
        Backend::Aws => {
            let _ = (config, checkpoint_path);
            return Err(DaemonError::AwsBackendUnavailable);
        }
        #[cfg(feature = "aws")]
        Backend::Aws => {
            // IMDS (region, instance), then EC2 with the default credential chain, then the instance type's
            // limits (compiled-in table, else DescribeInstanceTypes).
            // The SDK makes one attempt per call (unless AWS_EC2_MAX_ATTEMPTS says otherwise): PacedEc2 retries,
            // through the throttle gate, so SDK retries would only multiply throttled calls.
            let aws = ec2_aws::connect(ec2_aws::AwsOptions::caller_retries(), |k: &str| {
                ProcessEnv.get(k)
            })
            .await?;
            let facts = NodeFacts {
                meta: aws.node,
                limits: *aws.limits,
            };
            (Arc::new(aws.ec2), Arc::new(aws.imds), Some(facts))
        }
        #[cfg(not(feature = "sim"))]
        Backend::Sim => return Err(DaemonError::SimBackendUnavailable),
        #[cfg(feature = "sim")]
        Backend::Sim => {
            if datapath::is_initial_netns().map_err(DaemonError::NetnsCheck)? {
                return Err(DaemonError::SimInInitialNetns);
            }
            let sim = ec2_sim::run::start(ec2_sim::run::RunSpec {
                instance_type: opts.instance_type.clone(),
                placement: ec2_sim::run::Placement::for_run(
                    opts.sim_state.as_deref(),
                    opts.sim_fabric_netns.as_deref(),
                    checkpoint_path,
                ),
                api_latency: opts.sim_api_latency,
                mtu: config.eni_mtu,
                extra_subnets: opts
                    .sim_subnets
                    .iter()
                    .map(|v| sim_subnet(v))
                    .collect::<Result<_, _>>()?,
                foreign_enis: opts
                    .sim_foreign_enis
                    .iter()
                    .map(|k| k.parse())
                    .collect::<Result<_, String>>()
                    .map_err(|e| DaemonError::from(SimError::Setting(e)))?,
            })
            .await?;
            for (fault, api, count) in sim_faults(&ProcessEnv)? {
                tracing::warn!(
                    ?fault,
                    api,
                    count,
                    "{SIM_FAULTS_ENV}: injecting simulated EC2 faults"
                );
                sim.inject_faults(fault, Some(&api), count);
            }
            (Arc::new(sim.clone()), Arc::new(sim), None)
        }
    };
    Ok((
        Arc::new(MeteredEc2::new(
            Meter::new(Arc::clone(metrics), Arc::clone(clock)),
            ec2,
        )),
        Arc::new(MeteredImds::new(
            imds,
            Arc::clone(metrics),
            Arc::clone(clock),
        )),
        facts,
    ))
}

/// Simulated EC2 faults for the sim backend (tests): `FAULT:API:COUNT[,...]`, FAULT one of `unauthorized`,
/// `throttle`, `server-error`, `unavailable`; the next COUNT calls of API fail so.
pub const SIM_FAULTS_ENV: &str = "AWS_CNI_SIM_FAULTS";

#[cfg(feature = "sim")]
fn sim_faults(env: &dyn EnvSource) -> Result<Vec<(ec2_sim::Fault, String, u32)>, ConfigError> {
    let Some(v) = env.get(SIM_FAULTS_ENV).filter(|v| !v.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let bad = |reason: String| ConfigError {
        var: SIM_FAULTS_ENV,
        value: v.clone(),
        reason,
    };
    v.split(',')
        .map(|item| {
            let parts: Vec<&str> = item.trim().split(':').collect();
            let [fault, api, count] = parts.as_slice() else {
                return Err(bad(format!("{item:?}: expected FAULT:API:COUNT")));
            };
            let fault = match *fault {
                "unauthorized" => ec2_sim::Fault::Unauthorized,
                "throttle" => ec2_sim::Fault::Throttle,
                "server-error" => ec2_sim::Fault::ServerError,
                "unavailable" => ec2_sim::Fault::Unavailable,
                other => return Err(bad(format!("unknown fault {other:?}"))),
            };
            let count = count
                .parse()
                .map_err(|e| bad(format!("count {count:?}: {e}")))?;
            Ok((fault, api.to_string(), count))
        })
        .collect()
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: RunOptions) -> Result<(), DaemonError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
    let startup = clock.now();
    let config = Config::from_env(&ProcessEnv)?;
    let policy_mode = crate::netpol::PolicyMode::from_env(&ProcessEnv)?;
    let schedule_settings = crate::schedule::ScheduleSettings::from_env(&ProcessEnv)?;
    let endpoints = endpoints(&ProcessEnv)?;
    let metrics = Arc::new(Metrics::new()?);
    // The checkpoint first: a bad one stops ipamd before anything is touched, and is kept as it is.
    let checkpoint_path = checkpoint_path(&opts);
    let entries = match &checkpoint_path {
        Some(path) => {
            let entries = crate::engine::checkpoint::read(path)?;
            tracing::info!(path = %path.display(), entries = entries.as_ref().map_or(0, Vec::len),
                "read the checkpoint");
            entries
        }
        None => {
            tracing::info!(
                "simulated node without --sim-state: assignments are kept in memory only"
            );
            None
        }
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
    let (ec2, imds, facts) =
        ec2_stack(&opts, &config, checkpoint_path.as_deref(), &metrics, &clock).await?;
    // What the aws backend read while connecting (IMDS's node, the limits) is passed on; the simulator's node is
    // read from its IMDS once. The engine reads neither again.
    let facts = match facts {
        Some(facts) => facts,
        None => NodeFacts::discover(imds.as_ref()).await?,
    };
    // One netlink socket for ENI setup and pod recovery; the veth reaper has its own (a veth's deletion waits
    // for RCU grace periods inside the kernel call, and must not hold ENI setup back).
    // The same reading (and check) as the installer's, which writes it into the plugin's conflist.
    let veth_prefix = crate::config::env::veth_prefix(&|k| ProcessEnv.get(k))?;
    let snat = crate::host::snat::detect::choose_on_host(
        ProcessEnv
            .get(crate::host::snat::detect::BACKEND_ENV)
            .as_deref(),
        None,
    )
    .await?;
    tracing::info!(backend = %snat.kind, reason = %snat.reason, "SNAT/connmark backend chosen");
    let host = Arc::new(
        NetlinkHost::new(
            datapath::Netlink::connect(None).map_err(DaemonError::Netlink)?,
            Arc::clone(&clock),
        )
        .with_snat(crate::host::snat::backend::real_backends(snat.kind, None))
        .with_snat_selection(snat.clone())
        .with_veth_prefix(veth_prefix.clone()),
    );
    // The Kubernetes API: optional unless a setting needs it (see crate::kube_api). `--cluster-objects` (a
    // development file, see crate::cluster_file) stands in for it where no API server runs.
    let mut needs_api: Vec<String> = Vec::new();
    if config.custom_networking.is_some() {
        needs_api.push("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG".into());
    }
    let (cluster, kube): (Arc<dyn Cluster>, Option<Arc<KubeCluster>>) = match &opts.cluster_objects
    {
        Some(path) => (
            Arc::new(crate::cluster_file::FileCluster::open(path)?),
            None,
        ),
        None => match KubeSettings::from_env(&ProcessEnv, config.annotate_pod_ip, needs_api)? {
            Some(settings) => {
                let k = KubeCluster::start(settings, Arc::clone(&clock)).await?;
                (Arc::clone(&k) as Arc<dyn Cluster>, Some(k))
            }
            None => {
                tracing::info!("no Kubernetes API configured: running on the instance's own view");
                (Arc::new(NoCluster), None)
            }
        },
    };
    // The cluster's EC2 schedule (see crate::schedule): on the Kubernetes API when there is one.
    let pacing = PacingConfig {
        schedule: match (&kube, schedule_settings.enabled) {
            (Some(k), true) => {
                let s = k.ec2_schedule();
                tracing::info!(schedule = %crate::schedule::ClusterSchedule::describe(&s),
                    share = ?schedule_settings.share, "EC2 calls follow the cluster's EC2 schedule");
                crate::ratelimit::SharedSchedule(Arc::new(s))
            }
            (None, true) => {
                tracing::info!("no Kubernetes API: EC2 calls are paced by this node alone");
                crate::ratelimit::SharedSchedule::default()
            }
            (_, false) => {
                tracing::info!(
                    "{}=false: EC2 calls are paced by this node alone",
                    crate::schedule::ENV_SCHEDULE
                );
                crate::ratelimit::SharedSchedule::default()
            }
        },
        schedule_share: schedule_settings.share,
        ..PacingConfig::default()
    };
    let deps = NodeDeps {
        ec2,
        imds,
        hostnet: Arc::clone(&host) as Arc<dyn HostNetwork>,
        clock: Arc::clone(&clock),
        cluster,
    };
    let observer = metrics.checkpoint_write_seconds.clone();
    let recovery = Recovery {
        checkpoint: checkpoint_path.map(|path| {
            Arc::new(
                Checkpoint::new(path).with_observer(Arc::new(move |d: Duration| {
                    observer.observe(d.as_secs_f64())
                })),
            )
        }),
        entries: entries.unwrap_or_default(),
        pods: Some(host),
        veth_prefix: veth_prefix.clone(),
    };
    let init_started = clock.now();
    let node =
        match Node::init_recovering(deps, facts, config, opts.max_pods, pacing, recovery).await {
            Ok(n) => n,
            Err(e) => {
                metrics
                    .node_initialization_duration_seconds
                    .with_label_values(&["false"])
                    .observe(clock.now().saturating_sub(init_started).as_secs_f64());
                return Err(e.into());
            }
        };
    metrics
        .node_initialization_duration_seconds
        .with_label_values(&["true"])
        .observe(clock.now().saturating_sub(init_started).as_secs_f64());
    if let Some(k) = &kube {
        // The node's capacity and cordon shape the first fill: give the caches a moment to sync.
        if !k.wait_synced(STARTUP_SYNC_WAIT).await {
            tracing::warn!(status = %k.api_status().describe(),
                "Kubernetes API not synced yet; going on (new pods wait for it only if a setting needs it)");
        }
    }
    // The live pool knobs (the ConfigMap directory over the environment), before the first fill; SIGHUP and
    // changes of the directory reload them from now on.
    let mut reloader = crate::reload::Reloader::new(
        Arc::clone(&node),
        Box::new(ProcessEnv),
        crate::reload::Reloader::dir_from(&ProcessEnv),
    );
    let _ = reloader.reload("startup");
    let reload_stop = Arc::new(Notify::new());
    let reload_task = tokio::spawn(reloader.watch(Arc::clone(&reload_stop)));
    if let Err(e) = node.fill().await {
        // Not fatal: the anchor never makes the node unusable because EC2 said no; the pool task retries.
        tracing::warn!(error = %e, "initial pool fill failed; will retry in the background");
    }

    let shutdown = Arc::new(Notify::new());
    let pool =
        tokio::spawn(Arc::clone(&node).run_pool(Duration::from_secs(5), Arc::clone(&shutdown)));
    let (stop_flusher, flusher_stop) = tokio::sync::watch::channel(false);
    let flusher = tokio::spawn(Arc::clone(&node).run_checkpointer(flusher_stop));
    let reconcile_signal = tokio::spawn(reconcile_on_sigusr1(Arc::clone(&node)));
    // Custom networking: the node's ENIConfig followed for status, metrics and introspection (returns at once
    // when off).
    let eni_config_watch = tokio::spawn(
        Arc::clone(&node).run_eni_config_watch(Duration::from_secs(5), Arc::clone(&shutdown)),
    );

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    health_reporter
        .set_service_status(HEALTH_SERVICE_NAME, tonic_health::ServingStatus::Serving)
        .await;

    let http_state = HttpState {
        node: Arc::clone(&node),
        metrics: Arc::clone(&metrics),
        networkutils_env: env_settings(
            &ProcessEnv,
            &[
                ("AWS_VPC_K8S_CNI_CONNMARK", "0x80"),
                ("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", ""),
                ("AWS_VPC_K8S_CNI_EXTERNALSNAT", "false"),
                ("AWS_EXTERNAL_SERVICE_CIDRS", ""),
                ("AWS_VPC_ENI_MTU", "9001"),
                ("AWS_VPC_K8S_CNI_VETHPREFIX", "eni"),
                ("AWS_VPC_CNI_NODE_PORT_SUPPORT", "true"),
                ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "prng"),
            ],
        ),
        ipamd_env: env_settings(
            &ProcessEnv,
            &[
                ("WARM_IP_TARGET", ""),
                ("WARM_ENI_TARGET", "1"),
                ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "false"),
                ("AWS_MANAGE_ENIS_NON_SCHEDULABLE", "false"),
                ("ENABLE_SUBNET_DISCOVERY", "true"),
            ],
        ),
    };
    let mut http_tasks = Vec::new();
    // Every 10 s, say how many log events the rate limit dropped (if any).
    let log_report_stop = Arc::clone(&shutdown);
    http_tasks.push(tokio::spawn(async move {
        loop {
            tokio::select! {
                () = log_report_stop.notified() => return,
                () = tokio::time::sleep(Duration::from_secs(10)) => crate::logging::report_suppressed(),
            }
        }
    }));
    if let Some(addr) = &endpoints.metrics {
        http_tasks.push(
            http::spawn(
                addr,
                http::metrics_router(http_state.clone()),
                Arc::clone(&shutdown),
            )
            .await?,
        );
    }
    if let Some(addr) = &endpoints.introspection {
        http_tasks.push(
            http::spawn(
                addr,
                http::introspection_router(http_state),
                Arc::clone(&shutdown),
            )
            .await?,
        );
    }

    let (reaper, reaper_task) =
        match start_reaper(&ProcessEnv, &veth_prefix, &metrics, Arc::clone(&clock))? {
            Some((r, t)) => (Some(r), Some(t)),
            None => (None, None),
        };
    let mut cni_service = CniService::new(Arc::clone(&node), Arc::clone(&metrics));
    if let Some(r) = reaper {
        cni_service = cni_service.with_reaper(r);
    }

    let listener = bind_socket(&opts.socket)?;
    // Connections made from now on wait in the listen backlog while restored pods are checked (see
    // crate::engine::recovery): a DEL that tore its pod down while the socket was absent is honoured here.
    let released = node.start_serving().await;
    metrics
        .startup_duration_seconds
        .with_label_values(&["true", "false", ""])
        .observe(clock.now().saturating_sub(startup).as_secs_f64());
    tracing::info!(socket = %opts.socket.display(), released_gone_pods = released,
        network_policy_mode = policy_mode.map_or("unset", crate::netpol::PolicyMode::as_str),
        "serving rpc.CNIBackend, rpc.ConfigServerBackend and grpc.health.v1");
    let drain = Arc::new(Notify::new());
    let drain_now = Arc::clone(&drain);
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(CniBackendServer::new(WithPolicyMode::new(
            cni_service,
            policy_mode,
        )))
        .add_service(ConfigServerBackendServer::new(
            ConfigServer::new(policy_mode, node.metadata()).with_node_ipv6(node.node_ipv6()),
        ))
        .add_service(IpamdControlServer::new(ControlService::new(Arc::clone(
            &node,
        ))))
        // Clients that send the socket's path as `:authority` (gRPC-core, grpc-java) are served too.
        .serve_with_incoming_shutdown(
            tokio_stream::StreamExt::map(UnixListenerStream::new(listener), |conn| {
                conn.map(aws_cni_proto::authority::NormalizeAuthority::new)
            }),
            async move { drain_now.notified().await },
        );
    let mut server = tokio::spawn(server);
    let served = tokio::select! {
        r = &mut server => r,
        () = shutdown_signal() => {
            // Stop accepting; requests in flight finish (each one's checkpoint write included).
            drain.notify_one();
            match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(timeout = ?DRAIN_TIMEOUT, "requests still in flight; stopping anyway");
                    server.abort();
                    Ok(Ok(()))
                }
            }
        }
    };

    shutdown.notify_waiters();
    shutdown.notify_one();
    reconcile_signal.abort();
    eni_config_watch.abort();
    reload_stop.notify_one();
    reload_task.abort();
    match tokio::time::timeout(POOL_STOP_TIMEOUT, pool).await {
        Ok(Err(e)) => tracing::warn!(error = %e, "pool task ended abnormally"),
        Ok(Ok(())) => {}
        Err(_) => {
            tracing::warn!("the pool task did not stop in time (an EC2 call in flight); leaving it")
        }
    }
    if let Some(task) = reaper_task {
        let report = task.shutdown(crate::reaper::SHUTDOWN_DRAIN_TIMEOUT).await;
        tracing::info!(
            drained = report.drained,
            abandoned = report.abandoned,
            "veth reaper stopped"
        );
    }
    let _ = stop_flusher.send(true);
    let _ = flusher.await;
    let flushed = node.flush_checkpoint().await;
    for t in http_tasks {
        let _ = t.await;
    }
    if let Err(e) = std::fs::remove_file(&opts.socket) {
        tracing::debug!(error = %e, "socket already removed");
    }
    match served {
        Ok(r) => r?,
        Err(e) => tracing::warn!(error = %e, "gRPC server task failed"),
    }
    flushed?;
    tracing::info!("ipamd stopped");
    Ok(())
}

/// The checkpoint file: `AWS_VPC_K8S_CNI_BACKING_STORE` when set, else the anchor's default. A simulated node's
/// checkpoint belongs to its simulated instance: with `--sim-state`, `ipam.json` beside it; without, the default
/// (the instance's state is then kept beside the checkpoint, see `ec2_sim::run`).
fn checkpoint_path(opts: &RunOptions) -> Option<PathBuf> {
    if let Some(p) = ProcessEnv
        .get(crate::engine::checkpoint::ENV_BACKING_STORE)
        .filter(|p| !p.trim().is_empty())
    {
        return Some(PathBuf::from(p));
    }
    match opts.backend {
        Backend::Aws => Some(crate::engine::checkpoint::path_from_env(|_| None)),
        Backend::Sim => Some(match &opts.sim_state {
            Some(state) => match state.file_name() {
                Some(n) if n == "ipam.json" => state.with_file_name("ipam-checkpoint.json"),
                _ => state.with_file_name("ipam.json"),
            },
            None => crate::engine::checkpoint::path_from_env(|_| None),
        }),
    }
}

/// Every SIGUSR1 asks for a full reconcile pass (for operators and tests).
async fn reconcile_on_sigusr1(node: Arc<Node>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = match signal(SignalKind::user_defined1()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGUSR1");
            return;
        }
    };
    while usr1.recv().await.is_some() {
        tracing::info!("SIGUSR1: reconcile requested");
        node.request_reconcile();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

/// `--sim-subnet CIDR[@ZONE]`.
#[cfg(feature = "sim")]
fn sim_subnet(value: &str) -> Result<ec2_sim::SimSubnet, DaemonError> {
    let err = |reason: &str| DaemonError::SimSubnet {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let (cidr, zone) = match value.split_once('@') {
        Some((c, z)) if !z.trim().is_empty() => (c, Some(z.trim().to_string())),
        Some(_) => return Err(err("an empty zone after @")),
        None => (value, None),
    };
    let cidr = cidr
        .trim()
        .parse()
        .map_err(|_| err("expected an IPv4 CIDR, e.g. 10.0.64.0/20"))?;
    Ok(ec2_sim::SimSubnet {
        cidr,
        tags: std::collections::BTreeMap::new(),
        availability_zone: zone,
    })
}
