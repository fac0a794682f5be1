//! [`EniFabric`]: makes the ENIs that moto says are attached to an instance appear as links in a test node's
//! network namespace, as the Nitro card makes them appear on a real instance.
//!
//! ```text
//!   node netns (the test's)                       fabric netns (owned here)
//!   eth0  mac=ENI0 MAC, primary IP/prefix ─veth─ nic0 ┐
//!   eth1  mac=ENI1 MAC                    ─veth─ nic1 ├─ bridge "vpc"  <subnet base + 1>/prefix  (the VPC router)
//!   ...                                               ┘  neigh <secondary IP> lladdr <its ENI's MAC> (permanent)
//! ```
//!
//! The same shape as the simulator's fabric (ipamd/src/sim/fabric.rs), but driven from outside: a thread reads
//! moto every 100 ms ([`crate::aws::node_view`]) and plugs an `eth<device index>` for every newly attached ENI,
//! unplugs detached ones, and keeps a permanent neighbour entry for every secondary IP so that the "VPC" sends
//! traffic for a pod's address to the ENI that holds it. The primary ENI is plugged once at start, with its
//! address and up, as the instance's own boot would leave it.
//!
//! Dropping the fabric stops the thread and deletes the fabric namespace, which removes both ends of every
//! veth. Every `ip` failure is kept in [`EniFabric::errors`] for the test to check.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ec2_aws::aws_sdk_ec2::Client;

use crate::aws::{node_view, NodeView};
use crate::{sh, Netns};

const BRIDGE: &str = "vpc";
const BRIDGE_MAC: &str = "02:00:00:00:00:01";
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
struct FabricState {
    /// device index -> MAC of what is plugged.
    plugged: BTreeMap<u32, String>,
    /// (IP, MAC) neighbour entries in the fabric.
    neigh: BTreeSet<(String, String)>,
    errors: Vec<String>,
    syncs: usize,
}

