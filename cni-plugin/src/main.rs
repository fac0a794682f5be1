//! `aws-cni`: the CNI plugin the container runtime executes for every pod.
//!
//! Reads `CNI_*` from the environment and the netconf from stdin, runs the verb, and writes exactly one JSON
//! document to stdout: the result, or a CNI error with the spec's code and a message that names the cause.
//! Logs go to `pluginLogFile` (or stderr), never to stdout.
//!
//! **How it is shipped.** The runtime execs the plugin for every pod, so what a process pays before `main` is paid
//! per pod, on the runtime's critical path. The shipped binary (`scripts/plugin-release.sh`: the Dockerfile and
//! `scripts/bench.sh` use it) is linked statically against musl, at a fixed address, with dlmalloc as its
//! allocator:
//! - static glibc's start-up detects the CPU's features and cache sizes with `cpuid`, which traps to the
//!   hypervisor on a virtual machine (3.6 us a trap on the benchmark's VM): an empty program takes 0.35 ms of CPU
//!   linked statically against glibc, 0.06 ms against musl (`perf stat`, exec included);
//! - musl's own allocator gives that back and more (it returns memory to the kernel eagerly: more page faults,
//!   and about 0.25 ms more CPU per DEL than the glibc build), so the musl build uses the `dlmalloc` crate, a
//!   glibc-like allocator with no start-up detection.
//!
//! Measured per ADD under the benchmark's pod setup (`perf stat` around each plugin run): 2.0-2.1 ms of CPU and
//! 127 page faults, against 2.2-2.3 ms and 136 for the static glibc build. A glibc build (tests, `cargo build`)
//! keeps glibc's allocator.

// The musl build's allocator (see the module docs).
#[cfg(target_env = "musl")]
#[global_allocator]
static GLOBAL: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

mod add;
mod check;
mod client;
mod conf;
mod del;
mod error;
mod family;
mod gc;
mod guard;
mod identity;
mod netpol;
mod spans;
mod status;

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use cni_types::{CniEnv, CniError, Command};

use crate::conf::PluginConf;
use crate::error::PluginError;

/// Default deadline of a call to ipamd. An ADD waits inside ipamd only while an address is on its way (at most
/// `AWS_CNI_ADD_WAIT_SECONDS`, 8 s by default, and ipamd ends the wait a second before this deadline, which it
/// receives); so this only trips when ipamd is wedged, and then the runtime gets "try again later" instead of a
/// hang.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    spans::init();
    let mut stdin = Vec::new();
    let env = CniEnv::from_lookup(|k| std::env::var(k).ok());
    let span_ids = env
        .as_ref()
        .ok()
        .filter(|_| spans::enabled())
        .map(|e| {
            (
                format!("{:?}", e.command).to_ascii_uppercase(),
                e.container_id.clone().unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    let (out, ok) = match env {
        Err(e) => (e.to_json(cni_types::LATEST_VERSION), false),
        Ok(env) if env.command == Command::Version => {
            let v = version_of(stdin_or_empty(&mut stdin));
            (cni_types::version_info(&v), true)
        }
        Ok(env) => {
            let bytes = stdin_or_empty(&mut stdin);
            match run(&env, bytes) {
                Ok(v) => (v, true),
                // The netconf is read a second time only to answer an error in its version.
                Err(e) => (e.to_json(&version_of(bytes)), false),
            }
        }
    };
    let mut stdout = std::io::stdout().lock();
    // DEL (and other verbs without a result) print nothing on success.
    if !out.is_null() {
        let _ = writeln!(stdout, "{out}");
    }
    let _ = stdout.flush();
    spans::finish(&span_ids.0, &span_ids.1);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn stdin_or_empty(buf: &mut Vec<u8>) -> &[u8] {
    if buf.is_empty() {
        let _ = std::io::stdin().read_to_end(buf);
    }
    buf
}

/// The cniVersion to answer in: the netconf's if readable, else the newest we speak.
fn version_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| cni_types::is_supported(v))
        .unwrap_or_else(|| cni_types::LATEST_VERSION.to_string())
}

fn run(env: &CniEnv, stdin: &[u8]) -> Result<serde_json::Value, CniError> {
    let conf = PluginConf::parse(stdin)?;
    let version = cni_types::negotiate_version(&conf.net)?;
    cni_types::check_command_version(env.command, &version)?;
    spans::mark("conf");
    init_logging(&conf);
    spans::mark("log_init");
    let timeout = conf
        .ipamd_timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_TIMEOUT);
    if env.command.is_attachment_command() {
        guard::refuse_node_netns(env).map_err(|e| e.to_cni())?;
    }
    // ADD and DEL of one attachment never run at once (see `guard`); the lock is held until this returns.
    let _lock = match env.command {
        Command::Add | Command::Del => {
            Some(guard::lock_attachment(env, &conf.net.name, timeout).map_err(|e| e.to_cni())?)
        }
        _ => None,
    };
    spans::mark("lock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PluginError::Runtime(e).to_cni())?;
    spans::mark("runtime");
    let outcome = rt.block_on(async {
        match env.command {
            // ADD asks ipamd on a thread of its own while this one builds the veth pair (see `add::ask`); the
            // runtime exists first, so whatever ipamd answers can still be given back here.
            Command::Add => match add::ask(env, &conf, timeout) {
                Ok(asking) => add::add(env, &conf, asking).await,
                Err(e) => Err(e),
            }
            .and_then(|r| r.to_json(&version).map_err(PluginError::from)),
            Command::Del => del::del(env, &conf, timeout)
                .await
                .map(|()| serde_json::Value::Null),
            Command::Check => check::check(env, &conf, timeout)
                .await
                .map(|()| serde_json::Value::Null),
            Command::Status => status::status(&conf, timeout)
                .await
                .map(|()| serde_json::Value::Null),
            Command::Gc => gc::gc(&conf, timeout)
                .await
                .map(|()| serde_json::Value::Null),
            Command::Version => Ok(cni_types::version_info(&version)),
        }
    });
    match outcome {
        Ok(v) => Ok(v),
        Err(e) => {
            let cni = e.to_cni();
            tracing::error!(code = cni.code, "{}", cni.msg);
            Err(cni)
        }
    }
}

/// Libraries whose debug and trace lines are HTTP/2 frame dumps (most of a DEBUG log's bytes): they log at info
/// at most, whatever `pluginLogLevel` says, while our own DEBUG lines stay.
const QUIET_LIBRARIES: [&str; 6] = ["h2", "hyper", "hyper_util", "tower", "tonic", "rtnetlink"];

/// The log filter for `pluginLogLevel` (already validated by [`PluginConf::parse`]).
fn log_filter(level: &str) -> String {
    let level = level.to_ascii_lowercase();
    let libraries = match level.as_str() {
        "trace" | "debug" => "info",
        other => other,
    };
    let mut filter = level.clone();
    for lib in QUIET_LIBRARIES {
        filter.push_str(&format!(",{lib}={libraries}"));
    }
    filter
}

/// The plugin log is rotated when it reaches this size (as ipamd's).
const LOG_ROTATE_BYTES: u64 = 100 * 1024 * 1024;
/// Rotated plugin logs kept (`plugin.log.1` .. `plugin.log.5`).
const LOG_KEEP: u32 = 5;

/// Rotates `path` when it has reached [`LOG_ROTATE_BYTES`]: `path.4` becomes `path.5`, ..., `path` becomes
/// `path.1`. Plugins run concurrently: two may rotate at once, which can only drop one rotated file early, never
/// lose the current one (a rename of a missing file just fails).
fn rotate_log(path: &std::path::Path) {
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return;
    };
    if !md.is_file() || md.len() < LOG_ROTATE_BYTES {
        return;
    }
    let numbered = |n: u32| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        std::path::PathBuf::from(p)
    };
    for n in (1..LOG_KEEP).rev() {
        let _ = std::fs::rename(numbered(n), numbered(n + 1));
    }
    let _ = std::fs::rename(path, numbered(1));
}

