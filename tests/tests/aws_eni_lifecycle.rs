//! The aws backend's EC2 calls against moto: the ENI lifecycle as ipamd drives it, the
//! listings the leaked-ENI cleanup makes, and EC2's errors as classes. Each test has its own moto.
//!
//! moto enforces no ENI or IP limits, so nothing here asserts limit behaviour.
#![cfg(feature = "aws")]

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use ec2_api::{
    CreateEniRequest, Ec2, Ec2Error, EniDescription, EniFilter, IpRequest, SubnetFilter,
    ENI_DESCRIPTION_PREFIX, TAG_CLUSTER_NAME, TAG_CREATED_AT, TAG_INSTANCE_ID,
};
use ec2_aws::AwsEc2;
use integration_tests::aws::{create_vpc, ec2_at, ec2_on, run_instance, Vpc};
use integration_tests::moto::{free_port, Moto};
use ipnetwork::Ipv4Network;

struct World {
    _moto: Moto,
    ec2: AwsEc2,
    vpc: Vpc,
    instance: String,
}

async fn world(vpc_cidr: &str, subnet_cidr: &str) -> World {
    let moto = Moto::start();
    let ec2 = ec2_on(&moto).await;
    let vpc = create_vpc(ec2.sdk(), vpc_cidr, subnet_cidr).await;
    let instance = run_instance(ec2.sdk(), &vpc, "m5.large").await;
    World {
        _moto: moto,
        ec2,
        vpc,
        instance,
    }
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn request(w: &World, tags: BTreeMap<String, String>, ips: u32) -> CreateEniRequest {
    CreateEniRequest {
        subnet_id: w.vpc.subnet_id.clone(),
        description: format!("{ENI_DESCRIPTION_PREFIX}{}", w.instance),
        security_groups: vec![w.vpc.sg_id.clone()],
        tags,
        ips: IpRequest::Secondary(ips),
    }
}

async fn describe_one(ec2: &AwsEc2, id: &str) -> EniDescription {
    let mut v = ec2
        .describe_network_interfaces(&[id.to_string()])
        .await
        .expect("describe");
    assert_eq!(v.len(), 1, "{v:?}");
    v.remove(0)
}

fn ids(enis: &[EniDescription]) -> HashSet<String> {
    enis.iter().map(|e| e.id.clone()).collect()
}

#[tokio::test]
async fn eni_lifecycle_create_attach_assign_unassign_detach_delete() {
    let w = world("10.10.0.0/16", "10.10.0.0/20").await;
    let subnet: Ipv4Network = w.vpc.subnet_cidr.parse().expect("cidr");
    let eni_tags = tags(&[
        (TAG_INSTANCE_ID, &w.instance),
        (TAG_CREATED_AT, "2026-11-22T08:00:00Z"),
        (TAG_CLUSTER_NAME, "test"),
    ]);

    // Create, with tags and three secondary IPs assigned at creation.
    let eni = w
        .ec2
        .create_network_interface(request(&w, eni_tags.clone(), 3))
        .await
        .expect("create");
    assert!(eni.id.starts_with("eni-"), "{}", eni.id);
    assert_eq!(eni.status, "available");
    assert_eq!(eni.description, format!("aws-K8S-{}", w.instance));
    assert_eq!(eni.tags, eni_tags);
    assert_eq!(eni.subnet_id, w.vpc.subnet_id);
    assert_eq!(eni.subnet_cidr, subnet);
    assert_eq!(eni.vpc_id, w.vpc.vpc_id);
    assert_eq!(eni.device_index, None);
    assert_eq!(eni.mac.len(), 17, "{}", eni.mac);
    assert_eq!(eni.mac, eni.mac.to_ascii_lowercase());
    assert!(subnet.contains(eni.primary_ip));
    assert_eq!(eni.secondary_ips.len(), 3);
    assert!(eni.secondary_ips.iter().all(|ip| subnet.contains(*ip)));
    assert!(!eni.secondary_ips.contains(&eni.primary_ip));

    // Attach at the first free device index, then DeleteOnTermination.
    let inst = w
        .ec2
        .describe_instance(&w.instance)
        .await
        .expect("instance");
    assert_eq!(inst.instance_type, "m5.large");
    assert_eq!(inst.subnet_id, w.vpc.subnet_id);
    assert_eq!(inst.vpc_id, w.vpc.vpc_id);
    assert_eq!(inst.security_groups, vec![w.vpc.sg_id.clone()]);
    assert_eq!(inst.attachments, vec![(0, 0)]);
    let attachment = w
        .ec2
        .attach_network_interface(&eni.id, &w.instance, 1, 0)
        .await
        .expect("attach");
    assert!(attachment.starts_with("eni-attach-"), "{attachment}");
    w.ec2
        .set_delete_on_termination(&eni.id, &attachment)
        .await
        .expect("delete on termination");
    let attached = describe_one(&w.ec2, &eni.id).await;
    assert_eq!(attached.status, "in-use");
    assert_eq!(attached.device_index, Some(1));
    assert_eq!(attached.network_card_index, 0);
    assert_eq!(attached.attachment_id.as_deref(), Some(attachment.as_str()));
    assert_eq!(attached.instance_id.as_deref(), Some(w.instance.as_str()));
    // moto accepts ModifyNetworkInterfaceAttribute(Attachment.DeleteOnTermination) but does not apply it, so
    // `attached.delete_on_termination` cannot be checked here; the request's parameters are checked on the
    // wire by ec2-aws's unit tests.
    let inst = w
        .ec2
        .describe_instance(&w.instance)
        .await
        .expect("instance");
    assert_eq!(inst.attachments, vec![(0, 0), (0, 1)]);

    // Assign two more: only the new ones come back (moto lists them all; the backend keeps the new ones).
    let added = w
        .ec2
        .assign_private_ips(&eni.id, IpRequest::Secondary(2))
        .await
        .expect("assign");
    assert_eq!(added.ips.len(), 2, "{added:?}");
    for ip in &added.ips {
        assert!(
            !eni.secondary_ips.contains(ip) && *ip != eni.primary_ip,
            "{ip} was there before"
        );
    }
    let now = describe_one(&w.ec2, &eni.id).await;
    let mut want: Vec<Ipv4Addr> = eni.secondary_ips.clone();
    want.extend(&added.ips);
    assert_eq!(
        now.secondary_ips.iter().collect::<HashSet<_>>(),
        want.iter().collect::<HashSet<_>>()
    );

    // Unassign one original and one new address.
    let gone = [eni.secondary_ips[0], added.ips[1]];
    w.ec2
        .unassign_private_ips(&eni.id, &gone, &[])
        .await
        .expect("unassign");
    let now = describe_one(&w.ec2, &eni.id).await;
    assert_eq!(now.secondary_ips.len(), 3);
    assert!(gone.iter().all(|ip| !now.secondary_ips.contains(ip)));
    assert_eq!(now.primary_ip, eni.primary_ip, "the primary stays");

    // Listings: by instance (primary ENI + ours) and by our tag (ours only: the primary is untagged).
    let on_instance = w
        .ec2
        .list_network_interfaces(&EniFilter {
            attachment_instance_id: Some(w.instance.clone()),
            ..EniFilter::default()
        })
        .await
        .expect("list by instance");
    assert_eq!(on_instance.len(), 2);
    assert!(ids(&on_instance).contains(&eni.id));
    let tagged = w
        .ec2
        .list_network_interfaces(&EniFilter {
            tags: tags(&[(TAG_INSTANCE_ID, &w.instance)]),
            ..EniFilter::default()
        })
        .await
        .expect("list by tag");
    assert_eq!(ids(&tagged), HashSet::from([eni.id.clone()]));

    // Detach: available again, no device, no attachment.
    w.ec2
        .detach_network_interface(&attachment)
        .await
        .expect("detach");
    let detached = describe_one(&w.ec2, &eni.id).await;
    assert_eq!(detached.status, "available");
    assert_eq!(detached.device_index, None);
    assert_eq!(detached.attachment_id, None);

    // Delete; then it is gone for good, and deleting again says NotFound.
    w.ec2
        .delete_network_interface(&eni.id)
        .await
        .expect("delete");
    let err = w
        .ec2
        .describe_network_interfaces(std::slice::from_ref(&eni.id))
        .await
        .expect_err("gone");
    assert!(matches!(err, Ec2Error::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains(&eni.id), "{err}");
    let err = w
        .ec2
        .delete_network_interface(&eni.id)
        .await
        .expect_err("gone twice");
    assert!(matches!(err, Ec2Error::NotFound { .. }), "{err:?}");
    let tagged = w
        .ec2
        .list_network_interfaces(&EniFilter {
            tags: tags(&[(TAG_INSTANCE_ID, &w.instance)]),
            ..EniFilter::default()
        })
        .await
        .expect("list");
    assert!(tagged.is_empty(), "{tagged:?}");
}

#[tokio::test]
async fn leaked_eni_listing_finds_available_tagged_enis_of_this_vpc_only() {
    let w = world("10.11.0.0/16", "10.11.0.0/20").await;
    let other_node = run_instance(w.ec2.sdk(), &w.vpc, "m5.large").await;
    let mine = tags(&[(TAG_INSTANCE_ID, &w.instance)]);
    let theirs = tags(&[(TAG_INSTANCE_ID, &other_node), (TAG_CLUSTER_NAME, "c1")]);
    let leaked_mine = w
        .ec2
        .create_network_interface(request(&w, mine.clone(), 0))
        .await
        .expect("create");
    let leaked_theirs = w
        .ec2
        .create_network_interface(request(&w, theirs, 0))
        .await
        .expect("create");
    let in_use = w
        .ec2
        .create_network_interface(request(&w, mine, 0))
        .await
        .expect("create");
    w.ec2
        .attach_network_interface(&in_use.id, &w.instance, 1, 0)
        .await
        .expect("attach");
    let untagged = w
        .ec2
        .create_network_interface(request(&w, BTreeMap::new(), 0))
        .await
        .expect("create");
    // Another VPC, same tag: not ours to clean.
    let elsewhere_vpc = create_vpc(w.ec2.sdk(), "10.12.0.0/16", "10.12.0.0/20").await;
    let elsewhere = w
        .ec2
        .create_network_interface(CreateEniRequest {
            subnet_id: elsewhere_vpc.subnet_id.clone(),
            description: "aws-K8S-i-elsewhere".into(),
            security_groups: vec![elsewhere_vpc.sg_id.clone()],
            tags: tags(&[(TAG_INSTANCE_ID, "i-elsewhere")]),
            ips: IpRequest::Secondary(0),
        })
        .await
        .expect("create elsewhere");
    assert_ne!(elsewhere.subnet_cidr, leaked_mine.subnet_cidr);

    // The anchor's leak scan: tag-key instance_id, status available, this VPC.
    let scan = EniFilter {
        vpc_id: Some(w.vpc.vpc_id.clone()),
        status: Some("available".into()),
        tag_keys: vec![TAG_INSTANCE_ID.into()],
        ..EniFilter::default()
    };
    let found = w.ec2.list_network_interfaces(&scan).await.expect("scan");
    assert_eq!(
        ids(&found),
        HashSet::from([leaked_mine.id.clone(), leaked_theirs.id.clone()]),
        "in use: {}, untagged: {}, elsewhere: {}",
        in_use.id,
        untagged.id,
        elsewhere.id
    );
    assert!(found
        .iter()
        .all(|e| e.description.starts_with(ENI_DESCRIPTION_PREFIX)));
    // With the cluster tag (CLUSTER_NAME set): only that cluster's.
    let found = w
        .ec2
        .list_network_interfaces(&EniFilter {
            tags: tags(&[(TAG_CLUSTER_NAME, "c1")]),
            ..scan.clone()
        })
        .await
        .expect("scan with cluster");
    assert_eq!(ids(&found), HashSet::from([leaked_theirs.id.clone()]));

    // Cleanup as the job does it: delete each; afterwards the scan is empty.
    for e in [&leaked_mine, &leaked_theirs] {
        w.ec2.delete_network_interface(&e.id).await.expect("delete");
    }
    assert!(w
        .ec2
        .list_network_interfaces(&scan)
        .await
        .expect("scan")
        .is_empty());
}

#[tokio::test]
async fn tags_subnets_and_instance_types_through_the_backend() {
    let w = world("10.13.0.0/16", "10.13.0.0/20").await;
    let second = w
        .ec2
        .sdk()
        .create_subnet()
        .vpc_id(&w.vpc.vpc_id)
        .cidr_block("10.13.16.0/24")
        .availability_zone("us-east-1b")
        .send()
        .await
        .expect("second subnet")
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("id")
        .to_string();

    let all = w
        .ec2
        .describe_subnets(&SubnetFilter {
            vpc_id: Some(w.vpc.vpc_id.clone()),
            ..SubnetFilter::default()
        })
        .await
        .expect("subnets of the VPC");
    assert_eq!(all.len(), 2);
    let b = w
        .ec2
        .describe_subnets(&SubnetFilter {
            vpc_id: Some(w.vpc.vpc_id.clone()),
            availability_zone: Some("us-east-1b".into()),
            ..SubnetFilter::default()
        })
        .await
        .expect("subnets of the zone");
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].id, second);
    assert_eq!(b[0].cidr.to_string(), "10.13.16.0/24");
    assert_eq!(
        b[0].available_ip_count, 251,
        "a fresh /24 has 256 - 5 usable"
    );
    let by_id = w
        .ec2
        .describe_subnets(&SubnetFilter {
            ids: vec![w.vpc.subnet_id.clone()],
            ..SubnetFilter::default()
        })
        .await
        .expect("by id");
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].availability_zone, "us-east-1a");

    // CreateTags on an untagged ENI (the anchor tags adopted ENIs), then find it by the tag.
    let eni = w
        .ec2
        .create_network_interface(request(&w, BTreeMap::new(), 0))
        .await
        .expect("create");
    w.ec2
        .create_tags(
            &eni.id,
            &tags(&[(TAG_INSTANCE_ID, &w.instance), ("extra", "1")]),
        )
        .await
        .expect("tag");
    let found = w
        .ec2
        .list_network_interfaces(&EniFilter {
            tag_keys: vec![TAG_INSTANCE_ID.into(), "extra".into()],
            ..EniFilter::default()
        })
        .await
        .expect("by tag keys");
    assert_eq!(ids(&found), HashSet::from([eni.id.clone()]));
    assert_eq!(found[0].tags.get("extra").map(String::as_str), Some("1"));

    // DescribeInstanceTypes agrees with the compiled-in table.
    let types = w
        .ec2
        .describe_instance_types(&["m5.large".into(), "p5.48xlarge".into(), "t2.micro".into()])
        .await
        .expect("types");
    assert_eq!(types.len(), 3);
    for t in &types {
        let known = instance_limits::lookup(&t.instance_type).expect("in the table");
        assert_eq!(t.enis, known.enis, "{}", t.instance_type);
        assert_eq!(t.ipv4_per_eni, known.ipv4_per_eni, "{}", t.instance_type);
        assert_eq!(
            t.hypervisor,
            known.hypervisor.as_str(),
            "{}",
            t.instance_type
        );
        assert_eq!(t.network_cards.len(), known.network_cards.len());
    }
    let err = w
        .ec2
        .describe_instance_types(&["zz9.plural".into()])
        .await
        .expect_err("unknown type");
    assert_eq!(err.code(), "InvalidInstanceType", "{err}");
}

