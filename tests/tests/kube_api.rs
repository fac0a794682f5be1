//! ipamd and the Kubernetes API: the real `ipamd run --backend sim` with `KUBECONFIG` pointing at the test API
//! server (tests/src/kube_api_server.rs) inside its node namespace.
//!
//! * the node cache syncs, `status.capacity.pods` caps the pool below the ENI math and a change of it reaches the
//!   pool through the watch; a 410 Gone makes the client re-list;
//! * a cordoned node attaches no ENI (AWS_MANAGE_ENIS_NON_SCHEDULABLE defaults to false) until uncordoned;
//! * ANNOTATE_POD_IP: the pod gets `vpc.amazonaws.com/pod-ips` after ADD and it is cleared on DEL; with the API
//!   gone, ADD and DEL keep working, and when it comes back the caches refresh and the queued writes land;
//! * a setting that needs the API holds new pods (and readiness) until the first sync, and says so.

use std::time::{Duration, Instant};

use integration_tests::kube_api_server::{self as api, Kind, KubeApiServer};
use integration_tests::*;
use serde_json::Value;

fn status(ipamd: &Ipamd) -> Value {
    let out = sh(
        bin("ipamd").to_str().unwrap_or("ipamd"),
        &[
            "status",
            "--socket",
            ipamd.socket().to_str().unwrap_or_default(),
            "--output",
            "json",
        ],
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Waits up to `secs` for `cond` on ipamd's status; fails with the last status and the log.
fn wait_status(ipamd: &Ipamd, secs: u64, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let st = status(ipamd);
        if cond(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: last status {st:#}\n{}",
            ipamd.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_for(secs: u64, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn synced(st: &Value) -> bool {
    st["kubernetesApi"]
        .as_str()
        .is_some_and(|s| s.starts_with("synced"))
}

/// A node namespace with the API server in it and ipamd started with `env` against it.
fn start(
    instance_type: &str,
    node_obj: Value,
    env: &[(&str, &str)],
    server_up: bool,
) -> (KubeApiServer, Ipamd) {
    start_with(instance_type, node_obj, env, server_up, false)
}

/// [`start`], optionally with a server that has no ENIConfig CRD.
fn start_with(
    instance_type: &str,
    node_obj: Value,
    env: &[(&str, &str)],
    server_up: bool,
    no_crd: bool,
) -> (KubeApiServer, Ipamd) {
    require_root();
    let node = Netns::new("kapi-node-");
    let dir = TempDir::new();
    let mut server = KubeApiServer::start(std::path::Path::new(&node.path()));
    server.put(Kind::Node, "", node_obj);
    if no_crd {
        server.set_eni_config_crd(false);
    }
    let kubeconfig = server.kubeconfig(dir.path());
    if !server_up {
        server.stop();
    }
    let kc = kubeconfig.to_string_lossy().to_string();
    let mut all: Vec<(&str, &str)> = vec![("KUBECONFIG", &kc), ("MY_NODE_NAME", "node-1")];
    all.extend_from_slice(env);
    let ipamd = Ipamd::start_in(node, dir, instance_type, &all, &[]);
    (server, ipamd)
}

#[test]
fn capacity_pods_caps_the_pool_and_changes_reach_it_through_the_watch_and_a_relist() {
    // m5.large: 3 ENIs x 10 IPv4, ENI math 29 pods; WARM_ENI_TARGET=1 would hold 18 addresses on two ENIs.
    let (mut server, ipamd) = start("m5.large", api::node("node-1", 5, false), &[], true);
    let st = wait_status(&ipamd, 20, "node cache synced, max-pods 5", |s| {
        synced(s) && s["pool"]["maxPods"] == 5
    });
    assert!(
        st["kubernetesApi"]
            .as_str()
            .is_some_and(|s| s.contains("capacity.pods 5")),
        "{st:#}"
    );
    // The pool settles at the cap: 5 addresses, one ENI, and stays there.
    let st = wait_status(&ipamd, 20, "pool at the cap", |s| s["pool"]["total"] == 5);
    std::thread::sleep(Duration::from_secs(3));
    let later = status(&ipamd);
    assert_eq!(later["pool"]["total"], 5, "{later:#}\n{}", ipamd.log());
    assert_eq!(later["pool"]["enis"], 1, "{later:#}");
    assert_eq!(st["pool"]["enis"], 1, "{st:#}");
    assert!(
        server.lists("/api/v1/nodes") >= 1,
        "{:?}",
        server.requests()
    );
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.contains("fieldSelector=metadata.name=node-1")),
        "the node is watched by name: {:?}",
        server.requests()
    );

    // A watch event raises the cap: the pool grows past 5 (and never past 12).
    server.put(Kind::Node, "", api::node("node-1", 12, false));
    let st = wait_status(&ipamd, 30, "max-pods 12 from the watch", |s| {
        s["pool"]["maxPods"] == 12 && s["pool"]["total"].as_u64().is_some_and(|t| t > 5)
    });
    assert!(
        st["pool"]["total"].as_u64().is_some_and(|t| t <= 12),
        "{st:#}"
    );

    // 410 Gone: the history is compacted and every watch cut; the client re-lists and sees the new object.
    let lists = server.lists("/api/v1/nodes");
    server.expire_watches();
    server.put(Kind::Node, "", api::node("node-1", 7, false));
    wait_status(&ipamd, 30, "max-pods 7 after the re-list", |s| {
        s["pool"]["maxPods"] == 7
    });
    wait_for(30, "a re-list after 410 Gone", || {
        server.lists("/api/v1/nodes") > lists
    });
}

#[test]
fn a_cordoned_node_attaches_no_eni_until_uncordoned() {
    // t3.nano: 2 ENIs x 2 IPv4 (one secondary IP each); WARM_IP_TARGET=2 needs the second ENI.
    let (server, ipamd) = start(
        "t3.nano",
        api::node("node-1", 110, true),
        &[("WARM_IP_TARGET", "2")],
        true,
    );
    let st = wait_status(&ipamd, 20, "synced and paused", |s| {
        synced(s) && s["eniChangesPaused"] == true
    });
    std::thread::sleep(Duration::from_secs(3));
    let st2 = status(&ipamd);
    assert_eq!(st2["pool"]["enis"], 1, "{st:#}\n{st2:#}\n{}", ipamd.log());
    assert!(
        st2["lastDecision"]
            .as_str()
            .is_some_and(|d| d.starts_with("EniChangesPaused")),
        "{st2:#}"
    );
    // EC2 (the simulator's state) holds the primary ENI only: nothing was created either.
    let enis_in_ec2 = |ipamd: &Ipamd| ipamd.sim_state()["enis"].as_object().map_or(0, |m| m.len());
    assert_eq!(enis_in_ec2(&ipamd), 1, "{:#}", ipamd.sim_state());

    server.put(Kind::Node, "", api::node("node-1", 110, false));
    wait_status(&ipamd, 30, "second ENI after uncordon", |s| {
        s["pool"]["enis"] == 2 && s["eniChangesPaused"] == false
    });
    assert_eq!(enis_in_ec2(&ipamd), 2, "{:#}", ipamd.sim_state());
}

#[test]
fn pod_ips_are_annotated_and_the_api_going_away_and_back_loses_nothing() {
    let (mut server, ipamd) = start(
        "m5.large",
        api::node("node-1", 110, false),
        &[("ANNOTATE_POD_IP", "true")],
        true,
    );
    for name in ["first", "second"] {
        server.put(Kind::Pod, "default", api::pod("default", name));
    }
    wait_status(&ipamd, 20, "synced", synced);
    let conf = ipamd.conf("1.0.0");
    let annotation = |server: &KubeApiServer, name: &str| {
        server.get(Kind::Pod, "default", name).and_then(|p| {
            p["metadata"]["annotations"]["vpc.amazonaws.com/pod-ips"]
                .as_str()
                .map(str::to_string)
        })
    };

    let ns1 = Netns::new("kapi-a-");
    let p1 = pod(&ns1, "first");
    let out = add_with_retry(&ipamd.node, &p1, &conf);
    assert!(out.success, "{}\n{}", out.stdout, ipamd.log());
    let ip1 = result_ip(&out.json);
    wait_for(20, "first annotated", || {
        annotation(&server, "first").as_deref() == Some(ip1.as_str())
    });

    // The API goes away: ADD of a new pod and DEL of a known one keep working.
    server.stop();
    let ns2 = Netns::new("kapi-b-");
    let p2 = pod(&ns2, "second");
    let out2 = add_with_retry(&ipamd.node, &p2, &conf);
    assert!(
        out2.success,
        "ADD while the API is away: {}\n{}",
        out2.stdout,
        ipamd.log()
    );
    let ip2 = result_ip(&out2.json);
    let del = cni(&ipamd.node, "DEL", &p1, &conf);
    assert!(del.success, "DEL while the API is away: {}", del.stdout);
    wait_status(&ipamd, 30, "the status says the watch failed", |s| {
        s["kubernetesApi"]
            .as_str()
            .is_some_and(|d| d.contains("watch:"))
    });
    // Changed while away.
    server.put(Kind::Node, "", api::node("node-1", 20, false));
    assert_eq!(annotation(&server, "second"), None);

    // Back: the caches refresh and the queued writes land.
    server.restart();
    wait_status(&ipamd, 40, "max-pods 20 after the API came back", |s| {
        s["pool"]["maxPods"] == 20
            && s["kubernetesApi"]
                .as_str()
                .is_some_and(|d| !d.contains("watch:"))
    });
    wait_for(60, "second annotated after the API came back", || {
        annotation(&server, "second").as_deref() == Some(ip2.as_str())
    });
    wait_for(60, "first's annotation cleared after its DEL", || {
        annotation(&server, "first").as_deref() == Some("")
    });
    // A DEL whose address is no longer in the annotation leaves the annotation alone.
    server.put(Kind::Pod, "default", {
        let mut p = api::pod("default", "second");
        p["metadata"]["annotations"]["vpc.amazonaws.com/pod-ips"] = "10.9.9.9".into();
        p
    });
    let del2 = cni(&ipamd.node, "DEL", &p2, &conf);
    assert!(del2.success, "{}", del2.stdout);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(annotation(&server, "second").as_deref(), Some("10.9.9.9"));
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.starts_with("PATCH /api/v1/namespaces/default/pods/first")),
        "{:?}",
        server.requests()
    );
}

#[test]
fn a_setting_that_needs_the_api_holds_new_pods_and_readiness_until_the_first_sync() {
    let (mut server, ipamd) = start(
        "m5.large",
        api::node("node-1", 110, false),
        &[("ANNOTATE_POD_IP", "true")],
        false,
    );
    let st = status(&ipamd);
    assert_eq!(st["ready"], false, "{st:#}");
    assert!(
        st["message"]
            .as_str()
            .is_some_and(|m| m.contains("Kubernetes API") && m.contains("ANNOTATE_POD_IP")),
        "{st:#}"
    );
    // The readiness probe (the DaemonSet's) says the same.
    let probe = |ipamd: &Ipamd| {
        sh(
            bin("ipamd").to_str().unwrap_or("ipamd"),
            &[
                "health",
                "--ready",
                "--socket",
                ipamd.socket().to_str().unwrap_or_default(),
            ],
        )
    };
    let p0 = probe(&ipamd);
    assert!(!p0.status.success(), "{p0:?}");
    assert!(
        String::from_utf8_lossy(&p0.stdout).contains("Kubernetes API")
            || String::from_utf8_lossy(&p0.stderr).contains("Kubernetes API"),
        "{p0:?}"
    );
    let conf = ipamd.conf("1.0.0");
    let ns = Netns::new("kapi-w-");
    let p = pod(&ns, "waiting");
    let out = cni(&ipamd.node, "ADD", &p, &conf);
    assert!(!out.success, "{}", out.stdout);
    assert!(out.stdout.contains("Kubernetes API"), "{}", out.stdout);

    server.restart();
    wait_status(&ipamd, 40, "ready after the first sync", |s| {
        s["ready"] == true && synced(s)
    });
    assert!(server.lists("/api/v1/nodes") >= 1);
    let p1 = probe(&ipamd);
    assert!(p1.status.success(), "{p1:?}");
    let out = add_with_retry(&ipamd.node, &p, &conf);
    assert!(out.success, "{}\n{}", out.stdout, ipamd.log());
    let del = cni(&ipamd.node, "DEL", &p, &conf);
    assert!(del.success, "{}", del.stdout);
}

#[test]
fn an_iam_failure_becomes_one_rate_limited_warning_event_on_the_aws_node_pod() {
    // Every AssignPrivateIpAddresses is refused (UnauthorizedOperation); the pool task keeps retrying.
    let (server, ipamd) = start(
        "m5.large",
        api::node("node-1", 110, false),
        &[
            ("MY_POD_NAME", "aws-node-x1"),
            (
                "AWS_CNI_SIM_FAULTS",
                "unauthorized:AssignPrivateIpAddresses:1000",
            ),
        ],
        true,
    );
    wait_for(30, "a MissingIAMPermissions event", || {
        !server.all(Kind::Event).is_empty()
    });
    let events = server.all(Kind::Event);
    let ev = &events[0];
    assert_eq!(ev["reason"], "MissingIAMPermissions", "{ev:#}");
    assert_eq!(ev["type"], "Warning", "{ev:#}");
    assert_eq!(ev["involvedObject"]["kind"], "Pod", "{ev:#}");
    assert_eq!(ev["involvedObject"]["name"], "aws-node-x1", "{ev:#}");
    assert_eq!(ev["metadata"]["namespace"], "kube-system", "{ev:#}");
    assert!(
        ev["message"]
            .as_str()
            .is_some_and(|m| m.contains("AssignPrivateIpAddresses")),
        "{ev:#}"
    );
    // The pool keeps failing (backoff 1 s, 2 s, 4 s...), but the event is not repeated within a minute.
    std::thread::sleep(Duration::from_secs(6));
    let st = status(&ipamd);
    assert!(
        st["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("UnauthorizedOperation")),
        "{st:#}"
    );
    assert_eq!(
        server.all(Kind::Event).len(),
        1,
        "{:#?}",
        server.all(Kind::Event)
    );
}

#[test]
fn a_cluster_without_the_eni_config_crd_still_syncs() {
    let (_server, ipamd) = start_with(
        "m5.large",
        api::node("node-1", 110, false),
        &[("ANNOTATE_POD_IP", "true")],
        true,
        true,
    );
    let st = wait_status(&ipamd, 20, "synced without ENIConfigs", |s| {
        synced(s) && s["ready"] == true
    });
    assert!(
        st["kubernetesApi"]
            .as_str()
            .is_some_and(|d| d.contains("0 ENIConfig(s)")),
        "{st:#}"
    );
}

/// A daemon killed on drop (SIGKILL), for the restart test.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(node: &Netns, dir: &TempDir, env: &[(&str, &str)]) -> Daemon {
    let _ = std::fs::remove_file(dir.path().join("ipamd.sock"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("ipamd.log"))
        .expect("log");
    let mut cmd = Ipamd::command(node, dir, "m5.large");
    cmd.envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    let mut d = Daemon(cmd.spawn().expect("spawn ipamd"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.path().join("ipamd.sock").exists() {
        if let Ok(Some(st)) = d.0.try_wait() {
            panic!(
                "ipamd exited ({st}):\n{}",
                std::fs::read_to_string(dir.path().join("ipamd.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "ipamd not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

#[test]
fn a_pod_restored_from_the_checkpoint_is_deleted_while_the_needed_api_is_away() {
    require_root();
    let node = Netns::new("kapi-r-");
    let dir = TempDir::new();
    let mut server = KubeApiServer::start(std::path::Path::new(&node.path()));
    server.put(Kind::Node, "", api::node("node-1", 110, false));
    server.put(Kind::Pod, "default", api::pod("default", "first"));
    let kc = server.kubeconfig(dir.path()).to_string_lossy().to_string();
    let env = [
        ("KUBECONFIG", kc.as_str()),
        ("MY_NODE_NAME", "node-1"),
        ("ANNOTATE_POD_IP", "true"),
    ];
    let socket = dir.path().join("ipamd.sock");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "aws-cni", "type": "aws-cni", "vethPrefix": "eni", "mtu": "9001",
        "ipamdSocket": socket, "ipamdTimeoutMs": 3000,
        "pluginLogFile": dir.path().join("plugin.log"), "pluginLogLevel": "debug",
    });
    let held = |socket: &std::path::Path| -> Vec<String> {
        let out = sh(
            bin("ipamd").to_str().unwrap_or("ipamd"),
            &[
                "status",
                "--socket",
                socket.to_str().unwrap_or_default(),
                "--output",
                "json",
            ],
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        arr(&v["pods"])
            .iter()
            .map(|p| p["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };

    let mut first = spawn(&node, &dir, &env);
    let ns = Netns::new("kapi-ra-");
    let p = pod(&ns, "first");
    let out = add_with_retry(&node, &p, &conf);
    assert!(out.success, "{}", out.stdout);
    wait_for(20, "annotated", || {
        server
            .get(Kind::Pod, "default", "first")
            .is_some_and(|o| !o["metadata"]["annotations"]["vpc.amazonaws.com/pod-ips"].is_null())
    });
    let _ = sh("kill", &["-TERM", &first.0.id().to_string()]);
    let _ = first.0.wait();
    drop(first);

    // Restart with the API away: not synced, so new pods wait; the restored pod is known and its DEL goes through.
    server.stop();
    let _second = spawn(&node, &dir, &env);
    assert_eq!(
        held(&socket),
        vec!["first".to_string()],
        "restored from the checkpoint"
    );
    let ns2 = Netns::new("kapi-rb-");
    let p2 = pod(&ns2, "second");
    let out2 = cni(&node, "ADD", &p2, &conf);
    assert!(
        !out2.success && out2.stdout.contains("Kubernetes API"),
        "{}",
        out2.stdout
    );
    let del = cni(&node, "DEL", &p, &conf);
    assert!(
        del.success,
        "DEL of a restored pod with the API away: {}",
        del.stdout
    );
    assert!(
        held(&socket).is_empty(),
        "the restored pod's address was released"
    );
}

#[test]
fn with_aws_manage_enis_non_schedulable_a_cordoned_node_still_attaches_enis() {
    let (_server, ipamd) = start(
        "t3.nano",
        api::node("node-1", 110, true),
        &[
            ("WARM_IP_TARGET", "2"),
            ("AWS_MANAGE_ENIS_NON_SCHEDULABLE", "true"),
        ],
        true,
    );
    let st = wait_status(&ipamd, 30, "second ENI on the cordoned node", |s| {
        synced(s) && s["pool"]["enis"] == 2
    });
    assert_eq!(st["eniChangesPaused"], false, "{st:#}");
}

// The cluster's EC2 schedule (ipamd::schedule): the Lease aws-cni-ec2-schedule in kube-system.

const LEASE: &str = "aws-cni-ec2-schedule";

fn schedule_line(st: &Value) -> String {
    st["ec2Schedule"].as_str().unwrap_or_default().to_string()
}

/// The lease's theoretical arrival time of `api`, unix ms.
fn lease_tat(server: &KubeApiServer, api: &str) -> Option<f64> {
    server.get(Kind::Lease, "kube-system", LEASE).and_then(|l| {
        l["metadata"]["annotations"][format!("ec2-schedule.aws-cni/{api}")]
            .as_str()
            .and_then(|v| v.parse().ok())
    })
}

fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

#[test]
fn ec2_calls_take_their_slots_in_the_cluster_schedule_lease() {
    // m5.large: 9 secondary IPs per ENI; 15 warm addresses need a second ENI.
    let (server, ipamd) = start(
        "m5.large",
        api::node("node-1", 110, false),
        &[("WARM_IP_TARGET", "15")],
        true,
    );
    wait_status(&ipamd, 30, "the first fill", |s| {
        s["pool"]["total"].as_u64().is_some_and(|t| t > 0)
    });
    assert!(ipamd.ec2_calls("AssignPrivateIpAddresses") >= 1);
    // The first call created the lease; every later call (the second ENI's Create, Attach, ...) wrote its API's
    // next free time with the version it read.
    wait_for(30, "the second ENI's calls in the lease", || {
        ipamd.ec2_calls("CreateNetworkInterface") >= 1
            && lease_tat(&server, "CreateNetworkInterface").is_some()
    });
    let tat = lease_tat(&server, "AssignPrivateIpAddresses").expect("Assign's slot in the lease");
    assert!(
        (tat - unix_ms()).abs() < 120_000.0,
        "a time near now: {tat} (now {})",
        unix_ms()
    );
    let reqs = server.requests();
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
    assert!(
        reqs.iter()
            .any(|r| r.starts_with(&format!("POST {leases}?"))),
        "{reqs:?}"
    );
    assert!(
        reqs.iter()
            .any(|r| r.starts_with(&format!("PUT {leases}/{LEASE}?"))),
        "{reqs:?}"
    );
    let st = status(&ipamd);
    assert!(
        schedule_line(&st).starts_with("in use"),
        "{st:#}\n{}",
        ipamd.log()
    );
}

#[test]
fn a_slot_far_ahead_holds_the_pools_ec2_calls_and_status_says_so() {
    require_root();
    let node = Netns::new("ksched-");
    let dir = TempDir::new();
    let server = KubeApiServer::start(std::path::Path::new(&node.path()));
    server.put(Kind::Node, "", api::node("node-1", 110, false));
    // Another node's reservations reach 25 s ahead for both APIs that bring addresses. A bucket of one (burst
    // share 0.005 of 200) makes the slot the stored time itself.
    let ahead = 25_000.0;
    let set_at = Instant::now();
    let tat = format!("{:.3}", unix_ms() + ahead);
    server.put(
        Kind::Lease,
        "kube-system",
        serde_json::json!({"metadata": {"name": LEASE, "annotations": {
            "ec2-schedule.aws-cni/AssignPrivateIpAddresses": tat,
            "ec2-schedule.aws-cni/CreateNetworkInterface": tat,
        }}, "spec": {}}),
    );
    let kc = server.kubeconfig(dir.path()).to_string_lossy().to_string();
    let env = [
        ("KUBECONFIG", kc.as_str()),
        ("MY_NODE_NAME", "node-1"),
        ("AWS_CNI_EC2_SCHEDULE_BURST_SHARE", "0.005"),
    ];
    let ipamd = Ipamd::start_in(node, dir, "m5.large", &env, &[]);
    // The warm fill does not queue behind the schedule: the daemon serves with an empty pool.
    wait_status(&ipamd, 20, "synced", synced);
    // A pod's ADD is demand: the pool's Assign takes its slot and waits for it, sending nothing.
    let conf = ipamd.conf("1.0.0");
    let ns = Netns::new("ksched-p-");
    let p = pod(&ns, "waits");
    let (st, out) = std::thread::scope(|scope| {
        let first_add = scope.spawn(|| cni(&ipamd.node, "ADD", &p, &conf));
        let st = wait_status(&ipamd, 15, "waiting for the schedule", |s| {
            schedule_line(s).contains("waiting for the cluster's EC2 schedule")
        });
        (st, first_add.join().expect("ADD thread"))
    });
    assert!(
        schedule_line(&st).contains("AssignPrivateIpAddresses"),
        "{st:#}"
    );
    // Nothing was sent while the call waited: the ADD gave up (8 s) before the slot (25 s).
    assert!(
        set_at.elapsed() < Duration::from_millis(ahead as u64 - 2000),
        "checked before the slot: {:?}",
        set_at.elapsed()
    );
    assert_eq!(ipamd.ec2_calls("AssignPrivateIpAddresses"), 0, "{st:#}");
    assert_eq!(ipamd.ec2_calls("CreateNetworkInterface"), 0, "{st:#}");
    assert!(!out.success, "no address before the slot: {}", out.stdout);
    assert!(
        out.stdout.contains("EC2 schedule"),
        "the ADD says why: {}",
        out.stdout
    );
    // At the slot the call goes, and pods get addresses.
    wait_status(&ipamd, 40, "addresses after the slot", |s| {
        s["pool"]["total"].as_u64().is_some_and(|t| t > 0)
    });
    assert!(
        set_at.elapsed() >= Duration::from_millis(ahead as u64 - 1500),
        "the first Assign went at its slot, not before: {:?}",
        set_at.elapsed()
    );
    let out = add_with_retry(&ipamd.node, &p, &conf);
    assert!(out.success, "{}\n{}", out.stdout, ipamd.log());
}

#[test]
fn a_forbidden_lease_leaves_ec2_calls_to_the_node_and_status_says_why() {
    require_root();
    let node = Netns::new("ksched403-");
    let dir = TempDir::new();
    let server = KubeApiServer::start(std::path::Path::new(&node.path()));
    server.put(Kind::Node, "", api::node("node-1", 110, false));
    server.set_leases_forbidden(true);
    let kc = server.kubeconfig(dir.path()).to_string_lossy().to_string();
    let env = [("KUBECONFIG", kc.as_str()), ("MY_NODE_NAME", "node-1")];
    let ipamd = Ipamd::start_in(node, dir, "m5.large", &env, &[]);
    let st = wait_status(&ipamd, 30, "the fill went on without the schedule", |s| {
        s["pool"]["total"].as_u64().is_some_and(|t| t > 0)
    });
    let line = schedule_line(&st);
    assert!(
        line.starts_with("not in use") && line.contains("403"),
        "{st:#}\n{}",
        ipamd.log()
    );
    assert!(server.get(Kind::Lease, "kube-system", LEASE).is_none());
    let metrics = ipamd.node.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("awscni_ec2_schedule_total{outcome=\"forbidden\"}")),
        "{metrics}"
    );
    assert!(
        metrics.contains("awscni_ec2_schedule_in_use 0"),
        "{metrics}"
    );
}

/// Starts ipamd (m5.large) against a server whose lease exists and whose next `races` lease PUTs lose a race to
/// another node's write.
fn start_with_racing_lease(races: u32) -> (KubeApiServer, Ipamd) {
    require_root();
    let node = Netns::new("krace-");
    let dir = TempDir::new();
    let server = KubeApiServer::start(std::path::Path::new(&node.path()));
    server.put(Kind::Node, "", api::node("node-1", 110, false));
    server.put(
        Kind::Lease,
        "kube-system",
        serde_json::json!({"metadata": {"name": LEASE}, "spec": {}}),
    );
    server.race_lease_writes(races);
    let kc = server.kubeconfig(dir.path()).to_string_lossy().to_string();
    let env = [("KUBECONFIG", kc.as_str()), ("MY_NODE_NAME", "node-1")];
    let ipamd = Ipamd::start_in(node, dir, "m5.large", &env, &[]);
    (server, ipamd)
}

fn lease_puts(server: &KubeApiServer) -> usize {
    let put = format!("PUT /apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{LEASE}?");
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with(&put))
        .count()
}

/// The value of `awscni_ec2_schedule_total{outcome="<outcome>"}`, 0 when absent.
fn schedule_outcome(metrics: &str, outcome: &str) -> f64 {
    let prefix = format!("awscni_ec2_schedule_total{{outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Another node writes the lease between our read and our write (409 Conflict, three times in a row): the
/// reservation reads again and lands on the fourth write, and the call takes its slot.
#[test]
fn a_lease_write_that_loses_a_race_is_read_again_and_the_reservation_lands() {
    let (server, ipamd) = start_with_racing_lease(3);
    let st = wait_status(&ipamd, 30, "the first fill", |s| {
        s["pool"]["total"].as_u64().is_some_and(|t| t > 0)
    });
    assert!(ipamd.ec2_calls("AssignPrivateIpAddresses") >= 1, "{st:#}");
    assert!(
        lease_tat(&server, "AssignPrivateIpAddresses").is_some(),
        "the reservation landed: {:?}\n{}",
        server.get(Kind::Lease, "kube-system", LEASE),
        ipamd.log()
    );
    assert!(lease_puts(&server) >= 4, "{:?}", server.requests());
    let metrics = ipamd.node.metrics();
    assert!(schedule_outcome(&metrics, "reserved") >= 1.0, "{metrics}");
    assert_eq!(schedule_outcome(&metrics, "contended"), 0.0, "{metrics}");
    assert!(
        schedule_line(&status(&ipamd)).starts_with("in use"),
        "{}",
        ipamd.log()
    );
}

/// Every write loses its race: a reservation gives up after ten reads and writes, counted as `contended`, and
/// the call goes on under the node's own pacing, so the pool still fills.
#[test]
fn a_reservation_that_keeps_losing_races_gives_up_and_the_call_still_goes() {
    let (server, ipamd) = start_with_racing_lease(1_000_000);
    let st = wait_status(&ipamd, 60, "the first fill without a slot", |s| {
        s["pool"]["total"].as_u64().is_some_and(|t| t > 0)
    });
    assert!(ipamd.ec2_calls("AssignPrivateIpAddresses") >= 1, "{st:#}");
    let metrics = ipamd.node.metrics();
    assert!(schedule_outcome(&metrics, "contended") >= 1.0, "{metrics}");
    assert!(lease_puts(&server) >= 10, "{:?}", server.requests());
    assert_eq!(
        lease_tat(&server, "AssignPrivateIpAddresses"),
        None,
        "no write landed"
    );
}
