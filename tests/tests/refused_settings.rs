//! An `aws-node` DaemonSet swapped to our image keeps its env. A variable that asks for a behaviour ipamd does not
//! have (security groups for pods, custom networking, IPv6, ...) stops `ipamd run` before it touches the node, with
//! an error that names the variable; the same variable at its default value starts normally.

use std::process::Stdio;
use std::time::{Duration, Instant};

use integration_tests::{require_root, Ipamd, Netns, TempDir};

/// Runs `ipamd run --backend sim` with `env` and waits for it to exit; `None` if it is still running after 20 s
/// (then it is killed).
fn run_expecting_exit(env: &[(&str, &str)]) -> Option<(bool, String, Vec<String>)> {
    require_root();
    let node = Netns::new("act-refuse-");
    let dir = TempDir::new();
    let before = node.snapshot();
    let mut cmd = Ipamd::command(&node, &dir, "m5.large");
    cmd.env("AWS_VPC_K8S_CNI_LOG_FILE", "stderr")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn ipamd");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if child.try_wait().expect("wait").is_some() {
            let out = child.wait_with_output().expect("output");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let after = node.snapshot();
            assert_eq!(before, after, "the node was changed:\n{text}");
            assert!(
                !dir.path().join("ipam.json").exists(),
                "a checkpoint was written"
            );
            return Some((out.status.success(), text, after));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn unsupported_anchor_modes_stop_startup_naming_the_variable() {
    let cases = [
        ("ENABLE_POD_ENI", "true", "security groups for pods"),
        ("ENABLE_IPv6", "true", "IPv6"),
        ("ENABLE_MULTI_NIC", "true", "network cards"),
        ("AWS_EXTERNAL_SERVICE_CIDRS", "10.100.0.0/16", "rule 1535"),
    ];
    for (var, value, why) in cases {
        let (ok, text, _) = run_expecting_exit(&[(var, value)])
            .unwrap_or_else(|| panic!("{var}={value}: ipamd kept running"));
        assert!(!ok, "{var}={value}: exited 0:\n{text}");
        assert!(
            text.contains(var) && text.contains("not supported") && text.contains(why),
            "{var}={value}: the error does not say which variable and why:\n{text}"
        );
    }
}

#[test]
fn the_same_variables_at_the_anchor_defaults_start_normally() {
    let ipamd = Ipamd::start(
        "m5.large",
        &[
            ("ENABLE_POD_ENI", "false"),
            ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "false"),
            ("ENABLE_IPv6", "false"),
            ("ENABLE_IPv4", "true"),
            ("MANAGE_UNTAGGED_ENI", "true"),
            ("AWS_EXTERNAL_SERVICE_CIDRS", ""),
        ],
    );
    assert!(ipamd.socket().exists());
}
