//! The network policy agent's contract, end to end: `ipamd run --backend sim` with `NETWORK_POLICY_ENFORCING_MODE`,
//! the real `aws-cni`, and a test double of the agent (`aws-eks-nodeagent`) as a separate process: a Python grpcio
//! server generated at test time from `tests/npa/rpc.proto` (the anchor's contract, not our Rust types), serving
//! `rpc.NPBackend` on a temporary npa.sock and recording every call it gets. The same file gives the wire check: a
//! Python client calls `rpc.ConfigServerBackend/GetNetworkPolicyConfigs` (and the anchor's `CNIBackend` calls) on
//! ipamd's socket, as the agent (and the anchor's plugin) would.
//!
//! Needs root and the venv from `scripts/deps.sh` (grpcio and grpcio-tools, `$AWS_CNI_TEST_VENV`, default
//! `/opt/aws-cni-test-venv`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{
    add_with_retry, bin, cni, expected_veth, moto::DEFAULT_VENV, pod, result_ip, sh, CniOut, Ipamd,
    Netns, PodSpec, TempDir, STILL_POOL,
};
use serde_json::{json, Value};

/// The venv's Python, with grpcio.
fn python() -> PathBuf {
    let venv = std::env::var_os("AWS_CNI_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VENV));
    let exe = venv.join("bin").join("python");
    let probe = Command::new(&exe)
        .args(["-c", "import grpc, grpc_tools"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "{} has no grpcio/grpcio-tools: run scripts/deps.sh ({probe:?})",
        exe.display()
    );
    exe
}

/// tests/npa/npa_double.py.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("npa/npa_double.py")
}

/// How the double answers a call (`npa_double.py serve --enforce/--delete`).
#[derive(Debug, Clone, Copy)]
enum Answer {
    Ok,
    Refuse,
    Error,
    Hang,
}

impl Answer {
    fn arg(self) -> &'static str {
        match self {
            Answer::Ok => "ok",
            Answer::Refuse => "refuse",
            Answer::Error => "error",
            Answer::Hang => "hang",
        }
    }
}

/// The agent double: a process serving `rpc.NPBackend` on `socket`; killed on drop.
struct Agent {
    dir: TempDir,
    child: Option<Child>,
}

