//! `ipamd install`: puts the CNI on the node, the job of the anchor's init container plus the part of its
//! entrypoint that writes the conflist (anchor-facts §1.1).
//!
//! ```text
//!   phase init      (privileged init container; /proc/sys is read-only in an unprivileged one)
//!     1. validate every variable below            nothing is touched if one is wrong
//!     2. render the conflist template             a broken template fails here, not minutes later
//!     3. copy aws-cni + portmap, loopback, host-local, bandwidth, tuning   ─▶ $HOST_CNI_BIN_PATH
//!     4. sysctls under --proc-root: rp_filter=2 on the primary ENI (found by its MAC), tcp_early_demux,
//!        and the IPv6 ones when IPv6 (or v6 egress) is on
//!   phase conflist  (a small container next to ipamd)
//!     1.–2. as above
//!     5. poll ipamd's readiness (the check of `ipamd health --ready`) until it says ready, or time out
//!     6. write 10-aws.conflist                     ─▶ $HOST_CNI_CONFDIR_PATH
//!   phase all       1 to 6 in order
//! ```
//!
//! Writing the conflist is what makes the kubelet call the node's network ready, so it happens only once ipamd can
//! hand out an address: a node never turns Ready with pods that cannot start (anchor #1923 is the version of this
//! bug where "alive" was taken for "ready").
//!
//! Every file lands atomically: it is written to a hidden temporary file in the destination directory, fsynced,
//! given its mode, and renamed over the final name, then the directory is fsynced. A runtime that lists the
//! directory or execs the plugin sees the old file or the whole new one, never a prefix; a plugin binary that is
//! running while it is replaced keeps its old inode (no `ETXTBSY`).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `HOST_CNI_BIN_PATH` | `/host/opt/cni/bin` | where the plugins go (the host's `/opt/cni/bin`) |
//! | `HOST_CNI_CONFDIR_PATH` | `/host/etc/cni/net.d` | where `10-aws.conflist` goes |
//! | `AWS_VPC_K8S_CNI_VETHPREFIX` | `eni` | host veth prefix: 1 to 4 of `[A-Za-z0-9_.-]`, not `eth`, `lo`, `vlan` |
//! | `POD_MTU` | `AWS_VPC_ENI_MTU` | pod MTU written into the conflist (576..=9001; 1280..=9001 with IPv6) |
//! | `AWS_VPC_ENI_MTU` | 9001 | the fallback of `POD_MTU` |
//! | `POD_SECURITY_GROUP_ENFORCING_MODE` | `strict` | `strict` or `standard` |
//! | `AWS_VPC_K8S_PLUGIN_LOG_FILE` | `/var/log/aws-routed-eni/plugin.log` | plugin log: an absolute path or `stderr` (never `stdout`, which carries CNI results) |
//! | `AWS_VPC_K8S_PLUGIN_LOG_LEVEL` | `DEBUG` | `trace`, `debug`, `info`, `warn` or `error`, any case |
//! | `DISABLE_TCP_EARLY_DEMUX` | false | `net/ipv4/tcp_early_demux` = 0 instead of 1 |
//! | `ENABLE_IPv6` | false | `net/ipv6/conf/all/disable_ipv6`=0, `all/forwarding`=1, `<primary>/accept_ra`=2 |
//! | `ENABLE_V6_EGRESS` | false | `all/forwarding`=1 and `<primary>/accept_ra`=2 |
//! | `ENABLE_BANDWIDTH_PLUGIN` | false | chain the `bandwidth` plugin after portmap |
//! | `DISABLE_POD_V6` | false | chain `tuning` to turn IPv6 off inside pods |
//! | `AWS_EC2_METADATA_SERVICE_ENDPOINT` | `http://169.254.169.254` | IMDS, asked for the primary ENI's MAC unless `--primary-mac` is given |
//!
//! The template's placeholders are the anchor's names: `__VETHPREFIX__`, `__MTU__`, `__PODSGENFORCINGMODE__`,
//! `__PLUGINLOGFILE__`, `__PLUGINLOGLEVEL__`. They stand inside JSON strings and are replaced by JSON-escaped
//! values, so no value can break the document; any other `__NAME__` left in the template is an error naming it
//! (the anchor's egress placeholders belong to `egress-cni`, which this image does not ship). With neither
//! optional plugin enabled the output is the template with the values substituted, byte for byte.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const ENV_HOST_CNI_BIN_PATH: &str = "HOST_CNI_BIN_PATH";
pub const ENV_HOST_CNI_CONFDIR_PATH: &str = "HOST_CNI_CONFDIR_PATH";
pub const ENV_VETH_PREFIX: &str = "AWS_VPC_K8S_CNI_VETHPREFIX";
pub const ENV_POD_MTU: &str = "POD_MTU";
pub const ENV_ENI_MTU: &str = "AWS_VPC_ENI_MTU";
pub const ENV_SG_MODE: &str = "POD_SECURITY_GROUP_ENFORCING_MODE";
pub const ENV_PLUGIN_LOG_FILE: &str = "AWS_VPC_K8S_PLUGIN_LOG_FILE";
pub const ENV_PLUGIN_LOG_LEVEL: &str = "AWS_VPC_K8S_PLUGIN_LOG_LEVEL";
pub const ENV_DISABLE_TCP_EARLY_DEMUX: &str = "DISABLE_TCP_EARLY_DEMUX";
pub const ENV_ENABLE_IPV6: &str = "ENABLE_IPv6";
pub const ENV_ENABLE_V6_EGRESS: &str = "ENABLE_V6_EGRESS";
pub const ENV_ENABLE_BANDWIDTH_PLUGIN: &str = "ENABLE_BANDWIDTH_PLUGIN";
pub const ENV_DISABLE_POD_V6: &str = "DISABLE_POD_V6";

