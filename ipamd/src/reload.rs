//! Live pool knobs: WARM_ENI_TARGET, WARM_IP_TARGET, MINIMUM_IP_TARGET, WARM_PREFIX_TARGET, IP_COOLDOWN_PERIOD
//! and our own AWS_CNI_POOL_RELEASE_DELAY and AWS_CNI_ADD_WAIT_SECONDS change without a restart.
//!
//! **Where they come from.** A directory of key files, as a Kubernetes ConfigMap volume produces it: one file per
//! variable, named after it, holding its value (`/etc/aws-node/pool/WARM_IP_TARGET` containing `5`). The
//! directory is [`DEFAULT_POOL_CONFIG_DIR`], or `AWS_CNI_POOL_CONFIG_DIR`; a missing directory means no
//! overrides. A directory (not a single file mounted with `subPath`) because kubelet updates a ConfigMap volume
//! in place (an atomic swap of its `..data` symlink) but never a `subPath` mount. Names starting with `.` (the
//! volume's own `..data` entries) are skipped.
//!
//! **What a value means.** The knobs in force are the container's environment overlaid by the files: a file
//! sets its variable, removing it brings back the environment's value. The merged set is validated as at
//! startup ([`Config::from_env`], the same parsers and cross-checks, e.g. prefix delegation needs a warm
//! target); a file for a variable that is not a live knob is refused (it takes effect only at a restart).
//!
//! **When.** At startup (before the pool is filled), on `SIGHUP`, and whenever the directory's contents
//! change (checked every [`POLL_INTERVAL`]). A reload that fails leaves every old value in force and logs the
//! error naming the variable; one that succeeds logs the old and new knobs. Both are counted
//! (`awscni_config_reload_total{outcome="applied"|"refused"}`).
//!
//! **Without dropping a request.** Applying is a swap of a few values under the engine's short locks
//! ([`crate::engine::Node::apply_knobs`]): the gRPC server, the pool task and waiting ADDs keep running; the pool
//! task is woken so it follows the new target at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::{
    Config, ConfigError, EnvSource, ENV_ADD_WAIT_SECONDS, ENV_IP_COOLDOWN_PERIOD,
    ENV_MINIMUM_IP_TARGET, ENV_POOL_RELEASE_DELAY, ENV_WARM_ENI_TARGET, ENV_WARM_IP_TARGET,
    ENV_WARM_PREFIX_TARGET,
};
use crate::engine::Node;

/// Where the pool knob files are read from by default (a ConfigMap volume).
pub const DEFAULT_POOL_CONFIG_DIR: &str = "/etc/aws-node/pool";
/// The variable that moves the pool knob directory.
pub const ENV_POOL_CONFIG_DIR: &str = "AWS_CNI_POOL_CONFIG_DIR";
/// How often the directory is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The variables a reload may change.
pub const LIVE_VARS: [&str; 7] = [
    ENV_WARM_ENI_TARGET,
    ENV_WARM_IP_TARGET,
    ENV_MINIMUM_IP_TARGET,
    ENV_WARM_PREFIX_TARGET,
    ENV_IP_COOLDOWN_PERIOD,
    ENV_POOL_RELEASE_DELAY,
    ENV_ADD_WAIT_SECONDS,
];

/// The knobs a reload changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolKnobs {
    pub warm_eni_target: u32,
    pub warm_ip_target: u32,
    pub minimum_ip_target: u32,
    pub warm_prefix_target: u32,
    pub ip_cooldown: Duration,
    pub pool_release_delay: Duration,
    pub add_wait: Duration,
}

impl PoolKnobs {
    /// The knobs of a configuration.
    pub fn of(c: &Config) -> PoolKnobs {
        PoolKnobs {
            warm_eni_target: c.warm_eni_target,
            warm_ip_target: c.warm_ip_target,
            minimum_ip_target: c.minimum_ip_target,
            warm_prefix_target: c.warm_prefix_target,
            ip_cooldown: c.ip_cooldown,
            pool_release_delay: c.pool_release_delay,
            add_wait: c.add_wait,
        }
    }
}

impl std::fmt::Display for PoolKnobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{ENV_WARM_ENI_TARGET}={} {ENV_WARM_IP_TARGET}={} {ENV_MINIMUM_IP_TARGET}={} \
             {ENV_WARM_PREFIX_TARGET}={} {ENV_IP_COOLDOWN_PERIOD}={} {ENV_POOL_RELEASE_DELAY}={} \
             {ENV_ADD_WAIT_SECONDS}={}",
            self.warm_eni_target,
            self.warm_ip_target,
            self.minimum_ip_target,
            self.warm_prefix_target,
            self.ip_cooldown.as_secs(),
            self.pool_release_delay.as_secs(),
            self.add_wait.as_secs()
        )
    }
}

