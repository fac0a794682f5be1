//! Tests of what a real EC2 does that a kinder double would hide (issue 15): ambiguous timeouts, limits EC2
//! enforces, ENIs left behind. The engine against the simulator on a manual clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_cni_proto::FailureReason;

use super::{Node, NodeDeps};
use crate::config::Config;
use crate::core::datastore::{IpamKey, PodMeta};
use crate::core::pool::Decision;
use crate::host::fakes::FakeHost;
use ec2_api::clock::ManualClock;
use ec2_api::{
    CreateEniRequest, Ec2, IpRequest, ENI_DESCRIPTION_PREFIX, TAG_CLUSTER_NAME, TAG_CREATED_AT,
    TAG_INSTANCE_ID,
};
use ec2_sim::{Fault, SimEc2, SimSpec, SimSubnet};
use ipnetwork::Ipv4Network;

async fn node_with(
    instance_type: &str,
    config: Config,
    tune: impl FnOnce(&mut SimSpec),
) -> (Arc<Node>, SimEc2, ManualClock, FakeHost) {
    let (sim, clock) = ec2_sim::on_manual_clock(instance_type, |s| {
        s.throttle = None;
        tune(s);
    })
    .await;
    let host = FakeHost::default();
    let deps = NodeDeps {
        ec2: Arc::new(sim.clone()),
        imds: Arc::new(sim.clone()),
        hostnet: Arc::new(host.clone()),
        clock: Arc::new(clock.clone()),
        cluster: Arc::new(crate::kube::NoCluster),
    };
    let n = Node::start(deps, config, None).await.expect("init");
    (n, sim, clock, host)
}

fn key(id: &str) -> IpamKey {
    IpamKey {
        network_name: "aws-cni".into(),
        container_id: id.into(),
        if_name: "eth0".into(),
    }
}

fn created_by_us(sim: &SimEc2) -> Vec<ec2_api::EniDescription> {
    sim.all_enis()
        .into_iter()
        .filter(|e| e.description.starts_with(ec2_api::ENI_DESCRIPTION_PREFIX))
        .collect()
}

#[tokio::test]
async fn a_create_that_times_out_after_ec2_made_the_eni_ends_with_exactly_one_eni() {
    let (n, sim, _, _) = node_with("m5.large", Config::default(), |_| {}).await;
    n.fill().await.expect("the primary ENI fills");
    // A pod takes an address: WARM_ENI_TARGET=1 wants a second ENI.
    n.add(&key("c1"), &PodMeta::default()).expect("an address");
    sim.inject_faults(Fault::TimeoutAfterApply, Some("CreateNetworkInterface"), 1);
    n.fill()
        .await
        .expect("fill: the retry returns the ENI EC2 made");
    assert_eq!(
        sim.calls().get("CreateNetworkInterface"),
        Some(&2),
        "the create was retried"
    );
    let ours = created_by_us(&sim);
    assert_eq!(ours.len(), 1, "one logical create, one ENI: {ours:?}");
    assert_eq!(ours[0].status, "in-use");
    assert!(n.datastore().eni(&ours[0].id).is_some());
}

