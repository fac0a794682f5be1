//! `ipamd demo` (placeholder while the daemon is brought up).

/// Options of `ipamd demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Number of pods.
    #[arg(long, default_value_t = 10)]
    pub pods: usize,
}

/// Runs the demo.
pub fn run(_args: &DemoArgs) -> Result<(), String> {
    Err("not built yet".into())
}
