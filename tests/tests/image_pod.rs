//! The image built here, and the DaemonSet's pod played by a real runtime on a simulated node.
//!
//! `scripts/image.sh --binaries <target dir>` builds the image with podman from the binaries under test (no
//! registry: the Debian base is made with debootstrap once and cached). Then:
//!
//! - **The image** ([`the_image_has_every_library_its_binaries_load_and_chooses_the_iptables_backend`]): every ELF
//!   file's library closure (`ldd` inside the image: nothing "not found"), the tools ipamd and a person debugging a
//!   node use run, the OCI labels, the size, and the iptables wrapper's choice of backend (legacy on a node whose
//!   rules are in legacy, nf_tables on an empty one).
//! - **The pod** ([`the_daemonsets_pod_runs_on_a_simulated_node`]): the pod template of `kubectl kustomize
//!   deploy/base` (and of the prefix-delegation overlay) played with `podman kube play`, podman itself running in
//!   the node's network namespace so that `hostNetwork: true` means the node. The host paths are directories of a
//!   temporary "host". Checks: the init container installed the plugins and set the sysctls; the main container's
//!   startup, liveness and readiness probes, exactly as the manifest writes them, pass when executed in it;
//!   `cni-conf` wrote the conflist; a pod added from the host side through the *installed* `aws-cni` gets its
//!   address and reaches the node, and the SNAT rules are in the node (written by the image's iptables, nf_tables
//!   chosen); after its DEL and the pod's stop nothing of the pod is left and every container exited 0.
//!
//! What the test changes in the rendered pod, and why (nothing else is touched):
//! - `metadata.name`, and every container's `image` (this build's tag).
//! - `hostPath` paths: under the temporary host.
//! - `env` from the field `spec.nodeName` (podman 4.3 resolves only `metadata.*`): the node's name as a value.
//! - `restartPolicy`: OnFailure instead of a DaemonSet's Always, which podman 4.3 applies to init containers too
//!   (it restarts the finished init container, then fails removing it).
//! - `ports` (aws-node's `metrics`): podman refuses port mappings with host networking, where Kubernetes takes
//!   them as documentation; the test checks the port is served in the node instead.
//! - `aws-node`'s args: `--backend sim --sim-state ... --sim-fabric-netns ...` (the flag a real node leaves at its
//!   default, `aws`), the fabric namespace mounted in, and `SYS_ADMIN` added to its capabilities: the simulator
//!   enters the namespace that stands in for the VPC (setns needs it). The daemon itself needs only the manifest's
//!   NET_ADMIN and NET_RAW.
//! - The init container's args: `--primary-mac` (a simulated node has no IMDS to ask for it).
//!
//! The simulated instance is "launched" before the pod, as EC2 launches a node before the kubelet runs anything:
//! the host's ipamd (`--backend sim` with a fabric namespace that outlives it) attaches the primary ENI and is
//! stopped; the node's iptables are then emptied, so every rule found later was written from inside the image.
//!
//! podman runs with scripts/podman/containers.conf and the machine's default storage; the test removes every pod,
//! container and image it made (scripts/image.sh's base images, localhost/aws-cni-base/{debian,runtime}, and the
//! layer cache behind them stay, so reruns are fast).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{
    arr, bin, cni_at, expected_veth, pod, require_root, sh, unique, Netns, TempDir,
};
use serde::Deserialize;
use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn podman_conf() -> PathBuf {
    repo().join("scripts/podman/containers.conf")
}

/// `podman ARGS`, in the node's network namespace when `node` is given.
fn podman(node: Option<&Netns>, args: &[&str]) -> Output {
    let mut cmd = match node {
        Some(n) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", n.path())).arg("podman");
            c
        }
        None => Command::new("podman"),
    };
    cmd.args(args)
        .env("CONTAINERS_CONF", podman_conf())
        .output()
        .expect("podman")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn preflight() {
    require_root();
    for tool in [
        "podman",
        "runc",
        "nsenter",
        "kubectl",
        "debootstrap",
        "strip",
        "catatonit",
        "curl",
    ] {
        let found = sh("sh", &["-c", &format!("command -v {tool}")]);
        assert!(
            found.status.success(),
            "{tool} missing: run scripts/deps.sh"
        );
    }
}

