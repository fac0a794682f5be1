//! The hostile review's attacks, through the real binaries: each test reproduces one defect and asserts it is
//! gone. The node is a test namespace with ipamd on a simulated EC2 in it; nothing here points at the machine's
//! own namespace: where an attack needs "the initial namespace", `unshare --pid --fork --mount-proc` inside the
//! node namespace makes `/proc/1/ns/net` the node's, as the review did.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{
    add_with_retry, arr, bin, cni, cni_raw, cni_raw_wrapped, eventually, expected_veth, pod,
    result_ip, sh, with_prev, CniOut, Ipamd, Netns, PodSpec, TempDir, STILL_POOL,
};
use serde_json::{json, Value};

/// Rule 512 `to ip` is on the node.
fn has_rule(node: &Netns, ip: &str) -> bool {
    arr(&node.ip_json(&["rule", "show"]))
        .iter()
        .any(|r| r["dst"] == ip && r["priority"] == 512)
}

/// The device of the node's host route to `ip`, if any.
fn route_dev(node: &Netns, ip: &str) -> Option<String> {
    arr(&node.ip_json(&["route", "show", &format!("{ip}/32")]))
        .first()
        .and_then(|r| r["dev"].as_str().map(str::to_string))
}

/// The IPs ipamd holds, by pod name (from `ipamd status --output json`).
fn held(ipamd: &Ipamd) -> Vec<(String, String)> {
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
    assert!(out.status.success(), "ipamd status: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("status json");
    arr(&v["pods"])
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["ip"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn holds_ip(ipamd: &Ipamd, ip: &str) -> bool {
    held(ipamd).iter().any(|(_, i)| i == ip)
}

/// `aws-cni` as PID 1 of a new PID namespace inside the node namespace, so that `/proc/1/ns/net` is the node's.
fn cni_as_pid1(node: &Netns, env: &[(&str, &str)], stdin: &[u8]) -> CniOut {
    cni_raw_wrapped(
        node,
        &["unshare", "--pid", "--fork", "--mount-proc"],
        env,
        stdin,
    )
}

/// The machine's own routing and links, to prove the tests never touched them.
fn host_state() -> Vec<String> {
    let mut out = Vec::new();
    for args in [
        &["-json", "rule", "show"][..],
        &["-json", "route", "show", "table", "main"][..],
    ] {
        let o = sh("ip", args);
        out.push(String::from_utf8_lossy(&o.stdout).to_string());
    }
    let links = sh("ip", &["-json", "link", "show"]);
    let v: Value = serde_json::from_slice(&links.stdout).unwrap_or(Value::Null);
    let mut names: Vec<String> = arr(&v)
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        // Other tests' pods come and go on the host only as links inside their own namespaces, never here;
        // still, compare only the links that existed before (none is expected to vanish).
        .collect();
    names.sort();
    out.push(names.join(","));
    out
}

#[test]
fn d1_the_nodes_own_namespace_is_refused_as_a_pods() {
    let host_before = host_state();
    let ipamd = Ipamd::start("m5.large", STILL_POOL);
    let node = &ipamd.node;
    // The node's primary interface (the simulated node has one, eth0; else one is made here).
    let scratch = Netns::new("act-scr-");
    if node.link_index("eth0").is_none() {
        assert!(node
            .exec(&[
                "ip",
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "p0",
                "netns",
                &scratch.name
            ])
            .status
            .success());
        assert!(node
            .exec(&["ip", "link", "set", "eth0", "up"])
            .status
            .success());
    }
    let before = node.snapshot();
    let conf = ipamd.conf("1.0.0").to_string();

    for (command, ifname) in [
        ("ADD", "eth0"),
        ("ADD", "podx"),
        ("DEL", "eth0"),
        ("CHECK", "eth0"),
    ] {
        let args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=pself";
        let own = node.path();
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "cself"),
            ("CNI_NETNS", own.as_str()),
            ("CNI_IFNAME", ifname),
            ("CNI_ARGS", args),
        ];
        let out = cni_raw(node, &env, conf.as_bytes());
        assert!(
            !out.success,
            "{command} {ifname} in the node's own namespace succeeded"
        );
        assert_eq!(out.code(), 4, "{command}: {}", out.stdout);
        assert!(
            out.stdout.contains("own network namespace"),
            "{}",
            out.stdout
        );

        // The same through /proc/1/ns/net, with the node's namespace as PID 1's.
        let mut env1 = env;
        env1[2] = ("CNI_NETNS", "/proc/1/ns/net");
        let out = cni_as_pid1(node, &env1, conf.as_bytes());
        assert!(
            !out.success,
            "{command} {ifname} with /proc/1/ns/net succeeded"
        );
        assert_eq!(out.code(), 4, "{command} /proc/1/ns/net: {}", out.stdout);
        assert_eq!(
            node.snapshot(),
            before,
            "{command} {ifname} changed the node"
        );
    }
    assert!(
        node.link_index("eth0").is_some(),
        "the node's eth0 was deleted"
    );
    assert!(
        held(&ipamd).is_empty(),
        "a refused ADD holds an address: {:?}",
        held(&ipamd)
    );
    drop(ipamd);
    assert_eq!(
        host_state(),
        host_before,
        "the machine's own namespace changed"
    );
}

#[test]
fn d2_a_repeated_del_of_an_old_sandbox_leaves_the_new_sandbox_alone() {
    let ipamd = Ipamd::start("m5.large", STILL_POOL);
    let node = &ipamd.node;
    let conf = ipamd.conf("1.0.0");
    let old_ns = Netns::new("act-pod-");
    let a = pod(&old_ns, "web");
    let add_a = add_with_retry(node, &a, &conf);
    assert!(add_a.success, "{}", add_a.stdout);
    let del_a = cni(node, "DEL", &a, &with_prev(&conf, &add_a.json));
    assert!(del_a.success, "{}", del_a.stdout);
    drop(old_ns);

    let new_ns = Netns::new("act-pod-");
    let b = pod(&new_ns, "web");
    let add_b = add_with_retry(node, &b, &conf);
    assert!(add_b.success, "{}", add_b.stdout);
    let ip_b = result_ip(&add_b.json);
    let veth = expected_veth("default", "web");
    assert!(eventually(Duration::from_secs(15), || route_dev(
        node, &ip_b
    )
    .is_some_and(|d| d == veth)));

    // containerd's second DEL of the old sandbox: no netns, no prevResult.
    let mut stale = a.clone();
    stale.netns = String::new();
    let again = cni(node, "DEL", &stale, &conf);
    assert!(again.success, "{}", again.stdout);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        node.link_index(&veth).is_some(),
        "the new sandbox's veth was deleted"
    );
    assert_eq!(route_dev(node, &ip_b).as_deref(), Some(veth.as_str()));
    assert!(
        has_rule(node, &ip_b),
        "the new sandbox's rule 512 was deleted"
    );
    assert!(holds_ip(&ipamd, &ip_b));
    assert!(node.ping(&ip_b), "the new sandbox is unreachable");
}

