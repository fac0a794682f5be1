//! The real SDK client against a scripted HTTP layer: what goes on the wire (pagination tokens, filters, user
//! agent), how EC2's XML answers and error documents come back as trait values and [`Ec2Error`]s, and that SDK
//! retries pass through the token bucket.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{AppName, BehaviorVersion};
use aws_sdk_ec2::config::{Credentials, Region};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use ec2_api::{Ec2, Ec2Error, EniFilter, IpRequest};

use crate::bucket::{BucketConfig, Buckets};
use crate::http::BucketedHttpClient;
use crate::options::app_name;
use crate::AwsEc2;

#[derive(Debug, Clone)]
enum Answer {
    Http(u16, String),
    /// Never answers (for timeouts).
    Hang,
    /// Connection refused.
    Refuse,
}

#[derive(Debug, Clone)]
struct Seen {
    body: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Answers requests from a script, in order, and records them.
#[derive(Debug, Clone, Default)]
struct Scripted {
    answers: Arc<Mutex<VecDeque<Answer>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    fn new(answers: Vec<Answer>) -> Scripted {
        Scripted {
            answers: Arc::new(Mutex::new(answers.into())),
            seen: Arc::default(),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

impl HttpConnector for Scripted {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let body = request
            .body()
            .bytes()
            .map(|b| String::from_utf8_lossy(b).to_string())
            .unwrap_or_default();
        let headers = request
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.seen.lock().expect("seen").push(Seen { body, headers });
        let answer = self
            .answers
            .lock()
            .expect("answers")
            .pop_front()
            .unwrap_or_else(|| Answer::Http(500, "script exhausted".into()));
        match answer {
            Answer::Http(status, body) => HttpConnectorFuture::ready(Ok(HttpResponse::new(
                StatusCode::try_from(status).expect("status"),
                SdkBody::from(body),
            ))),
            Answer::Hang => HttpConnectorFuture::new(std::future::pending()),
            Answer::Refuse => {
                HttpConnectorFuture::ready(Err(ConnectorError::io("connection refused".into())))
            }
        }
    }
}

impl HttpClient for Scripted {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

fn client_with(script: &Scripted, buckets: Buckets, max_attempts: u32) -> AwsEc2 {
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
        .endpoint_url("http://ec2.test")
        .app_name(AppName::new(app_name()).expect("app name"))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(max_attempts)
                .with_initial_backoff(Duration::from_millis(1))
                .with_max_backoff(Duration::from_millis(5)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_millis(300))
                .build(),
        )
        .http_client(BucketedHttpClient::new(
            SharedHttpClient::new(script.clone()),
            Arc::new(buckets),
        ))
        .build();
    AwsEc2::from_conf(conf)
}

fn client(script: &Scripted) -> AwsEc2 {
    client_with(script, Buckets::new(), 1)
}

fn ok(body: String) -> Answer {
    Answer::Http(200, body)
}

fn ec2_error(status: u16, code: &str) -> Answer {
    Answer::Http(
        status,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{code}</Code>\
             <Message>{code} from the script</Message></Error></Errors><RequestID>r1</RequestID></Response>"
        ),
    )
}

fn instance_types_page(names: &[&str], next: Option<&str>) -> String {
    let items: String = names
        .iter()
        .map(|n| {
            format!(
                "<item><instanceType>{n}</instanceType><hypervisor>nitro</hypervisor><bareMetal>false</bareMetal>\
                 <vCpuInfo><defaultVCpus>2</defaultVCpus></vCpuInfo><networkInfo>\
                 <maximumNetworkInterfaces>3</maximumNetworkInterfaces>\
                 <ipv4AddressesPerInterface>10</ipv4AddressesPerInterface>\
                 <ipv6AddressesPerInterface>10</ipv6AddressesPerInterface>\
                 <defaultNetworkCardIndex>0</defaultNetworkCardIndex>\
                 <networkCards><item><networkCardIndex>0</networkCardIndex>\
                 <maximumNetworkInterfaces>3</maximumNetworkInterfaces></item></networkCards>\
                 </networkInfo></item>"
            )
        })
        .collect();
    let next = next
        .map(|t| format!("<nextToken>{t}</nextToken>"))
        .unwrap_or_default();
    format!(
        "<DescribeInstanceTypesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
         <requestId>r</requestId><instanceTypeSet>{items}</instanceTypeSet>{next}</DescribeInstanceTypesResponse>"
    )
}

fn eni_xml(id: &str, attached: bool) -> String {
    let attachment = if attached {
        "<attachment><attachmentId>eni-attach-1</attachmentId><deleteOnTermination>true</deleteOnTermination>\
         <deviceIndex>1</deviceIndex><networkCardIndex>0</networkCardIndex><instanceId>i-1</instanceId>\
         <status>attached</status></attachment>"
    } else {
        ""
    };
    format!(
        "<item><networkInterfaceId>{id}</networkInterfaceId><subnetId>subnet-1</subnetId><vpcId>vpc-1</vpcId>\
         <description>aws-K8S-i-1</description><macAddress>0A:1B:2C:3D:4E:5F</macAddress>\
         <privateIpAddress>10.0.1.10</privateIpAddress><status>{status}</status>\
         <interfaceType>interface</interfaceType>{attachment}\
         <privateIpAddressesSet>\
         <item><primary>true</primary><privateIpAddress>10.0.1.10</privateIpAddress></item>\
         <item><primary>false</primary><privateIpAddress>10.0.1.11</privateIpAddress></item>\
         <item><primary>false</primary><privateIpAddress>10.0.1.12</privateIpAddress></item>\
         </privateIpAddressesSet>\
         <tagSet><item><key>node.k8s.amazonaws.com/instance_id</key><value>i-1</value></item></tagSet></item>",
        status = if attached { "in-use" } else { "available" }
    )
}

fn enis_page(items: &[String], next: Option<&str>) -> String {
    let next = next
        .map(|t| format!("<nextToken>{t}</nextToken>"))
        .unwrap_or_default();
    format!(
        "<DescribeNetworkInterfacesResponse><requestId>r</requestId><networkInterfaceSet>{}\
         </networkInterfaceSet>{next}</DescribeNetworkInterfacesResponse>",
        items.concat()
    )
}

fn subnets_page() -> String {
    "<DescribeSubnetsResponse><requestId>r</requestId><subnetSet><item><subnetId>subnet-1</subnetId>\
     <vpcId>vpc-1</vpcId><cidrBlock>10.0.1.0/24</cidrBlock><availableIpAddressCount>200</availableIpAddressCount>\
     <availabilityZone>us-east-1a</availabilityZone></item></subnetSet></DescribeSubnetsResponse>"
        .to_string()
}

#[tokio::test]
async fn describe_instance_types_follows_next_token_to_the_end() {
    let script = Scripted::new(vec![
        ok(instance_types_page(
            &["m5.large", "m5.xlarge"],
            Some("page-2"),
        )),
        ok(instance_types_page(&["t3.nano"], Some("page-3"))),
        ok(instance_types_page(&["c5.large"], None)),
    ]);
    let types = client(&script)
        .describe_instance_types(&[])
        .await
        .expect("all pages");
    let names: Vec<&str> = types.iter().map(|t| t.instance_type.as_str()).collect();
    assert_eq!(names, ["m5.large", "m5.xlarge", "t3.nano", "c5.large"]);
    assert_eq!(types[0].network_cards, vec![(0, 3)]);
    assert_eq!(types[0].ipv4_per_eni, 10);
    let seen = script.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen[0].body.contains("Action=DescribeInstanceTypes"));
    assert!(seen[0].body.contains("MaxResults=100"), "{}", seen[0].body);
    assert!(!seen[0].body.contains("NextToken"));
    assert!(
        seen[1].body.contains("NextToken=page-2"),
        "{}",
        seen[1].body
    );
    assert!(
        seen[2].body.contains("NextToken=page-3"),
        "{}",
        seen[2].body
    );
}

#[tokio::test]
async fn a_repeated_next_token_is_an_error_not_a_loop() {
    let script = Scripted::new(vec![
        ok(instance_types_page(&["a1.large"], Some("same"))),
        ok(instance_types_page(&["a1.xlarge"], Some("same"))),
    ]);
    let err = client(&script)
        .describe_instance_types(&[])
        .await
        .expect_err("loop");
    assert!(err.to_string().contains("repeated"), "{err}");
    assert_eq!(script.seen().len(), 2);
}

#[tokio::test]
async fn the_user_agent_names_our_version() {
    let script = Scripted::new(vec![ok(instance_types_page(&["m5.large"], None))]);
    client(&script)
        .describe_instance_types(&["m5.large".into()])
        .await
        .expect("call");
    let seen = script.seen();
    let ua = [
        seen[0].header("user-agent").unwrap_or_default(),
        seen[0].header("x-amz-user-agent").unwrap_or_default(),
    ]
    .join(" ");
    assert!(
        ua.contains(&format!("app/aws-cni-{}", env!("CARGO_PKG_VERSION"))),
        "{ua}"
    );
    assert!(seen[0].body.contains("InstanceType.1=m5.large"));
}

#[tokio::test]
async fn enis_come_back_with_their_subnet_cidr_and_the_cidr_is_cached() {
    let script = Scripted::new(vec![
        ok(enis_page(&[eni_xml("eni-1", true)], Some("p2"))),
        ok(enis_page(&[eni_xml("eni-2", false)], None)),
        ok(subnets_page()),
        ok(enis_page(&[eni_xml("eni-1", true)], None)),
    ]);
    let ec2 = client(&script);
    let enis = ec2
        .describe_network_interfaces(&["eni-1".into(), "eni-2".into()])
        .await
        .expect("describe");
    assert_eq!(enis.len(), 2);
    let e = &enis[0];
    assert_eq!(e.id, "eni-1");
    assert_eq!(e.mac, "0a:1b:2c:3d:4e:5f", "MACs are lower case");
    assert_eq!(e.primary_ip, Ipv4Addr::new(10, 0, 1, 10));
    assert_eq!(
        e.secondary_ips,
        vec![Ipv4Addr::new(10, 0, 1, 11), Ipv4Addr::new(10, 0, 1, 12)]
    );
    assert_eq!(e.subnet_cidr.to_string(), "10.0.1.0/24");
    assert_eq!(e.device_index, Some(1));
    assert_eq!(e.attachment_id.as_deref(), Some("eni-attach-1"));
    assert_eq!(e.instance_id.as_deref(), Some("i-1"));
    assert!(e.delete_on_termination);
    assert_eq!(
        e.tags
            .get("node.k8s.amazonaws.com/instance_id")
            .map(String::as_str),
        Some("i-1")
    );
    assert_eq!(enis[1].device_index, None);
    assert_eq!(enis[1].status, "available");
    let seen = script.seen();
    assert!(seen[0].body.contains("NetworkInterfaceId.1=eni-1"));
    assert!(
        !seen[0].body.contains("MaxResults"),
        "EC2 refuses MaxResults with IDs"
    );
    assert!(seen[1].body.contains("NextToken=p2"));
    assert!(seen[2].body.contains("Action=DescribeSubnets") && seen[2].body.contains("subnet-1"));
    // Second call: no DescribeSubnets any more.
    ec2.describe_network_interfaces(&["eni-1".into()])
        .await
        .expect("again");
    assert_eq!(script.seen().len(), 4);
}

#[tokio::test]
async fn no_ids_means_no_call() {
    let script = Scripted::new(vec![]);
    let enis = client(&script)
        .describe_network_interfaces(&[])
        .await
        .expect("empty");
    assert!(enis.is_empty());
    assert!(script.seen().is_empty());
}

#[tokio::test]
async fn list_sends_the_filters_and_enforces_every_tag_key() {
    let mut untagged = eni_xml("eni-3", false);
    untagged = untagged.replace(
        "<tagSet><item><key>node.k8s.amazonaws.com/instance_id</key><value>i-1</value></item></tagSet>",
        "<tagSet><item><key>node.k8s.amazonaws.com/instance_id</key><value>i-1</value></item>\
         <item><key>extra</key><value>x</value></item></tagSet>",
    );
    let script = Scripted::new(vec![
        ok(enis_page(&[eni_xml("eni-2", false), untagged], None)),
        ok(subnets_page()),
    ]);
    let filter = EniFilter {
        vpc_id: Some("vpc-1".into()),
        status: Some("available".into()),
        attachment_instance_id: None,
        tag_keys: vec!["node.k8s.amazonaws.com/instance_id".into(), "extra".into()],
        tags: BTreeMap::from([("node.k8s.amazonaws.com/instance_id".into(), "i-1".into())]),
    };
    let enis = client(&script)
        .list_network_interfaces(&filter)
        .await
        .expect("list");
    let ids: Vec<&str> = enis.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["eni-3"], "eni-2 lacks the second tag key");
    let body = script.seen()[0].body.clone();
    for part in [
        "Filter.1.Name=vpc-id",
        "Filter.1.Value.1=vpc-1",
        "Filter.2.Name=status",
        "Filter.3.Name=tag-key",
        "Filter.4.Name=tag%3Anode.k8s.amazonaws.com%2Finstance_id",
        "Filter.4.Value.1=i-1",
        "MaxResults=1000",
    ] {
        assert!(body.contains(part), "{part} missing in {body}");
    }
}

