//! Pod setup latency: CNI ADD and DEL on a warm pool, ours against the peer, interleaved.
//!
//! Each iteration creates one pod for each plugin, in random order (so neither always runs first, on a warmer
//! cache or a quieter core), each in a fresh namespace, and times its ADD. Every plugin keeps a window of live
//! pods (a node is never empty); once the window is full, each ADD is followed by the DEL of that plugin's oldest
//! pod, also timed. A warm-up of untimed iterations first lets the daemon's pool reach its steady shape and the
//! page cache hold both plugins.
//!
//! What it measures: the plugin process's wall time as the runtime sees it (spawn to exit), including the gRPC
//! round trip to ipamd for ours and host-local's exec and file locking for the peer. What it does not: the
//! runtime's own work (namespace creation, result caching), and anything about EC2 (the pool is warm: the daemon
//! runs with `IP_COOLDOWN_PERIOD=0` here so a freed address is immediately reusable and no ADD waits on the pool;
//! cooldown's effect is the churn benchmark's subject).

use std::collections::VecDeque;
use std::time::Duration;

use rand::Rng;

use super::{new_pod, release_pods, Namespaces, Plugin, Pod, Runner};
use crate::error::BenchError;

/// Samples of one run.
#[derive(Debug, Default, Clone)]
pub struct PodSetupSamples {
    pub ours_add: Vec<Duration>,
    pub ours_del: Vec<Duration>,
    pub peer_add: Vec<Duration>,
    pub peer_del: Vec<Duration>,
    /// Our timed ADDs: `(container ID, spawned ns, exited ns)`, for the span breakdown.
    pub ours_add_runs: Vec<(String, u64, u64)>,
}

impl PodSetupSamples {
    fn push(&mut self, plugin: Plugin, command: &str, d: Duration) {
        let v = match (plugin, command) {
            (Plugin::Ours, "ADD") => &mut self.ours_add,
            (Plugin::Ours, _) => &mut self.ours_del,
            (Plugin::Peer, "ADD") => &mut self.peer_add,
            (Plugin::Peer, _) => &mut self.peer_del,
        };
        v.push(d);
    }
}

/// Parameters.
#[derive(Debug, Clone, Copy)]
pub struct PodSetupParams {
    /// Timed ADDs (and DELs) per plugin.
    pub n: usize,
    /// Untimed iterations first.
    pub warmup: usize,
    /// Live pods per plugin.
    pub window: usize,
}

struct Live {
    pod: Pod,
    timed: bool,
}

/// Runs the interleaved loop. Every pod is deleted before returning, on success or failure.
pub fn run(
    runner: &Runner,
    nss: &mut Namespaces,
    p: PodSetupParams,
    rng: &mut impl Rng,
) -> Result<PodSetupSamples, BenchError> {
    let mut live: [VecDeque<Live>; 2] = [VecDeque::new(), VecDeque::new()];
    let res = run_inner(runner, nss, p, rng, &mut live);
    for (plugin, q) in [Plugin::Ours, Plugin::Peer]
        .into_iter()
        .zip(live.iter_mut())
    {
        let mut pods: Vec<Pod> = q.drain(..).map(|l| l.pod).collect();
        release_pods(runner, nss, plugin, &mut pods);
    }
    res
}

fn idx(p: Plugin) -> usize {
    match p {
        Plugin::Ours => 0,
        Plugin::Peer => 1,
    }
}

fn del_oldest(
    runner: &Runner,
    nss: &mut Namespaces,
    plugin: Plugin,
    live: &mut VecDeque<Live>,
    s: &mut PodSetupSamples,
) -> Result<(), BenchError> {
    if let Some(mut old) = live.pop_front() {
        let t = runner.must(plugin, "DEL", &mut old.pod)?;
        if old.timed {
            s.push(plugin, "DEL", t);
        }
        nss.delete(&old.pod.netns)?;
    }
    Ok(())
}

fn run_inner(
    runner: &Runner,
    nss: &mut Namespaces,
    p: PodSetupParams,
    rng: &mut impl Rng,
    live: &mut [VecDeque<Live>; 2],
) -> Result<PodSetupSamples, BenchError> {
    let mut s = PodSetupSamples::default();
    for i in 0..(p.warmup + p.n) {
        let timed = i >= p.warmup;
        let order = if rng.random::<bool>() {
            [Plugin::Ours, Plugin::Peer]
        } else {
            [Plugin::Peer, Plugin::Ours]
        };
        for plugin in order {
            let mut pod = new_pod(nss, plugin, i)?;
            let t = match runner.must_run(plugin, "ADD", &mut pod) {
                Ok(r) => {
                    if timed && plugin == Plugin::Ours {
                        s.ours_add_runs
                            .push((pod.container_id.clone(), r.spawned_ns, r.exited_ns));
                    }
                    r.elapsed
                }
                Err(e) => {
                    let _ = runner.run(plugin, "DEL", &pod);
                    let _ = nss.delete(&pod.netns);
                    return Err(e);
                }
            };
            if timed {
                s.push(plugin, "ADD", t);
            }
            let q = &mut live[idx(plugin)];
            q.push_back(Live { pod, timed });
            if q.len() > p.window {
                del_oldest(runner, nss, plugin, q, &mut s)?;
            }
        }
    }
    // The last window: DELs of timed pods, still interleaved.
    while live.iter().any(|q| !q.is_empty()) {
        let order = if rng.random::<bool>() {
            [Plugin::Ours, Plugin::Peer]
        } else {
            [Plugin::Peer, Plugin::Ours]
        };
        for plugin in order {
            del_oldest(runner, nss, plugin, &mut live[idx(plugin)], &mut s)?;
        }
    }
    Ok(s)
}