#[test]
fn d2_d3_a_del_naming_another_pods_address_interface_or_namespace_touches_nothing() {
    let ipamd = Ipamd::start("m5.large", STILL_POOL);
    let node = &ipamd.node;
    let conf = ipamd.conf("1.0.0");
    let ns = Netns::new("act-pod-");
    let p1 = pod(&ns, "p1");
    let add = add_with_retry(node, &p1, &conf);
    assert!(add.success, "{}", add.stdout);
    let ip = result_ip(&add.json);
    let veth = expected_veth("default", "p1");
    // A bridge that shares the veth prefix (the node's management bridge, say).
    assert!(node
        .exec(&["ip", "link", "add", "enimgmt", "type", "bridge"])
        .status
        .success());
    let before = node.snapshot();
    let pod_before = ns.snapshot();

    let attacker = PodSpec {
        container_id: "attacker".into(),
        namespace: "default".into(),
        name: "attacker".into(),
        netns: String::new(),
        ifname: "eth0".into(),
    };
    // A lying prevResult: p1's address and host veth.
    let out = cni(node, "DEL", &attacker, &with_prev(&conf, &add.json));
    assert!(out.success, "{}", out.stdout);
    // A prevResult naming the bridge.
    let mut bridge = add.json.clone();
    bridge["interfaces"][0]["name"] = json!("enimgmt");
    let out = cni(node, "DEL", &attacker, &with_prev(&conf, &bridge));
    assert!(out.success, "{}", out.stdout);
    // p1's own namespace as the attacker's.
    let mut in_p1 = attacker.clone();
    in_p1.netns = ns.path();
    let out = cni(node, "DEL", &in_p1, &conf);
    assert!(out.success, "{}", out.stdout);
    // vethPrefix "e" with prevResult interface eth0 (the node's name for its primary interface).
    let mut e_conf = with_prev(&conf, &add.json);
    e_conf["vethPrefix"] = json!("e");
    e_conf["prevResult"]["interfaces"][0]["name"] = json!("eth0");
    let out = cni(node, "DEL", &attacker, &e_conf);
    assert!(out.success, "{}", out.stdout);

    // Long enough for ipamd's reaper to have acted on anything it had taken.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(node.snapshot(), before, "the node changed");
    assert_eq!(ns.snapshot(), pod_before, "p1's namespace changed");
    assert!(node.link_index(&veth).is_some() && node.link_index("enimgmt").is_some());
    assert!(holds_ip(&ipamd, &ip));
    assert!(node.ping(&ip), "p1 is unreachable");
}

