//! The verbs. ADD builds the egress path and passes the previous result through with the two new interfaces
//! appended (its addresses stay out of `ips`, as the anchor: the pod's address is aws-cni's); DEL, CHECK and GC
//! are keyed by the attachment (container ID, CNI_IFNAME), never by anything the pod's namespace says.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use cni_types::{CniEnv, CniError, CniResult, Interface};
use datapath::Netlink;

use crate::alloc::{gateway, Allocator};
use crate::conf::{Direction, EgressConf, Randomize};
use crate::error::EgressError;
use crate::link::{self, host_veth_name, EgressLink};
use crate::snat::{self, CommandIptables, Iptables, Random};

fn attachment(env: &CniEnv) -> Result<(&str, &str), EgressError> {
    match (&env.container_id, &env.ifname) {
        (Some(c), Some(i)) => Ok((c, i)),
        _ => Err(CniError::invalid_env("egress-cni needs CNI_CONTAINERID and CNI_IFNAME").into()),
    }
}

fn allocator(conf: &EgressConf) -> Allocator {
    Allocator::new(&conf.data_dir, &conf.net.name, conf.subnet)
}

fn iptables(conf: &EgressConf) -> CommandIptables {
    CommandIptables::detect(conf.direction == Direction::V6Egress)
}

fn random(conf: &EgressConf) -> Random {
    match conf.randomize {
        Randomize::Fully => Random::Fully,
        Randomize::Hash => Random::Hash,
        Randomize::Off => Random::Off,
    }
}

fn joined(errors: impl IntoIterator<Item = String>) -> String {
    errors.into_iter().collect::<Vec<_>>().join("; ")
}

/// ADD: the result to print.
pub async fn add(env: &CniEnv, conf: &EgressConf) -> Result<CniResult, EgressError> {
    let Some(prev) = conf.net.prev_result()? else {
        return Err(CniError::invalid_config(
            "egress-cni must be called as a chained plugin (no prevResult)",
        )
        .into());
    };
    if !conf.enabled {
        return Ok(prev);
    }
    let (container_id, ifname) = attachment(env)?;
    let netns = env
        .netns
        .as_deref()
        .ok_or_else(|| EgressError::from(CniError::invalid_env("ADD needs CNI_NETNS")))?;
    if !netns.exists() {
        return Err(EgressError::NetnsMissing(netns.display().to_string()));
    }
    let node_ip = conf
        .node_ip
        .ok_or_else(|| EgressError::from(CniError::invalid_config("nodeIP is required")))?;
    let alloc = allocator(conf);
    let ip = alloc.allocate(container_id, ifname)?;
    let host_veth = host_veth_name(container_id, ifname, conf.ifname());
    let host = Netlink::connect(None).map_err(|e| EgressError::Setup(e.to_string()))?;
    let spec = EgressLink {
        host_veth: &host_veth,
        egress_if: conf.ifname(),
        pod_if: ifname,
        ip,
        gateway: gateway(conf.subnet),
        mtu: conf.mtu,
    };
    let built = match link::setup(&host, netns, &spec).await {
        Ok(b) => b,
        Err(e) => {
            undo(&host, conf, env, &host_veth, ip).await;
            return Err(EgressError::Setup(e.to_string()));
        }
    };
    let chain = snat::chain_name(conf.chain_prefix(), &conf.net.name, container_id);
    let comment = snat::comment(&conf.net.name, container_id);
    let ipt = iptables(conf);
    let v6 = conf.direction == Direction::V6Egress;
    if let Err(e) = snat::add(&ipt, &chain, &comment, node_ip, ip, random(conf))
        .and_then(|()| snat::ensure_forward_reject(&ipt, &conf.subnet.to_string(), v6))
    {
        let _ = snat::del(&ipt, &chain);
        undo(&host, conf, env, &host_veth, ip).await;
        return Err(EgressError::Setup(e.to_string()));
    }
    tracing::info!(container = %container_id, %ip, veth = %host_veth, %chain, "egress ADD done");
    let mut result = prev;
    let mut host_if = Interface::new(host_veth.clone());
    host_if.mac = Some(built.host_mac.to_string());
    let mut pod_if = Interface::new(conf.ifname());
    pod_if.mac = built.pod_mac.map(|m| m.to_string());
    pod_if.sandbox = Some(netns.display().to_string());
    result.interfaces.push(host_if);
    result.interfaces.push(pod_if);
    Ok(result)
}

async fn undo(host: &Netlink, conf: &EgressConf, env: &CniEnv, host_veth: &str, ip: IpAddr) {
    for e in link::teardown(
        host,
        env.netns.as_deref(),
        conf.ifname(),
        host_veth,
        Some(ip),
    )
    .await
    {
        tracing::error!(error = %e, "undoing a failed egress ADD");
    }
    if let Ok((c, i)) = attachment(env) {
        if let Err(e) = allocator(conf).release(c, i) {
            tracing::error!(error = %e, "returning the egress address of a failed ADD");
        }
    }
}