#[tokio::test]
async fn ec2_errors_arrive_classified() {
    let w = world("10.14.0.0/16", "10.14.0.0/20").await;
    let err = w
        .ec2
        .describe_network_interfaces(&["eni-0123456789abcdef0".into()])
        .await
        .expect_err("unknown ENI");
    assert!(matches!(err, Ec2Error::NotFound { .. }), "{err:?}");
    let err = w
        .ec2
        .describe_instance("i-0123456789abcdef0")
        .await
        .expect_err("unknown instance");
    assert!(matches!(err, Ec2Error::NotFound { .. }), "{err:?}");
    let err = w
        .ec2
        .assign_private_ips("eni-0123456789abcdef0", IpRequest::Secondary(1))
        .await
        .expect_err("unknown ENI");
    assert!(matches!(err, Ec2Error::NotFound { .. }), "{err:?}");
    assert!(!err.is_retryable());

    // Nothing listening: a timeout-class error, retryable, after the SDK's retries.
    let dead = ec2_at(&format!("http://127.0.0.1:{}", free_port())).await;
    let started = std::time::Instant::now();
    let err = dead
        .describe_instance(&w.instance)
        .await
        .expect_err("no endpoint");
    assert!(matches!(err, Ec2Error::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

/// The leaked-ENI cleanup deletes another node's leaks only once EC2 reports that node terminated.
#[tokio::test]
async fn describe_instance_reports_the_instance_state_the_leak_cleanup_relies_on() {
    let w = world("10.13.0.0/16", "10.13.0.0/20").await;
    let other_node = run_instance(w.ec2.sdk(), &w.vpc, "m5.large").await;
    let me = w.ec2.describe_instance(&w.instance).await.expect("me");
    assert_eq!(me.state, "running");
    w.ec2
        .sdk()
        .terminate_instances()
        .instance_ids(&other_node)
        .send()
        .await
        .expect("terminate");
    let other = w.ec2.describe_instance(&other_node).await.expect("other");
    assert_eq!(other.state, "terminated");
}