#[test]
fn d6_a_del_leaves_the_route_and_rules_of_the_addresses_new_holder() {
    let ipamd = Ipamd::start("m5.large", STILL_POOL);
    let node = &ipamd.node;
    let conf = ipamd.conf("1.0.0");
    let (ns_a, ns_c) = (Netns::new("act-pod-"), Netns::new("act-pod-"));
    let (a, c) = (pod(&ns_a, "olda"), pod(&ns_c, "otherc"));
    let add_a = add_with_retry(node, &a, &conf);
    let add_c = add_with_retry(node, &c, &conf);
    assert!(add_a.success && add_c.success);
    let ip_a = result_ip(&add_a.json);
    let veth_a = expected_veth("default", "olda");
    let veth_c = expected_veth("default", "otherc");
    // The address now leads to another pod's veth, as when ipamd handed it to a new pod (cooldown 0) while
    // this DEL was on its way.
    assert!(node
        .exec(&[
            "ip",
            "route",
            "replace",
            &format!("{ip_a}/32"),
            "dev",
            &veth_c,
            "scope",
            "link"
        ])
        .status
        .success());

    let del = cni(node, "DEL", &a, &with_prev(&conf, &add_a.json));
    assert!(del.success, "{}", del.stdout);
    assert_eq!(
        route_dev(node, &ip_a).as_deref(),
        Some(veth_c.as_str()),
        "the new holder's route was deleted"
    );
    assert!(
        has_rule(node, &ip_a),
        "the new holder's rule 512 was deleted"
    );
    // A's own pair still goes (its peer was in A's namespace).
    assert!(eventually(Duration::from_secs(15), || node
        .link_index(&veth_a)
        .is_none()));
}

#[test]
fn d11_a_malformed_prev_result_does_not_keep_the_address() {
    let ipamd = Ipamd::start("m5.large", STILL_POOL);
    let node = &ipamd.node;
    let conf = ipamd.conf("1.0.0");
    for (i, prev) in [
        json!({"cniVersion": "1.0.0", "ips": [{"address": "not-an-ip"}]}),
        json!("lol"),
    ]
    .into_iter()
    .enumerate()
    {
        let ns = Netns::new("act-pod-");
        let p = pod(&ns, &format!("mal{i}"));
        let add = add_with_retry(node, &p, &conf);
        assert!(add.success, "{}", add.stdout);
        let ip = result_ip(&add.json);
        let del = cni(node, "DEL", &p, &with_prev(&conf, &prev));
        assert!(del.success, "DEL with prevResult {prev}: {}", del.stdout);
        assert!(!holds_ip(&ipamd, &ip), "{ip} still held after DEL");
        assert!(!has_rule(node, &ip), "rule 512 of {ip} left");
        assert!(route_dev(node, &ip).is_none(), "route to {ip} left");
    }
}

