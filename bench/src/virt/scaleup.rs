//! Cluster scale-up: N simulated nodes in one AWS account, each going from 0 to 30 pods, in virtual time.
//!
//! Every node has its own simulator (its own instance, ENIs and subnet), but all of them call EC2 through one
//! [`Account`]: per-API token buckets of EC2's documented default sizes (mutating 200 tokens refilled at 5/s,
//! Describe* 100 at 20/s), so every node's calls compete for the same budget, as in a real account (#405: 150
//! nodes took 15 minutes to start their pods under `RequestLimitExceeded`). Nodes start at random times within
//! the first 60 s (an autoscaling group launching them); a node's 30 pods are created at once as soon as its
//! daemon is ready (ipamd opens its socket after the first fill; the anchor model after its pre-scaling). Each ADD
//! is the plugin's gRPC call: ipamd's waits for an address on its way (up to 8 s, within the plugin's deadline),
//! the anchor's answers at once; a failed ADD is retried a second later until the pod has an address.
//!
//! Ours runs as `ipamd run` does with a Kubernetes API: every node's EC2 calls take their slots in one cluster-wide
//! EC2 schedule ([`ipamd::schedule`]), here an in-memory double of its Lease shared by every node, with a modelled
//! API latency ([`SCHEDULE_API_LATENCY`]) and real write conflicts. The anchor model has none.
//!
//! Reported: the time from the first node's launch until the last pod has an address; each pod's wait from its
//! creation; EC2 calls and the share the account throttled. Every node keeps running (and calling EC2 for its
//! warm pool) until the last pod of the cluster is placed.
//!
//! Physics: with N nodes each needing at least one mutating call of the same API (the first
//! AssignPrivateIpAddresses or CreateNetworkInterface), the account's refill rate alone takes (N − 200) / 5
//! seconds; no client can beat that, so the table states this floor next to the figures.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ec2_api::clock::{Clock, TokioClock};
use ec2_api::Ec2;
use ec2_sim::{NoHotplug, SimEc2, SimSpec, ThrottleSpec};
use rand::Rng;

use ipamd::ratelimit::{PacingConfig, SharedSchedule};
use ipamd::schedule::{MemorySchedule, Share};

use super::{config_of, key, start_paced, Account, AccountCounts, AccountEc2, Engine};
use crate::error::{check_interrupt, BenchError};

/// How long one ADD may wait in the daemon: the plugin's 10 s deadline less ipamd's 1 s margin, bounded by
/// `AWS_CNI_ADD_WAIT_SECONDS`'s default of 8 s.
const ADD_WAIT: Duration = Duration::from_secs(8);

/// One cluster run's results.
#[derive(Debug, Clone, Default)]
pub struct ScaleResult {
    pub nodes: usize,
    pub pods: usize,
    pub placed: usize,
    /// From the first launch to the last pod placed (`None`: not within the limit).
    pub all_placed_after: Option<Duration>,
    pub waits: Vec<Duration>,
    pub counts: AccountCounts,
    /// Daemon starts that failed (and were restarted with CrashLoopBackOff).
    pub restarts: usize,
    /// Why the first failed start failed.
    pub first_start_error: Option<String>,
    /// What the shared EC2 schedule's lease saw (`None`: no schedule).
    pub schedule: Option<ipamd::schedule::MemoryStats>,
}

impl ScaleResult {
    pub fn calls(&self) -> u64 {
        self.counts.values().map(|(c, _)| c).sum()
    }
    pub fn throttled(&self) -> u64 {
        self.counts.values().map(|(_, t)| t).sum()
    }
}

/// The Kubernetes API's answer time as the nodes' shared EC2 schedule sees it, per request (a read or a write).
pub const SCHEDULE_API_LATENCY: Duration = Duration::from_millis(8);

/// Runs one cluster of `nodes` nodes of `instance_type` with `vars`, `pods` pods each, for at most `limit`.
pub async fn cluster(
    engine: Engine,
    nodes: usize,
    pods: usize,
    instance_type: &str,
    vars: &[(&'static str, &'static str)],
    limit: Duration,
) -> Result<ScaleResult, BenchError> {
    cluster_with(
        engine,
        nodes,
        pods,
        instance_type,
        vars,
        limit,
        Some(Share::default()),
    )
    .await
}

