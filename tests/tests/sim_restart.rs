//! An ipamd restart is not an EC2 restart: `ipamd run --backend sim` without any sim flag keeps the simulated
//! instance's EC2 state (beside the checkpoint) and its VPC fabric (a kept named namespace) across its own
//! death, says so in its log, and the next start resumes the same instance, ENIs and addresses.

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::Duration;

use integration_tests::{arr, eventually, require_root, sh, Ipamd, Netns, TempDir};
use serde_json::Value;

/// A daemon killed on drop, so a failed assertion leaves no ipamd behind.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ipamd run --backend sim` with no sim flag, its checkpoint (and so its simulated instance) in `dir`.
fn spawn(node: &Netns, dir: &TempDir) -> Daemon {
    let _ = std::fs::remove_file(dir.path().join("ipamd.sock"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("ipamd.log"))
        .expect("log");
    Ipamd::command_without_sim_state(node, dir, "m5.large")
        .env("AWS_VPC_K8S_CNI_LOG_FORMAT", "text")
        // More addresses than the primary ENI holds: a second ENI at startup.
        .env("MINIMUM_IP_TARGET", "15")
        .env("DISABLE_METRICS", "true")
        .env("DISABLE_INTROSPECTION", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Daemon)
        .expect("spawn ipamd")
}

fn log(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.path().join("ipamd.log")).unwrap_or_default()
}

fn wait_ready(d: &mut Daemon, dir: &TempDir) {
    let ready = eventually(Duration::from_secs(30), || {
        if let Ok(Some(status)) = d.0.try_wait() {
            panic!("ipamd exited ({status}):\n{}", log(dir));
        }
        dir.path().join("ipamd.sock").exists()
    });
    assert!(ready, "ipamd not ready:\n{}", log(dir));
}

/// Every ENI EC2 holds: id -> (status, primary IP, secondary IPs).
fn enis(dir: &TempDir) -> BTreeMap<String, (String, String, Vec<String>)> {
    let b = std::fs::read(dir.path().join("sim-ec2.json")).expect("the default sim state");
    let st: Value = serde_json::from_slice(&b).expect("json");
    st["enis"]
        .as_object()
        .expect("enis")
        .iter()
        .map(|(id, e)| {
            let mut ips: Vec<String> = arr(&e["secondary_ips"])
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            ips.sort();
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (id.clone(), (s("status"), s("primary_ip"), ips))
        })
        .collect()
}

/// The node's ENI links: name -> MAC.
fn eni_links(node: &Netns) -> BTreeMap<String, String> {
    arr(&node.ip_json(&["link", "show"]))
        .iter()
        .filter(|l| l["ifname"].as_str().is_some_and(|n| n.starts_with("eth")))
        .map(|l| {
            (
                l["ifname"].as_str().unwrap_or_default().to_string(),
                l["address"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The kept fabric namespace, named in the log; deleted on drop (it outlives ipamd on purpose).
fn fabric_of(log: &str) -> Option<Netns> {
    let at = log.find("awscni-sim-")?;
    let name: String = log[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    Some(Netns { name })
}

#[test]
fn a_killed_sim_ipamd_restarts_on_the_same_instance_without_flags() {
    require_root();
    let node = Netns::new("act-simrs-");
    let dir = TempDir::new();
    let mut child = spawn(&node, &dir);
    // Registered before any assertion: the fabric namespace is removed whatever happens below.
    let mut fabric = None;
    let _ = eventually(Duration::from_secs(30), || {
        fabric = fabric_of(&log(&dir));
        fabric.is_some()
    });
    wait_ready(&mut child, &dir);
    let fabric = fabric.expect("the kept fabric namespace is named in the log");
    let first = log(&dir);
    assert!(
        first.contains("starting a fresh simulated instance"),
        "{first}"
    );
    assert!(
        !first.contains("resuming the simulated instance"),
        "{first}"
    );
    // MINIMUM_IP_TARGET=15: a second ENI is attached at startup.
    assert!(
        eventually(Duration::from_secs(30), || enis(&dir)
            .values()
            .filter(|e| e.0 == "in-use")
            .count()
            >= 2),
        "{:?}\n{}",
        enis(&dir),
        log(&dir)
    );
    let before = enis(&dir);
    let links = eni_links(&node);
    assert!(links.len() >= 2, "{links:?}");

    // kill -9: nothing is flushed, nothing is torn down.
    drop(child);
    // The VPC's wire outlived ipamd, as a real instance's NICs outlive a crashed daemon.
    assert_eq!(eni_links(&node), links, "the ENI links survive ipamd");
    assert_eq!(enis(&dir), before, "EC2's state survives ipamd");

    let mut child = spawn(&node, &dir);
    wait_ready(&mut child, &dir);
    let second = log(&dir);
    let restart = &second[first.len()..];
    assert!(
        restart.contains("resuming the simulated instance"),
        "{restart}"
    );
    assert!(
        !restart.contains("starting a fresh simulated instance"),
        "{restart}"
    );
    assert!(restart.contains(&fabric.name), "the same fabric: {restart}");
    assert_eq!(enis(&dir), before, "the same ENIs and addresses");
    assert_eq!(eni_links(&node), links, "the same links");

    let _ = sh("kill", &["-TERM", &child.0.id().to_string()]);
    let stopped = eventually(Duration::from_secs(15), || {
        matches!(child.0.try_wait(), Ok(Some(_)))
    });
    assert!(stopped, "ipamd stops on SIGTERM:\n{}", log(&dir));
    let name = fabric.name.clone();
    drop(fabric);
    assert!(
        !std::path::Path::new("/run/netns").join(name).exists(),
        "the fabric namespace is removed"
    );
}
