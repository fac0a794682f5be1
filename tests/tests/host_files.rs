//! The files ipamd writes on the host, through the real binary: the checkpoint never follows a symlink planted
//! at its temporary name (someone able to write the checkpoint's directory must not make root overwrite another
//! file), and the checkpoint and the logs of ipamd and of the plugin are not world-readable (container IDs, pod
//! names, addresses): 0600 and 0640.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use integration_tests::{add_with_retry, cni, eventually, pod, Ipamd, Netns};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[test]
fn a_symlink_at_the_checkpoints_temporary_name_is_not_followed() {
    let ipamd = Ipamd::start("t3.medium", &[("WARM_IP_TARGET", "1")]);
    let checkpoint = ipamd.dir.path().join("ipam.json");
    let precious = ipamd.dir.path().join("precious");
    std::fs::write(&precious, "root:secret\n").expect("target");
    std::os::unix::fs::symlink(&precious, ipamd.dir.path().join("ipam.json.tmp")).expect("plant");

    let ns = Netns::new("act-pod-");
    let p = pod(&ns, "victim-probe");
    let conf = ipamd.conf("1.0.0");
    let out = add_with_retry(&ipamd.node, &p, &conf);
    assert!(out.success, "ADD: {}", out.stdout);

    // The ADD returned only once its checkpoint was on disk.
    let text = std::fs::read_to_string(&checkpoint).expect("checkpoint");
    assert!(text.contains(&p.container_id), "{text}");
    assert_eq!(
        std::fs::read_to_string(&precious).expect("target"),
        "root:secret\n",
        "the symlink's target was written through"
    );
    assert!(!std::fs::symlink_metadata(&checkpoint)
        .expect("stat")
        .file_type()
        .is_symlink());
    assert_eq!(mode(&checkpoint), 0o600, "checkpoint mode");
    assert_eq!(
        mode(&ipamd.dir.path().join("plugin.log")),
        0o640,
        "the plugin's log mode"
    );

    let out = cni(&ipamd.node, "DEL", &p, &conf);
    assert!(out.success, "DEL: {}", out.stdout);
}

#[test]
fn ipamds_log_file_is_0640() {
    let dir = integration_tests::TempDir::new();
    let log = dir.path().join("aws-routed-eni/ipamd.log");
    let ipamd = Ipamd::start(
        "t3.medium",
        &[("AWS_VPC_K8S_CNI_LOG_FILE", log.to_str().expect("utf-8"))],
    );
    assert!(
        eventually(Duration::from_secs(5), || log.exists()),
        "no log file:\n{}",
        ipamd.log()
    );
    assert_eq!(mode(&log), 0o640, "log mode");
}
