//! `ipamd demo`: one simulated EC2 node, real pods, real packets, and nothing left behind.
//!
//! 1. creates a node namespace and starts `ipamd run --backend sim` in it (this binary, as a child);
//! 2. creates N pod namespaces and runs the real `aws-cni` ADD for each, exactly as a runtime would (from the
//!    node namespace, `CNI_*` env, netconf on stdin), retrying "try again later" like kubelet;
//! 3. pings from every pod to the node, its subnet's router and the next pod;
//! 4. prints a table (pod, IP, ENI, subnet, route table, setup ms) and the pings;
//! 5. DELs every pod, stops ipamd, deletes every namespace and file it made. This also runs after a failure or
//!    Ctrl-C (SIGINT/SIGTERM set a flag the steps check; children get the signal too and die).
//!
//! With `--custom-networking` the node runs with `AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true`: the simulated VPC gets
//! the subnets 10.0.64.0/20 and 10.0.80.0/24, a cluster-objects file (`ipamd run --cluster-objects`, the
//! development source: there is no API server here) labels the node with its zone and holds the ENIConfig of that
//! zone listing both subnets and a security group, and every pod must get its address on an ENI in one of them
//! with that security group, never the node's subnet.
//!
//! With `--ipv6` the node is an IPv6 one (`ENABLE_IPv6=true`, `ENABLE_IPv4=false`): pods get IPv6 addresses of
//! the /80 on the primary ENI and IPv4 egress through `egress-cni`; see [`super::demo_v6`].
//!
//! Exit status 0 only if every ping succeeded (and, with custom networking, every pod is in the ENIConfig's
//! subnets with its security group).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ec2_api::clock::{Clock, SystemClock};
use ec2_api::EniDescription;

/// Options of `ipamd demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Number of pods.
    #[arg(long, default_value_t = 10)]
    pub pods: usize,
    /// Instance type of the simulated node.
    #[arg(long, default_value = "m5.large")]
    pub instance_type: String,
    /// The aws-cni binary (default: next to this ipamd).
    #[arg(long)]
    pub cni_bin: Option<PathBuf>,
    /// Custom networking: pods on ENIs in the subnets of the node's ENIConfig (see the module docs).
    #[arg(long)]
    pub custom_networking: bool,
    /// An IPv6 node: pods with IPv6 addresses of the primary ENI's /80, IPv4 egress through egress-cni.
    #[arg(long, conflicts_with = "custom_networking")]
    pub ipv6: bool,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the demo creates network namespaces and must run as root")]
    NotRoot,
    #[error(
        "aws-cni not found at {0} (build it with `cargo build --workspace`, or pass --cni-bin)"
    )]
    NoCniBinary(PathBuf),
    #[error("{0}")]
    Setup(String),
    #[error("interrupted")]
    Interrupted,
    #[error("{failed} of {total} pings failed")]
    PingsFailed { failed: usize, total: usize },
    #[error("custom networking: {0} pod(s) not on an ENI in the ENIConfig's subnets with its security group")]
    OutsideEniConfig(usize),
}

/// `--custom-networking`: the ENIConfig's subnets (as the simulator names them: the node's subnet is the first,
/// each `--sim-subnet` the next) and security group.
const CN_SUBNETS: [(&str, &str); 2] = [
    ("10.0.64.0/20", "subnet-0sim0000000000002"),
    ("10.0.80.0/24", "subnet-0sim0000000000003"),
];
const CN_SECURITY_GROUP: &str = "sg-0demopods00000001";
const CN_ZONE: &str = "us-west-2a";
const CN_ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The development source of cluster objects for `--custom-networking`: this node labelled with its zone, and the
/// zone's ENIConfig.
fn cluster_objects() -> serde_json::Value {
    serde_json::json!({
        "node": {"metadata": {"name": "demo-node", "labels": {CN_ZONE_LABEL: CN_ZONE}}},
        "eniConfigs": [{
            "apiVersion": "crd.k8s.amazonaws.com/v1alpha1", "kind": "ENIConfig",
            "metadata": {"name": CN_ZONE},
            "spec": {
                "subnet": CN_SUBNETS[0].1,
                "subnets": [CN_SUBNETS[1].1],
                "securityGroups": [CN_SECURITY_GROUP],
            },
        }],
    })
}

