//! `ipamd max-pods` as users and scripts call it: one number on stdout, the anchor's flags, clear errors.

use integration_tests::{bin, sh};

fn max_pods(args: &[&str]) -> (bool, String, String) {
    let mut full = vec!["max-pods"];
    full.extend_from_slice(args);
    let out = sh(bin("ipamd").to_str().expect("path"), &full);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn published_examples_print_one_number() {
    for (t, want) in [
        ("m5.large", "29"),
        ("m5.xlarge", "58"),
        ("c5.18xlarge", "737"),
        ("t3.nano", "4"),
        ("trn1.32xlarge", "247"),
    ] {
        let (ok, out, err) = max_pods(&[
            "--instance-type",
            t,
            "--cni-version",
            "1.23.1",
            "--show-max-allowed",
        ]);
        assert!(ok, "{t}: {err}");
        assert_eq!(out, want, "{t}");
    }
    // Without --show-max-allowed the anchor's cap applies (72 vCPUs -> 250).
    assert_eq!(max_pods(&["--instance-type", "c5.18xlarge"]).1, "250");
}

#[test]
fn flags_change_the_answer_as_the_formula_says() {
    // m5.large: 3 ENIs x 10 IPv4. Custom networking: 2 x 9 + 2 = 20; prefix delegation: 3 x 9 x 16 + 2 = 434,
    // capped at 110 (2 vCPUs); --cni-max-eni 1: 1 x 9 + 2 = 11.
    assert_eq!(
        max_pods(&[
            "--instance-type",
            "m5.large",
            "--cni-custom-networking-enabled"
        ])
        .1,
        "20"
    );
    assert_eq!(
        max_pods(&[
            "--instance-type",
            "m5.large",
            "--cni-prefix-delegation-enabled"
        ])
        .1,
        "110"
    );
    assert_eq!(
        max_pods(&[
            "--instance-type",
            "m5.large",
            "--cni-prefix-delegation-enabled",
            "--show-max-allowed"
        ])
        .1,
        "434"
    );
    assert_eq!(
        max_pods(&["--instance-type", "m5.large", "--cni-max-eni", "1"]).1,
        "11"
    );
}

#[test]
fn errors_name_the_cause() {
    let (ok, _, err) = max_pods(&["--instance-type", "m5.lage"]);
    assert!(!ok);
    assert!(
        err.contains("m5.large"),
        "should suggest the closest name: {err}"
    );
    let (ok, _, err) = max_pods(&[
        "--instance-type",
        "t2.micro",
        "--cni-prefix-delegation-enabled",
    ]);
    assert!(!ok);
    assert!(err.contains("Nitro"), "{err}");
}

#[test]
fn json_and_all_outputs() {
    let (ok, out, _) = max_pods(&["--instance-type", "m5.large", "--output", "json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["max_pods"], 29);
    assert_eq!(v["enis"], 3);
    let (ok, out, _) = max_pods(&["--all"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() > 1000, "{} lines", lines.len());
    assert!(lines.contains(&"m5.large 29"));
}

/// Types the anchor adds by hand (its generator's manual limits) or that DescribeInstanceTypes data lacks, and
/// those whose ENI counts the API snapshot got wrong: the binary prints the anchor's published value (the
/// library checks every line of the anchor's list: instance-limits/tests/anchor_max_pods.rs).
#[test]
fn the_anchors_hand_added_types_print_its_published_values() {
    for (t, want) in [
        ("bmn-sf1.metal", "737"),
        ("cr1.8xlarge", "234"),
        ("dl1.24xlarge", "737"),
        ("g4ad.xlarge", "8"),
        ("i8ge.48xlarge", "1178"),
        ("p3.2xlarge", "58"),
        ("u-24tb1.metal", "737"),
    ] {
        let (ok, out, err) = max_pods(&["--instance-type", t, "--show-max-allowed"]);
        assert!(ok, "{t}: {err}");
        assert_eq!(out, want, "{t}");
    }
}