#[test]
fn d4_concurrent_adds_of_one_container_never_leave_an_address_on_two_pods() {
    let ipamd = Ipamd::start("m5.large", &[("IP_COOLDOWN_PERIOD", "0")]);
    let conf = ipamd.conf("1.0.0");
    let namespaces: Vec<Netns> = (0..8).map(|_| Netns::new("act-pod-")).collect();
    let outs: Vec<CniOut> = std::thread::scope(|s| {
        let handles: Vec<_> = namespaces
            .iter()
            .map(|ns| {
                let mut p = pod(ns, "same");
                p.container_id = "same-container".into();
                let (node, conf) = (&ipamd.node, &conf);
                s.spawn(move || cni(node, "ADD", &p, conf))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    });
    assert!(outs.iter().any(|o| o.success), "no ADD succeeded");
    // Every address configured in a pod is held by ipamd, and no address is in two pods.
    let mut live = Vec::new();
    for ns in &namespaces {
        for l in arr(&ns.ip_json(&["addr", "show"])) {
            for a in arr(&l["addr_info"]) {
                if a["family"] == "inet" && l["ifname"] != "lo" {
                    live.push(a["local"].as_str().unwrap_or_default().to_string());
                }
            }
        }
    }
    let held: Vec<String> = held(&ipamd).into_iter().map(|(_, ip)| ip).collect();
    for ip in &live {
        assert!(
            held.contains(ip),
            "{ip} is live in a pod but ipamd does not hold it"
        );
    }
    let mut dedup = live.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(
        dedup.len(),
        live.len(),
        "an address is on two pods: {live:?}"
    );
    // And new pods never get a live address.
    let others: Vec<Netns> = (0..4).map(|_| Netns::new("act-pod-")).collect();
    for (i, ns) in others.iter().enumerate() {
        let out = add_with_retry(&ipamd.node, &pod(ns, &format!("other{i}")), &conf);
        assert!(out.success, "{}", out.stdout);
        let ip = result_ip(&out.json);
        assert!(!live.contains(&ip), "{ip} given to a second pod");
    }
}

#[test]
fn d7_a_del_that_could_not_reach_ipamd_gets_the_address_back_once_the_veth_is_gone() {
    let ipamd = Ipamd::start("m5.large", STILL_POOL);
    let node = &ipamd.node;
    let mut conf = ipamd.conf("1.0.0");
    conf["ipamdTimeoutMs"] = json!(1500);
    let ns = Netns::new("act-pod-");
    let p = pod(&ns, "stalled");
    let add = add_with_retry(node, &p, &conf);
    assert!(add.success, "{}", add.stdout);
    let added = Instant::now();
    let ip = result_ip(&add.json);
    let pid = ipamd.pid().expect("ipamd runs").to_string();

    assert!(sh("kill", &["-STOP", &pid]).status.success());
    let del = cni(node, "DEL", &p, &with_prev(&conf, &add.json));
    assert!(sh("kill", &["-CONT", &pid]).status.success());
    assert!(del.success, "DEL with ipamd stalled: {}", del.stdout);
    assert!(
        node.link_index(&expected_veth("default", "stalled"))
            .is_none(),
        "DEL left the veth"
    );
    assert!(holds_ip(&ipamd, &ip), "the DEL reached ipamd after all");

    // The address comes back after the grace, at the next reconcile (asked for with SIGUSR1).
    let back = eventually(Duration::from_secs(60), || {
        if added.elapsed() > Duration::from_secs(16) {
            let _ = sh("kill", &["-USR1", &pid]);
        }
        std::thread::sleep(Duration::from_millis(500));
        !holds_ip(&ipamd, &ip)
    });
    assert!(
        back,
        "{ip} still held 60 s after its pod went:\n{}",
        ipamd.log()
    );
}

/// Reads from `s` until EOF or error; true when the server closed the connection within `within`.
fn closed_within(s: &UnixStream, within: Duration) -> bool {
    let _ = s.set_read_timeout(Some(within));
    let mut s = s;
    let mut buf = [0u8; 1024];
    let start = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
        if start.elapsed() > within {
            return false;
        }
    }
}

#[test]
fn d8_http_endpoints_cut_slow_clients_and_cap_connections() {
    let dir = TempDir::new();
    let intro = dir.path().join("intro.sock");
    let metrics = dir.path().join("metrics.sock");
    let ipamd = Ipamd::start(
        "m5.large",
        &[
            (
                "INTROSPECTION_BIND_ADDRESS",
                &format!("unix:{}", intro.display()),
            ),
            (
                "METRICS_BIND_ADDRESS",
                &format!("unix:{}", metrics.display()),
            ),
        ],
    );
    assert!(eventually(Duration::from_secs(10), || intro.exists()
        && metrics.exists()));
    for path in [&intro, &metrics] {
        // Slowloris: one header line, then nothing. Cut after the header timeout.
        let mut slow = UnixStream::connect(path).expect("connect");
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .expect("write");
        assert!(
            closed_within(&slow, Duration::from_secs(15)),
            "{}: a client that never finishes its headers is kept",
            path.display()
        );
        // 100 idle connections: beyond the cap, they are closed at once.
        let idle: Vec<UnixStream> = (0..100)
            .filter_map(|_| UnixStream::connect(path).ok())
            .collect();
        let closed = idle
            .iter()
            .filter(|s| closed_within(s, Duration::from_millis(200)))
            .count();
        assert!(
            closed >= 30,
            "{}: only {closed} of 100 idle connections closed",
            path.display()
        );
        drop(idle);
    }
    // Once the slow ones are gone, a normal request is served.
    assert!(eventually(Duration::from_secs(10), || {
        let Ok(mut s) = UnixStream::connect(&intro) else {
            return false;
        };
        let _ = s.write_all(b"GET /v1/enis HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut body = String::new();
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.read_to_string(&mut body);
        body.starts_with("HTTP/1.1 200")
    }));
    drop(ipamd);
}

/// ipamd run as the harness runs it, with `env`, under `prlimit --nofile=SOFT:HARD`: its exit status (`None`:
/// it was still running and was stopped, once serving or after `wait`), its stderr, and its limits once serving.
fn ipamd_once(
    env: &[(&str, &str)],
    nofile: &str,
    wait: Duration,
) -> (Option<i32>, String, Option<String>) {
    let node = Netns::new("act-node-");
    let dir = TempDir::new();
    let mut child = Command::new("prlimit")
        .arg(format!("--nofile={nofile}"))
        .arg(bin("ipamd"))
        .args([
            "run",
            "--backend",
            "sim",
            "--instance-type",
            "m5.large",
            "--netns",
        ])
        .arg(node.path())
        .arg("--socket")
        .arg(dir.path().join("ipamd.sock"))
        .arg("--sim-state")
        .arg(dir.path().join("sim.json"))
        .env(
            "AWS_VPC_K8S_CNI_BACKING_STORE",
            dir.path().join("ipam.json"),
        )
        .env("AWS_VPC_K8S_CNI_LOG_FILE", "stderr")
        // Quiet, so that the piped stderr never fills while nobody reads it.
        .env("AWS_VPC_K8S_CNI_LOGLEVEL", "error")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ipamd");
    let deadline = Instant::now() + wait;
    let mut limits = None;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s.code();
        }
        if dir.path().join("ipamd.sock").exists() {
            limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).ok();
        }
        if limits.is_some() || Instant::now() > deadline {
            let _ = sh("kill", &["-TERM", &child.id().to_string()]);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status, err, limits)
}

