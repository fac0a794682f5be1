//! The simulator against EC2's rules: limits, subnets, prefixes, lag, throttling, faults, persistence.

use std::net::Ipv4Addr;

use ec2_api::clock::ManualClock;
use ec2_api::layer::{Attempt, Call};
use ec2_api::{CreateEniRequest, Ec2, Ec2Error, Ec2Layer, EniFilter, Imds, Layered, SubnetFilter};
use futures::future::BoxFuture;

use super::*;

async fn sim(t: &str) -> SimEc2 {
    SimEc2::launch(SimSpec::new(t), Arc::new(NoHotplug))
        .await
        .expect("launch")
}

fn req(ips: IpRequest) -> CreateEniRequest {
    CreateEniRequest {
        subnet_id: SIM_SUBNET_ID.into(),
        description: "aws-K8S-test".into(),
        tags: BTreeMap::new(),
        security_groups: Vec::new(),
        ips,
    }
}

#[tokio::test]
async fn enforces_eni_and_ip_limits_of_the_instance_type() {
    let s = sim("m5.large").await; // 3 ENIs x 10 IPv4
    let iid = s.instance_id();
    let sec = |n| req(IpRequest::Secondary(n));
    assert!(matches!(
        s.create_network_interface(sec(10)).await,
        Err(Ec2Error::IpLimitExceeded { .. })
    ));
    let a = s.create_network_interface(sec(9)).await.expect("eni a");
    let b = s.create_network_interface(sec(0)).await.expect("eni b");
    let c = s.create_network_interface(sec(0)).await.expect("eni c");
    s.attach_network_interface(&a.id, &iid, 1, 0)
        .await
        .expect("attach a");
    assert!(
        s.attach_network_interface(&b.id, &iid, 1, 0).await.is_err(),
        "index in use"
    );
    s.attach_network_interface(&b.id, &iid, 2, 0)
        .await
        .expect("attach b");
    assert!(matches!(
        s.attach_network_interface(&c.id, &iid, 3, 0).await,
        Err(Ec2Error::EniLimitExceeded { .. })
    ));
    assert!(matches!(
        s.assign_private_ips(&a.id, IpRequest::Secondary(1)).await,
        Err(Ec2Error::IpLimitExceeded { .. })
    ));
    let got = s
        .assign_private_ips(&b.id, IpRequest::Secondary(9))
        .await
        .expect("assign");
    assert_eq!(got.ips.len(), 9);
    let enis = s.enis().await.expect("imds");
    assert_eq!(enis.len(), 3);
    assert_eq!(enis[2].ipv4s.len(), 10);
    assert_eq!(s.calls().get("AttachNetworkInterface"), Some(&4));
}

#[tokio::test]
async fn multi_card_types_attach_on_every_card() {
    let limits = instance_limits::all()
        .iter()
        .find(|l| l.network_cards.len() > 1)
        .expect("a multi-card type");
    let s = sim(limits.instance_type).await;
    let iid = s.instance_id();
    let card1 = limits.network_cards[1];
    let e = s
        .create_network_interface(req(IpRequest::Secondary(0)))
        .await
        .expect("eni");
    s.attach_network_interface(&e.id, &iid, 0, card1.index)
        .await
        .expect("device 0 on card 1");
    let imds = s.enis().await.expect("imds");
    assert!(imds
        .iter()
        .any(|i| i.network_card == card1.index && i.eni_id == e.id));
    let bad = s
        .create_network_interface(req(IpRequest::Secondary(0)))
        .await
        .expect("eni");
    assert!(s
        .attach_network_interface(&bad.id, &iid, 1, 999)
        .await
        .is_err());
}

#[tokio::test]
async fn subnet_runs_out() {
    let mut spec = SimSpec::new("m5.large");
    spec.subnet_cidr = "10.0.0.0/28".parse().expect("cidr"); // 16 - 5 reserved = 11 usable
    let s = SimEc2::launch(spec, Arc::new(NoHotplug))
        .await
        .expect("launch");
    let primary = s.enis().await.expect("imds")[0].eni_id.clone();
    s.assign_private_ips(&primary, IpRequest::Secondary(9))
        .await
        .expect("9 fit");
    let err = s
        .assign_private_ips(&primary, IpRequest::Secondary(0))
        .await
        .map(|v| v.ips.len());
    assert_eq!(err, Ok(0));
    assert!(matches!(
        s.create_network_interface(req(IpRequest::Secondary(1)))
            .await,
        Err(Ec2Error::SubnetExhausted { .. })
    ));
}

