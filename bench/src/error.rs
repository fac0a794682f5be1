//! Why a benchmark could not run, and the Ctrl-C flag every loop checks so cleanup guards get to run.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;

/// A benchmark failure.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("interrupted (SIGINT/SIGTERM); cleaned up")]
    Interrupted,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("netlink: {0}")]
    Netlink(#[from] datapath::NetlinkError),
    #[error("{0} not found or not executable (run scripts/bench.sh, which builds and installs what is needed)")]
    MissingBinary(PathBuf),
    #[error("ipamd did not become ready: {0}")]
    IpamdNotReady(String),
    #[error("{plugin} {command} failed for {pod}: {detail}")]
    Cni {
        plugin: &'static str,
        command: &'static str,
        pod: String,
        detail: String,
    },
    #[error("simulated node: {0}")]
    Node(String),
    #[error("{0}")]
    Other(String),
}

impl BenchError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }
}

static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicBool> {
    INTERRUPTED.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Turns SIGINT and SIGTERM into a flag (instead of dying with namespaces and daemons left behind).
pub fn install_interrupt_flag() -> Result<(), BenchError> {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(flag()))
            .map_err(BenchError::io("installing the signal handler"))?;
    }
    Ok(())
}

/// Fails with [`BenchError::Interrupted`] once SIGINT or SIGTERM arrived.
pub fn check_interrupt() -> Result<(), BenchError> {
    if flag().load(Ordering::SeqCst) {
        Err(BenchError::Interrupted)
    } else {
        Ok(())
    }
}