#[tokio::test]
async fn an_answer_listing_every_address_yields_only_the_new_ones() {
    // moto's shape: the ENI's whole list, primary first, new ones last.
    let body =
        "<AssignPrivateIpAddressesResponse><requestId>r</requestId><networkInterfaceId>eni-1\
                </networkInterfaceId><assignedPrivateIpAddressesSet>\
                <item><privateIpAddress>10.0.1.10</privateIpAddress></item>\
                <item><privateIpAddress>10.0.1.11</privateIpAddress></item>\
                <item><privateIpAddress>10.0.1.20</privateIpAddress></item>\
                <item><privateIpAddress>10.0.1.21</privateIpAddress></item>\
                </assignedPrivateIpAddressesSet></AssignPrivateIpAddressesResponse>";
    let script = Scripted::new(vec![ok(body.into())]);
    let got = client(&script)
        .assign_private_ips("eni-1", IpRequest::Secondary(2))
        .await
        .expect("assign");
    assert_eq!(
        got.ips,
        vec![Ipv4Addr::new(10, 0, 1, 20), Ipv4Addr::new(10, 0, 1, 21)]
    );
    let seen = script.seen();
    assert!(seen[0].body.contains("SecondaryPrivateIpAddressCount=2"));
}

#[tokio::test]
async fn ec2_error_codes_reach_the_caller_as_classes() {
    let cases: Vec<(Answer, Ec2Error)> = vec![
        (
            ec2_error(403, "UnauthorizedOperation"),
            Ec2Error::Unauthorized {
                api: "AssignPrivateIpAddresses",
            },
        ),
        (
            ec2_error(400, "PrivateIpAddressLimitExceeded"),
            Ec2Error::IpLimitExceeded {
                api: "AssignPrivateIpAddresses",
                eni: "eni-7".into(),
            },
        ),
        (
            ec2_error(400, "InsufficientFreeAddressesInSubnet"),
            Ec2Error::SubnetExhausted {
                api: "AssignPrivateIpAddresses",
                subnet: "of eni-7".into(),
                code: "InsufficientFreeAddressesInSubnet".into(),
            },
        ),
        (
            ec2_error(400, "InvalidNetworkInterfaceID.NotFound"),
            Ec2Error::NotFound {
                api: "AssignPrivateIpAddresses",
                what: "eni-7 (InvalidNetworkInterfaceID.NotFound)".into(),
            },
        ),
    ];
    for (answer, want) in cases {
        let script = Scripted::new(vec![answer]);
        let err = client_with(&script, Buckets::new(), 3)
            .assign_private_ips("eni-7", IpRequest::Secondary(1))
            .await
            .expect_err("error");
        assert_eq!(err, want);
        assert_eq!(script.seen().len(), 1, "{} is not retried", want.code());
    }
    let script = Scripted::new(vec![ec2_error(400, "AttachmentLimitExceeded")]);
    let err = client(&script)
        .attach_network_interface("eni-7", "i-1", 3, 0)
        .await
        .expect_err("full");
    assert_eq!(
        err,
        Ec2Error::EniLimitExceeded {
            api: "AttachNetworkInterface"
        }
    );
    let script = Scripted::new(vec![ec2_error(400, "InsufficientCidrBlocks")]);
    let err = client(&script)
        .create_network_interface(ec2_api::CreateEniRequest {
            subnet_id: "subnet-9".into(),
            description: "aws-K8S-i-1".into(),
            security_groups: vec![],
            tags: BTreeMap::new(),
            ips: IpRequest::Prefixes(1),
        })
        .await
        .expect_err("exhausted");
    assert_eq!(
        err,
        Ec2Error::SubnetExhausted {
            api: "CreateNetworkInterface",
            subnet: "subnet-9".into(),
            code: "InsufficientCidrBlocks".into()
        }
    );
}

