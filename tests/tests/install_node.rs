//! `ipamd install` against temporary directories standing in for the host: the CNI bin and conf dirs, procfs and
//! sysfs, with the built binaries and Debian's containernetworking plugins as the image's content.
//!
//! What each test could catch: a plugin written in place or visibly half-copied (a reader polls the final name
//! during the copy, and the replaced file must be a new inode), lost executable bits, a sysctl on the wrong
//! interface or with the wrong value, a bad variable that is accepted or leaves something behind, and a conflist
//! written before ipamd can serve pods (a real `ipamd run --backend sim` that is alive but full).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::{add_with_retry, bin, cni, Ipamd, Netns, PodSpec, TempDir};

const UPSTREAM: [&str; 5] = ["portmap", "loopback", "host-local", "bandwidth", "tuning"];
const PRIMARY_MAC: &str = "0e:aa:bb:cc:dd:01";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// What the image's /app holds: aws-cni, the template and cni-plugins/.
fn fake_image(root: &Path) -> PathBuf {
    let app = root.join("app");
    std::fs::create_dir_all(app.join("cni-plugins")).expect("mkdir app");
    std::fs::copy(bin("aws-cni"), app.join("aws-cni")).expect("copy aws-cni");
    for p in UPSTREAM {
        let src = Path::new("/usr/lib/cni").join(p);
        assert!(
            src.exists(),
            "{} missing: install containernetworking-plugins (scripts/deps.sh does)",
            src.display()
        );
        std::fs::copy(&src, app.join("cni-plugins").join(p)).expect("copy plugin");
    }
    std::fs::copy(
        repo_file("deploy/10-aws.conflist.tmpl"),
        app.join("10-aws.conflist.tmpl"),
    )
    .expect("copy template");
    // The egress plugin (installed when egress is on: IPv6, or ENABLE_V6_EGRESS); a stub is enough here.
    let egress = app.join("egress-cni");
    std::fs::write(&egress, "#!/bin/sh\necho egress-cni\n").expect("egress-cni");
    std::fs::set_permissions(&egress, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod egress-cni");
    app
}

/// A procfs and sysfs with the files the installer touches: `eth0` (not primary) and `ens6` (primary).
fn fake_host(root: &Path, with_ipv6: bool) {
    let w = |rel: &str, v: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, v).expect("write");
    };
    w("proc/sys/net/ipv4/conf/eth0/rp_filter", "1\n");
    w("proc/sys/net/ipv4/conf/ens6/rp_filter", "1\n");
    w("proc/sys/net/ipv4/tcp_early_demux", "0\n");
    if with_ipv6 {
        w("proc/sys/net/ipv6/conf/all/disable_ipv6", "1\n");
        w("proc/sys/net/ipv6/conf/all/forwarding", "0\n");
        w("proc/sys/net/ipv6/conf/ens6/accept_ra", "1\n");
        w("proc/sys/net/ipv6/conf/eth0/accept_ra", "1\n");
    }
    w("sys/class/net/lo/address", "00:00:00:00:00:00\n");
    w("sys/class/net/eth0/address", "0e:aa:bb:cc:dd:00\n");
    w("sys/class/net/ens6/address", &format!("{PRIMARY_MAC}\n"));
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `ipamd install` with exactly `env` (plus PATH) and the fake host under `root`.
fn install_cmd(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin("ipamd"));
    cmd.arg("install")
        .arg("--source-dir")
        .arg(root.join("app"))
        .arg("--proc-root")
        .arg(root.join("proc"))
        .arg("--sys-root")
        .arg(root.join("sys"))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOST_CNI_BIN_PATH", root.join("host/opt/cni/bin"))
        .env("HOST_CNI_CONFDIR_PATH", root.join("host/etc/cni/net.d"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn install(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    install_cmd(root, args, env)
        .output()
        .expect("run ipamd install")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A child process killed on drop (so a failing assertion leaves nothing running).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Reaped {
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.0.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    }
}

/// A minimal IMDSv2 on 127.0.0.1: a token from PUT /latest/api/token, the MAC from GET /latest/meta-data/mac
/// only with that token. Stops on drop.
struct FakeImds {
    url: String,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeImds {
    fn start(mac: &str) -> FakeImds {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop2, req2, mac) = (stop.clone(), requests.clone(), mac.to_string());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut token_ok = false;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    let lower = h.to_ascii_lowercase();
                    if lower.starts_with("x-aws-ec2-metadata-token:") && lower.contains("tok-123") {
                        token_ok = true;
                    }
                }
                let req = line.trim().to_string();
                req2.lock().expect("lock").push(req.clone());
                let (status, body) = if req.starts_with("PUT /latest/api/token") {
                    ("200 OK", "tok-123".to_string())
                } else if req.starts_with("GET /latest/meta-data/mac") && token_ok {
                    ("200 OK", mac.clone())
                } else if req.starts_with("GET ") && !token_ok {
                    ("401 Unauthorized", String::new())
                } else {
                    ("404 Not Found", String::new())
                };
                let mut s = reader.into_inner();
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeImds {
            url,
            stop,
            requests,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn init_copies_the_plugins_executable_and_atomically_over_old_ones() {
    let root = TempDir::new();
    let app = fake_image(root.path());
    fake_host(root.path(), false);
    let bin_dir = root.path().join("host/opt/cni/bin");
    std::fs::create_dir_all(&bin_dir).expect("mkdir bin");
    // An older aws-cni is there (a node upgraded in place).
    let old = b"#!/bin/sh\necho old aws-cni\n".to_vec();
    std::fs::write(bin_dir.join("aws-cni"), &old).expect("old");
    std::fs::set_permissions(
        bin_dir.join("aws-cni"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let old_inode = std::fs::metadata(bin_dir.join("aws-cni"))
        .expect("meta")
        .ino();
    let new = std::fs::read(app.join("aws-cni")).expect("new");
    assert!(new.len() > 1_000_000, "aws-cni is a real binary");

    // A reader that looks at the final name as fast as it can while the installer runs.
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, target, old2, new2) = (
        stop.clone(),
        bin_dir.join("aws-cni"),
        old.clone(),
        new.clone(),
    );
    let reader = std::thread::spawn(move || {
        let (mut seen, mut bad) = (0usize, Vec::new());
        while !stop2.load(Ordering::SeqCst) {
            match std::fs::read(&target) {
                Ok(b) if b == old2 || b == new2 => seen += 1,
                Ok(b) => bad.push(b.len()),
                Err(e) => bad.push(usize::MAX - e.raw_os_error().unwrap_or(0) as usize),
            }
        }
        (seen, bad)
    });
    let out = install(
        root.path(),
        &["--phase", "init", "--primary-mac", PRIMARY_MAC],
        &[],
    );
    stop.store(true, Ordering::SeqCst);
    let (seen, bad) = reader.join().expect("reader");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(seen > 0, "the reader never ran");
    assert!(
        bad.is_empty(),
        "the reader saw a partial or missing aws-cni (lengths {bad:?}; whole is {})",
        new.len()
    );

    // Replaced by rename (a new inode), not rewritten in place; same bytes and mode as the image's.
    let meta = std::fs::metadata(bin_dir.join("aws-cni")).expect("meta");
    assert_ne!(meta.ino(), old_inode, "aws-cni was written in place");
    for (name, src) in std::iter::once(("aws-cni".to_string(), app.join("aws-cni"))).chain(
        UPSTREAM
            .iter()
            .map(|p| (p.to_string(), app.join("cni-plugins").join(p))),
    ) {
        let dst = bin_dir.join(&name);
        let m = std::fs::metadata(&dst).unwrap_or_else(|e| panic!("{name}: {e}"));
        let src_mode = std::fs::metadata(&src).expect("src").permissions().mode() & 0o7777;
        assert_eq!(m.permissions().mode() & 0o7777, src_mode, "{name} mode");
        assert_ne!(m.permissions().mode() & 0o111, 0, "{name} not executable");
        assert_eq!(
            std::fs::read(&dst).expect("dst"),
            std::fs::read(&src).expect("src"),
            "{name} content"
        );
    }
    let mut expected: Vec<String> = UPSTREAM.iter().map(|s| s.to_string()).collect();
    expected.push("aws-cni".into());
    expected.sort();
    assert_eq!(
        dir_names(&bin_dir),
        expected,
        "no temporary file left behind"
    );

    // The installed plugin runs.
    let v = Command::new(bin_dir.join("aws-cni"))
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .expect("run installed aws-cni");
    let json: serde_json::Value = serde_json::from_slice(&v.stdout).expect("VERSION json");
    assert!(json["supportedVersions"].as_array().is_some(), "{json}");

    // Phase init never writes the conflist, and a second run is harmless.
    assert!(!root
        .path()
        .join("host/etc/cni/net.d/10-aws.conflist")
        .exists());
    let again = install(
        root.path(),
        &["--phase", "init", "--primary-mac", PRIMARY_MAC],
        &[],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(dir_names(&bin_dir), expected);
}

#[test]
fn init_sets_the_anchors_sysctls_on_the_interface_with_the_imds_mac() {
    let root = TempDir::new();
    fake_image(root.path());
    fake_host(root.path(), true);
    // IMDS answers in upper case; the match is case-insensitive.
    let imds = FakeImds::start(&PRIMARY_MAC.to_ascii_uppercase());
    let out = install(
        root.path(),
        &["--phase", "init"],
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let reqs = imds.requests.lock().expect("lock").clone();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("GET /latest/meta-data/mac")),
        "{reqs:?}"
    );
    let p = root.path();
    assert_eq!(read(p, "proc/sys/net/ipv4/conf/ens6/rp_filter"), "2\n");
    assert_eq!(
        read(p, "proc/sys/net/ipv4/conf/eth0/rp_filter"),
        "1\n",
        "only the primary"
    );
    assert_eq!(read(p, "proc/sys/net/ipv4/tcp_early_demux"), "1\n");
    // IPv6 off: the IPv6 sysctls are left alone.
    assert_eq!(read(p, "proc/sys/net/ipv6/conf/all/disable_ipv6"), "1\n");
    assert_eq!(read(p, "proc/sys/net/ipv6/conf/all/forwarding"), "0\n");
    assert_eq!(read(p, "proc/sys/net/ipv6/conf/ens6/accept_ra"), "1\n");
    // No egress on an IPv4 node without ENABLE_V6_EGRESS: egress-cni is not installed.
    assert!(!p.join("host/opt/cni/bin/egress-cni").exists());

    let out = install(
        p,
        &["--phase", "init", "--primary-mac", PRIMARY_MAC],
        &[("ENABLE_IPv6", "true"), ("DISABLE_TCP_EARLY_DEMUX", "true")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // IPv6 node: its pods' IPv4 egress plugin is installed with the others.
    assert!(p.join("host/opt/cni/bin/egress-cni").exists());
    assert_eq!(read(p, "proc/sys/net/ipv4/tcp_early_demux"), "0\n");
    assert_eq!(read(p, "proc/sys/net/ipv6/conf/all/disable_ipv6"), "0\n");
    assert_eq!(read(p, "proc/sys/net/ipv6/conf/all/forwarding"), "1\n");
    assert_eq!(read(p, "proc/sys/net/ipv6/conf/ens6/accept_ra"), "2\n");
    assert_eq!(read(p, "proc/sys/net/ipv6/conf/eth0/accept_ra"), "1\n");
}

#[test]
fn sysctl_and_interface_failures_are_explained() {
    let root = TempDir::new();
    fake_image(root.path());
    fake_host(root.path(), false);
    // IPv6 asked for, but this "kernel" has no IPv6 sysctls: refuse, naming the key.
    let out = install(
        root.path(),
        &["--phase", "init", "--primary-mac", PRIMARY_MAC],
        &[("ENABLE_IPv6", "true")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("net/ipv6/conf/all/disable_ipv6"),
        "{}",
        stderr(&out)
    );
    // No interface has the MAC: the error lists what was seen.
    let out = install(
        root.path(),
        &["--phase", "init", "--primary-mac", "0e:00:00:00:00:99"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains("0e:00:00:00:00:99") && e.contains("ens6="),
        "{e}"
    );
    assert_eq!(
        read(root.path(), "proc/sys/net/ipv4/conf/ens6/rp_filter"),
        "1\n"
    );
}

#[test]
fn bad_variables_are_refused_by_name_before_anything_is_touched() {
    let root = TempDir::new();
    fake_image(root.path());
    fake_host(root.path(), true);
    let sock = root.path().join("no-ipamd.sock");
    let sock = sock.to_str().expect("utf-8");
    for (var, value) in [
        ("AWS_VPC_K8S_CNI_VETHPREFIX", "toolong"),
        ("AWS_VPC_K8S_CNI_VETHPREFIX", "vlan"),
        ("POD_MTU", "65536"),
        ("AWS_VPC_ENI_MTU", "abc"),
        ("POD_SECURITY_GROUP_ENFORCING_MODE", "permissive"),
        ("AWS_VPC_K8S_PLUGIN_LOG_FILE", "stdout"),
        ("AWS_VPC_K8S_PLUGIN_LOG_LEVEL", "verbose"),
        ("DISABLE_TCP_EARLY_DEMUX", "sometimes"),
        ("ENABLE_IPv6", "yes please"),
        ("ENABLE_BANDWIDTH_PLUGIN", "2"),
        ("HOST_CNI_BIN_PATH", "relative/bin"),
        ("HOST_CNI_CONFDIR_PATH", "relative/net.d"),
    ] {
        let out = install(
            root.path(),
            &[
                "--primary-mac",
                PRIMARY_MAC,
                "--socket",
                sock,
                "--ready-timeout",
                "1s",
            ],
            &[(var, value)],
        );
        assert_eq!(out.status.code(), Some(1), "{var}={value} accepted");
        let e = stderr(&out);
        assert!(
            e.contains(var) && e.contains(value),
            "{var}={value}: the error must name both: {e}"
        );
        assert!(
            !root.path().join("host").exists(),
            "{var}={value}: something was written to the host"
        );
        assert_eq!(
            read(root.path(), "proc/sys/net/ipv4/conf/ens6/rp_filter"),
            "1\n"
        );
        assert_eq!(
            read(root.path(), "proc/sys/net/ipv4/tcp_early_demux"),
            "0\n"
        );
    }
}

#[test]
fn conflist_waits_until_ipamd_is_ready_and_then_lands_whole() {
    // t3.nano with one ENI holds one pod address: with a pod on it ipamd is alive but not ready.
    let ipamd = Ipamd::start("t3.nano", &[("MAX_ENI", "1"), ("IP_COOLDOWN_PERIOD", "0")]);
    let root = TempDir::new();
    fake_image(root.path());
    let pod_ns = Netns::new("act-pod-");
    let pod = PodSpec {
        container_id: "ctr-install".into(),
        namespace: "default".into(),
        name: "filler".into(),
        netns: pod_ns.path(),
        ifname: "eth0".into(),
    };
    let conf = ipamd.conf("1.0.0");
    let add = add_with_retry(&ipamd.node, &pod, &conf);
    assert!(add.success, "{}", add.stdout);
    let sock = ipamd.socket();
    let health = Command::new(bin("ipamd"))
        .args(["health", "--ready", "--socket"])
        .arg(&sock)
        .output()
        .expect("health");
    assert_eq!(
        health.status.code(),
        Some(4),
        "precondition: alive, not ready"
    );

    let conf_dir = root.path().join("host/etc/cni/net.d");
    let mut child = Reaped(
        install_cmd(
            root.path(),
            &[
                "--phase",
                "conflist",
                "--socket",
                sock.to_str().expect("utf-8"),
                "--poll-interval",
                "200ms",
                "--ready-timeout",
                "60s",
            ],
            &[],
        )
        .spawn()
        .expect("spawn install"),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.0.try_wait().expect("try_wait").is_none(),
        "install exited while ipamd was not ready: {}",
        child.stderr()
    );
    assert!(
        dir_names(&conf_dir).is_empty(),
        "written too early: {:?}",
        dir_names(&conf_dir)
    );

    // Free the address: ipamd turns ready, and the conflist appears.
    let del = cni(&ipamd.node, "DEL", &pod, &conf);
    assert!(del.success, "{}", del.stdout);
    let status = child.wait_exit(Duration::from_secs(30));
    let err = child.stderr();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {err}\n{}",
        ipamd.log()
    );
    assert_eq!(dir_names(&conf_dir), ["10-aws.conflist"]);
    let written = std::fs::read(conf_dir.join("10-aws.conflist")).expect("conflist");
    let expected = std::fs::read(repo_file("deploy/10-aws.conflist")).expect("deploy conflist");
    assert_eq!(
        written, expected,
        "the default rendering is deploy/10-aws.conflist"
    );
    let mode = std::fs::metadata(conf_dir.join("10-aws.conflist"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    assert!(err.contains("not ready"), "progress was reported: {err}");
}

#[test]
fn conflist_is_never_written_if_ipamd_does_not_come_up() {
    let root = TempDir::new();
    fake_image(root.path());
    let sock = root.path().join("absent.sock");
    let started = Instant::now();
    let out = install(
        root.path(),
        &[
            "--phase",
            "conflist",
            "--socket",
            sock.to_str().expect("utf-8"),
            "--poll-interval",
            "100ms",
            "--ready-timeout",
            "1500ms",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(15));
    let e = stderr(&out);
    assert!(
        e.contains("not ready") && e.contains("conflist was not written"),
        "{e}"
    );
    assert!(!root
        .path()
        .join("host/etc/cni/net.d/10-aws.conflist")
        .exists());
}

#[test]
fn phase_all_with_stay_installs_everything_then_runs_until_sigterm() {
    let ipamd = Ipamd::start("m5.large", &[]);
    let root = TempDir::new();
    fake_image(root.path());
    fake_host(root.path(), false);
    let mut child = Reaped(
        install_cmd(
            root.path(),
            &[
                "--primary-mac",
                PRIMARY_MAC,
                "--socket",
                ipamd.socket().to_str().expect("utf-8"),
                "--poll-interval",
                "200ms",
                "--stay",
            ],
            &[
                ("POD_MTU", "1500"),
                ("AWS_VPC_K8S_CNI_VETHPREFIX", "pod"),
                ("ENABLE_BANDWIDTH_PLUGIN", "true"),
            ],
        )
        .spawn()
        .expect("spawn"),
    );
    let conflist = root.path().join("host/etc/cni/net.d/10-aws.conflist");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !conflist.exists() {
        if let Ok(Some(s)) = child.0.try_wait() {
            panic!("install exited ({s}): {}", child.stderr());
        }
        assert!(Instant::now() < deadline, "no conflist after 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&conflist).expect("read")).expect("json");
    assert_eq!(v["plugins"][0]["mtu"], "1500");
    assert_eq!(v["plugins"][0]["vethPrefix"], "pod");
    assert_eq!(v["plugins"][2]["type"], "bandwidth");
    assert!(root.path().join("host/opt/cni/bin/aws-cni").exists());
    assert_eq!(
        read(root.path(), "proc/sys/net/ipv4/conf/ens6/rp_filter"),
        "2\n"
    );
    // --stay: still running after the work is done; SIGTERM ends it cleanly.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.0.try_wait().expect("try_wait").is_none(),
        "exited without --stay semantics"
    );
    let kill = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = child.wait_exit(Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}
