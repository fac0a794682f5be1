//! The node's address book: ENIs, their secondary IPs, and which pod holds which IP.
//!
//! Invariants (checked by the tests below):
//! - an IP is held by at most one IPAM key, and a key holds at most one IP;
//! - assignment is idempotent per key `(network name, container ID, ifname)`: a repeated ADD gets the same IP;
//! - a released IP sits out its cooldown before it is handed out again (conntrack entries of the old pod may still
//!   point at it), and IPs in cooldown are **not** counted as available (the anchor counts them, #2896, which makes
//!   the pool look full while ADDs fail);
//! - choice is deterministic: the lowest device number first, then the lowest address, so runs are reproducible
//!   and the primary ENI fills before secondary ENIs.
//!
//! - addresses come one by one (secondary IPs) or sixteen at a time (a delegated /28 prefix); a prefix is given
//!   back only whole, when none of its sixteen addresses is held or cooling down;
//! - nothing held or cooling down is ever removed, except by a *forced* removal, which is only for addresses or
//!   ENIs that EC2 itself says are gone (the pods on them have lost their address anyway).
//! - every change to who holds what bumps [`Datastore::generation`], so a writer of the checkpoint knows whether
//!   what it wrote covers a given change (see [`crate::engine::checkpoint`]);
//! - a DEL whose key holds nothing falls back to the anchor's placeholder key of allocations it migrated from
//!   CRI (`_migrated-from-cri`, same container ID, ifname `unknown`), as the anchor still does.
//!
//! - an ENI *excluded for pods* (the primary ENI under custom networking, the anchor's `IsExcludedForPodIPs`) hands
//!   out nothing new; what pods already hold on it stays theirs until released, and only those held addresses
//!   count in the pool's totals (its free addresses are not the pool's).
//!
//! The datastore is plain data with no I/O; callers serialise access (one mutex in the daemon).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use datapath::MacAddr;
use ipnetwork::Ipv4Network;

use super::family::{IpVersion, V4};

/// Who holds an IP: the CNI's identity of one pod interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpamKey {
    pub network_name: String,
    pub container_id: String,
    pub if_name: String,
}

/// Pod identity kept next to an assignment (for logs, introspection and the checkpoint).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
}

/// One ENI as the datastore knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eni<V: IpVersion = V4> {
    pub id: String,
    pub mac: MacAddr,
    pub device_number: u32,
    pub route_table: u32,
    pub primary_ip: V::Addr,
    pub subnet: V::Prefix,
    pub is_primary: bool,
    /// No new pod gets an address on it (see the module docs).
    pub excluded_for_pods: bool,
    /// When the daemon attached (or adopted) it, monotonic; young ENIs are not freed.
    pub attached_at: Duration,
    prefixes: BTreeSet<V::Prefix>,
    slots: BTreeMap<V::Addr, Slot<V>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot<V: IpVersion> {
    /// The delegated prefix this address belongs to (`None`: a secondary IP).
    prefix: Option<V::Prefix>,
    holder: Option<Holder>,
    /// Monotonic time of the last release; drives the cooldown.
    released_at: Option<Duration>,
}

impl<V: IpVersion> Default for Slot<V> {
    fn default() -> Self {
        Slot {
            prefix: None,
            holder: None,
            released_at: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    key: IpamKey,
    meta: PodMeta,
    assigned_at: Duration,
    /// Wall-clock time of the assignment (since the Unix epoch), kept for the checkpoint: monotonic time does not
    /// survive a restart.
    wall: Duration,
}

impl Eni {
    /// A new IPv4 ENI with no secondary IPs.
    pub fn new(
        id: impl Into<String>,
        mac: MacAddr,
        device_number: u32,
        primary_ip: Ipv4Addr,
        subnet: Ipv4Network,
    ) -> Eni {
        Eni::<V4>::of(id, mac, device_number, primary_ip, subnet)
    }
}

impl<V: IpVersion> Eni<V> {
    /// A new ENI of any IP version, with no addresses.
    pub fn of(
        id: impl Into<String>,
        mac: MacAddr,
        device_number: u32,
        primary_ip: V::Addr,
        subnet: V::Prefix,
    ) -> Eni<V> {
        Eni {
            id: id.into(),
            mac,
            device_number,
            route_table: route_table_for(device_number),
            primary_ip,
            subnet,
            is_primary: device_number == 0,
            excluded_for_pods: false,
            attached_at: Duration::ZERO,
            prefixes: BTreeSet::new(),
            slots: BTreeMap::new(),
        }
    }

    /// Delegated /28 prefixes on this ENI.
    pub fn prefixes(&self) -> impl Iterator<Item = V::Prefix> + '_ {
        self.prefixes.iter().copied()
    }

    /// Addresses (secondary IPs and prefix addresses) in cooldown at `now`.
    pub fn cooldown_count(&self, now: Duration, cooldown: Duration) -> usize {
        self.slots
            .values()
            .filter(|s| s.holder.is_none() && in_cooldown(s, now, cooldown))
            .count()
    }

    /// Secondary IPs (not from prefixes) neither held nor cooling down: safe to give back to EC2.
    pub fn releasable_ips(&self, now: Duration, cooldown: Duration) -> Vec<V::Addr> {
        self.slots
            .iter()
            .filter(|(_, s)| {
                s.prefix.is_none() && s.holder.is_none() && !in_cooldown(s, now, cooldown)
            })
            .map(|(ip, _)| *ip)
            .collect()
    }

    /// Prefixes none of whose addresses is held or cooling down.
    pub fn releasable_prefixes(&self, now: Duration, cooldown: Duration) -> Vec<V::Prefix> {
        self.prefixes
            .iter()
            .filter(|p| {
                self.slots
                    .values()
                    .filter(|s| s.prefix == Some(**p))
                    .all(|s| s.holder.is_none() && !in_cooldown(s, now, cooldown))
            })
            .copied()
            .collect()
    }

    /// Number of secondary IPs on this ENI.
    pub fn ip_count(&self) -> usize {
        self.slots.len()
    }

    /// Number of assigned IPs on this ENI.
    pub fn assigned_count(&self) -> usize {
        self.slots.values().filter(|s| s.holder.is_some()).count()
    }

    /// The secondary IPs of this ENI.
    pub fn ips(&self) -> impl Iterator<Item = V::Addr> + '_ {
        self.slots.keys().copied()
    }
}

/// Route table of an ENI on network card 0 (anchor: device 0 uses main, device N uses N+1).
pub fn route_table_for(device_number: u32) -> u32 {
    if device_number == 0 {
        datapath::MAIN_TABLE
    } else {
        device_number + 1
    }
}

