//! The whole aws path end to end: `ipamd run --backend aws` in a node namespace, talking to moto (EC2) and the
//! IMDS test server, with attached ENIs appearing as links through the ENI fabric, and a pod set up and torn
//! down through the real `aws-cni` binary.
//!
//! ```text
//!   test process (root netns)                          node netns                       fabric netns
//!   moto_server 127.0.0.1:M  ◀── PortForward ◀── 127.0.0.1:F ◀─ ipamd (EC2 endpoint)
//!   IMDS test server  ◀──────── listener bound in ── 127.0.0.1:I ◀─ ipamd (IMDS endpoint)
//!   EniFabric thread ── reads moto, plugs ──────────▶ eth0, eth1, ... ─veth─ nic0, nic1 ── bridge "vpc" (gateway)
//!                                                    pod veths ◀── aws-cni ADD/DEL
//! ```
#![cfg(feature = "aws")]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ec2_api::{ENI_DESCRIPTION_PREFIX, TAG_INSTANCE_ID};
use integration_tests::aws::{create_vpc, ec2_on, node_view, run_instance, runtime};
use integration_tests::eni_fabric::EniFabric;
use integration_tests::imds_server::ImdsServer;
use integration_tests::moto::{Moto, ACCESS_KEY, SECRET_KEY};
use integration_tests::netns_port::{bind_in_netns, PortForward};
use integration_tests::{
    add_with_retry, arr, bin, cni, require_root, result_ip, sh, Netns, PodSpec, TempDir,
};

/// `ipamd run --backend aws`, stopped on drop.
struct Daemon {
    child: Option<Child>,
    dir: TempDir,
}