#[test]
fn d8_ipamd_raises_its_open_file_limit_and_d17_a_bad_log_level_stops_it() {
    let (status, err, _) = ipamd_once(
        &[("AWS_VPC_K8S_CNI_LOGLEVEL", "garbage")],
        "1024:4096",
        Duration::from_secs(20),
    );
    assert_eq!(status, Some(1), "ipamd with a bad log level: {err}");
    assert!(err.contains("AWS_VPC_K8S_CNI_LOGLEVEL"), "{err}");

    let (status, err, limits) = ipamd_once(&[], "1024:4096", Duration::from_secs(20));
    assert_eq!(status, None, "ipamd exited: {err}");
    let limits = limits.expect("ipamd's limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[3..5], &["4096", "4096"], "{line}");
}

#[test]
fn d18_an_introspection_socket_path_that_is_a_file_is_refused_not_deleted() {
    let dir = TempDir::new();
    let file = dir.path().join("precious");
    std::fs::write(&file, "keep me").expect("write");
    let (status, err, _) = ipamd_once(
        &[(
            "INTROSPECTION_BIND_ADDRESS",
            &format!("unix:{}", file.display()),
        )],
        "4096:4096",
        Duration::from_secs(20),
    );
    assert_eq!(
        std::fs::read_to_string(&file).ok().as_deref(),
        Some("keep me")
    );
    assert_eq!(status, Some(1), "ipamd started anyway: {err}");
    assert!(err.contains("not a socket"), "{err}");
}

#[test]
fn d10_d14_d15_bad_values_are_cni_errors_naming_them() {
    let ipamd = Ipamd::start("m5.large", STILL_POOL);
    let node = &ipamd.node;
    let ns = Netns::new("act-pod-");
    let p = pod(&ns, "vals");
    let mut huge = ipamd.conf("1.0.0");
    huge["ipamdTimeoutMs"] = json!(1_000_000_000_000_000u64);
    let out = cni(node, "ADD", &p, &huge);
    assert_eq!(out.code(), 7, "{}", out.stdout);
    assert!(out.stdout.contains("ipamdTimeoutMs"));
    for prefix in ["..", "é", "a/b"] {
        let mut c = ipamd.conf("1.0.0");
        c["vethPrefix"] = json!(prefix);
        let out = cni(node, "ADD", &p, &c);
        assert_eq!(out.code(), 7, "vethPrefix {prefix}: {}", out.stdout);
    }
    let mut long = p.clone();
    long.name = "a".repeat(300);
    let out = cni(node, "ADD", &long, &ipamd.conf("1.0.0"));
    assert_eq!(out.code(), 4, "{}", out.stdout);
    assert!(held(&ipamd).is_empty(), "a refused ADD holds an address");

    // A name with a newline is shown escaped by `ipamd status`.
    let mut nl = p.clone();
    nl.name = "evil\nname".into();
    let out = add_with_retry(node, &nl, &ipamd.conf("1.0.0"));
    assert!(out.success, "{}", out.stdout);
    let status = sh(
        bin("ipamd").to_str().unwrap_or("ipamd"),
        &[
            "status",
            "--socket",
            ipamd.socket().to_str().unwrap_or_default(),
        ],
    );
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("evil\\nname"), "{text}");
    assert!(
        !text.lines().any(|l| l.trim_start().starts_with("name")),
        "{text}"
    );
}

