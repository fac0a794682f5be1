//! `ipamd demo --ipv6`: an IPv6 node, as an EKS IPv6 cluster runs it, with real pods, real packets, and nothing
//! left behind.
//!
//! 1. creates a node namespace with IPv6 forwarding on (what `ipamd install` sets with `ENABLE_IPv6`) and starts
//!    `ipamd run --backend sim` in it with `ENABLE_IPv6=true ENABLE_IPv4=false ENABLE_PREFIX_DELEGATION=true`:
//!    ipamd takes one /80 on the primary ENI, which the simulated VPC routes to it;
//! 2. runs, for each pod, the conflist's chain as a runtime would: `aws-cni` ADD (the pod's IPv6 /128), then
//!    `egress-cni` ADD with its `prevResult` (the pod's `v4if0` from 169.254.172.0/22, SNAT to the node's
//!    primary IPv4), retrying "try again later" like kubelet;
//! 3. pings from every pod to the node, its subnet's IPv6 router and the next pod over IPv6, and to "the
//!    internet" (198.51.100.1, an IPv4 address outside the VPC, which has no route back to 169.254.172.0/22)
//!    over IPv4 through egress;
//! 4. prints a table (pod, IPv6, egress IPv4, setup ms) and the pings;
//! 5. DELs every pod in reverse chain order, stops ipamd, deletes every namespace and file it made, also after a
//!    failure or Ctrl-C (the same [`Session`] as the IPv4 demo).
//!
//! Exit status 0 only if every pod got an address of the /80 and every ping succeeded.

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ec2_api::clock::{Clock, SystemClock};
use ec2_api::EniDescription;
use ipnetwork::Ipv6Network;

use super::demo::{cni, DemoArgs, DemoError, PodRow, Session};

/// The anchor's egress range for IPv6 pods (`ipamd install`'s conflist entry).
const EGRESS_V4_SUBNET: &str = "169.254.172.0/22";

/// "The internet" of the simulated VPC (`ec2_sim::fabric::INTERNET_HOST`, held by the fabric; named here so the
/// demo builds without the `sim` feature too).
const INTERNET_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// One pod of the IPv6 demo: the row the plugin runner reads, and what the chain gave it.
struct Pod6 {
    row: PodRow,
    ip: Option<Ipv6Addr>,
    egress: Option<Ipv4Addr>,
}

