//! `deploy/10-aws.conflist` as a runtime uses it: aws-cni, then Debian's `portmap` with the ADD result as
//! prevResult, and a real TCP connection through the port mapping.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{add_with_retry, cni, result_ip, Ipamd, Netns, PodSpec};
use serde_json::{json, Value};

const PORTMAP: &str = "/usr/lib/cni/portmap";

fn conflist() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/10-aws.conflist");
    let text = std::fs::read_to_string(&path).expect("deploy/10-aws.conflist");
    serde_json::from_str(&text).expect("conflist is JSON")
}

/// The config libcni hands to plugin `i` of the list: the plugin's object plus the list's name and version.
fn plugin_conf(list: &Value, i: usize, version: &str) -> Value {
    let mut c = list["plugins"][i].clone();
    c["name"] = list["name"].clone();
    c["cniVersion"] = json!(version);
    c
}

fn run_plugin(
    node: &Netns,
    bin: &str,
    command: &str,
    pod: &PodSpec,
    conf: &Value,
) -> (bool, Value) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.name, bin])
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_NETNS", &pod.netns)
        .env("CNI_IFNAME", &pod.ifname)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("stdin"),
        conf.to_string().as_bytes(),
    )
    .expect("stdin");
    let out = child.wait_with_output().expect("plugin output");
    let text = String::from_utf8_lossy(&out.stdout);
    (
        out.status.success(),
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

#[test]
fn pod_added_through_the_conflist_chain_gets_a_working_port_mapping() {
    assert!(
        std::path::Path::new(PORTMAP).exists(),
        "install containernetworking-plugins (scripts/deps.sh does)"
    );
    let list = conflist();
    assert_eq!(list["name"], "aws-cni");
    assert_eq!(list["plugins"][0]["type"], "aws-cni");
    assert_eq!(list["plugins"][1]["type"], "portmap");
    let version = "1.0.0"; // what Debian's portmap 1.1.1 speaks; aws-cni also speaks 1.1.0

    let ipamd = Ipamd::start("m5.large", &[]);
    let server_ns = Netns::new("act-pod-");
    let client_ns = Netns::new("act-pod-");
    let server = PodSpec {
        container_id: format!("ctr-{}", server_ns.name),
        namespace: "default".into(),
        name: "web".into(),
        netns: server_ns.path(),
        ifname: "eth0".into(),
    };
    let client = PodSpec {
        container_id: format!("ctr-{}", client_ns.name),
        name: "client".into(),
        netns: client_ns.path(),
        ..server.clone()
    };

    let mut aws = plugin_conf(&list, 0, version);
    aws["ipamdSocket"] = json!(ipamd.socket());
    aws["pluginLogFile"] = json!(ipamd.dir.path().join("plugin.log"));
    let add = add_with_retry(&ipamd.node, &server, &aws);
    assert!(add.success, "aws-cni ADD: {}", add.stdout);
    let mut pm = plugin_conf(&list, 1, version);
    pm["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]});
    pm["prevResult"] = add.json.clone();
    let (ok, pm_result) = run_plugin(&ipamd.node, PORTMAP, "ADD", &server, &pm);
    assert!(ok, "portmap ADD failed: {pm_result}");
    assert_eq!(
        result_ip(&pm_result),
        result_ip(&add.json),
        "portmap passes our result through"
    );
    let client_add = add_with_retry(&ipamd.node, &client, &aws);
    assert!(client_add.success, "{}", client_add.stdout);

    // A one-shot TCP server in the server pod, a client in the other pod dialling the node's port 18080.
    let mut srv = Command::new("ip")
        .args(["netns", "exec", &server_ns.name, "/usr/bin/python3", "-c"])
        .arg(
            "import socket,sys\n\
             s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('0.0.0.0', 8080)); s.listen(1); s.settimeout(20)\n\
             c,_=s.accept(); c.sendall(b'hello-from-web'); c.close()",
        )
        .spawn()
        .expect("server");
    let node_ip = ipamd.node_ip();
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = loop {
        let out = client_ns.exec(&[
            "/usr/bin/python3",
            "-c",
            &format!(
                "import socket\ns=socket.create_connection(('{node_ip}', 18080), timeout=2)\nprint(s.recv(100).decode())"
            ),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = srv.kill();
    let _ = srv.wait();
    assert_eq!(reply, "hello-from-web", "no answer through {node_ip}:18080");

    // Teardown in reverse order, as libcni does; portmap removes its DNAT rules.
    let (ok, _) = run_plugin(&ipamd.node, PORTMAP, "DEL", &server, &pm);
    assert!(ok, "portmap DEL");
    let mut aws_del = aws.clone();
    aws_del["prevResult"] = add.json.clone();
    assert!(cni(&ipamd.node, "DEL", &server, &aws_del).success);
    let nat = ipamd.node.exec(&["iptables", "-t", "nat", "-S"]);
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(!nat.contains("18080"), "portmap rules left:\n{nat}");
}
