//! The veth reaper: deletes pods' host veths in the background, off the CNI DEL's critical path.
//!
//! Deleting a veth pair is by far the slowest step of a DEL: `RTM_DELLINK` returns only once the kernel's
//! `unregister_netdevice` has waited for RCU grace periods (about 30 ms, up to 80 ms), against well under a
//! millisecond for the pod's rules and host route. The anchor never deletes the veth (it vanishes with the pod's
//! network namespace); we still delete it, because a runtime may keep the namespace (`podman network
//! disconnect`), but not while the runtime waits:
//!
//! ```text
//!  aws-cni DEL ── looks up the host veth (name, ifindex) ──▶ DelNetwork{HostVethName, HostVethIfIndex, netns}
//!                                                             │ ipamd releases the IP, then Reaper::offer:
//!       ◀── DelNetworkReply{VethDeferred: true} ──────────────┤   queued (bounded) ─▶ reaper task
//!  removes rules 512/1536 and the /32 route, returns          │                         deletes the veth by index
//!  (VethDeferred false or absent: deletes the veth itself)    └─ refused: VethDeferred false
//! ```
//!
//! Safety, in order of the checks:
//! - **Only what the plugin offered, in our namespace.** The offer must name a link with the configured veth
//!   prefix and a non-zero index, and come from a plugin in ipamd's own network namespace (the `(dev, ino)` of
//!   `/proc/thread-self/ns/net`); anything else is refused and the plugin deletes the veth itself.
//! - **By index, and only under the expected name.** Linux does not reuse an interface index soon (each namespace
//!   allocates them cyclically), and a re-ADD of the same pod creates a new link under the same name with a new
//!   index. The reaper reads the link at the queued index: absent means already gone (the namespace went away and
//!   took the pair, or the re-ADD replaced it) and counts as done; another name means the index is no longer
//!   ours and it is left alone; the expected name is deleted by that index, so the new link of a re-ADD is never
//!   touched. The check and the delete are two requests, but between them the link at that index can only be
//!   deleted (by the ADD, by CNI GC), which the delete then reports as gone (`ENODEV`), not renamed: nothing
//!   renames pod veths.
//! - **Bounded.** The queue holds [`DEFAULT_QUEUE_CAPACITY`] deletions; a full queue refuses the offer, so a
//!   burst of DELs degrades to the synchronous deletion, never to unbounded memory.
//! - **Failures are logged and counted** (`awscni_veth_reaper_total{outcome}`), never retried in a loop and never
//!   fatal: a veth left behind is replaced by the pod's next ADD ([`datapath::pod::setup`] deletes a leftover of
//!   its name) and swept by CNI GC.
//!
//! An optional delay ([`ReaperConfig::delay`], `AWS_CNI_VETH_REAPER_DELAY_MS`, default 0) holds each deletion back: when
//! the runtime removes the pod's namespace meanwhile, the kernel takes the pair with the namespace (batched with
//! the namespace's other devices) and the reaper only finds it gone.
//!
//! Shutdown ([`ReaperTask::shutdown`]): new offers are refused, what is queued is deleted at once (the delay no
//! longer applies) within a deadline, and whatever is left then is abandoned, logged and counted (`abandoned`).
//! The queue is in memory only: deletions pending when ipamd dies are lost the same way, with the same fallbacks
//! (the namespace's removal, the next ADD, CNI GC).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use datapath::NetnsId;
use prometheus::{IntCounterVec, IntGauge, Opts};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::host::HostNetwork;

/// Deletions the queue holds before offers are refused.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// Longest wait for the queue to drain on shutdown.
pub const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const MAX_IFNAME_LEN: usize = 15;

/// A host veth a DEL offered for deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethOffer {
    /// The link's name when the plugin looked it up.
    pub name: String,
    /// The link's interface index then.
    pub index: u32,
    /// The network namespace the plugin looked in (`None`: it did not say).
    pub netns: Option<NetnsId>,
}

/// Why an offer was refused (the plugin then deletes the veth itself).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OfferError {
    #[error("the veth reaper's queue is full ({capacity} deletions pending)")]
    QueueFull { capacity: usize },
    #[error("the veth reaper is stopping")]
    Stopped,
    #[error("{name:?} is not a pod veth name (prefix {prefix:?})")]
    NotAPodVeth { name: String, prefix: String },
    #[error("host veth {name} offered without an interface index")]
    NoIndex { name: String },
    #[error("host veth {name} lives in another network namespace than ipamd's (plugin {plugin:?}, ipamd {ours:?})")]
    OtherNetns {
        name: String,
        plugin: Option<NetnsId>,
        ours: NetnsId,
    },
}

