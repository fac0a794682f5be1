//! The `ipamd` binary: parses the command line and dispatches. All logic lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ipamd::daemon::{Backend, RunOptions};

#[derive(Debug, Parser)]
#[command(
    name = "ipamd",
    version,
    about = "Per-node IP address management for the AWS VPC CNI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Run(RunArgs),
    /// Build a simulated node, set up pods through the real aws-cni binary, ping between them, clean up.
    Demo(ipamd::demo::DemoArgs),
    /// Print the max-pods value for an instance type (the anchor's calculator, offline).
    MaxPods(instance_limits::MaxPodsArgs),
    /// Write the instance-limits table from EC2 DescribeInstanceTypes (instance-limits/data/instance-limits.tsv).
    #[cfg(feature = "aws")]
    GenLimits(ec2_aws::GenLimitsArgs),
    /// Probe a running ipamd: liveness (exit codes of grpc-health-probe), or readiness with --ready.
    Health(HealthArgs),
    /// Show a running ipamd's pool and pods.
    Status(StatusArgs),
    /// Install on the node: plugins into the host's CNI bin dir, sysctls, and (once ipamd is ready) the conflist.
    Install(ipamd::install::InstallArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Unix socket to serve gRPC on.
    #[arg(long, default_value = aws_cni_proto::DEFAULT_IPAMD_SOCKET)]
    socket: PathBuf,
    /// Which EC2 to use.
    #[arg(long, value_enum, default_value_t = Backend::Aws)]
    backend: Backend,
    /// Instance type of the simulated node (sim backend).
    #[arg(long, default_value = "m5.large")]
    instance_type: String,
    /// Enter this network namespace (e.g. /run/netns/NAME) before anything else.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// The simulated EC2 state (sim backend): loaded from here if present, written here (fsync'd) after every
    /// change, so the simulated instance survives ipamd's death. Default: sim-ec2.json beside the checkpoint,
    /// with the VPC fabric in a kept namespace (awscni-sim-<hash>, logged), so a restart resumes the instance.
    #[arg(long)]
    sim_state: Option<PathBuf>,
    /// Put the simulated VPC fabric in this existing network namespace (e.g. /run/netns/NAME), so ENI links
    /// outlive ipamd; its owner removes it. Default: the kept namespace without --sim-state, else an anonymous
    /// namespace that dies with ipamd.
    #[arg(long)]
    sim_fabric_netns: Option<PathBuf>,
    /// How long every simulated EC2 call takes, e.g. 200ms (sim backend).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    sim_api_latency: std::time::Duration,
    /// Override the max-pods value computed from the instance type.
    #[arg(long)]
    max_pods: Option<u32>,
}

#[derive(Debug, clap::Args)]
struct HealthArgs {
    /// ipamd's socket.
    #[arg(long, default_value = aws_cni_proto::DEFAULT_IPAMD_SOCKET)]
    socket: PathBuf,
    /// Also require that ipamd can serve a pod ADD now (or can grow its pool to).
    #[arg(long)]
    ready: bool,
    /// Deadline for connecting and for each call, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// ipamd's socket.
    #[arg(long, default_value = aws_cni_proto::DEFAULT_IPAMD_SOCKET)]
    socket: PathBuf,
    /// text for people, json for scripts.
    #[arg(long, value_enum, default_value = "text")]
    output: ipamd::status_cmd::StatusFormat,
    /// Deadline for connecting and for each call.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

fn small_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn init_tracing() {
    let settings = ipamd::logging::LogSettings::from_env(
        |k| std::env::var(k).ok(),
        std::path::Path::new("/host/var/log").exists(),
    );
    ipamd::logging::init(&settings);
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_tracing();
            if let Some(ns) = &args.netns {
                if let Err(e) = datapath::enter_netns(ns) {
                    eprintln!("ipamd: {e}");
                    return ExitCode::FAILURE;
                }
            }
            let opts = RunOptions {
                socket: args.socket,
                backend: args.backend,
                instance_type: args.instance_type,
                sim_state: args.sim_state,
                sim_fabric_netns: args.sim_fabric_netns,
                sim_api_latency: args.sim_api_latency,
                max_pods: args.max_pods,
            };
            let result = runtime().map_err(|e| e.to_string()).and_then(|rt| {
                rt.block_on(ipamd::daemon::run(opts))
                    .map_err(|e| e.to_string())
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("ipamd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo(args) => match ipamd::demo::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ipamd demo: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Health(args) => {
            let result = small_runtime()
                .map(|rt| rt.block_on(ipamd::probe::probe(&args.socket, args.timeout, args.ready)));
            match result {
                Ok(r) => {
                    if r.code == 0 {
                        println!("{}", r.message);
                    } else {
                        eprintln!("ipamd health: {}", r.message);
                    }
                    ExitCode::from(r.code)
                }
                Err(e) => {
                    eprintln!("ipamd health: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Status(args) => {
            let result = small_runtime().map_err(|e| e.to_string()).and_then(|rt| {
                rt.block_on(ipamd::status_cmd::status(
                    &args.socket,
                    args.timeout,
                    args.output,
                ))
                .map_err(|e| e.to_string())
            });
            match result {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ipamd status: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Install(args) => {
            init_tracing();
            match ipamd::install::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ipamd install: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::MaxPods(args) => {
            let imds = instance_limits::Imdsv2::from_env();
            let mut out = std::io::stdout().lock();
            match instance_limits::run(&args, &imds, &mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ipamd max-pods: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        #[cfg(feature = "aws")]
        Command::GenLimits(args) => {
            let result = runtime().map_err(|e| e.to_string()).and_then(|rt| {
                rt.block_on(ec2_aws::limits::run(&args))
                    .map_err(|e| e.to_string())
            });
            match result {
                Ok(n) => {
                    eprintln!("ipamd gen-limits: wrote {n} instance types");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ipamd gen-limits: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