#[tokio::test]
async fn throttling_is_retried_by_the_sdk_then_reported_and_drains_the_bucket() {
    let script = Scripted::new(vec![
        ec2_error(503, "RequestLimitExceeded"),
        ec2_error(503, "RequestLimitExceeded"),
        ec2_error(503, "RequestLimitExceeded"),
    ]);
    let buckets = Buckets::uniform(BucketConfig {
        capacity: 10,
        refill_per_sec: 1000.0,
        max_wait: Duration::from_secs(1),
    });
    let err = client_with(&script, buckets, 3)
        .delete_network_interface("eni-1")
        .await
        .expect_err("throttled");
    assert_eq!(
        err,
        Ec2Error::Throttled {
            api: "DeleteNetworkInterface"
        }
    );
    assert_eq!(script.seen().len(), 3, "the SDK retried throttling");
}

#[tokio::test]
async fn sdk_retries_spend_tokens_and_stop_when_the_bucket_is_empty() {
    // Three 500s scripted, three attempts allowed, but the bucket holds two tokens and does not refill: the
    // third attempt never reaches the wire, and the caller hears "throttled".
    let script = Scripted::new(vec![
        ec2_error(500, "InternalError"),
        ec2_error(500, "InternalError"),
        ec2_error(500, "InternalError"),
    ]);
    let buckets = Buckets::uniform(BucketConfig {
        capacity: 2,
        refill_per_sec: 0.0,
        max_wait: Duration::ZERO,
    });
    let err = client_with(&script, buckets, 3)
        .detach_network_interface("eni-attach-1")
        .await
        .expect_err("limited");
    assert_eq!(script.seen().len(), 2);
    assert_eq!(
        err,
        Ec2Error::Throttled {
            api: "DetachNetworkInterface"
        }
    );
}

