//! Shared by the crash-safety tests: a simulated node that survives ipamd's death, as an EC2 instance does.
//!
//! [`SimNode`] owns the node namespace, a *named* fabric namespace (so the ENI links stay when ipamd dies) and a
//! directory holding the simulated EC2 state (`sim-ec2.json`, loaded on every start), the checkpoint
//! (`ipam.json`) and the daemon's log (appended across restarts). ipamd can be started, killed with SIGKILL,
//! stopped with SIGTERM and started again on the same node. Everything is removed on drop, in order: the
//! daemon, then the namespaces, then the directory.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use integration_tests::{arr, bin, cni, expected_veth, require_root, sh, Netns, PodSpec, TempDir};
use serde_json::Value;

/// A simulated node whose EC2 state and NICs outlive ipamd. Shared between threads: one may kill and restart
/// the daemon while others run the plugin.
#[derive(Debug)]
pub struct SimNode {
    pub node: Netns,
    pub fabric: Netns,
    pub dir: TempDir,
    instance_type: String,
    env: Vec<(String, String)>,
    child: Mutex<Option<Child>>,
    last_start: Mutex<Option<Instant>>,
}

impl SimNode {
    /// A node of `instance_type`; ipamd gets `env` on every start. Nothing runs yet.
    pub fn new(instance_type: &str, env: &[(&str, &str)]) -> SimNode {
        require_root();
        SimNode {
            node: Netns::new("act-cnode-"),
            fabric: Netns::new("act-cfab-"),
            dir: TempDir::new(),
            instance_type: instance_type.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: Mutex::new(None),
            last_start: Mutex::new(None),
        }
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the daemon was last started.
    pub fn last_start(&self) -> Option<Instant> {
        *self.last_start.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The running daemon's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("ipamd.sock")
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.dir.path().join("ipam.json")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("ipamd.log")
    }

    /// Starts ipamd (with `extra` arguments) without waiting for it.
    pub fn spawn(&self, extra: &[&str]) {
        let mut child = self.child();
        assert!(child.is_none(), "ipamd is already running");
        // A socket left by a killed daemon would look like a ready one.
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut cmd = Command::new(bin("ipamd"));
        cmd.args([
            "run",
            "--backend",
            "sim",
            "--instance-type",
            &self.instance_type,
        ])
        .arg("--netns")
        .arg(self.node.path())
        .arg("--socket")
        .arg(self.socket())
        .arg("--sim-state")
        .arg(self.dir.path().join("sim-ec2.json"))
        .arg("--sim-fabric-netns")
        .arg(self.fabric.path())
        .args(extra)
        .env("AWS_VPC_K8S_CNI_LOGLEVEL", "debug")
        .env("AWS_VPC_K8S_CNI_LOG_FORMAT", "text")
        .env("AWS_VPC_K8S_CNI_BACKING_STORE", self.checkpoint_path())
        .env("DISABLE_METRICS", "true")
        .env("DISABLE_INTROSPECTION", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        *child = Some(cmd.spawn().expect("spawn ipamd"));
        *self.last_start.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Starts ipamd and waits until its socket is there (it binds it once recovered and filled).
    pub fn start(&self) {
        self.spawn(&[]);
        self.wait_ready(Duration::from_secs(30));
    }

    /// Waits for the socket of the running daemon; panics with its log if it exits or takes too long.
    pub fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.socket().exists() {
            let exited = self.child().as_mut().map(Child::try_wait);
            if let Some(Ok(Some(status))) = exited {
                panic!("ipamd exited early ({status}):\n{}", self.log_tail(60));
            }
            assert!(
                Instant::now() < deadline,
                "ipamd not ready:\n{}",
                self.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the daemon to exit by itself (e.g. refusing to start) and returns its status.
    pub fn wait_exit(&self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let mut guard = self.child();
        let child = guard.as_mut()?;
        loop {
            match child.try_wait() {
                Ok(Some(s)) => {
                    *guard = None;
                    return Some(s);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }

    pub fn running(&self) -> bool {
        matches!(self.child().as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// SIGKILL: no cleanup of any kind runs.
    pub fn kill9(&self) {
        let taken = self.child().take();
        if let Some(mut c) = taken {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit status with the time it took (None: not stopped within `limit`, then killed).
    pub fn term(&self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let mut c = self.child().take()?;
        let started = Instant::now();
        let _ = sh("kill", &["-TERM", &c.id().to_string()]);
        loop {
            match c.try_wait() {
                Ok(Some(s)) => return Some((s, started.elapsed())),
                Ok(None) if started.elapsed() < limit => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return None;
                }
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Asks the running daemon for a full reconcile pass (SIGUSR1) and waits until it has finished one.
    pub fn reconcile(&self) {
        const DONE: &str = "reconcile pass finished";
        let before = self.log().matches(DONE).count();
        let pid = self.pid().expect("ipamd running");
        let _ = sh("kill", &["-USR1", &pid.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log().matches(DONE).count() <= before {
            assert!(
                Instant::now() < deadline,
                "no reconcile pass:\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The checkpoint as `(containerID, ipv4)` pairs, plus the raw JSON.
    pub fn checkpoint(&self) -> (Vec<(String, String)>, Value) {
        let bytes = std::fs::read(self.checkpoint_path()).expect("checkpoint file");
        let v: Value = serde_json::from_slice(&bytes).expect("checkpoint json");
        let entries = arr(&v["allocations"])
            .iter()
            .map(|a| {
                (
                    a["containerID"].as_str().unwrap_or("").to_string(),
                    a["ipv4"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        (entries, v)
    }

    /// What the simulated EC2 holds.
    pub fn sim_state(&self) -> Value {
        let b = std::fs::read(self.dir.path().join("sim-ec2.json")).expect("sim state");
        serde_json::from_slice(&b).expect("sim state json")
    }

    /// ENIs attached to the instance, per EC2: id -> (mac, device index, secondary IPs).
    pub fn attached_enis(&self) -> BTreeMap<String, (String, u64, Vec<String>)> {
        let st = self.sim_state();
        st["enis"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter(|e| e["device_index"].is_u64())
                    .map(|e| {
                        (
                            e["id"].as_str().unwrap_or("").to_string(),
                            (
                                e["mac"].as_str().unwrap_or("").to_string(),
                                e["device_index"].as_u64().unwrap_or(0),
                                arr(&e["secondary_ips"])
                                    .iter()
                                    .filter_map(|i| i.as_str().map(str::to_string))
                                    .collect(),
                            ),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The node's primary IP (from the simulator).
    pub fn node_ip(&self) -> String {
        let st = self.sim_state();
        st["enis"]
            .as_object()
            .and_then(|m| m.values().find(|e| e["device_index"] == 0))
            .and_then(|e| e["primary_ip"].as_str())
            .expect("primary ENI")
            .to_string()
    }

    /// `ipamd status --output json` of the running daemon.
    pub fn status(&self) -> Value {
        let out = sh(
            bin("ipamd").to_str().expect("path"),
            &[
                "status",
                "--output",
                "json",
                "--socket",
                self.socket().to_str().expect("socket path"),
            ],
        );
        assert!(out.status.success(), "ipamd status: {out:?}");
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    /// A plugin netconf pointing at this node's daemon.
    pub fn conf(&self) -> Value {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "aws-cni",
            "type": "aws-cni",
            "vethPrefix": "eni",
            "mtu": "9001",
            "ipamdSocket": self.socket(),
            "ipamdTimeoutMs": 3000,
            "pluginLogFile": self.dir.path().join("plugin.log"),
            "pluginLogLevel": "info",
        })
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A pod: its namespace (removed on drop) and how a runtime names it.
#[derive(Debug)]
pub struct Pod {
    pub netns: Netns,
    pub spec: PodSpec,
    pub ip: Option<String>,
}

impl Pod {
    pub fn new(name: &str, container_id: &str) -> Pod {
        let netns = Netns::new("act-cpod-");
        let spec = PodSpec {
            container_id: container_id.to_string(),
            namespace: "default".into(),
            name: name.to_string(),
            netns: netns.path(),
            ifname: "eth0".into(),
        };
        Pod {
            netns,
            spec,
            ip: None,
        }
    }

    pub fn veth(&self) -> String {
        expected_veth(&self.spec.namespace, &self.spec.name)
    }

    /// ADD through the real plugin; records the IP on success.
    pub fn add(&mut self, node: &SimNode) -> integration_tests::CniOut {
        let out = cni(&node.node, "ADD", &self.spec, &node.conf());
        if out.success {
            self.ip = Some(integration_tests::result_ip(&out.json));
        }
        out
    }

    /// DEL through the real plugin, with the prevResult a runtime would pass.
    pub fn del(&self, node: &SimNode) -> integration_tests::CniOut {
        let mut conf = node.conf();
        if let Some(ip) = &self.ip {
            conf["prevResult"] = serde_json::json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": self.veth()},
                    {"name": "eth0", "sandbox": self.spec.netns},
                ],
                "ips": [{"address": format!("{ip}/32"), "interface": 1}],
            });
        }
        cni(&node.node, "DEL", &self.spec, &conf)
    }

    /// The pod's eth0 IPv4 addresses, as the kernel has them.
    pub fn addresses(&self) -> Vec<String> {
        let out = sh(
            "ip",
            &[
                "-json",
                "-n",
                &self.netns.name,
                "-4",
                "addr",
                "show",
                "dev",
                "eth0",
            ],
        );
        if !out.status.success() {
            return Vec::new();
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        arr(&v)
            .iter()
            .flat_map(|l| arr(&l["addr_info"]))
            .filter_map(|a| a["local"].as_str().map(str::to_string))
            .collect()
    }
}

/// A small deterministic PRNG (xorshift64*), so a failing run can be replayed from its printed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi` (hi exclusive; `lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next() % (hi - lo)
        }
    }
}

/// An environment variable as a number, or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}