#[tokio::test]
async fn attachment_limit_exceeded_is_the_eni_limit_and_stops_the_asking() {
    let (n, sim, clock, _) = node_with("m5.large", Config::default(), |_| {}).await;
    n.fill().await.expect("the primary ENI fills");
    n.add(&key("c0"), &PodMeta::default()).expect("an address");
    // EC2 allows fewer ENIs than the table says.
    sim.inject_faults(Fault::AttachmentLimit, Some("AttachNetworkInterface"), 1);
    let d = n
        .pool_step()
        .await
        .expect("the ENI limit is not an EC2 error");
    assert!(matches!(d, Decision::AtEniLimit { .. }), "{d:?}");
    assert_eq!(n.last_decision().1, None, "no EC2 error recorded");
    // The ENI made for the refused attachment was deleted; no other is made later.
    assert!(created_by_us(&sim).is_empty(), "{:?}", created_by_us(&sim));
    for _ in 0..5 {
        clock.advance(Duration::from_secs(30));
        n.pool_step().await.expect("step");
    }
    assert_eq!(sim.calls().get("CreateNetworkInterface"), Some(&1));
    for i in 1..9 {
        n.add(&key(&format!("c{i}")), &PodMeta::default())
            .expect("the primary's addresses");
    }
    let err = n.add(&key("c9"), &PodMeta::default()).expect_err("full");
    assert_eq!(err.reason, FailureReason::NodeAtEniLimit, "{}", err.message);
    assert!(
        err.message.contains("AttachmentLimitExceeded"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn a_host_setup_failure_after_attach_keeps_the_eni_and_reconcile_finishes_it() {
    let (n, sim, _, host) = node_with("m5.large", Config::default(), |_| {}).await;
    n.fill().await.expect("the primary ENI fills");
    n.add(&key("c0"), &PodMeta::default()).expect("an address");
    *host.failing_eni_setups.lock().expect("lock") = 1;
    n.pool_step().await.expect_err("host setup failed");
    // The ENI stays attached and takes its slot: the next steps attach no other.
    for _ in 0..3 {
        let _ = n.pool_step().await;
    }
    assert_eq!(sim.calls().get("CreateNetworkInterface"), Some(&1));
    let ours = created_by_us(&sim);
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(ours[0].status, "in-use");
    assert!(
        n.datastore().eni(&ours[0].id).is_none(),
        "not handed out yet"
    );
    // Reconcile (asked for at once) sets it up and adopts it with its addresses.
    let r = n.reconcile(true).await.expect("reconcile");
    assert_eq!(r.adopted, vec![ours[0].id.clone()]);
    assert!(n.datastore().eni(&ours[0].id).is_some());
    assert_eq!(n.policy().max_enis, 3, "its slot is the pool's again");
    assert_eq!(sim.calls().get("CreateNetworkInterface"), Some(&1));
}

fn leaked(sim: &SimEc2, owner: &str, cluster: &str) -> String {
    let tags = BTreeMap::from([
        (TAG_INSTANCE_ID.to_string(), owner.to_string()),
        (TAG_CLUSTER_NAME.to_string(), cluster.to_string()),
        (
            TAG_CREATED_AT.to_string(),
            "2025-12-01T00:00:00Z".to_string(),
        ),
    ]);
    let eni = futures::executor::block_on(sim.create_network_interface(CreateEniRequest {
        subnet_id: ec2_sim::SIM_SUBNET_ID.into(),
        description: format!("{ENI_DESCRIPTION_PREFIX}{owner}"),
        security_groups: Vec::new(),
        tags,
        ips: IpRequest::Secondary(1),
    }))
    .expect("create");
    eni.id
}

#[tokio::test]
async fn leaked_enis_of_this_node_and_of_terminated_nodes_of_the_cluster_go_and_no_others() {
    let cfg = Config {
        cluster_name: "blue".into(),
        ..Config::default()
    };
    let (n, sim, _, _) = node_with("m5.large", cfg, |_| {}).await;
    let me = sim.instance_id();
    sim.add_instance("i-0dead", "terminated");
    sim.add_instance("i-0alive", "running");
    let mine = leaked(&sim, &me, "blue");
    let dead = leaked(&sim, "i-0dead", "blue");
    let vanished = leaked(&sim, "i-0gone", "blue");
    let alive = leaked(&sim, "i-0alive", "blue");
    let other_cluster = leaked(&sim, "i-0dead", "green");
    let deleted = n.cleanup_leaked_enis().await.expect("cleanup");
    assert_eq!(deleted, 3);
    let left: Vec<String> = sim.all_enis().into_iter().map(|e| e.id).collect();
    for id in [&mine, &dead, &vanished] {
        assert!(!left.contains(id), "{id} should be gone: {left:?}");
    }
    for id in [&alive, &other_cluster] {
        assert!(left.contains(id), "{id} must stay: {left:?}");
    }
}

#[tokio::test]
async fn without_a_cluster_name_only_this_nodes_leaks_go() {
    let (n, sim, _, _) = node_with("m5.large", Config::default(), |_| {}).await;
    let me = sim.instance_id();
    sim.add_instance("i-0dead", "terminated");
    let mine = leaked(&sim, &me, "");
    let dead = leaked(&sim, "i-0dead", "");
    assert_eq!(n.cleanup_leaked_enis().await.expect("cleanup"), 1);
    let left: Vec<String> = sim.all_enis().into_iter().map(|e| e.id).collect();
    assert!(!left.contains(&mine) && left.contains(&dead), "{left:?}");
}

#[tokio::test]
async fn an_eni_found_attached_gets_delete_on_termination_and_the_instance_tag() {
    let (sim, clock) = ec2_sim::on_manual_clock("m5.large", |s| s.throttle = None).await;
    let me = sim.instance_id();
    // A crash between attach and ModifyNetworkInterfaceAttribute, of an ENI someone made without our tag.
    let eni = sim
        .create_network_interface(CreateEniRequest {
            subnet_id: ec2_sim::SIM_SUBNET_ID.into(),
            description: format!("{ENI_DESCRIPTION_PREFIX}{me}"),
            security_groups: Vec::new(),
            tags: BTreeMap::new(),
            ips: IpRequest::Secondary(2),
        })
        .await
        .expect("create");
    sim.attach_network_interface(&eni.id, &me, 1, 0)
        .await
        .expect("attach");
    let deps = NodeDeps {
        ec2: Arc::new(sim.clone()),
        imds: Arc::new(sim.clone()),
        hostnet: Arc::new(FakeHost::default()),
        clock: Arc::new(clock),
        cluster: Arc::new(crate::kube::NoCluster),
    };
    let n = Node::start(deps, Config::default(), None)
        .await
        .expect("init");
    assert!(n.datastore().eni(&eni.id).is_some(), "adopted");
    let d = sim
        .all_enis()
        .into_iter()
        .find(|e| e.id == eni.id)
        .expect("still there");
    assert!(d.delete_on_termination, "{d:?}");
    assert_eq!(d.tags.get(TAG_INSTANCE_ID), Some(&me), "{d:?}");
}

#[tokio::test]
async fn an_exhausted_discovery_subnet_makes_the_eni_go_to_the_next_candidate() {
    // Prefix delegation. The tagged subnet has the most free addresses but no whole /28 (every 8th address is
    // another tenant's): InsufficientCidrBlocks. The node's smaller subnet has whole blocks.
    let cfg = Config {
        prefix_delegation: true,
        warm_prefix_target: 1,
        ..Config::default()
    };
    let (n, sim, _, _) = node_with("t3.small", cfg, |s| {
        s.subnet_cidr = "10.0.0.0/24".parse().expect("cidr");
        let tagged: Ipv4Network = "10.0.16.0/20".parse().expect("cidr");
        s.extra_subnets = vec![SimSubnet {
            cidr: tagged,
            tags: BTreeMap::from([("kubernetes.io/role/cni".to_string(), "1".to_string())]),
            availability_zone: None,
        }];
        s.taken = tagged.iter().step_by(8).collect();
    })
    .await;
    // Pods until the primary ENI's prefixes are all taken and a second ENI is needed.
    let mut pods = 0;
    for _ in 0..16 {
        n.fill()
            .await
            .expect("fill: never blocked by the exhausted subnet");
        if sim.calls().contains_key("CreateNetworkInterface") {
            break;
        }
        for _ in 0..n.stats().available {
            n.add(&key(&format!("c{pods}")), &PodMeta::default())
                .expect("an address");
            pods += 1;
        }
    }
    let ours = created_by_us(&sim);
    assert_eq!(
        ours.len(),
        1,
        "{:?} {:?} {:?} pods {pods}",
        sim.calls(),
        n.stats(),
        n.last_decision()
    );
    assert_eq!(ours[0].subnet_id, ec2_sim::SIM_SUBNET_ID);
    assert_eq!(sim.calls().get("CreateNetworkInterface"), Some(&2));
    assert_eq!(n.last_decision().1, None);
}
