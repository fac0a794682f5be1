//! IPv6 pod setup (issue 20): CNI ADD and DEL of IPv6 pods, `aws-cni` against Debian's `ptp` with `host-local`
//! handing out from an IPv6 range, interleaved in random order as the IPv4 pod-setup benchmark does.
//!
//! Where `aws-cni` gets its addresses ([`V6Ipamd`]): the suite's `ipv6` section starts a real `ipamd run --backend
//! sim` in IPv6 mode in the node namespace (its bookkeeping and checkpoint write included, as in the IPv4
//! pod-setup section); `aws-cni-bench ipv6` uses an in-process stand-in (`rpc.CNIBackend` on a Unix socket
//! answering `IPv6Addr` from a fixed list: the plugin's own cost alone) unless `--ipamd-socket` points at a
//! running ipamd.
//!
//! The peer waits for duplicate address detection on the pod address, as ptp does for IPv6 (its `SettleAddresses`);
//! ours adds the address with `IFA_F_NODAD` and never waits. `--peer-nodad` turns DAD off in the peer's pod
//! namespaces beforehand (outside the timing), to compare the datapaths alone. Both run in fresh pod namespaces with the kernel's
//! defaults, in a node namespace forwarding IPv6.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_cni_proto::rpc::{
    AddNetworkReply, AddNetworkRequest, DelNetworkReply, DelNetworkRequest, IpAllocationMetadata,
};
use aws_cni_proto::{CniBackend, CniBackendServer};
use rand::Rng;

use super::{new_pod, release_pods, Binaries, Ipamd, Namespaces, Plugin, Pod, Runner, Scratch};
use crate::error::BenchError;
use crate::stats::{ms, Summary};

/// The pods' prefix at the stand-in (a /80, as EC2 delegates in IPv6 mode).
pub const OURS_PREFIX: &str = "2001:db8:6:1:2::";
/// The peer's host-local range.
pub const PEER_RANGE: &str = "2001:db8:7:1:2::/80";

/// IPv6 mode as an EKS IPv6 cluster runs it (`IP_COOLDOWN_PERIOD=0`: a freed address is reusable at once, as
/// in the IPv4 pod-setup benchmark; a /80 never runs short anyway).
pub const V6_VARS: [(&str, &str); 5] = [
    ("ENABLE_IPv6", "true"),
    ("ENABLE_IPv4", "false"),
    ("ENABLE_PREFIX_DELEGATION", "true"),
    ("WARM_PREFIX_TARGET", "1"),
    ("IP_COOLDOWN_PERIOD", "0"),
];

