//! The host filesystem as ipamd writes it: one way to replace a file, and the modes files get.
//!
//! **Replacing a file** ([`replace`], and its two shapes [`write_atomic`] and [`copy_atomic`]): the new content
//! goes to a temporary file in the destination's directory, which is fsynced, given its mode, renamed over the
//! destination, and the directory is fsynced so the rename survives a power loss. A reader (a runtime listing the
//! CNI directory, ipamd after a crash, the anchor after a rollback) sees the old file or the whole new one, never
//! a prefix; a binary running while it is replaced keeps its old inode (no `ETXTBSY`).
//!
//! **Never through a planted link.** The directories ipamd writes to (`/var/run/aws-node`, the host's CNI
//! directories) may be writable by others than ipamd, who could plant a symlink where the temporary file goes:
//! opening it with `O_CREAT|O_TRUNC` would make root truncate and overwrite the link's target (`/etc/shadow`, for
//! one). So whatever is at the temporary name is unlinked first (that removes a link, never its target), and the
//! temporary file is then created with `O_CREAT|O_EXCL|O_NOFOLLOW`: if anything reappeared there meanwhile, the
//! open fails instead of following it. The rename replaces a symlink at the destination itself, not its target.
//!
//! **Modes.** State files (the checkpoint, the simulator's state: container IDs, pod names, addresses) are
//! [`STATE_FILE_MODE`] (0600); logs are [`LOG_FILE_MODE`] (0640, readable by the node's log collector group);
//! installed files get the mode the caller asks for (a plugin binary keeps its source's mode).
//!
//! **Logs never block a request** ([`nonblocking`]): a bounded queue and one writer thread; a line that finds
//! the queue full is dropped and counted.

pub mod nonblocking;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of state files: owner only.
pub const STATE_FILE_MODE: u32 = 0o600;
/// Mode of log files: owner, and the group (a log collector) may read.
pub const LOG_FILE_MODE: u32 = 0o640;

/// A failed file operation: what was being done, to which path, and the OS's error.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct HostFsError {
    /// What was being done (`creating`, `writing`, `renaming into place`, ...).
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl From<HostFsError> for std::io::Error {
    /// The OS error's kind, with the action and the path in the message.
    fn from(e: HostFsError) -> std::io::Error {
        std::io::Error::new(e.source.kind(), e.to_string())
    }
}

fn err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HostFsError {
    let path = path.to_path_buf();
    move |source| HostFsError {
        action,
        path,
        source,
    }
}

/// The temporary name [`write_atomic`] uses for `path`: `<name>.tmp` beside it.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Opens `tmp` for a new file: whatever is there is unlinked first, then it is created exclusively, without
/// following a symlink (see the module docs).
fn create_temp(tmp: &Path) -> Result<File, HostFsError> {
    match std::fs::remove_file(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // Not removable (a directory, say): the exclusive create below reports it.
        Err(_) => {}
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(0o600)
        .open(tmp)
        .map_err(err("creating", tmp))
}

/// Replaces `dest` atomically and durably with what `fill` writes, through the temporary file `tmp` (in the same
/// directory as `dest`), and gives it `mode`. On failure the temporary file is removed and `dest` is untouched.
pub fn replace(
    dest: &Path,
    tmp: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File, &Path) -> Result<(), HostFsError>,
) -> Result<(), HostFsError> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut f = create_temp(tmp)?;
    let result = (|| {
        fill(&mut f, tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(err("setting the mode of", tmp))?;
        f.sync_all().map_err(err("syncing", tmp))?;
        std::fs::rename(tmp, dest).map_err(err("renaming into place", dest))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err("syncing", dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// Replaces `path` with `bytes` (mode `mode`) through `<name>.tmp`; creates the directory if needed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), HostFsError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err("creating", dir))?;
    }
    write_via(path, &temp_path(path), bytes, mode)
}

/// Replaces `dest` with `bytes` (mode `mode`) through the temporary file `tmp`.
pub fn write_via(dest: &Path, tmp: &Path, bytes: &[u8], mode: u32) -> Result<(), HostFsError> {
    replace(dest, tmp, mode, |f, tmp| {
        f.write_all(bytes).map_err(err("writing", tmp))
    })
}

/// Copies `src` over `dest` through `tmp`, keeping `src`'s permission bits.
pub fn copy_atomic(src: &Path, dest: &Path, tmp: &Path) -> Result<(), HostFsError> {
    let mut from = File::open(src).map_err(err("opening", src))?;
    let mode = from
        .metadata()
        .map_err(err("reading the mode of", src))?
        .permissions()
        .mode()
        & 0o7777;
    replace(dest, tmp, mode, |f, tmp| {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = from.read(&mut buf).map_err(err("reading", src))?;
            if n == 0 {
                return Ok(());
            }
            f.write_all(&buf[..n]).map_err(err("writing", tmp))?;
        }
    })
}

/// Open options for appending to a log file: created [`LOG_FILE_MODE`], never through a symlink.
pub fn log_open_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true)
        .create(true)
        .append(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(LOG_FILE_MODE);
    o
}