/// What became of one queued deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The reaper deleted it.
    Deleted,
    /// Nothing at that index any more (the namespace took the pair, or an ADD or GC deleted it).
    Gone,
    /// The index now has another name: not ours, left alone.
    Renamed,
    /// The kernel refused (logged).
    Failed,
}

impl Outcome {
    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Deleted => "deleted",
            Outcome::Gone => "gone",
            Outcome::Renamed => "renamed",
            Outcome::Failed => "failed",
        }
    }
}

/// The reaper's series: outcomes (with `abandoned` at shutdown and `refused` offers) and the pending count.
#[derive(Debug, Clone)]
pub struct ReaperMetrics {
    pub outcomes: IntCounterVec,
    pub pending: IntGauge,
}

impl ReaperMetrics {
    /// Series not registered anywhere (tests, or a daemon without metrics).
    pub fn unregistered() -> ReaperMetrics {
        ReaperMetrics {
            outcomes: IntCounterVec::new(Opts::new("veth_reaper_total", "-"), &["outcome"])
                .expect("static metric options are valid"),
            pending: IntGauge::new("veth_reaper_pending", "-")
                .expect("static metric options are valid"),
        }
    }

    /// The count of `outcome`.
    pub fn count(&self, outcome: &str) -> u64 {
        self.outcomes.with_label_values(&[outcome]).get()
    }
}

/// How the reaper behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaperConfig {
    /// Names of pod veths start with this (`AWS_VPC_K8S_CNI_VETHPREFIX`).
    pub veth_prefix: String,
    /// ipamd's network namespace: offers from a plugin elsewhere are refused.
    pub netns: NetnsId,
    /// Queue capacity.
    pub capacity: usize,
    /// How long a deletion waits after its DEL (see the module docs).
    pub delay: Duration,
}

struct Job {
    name: String,
    index: u32,
    due: Instant,
}

/// The side DelNetwork talks to: offers deletions. Cheap to clone.
#[derive(Clone)]
pub struct Reaper {
    tx: mpsc::Sender<Job>,
    config: Arc<ReaperConfig>,
    metrics: ReaperMetrics,
    pending: Arc<AtomicI64>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper")
            .field("config", &self.config)
            .field("pending", &self.pending.load(Ordering::Relaxed))
            .finish()
    }
}

/// The running task; stop it with [`ReaperTask::shutdown`].
#[derive(Debug)]
pub struct ReaperTask {
    stop: watch::Sender<bool>,
    join: JoinHandle<()>,
    metrics: ReaperMetrics,
    pending: Arc<AtomicI64>,
}

/// How the shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// The queue was emptied before the deadline.
    pub drained: bool,
    /// Deletions given up (queued, or in flight, at the deadline).
    pub abandoned: u64,
}

impl Reaper {
    /// Starts the reaper task (on the current tokio runtime) over `links`.
    pub fn spawn(
        config: ReaperConfig,
        links: Arc<dyn HostNetwork>,
        metrics: ReaperMetrics,
    ) -> (Reaper, ReaperTask) {
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let (stop, stop_rx) = watch::channel(false);
        let pending = Arc::new(AtomicI64::new(0));
        let worker = Worker {
            links,
            metrics: metrics.clone(),
            pending: Arc::clone(&pending),
        };
        let join = tokio::spawn(worker.run(rx, stop_rx));
        (
            Reaper {
                tx,
                config: Arc::new(config),
                metrics: metrics.clone(),
                pending: Arc::clone(&pending),
            },
            ReaperTask {
                stop,
                join,
                metrics,
                pending,
            },
        )
    }

