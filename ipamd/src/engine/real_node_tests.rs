//! Tests of what a real EC2 does that a kinder double would hide (issue 15): ambiguous timeouts, limits EC2
//! enforces, ENIs left behind. The engine against the simulator on a manual clock.

use std::sync::Arc;
use std::time::Duration;

use aws_cni_proto::FailureReason;

use super::{Node, NodeDeps};
use crate::config::Config;
use crate::core::datastore::{IpamKey, PodMeta};
use crate::core::pool::Decision;
use crate::host::fakes::FakeHost;
use ec2_api::clock::ManualClock;
use ec2_sim::{Fault, SimEc2, SimSpec};

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
