//! The aws backend's IMDSv2 client against the IMDS test server, which serves a moto instance's metadata:
//! what the daemon reads at startup (the instance, and the ENIs by MAC), the token handshake, and IMDS's
//! eventual consistency after an attach.
#![cfg(feature = "aws")]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ec2_api::{CreateEniRequest, Ec2, Imds, IpRequest};
use ec2_aws::{AwsEc2, AwsImds};
use integration_tests::aws::{create_vpc, ec2_on, node_view, run_instance, Vpc};
use integration_tests::imds_server::{ImdsServer, Quirks};
use integration_tests::moto::Moto;

struct World {
    _moto: Moto,
    ec2: AwsEc2,
    vpc: Vpc,
    instance: String,
}

async fn world(n: u8) -> World {
    let moto = Moto::start();
    let ec2 = ec2_on(&moto).await;
    let vpc = create_vpc(
        ec2.sdk(),
        &format!("10.{n}.0.0/16"),
        &format!("10.{n}.0.0/20"),
    )
    .await;
    let instance = run_instance(ec2.sdk(), &vpc, "m5.large").await;
    World {
        _moto: moto,
        ec2,
        vpc,
        instance,
    }
}

/// Creates an ENI with `ips` secondary IPs and attaches it at `device`; returns its ID.
async fn attach_eni(w: &World, device: u32, ips: u32) -> String {
    let eni = w
        .ec2
        .create_network_interface(CreateEniRequest {
            subnet_id: w.vpc.subnet_id.clone(),
            description: format!("aws-K8S-{}", w.instance),
            security_groups: vec![w.vpc.sg_id.clone()],
            tags: Default::default(),
            ips: IpRequest::Secondary(ips),
        })
        .await
        .expect("create");
    w.ec2
        .attach_network_interface(&eni.id, &w.instance, device, 0)
        .await
        .expect("attach");
    eni.id
}

/// One raw HTTP/1.0 exchange; returns the status code.
fn raw(addr: SocketAddr, request: &str) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"))
}

#[tokio::test]
async fn the_node_and_its_enis_come_from_imds_as_moto_has_them() {
    let w = world(20).await;
    let eni_id = attach_eni(&w, 1, 3).await;
    let server = ImdsServer::start_local(w.ec2.sdk().clone(), &w.instance);
    let imds = AwsImds::with_endpoint(&server.endpoint()).expect("client");
    let truth = node_view(w.ec2.sdk(), &w.instance).await.expect("moto");

    let node = imds.node().await.expect("node");
    assert_eq!(node.instance_id, w.instance);
    assert_eq!(node.instance_type, "m5.large");
    assert_eq!(node.availability_zone, "us-east-1a");
    assert_eq!(node.region, "us-east-1");
    assert_eq!(node.primary_mac, truth.primary_mac);
    assert_eq!(
        node.local_ipv4,
        truth.local_ipv4.parse::<Ipv4Addr>().expect("ip")
    );
    assert_eq!(
        node.vpc_cidrs
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>(),
        vec!["10.20.0.0/16"]
    );
    assert_eq!(node.vpc_id, w.vpc.vpc_id);
    assert_eq!(node.subnet_id, w.vpc.subnet_id);
    assert_eq!(node.security_groups, vec![w.vpc.sg_id.clone()]);

    let enis = imds.enis().await.expect("enis");
    assert_eq!(enis.len(), 2, "{enis:?}");
    assert_eq!(enis[0].device_number, 0);
    assert_eq!(enis[0].mac, truth.primary_mac);
    assert_eq!(enis[0].ipv4s, vec![node.local_ipv4]);
    let second = &enis[1];
    assert_eq!(second.eni_id, eni_id);
    assert_eq!(second.device_number, 1);
    assert_eq!(second.subnet_id, w.vpc.subnet_id);
    assert_eq!(second.subnet_cidr.to_string(), "10.20.0.0/20");
    assert_eq!(second.network_card, 0);
    assert!(second.ipv4_prefixes.is_empty());
    let from_ec2 = w
        .ec2
        .describe_network_interfaces(std::slice::from_ref(&eni_id))
        .await
        .expect("describe")
        .remove(0);
    assert_eq!(
        second.ipv4s[0], from_ec2.primary_ip,
        "local-ipv4s lists the primary first"
    );
    assert_eq!(
        second.ipv4s[1..].iter().collect::<HashSet<_>>(),
        from_ec2.secondary_ips.iter().collect::<HashSet<_>>()
    );

    // One token for all of that: the client caches it.
    let c = server.counters();
    assert_eq!(c.token_puts.load(Ordering::SeqCst), 1);
    assert_eq!(c.unauthorized.load(Ordering::SeqCst), 0);
    assert!(c.gets.load(Ordering::SeqCst) >= 20);
}