pub const DEFAULT_HOST_CNI_BIN_PATH: &str = "/host/opt/cni/bin";
pub const DEFAULT_HOST_CNI_CONFDIR_PATH: &str = "/host/etc/cni/net.d";
pub const DEFAULT_PLUGIN_LOG_FILE: &str = "/var/log/aws-routed-eni/plugin.log";

/// The file the kubelet's runtime reads.
pub const CONFLIST_NAME: &str = "10-aws.conflist";
/// The template, next to the executable in the image.
pub const TEMPLATE_NAME: &str = "10-aws.conflist.tmpl";
/// Our plugin, next to the executable in the image.
pub const AWS_CNI: &str = "aws-cni";
/// Directory (under the source directory) holding the upstream plugins.
pub const PLUGINS_DIR: &str = "cni-plugins";
/// The upstream containernetworking plugins installed with aws-cni: portmap is chained by the conflist, bandwidth
/// and tuning by the optional settings, loopback and host-local are what the anchor's init container ships for
/// runtimes and other plugins that expect them.
pub const UPSTREAM_PLUGINS: [&str; 5] =
    ["portmap", "loopback", "host-local", "bandwidth", "tuning"];
/// IMDS path of the primary ENI's MAC.
pub const IMDS_MAC_PATH: &str = "/latest/meta-data/mac";

/// What `ipamd install` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Plugins, sysctls, then wait for ipamd and write the conflist.
    All,
    /// Plugins and sysctls (the init container).
    Init,
    /// Wait for ipamd to be ready, then write the conflist.
    Conflist,
}