#[test]
fn d19_the_plugin_log_rotates_and_keeps_our_debug_lines_without_frame_dumps() {
    let ipamd = Ipamd::start("m5.large", STILL_POOL);
    let node = &ipamd.node;
    let conf = ipamd.conf("1.1.0");
    let log = ipamd.dir.path().join("plugin.log");
    // A log at the rotation size (sparse: no disk used).
    std::fs::File::create(&log)
        .and_then(|f| f.set_len(100 * 1024 * 1024))
        .expect("big log");
    let ns = Netns::new("act-pod-");
    let p = pod(&ns, "logged");
    let add = add_with_retry(node, &p, &conf);
    assert!(add.success, "{}", add.stdout);
    let probe = PodSpec {
        container_id: "status".into(),
        namespace: String::new(),
        name: String::new(),
        netns: String::new(),
        ifname: String::new(),
    };
    assert!(cni(node, "STATUS", &probe, &conf).success);
    assert!(cni(node, "DEL", &p, &with_prev(&conf, &add.json)).success);

    let rotated = ipamd.dir.path().join("plugin.log.1");
    assert_eq!(
        std::fs::metadata(&rotated).map(|m| m.len()).ok(),
        Some(100 * 1024 * 1024),
        "the full log was not rotated"
    );
    let text = std::fs::read_to_string(&log).expect("new log");
    assert!(
        text.len() < 1024 * 1024,
        "the new log is {} bytes",
        text.len()
    );
    assert!(
        text.contains("ADD done") && text.contains("DEL done"),
        "{text}"
    );
    assert!(
        text.contains("DEBUG") && text.contains("STATUS: ready"),
        "our DEBUG lines are gone:\n{text}"
    );
    let noisy = |t: &str| {
        t.lines()
            .filter(|l| l.contains("DEBUG") || l.contains("TRACE"))
            .filter(|l| {
                ["h2::", "hyper", "tonic::", "tower::"]
                    .iter()
                    .any(|k| l.contains(k))
            })
            .count()
    };
    assert_eq!(
        noisy(&text),
        0,
        "library frame lines in the plugin log:\n{text}"
    );
    // ipamd at DEBUG (as the harness runs it) keeps its own debug lines and drops the libraries'.
    // Its reaper's DEBUG line for the DEL's veth comes once the veth is deleted, in the background.
    assert!(
        eventually(Duration::from_secs(10), || ipamd
            .log()
            .lines()
            .any(|l| l.contains("DEBUG") && l.contains("veth reaper"))),
        "ipamd's own DEBUG line is missing:\n{}",
        ipamd.log()
    );
    let ipamd_log = ipamd.log();
    assert_eq!(noisy(&ipamd_log), 0, "library frame lines in ipamd's log");
}

