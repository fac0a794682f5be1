//! Live pool knobs through the built binaries: `ipamd run --backend sim` reads its knob directory
//! (`AWS_CNI_POOL_CONFIG_DIR`, as a ConfigMap volume lays it out: one file per variable) at startup, when it
//! changes and on SIGHUP; the pool follows the new target without a restart, an invalid value is refused with the
//! old values kept, and pods ADDed and DELeted during the reloads all succeed.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use integration_tests::{add_with_retry, cni, eventually, pod, Ipamd, Netns, TempDir};

fn knob(dir: &TempDir, var: &str, value: &str) {
    // As kubelet does: the new content appears at once (write a temp file, rename over).
    let tmp = dir.path().join(format!(".{var}.tmp"));
    std::fs::write(&tmp, value).expect("write knob");
    std::fs::rename(&tmp, dir.path().join(var)).expect("rename knob");
}

fn total(ipamd: &Ipamd) -> u64 {
    ipamd.status_json()["pool"]["total"].as_u64().unwrap_or(0)
}

#[test]
fn knobs_reload_from_the_directory_and_on_sighup_without_dropping_a_request() {
    let knobs = TempDir::new();
    let dir = knobs.path().display().to_string();
    // No reuse cooldown: the churn below runs pods through addresses faster than a 30 s cooldown returns them,
    // and m5.large holds 27, so with the default the node would run dry for reasons that are not the reload's.
    let ipamd = Ipamd::start(
        "m5.large",
        &[
            ("WARM_IP_TARGET", "2"),
            ("IP_COOLDOWN_PERIOD", "0"),
            ("AWS_CNI_POOL_CONFIG_DIR", &dir),
        ],
    );
    let conf = ipamd.conf("1.0.0");
    assert!(
        eventually(Duration::from_secs(10), || total(&ipamd) == 2),
        "WARM_IP_TARGET=2 from the environment: {}",
        ipamd.status_json()
    );

    // Pods come and go the whole time the knobs change.
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let churn = scope.spawn(|| {
            let mut done = 0;
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) || done < 4 {
                let ns = Netns::new("act-rld-");
                let p = pod(&ns, &format!("rld{done}"));
                let out = add_with_retry(&ipamd.node, &p, &conf);
                if out.success {
                    let mut c = conf.clone();
                    c["prevResult"] = out.json.clone();
                    let del = cni(&ipamd.node, "DEL", &p, &c);
                    if !del.success {
                        failures.push(format!("DEL {done}: {}", del.stdout));
                    }
                } else {
                    failures.push(format!("ADD {done}: {}", out.stdout));
                }
                done += 1;
            }
            (done, failures)
        });
        reload_steps(&ipamd, &knobs);
        stop.store(true, Ordering::SeqCst);
        let (done, failures) = churn.join().expect("churn thread");
        assert!(done >= 4, "{done} pods");
        assert!(failures.is_empty(), "{failures:?}\n{}", ipamd.log());
    });
}

/// The file change, the refused value and SIGHUP, each checked through `ipamd status` and the metrics.
fn reload_steps(ipamd: &Ipamd, knobs: &TempDir) {
    // A file overrides the environment: the pool grows to the new target.
    knob(knobs, "WARM_IP_TARGET", "8\n");
    assert!(
        eventually(Duration::from_secs(15), || {
            let st = ipamd.status_json();
            st["poolKnobs"]
                .as_str()
                .is_some_and(|k| k.contains("WARM_IP_TARGET=8"))
                && st["pool"]["available"].as_u64().unwrap_or(0) >= 7
        }),
        "the pool did not follow WARM_IP_TARGET=8: {}\n{}",
        ipamd.status_json(),
        ipamd.log()
    );

    // An invalid value is refused, naming the variable; the old values stay.
    knob(knobs, "MINIMUM_IP_TARGET", "ten");
    assert!(
        eventually(Duration::from_secs(15), || {
            ipamd
                .node
                .metrics()
                .contains("awscni_config_reload_total{outcome=\"refused\"} 1")
        }),
        "refused reload not counted:\n{}",
        ipamd.log()
    );
    let log = ipamd.log();
    assert!(
        log.contains("reload refused") && log.contains("MINIMUM_IP_TARGET"),
        "{log}"
    );
    let st = ipamd.status_json();
    let k = st["poolKnobs"].as_str().unwrap_or_default().to_string();
    assert!(
        k.contains("WARM_IP_TARGET=8") && k.contains("MINIMUM_IP_TARGET=0"),
        "{k}"
    );

    // Fixed, then SIGHUP: the daemon reloads (and is not killed by the signal).
    knob(knobs, "MINIMUM_IP_TARGET", "20");
    let pid = ipamd.pid().expect("running").to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill")
        .success());
    assert!(
        eventually(Duration::from_secs(15), || {
            ipamd.log().contains("SIGHUP") && total(ipamd) >= 20
        }),
        "MINIMUM_IP_TARGET=20 after SIGHUP: {}\n{}",
        ipamd.status_json(),
        ipamd.log()
    );
    assert!(
        ipamd.status_json()["poolKnobs"]
            .as_str()
            .is_some_and(|k| k.contains("MINIMUM_IP_TARGET=20")),
        "{}",
        ipamd.status_json()
    );
    let scrape = ipamd.node.metrics();
    let applied: f64 = scrape
        .lines()
        .find(|l| l.starts_with("awscni_config_reload_total{outcome=\"applied\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(
        applied >= 3.0,
        "startup, the file change and SIGHUP: {scrape}"
    );
}
