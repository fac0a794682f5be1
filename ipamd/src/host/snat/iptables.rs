//! iptables as the daemon uses it: the [`Iptables`] trait (a command and a restore transaction) and the real
//! [`CommandIptables`], which runs the machine's `iptables`/`iptables-restore` (optionally inside another
//! network namespace through `nsenter`).

use std::process::Command;

use async_trait::async_trait;

use super::plan::s;

/// An iptables failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnatError {
    #[error("running {cmd}: {message}")]
    Spawn { cmd: String, message: String },
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
}

/// iptables as the daemon uses it.
#[async_trait]
pub trait Iptables: Send + Sync + std::fmt::Debug + 'static {
    /// Runs `iptables <args>`; returns stdout.
    async fn run(&self, args: &[String]) -> Result<String, SnatError>;
    /// Feeds `input` to `iptables-restore --noflush`.
    async fn restore(&self, input: &str) -> Result<(), SnatError>;
}

/// The real iptables (whichever backend `iptables` is on this machine), in the process's network namespace.
#[derive(Debug, Clone)]
pub struct CommandIptables {
    pub iptables: String,
    pub iptables_restore: String,
    /// Run inside this network namespace (through `nsenter --net=`) instead of the process's own.
    pub netns: Option<std::path::PathBuf>,
}

impl Default for CommandIptables {
    fn default() -> Self {
        CommandIptables {
            iptables: "iptables".into(),
            iptables_restore: "iptables-restore".into(),
            netns: None,
        }
    }
}

impl CommandIptables {
    /// iptables in another network namespace (a path such as `/run/netns/NAME` or `/proc/PID/fd/N`).
    pub fn in_netns(path: impl Into<std::path::PathBuf>) -> CommandIptables {
        CommandIptables {
            netns: Some(path.into()),
            ..CommandIptables::default()
        }
    }

    fn command(&self, bin: &str, args: Vec<String>) -> (String, Vec<String>) {
        match &self.netns {
            None => (bin.to_string(), args),
            Some(ns) => {
                let mut full = vec![format!("--net={}", ns.display()), bin.to_string()];
                full.extend(args);
                ("nsenter".to_string(), full)
            }
        }
    }
}

pub(crate) fn run_blocking(
    bin: &str,
    args: &[String],
    stdin: Option<&str>,
) -> Result<String, SnatError> {
    use std::io::Write;
    let cmd = format!("{bin} {}", args.join(" "));
    let spawn = |e: std::io::Error| SnatError::Spawn {
        cmd: cmd.clone(),
        message: e.to_string(),
    };
    let mut child = Command::new(bin)
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(SnatError::Failed {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[async_trait]
impl Iptables for CommandIptables {
    async fn run(&self, args: &[String]) -> Result<String, SnatError> {
        let mut full = s(&["-w", "5"]);
        full.extend(args.iter().cloned());
        let (bin, full) = self.command(&self.iptables, full);
        tokio::task::spawn_blocking(move || run_blocking(&bin, &full, None))
            .await
            .map_err(|e| SnatError::Spawn {
                cmd: "iptables".into(),
                message: e.to_string(),
            })?
    }

    async fn restore(&self, input: &str) -> Result<(), SnatError> {
        let input = input.to_string();
        let (bin, args) = self.command(&self.iptables_restore, s(&["-w", "5", "--noflush"]));
        tokio::task::spawn_blocking(move || run_blocking(&bin, &args, Some(&input)).map(|_| ()))
            .await
            .map_err(|e| SnatError::Spawn {
                cmd: "iptables-restore".into(),
                message: e.to_string(),
            })?
    }
}
