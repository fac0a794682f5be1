//! The `ipamd` binary: parses the command line and hands it to one command of [`ipamd::cmd`]. All logic lives
//! in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ipamd::cmd;

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
    Run(cmd::run::RunOptions),
    /// Build a simulated node, set up pods through the real aws-cni binary, ping between them, clean up.
    Demo(cmd::demo::DemoArgs),
    /// Print the max-pods value for an instance type (the anchor's calculator, offline).
    MaxPods(instance_limits::MaxPodsArgs),
    /// Write the instance-limits table from EC2 DescribeInstanceTypes (instance-limits/data/instance-limits.tsv).
    #[cfg(feature = "aws")]
    GenLimits(ec2_aws::GenLimitsArgs),
    /// Probe a running ipamd: liveness (exit codes of grpc-health-probe), or readiness with --ready.
    Health(cmd::probe::HealthArgs),
    /// Show a running ipamd's pool and pods.
    Status(cmd::status::StatusArgs),
    /// Install on the node: plugins into the host's CNI bin dir, sysctls, and (once ipamd is ready) the conflist.
    Install(cmd::install::InstallArgs),
}

fn main() -> ExitCode {
    let code = command(Cli::parse().command);
    // Logs are written by a background thread (ipamd::logging): let it finish before the process exits.
    ipamd::logging::flush(std::time::Duration::from_secs(2));
    code
}

fn command(command: Command) -> ExitCode {
    match command {
        Command::Run(opts) => cmd::run::main(opts),
        Command::Demo(args) => cmd::demo::main(args),
        Command::Health(args) => cmd::probe::main(args),
        Command::Status(args) => cmd::status::main(args),
        Command::Install(args) => cmd::install::main(args),
        Command::MaxPods(args) => {
            let imds = instance_limits::Imdsv2::from_env();
            let mut out = std::io::stdout().lock();
            match instance_limits::run(&args, &imds, &mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => cmd::failed("ipamd max-pods", e),
            }
        }
        #[cfg(feature = "aws")]
        Command::GenLimits(args) => {
            let result = cmd::runtime().map_err(|e| e.to_string()).and_then(|rt| {
                rt.block_on(ec2_aws::limits::run(&args))
                    .map_err(|e| e.to_string())
            });
            match result {
                Ok(n) => {
                    eprintln!("ipamd gen-limits: wrote {n} instance types");
                    ExitCode::SUCCESS
                }
                Err(e) => cmd::failed("ipamd gen-limits", e),
            }
        }
    }
}
