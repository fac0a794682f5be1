//! Benchmarks on the real kernel: processes exec'd as a runtime would, namespaces, veths, a running `ipamd`.
//!
//! Everything created here is owned by a guard that removes it on drop, in order: daemons first (SIGTERM, then
//! SIGKILL by PID), then pod namespaces, then node namespaces, then the scratch directory. Namespaces are named
//! `awsbench-<pid>-...`, so leftovers of a killed run are recognisable (`scripts/bench.sh` sweeps them too).
//!
//! Every plugin invocation is timed the way a runtime sees it: from `spawn` to the end of `wait` (exec, the
//! plugin's work, its exit), started from a thread that has entered the node namespace with
//! [`datapath::in_netns`]. The cost of entering the namespace (and of `ip netns exec`, which a runtime never pays)
//! is outside the measurement.

pub mod breakdown;
pub mod burst;
pub mod churn;
pub mod cri;
pub mod floor;
pub mod memory;
pub mod podsetup;
pub mod v6;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::error::{check_interrupt, BenchError};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Prefix of every namespace this process creates.
pub fn ns_prefix() -> String {
    format!("awsbench-{}-", std::process::id())
}

/// A scratch directory, removed on drop.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Result<Scratch, BenchError> {
        let p = std::env::temp_dir().join(format!(
            "{}{tag}-{}",
            ns_prefix(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).map_err(BenchError::io(format!("mkdir {}", p.display())))?;
        Ok(Scratch(p))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Named namespaces created by this process; every one still listed is deleted on drop.
#[derive(Debug, Default)]
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// Creates `/run/netns/awsbench-<pid>-<tag>` and returns its path.
    pub fn create(&mut self, tag: &str) -> Result<PathBuf, BenchError> {
        let name = format!("{}{tag}", ns_prefix());
        let path = datapath::create_named_netns(&name)?;
        self.names.push(name);
        Ok(path)
    }

    /// Deletes one namespace created by [`Namespaces::create`] (by its path).
    pub fn delete(&mut self, path: &Path) -> Result<(), BenchError> {
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            return Ok(());
        };
        self.names.retain(|n| *n != name);
        datapath::delete_named_netns(&name)?;
        Ok(())
    }

    pub fn delete_all(&mut self) {
        for name in std::mem::take(&mut self.names) {
            let _ = datapath::delete_named_netns(&name);
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.delete_all();
    }
}

/// Where the binaries under test are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub aws_cni: PathBuf,
    pub ipamd: PathBuf,
    /// Directory of Debian's CNI plugins (`ptp`, `host-local`).
    pub peer_dir: PathBuf,
    /// This driver (for the peak-RSS helper).
    pub me: PathBuf,
}

impl Binaries {
    pub fn check(&self) -> Result<(), BenchError> {
        for p in [
            &self.aws_cni,
            &self.ipamd,
            &self.peer_dir.join("ptp"),
            &self.peer_dir.join("host-local"),
            &self.me,
        ] {
            if !p.is_file() {
                return Err(BenchError::MissingBinary(p.clone()));
            }
        }
        Ok(())
    }
}

/// A tmpfs mounted on a directory; unmounted on drop (lazily, so a straggler cannot keep it).
#[derive(Debug)]
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path) -> Result<Tmpfs, BenchError> {
        std::fs::create_dir_all(dir).map_err(BenchError::io(format!("mkdir {}", dir.display())))?;
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("size=64m,mode=0755"),
        )
        .map_err(|e| BenchError::Other(format!("mounting a tmpfs on {}: {e}", dir.display())))?;
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// `ipamd run --backend sim` in a node namespace of its own; stopped on drop.
///
/// Its checkpoint (`AWS_VPC_K8S_CNI_BACKING_STORE`) is on a tmpfs of its own, as the anchor's default
/// `/var/run/aws-node/ipam.json` is on a node (`/var/run` is `/run`, a tmpfs): an ADD still returns only once
/// its assignment is in the checkpoint, fsync included, but the benchmark does not charge it a disk flush that a
/// node does not pay. A caller's own `AWS_VPC_K8S_CNI_BACKING_STORE` wins.
#[derive(Debug)]
pub struct Ipamd {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// Unmounted after the daemon stopped (fields drop after [`Drop::drop`]).
    _run: Option<Tmpfs>,
}

