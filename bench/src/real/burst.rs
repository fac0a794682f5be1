//! Burst: 30 ADDs started at the same instant into a warm pool (the anchor's own scenario: 30 pods landing on a
//! node at once; it reports p50 0.75 s on an EC2 node after removing the veth move, 5 s before), then the 30 DELs
//! at once.
//!
//! Each of the 30 calls runs on its own thread that has already entered the node namespace and waits on a barrier,
//! so all 30 processes are spawned together; each is timed from its own spawn to its exit. Rounds alternate
//! between the plugins in random order; one untimed round per plugin comes first.
//!
//! What it measures: contention (the kernel's rtnl lock, ipamd's datastore lock and gRPC server, host-local's file
//! lock) on a 2-core machine with 30 processes wanting the CPU at once, so the p99 is mostly CPU queueing; the
//! anchor's figure comes from a larger EC2 node and is quoted for scale, not as a same-machine comparison.
//!
//! Between rounds the kernel finishes the previous round's teardown first: a round starts only once the node
//! namespace holds no more pod veths than before the first round and the kernel has stopped freeing network
//! namespaces ([`settle`]), whichever plugin ran last. A round's 30 veths go after its DEL burst (ptp deletes them
//! in its DEL, ours hands them to ipamd's reaper) and with its 30 pod namespaces, whose cleanup the kernel runs
//! later in a work queue; both hold the rtnl lock through RCU grace periods, so a round started meanwhile would
//! measure the previous round's teardown (or the pod setup benchmark's hundreds of namespaces, before the first
//! round), charged to whichever plugin happens to run next.

use std::sync::Barrier;
use std::time::Duration;

use rand::Rng;

use super::{exec_timed, new_pod, release_pods, CniRun, Namespaces, Plugin, Pod, Runner};
use crate::error::{check_interrupt, BenchError};

/// Samples of one plugin.
#[derive(Debug, Default, Clone)]
pub struct BurstSamples {
    pub add: Vec<Duration>,
    pub del: Vec<Duration>,
    pub failed_adds: usize,
}

/// Runs `size` calls of `command` at once, one per pod.
fn burst(
    runner: &Runner,
    plugin: Plugin,
    command: &'static str,
    pods: &[Pod],
) -> Result<Vec<CniRun>, BenchError> {
    let barrier = Barrier::new(pods.len());
    let calls: Vec<_> = pods
        .iter()
        .map(|p| runner.call(plugin, command, p))
        .collect();
    let results: Vec<Result<CniRun, BenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = calls
            .iter()
            .map(|(prog, env, stdin)| {
                let barrier = &barrier;
                let node = &runner.node_ns;
                s.spawn(move || {
                    datapath::in_netns(node, || {
                        barrier.wait();
                        Ok(exec_timed(prog, env, stdin))
                    })
                    .map_err(BenchError::from)
                    .and_then(|r| r)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(BenchError::Other("burst thread panicked".into())))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// One round for one plugin: `size` pods ADDed at once, then DELeted at once.
fn round(
    runner: &Runner,
    nss: &mut Namespaces,
    plugin: Plugin,
    size: usize,
    round_no: usize,
    out: Option<&mut BurstSamples>,
) -> Result<(), BenchError> {
    check_interrupt()?;
    let mut pods = Vec::with_capacity(size);
    for i in 0..size {
        match new_pod(nss, plugin, round_no * 1000 + i) {
            Ok(p) => pods.push(p),
            Err(e) => {
                release_pods(runner, nss, plugin, &mut pods);
                return Err(e);
            }
        }
    }
    let res = (|| {
        let adds = burst(runner, plugin, "ADD", &pods)?;
        let mut failed = 0;
        for (pod, r) in pods.iter_mut().zip(&adds) {
            if r.ok {
                pod.result = serde_json::from_str(&r.stdout).ok();
            } else {
                failed += 1;
            }
        }
        // Let stragglers' logs and the daemon's pool task settle before the DEL burst.
        std::thread::sleep(Duration::from_millis(300));
        let dels = burst(runner, plugin, "DEL", &pods)?;
        if let Some(o) = out {
            o.add
                .extend(adds.iter().filter(|r| r.ok).map(|r| r.elapsed));
            o.del
                .extend(dels.iter().filter(|r| r.ok).map(|r| r.elapsed));
            o.failed_adds += failed;
        }
        Ok(())
    })();
    // DEL again (idempotent) anything the burst left, and drop the namespaces.
    release_pods(runner, nss, plugin, &mut pods);
    res
}

/// How many pod veths the namespace at `node` holds: ours (`eni` + hash, the netconf's `vethPrefix`) and ptp's
/// (`veth` + random). The simulated ENIs are veths too (`eth*`), and the pool may attach one during a burst.
fn veths(node: &std::path::Path) -> Result<usize, BenchError> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", node.display()))
        .args(["ip", "-o", "link", "show", "type", "veth"])
        .output()
        .map_err(|e| BenchError::Other(format!("nsenter ip link: {e}")))?;
    if !out.status.success() {
        return Err(BenchError::Other(format!(
            "ip link in {}: {}",
            node.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .filter(|name| name.starts_with("eni") || name.starts_with("veth"))
        .count())
}

/// Network namespaces the kernel holds (live or not yet freed): the active objects of the `net_namespace` slab
/// cache (`None` where /proc/slabinfo does not show it).
fn kernel_netns() -> Option<u64> {
    let slabs = std::fs::read_to_string("/proc/slabinfo").ok()?;
    slabs
        .lines()
        .find(|l| l.starts_with("net_namespace "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Waits (up to 30 s) until the namespace at `node` holds at most `baseline` pod veths (the previous round's pairs
/// are gone), then until the kernel's count of network namespaces has not changed for 250 ms (the namespaces'
/// cleanup is done); see the module docs.
fn settle(node: &std::path::Path, baseline: usize) -> Result<(), BenchError> {
    let mut left = 0;
    let mut netns = (kernel_netns(), 0u32);
    for _ in 0..1500 {
        check_interrupt()?;
        left = veths(node)?;
        if left <= baseline {
            let now = kernel_netns();
            netns = if now == netns.0 {
                (now, netns.1 + 1)
            } else {
                (now, 0)
            };
            if now.is_none() || netns.1 >= 12 {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BenchError::Other(format!(
        "{left} pod veths in {} after 30 s ({baseline} before the first burst), kernel namespaces {:?}",
        node.display(),
        netns.0
    )))
}

/// `rounds` timed rounds per plugin (plus one untimed each), interleaved in random order.
pub fn run(
    runner: &Runner,
    nss: &mut Namespaces,
    size: usize,
    rounds: usize,
    rng: &mut impl Rng,
) -> Result<(BurstSamples, BurstSamples), BenchError> {
    let mut ours = BurstSamples::default();
    let mut peer = BurstSamples::default();
    let baseline = veths(&runner.node_ns)?;
    settle(&runner.node_ns, baseline)?;
    for r in 0..=rounds {
        let order = if rng.random::<bool>() {
            [Plugin::Ours, Plugin::Peer]
        } else {
            [Plugin::Peer, Plugin::Ours]
        };
        for plugin in order {
            let out = match (r, plugin) {
                (0, _) => None,
                (_, Plugin::Ours) => Some(&mut ours),
                (_, Plugin::Peer) => Some(&mut peer),
            };
            round(runner, nss, plugin, size, r, out)?;
            settle(&runner.node_ns, baseline)?;
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    Ok((ours, peer))
}
