//! The node's sysctls (those the anchor's init container sets) and finding the primary interface by its MAC.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{io_err, InstallError, Settings};

/// One sysctl: `key` is the path under `/proc/sys`, e.g. `net/ipv4/conf/eth0/rp_filter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    pub key: String,
    pub value: &'static str,
}

/// The sysctls the anchor's init container sets, for a node whose primary interface is `primary`, in the order they are set.
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