pub(super) struct PodRow {
    pub(super) name: String,
    pub(super) netns: String,
    pub(super) container_id: String,
    pub(super) ip: Option<Ipv4Addr>,
    pub(super) device: Option<u32>,
    pub(super) setup_ms: f64,
    pub(super) prev_result: Option<serde_json::Value>,
    pub(super) error: Option<String>,
}

/// Everything the demo made, removed on drop (in reverse order), whatever happened before.
pub(super) struct Cleanup {
    pub(super) node_ns: Option<String>,
    pub(super) pod_ns: Vec<String>,
    pub(super) ipamd: Option<Child>,
    pub(super) dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut problems = Vec::new();
        if let Some(mut child) = self.ipamd.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let clock = SystemClock::default();
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if clock.now() < Duration::from_secs(5) => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        for ns in self.pod_ns.drain(..).chain(self.node_ns.take()) {
            if let Err(e) = datapath::delete_named_netns(&ns) {
                problems.push(format!("namespace {ns}: {e}"));
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                problems.push(format!("{}: {e}", self.dir.display()));
            }
        }
        for p in problems {
            eprintln!("cleanup: could not remove {p}");
        }
    }
}

/// `ipamd demo` as a command: the exit code.
pub fn main(args: DemoArgs) -> std::process::ExitCode {
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => super::failed("ipamd demo", e),
    }
}

/// What both demos do the same way: find aws-cni, watch SIGINT/SIGTERM, make the scratch directory and the node
/// namespace, start ipamd in it, write the plugin's netconf, make pod namespaces, ADD with kubelet's retry and
/// ping. Everything it made is in `cleanup`, removed on drop.
pub(super) struct Session {
    me: PathBuf,
    pub(super) cni_bin: PathBuf,
    stop: Arc<AtomicBool>,
    tag: String,
    pub(super) dir: PathBuf,
    pub(super) node_path: PathBuf,
    socket: PathBuf,
    pub(super) state: PathBuf,
    cleanup: Cleanup,
}

