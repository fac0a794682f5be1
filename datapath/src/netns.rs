//! Network namespace identity and the places that enter a namespace: [`in_netns_file`] on a helper thread that
//! ends with the call (for daemons, where a thread left in a foreign namespace would go on serving), and
//! [`in_netns_file_here`] on the calling thread and back (for the CNI plugin's ADD, one short process, where a
//! thread's start and end cost more than the two `setns` calls).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::NetlinkError;

/// Identity of a network namespace: (device, inode) of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

fn id_of(path: &Path) -> std::io::Result<NetnsId> {
    let md = std::fs::metadata(path)?;
    Ok(NetnsId {
        dev: md.dev(),
        ino: md.ino(),
    })
}

/// The namespace the calling thread is in.
pub fn current_netns_id() -> std::io::Result<NetnsId> {
    id_of(Path::new("/proc/thread-self/ns/net"))
}

/// Inode the kernel gives its initial network namespace (`PROC_NET_INIT_INO` in include/linux/proc_ns.h).
pub const PROC_NET_INIT_INO: u64 = 0xEFFF_FFF9;

/// True when the calling thread is in the machine's real network namespace: the kernel's initial one, or the one
/// PID 1 lives in (when we may look at PID 1, which sandboxes often forbid, and PID 1 is not this process: as the
/// first process of a container's PID namespace, PID 1 is us and tells nothing). The simulated EC2 node refuses to
/// run there.
pub fn is_initial_netns() -> std::io::Result<bool> {
    let me = current_netns_id()?;
    if me.ino == PROC_NET_INIT_INO {
        return Ok(true);
    }
    if std::process::id() == 1 {
        return Ok(false);
    }
    match id_of(Path::new("/proc/1/ns/net")) {
        Ok(init) => Ok(init == me),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(false),
        Err(e) => Err(e),
    }
}

/// True when the namespace at `path` is the calling thread's own or the machine's initial one (the kernel's
/// initial namespace, or PID 1's when we may look at it). A pod's namespace is never either: the CNI plugin refuses
/// such a `CNI_NETNS` before touching anything, since the "pod" interface it would create, address or delete
/// would be the node's own (its primary interface, its default route).
pub fn is_own_or_initial_netns(path: &Path) -> std::io::Result<bool> {
    let target = id_of(path)?;
    if target.ino == PROC_NET_INIT_INO || target == current_netns_id()? {
        return Ok(true);
    }
    match id_of(Path::new("/proc/1/ns/net")) {
        Ok(init) => Ok(init == target),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs `f` on a fresh OS thread that has entered the namespace at `path`, and returns its result.
///
/// The thread ends when `f` returns, so no long-lived thread is ever left in a foreign namespace. Used to create
/// sockets (which stay bound to the namespace they were created in).
pub fn in_netns<T: Send>(
    path: &Path,
    f: impl FnOnce() -> Result<T, NetlinkError> + Send,
) -> Result<T, NetlinkError> {
    let file = File::open(path).map_err(|source| NetlinkError::NetnsOpen {
        path: path.to_owned(),
        source,
    })?;
    in_netns_file(&file, path, f)
}

/// [`in_netns`] for a namespace already open as `file`; `label` names it in errors.
pub fn in_netns_file<T: Send>(
    file: &File,
    label: &Path,
    f: impl FnOnce() -> Result<T, NetlinkError> + Send,
) -> Result<T, NetlinkError> {
    let path = label;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(file, CloneFlags::CLONE_NEWNET).map_err(|source| NetlinkError::NetnsEnter {
                path: path.to_owned(),
                source,
            })?;
            f()
        })
        .join()
        .map_err(|_| NetlinkError::HelperThread)?
    })
}

/// Runs `f` on the calling thread inside the namespace `file` (`label` names it in errors), then returns the
/// thread to the namespace it was in. Only the calling thread moves (`setns` is per thread); `f` must not await
/// or yield to other work, so nothing else runs on the thread meanwhile.
///
/// When the way back fails ([`NetlinkError::NetnsReturn`], which needs the kernel to refuse a namespace the
/// thread was just in), the thread stays in `file`'s namespace: the caller must give up rather than open sockets
/// or `/proc/sys/net` files on it again. For daemons use [`in_netns_file`].
pub fn in_netns_file_here<T>(
    file: &File,
    label: &Path,
    f: impl FnOnce() -> Result<T, NetlinkError>,
) -> Result<T, NetlinkError> {
    let own = File::open("/proc/thread-self/ns/net").map_err(|source| NetlinkError::NetnsOpen {
        path: PathBuf::from("/proc/thread-self/ns/net"),
        source,
    })?;
    setns(file, CloneFlags::CLONE_NEWNET).map_err(|source| NetlinkError::NetnsEnter {
        path: label.to_owned(),
        source,
    })?;
    let out = f();
    setns(&own, CloneFlags::CLONE_NEWNET).map_err(|source| NetlinkError::NetnsReturn {
        path: label.to_owned(),
        source,
    })?;
    out
}