#[tokio::test]
async fn imds_v2_requires_a_token_and_the_client_renews_a_revoked_one() {
    let w = world(21).await;
    let server = ImdsServer::start_local(w.ec2.sdk().clone(), &w.instance);
    let host = format!("Host: {}\r\n", server.addr);
    // IMDSv1-style GET: refused.
    assert_eq!(
        raw(
            server.addr,
            &format!("GET /latest/meta-data/instance-id HTTP/1.0\r\n{host}\r\n")
        ),
        401
    );
    // A token PUT needs a TTL in 1..=21600.
    assert_eq!(
        raw(
            server.addr,
            &format!("PUT /latest/api/token HTTP/1.0\r\n{host}\r\n")
        ),
        400
    );
    assert_eq!(
        raw(
            server.addr,
            &format!(
                "PUT /latest/api/token HTTP/1.0\r\n{host}X-aws-ec2-metadata-token-ttl-seconds: 0\r\n\r\n"
            )
        ),
        400
    );
    assert_eq!(
        raw(
            server.addr,
            &format!(
                "PUT /latest/api/token HTTP/1.0\r\n{host}X-aws-ec2-metadata-token-ttl-seconds: 60\r\n\
                 X-Forwarded-For: 10.0.0.9\r\n\r\n"
            )
        ),
        403
    );

    let imds = AwsImds::with_endpoint(&server.endpoint()).expect("client");
    assert_eq!(imds.get("instance-id").await.expect("first"), w.instance);
    server.revoke_tokens();
    // The old token now gets 401; the client fetches a new one and the read succeeds.
    assert_eq!(
        imds.get("instance-type").await.expect("after revoke"),
        "m5.large"
    );
    let c = server.counters();
    // Two refused raw PUTs above (the proxied one is refused before it counts), two by the client.
    assert_eq!(c.token_puts.load(Ordering::SeqCst), 4);
    assert!(c.unauthorized.load(Ordering::SeqCst) >= 2);
    assert_eq!(imds.get_opt("no/such/path").await.expect("404"), None);
}

#[tokio::test]
async fn a_freshly_attached_eni_is_waited_for_until_imds_catches_up() {
    let w = world(22).await;
    let server = ImdsServer::start_local(w.ec2.sdk().clone(), &w.instance);
    let imds = AwsImds::with_endpoint(&server.endpoint()).expect("client");
    assert_eq!(imds.enis().await.expect("boot").len(), 1);

    // IMDS lists the new MAC at once but answers 404 under it for 700 ms.
    server.set_lag(Duration::from_millis(700));
    let eni_id = attach_eni(&w, 1, 1).await;
    server.refresh();
    let started = Instant::now();
    let enis = imds.enis().await.expect("settles");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "answered in {:?}: the lag was not exercised",
        started.elapsed()
    );
    assert_eq!(enis.len(), 2);
    assert_eq!(enis[1].eni_id, eni_id);
    assert_eq!(enis[1].ipv4s.len(), 2);

    // An ENI that never settles is left out after a few seconds (not a hang), and the others are still listed:
    // one odd MAC does not fail the whole list.
    server.set_lag(Duration::from_secs(600));
    let never = attach_eni(&w, 2, 0).await;
    server.refresh();
    let started = Instant::now();
    let enis = imds.enis().await.expect("the settled ENIs are listed");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(enis.len(), 2, "{enis:?}");
    assert!(enis.iter().all(|e| e.eni_id != never), "{enis:?}");
}

/// IMDS as EC2 serves it: a listed field answering 404 (eventual consistency) is empty, not fatal; an ENI on
/// another network card is skipped before its fields are read; one odd MAC does not fail the whole list.
#[tokio::test]
async fn a_404_field_is_empty_other_cards_are_skipped_unread_and_an_odd_mac_fails_nothing() {
    let w = world(24).await;
    let eni_id = attach_eni(&w, 1, 2).await;
    let server = ImdsServer::start_local(w.ec2.sdk().clone(), &w.instance);
    let imds = AwsImds::with_endpoint(&server.endpoint()).expect("client");
    let truth = node_view(w.ec2.sdk(), &w.instance).await.expect("moto");
    let second_mac = truth
        .enis
        .values()
        .find(|e| e.eni_id == eni_id)
        .expect("the attached ENI")
        .mac
        .clone();
    let card1 = "0e:00:00:00:0c:01";
    let odd = "0e:00:00:00:0d:01";
    let mut quirks = Quirks {
        extra_macs: vec![card1.to_string(), odd.to_string()],
        ..Quirks::default()
    };
    let base = |mac: &str| format!("network/interfaces/macs/{mac}");
    let mut set = |path: String, v: Option<&str>| {
        quirks.paths.insert(path, v.map(str::to_string));
    };
    // Listed but not there yet.
    set(format!("{}/local-ipv4s", base(&second_mac)), None);
    // Network card 1: only its field list and its card are there to read.
    set(
        format!("{}/", base(card1)),
        Some("device-number\ninterface-id\nlocal-ipv4s\nnetwork-card\nsubnet-id"),
    );
    set(format!("{}/network-card", base(card1)), Some("1"));
    // An odd MAC: its device number does not parse.
    set(
        format!("{}/", base(odd)),
        Some("device-number\ninterface-id\nsubnet-id"),
    );
    set(format!("{}/interface-id", base(odd)), Some("eni-0odd"));
    set(format!("{}/device-number", base(odd)), Some("not-a-number"));
    set(format!("{}/subnet-id", base(odd)), Some("subnet-odd"));
    server.set_quirks(quirks);

    let enis = imds.enis().await.expect("the list survives the odd MAC");
    let ids: Vec<&str> = enis.iter().map(|e| e.eni_id.as_str()).collect();
    assert_eq!(enis.len(), 2, "{enis:?}");
    assert!(!ids.contains(&"eni-0odd"), "{ids:?}");
    let second = enis.iter().find(|e| e.eni_id == eni_id).expect("listed");
    assert!(second.ipv4s.is_empty(), "404 is empty: {second:?}");
    assert_eq!(second.subnet_cidr.to_string(), "10.24.0.0/20");
    let asked = server.asked();
    let card1_reads: Vec<&String> = asked.iter().filter(|p| p.contains(card1)).collect();
    assert!(
        card1_reads
            .iter()
            .all(|p| p.ends_with('/') || p.ends_with("network-card")),
        "read beyond the card: {card1_reads:?}"
    );
}