#[tokio::test]
async fn prefixes_need_whole_free_blocks() {
    let mut spec = SimSpec::new("m5.large");
    spec.subnet_cidr = "10.0.0.0/26".parse().expect("cidr"); // 4 blocks of 16
                                                             // Other tenants hold one address in the third block; the first holds the reserved addresses.
    spec.taken = vec!["10.0.0.40".parse().expect("ip")];
    let s = SimEc2::launch(spec, Arc::new(NoHotplug))
        .await
        .expect("launch");
    let primary = s.enis().await.expect("imds")[0].eni_id.clone();
    let got = s
        .assign_private_ips(&primary, IpRequest::Prefixes(1))
        .await
        .expect("one block free");
    assert_eq!(got.prefixes, vec!["10.0.0.16/28".parse().expect("pfx")]);
    let err = s
        .assign_private_ips(&primary, IpRequest::Prefixes(2))
        .await
        .expect_err("fragmented");
    assert_eq!(err.code(), "InsufficientCidrBlocks");
    assert!(
        s.free_addresses(SIM_SUBNET_ID) > 16,
        "free addresses remain"
    );
    let imds = s.enis().await.expect("imds");
    assert_eq!(imds[0].ipv4_prefixes, got.prefixes);
    s.unassign_private_ips(&primary, &[], &got.prefixes)
        .await
        .expect("unassign prefix");
    assert!(s.enis().await.expect("imds")[0].ipv4_prefixes.is_empty());
}

#[tokio::test]
async fn a_subnet_fragmented_on_request_has_addresses_but_no_free_28_until_lifted() {
    let s = sim("m5.large").await;
    let primary = s.enis().await.expect("imds")[0].eni_id.clone();
    let free = s.free_addresses(SIM_SUBNET_ID);
    let tenants = s.fragment_subnet(Some(SIM_SUBNET_ID));
    assert!(
        tenants > 100,
        "one address of each free /28 of the /20: {tenants}"
    );
    assert_eq!(s.free_addresses(SIM_SUBNET_ID), free - tenants);
    let err = s
        .assign_private_ips(&primary, IpRequest::Prefixes(1))
        .await
        .expect_err("no aligned block");
    assert_eq!(err.code(), "InsufficientCidrBlocks");
    let err = s
        .create_network_interface(req(IpRequest::Prefixes(1)))
        .await
        .expect_err("no aligned block for a new ENI either");
    assert_eq!(err.code(), "InsufficientCidrBlocks");
    // Single addresses are still there.
    let got = s
        .assign_private_ips(&primary, IpRequest::Secondary(5))
        .await
        .expect("secondary IPs");
    assert_eq!(got.ips.len(), 5);
    // A block given back while fragmented is taken apart again by the tenants before the next prefix request.
    s.defragment_subnet(None);
    let p = s
        .assign_private_ips(&primary, IpRequest::Prefixes(1))
        .await
        .expect("lifted: whole blocks are free again");
    assert_eq!(p.prefixes.len(), 1);
    s.fragment_subnet(None);
    s.unassign_private_ips(&primary, &[], &p.prefixes)
        .await
        .expect("give it back");
    let err = s
        .assign_private_ips(&primary, IpRequest::Prefixes(1))
        .await
        .expect_err("fragmented again");
    assert_eq!(err.code(), "InsufficientCidrBlocks");
    s.defragment_subnet(None);
    assert_eq!(s.free_addresses(SIM_SUBNET_ID), free - 5);
}

