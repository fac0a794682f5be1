//! Scenario tests: the whole engine (pool task, reconcile, leak cleanup) against the EC2 simulator, in virtual
//! time (a paused tokio runtime: hours of pool behaviour in milliseconds). No kernel, no root.
//!
//! Pods arrive the way kubelet sends them: an ADD that fails with "try again later" is retried a second later.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use aws_cni_proto::FailureReason;
use tokio::sync::Notify;

use crate::config::Config;
use crate::core::datastore::{IpamKey, PodMeta};
use crate::engine::{Node, NodeDeps};
use crate::host::fakes::FakeHost;
use ec2_api::clock::{Clock, TokioClock};
use ec2_api::{
    CreateEniRequest, Ec2, IpRequest, TAG_CLUSTER_NAME, TAG_CREATED_AT, TAG_ENI_OWNER,
    TAG_INSTANCE_ID,
};
use ec2_sim::{Fault, NoHotplug, SimEc2, SimSpec, SimSubnet, SIM_SUBNET_ID};

struct Harness {
    node: Arc<Node>,
    sim: SimEc2,
    clock: Arc<dyn Clock>,
    host: FakeHost,
    shutdown: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
    next: usize,
    pods: Vec<IpamKey>,
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Harness {
    async fn start(instance_type: &str, vars: &[(&str, &str)]) -> Harness {
        Harness::start_with(instance_type, vars, None, |_| {}).await
    }

    async fn start_with(
        instance_type: &str,
        vars: &[(&str, &str)],
        max_pods: Option<u32>,
        tweak: impl FnOnce(&mut SimSpec),
    ) -> Harness {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::default());
        let mut spec = SimSpec::new(instance_type);
        spec.clock = Arc::clone(&clock);
        tweak(&mut spec);
        let sim = SimEc2::launch(spec, Arc::new(NoHotplug))
            .await
            .expect("sim");
        let host = FakeHost::default();
        let deps = NodeDeps {
            ec2: Arc::new(sim.clone()),
            imds: Arc::new(sim.clone()),
            hostnet: Arc::new(host.clone()),
            clock: Arc::clone(&clock),
            cluster: Arc::new(crate::kube::NoCluster),
        };
        let config = Config::from_env(&env(vars)).expect("config");
        let node = Node::start(deps, config, max_pods).await.expect("init");
        let _ = node.fill().await;
        let shutdown = Arc::new(Notify::new());
        let task =
            tokio::spawn(Arc::clone(&node).run_pool(Duration::from_secs(5), Arc::clone(&shutdown)));
        Harness {
            node,
            sim,
            clock,
            host,
            shutdown,
            task,
            next: 0,
            pods: Vec::new(),
        }
    }

    async fn wait(&self, d: Duration) {
        self.clock.sleep(d).await;
    }

    /// One ADD, retried like kubelet (every second, up to `tries`). Returns the failure if it never worked.
    async fn add_pod(
        &mut self,
        tries: u32,
    ) -> Result<Ipv4Addr, crate::engine::admission::AddFailure> {
        let key = IpamKey {
            network_name: "aws-cni".into(),
            container_id: format!("c{}", self.next),
            if_name: "eth0".into(),
        };
        self.next += 1;
        let mut last = None;
        for _ in 0..tries.max(1) {
            match self.node.add(&key, &PodMeta::default()) {
                Ok(a) => {
                    self.pods.push(key);
                    return Ok(a.ip);
                }
                Err(f) => {
                    last = Some(f);
                    self.wait(Duration::from_secs(1)).await;
                }
            }
        }
        Err(last.expect("at least one try"))
    }

    fn del_pod(&mut self, index: usize) {
        let key = self.pods.remove(index);
        assert!(self.node.del(&key).is_some());
    }

    /// `(ENIs, addresses)` as the daemon sees them.
    fn shape(&self) -> (usize, usize) {
        let s = self.node.stats();
        (s.enis, s.total)
    }

    /// Checks that the datastore and EC2 agree on every attached ENI and its addresses, and that no address is
    /// held twice.
    fn assert_consistent_with_ec2(&self) {
        let iid = self.sim.instance_id();
        let ec2: BTreeMap<String, Vec<Ipv4Addr>> = self
            .sim
            .all_enis()
            .into_iter()
            .filter(|e| e.instance_id.as_deref() == Some(iid.as_str()))
            .map(|e| {
                let mut ips = e.secondary_ips.clone();
                ips.extend(e.ipv4_prefixes.iter().flat_map(|p| p.iter()));
                ips.sort();
                (e.id, ips)
            })
            .collect();
        let ds = self.node.datastore();
        let ours: BTreeMap<String, Vec<Ipv4Addr>> = ds
            .enis()
            .map(|e| {
                let mut ips: Vec<_> = e.ips().collect();
                ips.sort();
                (e.id.clone(), ips)
            })
            .collect();
        assert_eq!(ours, ec2, "datastore and EC2 disagree");
        let held: Vec<Ipv4Addr> = ds.assignments().iter().map(|(_, _, a)| a.ip).collect();
        let unique: HashSet<_> = held.iter().collect();
        assert_eq!(unique.len(), held.len(), "an address is held twice");
    }

