//! Every line of the anchor's published `eni-max-pods.txt` (checked in as `data/anchor-eni-max-pods.txt`, with
//! the anchor commit it came from): the type is in the table, and max-pods uncapped (`--show-max-allowed`, as the
//! file's values are) is the anchor's value.
#![allow(clippy::unwrap_used)]

use instance_limits::max_pods::{compute, MaxPodsOptions};
use instance_limits::{all, lookup};

const ANCHOR: &str = include_str!("../data/anchor-eni-max-pods.txt");

fn anchor_lines() -> Vec<(&'static str, u32)> {
    ANCHOR
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut w = l.split_whitespace();
            let t = w.next().unwrap();
            let v = w.next().unwrap().parse().unwrap();
            assert!(w.next().is_none(), "{l}");
            (t, v)
        })
        .collect()
}

#[test]
fn every_type_of_the_anchors_list_is_known_and_agrees() {
    let lines = anchor_lines();
    assert!(lines.len() > 1300, "only {} lines", lines.len());
    let options = MaxPodsOptions {
        show_max_allowed: true,
        ..MaxPodsOptions::new("1.23.1".parse().unwrap())
    };
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for (t, want) in &lines {
        match lookup(t) {
            None => missing.push(*t),
            Some(l) => {
                let got = compute(l, &options).unwrap().max_pods;
                if got != *want {
                    wrong.push(format!("{t}: ours {got}, anchor {want}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "types the anchor lists and we do not: {missing:?}"
    );
    assert!(
        wrong.is_empty(),
        "max-pods differs from the anchor's: {wrong:?}"
    );
}

#[test]
fn the_table_holds_at_least_the_anchors_types() {
    assert!(all().len() >= anchor_lines().len());
    // The anchor's hand-added types (scripts/gen_vpc_ip_limits.go, addManualLimits) are there.
    for t in [
        "cr1.8xlarge",
        "hs1.8xlarge",
        "u-12tb1.metal",
        "c5a.metal",
        "bmn-sf1.metal",
        "dl1.24xlarge",
    ] {
        assert!(lookup(t).is_some(), "{t}");
    }
}
