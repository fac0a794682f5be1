//! The egress addresses: a file-backed allocator over one range, in host-local's on-disk layout.
//!
//! `<dataDir>/<network name>/` holds one file per address in use, named by the address and containing
//! `<container ID>\r\n<ifname>`, and `last_reserved_ip.0` with the last address handed out; `lock` is flock'ed for
//! every change. That is the layout the anchor's egress plugin leaves through the host-local binary it executes,
//! so a node moved from the anchor keeps its pods' egress addresses (and ours could be read by host-local).
//!
//! The range is the subnet minus its network address, its gateway (the first address, which the host side of
//! every egress veth carries) and, in IPv4, its broadcast address. The search starts after the last address
//! handed out and wraps, so a released address is not reused at once. An attachment asking again gets the
//! address it holds (ADD is idempotent).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use nix::fcntl::{Flock, FlockArg};

/// What can go wrong with the state directory.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("egress address state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("egress address state {path}: cannot lock: {source}")]
    Lock { path: PathBuf, source: nix::Error },
    #[error("no free egress address left in {0}")]
    Exhausted(IpNetwork),
}

/// The allocator of one network's egress range.
#[derive(Debug, Clone)]
pub struct Allocator {
    dir: PathBuf,
    subnet: IpNetwork,
}

/// One address in use: who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

const LINE_BREAK: &str = "\r\n";
const LAST_RESERVED: &str = "last_reserved_ip.0";

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v4: bool, n: u128) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// The first and last address that may be handed out, and the gateway.
pub fn bounds(subnet: IpNetwork) -> (IpAddr, IpAddr, IpAddr) {
    let v4 = subnet.is_ipv4();
    let net = to_u128(subnet.network());
    let last = match subnet {
        IpNetwork::V4(n) => u128::from(u32::from(n.broadcast())) - 1,
        IpNetwork::V6(n) => {
            let host = 128 - u32::from(n.prefix());
            net + ((1u128 << host) - 1)
        }
    };
    (
        from_u128(v4, net + 2),
        from_u128(v4, last),
        from_u128(v4, net + 1),
    )
}

/// The gateway of `subnet`: its first address, carried by the host end of every egress veth.
pub fn gateway(subnet: IpNetwork) -> IpAddr {
    bounds(subnet).2
}

impl Allocator {
    /// The allocator for `network` under `data_dir`.
    pub fn new(data_dir: &Path, network: &str, subnet: IpNetwork) -> Allocator {
        Allocator {
            dir: data_dir.join(network),
            subnet,
        }
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> AllocError + '_ {
        let path = path.to_owned();
        move |source| AllocError::Io {
            path: path.clone(),
            source,
        }
    }

