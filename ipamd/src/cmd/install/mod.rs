//! `ipamd install`: puts the CNI on the node, the job of the anchor's init container plus the part of its
//! entrypoint that writes the conflist.
//!
//! ```text
//!   phase init      (privileged init container; /proc/sys is read-only in an unprivileged one)
//!     1. validate every variable below            nothing is touched if one is wrong
//!     2. render the conflist template             a broken template fails here, not minutes later
//!     3. copy aws-cni + portmap, loopback, host-local, bandwidth, tuning   ─▶ $HOST_CNI_BIN_PATH
//!        (+ egress-cni when egress is on)
//!     4. sysctls under --proc-root: rp_filter=2 on the primary ENI (found by its MAC), tcp_early_demux,
//!        and the IPv6 ones when IPv6 (or v6 egress) is on
//!   phase conflist  (a small container next to ipamd)
//!     1.–2. as above
//!     5. poll ipamd's readiness (the check of `ipamd health --ready`) until it says ready, or time out
//!     6. write 10-aws.conflist                     ─▶ $HOST_CNI_CONFDIR_PATH
//!        (with egress on, egress-cni chained after aws-cni, its nodeIP from --node-ip or IMDS)
//!   phase all       1 to 6 in order
//! ```
//!
//! Writing the conflist is what makes the kubelet call the node's network ready, so it happens only once ipamd can
//! hand out an address: a node never turns Ready with pods that cannot start (anchor #1923 is the version of this
//! bug where "alive" was taken for "ready").
//!
//! Every file lands atomically ([`hostfs::replace`]): it is written to a hidden temporary file in the destination
//! directory, fsynced, given its mode, and renamed over the final name, then the directory is fsynced. A runtime
//! that lists the directory or execs the plugin sees the old file or the whole new one, never a prefix; a plugin
//! binary that is running while it is replaced keeps its old inode (no `ETXTBSY`).
//!
//! One file per concern: [`settings`] (the variables below, validated), [`conflist`] (rendering the template),
//! [`files`] (installing binaries and the conflist), [`sysctl`] (the sysctls and finding the primary interface);
//! this file runs the phases.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `HOST_CNI_BIN_PATH` | `/host/opt/cni/bin` | where the plugins go (the host's `/opt/cni/bin`) |
//! | `HOST_CNI_CONFDIR_PATH` | `/host/etc/cni/net.d` | where `10-aws.conflist` goes |
//! | `AWS_VPC_K8S_CNI_VETHPREFIX` | `eni` | host veth prefix: 1 to 4 of `[A-Za-z0-9_.-]`, not `eth`, `lo`, `vlan` |
//! | `POD_MTU` | `AWS_VPC_ENI_MTU` | pod MTU written into the conflist (576..=9001; 1280..=9001 with IPv6) |
//! | `AWS_VPC_ENI_MTU` | 9001 | the fallback of `POD_MTU` |
//! | `POD_SECURITY_GROUP_ENFORCING_MODE` | `strict` | `strict` or `standard` |
//! | `AWS_VPC_K8S_PLUGIN_LOG_FILE` | `/var/log/aws-routed-eni/plugin.log` | plugin log: an absolute path or `stderr` (never `stdout`, which carries CNI results) |
//! | `AWS_VPC_K8S_PLUGIN_LOG_LEVEL` | `DEBUG` | `trace`, `debug`, `info`, `warn` or `error`, any case |
//! | `DISABLE_TCP_EARLY_DEMUX` | false | `net/ipv4/tcp_early_demux` = 0 instead of 1 |
//! | `ENABLE_IPv6` | false | `net/ipv6/conf/all/disable_ipv6`=0, `all/forwarding`=1, `<primary>/accept_ra`=2 |
//! | `ENABLE_V6_EGRESS` | false | `all/forwarding`=1 and `<primary>/accept_ra`=2; IPv4 node: chain `egress-cni` (IPv6 egress, SNAT to the node's IPv6, IMDS `ipv6`) |
//! | `ENABLE_V4_EGRESS` | true | IPv6 node: chain `egress-cni` (IPv4 egress from 169.254.172.0/22, SNAT to the node's IPv4, IMDS `local-ipv4`) |
//! | `AWS_VPC_K8S_CNI_RANDOMIZESNAT` | `prng` | egress-cni's `randomizeSNAT` |
//! | `AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE` / `..._V6_...` | `/var/log/aws-routed-eni/egress-v4-plugin.log` / `egress-v6-plugin.log` | egress-cni's log (IPv6 node / IPv4 node) |
//! | `ENABLE_BANDWIDTH_PLUGIN` | false | chain the `bandwidth` plugin after portmap |
//! | `DISABLE_POD_V6` | false | chain `tuning` to turn IPv6 off inside pods |
//! | `AWS_EC2_METADATA_SERVICE_ENDPOINT` | `http://169.254.169.254` | IMDS, asked for the primary ENI's MAC unless `--primary-mac` is given |
//!
//! The template's placeholders are the anchor's names: `__VETHPREFIX__`, `__MTU__`, `__PODSGENFORCINGMODE__`,
//! `__PLUGINLOGFILE__`, `__PLUGINLOGLEVEL__`. They stand inside JSON strings and are replaced by JSON-escaped
//! values, so no value can break the document; any other `__NAME__` left in the template is an error naming it
//! (the anchor's egress placeholders are not in our template: the egress entry is added as JSON,
//! [`conflist::render_conflist_with_egress`]). With no optional plugin enabled the output is the template with the
//! values substituted, byte for byte.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod conflist;
pub mod files;
pub mod settings;
pub mod sysctl;
#[cfg(test)]
mod tests;