/// Runs `python` (the test venv's) with `script`, in `dir`.
fn python(dir: &std::path::Path, script: &str) -> std::process::Output {
    let venv =
        std::env::var("AWS_CNI_TEST_VENV").unwrap_or_else(|_| "/opt/aws-cni-test-venv".into());
    let py = format!("{venv}/bin/python");
    assert!(
        std::path::Path::new(&py).exists(),
        "{py} missing: run scripts/deps.sh"
    );
    Command::new(py)
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("python")
}

#[test]
fn grpc_core_clients_with_default_options_are_served_and_d9_reasons_stay_bounded() {
    let dir = TempDir::new();
    let metrics = dir.path().join("metrics.sock");
    let ipamd = Ipamd::start(
        "m5.large",
        &[(
            "METRICS_BIND_ADDRESS",
            &format!("unix:{}", metrics.display()),
        )],
    );
    let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/proto");
    let gen = python(
        dir.path(),
        &format!(
            "import grpc_tools, os, sys; from grpc_tools import protoc; \
             wk = os.path.join(os.path.dirname(grpc_tools.__file__), '_proto'); \
             sys.exit(protoc.main(['protoc', '-I{}', '-I' + wk, \
             '--python_out=.', '--grpc_python_out=.', 'rpc.proto']))",
            proto_dir.display()
        ),
    );
    assert!(gen.status.success(), "stubs: {gen:?}");
    // Default channel options: grpcio sends the socket path as :authority.
    let script = format!(
        r#"
import grpc, rpc_pb2, rpc_pb2_grpc
ch = grpc.insecure_channel("unix:{sock}")
stub = rpc_pb2_grpc.CNIBackendStub(ch)
r = stub.DelNetwork(rpc_pb2.DelNetworkRequest(ContainerID="none", IfName="eth0", NetworkName="aws-cni",
                                               Reason="PodDeleted"), timeout=10)
assert r.Success, r
for i in range(300):
    stub.DelNetwork(rpc_pb2.DelNetworkRequest(ContainerID="x%d" % i, IfName="eth0", NetworkName="aws-cni",
                                              Reason="made-up-%d" % i), timeout=10)
print("served")
"#,
        sock = ipamd.socket().display()
    );
    let out = python(dir.path(), &script);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("served"),
        "grpcio client: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The made-up reasons are one series, not 300.
    let mut s = UnixStream::connect(&metrics).expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut body = String::new();
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.read_to_string(&mut body);
    let series: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("awscni_del_ip_req_count{"))
        .collect();
    assert!(
        !series.is_empty() && series.len() <= 3,
        "DelNetwork reason series: {series:?}"
    );
    assert!(
        !body.contains("made-up-"),
        "a client's reason became a label"
    );
}