/// Why a reload was refused (the old knobs stay).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    #[error(
        "{var} in {dir} is not a live knob (only {live} are; it takes effect at a restart)",
        live = LIVE_VARS.join(", ")
    )]
    NotLive { var: String, dir: String },
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
}

/// The key files of `dir`: variable name to trimmed value. A missing directory has none.
pub fn read_dir(dir: &Path) -> Result<BTreeMap<String, String>, ReloadError> {
    let read_err = |path: &Path, e: std::io::Error| ReloadError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(read_err(dir, e)),
    };
    let mut out = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| read_err(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows the volume's symlinks; directories are not knobs.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // swapped meanwhile
            Err(e) => return Err(read_err(&path, e)),
        }
        let value = std::fs::read_to_string(&path).map_err(|e| read_err(&path, e))?;
        out.insert(name, value.trim().to_string());
    }
    Ok(out)
}

/// The environment overlaid by the files.
struct Overlay<'a> {
    base: &'a dyn EnvSource,
    files: &'a BTreeMap<String, String>,
}

impl EnvSource for Overlay<'_> {
    fn get(&self, key: &str) -> Option<String> {
        self.files.get(key).cloned().or_else(|| self.base.get(key))
    }
}

/// The knobs `base` (the container's environment) overlaid by `files` say, validated as at startup.
pub fn resolve(
    base: &dyn EnvSource,
    files: &BTreeMap<String, String>,
    dir: &Path,
) -> Result<PoolKnobs, ReloadError> {
    if let Some(var) = files.keys().find(|k| !LIVE_VARS.contains(&k.as_str())) {
        return Err(ReloadError::NotLive {
            var: var.clone(),
            dir: dir.display().to_string(),
        });
    }
    let config = Config::from_env(&Overlay { base, files })?;
    Ok(PoolKnobs::of(&config))
}

/// Reloads the knobs of one node from its environment and knob directory.
pub struct Reloader {
    node: Arc<Node>,
    base: Box<dyn EnvSource + Send + Sync>,
    dir: PathBuf,
    /// The directory's contents at the last attempt (to notice changes).
    seen: Option<Result<BTreeMap<String, String>, String>>,
}

impl Reloader {
    pub fn new(node: Arc<Node>, base: Box<dyn EnvSource + Send + Sync>, dir: PathBuf) -> Reloader {
        Reloader {
            node,
            base,
            dir,
            seen: None,
        }
    }

    /// The directory to read for the environment `env`: `AWS_CNI_POOL_CONFIG_DIR` or the default.
    pub fn dir_from(env: &dyn EnvSource) -> PathBuf {
        env.get(ENV_POOL_CONFIG_DIR)
            .filter(|d| !d.trim().is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_POOL_CONFIG_DIR), PathBuf::from)
    }

    /// Reads the directory and applies what it says (`why`: what asked, for the log). Returns the knobs in
    /// force afterwards, or why the reload was refused (the old knobs stay).
    pub fn reload(&mut self, why: &str) -> Result<PoolKnobs, ReloadError> {
        let files = read_dir(&self.dir);
        self.seen = Some(match &files {
            Ok(f) => Ok(f.clone()),
            Err(e) => Err(e.to_string()),
        });
        let result = files.and_then(|f| resolve(self.base.as_ref(), &f, &self.dir));
        match result {
            Ok(knobs) => {
                let old = self.node.apply_knobs(knobs);
                if old == knobs {
                    tracing::info!(trigger = why, dir = %self.dir.display(), knobs = %knobs,
                        "pool knobs reloaded: nothing changed");
                } else {
                    tracing::info!(trigger = why, dir = %self.dir.display(), old = %old, new = %knobs,
                        "pool knobs reloaded");
                }
                Ok(knobs)
            }
            Err(e) => {
                self.node.count_reload(false);
                tracing::error!(trigger = why, dir = %self.dir.display(), error = %e,
                    kept = %self.node.knobs(), "pool knobs reload refused; the old values stay");
                Err(e)
            }
        }
    }

    /// Whether the directory's contents differ from the last attempt.
    fn changed(&self) -> bool {
        let now = read_dir(&self.dir).map_err(|e| e.to_string());
        self.seen.as_ref() != Some(&now)
    }

    /// Reloads on `SIGHUP` and when the directory changes, until `shutdown`.
    pub async fn watch(mut self, shutdown: Arc<Notify>) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the knob directory is still watched");
                None
            }
        };
        let clock = Arc::clone(&self.node.deps.clock);
        loop {
            let hup_fired = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.notified() => return,
                _ = hup_fired => {
                    let _ = self.reload("SIGHUP");
                }
                () = clock.sleep(POLL_INTERVAL) => {
                    if self.changed() {
                        let _ = self.reload("file change");
                    }
                }
            }
        }
    }
}