impl Session {
    /// Everything up to the node namespace; `what` ends the first line the demo prints.
    pub(super) fn open(args: &DemoArgs, what: &str) -> Result<Session, DemoError> {
        let me = std::env::current_exe().map_err(|e| DemoError::Setup(e.to_string()))?;
        let cni_bin = args
            .cni_bin
            .clone()
            .unwrap_or_else(|| me.with_file_name("aws-cni"));
        if !cni_bin.exists() {
            return Err(DemoError::NoCniBinary(cni_bin));
        }
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&stop))
                .map_err(|e| DemoError::Setup(format!("cannot watch signals: {e}")))?;
        }
        let tag = format!("awscni-demo-{}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir)
            .map_err(|e| DemoError::Setup(format!("{}: {e}", dir.display())))?;
        let mut cleanup = Cleanup {
            node_ns: None,
            pod_ns: Vec::new(),
            ipamd: None,
            dir: dir.clone(),
        };
        println!(
            "simulated node: {} in namespace {tag}{what}",
            args.instance_type
        );
        let node_path =
            datapath::create_named_netns(&tag).map_err(|e| DemoError::Setup(e.to_string()))?;
        cleanup.node_ns = Some(tag.clone());
        Ok(Session {
            me,
            cni_bin,
            stop,
            socket: dir.join("ipamd.sock"),
            state: dir.join("sim-ec2.json"),
            tag,
            dir,
            node_path,
            cleanup,
        })
    }

    /// An error once SIGINT or SIGTERM arrived: every step checks it.
    pub(super) fn check(&self) -> Result<(), DemoError> {
        if self.stop.load(Ordering::SeqCst) {
            Err(DemoError::Interrupted)
        } else {
            Ok(())
        }
    }

    /// Starts `ipamd run --backend sim` (this binary) in the node namespace, with what `extra` adds to its
    /// command, and waits for its socket.
    pub(super) fn start_ipamd(
        &mut self,
        args: &DemoArgs,
        extra: impl FnOnce(&mut Command),
    ) -> Result<(), DemoError> {
        let log = std::fs::File::create(self.dir.join("ipamd.log"))
            .map_err(|e| DemoError::Setup(e.to_string()))?;
        let mut ipamd = Command::new(&self.me);
        ipamd.arg("run");
        extra(&mut ipamd);
        let child = ipamd
            .args(["--backend", "sim", "--instance-type", &args.instance_type])
            .arg("--netns")
            .arg(&self.node_path)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--sim-state")
            .arg(&self.state)
            .env("AWS_VPC_K8S_CNI_LOGLEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| DemoError::Setup(format!("starting ipamd: {e}")))?;
        self.cleanup.ipamd = Some(child);
        let clock = SystemClock::default();
        while !self.socket.exists() {
            self.check()?;
            if let Some(child) = self.cleanup.ipamd.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log =
                        std::fs::read_to_string(self.dir.join("ipamd.log")).unwrap_or_default();
                    return Err(DemoError::Setup(format!("ipamd exited ({status}):\n{log}")));
                }
            }
            if clock.now() > Duration::from_secs(20) {
                return Err(DemoError::Setup(
                    "ipamd did not open its socket within 20 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// aws-cni's netconf as the conflist has it, talking to this demo's ipamd.
    pub(super) fn plugin_conf(&self) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "aws-cni",
            "type": "aws-cni",
            "vethPrefix": "eni",
            "mtu": "9001",
            "ipamdSocket": self.socket,
            "pluginLogFile": self.dir.join("plugin.log"),
            "pluginLogLevel": "info",
        })
    }

    /// Pod `i`'s namespace (removed by the cleanup) and its row.
    pub(super) fn new_pod(&mut self, i: usize) -> Result<PodRow, DemoError> {
        let ns = format!("{}-p{i}", self.tag);
        datapath::create_named_netns(&ns).map_err(|e| DemoError::Setup(e.to_string()))?;
        self.cleanup.pod_ns.push(ns.clone());
        Ok(PodRow {
            name: format!("demo-pod-{i}"),
            netns: format!("{}/{ns}", datapath::NETNS_RUN_DIR),
            container_id: format!("demo{:08x}{i:04}", std::process::id()),
            ip: None,
            device: None,
            setup_ms: 0.0,
            prev_result: None,
            error: None,
        })
    }

    /// aws-cni ADD; "try again later" (11, the pool is growing) is retried briefly, as kubelet would.
    pub(super) fn add(
        &self,
        row: &PodRow,
        conf: &serde_json::Value,
    ) -> Result<CniOutcome, DemoError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match cni(&self.cni_bin, &self.node_path, "ADD", row, conf)? {
                Err((11, _)) if attempts < 50 => {
                    self.check()?;
                    std::thread::sleep(Duration::from_millis(100));
                }
                out => return Ok(out),
            }
        }
    }

    /// Pings every target from the pod and prints one line: `(pings, failed)`.
    pub(super) fn pings(
        &self,
        row: &PodRow,
        targets: Vec<(String, IpAddr)>,
    ) -> Result<(usize, usize), DemoError> {
        self.check()?;
        let (mut total, mut failed) = (0, 0);
        let mut line = format!("{:<12}", row.name);
        for (label, ip) in targets {
            total += 1;
            let ok = ping(&row.netns, ip)?;
            if !ok {
                failed += 1;
            }
            line.push_str(&format!(
                "  -> {label} {ip}: {}",
                if ok { "ok" } else { "FAILED" }
            ));
        }
        println!("{line}");
        Ok((total, failed))
    }
}

