//! `AWS_VPC_K8S_CNI_VETHPREFIX` is one setting: ipamd (restart recovery, veth reaper, SNAT/connmark rules) reads
//! and checks it exactly as the installer that writes it into the plugin's conflist, so the two can never
//! disagree about which host veths are pods'.

use std::process::Stdio;
use std::time::{Duration, Instant};

use integration_tests::{require_root, Ipamd, Netns, TempDir};

#[test]
fn ipamd_refuses_a_veth_prefix_the_installer_would_refuse_naming_the_variable() {
    require_root();
    for bad in ["toolong", "eth", "a\"b"] {
        let node = Netns::new("act-veth-");
        let dir = TempDir::new();
        let mut child = Ipamd::command(&node, &dir, "m5.large")
            .env("AWS_VPC_K8S_CNI_LOG_FILE", "stderr")
            .env("AWS_VPC_K8S_CNI_VETHPREFIX", bad)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ipamd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if child.try_wait().expect("wait").is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{bad:?}: ipamd kept running");
        }
        let out = child.wait_with_output().expect("output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{bad:?}: exited 0\n{text}");
        assert!(
            text.contains("AWS_VPC_K8S_CNI_VETHPREFIX"),
            "{bad:?}: the error does not name the variable:\n{text}"
        );
    }
}
