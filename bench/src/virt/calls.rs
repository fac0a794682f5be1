//! EC2 calls per 1,000 pods: one node under pod churn, in virtual time, ours against the anchor model.
//!
//! Workload (the same seeded sequence for both engines): waves of a Deployment of P pods on the node. A wave
//! creates P pods at once; for 150 s one pod is replaced every 5 s (a DEL and a new pod); then all pods are
//! deleted and the node sits empty for 120 s. Waves repeat until the pod count reaches the target (1,000). A pod
//! whose ADD finds no address stays pending and is retried every second, as kubelet retries a sandbox; every
//! failed attempt is counted, and a pod still pending when its wave ends counts as never placed. P is half the
//! ENI-derived max-pods, capped at 60, so the node is never asked for more pods than it can hold and a failed ADD
//! is the pool's fault, not the node's size. `IP_COOLDOWN_PERIOD` is the default 30 s.
//!
//! The simulator has EC2's per-API throttling, a 1 s IMDS lag and 2 s attach latency. Calls are counted by the
//! simulator, as EC2 would bill them (retries and throttled calls included), from the daemon's start (its startup
//! calls included) to the end of the last wave, and scaled to 1,000 pods.
//!
//! What this cannot tell: the anchor model follows the published description of the anchor's policy, not its
//! code, so a figure for the anchor is the model's. Reconcile and the leaked-ENI job are modelled for both, but
//! IMDS never disagrees with EC2 for long here (no foreign ENIs, no lost calls), so neither engine's reconcile
//! calls EC2 much; a fleet with IMDS drift would see more Describe calls from both.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ec2_api::clock::{Clock, TokioClock};
use ec2_sim::{NoHotplug, SimEc2, SimSpec};
use ipamd::config::Config;
use ipamd::core::datastore::IpamKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{config_of, key, start, Engine, PoolNode};
use crate::error::{check_interrupt, BenchError};

/// A warm-pool setting.
#[derive(Debug, Clone)]
pub struct Setting {
    pub label: &'static str,
    pub vars: Vec<(&'static str, &'static str)>,
}

/// The three settings compared.
pub fn settings() -> Vec<Setting> {
    vec![
        Setting {
            label: "WARM_ENI_TARGET=1 (default)",
            vars: vec![],
        },
        Setting {
            label: "WARM_IP_TARGET=5, MINIMUM_IP_TARGET=10",
            vars: vec![("WARM_IP_TARGET", "5"), ("MINIMUM_IP_TARGET", "10")],
        },
        Setting {
            label: "prefix delegation, WARM_PREFIX_TARGET=1",
            vars: vec![
                ("ENABLE_PREFIX_DELEGATION", "true"),
                ("WARM_PREFIX_TARGET", "1"),
            ],
        },
    ]
}

/// The three instance types compared (small, the demo's, a large one).
pub const INSTANCE_TYPES: [&str; 3] = ["t3.medium", "m5.large", "m5.4xlarge"];

/// What one engine did in one scenario.
#[derive(Debug, Clone, Default)]
pub struct CallsResult {
    pub pods: usize,
    pub wave_size: usize,
    pub calls: BTreeMap<&'static str, u64>,
    pub failed_adds: u64,
    pub never_placed: u64,
    /// Time from a pod's creation to its address.
    pub waits: Vec<Duration>,
    pub virtual_time: Duration,
}

impl CallsResult {
    pub fn total(&self) -> u64 {
        self.calls.values().sum()
    }
    /// Calls of `apis` per 1,000 pods.
    pub fn per_1000(&self, apis: &[&str]) -> f64 {
        let n: u64 = self
            .calls
            .iter()
            .filter(|(k, _)| apis.is_empty() || apis.contains(k))
            .map(|(_, v)| v)
            .sum();
        n as f64 * 1000.0 / self.pods.max(1) as f64
    }
}

