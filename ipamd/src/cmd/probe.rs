//! `ipamd health`: the liveness and readiness probe, so the image needs no separate grpc-health-probe binary.
//!
//! Exit codes follow grpc-health-probe (which the anchor's manifest execs), so existing probe definitions and
//! alerting keep their meaning: 0 healthy, 1 invalid arguments, 2 cannot connect, 3 the RPC failed, 4 not
//! serving. `--ready` adds the readiness question the anchor never asks (#1923: Ready before it has any IP): is
//! an ADD able to get an address now, or can the pool still grow to give one? If not, exit 4 with the reason.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use aws_cni_proto::{IpamdControlClient, StatusRequest, HEALTH_SERVICE_NAME};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Command line of `ipamd health`.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// ipamd's socket.
    #[arg(long, default_value = aws_cni_proto::DEFAULT_IPAMD_SOCKET)]
    pub socket: PathBuf,
    /// Also require that ipamd can serve a pod ADD now (or can grow its pool to).
    #[arg(long)]
    pub ready: bool,
    /// Deadline for connecting and for each call, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `ipamd health`: the probe's message on stdout (healthy) or stderr, and its exit code.
pub fn main(args: HealthArgs) -> ExitCode {
    match super::small_runtime() {
        Ok(rt) => {
            let r = rt.block_on(probe(&args.socket, args.timeout, args.ready));
            if r.code == 0 {
                println!("{}", r.message);
            } else {
                eprintln!("ipamd health: {}", r.message);
            }
            ExitCode::from(r.code)
        }
        Err(e) => super::failed("ipamd health", e),
    }
}

/// Probe outcome: exit code and a line for stderr/stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub code: u8,
    pub message: String,
}

/// Asks ipamd at `socket` whether it is alive (and, with `ready`, whether it can serve pods).
pub async fn probe(socket: &Path, timeout: Duration, ready: bool) -> ProbeResult {
    let channel = match aws_cni_proto::unix_channel(socket, timeout).await {
        Ok(c) => c,
        Err(e) => {
            return ProbeResult {
                code: 2,
                message: format!(
                    "cannot connect to ipamd at {}: {}",
                    socket.display(),
                    aws_cni_proto::error_chain(&e)
                ),
            }
        }
    };
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: HEALTH_SERVICE_NAME.into(),
        })
        .await;
    match health {
        Err(s) => {
            return ProbeResult {
                code: 3,
                message: format!("health check failed: {:?}: {}", s.code(), s.message()),
            }
        }
        Ok(r) if r.get_ref().status != ServingStatus::Serving as i32 => {
            return ProbeResult {
                code: 4,
                message: format!("ipamd is not serving (status {})", r.get_ref().status),
            }
        }
        Ok(_) => {}
    }
    if !ready {
        return ProbeResult {
            code: 0,
            message: "status: SERVING".into(),
        };
    }
    match IpamdControlClient::new(channel)
        .status(StatusRequest {})
        .await
    {
        Err(s) => ProbeResult {
            code: 3,
            message: format!("status request failed: {:?}: {}", s.code(), s.message()),
        },
        Ok(r) if r.get_ref().ready => ProbeResult {
            code: 0,
            message: format!("ready: {}", r.get_ref().message),
        },
        Ok(r) => ProbeResult {
            code: 4,
            message: format!("not ready: {}", r.get_ref().message),
        },
    }
}
