//! Installing files on the host: the plugin binaries and the conflist, each replaced atomically through
//! [`hostfs`].

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{io_err, InstallError};

/// Our plugin, next to the executable in the image.
pub const AWS_CNI: &str = "aws-cni";
/// Directory (under the source directory) holding the upstream plugins.
pub const PLUGINS_DIR: &str = "cni-plugins";
/// The upstream containernetworking plugins installed with aws-cni: portmap is chained by the conflist, bandwidth
/// and tuning by the optional settings, loopback and host-local are what the anchor's init container ships for
/// runtimes and other plugins that expect them.
pub const UPSTREAM_PLUGINS: [&str; 5] =
    ["portmap", "loopback", "host-local", "bandwidth", "tuning"];

/// The hidden temporary name beside `dir/name` (per process, so two installers never share one).
fn temp_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.tmp.{}", std::process::id()))
}

/// Writes `bytes` to `dir/name` atomically with `mode` ([`hostfs::write_via`]).
pub fn atomic_write(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<PathBuf, InstallError> {
    let dest = dir.join(name);
    hostfs::write_via(&dest, &temp_in(dir, name), bytes, mode)?;
    Ok(dest)
}

/// Copies `src` to `dir/name` atomically, keeping `src`'s permission bits ([`hostfs::copy_atomic`]).
pub fn atomic_copy(src: &Path, dir: &Path, name: &str) -> Result<PathBuf, InstallError> {
    let dest = dir.join(name);
    hostfs::copy_atomic(src, &dest, &temp_in(dir, name))?;
    Ok(dest)
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