/// DEL: removes the interface, the SNAT chain and the lease; keeps going and reports every failure.
pub async fn del(env: &CniEnv, conf: &EgressConf) -> Result<(), EgressError> {
    if !conf.enabled {
        return Ok(());
    }
    let (container_id, ifname) = attachment(env)?;
    let alloc = allocator(conf);
    let mut errors = Vec::new();
    let ip = match alloc.held_by(container_id, ifname) {
        Ok(ip) => ip,
        Err(e) => {
            errors.push(e.to_string());
            None
        }
    };
    let host_veth = host_veth_name(container_id, ifname, conf.ifname());
    match Netlink::connect(None) {
        Ok(host) => {
            for e in
                link::teardown(&host, env.netns.as_deref(), conf.ifname(), &host_veth, ip).await
            {
                errors.push(e.to_string());
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    let chain = snat::chain_name(conf.chain_prefix(), &conf.net.name, container_id);
    errors.extend(
        snat::del(&iptables(conf), &chain)
            .iter()
            .map(|e| e.to_string()),
    );
    if let Err(e) = alloc.release(container_id, ifname) {
        errors.push(e.to_string());
    }
    tracing::info!(container = %container_id, ip = ?ip, errors = errors.len(), "egress DEL done");
    if errors.is_empty() {
        Ok(())
    } else {
        Err(EgressError::Teardown(joined(errors)))
    }
}

/// CHECK: the lease, the pod's egress interface with its address, the host end and its route, the SNAT chain.
pub async fn check(env: &CniEnv, conf: &EgressConf) -> Result<(), EgressError> {
    if !conf.enabled {
        return Ok(());
    }
    let (container_id, ifname) = attachment(env)?;
    let netns = env
        .netns
        .as_deref()
        .ok_or_else(|| EgressError::from(CniError::invalid_env("CHECK needs CNI_NETNS")))?;
    if !netns.exists() {
        return Err(EgressError::NetnsMissing(netns.display().to_string()));
    }
    let mut problems = Vec::new();
    let Some(ip) = allocator(conf).held_by(container_id, ifname)? else {
        return Err(EgressError::Drift(vec![format!(
            "no egress address is held for container {container_id} interface {ifname}"
        )]));
    };
    let setup = |e: datapath::NetlinkError| EgressError::Setup(e.to_string());
    let pod = Netlink::connect(Some(netns)).map_err(setup)?;
    match pod.link_by_name(conf.ifname()).await.map_err(setup)? {
        None => problems.push(format!(
            "{} is missing in {}",
            conf.ifname(),
            netns.display()
        )),
        Some(l) => {
            let addrs = pod.addresses(l.index).await.map_err(setup)?;
            if !addrs.iter().any(|(a, _)| *a == ip) {
                problems.push(format!("{ip} is missing on {}", conf.ifname()));
            }
        }
    }
    let host = Netlink::connect(None).map_err(setup)?;
    let host_veth = host_veth_name(container_id, ifname, conf.ifname());
    match host.link_by_name(&host_veth).await.map_err(setup)? {
        None => problems.push(format!("host end {host_veth} is missing")),
        Some(v) => {
            let routed = match ip {
                IpAddr::V4(ip) => host
                    .routes::<Ipv4Addr>(datapath::MAIN_TABLE)
                    .await
                    .map_err(setup)?
                    .iter()
                    .any(|r| r.dst == ip && r.prefix_len == 32 && r.oif == Some(v.index)),
                IpAddr::V6(ip) => host
                    .routes::<Ipv6Addr>(datapath::MAIN_TABLE)
                    .await
                    .map_err(setup)?
                    .iter()
                    .any(|r| r.dst == ip && r.prefix_len == 128 && r.oif == Some(v.index)),
            };
            if !routed {
                problems.push(format!("host route to {ip} via {host_veth} is missing"));
            }
        }
    }
    let chain = snat::chain_name(conf.chain_prefix(), &conf.net.name, container_id);
    let ipt = iptables(conf);
    if ipt
        .run(&["-t".into(), "nat".into(), "-S".into(), chain.clone()])
        .is_err()
    {
        problems.push(format!("SNAT chain {chain} is missing"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(EgressError::Drift(problems))
    }
}

/// GC: releases the leases, host ends and SNAT chains of attachments not in `cni.dev/valid-attachments`.
pub async fn gc(conf: &EgressConf) -> Result<(), EgressError> {
    let Some(valid) = &conf.net.valid_attachments else {
        return Err(CniError::invalid_config(
            "GC needs cni.dev/valid-attachments (refusing to treat a missing list as \"nothing is valid\")",
        )
        .into());
    };
    let valid_pairs: HashSet<(String, String)> = valid
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let valid_ids: HashSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();
    let mut errors = Vec::new();
    let released = allocator(conf).release_all_but(&valid_pairs)?;
    match Netlink::connect(None) {
        Ok(host) => {
            for l in &released {
                let veth = host_veth_name(&l.container_id, &l.ifname, conf.ifname());
                for e in
                    link::teardown(&host, None::<&Path>, conf.ifname(), &veth, Some(l.ip)).await
                {
                    errors.push(format!("{}: {e}", l.ip));
                }
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    let ipt = iptables(conf);
    let (chains_gone, snat_errors) = snat::gc(&ipt, conf.chain_prefix(), &conf.net.name, &|id| {
        valid_ids.contains(id)
    });
    errors.extend(snat_errors.iter().map(|e| e.to_string()));
    tracing::info!(
        released = released.len(),
        chains = chains_gone.len(),
        errors = errors.len(),
        "egress GC done"
    );
    if errors.is_empty() {
        Ok(())
    } else {
        Err(EgressError::Teardown(joined(errors)))
    }
}