/// Wave size for an instance type: half its ENI-derived max-pods, at most 60.
pub fn wave_size(instance_type: &str) -> Result<usize, BenchError> {
    let limits = instance_limits::lookup(instance_type)
        .ok_or_else(|| BenchError::Other(format!("unknown instance type {instance_type}")))?;
    let p = ipamd::core::pool::policy_for(limits, &Config::default(), None)
        .map_err(BenchError::Other)?;
    Ok(((p.max_pods / 2) as usize).clamp(1, 60))
}

struct Kubelet {
    node: Arc<dyn PoolNode>,
    clock: Arc<dyn Clock>,
    pending: Vec<(IpamKey, Duration)>,
    live: Vec<IpamKey>,
    next: usize,
    out: CallsResult,
}

impl Kubelet {
    fn create(&mut self) {
        self.pending.push((key(0, self.next), self.clock.now()));
        self.next += 1;
        self.out.pods += 1;
    }

    /// One pass over the pending pods, oldest first; stops at the first failure (the rest would fail the same
    /// way, and are counted as failed attempts too).
    fn tick(&mut self) {
        let now = self.clock.now();
        let mut placed = 0;
        for (k, since) in &self.pending {
            if self.node.add(k) {
                self.out.waits.push(now.saturating_sub(*since));
                self.live.push(k.clone());
                placed += 1;
            } else {
                self.out.failed_adds += (self.pending.len() - placed) as u64;
                break;
            }
        }
        self.pending.drain(..placed);
    }

    async fn run_for(
        &mut self,
        secs: u64,
        replace_every: Option<u64>,
        rng: &mut StdRng,
    ) -> Result<(), BenchError> {
        for s in 0..secs {
            check_interrupt()?;
            if let Some(every) = replace_every {
                if s > 0 && s % every == 0 && !self.live.is_empty() {
                    let i = rng.random_range(0..self.live.len());
                    let k = self.live.swap_remove(i);
                    self.node.del(&k);
                    self.create();
                }
            }
            self.tick();
            self.clock.sleep(Duration::from_secs(1)).await;
        }
        Ok(())
    }

    fn scale_to_zero(&mut self) {
        self.out.never_placed += self.pending.len() as u64;
        self.pending.clear();
        for k in self.live.drain(..) {
            self.node.del(&k);
        }
    }
}

/// One scenario: `engine` on `instance_type` with `setting`, until `total` pods were created.
pub async fn scenario(
    engine: Engine,
    instance_type: &str,
    setting: &Setting,
    total: usize,
    seed: u64,
) -> Result<CallsResult, BenchError> {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::default());
    let mut spec = SimSpec::new(instance_type);
    spec.clock = Arc::clone(&clock);
    spec.imds_lag = Duration::from_secs(1);
    spec.attach_latency = Duration::from_secs(2);
    let sim = SimEc2::launch(spec, Arc::new(NoHotplug))
        .await
        .map_err(|e| BenchError::Node(e.to_string()))?;
    let config = config_of(&setting.vars)?;
    let started = clock.now();
    let running = start(
        engine,
        Arc::new(sim.clone()),
        Arc::new(sim.clone()),
        Arc::clone(&clock),
        config,
        None,
    )
    .await?;
    let p = wave_size(instance_type)?;
    let mut k = Kubelet {
        node: Arc::clone(&running.node),
        clock: Arc::clone(&clock),
        pending: Vec::new(),
        live: Vec::new(),
        next: 0,
        out: CallsResult {
            wave_size: p,
            ..CallsResult::default()
        },
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let res = async {
        // Let the daemon settle as a node would before pods arrive.
        clock.sleep(Duration::from_secs(60)).await;
        while k.out.pods < total {
            for _ in 0..p {
                k.create();
            }
            k.run_for(150, Some(5), &mut rng).await?;
            k.scale_to_zero();
            k.run_for(120, None, &mut rng).await?;
        }
        Ok::<(), BenchError>(())
    }
    .await;
    running.stop().await;
    res?;
    let mut out = k.out;
    out.calls = sim.calls();
    out.virtual_time = clock.now().saturating_sub(started);
    Ok(out)
}
