//! A real container runtime drives the plugin: podman 4.3 with its CNI backend runs a container on the aws-cni
//! network of a simulated node; the container gets its address from ipamd, reaches the node, and the runtime's
//! DEL on `--rm` leaves nothing behind.
//!
//! podman runs inside the node's network namespace (entered with `nsenter --net`, which, unlike
//! `ip netns exec`, leaves /sys and its cgroup mounts alone), with its storage and configuration in a temporary
//! directory: the machine's own podman setup is not touched. Setup: runc instead of crun, explicit ulimits, cgroupfs, a busybox image imported from Debian's busybox-static.

use std::path::Path;
use std::process::Command;

use integration_tests::{arr, bin, Ipamd, TempDir};

struct Podman {
    dir: TempDir,
    node_path: String,
}

impl Podman {
    fn new(ipamd: &Ipamd) -> Podman {
        let dir = TempDir::new();
        let d = dir.path();
        for sub in ["bin", "net.d", "rootfs/bin", "graph", "run"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        std::os::unix::fs::symlink(bin("aws-cni"), d.join("bin/aws-cni")).expect("symlink");
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n\
                 network_config_dir = \"{}\"\n",
                d.join("bin").display(),
                d.join("net.d").display()
            ),
        )
        .expect("containers.conf");
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("graph").display(),
                d.join("run").display()
            ),
        )
        .expect("storage.conf");
        // Our conflist, pointed at the test's ipamd.
        let list = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "aws-cni",
            "plugins": [
                {"type": "aws-cni", "name": "aws-cni", "mtu": "9001", "ipamdSocket": ipamd.socket(),
                 "pluginLogFile": ipamd.dir.path().join("plugin.log")},
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
            ]
        });
        std::fs::write(d.join("net.d/10-aws.conflist"), list.to_string()).expect("conflist");
        // A busybox image, from Debian's busybox-static.
        std::fs::copy("/bin/busybox", d.join("rootfs/bin/busybox"))
            .expect("busybox-static installed");
        for applet in ["sh", "ip", "ping"] {
            std::os::unix::fs::symlink("busybox", d.join("rootfs/bin").join(applet))
                .expect("applet");
        }
        let p = Podman {
            dir,
            node_path: ipamd.node.path(),
        };
        let tar = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C {} -c . | podman import - local/busybox:awscni-test",
                p.dir.path().join("rootfs").display()
            ))
            .envs(p.env())
            .output()
            .expect("podman import");
        assert!(tar.status.success(), "podman import: {tar:?}");
        p
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "CONTAINERS_CONF".into(),
                self.dir
                    .path()
                    .join("containers.conf")
                    .display()
                    .to_string(),
            ),
            (
                "CONTAINERS_STORAGE_CONF".into(),
                self.dir.path().join("storage.conf").display().to_string(),
            ),
        ]
    }

    /// `podman ARGS` inside the node's network namespace.
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.node_path))
            .arg("podman")
            .args(args)
            .envs(self.env())
            .output()
            .expect("podman")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Removes every container, image and mount of this private storage before the directory goes.
        let _ = self.run(&["rm", "-af"]);
        let _ = self.run(&["system", "reset", "-f"]);
    }
}

#[test]
fn podman_runs_a_container_that_gets_its_address_from_ipamd() {
    for tool in [
        "/usr/bin/podman",
        "/usr/sbin/runc",
        "/bin/busybox",
        "/usr/bin/nsenter",
    ] {
        assert!(
            Path::new(tool).exists(),
            "{tool} missing: run scripts/deps.sh"
        );
    }
    let ipamd = Ipamd::start(
        "m5.large",
        &[("WARM_IP_TARGET", "1"), ("MINIMUM_IP_TARGET", "10")],
    );
    let before = ipamd.node.snapshot();
    let podman = Podman::new(&ipamd);
    let node_ip = ipamd.node_ip();
    let out = podman.run(&[
        "run",
        "--rm",
        "--network",
        "aws-cni",
        "local/busybox:awscni-test",
        "sh",
        "-c",
        &format!("ip -4 -o addr show eth0; ip route; ping -c 1 -W 2 {node_ip}"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "podman run failed:\n{stdout}\n{stderr}\nplugin log:\n{}",
        std::fs::read_to_string(ipamd.dir.path().join("plugin.log")).unwrap_or_default()
    );
    // The container's eth0 has a /32 from the simulated subnet and the anchor's routes.
    let addr_line = stdout
        .lines()
        .find(|l| l.contains("eth0") && l.contains("inet "))
        .unwrap_or_else(|| panic!("no IPv4 on eth0:\n{stdout}"));
    assert!(addr_line.contains("inet 10.0."), "{addr_line}");
    assert!(addr_line.contains("/32"), "{addr_line}");
    assert!(
        stdout.contains("default via 169.254.1.1 dev eth0"),
        "{stdout}"
    );
    assert!(stdout.contains("1 packets received"), "{stdout}");
    // ipamd saw the ADD for this container and podman's DEL released it again.
    let log = std::fs::read_to_string(ipamd.dir.path().join("plugin.log")).unwrap_or_default();
    assert!(
        log.contains("ADD done") && log.contains("DEL done"),
        "{log}"
    );
    assert_eq!(
        ipamd.node.settled_snapshot(&before),
        before,
        "podman's DEL left state behind"
    );
    let rules = arr(&ipamd.node.ip_json(&["rule", "show"]));
    assert!(!rules.iter().any(|r| r["priority"] == 512));
}