/// Where an assigned IP lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation<V: IpVersion = V4> {
    pub ip: V::Addr,
    pub eni_id: String,
    pub device_number: u32,
    pub route_table: u32,
}

/// Counts that drive the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Secondary IPs on all ENIs.
    pub total: usize,
    /// Held by pods.
    pub assigned: usize,
    /// Free but still cooling down.
    pub cooldown: usize,
    /// Free and usable right now (`total - assigned - cooldown`).
    pub available: usize,
    /// ENIs attached.
    pub enis: usize,
    /// Delegated /28 prefixes (prefix delegation).
    pub prefixes: usize,
    /// Prefixes with no address held or cooling down.
    pub free_prefixes: usize,
}

/// What [`Datastore::sync_eni`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Addresses added.
    pub added: usize,
    /// Addresses removed.
    pub removed: usize,
    /// Pods whose address EC2 took away.
    pub evicted: Vec<IpamKey>,
}

/// Why an assignment failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error("no free IP address on this node ({in_cooldown} free address(es) still in cooldown)")]
    NoFreeIp { in_cooldown: usize },
}

/// Network name of the anchor's placeholder keys for allocations it migrated from CRI (anchor `backfillNetworkName`).
pub const MIGRATED_NETWORK_NAME: &str = "_migrated-from-cri";
/// Interface name of those placeholder keys (anchor `backfillNetworkIface`).
pub const MIGRATED_IF_NAME: &str = "unknown";

/// One assignment with its wall-clock time, as the checkpoint records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentRecord<V: IpVersion = V4> {
    pub key: IpamKey,
    pub meta: PodMeta,
    pub allocation: Allocation<V>,
    /// When it was made, since the Unix epoch.
    pub wall: Duration,
    /// When it was made, on the monotonic clock (restored ones: estimated from `wall`).
    pub assigned_at: Duration,
}

/// Why a checkpointed assignment could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError<V: IpVersion = V4> {
    #[error("{0} is not an address of any ENI of this node (per EC2)")]
    UnknownIp(V::Addr),
    #[error("{ip} is already held by container {holder}")]
    IpHeld { ip: V::Addr, holder: String },
    #[error("the key already holds {0}")]
    KeyHolds(V::Addr),
}

/// Why a datastore change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatastoreError<V: IpVersion = V4> {
    #[error("ENI {0} is not in the datastore")]
    UnknownEni(String),
    #[error("IP {ip} is already on ENI {eni}")]
    DuplicateIp { ip: V::Addr, eni: String },
    #[error("IP {ip} on ENI {eni} is assigned to a pod or cooling down")]
    IpInUse { ip: V::Addr, eni: String },
    #[error("IP {ip} is not a secondary IP of ENI {eni}")]
    NotOnEni { ip: V::Addr, eni: String },
    #[error("ENI {eni} still has {held} assigned and {cooling} cooling address(es)")]
    EniInUse {
        eni: String,
        held: usize,
        cooling: usize,
    },
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Datastore<V: IpVersion = V4> {
    enis: BTreeMap<String, Eni<V>>,
    by_key: HashMap<IpamKey, V::Addr>,
    by_ip: HashMap<V::Addr, String>,
    cooldown: Duration,
    generation: u64,
}

impl Datastore {
    /// An empty IPv4 datastore whose released addresses sit out `cooldown`.
    pub fn new(cooldown: Duration) -> Datastore {
        Datastore::<V4>::of(cooldown)
    }
}

impl<V: IpVersion> Datastore<V> {
    /// An empty datastore of any IP version.
    pub fn of(cooldown: Duration) -> Datastore<V> {
        Datastore {
            enis: BTreeMap::new(),
            by_key: HashMap::new(),
            by_ip: HashMap::new(),
            cooldown,
            generation: 0,
        }
    }

    /// A counter bumped by every change of who holds which address (assign, release, restore, eviction).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Adds an ENI (replacing nothing: an ENI already present is left as it is).
    pub fn add_eni(&mut self, eni: Eni<V>) {
        for ip in eni.slots.keys() {
            self.by_ip.insert(*ip, eni.id.clone());
        }
        self.enis.entry(eni.id.clone()).or_insert(eni);
    }

    /// Marks an ENI excluded for pods, or not (see the module docs).
    pub fn set_excluded_for_pods(&mut self, eni_id: &str, excluded: bool) {
        if let Some(e) = self.enis.get_mut(eni_id) {
            e.excluded_for_pods = excluded;
        }
    }

    /// The ENIs, ordered by ID.
    pub fn enis(&self) -> impl Iterator<Item = &Eni<V>> {
        self.enis.values()
    }

    /// One ENI.
    pub fn eni(&self, id: &str) -> Option<&Eni<V>> {
        self.enis.get(id)
    }

    /// The ENI `eni_id`, or the error that it is not in the datastore.
    fn known_eni(&self, eni_id: &str) -> Result<&Eni<V>, DatastoreError<V>> {
        self.enis
            .get(eni_id)
            .ok_or_else(|| DatastoreError::UnknownEni(eni_id.to_string()))
    }