/// Runs the demo; see the module docs.
pub fn run(args: &DemoArgs) -> Result<(), DemoError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DemoError::NotRoot);
    }
    if args.ipv6 {
        return super::demo_v6::run(args);
    }
    let mut s = Session::open(args, "")?;
    let objects = if args.custom_networking {
        let objects = s.dir.join("cluster-objects.json");
        std::fs::write(&objects, cluster_objects().to_string())
            .map_err(|e| DemoError::Setup(format!("{}: {e}", objects.display())))?;
        println!(
            "custom networking: node label {CN_ZONE_LABEL}={CN_ZONE}, ENIConfig {CN_ZONE:?} -> subnets {} and {}, \
             security group {CN_SECURITY_GROUP}",
            CN_SUBNETS[0].0, CN_SUBNETS[1].0
        );
        Some(objects)
    } else {
        None
    };
    s.start_ipamd(args, |ipamd| {
        if let Some(objects) = &objects {
            for (cidr, _) in CN_SUBNETS {
                ipamd.args(["--sim-subnet", cidr]);
            }
            ipamd
                .arg("--cluster-objects")
                .arg(objects)
                .env("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true")
                .env("ENI_CONFIG_LABEL_DEF", CN_ZONE_LABEL);
        }
    })?;
    let conf = s.plugin_conf();

    let mut rows = Vec::new();
    for i in 0..args.pods {
        s.check()?;
        let mut row = s.new_pod(i)?;
        let clock = SystemClock::default();
        match s.add(&row, &conf)? {
            Ok(result) => {
                row.ip = result["ips"][0]["address"]
                    .as_str()
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse().ok());
                row.device = result["interfaces"][2]["sandbox"]
                    .as_str()
                    .and_then(|d| d.parse().ok());
                row.prev_result = Some(result);
            }
            Err((code, msg)) => row.error = Some(format!("ADD failed ({code}): {msg}")),
        }
        row.setup_ms = clock.now().as_secs_f64() * 1000.0;
        rows.push(row);
    }

    let (enis, groups) = read_state(&s.state);
    let node_ip = enis
        .iter()
        .find(|e| e.device_index == Some(0))
        .map(|e| e.primary_ip);
    let eni_of = |ip: Ipv4Addr| enis.iter().find(|e| e.secondary_ips.contains(&ip));
    println!();
    println!(
        "{:<12} {:<12} {:<29} {:<14} {:<12} {:>9}",
        "POD", "IP", "ENI", "SUBNET", "ROUTE TABLE", "SETUP MS"
    );
    let mut outside = 0;
    for r in &rows {
        let found = r.ip.and_then(eni_of);
        if args.custom_networking && r.ip.is_some() {
            let in_config = found.is_some_and(|e| {
                CN_SUBNETS.iter().any(|(_, id)| e.subnet_id == *id)
                    && groups.get(&e.id).is_some_and(|g| g == &[CN_SECURITY_GROUP])
            });
            if !in_config {
                outside += 1;
            }
        }
        let subnet = found
            .map(|e| e.subnet_cidr.to_string())
            .unwrap_or_else(|| "-".into());
        let eni = found
            .map(|e| format!("{} (eth{})", e.id, e.device_index.unwrap_or(0)))
            .unwrap_or_else(|| "-".into());
        let table = match r.device {
            Some(0) => "main".to_string(),
            Some(d) => (d + 1).to_string(),
            None => "-".into(),
        };
        let ip = r.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:<12} {:<12} {:<29} {:<14} {:<12} {:>9.1}",
            r.name, ip, eni, subnet, table, r.setup_ms
        );
        if let Some(e) = &r.error {
            println!("  {e}");
        }
    }

    println!();
    let mut total = 0;
    let mut failed = 0;
    let ok_rows: Vec<&PodRow> = rows.iter().filter(|r| r.ip.is_some()).collect();
    failed += rows.len() - ok_rows.len();
    total += rows.len() - ok_rows.len();
    for (i, r) in ok_rows.iter().enumerate() {
        let mut targets: Vec<(String, IpAddr)> = Vec::new();
        if let Some(n) = node_ip {
            targets.push(("node".into(), n.into()));
        }
        // The router of the pod's subnet, reached through the pod's ENI (its route table for pods on secondary
        // ENIs).
        if let Some(e) = r.ip.and_then(eni_of) {
            targets.push((
                "vpc-router".into(),
                datapath::subnet_gateway(e.subnet_cidr).into(),
            ));
        }
        if ok_rows.len() > 1 {
            let next = ok_rows[(i + 1) % ok_rows.len()];
            if let Some(ip) = next.ip {
                targets.push((next.name.clone(), ip.into()));
            }
        }
        let (t, f) = s.pings(r, targets)?;
        total += t;
        failed += f;
    }
    let _ = std::io::stdout().flush();

    // Tear the pods down through the plugin (with prevResult, as runtimes do), then the rest in Cleanup::drop.
    let mut del_errors = 0;
    for r in &rows {
        let mut conf = conf.clone();
        if let Some(prev) = &r.prev_result {
            conf["prevResult"] = prev.clone();
        }
        if let Ok(Err((code, msg))) = cni(&s.cni_bin, &s.node_path, "DEL", r, &conf) {
            del_errors += 1;
            eprintln!("DEL {}: ({code}) {msg}", r.name);
        }
    }
    drop(s);
    println!(
        "\n{} pods, {} pings, {} failed; {} DEL errors; cleaned up",
        rows.len(),
        total,
        failed,
        del_errors
    );
    if args.custom_networking {
        let placed: Vec<String> = enis
            .iter()
            .filter(|e| e.device_index != Some(0))
            .map(|e| {
                let sgs = groups.get(&e.id).map(|g| g.join(",")).unwrap_or_default();
                format!("{} in {} ({}) with {sgs}", e.id, e.subnet_id, e.subnet_cidr)
            })
            .collect();
        println!(
            "custom networking: pod ENIs {}; {} pod(s) outside the ENIConfig",
            placed.join("; "),
            outside
        );
    }
    if failed > 0 || del_errors > 0 {
        return Err(DemoError::PingsFailed { failed, total });
    }
    if outside > 0 {
        return Err(DemoError::OutsideEniConfig(outside));
    }
    Ok(())
}

