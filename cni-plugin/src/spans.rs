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

/// Appends `{"cmd":..,"container":..,"marks":[[name,ns],..],"memory_kib":{..}}` to the span file (a no-op unless enabled). A
/// failure to write is ignored: timings never change the plugin's answer.
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
    // Where the plugin's memory is at its end: peak, heap and stacks, file pages (binary and libraries).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let memory = serde_json::json!({
        "VmHWM": kib("VmHWM:"),
        "RssAnon": kib("RssAnon:"),
        "RssFile": kib("RssFile:"),
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
        assert!(v["memory_kib"]["VmHWM"].as_u64().expect("test") > 0);
        let marks = v["marks"].as_array().expect("test");
        let names: Vec<&str> = marks.iter().map(|m| m[0].as_str().expect("test")).collect();
        assert_eq!(names, ["main", "connect", "done"]);
        let t: Vec<u64> = marks.iter().map(|m| m[1].as_u64().expect("test")).collect();
        assert!(t[0] > 0 && t[0] <= t[1] && t[1] <= t[2], "{t:?}");
    }
}