/// See the module docs.
#[derive(Debug)]
pub struct EniFabric {
    pub fabric: Netns,
    /// `<subnet base + 1>`: the address pods reach "the VPC" at.
    pub gateway: Ipv4Addr,
    state: Arc<Mutex<FabricState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// `(network + 1, prefix length)` of `cidr` (e.g. `10.0.0.0/16`).
pub fn gateway_of(cidr: &str) -> (Ipv4Addr, u8) {
    let (net, len) = cidr.split_once('/').expect("CIDR");
    let net: Ipv4Addr = net.parse().expect("CIDR address");
    (
        Ipv4Addr::from(u32::from(net).wrapping_add(1)),
        len.parse().expect("CIDR prefix"),
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Plumber {
    node: String,
    fabric: String,
    mtu: u32,
    prefix: u8,
}

impl Plumber {
    fn ip(&self, st: &mut FabricState, args: &[&str]) -> bool {
        let out = sh("ip", args);
        if !out.status.success() {
            st.errors.push(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        out.status.success()
    }

    fn sync(&self, st: &mut FabricState, view: &NodeView) {
        st.syncs += 1;
        let want: BTreeMap<u32, (String, String)> = view
            .enis
            .values()
            .map(|e| {
                (
                    e.device_index,
                    (e.mac.clone(), e.ipv4s.first().cloned().unwrap_or_default()),
                )
            })
            .collect();
        let stale: Vec<u32> = st
            .plugged
            .iter()
            .filter(|(d, mac)| want.get(d).map(|(m, _)| m) != Some(mac))
            .map(|(d, _)| *d)
            .collect();
        for d in stale {
            self.ip(st, &["-n", &self.node, "link", "del", &format!("eth{d}")]);
            st.plugged.remove(&d);
        }
        let mtu = self.mtu.to_string();
        for (d, (mac, primary_ip)) in &want {
            if st.plugged.contains_key(d) {
                continue;
            }
            let (eth, nic) = (format!("eth{d}"), format!("nic{d}"));
            let ok = self.ip(
                st,
                &[
                    "-n",
                    &self.fabric,
                    "link",
                    "add",
                    &nic,
                    "mtu",
                    &mtu,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &eth,
                    "address",
                    mac,
                    "mtu",
                    &mtu,
                    "netns",
                    &self.node,
                ],
            ) && self.ip(
                st,
                &[
                    "-n",
                    &self.fabric,
                    "link",
                    "set",
                    &nic,
                    "master",
                    BRIDGE,
                    "up",
                ],
            );
            if !ok {
                continue;
            }
            if *d == 0 {
                let addr = format!("{primary_ip}/{}", self.prefix);
                self.ip(st, &["-n", &self.node, "addr", "add", &addr, "dev", &eth]);
                self.ip(st, &["-n", &self.node, "link", "set", &eth, "up"]);
            }
            st.plugged.insert(*d, mac.clone());
        }
        let want_neigh: BTreeSet<(String, String)> = view
            .enis
            .values()
            .flat_map(|e| e.ipv4s.iter().skip(1).map(|ip| (ip.clone(), e.mac.clone())))
            .collect();
        let gone: Vec<(String, String)> = st.neigh.difference(&want_neigh).cloned().collect();
        for (ip, mac) in gone {
            // Already gone is fine: the kernel drops entries itself in some cases.
            let _ = sh(
                "ip",
                &["-n", &self.fabric, "neigh", "del", &ip, "dev", BRIDGE],
            );
            st.neigh.remove(&(ip, mac));
        }
        let new: Vec<(String, String)> = want_neigh.difference(&st.neigh).cloned().collect();
        for (ip, mac) in new {
            if self.ip(
                st,
                &[
                    "-n",
                    &self.fabric,
                    "neigh",
                    "replace",
                    &ip,
                    "lladdr",
                    &mac,
                    "dev",
                    BRIDGE,
                    "nud",
                    "permanent",
                ],
            ) {
                st.neigh.insert((ip, mac));
            }
        }
    }
}

impl EniFabric {
    /// Builds the fabric for `subnet_cidr`, plugs the instance's ENIs as moto has them now, and follows moto
    /// from then on. `node` gets loopback up and IPv4 forwarding on (an EKS node's boot state).
    pub fn start(
        node: &Netns,
        sdk: Client,
        instance_id: &str,
        subnet_cidr: &str,
        mtu: u32,
    ) -> EniFabric {
        let fabric = Netns::new("act-fab-");
        let (gateway, prefix) = gateway_of(subnet_cidr);
        for args in [
            vec!["-n", &fabric.name, "link", "set", "lo", "up"],
            // A fixed MAC: a bridge otherwise takes its ports' lowest MAC, and each change of its address
            // flushes its neighbour table, permanent entries included.
            vec![
                "-n",
                &fabric.name,
                "link",
                "add",
                BRIDGE,
                "address",
                BRIDGE_MAC,
                "type",
                "bridge",
            ],
            vec!["-n", &node.name, "link", "set", "lo", "up"],
        ] {
            let out = sh("ip", &args);
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        }
        let gw = format!("{gateway}/{prefix}");
        let mtu_s = mtu.to_string();
        for args in [
            vec!["-n", &fabric.name, "addr", "add", &gw, "dev", BRIDGE],
            vec![
                "-n",
                &fabric.name,
                "link",
                "set",
                BRIDGE,
                "mtu",
                &mtu_s,
                "up",
            ],
        ] {
            let out = sh("ip", &args);
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        }
        let fwd = node.exec(&["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
        assert!(fwd.status.success(), "ip_forward in {}: {fwd:?}", node.name);

        let plumber = Plumber {
            node: node.name.clone(),
            fabric: fabric.name.clone(),
            mtu,
            prefix,
        };
        let state: Arc<Mutex<FabricState>> = Arc::default();
        let rt = crate::aws::runtime();
        let first = rt
            .block_on(node_view(&sdk, instance_id))
            .unwrap_or_else(|e| panic!("reading the node from moto: {e}"));
        plumber.sync(&mut lock(&state), &first);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
            let instance_id = instance_id.to_string();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(POLL);
                    match rt.block_on(node_view(&sdk, &instance_id)) {
                        Ok(view) => plumber.sync(&mut lock(&state), &view),
                        Err(e) => lock(&state).errors.push(format!("moto: {e}")),
                    }
                }
            })
        };
        EniFabric {
            fabric,
            gateway,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// What is plugged: device index -> MAC.
    pub fn plugged(&self) -> BTreeMap<u32, String> {
        lock(&self.state).plugged.clone()
    }

    /// Failures of `ip` commands and moto reads so far.
    pub fn errors(&self) -> Vec<String> {
        lock(&self.state).errors.clone()
    }

    /// Waits (up to `limit`) until the fabric has caught up with moto at least once more, then returns what
    /// is plugged.
    pub fn settle(&self, limit: Duration) -> BTreeMap<u32, String> {
        let start = lock(&self.state).syncs;
        let deadline = Instant::now() + limit;
        while lock(&self.state).syncs < start + 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.plugged()
    }
}

impl Drop for EniFabric {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The fabric namespace goes when `self.fabric` drops, and every veth with it.
    }
}
