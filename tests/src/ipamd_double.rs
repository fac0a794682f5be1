//! A small stand-in for ipamd on a Unix socket: `rpc.CNIBackend` and `rpc.IpamdControl` answering from a fixed
//! list of addresses, for tests of the plugin's address families before ipamd hands them out (IPv6 mode lives
//! on another branch). An address that parses as IPv6 is returned in `IPv6Addr` with `IPv4Addr` empty, as the
//! anchor's ipamd answers in IPv6 mode; in `rpc.IpamdControl`'s `Allocation` it goes into `IPv4Addr`, the one
//! address field on this branch (ipamd's IPv6 branch adds `IPv6Addr = 10`: then it goes there, see
//! `cni-plugin/src/family.rs`).
//!
//! It keeps assignments in memory, keyed by (network, container ID, ifname) like ipamd: a repeated ADD gets the
//! same address, a DEL of something it does not hold answers success with no address, GC releases what is not
//! in the valid list. It runs on its own thread and runtime; dropping it stops the server.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aws_cni_proto::rpc::{
    AddNetworkReply, AddNetworkRequest, Allocation, DelNetworkReply, DelNetworkRequest, GcReply,
    GcRequest, IpAllocationMetadata, ListAllocationsReply, ListAllocationsRequest, StatusReply,
    StatusRequest,
};
use aws_cni_proto::{CniBackend, CniBackendServer, IpamdControl, IpamdControlServer};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// (network, container ID, ifname).
type Key = (String, String, String);

#[derive(Debug, Default)]
struct State {
    free: Vec<String>,
    held: BTreeMap<Key, (String, String, String)>,
}

#[derive(Debug, Clone, Default)]
struct Service(Arc<Mutex<State>>);

fn meta(ip: &str) -> IpAllocationMetadata {
    let v6 = ip.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6());
    IpAllocationMetadata {
        i_pv4_addr: if v6 { String::new() } else { ip.to_string() },
        i_pv6_addr: if v6 { ip.to_string() } else { String::new() },
        device_number: 0,
        route_table_id: 254,
    }
}

fn allocation(k: &Key, v: &(String, String, String)) -> Allocation {
    Allocation {
        network_name: k.0.clone(),
        container_id: k.1.clone(),
        if_name: k.2.clone(),
        i_pv4_addr: if v.0.contains(':') {
            String::new()
        } else {
            v.0.clone()
        },
        i_pv6_addr: if v.0.contains(':') {
            v.0.clone()
        } else {
            String::new()
        },
        route_table_id: 254,
        k8s_pod_namespace: v.1.clone(),
        k8s_pod_name: v.2.clone(),
        ..Default::default()
    }
}

impl Service {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[tonic::async_trait]
impl CniBackend for Service {
    async fn add_network(
        &self,
        req: Request<AddNetworkRequest>,
    ) -> Result<Response<AddNetworkReply>, Status> {
        let r = req.into_inner();
        let key = (r.network_name, r.container_id, r.if_name);
        let mut st = self.state();
        let ip = match st.held.get(&key) {
            Some(v) => v.0.clone(),
            None => {
                if st.free.is_empty() {
                    return Ok(Response::new(AddNetworkReply {
                        success: false,
                        failure_message: "the double has no address left".into(),
                        ..Default::default()
                    }));
                }
                let ip = st.free.remove(0);
                st.held
                    .insert(key, (ip.clone(), r.k8s_pod_namespace, r.k8s_pod_name));
                ip
            }
        };
        Ok(Response::new(AddNetworkReply {
            success: true,
            ip_allocation_metadata: vec![meta(&ip)],
            ..Default::default()
        }))
    }

    async fn del_network(
        &self,
        req: Request<DelNetworkRequest>,
    ) -> Result<Response<DelNetworkReply>, Status> {
        let r = req.into_inner();
        let key = (r.network_name, r.container_id, r.if_name);
        let mut st = self.state();
        let released = st.held.remove(&key);
        let metadata = match released {
            Some((ip, _, _)) => {
                st.free.push(ip.clone());
                vec![meta(&ip)]
            }
            None => Vec::new(),
        };
        Ok(Response::new(DelNetworkReply {
            success: true,
            ip_allocation_metadata: metadata,
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl IpamdControl for Service {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(StatusReply {
            ready: true,
            ..Default::default()
        }))
    }

    async fn list_allocations(
        &self,
        req: Request<ListAllocationsRequest>,
    ) -> Result<Response<ListAllocationsReply>, Status> {
        let r = req.into_inner();
        let st = self.state();
        let allocations = st
            .held
            .iter()
            .filter(|(k, _)| r.network_name.is_empty() || k.0 == r.network_name)
            .filter(|(k, _)| r.container_id.is_empty() || k.1 == r.container_id)
            .map(|(k, v)| allocation(k, v))
            .collect();
        Ok(Response::new(ListAllocationsReply { allocations }))
    }

    async fn gc(&self, req: Request<GcRequest>) -> Result<Response<GcReply>, Status> {
        let r = req.into_inner();
        let mut st = self.state();
        let valid = |k: &Key| {
            r.valid
                .iter()
                .any(|a| a.container_id == k.1 && a.if_name == k.2)
        };
        let gone: Vec<Key> = st
            .held
            .keys()
            .filter(|k| k.0 == r.network_name && !valid(k))
            .cloned()
            .collect();
        let mut released = Vec::new();
        for k in gone {
            if let Some(v) = st.held.remove(&k) {
                released.push(allocation(&k, &v));
                st.free.push(v.0);
            }
        }
        let kept = st
            .held
            .iter()
            .filter(|(k, _)| k.0 == r.network_name)
            .map(|(k, v)| allocation(k, v))
            .collect();
        Ok(Response::new(GcReply { released, kept }))
    }
}

/// The running double.
pub struct IpamdDouble {
    socket: PathBuf,
    state: Service,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl IpamdDouble {
    /// Serves on `dir/ipamd.sock`, handing out `addresses` in order (released ones go to the back).
    pub fn start(dir: &Path, addresses: &[&str]) -> IpamdDouble {
        let socket = dir.join("ipamd.sock");
        let _ = std::fs::remove_file(&socket);
        let state = Service(Arc::new(Mutex::new(State {
            free: addresses.iter().map(|a| a.to_string()).collect(),
            held: BTreeMap::new(),
        })));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let svc = state.clone();
        let path = socket.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::UnixListener::bind(&path).expect("bind the double's socket");
                let _ = ready_tx.send(());
                let incoming =
                    tokio_stream::StreamExt::map(UnixListenerStream::new(listener), |conn| {
                        conn.map(aws_cni_proto::authority::NormalizeAuthority::new)
                    });
                let _ = tonic::transport::Server::builder()
                    .add_service(CniBackendServer::new(svc.clone()))
                    .add_service(IpamdControlServer::new(svc))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the double starts");
        IpamdDouble {
            socket,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The addresses it holds now.
    pub fn held(&self) -> Vec<String> {
        self.state
            .state()
            .held
            .values()
            .map(|v| v.0.clone())
            .collect()
    }
}

impl Drop for IpamdDouble {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
