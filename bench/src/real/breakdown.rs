//! Where an ADD's time goes: the pod setup benchmark's own ADDs, cut into spans measured inside the plugin and
//! inside ipamd.
//!
//! Three sources, joined by container ID:
//! - the driver's `CLOCK_MONOTONIC` readings just before `spawn` and just after `wait` ([`super::CniRun`]);
//! - the plugin's marks (`AWS_CNI_SPAN_FILE`, one JSON line per run: `[name, ns]` on the same clock), from
//!   `main` to the printed result;
//! - ipamd's `AddNetwork` log line, whose `assign_us` and `durable_us` fields time the assignment and the
//!   checkpoint's group commit until the assignment is on disk.
//!
//! A span is the time between one mark and the one before it (`exec → main` from the spawn reading, `exit` to
//! the wait reading); the AddNetwork round trip is further split into ipamd's two spans and the rest (HTTP/2 over
//! the socket both ways, the handler, scheduling). Spans missing from a run (e.g. an ADD that never reached a
//! mark) are left out of that span's sample only.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::error::BenchError;

/// The plugin's marks in order on its main thread, with the label of the span that ends at each.
pub const PLUGIN_SPANS: [(&str, &str); 11] = [
    (
        "main",
        "exec → main (kernel exec, start-up relocation, page faults)",
    ),
    ("conf", "netconf parse and version checks"),
    ("log_init", "plugin log: rotate check and open"),
    ("lock", "attachment lock (flock)"),
    ("runtime", "tokio current-thread runtime start"),
    ("netlink_connect", "netlink socket opened"),
    (
        "veth",
        "veth pair built (`datapath::pod::create_pod_veth`), while ipamd is asked",
    ),
    ("rpc", "wait for ipamd's answer after the veth pair"),
    (
        "setup",
        "pod netlink work after the reply (`datapath::pod::finish`)",
    ),
    ("log_write", "plugin log line written"),
    ("done", "result JSON and stdout"),
];

/// Index of the wait for ipamd's answer in [`PLUGIN_SPANS`]: the asking thread's spans are shown after it.
const RPC: usize = 7;

/// The marks of the thread that asks ipamd beside the main thread once its runtime is up (`aws-cni`'s `add::ask`),
/// each with the mark its span starts at: not part of the main sequence.
const ASK_SPANS: [(&str, &str, &str); 3] = [
    (
        "ask_runtime",
        "runtime",
        "… beside: asking thread started, its runtime built",
    ),
    (
        "connect",
        "ask_runtime",
        "… beside: gRPC connect (HTTP/2 over the unix socket)",
    ),
    ("reply", "connect", "… beside: AddNetwork round trip"),
];

/// Index in [`ASK_SPANS`] of the round trip, which ipamd's own timings split further.
const ROUND_TRIP: usize = 2;

/// Samples per span, in table order.
#[derive(Debug, Default, Clone)]
pub struct Breakdown {
    pub spans: Vec<(String, Vec<Duration>)>,
    /// ADDs whose plugin marks and ipamd line were both found.
    pub joined: usize,
    /// Total wall time per joined ADD, in the same order as every span's samples where complete.
    pub totals: Vec<Duration>,
    /// Per joined ADD, its spans by label (for attributing the slowest ADDs).
    pub per_add: Vec<HashMap<String, Duration>>,
    /// The plugin's memory at its end, per joined ADD: `(Rss, RssAnon, RssFile)` in KiB.
    pub memory_kib: Vec<(u64, u64, u64)>,
}

fn ipamd_spans(log: &Path) -> HashMap<String, (u64, u64, u64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = HashMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let f = &v["fields"];
        if f["message"] != "AddNetwork" {
            continue;
        }
        let (Some(c), Some(e), Some(a), Some(d)) = (
            f["container"].as_str(),
            f["elapsed_us"].as_u64(),
            f["assign_us"].as_u64(),
            f["durable_us"].as_u64(),
        ) else {
            continue;
        };
        out.insert(c.to_string(), (e, a, d));
    }
    out
}

