//! Logging: tracing, with the anchor's variables, size-based rotation and a per-callsite rate limit.
//!
//! - `AWS_VPC_K8S_CNI_LOGLEVEL` (anchor default `DEBUG`; `RUST_LOG` overrides with a full filter);
//! - `AWS_VPC_K8S_CNI_LOG_FILE`: `stdout`, `stderr`, or a path (anchor default
//!   `/host/var/log/aws-routed-eni/ipamd.log`). The default applies when `/host/var/log` exists, i.e. in the
//!   DaemonSet with the host's log directory mounted; elsewhere (a shell, tests) logs go to stderr. Files rotate
//!   at 100 MiB keeping 5 backups, as the anchor's lumberjack setup;
//! - `AWS_VPC_K8S_CNI_LOG_FORMAT` (ours): `json` (default, as the anchor's zap JSON) or `text`.
//!
//! Nothing blocks on the log: every target (file, stdout, stderr) is written by one background thread from a
//! bounded queue of [`QUEUE_LINES`] lines ([`hostfs::nonblocking`]); a line that finds the queue full (the disk
//! or the pipe stalled) is dropped and counted, and the count is logged with the rate limit's report
//! ([`report_suppressed`], every 10 s). So an ADD never waits for a slow log file. [`flush`] drains the queue
//! at exit.
//!
//! Rate limit: every warning and error callsite (one `tracing::warn!` line in the source) may emit [`BURST`]
//! events at once and [`PER_SECOND`] per second after that. Beyond it events are dropped and counted;
//! [`RateLimit::report`] logs how many were suppressed where. So a throttling storm that makes every pool step log
//! the same warning writes a few lines a second, not gigabytes. Errors are limited too (they repeat just as well),
//! at the same rate. Info and debug lines are not limited: they are per request or per pool step (one
//! `AddNetwork` line per ADD), so their rate is the node's pod churn, and an operator needs every one of them to
//! follow a pod; the non-blocking writer keeps them off the request path.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ec2_api::clock::{Clock, SystemClock};

use tracing::callsite::Identifier;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Events a callsite may emit at once.
pub const BURST: f64 = 20.0;
/// Sustained events per second per callsite.
pub const PER_SECOND: f64 = 5.0;

/// Lines the log queue holds before it drops (a few MB at most).
pub const QUEUE_LINES: usize = 8192;

/// Where logs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
    File(PathBuf),
}

/// The anchor's default log file.
pub const DEFAULT_LOG_FILE: &str = "/host/var/log/aws-routed-eni/ipamd.log";

/// The values `AWS_VPC_K8S_CNI_LOGLEVEL` may take (any case); `fatal` (the anchor's) logs errors only.
pub const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "fatal"];

/// Log settings from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub level: String,
    pub target: LogTarget,
    pub json: bool,
}

impl LogSettings {
    /// Reads the variables (see the module docs). `host_log_dir_exists` decides the default target.
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
        host_log_dir_exists: bool,
    ) -> LogSettings {
        let level = get("AWS_VPC_K8S_CNI_LOGLEVEL")
            .map(|l| l.trim().to_ascii_lowercase())
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| "debug".into());
        let target = match get("AWS_VPC_K8S_CNI_LOG_FILE").as_deref().map(str::trim) {
            Some("stdout") => LogTarget::Stdout,
            Some("stderr") => LogTarget::Stderr,
            Some(p) if !p.is_empty() => LogTarget::File(p.into()),
            _ if host_log_dir_exists => LogTarget::File(DEFAULT_LOG_FILE.into()),
            _ => LogTarget::Stderr,
        };
        let json = !matches!(
            get("AWS_VPC_K8S_CNI_LOG_FORMAT").as_deref().map(str::trim),
            Some("text")
        );
        LogSettings {
            level,
            target,
            json,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Duration,
    suppressed: u64,
    location: String,
}

/// The per-callsite rate limit (a per-layer [`Filter`]).
#[derive(Debug, Clone, Default)]
pub struct RateLimit {
    buckets: Arc<Mutex<HashMap<Identifier, Bucket>>>,
    clock: SystemClock,
}