impl Node {
    /// Puts `knobs` in force at once: the policy's targets, the cooldown, the release hysteresis' window, the
    /// ADD wait bound; then wakes the pool task and the waiting ADDs. Returns the knobs it replaced. Counted as
    /// an applied reload.
    pub fn apply_knobs(&self, knobs: PoolKnobs) -> PoolKnobs {
        let old = {
            let mut k = crate::sync::lock(&self.knobs);
            std::mem::replace(&mut *k, knobs)
        };
        {
            let mut p = crate::sync::lock(&self.policy);
            p.warm_eni_target = knobs.warm_eni_target;
            p.warm_ip_target = knobs.warm_ip_target;
            p.minimum_ip_target = knobs.minimum_ip_target;
            p.warm_prefix_target = knobs.warm_prefix_target;
        }
        crate::sync::lock(&self.ds).set_cooldown(knobs.ip_cooldown);
        {
            let mut st = crate::sync::lock(&self.status);
            st.high_water.set_window(knobs.pool_release_delay);
        }
        self.count_reload(true);
        self.wake.notify_one();
        self.adds.poke();
        old
    }

    /// Counts a reload (`applied` or refused).
    pub(crate) fn count_reload(&self, applied: bool) {
        let mut st = crate::sync::lock(&self.status);
        if applied {
            st.reloads_applied += 1;
        } else {
            st.reloads_refused += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::env_map;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn files_overlay_the_environment_and_are_validated_as_at_startup() {
        let env = env_map(&[("WARM_IP_TARGET", "3"), ("IP_COOLDOWN_PERIOD", "10")]);
        let dir = Path::new("/etc/aws-node/pool");
        let k = resolve(&env, &BTreeMap::new(), dir).expect("env only");
        assert_eq!((k.warm_ip_target, k.ip_cooldown.as_secs()), (3, 10));
        let k = resolve(
            &env,
            &files(&[("WARM_IP_TARGET", "7"), ("AWS_CNI_ADD_WAIT_SECONDS", "2")]),
            dir,
        )
        .expect("overlay");
        assert_eq!(
            (
                k.warm_ip_target,
                k.ip_cooldown.as_secs(),
                k.add_wait.as_secs()
            ),
            (7, 10, 2)
        );
        let e = resolve(&env, &files(&[("MINIMUM_IP_TARGET", "ten")]), dir).expect_err("bad");
        assert!(
            matches!(&e, ReloadError::Invalid(c) if c.var == "MINIMUM_IP_TARGET"),
            "{e}"
        );
        assert!(e.to_string().contains("MINIMUM_IP_TARGET"), "{e}");
        let e = resolve(&env, &files(&[("MAX_ENI", "2")]), dir).expect_err("not live");
        assert!(e.to_string().contains("MAX_ENI") && e.to_string().contains("restart"));
        // Cross-checks hold too: prefix delegation needs a warm target.
        let pd = env_map(&[
            ("ENABLE_PREFIX_DELEGATION", "true"),
            ("WARM_PREFIX_TARGET", "1"),
        ]);
        let e = resolve(&pd, &files(&[("WARM_PREFIX_TARGET", "0")]), dir).expect_err("no target");
        assert!(e.to_string().contains("WARM_PREFIX_TARGET"), "{e}");
        assert_eq!(
            PoolKnobs::of(&Config::default()).to_string(),
            "WARM_ENI_TARGET=1 WARM_IP_TARGET=0 MINIMUM_IP_TARGET=0 WARM_PREFIX_TARGET=0 \
             IP_COOLDOWN_PERIOD=30 AWS_CNI_POOL_RELEASE_DELAY=300 AWS_CNI_ADD_WAIT_SECONDS=8"
        );
    }

    #[test]
    fn a_configmap_volume_is_read_through_its_symlinks_and_its_dot_entries_skipped() {
        let dir = std::env::temp_dir().join(format!("pool-knobs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data = dir.join("..2026_12_05_15_00_00.1");
        std::fs::create_dir_all(&data).expect("dir");
        std::fs::write(data.join("WARM_IP_TARGET"), "5\n").expect("write");
        std::os::unix::fs::symlink(&data, dir.join("..data")).expect("symlink");
        std::os::unix::fs::symlink("..data/WARM_IP_TARGET", dir.join("WARM_IP_TARGET"))
            .expect("symlink");
        let got = read_dir(&dir).expect("read");
        assert_eq!(got, files(&[("WARM_IP_TARGET", "5")]));
        assert!(read_dir(&dir.join("missing")).expect("none").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