impl Ipamd {
    /// Starts the daemon in `node_ns` and waits for its socket (it opens it once the pool is filled).
    pub fn start(
        bins: &Binaries,
        node_ns: &Path,
        dir: &Path,
        instance_type: &str,
        env: &[(&str, &str)],
    ) -> Result<Ipamd, BenchError> {
        let socket = dir.join("ipamd.sock");
        let log = dir.join("ipamd.log");
        let logf = std::fs::File::create(&log).map_err(BenchError::io("ipamd log file"))?;
        let own_store = env
            .iter()
            .any(|(k, _)| *k == "AWS_VPC_K8S_CNI_BACKING_STORE");
        let run = if own_store {
            None
        } else {
            Some(Tmpfs::mount(&dir.join("run"))?)
        };
        let mut cmd = Command::new(&bins.ipamd);
        cmd.env_clear();
        if run.is_some() {
            cmd.env(
                "AWS_VPC_K8S_CNI_BACKING_STORE",
                dir.join("run").join("ipam.json"),
            );
        }
        cmd.args(["run", "--backend", "sim", "--instance-type", instance_type])
            .arg("--netns")
            .arg(node_ns)
            .arg("--socket")
            .arg(&socket)
            // A new simulated instance per run, its state and checkpoint in the run's directory (without it,
            // ipamd would keep and resume one beside /var/run/aws-node/ipam.json).
            .arg("--sim-state")
            .arg(dir.join("sim-ec2.json"))
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf);
        let child = cmd.spawn().map_err(BenchError::io("spawning ipamd"))?;
        let mut me = Ipamd {
            child: Some(child),
            socket,
            log,
            _run: run,
        };
        // A pool sized in hundreds of addresses takes a minute to fill at ipamd's client-side EC2 pace.
        let deadline = crate::time::now() + Duration::from_secs(180);
        while !me.socket.exists() {
            check_interrupt()?;
            if let Some(Ok(Some(status))) = me.child.as_mut().map(Child::try_wait) {
                return Err(BenchError::IpamdNotReady(format!(
                    "exited ({status}): {}",
                    me.log_tail()
                )));
            }
            if crate::time::now() > deadline {
                return Err(BenchError::IpamdNotReady(format!(
                    "no socket after 180 s: {}",
                    me.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last lines of the daemon's log (for error messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// `(VmRSS, VmHWM)` in KiB, from /proc/PID/status.
    pub fn rss_kib(&self) -> Result<(u64, u64), BenchError> {
        let pid = self
            .pid()
            .ok_or_else(|| BenchError::Other("ipamd already stopped".into()))?;
        proc_rss_kib(pid)
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = crate::time::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if crate::time::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }
}

impl Drop for Ipamd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `(VmRSS, VmHWM)` of a process in KiB.
pub fn proc_rss_kib(pid: u32) -> Result<(u64, u64), BenchError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(BenchError::io(path))?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Which plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    /// `aws-cni` talking to `ipamd`.
    Ours,
    /// Debian's `ptp` with `host-local` IPAM.
    Peer,
}

impl Plugin {
    pub fn label(self) -> &'static str {
        match self {
            Plugin::Ours => "aws-cni + ipamd",
            Plugin::Peer => "ptp + host-local",
        }
    }
}

/// A pod as the runtime knows it.
#[derive(Debug, Clone)]
pub struct Pod {
    pub container_id: String,
    pub name: String,
    pub netns: PathBuf,
    /// The ADD result (sent back as prevResult on DEL, as libcni does).
    pub result: Option<serde_json::Value>,
}

/// One timed plugin run.
#[derive(Debug, Clone)]
pub struct CniRun {
    pub elapsed: Duration,
    /// `CLOCK_MONOTONIC` (ns) just before spawn and just after wait, for the span breakdown.
    pub spawned_ns: u64,
    pub exited_ns: u64,
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs CNI commands against one node: our plugin with its daemon's socket, or the peer with its own state dir.
#[derive(Debug, Clone)]
pub struct Runner {
    pub bins: Binaries,
    pub node_ns: PathBuf,
    /// Our netconf (without prevResult).
    pub ours_conf: serde_json::Value,
    /// The peer's netconf.
    pub peer_conf: serde_json::Value,
    /// Where our plugin appends its span timings (`AWS_CNI_SPAN_FILE`), when set.
    pub span_file: Option<PathBuf>,
}

/// The subnet host-local hands out (outside the simulated VPC's 10.0.0.0/16).
pub const PEER_SUBNET: &str = "10.244.0.0/16";

impl Runner {
    pub fn new(bins: &Binaries, node_ns: &Path, ipamd_socket: &Path, dir: &Path) -> Runner {
        // The plugin settings of deploy/10-aws.conflist (DEBUG log to a file), the socket of this daemon.
        let ours_conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "aws-cni",
            "type": "aws-cni",
            "vethPrefix": "eni",
            "mtu": "9001",
            "podSGEnforcingMode": "strict",
            "pluginLogFile": dir.join("plugin.log"),
            "pluginLogLevel": "DEBUG",
            "ipamdSocket": ipamd_socket,
        });
        let peer_conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "bench-ptp",
            "type": "ptp",
            "mtu": 9001,
            "ipam": {
                "type": "host-local",
                "subnet": PEER_SUBNET,
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": dir.join("host-local"),
            },
        });
        Runner {
            bins: bins.clone(),
            node_ns: node_ns.to_path_buf(),
            ours_conf,
            peer_conf,
            span_file: None,
        }
    }