#[test]
fn d12_racing_add_and_del_of_one_container_leave_no_stale_rule() {
    let ipamd = Ipamd::start("m5.large", &[("IP_COOLDOWN_PERIOD", "0")]);
    let conf = ipamd.conf("1.0.0");
    let namespaces: Vec<Netns> = (0..12).map(|_| Netns::new("act-pod-")).collect();
    std::thread::scope(|s| {
        for (i, ns) in namespaces.iter().enumerate() {
            let p = pod(ns, &format!("race{i}"));
            let (node, conf) = (&ipamd.node, &conf);
            let p2 = p.clone();
            s.spawn(move || cni(node, "ADD", &p, conf));
            s.spawn(move || {
                std::thread::sleep(Duration::from_millis(3 * i as u64));
                cni(node, "DEL", &p2, conf)
            });
        }
    });
    // A final DEL of each (what the runtime does for a sandbox it gives up): nothing may be left behind.
    for (i, ns) in namespaces.iter().enumerate() {
        let out = cni(&ipamd.node, "DEL", &pod(ns, &format!("race{i}")), &conf);
        assert!(out.success, "{}", out.stdout);
    }
    let held: Vec<String> = held(&ipamd).into_iter().map(|(_, ip)| ip).collect();
    assert!(held.is_empty(), "addresses still held: {held:?}");
    let stale: Vec<Value> = arr(&ipamd.node.ip_json(&["rule", "show"]))
        .into_iter()
        .filter(|r| r["priority"] == 512)
        .collect();
    assert!(stale.is_empty(), "stale rules: {stale:?}");
}

#[test]
fn d6_dels_racing_adds_that_reuse_their_addresses_leave_every_live_pod_routed() {
    let ipamd = Ipamd::start(
        "m5.large",
        &[("IP_COOLDOWN_PERIOD", "0"), ("WARM_IP_TARGET", "1")],
    );
    let conf = ipamd.conf("1.0.0");
    let node = &ipamd.node;
    let mut live: Vec<(Netns, PodSpec, Value)> = Vec::new();
    for round in 0..4 {
        let fresh: Vec<Netns> = (0..6).map(|_| Netns::new("act-pod-")).collect();
        let added: Vec<CniOut> = std::thread::scope(|s| {
            for (_, p, prev) in &live {
                let c = with_prev(&conf, prev);
                s.spawn(move || cni(node, "DEL", p, &c));
            }
            let hs: Vec<_> = fresh
                .iter()
                .enumerate()
                .map(|(i, ns)| {
                    let p = pod(ns, &format!("r{round}p{i}"));
                    let conf = &conf;
                    s.spawn(move || add_with_retry(node, &p, conf))
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("ADD")).collect()
        });
        live = fresh
            .into_iter()
            .zip(added)
            .enumerate()
            .map(|(i, (ns, out))| {
                assert!(out.success, "{}", out.stdout);
                let p = pod(&ns, &format!("r{round}p{i}"));
                (ns, p, out.json)
            })
            .collect();
        for (_, p, prev) in &live {
            let ip = result_ip(prev);
            let veth = expected_veth("default", &p.name);
            assert!(
                has_rule(node, &ip),
                "round {round}: live pod {} lost rule 512 of {ip}",
                p.name
            );
            assert_eq!(
                route_dev(node, &ip).as_deref(),
                Some(veth.as_str()),
                "round {round}: live pod {} lost its route",
                p.name
            );
        }
    }
}