#[tokio::test]
async fn server_errors_are_retried_and_recover() {
    let script = Scripted::new(vec![
        ec2_error(500, "InternalError"),
        Answer::Http(
            200,
            "<DeleteNetworkInterfaceResponse><requestId>r</requestId><return>true</return>\
             </DeleteNetworkInterfaceResponse>"
                .into(),
        ),
    ]);
    client_with(&script, Buckets::new(), 3)
        .delete_network_interface("eni-1")
        .await
        .expect("second attempt succeeds");
    assert_eq!(script.seen().len(), 2);
}

#[tokio::test]
async fn a_silent_endpoint_is_a_timeout_and_a_refused_one_too() {
    let script = Scripted::new(vec![Answer::Hang]);
    let err = client(&script)
        .describe_instance("i-1")
        .await
        .expect_err("timeout");
    assert!(
        matches!(
            err,
            Ec2Error::Timeout {
                api: "DescribeInstances",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let script = Scripted::new(vec![Answer::Refuse]);
    let err = client(&script)
        .describe_instance("i-1")
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, Ec2Error::Timeout { message, .. } if message.contains("no answer")),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_instance_type_missing_from_the_table_is_learned_from_describe_instance_types() {
    assert!(instance_limits::lookup("zz7.future").is_none());
    let script = Scripted::new(vec![ok(instance_types_page(&["zz7.future"], None))]);
    let ec2 = client(&script);
    let limits = crate::limits::limits_or_describe(&ec2, "zz7.future")
        .await
        .expect("learned");
    assert_eq!((limits.enis, limits.ipv4_per_eni, limits.vcpus), (3, 10, 2));
    assert!(script.seen()[0].body.contains("InstanceType.1=zz7.future"));
    // The limits are returned to the caller, not registered anywhere; a known type costs no call at all.
    assert_eq!(instance_limits::lookup("zz7.future"), None);
    crate::limits::limits_or_describe(&ec2, "m5.large")
        .await
        .expect("compiled in");
    assert_eq!(script.seen().len(), 1);
}

#[tokio::test]
async fn an_unknown_instance_type_that_ec2_does_not_know_either_is_an_error() {
    let script = Scripted::new(vec![ec2_error(400, "InvalidInstanceType")]);
    let err = crate::limits::limits_or_describe(&client(&script), "zz8.nothing")
        .await
        .expect_err("unknown");
    assert!(err.to_string().contains("InvalidInstanceType"), "{err}");
    assert!(instance_limits::lookup("zz8.nothing").is_none());
}

#[tokio::test]
async fn delete_on_termination_names_the_attachment() {
    let script = Scripted::new(vec![ok(
        "<ModifyNetworkInterfaceAttributeResponse><requestId>r</requestId><return>true</return>\
         </ModifyNetworkInterfaceAttributeResponse>"
            .into(),
    )]);
    client(&script)
        .set_delete_on_termination("eni-1", "eni-attach-9")
        .await
        .expect("modify");
    let body = script.seen()[0].body.clone();
    for part in [
        "Action=ModifyNetworkInterfaceAttribute",
        "NetworkInterfaceId=eni-1",
        "Attachment.AttachmentId=eni-attach-9",
        "Attachment.DeleteOnTermination=true",
    ] {
        assert!(body.contains(part), "{part} missing in {body}");
    }
}

#[tokio::test]
async fn security_groups_are_replaced_with_modify_groups() {
    let script = Scripted::new(vec![ok(
        "<ModifyNetworkInterfaceAttributeResponse><requestId>r</requestId><return>true</return>\
         </ModifyNetworkInterfaceAttributeResponse>"
            .into(),
    )]);
    client(&script)
        .set_security_groups("eni-1", &["sg-0a".to_string(), "sg-0b".to_string()])
        .await
        .expect("modify");
    let body = script.seen()[0].body.clone();
    for part in [
        "Action=ModifyNetworkInterfaceAttribute",
        "NetworkInterfaceId=eni-1",
        "SecurityGroupId.1=sg-0a",
        "SecurityGroupId.2=sg-0b",
    ] {
        assert!(body.contains(part), "{part} missing in {body}");
    }
}

#[tokio::test]
async fn an_ipv6_prefix_is_asked_with_ipv6_prefix_count_and_comes_back_as_a_80() {
    let body = "<AssignIpv6AddressesResponse><requestId>r</requestId>\
                <networkInterfaceId>eni-1</networkInterfaceId>\
                <assignedIpv6PrefixSet><item>2600:1f14:ab:c800:1::/80</item></assignedIpv6PrefixSet>\
                </AssignIpv6AddressesResponse>";
    let script = Scripted::new(vec![ok(body.into())]);
    let got = client(&script)
        .assign_ipv6_prefixes("eni-1", 1)
        .await
        .expect("assign");
    assert_eq!(
        got,
        vec!["2600:1f14:ab:c800:1::/80"
            .parse::<ipnetwork::Ipv6Network>()
            .expect("cidr")]
    );
    let seen = script.seen();
    assert!(
        seen[0].body.contains("Action=AssignIpv6Addresses"),
        "{}",
        seen[0].body
    );
    assert!(
        seen[0].body.contains("Ipv6PrefixCount=1"),
        "{}",
        seen[0].body
    );
    assert!(
        seen[0].body.contains("NetworkInterfaceId=eni-1"),
        "{}",
        seen[0].body
    );
    // An ENI's IPv6 prefixes and addresses come back in its description.
    let eni = eni_xml("eni-2", true).replace(
        "<tagSet>",
        "<ipv6AddressesSet><item><ipv6Address>2600:1f14:ab:c800::1001</ipv6Address></item></ipv6AddressesSet>\
         <ipv6PrefixSet><item><ipv6Prefix>2600:1f14:ab:c800:2::/80</ipv6Prefix></item></ipv6PrefixSet><tagSet>",
    );
    let script = Scripted::new(vec![ok(enis_page(&[eni], None)), ok(subnets_page())]);
    let d = client(&script)
        .describe_network_interfaces(&["eni-2".to_string()])
        .await
        .expect("describe");
    assert_eq!(
        d[0].ipv6_prefixes,
        vec!["2600:1f14:ab:c800:2::/80"
            .parse::<ipnetwork::Ipv6Network>()
            .expect("cidr")]
    );
    assert_eq!(
        d[0].ipv6_addresses,
        vec!["2600:1f14:ab:c800::1001"
            .parse::<std::net::Ipv6Addr>()
            .expect("ip")]
    );
}