impl Agent {
    fn start(enforce: Answer, delete: Answer) -> Agent {
        let dir = TempDir::new();
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("agent log");
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .arg(python())
            .arg(script())
            .arg("serve")
            .arg("--socket")
            .arg(dir.path().join("npa.sock"))
            .arg("--record")
            .arg(dir.path().join("calls.jsonl"))
            .arg("--stubs")
            .arg(dir.path().join("stubs"))
            .args(["--enforce", enforce.arg(), "--delete", delete.arg()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn the agent double");
        let mut agent = Agent {
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !agent.socket().exists() {
            if let Some(Ok(Some(status))) = agent.child.as_mut().map(Child::try_wait) {
                panic!("the agent double exited ({status}):\n{}", agent.log());
            }
            assert!(
                Instant::now() < deadline,
                "the agent double never listened:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("npa.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Every call so far, in order.
    fn calls(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a recorded call"))
            .collect()
    }

    /// Stops the agent (the socket file stays, as after a crash).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The plugin's netconf for `ipamd`, with the agent's socket at `npa`.
fn conf(ipamd: &Ipamd, npa: &Path) -> Value {
    let mut c = ipamd.conf("1.0.0");
    c["npaSocket"] = json!(npa);
    c
}

fn enforce_call(name: &str, mode: &str) -> Value {
    json!({"call": "EnforceNpToPod", "K8S_POD_NAME": name, "K8S_POD_NAMESPACE": "default",
           "NETWORK_POLICY_MODE": mode, "InterfaceCount": 1})
}

fn delete_call(name: &str) -> Value {
    json!({"call": "DeletePodNp", "K8S_POD_NAME": name, "K8S_POD_NAMESPACE": "default"})
}

fn ipamd_with_mode(mode: Option<&str>) -> Ipamd {
    let mut env = STILL_POOL.to_vec();
    if let Some(m) = mode {
        env.push(("NETWORK_POLICY_ENFORCING_MODE", m));
    }
    Ipamd::start("m5.large", &env)
}

/// The pods ipamd holds addresses for (`ipamd status --output json`).
fn assigned_pods(ipamd: &Ipamd) -> Vec<Value> {
    let out = sh(
        bin("ipamd").to_str().expect("path"),
        &[
            "status",
            "--socket",
            ipamd.socket().to_str().expect("path"),
            "--output",
            "json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("status json");
    v["pods"].as_array().cloned().unwrap_or_default()
}

/// ADD of `p` through the real plugin, which must succeed; returns its result.
fn must_add(ipamd: &Ipamd, p: &PodSpec, conf: &Value) -> Value {
    let add = add_with_retry(&ipamd.node, p, conf);
    assert!(
        add.success,
        "ADD of {} failed: {}\n{}",
        p.name,
        add.stdout,
        ipamd.log()
    );
    add.json
}

/// DEL of `p` through the real plugin, which must succeed.
fn must_del(ipamd: &Ipamd, p: &PodSpec, conf: &Value) {
    let del = cni(&ipamd.node, "DEL", p, conf);
    assert!(del.success, "DEL of {} failed: {}", p.name, del.stdout);
}

/// ADD of `p` until the outcome is the policy agent's doing: retried, like kubelet, while ipamd itself says
/// "try again later" (its pool is still filling), for up to ~10 s.
fn add_until_policy_verdict(ipamd: &Ipamd, p: &PodSpec, conf: &Value) -> CniOut {
    for _ in 0..100 {
        let out = cni(&ipamd.node, "ADD", p, conf);
        let msg = out.json["msg"].as_str().unwrap_or_default();
        if out.success || out.code() != 11 || msg.contains("network policy") {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("ipamd never gave {} an address:\n{}", p.name, ipamd.log());
}

/// A failed ADD left nothing: no host veth, no eth0 in the pod, no address held in ipamd.
fn assert_add_undone(ipamd: &Ipamd, pod_ns: &Netns, name: &str) {
    let veth = expected_veth("default", name);
    assert!(
        ipamd.node.link_index(&veth).is_none(),
        "host veth {veth} left behind"
    );
    assert!(pod_ns.link_index("eth0").is_none(), "eth0 left in the pod");
    let pods = assigned_pods(ipamd);
    assert!(pods.is_empty(), "ipamd still holds an address: {pods:?}");
}

#[test]
fn standard_and_strict_add_and_del_tell_the_agent_with_the_anchors_fields() {
    for mode in ["standard", "strict"] {
        let ipamd = ipamd_with_mode(Some(mode));
        let agent = Agent::start(Answer::Ok, Answer::Ok);
        let pod_ns = Netns::new("act-pod-");
        let p = pod(&pod_ns, "web");
        let conf = conf(&ipamd, &agent.socket());

        must_add(&ipamd, &p, &conf);
        assert_eq!(agent.calls(), vec![enforce_call("web", mode)], "{mode}");
        assert!(
            pod_ns.ping(&ipamd.node_ip()),
            "{mode}: the pod has no network"
        );

        must_del(&ipamd, &p, &conf);
        assert_eq!(
            agent.calls(),
            vec![enforce_call("web", mode), delete_call("web")],
            "{mode}"
        );
    }
}

#[test]
fn mode_unset_means_no_policy_call_at_all() {
    let ipamd = ipamd_with_mode(None);
    let agent = Agent::start(Answer::Refuse, Answer::Refuse);
    let pod_ns = Netns::new("act-pod-");
    let p = pod(&pod_ns, "plain");
    let conf = conf(&ipamd, &agent.socket());
    must_add(&ipamd, &p, &conf);
    must_del(&ipamd, &p, &conf);
    assert_eq!(
        agent.calls(),
        Vec::<Value>::new(),
        "a node without a mode called the agent"
    );
}

#[test]
fn an_agent_that_refuses_errs_or_hangs_fails_the_add_and_the_add_is_undone() {
    // A hung agent: the call's deadline (npaTimeoutMs) passes, "try again later".
    for (answer, code) in [
        (Answer::Refuse, 114),
        (Answer::Error, 114),
        (Answer::Hang, 11),
    ] {
        let ipamd = ipamd_with_mode(Some("strict"));
        let agent = Agent::start(answer, Answer::Ok);
        let pod_ns = Netns::new("act-pod-");
        let p = pod(&pod_ns, "denied");
        let mut conf = conf(&ipamd, &agent.socket());
        conf["npaTimeoutMs"] = json!(1000);
        let add = add_until_policy_verdict(&ipamd, &p, &conf);
        assert!(!add.success, "{answer:?}: ADD succeeded: {}", add.stdout);
        assert_eq!(add.code(), code, "{answer:?}: {}", add.stdout);
        let msg = add.json["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains("failed to setup network policy") && msg.contains("EnforceNpToPod"),
            "{answer:?}: {msg}"
        );
        assert_eq!(agent.calls(), vec![enforce_call("denied", "strict")]);
        assert_add_undone(&ipamd, &pod_ns, "denied");
    }
}

#[test]
fn an_absent_agent_fails_the_add_in_both_modes_but_never_a_del() {
    for mode in ["standard", "strict"] {
        let ipamd = ipamd_with_mode(Some(mode));
        let missing = TempDir::new();
        let npa = missing.path().join("npa.sock");
        let pod_ns = Netns::new("act-pod-");
        let p = pod(&pod_ns, "lonely");
        // As the anchor: no agent, no pod (code 11: the agent may be starting; kubelet retries).
        let add = add_until_policy_verdict(&ipamd, &p, &conf(&ipamd, &npa));
        assert!(!add.success, "{mode}: ADD without an agent succeeded");
        assert_eq!(add.code(), 11, "{mode}: {}", add.stdout);
        let msg = add.json["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains("network policy agent unreachable") && msg.contains("npa.sock"),
            "{mode}: {msg}"
        );
        assert_add_undone(&ipamd, &pod_ns, "lonely");

        // A pod added while the agent ran, deleted after it died: the DEL succeeds (the anchor's fails and the
        // pod stays in Terminating) and the pod's network and address are gone.
        let mut agent = Agent::start(Answer::Ok, Answer::Ok);
        let conf = conf(&ipamd, &agent.socket());
        let ip = result_ip(&must_add(&ipamd, &p, &conf));
        agent.kill();
        must_del(&ipamd, &p, &conf);
        assert!(
            assigned_pods(&ipamd).is_empty(),
            "{mode}: {ip} still assigned"
        );
    }
}

#[test]
fn a_hung_agent_cannot_hold_a_del() {
    let ipamd = ipamd_with_mode(Some("strict"));
    let agent = Agent::start(Answer::Ok, Answer::Hang);
    let pod_ns = Netns::new("act-pod-");
    let p = pod(&pod_ns, "stuck");
    let conf = conf(&ipamd, &agent.socket());
    must_add(&ipamd, &p, &conf);
    // The double never answers DeletePodNp: the DEL returns anyway, successfully, once its deadline passes.
    must_del(&ipamd, &p, &conf);
    assert_eq!(
        agent.calls(),
        vec![enforce_call("stuck", "strict"), delete_call("stuck")]
    );
    assert!(assigned_pods(&ipamd).is_empty());
}

fn run_client(args: &[&str]) -> Output {
    let stubs = TempDir::new();
    let out = Command::new(python())
        .arg(script())
        .args(args)
        .arg("--stubs")
        .arg(stubs.path())
        .output()
        .expect("run the Python client");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn wire_check_a_client_from_the_anchors_proto_gets_the_agents_configuration() {
    let ipamd = ipamd_with_mode(Some("strict"));
    let socket = ipamd.socket().display().to_string();
    let out = run_client(&["configs", "--socket", &socket]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("reply json");
    assert_eq!(v["NetworkPolicyMode"], "strict", "{v}");
    assert_eq!(v["NodeIPv4"], ipamd.node_ip().as_str(), "{v}");
    assert_eq!(v["NodeIPv6"], "", "{v}");
    assert_eq!(v["MultiNICEnabled"], false, "{v}");
    assert!(
        v["InstanceID"]
            .as_str()
            .is_some_and(|i| i.starts_with("i-")),
        "{v}"
    );
    assert!(v["Region"].as_str().is_some_and(|r| !r.is_empty()), "{v}");

    // The anchor's plugin reads the mode from AddNetworkReply tag 13 and DelNetworkReply tag 6.
    let out = run_client(&["add-del", "--socket", &socket, "--container", "wire-ctr"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("reply json");
    assert_eq!(v["add"]["Success"], true, "{v}");
    assert_eq!(v["add"]["NetworkPolicyMode"], "strict", "{v}");
    assert_eq!(v["del"]["Success"], true, "{v}");
    assert_eq!(v["del"]["NetworkPolicyMode"], "strict", "{v}");
}

#[test]
fn an_invalid_mode_stops_ipamd_at_startup_naming_the_variable() {
    let node = Netns::new("act-node-");
    let dir = TempDir::new();
    for bad in ["none", "enforcing", ""] {
        let out = Ipamd::command(&node, &dir, "m5.large")
            .env("DISABLE_METRICS", "true")
            .env("DISABLE_INTROSPECTION", "true")
            .env("NETWORK_POLICY_ENFORCING_MODE", bad)
            .stdin(Stdio::null())
            .output()
            .expect("run ipamd");
        assert!(!out.status.success(), "{bad:?}: ipamd started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("NETWORK_POLICY_ENFORCING_MODE"),
            "{bad:?}: {err}"
        );
        assert!(
            !dir.path().join("ipamd.sock").exists(),
            "{bad:?}: socket bound"
        );
    }
}
