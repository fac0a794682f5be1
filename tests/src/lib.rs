//! Harness for black-box tests: the built `ipamd` and `aws-cni` binaries in throwaway network namespaces.
//!
//! Every resource is owned by a guard that removes it on drop, so a failing assertion still cleans up:
//! [`Netns`] (a named namespace via `ip netns`), [`Ipamd`] (a daemon on a simulated node; SIGTERM, then SIGKILL),
//! [`TempDir`]. Names carry the test process ID and a counter, so tests run in parallel without clashing.
//!
//! The state checks read the kernel through `ip -json`, an oracle independent of our netlink code.
//!
//! Needs root and the binaries built first (`cargo build --workspace --bins`); tests fail with a clear message
//! otherwise.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "aws")]
pub mod eni_fabric;
#[cfg(feature = "aws")]
pub mod imds_server;
pub mod ipamd_double;
pub mod kube_api_server;
pub mod moto;
pub mod netns_port;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this test process.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Path of a workspace binary, next to the test executable's target directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test> -> target/debug/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Fails the test unless running as root.
pub fn require_root() {
    assert!(
        nix_is_root(),
        "these tests create network namespaces and must run as root"
    );
}

fn nix_is_root() -> bool {
    // /proc/self/status "Uid:" real effective ...
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Runs a command and returns its output; panics if it cannot start.
pub fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

/// How long a pod's veth may stay after its DEL returned: ipamd deletes it in the background (`ipamd::reaper`).
/// Generous on purpose: it bounds a wait, it asserts nothing about speed.
pub const VETH_GONE_WITHIN: Duration = Duration::from_secs(15);

/// Polls `check` (every 20 ms) until it returns true or `within` has passed; returns its last answer.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(unique("awscni-test-"));
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = unique(prefix);
        let out = sh("ip", &["netns", "add", &name]);
        assert!(out.status.success(), "ip netns add {name}: {out:?}");
        Netns { name }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -json -n <ns> <args>` parsed (empty array when there is no output).
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-json", "-n", &self.name];
        full.extend_from_slice(args);
        let out = sh("ip", &full);
        assert!(out.status.success(), "ip {full:?}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            Value::Array(vec![])
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip {full:?} json: {e}: {text}"))
        }
    }

    /// The index of the link called `name`, if there is one.
    pub fn link_index(&self, name: &str) -> Option<u64> {
        arr(&self.ip_json(&["link", "show"]))
            .iter()
            .find(|l| l["ifname"] == name)
            .and_then(|l| l["ifindex"].as_u64())
    }

    /// The snapshot once it equals `want` (a DEL's veth goes in the background), else the last one taken within
    /// [`VETH_GONE_WITHIN`]: compare it with `want` to get the difference in the failure message.
    pub fn settled_snapshot(&self, want: &[String]) -> Vec<String> {
        let mut last = self.snapshot();
        eventually(VETH_GONE_WITHIN, || {
            last = self.snapshot();
            last == want
        });
        last
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        sh("ip", &full)
    }

    /// One ping; true if answered.
    pub fn ping(&self, ip: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "2", "-q", ip])
            .status
            .success()
    }

    /// ipamd's Prometheus metrics, read from inside this (node) namespace on the anchor's port 61678.
    pub fn metrics(&self) -> String {
        let out = self.exec(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "http://127.0.0.1:61678/metrics",
        ]);
        assert!(out.status.success(), "curl metrics: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// One ping over IPv6; true if answered.
    pub fn ping6(&self, ip: &str) -> bool {
        self.exec(&["ping", "-6", "-c", "1", "-W", "2", "-q", ip])
            .status
            .success()
    }

    /// One ping over IPv4 (a name or an address that could be either is taken as IPv4); true if answered.
    pub fn ping4(&self, ip: &str) -> bool {
        self.exec(&["ping", "-4", "-c", "1", "-W", "2", "-q", ip])
            .status
            .success()
    }

    /// Everything pod plumbing could leave behind, in a comparable form: links (name, MAC), addresses, routes of
    /// every table, rules and permanent neighbours. Interface indexes and dynamic state are left out.
    pub fn snapshot(&self) -> Vec<String> {
        let mut out = Vec::new();
        for l in arr(&self.ip_json(&["link", "show"])) {
            out.push(format!("link {} {}", l["ifname"], l["address"]));
        }
        for a in arr(&self.ip_json(&["addr", "show"])) {
            for i in arr(&a["addr_info"]) {
                if i["family"] == "inet" {
                    out.push(format!(
                        "addr {} {}/{}",
                        a["ifname"], i["local"], i["prefixlen"]
                    ));
                }
            }
        }
        for r in arr(&self.ip_json(&["-4", "route", "show", "table", "all"])) {
            out.push(format!(
                "route {} via {} dev {} table {}",
                r["dst"], r["gateway"], r["dev"], r["table"]
            ));
        }
        for r in arr(&self.ip_json(&["rule", "show"])) {
            out.push(format!("rule {r}"));
        }
        for n in arr(&self.ip_json(&["neigh", "show", "nud", "permanent"])) {
            out.push(format!("neigh {} {} {}", n["dst"], n["dev"], n["lladdr"]));
        }
        out.sort();
        out
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.name]);
    }
}

/// The elements of a JSON array (empty for anything else).
pub fn arr(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// ipamd on a simulated node in its own namespace; stopped on drop. It can be stopped or crashed and started
/// again on the same node and files ([`Ipamd::restart`]).
#[derive(Debug)]
pub struct Ipamd {
    pub node: Netns,
    pub dir: TempDir,
    child: Option<Child>,
    /// What it was started with, for a restart.
    instance_type: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl Ipamd {
    /// `ipamd run --backend sim` for `instance_type` in `node`, with its socket, simulator state and checkpoint in
    /// `dir` (the default checkpoint, /var/run/aws-node/ipam.json, is the machine's): not started yet.
    pub fn command(node: &Netns, dir: &TempDir, instance_type: &str) -> Command {
        let mut cmd = Ipamd::command_without_sim_state(node, dir, instance_type);
        cmd.arg("--sim-state").arg(dir.path().join("sim-ec2.json"));
        cmd
    }

    /// [`Ipamd::command`] without `--sim-state`: the simulator keeps its state beside the checkpoint and its
    /// fabric in a kept namespace, as `ipamd run --backend sim` does on a node with no flags.
    pub fn command_without_sim_state(node: &Netns, dir: &TempDir, instance_type: &str) -> Command {
        let mut cmd = Command::new(bin("ipamd"));
        cmd.args(["run", "--backend", "sim", "--instance-type", instance_type])
            .arg("--netns")
            .arg(node.path())
            .arg("--socket")
            .arg(dir.path().join("ipamd.sock"))
            .env(
                "AWS_VPC_K8S_CNI_BACKING_STORE",
                dir.path().join("ipam.json"),
            );
        cmd
    }

    /// Starts `ipamd run --backend sim` for `instance_type` with extra environment, and waits for its socket.
    pub fn start(instance_type: &str, env: &[(&str, &str)]) -> Ipamd {
        Ipamd::start_with_args(instance_type, env, &[])
    }

    /// [`Ipamd::start`] with extra `ipamd run` arguments (e.g. `--sim-fabric-netns PATH`).
    pub fn start_with_args(instance_type: &str, env: &[(&str, &str)], args: &[&str]) -> Ipamd {
        require_root();
        let node = Netns::new("act-node-");
        let dir = TempDir::new();
        Ipamd::start_in(node, dir, instance_type, env, args)
    }

    /// [`Ipamd::start_with_args`] in a node namespace and directory the test made first (e.g. to serve something
    /// inside the namespace before the daemon starts).
    pub fn start_in(
        node: Netns,
        dir: TempDir,
        instance_type: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Ipamd {
        std::fs::File::create(dir.path().join("ipamd.log")).expect("log file");
        let mut me = Ipamd {
            node,
            dir,
            child: None,
            instance_type: instance_type.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        me.spawn();
        me
    }

    /// Stops the daemon if it runs (SIGTERM) and starts it again with the same settings on the same node and
    /// files (checkpoint, simulator state; its log goes on), then waits for its socket.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// SIGKILL: the daemon dies as in a crash (no shutdown, its socket file left behind); the node and the files
    /// stay for [`Ipamd::restart`].
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self) {
        // A crashed daemon's socket file would pass for the new one's.
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("ipamd.log"))
            .expect("log file");
        let mut cmd = Ipamd::command(&self.node, &self.dir, &self.instance_type);
        cmd.args(&self.args)
            .env("AWS_VPC_K8S_CNI_LOGLEVEL", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn ipamd"));
        let (socket, log) = (self.socket(), self.dir.path().join("ipamd.log"));
        wait_for_socket(&mut self.child, &socket, Duration::from_secs(20), &log);
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("ipamd.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ipamd.log")).unwrap_or_default()
    }

    /// `ipamd status --output json` against this daemon; the command must succeed.
    pub fn status_json(&self) -> Value {
        let out = Command::new(bin("ipamd"))
            .args(["status", "--output", "json", "--socket"])
            .arg(self.socket())
            .output()
            .expect("ipamd status");
        assert!(out.status.success(), "ipamd status: {out:?}");
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    /// The simulator's state (what "EC2" holds).
    pub fn sim_state(&self) -> Value {
        let b = std::fs::read(self.dir.path().join("sim-ec2.json")).expect("sim state");
        serde_json::from_slice(&b).expect("sim state json")
    }

    /// The node's primary ENI as the simulator holds it.
    pub fn primary_eni(&self) -> Value {
        self.sim_state()["enis"]
            .as_object()
            .and_then(|m| m.values().find(|e| e["device_index"] == 0))
            .expect("primary ENI")
            .clone()
    }

    /// The node's primary IP (from the simulator).
    pub fn node_ip(&self) -> String {
        self.primary_eni()["primary_ip"]
            .as_str()
            .expect("primary ENI")
            .to_string()
    }

    /// How many times the simulated EC2 was called with `api`.
    pub fn ec2_calls(&self, api: &str) -> u64 {
        self.sim_state()["calls"][api].as_u64().unwrap_or(0)
    }

    /// The checkpoint file's text ("" while there is none).
    pub fn checkpoint(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ipam.json")).unwrap_or_default()
    }

    /// Stops the daemon with SIGTERM and returns its exit status success.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = sh("kill", &["-TERM", &child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(s)) => return s.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }

    /// A plugin netconf pointing at this daemon.
    pub fn conf(&self, version: &str) -> Value {
        serde_json::json!({
            "cniVersion": version,
            "name": "aws-cni",
            "type": "aws-cni",
            "vethPrefix": "eni",
            "mtu": "9001",
            "ipamdSocket": self.socket(),
            "ipamdTimeoutMs": 3000,
            "pluginLogFile": self.dir.path().join("plugin.log"),
            "pluginLogLevel": "debug",
        })
    }
}

impl Drop for Ipamd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One CNI invocation's outcome.
#[derive(Debug)]
pub struct CniOut {
    pub success: bool,
    pub stdout: String,
    pub json: Value,
}

impl CniOut {
    /// The CNI error code (0 when the call succeeded).
    pub fn code(&self) -> u64 {
        self.json["code"].as_u64().unwrap_or(0)
    }
}

/// A pod as a runtime sees it.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub container_id: String,
    pub namespace: String,
    pub name: String,
    pub netns: String,
    pub ifname: String,
}

/// Runs `aws-cni` inside the node namespace with `CNI_*` env and `conf` on stdin, as a runtime on the node would.
pub fn cni(node: &Netns, command: &str, pod: &PodSpec, conf: &Value) -> CniOut {
    cni_at(&bin("aws-cni"), node, command, pod, conf)
}

/// [`cni`] with the plugin binary at `plugin` (e.g. the copy an installer put into a node's CNI bin directory).
pub fn cni_at(plugin: &Path, node: &Netns, command: &str, pod: &PodSpec, conf: &Value) -> CniOut {
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
        pod.namespace, pod.name, pod.container_id
    );
    cni_raw_at(
        plugin,
        node,
        &[
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", &pod.container_id),
            ("CNI_NETNS", &pod.netns),
            ("CNI_IFNAME", &pod.ifname),
            ("CNI_PATH", "/usr/lib/cni"),
            ("CNI_ARGS", &args),
        ],
        conf.to_string().as_bytes(),
    )
}

/// A pod added through the real plugin: its namespace, its spec and the plugin's answer.
pub type AddedPod = (Netns, PodSpec, CniOut);

/// Two pods, "first" and "second", each in a namespace of its own named after `prefix`, added one after the other
/// (on an instance with one secondary IP per ENI the second lands on the secondary ENI). Fails the test, with
/// ipamd's log, if either ADD fails.
pub fn add_two_pods(ipamd: &Ipamd, conf: &Value, prefix: &str) -> [AddedPod; 2] {
    ["first", "second"].map(|name| {
        let ns = Netns::new(&format!("{prefix}{}-", &name[..1]));
        let p = pod(&ns, name);
        let out = add_with_retry(&ipamd.node, &p, conf);
        assert!(out.success, "ADD {name}: {}\n{}", out.stdout, ipamd.log());
        (ns, p, out)
    })
}

/// Runs `aws-cni` with exactly the given environment and stdin.
pub fn cni_raw(node: &Netns, env: &[(&str, &str)], stdin: &[u8]) -> CniOut {
    cni_raw_wrapped(node, &[], env, stdin)
}

/// [`cni_raw`] with `aws-cni` started through `wrapper` (a command and its arguments, e.g. `unshare --pid`) inside
/// the node namespace.
pub fn cni_raw_wrapped(
    node: &Netns,
    wrapper: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
) -> CniOut {
    cni_raw_in(&bin("aws-cni"), node, wrapper, env, stdin)
}

fn cni_raw_at(plugin: &Path, node: &Netns, env: &[(&str, &str)], stdin: &[u8]) -> CniOut {
    cni_raw_in(plugin, node, &[], env, stdin)
}

fn cni_raw_in(
    plugin: &Path,
    node: &Netns,
    wrapper: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
) -> CniOut {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.name])
        .args(wrapper)
        .arg(plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn aws-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("aws-cni output");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("aws-cni stdout is not JSON ({e}): {stdout:?}"))
    };
    CniOut {
        success: out.status.success(),
        stdout,
        json,
    }
}

/// ADD, retrying "try again later" (code 11) like kubelet does, for up to ~5 s.
pub fn add_with_retry(node: &Netns, pod: &PodSpec, conf: &Value) -> CniOut {
    for _ in 0..50 {
        let out = cni(node, "ADD", pod, conf);
        if out.success || out.code() != 11 {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cni(node, "ADD", pod, conf)
}

/// The IPv4 address (without prefix) of an ADD result.
pub fn result_ip(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .expect("result has an IP")
        .to_string()
}

/// The anchor's host veth name for a pod: "eni" + first 11 hex of SHA-1("<ns>.<name>"), computed with
/// `sha1sum` as an independent oracle.
pub fn expected_veth(namespace: &str, name: &str) -> String {
    let mut child = Command::new("sha1sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha1sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{namespace}.{name}").as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("sha1sum output");
    format!("eni{}", &String::from_utf8_lossy(&out.stdout)[..11])
}

/// A pod named `name` in namespace `default` whose sandbox is `netns` (container ID derived from the netns name).
pub fn pod(netns: &Netns, name: &str) -> PodSpec {
    PodSpec {
        container_id: format!("ctr-{}", netns.name),
        namespace: "default".into(),
        name: name.into(),
        netns: netns.path(),
        ifname: "eth0".into(),
    }
}

/// ipamd in IPv6 mode, as an IPv6 cluster runs it (one /80 on the primary ENI, no IPv4 pods), its log on stderr
/// (the test's log file).
pub const IPV6_MODE: &[(&str, &str)] = &[
    ("ENABLE_IPv6", "true"),
    ("ENABLE_IPv4", "false"),
    ("ENABLE_PREFIX_DELEGATION", "true"),
    ("WARM_PREFIX_TARGET", "1"),
    ("AWS_VPC_K8S_CNI_LOG_FILE", "stderr"),
];

/// Pool settings that keep the pool still across one ADD/DEL (10 addresses, 1 warm), so the node's state before
/// and after can be compared exactly.
pub const STILL_POOL: &[(&str, &str)] = &[("WARM_IP_TARGET", "1"), ("MINIMUM_IP_TARGET", "10")];

/// Waits until a daemon started as `child` opens `socket`; panics with its log file if it exits first or
/// `timeout` passes.
pub fn wait_for_socket(child: &mut Option<Child>, socket: &Path, timeout: Duration, log: &Path) {
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + timeout;
    while !socket.exists() {
        if let Some(Ok(Some(status))) = child.as_mut().map(Child::try_wait) {
            panic!("ipamd exited early ({status}):\n{}", log());
        }
        assert!(Instant::now() < deadline, "ipamd not ready:\n{}", log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `conf` with `prevResult` set, as a runtime passes the previous plugin's result (or the ADD's, on CHECK/DEL).
pub fn with_prev(conf: &serde_json::Value, prev: &serde_json::Value) -> serde_json::Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// Runs `plugin` (a binary of ours) with CNI GC in `node`, as a runtime does: no container, only `CNI_COMMAND`
/// and `CNI_PATH`, the config (with its `cni.dev/valid-attachments`) on stdin. Returns (success, stdout).
pub fn cni_gc_at(node: &Netns, plugin: &str, conf: &serde_json::Value) -> (bool, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.name])
        .arg(bin(plugin))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", "GC")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The conflist a runtime runs on an IPv6 node (or an IPv4 one with IPv6 egress): `aws-cni`, then `egress-cni`,
/// in `node`.
pub struct Chain<'a> {
    pub node: &'a Netns,
    /// aws-cni's conf.
    pub aws: Value,
    /// egress-cni's conf for a prevResult.
    pub egress_of: &'a dyn Fn(&Value) -> Value,
    /// What a failure of aws-cni adds to its message (e.g. ipamd's log).
    pub context: &'a dyn Fn() -> String,
}

impl<'a> Chain<'a> {
    /// The chain with nothing added to a failure's message.
    pub fn new(node: &'a Netns, aws: Value, egress_of: &'a dyn Fn(&Value) -> Value) -> Chain<'a> {
        Chain {
            node,
            aws,
            egress_of,
            context: &String::new,
        }
    }

    /// ADD through aws-cni then egress-cni (with aws-cni's result); returns (aws-cni's result, the final one).
    pub fn add(&self, pod: &PodSpec) -> (Value, Value) {
        let out = cni_at(&bin("aws-cni"), self.node, "ADD", pod, &self.aws);
        assert!(
            out.success,
            "aws-cni ADD: {}\n{}",
            out.stdout,
            (self.context)()
        );
        let egress = (self.egress_of)(&out.json);
        let eg = cni_at(&bin("egress-cni"), self.node, "ADD", pod, &egress);
        assert!(eg.success, "egress-cni ADD: {}", eg.stdout);
        (out.json, eg.json)
    }

    /// DEL in reverse order, each with the final `result` as prevResult.
    pub fn del(&self, pod: &PodSpec, result: &Value) {
        let egress = with_prev(&(self.egress_of)(result), result);
        let eg = cni_at(&bin("egress-cni"), self.node, "DEL", pod, &egress);
        assert!(eg.success, "egress-cni DEL: {}", eg.stdout);
        let aws = with_prev(&self.aws, result);
        let out = cni_at(&bin("aws-cni"), self.node, "DEL", pod, &aws);
        assert!(
            out.success,
            "aws-cni DEL: {}\n{}",
            out.stdout,
            (self.context)()
        );
    }
}
