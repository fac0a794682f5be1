//! Writing `/proc/sys/net/...` in a given network namespace.
//!
//! The kernel has no netlink request for an interface's IPv6 settings (`disable_ipv6`, `accept_dad`,
//! `accept_ra`, `forwarding`): they live only under `/proc/sys/net/ipv6/conf/<ifname>/`, which shows the namespace
//! of the thread that opens the file. Writes for another namespace therefore run on a short-lived helper thread
//! that entered it ([`crate::in_netns_file`]), all of them on one thread, so no caller thread ever changes
//! namespace.
//!
//! A setting is written only when the file holds another value ([`set`] reads it first). Reading is cheap, but
//! some writes are not: `forwarding` and `disable_ipv6` take the rtnl lock, and when another process holds it
//! the kernel restarts the write from user space (`rtnl_trylock`, then `restart_syscall`) until it gets it, so
//! a pod's ADD spun on the CPU while its neighbours' netlink requests held the lock. A new veth already carries
//! the namespace's `default` values, usually the ones we want (`forwarding` 0, `accept_redirects` 1).

use std::fs::File;
use std::path::Path;

use crate::{in_netns_file, NetlinkError};

/// One setting: a key relative to `/proc/sys` (`net/ipv6/conf/eth0/accept_dad`) and its value.
pub type Setting = (String, &'static str);

/// The key of an IPv6 interface setting: `net/ipv6/conf/<ifname>/<name>`.
pub fn ipv6_conf(ifname: &str, name: &str) -> String {
    format!("net/ipv6/conf/{ifname}/{name}")
}

/// The key of an IPv4 interface setting: `net/ipv4/conf/<ifname>/<name>`.
pub fn ipv4_conf(ifname: &str, name: &str) -> String {
    format!("net/ipv4/conf/{ifname}/{name}")
}

/// Gives every setting its value in the caller's namespace (`netns` None) or in `netns`, writing those that
/// hold another; stops at the first failure.
pub fn set(netns: Option<&File>, settings: &[Setting]) -> Result<(), NetlinkError> {
    match netns {
        None => write_all(settings),
        Some(file) => in_netns_file(file, Path::new("(pod namespace)"), || write_all(settings)),
    }
}

/// Reads one setting in the caller's namespace (trimmed), `None` when it does not exist.
pub fn get(key: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(key))
        .ok()
        .map(|s| s.trim().to_string())
}

fn write_all(settings: &[Setting]) -> Result<(), NetlinkError> {
    settings
        .iter()
        .try_for_each(|(key, value)| ensure(key, value))
}

/// Writes `value` to the setting `key` (relative to `/proc/sys`) in the caller's namespace unless it holds it
/// already (see the module docs). A setting that cannot be read is written, so its error is the write's.
pub fn ensure(key: &str, value: &str) -> Result<(), NetlinkError> {
    let path = Path::new("/proc/sys").join(key);
    if std::fs::read_to_string(&path).is_ok_and(|now| now.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|source| NetlinkError::Sysctl {
        key: key.to_string(),
        value: value.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_interface() {
        assert_eq!(
            ipv6_conf("eth0", "accept_dad"),
            "net/ipv6/conf/eth0/accept_dad"
        );
        assert_eq!(
            ipv4_conf("all", "forwarding"),
            "net/ipv4/conf/all/forwarding"
        );
    }

    /// A setting that already holds its value is not written: `kernel/ostype` is read-only, so only the
    /// write of another value fails.
    #[test]
    fn a_setting_already_held_is_not_written() {
        let now = get("kernel/ostype").expect("kernel/ostype");
        ensure("kernel/ostype", &now).expect("no write for the value it holds");
        let err = ensure("kernel/ostype", "not-linux").expect_err("read-only");
        assert!(matches!(err, NetlinkError::Sysctl { .. }), "{err}");
    }

    /// In a fresh namespace (needs root): a write lands there, not in ours.
    #[test]
    fn writes_land_in_the_namespace_given() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to create a network namespace");
            return;
        }
        let ns = crate::new_anonymous_netns().expect("netns");
        let ours = get("net/ipv6/conf/lo/accept_dad");
        let key = ipv6_conf("lo", "accept_dad");
        let want = if ours.as_deref() == Some("0") {
            "1"
        } else {
            "0"
        };
        set(Some(&ns), &[(key.clone(), want)]).expect("set");
        let theirs = in_netns_file(&ns, Path::new("test"), || Ok(get(&key))).expect("read");
        assert_eq!(theirs.as_deref(), Some(want));
        assert_eq!(get(&key), ours, "our namespace is untouched");
    }
}