    /// Takes the deletion of an offered host veth, or says why not. Never waits.
    pub fn offer(&self, offer: &VethOffer) -> Result<(), OfferError> {
        let res = self.check(offer).and_then(|()| {
            self.tx
                .try_send(Job {
                    name: offer.name.clone(),
                    index: offer.index,
                    due: Instant::now() + self.config.delay,
                })
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => OfferError::QueueFull {
                        capacity: self.config.capacity,
                    },
                    mpsc::error::TrySendError::Closed(_) => OfferError::Stopped,
                })
        });
        match &res {
            Ok(()) => {
                let now = self.pending.fetch_add(1, Ordering::Relaxed) + 1;
                self.metrics.pending.set(now);
            }
            Err(_) => self.metrics.outcomes.with_label_values(&["refused"]).inc(),
        }
        res
    }

    fn check(&self, offer: &VethOffer) -> Result<(), OfferError> {
        let prefix = &self.config.veth_prefix;
        // Only the pod veth names DEL derives (prefix + 11 lower-case hex): never a bridge, an ENI or the node's
        // own interface that merely shares the prefix.
        if !datapath::is_pod_veth_name(&offer.name, prefix) || offer.name.len() > MAX_IFNAME_LEN {
            return Err(OfferError::NotAPodVeth {
                name: offer.name.clone(),
                prefix: prefix.clone(),
            });
        }
        if offer.index == 0 {
            return Err(OfferError::NoIndex {
                name: offer.name.clone(),
            });
        }
        if offer.netns != Some(self.config.netns) {
            return Err(OfferError::OtherNetns {
                name: offer.name.clone(),
                plugin: offer.netns,
                ours: self.config.netns,
            });
        }
        Ok(())
    }
}

impl ReaperTask {
    /// Refuses new offers, deletes what is queued (without the delay) for at most `timeout`, then abandons the
    /// rest.
    pub async fn shutdown(mut self, timeout: Duration) -> ShutdownReport {
        let _ = self.stop.send(true);
        let drained = match tokio::time::timeout(timeout, &mut self.join).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the veth reaper task failed");
                false
            }
            Err(_) => {
                self.join.abort();
                let _ = (&mut self.join).await;
                false
            }
        };
        let abandoned = u64::try_from(self.pending.swap(0, Ordering::Relaxed)).unwrap_or(0);
        self.metrics.pending.set(0);
        if abandoned > 0 {
            self.metrics
                .outcomes
                .with_label_values(&["abandoned"])
                .inc_by(abandoned);
            tracing::warn!(
                abandoned,
                ?timeout,
                "veth deletions abandoned at shutdown (they go with their pods' namespaces, the next ADD of \
                 their pods, or CNI GC)"
            );
        }
        ShutdownReport { drained, abandoned }
    }
}

struct Worker {
    links: Arc<dyn HostNetwork>,
    metrics: ReaperMetrics,
    pending: Arc<AtomicI64>,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Job>, mut stop: watch::Receiver<bool>) {
        loop {
            let job = tokio::select! {
                biased;
                _ = stop.changed() => break,
                job = rx.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
            };
            let stopping = tokio::select! {
                biased;
                _ = stop.changed() => true,
                () = tokio::time::sleep_until(job.due) => false,
            };
            self.reap(&job).await;
            if stopping {
                break;
            }
        }
        // Shutdown: no new offers; what is queued is deleted now.
        rx.close();
        while let Some(job) = rx.recv().await {
            self.reap(&job).await;
        }
    }

    async fn reap(&self, job: &Job) {
        let outcome = reap_one(self.links.as_ref(), &job.name, job.index).await;
        self.metrics
            .outcomes
            .with_label_values(&[outcome.as_str()])
            .inc();
        let now = self.pending.fetch_sub(1, Ordering::Relaxed) - 1;
        self.metrics.pending.set(now.max(0));
    }
}