/// Runs the IPv6 demo; see the module docs.
pub(super) fn run(args: &DemoArgs) -> Result<(), DemoError> {
    let mut s = Session::open(args, ", IPv6 (ENABLE_IPv6=true ENABLE_IPv4=false)")?;
    let egress_bin = s.cni_bin.with_file_name("egress-cni");
    if !egress_bin.exists() {
        return Err(DemoError::NoCniBinary(egress_bin));
    }
    // The installer's IPv6 sysctls; no duplicate address detection on the node's new links (the demo's node is
    // fresh, nothing can collide).
    let node_ns = File::open(&s.node_path)
        .map_err(|e| DemoError::Setup(format!("{}: {e}", s.node_path.display())))?;
    datapath::sysctl::set(
        Some(&node_ns),
        &[
            ("net/ipv6/conf/all/forwarding".to_string(), "1"),
            ("net/ipv6/conf/default/accept_dad".to_string(), "0"),
        ],
    )
    .map_err(|e| DemoError::Setup(e.to_string()))?;
    s.start_ipamd(args, |ipamd| {
        ipamd
            .env("ENABLE_IPv6", "true")
            .env("ENABLE_IPv4", "false")
            .env("ENABLE_PREFIX_DELEGATION", "true")
            .env("WARM_PREFIX_TARGET", "1");
    })?;

    let primary = read_primary(&s.state)
        .ok_or_else(|| DemoError::Setup(format!("no primary ENI in {}", s.state.display())))?;
    let node_ip4 = primary.primary_ip;
    let node_ip6 = primary.ipv6_addresses.first().copied();
    let prefix: Option<Ipv6Network> = primary.ipv6_prefixes.first().copied();
    let router6 = primary
        .subnet_ipv6_cidr
        .map(|s| Ipv6Addr::from(u128::from(s.network()) + 1));
    println!(
        "primary ENI {} (eth0): IPv6 {}, prefix {}; IPv4 egress through egress-cni from {EGRESS_V4_SUBNET}, SNAT \
         to {node_ip4}",
        primary.id,
        node_ip6.map_or("-".into(), |i| i.to_string()),
        prefix.map_or("-".into(), |p| p.to_string()),
    );

    let conf = s.plugin_conf();
    let dir = s.dir.clone();
    let egress_dir = dir.join("egress-v4-ipam");
    // egress-cni's entry as `ipamd install` renders it on an IPv6 node.
    let egress_conf = |prev: Option<&serde_json::Value>| {
        let mut c = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "aws-cni",
            "type": "egress-cni",
            "mtu": "9001",
            "enabled": "true",
            "randomizeSNAT": "prng",
            "nodeIP": node_ip4.to_string(),
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": EGRESS_V4_SUBNET}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": egress_dir,
            },
            "pluginLogFile": dir.join("egress.log"),
            "pluginLogLevel": "info",
        });
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    };

    let mut pods = Vec::new();
    for i in 0..args.pods {
        s.check()?;
        let mut pod = Pod6 {
            row: s.new_pod(i)?,
            ip: None,
            egress: None,
        };
        let clock = SystemClock::default();
        let added = match s.add(&pod.row, &conf)? {
            Ok(result) => Some(result),
            Err((code, msg)) => {
                pod.row.error = Some(format!("aws-cni ADD failed ({code}): {msg}"));
                None
            }
        };
        if let Some(result) = added {
            pod.ip = result["ips"][0]["address"]
                .as_str()
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse().ok());
            match cni(
                &egress_bin,
                &s.node_path,
                "ADD",
                &pod.row,
                &egress_conf(Some(&result)),
            )? {
                Ok(chained) => pod.row.prev_result = Some(chained),
                Err((code, msg)) => {
                    pod.row.prev_result = Some(result);
                    pod.row.error = Some(format!("egress-cni ADD failed ({code}): {msg}"));
                }
            }
            pod.egress = egress_address(&egress_dir, &pod.row.container_id);
        }
        pod.row.setup_ms = clock.now().as_secs_f64() * 1000.0;
        pods.push(pod);
    }

    println!();
    println!(
        "{:<12} {:<30} {:<16} {:>9}",
        "POD", "IPV6", "EGRESS IPV4", "SETUP MS"
    );
    let mut outside = 0;
    for p in &pods {
        if p.ip
            .is_some_and(|ip| !prefix.is_some_and(|pf| pf.contains(ip)))
        {
            outside += 1;
        }
        println!(
            "{:<12} {:<30} {:<16} {:>9.1}",
            p.row.name,
            p.ip.map_or("-".into(), |i| i.to_string()),
            p.egress.map_or("-".into(), |i| i.to_string()),
            p.row.setup_ms
        );
        if let Some(e) = &p.row.error {
            println!("  {e}");
        }
    }

    println!();
    let ok_pods: Vec<&Pod6> = pods
        .iter()
        .filter(|p| p.ip.is_some() && p.row.error.is_none())
        .collect();
    let mut failed = pods.len() - ok_pods.len();
    let mut total = failed;
    for (i, p) in ok_pods.iter().enumerate() {
        let mut targets: Vec<(String, IpAddr)> = Vec::new();
        if let Some(n) = node_ip6 {
            targets.push(("node".into(), n.into()));
        }
        if let Some(r) = router6 {
            targets.push(("vpc-router".into(), r.into()));
        }
        if ok_pods.len() > 1 {
            let next = ok_pods[(i + 1) % ok_pods.len()];
            if let Some(ip) = next.ip {
                targets.push((next.row.name.clone(), ip.into()));
            }
        }
        targets.push(("internet (egress)".into(), INTERNET_HOST.into()));
        let (t, f) = s.pings(&p.row, targets)?;
        total += t;
        failed += f;
    }
    let _ = std::io::stdout().flush();

    // Tear the pods down as a runtime does: the chain in reverse, each with the final result as prevResult.
    let mut del_errors = 0;
    for p in &pods {
        let prev = p.row.prev_result.as_ref();
        let mut aws = conf.clone();
        if let Some(prev) = prev {
            aws["prevResult"] = prev.clone();
        }
        for (plugin, c) in [(&egress_bin, egress_conf(prev)), (&s.cni_bin, aws)] {
            if let Ok(Err((code, msg))) = cni(plugin, &s.node_path, "DEL", &p.row, &c) {
                del_errors += 1;
                eprintln!("DEL {} ({}): ({code}) {msg}", p.row.name, plugin.display());
            }
        }
    }
    drop(s);
    println!(
        "\n{} pods, {} pings, {} failed; {} DEL errors; cleaned up",
        pods.len(),
        total,
        failed,
        del_errors
    );
    println!(
        "ipv6: {} pod(s) in {}, {} outside it; IPv4 egress SNAT to {node_ip4}",
        pods.iter().filter(|p| p.ip.is_some()).count() - outside,
        prefix.map_or("-".into(), |p| p.to_string()),
        outside
    );
    if failed > 0 || del_errors > 0 {
        return Err(DemoError::PingsFailed { failed, total });
    }
    if outside > 0 {
        return Err(DemoError::Setup(format!(
            "{outside} pod(s) outside the primary ENI's /80"
        )));
    }
    Ok(())
}

/// The simulator's primary ENI, from its state file.
fn read_primary(state: &Path) -> Option<EniDescription> {
    #[derive(serde::Deserialize)]
    struct State {
        enis: std::collections::BTreeMap<String, EniDescription>,
    }
    let st: State = serde_json::from_slice(&std::fs::read(state).ok()?).ok()?;
    st.enis
        .into_values()
        .find(|e| e.device_index == Some(0) && e.network_card_index == 0)
}

/// The egress address egress-cni leased to `container_id`: host-local's layout, one file per address named by
/// it and holding the container ID on its first line.
fn egress_address(dir: &Path, container_id: &str) -> Option<Ipv4Addr> {
    let net: PathBuf = dir.join("aws-cni");
    std::fs::read_dir(net).ok()?.flatten().find_map(|f| {
        let ip: Ipv4Addr = f.file_name().to_str()?.parse().ok()?;
        let text = std::fs::read_to_string(f.path()).ok()?;
        (text.lines().next()?.trim() == container_id).then_some(ip)
    })
}
