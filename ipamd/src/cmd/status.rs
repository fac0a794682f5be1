//! `ipamd status`: what the node holds, for a person at 3 a.m. (`--output text`) or a script (`--output json`).
//!
//! Reads everything from the running daemon over its socket (`rpc.IpamdControl`): readiness and the reason,
//! pool counts, and every pod's address with its ENI and route table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use aws_cni_proto::{FailureReason, IpamdControlClient, ListAllocationsRequest, StatusRequest};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    Text,
    Json,
}

/// Command line of `ipamd status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// ipamd's socket.
    #[arg(long, default_value = aws_cni_proto::DEFAULT_IPAMD_SOCKET)]
    pub socket: PathBuf,
    /// text for people, json for scripts.
    #[arg(long, value_enum, default_value = "text")]
    pub output: StatusFormat,
    /// Deadline for connecting and for each call.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `ipamd status`: the report on stdout.
pub fn main(args: StatusArgs) -> ExitCode {
    let result = super::small_runtime()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(status(&args.socket, args.timeout, args.output))
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => super::failed("ipamd status", e),
    }
}

/// Why `ipamd status` failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot connect to ipamd at {path}: {reason}")]
    Connect { path: String, reason: String },
    #[error("ipamd at {path}: {call} failed: {status}")]
    Rpc {
        path: String,
        call: &'static str,
        status: String,
    },
}