/// Deletes the link at `index` if it is still called `name`; see the module docs.
pub async fn reap_one(links: &dyn HostNetwork, name: &str, index: u32) -> Outcome {
    let outcome = match links.link_name(index).await {
        Ok(None) => Outcome::Gone,
        Ok(Some(current)) if current != name => {
            tracing::info!(veth = name, index, %current,
                "the veth's index now has another name; left alone");
            Outcome::Renamed
        }
        Ok(Some(_)) => match links.delete_link(index).await {
            Ok(true) => Outcome::Deleted,
            Ok(false) => Outcome::Gone,
            Err(e) if e.is_not_found() => Outcome::Gone,
            Err(e) => {
                tracing::warn!(veth = name, index, error = %e, "cannot delete a pod's host veth");
                Outcome::Failed
            }
        },
        Err(e) if e.is_not_found() => Outcome::Gone,
        Err(e) => {
            tracing::warn!(veth = name, index, error = %e, "cannot look up a pod's host veth");
            Outcome::Failed
        }
    };
    tracing::debug!(
        veth = name,
        index,
        outcome = outcome.as_str(),
        "veth reaper"
    );
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fakes::FakeHost;

    const NS: NetnsId = NetnsId {
        dev: 4,
        ino: 4026531840,
    };

    fn config(capacity: usize) -> ReaperConfig {
        ReaperConfig {
            veth_prefix: "eni".into(),
            netns: NS,
            capacity,
            delay: Duration::ZERO,
        }
    }

    fn offer(name: &str, index: u32) -> VethOffer {
        VethOffer {
            name: name.into(),
            index,
            netns: Some(NS),
        }
    }

    /// Waits (in virtual or real time) until the reaper has handled `n` deletions.
    async fn settle(m: &ReaperMetrics, n: u64) {
        for _ in 0..1000 {
            let done: u64 = ["deleted", "gone", "renamed", "failed"]
                .iter()
                .map(|o| m.count(o))
                .sum();
            if done >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the reaper did not handle {n} deletions");
    }

    #[tokio::test]
    async fn deletes_by_index_only_under_the_expected_name() {
        let links = Arc::new(FakeHost::default());
        links.add(10, "eniaaaaaaaaaaa");
        links.add(11, "enibbbbbbbbbbb");
        links.add(12, "eth0");
        let m = ReaperMetrics::unregistered();
        let (reaper, task) = Reaper::spawn(config(8), links.clone(), m.clone());
        reaper
            .offer(&offer("eniaaaaaaaaaaa", 10))
            .expect("offer taken");
        // Index 12 is not that veth any more (its name differs): never deleted.
        reaper
            .offer(&offer("eniccccccccccc", 12))
            .expect("offer taken");
        // Index 13 does not exist: already gone, a success.
        reaper
            .offer(&offer("eniddddddddddd", 13))
            .expect("offer taken");
        settle(&m, 3).await;
        assert_eq!(*links.deleted.lock().expect("lock"), vec![10]);
        assert!(links.exists(11) && links.exists(12));
        assert_eq!(m.count("deleted"), 1);
        assert_eq!(m.count("renamed"), 1);
        assert_eq!(m.count("gone"), 1);
        assert_eq!(m.pending.get(), 0);
        let report = task.shutdown(Duration::from_secs(5)).await;
        assert_eq!(
            report,
            ShutdownReport {
                drained: true,
                abandoned: 0
            }
        );
    }

    #[tokio::test]
    async fn a_readded_pods_new_link_under_the_same_name_survives() {
        let links = Arc::new(FakeHost::gated());
        links.add(20, "eniaaaaaaaaaaa");
        let m = ReaperMetrics::unregistered();
        let (reaper, task) = Reaper::spawn(config(8), links.clone(), m.clone());
        reaper
            .offer(&offer("eniaaaaaaaaaaa", 20))
            .expect("offer taken");
        // The re-ADD replaces the old link before the reaper runs: same name, new index.
        links.links.lock().expect("lock").remove(&20);
        links.add(21, "eniaaaaaaaaaaa");
        links.release(1);
        settle(&m, 1).await;
        assert!(links.exists(21), "the new link was deleted");
        assert_eq!(m.count("gone"), 1);
        assert_eq!(m.count("deleted"), 0);
        task.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn failures_are_counted_and_the_reaper_goes_on() {
        let links = Arc::new(FakeHost::default());
        links.add(30, "eniaaaaaaaaaaa");
        links.add(31, "enibbbbbbbbbbb");
        links.failing.lock().expect("lock").insert(30);
        let m = ReaperMetrics::unregistered();
        let (reaper, task) = Reaper::spawn(config(8), links.clone(), m.clone());
        reaper
            .offer(&offer("eniaaaaaaaaaaa", 30))
            .expect("offer taken");
        reaper
            .offer(&offer("enibbbbbbbbbbb", 31))
            .expect("offer taken");
        settle(&m, 2).await;
        assert_eq!(m.count("failed"), 1);
        assert_eq!(m.count("deleted"), 1);
        assert!(links.exists(30) && !links.exists(31));
        task.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn offers_that_are_not_ours_are_refused() {
        let links = Arc::new(FakeHost::default());
        let m = ReaperMetrics::unregistered();
        let (reaper, task) = Reaper::spawn(config(8), links, m.clone());
        assert!(matches!(
            reaper.offer(&offer("eth0", 2)),
            Err(OfferError::NotAPodVeth { .. })
        ));
        assert!(matches!(
            reaper.offer(&offer("eni", 2)),
            Err(OfferError::NotAPodVeth { .. })
        ));
        assert!(matches!(
            reaper.offer(&offer("eni0123456789abcdef", 2)),
            Err(OfferError::NotAPodVeth { .. })
        ));
        for not_a_pod_veth in ["enimgmt", "eniAAAAAAAAAAA", "eniaaaaaaaaaa"] {
            assert!(
                matches!(
                    reaper.offer(&offer(not_a_pod_veth, 2)),
                    Err(OfferError::NotAPodVeth { .. })
                ),
                "{not_a_pod_veth}"
            );
        }
        assert!(matches!(
            reaper.offer(&offer("eniaaaaaaaaaaa", 0)),
            Err(OfferError::NoIndex { .. })
        ));
        let mut elsewhere = offer("eniaaaaaaaaaaa", 5);
        elsewhere.netns = Some(NetnsId { dev: 4, ino: 1 });
        assert!(matches!(
            reaper.offer(&elsewhere),
            Err(OfferError::OtherNetns { .. })
        ));
        elsewhere.netns = None;
        assert!(matches!(
            reaper.offer(&elsewhere),
            Err(OfferError::OtherNetns { .. })
        ));
        assert_eq!(m.count("refused"), 9);
        assert_eq!(m.pending.get(), 0);
        task.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_full_queue_refuses_so_the_plugin_deletes_itself() {
        let links = Arc::new(FakeHost::gated());
        for i in 1..=4 {
            links.add(i, &format!("eni{i:011}"));
        }
        let m = ReaperMetrics::unregistered();
        let (reaper, task) = Reaper::spawn(config(2), links.clone(), m.clone());
        // One in the worker's hands (held by the gate), two queued, the fourth refused.
        reaper
            .offer(&offer("eni00000000001", 1))
            .expect("offer taken");
        for _ in 0..100 {
            if reaper.tx.capacity() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        reaper
            .offer(&offer("eni00000000002", 2))
            .expect("offer taken");
        reaper
            .offer(&offer("eni00000000003", 3))
            .expect("offer taken");
        assert_eq!(
            reaper.offer(&offer("eni00000000004", 4)),
            Err(OfferError::QueueFull { capacity: 2 })
        );
        assert_eq!(m.pending.get(), 3);
        links.release(3);
        settle(&m, 3).await;
        assert_eq!(*links.deleted.lock().expect("lock"), vec![1, 2, 3]);
        assert!(links.exists(4));
        task.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_holds_deletions_back_and_shutdown_drains_without_it() {
        let links = Arc::new(FakeHost::default());
        links.add(40, "eniaaaaaaaaaaa");
        links.add(41, "enibbbbbbbbbbb");
        let m = ReaperMetrics::unregistered();
        let mut cfg = config(8);
        cfg.delay = Duration::from_secs(60);
        let (reaper, task) = Reaper::spawn(cfg, links.clone(), m.clone());
        reaper
            .offer(&offer("eniaaaaaaaaaaa", 40))
            .expect("offer taken");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(links.exists(40), "deleted before its delay");
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(!links.exists(40), "not deleted after its delay");
        reaper
            .offer(&offer("enibbbbbbbbbbb", 41))
            .expect("offer taken");
        let report = task.shutdown(Duration::from_secs(5)).await;
        assert!(report.drained && report.abandoned == 0, "{report:?}");
        assert!(!links.exists(41), "shutdown did not delete the queued veth");
        assert_eq!(
            reaper.offer(&offer("enibbbbbbbbbbb", 41)),
            Err(OfferError::Stopped)
        );
    }

    #[tokio::test]
    async fn shutdown_abandons_what_it_cannot_finish_in_time() {
        // The gate never opens: the kernel is stuck on the first deletion.
        let links = Arc::new(FakeHost::gated());
        links.add(50, "eniaaaaaaaaaaa");
        links.add(51, "enibbbbbbbbbbb");
        let m = ReaperMetrics::unregistered();
        let (reaper, task) = Reaper::spawn(config(8), links.clone(), m.clone());
        reaper
            .offer(&offer("eniaaaaaaaaaaa", 50))
            .expect("offer taken");
        reaper
            .offer(&offer("enibbbbbbbbbbb", 51))
            .expect("offer taken");
        let report = task.shutdown(Duration::from_millis(100)).await;
        assert_eq!(
            report,
            ShutdownReport {
                drained: false,
                abandoned: 2
            }
        );
        assert_eq!(m.count("abandoned"), 2);
        assert_eq!(m.pending.get(), 0);
        assert!(links.exists(50) && links.exists(51));
    }
}
