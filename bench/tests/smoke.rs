//! Smoke tests of the driver: it runs and writes every table. No timing is asserted: benchmarks report, tests
//! decide only that the report is complete.

use std::path::PathBuf;
use std::process::Command;

fn out_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("aws-cni-bench-{}-{name}.md", std::process::id()))
}

fn run(args: &[&str], out: &PathBuf) -> String {
    let status = Command::new(env!("CARGO_BIN_EXE_aws-cni-bench"))
        .arg("run")
        .args(args)
        .arg("--out")
        .arg(out)
        .status()
        .expect("run aws-cni-bench");
    assert!(status.success(), "aws-cni-bench {args:?} failed");
    let md = std::fs::read_to_string(out).expect("report written");
    let _ = std::fs::remove_file(out);
    md
}

/// The virtual-time benchmarks (no root, about a second): both tables, every engine, every setting.
#[test]
fn virtual_benchmarks_write_their_tables() {
    let out = out_file("virt");
    let md = run(&["--quick", "--only", "ec2-calls,scale-up"], &out);
    assert!(md.contains("## Machine and run"));
    assert!(md.contains("## EC2 calls per 1,000 pods under churn (virtual time)"));
    assert!(md.contains("## Cluster scale-up"));
    for it in ["t3.medium", "m5.large", "m5.4xlarge"] {
        for engine in ["| ours |", "| anchor model |"] {
            assert!(
                md.lines()
                    .any(|l| l.starts_with(&format!("| {it} (")) && l.contains(engine)),
                "no {engine} row for {it}:\n{md}"
            );
        }
    }
    assert!(md.contains("WARM_IP_TARGET=5, MINIMUM_IP_TARGET=10"));
    assert!(md.contains("prefix delegation, WARM_PREFIX_TARGET=1"));
    assert!(md.contains("- Target: at most half the anchor model's calls"));
    assert!(md.contains("under 10% of calls throttled"));
    assert!(md.contains("ours not slower than the anchor model"));
}

/// The whole quick suite, real-kernel benchmarks included. Needs root, Debian's CNI plugins and the release
/// binaries (`scripts/bench.sh --quick` does all of it); run with `cargo test -p aws-cni-bench -- --ignored`.
#[test]
#[ignore = "needs root, /usr/lib/cni and release binaries; a few minutes"]
fn quick_suite_writes_every_table() {
    let bin_dir = std::env::var("AWS_CNI_BENCH_BIN_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release").to_string());
    let out = out_file("all");
    let md = run(&["--quick", "--bin-dir", &bin_dir], &out);
    for title in [
        "## Physical floor",
        "## Pod setup",
        "## Burst",
        "## Memory",
        "## Churn",
        "## EC2 calls per 1,000 pods",
        "## Cluster scale-up",
    ] {
        assert!(md.contains(title), "missing {title}:\n{md}");
    }
    let leftovers = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    let list = String::from_utf8_lossy(&leftovers.stdout);
    assert!(
        !list.contains("awsbench-"),
        "namespaces left behind:\n{list}"
    );
}