impl Daemon {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("ipamd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ipamd.log")).unwrap_or_default()
    }

    fn start(node: &Netns, env: &[(&str, String)]) -> Daemon {
        let dir = TempDir::new();
        let log = std::fs::File::create(dir.path().join("ipamd.log")).expect("log");
        let mut cmd = Command::new(bin("ipamd"));
        cmd.args(["run", "--backend", "aws", "--netns", &node.path()])
            .arg("--socket")
            .arg(dir.path().join("ipamd.sock"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut d = Daemon {
            child: Some(cmd.spawn().expect("spawn ipamd")),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.socket().exists() {
            if let Some(Ok(Some(status))) = d.child.as_mut().map(Child::try_wait) {
                panic!("ipamd exited early ({status}):\n{}", d.log());
            }
            assert!(Instant::now() < deadline, "ipamd not ready:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    /// SIGTERM; true if it exited 0 within 15 s.
    fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = sh("kill", &["-TERM", &child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match child.try_wait() {
                Ok(Some(s)) => return s.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn ipamd_on_moto_and_imds_serves_a_pod_through_aws_cni() {
    require_root();
    let moto = Moto::start();
    let rt = runtime();
    let (ec2, vpc, instance) = rt.block_on(async {
        let ec2 = ec2_on(&moto).await;
        // One /16 subnet: moto picks addresses at random in it, so a collision with the router (.1) or the
        // broadcast address is very unlikely.
        let vpc = create_vpc(ec2.sdk(), "10.30.0.0/16", "10.30.0.0/16").await;
        let instance = run_instance(ec2.sdk(), &vpc, "m5.large").await;
        (ec2, vpc, instance)
    });
    let sdk = ec2.sdk().clone();

    let node = Netns::new("act-node-");
    let fabric = EniFabric::start(&node, sdk.clone(), &instance, &vpc.subnet_cidr, 9001);
    let imds = ImdsServer::start(
        sdk.clone(),
        &instance,
        bind_in_netns(std::path::Path::new(&node.path())),
    );
    let ec2_port = PortForward::start(std::path::Path::new(&node.path()), moto.addr);

    let mut ipamd = Daemon::start(
        &node,
        &[
            ("AWS_EC2_ENDPOINT", ec2_port.endpoint()),
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                format!("http://127.0.0.1:{}", imds.addr.port()),
            ),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_VPC_K8S_CNI_LOGLEVEL", "debug".into()),
            ("WARM_IP_TARGET", "2".into()),
            ("MINIMUM_IP_TARGET", "4".into()),
        ],
    );
    assert!(
        ipamd.log().contains("aws backend"),
        "ipamd did not use the aws backend:\n{}",
        ipamd.log()
    );

    // One pod through the real plugin.
    let pod_ns = Netns::new("act-pod-");
    let pod = PodSpec {
        container_id: format!("ctr-{}", pod_ns.name),
        namespace: "default".into(),
        name: "nginx".into(),
        netns: pod_ns.path(),
        ifname: "eth0".into(),
    };
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "aws-cni",
        "type": "aws-cni",
        "vethPrefix": "eni",
        "mtu": "9001",
        "ipamdSocket": ipamd.socket(),
        "ipamdTimeoutMs": 5000,
        "pluginLogFile": ipamd.dir.path().join("plugin.log"),
        "pluginLogLevel": "debug",
    });
    let out = add_with_retry(&node, &pod, &conf);
    assert!(out.success, "ADD failed: {}\n{}", out.stdout, ipamd.log());
    let ip = result_ip(&out.json);

    // EC2 (moto) is the oracle: the pod's address is a secondary IP of an ENI of this instance.
    let view = rt.block_on(node_view(&sdk, &instance)).expect("moto view");
    let holder = view
        .enis
        .values()
        .find(|e| e.ipv4s.iter().skip(1).any(|a| *a == ip))
        .unwrap_or_else(|| panic!("{ip} is no secondary IP of {instance} in EC2: {view:#?}"));
    // Every ENI ipamd attached carries our tags and description, and is configured in the node.
    let plugged = fabric.settle(Duration::from_secs(5));
    for eni in view.enis.values().filter(|e| e.device_index > 0) {
        let d = rt
            .block_on(async {
                use ec2_api::Ec2;
                ec2.describe_network_interfaces(std::slice::from_ref(&eni.eni_id))
                    .await
            })
            .expect("describe")
            .remove(0);
        assert_eq!(d.tags.get(TAG_INSTANCE_ID), Some(&instance), "{d:?}");
        assert_eq!(d.description, format!("{ENI_DESCRIPTION_PREFIX}{instance}"));
        assert_eq!(plugged.get(&eni.device_index), Some(&eni.mac));
        let link = node.ip_json(&["link", "show", "dev", &format!("eth{}", eni.device_index)]);
        assert_eq!(link[0]["address"], eni.mac.as_str());
        assert!(
            arr(&link[0]["flags"]).iter().any(|f| f == "UP"),
            "ipamd set up eth{}: {link}",
            eni.device_index
        );
    }

    // The pod reaches its node and, through the ENI that holds its address, the VPC router.
    assert!(
        pod_ns.ping(&view.local_ipv4),
        "pod -> node {}",
        view.local_ipv4
    );
    assert!(
        pod_ns.ping(&fabric.gateway.to_string()),
        "pod -> VPC router {} (pod on {} eth{})",
        fabric.gateway,
        holder.eni_id,
        holder.device_index
    );

    let del = cni(&node, "DEL", &pod, &conf);
    assert!(del.success, "DEL failed: {}", del.stdout);
    let rules = arr(&node.ip_json(&["rule", "show"]));
    assert!(
        !rules
            .iter()
            .any(|r| r["priority"] == 512 && r["dst"] == ip.as_str()),
        "pod rule left: {rules:?}"
    );
    assert!(ipamd.stop(), "ipamd did not exit cleanly:\n{}", ipamd.log());
    assert!(
        fabric.errors().is_empty(),
        "ENI fabric errors: {:?}",
        fabric.errors()
    );
    assert!(
        imds.counters()
            .token_puts
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1,
        "ipamd used IMDSv2 tokens"
    );
}

#[test]
fn the_eni_fabric_follows_attach_detach_and_address_changes_in_moto() {
    use ec2_api::{CreateEniRequest, Ec2, IpRequest};
    require_root();
    let moto = Moto::start();
    let rt = runtime();
    let (ec2, vpc, instance) = rt.block_on(async {
        let ec2 = ec2_on(&moto).await;
        let vpc = create_vpc(ec2.sdk(), "10.31.0.0/16", "10.31.0.0/16").await;
        let instance = run_instance(ec2.sdk(), &vpc, "m5.large").await;
        (ec2, vpc, instance)
    });
    let node = Netns::new("act-node-");
    let fabric = EniFabric::start(&node, ec2.sdk().clone(), &instance, &vpc.subnet_cidr, 9001);
    let boot = fabric.plugged();
    assert_eq!(boot.len(), 1, "only the primary ENI at boot: {boot:?}");
    let eth0 = node.ip_json(&["addr", "show", "dev", "eth0"]);
    let view = rt.block_on(node_view(ec2.sdk(), &instance)).expect("view");
    assert_eq!(eth0[0]["address"], view.primary_mac.as_str());
    assert!(
        arr(&eth0[0]["addr_info"])
            .iter()
            .any(|a| a["local"] == view.local_ipv4.as_str() && a["prefixlen"] == 16),
        "{eth0}"
    );
    assert!(node.ping(&fabric.gateway.to_string()), "node -> VPC router");

    let (eni, attachment) = rt.block_on(async {
        let eni = ec2
            .create_network_interface(CreateEniRequest {
                subnet_id: vpc.subnet_id.clone(),
                description: "aws-K8S-test".into(),
                security_groups: vec![vpc.sg_id.clone()],
                tags: Default::default(),
                ips: IpRequest::Secondary(2),
            })
            .await
            .expect("create");
        let att = ec2
            .attach_network_interface(&eni.id, &instance, 2, 0)
            .await
            .expect("attach");
        (eni, att)
    });
    let plugged = fabric.settle(Duration::from_secs(5));
    assert_eq!(plugged.get(&2), Some(&eni.mac), "{plugged:?}");
    let eth2 = node.ip_json(&["link", "show", "dev", "eth2"]);
    assert_eq!(eth2[0]["address"], eni.mac.as_str());
    let neigh = fabric
        .fabric
        .ip_json(&["neigh", "show", "nud", "permanent"]);
    for ip in &eni.secondary_ips {
        assert!(
            arr(&neigh)
                .iter()
                .any(|n| n["dst"] == ip.to_string().as_str() && n["lladdr"] == eni.mac.as_str()),
            "no neighbour entry for {ip}: {neigh}"
        );
    }

    rt.block_on(ec2.unassign_private_ips(&eni.id, &eni.secondary_ips[..1], &[]))
        .expect("unassign");
    rt.block_on(ec2.detach_network_interface(&attachment))
        .expect("detach");
    let plugged = fabric.settle(Duration::from_secs(5));
    assert_eq!(plugged.len(), 1, "eth2 unplugged after detach: {plugged:?}");
    assert!(arr(&node.ip_json(&["link", "show"]))
        .iter()
        .all(|l| l["ifname"] != "eth2"));
    let neigh = fabric
        .fabric
        .ip_json(&["neigh", "show", "nud", "permanent"]);
    assert!(arr(&neigh).is_empty(), "stale neighbours: {neigh}");
    assert!(fabric.errors().is_empty(), "{:?}", fabric.errors());
}