#[tokio::test]
async fn the_fragment_file_fragments_and_lifts() {
    let dir = std::env::temp_dir().join(format!("sim-frag-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("sim-ec2.fragment");
    let _ = std::fs::remove_file(&file);
    let mut spec = SimSpec::new("m5.large");
    spec.fragment_file = Some(file.clone());
    let s = SimEc2::launch(spec, Arc::new(NoHotplug))
        .await
        .expect("launch");
    let primary = s.enis().await.expect("imds")[0].eni_id.clone();
    std::fs::write(&file, b"").expect("touch");
    let err = s
        .assign_private_ips(&primary, IpRequest::Prefixes(1))
        .await
        .expect_err("fragmented by the file");
    assert_eq!(err.code(), "InsufficientCidrBlocks");
    std::fs::remove_file(&file).expect("rm");
    s.assign_private_ips(&primary, IpRequest::Prefixes(1))
        .await
        .expect("lifted by removing the file");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn prefix_delegation_needs_nitro() {
    let s = sim("m4.large").await; // Xen
    let primary = s.enis().await.expect("imds")[0].eni_id.clone();
    let err = s
        .assign_private_ips(&primary, IpRequest::Prefixes(1))
        .await
        .expect_err("xen");
    assert_eq!(err.code(), "InvalidParameterValue");
}

#[tokio::test]
async fn imds_lags_behind_ec2() {
    let clock = ManualClock::default();
    let mut spec = SimSpec::new("m5.large");
    spec.clock = Arc::new(clock.clone());
    spec.imds_lag = Duration::from_secs(3);
    let s = SimEc2::launch(spec, Arc::new(NoHotplug))
        .await
        .expect("launch");
    let primary = s.enis().await.expect("imds")[0].clone();
    assert_eq!(primary.ipv4s.len(), 1, "primary visible at boot");
    s.assign_private_ips(&primary.eni_id, IpRequest::Secondary(4))
        .await
        .expect("assign");
    assert_eq!(s.enis().await.expect("imds")[0].ipv4s.len(), 1, "stale");
    clock.advance(Duration::from_secs(3));
    assert_eq!(s.enis().await.expect("imds")[0].ipv4s.len(), 5, "caught up");
}

#[tokio::test]
async fn per_api_buckets_throttle_and_faults_fire() {
    let clock = ManualClock::default();
    let mut spec = SimSpec::new("m5.large");
    spec.clock = Arc::new(clock.clone());
    spec.throttle = Some(ThrottleSpec {
        mutating: (2, 1.0),
        non_mutating: (3, 1.0),
    });
    let s = SimEc2::launch(spec, Arc::new(NoHotplug))
        .await
        .expect("launch");
    let iid = s.instance_id();
    for _ in 0..3 {
        s.describe_instance(&iid).await.expect("within burst");
    }
    assert!(matches!(
        s.describe_instance(&iid).await,
        Err(Ec2Error::Throttled { .. })
    ));
    // Another API has its own bucket.
    s.describe_subnets(&SubnetFilter::default())
        .await
        .expect("own bucket");
    clock.advance(Duration::from_secs(1));
    s.describe_instance(&iid).await.expect("refilled");

    s.inject_faults(Fault::ServerError, Some("DescribeSubnets"), 1);
    let e = s
        .describe_subnets(&SubnetFilter::default())
        .await
        .expect_err("5xx");
    assert!(e.is_retryable());
    // A timeout after apply: the ENI exists although the caller saw a failure.
    s.inject_faults(Fault::TimeoutAfterApply, Some("CreateNetworkInterface"), 1);
    let before = s.all_enis().len();
    let e = s
        .create_network_interface(req(IpRequest::Secondary(1)))
        .await
        .expect_err("timeout");
    assert_eq!(e.code(), "Timeout");
    assert_eq!(s.all_enis().len(), before + 1);
    assert_eq!(s.calls().get("DescribeInstances"), Some(&5));
}

#[tokio::test]
async fn unknown_instance_type_suggests_names() {
    let err = SimEc2::launch(SimSpec::new("m5.lrage"), Arc::new(NoHotplug))
        .await
        .expect_err("unknown");
    assert!(err.to_string().contains("m5.lrage"));
}

/// Records what a restart asks the hotplug to restore, and which IPv6 prefixes it is asked to route.
#[derive(Default)]
struct RecordingHotplug {
    restored: Mutex<Vec<(SimNic, Vec<Ipv4Addr>)>>,
    routed: Mutex<Vec<(SimNic, Vec<ipnetwork::Ipv6Network>)>>,
}

impl NicHotplug for RecordingHotplug {
    fn plug(&self, nic: SimNic) -> BoxFuture<'_, Result<(), String>> {
        NoHotplug.plug(nic)
    }
    fn unplug(&self, nic: SimNic) -> BoxFuture<'_, Result<(), String>> {
        NoHotplug.unplug(nic)
    }
    fn bind_ips(
        &self,
        mac: datapath::MacAddr,
        ips: Vec<Ipv4Addr>,
        bound: bool,
    ) -> BoxFuture<'_, Result<(), String>> {
        NoHotplug.bind_ips(mac, ips, bound)
    }
    fn route_ipv6_prefixes(
        &self,
        nic: SimNic,
        prefixes: Vec<ipnetwork::Ipv6Network>,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.routed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((nic, prefixes));
            Ok(())
        })
    }
    fn restore(&self, nics: Vec<(SimNic, Vec<Ipv4Addr>)>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.restored
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(nics);
            Ok(())
        })
    }
}

