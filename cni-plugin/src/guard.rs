//! Checks every attachment verb passes before it touches anything.
//!
//! - **The node's own namespace is never a pod's.** `CNI_NETNS` naming the plugin's own network namespace (or the
//!   machine's initial one, PID 1's) would make ADD create, address and route the "pod" interface in the node
//!   itself, and make DEL (or a failed ADD's undo) delete `CNI_IFNAME` there: the node's primary interface. ADD,
//!   DEL and CHECK refuse it with code 4 before they read anything else.
//! - **One verb at a time per attachment.** The spec forbids concurrent calls for one container, but a runtime that
//!   sends them anyway must not end with two pods on one address: ipamd answers repeated ADDs of one (network,
//!   container, ifname) with the same address, so a failing ADD's undo would release the address a sibling ADD
//!   has just set up, and a DEL racing an ADD leaves the ADD's rules behind. ADD and DEL of one attachment
//!   therefore hold an exclusive `flock` on one of [`LOCK_STRIPES`] files named by a hash of the key (a bounded
//!   set of files, never deleted, so there is no unlink race); unrelated containers share a stripe only by
//!   chance and then merely wait for each other. The lock is released when the process exits, however it exits.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cni_types::{CniEnv, CniError};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::PluginError;

/// Directory of the lock files.
pub const LOCK_DIR: &str = "/run/aws-cni/locks";
/// Number of lock files.
pub const LOCK_STRIPES: u64 = 64;

/// Refuses a `CNI_NETNS` that is the plugin's own or the initial network namespace. A path that does not exist is
/// left to the verb (ADD and CHECK report it, DEL has nothing to do there).
pub fn refuse_node_netns(env: &CniEnv) -> Result<(), PluginError> {
    let Some(netns) = env.netns.as_deref() else {
        return Ok(());
    };
    match datapath::is_own_or_initial_netns(netns) {
        Ok(false) => Ok(()),
        Ok(true) => Err(PluginError::Cni(CniError::invalid_env(format!(
            "CNI_NETNS {} is the node's own network namespace, never a pod's",
            netns.display()
        )))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PluginError::Cni(CniError::invalid_env(format!(
            "CNI_NETNS {}: {e}",
            netns.display()
        )))),
    }
}

/// An exclusive lock on one attachment, held until dropped.
#[derive(Debug)]
pub struct AttachmentLock {
    _lock: Option<Flock<File>>,
}

/// The lock file of an attachment in `dir`.
pub fn lock_path(dir: &Path, network: &str, container_id: &str, ifname: &str) -> PathBuf {
    // FNV-1a: stable across builds, so plugins of two versions (a rolling upgrade) pick the same file.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [network, container_id, ifname] {
        for b in part.bytes().chain(std::iter::once(0)) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    dir.join(format!("stripe-{:02}", h % LOCK_STRIPES))
}

/// Takes the attachment's lock, waiting at most `timeout` (then: try again later). A lock directory that cannot
/// be created or opened is logged and the verb goes on unlocked: a read-only /run must not stop every pod.
// The plugin is a process that lives for one CNI call and has no clock seam (it does not link ec2-api): the
// bounded wait for the attachment lock reads the monotonic clock directly.
#[allow(clippy::disallowed_methods)]
pub fn lock_attachment(
    env: &CniEnv,
    network: &str,
    timeout: Duration,
) -> Result<AttachmentLock, PluginError> {
    let (Some(container), Some(ifname)) = (&env.container_id, &env.ifname) else {
        return Ok(AttachmentLock { _lock: None });
    };
    let dir = Path::new(LOCK_DIR);
    let path = lock_path(dir, network, container, ifname);
    let file = std::fs::create_dir_all(dir).and_then(|()| {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
    });
    let mut file = match file {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open the attachment lock; going on unlocked");
            return Ok(AttachmentLock { _lock: None });
        }
    };
    let deadline = Instant::now() + timeout;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(AttachmentLock { _lock: Some(lock) }),
            Err((f, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(PluginError::Cni(CniError::new(
                    cni_types::codes::TRY_AGAIN_LATER,
                    format!(
                        "another ADD or DEL of container {container} ({ifname}) is still running after {timeout:?}"
                    ),
                )))
            }
            Err((_, errno)) => {
                tracing::warn!(path = %path.display(), %errno, "cannot lock the attachment; going on unlocked");
                return Ok(AttachmentLock { _lock: None });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_attachment_always_maps_to_one_stripe_of_a_bounded_set() {
        let dir = Path::new("/x");
        let a = lock_path(dir, "aws-cni", "c1", "eth0");
        assert_eq!(a, lock_path(dir, "aws-cni", "c1", "eth0"));
        let mut names = std::collections::BTreeSet::new();
        for i in 0..1000 {
            names.insert(lock_path(dir, "aws-cni", &format!("c{i}"), "eth0"));
        }
        assert!(names.len() as u64 <= LOCK_STRIPES);
        assert!(names.len() > 1);
    }
}