/// Opens (creating if needed) the log file `path` for appending, and brings an older, wider mode down to
/// [`LOG_FILE_MODE`].
pub fn open_log(path: &Path) -> Result<File, HostFsError> {
    let f = log_open_options()
        .open(path)
        .map_err(err("opening", path))?;
    let mode = f
        .metadata()
        .map_err(err("reading the mode of", path))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & !LOG_FILE_MODE != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(LOG_FILE_MODE))
            .map_err(err("setting the mode of", path))?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hostfs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn writes_replace_the_file_with_the_mode_asked() {
        let d = dir("write");
        let p = d.join("sub/ipam.json");
        write_atomic(&p, b"one", STATE_FILE_MODE).expect("write");
        write_atomic(&p, b"two", STATE_FILE_MODE).expect("rewrite");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        assert_eq!(mode(&p), 0o600);
        assert!(!temp_path(&p).exists(), "no temporary file left");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_symlink_at_the_temporary_name_is_removed_not_followed() {
        let d = dir("symlink");
        let target = d.join("precious");
        std::fs::write(&target, b"do not touch").expect("target");
        let p = d.join("ipam.json");
        std::os::unix::fs::symlink(&target, temp_path(&p)).expect("plant");
        write_atomic(&p, b"{}", STATE_FILE_MODE).expect("write");
        assert_eq!(std::fs::read(&target).expect("target"), b"do not touch");
        assert_eq!(std::fs::read(&p).expect("file"), b"{}");
        assert!(!std::fs::symlink_metadata(&p)
            .expect("stat")
            .file_type()
            .is_symlink());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn something_unremovable_at_the_temporary_name_fails_the_write_and_keeps_the_file() {
        let d = dir("blocked");
        let p = d.join("ipam.json");
        write_atomic(&p, b"old", STATE_FILE_MODE).expect("write");
        std::fs::create_dir_all(temp_path(&p)).expect("mkdir");
        let e = write_atomic(&p, b"new", STATE_FILE_MODE).expect_err("blocked");
        assert_eq!(e.action, "creating");
        assert_eq!(std::fs::read(&p).expect("file"), b"old");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn copies_keep_the_source_mode() {
        let d = dir("copy");
        let src = d.join("aws-cni");
        std::fs::write(&src, b"\x7fELF").expect("src");
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let dest = d.join("bin-aws-cni");
        copy_atomic(&src, &dest, &d.join(".aws-cni.tmp")).expect("copy");
        assert_eq!(std::fs::read(&dest).expect("dest"), b"\x7fELF");
        assert_eq!(mode(&dest), 0o755);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn logs_are_0640_and_older_wider_ones_are_narrowed() {
        let d = dir("log");
        let p = d.join("ipamd.log");
        drop(open_log(&p).expect("open"));
        assert_eq!(mode(&p), LOG_FILE_MODE);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        drop(open_log(&p).expect("reopen"));
        assert_eq!(mode(&p), LOG_FILE_MODE);
        let _ = std::fs::remove_dir_all(&d);
    }
}