type Marks = (Vec<(String, u64)>, Option<(u64, u64, u64)>);

fn plugin_marks(file: &Path) -> HashMap<String, Marks> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut out = HashMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["cmd"] != "ADD" {
            continue;
        }
        let Some(c) = v["container"].as_str() else {
            continue;
        };
        let marks = v["marks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| Some((m[0].as_str()?.to_string(), m[1].as_u64()?)))
                    .collect()
            })
            .unwrap_or_default();
        let m = &v["memory_kib"];
        let memory = match (
            m["Rss"].as_u64(),
            m["RssAnon"].as_u64(),
            m["RssFile"].as_u64(),
        ) {
            (Some(h), Some(a), Some(f)) => Some((h, a, f)),
            _ => None,
        };
        out.insert(c.to_string(), (marks, memory));
    }
    out
}

/// Joins the sources for `runs` (`(container, spawned ns, exited ns)`).
pub fn collect(
    runs: &[(String, u64, u64)],
    span_file: &Path,
    ipamd_log: &Path,
) -> Result<Breakdown, BenchError> {
    let marks = plugin_marks(span_file);
    let ipamd = ipamd_spans(ipamd_log);
    let labels: Vec<String> = PLUGIN_SPANS
        .iter()
        .map(|(_, l)| l.to_string())
        .chain(ASK_SPANS.iter().map(|(_, _, l)| l.to_string()))
        .chain([
            "… of which ipamd: assignment".to_string(),
            "… of which ipamd: checkpoint until durable (group commit, fsync)".to_string(),
            "… of which the rest: HTTP/2 both ways, handler, scheduling".to_string(),
            "exit (process teardown to `wait`)".to_string(),
        ])
        .collect();
    let mut b = Breakdown {
        spans: labels.iter().map(|l| (l.clone(), Vec::new())).collect(),
        ..Breakdown::default()
    };
    let ns = |a: u64, b: u64| Duration::from_nanos(b.saturating_sub(a));
    for (container, spawned, exited) in runs {
        let (Some((m, memory)), Some(&(_, assign, durable))) =
            (marks.get(container), ipamd.get(container))
        else {
            continue;
        };
        if let Some(mem) = memory {
            b.memory_kib.push(*mem);
        }
        let at: HashMap<&str, u64> = m.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        let mut this = HashMap::new();
        let mut prev = *spawned;
        for (mark, label) in PLUGIN_SPANS {
            if let Some(&t) = at.get(mark) {
                this.insert(label.to_string(), ns(prev, t));
                prev = t;
            }
        }
        for (mark, from, label) in ASK_SPANS {
            if let (Some(&from), Some(&to)) = (at.get(from), at.get(mark)) {
                this.insert(label.to_string(), ns(from, to));
            }
        }
        let ipamd_at = PLUGIN_SPANS.len() + ASK_SPANS.len();
        let assign = Duration::from_micros(assign);
        let durable = Duration::from_micros(durable);
        this.insert(labels[ipamd_at].clone(), assign);
        this.insert(labels[ipamd_at + 1].clone(), durable);
        if let Some(rpc) = this.get(ASK_SPANS[ROUND_TRIP].2).copied() {
            this.insert(
                labels[ipamd_at + 2].clone(),
                rpc.saturating_sub(assign + durable),
            );
        }
        if let Some(&done) = at.get("done") {
            this.insert(labels[ipamd_at + 3].clone(), ns(done, *exited));
        }
        for (label, v) in b.spans.iter_mut() {
            if let Some(d) = this.get(label.as_str()) {
                v.push(*d);
            }
        }
        b.totals.push(ns(*spawned, *exited));
        b.per_add.push(this);
        b.joined += 1;
    }
    // Table order: the asking thread's spans (the round trip's parts right after it) after the wait for its
    // answer, the exit last.
    let rpc_at = RPC + 1;
    let tail: Vec<_> = b.spans.drain(PLUGIN_SPANS.len()..).collect();
    let (parts, exit) = tail.split_at(ASK_SPANS.len() + 3);
    for (i, p) in parts.iter().enumerate() {
        b.spans.insert(rpc_at + i, p.clone());
    }
    b.spans.extend(exit.iter().cloned());
    Ok(b)
}