/// An image built by scripts/image.sh from the binaries under test; removed on drop.
struct Image {
    tag: String,
}

impl Image {
    fn build() -> Image {
        let tag = format!("localhost/{}:test", unique("awscni-image-"));
        let dir = bin("ipamd").parent().expect("target dir").to_path_buf();
        let out = Command::new(repo().join("scripts/image.sh"))
            .arg("--binaries")
            .arg(&dir)
            .args(["--tag", &tag])
            .env_remove("CONTAINERS_CONF")
            .output()
            .expect("scripts/image.sh");
        let image = Image { tag };
        assert!(out.status.success(), "scripts/image.sh: {}", text(&out));
        image
    }

    /// `podman run --rm` of a shell command in the image, with extra podman arguments.
    fn sh(&self, extra: &[&str], script: &str) -> Output {
        let mut args = vec!["run", "--rm", "--entrypoint", "/bin/sh"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&self.tag, "-c", script]);
        podman(None, &args)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman(None, &["rmi", "-f", &self.tag]);
    }
}

#[test]
fn the_image_has_every_library_its_binaries_load_and_chooses_the_iptables_backend() {
    preflight();
    let image = Image::build();

    // Every ELF file (executables and shared objects, dlopen'd iptables extensions included) resolves every
    // library it needs, and no symlink under /usr or /app (libxt_SNAT.so is one) points nowhere.
    let closure = image.sh(
        &["--network", "none"],
        r#"n=0
        for f in $(find / -xdev -type f \( -perm -u=x -o -name '*.so' -o -name '*.so.*' \)); do
          [ "$(head -c 4 "$f" | tail -c 3)" = ELF ] || continue
          out=$(ldd "$f" 2>&1) || continue
          n=$((n + 1)); echo "checked $f"
          echo "$out" | grep 'not found' | sed "s|^|MISSING $f: |"
        done
        echo "elf files checked: $n"
        for f in $(find /usr /app -xtype l); do echo "MISSING $f: dangling symlink"; done"#,
    );
    let out = text(&closure);
    assert!(closure.status.success(), "{out}");
    let missing: Vec<&str> = out.lines().filter(|l| l.starts_with("MISSING")).collect();
    assert!(
        missing.is_empty(),
        "libraries not found:\n{}",
        missing.join("\n")
    );
    for must in [
        "/app/ipamd",
        "/app/aws-cni",
        "/app/cni-plugins/portmap",
        "/usr/sbin/xtables-nft-multi",
        "/usr/sbin/xtables-legacy-multi",
        "/usr/sbin/nft",
        "/usr/sbin/conntrack",
        "/xtables/libxt_comment.so",
        "/xtables/libxt_addrtype.so",
        "/xtables/libxt_CONNMARK.so",
        "/xtables/libxt_NAT.so",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("checked ") && l.ends_with(must)),
            "{must} was not among the checked ELF files:\n{out}"
        );
    }

    // The tools run (a missing file that ldd does not see, a wrong interpreter, would show here).
    let tools = image.sh(
        &["--network", "none"],
        "set -e; /app/ipamd --version; iptables-legacy -V; iptables-nft -V; nft -v; conntrack -V; \
         /app/ipamd max-pods --instance-type m5.large --cni-version 1.20.0",
    );
    assert!(tools.status.success(), "{}", text(&tools));
    let tools = text(&tools);
    for want in [
        "ipamd ",
        "(legacy)",
        "(nf_tables)",
        "nftables v",
        "conntrack v",
    ] {
        assert!(tools.contains(want), "{want}: {tools}");
    }

    // Labels: what it is and where it comes from.
    let inspect = podman(None, &["image", "inspect", &image.tag]);
    assert!(inspect.status.success(), "{}", text(&inspect));
    let info: Value = serde_json::from_slice(&inspect.stdout).expect("inspect json");
    let labels = &info[0]["Labels"];
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        labels["org.opencontainers.image.version"], version,
        "{labels}"
    );
    let head = sh(
        "git",
        &["-C", &repo().display().to_string(), "rev-parse", "HEAD"],
    );
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .unwrap_or_default();
    assert!(
        !head.is_empty() && revision.starts_with(&head),
        "{revision} vs {head}"
    );
    assert!(
        labels["org.opencontainers.image.source"].is_string(),
        "{labels}"
    );
    assert_eq!(info[0]["Config"]["Entrypoint"], json!(["/app/ipamd"]));
    let size = info[0]["Size"].as_u64().expect("size");
    let ours = image.sh(
        &["--network", "none"],
        "stat -c %s /app/ipamd /app/aws-cni /app/egress-cni",
    );
    let ours: u64 = String::from_utf8_lossy(&ours.stdout)
        .split_whitespace()
        .map(|n| n.parse::<u64>().expect("stat size"))
        .sum();
    eprintln!(
        "image {}: {} MB, of which ipamd, aws-cni and egress-cni {} MB",
        image.tag,
        size / 1_000_000,
        ours / 1_000_000
    );
    // Everything but our binaries (whose size depends on the profile they were built with): slim Debian
    // 78 MB, the netfilter packages 7 MB, the plugins 12 MB when this was written. A bound, to notice growth.
    assert!(
        size - ours < 110_000_000,
        "the image without ipamd, aws-cni and egress-cni is {} bytes",
        size - ours
    );

    // The backend choice: a node whose rules are in legacy gets legacy, an empty one nf_tables.
    for (legacy_rule, want) in [(true, "legacy"), (false, "nft")] {
        let node = Netns::new("awscni-imgwrap-");
        if legacy_rule {
            let r = node.exec(&[
                "iptables-legacy",
                "-A",
                "INPUT",
                "-s",
                "192.0.2.7",
                "-j",
                "ACCEPT",
            ]);
            assert!(r.status.success(), "{}", text(&r));
        }
        let netns = format!("ns:{}", node.path());
        let out = image.sh(
            &["--network", &netns, "--cap-drop", "ALL", "--cap-add", "NET_ADMIN,NET_RAW"],
            "set -e; iptables -S INPUT; readlink -f /usr/sbin/iptables; readlink -f /usr/sbin/ip6tables-restore",
        );
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        assert!(
            t.contains(&format!(
                "/usr/sbin/xtables-{want}-multi\n/usr/sbin/xtables-{want}-multi"
            )),
            "{want}: {t}"
        );
        assert_eq!(t.contains("192.0.2.7"), legacy_rule, "{t}");
    }
}