pub use conflist::{
    egress_entry, render_conflist, render_conflist_with_egress, CONFLIST_NAME, TEMPLATE_NAME,
};
pub use files::{
    atomic_copy, atomic_write, install_binaries, AWS_CNI, PLUGINS_DIR, UPSTREAM_PLUGINS,
};
pub use settings::*;
pub use sysctl::{interface_by_mac, normalize_mac, sysctl_path, sysctls, write_sysctl, Sysctl};

/// IMDS path of the primary ENI's MAC.
pub const IMDS_MAC_PATH: &str = "/latest/meta-data/mac";
/// IMDS path of the node's IPv4 (egress-cni's SNAT address on an IPv6 node).
pub const IMDS_LOCAL_IPV4_PATH: &str = "/latest/meta-data/local-ipv4";
/// IMDS path of the node's IPv6 (egress-cni's SNAT address for IPv4 pods' IPv6 egress).
pub const IMDS_IPV6_PATH: &str = "/latest/meta-data/ipv6";
/// The egress plugin (built by the `egress-cni` crate), next to the executable in the image.
pub const EGRESS_CNI: &str = "egress-cni";

/// What `ipamd install` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Plugins, sysctls, then wait for ipamd and write the conflist.
    All,
    /// Plugins and sysctls (the init container).
    Init,
    /// Wait for ipamd to be ready, then write the conflist.
    Conflist,
}

