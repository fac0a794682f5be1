//! Span timings for the benchmark: where one plugin run spends its time, off unless asked for.
//!
//! When `AWS_CNI_SPAN_FILE` names a file, the plugin records a timestamp at each step of its run ([`mark`]: main
//! entered, netconf parsed, log opened, attachment lock taken, runtime built, netlink socket opened, the veth
//! pair built, ipamd's reply in hand, the rest of the netlink work, the log line written, the result printed; and,
//! on the thread that asks ipamd beside it, that thread's runtime up, ipamd connected, ipamd's answer) and
//! appends them as one JSON line to that file when it exits ([`finish`]). The timestamps are `CLOCK_MONOTONIC` in nanoseconds, the clock the benchmark reads
//! before `spawn` and after `wait`, so it can also attribute the time from exec to `main` and from the result to
//! the process's exit. Without the variable (every production run) [`mark`] is one load of an unset flag: no
//! clock reading, no allocation, no file.
//!
//! Reading the monotonic clock directly (not through a `Clock`) is deliberate: these are measurements that leave
//! the process and are compared with another process's readings, never inputs to the plugin's behaviour.

use std::io::Write as _;
use std::sync::{Mutex, OnceLock};

/// The variable that turns the timings on (a path; the line is appended).
pub const SPAN_FILE_ENV: &str = "AWS_CNI_SPAN_FILE";

static FILE: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();

/// Every thread's marks (ADD asks ipamd on a second thread, see `crate::add`); only touched when enabled.
static MARKS: Mutex<Vec<(&'static str, u64)>> = Mutex::new(Vec::new());

/// Reads the variable once; call first thing in `main`.
pub fn init() {
    let file = std::env::var_os(SPAN_FILE_ENV)
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from);
    let _ = FILE.set(file);
    mark("main");
}

/// Whether timings are being recorded.
pub fn enabled() -> bool {
    matches!(FILE.get(), Some(Some(_)))
}

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Records that step `name` just ended (a no-op unless [`SPAN_FILE_ENV`] is set).
pub fn mark(name: &'static str) {
    if enabled() {
        let now = monotonic_ns();
        if let Ok(mut m) = MARKS.lock() {
            m.push((name, now));
        }
    }
}

/// Appends `{"cmd":..,"container":..,"marks":[[name,ns],..],"memory_kib":{..}}` to the span file (a no-op unless
/// enabled). `memory_kib` is `/proc/self/statm` in KiB under `/proc/self/status`'s names: `Rss` (resident),
/// `RssAnon` (resident less shared pages) and `RssFile` (shared pages). A failure to write is ignored: timings
/// never change the plugin's answer.
pub fn finish(command: &str, container: &str) {
    let Some(Some(path)) = FILE.get() else {
        return;
    };
    mark("done");
    let mut marks = MARKS
        .lock()
        .map(|mut m| std::mem::take(&mut *m))
        .unwrap_or_default();
    marks.sort_by_key(|&(_, t)| t);
    // Where the plugin's memory is at its end: resident, of which heap and stacks, and file pages (binary and
    // libraries), from statm: this runs inside the timed ADD, and the kernel generates /proc/self/status (the
    // only source of the peak, VmHWM; getrusage's carries over from before exec) at several times statm's cost.
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: Vec<u64> = statm
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let page_kib = 4;
    let (resident, shared) = (pages.get(1).copied(), pages.get(2).copied());
    let memory = serde_json::json!({
        "Rss": resident.map(|r| r * page_kib),
        "RssAnon": resident.zip(shared).map(|(r, s)| r.saturating_sub(s) * page_kib),
        "RssFile": shared.map(|s| s * page_kib),
    });
    let line = serde_json::json!({
        "cmd": command,
        "container": container,
        "marks": marks,
        "memory_kib": memory,
    });
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        // One write of one line: concurrent plugins' lines do not interleave (O_APPEND).
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_recorded_only_when_enabled() {
        // The flag is process-wide: this test decides it for the test binary, before anything else marks.
        let dir = std::env::temp_dir().join(format!("aws-cni-spans-{}", std::process::id()));
        let path = dir.join("spans.jsonl");
        std::fs::create_dir_all(&dir).expect("test");
        let _ = FILE.set(Some(path.clone()));
        mark("main");
        mark("connect");
        finish("ADD", "c1");
        let text = std::fs::read_to_string(&path).expect("test");
        std::fs::remove_dir_all(&dir).expect("test");
        let v: serde_json::Value = serde_json::from_str(text.trim()).expect("test");
        assert_eq!(v["cmd"], "ADD");
        let kib = |k: &str| v["memory_kib"][k].as_u64().expect("test");
        assert!(kib("Rss") > 0);
        // The binary's own pages are file pages; a test binary's heap is not empty either.
        assert!(kib("RssFile") > 0 && kib("RssAnon") > 0);
        assert_eq!(kib("RssFile") + kib("RssAnon"), kib("Rss"), "{v}");
        let marks = v["marks"].as_array().expect("test");
        let names: Vec<&str> = marks.iter().map(|m| m[0].as_str().expect("test")).collect();
        assert_eq!(names, ["main", "connect", "done"]);
        let t: Vec<u64> = marks.iter().map(|m| m[1].as_u64().expect("test")).collect();
        assert!(t[0] > 0 && t[0] <= t[1] && t[1] <= t[2], "{t:?}");
    }
}
