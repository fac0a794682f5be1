//! The physical floor: what the netlink work of one pod costs on this kernel when nothing else is paid for.
//!
//! In-process `datapath::pod::setup` (veth with its peer created in the pod namespace, addresses, routes, the
//! gateway's permanent neighbour, host route, rule 512) and `datapath::pod::teardown`, on netlink sockets opened
//! once in an empty node namespace: no process exec, no gRPC, no IP allocation, no logging. The namespaces are
//! created and removed outside the timing. The difference between this and the plugin's ADD/DEL is what process
//! start-up, the daemon round trip and the plugin's bookkeeping cost.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use datapath::pod::{self, PodNetwork, PodTeardown};
use datapath::Netlink;

use super::Namespaces;
use crate::error::{check_interrupt, BenchError};

/// Setup and teardown samples.
#[derive(Debug, Default, Clone)]
pub struct FloorSamples {
    pub setup: Vec<Duration>,
    pub teardown: Vec<Duration>,
    /// Part of the teardown: the pod's rules and host route.
    pub teardown_routing: Vec<Duration>,
    /// Part of the teardown: deleting the veth pair.
    pub teardown_veth: Vec<Duration>,
}

/// `n` timed pods (after `warmup` untimed ones) in the node namespace `node`.
pub fn run(
    node: &Path,
    nss: &mut Namespaces,
    n: usize,
    warmup: usize,
) -> Result<FloorSamples, BenchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("tokio runtime"))?;
    rt.block_on(async {
        let host = Netlink::connect(Some(node))?;
        let mut out = FloorSamples::default();
        for i in 0..(warmup + n) {
            check_interrupt()?;
            let ns = nss.create(&format!("floor{i}"))?;
            let veth = format!("bfl{i}");
            let b = u16::try_from(i % 60_000).unwrap_or(0).to_be_bytes();
            let ip = Ipv4Addr::new(10, 250, b[0], b[1].max(1));
            let spec = PodNetwork {
                host_veth: &veth,
                container_ifname: "eth0",
                ip,
                table: datapath::MAIN_TABLE,
                mtu: 9001,
            };
            let t0 = crate::time::now();
            let setup = pod::setup(&host, &ns, &spec).await;
            let t_setup = crate::time::since(t0);
            // The teardown in its two halves (together exactly what `teardown` does with every field set).
            let routing = PodTeardown {
                ip: Some(ip),
                ..PodTeardown::default()
            };
            let links = PodTeardown {
                host_veth: Some(&veth),
                netns_path: Some(&ns),
                container_ifname: Some("eth0"),
                ip: None,
            };
            let t1 = crate::time::now();
            let mut errors = pod::teardown(&host, &routing).await;
            let t_routing = crate::time::since(t1);
            let t2 = crate::time::now();
            errors.extend(pod::teardown(&host, &links).await);
            let t_veth = crate::time::since(t2);
            let t_teardown = crate::time::since(t1);
            nss.delete(&ns)?;
            setup?;
            if let Some(e) = errors.into_iter().next() {
                return Err(e.into());
            }
            if i >= warmup {
                out.setup.push(t_setup);
                out.teardown.push(t_teardown);
                out.teardown_routing.push(t_routing);
                out.teardown_veth.push(t_veth);
            }
        }
        Ok(out)
    })
}
