//! Names and addresses derived for pods, and the VPC's router address of a subnet.

use std::fmt;
use std::net::Ipv4Addr;

use sha1::{Digest, Sha1};

/// The host-side veth name: `prefix` + the first 11 hex characters of SHA-1("<namespace>.<podname>").
///
/// This is the anchor's scheme, kept bit for bit: Calico and other tools find a pod's host interface by
/// recomputing it. `index` > 0 (extra interfaces of multi-NIC pods) appends ".<index>" to the pod name first.
/// The result is at most 15 bytes (IFNAMSIZ - 1) for prefixes of up to 4 characters.
pub fn host_veth_name(prefix: &str, namespace: &str, pod_name: &str, index: usize) -> String {
    let mut hasher = Sha1::new();
    hasher.update(namespace.as_bytes());
    hasher.update(b".");
    hasher.update(pod_name.as_bytes());
    if index > 0 {
        hasher.update(format!(".{index}").as_bytes());
    }
    let digest = hasher.finalize();
    let mut name = String::with_capacity(prefix.len() + 11);
    name.push_str(prefix);
    for byte in digest.iter() {
        name.push_str(&format!("{byte:02x}"));
    }
    name.truncate(prefix.len() + 11);
    name
}

/// A VPC subnet's router: the network address + 1 (the ENI's default gateway).
pub fn subnet_gateway(subnet: ipnetwork::Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

/// True for the names [`host_veth_name`] gives the first interface of a pod: `prefix` followed by exactly 11
/// lower-case hex digits. Whatever deletes host links on a pod's behalf (DEL, GC, ipamd's veth reaper) deletes
/// nothing else: not the node's interfaces, not a bridge or an ENI that happens to share the prefix.
pub fn is_pod_veth_name(name: &str, prefix: &str) -> bool {
    !prefix.is_empty()
        && name.strip_prefix(prefix).is_some_and(|h| {
            h.len() == 11
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
}

/// A 48-bit Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Parses `aa:bb:cc:dd:ee:ff` (case-insensitive).
    pub fn parse(s: &str) -> Option<MacAddr> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next()?;
            if part.len() != 2 {
                return None;
            }
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(MacAddr(out))
    }

    /// From the raw bytes netlink reports; `None` unless exactly 6 bytes.
    pub fn from_slice(b: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(b).ok().map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// A random locally administered unicast MAC (the host end of a pod veth gets one, as in the anchor).
pub fn random_mac() -> MacAddr {
    use std::hash::{BuildHasher, Hasher};
    // std's `RandomState` draws its keys from the kernel (getrandom) once per thread and changes them on every
    // call, so its hash of nothing is 64 unpredictable bits. Cheaper than `rand`'s thread generator, whose seeding
    // in a statically linked plugin opens /dev/random and /dev/urandom on every ADD.
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let mut b = [0u8; 6];
    b.copy_from_slice(&bits.to_le_bytes()[..6]);
    b[0] = (b[0] & 0xfe) | 0x02;
    MacAddr(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subnet_gateway_is_the_network_address_plus_one() {
        let subnet: ipnetwork::Ipv4Network = "10.0.16.0/20".parse().expect("cidr");
        assert_eq!(subnet_gateway(subnet), Ipv4Addr::new(10, 0, 16, 1));
    }

    #[test]
    fn veth_name_matches_sha1_of_namespace_dot_pod() {
        // Independent oracle: `printf default.nginx | sha1sum` = c440f455693b69cd...
        let name = host_veth_name("eni", "default", "nginx", 0);
        assert_eq!(name, "enic440f455693");
    }

    #[test]
    fn veth_name_index_changes_hash_and_fits_ifnamsiz() {
        let a = host_veth_name("eni", "ns", "pod", 0);
        let b = host_veth_name("eni", "ns", "pod", 1);
        assert_ne!(a, b);
        assert!(host_veth_name("vlan", "ns", "pod", 0).len() <= 15);
    }

    #[test]
    fn mac_round_trip_and_rejects_garbage() {
        let m = MacAddr::parse("0A:1b:2c:3d:4e:5f").expect("valid mac");
        assert_eq!(m.to_string(), "0a:1b:2c:3d:4e:5f");
        assert!(MacAddr::parse("0a:1b:2c:3d:4e").is_none());
        assert!(MacAddr::parse("0a:1b:2c:3d:4e:5f:00").is_none());
        assert!(MacAddr::parse("zz:1b:2c:3d:4e:5f").is_none());
    }

    #[test]
    fn random_mac_is_local_unicast_and_differs_every_call() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let m = random_mac();
            assert!(seen.insert(m.0), "{m} came twice");
            assert_eq!(m.0[0] & 0x01, 0, "unicast");
            assert_eq!(m.0[0] & 0x02, 0x02, "locally administered");
        }
    }
}