pub(super) type CniOutcome = Result<serde_json::Value, (u64, String)>;

/// Runs aws-cni from inside the node namespace, as the runtime on a node would.
pub(super) fn cni(
    bin: &Path,
    node: &Path,
    command: &str,
    row: &PodRow,
    conf: &serde_json::Value,
) -> Result<CniOutcome, DemoError> {
    let stdin = conf.to_string();
    let output = datapath::in_netns(node, || {
        let mut child = Command::new(bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &row.container_id)
            .env("CNI_NETNS", &row.netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    row.name, row.container_id
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| datapath::NetlinkError::Conflict(format!("running {}: {e}", bin.display())))?;
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(stdin.as_bytes());
        }
        child
            .wait_with_output()
            .map_err(|e| datapath::NetlinkError::Conflict(e.to_string()))
    })
    .map_err(|e| DemoError::Setup(e.to_string()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if output.status.success() {
        if text.trim().is_empty() {
            return Ok(Ok(serde_json::Value::Null));
        }
        return serde_json::from_str(&text)
            .map(Ok)
            .map_err(|e| DemoError::Setup(format!("aws-cni printed invalid JSON ({e}): {text}")));
    }
    let err: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    Ok(Err((
        err["code"].as_u64().unwrap_or(0),
        err["msg"].as_str().unwrap_or(&text).to_string(),
    )))
}

fn ping(netns: &str, ip: IpAddr) -> Result<bool, DemoError> {
    let family = if ip.is_ipv6() { "-6" } else { "-4" };
    datapath::in_netns(Path::new(netns), || {
        Command::new("ping")
            .args([family, "-c", "1", "-W", "2", "-q"])
            .arg(ip.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .map_err(|e| {
                datapath::NetlinkError::Conflict(format!(
                    "running ping (install iputils-ping): {e}"
                ))
            })
    })
    .map_err(|e| DemoError::Setup(e.to_string()))
}

/// The simulator's ENIs and each one's security groups, from its state file.
fn read_state(state: &Path) -> (Vec<EniDescription>, BTreeMap<String, Vec<String>>) {
    #[derive(serde::Deserialize)]
    struct State {
        enis: BTreeMap<String, EniDescription>,
        #[serde(default)]
        eni_security_groups: BTreeMap<String, Vec<String>>,
    }
    std::fs::read(state)
        .ok()
        .and_then(|b| serde_json::from_slice::<State>(&b).ok())
        .map(|s| (s.enis.into_values().collect(), s.eni_security_groups))
        .unwrap_or_default()
}
