//! Pod sandboxes as kubelet asks for them: RunPodSandbox, StopPodSandbox and RemovePodSandbox through
//! containerd's CRI, ours against ptp + host-local with the same containerd binary in the same run.
//!
//! Two `containerd` instances (the system's binary, Debian's 1.6), each with its own root, state, socket, CNI
//! configuration directory and CNI binary directory under the run's scratch directory, both started inside the
//! benchmark's node namespace (so the CNI plugins they exec program that namespace, not the machine's). One's
//! CNI configuration is our plugin (the shipped conflist's settings, the running ipamd's socket), the other's
//! ptp + host-local; both directories also hold `loopback`, which containerd's CRI runs for every sandbox.
//!
//! The sandbox image is built here, without a registry: a one-layer image whose only file is a static busybox
//! as `/bin/sleep` (its entrypoint sleeps), written as a docker-archive tarball (manifest, config, layer) and
//! imported into each containerd with `ctr images import`. containerd kills a sandbox's process with SIGKILL on
//! StopPodSandbox, so the sleeping process needs no signal handling.
//!
//! The client is a small tonic client of the CRI v1 API (`proto/cri.proto`, the subset of `k8s.io/cri-api` it
//! calls). Each call is timed from request to response as kubelet sees it: RunPodSandbox includes the sandbox
//! container's creation and start and the CNI ADD; StopPodSandbox the kill and the CNI DEL; RemovePodSandbox
//! containerd's second DEL (without a netns) and the cleanup.
//!
//! Cleanup on drop, in order: every sandbox still known is stopped and removed, containerd gets SIGTERM (then
//! SIGKILL), any shim still serving this containerd's socket is killed by PID, mounts left under the scratch
//! directory are detached, and the directory goes with the run's scratch directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::Rng;

use super::{Binaries, Plugin};
use crate::error::{check_interrupt, BenchError};

/// The generated CRI client and messages.
pub mod api {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("runtime.v1");
}

use api::runtime_service_client::RuntimeServiceClient;

/// The sandbox image's name (imported, never pulled).
pub const PAUSE_IMAGE: &str = "localhost/aws-cni-bench/pause:1";

/// Whether this machine can run the benchmark: `containerd`, `ctr`, `runc` and a static busybox.
pub fn missing_tools() -> Vec<&'static str> {
    let mut out = Vec::new();
    for (tool, path) in [
        ("containerd", "/usr/bin/containerd"),
        ("ctr", "/usr/bin/ctr"),
        (
            "containerd-shim-runc-v2",
            "/usr/bin/containerd-shim-runc-v2",
        ),
        ("runc", "/usr/sbin/runc"),
        ("busybox (static)", "/bin/busybox"),
    ] {
        if !Path::new(path).is_file() {
            out.push(tool);
        }
    }
    out
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<String, BenchError> {
    let out = cmd.output().map_err(BenchError::io(what.to_string()))?;
    if !out.status.success() {
        return Err(BenchError::Other(format!(
            "{what}: {} {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha256_of(path: &Path) -> Result<String, BenchError> {
    let out = run_tool(Command::new("sha256sum").arg(path), "sha256sum")?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| BenchError::Other("sha256sum printed nothing".into()))
}

/// Builds the sandbox image as a docker-archive tarball in `dir`; returns its path.
pub fn pause_image(dir: &Path) -> Result<PathBuf, BenchError> {
    let root = dir.join("pause-rootfs");
    std::fs::create_dir_all(root.join("bin")).map_err(BenchError::io("pause rootfs"))?;
    std::fs::copy("/bin/busybox", root.join("bin/sleep"))
        .map_err(BenchError::io("copying busybox"))?;
    let layer = dir.join("layer.tar");
    run_tool(
        Command::new("tar")
            .args(["--owner=0", "--group=0", "--numeric-owner", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&layer)
            .arg("."),
        "tar of the pause layer",
    )?;
    let diff_id = sha256_of(&layer)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": ["/bin/sleep", "2147483647"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
    });
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config.to_string()).map_err(BenchError::io("image config"))?;
    let config_name = format!("{}.json", sha256_of(&config_path)?);
    std::fs::rename(&config_path, dir.join(&config_name))
        .map_err(BenchError::io("image config"))?;
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [PAUSE_IMAGE],
        "Layers": ["layer.tar"],
    }]);
    std::fs::write(dir.join("manifest.json"), manifest.to_string())
        .map_err(BenchError::io("image manifest"))?;
    let image = dir.join("pause.tar");
    run_tool(
        Command::new("tar")
            .arg("-C")
            .arg(dir)
            .arg("-cf")
            .arg(&image)
            .args(["manifest.json", &config_name, "layer.tar"]),
        "tar of the pause image",
    )?;
    Ok(image)
}

