//! The daemon's commands, each a thin module over the library: [`run`] (`ipamd run`: assembles the EC2 stack,
//! the host, the node and the servers, then waits for a signal), [`install`] (`ipamd install`: the init
//! container's job), [`status`] (`ipamd status`), [`probe`] (`ipamd health` and the installer's readiness wait)
//! and [`demo`] (`ipamd demo`, with `--ipv6` in [`demo_v6`]). `main.rs` only parses the command line and calls one of them.

pub mod demo;
mod demo_v6;
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

/// Logging as the anchor's variables say (`AWS_VPC_K8S_CNI_LOGLEVEL`, `AWS_VPC_K8S_CNI_LOG_FILE`). A level that is
/// no level stops the start, naming the variable (else the filter would take it as a target name and log nothing
/// at all).
pub fn init_tracing() -> Result<(), String> {
    let settings = crate::logging::LogSettings::from_env(
        |k| std::env::var(k).ok(),
        std::path::Path::new("/host/var/log").exists(),
    );
    if !crate::logging::LOG_LEVELS.contains(&settings.level.as_str()) {
        return Err(format!(
            "invalid AWS_VPC_K8S_CNI_LOGLEVEL={:?}: expected one of {}",
            settings.level,
            crate::logging::LOG_LEVELS.join(", ")
        ));
    }
    crate::logging::init(&settings);
    Ok(())
}

/// Raises the soft limit on open files to the hard limit. Runtimes start containers with a soft limit of 1024
/// (containerd 2.x), and Rust does not raise it: ipamd holds a descriptor per gRPC, HTTP and netlink connection,
/// and running out of them fails pods' ADDs.
pub fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            } else {
                tracing::info!(from = soft, to = hard, "raised the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// The exit code of a command that failed with `e`, after saying so on stderr as `ipamd <command>: <e>`.
pub fn failed(command: &str, e: impl std::fmt::Display) -> std::process::ExitCode {
    eprintln!("{command}: {e}");
    std::process::ExitCode::FAILURE
}