/// Command line of `ipamd install`.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// Which steps to run.
    #[arg(long, value_enum, default_value_t = Phase::All)]
    pub phase: Phase,
    /// Directory holding aws-cni, 10-aws.conflist.tmpl and cni-plugins/ (default: this executable's directory).
    #[arg(long)]
    pub source_dir: Option<PathBuf>,
    /// Where procfs is (tests point this at a directory of their own).
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Where sysfs is; the primary interface is the one whose class/net/*/address is the primary ENI's MAC.
    #[arg(long, default_value = "/sys")]
    pub sys_root: PathBuf,
    /// The primary ENI's MAC; read from IMDS when not given.
    #[arg(long)]
    pub primary_mac: Option<String>,
    /// ipamd's socket, polled for readiness before the conflist is written.
    #[arg(long, default_value = aws_cni_proto::DEFAULT_IPAMD_SOCKET)]
    pub socket: PathBuf,
    /// Give up (exit 1, conflist not written) if ipamd is not ready within this time.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub ready_timeout: Duration,
    /// Pause between readiness polls.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// After the last step, keep running until SIGTERM or SIGINT (for a container that must not exit).
    #[arg(long)]
    pub stay: bool,
    /// The node IP egress-cni SNATs to (its `nodeIP`); read from IMDS when egress is on and this is not given.
    #[arg(long)]
    pub node_ip: Option<String>,
}

/// Why the install failed. Nothing after the failing step was done.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("invalid {var}={value:?}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("template {path}: {reason}")]
    Template { path: PathBuf, reason: String },
    #[error("reading the primary ENI's MAC from IMDS: {0}")]
    Imds(String),
    #[error("invalid MAC address {0:?}")]
    BadMac(String),
    #[error("no interface under {dir} has MAC {mac} (seen: {seen})")]
    NoInterface {
        dir: PathBuf,
        mac: String,
        seen: String,
    },
    #[error(
        "sysctl {key}: {path} does not exist (is the kernel feature there, is --proc-root right?)"
    )]
    NoSysctl { key: String, path: PathBuf },
    #[error(
        "ipamd at {socket} was not ready after {waited:?}: {last}; the conflist was not written"
    )]
    NotReady {
        socket: PathBuf,
        waited: Duration,
        last: String,
    },
    #[error("cannot find this executable's directory (pass --source-dir): {0}")]
    SourceDir(std::io::Error),
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io {
        action,
        path,
        source,
    }
}

impl From<crate::config::ConfigError> for InstallError {
    fn from(e: crate::config::ConfigError) -> InstallError {
        InstallError::Env {
            var: e.var,
            value: e.value,
            reason: e.reason,
        }
    }
}

impl From<hostfs::HostFsError> for InstallError {
    fn from(e: hostfs::HostFsError) -> InstallError {
        InstallError::Io {
            action: e.action,
            path: e.path,
            source: e.source,
        }
    }
}

/// The address egress-cni SNATs to: `--node-ip`, else IMDS (`local-ipv4` on an IPv6 node, `ipv6` otherwise).
fn egress_node_ip(args: &InstallArgs, s: &Settings) -> Result<String, InstallError> {
    let ip = match &args.node_ip {
        Some(ip) => ip.trim().to_string(),
        None => {
            let path = if s.enable_ipv6 {
                IMDS_LOCAL_IPV4_PATH
            } else {
                IMDS_IPV6_PATH
            };
            instance_limits::Imdsv2::from_env()
                .get_metadata(path)
                .map_err(|e| InstallError::Imds(format!("egress-cni's nodeIP ({path}): {e}")))?
                .trim()
                .to_string()
        }
    };
    let ok = match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => s.enable_ipv6,
        Ok(std::net::IpAddr::V6(_)) => !s.enable_ipv6,
        Err(_) => false,
    };
    if !ok {
        let want = if s.enable_ipv6 { "IPv4" } else { "IPv6" };
        return Err(InstallError::Imds(format!(
            "egress-cni's nodeIP {ip:?} is not the node's {want} address"
        )));
    }
    Ok(ip)
}

fn primary_mac(args: &InstallArgs) -> Result<String, InstallError> {
    match &args.primary_mac {
        Some(m) => normalize_mac(m),
        None => {
            let imds = instance_limits::Imdsv2::from_env();
            let mac = imds
                .get_metadata(IMDS_MAC_PATH)
                .map_err(|e| InstallError::Imds(e.to_string()))?;
            normalize_mac(&mac)
        }
    }
}

/// Polls ipamd's readiness (as `ipamd health --ready`) until it is ready or `timeout` has passed.
pub async fn wait_ready(
    socket: &Path,
    timeout: Duration,
    interval: Duration,
) -> Result<(), InstallError> {
    use ec2_api::clock::Clock as _;
    let clock = ec2_api::clock::SystemClock::default();
    let start = clock.now();
    let per_call = interval.clamp(Duration::from_millis(500), Duration::from_secs(5));
    let mut last = String::new();
    loop {
        let r = crate::cmd::probe::probe(socket, per_call, true).await;
        if r.code == 0 {
            tracing::info!(socket = %socket.display(), "ipamd is ready: {}", r.message);
            return Ok(());
        }
        if r.message != last {
            tracing::info!(socket = %socket.display(), "waiting for ipamd: {}", r.message);
            last = r.message;
        }
        let waited = clock.now().saturating_sub(start);
        if waited >= timeout {
            return Err(InstallError::NotReady {
                socket: socket.to_path_buf(),
                waited,
                last,
            });
        }
        tokio::time::sleep(interval.min(timeout - waited)).await;
    }
}

fn source_dir(args: &InstallArgs) -> Result<PathBuf, InstallError> {
    match &args.source_dir {
        Some(d) => Ok(d.clone()),
        None => {
            let exe = std::env::current_exe().map_err(InstallError::SourceDir)?;
            exe.parent().map(Path::to_path_buf).ok_or_else(|| {
                InstallError::SourceDir(std::io::Error::other("no parent directory"))
            })
        }
    }
}

/// `ipamd install` as a command: logging, then [`run`]; the exit code.
pub fn main(args: InstallArgs) -> std::process::ExitCode {
    if let Err(e) = super::init_tracing() {
        return super::failed("ipamd install", e);
    }
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => super::failed("ipamd install", e),
    }
}

/// `ipamd install` with the process environment.
pub fn run(args: &InstallArgs) -> Result<(), InstallError> {
    run_with_env(args, &|k: &str| std::env::var(k).ok())
}

/// `ipamd install` (see the module docs) with the environment read through `get`.
pub fn run_with_env(
    args: &InstallArgs,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<(), InstallError> {
    let settings = Settings::from_env(get)?;
    let source = source_dir(args)?;
    let template_path = source.join(TEMPLATE_NAME);
    let template =
        std::fs::read_to_string(&template_path).map_err(io_err("reading", &template_path))?;
    let conflist = render_conflist(&template, &settings, &template_path)?;

    if matches!(args.phase, Phase::All | Phase::Init) {
        let egress = source.join(EGRESS_CNI);
        if settings.egress_enabled() {
            // Checked first, so a missing plugin leaves the host's directory as it was.
            std::fs::metadata(&egress).map_err(io_err("looking for", &egress))?;
        }
        let mut installed = install_binaries(&source, &settings.bin_dir)?;
        if settings.egress_enabled() {
            installed.push(atomic_copy(&egress, &settings.bin_dir, EGRESS_CNI)?);
        }
        for p in &installed {
            tracing::info!(path = %p.display(), "installed");
        }
        let mac = primary_mac(args)?;
        let primary = interface_by_mac(&args.sys_root, &mac)?;
        tracing::info!(interface = %primary, %mac, "primary interface");
        let wanted = sysctls(&primary, &settings);
        // All present first, so a missing one leaves every sysctl as it was.
        for s in &wanted {
            sysctl_path(&args.proc_root, s)?;
        }
        for s in wanted {
            write_sysctl(&args.proc_root, &s)?;
            tracing::info!(key = %s.key, value = s.value, "sysctl set");
        }
    }

    let needs_runtime = matches!(args.phase, Phase::All | Phase::Conflist) || args.stay;
    if !needs_runtime {
        return Ok(());
    }
    let conflist =
        if matches!(args.phase, Phase::All | Phase::Conflist) && settings.egress_enabled() {
            let ip = egress_node_ip(args, &settings)?;
            render_conflist_with_egress(&template, &settings, &template_path, Some(&ip))?
        } else {
            conflist
        };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(InstallError::Runtime)?;
    rt.block_on(async {
        if matches!(args.phase, Phase::All | Phase::Conflist) {
            let ready = wait_ready(&args.socket, args.ready_timeout, args.poll_interval);
            if args.stay {
                // A container's PID 1 gets no signal it has no handler for: stopped before ipamd is ready, it
                // would sit out the grace period and be killed.
                tokio::select! {
                    r = ready => r?,
                    () = wait_for_stop() => {
                        tracing::info!("stopped before ipamd was ready: conflist not written");
                        return Ok(());
                    }
                }
            } else {
                ready.await?;
            }
            std::fs::create_dir_all(&settings.conf_dir)
                .map_err(io_err("creating", &settings.conf_dir))?;
            let path = atomic_write(
                &settings.conf_dir,
                CONFLIST_NAME,
                conflist.as_bytes(),
                0o644,
            )?;
            tracing::info!(path = %path.display(), "conflist written: the node's network is ready");
        }
        if args.stay {
            wait_for_stop().await;
        }
        Ok(())
    })
}

async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); waiting for SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
