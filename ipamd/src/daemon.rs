//! `ipamd run`: wires the backend, the node, the pool task and the gRPC server, and shuts down cleanly.
//!
//! Order (as the anchor): discover the node, configure its ENIs, fill the pool, and only then open the socket, so
//! a runtime that sees the socket (and the health service SERVING) can get IPs at once.
//! SIGTERM/SIGINT: stop accepting connections, let in-flight requests finish, stop the pool task, remove the
//! socket, exit 0.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_cni_proto::{CniBackendServer, IpamdControlServer, HEALTH_SERVICE_NAME};
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tokio_stream::wrappers::UnixListenerStream;

use crate::clock::SystemClock;
use crate::config::{Config, ConfigError, ProcessEnv};
use crate::control::ControlService;
use crate::hostnet::NetlinkHostNetwork;
use crate::node::{Node, NodeDeps, NodeError};
use crate::rpc::CniService;
use crate::sim::fabric::NetnsFabric;
use crate::sim::{SimEc2, SimError, SimSpec};

/// Which EC2 the daemon talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The real EC2 and IMDS of the instance.
    Aws,
    /// The built-in EC2 simulator, on a simulated node in the current network namespace.
    Sim,
}

/// Options of `ipamd run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub socket: PathBuf,
    pub backend: Backend,
    pub instance_type: String,
    pub sim_state: Option<PathBuf>,
    pub max_pods: Option<u32>,
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("the sim backend refuses to run in the host's initial network namespace (it would create links \
             on the machine's real network); start it in a namespace of its own, e.g. `ip netns exec NAME ipamd \
             run --backend sim` or `ipamd run --backend sim --netns /run/netns/NAME`")]
    SimInInitialNetns,
    #[error("the aws backend is not available in this build yet; use --backend sim")]
    AwsBackendUnavailable,
    #[error("checking the network namespace: {0}")]
    NetnsCheck(std::io::Error),
    #[error("building the simulated VPC: {0}")]
    Fabric(datapath::NetlinkError),
    #[error("simulator: {0}")]
    Sim(#[from] SimError),
    #[error("netlink: {0}")]
    Netlink(datapath::NetlinkError),
    #[error("node: {0}")]
    Node(#[from] NodeError),
    #[error("socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
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

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: RunOptions) -> Result<(), DaemonError> {
    let config = Config::from_env(&ProcessEnv)?;
    let clock = Arc::new(SystemClock::default());
    let deps = match opts.backend {
        Backend::Aws => return Err(DaemonError::AwsBackendUnavailable),
        Backend::Sim => {
            if datapath::is_initial_netns().map_err(DaemonError::NetnsCheck)? {
                return Err(DaemonError::SimInInitialNetns);
            }
            let mut spec = SimSpec::new(&opts.instance_type);
            spec.state_file = opts.sim_state.clone();
            let fabric = NetnsFabric::new(spec.subnet_cidr, config.eni_mtu)
                .await
                .map_err(DaemonError::Fabric)?;
            let sim = SimEc2::launch(spec, Arc::new(fabric)).await?;
            let nl = datapath::Netlink::connect(None).map_err(DaemonError::Netlink)?;
            NodeDeps {
                ec2: Arc::new(sim.clone()),
                imds: Arc::new(sim),
                hostnet: Arc::new(NetlinkHostNetwork::new(nl)),
                clock,
            }
        }
    };
    let node = Node::init(deps, config, opts.max_pods).await?;
    if let Err(e) = node.fill().await {
        // Not fatal: the anchor never makes the node unusable because EC2 said no; the pool task retries.
        tracing::warn!(error = %e, "initial pool fill failed; will retry in the background");
    }

    let shutdown = Arc::new(Notify::new());
    let pool =
        tokio::spawn(Arc::clone(&node).run_pool(Duration::from_secs(5), Arc::clone(&shutdown)));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    health_reporter
        .set_service_status(HEALTH_SERVICE_NAME, tonic_health::ServingStatus::Serving)
        .await;

    let listener = bind_socket(&opts.socket)?;
    tracing::info!(socket = %opts.socket.display(), "serving rpc.CNIBackend and grpc.health.v1");
    let served = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(CniBackendServer::new(CniService::new(Arc::clone(&node))))
        .add_service(IpamdControlServer::new(ControlService::new(Arc::clone(&node))))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown_signal())
        .await;

    shutdown.notify_waiters();
    shutdown.notify_one();
    if let Err(e) = pool.await {
        tracing::warn!(error = %e, "pool task ended abnormally");
    }
    if let Err(e) = std::fs::remove_file(&opts.socket) {
        tracing::debug!(error = %e, "socket already removed");
    }
    served?;
    tracing::info!("ipamd stopped");
    Ok(())
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