/// Where `aws-cni` gets its IPv6 addresses.
#[derive(Debug, Clone)]
pub enum V6Ipamd {
    /// The in-process stand-in (see the module docs).
    StandIn,
    /// A running ipamd in IPv6 mode at this socket.
    Socket(PathBuf),
    /// `ipamd run --backend sim` of this instance type with [`V6_VARS`], started in the node namespace.
    Real(&'static str),
}

/// Parameters.
#[derive(Debug, Clone, Copy)]
pub struct V6Params {
    pub n: usize,
    pub warmup: usize,
    pub window: usize,
    /// Turn duplicate address detection off in the peer's pod namespaces (`accept_dad=0` as the default before
    /// ptp creates its interface), so ptp does not wait for it: the datapath's cost alone, as ours.
    pub peer_nodad: bool,
}

/// Samples per plugin and verb.
#[derive(Debug, Default, Clone)]
pub struct V6Samples {
    pub ours_add: Vec<Duration>,
    pub ours_del: Vec<Duration>,
    pub peer_add: Vec<Duration>,
    pub peer_del: Vec<Duration>,
}

impl V6Samples {
    /// A Markdown table: median and p99 of each.
    pub fn table(&self) -> String {
        let mut out =
            String::from("| IPv6 pod | n | median ms | p99 ms | max ms |\n|---|---|---|---|---|\n");
        for (label, v) in [
            ("aws-cni ADD", &self.ours_add),
            ("ptp + host-local ADD", &self.peer_add),
            ("aws-cni DEL", &self.ours_del),
            ("ptp + host-local DEL", &self.peer_del),
        ] {
            if let Some(s) = Summary::of(v) {
                out.push_str(&format!(
                    "| {label} | {} | {} | {} | {} |\n",
                    s.n,
                    ms(s.median),
                    ms(s.p99),
                    ms(s.max)
                ));
            }
        }
        out
    }
}

#[derive(Debug, Default)]
struct Pool {
    free: VecDeque<String>,
    held: BTreeMap<(String, String), String>,
}

#[derive(Debug, Clone, Default)]
struct StandIn(Arc<Mutex<Pool>>);

fn meta(ip: &str) -> IpAllocationMetadata {
    IpAllocationMetadata {
        i_pv6_addr: ip.to_string(),
        route_table_id: 254,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl CniBackend for StandIn {
    async fn add_network(
        &self,
        req: tonic::Request<AddNetworkRequest>,
    ) -> Result<tonic::Response<AddNetworkReply>, tonic::Status> {
        let r = req.into_inner();
        let mut pool = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (r.container_id, r.if_name);
        let ip = match pool.held.get(&key) {
            Some(ip) => ip.clone(),
            None => {
                let Some(ip) = pool.free.pop_front() else {
                    return Err(tonic::Status::resource_exhausted(
                        "the stand-in has no address left",
                    ));
                };
                pool.held.insert(key, ip.clone());
                ip
            }
        };
        Ok(tonic::Response::new(AddNetworkReply {
            success: true,
            ip_allocation_metadata: vec![meta(&ip)],
            ..Default::default()
        }))
    }

    async fn del_network(
        &self,
        req: tonic::Request<DelNetworkRequest>,
    ) -> Result<tonic::Response<DelNetworkReply>, tonic::Status> {
        let r = req.into_inner();
        let mut pool = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let released = pool.held.remove(&(r.container_id, r.if_name));
        if let Some(ip) = &released {
            pool.free.push_back(ip.clone());
        }
        Ok(tonic::Response::new(DelNetworkReply {
            success: true,
            ip_allocation_metadata: released.iter().map(|ip| meta(ip)).collect(),
            ..Default::default()
        }))
    }
}

/// The stand-in's server thread; stopped on drop.
struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(socket: &Path, addresses: usize) -> Result<Server, BenchError> {
        let svc = StandIn::default();
        {
            let mut pool = svc
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            pool.free = (1..=addresses)
                .map(|i| format!("{OURS_PREFIX}{i:x}"))
                .collect();
        }
        let listener = std::os::unix::net::UnixListener::bind(socket)
            .map_err(BenchError::io(format!("binding {}", socket.display())))?;
        listener
            .set_nonblocking(true)
            .map_err(BenchError::io("stand-in socket"))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::UnixListener::from_std(listener) else {
                    return;
                };
                let incoming = tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    |conn| conn.map(aws_cni_proto::authority::NormalizeAuthority::new),
                );
                let _ = tonic::transport::Server::builder()
                    .add_service(CniBackendServer::new(svc))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Ok(Server {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs the benchmark with addresses from `ipamd`.
pub fn run(
    bins: &Binaries,
    p: V6Params,
    ipamd: V6Ipamd,
    rng: &mut impl Rng,
) -> Result<V6Samples, BenchError> {
    let scratch = Scratch::new("v6")?;
    let mut nss = Namespaces::default();
    let node = nss.create("v6node")?;
    datapath::in_netns(&node, || {
        datapath::sysctl::set(
            None,
            &[
                ("net/ipv6/conf/all/forwarding".into(), "1"),
                ("net/ipv6/conf/default/accept_dad".into(), "1"),
            ],
        )
    })?;
    let mut daemon = None;
    let (_server, socket) = match ipamd {
        V6Ipamd::Socket(s) => (None, s),
        V6Ipamd::StandIn => {
            let s = scratch.path().join("ipamd.sock");
            (Some(Server::start(&s, p.n + p.warmup + p.window + 16)?), s)
        }
        V6Ipamd::Real(instance_type) => {
            let d = Ipamd::start(bins, &node, scratch.path(), instance_type, &V6_VARS)?;
            let s = d.socket.clone();
            daemon = Some(d);
            (None, s)
        }
    };
    let mut runner = Runner::new(bins, &node, &socket, scratch.path());
    runner.peer_conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "bench-ptp6",
        "type": "ptp",
        "mtu": 9001,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": PEER_RANGE }]],
            "routes": [{ "dst": "::/0" }],
            "dataDir": scratch.path().join("host-local6"),
        },
    });
    let mut live: [VecDeque<Pod>; 2] = [VecDeque::new(), VecDeque::new()];
    let res = run_inner(&runner, &mut nss, p, rng, &mut live);
    for (plugin, q) in [Plugin::Ours, Plugin::Peer]
        .into_iter()
        .zip(live.iter_mut())
    {
        let mut pods: Vec<Pod> = q.drain(..).collect();
        release_pods(&runner, &mut nss, plugin, &mut pods);
    }
    // The daemon stops after the last DEL (and before its namespace goes).
    drop(daemon);
    res
}

fn run_inner(
    runner: &Runner,
    nss: &mut Namespaces,
    p: V6Params,
    rng: &mut impl Rng,
    live: &mut [VecDeque<Pod>; 2],
) -> Result<V6Samples, BenchError> {
    let mut out = V6Samples::default();
    for i in 0..p.warmup + p.n {
        let timed = i >= p.warmup;
        let order = if rng.random_bool(0.5) {
            [Plugin::Ours, Plugin::Peer]
        } else {
            [Plugin::Peer, Plugin::Ours]
        };
        for plugin in order {
            let k = usize::from(plugin == Plugin::Peer);
            let mut pod = new_pod(nss, plugin, i)?;
            if plugin == Plugin::Peer && p.peer_nodad {
                datapath::in_netns(&pod.netns, || {
                    datapath::sysctl::set(None, &[("net/ipv6/conf/default/accept_dad".into(), "0")])
                })?;
            }
            let add = runner.must(plugin, "ADD", &mut pod)?;
            live[k].push_back(pod);
            let del = if live[k].len() > p.window {
                let mut old = live[k]
                    .pop_front()
                    .ok_or_else(|| BenchError::Other("empty window".into()))?;
                let d = runner.must(plugin, "DEL", &mut old)?;
                nss.delete(&old.netns)?;
                Some(d)
            } else {
                None
            };
            if timed {
                let (adds, dels) = match plugin {
                    Plugin::Ours => (&mut out.ours_add, &mut out.ours_del),
                    Plugin::Peer => (&mut out.peer_add, &mut out.peer_del),
                };
                adds.push(add);
                dels.extend(del);
            }
        }
    }
    Ok(out)
}