    fn lock(&self) -> Result<Flock<File>, AllocError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let path = self.dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(self.io(&path))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, source)| AllocError::Lock { path, source })
    }

    /// Every address in use, with its holder (unreadable or foreign files are skipped).
    pub fn leases(&self) -> Result<Vec<Lease>, AllocError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let mut parts = text.split(LINE_BREAK);
            let container_id = parts.next().unwrap_or_default().trim().to_string();
            let ifname = parts.next().unwrap_or_default().trim().to_string();
            out.push(Lease {
                ip,
                container_id,
                ifname,
            });
        }
        out.sort_by_key(|l| to_u128(l.ip));
        Ok(out)
    }

    /// The address `(container_id, ifname)` holds, if any.
    pub fn held_by(&self, container_id: &str, ifname: &str) -> Result<Option<IpAddr>, AllocError> {
        Ok(self
            .leases()?
            .into_iter()
            .find(|l| l.container_id == container_id && l.ifname == ifname)
            .map(|l| l.ip))
    }

    /// Hands `(container_id, ifname)` an address: the one it holds, else the next free one after the last handed
    /// out.
    pub fn allocate(&self, container_id: &str, ifname: &str) -> Result<IpAddr, AllocError> {
        let _lock = self.lock()?;
        let leases = self.leases()?;
        if let Some(l) = leases
            .iter()
            .find(|l| l.container_id == container_id && l.ifname == ifname)
        {
            return Ok(l.ip);
        }
        let used: HashSet<u128> = leases.iter().map(|l| to_u128(l.ip)).collect();
        let (first, last, _) = bounds(self.subnet);
        let (first, last) = (to_u128(first), to_u128(last));
        let v4 = self.subnet.is_ipv4();
        let last_path = self.dir.join(LAST_RESERVED);
        let after = std::fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
            .map(to_u128)
            .filter(|n| (first..=last).contains(n));
        let size = last - first + 1;
        let start = after
            .map(|n| if n >= last { first } else { n + 1 })
            .unwrap_or(first);
        for i in 0..size {
            let n = first + (start - first + i) % size;
            if used.contains(&n) {
                continue;
            }
            let ip = from_u128(v4, n);
            let path = self.dir.join(ip.to_string());
            let mut f = match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(self.io(&path)(e)),
            };
            let body = format!("{container_id}{LINE_BREAK}{ifname}");
            if let Err(e) = f.write_all(body.as_bytes()).and_then(|()| f.sync_all()) {
                let _ = std::fs::remove_file(&path);
                return Err(self.io(&path)(e));
            }
            // Only a hint for the next search: losing it costs nothing but reuse order.
            let _ = std::fs::write(&last_path, ip.to_string());
            return Ok(ip);
        }
        Err(AllocError::Exhausted(self.subnet))
    }

    /// Releases what `(container_id, ifname)` holds; returns the address, `None` when it held none.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Option<IpAddr>, AllocError> {
        let _lock = self.lock()?;
        let Some(lease) = self
            .leases()?
            .into_iter()
            .find(|l| l.container_id == container_id && l.ifname == ifname)
        else {
            return Ok(None);
        };
        let path = self.dir.join(lease.ip.to_string());
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(Some(lease.ip)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(lease.ip)),
            Err(e) => Err(self.io(&path)(e)),
        }
    }

    /// Releases every lease whose holder is not in `valid` (CNI GC); returns what was released.
    pub fn release_all_but(
        &self,
        valid: &HashSet<(String, String)>,
    ) -> Result<Vec<Lease>, AllocError> {
        let _lock = self.lock()?;
        let mut out = Vec::new();
        for l in self.leases()? {
            if valid.contains(&(l.container_id.clone(), l.ifname.clone())) {
                continue;
            }
            let path = self.dir.join(l.ip.to_string());
            match std::fs::remove_file(&path) {
                Ok(()) => out.push(l),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io(&path)(e)),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn dir(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("egress-alloc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }

    #[test]
    fn the_range_skips_network_gateway_and_broadcast() {
        let (first, last, gw) = bounds("169.254.172.0/22".parse().expect("net"));
        assert_eq!(first.to_string(), "169.254.172.2");
        assert_eq!(last.to_string(), "169.254.175.254");
        assert_eq!(gw.to_string(), "169.254.172.1");
        let (first, last, gw) = bounds("fd00::ac:00/118".parse().expect("net"));
        assert_eq!(first.to_string(), "fd00::ac:2");
        assert_eq!(last.to_string(), "fd00::ac:3ff");
        assert_eq!(gw.to_string(), "fd00::ac:1");
    }

    #[test]
    fn addresses_are_unique_idempotent_and_in_host_locals_layout() {
        let d = dir("layout");
        let a = Allocator::new(&d.0, "aws-cni", "169.254.172.0/30".parse().expect("net"));
        // A /30 has exactly one address to give: .2 (.1 is the gateway, .3 broadcast).
        let ip = a.allocate("c1", "eth0").expect("first");
        assert_eq!(ip.to_string(), "169.254.172.2");
        assert_eq!(
            a.allocate("c1", "eth0").expect("again"),
            ip,
            "ADD is idempotent"
        );
        assert!(matches!(
            a.allocate("c2", "eth0"),
            Err(AllocError::Exhausted(_))
        ));
        let body = std::fs::read_to_string(d.0.join("aws-cni/169.254.172.2")).expect("file");
        assert_eq!(body, "c1\r\neth0");
        assert_eq!(a.held_by("c1", "eth0").expect("held"), Some(ip));
        assert_eq!(a.release("c1", "eth0").expect("release"), Some(ip));
        assert_eq!(a.release("c1", "eth0").expect("again"), None);
        assert_eq!(a.allocate("c2", "eth0").expect("free again"), ip);
    }

    #[test]
    fn the_search_goes_on_after_the_last_address_handed_out() {
        let d = dir("order");
        let a = Allocator::new(&d.0, "aws-cni", "fd00::ac:00/124".parse().expect("net"));
        let x = a.allocate("c1", "eth0").expect("1");
        a.release("c1", "eth0").expect("rel");
        let y = a.allocate("c2", "eth0").expect("2");
        assert_ne!(x, y, "a released address is not reused at once");
    }

    #[test]
    fn gc_releases_all_but_the_valid() {
        let d = dir("gc");
        let a = Allocator::new(&d.0, "aws-cni", "169.254.172.0/22".parse().expect("net"));
        a.allocate("keep", "eth0").expect("keep");
        a.allocate("drop", "eth0").expect("drop");
        let valid: HashSet<(String, String)> = [("keep".to_string(), "eth0".to_string())].into();
        let gone = a.release_all_but(&valid).expect("gc");
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].container_id, "drop");
        assert_eq!(a.leases().expect("leases").len(), 1);
    }
}