/// A container run detached; removed on drop.
struct Detached(String);

impl Drop for Detached {
    fn drop(&mut self) {
        let _ = podman(None, &["rm", "-f", "-t", "0", &self.0]);
    }
}

/// `cni-conf` is its container's PID 1, for which the kernel drops signals without a handler: stopped while it
/// still waits for ipamd (a node whose ipamd never gets ready), it must exit 0 on SIGTERM rather than sit out the
/// grace period and be killed.
#[test]
fn cni_conf_stops_on_sigterm_while_it_waits_for_ipamd() {
    preflight();
    let image = Image::build();
    let name = unique("awscni-cniconf-");
    let run = podman(
        None,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            "--cap-drop",
            "ALL",
            &image.tag,
            "install",
            "--phase",
            "conflist",
            "--stay",
            "--ready-timeout",
            "10m",
            "--socket",
            "/var/run/aws-node/ipamd.sock",
        ],
    );
    let ctr = Detached(name);
    assert!(run.status.success(), "{}", text(&run));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = text(&podman(None, &["logs", &ctr.0]));
        if logs.contains("waiting for ipamd") {
            break;
        }
        assert!(Instant::now() < deadline, "cni-conf never waited:\n{logs}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The manifest's terminationGracePeriodSeconds.
    let stop = podman(None, &["stop", "-t", "10", &ctr.0]);
    assert!(stop.status.success(), "{}", text(&stop));
    let code = podman(
        None,
        &["inspect", "--format", "{{.State.ExitCode}}", &ctr.0],
    );
    assert_eq!(
        text(&code).trim(),
        "0",
        "cni-conf did not stop on SIGTERM:\n{}",
        text(&podman(None, &["logs", &ctr.0]))
    );
}