/// Creates a namespace that has no name: it lives as long as the returned file (and anything inside it, such as
/// one end of a veth pair) is open. When the last reference goes, the kernel destroys it and every veth pair with
/// an end inside it, so nothing is left behind even after a crash.
pub fn new_anonymous_netns() -> Result<File, NetlinkError> {
    let label = Path::new("(new anonymous namespace)");
    std::thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|source| NetlinkError::NetnsEnter {
                path: label.to_owned(),
                source,
            })?;
            File::open("/proc/thread-self/ns/net").map_err(|source| NetlinkError::NetnsOpen {
                path: label.to_owned(),
                source,
            })
        })
        .join()
        .map_err(|_| NetlinkError::HelperThread)?
    })
}

/// Directory of named namespaces (as `ip netns` uses it).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Creates a named namespace at `/run/netns/<name>` (like `ip netns add`) and returns its path.
pub fn create_named_netns(name: &str) -> Result<PathBuf, NetlinkError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(NetlinkError::NetnsOpen {
            path: PathBuf::from(name),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid namespace name"),
        });
    }
    let dir = Path::new(NETNS_RUN_DIR);
    let path = dir.join(name);
    let io_err = |source| NetlinkError::NetnsOpen {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io_err)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err)?;
    let target = path.clone();
    let made = std::thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|source| NetlinkError::NetnsEnter {
                path: target.clone(),
                source,
            })?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|source| NetlinkError::NetnsEnter {
                path: target.clone(),
                source,
            })
        })
        .join()
        .map_err(|_| NetlinkError::HelperThread)?
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Deletes a named namespace created by [`create_named_netns`] (or `ip netns add`). Missing is fine.
pub fn delete_named_netns(name: &str) -> Result<(), NetlinkError> {
    let path = Path::new(NETNS_RUN_DIR).join(name);
    if !path.exists() {
        return Ok(());
    }
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(source) => return Err(NetlinkError::NetnsEnter { path, source }),
    }
    std::fs::remove_file(&path).map_err(|source| NetlinkError::NetnsOpen { path, source })
}

/// Moves the calling thread into the namespace at `path`. Only for a process's `main` before it starts any other
/// thread (threads created afterwards inherit the namespace), e.g. `ipamd run --netns PATH`.
pub fn enter_netns(path: &Path) -> Result<(), NetlinkError> {
    let file = File::open(path).map_err(|source| NetlinkError::NetnsOpen {
        path: path.to_owned(),
        source,
    })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetlinkError::NetnsEnter {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_netns_file_here_runs_inside_and_returns_the_thread_to_its_own_namespace() {
        let own = current_netns_id().expect("own netns");
        let other = new_anonymous_netns().expect("anonymous netns (needs root)");
        let other_id = NetnsId {
            dev: other.metadata().expect("stat").dev(),
            ino: other.metadata().expect("stat").ino(),
        };
        assert_ne!(own, other_id);
        let inside = in_netns_file_here(&other, Path::new("test"), || {
            current_netns_id().map_err(NetlinkError::Socket)
        })
        .expect("entered and came back");
        assert_eq!(inside, other_id, "f ran in the other namespace");
        assert_eq!(
            current_netns_id().expect("own netns"),
            own,
            "and the thread came back"
        );
        // An error inside still brings the thread back, and is the one returned.
        let err = in_netns_file_here(&other, Path::new("test"), || -> Result<(), _> {
            Err(NetlinkError::LinkNotFound("x".into()))
        })
        .expect_err("f's error");
        assert!(matches!(err, NetlinkError::LinkNotFound(_)), "{err}");
        assert_eq!(current_netns_id().expect("own netns"), own);
        // A file that is not a namespace is refused before anything moves.
        let not_ns = File::open("/proc/self/status").expect("open");
        let err = in_netns_file_here(&not_ns, Path::new("/proc/self/status"), || Ok(()))
            .expect_err("not a namespace");
        assert!(matches!(err, NetlinkError::NetnsEnter { .. }), "{err}");
        assert_eq!(current_netns_id().expect("own netns"), own);
    }
}