    fn program(&self, plugin: Plugin) -> PathBuf {
        match plugin {
            Plugin::Ours => self.bins.aws_cni.clone(),
            Plugin::Peer => self.bins.peer_dir.join("ptp"),
        }
    }

    /// The environment and stdin of a CNI call.
    pub fn call(
        &self,
        plugin: Plugin,
        command: &'static str,
        pod: &Pod,
    ) -> (PathBuf, Vec<(String, String)>, Vec<u8>) {
        let mut conf = match plugin {
            Plugin::Ours => self.ours_conf.clone(),
            Plugin::Peer => self.peer_conf.clone(),
        };
        if command == "DEL" {
            if let (Some(prev), Some(obj)) = (&pod.result, conf.as_object_mut()) {
                obj.insert("prevResult".into(), prev.clone());
            }
        }
        let mut env = vec![
            ("CNI_COMMAND".to_string(), command.to_string()),
            ("CNI_CONTAINERID".to_string(), pod.container_id.clone()),
            ("CNI_NETNS".to_string(), pod.netns.display().to_string()),
            ("CNI_IFNAME".to_string(), "eth0".to_string()),
            (
                "CNI_PATH".to_string(),
                self.bins.peer_dir.display().to_string(),
            ),
            (
                "CNI_ARGS".to_string(),
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    pod.name, pod.container_id
                ),
            ),
        ];
        if let (Plugin::Ours, Some(f)) = (plugin, &self.span_file) {
            env.push(("AWS_CNI_SPAN_FILE".to_string(), f.display().to_string()));
        }
        (self.program(plugin), env, conf.to_string().into_bytes())
    }

    /// Runs one CNI command from a thread inside the node namespace and times it.
    pub fn run(
        &self,
        plugin: Plugin,
        command: &'static str,
        pod: &Pod,
    ) -> Result<CniRun, BenchError> {
        let (prog, env, stdin) = self.call(plugin, command, pod);
        datapath::in_netns(&self.node_ns, || Ok(exec_timed(&prog, &env, &stdin)))?
    }

    /// [`Runner::run`] that fails unless the plugin succeeded; an ADD's result is kept in `pod`.
    pub fn must(
        &self,
        plugin: Plugin,
        command: &'static str,
        pod: &mut Pod,
    ) -> Result<Duration, BenchError> {
        self.must_run(plugin, command, pod).map(|r| r.elapsed)
    }

    /// [`Runner::must`] returning the whole run (its spawn and exit readings too).
    pub fn must_run(
        &self,
        plugin: Plugin,
        command: &'static str,
        pod: &mut Pod,
    ) -> Result<CniRun, BenchError> {
        check_interrupt()?;
        let r = self.run(plugin, command, pod)?;
        if !r.ok {
            return Err(BenchError::Cni {
                plugin: plugin.label(),
                command,
                pod: pod.name.clone(),
                detail: format!("{} {}", r.stdout.trim(), r.stderr.trim()),
            });
        }
        if command == "ADD" {
            pod.result = serde_json::from_str(&r.stdout).ok();
        }
        Ok(r)
    }
}