/// Command line of `ipamd install`.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// Which steps to run.
    #[arg(long, value_enum, default_value_t = Phase::All)]
    pub phase: Phase,
    /// Directory holding aws-cni, 10-aws.conflist.tmpl and cni-plugins/ (default: this executable's directory).
    #[arg(long)]
    pub source_dir: Option<PathBuf>,
    /// Where procfs is (tests point this at a directory of their own).
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Where sysfs is; the primary interface is the one whose class/net/*/address is the primary ENI's MAC.
    #[arg(long, default_value = "/sys")]
    pub sys_root: PathBuf,
    /// The primary ENI's MAC; read from IMDS when not given.
    #[arg(long)]
    pub primary_mac: Option<String>,
    /// ipamd's socket, polled for readiness before the conflist is written.
    #[arg(long, default_value = aws_cni_proto::DEFAULT_IPAMD_SOCKET)]
    pub socket: PathBuf,
    /// Give up (exit 1, conflist not written) if ipamd is not ready within this time.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub ready_timeout: Duration,
    /// Pause between readiness polls.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// After the last step, keep running until SIGTERM or SIGINT (for a container that must not exit).
    #[arg(long)]
    pub stay: bool,
}

/// Why the install failed. Nothing after the failing step was done.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("invalid {var}={value:?}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("template {path}: {reason}")]
    Template { path: PathBuf, reason: String },
    #[error("reading the primary ENI's MAC from IMDS: {0}")]
    Imds(String),
    #[error("invalid MAC address {0:?}")]
    BadMac(String),
    #[error("no interface under {dir} has MAC {mac} (seen: {seen})")]
    NoInterface {
        dir: PathBuf,
        mac: String,
        seen: String,
    },
    #[error(
        "sysctl {key}: {path} does not exist (is the kernel feature there, is --proc-root right?)"
    )]
    NoSysctl { key: String, path: PathBuf },
    #[error(
        "ipamd at {socket} was not ready after {waited:?}: {last}; the conflist was not written"
    )]
    NotReady {
        socket: PathBuf,
        waited: Duration,
        last: String,
    },
    #[error("cannot find this executable's directory (pass --source-dir): {0}")]
    SourceDir(std::io::Error),
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io {
        action,
        path,
        source,
    }
}

/// Pod security group enforcement (`POD_SECURITY_GROUP_ENFORCING_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SgMode {
    Strict,
    Standard,
}

impl SgMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SgMode::Strict => "strict",
            SgMode::Standard => "standard",
        }
    }
}

/// Everything the installer reads from the environment, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub veth_prefix: String,
    pub pod_mtu: u32,
    pub sg_mode: SgMode,
    pub plugin_log_file: String,
    /// As written in the environment (the plugin reads it case-insensitively).
    pub plugin_log_level: String,
    pub disable_tcp_early_demux: bool,
    pub enable_ipv6: bool,
    pub enable_v6_egress: bool,
    pub bandwidth_plugin: bool,
    pub disable_pod_v6: bool,
}

fn env_err(var: &'static str, value: &str, reason: impl Into<String>) -> InstallError {
    InstallError::Env {
        var,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The value of `var`, with empty (or blank) treated as unset, as the anchor does.
fn get_set(get: &dyn Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    get(var).filter(|v| !v.trim().is_empty())
}

fn parse_bool(
    get: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<bool, InstallError> {
    match get_set(get, var) {
        None => Ok(false),
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(env_err(var, &v, "expected true or false")),
        },
    }
}

fn parse_dir(
    get: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
    default: &str,
) -> Result<PathBuf, InstallError> {
    match get_set(get, var) {
        None => Ok(PathBuf::from(default)),
        Some(v) if v.trim().starts_with('/') => Ok(PathBuf::from(v.trim())),
        Some(v) => Err(env_err(var, &v, "expected an absolute path")),
    }
}

fn parse_mtu(var: &'static str, v: &str, min: u32) -> Result<u32, InstallError> {
    match v.trim().parse::<u32>() {
        Ok(m) if (min..=9001).contains(&m) => Ok(m),
        _ => Err(env_err(
            var,
            v,
            format!("expected an MTU between {min} and 9001"),
        )),
    }
}

impl Settings {
    /// Reads and validates every variable of the module docs through `get` (e.g. `|k| std::env::var(k).ok()`).
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Settings, InstallError> {
        let bin_dir = parse_dir(get, ENV_HOST_CNI_BIN_PATH, DEFAULT_HOST_CNI_BIN_PATH)?;
        let conf_dir = parse_dir(
            get,
            ENV_HOST_CNI_CONFDIR_PATH,
            DEFAULT_HOST_CNI_CONFDIR_PATH,
        )?;

        let veth_prefix = get_set(get, ENV_VETH_PREFIX)
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "eni".into());
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        if veth_prefix.len() > 4 || !veth_prefix.chars().all(allowed) {
            return Err(env_err(
                ENV_VETH_PREFIX,
                &veth_prefix,
                "expected 1 to 4 of A-Z, a-z, 0-9, '_', '.', '-'",
            ));
        }
        if ["eth", "lo", "vlan"].contains(&veth_prefix.as_str()) {
            return Err(env_err(
                ENV_VETH_PREFIX,
                &veth_prefix,
                "eth, lo and vlan are reserved for other interfaces",
            ));
        }

        let enable_ipv6 = parse_bool(get, ENV_ENABLE_IPV6)?;
        let min_mtu = if enable_ipv6 { 1280 } else { 576 };
        let eni_mtu = match get_set(get, ENV_ENI_MTU) {
            None => 9001,
            Some(v) => parse_mtu(ENV_ENI_MTU, &v, min_mtu)?,
        };
        let pod_mtu = match get_set(get, ENV_POD_MTU) {
            None => eni_mtu,
            Some(v) => parse_mtu(ENV_POD_MTU, &v, min_mtu)?,
        };

        let sg_mode = match get_set(get, ENV_SG_MODE) {
            None => SgMode::Strict,
            Some(v) => match v.trim() {
                "strict" => SgMode::Strict,
                "standard" => SgMode::Standard,
                _ => return Err(env_err(ENV_SG_MODE, &v, "expected strict or standard")),
            },
        };

        let plugin_log_file = get_set(get, ENV_PLUGIN_LOG_FILE)
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| DEFAULT_PLUGIN_LOG_FILE.into());
        if plugin_log_file.eq_ignore_ascii_case("stdout") {
            return Err(env_err(
                ENV_PLUGIN_LOG_FILE,
                &plugin_log_file,
                "stdout carries the CNI result; use a file or stderr",
            ));
        }
        if plugin_log_file != "stderr" && !plugin_log_file.starts_with('/') {
            return Err(env_err(
                ENV_PLUGIN_LOG_FILE,
                &plugin_log_file,
                "expected an absolute path or stderr",
            ));
        }

        let plugin_log_level = get_set(get, ENV_PLUGIN_LOG_LEVEL)
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "DEBUG".into());
        if !["trace", "debug", "info", "warn", "error"]
            .contains(&plugin_log_level.to_ascii_lowercase().as_str())
        {
            return Err(env_err(
                ENV_PLUGIN_LOG_LEVEL,
                &plugin_log_level,
                "expected trace, debug, info, warn or error",
            ));
        }

        Ok(Settings {
            bin_dir,
            conf_dir,
            veth_prefix,
            pod_mtu,
            sg_mode,
            plugin_log_file,
            plugin_log_level,
            disable_tcp_early_demux: parse_bool(get, ENV_DISABLE_TCP_EARLY_DEMUX)?,
            enable_ipv6,
            enable_v6_egress: parse_bool(get, ENV_ENABLE_V6_EGRESS)?,
            bandwidth_plugin: parse_bool(get, ENV_ENABLE_BANDWIDTH_PLUGIN)?,
            disable_pod_v6: parse_bool(get, ENV_DISABLE_POD_V6)?,
        })
    }
}

/// The text of a JSON string's contents (no surrounding quotes).
fn json_escaped(s: &str) -> String {
    let quoted = Value::String(s.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// The first `__NAME__` (upper case letters, digits and `_`, starting with a letter) left in `text`.
fn leftover_placeholder(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(off) = text[i..].find("__") {
        let start = i + off;
        let mut j = start + 2;
        while j < bytes.len()
            && (bytes[j].is_ascii_uppercase() || bytes[j].is_ascii_digit() || bytes[j] == b'_')
        {
            j += 1;
        }
        let run = &text[start + 2..j];
        if run.len() > 2 && run.ends_with("__") && run.as_bytes()[0].is_ascii_uppercase() {
            return Some(text[start..j].to_string());
        }
        i = start + 2;
    }
    None
}

/// Renders the conflist template (see the module docs). `path` only names the template in errors.
pub fn render_conflist(template: &str, s: &Settings, path: &Path) -> Result<String, InstallError> {
    let terr = |reason: String| InstallError::Template {
        path: path.to_path_buf(),
        reason,
    };
    let mut text = template.to_string();
    for (placeholder, value) in [
        ("__VETHPREFIX__", s.veth_prefix.clone()),
        ("__MTU__", s.pod_mtu.to_string()),
        ("__PODSGENFORCINGMODE__", s.sg_mode.as_str().to_string()),
        ("__PLUGINLOGFILE__", s.plugin_log_file.clone()),
        ("__PLUGINLOGLEVEL__", s.plugin_log_level.clone()),
    ] {
        text = text.replace(placeholder, &json_escaped(&value));
    }
    if let Some(p) = leftover_placeholder(&text) {
        return Err(terr(format!("unknown placeholder {p}")));
    }
    let mut list: Value =
        serde_json::from_str(&text).map_err(|e| terr(format!("not JSON after rendering: {e}")))?;
    let Some(plugins) = list.get_mut("plugins").and_then(Value::as_array_mut) else {
        return Err(terr("no \"plugins\" array".into()));
    };
    if !plugins.iter().any(|p| p["type"] == AWS_CNI) {
        return Err(terr(format!("no plugin of type {AWS_CNI}")));
    }
    if !s.bandwidth_plugin && !s.disable_pod_v6 {
        return Ok(text);
    }
    if s.bandwidth_plugin {
        plugins.push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    }
    if s.disable_pod_v6 {
        plugins.push(json!({
            "type": "tuning",
            "sysctl": {
                "net.ipv6.conf.all.disable_ipv6": "1",
                "net.ipv6.conf.default.disable_ipv6": "1",
                "net.ipv6.conf.lo.disable_ipv6": "1"
            }
        }));
    }
    let mut out = serde_json::to_string_pretty(&list)
        .map_err(|e| terr(format!("serializing the conflist: {e}")))?;
    out.push('\n');
    Ok(out)
}

/// Writes `bytes` to `dir/name` atomically (temporary file in `dir`, fsync, chmod `mode`, rename, fsync `dir`).
pub fn atomic_write(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<PathBuf, InstallError> {
    atomic_install(dir, name, mode, |f, tmp| {
        f.write_all(bytes).map_err(io_err("writing", tmp))
    })
}

/// Copies `src` to `dir/name` atomically, keeping `src`'s permission bits.
pub fn atomic_copy(src: &Path, dir: &Path, name: &str) -> Result<PathBuf, InstallError> {
    let mut from = File::open(src).map_err(io_err("opening", src))?;
    let mode = from
        .metadata()
        .map_err(io_err("reading the mode of", src))?
        .permissions()
        .mode()
        & 0o7777;
    atomic_install(dir, name, mode, |f, tmp| {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = from.read(&mut buf).map_err(io_err("reading", src))?;
            if n == 0 {
                return Ok(());
            }
            f.write_all(&buf[..n]).map_err(io_err("writing", tmp))?;
        }
    })
}

fn atomic_install(
    dir: &Path,
    name: &str,
    mode: u32,
    fill: impl FnOnce(&mut File, &Path) -> Result<(), InstallError>,
) -> Result<PathBuf, InstallError> {
    let dest = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp); // a leftover of a killed earlier run with the same pid
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        fill(&mut f, &tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_err("setting the mode of", &tmp))?;
        f.sync_all().map_err(io_err("syncing", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, &dest).map_err(io_err("renaming into place", &dest))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| dest)
}

/// Copies aws-cni and the upstream plugins from `source_dir` into `bin_dir`; returns the installed paths.
pub fn install_binaries(source_dir: &Path, bin_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut sources = vec![(source_dir.join(AWS_CNI), AWS_CNI)];
    for p in UPSTREAM_PLUGINS {
        sources.push((source_dir.join(PLUGINS_DIR).join(p), p));
    }
    // Check all first, so a missing plugin leaves the host's directory as it was.
    for (src, _) in &sources {
        let meta = std::fs::metadata(src).map_err(io_err("looking for", src))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(InstallError::Io {
                action: "checking",
                path: src.clone(),
                source: std::io::Error::other("not an executable file"),
            });
        }
    }
    std::fs::create_dir_all(bin_dir).map_err(io_err("creating", bin_dir))?;
    sources
        .iter()
        .map(|(src, name)| atomic_copy(src, bin_dir, name))
        .collect()
}

/// One sysctl: `key` is the path under `/proc/sys`, e.g. `net/ipv4/conf/eth0/rp_filter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    pub key: String,
    pub value: &'static str,
}

/// The sysctls of anchor-facts §1.1 for a node whose primary interface is `primary`, in the order they are set.
pub fn sysctls(primary: &str, s: &Settings) -> Vec<Sysctl> {
    let mut v = vec![
        Sysctl {
            key: format!("net/ipv4/conf/{primary}/rp_filter"),
            value: "2",
        },
        Sysctl {
            key: "net/ipv4/tcp_early_demux".into(),
            value: if s.disable_tcp_early_demux { "0" } else { "1" },
        },
    ];
    if s.enable_ipv6 {
        v.push(Sysctl {
            key: "net/ipv6/conf/all/disable_ipv6".into(),
            value: "0",
        });
    }
    if s.enable_ipv6 || s.enable_v6_egress {
        v.push(Sysctl {
            key: "net/ipv6/conf/all/forwarding".into(),
            value: "1",
        });
        v.push(Sysctl {
            key: format!("net/ipv6/conf/{primary}/accept_ra"),
            value: "2",
        });
    }
    v
}

/// The file of `sysctl` under `proc_root/sys`, which must exist.
pub fn sysctl_path(proc_root: &Path, sysctl: &Sysctl) -> Result<PathBuf, InstallError> {
    let path = proc_root.join("sys").join(&sysctl.key);
    if path.is_file() {
        Ok(path)
    } else {
        Err(InstallError::NoSysctl {
            key: sysctl.key.clone(),
            path,
        })
    }
}

/// Writes `sysctl` under `proc_root/sys`. The file must exist, as in procfs (nothing is created).
pub fn write_sysctl(proc_root: &Path, sysctl: &Sysctl) -> Result<(), InstallError> {
    let path = sysctl_path(proc_root, sysctl)?;
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .map_err(io_err("opening", &path))?;
    f.write_all(format!("{}\n", sysctl.value).as_bytes())
        .map_err(io_err("writing", &path))
}

/// A MAC in canonical form (lower case, colon-separated), or an error.
pub fn normalize_mac(mac: &str) -> Result<String, InstallError> {
    let m = mac.trim().to_ascii_lowercase();
    let parts: Vec<&str> = m.split(':').collect();
    if parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        Ok(m)
    } else {
        Err(InstallError::BadMac(mac.to_string()))
    }
}

/// The interface under `sys_root/class/net` whose `address` is `mac`.
pub fn interface_by_mac(sys_root: &Path, mac: &str) -> Result<String, InstallError> {
    let mac = normalize_mac(mac)?;
    let dir = sys_root.join("class/net");
    let mut seen = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(io_err("listing", &dir))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        let addr = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
        let addr = addr.trim().to_ascii_lowercase();
        if addr == mac {
            return Ok(name);
        }
        seen.push(format!("{name}={addr}"));
    }
    Err(InstallError::NoInterface {
        dir,
        mac,
        seen: if seen.is_empty() {
            "none".into()
        } else {
            seen.join(", ")
        },
    })
}

fn primary_mac(args: &InstallArgs) -> Result<String, InstallError> {
    match &args.primary_mac {
        Some(m) => normalize_mac(m),
        None => {
            let imds = instance_limits::Imdsv2::from_env();
            let mac = imds
                .get_metadata(IMDS_MAC_PATH)
                .map_err(|e| InstallError::Imds(e.to_string()))?;
            normalize_mac(&mac)
        }
    }
}

/// Polls ipamd's readiness (as `ipamd health --ready`) until it is ready or `timeout` has passed.
pub async fn wait_ready(
    socket: &Path,
    timeout: Duration,
    interval: Duration,
) -> Result<(), InstallError> {
    let start = Instant::now();
    let per_call = interval.clamp(Duration::from_millis(500), Duration::from_secs(5));
    let mut last = String::new();
    loop {
        let r = crate::probe::probe(socket, per_call, true).await;
        if r.code == 0 {
            tracing::info!(socket = %socket.display(), "ipamd is ready: {}", r.message);
            return Ok(());
        }
        if r.message != last {
            tracing::info!(socket = %socket.display(), "waiting for ipamd: {}", r.message);
            last = r.message;
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(InstallError::NotReady {
                socket: socket.to_path_buf(),
                waited,
                last,
            });
        }
        tokio::time::sleep(interval.min(timeout - waited)).await;
    }
}

fn source_dir(args: &InstallArgs) -> Result<PathBuf, InstallError> {
    match &args.source_dir {
        Some(d) => Ok(d.clone()),
        None => {
            let exe = std::env::current_exe().map_err(InstallError::SourceDir)?;
            exe.parent().map(Path::to_path_buf).ok_or_else(|| {
                InstallError::SourceDir(std::io::Error::other("no parent directory"))
            })
        }
    }
}

/// `ipamd install` with the process environment.
pub fn run(args: &InstallArgs) -> Result<(), InstallError> {
    run_with_env(args, &|k: &str| std::env::var(k).ok())
}

/// `ipamd install` (see the module docs) with the environment read through `get`.
pub fn run_with_env(
    args: &InstallArgs,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<(), InstallError> {
    let settings = Settings::from_env(get)?;
    let source = source_dir(args)?;
    let template_path = source.join(TEMPLATE_NAME);
    let template =
        std::fs::read_to_string(&template_path).map_err(io_err("reading", &template_path))?;
    let conflist = render_conflist(&template, &settings, &template_path)?;

    if matches!(args.phase, Phase::All | Phase::Init) {
        let installed = install_binaries(&source, &settings.bin_dir)?;
        for p in &installed {
            tracing::info!(path = %p.display(), "installed");
        }
        let mac = primary_mac(args)?;
        let primary = interface_by_mac(&args.sys_root, &mac)?;
        tracing::info!(interface = %primary, %mac, "primary interface");
        let wanted = sysctls(&primary, &settings);
        // All present first, so a missing one leaves every sysctl as it was.
        for s in &wanted {
            sysctl_path(&args.proc_root, s)?;
        }
        for s in wanted {
            write_sysctl(&args.proc_root, &s)?;
            tracing::info!(key = %s.key, value = s.value, "sysctl set");
        }
    }

    let needs_runtime = matches!(args.phase, Phase::All | Phase::Conflist) || args.stay;
    if !needs_runtime {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(InstallError::Runtime)?;
    rt.block_on(async {
        if matches!(args.phase, Phase::All | Phase::Conflist) {
            let ready = wait_ready(&args.socket, args.ready_timeout, args.poll_interval);
            if args.stay {
                // A container's PID 1 gets no signal it has no handler for: stopped before ipamd is ready, it
                // would sit out the grace period and be killed.
                tokio::select! {
                    r = ready => r?,
                    () = wait_for_stop() => {
                        tracing::info!("stopped before ipamd was ready: conflist not written");
                        return Ok(());
                    }
                }
            } else {
                ready.await?;
            }
            std::fs::create_dir_all(&settings.conf_dir)
                .map_err(io_err("creating", &settings.conf_dir))?;
            let path = atomic_write(
                &settings.conf_dir,
                CONFLIST_NAME,
                conflist.as_bytes(),
                0o644,
            )?;
            tracing::info!(path = %path.display(), "conflist written: the node's network is ready");
        }
        if args.stay {
            wait_for_stop().await;
        }
        Ok(())
    })
}

async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); waiting for SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn deploy_file(name: &str) -> (PathBuf, String) {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy")
            .join(name);
        let text = std::fs::read_to_string(&p).expect("deploy file");
        (p, text)
    }

    #[test]
    fn defaults_are_the_anchors() {
        let s = Settings::from_env(&env(&[])).expect("defaults");
        assert_eq!(s.bin_dir, PathBuf::from("/host/opt/cni/bin"));
        assert_eq!(s.conf_dir, PathBuf::from("/host/etc/cni/net.d"));
        assert_eq!(s.veth_prefix, "eni");
        assert_eq!(s.pod_mtu, 9001);
        assert_eq!(s.sg_mode, SgMode::Strict);
        assert_eq!(s.plugin_log_file, "/var/log/aws-routed-eni/plugin.log");
        assert_eq!(s.plugin_log_level, "DEBUG");
        assert!(!s.disable_tcp_early_demux && !s.enable_ipv6 && !s.bandwidth_plugin);
    }

    #[test]
    fn pod_mtu_falls_back_to_the_eni_mtu_and_ipv6_raises_the_floor() {
        let s = Settings::from_env(&env(&[("AWS_VPC_ENI_MTU", "1500")])).expect("eni mtu");
        assert_eq!(s.pod_mtu, 1500);
        let s = Settings::from_env(&env(&[("AWS_VPC_ENI_MTU", "1500"), ("POD_MTU", "1400")]))
            .expect("pod mtu");
        assert_eq!(s.pod_mtu, 1400);
        let e = Settings::from_env(&env(&[("POD_MTU", "1000"), ("ENABLE_IPv6", "true")]))
            .expect_err("v6 floor");
        assert!(e.to_string().contains("POD_MTU"), "{e}");
        assert!(Settings::from_env(&env(&[("POD_MTU", "1000")])).is_ok());
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        for (var, value) in [
            ("AWS_VPC_K8S_CNI_VETHPREFIX", "toolong"),
            ("AWS_VPC_K8S_CNI_VETHPREFIX", "eth"),
            ("AWS_VPC_K8S_CNI_VETHPREFIX", "a\"b"),
            ("POD_MTU", "100"),
            ("POD_MTU", "nine"),
            ("AWS_VPC_ENI_MTU", "9002"),
            ("POD_SECURITY_GROUP_ENFORCING_MODE", "loose"),
            ("AWS_VPC_K8S_PLUGIN_LOG_FILE", "stdout"),
            ("AWS_VPC_K8S_PLUGIN_LOG_FILE", "relative/plugin.log"),
            ("AWS_VPC_K8S_PLUGIN_LOG_LEVEL", "chatty"),
            ("DISABLE_TCP_EARLY_DEMUX", "maybe"),
            ("ENABLE_IPv6", "2"),
            ("ENABLE_V6_EGRESS", "on?"),
            ("ENABLE_BANDWIDTH_PLUGIN", "y"),
            ("DISABLE_POD_V6", "nope"),
            ("HOST_CNI_BIN_PATH", "opt/cni/bin"),
            ("HOST_CNI_CONFDIR_PATH", "net.d"),
        ] {
            let e = Settings::from_env(&env(&[(var, value)])).expect_err(var);
            let text = e.to_string();
            assert!(text.contains(var), "{var}={value}: {text}");
        }
    }

    #[test]
    fn default_rendering_of_the_template_is_deploy_conflist_byte_for_byte() {
        let (tpath, template) = deploy_file(TEMPLATE_NAME);
        let (_, expected) = deploy_file(CONFLIST_NAME);
        let s = Settings::from_env(&env(&[])).expect("defaults");
        let out = render_conflist(&template, &s, &tpath).expect("render");
        assert_eq!(out, expected);
        assert!(template.contains("__MTU__") && template.contains("__VETHPREFIX__"));
    }

    #[test]
    fn values_are_substituted_json_escaped_and_optional_plugins_are_chained() {
        let (tpath, template) = deploy_file(TEMPLATE_NAME);
        let s = Settings::from_env(&env(&[
            ("AWS_VPC_K8S_CNI_VETHPREFIX", "veth"),
            ("POD_MTU", "1500"),
            ("POD_SECURITY_GROUP_ENFORCING_MODE", "standard"),
            (
                "AWS_VPC_K8S_PLUGIN_LOG_FILE",
                "/var/log/a \"quoted\" dir\\x.log",
            ),
            ("AWS_VPC_K8S_PLUGIN_LOG_LEVEL", "info"),
            ("ENABLE_BANDWIDTH_PLUGIN", "true"),
            ("DISABLE_POD_V6", "true"),
        ]))
        .expect("settings");
        let out = render_conflist(&template, &s, &tpath).expect("render");
        let v: Value = serde_json::from_str(&out).expect("json");
        let aws = &v["plugins"][0];
        assert_eq!(aws["vethPrefix"], "veth");
        assert_eq!(aws["mtu"], "1500");
        assert_eq!(aws["podSGEnforcingMode"], "standard");
        assert_eq!(aws["pluginLogFile"], "/var/log/a \"quoted\" dir\\x.log");
        assert_eq!(aws["pluginLogLevel"], "info");
        let types: Vec<&str> = v["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .filter_map(|p| p["type"].as_str())
            .collect();
        assert_eq!(types, ["aws-cni", "portmap", "bandwidth", "tuning"]);
        assert_eq!(
            v["plugins"][3]["sysctl"]["net.ipv6.conf.all.disable_ipv6"],
            "1"
        );
    }

    #[test]
    fn templates_with_unknown_placeholders_or_broken_json_are_refused() {
        let s = Settings::from_env(&env(&[])).expect("defaults");
        let p = Path::new("t");
        let e = render_conflist(
            r#"{"plugins":[{"type":"aws-cni","nodeIP":"__NODEIP__"}]}"#,
            &s,
            p,
        )
        .expect_err("placeholder");
        assert!(e.to_string().contains("__NODEIP__"), "{e}");
        let e = render_conflist(r#"{"plugins":[{"type":"aws-cni""#, &s, p).expect_err("json");
        assert!(e.to_string().contains("not JSON"), "{e}");
        let e =
            render_conflist(r#"{"plugins":[{"type":"bridge"}]}"#, &s, p).expect_err("no aws-cni");
        assert!(e.to_string().contains("aws-cni"), "{e}");
        // Underscores that are not a placeholder are fine.
        assert_eq!(leftover_placeholder("a__b c__ __x__"), None);
        assert_eq!(
            leftover_placeholder("x __A_B__ y").as_deref(),
            Some("__A_B__")
        );
        assert_eq!(
            leftover_placeholder("x __AB1__ y").as_deref(),
            Some("__AB1__")
        );
    }

    #[test]
    fn sysctls_follow_the_anchors_init_container() {
        let s = Settings::from_env(&env(&[])).expect("defaults");
        let keys: Vec<(String, &str)> = sysctls("ens5", &s)
            .into_iter()
            .map(|x| (x.key, x.value))
            .collect();
        assert_eq!(
            keys,
            [
                ("net/ipv4/conf/ens5/rp_filter".to_string(), "2"),
                ("net/ipv4/tcp_early_demux".to_string(), "1")
            ]
        );
        let s = Settings::from_env(&env(&[
            ("DISABLE_TCP_EARLY_DEMUX", "true"),
            ("ENABLE_V6_EGRESS", "true"),
        ]))
        .expect("v6 egress");
        let all = sysctls("ens5", &s);
        assert!(all.contains(&Sysctl {
            key: "net/ipv4/tcp_early_demux".into(),
            value: "0"
        }));
        assert!(all.iter().any(|x| x.key == "net/ipv6/conf/ens5/accept_ra"));
        assert!(!all.iter().any(|x| x.key.ends_with("disable_ipv6")));
        let s = Settings::from_env(&env(&[("ENABLE_IPv6", "true")])).expect("v6");
        assert_eq!(sysctls("ens5", &s).len(), 5);
    }

    #[test]
    fn macs_are_normalized_and_checked() {
        assert_eq!(
            normalize_mac(" 0A:1b:2C:3d:4E:5f\n").expect("mac"),
            "0a:1b:2c:3d:4e:5f"
        );
        for bad in ["", "0a:1b:2c:3d:4e", "0a:1b:2c:3d:4e:5g", "0a1b2c3d4e5f"] {
            assert!(normalize_mac(bad).is_err(), "{bad}");
        }
    }
}