/// Mean of each span over the `k` slowest ADDs (by total wall time).
pub fn slowest_means(b: &Breakdown, k: usize) -> HashMap<String, Duration> {
    let mut idx: Vec<usize> = (0..b.totals.len()).collect();
    idx.sort_by_key(|&i| std::cmp::Reverse(b.totals[i]));
    idx.truncate(k);
    let mut out = HashMap::new();
    for (label, _) in &b.spans {
        let v: Vec<Duration> = idx
            .iter()
            .filter_map(|&i| b.per_add[i].get(label).copied())
            .collect();
        if !v.is_empty() {
            out.insert(label.clone(), v.iter().sum::<Duration>() / v.len() as u32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_marks_and_ipamd_lines_by_container() {
        let dir = std::env::temp_dir().join(format!("awsbench-breakdown-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test");
        let spans = dir.join("spans.jsonl");
        let log = dir.join("ipamd.log");
        let mut marks: Vec<(String, u64)> = PLUGIN_SPANS
            .iter()
            .enumerate()
            .map(|(i, (m, _))| (m.to_string(), 1_000_000 * (i as u64 + 1)))
            .collect();
        // The asking thread: up 0.1 ms after the runtime (5 ms), connected 0.3 ms later, answered 1 ms after that.
        marks.extend([
            ("ask_runtime".to_string(), 5_100_000),
            ("connect".to_string(), 5_400_000),
            ("reply".to_string(), 6_400_000),
        ]);
        std::fs::write(
            &spans,
            format!(
                "{}\n",
                serde_json::json!({"cmd": "ADD", "container": "c1", "marks": marks})
            ),
        )
        .expect("test");
        std::fs::write(
            &log,
            "{\"fields\":{\"message\":\"AddNetwork\",\"container\":\"c1\",\"elapsed_us\":800,\"assign_us\":100,\"durable_us\":600}}\nnot json\n",
        )
        .expect("test");
        let b = collect(
            &[("c1".into(), 0, 12_000_000), ("c2".into(), 0, 1)],
            &spans,
            &log,
        )
        .expect("test");
        std::fs::remove_dir_all(&dir).expect("test");
        assert_eq!(b.joined, 1);
        let get = |label: &str| {
            b.spans
                .iter()
                .find(|(l, _)| l.starts_with(label))
                .map(|(_, v)| v[0])
                .expect("test")
        };
        assert_eq!(get("exec"), Duration::from_millis(1));
        assert_eq!(get("… beside: asking"), Duration::from_micros(100));
        assert_eq!(get("… beside: gRPC"), Duration::from_micros(300));
        assert_eq!(get("… beside: AddNetwork"), Duration::from_millis(1));
        assert_eq!(get("wait for ipamd"), Duration::from_millis(1));
        assert_eq!(
            get("… of which ipamd: checkpoint"),
            Duration::from_micros(600)
        );
        assert_eq!(get("… of which the rest"), Duration::from_micros(300));
        assert_eq!(get("exit"), Duration::from_millis(1));
        assert_eq!(b.spans[7].0, PLUGIN_SPANS[RPC].1);
        assert_eq!(b.spans[8].0, ASK_SPANS[0].2);
        assert_eq!(b.spans[11].0, "… of which ipamd: assignment");
        assert_eq!(
            b.spans.last().expect("test").0,
            "exit (process teardown to `wait`)"
        );
        assert_eq!(b.totals[0], Duration::from_millis(12));
    }
}