    /// An address may live on one ENI only: refuses `ips` if any is on an ENI other than `eni_id`.
    fn check_not_elsewhere(
        &self,
        eni_id: &str,
        ips: impl IntoIterator<Item = V::Addr>,
    ) -> Result<(), DatastoreError<V>> {
        for ip in ips {
            if let Some(owner) = self.by_ip.get(&ip) {
                if owner != eni_id {
                    return Err(DatastoreError::DuplicateIp {
                        ip,
                        eni: owner.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Adds secondary IPs to an ENI. IPs already on this ENI are skipped; an IP on another ENI is an error.
    pub fn add_ips(&mut self, eni_id: &str, ips: &[V::Addr]) -> Result<usize, DatastoreError<V>> {
        self.check_not_elsewhere(eni_id, ips.iter().copied())?;
        let eni = self
            .enis
            .get_mut(eni_id)
            .ok_or_else(|| DatastoreError::UnknownEni(eni_id.to_string()))?;
        let mut added = 0;
        for ip in ips {
            if !eni.slots.contains_key(ip) {
                eni.slots.insert(*ip, Slot::default());
                self.by_ip.insert(*ip, eni_id.to_string());
                added += 1;
            }
        }
        Ok(added)
    }

    /// Adds delegated /28 prefixes (sixteen addresses each) to an ENI. Prefixes already there are skipped.
    pub fn add_prefixes(
        &mut self,
        eni_id: &str,
        prefixes: &[V::Prefix],
    ) -> Result<usize, DatastoreError<V>> {
        if V::LAZY {
            // A lazy prefix has no slots yet: it may not be on another ENI, that is all.
            if let Some((p, owner)) = prefixes.iter().find_map(|p| {
                self.enis
                    .values()
                    .find(|e| e.id != eni_id && e.prefixes.contains(p))
                    .map(|e| (*p, e.id.clone()))
            }) {
                return Err(DatastoreError::DuplicateIp {
                    ip: V::prefix_base(p),
                    eni: owner,
                });
            }
        } else {
            self.check_not_elsewhere(
                eni_id,
                prefixes.iter().flat_map(|p| V::prefix_addresses(*p)),
            )?;
        }
        let eni = self
            .enis
            .get_mut(eni_id)
            .ok_or_else(|| DatastoreError::UnknownEni(eni_id.to_string()))?;
        let mut added = 0;
        for p in prefixes {
            if !eni.prefixes.insert(*p) {
                continue;
            }
            added += 1;
            if V::LAZY {
                continue;
            }
            for ip in V::prefix_addresses(*p) {
                eni.slots.entry(ip).or_default().prefix = Some(*p);
                self.by_ip.insert(ip, eni_id.to_string());
            }
        }
        Ok(added)
    }

    /// Removes secondary IPs that are neither held nor cooling down (to give them back to EC2).
    pub fn remove_ips(
        &mut self,
        eni_id: &str,
        ips: &[V::Addr],
        now: Duration,
    ) -> Result<(), DatastoreError<V>> {
        let cooldown = self.cooldown;
        let eni = self.known_eni(eni_id)?;
        for ip in ips {
            match eni.slots.get(ip) {
                Some(s) if s.prefix.is_none() => {
                    if s.holder.is_some() || in_cooldown(s, now, cooldown) {
                        return Err(DatastoreError::IpInUse {
                            ip: *ip,
                            eni: eni_id.to_string(),
                        });
                    }
                }
                _ => {
                    return Err(DatastoreError::NotOnEni {
                        ip: *ip,
                        eni: eni_id.to_string(),
                    })
                }
            }
        }
        self.drop_ips(eni_id, ips);
        Ok(())
    }

    /// Removes whole prefixes none of whose addresses is held or cooling down.
    pub fn remove_prefixes(
        &mut self,
        eni_id: &str,
        prefixes: &[V::Prefix],
        now: Duration,
    ) -> Result<(), DatastoreError<V>> {
        let cooldown = self.cooldown;
        let eni = self.known_eni(eni_id)?;
        let free = eni.releasable_prefixes(now, cooldown);
        if let Some(p) = prefixes.iter().find(|p| !free.contains(p)) {
            return Err(DatastoreError::IpInUse {
                ip: V::prefix_base(*p),
                eni: eni_id.to_string(),
            });
        }
        self.drop_prefixes(eni_id, prefixes);
        Ok(())
    }

    fn drop_ips(&mut self, eni_id: &str, ips: &[V::Addr]) -> Vec<IpamKey> {
        let mut evicted = Vec::new();
        if let Some(eni) = self.enis.get_mut(eni_id) {
            for ip in ips {
                if let Some(slot) = eni.slots.remove(ip) {
                    self.by_ip.remove(ip);
                    if let Some(h) = slot.holder {
                        self.by_key.remove(&h.key);
                        evicted.push(h.key);
                    }
                }
            }
        }
        if !evicted.is_empty() {
            self.generation += 1;
        }
        evicted
    }

    fn drop_prefixes(&mut self, eni_id: &str, prefixes: &[V::Prefix]) -> Vec<IpamKey> {
        let mut ips = Vec::new();
        if let Some(eni) = self.enis.get_mut(eni_id) {
            for p in prefixes {
                if eni.prefixes.remove(p) {
                    if V::LAZY {
                        // Only the carved addresses have slots.
                        ips.extend(
                            eni.slots
                                .iter()
                                .filter(|(_, s)| s.prefix == Some(*p))
                                .map(|(ip, _)| *ip),
                        );
                    } else {
                        ips.extend(V::prefix_addresses(*p));
                    }
                }
            }
        }
        self.drop_ips(eni_id, &ips)
    }

    /// Makes an ENI's addresses match what EC2 reports: adds what is missing, drops what EC2 no longer has
    /// (forced: a pod holding a dropped address loses it, and its key is returned). `skip` lists addresses not to
    /// add back (given back moments ago while IMDS/EC2 may still show them).
    pub fn sync_eni(
        &mut self,
        eni_id: &str,
        ips: &[V::Addr],
        prefixes: &[V::Prefix],
        skip: &dyn Fn(V::Addr) -> bool,
    ) -> Result<SyncReport, DatastoreError<V>> {
        let prefix_size = V::PREFIX_SIZE as usize;
        let eni = self.known_eni(eni_id)?;
        let gone_ips: Vec<V::Addr> = eni
            .slots
            .iter()
            .filter(|(ip, s)| s.prefix.is_none() && !ips.contains(ip))
            .map(|(ip, _)| *ip)
            .collect();
        let gone_prefixes: Vec<V::Prefix> = eni
            .prefixes
            .iter()
            .filter(|p| !prefixes.contains(p))
            .copied()
            .collect();
        let new_ips: Vec<V::Addr> = ips
            .iter()
            .filter(|ip| !eni.slots.contains_key(ip) && !skip(**ip))
            .copied()
            .collect();
        let new_prefixes: Vec<V::Prefix> = prefixes
            .iter()
            .filter(|p| !eni.prefixes.contains(p) && !skip(V::prefix_base(**p)))
            .copied()
            .collect();
        let mut report = SyncReport {
            added: new_ips.len() + new_prefixes.len() * prefix_size,
            removed: gone_ips.len() + gone_prefixes.len() * prefix_size,
            evicted: self.drop_ips(eni_id, &gone_ips),
        };
        report
            .evicted
            .extend(self.drop_prefixes(eni_id, &gone_prefixes));
        self.add_ips(eni_id, &new_ips)?;
        self.add_prefixes(eni_id, &new_prefixes)?;
        Ok(report)
    }

    /// Removes an ENI. Without `force` it must hold no assigned or cooling address; with `force` (EC2 says the
    /// ENI is gone) the keys that held addresses on it are returned.
    pub fn remove_eni(
        &mut self,
        eni_id: &str,
        now: Duration,
        force: bool,
    ) -> Result<Vec<IpamKey>, DatastoreError<V>> {
        let eni = self.known_eni(eni_id)?;
        let held = eni.assigned_count();
        let cooling = eni.cooldown_count(now, self.cooldown);
        if !force && (held > 0 || cooling > 0) {
            return Err(DatastoreError::EniInUse {
                eni: eni_id.to_string(),
                held,
                cooling,
            });
        }
        let ips: Vec<V::Addr> = eni.slots.keys().copied().collect();
        let evicted = self.drop_ips(eni_id, &ips);
        self.enis.remove(eni_id);
        Ok(evicted)
    }

    /// Sets the time an ENI was attached (for the minimum-lifetime rule of ENI freeing).
    pub fn set_attached_at(&mut self, eni_id: &str, at: Duration) {
        if let Some(e) = self.enis.get_mut(eni_id) {
            e.attached_at = at;
        }
    }

    /// Changes the cooldown (a live reload of `IP_COOLDOWN_PERIOD`): addresses released earlier are measured
    /// against the new period.
    pub fn set_cooldown(&mut self, cooldown: Duration) {
        self.cooldown = cooldown;
    }

    /// The cooldown in force.
    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }

    /// The allocation held by `key`, if any.
    pub fn lookup(&self, key: &IpamKey) -> Option<Allocation<V>> {
        let ip = self.by_key.get(key)?;
        self.allocation_of(*ip)
    }

    fn allocation_of(&self, ip: V::Addr) -> Option<Allocation<V>> {
        let eni = self.enis.get(self.by_ip.get(&ip)?)?;
        Some(Allocation {
            ip,
            eni_id: eni.id.clone(),
            device_number: eni.device_number,
            route_table: eni.route_table,
        })
    }

    /// Gives `key` an IP, or the one it already holds.
    pub fn assign(
        &mut self,
        key: &IpamKey,
        meta: &PodMeta,
        now: Duration,
    ) -> Result<Allocation<V>, AssignError> {
        self.assign_at(key, meta, now, Duration::ZERO)
            .map(|(a, _)| a)
    }

    /// [`Datastore::assign`] recording the wall-clock time `wall`; the flag is true when the address is newly
    /// assigned (false: the key already held it).
    pub fn assign_at(
        &mut self,
        key: &IpamKey,
        meta: &PodMeta,
        now: Duration,
        wall: Duration,
    ) -> Result<(Allocation<V>, bool), AssignError> {
        if let Some(existing) = self.lookup(key) {
            return Ok((existing, false));
        }
        let cooldown = self.cooldown;
        let mut enis: Vec<&mut Eni<V>> = self.enis.values_mut().collect();
        enis.sort_by_key(|e| e.device_number);
        for eni in enis.into_iter().filter(|e| !e.excluded_for_pods) {
            let free = eni
                .slots
                .iter_mut()
                .find(|(_, s)| s.holder.is_none() && !in_cooldown(s, now, cooldown));
            let free = match free {
                Some((ip, _)) => Some(*ip),
                None if V::LAZY => carve_slot(eni),
                None => None,
            };
            if let Some(ip) = free {
                self.by_ip.insert(ip, eni.id.clone());
                let Some(slot) = eni.slots.get_mut(&ip) else {
                    continue;
                };
                slot.holder = Some(Holder {
                    key: key.clone(),
                    meta: meta.clone(),
                    assigned_at: now,
                    wall,
                });
                slot.released_at = None;
                let ip = &ip;
                let alloc = Allocation {
                    ip: *ip,
                    eni_id: eni.id.clone(),
                    device_number: eni.device_number,
                    route_table: eni.route_table,
                };
                self.by_key.insert(key.clone(), *ip);
                self.generation += 1;
                return Ok((alloc, true));
            }
        }
        Err(AssignError::NoFreeIp {
            in_cooldown: self.stats(now).cooldown,
        })
    }

    /// Puts back an assignment read from the checkpoint: `ip` must be an address of a known ENI (as EC2 reported
    /// it) that nobody holds, and `key` must hold nothing yet.
    pub fn restore(
        &mut self,
        key: &IpamKey,
        meta: &PodMeta,
        ip: V::Addr,
        assigned_at: Duration,
        wall: Duration,
    ) -> Result<Allocation<V>, RestoreError<V>> {
        if let Some(held) = self.by_key.get(key) {
            return Err(RestoreError::KeyHolds(*held));
        }
        if V::LAZY && !self.by_ip.contains_key(&ip) {
            // An address of a lazy prefix gets its slot when it is first held.
            if let Some(eni) = self.enis.values_mut().find(|e| {
                e.prefixes
                    .iter()
                    .any(|p| V::prefix_contains(*p, ip) && V::prefix_base(*p) != ip)
            }) {
                let prefix = eni
                    .prefixes
                    .iter()
                    .find(|p| V::prefix_contains(**p, ip))
                    .copied();
                eni.slots.insert(
                    ip,
                    Slot {
                        prefix,
                        ..Slot::default()
                    },
                );
                self.by_ip.insert(ip, eni.id.clone());
            }
        }
        let eni_id = self.by_ip.get(&ip).ok_or(RestoreError::UnknownIp(ip))?;
        let eni = self
            .enis
            .get_mut(eni_id)
            .ok_or(RestoreError::UnknownIp(ip))?;
        let slot = eni.slots.get_mut(&ip).ok_or(RestoreError::UnknownIp(ip))?;
        if let Some(h) = &slot.holder {
            return Err(RestoreError::IpHeld {
                ip,
                holder: h.key.container_id.clone(),
            });
        }
        slot.holder = Some(Holder {
            key: key.clone(),
            meta: meta.clone(),
            assigned_at,
            wall,
        });
        slot.released_at = None;
        let alloc = Allocation {
            ip,
            eni_id: eni.id.clone(),
            device_number: eni.device_number,
            route_table: eni.route_table,
        };
        self.by_key.insert(key.clone(), ip);
        self.generation += 1;
        Ok(alloc)
    }

    /// Releases the IP held by `key`; `None` when the key holds nothing (a repeated DEL). A key holding nothing
    /// falls back to the anchor's CRI-migration placeholder of the same container (see the module docs).
    pub fn unassign(&mut self, key: &IpamKey, now: Duration) -> Option<Allocation<V>> {
        let key = if self.by_key.contains_key(key) {
            key.clone()
        } else {
            let placeholder = IpamKey {
                network_name: MIGRATED_NETWORK_NAME.to_string(),
                container_id: key.container_id.clone(),
                if_name: MIGRATED_IF_NAME.to_string(),
            };
            if !self.by_key.contains_key(&placeholder) {
                return None;
            }
            placeholder
        };
        let ip = self.by_key.remove(&key)?;
        self.generation += 1;
        let alloc = self.allocation_of(ip)?;
        if let Some(slot) = self
            .enis
            .get_mut(&alloc.eni_id)
            .and_then(|e| e.slots.get_mut(&ip))
        {
            slot.holder = None;
            slot.released_at = Some(now);
        }
        Some(alloc)
    }

    /// Takes back an address that never reached a pod (its ADD failed before answering): free at once, no
    /// cooldown. Does nothing unless `key` holds exactly `ip`.
    pub fn unassign_unused(&mut self, key: &IpamKey, ip: V::Addr) {
        if self.by_key.get(key) != Some(&ip) {
            return;
        }
        self.by_key.remove(key);
        self.generation += 1;
        if let Some(slot) = self
            .by_ip
            .get(&ip)
            .and_then(|id| self.enis.get_mut(id))
            .and_then(|e| e.slots.get_mut(&ip))
        {
            slot.holder = None;
            slot.released_at = None;
        }
    }

    /// When `key` got its address (monotonic), if it holds one.
    pub fn held_since(&self, key: &IpamKey) -> Option<Duration> {
        let ip = self.by_key.get(key)?;
        let eni = self.enis.get(self.by_ip.get(ip)?)?;
        eni.slots.get(ip)?.holder.as_ref().map(|h| h.assigned_at)
    }

    /// The assignment held by `key`, with its times.
    pub fn record(&self, key: &IpamKey) -> Option<AssignmentRecord<V>> {
        let ip = *self.by_key.get(key)?;
        let eni = self.enis.get(self.by_ip.get(&ip)?)?;
        let h = eni.slots.get(&ip)?.holder.as_ref()?;
        Some(AssignmentRecord {
            key: h.key.clone(),
            meta: h.meta.clone(),
            allocation: Allocation {
                ip,
                eni_id: eni.id.clone(),
                device_number: eni.device_number,
                route_table: eni.route_table,
            },
            wall: h.wall,
            assigned_at: h.assigned_at,
        })
    }

    /// Every assignment with its times, in a stable order (ENI ID, then address).
    pub fn records(&self) -> Vec<AssignmentRecord<V>> {
        let mut out = Vec::new();
        for eni in self.enis.values() {
            for (ip, slot) in &eni.slots {
                if let Some(h) = &slot.holder {
                    out.push(AssignmentRecord {
                        key: h.key.clone(),
                        meta: h.meta.clone(),
                        allocation: Allocation {
                            ip: *ip,
                            eni_id: eni.id.clone(),
                            device_number: eni.device_number,
                            route_table: eni.route_table,
                        },
                        wall: h.wall,
                        assigned_at: h.assigned_at,
                    });
                }
            }
        }
        out
    }

    /// Every assignment: `(key, pod, allocation)`.
    pub fn assignments(&self) -> Vec<(IpamKey, PodMeta, Allocation<V>)> {
        let mut out = Vec::new();
        for eni in self.enis.values() {
            for (ip, slot) in &eni.slots {
                if let Some(h) = &slot.holder {
                    out.push((
                        h.key.clone(),
                        h.meta.clone(),
                        Allocation {
                            ip: *ip,
                            eni_id: eni.id.clone(),
                            device_number: eni.device_number,
                            route_table: eni.route_table,
                        },
                    ));
                }
            }
        }
        out
    }

    /// When the first free address now in its cooldown becomes usable (monotonic), if any is cooling.
    pub fn next_cooldown_end(&self, now: Duration) -> Option<Duration> {
        self.enis
            .values()
            .filter(|e| !e.excluded_for_pods)
            .flat_map(|e| e.slots.values())
            .filter(|s| s.holder.is_none() && in_cooldown(s, now, self.cooldown))
            .filter_map(|s| s.released_at.map(|t| t + self.cooldown))
            .min()
    }

    /// Counts for the pool engine.
    pub fn stats(&self, now: Duration) -> PoolStats {
        let mut s = PoolStats {
            enis: self.enis.len(),
            ..PoolStats::default()
        };
        for eni in self.enis.values() {
            if eni.excluded_for_pods {
                // Only what pods still hold there is the pool's.
                let held = eni.slots.values().filter(|s| s.holder.is_some()).count();
                s.total += held;
                s.assigned += held;
                continue;
            }
            s.prefixes += eni.prefixes.len();
            s.free_prefixes += eni.releasable_prefixes(now, self.cooldown).len();
            for slot in eni.slots.values() {
                s.total += 1;
                if slot.holder.is_some() {
                    s.assigned += 1;
                } else if in_cooldown(slot, now, self.cooldown) {
                    s.cooldown += 1;
                }
            }
        }
        s.available = s.total - s.assigned - s.cooldown;
        if V::LAZY {
            // Addresses not carved yet are free too.
            for eni in self.enis.values() {
                for p in &eni.prefixes {
                    let carved = eni.slots.values().filter(|s| s.prefix == Some(*p)).count();
                    let rest = usize::try_from(V::carvable(*p))
                        .unwrap_or(usize::MAX)
                        .saturating_sub(carved);
                    s.total = s.total.saturating_add(rest);
                    s.available = s.available.saturating_add(rest);
                }
            }
        }
        s
    }
}

/// Carves the next free address of one of `eni`'s lazy prefixes into a new slot; `None` when all are full.
fn carve_slot<V: IpVersion>(eni: &mut Eni<V>) -> Option<V::Addr> {
    for p in eni.prefixes.iter().copied() {
        let slots = &eni.slots;
        if let Some(ip) = V::carve(p, &|a| slots.contains_key(&a)) {
            eni.slots.insert(
                ip,
                Slot {
                    prefix: Some(p),
                    ..Slot::default()
                },
            );
            return Some(ip);
        }
    }
    None
}

fn in_cooldown<V: IpVersion>(slot: &Slot<V>, now: Duration, cooldown: Duration) -> bool {
    slot.released_at
        .is_some_and(|t| now.saturating_sub(t) < cooldown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnetwork::Ipv4Network;
    use std::net::Ipv4Addr;

    fn key(c: &str) -> IpamKey {
        IpamKey {
            network_name: "aws-cni".into(),
            container_id: c.into(),
            if_name: "eth0".into(),
        }
    }

    /// An IPv6 version for the test only (/124 prefixes of sixteen addresses): the datastore's rules hold for any
    /// [`IpVersion`], which is what lets IPv6 be added as a version rather than as an edit of every signature.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
    struct TestV6;

    impl IpVersion for TestV6 {
        type Addr = std::net::Ipv6Addr;
        type Prefix = ipnetwork::Ipv6Network;
        const PREFIX_SIZE: u32 = 16;

        fn prefix_addresses(prefix: Self::Prefix) -> impl Iterator<Item = Self::Addr> {
            prefix.iter()
        }

        fn prefix_base(prefix: Self::Prefix) -> Self::Addr {
            prefix.network()
        }

        fn prefix_contains(prefix: Self::Prefix, addr: Self::Addr) -> bool {
            prefix.contains(addr)
        }

        fn carve(prefix: Self::Prefix, taken: &dyn Fn(Self::Addr) -> bool) -> Option<Self::Addr> {
            prefix.iter().skip(1).find(|a| !taken(*a))
        }

        fn carvable(_prefix: Self::Prefix) -> u64 {
            15
        }
    }

    #[test]
    fn a_lazy_v6_prefix_is_never_expanded_and_its_addresses_are_carved_as_pods_come() {
        use crate::core::family::V6;
        let cooldown = Duration::from_secs(30);
        let mut ds: Datastore<V6> = Datastore::of(cooldown);
        let subnet: ipnetwork::Ipv6Network = "2600:1f14:ab:c800::/64".parse().expect("cidr");
        ds.add_eni(Eni::of(
            "eni-0",
            MacAddr([2, 0, 0, 0, 0, 1]),
            0,
            "2600:1f14:ab:c800::1001".parse().expect("ip"),
            subnet,
        ));
        let prefix: ipnetwork::Ipv6Network = "2600:1f14:ab:c800:1::/80".parse().expect("prefix");
        assert_eq!(ds.add_prefixes("eni-0", &[prefix]).expect("prefix"), 1);
        // Nothing carved yet: no slot, every address of the /80 but its base free.
        assert_eq!(ds.eni("eni-0").expect("eni").ip_count(), 0);
        let s = ds.stats(Duration::ZERO);
        assert_eq!(
            (s.total, s.available, s.assigned),
            ((1 << 48) - 1, (1 << 48) - 1, 0)
        );
        let meta = PodMeta::default();
        let a = ds.assign(&key("a"), &meta, Duration::ZERO).expect("ip");
        let b = ds.assign(&key("b"), &meta, Duration::ZERO).expect("ip");
        assert_eq!(a.ip.to_string(), "2600:1f14:ab:c800:1::1");
        assert_eq!(b.ip.to_string(), "2600:1f14:ab:c800:1::2");
        assert_eq!(ds.eni("eni-0").expect("eni").ip_count(), 2);
        // Released: it cools down, and a new address is carved meanwhile.
        assert_eq!(
            ds.unassign(&key("a"), Duration::ZERO).map(|x| x.ip),
            Some(a.ip)
        );
        let c = ds
            .assign(&key("c"), &meta, Duration::from_secs(1))
            .expect("ip");
        assert_eq!(c.ip.to_string(), "2600:1f14:ab:c800:1::3");
        // After the cooldown the released address is reused before carving another.
        let d = ds
            .assign(&key("d"), &meta, Duration::from_secs(31))
            .expect("ip");
        assert_eq!(d.ip, a.ip);
        // A checkpointed address anywhere in the /80 is restored onto a slot made for it.
        let far: std::net::Ipv6Addr = "2600:1f14:ab:c800:1:0:ab:cd".parse().expect("ip");
        ds.restore(&key("far"), &meta, far, Duration::ZERO, Duration::ZERO)
            .expect("restored");
        assert_eq!(ds.lookup(&key("far")).map(|x| x.ip), Some(far));
        let outside: std::net::Ipv6Addr = "2600:1f14:ab:c800:2::5".parse().expect("ip");
        assert_eq!(
            ds.restore(&key("out"), &meta, outside, Duration::ZERO, Duration::ZERO),
            Err(RestoreError::UnknownIp(outside))
        );
        // The prefix cannot also be on another ENI.
        ds.add_eni(Eni::of(
            "eni-1",
            MacAddr([2, 0, 0, 0, 0, 2]),
            1,
            std::net::Ipv6Addr::UNSPECIFIED,
            subnet,
        ));
        assert!(ds.add_prefixes("eni-1", &[prefix]).is_err());
        // A forced removal of the prefix (EC2 says it is gone) evicts its holders only.
        let report = ds.sync_eni("eni-0", &[], &[], &|_| false).expect("sync");
        assert_eq!(report.evicted.len(), 4, "{report:?}");
        assert_eq!(ds.stats(Duration::from_secs(99)).assigned, 0);
    }

    #[test]
    fn the_same_rules_hold_for_another_ip_version() {
        let cooldown = Duration::from_secs(30);
        let mut ds: Datastore<TestV6> = Datastore::of(cooldown);
        let subnet: ipnetwork::Ipv6Network = "2001:db8::/64".parse().expect("cidr");
        let primary: std::net::Ipv6Addr = "2001:db8::10".parse().expect("ip");
        ds.add_eni(Eni::of(
            "eni-0",
            MacAddr([2, 0, 0, 0, 0, 1]),
            0,
            primary,
            subnet,
        ));
        let prefix: ipnetwork::Ipv6Network = "2001:db8::100/124".parse().expect("prefix");
        assert_eq!(ds.add_prefixes("eni-0", &[prefix]).expect("prefix"), 1);
        let s = ds.stats(Duration::ZERO);
        assert_eq!((s.total, s.prefixes, s.free_prefixes), (16, 1, 1));
        let meta = PodMeta::default();
        let (a, fresh) = ds
            .assign_at(&key("a"), &meta, Duration::ZERO, Duration::ZERO)
            .expect("ip");
        assert!(fresh && prefix.contains(a.ip), "{}", a.ip);
        let again = ds
            .assign_at(&key("a"), &meta, Duration::ZERO, Duration::ZERO)
            .expect("same");
        assert_eq!(again, (a.clone(), false), "idempotent per key");
        assert_eq!(ds.unassign(&key("a"), Duration::ZERO), Some(a.clone()));
        // Cooling down: neither available nor releasable until the cooldown passes.
        assert!(ds
            .eni("eni-0")
            .expect("eni")
            .releasable_prefixes(Duration::ZERO, cooldown)
            .is_empty());
        assert_eq!(
            ds.eni("eni-0")
                .expect("eni")
                .releasable_prefixes(cooldown, cooldown),
            vec![prefix]
        );
    }

    fn store(ips_per_eni: &[u8]) -> Datastore {
        let mut ds = Datastore::new(Duration::from_secs(30));
        let subnet: Ipv4Network = "10.0.0.0/24".parse().expect("cidr");
        for (dev, n) in ips_per_eni.iter().enumerate() {
            let dev = u32::try_from(dev).expect("small");
            let base = u8::try_from(dev).expect("small") * 20 + 10;
            let id = format!("eni-{dev}");
            ds.add_eni(Eni::new(
                &id,
                MacAddr([2, 0, 0, 0, 0, base]),
                dev,
                Ipv4Addr::new(10, 0, 0, base),
                subnet,
            ));
            let ips: Vec<_> = (1..=*n)
                .map(|i| Ipv4Addr::new(10, 0, 0, base + i))
                .collect();
            ds.add_ips(&id, &ips).expect("add ips");
        }
        ds
    }

    #[test]
    fn repeated_add_returns_the_same_ip() {
        let mut ds = store(&[3]);
        let a = ds
            .assign(&key("c1"), &PodMeta::default(), Duration::ZERO)
            .expect("ip");
        let b = ds
            .assign(&key("c1"), &PodMeta::default(), Duration::ZERO)
            .expect("ip");
        assert_eq!(a, b);
        assert_eq!(ds.stats(Duration::ZERO).assigned, 1);
    }

    #[test]
    fn distinct_keys_get_distinct_ips_and_primary_fills_first() {
        let mut ds = store(&[2, 2]);
        let mut seen = std::collections::HashSet::new();
        let mut devices = Vec::new();
        for i in 0..4 {
            let a = ds
                .assign(&key(&format!("c{i}")), &PodMeta::default(), Duration::ZERO)
                .expect("ip");
            assert!(seen.insert(a.ip), "duplicate {}", a.ip);
            devices.push(a.device_number);
        }
        assert_eq!(devices, vec![0, 0, 1, 1]);
        assert_eq!(
            ds.assign(&key("c9"), &PodMeta::default(), Duration::ZERO),
            Err(AssignError::NoFreeIp { in_cooldown: 0 })
        );
    }

    #[test]
    fn an_excluded_eni_hands_out_nothing_new_but_keeps_what_pods_hold() {
        let mut ds = store(&[2, 1]);
        let held = ds
            .assign(&key("old"), &PodMeta::default(), Duration::ZERO)
            .expect("ip");
        assert_eq!(held.device_number, 0);
        ds.set_excluded_for_pods("eni-0", true);
        // Its one held address counts (total and assigned); its free one is not the pool's.
        let s = ds.stats(Duration::ZERO);
        assert_eq!((s.total, s.assigned, s.available), (2, 1, 1));
        let a = ds
            .assign(&key("new"), &PodMeta::default(), Duration::ZERO)
            .expect("ip");
        assert_eq!(a.eni_id, "eni-1", "never the excluded ENI");
        assert_eq!(
            ds.assign(&key("third"), &PodMeta::default(), Duration::ZERO),
            Err(AssignError::NoFreeIp { in_cooldown: 0 })
        );
        assert_eq!(ds.lookup(&key("old")).map(|x| x.ip), Some(held.ip));
        // Released there, the address leaves the pool's count and never comes back to a pod.
        assert!(ds.unassign(&key("old"), Duration::ZERO).is_some());
        let s = ds.stats(Duration::from_secs(60));
        assert_eq!((s.total, s.assigned, s.cooldown), (1, 1, 0));
        assert_eq!(ds.next_cooldown_end(Duration::ZERO), None);
    }

    #[test]
    fn released_ip_cools_down_and_is_not_counted_available() {
        let mut ds = store(&[1]);
        let t0 = Duration::from_secs(100);
        let a = ds.assign(&key("c1"), &PodMeta::default(), t0).expect("ip");
        assert_eq!(ds.unassign(&key("c1"), t0).map(|x| x.ip), Some(a.ip));
        let s = ds.stats(t0 + Duration::from_secs(10));
        assert_eq!((s.total, s.assigned, s.cooldown, s.available), (1, 0, 1, 0));
        assert_eq!(
            ds.assign(
                &key("c2"),
                &PodMeta::default(),
                t0 + Duration::from_secs(10)
            ),
            Err(AssignError::NoFreeIp { in_cooldown: 1 })
        );
        let later = t0 + Duration::from_secs(30);
        assert_eq!(ds.stats(later).available, 1);
        assert_eq!(
            ds.assign(&key("c2"), &PodMeta::default(), later)
                .map(|x| x.ip),
            Ok(a.ip)
        );
    }

    #[test]
    fn next_cooldown_end_is_the_earliest_release_plus_the_cooldown() {
        let mut ds = store(&[3]);
        let t0 = Duration::from_secs(100);
        assert_eq!(ds.next_cooldown_end(t0), None, "nothing released");
        for c in ["c1", "c2", "c3"] {
            ds.assign(&key(c), &PodMeta::default(), t0).expect("ip");
        }
        ds.unassign(&key("c2"), t0 + Duration::from_secs(5));
        ds.unassign(&key("c1"), t0 + Duration::from_secs(9));
        assert_eq!(
            ds.next_cooldown_end(t0 + Duration::from_secs(10)),
            Some(t0 + Duration::from_secs(35))
        );
        // Once the first has cooled, the next one is the answer; once all have, none.
        assert_eq!(
            ds.next_cooldown_end(t0 + Duration::from_secs(35)),
            Some(t0 + Duration::from_secs(39))
        );
        assert_eq!(ds.next_cooldown_end(t0 + Duration::from_secs(39)), None);
        // A cooling address taken back by its holder does not count.
        ds.unassign(&key("c3"), t0 + Duration::from_secs(40));
        ds.assign(
            &key("c4"),
            &PodMeta::default(),
            t0 + Duration::from_secs(40),
        )
        .expect("cooled ip");
        ds.assign(
            &key("c5"),
            &PodMeta::default(),
            t0 + Duration::from_secs(40),
        )
        .expect("cooled ip");
        assert_eq!(
            ds.next_cooldown_end(t0 + Duration::from_secs(41)),
            Some(t0 + Duration::from_secs(70))
        );
    }

    #[test]
    fn repeated_del_is_a_no_op() {
        let mut ds = store(&[2]);
        ds.assign(&key("c1"), &PodMeta::default(), Duration::ZERO)
            .expect("ip");
        assert!(ds.unassign(&key("c1"), Duration::ZERO).is_some());
        assert!(ds.unassign(&key("c1"), Duration::ZERO).is_none());
        assert_eq!(ds.stats(Duration::ZERO).assigned, 0);
    }

    #[test]
    fn an_ip_cannot_live_on_two_enis() {
        let mut ds = store(&[1, 0]);
        let err = ds
            .add_ips("eni-1", &[Ipv4Addr::new(10, 0, 0, 11)])
            .expect_err("duplicate");
        assert!(matches!(err, DatastoreError::DuplicateIp { .. }));
        assert!(matches!(
            ds.add_ips("eni-9", &[Ipv4Addr::new(10, 0, 0, 99)]),
            Err(DatastoreError::UnknownEni(_))
        ));
    }

    #[test]
    fn prefixes_add_sixteen_and_leave_only_whole() {
        let mut ds = store(&[0]);
        let p: Ipv4Network = "10.0.1.0/28".parse().expect("pfx");
        assert_eq!(ds.add_prefixes("eni-0", &[p]), Ok(1));
        let s = ds.stats(Duration::ZERO);
        assert_eq!((s.total, s.prefixes, s.free_prefixes), (16, 1, 1));
        let t = Duration::from_secs(10);
        ds.assign(&key("c1"), &PodMeta::default(), t).expect("ip");
        assert_eq!(ds.stats(t).free_prefixes, 0);
        assert!(ds.remove_prefixes("eni-0", &[p], t).is_err());
        ds.unassign(&key("c1"), t);
        // Released but cooling: still not releasable.
        assert!(ds.remove_prefixes("eni-0", &[p], t).is_err());
        let later = t + Duration::from_secs(30);
        ds.remove_prefixes("eni-0", &[p], later)
            .expect("whole and cool");
        assert_eq!(ds.stats(later).total, 0);
    }

    #[test]
    fn held_or_cooling_ips_and_enis_are_not_removed_unless_forced() {
        let mut ds = store(&[2, 1]);
        let t = Duration::from_secs(5);
        let a = ds.assign(&key("c1"), &PodMeta::default(), t).expect("ip");
        assert!(ds.remove_ips("eni-0", &[a.ip], t).is_err());
        let other = ds
            .eni("eni-0")
            .expect("eni")
            .ips()
            .find(|ip| *ip != a.ip)
            .expect("second ip");
        ds.remove_ips("eni-0", &[other], t).expect("free ip");
        assert!(matches!(
            ds.remove_eni("eni-0", t, false),
            Err(DatastoreError::EniInUse { held: 1, .. })
        ));
        assert_eq!(ds.remove_eni("eni-0", t, true), Ok(vec![key("c1")]));
        assert_eq!(ds.lookup(&key("c1")), None);
        assert_eq!(ds.remove_eni("eni-1", t, false), Ok(vec![]));
        assert_eq!(ds.stats(t).enis, 0);
    }

    #[test]
    fn sync_follows_ec2_and_skips_recently_released() {
        let mut ds = store(&[2]);
        let t = Duration::ZERO;
        let a = ds.assign(&key("c1"), &PodMeta::default(), t).expect("ip");
        let keep = Ipv4Addr::new(10, 0, 0, 99);
        let skipped = Ipv4Addr::new(10, 0, 0, 98);
        let r = ds
            .sync_eni("eni-0", &[keep, skipped], &[], &|ip| ip == skipped)
            .expect("sync");
        assert_eq!(r.added, 1);
        assert_eq!(r.removed, 2);
        assert_eq!(r.evicted, vec![key("c1")]);
        let ips: Vec<_> = ds.eni("eni-0").expect("eni").ips().collect();
        assert_eq!(ips, vec![keep]);
        assert_ne!(a.ip, keep);
    }

    #[test]
    fn route_tables_follow_device_numbers() {
        assert_eq!(route_table_for(0), 254);
        assert_eq!(route_table_for(1), 2);
        assert_eq!(route_table_for(2), 3);
    }

    #[test]
    fn generation_counts_every_change_of_holders() {
        let mut ds = store(&[3]);
        let g0 = ds.generation();
        let (a, fresh) = ds
            .assign_at(
                &key("c1"),
                &PodMeta::default(),
                Duration::ZERO,
                Duration::from_secs(7),
            )
            .expect("ip");
        assert!(fresh);
        assert_eq!(ds.generation(), g0 + 1);
        let (b, fresh) = ds
            .assign_at(
                &key("c1"),
                &PodMeta::default(),
                Duration::ZERO,
                Duration::ZERO,
            )
            .expect("ip");
        assert_eq!(
            (a.clone(), false),
            (b, fresh),
            "a repeated ADD changes nothing"
        );
        assert_eq!(ds.generation(), g0 + 1);
        assert_eq!(ds.records()[0].wall, Duration::from_secs(7));
        ds.unassign(&key("c1"), Duration::ZERO);
        assert_eq!(ds.generation(), g0 + 2);
        assert!(ds.unassign(&key("c1"), Duration::ZERO).is_none());
        assert_eq!(ds.generation(), g0 + 2, "a repeated DEL changes nothing");
    }

    #[test]
    fn restore_needs_a_known_free_address() {
        let mut ds = store(&[2]);
        let t = Duration::from_secs(3);
        let ip = Ipv4Addr::new(10, 0, 0, 11);
        let a = ds
            .restore(
                &key("c1"),
                &PodMeta::default(),
                ip,
                t,
                Duration::from_secs(99),
            )
            .expect("restore");
        assert_eq!((a.ip, a.eni_id.as_str()), (ip, "eni-0"));
        assert_eq!(ds.lookup(&key("c1")).map(|a| a.ip), Some(ip));
        assert_eq!(ds.held_since(&key("c1")), Some(t));
        assert_eq!(
            ds.restore(&key("c2"), &PodMeta::default(), ip, t, t),
            Err(RestoreError::IpHeld {
                ip,
                holder: "c1".into()
            })
        );
        let unknown = Ipv4Addr::new(10, 9, 9, 9);
        assert_eq!(
            ds.restore(&key("c2"), &PodMeta::default(), unknown, t, t),
            Err(RestoreError::UnknownIp(unknown))
        );
        assert_eq!(
            ds.restore(
                &key("c1"),
                &PodMeta::default(),
                Ipv4Addr::new(10, 0, 0, 12),
                t,
                t
            ),
            Err(RestoreError::KeyHolds(ip))
        );
        // A restored address is never handed to another pod.
        let b = ds.assign(&key("c3"), &PodMeta::default(), t).expect("ip");
        assert_ne!(b.ip, ip);
    }

    #[test]
    fn del_falls_back_to_the_cri_migration_placeholder() {
        let mut ds = store(&[2]);
        let placeholder = IpamKey {
            network_name: MIGRATED_NETWORK_NAME.into(),
            container_id: "c1".into(),
            if_name: MIGRATED_IF_NAME.into(),
        };
        let ip = Ipv4Addr::new(10, 0, 0, 11);
        ds.restore(
            &placeholder,
            &PodMeta::default(),
            ip,
            Duration::ZERO,
            Duration::ZERO,
        )
        .expect("restore");
        assert!(ds.unassign(&key("other"), Duration::ZERO).is_none());
        assert_eq!(
            ds.unassign(&key("c1"), Duration::ZERO).map(|a| a.ip),
            Some(ip)
        );
        assert!(ds.lookup(&placeholder).is_none());
        assert_eq!(ds.stats(Duration::ZERO).assigned, 0);
    }

    #[test]
    fn unused_address_comes_back_without_cooldown() {
        let mut ds = store(&[1]);
        let a = ds
            .assign(&key("c1"), &PodMeta::default(), Duration::ZERO)
            .expect("ip");
        ds.unassign_unused(&key("c2"), a.ip);
        assert!(
            ds.lookup(&key("c1")).is_some(),
            "another key's address is left alone"
        );
        ds.unassign_unused(&key("c1"), a.ip);
        let s = ds.stats(Duration::ZERO);
        assert_eq!((s.assigned, s.cooldown, s.available), (0, 0, 1));
    }
}