/// Fetches the status and renders it.
pub async fn status(
    socket: &Path,
    timeout: Duration,
    format: StatusFormat,
) -> Result<String, StatusError> {
    let path = socket.display().to_string();
    let channel = aws_cni_proto::unix_channel(socket, timeout)
        .await
        .map_err(|e| StatusError::Connect {
            path: path.clone(),
            reason: aws_cni_proto::error_chain(&e),
        })?;
    let mut client = IpamdControlClient::new(channel);
    let st = client
        .status(StatusRequest {})
        .await
        .map_err(|s| StatusError::Rpc {
            path: path.clone(),
            call: "Status",
            status: s.message().to_string(),
        })?
        .into_inner();
    let allocs = client
        .list_allocations(ListAllocationsRequest::default())
        .await
        .map_err(|s| StatusError::Rpc {
            path: path.clone(),
            call: "ListAllocations",
            status: s.message().to_string(),
        })?
        .into_inner()
        .allocations;
    let counts = st.counts.unwrap_or_default();
    let reason = FailureReason::try_from(st.reason).unwrap_or(FailureReason::FailureUnspecified);
    if format == StatusFormat::Json {
        let v = serde_json::json!({
            "instanceId": st.instance_id,
            "instanceType": st.instance_type,
            "ready": st.ready,
            "reason": if st.ready { serde_json::Value::Null } else { reason.as_str_name().into() },
            "message": st.message,
            "pool": {
                "total": counts.total, "assigned": counts.assigned, "cooldown": counts.cooldown,
                "available": counts.available, "enis": counts.enis, "maxEnis": counts.max_enis,
                "maxPods": counts.max_pods, "ipsPerEni": counts.ips_per_eni,
            },
            "lastDecision": st.last_decision,
            "lastError": st.last_error,
            "vpcCidrs": st.vpc_cidrs,
            "securityGroups": st.security_groups,
            "snatBackend": st.snat_backend,
            "snatBackendReason": st.snat_backend_reason,
            "customNetworking": if st.custom_networking {
                serde_json::json!({
                    "eniConfig": st.eni_config, "source": st.eni_config_source,
                    "subnet": st.eni_config_subnet, "securityGroups": st.eni_config_security_groups,
                    "problem": st.eni_config_problem,
                })
            } else {
                serde_json::Value::Null
            },
            "kubernetesApi": st.kubernetes_api,
            "ec2Schedule": st.ec2_schedule,
            "eniChangesPaused": st.eni_changes_paused,
            "addressMode": st.address_mode,
            "poolKnobs": st.pool_knobs,
            "enis": st.enis.iter().map(|e| serde_json::json!({
                "id": e.eniid, "deviceNumber": e.device_number, "primary": e.is_primary,
                "total": e.total, "assigned": e.assigned, "cooldown": e.cooldown, "available": e.available,
                "prefixes": e.prefixes,
            })).collect::<Vec<_>>(),
            "pods": allocs.iter().map(|a| serde_json::json!({
                "namespace": a.k8s_pod_namespace, "name": a.k8s_pod_name,
                "ip": if a.i_pv4_addr.is_empty() { &a.i_pv6_addr } else { &a.i_pv4_addr },
                "eni": a.eniid, "deviceNumber": a.device_number, "routeTable": a.route_table_id,
                "network": a.network_name, "ifName": a.if_name,
            })).collect::<Vec<_>>(),
        });
        return Ok(serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    let mut out = String::new();
    let _ = writeln!(out, "instance   {} ({})", st.instance_id, st.instance_type);
    let _ = writeln!(
        out,
        "ready      {}{}",
        if st.ready { "yes" } else { "NO" },
        if st.ready {
            String::new()
        } else {
            format!(" ({})", reason.as_str_name())
        }
    );
    let _ = writeln!(out, "           {}", st.message);
    let _ = writeln!(
        out,
        "pool       {} addresses: {} assigned, {} cooling down, {} free",
        counts.total, counts.assigned, counts.cooldown, counts.available
    );
    let _ = writeln!(
        out,
        "limits     {} of {} ENIs, {} addresses per ENI, max-pods {}",
        counts.enis, counts.max_enis, counts.ips_per_eni, counts.max_pods
    );
    if !st.address_mode.is_empty() {
        let _ = writeln!(out, "mode       {}", st.address_mode);
    }
    if !st.pool_knobs.is_empty() {
        let _ = writeln!(out, "knobs      {}", st.pool_knobs);
    }
    if !st.last_decision.is_empty() {
        let _ = writeln!(out, "pool last  {}", st.last_decision);
    }
    if !st.last_error.is_empty() {
        let _ = writeln!(out, "EC2 error  {}", st.last_error);
    }
    if st.custom_networking {
        let name = if st.eni_config.is_empty() {
            "unknown".to_string()
        } else {
            format!("{:?} ({})", st.eni_config, st.eni_config_source)
        };
        let _ = writeln!(out, "ENIConfig  {name}");
        if !st.eni_config_subnet.is_empty() {
            let _ = writeln!(
                out,
                "           next ENI: subnet {}, security groups {}",
                st.eni_config_subnet,
                st.eni_config_security_groups.join(",")
            );
        }
        if !st.eni_config_problem.is_empty() {
            let _ = writeln!(
                out,
                "           PROBLEM: {} (no new ENI until it is fixed; never the node's subnet)",
                st.eni_config_problem
            );
        }
    }
    if !st.vpc_cidrs.is_empty() {
        let _ = writeln!(
            out,
            "vpc        {} (security groups {})",
            st.vpc_cidrs.join(","),
            st.security_groups.join(",")
        );
    }
    if !st.snat_backend.is_empty() {
        let _ = writeln!(
            out,
            "snat       {} ({})",
            st.snat_backend, st.snat_backend_reason
        );
    }
    if !st.ec2_schedule.is_empty() {
        let _ = writeln!(out, "ec2 sched  {}", st.ec2_schedule);
    }
    if !st.kubernetes_api.is_empty() {
        let _ = writeln!(out, "kube api   {}", st.kubernetes_api);
    }
    if st.eni_changes_paused {
        let _ = writeln!(
            out,
            "cordoned   no ENI is attached or freed (AWS_MANAGE_ENIS_NON_SCHEDULABLE=false)"
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24} {:>4} {:>7} {:>6} {:>8} {:>8} {:>5}  PREFIXES",
        "ENI", "DEV", "PRIMARY", "TOTAL", "ASSIGNED", "COOLDOWN", "FREE"
    );
    for e in &st.enis {
        let _ = writeln!(
            out,
            "{:<24} {:>4} {:>7} {:>6} {:>8} {:>8} {:>5}  {}",
            e.eniid,
            e.device_number,
            if e.is_primary { "yes" } else { "" },
            e.total,
            e.assigned,
            e.cooldown,
            e.available,
            e.prefixes.join(",")
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<40} {:<15} {:<24} {:>5}",
        "POD", "IP", "ENI", "TABLE"
    );
    for a in &allocs {
        let pod = if a.k8s_pod_namespace.is_empty() {
            a.k8s_pod_name.clone()
        } else {
            format!("{}/{}", a.k8s_pod_namespace, a.k8s_pod_name)
        };
        // Names come from clients: control characters are shown escaped, never written raw to the terminal.
        let pod: String = pod
            .chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect();
        let table = if a.route_table_id == 254 {
            "main".to_string()
        } else {
            a.route_table_id.to_string()
        };
        let _ = writeln!(
            out,
            "{:<40} {:<15} {:<24} {:>5}",
            pod,
            if a.i_pv4_addr.is_empty() {
                &a.i_pv6_addr
            } else {
                &a.i_pv4_addr
            },
            a.eniid,
            table
        );
    }
    Ok(out)
}
