//! `ipamd gen-limits` against moto reproduces the committed instance-limits table byte for byte: the Rust
//! generator and the table the daemon and the max-pods calculator compile in agree on every type moto knows.
#![cfg(feature = "aws")]

use std::path::PathBuf;
use std::process::Command;

use integration_tests::moto::Moto;
use integration_tests::{bin, TempDir};

fn committed_table() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../instance-limits/data/instance-limits.tsv");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn gen_limits(moto: &Moto, extra: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin("ipamd"));
    cmd.args(["gen-limits", "--endpoint", &moto.endpoint()])
        .args(extra)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        // No instance-profile lookups: the credentials are in the environment.
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in moto.env() {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run ipamd gen-limits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("unrecognized subcommand"),
        "this ipamd was built without the `aws` feature: build it with --features ipamd/aws"
    );
    out
}

#[test]
fn gen_limits_against_moto_reproduces_the_committed_table() {
    let moto = Moto::start();
    let dir = TempDir::new();
    let out_path = dir.path().join("limits.tsv");
    let out = gen_limits(&moto, &["--out", out_path.to_str().expect("path")]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "gen-limits failed: {stderr}\n{}",
        moto.log()
    );
    let generated = std::fs::read_to_string(&out_path).expect("output written");
    let committed = committed_table();
    let rows = committed.lines().count() - 1;
    assert!(rows > 1300, "the committed table has only {rows} types");
    assert!(
        stderr.contains(&format!("wrote {rows} instance types")),
        "{stderr}"
    );
    if generated != committed {
        let first = generated
            .lines()
            .zip(committed.lines())
            .enumerate()
            .find(|(_, (g, c))| g != c);
        panic!(
            "generated table ({} lines) differs from the committed one ({} lines); first difference: {first:?}",
            generated.lines().count(),
            committed.lines().count()
        );
    }
    assert!(
        !dir.path().join("limits.tsv.tmp").exists(),
        "the temporary file was renamed into place"
    );
}

#[test]
fn gen_limits_writes_to_stdout_by_default_and_fails_cleanly_without_ec2() {
    let moto = Moto::start();
    let out = gen_limits(&moto, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed_table());

    // An endpoint where nothing listens: a non-zero exit and a message, no partial output.
    let port = integration_tests::moto::free_port();
    let out = Command::new(bin("ipamd"))
        .args([
            "gen-limits",
            "--endpoint",
            &format!("http://127.0.0.1:{port}"),
        ])
        .env_clear()
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DescribeInstanceTypes"), "{stderr}");
}