#[tokio::test]
async fn saved_state_survives_a_restart_and_interrupted_attaches_complete() {
    let dir = std::env::temp_dir().join(format!("ipamd-sim-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("sim.json");
    let mut spec = SimSpec::new("m5.large");
    spec.state_file = Some(path.clone());
    let s = SimEc2::launch(spec.clone(), Arc::new(NoHotplug))
        .await
        .expect("launch");
    let iid = s.instance_id();
    let eni = s
        .create_network_interface(req(IpRequest::Secondary(3)))
        .await
        .expect("create");
    s.attach_network_interface(&eni.id, &iid, 1, 0)
        .await
        .expect("attach");
    let primary = s
        .all_enis()
        .into_iter()
        .find(|e| e.device_index == Some(0))
        .expect("primary");
    let more = s
        .assign_private_ips(&primary.id, IpRequest::Secondary(2))
        .await
        .expect("assign");
    let spare = s
        .create_network_interface(req(IpRequest::Secondary(1)))
        .await
        .expect("create");
    let free = s.free_addresses(SIM_SUBNET_ID);
    let before = s.all_enis();
    drop(s);

    // The process died in the middle of attaching `spare`: the file says "attaching".
    let mut saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    saved["enis"][&spare.id]["status"] = "attaching".into();
    saved["enis"][&spare.id]["device_index"] = 2.into();
    saved["enis"][&spare.id]["attachment_id"] = "eni-attach-x".into();
    saved["enis"][&spare.id]["instance_id"] = iid.clone().into();
    std::fs::write(&path, serde_json::to_vec(&saved).expect("json")).expect("write");

    let hotplug = Arc::new(RecordingHotplug::default());
    let s = SimEc2::launch(spec.clone(), hotplug.clone())
        .await
        .expect("resume");
    assert_eq!(s.instance_id(), iid);
    assert_eq!(
        s.free_addresses(SIM_SUBNET_ID),
        free,
        "free addresses recomputed"
    );
    let after = s.all_enis();
    assert_eq!(after.len(), before.len());
    let spare_now = after.iter().find(|e| e.id == spare.id).expect("spare");
    assert_eq!(
        spare_now.status, "in-use",
        "the interrupted attach completed"
    );
    for e in &before {
        let now = after.iter().find(|x| x.id == e.id).expect("kept");
        assert_eq!(now.secondary_ips, e.secondary_ips);
    }
    // IMDS shows every attached ENI at once, and the NICs were handed back to the hotplug with their addresses.
    let imds = s.enis().await.expect("imds");
    assert_eq!(imds.len(), 3);
    let restored = hotplug
        .restored
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert_eq!(restored.len(), 3);
    assert!(restored
        .iter()
        .any(|(n, ips)| n.is_primary && more.ips.iter().all(|ip| ips.contains(ip))));
    // New addresses never collide with saved ones.
    let got = s
        .assign_private_ips(&eni.id, IpRequest::Secondary(3))
        .await
        .expect("assign");
    let held: Vec<Ipv4Addr> = before
        .iter()
        .flat_map(|e| std::iter::once(e.primary_ip).chain(e.secondary_ips.iter().copied()))
        .collect();
    assert!(got.ips.iter().all(|ip| !held.contains(ip)));
    // A state of another instance type is refused, naming the file.
    let mut other = spec;
    other.instance_type = "c5.large".into();
    let err = SimEc2::launch(other, Arc::new(NoHotplug))
        .await
        .expect_err("wrong type");
    assert!(err.to_string().contains("sim.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Records the [`Api`] of every call that passes.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Api>>);

impl Ec2Layer for Recorder {
    fn around<'a, T: Send + 'a>(&'a self, api: Api, call: Call<'a, T>) -> Attempt<'a, T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(api);
        call()
    }
}

#[tokio::test]
async fn a_layer_sees_each_call_under_the_action_ec2_counts_it_as() {
    let sim = sim("m5.large").await;
    let ec2 = Layered::new(Recorder::default(), Arc::new(sim.clone()));
    let iid = sim.instance_id();
    // Every trait method once (failures are fine: EC2 counts them too).
    let eni = ec2
        .create_network_interface(req(IpRequest::Secondary(1)))
        .await
        .expect("create");
    let att = ec2
        .attach_network_interface(&eni.id, &iid, 1, 0)
        .await
        .expect("attach");
    let _ = ec2.set_delete_on_termination(&eni.id, &att).await;
    let _ = ec2
        .assign_private_ips(&eni.id, IpRequest::Secondary(1))
        .await;
    let _ = ec2.unassign_private_ips(&eni.id, &[], &[]).await;
    let _ = ec2.assign_ipv6_prefixes(&eni.id, 1).await;
    let _ = ec2
        .describe_network_interfaces(std::slice::from_ref(&eni.id))
        .await;
    let _ = ec2.list_network_interfaces(&EniFilter::default()).await;
    let _ = ec2.describe_instance(&iid).await;
    let _ = ec2.describe_subnets(&SubnetFilter::default()).await;
    let _ = ec2.create_tags(&eni.id, &BTreeMap::new()).await;
    let _ = ec2.describe_instance_types(&["m5.large".into()]).await;
    let _ = ec2.detach_network_interface(&att).await;
    let _ = ec2.delete_network_interface(&eni.id).await;
    let seen = ec2
        .layer()
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert_eq!(seen.len(), 14, "{seen:?}");
    let mut by_api: BTreeMap<&'static str, u64> = BTreeMap::new();
    for a in &seen {
        *by_api.entry(a.name()).or_default() += 1;
    }
    assert_eq!(by_api, sim.calls(), "the layer's names are EC2's");
    let all: std::collections::BTreeSet<Api> = seen.into_iter().collect();
    assert_eq!(
        all.len(),
        Api::ALL.len(),
        "every action reached through the trait"
    );
}

#[tokio::test]
async fn a_layer_may_answer_without_calling() {
    struct Refuse;
    impl Ec2Layer for Refuse {
        fn around<'a, T: Send + 'a>(&'a self, api: Api, _call: Call<'a, T>) -> Attempt<'a, T> {
            Box::pin(async move { Err(Ec2Error::Unauthorized { api: api.name() }) })
        }
    }
    let sim = sim("m5.large").await;
    let ec2 = Layered::new(Refuse, Arc::new(sim.clone()));
    let err = ec2
        .describe_instance(&sim.instance_id())
        .await
        .expect_err("refused");
    assert_eq!(err.api(), "DescribeInstances");
    assert!(sim.calls().is_empty(), "nothing reached EC2");
}

#[tokio::test]
async fn subnets_have_zones_enis_keep_their_security_groups_and_attach_only_in_the_instances_zone()
{
    let mut spec = SimSpec::new("m5.large");
    spec.extra_subnets = vec![
        SimSubnet {
            cidr: "10.0.64.0/20".parse().expect("cidr"),
            tags: BTreeMap::new(),
            availability_zone: None,
        },
        SimSubnet {
            cidr: "10.0.96.0/20".parse().expect("cidr"),
            tags: BTreeMap::new(),
            availability_zone: Some("us-west-2b".into()),
        },
    ];
    let s = SimEc2::launch(spec, Arc::new(NoHotplug))
        .await
        .expect("launch");
    let iid = s.instance_id();
    let subnets = s.subnets();
    let (same, other) = (subnets[1].0.clone(), subnets[2].0.clone());
    assert_eq!(subnets[2].2, "us-west-2b");
    let described = s
        .describe_subnets(&SubnetFilter {
            ids: vec![same.clone(), other.clone()],
            ..SubnetFilter::default()
        })
        .await
        .expect("describe");
    let zone_of = |id: &str| {
        described
            .iter()
            .find(|d| d.id == id)
            .map(|d| d.availability_zone.clone())
    };
    assert_eq!(zone_of(&same).as_deref(), Some("us-west-2a"));
    assert_eq!(zone_of(&other).as_deref(), Some("us-west-2b"));
    assert!(
        described.iter().all(|d| d.available_ip_count == 4091),
        "{described:?}"
    );
    // EC2 refuses the whole call when one asked-for subnet does not exist.
    let err = s
        .describe_subnets(&SubnetFilter {
            ids: vec![same.clone(), "subnet-nope".into()],
            ..SubnetFilter::default()
        })
        .await
        .expect_err("unknown subnet");
    assert!(
        matches!(&err, Ec2Error::NotFound { what, .. } if what.contains("subnet-nope")),
        "{err}"
    );
    let mut r = req(IpRequest::Secondary(1));
    r.subnet_id = other;
    r.security_groups = vec!["sg-pods".into()];
    let far = s.create_network_interface(r.clone()).await.expect("create");
    assert_eq!(s.security_groups_of(&far.id), ["sg-pods"]);
    let err = s
        .attach_network_interface(&far.id, &iid, 1, 0)
        .await
        .expect_err("another zone");
    assert!(err.to_string().contains("availability zone"), "{err}");
    r.subnet_id = same;
    let near = s.create_network_interface(r).await.expect("create");
    s.attach_network_interface(&near.id, &iid, 1, 0)
        .await
        .expect("same zone");
    s.delete_network_interface(&far.id).await.expect("delete");
    assert!(s.security_groups_of(&far.id).is_empty());
}

#[tokio::test]
async fn ipv6_prefixes_are_80s_of_the_subnets_64_seen_in_describe_and_imds() {
    let s = sim("m5.large").await;
    let primary = s
        .all_enis()
        .into_iter()
        .find(|e| e.device_index == Some(0))
        .expect("primary");
    let subnet = primary.subnet_ipv6_cidr.expect("dual-stack subnet");
    assert_eq!(subnet.prefix(), 64);
    assert_eq!(primary.ipv6_addresses.len(), 1, "the ENI's own IPv6");
    assert!(subnet.contains(primary.ipv6_addresses[0]));
    let a = s.assign_ipv6_prefixes(&primary.id, 1).await.expect("a /80");
    let b = s
        .assign_ipv6_prefixes(&primary.id, 1)
        .await
        .expect("another");
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_ne!(a[0], b[0]);
    for p in [a[0], b[0]] {
        assert_eq!(p.prefix(), 80);
        assert!(subnet.contains(p.network()), "{p} in {subnet}");
        assert!(
            !p.contains(primary.ipv6_addresses[0]),
            "never the ENI's own address"
        );
    }
    assert_eq!(s.calls().get("AssignIpv6Addresses"), Some(&2));
    let d = s
        .describe_network_interfaces(std::slice::from_ref(&primary.id))
        .await
        .expect("describe");
    assert_eq!(d[0].ipv6_prefixes, vec![a[0], b[0]]);
    let imds = s.enis().await.expect("imds");
    let p = imds.iter().find(|e| e.device_number == 0).expect("primary");
    assert_eq!(p.ipv6_prefixes, vec![a[0], b[0]]);
    assert_eq!(p.subnet_ipv6_cidrs, vec![subnet]);
    assert_eq!(p.ipv6s, primary.ipv6_addresses);
    // Not on Xen (no prefix delegation), not in an IPv4-only subnet.
    let xen = sim("t2.medium").await;
    let id = xen.all_enis()[0].id.clone();
    assert!(xen.assign_ipv6_prefixes(&id, 1).await.is_err());
    let mut spec = SimSpec::new("m5.large");
    spec.subnet_ipv6_cidr = None;
    let v4only = SimEc2::launch(spec, Arc::new(NoHotplug))
        .await
        .expect("launch");
    let id = v4only.all_enis()[0].id.clone();
    let e = v4only
        .assign_ipv6_prefixes(&id, 1)
        .await
        .expect_err("no IPv6 CIDR");
    assert!(e.to_string().contains("no IPv6 CIDR"), "{e}");
    assert!(v4only.all_enis()[0].ipv6_addresses.is_empty());
}

#[tokio::test]
async fn assigned_ipv6_prefixes_are_routed_to_the_nic_and_restored_with_it() {
    let dir = std::env::temp_dir().join(format!("ipamd-sim-v6route-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut spec = SimSpec::new("m5.large");
    spec.state_file = Some(dir.join("sim.json"));
    let hotplug = Arc::new(RecordingHotplug::default());
    let s = SimEc2::launch(spec.clone(), hotplug.clone())
        .await
        .expect("launch");
    let primary = s
        .all_enis()
        .into_iter()
        .find(|e| e.device_index == Some(0))
        .expect("primary");
    let got = s.assign_ipv6_prefixes(&primary.id, 1).await.expect("a /80");
    let routed = hotplug.routed.lock().expect("lock").clone();
    assert_eq!(routed.len(), 1, "{routed:?}");
    let (nic, prefixes) = &routed[0];
    assert_eq!(prefixes, &got);
    assert!(nic.is_primary);
    assert_eq!(
        nic.ipv6,
        primary.ipv6_addresses.first().copied(),
        "routed via the ENI's IPv6"
    );
    assert_eq!(nic.subnet_ipv6, primary.subnet_ipv6_cidr);
    // A restart restores the NIC with its prefix, so a kept fabric routes it again.
    let again = Arc::new(RecordingHotplug::default());
    let _resumed = SimEc2::launch(spec, again.clone()).await.expect("resume");
    let restored = again.restored.lock().expect("lock").clone();
    let p = restored
        .iter()
        .find(|(n, _)| n.is_primary)
        .expect("primary restored");
    assert_eq!(p.0.ipv6_prefixes, got);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_client_token_makes_create_happen_once_as_on_ec2() {
    let s = sim("m5.large").await;
    let before = s.all_enis().len();
    let a = s
        .create_network_interface_with_token(req(IpRequest::Secondary(2)), "tok-1")
        .await
        .expect("create");
    let again = s
        .create_network_interface_with_token(req(IpRequest::Secondary(2)), "tok-1")
        .await
        .expect("same token, same parameters: the same ENI");
    assert_eq!(again.id, a.id);
    assert_eq!(s.all_enis().len(), before + 1);
    let err = s
        .create_network_interface_with_token(req(IpRequest::Secondary(3)), "tok-1")
        .await
        .expect_err("same token, other parameters");
    assert_eq!(err.code(), "IdempotentParameterMismatch", "{err}");
    let b = s
        .create_network_interface_with_token(req(IpRequest::Secondary(2)), "tok-2")
        .await
        .expect("another token: another ENI");
    assert_ne!(b.id, a.id);
    assert!(s
        .create_network_interface_with_token(req(IpRequest::Secondary(2)), &"x".repeat(65))
        .await
        .is_err());
}

#[tokio::test]
async fn the_vpc_file_changes_cidrs_and_primary_groups_that_imds_then_serves() {
    let dir = std::env::temp_dir().join(format!("sim-vpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("sim-ec2.vpc");
    let _ = std::fs::remove_file(&file);
    let mut spec = SimSpec::new("m5.large");
    spec.vpc_file = Some(file.clone());
    let s = SimEc2::launch(spec, Arc::new(NoHotplug))
        .await
        .expect("launch");
    let before = s.node().await.expect("imds");
    assert_eq!(before.vpc_cidrs.len(), 1);
    let primary = s.enis().await.expect("imds")[0].eni_id.clone();
    std::fs::write(
        &file,
        "cidr 100.64.0.0/16\nsecurity-groups sg-0new1 sg-0new2\n",
    )
    .expect("write");
    let after = s.node().await.expect("imds");
    let extra: ipnetwork::Ipv4Network = "100.64.0.0/16".parse().expect("cidr");
    assert_eq!(after.vpc_cidrs, vec![before.vpc_cidrs[0], extra]);
    assert_eq!(after.security_groups, ["sg-0new1", "sg-0new2"]);
    assert_eq!(s.security_groups_of(&primary), ["sg-0new1", "sg-0new2"]);
    // Removing the file changes nothing; a bad file is ignored.
    std::fs::remove_file(&file).expect("rm");
    assert_eq!(s.node().await.expect("imds").vpc_cidrs.len(), 2);
    std::fs::write(&file, "cidr nonsense\n").expect("write");
    assert_eq!(s.node().await.expect("imds").vpc_cidrs.len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn modify_groups_replaces_an_enis_groups_and_refuses_empty_or_unknown() {
    let s = sim("m5.large").await;
    let eni = s
        .create_network_interface(req(IpRequest::Secondary(0)))
        .await
        .expect("create");
    s.set_security_groups(&eni.id, &["sg-0x".to_string()])
        .await
        .expect("modify");
    assert_eq!(s.security_groups_of(&eni.id), ["sg-0x"]);
    assert_eq!(s.calls().get("ModifyNetworkInterfaceAttribute"), Some(&1));
    let err = s
        .set_security_groups(&eni.id, &[])
        .await
        .expect_err("empty");
    assert_eq!(err.code(), "InvalidParameterValue");
    let err = s
        .set_security_groups("eni-0nope", &["sg-0x".to_string()])
        .await
        .expect_err("unknown");
    assert!(matches!(err, Ec2Error::NotFound { .. }), "{err}");
}