fn init_logging(conf: &PluginConf) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let level = conf
        .plugin_log_level
        .clone()
        .unwrap_or_else(|| "info".into());
    // A static per-target filter (the plugin never reads RUST_LOG): no regex engine or per-span bookkeeping is
    // built at start-up, which keeps the plugin's pages and start time down.
    let filter: Targets = log_filter(&level)
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO));
    let target = conf
        .plugin_log_file
        .clone()
        .unwrap_or_else(|| conf::DEFAULT_LOG_FILE.to_string());
    let file = if target == "stderr" || target == "stdout" {
        // stdout carries the CNI result: never log there.
        None
    } else {
        let path = std::path::Path::new(&target);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        rotate_log(path);
        // 0640, never through a symlink (pods' names and addresses are in it).
        hostfs::open_log(path).ok()
    };
    let layer = tracing_subscriber::fmt::layer().with_ansi(false);
    let _ = match file {
        Some(f) => tracing_subscriber::registry()
            .with(
                layer
                    .with_writer(std::sync::Mutex::new(f))
                    .with_filter(filter),
            )
            .try_init(),
        None => tracing_subscriber::registry()
            .with(layer.with_writer(std::io::stderr).with_filter(filter))
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_keeps_our_lines_and_caps_the_libraries_at_info() {
        let f = log_filter("DEBUG");
        assert!(f.starts_with("debug,"), "{f}");
        for lib in QUIET_LIBRARIES {
            assert!(f.contains(&format!(",{lib}=info")), "{f}");
        }
        // A quieter level applies to the libraries too.
        assert!(log_filter("error").contains("h2=error"));
        // What the plugin installs: our DEBUG lines pass, the libraries' frame-level lines do not.
        let t: tracing_subscriber::filter::Targets = f.parse().expect("a valid filter");
        assert!(t.would_enable("aws_cni::add", &tracing::Level::DEBUG));
        assert!(t.would_enable("datapath::pod", &tracing::Level::DEBUG));
        assert!(!t.would_enable("h2::codec::framed_read", &tracing::Level::DEBUG));
        assert!(!t.would_enable("hyper_util::client", &tracing::Level::TRACE));
        assert!(t.would_enable("h2::proto", &tracing::Level::INFO));
    }
}