impl RateLimit {
    /// Takes a token for `meta`'s callsite at `now`; false when the callsite is over its rate.
    pub fn allow(&self, meta: &Metadata<'_>, now: Duration) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = buckets.entry(meta.callsite()).or_insert_with(|| Bucket {
            tokens: BURST,
            last: now,
            suppressed: 0,
            location: format!(
                "{}:{}",
                meta.file().unwrap_or(meta.target()),
                meta.line().unwrap_or(0)
            ),
        });
        let elapsed = now.saturating_sub(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * PER_SECOND).min(BURST);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            b.suppressed += 1;
            false
        }
    }

    /// Suppressed counts since the last call, by source location (and resets them).
    pub fn take_suppressed(&self) -> Vec<(String, u64)> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, u64)> = buckets
            .values_mut()
            .filter(|b| b.suppressed > 0)
            .map(|b| (b.location.clone(), std::mem::take(&mut b.suppressed)))
            .collect();
        out.sort();
        out
    }

    /// Logs what was suppressed since the last report (call it periodically).
    pub fn report(&self) {
        for (location, n) in self.take_suppressed() {
            tracing::warn!(%location, suppressed = n, "log rate limit: events suppressed");
        }
    }
}

impl<S: Subscriber> Filter<S> for RateLimit {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        // Spans and the level check are left to the env filter; events are decided in `event_enabled`.
        true
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, _cx: &Context<'_, S>) -> bool {
        // Levels order by verbosity: WARN < INFO. Only warnings and errors are limited (module docs).
        if *event.metadata().level() > tracing::Level::WARN {
            return true;
        }
        self.allow(event.metadata(), self.clock.now())
    }
}

static INSTALLED: std::sync::OnceLock<RateLimit> = std::sync::OnceLock::new();
static WRITER: std::sync::OnceLock<(
    hostfs::nonblocking::NonBlocking,
    hostfs::nonblocking::Flusher,
)> = std::sync::OnceLock::new();

/// Logs what the installed rate limit suppressed since the last report, and the lines the log queue dropped
/// (no-op before [`init`]).
pub fn report_suppressed() {
    if let Some(limit) = INSTALLED.get() {
        limit.report();
    }
    if let Some((w, _)) = WRITER.get() {
        let dropped = w.take_dropped();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "log writer: lines dropped because the log target was too slow"
            );
        }
    }
}

/// Waits at most `bound` for queued log lines to be written (call before the process exits).
pub fn flush(bound: Duration) {
    if let Some((_, f)) = WRITER.get() {
        f.flush_within(bound);
    }
}

/// `out` behind the non-blocking queue; the first writer installed is kept for [`report_suppressed`] and
/// [`flush`]. Falls back to writing directly when no thread can be started.
fn queued<W: std::io::Write + Send + 'static>(
    out: W,
) -> tracing_subscriber::fmt::writer::BoxMakeWriter {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    match hostfs::nonblocking::non_blocking(out, QUEUE_LINES) {
        Ok((w, f)) => {
            let _ = WRITER.set((w.clone(), f));
            BoxMakeWriter::new(move || w.clone())
        }
        Err(_) => BoxMakeWriter::new(std::io::stderr),
    }
}

/// Installs the global subscriber; returns the rate limit (for periodic reports). Never fails: if the log file
/// cannot be opened, logs go to stderr and say why.
pub fn init(settings: &LogSettings) -> RateLimit {
    // Our own lines at the configured level; the HTTP/2 and gRPC libraries at info at most: their debug and trace
    // lines are frame dumps that would drown everything else.
    let level = match settings.level.as_str() {
        "fatal" => "error",
        other => other,
    };
    let libraries = match level {
        "trace" | "debug" => "info",
        other => other,
    };
    let directives = ["h2", "hyper", "hyper_util", "tower", "tonic", "rtnetlink"]
        .iter()
        .fold(level.to_string(), |acc, lib| {
            format!("{acc},{lib}={libraries}")
        });
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&directives))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let limit = RateLimit::default();
    let mut fallback_reason = None;
    let writer = match &settings.target {
        LogTarget::Stdout => queued(std::io::stdout()),
        LogTarget::Stderr => queued(std::io::stderr()),
        LogTarget::File(path) => match open_rotating(path) {
            Ok(file) => queued(file),
            Err(e) => {
                fallback_reason = Some(format!("cannot open log file {}: {e}", path.display()));
                queued(std::io::stderr())
            }
        },
    };
    let ansi = settings.target == LogTarget::Stderr && !settings.json;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let layer = if settings.json {
        fmt.json().with_filter(limit.clone()).boxed()
    } else {
        fmt.with_filter(limit.clone()).boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
    if let Some(reason) = fallback_reason {
        tracing::warn!("{reason}; logging to stderr");
    }
    let _ = INSTALLED.set(limit.clone());
    limit
}

