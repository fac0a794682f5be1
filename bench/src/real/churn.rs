//! Churn: pods created and deleted back to back by 8 concurrent workers on one node, as fast as the node goes.
//!
//! Each worker repeatedly takes the next pod number, creates its namespace, ADDs it (a failed ADD is counted and
//! retried after 100 ms, as kubelet would retry the sandbox), DELs it and removes the namespace. Pods per second
//! is the number of pods divided by the wall time of the whole run, namespace work included (the same for both
//! plugins). The ADD and DEL latencies under this load are reported too.
//!
//! Our daemon runs with the settings stated in the table: a released address stays unusable for
//! `IP_COOLDOWN_PERIOD`, so at r pods/s about r × cooldown addresses are cooling at any time and the pool must
//! hold that many more than the live pods; the instance type and cooldown are chosen so that this stays below
//! max-pods. A failed ADD therefore means the pool did not keep up, not that the node was full. host-local
//! has no cooldown (it hands addresses out round-robin over a /16).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::{new_pod, Namespaces, Plugin, Runner};
use crate::error::{check_interrupt, BenchError};

/// What a churn run saw.
#[derive(Debug, Default, Clone)]
pub struct ChurnResult {
    pub pods: usize,
    pub wall: Duration,
    pub add: Vec<Duration>,
    pub del: Vec<Duration>,
    pub failed_adds: usize,
    /// A few distinct failure messages.
    pub failure_samples: Vec<String>,
}

impl ChurnResult {
    pub fn pods_per_sec(&self) -> f64 {
        self.pods as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Runs `total` pods through `plugin` with `workers` concurrent workers.
pub fn run(
    runner: &Runner,
    plugin: Plugin,
    total: usize,
    workers: usize,
) -> Result<ChurnResult, BenchError> {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(ChurnResult::default());
    let t0 = crate::time::now();
    let results: Vec<Result<(), BenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| s.spawn(|| worker(runner, plugin, total, &next, &out)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(BenchError::Other("churn worker panicked".into())))
            })
            .collect()
    });
    let wall = crate::time::since(t0);
    for r in results {
        r?;
    }
    let mut res = out.into_inner().unwrap_or_else(|p| p.into_inner());
    res.wall = wall;
    Ok(res)
}

fn worker(
    runner: &Runner,
    plugin: Plugin,
    total: usize,
    next: &AtomicUsize,
    out: &Mutex<ChurnResult>,
) -> Result<(), BenchError> {
    let mut nss = Namespaces::default();
    loop {
        check_interrupt()?;
        let i = next.fetch_add(1, Ordering::SeqCst);
        if i >= total {
            return Ok(());
        }
        let mut pod = new_pod(&mut nss, plugin, i)?;
        let deadline = crate::time::now() + Duration::from_secs(60);
        let add = loop {
            check_interrupt()?;
            let r = runner.run(plugin, "ADD", &pod)?;
            if r.ok {
                pod.result = serde_json::from_str(&r.stdout).ok();
                break r.elapsed;
            }
            {
                let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                o.failed_adds += 1;
                let msg: String = r.stdout.trim().chars().take(200).collect();
                if o.failure_samples.len() < 3 && !o.failure_samples.contains(&msg) {
                    o.failure_samples.push(msg);
                }
            }
            if crate::time::now() > deadline {
                let _ = runner.run(plugin, "DEL", &pod);
                let _ = nss.delete(&pod.netns);
                return Err(BenchError::Cni {
                    plugin: plugin.label(),
                    command: "ADD",
                    pod: pod.name.clone(),
                    detail: format!("still failing after 60 s: {}", r.stdout.trim()),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let del = runner.must(plugin, "DEL", &mut pod);
        let _ = nss.delete(&pod.netns);
        let del = del?;
        let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
        o.pods += 1;
        o.add.push(add);
        o.del.push(del);
    }
}