/// Spawns `prog` with exactly `env`, writes `stdin`, waits; the wall time from spawn to exit.
pub fn exec_timed(
    prog: &Path,
    env: &[(String, String)],
    stdin: &[u8],
) -> Result<CniRun, BenchError> {
    let mut cmd = Command::new(prog);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawned_ns = monotonic_ns();
    let t0 = crate::time::now();
    let mut child = cmd
        .spawn()
        .map_err(BenchError::io(format!("spawning {}", prog.display())))?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(stdin)
            .map_err(BenchError::io("writing the netconf"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(BenchError::io(format!("waiting for {}", prog.display())))?;
    let elapsed = crate::time::since(t0);
    let exited_ns = monotonic_ns();
    Ok(CniRun {
        elapsed,
        spawned_ns,
        exited_ns,
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `CLOCK_MONOTONIC` in ns: the clock the plugin's span marks use (see `aws-cni`'s `spans`), so the two
/// processes' readings compare.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

/// A pod with a fresh namespace.
pub fn new_pod(nss: &mut Namespaces, plugin: Plugin, i: usize) -> Result<Pod, BenchError> {
    let tag = match plugin {
        Plugin::Ours => "o",
        Plugin::Peer => "p",
    };
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let netns = nss.create(&format!("{tag}{i}-{n}"))?;
    Ok(Pod {
        container_id: format!("bench{tag}{:08}{n:06}", std::process::id()),
        name: format!("bench-{tag}-{i}-{n}"),
        netns,
        result: None,
    })
}

/// Best-effort DEL of every pod still listed, then their namespaces (for error paths).
pub fn release_pods(runner: &Runner, nss: &mut Namespaces, plugin: Plugin, pods: &mut Vec<Pod>) {
    for pod in pods.drain(..) {
        let _ = runner.run(plugin, "DEL", &pod);
        let _ = nss.delete(&pod.netns);
    }
}

/// ADD retried every 50 ms while the daemon says "try again later" (a pool still growing), up to `patience`.
/// Returns the number of failed attempts before it worked.
pub fn add_patiently(
    runner: &Runner,
    plugin: Plugin,
    pod: &mut Pod,
    patience: Duration,
) -> Result<u32, BenchError> {
    let deadline = crate::time::now() + patience;
    let mut failures = 0;
    loop {
        check_interrupt()?;
        let r = runner.run(plugin, "ADD", pod)?;
        if r.ok {
            pod.result = serde_json::from_str(&r.stdout).ok();
            return Ok(failures);
        }
        failures += 1;
        if crate::time::now() > deadline {
            return Err(BenchError::Cni {
                plugin: plugin.label(),
                command: "ADD",
                pod: pod.name.clone(),
                detail: format!("still failing after {patience:?}: {}", r.stdout.trim()),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The peak RSS (KiB) of one plugin run: the driver re-executes itself as a helper whose only children are
/// that run, and reads `getrusage(RUSAGE_CHILDREN).ru_maxrss` (the largest of the process and the processes it
/// waited for, e.g. ptp and its host-local).
pub fn peak_rss_kib(
    runner: &Runner,
    plugin: Plugin,
    command: &'static str,
    pod: &Pod,
) -> Result<(u64, bool), BenchError> {
    let (prog, env, stdin) = runner.call(plugin, command, pod);
    let mut cmd = Command::new(&runner.bins.me);
    cmd.arg("child-rss")
        .arg("--netns")
        .arg(&runner.node_ns)
        .arg("--")
        .arg(&prog)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(BenchError::io("spawning the RSS helper"))?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(&stdin)
            .map_err(BenchError::io("RSS helper stdin"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(BenchError::io("waiting for the RSS helper"))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        BenchError::Other(format!(
            "RSS helper said {:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })?;
    Ok((
        v["maxrss_kib"].as_u64().unwrap_or(0),
        v["ok"].as_bool().unwrap_or(false),
    ))
}

/// The helper side of [`peak_rss_kib`]: runs `prog` (environment inherited, stdin passed through) from a thread
/// in `netns`, then prints `{"ok":..,"maxrss_kib":..}`.
pub fn child_rss_main(netns: &Path, prog: &Path) -> Result<(), BenchError> {
    let status = datapath::in_netns(netns, || {
        Ok(Command::new(prog)
            .stdin(Stdio::inherit())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status())
    })?
    .map_err(BenchError::io(format!("running {}", prog.display())))?;
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map_err(|e| BenchError::Other(format!("getrusage: {e}")))?;
    println!(
        "{}",
        serde_json::json!({ "ok": status.success(), "maxrss_kib": usage.max_rss() })
    );
    Ok(())
}