/// A process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// "Launches" the simulated instance: the host's ipamd attaches the primary ENI (eth0 in `node`, its wire in
/// `fabric`) and records EC2's state in `state`; then it is stopped. Returns eth0's MAC.
fn launch_instance(node: &Netns, fabric: &Netns, state: &Path, dir: &Path) -> String {
    let log = std::fs::File::create(dir.join("launch.log")).expect("log");
    let socket = dir.join("launch.sock");
    let child = Command::new(bin("ipamd"))
        .args(["run", "--backend", "sim", "--netns", &node.path()])
        .arg("--sim-fabric-netns")
        .arg(fabric.path())
        .arg("--sim-state")
        .arg(state)
        .arg("--socket")
        .arg(&socket)
        .env(
            "AWS_VPC_K8S_CNI_BACKING_STORE",
            dir.join("launch-ipam.json"),
        )
        .env("DISABLE_METRICS", "true")
        .env("DISABLE_INTROSPECTION", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn ipamd");
    let mut p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        let launch_log = || std::fs::read_to_string(dir.join("launch.log")).unwrap_or_default();
        assert!(
            matches!(p.0.try_wait(), Ok(None)),
            "launch ipamd exited:\n{}",
            launch_log()
        );
        assert!(
            Instant::now() < deadline,
            "launch ipamd not ready:\n{}",
            launch_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = sh("kill", &["-TERM", &p.0.id().to_string()]);
    let _ = p.0.wait();
    // Everything in the node's netfilter tables from here on comes from the image.
    for t in ["nat", "mangle", "filter"] {
        for op in ["-F", "-X"] {
            let _ = node.exec(&["iptables-nft", "-t", t, op]);
        }
    }
    arr(&node.ip_json(&["link", "show", "eth0"]))
        .first()
        .and_then(|l| l["address"].as_str().map(str::to_string))
        .expect("eth0 of the launched instance")
}

/// The DaemonSet's pod template of `kubectl kustomize <dir>`.
fn rendered_pod_template(dir: &str) -> Value {
    let out = sh(
        "kubectl",
        &["kustomize", &repo().join(dir).display().to_string()],
    );
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        text(&out)
    );
    let yaml = String::from_utf8_lossy(&out.stdout).to_string();
    for doc in serde_norway::Deserializer::from_str(&yaml) {
        let v = Value::deserialize(doc).expect("yaml");
        if v["kind"] == "DaemonSet" {
            return v["spec"]["template"].clone();
        }
    }
    panic!("no DaemonSet in {dir}")
}

fn containers_mut(spec: &mut Value) -> Vec<&mut Value> {
    let mut all = Vec::new();
    let Value::Object(m) = spec else { return all };
    for (k, v) in m.iter_mut() {
        if k == "containers" || k == "initContainers" {
            if let Value::Array(a) = v {
                all.extend(a.iter_mut());
            }
        }
    }
    all
}

fn named<'a>(spec: &'a mut Value, list: &str, name: &str) -> &'a mut Value {
    spec[list]
        .as_array_mut()
        .and_then(|a| a.iter_mut().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} {name}"))
}