/// One containerd with its own directories; stopped and cleaned on drop.
#[derive(Debug)]
pub struct Containerd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Containerd {
    /// Writes the configuration, starts containerd in `node_ns`, waits for its socket and imports the image.
    /// `plugins` are `(name in the CNI bin dir, binary)`; `conflist` is the CNI configuration.
    pub fn start(
        dir: &Path,
        node_ns: &Path,
        plugins: &[(&str, PathBuf)],
        conflist: &serde_json::Value,
        image: &Path,
    ) -> Result<Containerd, BenchError> {
        let bin = dir.join("cni-bin");
        let conf = dir.join("cni-conf");
        for d in [&bin, &conf] {
            std::fs::create_dir_all(d).map_err(BenchError::io(format!("mkdir {}", d.display())))?;
        }
        for (name, target) in plugins {
            let target = std::fs::canonicalize(target)
                .map_err(BenchError::io(format!("finding {}", target.display())))?;
            std::os::unix::fs::symlink(&target, bin.join(name))
                .map_err(BenchError::io(format!("linking {name}")))?;
        }
        std::fs::write(conf.join("10-bench.conflist"), conflist.to_string())
            .map_err(BenchError::io("CNI conflist"))?;
        let socket = dir.join("containerd.sock");
        let toml = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  restrict_oom_score_adj = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Sandbox network namespaces under this run's state directory, not the machine's /run/netns: a run that
  # dies before RemovePodSandbox leaves them where stop()'s unmount-under-the-run-directory pass finds them.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            socket = socket.display(),
            dir = dir.display(),
            image = PAUSE_IMAGE,
            bin = bin.display(),
            conf = conf.display(),
        );
        let config = dir.join("config.toml");
        std::fs::write(&config, toml).map_err(BenchError::io("containerd config"))?;
        let log = dir.join("containerd.log");
        let logf = std::fs::File::create(&log).map_err(BenchError::io("containerd log"))?;
        let mut cmd = Command::new("/usr/bin/containerd");
        cmd.arg("--config")
            .arg(&config)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf);
        let child = datapath::in_netns(node_ns, || {
            Ok(cmd.spawn().map_err(BenchError::io("spawning containerd")))
        })??;
        let mut me = Containerd {
            child: Some(child),
            dir: dir.to_path_buf(),
            socket,
            log,
        };
        let deadline = crate::time::now() + Duration::from_secs(30);
        while !me.socket.exists() {
            check_interrupt()?;
            if let Some(Ok(Some(status))) = me.child.as_mut().map(Child::try_wait) {
                return Err(BenchError::Other(format!(
                    "containerd exited ({status}): {}",
                    me.log_tail()
                )));
            }
            if crate::time::now() > deadline {
                return Err(BenchError::Other(format!(
                    "containerd: no socket after 30 s: {}",
                    me.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        run_tool(
            Command::new("/usr/bin/ctr")
                .arg("--address")
                .arg(&me.socket)
                .args(["-n", "k8s.io", "images", "import"])
                .arg(image),
            "ctr images import",
        )?;
        Ok(me)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// SIGTERM (SIGKILL after 10 s), then this instance's leftover shims, then its mounts.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = crate::time::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if crate::time::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        // Shims name the containerd socket they serve on their command line; ours is unique to this run.
        let needle = self.socket.display().to_string();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if text.contains("containerd-shim") && text.contains(&needle) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        // Rootfs and shm mounts of sandboxes that were not removed: detach them so the directory can go.
        let prefix = self.dir.display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Timed CRI calls of one plugin.
#[derive(Debug, Default, Clone)]
pub struct CriSamples {
    pub run: Vec<Duration>,
    pub stop: Vec<Duration>,
    pub remove: Vec<Duration>,
}

async fn client(
    socket: &Path,
) -> Result<RuntimeServiceClient<tonic::transport::Channel>, BenchError> {
    let ch = aws_cni_proto::unix_channel(socket, Duration::from_secs(60))
        .await
        .map_err(|e| {
            BenchError::Other(format!("CRI connect: {}", aws_cni_proto::error_chain(&e)))
        })?;
    Ok(RuntimeServiceClient::new(ch))
}

fn sandbox_config(name: &str, uid: &str) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.to_string(),
            uid: uid.to_string(),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        linux: Some(api::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// One pod's three calls against `c`; returns their times. A failed call is an error naming the plugin.
async fn one_pod(
    c: &mut RuntimeServiceClient<tonic::transport::Channel>,
    plugin: Plugin,
    name: &str,
) -> Result<[Duration; 3], BenchError> {
    let fail = |call: &str, s: tonic::Status| {
        BenchError::Other(format!(
            "{} {call} of {name}: {}",
            plugin.label(),
            s.message()
        ))
    };
    let uid = format!("uid-{name}");
    let t0 = crate::time::now();
    let id = c
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(sandbox_config(name, &uid)),
            runtime_handler: String::new(),
        })
        .await
        .map_err(|s| fail("RunPodSandbox", s))?
        .into_inner()
        .pod_sandbox_id;
    let run = crate::time::since(t0);
    let t1 = crate::time::now();
    let stopped = c
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await;
    let stop = crate::time::since(t1);
    let t2 = crate::time::now();
    let removed = c
        .remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await;
    let remove = crate::time::since(t2);
    stopped.map_err(|s| fail("StopPodSandbox", s))?;
    removed.map_err(|s| fail("RemovePodSandbox", s))?;
    Ok([run, stop, remove])
}

/// Settings of the run.
#[derive(Debug, Clone, Copy)]
pub struct CriParams {
    pub n: usize,
    pub warmup: usize,
}

/// Starts both containerds and runs `n` timed pods per plugin (after `warmup` untimed), interleaved in random
/// order. Returns `(ours, peer, containerd version)`.
pub fn run(
    bins: &Binaries,
    node_ns: &Path,
    dir: &Path,
    ours_conf: &serde_json::Value,
    peer_conf: &serde_json::Value,
    p: CriParams,
    rng: &mut impl Rng,
) -> Result<(CriSamples, CriSamples, String), BenchError> {
    let image = pause_image(&dir.join("image"))?;
    let conflist = |conf: &serde_json::Value| {
        let mut plugin = conf.clone();
        let name = plugin["name"].clone();
        let version = plugin["cniVersion"].clone();
        if let Some(o) = plugin.as_object_mut() {
            o.remove("name");
            o.remove("cniVersion");
        }
        serde_json::json!({ "cniVersion": version, "name": name, "plugins": [plugin] })
    };
    let loopback = bins.peer_dir.join("loopback");
    let ours = Containerd::start(
        &dir.join("ours"),
        node_ns,
        &[
            ("aws-cni", bins.aws_cni.clone()),
            ("loopback", loopback.clone()),
        ],
        &conflist(ours_conf),
        &image,
    )?;
    let peer = Containerd::start(
        &dir.join("peer"),
        node_ns,
        &[
            ("ptp", bins.peer_dir.join("ptp")),
            ("host-local", bins.peer_dir.join("host-local")),
            ("loopback", loopback),
        ],
        &conflist(peer_conf),
        &image,
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("tokio runtime"))?;
    let res = rt.block_on(async {
        let mut co = client(&ours.socket).await?;
        let mut cp = client(&peer.socket).await?;
        let version = co
            .version(api::VersionRequest {
                version: "v1".into(),
            })
            .await
            .map(|r| {
                let v = r.into_inner();
                format!("{} {}", v.runtime_name, v.runtime_version)
            })
            .unwrap_or_else(|_| "containerd".into());
        let mut s_ours = CriSamples::default();
        let mut s_peer = CriSamples::default();
        for i in 0..(p.warmup + p.n) {
            check_interrupt()?;
            let order = if rng.random::<bool>() {
                [Plugin::Ours, Plugin::Peer]
            } else {
                [Plugin::Peer, Plugin::Ours]
            };
            for plugin in order {
                let (c, s, tag) = match plugin {
                    Plugin::Ours => (&mut co, &mut s_ours, "o"),
                    Plugin::Peer => (&mut cp, &mut s_peer, "p"),
                };
                let name = format!("cri-{tag}-{}-{i}", std::process::id());
                let [r, st, rm] = one_pod(c, plugin, &name).await?;
                if i >= p.warmup {
                    s.run.push(r);
                    s.stop.push(st);
                    s.remove.push(rm);
                }
            }
        }
        Ok::<_, BenchError>((s_ours, s_peer, version))
    });
    drop(ours);
    drop(peer);
    res
}
