//! Prefix delegation on a fragmented subnet, through the built binaries: `ipamd run --backend sim` with
//! `ENABLE_PREFIX_DELEGATION=true`, the real `aws-cni` in namespaces. The simulator's fragment file
//! (`sim-ec2.fragment` beside its state) makes every /28 request answer `InsufficientCidrBlocks` while single
//! addresses stay free; ipamd must keep serving pods with secondary IPs, say so (`ipamd status`, metrics), keep
//! the mixed ENI across a restart, and go back to prefixes once /28s are free again (m5.xlarge: 4 ENIs of 14
//! slots, room for both).

use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::{
    add_with_retry, arr, cni, eventually, pod, result_ip, AddedPod, Ipamd, Netns,
};
use serde_json::Value;

const ENV: &[(&str, &str)] = &[
    ("ENABLE_PREFIX_DELEGATION", "true"),
    ("WARM_PREFIX_TARGET", "1"),
    ("AWS_CNI_POOL_RELEASE_DELAY", "0"),
];

/// The node's ENIs in EC2 (the simulator's state): (secondary IPs, prefixes) of each attached one.
fn enis(ipamd: &Ipamd) -> Vec<(Vec<String>, Vec<String>)> {
    let st = ipamd.sim_state();
    st["enis"]
        .as_object()
        .expect("enis")
        .values()
        .filter(|e| e["status"] == "in-use")
        .map(|e| {
            let s = |v: &Value| -> Vec<String> {
                arr(v)
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            };
            (s(&e["secondary_ips"]), s(&e["ipv4_prefixes"]))
        })
        .collect()
}

fn add_pods(ipamd: &Ipamd, conf: &Value, from: usize, to: usize) -> Vec<AddedPod> {
    (from..to)
        .map(|i| {
            let ns = Netns::new("act-pfb-");
            let p = pod(&ns, &format!("pfb{i}"));
            let out = add_with_retry(&ipamd.node, &p, conf);
            assert!(
                out.success,
                "ADD {i} on a fragmented subnet: {}\n{}",
                out.stdout,
                ipamd.log()
            );
            (ns, p, out)
        })
        .collect()
}

#[test]
fn a_fragmented_subnet_falls_back_to_secondary_ips_survives_a_restart_and_returns_to_prefixes() {
    let fabric = Netns::new("act-pfbf-");
    let fabric_path = fabric.path();
    let mut ipamd = Ipamd::start_with_args(
        "m5.xlarge",
        ENV,
        &["--sim-fabric-netns", fabric_path.as_str()],
    );
    let conf = ipamd.conf("1.0.0");
    let st = ipamd.status_json();
    assert_eq!(st["addressMode"], "prefix", "{st}");
    // Other tenants fragment the subnet: no aligned free /28 is left, single addresses are.
    let fragment = ipamd.dir.path().join("sim-ec2.fragment");
    std::fs::write(&fragment, b"").expect("fragment the subnet");

    // 24 pods: 16 on the first /28, the rest (and the warm target) on secondary IPs.
    let mut pods = add_pods(&ipamd, &conf, 0, 24);
    let st = ipamd.status_json();
    assert_eq!(st["addressMode"], "prefix-fallback-secondary-ip", "{st}");
    let scrape = ipamd.node.metrics();
    assert!(
        scrape.contains("awscni_ipv4_address_mode{mode=\"prefix-fallback-secondary-ip\"} 1"),
        "{scrape}"
    );
    let mixed = enis(&ipamd);
    assert!(
        mixed
            .iter()
            .any(|(ips, pfx)| !ips.is_empty() && !pfx.is_empty()),
        "an ENI with both a prefix and secondary IPs: {mixed:?}"
    );
    let log = ipamd.log();
    assert!(
        log.contains("InsufficientCidrBlocks") && log.contains("falling back to secondary IPs"),
        "{log}"
    );
    let ips: Vec<String> = pods.iter().map(|(_, _, o)| result_ip(&o.json)).collect();

    // The subnet heals while ipamd restarts: the same instance, the same mixed ENIs, every pod keeps its
    // address, and growth takes /28s again (a restarted daemon tries prefixes first; the running one does every
    // 120 s, see the engine's virtual-time tests).
    assert!(ipamd.stop(), "SIGTERM exit:\n{}", ipamd.log());
    std::fs::remove_file(&fragment).expect("lift the fragmentation");
    let _ = std::fs::remove_file(ipamd.socket());
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(ipamd.dir.path().join("ipamd.log"))
        .expect("log");
    let mut cmd = Ipamd::command(&ipamd.node, &ipamd.dir, "m5.xlarge");
    cmd.args(["--sim-fabric-netns", fabric_path.as_str()])
        .envs(ENV.iter().copied())
        .env("AWS_VPC_K8S_CNI_LOGLEVEL", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let child = cmd.spawn().expect("restart ipamd");
    let second = Restarted(child);
    assert!(
        eventually(Duration::from_secs(30), || ipamd.socket().exists()),
        "restarted ipamd not ready:\n{}",
        ipamd.log()
    );
    let st = ipamd.status_json();
    let held: Vec<String> = arr(&st["pods"])
        .iter()
        .filter_map(|p| p["ip"].as_str().map(str::to_string))
        .collect();
    for ip in &ips {
        assert!(
            held.contains(ip),
            "{ip} lost across the restart: {st}\n{}",
            ipamd.log()
        );
    }
    // The pool may have grown meanwhile (its warm target); what each ENI held before is all still there.
    let after = enis(&ipamd);
    for (ips, pfx) in &mixed {
        assert!(
            after
                .iter()
                .any(|(a_ips, a_pfx)| ips.iter().all(|i| a_ips.contains(i))
                    && pfx.iter().all(|p| a_pfx.contains(p))),
            "EC2 still holds the mixed ENI {ips:?} {pfx:?}: {after:?}"
        );
    }

    pods.extend(add_pods(&ipamd, &conf, 24, 44));
    let back = eventually(Duration::from_secs(20), || {
        ipamd.status_json()["addressMode"] == "prefix"
    });
    assert!(back, "{}\n{}", ipamd.status_json(), ipamd.log());
    let prefixes: usize = enis(&ipamd).iter().map(|(_, p)| p.len()).sum();
    assert!(prefixes >= 2, "new growth came as /28s: {:?}", enis(&ipamd));

    for (_, p, out) in &pods {
        let mut c = conf.clone();
        c["prevResult"] = out.json.clone();
        let del = cni(&ipamd.node, "DEL", p, &c);
        assert!(del.success, "DEL: {}", del.stdout);
    }
    drop(second);
}

/// The restarted daemon, stopped with SIGTERM (then killed) on drop.
struct Restarted(std::process::Child);

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let ok = eventually(Duration::from_secs(10), || {
            matches!(self.0.try_wait(), Ok(Some(_)))
        });
        if !ok {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