fn open_rotating(
    path: &std::path::Path,
) -> std::io::Result<file_rotate::FileRotate<file_rotate::suffix::AppendCount>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Probe writability so a bad path is reported now, not swallowed by the rotating writer; this also narrows
    // the mode of a log an older version created 0644.
    hostfs::open_log(path)?;
    Ok(file_rotate::FileRotate::new(
        path,
        file_rotate::suffix::AppendCount::new(5),
        file_rotate::ContentLimit::BytesSurpassed(100 * 1024 * 1024),
        file_rotate::compression::Compression::None,
        // Rotated-in files are created 0640 as well, never through a symlink.
        Some(hostfs::log_open_options()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(pairs: &[(&str, &str)], host: bool) -> LogSettings {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LogSettings::from_env(|k| map.get(k).cloned(), host)
    }

    #[test]
    fn defaults_follow_the_anchor_where_the_host_log_dir_exists() {
        let s = settings(&[], true);
        assert_eq!(s.target, LogTarget::File(DEFAULT_LOG_FILE.into()));
        assert_eq!(s.level, "debug");
        assert!(s.json);
        assert_eq!(settings(&[], false).target, LogTarget::Stderr);
        let s = settings(
            &[
                ("AWS_VPC_K8S_CNI_LOG_FILE", "stdout"),
                ("AWS_VPC_K8S_CNI_LOGLEVEL", "WARN"),
                ("AWS_VPC_K8S_CNI_LOG_FORMAT", "text"),
            ],
            true,
        );
        assert_eq!(s.target, LogTarget::Stdout);
        assert_eq!(s.level, "warn");
        assert!(!s.json);
    }

    #[test]
    fn a_repeating_callsite_is_limited_and_recovers() {
        let limit = RateLimit::default();
        let meta = tracing::metadata!(
            name: "x",
            target: "t",
            level: tracing::Level::WARN,
            fields: &[],
            callsite: &DUMMY_CALLSITE,
            kind: tracing::metadata::Kind::EVENT
        );
        let t0 = Duration::from_secs(100);
        let allowed = (0..1000).filter(|_| limit.allow(&meta, t0)).count();
        assert_eq!(allowed, BURST as usize, "a burst is allowed, then nothing");
        let suppressed = limit.take_suppressed();
        assert_eq!(suppressed.len(), 1);
        assert_eq!(suppressed[0].1, 1000 - BURST as u64);
        assert!(
            limit.take_suppressed().is_empty(),
            "counts reset once reported"
        );
        // Two seconds later the callsite has earned PER_SECOND tokens a second.
        let t1 = t0 + Duration::from_secs(2);
        let allowed = (0..100).filter(|_| limit.allow(&meta, t1)).count();
        assert_eq!(allowed, (2.0 * PER_SECOND) as usize);
    }

    /// Counts the events that reach it, by level.
    #[derive(Clone, Default)]
    struct Count(Arc<Mutex<(u32, u32)>>);

    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, event: &tracing::Event<'_>, _cx: Context<'_, S>) {
            let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if *event.metadata().level() == tracing::Level::WARN {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
    }

    #[test]
    fn warnings_are_limited_but_per_request_info_lines_are_not() {
        let count = Count::default();
        let subscriber =
            tracing_subscriber::registry().with(count.clone().with_filter(RateLimit::default()));
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..200 {
                tracing::warn!(i, "the same warning");
                tracing::info!(i, "AddNetwork");
            }
        });
        let (warns, infos) = *count.0.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            warns <= BURST as u32 + 2,
            "{warns} warnings passed the limit"
        );
        assert_eq!(infos, 200, "every info line passes");
    }

    struct Dummy;
    impl tracing::callsite::Callsite for Dummy {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!("not used by the rate limit")
        }
    }
    static DUMMY_CALLSITE: Dummy = Dummy;
}