/// [`cluster`] with ours sharing one cluster EC2 schedule of `share` (`None`: each node paces alone), as
/// `ipamd run` does through the Kubernetes API: one lease, here in memory with [`SCHEDULE_API_LATENCY`] and
/// real write conflicts. The anchor model has none.
pub async fn cluster_with(
    engine: Engine,
    nodes: usize,
    pods: usize,
    instance_type: &str,
    vars: &[(&'static str, &'static str)],
    limit: Duration,
    share: Option<Share>,
) -> Result<ScaleResult, BenchError> {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::default());
    let t0 = clock.now();
    let account = Account::new(ThrottleSpec::default(), Arc::clone(&clock));
    let lease = (engine == Engine::Ours && share.is_some())
        .then(|| MemorySchedule::new(Arc::clone(&clock), SCHEDULE_API_LATENCY));
    let pacing = match (&lease, share) {
        (Some(lease), Some(share)) => PacingConfig {
            schedule: SharedSchedule(Arc::new(lease.clone())),
            schedule_share: share,
            ..PacingConfig::default()
        },
        _ => PacingConfig::default(),
    };
    let remaining = Arc::new(AtomicUsize::new(nodes * pods));
    let waits = Arc::new(Mutex::new(Vec::with_capacity(nodes * pods)));
    let last_placed = Arc::new(Mutex::new(Duration::ZERO));
    let restarts = Arc::new(AtomicUsize::new(0));
    let start_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let config = config_of(vars)?;
    let mut tasks = Vec::with_capacity(nodes);
    let mut rng = rand::rng();
    for n in 0..nodes {
        let delay = Duration::from_secs(60).mul_f64(rng.random::<f64>());
        let clock = Arc::clone(&clock);
        let account = Arc::clone(&account);
        let remaining = Arc::clone(&remaining);
        let waits = Arc::clone(&waits);
        let last_placed = Arc::clone(&last_placed);
        let restarts = Arc::clone(&restarts);
        let start_error = Arc::clone(&start_error);
        let mut stop = stop_rx.clone();
        let config = config.clone();
        let pacing = pacing.clone();
        let instance_type = instance_type.to_string();
        tasks.push(tokio::task::spawn_local(async move {
            clock.sleep(delay).await;
            let mut spec = SimSpec::new(&instance_type);
            spec.clock = Arc::clone(&clock);
            spec.throttle = None; // the account throttles
            spec.imds_lag = Duration::from_secs(1);
            spec.attach_latency = Duration::from_secs(2);
            spec.subnet_cidr = "10.0.0.0/22"
                .parse()
                .map_err(|e| BenchError::Other(format!("{e}")))?;
            let sim = SimEc2::launch(spec, Arc::new(NoHotplug))
                .await
                .map_err(|e| BenchError::Node(e.to_string()))?;
            let ec2: Arc<dyn Ec2> = Arc::new(AccountEc2::new(account, Arc::new(sim.clone())));
            // A daemon that cannot start exits; Kubernetes restarts it with CrashLoopBackOff (10 s, doubling, at
            // most 5 min). Ours waits out throttling in-process (only a permanent error ends a start); the anchor
            // model's startup does not fail on throttling either. A restart counted here is a real failure.
            let imds: Arc<SimEc2> = Arc::new(sim);
            let mut backoff = Duration::from_secs(10);
            let running = loop {
                match start_paced(
                    engine,
                    Arc::clone(&ec2),
                    imds.clone(),
                    Arc::clone(&clock),
                    config.clone(),
                    None,
                    pacing.clone(),
                )
                .await
                {
                    Ok(r) => break r,
                    Err(e) => {
                        restarts.fetch_add(1, Ordering::SeqCst);
                        start_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert_with(|| e.to_string());
                        if *stop.borrow() {
                            // The run is over; its pods count as not placed.
                            return Ok(());
                        }
                        clock.sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(300));
                    }
                }
            };
            let ready = clock.now();
            // Kubelet starts every pod's sandbox at once; each ADD goes to the daemon as the plugin's gRPC call
            // does (ours waits for an address on its way, up to the plugin's 10 s deadline less the margin; the
            // anchor answers at once) and a failed one is retried a second later.
            let mut pods_left = Vec::with_capacity(pods);
            for i in 0..pods {
                let node = Arc::clone(&running.node);
                let clock = Arc::clone(&clock);
                let mut stop = stop.clone();
                let waits = Arc::clone(&waits);
                let last_placed = Arc::clone(&last_placed);
                let remaining = Arc::clone(&remaining);
                pods_left.push(tokio::task::spawn_local(async move {
                    let k = key(n, i);
                    loop {
                        if *stop.borrow() {
                            return;
                        }
                        if node.add_waiting(&k, ADD_WAIT).await {
                            let now = clock.now();
                            waits
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(now.saturating_sub(ready));
                            let mut lp = last_placed.lock().unwrap_or_else(|p| p.into_inner());
                            *lp = (*lp).max(now);
                            remaining.fetch_sub(1, Ordering::SeqCst);
                            return;
                        }
                        tokio::select! {
                            () = clock.sleep(Duration::from_secs(1)) => {}
                            _ = stop.changed() => {}
                        }
                    }
                }));
            }
            for p in pods_left {
                let _ = p.await;
            }
            let _ = stop.wait_for(|v| *v).await;
            running.stop().await;
            Ok::<(), BenchError>(())
        }));
    }
    loop {
        if let Err(e) = check_interrupt() {
            let _ = stop_tx.send(true);
            for t in tasks {
                let _ = t.await;
            }
            return Err(e);
        }
        if remaining.load(Ordering::SeqCst) == 0 || clock.now().saturating_sub(t0) > limit {
            break;
        }
        clock.sleep(Duration::from_secs(1)).await;
    }
    let left = remaining.load(Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(BenchError::Other(format!("node task: {e}")));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let first_start_error = start_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let waits = std::mem::take(&mut *waits.lock().unwrap_or_else(|p| p.into_inner()));
    let last = *last_placed.lock().unwrap_or_else(|p| p.into_inner());
    Ok(ScaleResult {
        nodes,
        pods: nodes * pods,
        placed: nodes * pods - left,
        all_placed_after: (left == 0).then(|| last.saturating_sub(t0)),
        waits,
        counts: account.counts(),
        restarts: restarts.load(Ordering::SeqCst),
        first_start_error,
        schedule: lease.map(|l| l.stats()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virt::run_virtual;

    /// One cluster row of ours alone, printed: `cargo test -p aws-cni-bench --lib scaleup::tests::row -- --ignored
    /// --nocapture` with `SCALEUP_NODES` (default 2000) and `SCALEUP_PD=1` for prefix delegation. The full
    /// benchmark (`aws-cni-bench run --only scale-up`) runs every row under both engines and writes the report.
    #[test]
    #[ignore = "a benchmark row, run by hand"]
    fn row() {
        let nodes: usize = std::env::var("SCALEUP_NODES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000);
        let pd = std::env::var("SCALEUP_PD").is_ok_and(|v| v == "1");
        let vars: Vec<(&'static str, &'static str)> = if pd {
            vec![
                ("ENABLE_PREFIX_DELEGATION", "true"),
                ("WARM_PREFIX_TARGET", "1"),
            ]
        } else {
            vec![]
        };
        let engine = if std::env::var("SCALEUP_ANCHOR").is_ok_and(|v| v == "1") {
            Engine::Anchor
        } else {
            Engine::Ours
        };
        // SCALEUP_SHARE=RATE,BURST: the schedule's share of EC2's buckets (default: ipamd's); "none": no
        // shared schedule.
        let share = match std::env::var("SCALEUP_SHARE").ok().as_deref() {
            Some("none") => None,
            Some(v) => {
                let (r, b) = v.split_once(',').expect("SCALEUP_SHARE=RATE,BURST");
                Some(Share {
                    rate: r.parse().expect("rate"),
                    burst: b.parse().expect("burst"),
                })
            }
            None => Some(Share::default()),
        };
        let r = run_virtual(cluster_with(
            engine,
            nodes,
            30,
            "m5.xlarge",
            &vars,
            Duration::from_secs(3 * 3600),
            share,
        ))
        .expect("runtime")
        .expect("run");
        let pct = 100.0 * r.throttled() as f64 / r.calls().max(1) as f64;
        let mut waits = r.waits.clone();
        waits.sort();
        let q = |f: f64| {
            waits
                .get(((waits.len() as f64 - 1.0) * f) as usize)
                .map(|d| d.as_secs())
        };
        println!(
            "nodes {nodes} pd {pd} {}: placed after {:?}, waits p50 {:?} p99 {:?}, calls {}, throttled {} ({pct:.1}%), restarts {}",
            engine.label(),
            r.all_placed_after.map(|d| d.as_secs()),
            q(0.5),
            q(0.99),
            r.calls(),
            r.throttled(),
            r.restarts
        );
        for (api, (sent, thr)) in &r.counts {
            println!("  {api}: {sent} / {thr}");
        }
        if let Some(s) = r.schedule {
            println!(
                "  schedule lease: {} reads, {} writes, {} conflicts, {} reservations gave up",
                s.reads, s.writes, s.conflicts, s.contended
            );
        }
    }
}