/// The simulated node's name (what `spec.nodeName` would be).
const NODE_NAME: &str = "ip-10-0-0-10.sim.internal";

/// The pod the test plays: the template with the changes listed in the module docs.
fn playable_pod(
    template: &Value,
    name: &str,
    image: &str,
    host: &Path,
    mac: &str,
    fabric: &Netns,
) -> Value {
    let mut spec = template["spec"].clone();
    // The network policy agent is AWS's image (an eBPF program loader), not ours, and cannot be pulled here: it is
    // not played, and neither are the volumes only it mounts. Without it, ipamd must not announce a policy mode,
    // or every ADD would wait for an agent that is not there (as the anchor's would).
    spec["containers"]
        .as_array_mut()
        .expect("containers")
        .retain(|c| c["name"] != "aws-eks-nodeagent");
    let mounted: Vec<Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().cloned().unwrap_or_default())
        .flat_map(|c| c["volumeMounts"].as_array().cloned().unwrap_or_default())
        .map(|m| m["name"].clone())
        .collect();
    spec["volumes"]
        .as_array_mut()
        .expect("volumes")
        .retain(|v| mounted.contains(&v["name"]));
    for c in spec["containers"].as_array_mut().expect("containers") {
        if let Some(env) = c["env"].as_array_mut() {
            env.retain(|e| e["name"] != "NETWORK_POLICY_ENFORCING_MODE");
        }
    }
    for c in containers_mut(&mut spec) {
        c["image"] = json!(image);
        // podman refuses port mappings with host networking (Kubernetes takes them as documentation there); the
        // port is checked as a listening socket in the node instead.
        if let Value::Object(m) = c {
            m.remove("ports");
        }
        // podman resolves metadata.* field references but not spec.nodeName: the value the kubelet would put in.
        for e in c["env"].as_array_mut().into_iter().flatten() {
            if e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" {
                *e = json!({"name": e["name"], "value": NODE_NAME});
            }
        }
    }
    for v in spec["volumes"].as_array_mut().expect("volumes") {
        if let Some(cm) = v["configMap"]["name"].as_str().map(str::to_string) {
            // An optional ConfigMap the cluster does not have (the live pool knobs): kubelet mounts an empty
            // directory, and so does this.
            assert_eq!(v["configMap"]["optional"], true, "{v}");
            let dir = host.join("configmaps").join(&cm);
            std::fs::create_dir_all(&dir).expect("configmap dir");
            *v = json!({"name": v["name"], "hostPath": {"path": dir, "type": "Directory"}});
            continue;
        }
        let path = v["hostPath"]["path"]
            .as_str()
            .expect("only hostPath volumes")
            .to_string();
        v["hostPath"]["path"] = json!(host.join(path.trim_start_matches('/')));
    }
    spec["volumes"]
        .as_array_mut()
        .expect("volumes")
        .push(json!({"name": "sim-fabric", "hostPath": {"path": fabric.path(), "type": "File"}}));
    let init = named(&mut spec, "initContainers", "aws-vpc-cni-init");
    init["args"]
        .as_array_mut()
        .expect("args")
        .extend([json!("--primary-mac"), json!(mac)]);
    let node = named(&mut spec, "containers", "aws-node");
    node["args"].as_array_mut().expect("args").extend(
        [
            "--backend",
            "sim",
            "--sim-state",
            "/var/run/aws-node/sim-ec2.json",
            "--sim-fabric-netns",
            "/run/netns/sim-fabric",
        ]
        .map(|a| json!(a)),
    );
    node["volumeMounts"]
        .as_array_mut()
        .expect("mounts")
        .push(json!({"name": "sim-fabric", "mountPath": "/run/netns/sim-fabric"}));
    node["securityContext"]["capabilities"]["add"]
        .as_array_mut()
        .expect("caps")
        .push(json!("SYS_ADMIN"));
    // podman 4.3 applies the pod's restart policy to init containers too: under Always (a DaemonSet's) the init
    // container is restarted after it exited 0 and `kube play` fails removing it. OnFailure is what the kubelet
    // does with init containers, and keeps a failing main container restarted.
    spec["restartPolicy"] = json!("OnFailure");
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template["metadata"]["labels"]},
        "spec": spec,
    })
}

