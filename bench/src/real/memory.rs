//! Memory: ipamd's resident set idle and with 250 pods; the plugin's peak resident set for one ADD and one DEL.
//!
//! ipamd: `VmRSS` (resident now) and `VmHWM` (peak since start) from `/proc/PID/status`, read after the daemon
//! has started, filled its pool and sat idle for a few seconds, then again after 250 pods were ADDed through the
//! real plugin (the pool grows several ENIs on the way, as it would on a node) and it has settled. The daemon runs
//! with its defaults, metrics and introspection endpoints included.
//!
//! The plugin: a helper process runs exactly one plugin invocation and reads `getrusage(RUSAGE_CHILDREN)`'s
//! `ru_maxrss`, the peak RSS of the largest process it waited for (for the peer, the larger of ptp and the
//! host-local it execs). RSS counts shared library pages too, so a static-ish Rust binary and a Go binary are
//! compared as the kernel charges them, not by heap alone.

use std::time::Duration;

use super::{
    add_patiently, new_pod, peak_rss_kib, release_pods, Ipamd, Namespaces, Plugin, Runner,
};
use crate::error::BenchError;

/// What was measured.
#[derive(Debug, Default, Clone)]
pub struct MemoryResult {
    pub idle_rss: u64,
    pub idle_hwm: u64,
    pub loaded_pods: usize,
    pub loaded_rss: u64,
    pub loaded_hwm: u64,
    /// Peak RSS (KiB) of `aws-cni` ADD and DEL, ptp ADD and DEL (max over the samples).
    pub ours_add_kib: Vec<u64>,
    pub ours_del_kib: Vec<u64>,
    pub peer_add_kib: Vec<u64>,
    pub peer_del_kib: Vec<u64>,
}

/// Plugin peak RSS, `samples` times each.
pub fn plugin_rss(
    runner: &Runner,
    nss: &mut Namespaces,
    samples: usize,
    out: &mut MemoryResult,
) -> Result<(), BenchError> {
    for i in 0..samples {
        for plugin in [Plugin::Ours, Plugin::Peer] {
            let mut pod = new_pod(nss, plugin, 90_000 + i)?;
            let res = (|| {
                let (add, ok) = peak_rss_kib(runner, plugin, "ADD", &pod)?;
                if !ok {
                    return Err(BenchError::Other(format!(
                        "{} ADD failed under the RSS helper",
                        plugin.label()
                    )));
                }
                // The helper discards stdout: give DEL a prevResult-less netconf, as after a runtime restart.
                pod.result = None;
                let (del, _) = peak_rss_kib(runner, plugin, "DEL", &pod)?;
                Ok((add, del))
            })();
            let mut pods = vec![pod];
            release_pods(runner, nss, plugin, &mut pods);
            let (add, del) = res?;
            match plugin {
                Plugin::Ours => {
                    out.ours_add_kib.push(add);
                    out.ours_del_kib.push(del);
                }
                Plugin::Peer => {
                    out.peer_add_kib.push(add);
                    out.peer_del_kib.push(del);
                }
            }
        }
    }
    Ok(())
}

/// ipamd idle, then with `pods` pods.
pub fn ipamd_rss(
    ipamd: &Ipamd,
    runner: &Runner,
    nss: &mut Namespaces,
    pods: usize,
    settle: Duration,
    out: &mut MemoryResult,
) -> Result<(), BenchError> {
    std::thread::sleep(settle);
    (out.idle_rss, out.idle_hwm) = ipamd.rss_kib()?;
    let mut live = Vec::with_capacity(pods);
    let res = (|| {
        for i in 0..pods {
            let mut pod = new_pod(nss, Plugin::Ours, i)?;
            let added = add_patiently(runner, Plugin::Ours, &mut pod, Duration::from_secs(30));
            live.push(pod);
            added?;
        }
        std::thread::sleep(settle);
        (out.loaded_rss, out.loaded_hwm) = ipamd.rss_kib()?;
        out.loaded_pods = live.len();
        Ok(())
    })();
    release_pods(runner, nss, Plugin::Ours, &mut live);
    res
}
