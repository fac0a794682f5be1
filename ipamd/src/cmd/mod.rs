//! The daemon's commands, each a thin module over the library: [`run`] (`ipamd run`: assembles the EC2 stack,
//! the host, the node and the servers, then waits for a signal), [`install`] (`ipamd install`: the init
//! container's job), [`status`] (`ipamd status`), [`probe`] (`ipamd health` and the installer's readiness wait)
//! and [`demo`] (`ipamd demo`). `main.rs` only parses the command line and calls one of them.

pub mod demo;
pub mod install;
pub mod probe;
pub mod run;
pub mod status;

/// The daemon's runtime: two worker threads (one for the pool task and servers, one spare for a blocking
/// moment).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// A single-threaded runtime for the short client commands (`health`, `status`).
pub fn small_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Logging as the anchor's variables say (`AWS_VPC_K8S_CNI_LOGLEVEL`, `AWS_VPC_K8S_CNI_LOG_FILE`).
pub fn init_tracing() {
    let settings = crate::logging::LogSettings::from_env(
        |k| std::env::var(k).ok(),
        std::path::Path::new("/host/var/log").exists(),
    );
    crate::logging::init(&settings);
}

/// The exit code of a command that failed with `e`, after saying so on stderr as `ipamd <command>: <e>`.
pub fn failed(command: &str, e: impl std::fmt::Display) -> std::process::ExitCode {
    eprintln!("{command}: {e}");
    std::process::ExitCode::FAILURE
}