/// A played pod; stopped and removed on drop.
struct Played<'a> {
    name: String,
    node: &'a Netns,
}

impl Played<'_> {
    fn ctr(&self, container: &str) -> String {
        format!("{}-{container}", self.name)
    }

    fn exec(&self, container: &str, cmd: &[&str]) -> Output {
        let ctr = self.ctr(container);
        let mut args = vec!["exec", ctr.as_str()];
        args.extend_from_slice(cmd);
        podman(Some(self.node), &args)
    }

    fn logs(&self, host: &Path) -> String {
        let mut s = String::new();
        for c in ["aws-vpc-cni-init", "aws-node", "cni-conf"] {
            let o = podman(None, &["logs", &self.ctr(c)]);
            s.push_str(&format!("--- podman logs {c}:\n{}\n", text(&o)));
        }
        let log = host.join("var/log/aws-routed-eni/ipamd.log");
        s.push_str(&format!(
            "--- ipamd.log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ));
        s
    }
}

impl Drop for Played<'_> {
    fn drop(&mut self) {
        let _ = podman(Some(self.node), &["pod", "rm", "-f", "-t", "5", &self.name]);
    }
}

fn sysctl(node: &Netns, key: &str) -> String {
    let o = node.exec(&["cat", &format!("/proc/sys/{key}")]);
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn set_sysctl(node: &Netns, key: &str, value: &str) {
    let o = node.exec(&["sh", "-c", &format!("echo {value} > /proc/sys/{key}")]);
    assert!(o.status.success(), "{key}: {}", text(&o));
}

fn play(image: &Image, overlay: &str) {
    let node = Netns::new("awscni-imgnode-");
    let fabric = Netns::new("awscni-imgfab-");
    let host = TempDir::new();
    let h = host.path();
    // What a node has before the DaemonSet arrives (the others are DirectoryOrCreate/FileOrCreate; FileOrCreate
    // needs its parent, as on Kubernetes).
    for d in ["opt/cni/bin", "etc/cni/net.d", "var/run/aws-node", "run"] {
        std::fs::create_dir_all(h.join(d)).expect("mkdir");
    }
    let mac = launch_instance(&node, &fabric, &h.join("var/run/aws-node/sim-ec2.json"), h);
    // The values the init container must change.
    set_sysctl(&node, "net/ipv4/conf/eth0/rp_filter", "0");
    set_sysctl(&node, "net/ipv4/tcp_early_demux", "0");

    let template = rendered_pod_template(overlay);
    let name = unique("aws-node-");
    let spec = playable_pod(&template, &name, &image.tag, h, &mac, &fabric);
    let file = h.join("pod.json");
    std::fs::write(&file, spec.to_string()).expect("pod.json");
    let played = Played { name, node: &node };
    let out = podman(Some(&node), &["kube", "play", &file.display().to_string()]);
    assert!(
        out.status.success(),
        "{overlay}: podman kube play: {}\n{}",
        text(&out),
        played.logs(h)
    );

    // Ready: the manifest's readiness probe passes (polled as the kubelet would, a bit faster).
    let probe = |c: &Value, kind: &str| -> Option<Vec<String>> {
        serde_json::from_value(c[kind]["exec"]["command"].clone()).ok()
    };
    let aws_node = template["spec"]["containers"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "aws-node"))
        .expect("aws-node")
        .clone();
    let readiness = probe(&aws_node, "readinessProbe").expect("readiness probe");
    let readiness: Vec<&str> = readiness.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !played.exec("aws-node", &readiness).status.success() {
        assert!(
            Instant::now() < deadline,
            "{overlay}: aws-node never ready\n{}",
            played.logs(h)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Every probe of every container, exactly as written.
    for c in template["spec"]["containers"]
        .as_array()
        .expect("containers")
    {
        for kind in ["startupProbe", "livenessProbe", "readinessProbe"] {
            if let Some(cmd) = probe(c, kind) {
                let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
                let o = played.exec(c["name"].as_str().expect("name"), &cmd);
                assert!(
                    o.status.success(),
                    "{overlay}: {} {kind} {cmd:?}: {}",
                    c["name"],
                    text(&o)
                );
            }
        }
    }

    // The securityContexts as played: cni-conf root without any capability, aws-node with the manifest's
    // NET_ADMIN and NET_RAW (and the simulator's SYS_ADMIN).
    for (c, want) in [
        ("cni-conf", 0u64),
        ("aws-node", (1 << 12) | (1 << 13) | (1 << 21)),
    ] {
        let status = played.exec(c, &["cat", "/proc/1/status"]);
        let status = text(&status);
        let cap_eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
        assert_eq!(
            cap_eff,
            Some(want),
            "{overlay}: {c} capabilities:\n{status}"
        );
    }

    // The metrics port the manifest declares, served in the node.
    let port = aws_node["ports"][0]["containerPort"]
        .as_u64()
        .expect("metrics port");
    let metrics = node.exec(&["curl", "-sf", &format!("http://127.0.0.1:{port}/metrics")]);
    assert!(
        metrics.status.success() && !metrics.stdout.is_empty(),
        "{overlay}: metrics on {port}: {}",
        text(&metrics)
    );

    // The init container's work.
    for p in [
        "aws-cni",
        "portmap",
        "loopback",
        "host-local",
        "bandwidth",
        "tuning",
    ] {
        let f = h.join("opt/cni/bin").join(p);
        let mode = std::fs::metadata(&f)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
        assert!(
            matches!(mode, Ok(m) if m & 0o111 != 0),
            "{overlay}: {} not installed: {mode:?}",
            f.display()
        );
    }
    assert_eq!(
        sysctl(&node, "net/ipv4/conf/eth0/rp_filter"),
        "2",
        "{overlay}"
    );
    assert_eq!(sysctl(&node, "net/ipv4/tcp_early_demux"), "1", "{overlay}");

    // cni-conf's conflist, once ipamd is ready.
    let conflist_path = h.join("etc/cni/net.d/10-aws.conflist");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !conflist_path.exists() {
        assert!(
            Instant::now() < deadline,
            "{overlay}: no conflist\n{}",
            played.logs(h)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let conflist: Value = serde_json::from_slice(&std::fs::read(&conflist_path).expect("conflist"))
        .expect("conflist json");

    // A pod, added from the host side through the installed plugin and its installed conflist entry (pointed at
    // this node's socket and a log file of the test: the conflist names the real host's paths).
    let mut conf = conflist["plugins"][0].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["name"] = conflist["name"].clone();
    conf["ipamdSocket"] = json!(h.join("var/run/aws-node/ipamd.sock"));
    conf["pluginLogFile"] = json!(h.join("plugin.log"));
    let plugin = h.join("opt/cni/bin/aws-cni");
    let pod_ns = Netns::new("awscni-imgpod-");
    let spec_pod = pod(&pod_ns, "web");
    let mut added = cni_at(&plugin, &node, "ADD", &spec_pod, &conf);
    for _ in 0..50 {
        if added.success || added.code() != 11 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        added = cni_at(&plugin, &node, "ADD", &spec_pod, &conf);
    }
    assert!(
        added.success,
        "{overlay}: ADD: {}\n{}",
        added.stdout,
        played.logs(h)
    );
    let ip = integration_tests::result_ip(&added.json);
    let on_eth0 = arr(&pod_ns.ip_json(&["-4", "addr", "show", "eth0"]));
    assert!(
        on_eth0.iter().any(|l| arr(&l["addr_info"])
            .iter()
            .any(|a| a["local"] == ip.as_str())),
        "{overlay}: {on_eth0:?}"
    );
    let node_ip = arr(&node.ip_json(&["-4", "addr", "show", "eth0"]))
        .first()
        .and_then(|l| {
            arr(&l["addr_info"])
                .first()
                .and_then(|a| a["local"].as_str().map(str::to_string))
        })
        .expect("node IP");
    assert!(
        pod_ns.ping(&node_ip),
        "{overlay}: pod {ip} cannot reach the node {node_ip}"
    );

    // SNAT: on a node without kube-proxy rules ipamd picks its native nftables backend (`table ip aws-cni`,
    // written with the image's `nft`); no iptables chain of ours, in either flavour.
    let table = text(&node.exec(&["nft", "list", "table", "ip", "aws-cni"]));
    assert!(
        table.contains(&format!("snat to {node_ip}")),
        "{overlay}: {table}"
    );
    let nat = text(&node.exec(&["iptables-nft-save", "-t", "nat"]));
    let legacy = text(&node.exec(&["iptables-legacy-save", "-t", "nat"]));
    assert!(
        !nat.contains("AWS-SNAT") && !legacy.contains("AWS-SNAT"),
        "{overlay}: iptables rules as well: {nat}\n{legacy}"
    );
    // The image's netfilter tools work from inside it: nft lists the table, and iptables is there for nodes whose
    // kube-proxy uses it.
    let inside = played.exec(
        "aws-node",
        &[
            "sh",
            "-c",
            "nft list table ip aws-cni && iptables -t nat -S && readlink -f /usr/sbin/iptables",
        ],
    );
    let inside = text(&inside);
    assert!(
        inside.contains("snat to") && inside.contains("xtables-nft-multi"),
        "{overlay}: {inside}"
    );

    // DEL, then stop the pod: nothing of the pod stays, and every container stopped cleanly on SIGTERM.
    let deleted = cni_at(&plugin, &node, "DEL", &spec_pod, &conf);
    assert!(deleted.success, "{overlay}: DEL: {}", deleted.stdout);
    drop(pod_ns);
    let veth = expected_veth("default", "web");
    assert!(
        integration_tests::eventually(integration_tests::VETH_GONE_WITHIN, || node
            .link_index(&veth)
            .is_none()),
        "{overlay}: {veth} stayed"
    );
    let rules = arr(&node.ip_json(&["rule", "show"]));
    assert!(
        !rules
            .iter()
            .any(|r| r["dst"] == ip.as_str() || r["src"] == ip.as_str()),
        "{overlay}: {rules:?}"
    );
    let stop = podman(Some(&node), &["pod", "stop", "-t", "10", &played.name]);
    assert!(stop.status.success(), "{}", text(&stop));
    for c in ["aws-node", "cni-conf"] {
        let code = podman(
            None,
            &["inspect", "--format", "{{.State.ExitCode}}", &played.ctr(c)],
        );
        assert_eq!(
            text(&code).trim(),
            "0",
            "{overlay}: {c} exit code\n{}",
            played.logs(h)
        );
    }
    assert!(
        !h.join("var/run/aws-node/ipamd.sock").exists(),
        "{overlay}: ipamd left its socket"
    );
    let rm = podman(Some(&node), &["pod", "rm", &played.name]);
    assert!(rm.status.success(), "{}", text(&rm));
    let left = podman(
        None,
        &[
            "ps",
            "-a",
            "--filter",
            &format!("name={}", played.name),
            "--format",
            "{{.Names}}",
        ],
    );
    assert_eq!(text(&left).trim(), "", "{overlay}: containers left");
}

#[test]
fn the_daemonsets_pod_runs_on_a_simulated_node() {
    preflight();
    let image = Image::build();
    for overlay in ["deploy/base", "deploy/overlays/prefix-delegation"] {
        play(&image, overlay);
    }
}