    async fn stop(self) {
        self.shutdown.notify_one();
        let _ = self.task.await;
    }
}

const SETTLE: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn anchor_doc_t3_small_warm_eni_target_1() {
    let mut h = Harness::start("t3.small", &[("WARM_ENI_TARGET", "1")]).await;
    h.wait(SETTLE).await;
    assert_eq!(h.shape(), (1, 3), "0 pods: 1 ENI, 3 IPs");
    for _ in 0..5 {
        h.add_pod(30).await.expect("pod");
    }
    h.wait(SETTLE).await;
    assert_eq!(h.shape(), (3, 9), "5 pods: 3 ENIs, 9 IPs");
    h.assert_consistent_with_ec2();
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn anchor_doc_p3dn_warm_ip_5_minimum_10() {
    let vars = [("WARM_IP_TARGET", "5"), ("MINIMUM_IP_TARGET", "10")];
    let mut h = Harness::start("p3dn.24xlarge", &vars).await;
    h.wait(SETTLE).await;
    assert_eq!(h.shape(), (1, 10), "0 pods: 10 IPs on 1 ENI");
    for _ in 0..45 {
        h.add_pod(30).await.expect("pod");
        h.wait(Duration::from_secs(2)).await;
    }
    h.wait(SETTLE).await;
    assert_eq!(h.shape(), (2, 50), "45 pods: 50 IPs on 2 ENIs");
    h.assert_consistent_with_ec2();
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn anchor_doc_prefix_delegation_17_pods_on_t3_small() {
    let vars = [
        ("ENABLE_PREFIX_DELEGATION", "true"),
        ("WARM_PREFIX_TARGET", "1"),
    ];
    let mut h = Harness::start("t3.small", &vars).await;
    h.wait(SETTLE).await;
    assert_eq!(h.node.stats().prefixes, 1);
    for _ in 0..17 {
        h.add_pod(30).await.expect("pod");
    }
    h.wait(SETTLE).await;
    let s = h.node.stats();
    assert_eq!((s.prefixes, s.total), (3, 48), "17 pods -> 3 prefixes");
    let ec2_prefixes: usize = h.sim.all_enis().iter().map(|e| e.ipv4_prefixes.len()).sum();
    assert_eq!(ec2_prefixes, 3);
    h.assert_consistent_with_ec2();
    h.stop().await;
}

/// Ten instance types, single- and multi-card, with the default max-pods and with kubelet's max-pods below the
/// ENI capacity: the pool never holds more addresses than max-pods, and the last ADD names the limit.
#[tokio::test(start_paused = true)]
async fn max_pods_is_never_exceeded_on_ten_instance_types() {
    let types = [
        "t3.nano",
        "t3.small",
        "m5.large",
        "c5.xlarge",
        "m4.large",
        "r5.2xlarge",
        "c5n.18xlarge",
        "p4d.24xlarge",
        "c6in.32xlarge",
        "p5.48xlarge",
    ];
    let multi_card = types
        .iter()
        .filter(|t| {
            instance_limits::lookup(t)
                .expect("known type")
                .network_cards
                .len()
                > 1
        })
        .count();
    assert!(multi_card >= 2, "the list must include multi-card types");
    for t in types {
        for (max_pods, vars) in [
            (None, vec![]),
            (Some(30), vec![]),
            (Some(30), vec![("WARM_IP_TARGET", "7")]),
        ] {
            let mut h = Harness::start_with(t, &vars, max_pods, |_| {}).await;
            let limit = h.node.policy().max_pods as usize;
            let mut failure = None;
            for _ in 0..(limit + 3) {
                match h.add_pod(20).await {
                    Ok(_) => {}
                    Err(f) => {
                        failure = Some(f);
                        break;
                    }
                }
                assert!(
                    h.node.stats().total <= limit,
                    "{t}: {} addresses > max-pods {limit}",
                    h.node.stats().total
                );
            }
            h.wait(SETTLE).await;
            assert!(h.node.stats().total <= limit, "{t} after settling");
            let f = failure.expect("the node fills up");
            assert!(
                matches!(
                    f.reason,
                    FailureReason::MaxPodsReached | FailureReason::NodeAtEniLimit
                ),
                "{t}: {:?} {}",
                f.reason,
                f.message
            );
            let p = h.node.policy();
            let capacity = (p.max_enis * p.ips_per_eni) as usize;
            assert_eq!(
                h.pods.len(),
                limit.min(capacity),
                "{t}: every pod that fits got an address"
            );
            if limit < capacity {
                assert_eq!(f.reason, FailureReason::MaxPodsReached, "{t}");
            }
            h.assert_consistent_with_ec2();
            h.stop().await;
        }
    }
}

/// An hour of churn (a pod replaced every 4 s) with the 30 s cooldown: cooling IPs are not counted as free, so
/// the pool grows ahead of demand and no ADD ever has to wait.
#[tokio::test(start_paused = true)]
async fn churn_with_cooldown_never_fails_an_add_while_the_pool_has_room() {
    for vars in [
        vec![("WARM_IP_TARGET", "3")],
        vec![("WARM_ENI_TARGET", "1")],
    ] {
        let mut h = Harness::start("m5.xlarge", &vars).await; // 4 ENIs x 15 IPv4
        for _ in 0..20 {
            h.add_pod(30).await.expect("initial pods");
        }
        h.wait(SETTLE).await;
        let mut failures = Vec::new();
        let mut seen = HashSet::new();
        for i in 0..900 {
            h.del_pod(i % h.pods.len());
            match h.add_pod(1).await {
                Ok(ip) => {
                    seen.insert(ip);
                }
                Err(f) => failures.push(f),
            }
            h.wait(Duration::from_secs(4)).await;
        }
        assert!(failures.is_empty(), "{vars:?}: {failures:?}");
        assert!(seen.len() > 20, "addresses were recycled after cooldown");
        let s = h.node.stats();
        assert!(s.total <= h.node.policy().max_pods as usize);
        h.assert_consistent_with_ec2();
        h.stop().await;
    }
}

/// EC2 throttles for a minute, then answers 5xx in bursts and times out after applying calls: the pool is slower
/// but every pod gets an address, and in the end the datastore and EC2 agree (nothing lost, nothing leaked).
#[tokio::test(start_paused = true)]
async fn throttling_and_5xx_bursts_slow_the_pool_but_lose_nothing() {
    let mut h = Harness::start("m5.large", &[("WARM_IP_TARGET", "2")]).await;
    h.sim.throttle_for(Duration::from_secs(60));
    h.sim.inject_faults(Fault::ServerError, None, 12);
    h.sim.inject_faults(
        Fault::TimeoutAfterApply,
        Some("AssignPrivateIpAddresses"),
        2,
    );
    h.sim
        .inject_faults(Fault::Unavailable, Some("CreateNetworkInterface"), 3);
    // While EC2 throttles, an ADD that finds no address says so at once (no waiting on EC2).
    let mut reasons = Vec::new();
    for _ in 0..8 {
        match h.add_pod(1).await {
            Ok(_) => {}
            Err(f) => reasons.push(f.reason),
        }
        h.wait(Duration::from_secs(5)).await;
    }
    assert!(
        reasons.contains(&FailureReason::Ec2Throttled),
        "{reasons:?}"
    );
    let start = h.clock.now();
    let mut slowest = Duration::ZERO;
    for _ in 0..25 {
        let t = h.clock.now();
        h.add_pod(600)
            .await
            .expect("every pod gets an address eventually");
        slowest = slowest.max(h.clock.now() - t);
    }
    assert!(
        slowest >= Duration::from_secs(5),
        "the 5xx bursts did slow ADDs down"
    );
    assert!(h.clock.now() - start < Duration::from_secs(3600));
    // Reconcile (every minute) adopts what timed-out calls did assign.
    h.wait(Duration::from_secs(300)).await;
    h.assert_consistent_with_ec2();
    let c = h.node.counters();
    assert!(
        c.ec2.retried.values().sum::<u64>() > 0,
        "retried: {:?}",
        c.ec2
    );
    assert_eq!(
        h.sim.calls().values().sum::<u64>(),
        c.ec2.total_sent(),
        "every EC2 call went through the client-side pacer"
    );
    assert!(
        h.sim.all_enis().iter().all(|e| e.status == "in-use"),
        "no ENI left unattached"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn subnet_exhaustion_gives_the_specific_error() {
    // A /27 has 27 usable addresses: the primary ENI (10) and one more ENI (10) fit, a third does not.
    let mut h = Harness::start_with("m5.large", &[], None, |s| {
        s.subnet_cidr = "10.0.0.0/27".parse().expect("cidr");
    })
    .await;
    let mut failure = None;
    for _ in 0..40 {
        if let Err(f) = h.add_pod(20).await {
            failure = Some(f);
            break;
        }
    }
    let f = failure.expect("runs out");
    assert_eq!(f.reason, FailureReason::SubnetExhausted, "{}", f.message);
    assert!(f.message.contains("InsufficientFreeAddressesInSubnet"));
    h.stop().await;

    // Prefix delegation on a fragmented subnet: free addresses, but no whole /28. The anchor fails the ADD
    // (#2749); ours falls back to secondary IPs and serves it, and says so.
    let mut h = Harness::start_with(
        "m5.large",
        &[
            ("ENABLE_PREFIX_DELEGATION", "true"),
            ("WARM_PREFIX_TARGET", "1"),
        ],
        None,
        |s| {
            s.subnet_cidr = "10.0.0.0/24".parse().expect("cidr");
            s.taken = (1..16)
                .map(|b| Ipv4Addr::new(10, 0, 0, b * 16 + 7))
                .collect();
        },
    )
    .await;
    let ip = h
        .add_pod(5)
        .await
        .unwrap_or_else(|f| panic!("no /28 anywhere, yet a secondary IP: {}", f.message));
    assert!(
        h.sim
            .all_enis()
            .iter()
            .any(|e| e.secondary_ips.contains(&ip)),
        "{ip} is a secondary IP"
    );
    assert_eq!(
        h.node.address_mode(),
        crate::engine::pool_task::AddressMode::PrefixFallback
    );
    assert!(h.sim.free_addresses(SIM_SUBNET_ID) > 200);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_throttled_assign_moves_growth_to_a_new_eni_with_prefixes() {
    let mut h = Harness::start_with(
        "m5.xlarge",
        &[
            ("ENABLE_PREFIX_DELEGATION", "true"),
            ("WARM_PREFIX_TARGET", "1"),
        ],
        None,
        |_| {},
    )
    .await;
    assert_eq!(h.node.stats().total, 16);
    let creates = h
        .sim
        .calls()
        .get("CreateNetworkInterface")
        .copied()
        .unwrap_or(0);
    // The account throttles Assign for a long while; the pods still get addresses, from a new ENI.
    h.sim
        .inject_faults(Fault::Throttle, Some("AssignPrivateIpAddresses"), 1_000);
    for _ in 0..24 {
        h.add_pod(30)
            .await
            .expect("placed despite the throttled Assign");
    }
    let calls = h.sim.calls();
    assert!(
        calls.get("CreateNetworkInterface").copied().unwrap_or(0) > creates,
        "{calls:?}"
    );
    let with_prefixes = h
        .sim
        .all_enis()
        .iter()
        .filter(|e| e.device_index.is_some_and(|d| d > 0) && !e.ipv4_prefixes.is_empty())
        .count();
    assert!(with_prefixes >= 1, "a new ENI created with prefixes");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_pool_shrinks_to_target_and_frees_idle_enis_but_never_the_primary() {
    let mut h = Harness::start("m5.large", &[("WARM_IP_TARGET", "2")]).await;
    for _ in 0..20 {
        h.add_pod(30).await.expect("pod");
    }
    h.wait(SETTLE).await;
    assert_eq!(h.shape(), (3, 22));
    while h.pods.len() > 3 {
        let last = h.pods.len() - 1;
        h.del_pod(last);
    }
    h.wait(Duration::from_secs(600)).await;
    // 3 pods + 2 warm; the pods sit on the primary ENI (lowest device first), the other ENIs are gone.
    assert_eq!(h.shape(), (1, 5));
    let enis = h.sim.all_enis();
    assert_eq!(enis.len(), 1, "freed ENIs are deleted in EC2");
    assert_eq!(enis[0].device_index, Some(0));
    assert_eq!(h.host.teardowns().len(), 2);
    let calls = h.node.counters().ec2.sent;
    assert_eq!(calls.get("DetachNetworkInterface"), Some(&2));
    assert!(
        calls
            .get("UnassignPrivateIpAddresses")
            .copied()
            .unwrap_or(0)
            >= 1
    );
    h.assert_consistent_with_ec2();
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn enis_are_created_tagged_attached_with_delete_on_termination() {
    let vars = [
        ("CLUSTER_NAME", "prod"),
        ("ADDITIONAL_ENI_TAGS", r#"{"team":"net"}"#),
    ];
    let mut h = Harness::start("t3.small", &vars).await;
    for _ in 0..4 {
        h.add_pod(30).await.expect("pod");
    }
    h.wait(SETTLE).await;
    let iid = h.sim.instance_id();
    let secondary: Vec<_> = h
        .sim
        .all_enis()
        .into_iter()
        .filter(|e| e.device_index != Some(0))
        .collect();
    assert!(!secondary.is_empty());
    for e in secondary {
        assert_eq!(e.description, format!("aws-K8S-{iid}"));
        assert_eq!(e.tags.get(TAG_INSTANCE_ID), Some(&iid));
        assert!(e.tags.contains_key(TAG_CREATED_AT));
        assert_eq!(
            e.tags.get(TAG_CLUSTER_NAME).map(String::as_str),
            Some("prod")
        );
        assert!(e.tags.contains_key(TAG_ENI_OWNER));
        assert_eq!(e.tags.get("team").map(String::as_str), Some("net"));
        assert!(e.delete_on_termination);
        assert_eq!(e.status, "in-use");
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_eni_whose_attach_fails_is_deleted() {
    let mut h = Harness::start("t3.small", &[]).await;
    // More failures than the client retries: the attach fails for good once.
    h.sim
        .inject_faults(Fault::ServerError, Some("AttachNetworkInterface"), 4);
    for _ in 0..3 {
        h.add_pod(60).await.expect("pod");
    }
    h.wait(SETTLE).await;
    assert!(
        h.sim
            .calls()
            .get("DeleteNetworkInterface")
            .copied()
            .unwrap_or(0)
            >= 1
    );
    assert!(
        h.sim.all_enis().iter().all(|e| e.status == "in-use"),
        "no created-but-unattached ENI left"
    );
    h.assert_consistent_with_ec2();
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn leaked_enis_of_this_instance_are_deleted_after_five_minutes() {
    let h = Harness::start("m5.large", &[]).await;
    let iid = h.sim.instance_id();
    let created =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + h.clock.wall()).to_string();
    let mk = |instance: &str| {
        let mut tags = BTreeMap::new();
        tags.insert(TAG_INSTANCE_ID.to_string(), instance.to_string());
        tags.insert(TAG_CREATED_AT.to_string(), created.clone());
        CreateEniRequest {
            subnet_id: SIM_SUBNET_ID.into(),
            description: format!("aws-K8S-{instance}"),
            security_groups: Vec::new(),
            tags,
            ips: IpRequest::Secondary(2),
        }
    };
    let ours = h.sim.create_network_interface(mk(&iid)).await.expect("eni");
    let other = h
        .sim
        .create_network_interface(mk("i-0someoneelse00000"))
        .await
        .expect("eni");
    // Too young.
    assert_eq!(h.node.cleanup_leaked_enis().await.expect("cleanup"), 0);
    // The hourly job (first run within 5 minutes) finds it once it is old enough.
    h.wait(Duration::from_secs(2 * 3600)).await;
    let left: Vec<String> = h.sim.all_enis().into_iter().map(|e| e.id).collect();
    assert!(!left.contains(&ours.id), "leaked ENI deleted");
    assert!(
        left.contains(&other.id),
        "another instance's ENI is left alone"
    );
    h.stop().await;

    let h = Harness::start("m5.large", &[("DISABLE_LEAKED_ENI_CLEANUP", "true")]).await;
    let iid = h.sim.instance_id();
    let created =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + h.clock.wall()).to_string();
    let mut tags = BTreeMap::new();
    tags.insert(TAG_INSTANCE_ID.to_string(), iid.clone());
    tags.insert(TAG_CREATED_AT.to_string(), created);
    let kept = h
        .sim
        .create_network_interface(CreateEniRequest {
            subnet_id: SIM_SUBNET_ID.into(),
            description: format!("aws-K8S-{iid}"),
            security_groups: Vec::new(),
            tags,
            ips: IpRequest::Secondary(0),
        })
        .await
        .expect("eni");
    h.wait(Duration::from_secs(2 * 3600)).await;
    assert!(
        h.sim.all_enis().iter().any(|e| e.id == kept.id),
        "cleanup disabled"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn reconcile_adopts_removes_and_repairs_drift() {
    let mut h = Harness::start("m5.large", &[("WARM_IP_TARGET", "1")]).await;
    h.wait(SETTLE).await;
    let iid = h.sim.instance_id();
    let primary = h
        .sim
        .all_enis()
        .into_iter()
        .find(|e| e.device_index == Some(0))
        .expect("primary");
    // Someone attaches an ENI with addresses behind our back.
    let mut tags = BTreeMap::new();
    tags.insert(TAG_INSTANCE_ID.to_string(), iid.clone());
    let foreign = h
        .sim
        .create_network_interface(CreateEniRequest {
            subnet_id: SIM_SUBNET_ID.into(),
            description: "attached by hand".into(),
            security_groups: Vec::new(),
            tags,
            ips: IpRequest::Secondary(3),
        })
        .await
        .expect("eni");
    h.sim
        .attach_network_interface(&foreign.id, &iid, 2, 0)
        .await
        .expect("attach");
    // And assigns an address to the primary ENI.
    let extra = h
        .sim
        .assign_private_ips(&primary.id, IpRequest::Secondary(1))
        .await
        .expect("assign");
    let report = h.node.reconcile(true).await.expect("reconcile");
    assert_eq!(report.adopted, vec![foreign.id.clone()]);
    let ds = h.node.datastore();
    assert!(ds.eni(&foreign.id).is_some(), "adopted");
    assert!(ds
        .eni(&primary.id)
        .expect("primary")
        .ips()
        .any(|ip| ip == extra.ips[0]));
    assert!(h.host.setups().contains(&foreign.id));

    // A pod on the adopted ENI; then the ENI disappears from EC2 (detached and deleted by hand).
    let mut ip = None;
    for _ in 0..10 {
        let got = h.add_pod(5).await.expect("pod");
        if foreign.secondary_ips.contains(&got) {
            ip = Some(got);
            break;
        }
    }
    assert!(ip.is_some(), "a pod landed on the adopted ENI");
    let attachment = h
        .sim
        .all_enis()
        .into_iter()
        .find(|e| e.id == foreign.id)
        .and_then(|e| e.attachment_id)
        .expect("attached");
    h.sim
        .detach_network_interface(&attachment)
        .await
        .expect("detach");
    h.sim
        .delete_network_interface(&foreign.id)
        .await
        .expect("delete");
    h.wait(Duration::from_secs(150)).await;
    assert!(h.node.datastore().eni(&foreign.id).is_none(), "removed");
    assert!(h.host.teardowns().contains(&foreign.id));
    assert!(h.node.counters().force_removed >= 1);
    h.assert_consistent_with_ec2();
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn lagging_imds_and_slow_attach_do_not_confuse_the_pool() {
    let mut h = Harness::start_with("m5.large", &[("WARM_IP_TARGET", "4")], None, |s| {
        s.imds_lag = Duration::from_secs(8);
        s.attach_latency = Duration::from_secs(10);
    })
    .await;
    for _ in 0..24 {
        h.add_pod(60).await.expect("pod");
    }
    h.wait(Duration::from_secs(600)).await;
    assert_eq!(h.node.stats().enis, 3);
    assert_eq!(
        h.node.counters().force_removed,
        0,
        "nothing removed on a stale view"
    );
    h.assert_consistent_with_ec2();
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn adds_make_no_ec2_or_imds_call() {
    let mut h = Harness::start("m5.4xlarge", &[("WARM_IP_TARGET", "50")]).await;
    h.wait(SETTLE).await;
    h.shutdown.notify_one(); // stop the pool task: only ADDs run now
    h.wait(Duration::from_secs(1)).await;
    let calls = h.sim.calls();
    let imds = h.sim.imds_reads();
    for _ in 0..40 {
        h.add_pod(1).await.expect("free address");
    }
    assert_eq!(h.sim.calls(), calls);
    assert_eq!(h.sim.imds_reads(), imds);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn disabled_provisioning_never_changes_ec2_and_max_eni_caps() {
    let h = Harness::start(
        "m5.large",
        &[("DISABLE_NETWORK_RESOURCE_PROVISIONING", "true")],
    )
    .await;
    h.wait(SETTLE).await;
    let mutating: u64 = h
        .sim
        .calls()
        .iter()
        .filter(|(api, _)| !api.starts_with("Describe"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(mutating, 0);
    h.stop().await;

    let mut h = Harness::start("m5.large", &[("MAX_ENI", "2")]).await;
    for _ in 0..18 {
        h.add_pod(30).await.expect("pod");
    }
    let f = h.add_pod(5).await.expect_err("2 ENIs full");
    assert_eq!(f.reason, FailureReason::NodeAtEniLimit, "{}", f.message);
    assert_eq!(h.node.stats().enis, 2);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn subnet_discovery_puts_new_enis_in_the_emptiest_tagged_subnet() {
    let tagged = |v: &str| {
        let mut t = BTreeMap::new();
        t.insert("kubernetes.io/role/cni".to_string(), v.to_string());
        t
    };
    let tweak = |s: &mut SimSpec| {
        s.subnet_cidr = "10.0.0.0/26".parse().expect("cidr");
        s.extra_subnets = vec![
            SimSubnet {
                cidr: "10.0.64.0/20".parse().expect("cidr"),
                tags: tagged("1"),
                availability_zone: None,
            },
            SimSubnet {
                cidr: "10.0.128.0/18".parse().expect("cidr"),
                tags: tagged("0"),
                availability_zone: None,
            },
        ];
    };
    let mut h = Harness::start_with("t3.small", &[], None, tweak).await;
    for _ in 0..4 {
        h.add_pod(30).await.expect("pod");
    }
    h.wait(SETTLE).await;
    let subnets: Vec<String> = h
        .sim
        .all_enis()
        .into_iter()
        .filter(|e| e.device_index != Some(0))
        .map(|e| e.subnet_id)
        .collect();
    assert!(!subnets.is_empty());
    assert!(
        subnets.iter().all(|s| s == "subnet-0sim0000000000002"),
        "{subnets:?}"
    );
    h.stop().await;

    let mut h = Harness::start_with(
        "t3.small",
        &[("ENABLE_SUBNET_DISCOVERY", "false")],
        None,
        tweak,
    )
    .await;
    for _ in 0..4 {
        h.add_pod(30).await.expect("pod");
    }
    h.wait(SETTLE).await;
    assert!(h
        .sim
        .all_enis()
        .iter()
        .all(|e| e.subnet_id == SIM_SUBNET_ID));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn snat_rules_follow_the_configuration() {
    let h = Harness::start(
        "m5.large",
        &[("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "192.168.0.0/16")],
    )
    .await;
    let chain = h
        .host
        .iptables
        .rules("nat", crate::host::snat::SNAT_CHAIN)
        .expect("SNAT chain");
    let primary = h.node.primary_ip().to_string();
    assert!(chain
        .last()
        .expect("rule")
        .windows(2)
        .any(|w| w[0] == "--to-source" && w[1] == primary));
    assert_eq!(chain.len(), 3, "VPC CIDR, excluded CIDR, SNAT");
    h.stop().await;
    let h = Harness::start("m5.large", &[("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true")]).await;
    assert_eq!(
        h.host.iptables.rules("nat", crate::host::snat::SNAT_CHAIN),
        None
    );
    h.stop().await;
}

fn pod_key(name: &str) -> IpamKey {
    IpamKey {
        network_name: "aws-cni".into(),
        container_id: name.into(),
        if_name: "eth0".into(),
    }
}

/// EC2 calls that change something (what the pool's hysteresis and coalescing save).
fn mutating_calls(sim: &SimEc2) -> u64 {
    sim.calls()
        .iter()
        .filter(|(api, _)| {
            [
                "AssignPrivateIpAddresses",
                "UnassignPrivateIpAddresses",
                "CreateNetworkInterface",
                "AttachNetworkInterface",
                "DetachNetworkInterface",
                "DeleteNetworkInterface",
            ]
            .contains(api)
        })
        .map(|(_, n)| n)
        .sum()
}

/// The node's only free address is cooling and the node cannot grow (one ENI, full): an ADD waits for the
/// cooldown to end and gets it, when that is within `AWS_CNI_ADD_WAIT_SECONDS`; it fails at once with the
/// cooldown named when the cooldown ends after the bound, or when waiting is turned off.
#[tokio::test(start_paused = true)]
async fn an_add_finding_every_free_address_cooling_waits_and_gets_one() {
    for (cooldown, wait, gets_it) in [("5", "8", true), ("30", "8", false), ("5", "0", false)] {
        let vars = [
            ("MAX_ENI", "1"),
            ("IP_COOLDOWN_PERIOD", cooldown),
            ("AWS_CNI_ADD_WAIT_SECONDS", wait),
        ];
        let h = Harness::start("t3.nano", &vars).await; // 1 ENI x 2 IPv4: one secondary IP
        h.wait(SETTLE).await;
        let first = h
            .node
            .add_durable(&pod_key("first"), &PodMeta::default())
            .await
            .expect("the free address");
        h.wait(Duration::from_secs(1)).await;
        assert!(h.node.del(&pod_key("first")).is_some());
        let asked = h.clock.now();
        let res = h
            .node
            .add_durable(&pod_key("second"), &PodMeta::default())
            .await;
        let waited = h.clock.now().saturating_sub(asked);
        if gets_it {
            let a = res.expect("waited for the cooldown");
            assert_eq!(a.ip, first.ip);
            assert!(
                waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
                "waited {waited:?}: until the cooldown ended, no longer"
            );
        } else {
            let f = res.expect_err("nothing usable within the bound");
            assert_eq!(
                f.reason,
                FailureReason::AllFreeIpsInCooldown,
                "{}",
                f.message
            );
            assert_eq!(waited, Duration::ZERO, "nothing is coming in time: no wait");
        }
        h.stop().await;
    }
}

/// A burst of ADDs into an empty pool: the first ones take what is free, the rest wait, the pool asks EC2 once
/// for all of them plus the warm target, and the waiters are served in the order they came.
#[tokio::test(start_paused = true)]
async fn a_burst_of_waiting_adds_is_one_assign_and_served_in_order() {
    let h = Harness::start("m5.large", &[("WARM_IP_TARGET", "2")]).await;
    h.wait(SETTLE).await;
    assert_eq!(h.shape(), (1, 2));
    let assigns = |h: &Harness| {
        h.sim
            .calls()
            .get("AssignPrivateIpAddresses")
            .copied()
            .unwrap_or(0)
    };
    let before = assigns(&h);
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..7 {
        let node = Arc::clone(&h.node);
        let order = Arc::clone(&order);
        tasks.push(tokio::spawn(async move {
            let r = node
                .add_durable(&pod_key(&format!("burst{i}")), &PodMeta::default())
                .await;
            order.lock().expect("order").push(i);
            r
        }));
        // Let it run until it has its address or waits in the queue: arrival order is spawn order.
        tokio::task::yield_now().await;
    }
    for t in tasks {
        t.await
            .expect("task")
            .expect("every ADD of the burst gets an address");
    }
    assert_eq!(*order.lock().expect("order"), (0..7).collect::<Vec<_>>());
    assert_eq!(
        assigns(&h) - before,
        1,
        "5 waiting ADDs + 2 warm in one AssignPrivateIpAddresses"
    );
    h.wait(SETTLE).await;
    let s = h.node.stats();
    assert_eq!((s.assigned, s.available), (7, 2));
    h.assert_consistent_with_ec2();
    h.stop().await;
}

/// An ADD waiting for a slow EC2 gets the address a DEL frees (no cooldown) without waiting for EC2.
#[tokio::test(start_paused = true)]
async fn a_del_hands_its_address_to_a_waiting_add() {
    let vars = [("WARM_IP_TARGET", "1"), ("IP_COOLDOWN_PERIOD", "0")];
    let h = Harness::start_with("m5.large", &vars, None, |s| {
        s.api_latency = Duration::from_secs(4);
    })
    .await;
    h.wait(SETTLE).await;
    assert_eq!(h.shape(), (1, 1));
    let a = h
        .node
        .add_durable(&pod_key("a"), &PodMeta::default())
        .await
        .expect("the free address");
    let node = Arc::clone(&h.node);
    let clock = Arc::clone(&h.clock);
    let waiter = tokio::spawn(async move {
        let asked = clock.now();
        let r = node.add_durable(&pod_key("b"), &PodMeta::default()).await;
        (r, clock.now().saturating_sub(asked))
    });
    h.wait(Duration::from_secs(1)).await;
    assert!(h.node.del(&pod_key("a")).is_some());
    let (b, waited) = waiter.await.expect("task");
    assert_eq!(b.expect("address").ip, a.ip, "the DEL's address");
    assert!(
        waited < Duration::from_secs(2),
        "did not wait for EC2: {waited:?}"
    );
    h.stop().await;
}

/// Waves of pods (14 for 150 s, then none for 120 s): with the release hysteresis the pool keeps what the first
/// wave needed and makes no EC2 change afterwards; with `AWS_CNI_POOL_RELEASE_DELAY=0` (the anchor) it gives
/// addresses back and asks again every wave. Once the node has been quiet for longer than the delay, the pool
/// shrinks back to its idle shape.
#[tokio::test(start_paused = true)]
async fn waves_keep_their_addresses_for_the_release_delay() {
    for (delay, settings) in [
        (
            "300",
            vec![("WARM_IP_TARGET", "5"), ("MINIMUM_IP_TARGET", "10")],
        ),
        ("300", vec![]),
        (
            "0",
            vec![("WARM_IP_TARGET", "5"), ("MINIMUM_IP_TARGET", "10")],
        ),
        ("0", vec![]),
    ] {
        let mut vars = settings.clone();
        vars.push(("AWS_CNI_POOL_RELEASE_DELAY", delay));
        let mut h = Harness::start("m5.large", &vars).await;
        h.wait(SETTLE).await;
        let idle = h.shape();
        let mut per_wave = Vec::new();
        for _ in 0..3 {
            let before = mutating_calls(&h.sim);
            for _ in 0..14 {
                h.add_pod(30).await.expect("pod");
            }
            h.wait(Duration::from_secs(150)).await;
            while !h.pods.is_empty() {
                h.del_pod(0);
            }
            h.wait(Duration::from_secs(120)).await;
            per_wave.push(mutating_calls(&h.sim) - before);
        }
        if delay == "0" {
            assert!(
                per_wave[1..].iter().all(|n| *n > 0),
                "{vars:?}: the anchor's thrash: {per_wave:?}"
            );
        } else {
            assert!(per_wave[0] > 0, "{vars:?}: the first wave grows the pool");
            assert_eq!(
                &per_wave[1..],
                &[0, 0],
                "{vars:?}: nothing given back and asked again"
            );
            assert_ne!(
                h.shape(),
                idle,
                "{vars:?}: still holding the wave's addresses"
            );
        }
        h.wait(Duration::from_secs(600)).await;
        assert_eq!(h.shape(), idle, "{vars:?}: back to idle after the delay");
        h.assert_consistent_with_ec2();
        h.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_released_address_has_its_conntrack_flows_deleted() {
    let h = Harness::start("t3.nano", &[]).await;
    h.wait(SETTLE).await;
    let a = h
        .node
        .add_durable(&pod_key("old"), &PodMeta::default())
        .await
        .expect("an address");
    assert!(h.host.forgotten.lock().expect("lock").is_empty());
    assert!(h.node.del(&pod_key("old")).is_some());
    assert!(h.node.del(&pod_key("old")).is_none(), "DEL twice");
    assert_eq!(*h.host.forgotten.lock().expect("lock"), vec![a.ip]);
    h.stop().await;
}
