//! The max-pods computation against the published examples and an
//! independent re-computation for every type in the table.
#![allow(clippy::unwrap_used)]

use instance_limits::max_pods::{
    compute, CniVersion, MaxPodsError, MaxPodsOptions, Mode, CAP_LARGE, CAP_SMALL,
    CAP_VCPU_THRESHOLD,
};
use instance_limits::{all, lookup, Hypervisor, InstanceLimits};

fn version(s: &str) -> CniVersion {
    s.parse().unwrap()
}

fn opts() -> MaxPodsOptions {
    MaxPodsOptions::new(version("1.23.1"))
}

fn max_pods(instance_type: &str, options: &MaxPodsOptions) -> Result<u32, MaxPodsError> {
    compute(lookup(instance_type).unwrap(), options).map(|r| r.max_pods)
}

/// Published values (the anchor's eni-max-pods.txt); those file values
/// are uncapped, hence `show_max_allowed`.
#[test]
fn published_examples() {
    let uncapped = MaxPodsOptions {
        show_max_allowed: true,
        ..opts()
    };
    for (t, expected) in [
        ("t3.nano", 4),
        ("t3.micro", 4),
        ("m5.large", 29),
        ("m5.xlarge", 58),
        ("c5.18xlarge", 737),
        ("m5.24xlarge", 737),
        ("m5.metal", 737),
        ("trn1.32xlarge", 247),
        ("p5.48xlarge", 100),
    ] {
        assert_eq!(max_pods(t, &uncapped), Ok(expected), "{t}");
    }
}

#[test]
fn published_examples_with_the_default_cap() {
    // Small types are under their cap: same numbers.
    for (t, expected) in [("t3.nano", 4), ("m5.large", 29), ("m5.xlarge", 58)] {
        assert_eq!(max_pods(t, &opts()), Ok(expected), "{t}");
    }
    // c5.18xlarge has 72 vCPUs (> 30): 737 capped to 250.
    let report = compute(lookup("c5.18xlarge").unwrap(), &opts()).unwrap();
    assert_eq!(report.uncapped, 737);
    assert_eq!(report.cap, Some(250));
    assert!(report.capped);
    assert_eq!(report.max_pods, 250);
    // trn1.32xlarge: 247 is under 250.
    assert_eq!(max_pods("trn1.32xlarge", &opts()), Ok(247));
}

/// The formula, written out again with wide integers, no shared code.
fn expected(l: &InstanceLimits, o: &MaxPodsOptions) -> Option<u64> {
    if o.prefix_delegation && !(l.hypervisor == Hypervisor::Nitro || l.bare_metal) {
        return None;
    }
    let mut enis = u64::from(l.enis);
    if let Some(max) = o.cni_max_eni {
        enis = enis.min(u64::from(max));
    }
    if o.custom_networking {
        enis = enis.saturating_sub(1);
    }
    let per_eni = u64::from(l.ipv4_per_eni).saturating_sub(1);
    let per_eni = if o.prefix_delegation {
        per_eni * 16
    } else {
        per_eni
    };
    let value = enis * per_eni + 2;
    Some(if o.show_max_allowed {
        value
    } else if l.vcpus <= 30 {
        value.min(110)
    } else {
        value.min(250)
    })
}

#[test]
fn every_type_matches_the_formula() {
    let mut checked = 0;
    for custom_networking in [false, true] {
        for prefix_delegation in [false, true] {
            for show_max_allowed in [false, true] {
                for cni_max_eni in [None, Some(1), Some(2), Some(3), Some(100)] {
                    let o = MaxPodsOptions {
                        custom_networking,
                        prefix_delegation,
                        show_max_allowed,
                        cni_max_eni,
                        ..opts()
                    };
                    for l in all() {
                        let got = compute(l, &o);
                        match expected(l, &o) {
                            Some(want) => {
                                let report = got.unwrap();
                                assert_eq!(
                                    u64::from(report.max_pods),
                                    want,
                                    "{} {o:?}",
                                    l.instance_type
                                );
                                assert!(report.max_pods <= report.uncapped);
                            }
                            None => assert!(
                                matches!(
                                    got,
                                    Err(MaxPodsError::PrefixDelegationUnsupported { .. })
                                ),
                                "{} {o:?}",
                                l.instance_type
                            ),
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 40 * all().len());
}

#[test]
fn prefix_delegation_on_xen_types_errors() {
    let o = MaxPodsOptions {
        prefix_delegation: true,
        ..opts()
    };
    let xen: Vec<_> = all()
        .iter()
        .filter(|l| l.hypervisor == Hypervisor::Xen && !l.bare_metal)
        .collect();
    assert!(!xen.is_empty());
    for l in xen {
        let err = compute(l, &o).unwrap_err();
        assert_eq!(
            err,
            MaxPodsError::PrefixDelegationUnsupported {
                instance_type: l.instance_type.to_string(),
                hypervisor: Hypervisor::Xen
            }
        );
        let message = err.to_string();
        assert!(
            message.contains(l.instance_type) && message.contains("Nitro"),
            "{message}"
        );
    }
}

#[test]
fn prefix_delegation_values_and_version_gate() {
    let m5 = lookup("m5.large").unwrap();
    let pd = |v: &str| MaxPodsOptions {
        prefix_delegation: true,
        show_max_allowed: true,
        ..MaxPodsOptions::new(version(v))
    };
    let report = compute(m5, &pd("1.9.0")).unwrap();
    assert_eq!(report.mode, Mode::PrefixDelegation);
    assert_eq!(report.ips_per_eni, (m5.ipv4_per_eni - 1) * 16);
    assert_eq!(report.max_pods, m5.enis * (m5.ipv4_per_eni - 1) * 16 + 2);
    assert_eq!(
        report.formula,
        format!("{} * (({} - 1) * 16) + 2", m5.enis, m5.ipv4_per_eni)
    );
    // Capped at 110 by default on a 2-vCPU type.
    assert_eq!(
        max_pods(
            "m5.large",
            &MaxPodsOptions {
                show_max_allowed: false,
                ..pd("1.9.0")
            }
        ),
        Ok(110)
    );
    for old in ["1.8.9", "1.7.5", "0.99.99"] {
        let err = compute(m5, &pd(old)).unwrap_err();
        assert!(matches!(
            err,
            MaxPodsError::PrefixDelegationNeedsNewerCni { .. }
        ));
        assert!(err.to_string().contains("1.9.0"), "{err}");
    }
    // Bare-metal types without a hypervisor qualify.
    let metal = all()
        .iter()
        .find(|l| l.bare_metal && l.hypervisor == Hypervisor::Unknown)
        .unwrap();
    assert!(compute(metal, &pd("1.9.0")).is_ok());
}

#[test]
fn custom_networking_drops_the_primary_eni() {
    let l = lookup("m5.xlarge").unwrap();
    let o = MaxPodsOptions {
        custom_networking: true,
        ..opts()
    };
    let report = compute(l, &o).unwrap();
    assert_eq!(report.enis, l.enis - 1);
    assert_eq!(report.max_pods, (l.enis - 1) * (l.ipv4_per_eni - 1) + 2);
    assert!(report.max_pods < 58);
    assert!(report.enis_formula.contains("custom networking"));

    // With a single usable ENI nothing is left but the host-network pods.
    let one = MaxPodsOptions {
        cni_max_eni: Some(1),
        ..o
    };
    let report = compute(l, &one).unwrap();
    assert_eq!((report.enis, report.max_pods), (0, 2));
    assert!(!report.notes.is_empty());
}

#[test]
fn cni_max_eni_limits_enis() {
    let l = lookup("m5.xlarge").unwrap();
    assert!(l.enis > 2);
    let with = |n| MaxPodsOptions {
        cni_max_eni: Some(n),
        ..opts()
    };
    let r = compute(l, &with(2)).unwrap();
    assert_eq!(r.enis, 2);
    assert_eq!(r.max_pods, 2 * (l.ipv4_per_eni - 1) + 2);
    assert_eq!(
        r.enis_formula,
        format!("min({}, --cni-max-eni 2) = 2", l.enis)
    );
    // Above the instance's own limit it changes nothing.
    assert_eq!(compute(l, &with(u32::MAX)).unwrap().max_pods, 58);
    assert_eq!(
        compute(l, &with(0)).unwrap_err(),
        MaxPodsError::InvalidMaxEni { value: 0 }
    );
}

fn synthetic(vcpus: u32) -> InstanceLimits {
    InstanceLimits {
        instance_type: "zz.test",
        enis: 15,
        default_network_card_index: 0,
        network_cards: &[],
        ipv4_per_eni: 50,
        ipv6_per_eni: 50,
        hypervisor: Hypervisor::Nitro,
        bare_metal: false,
        vcpus,
    }
}

#[test]
fn cap_switches_at_30_vcpus() {
    assert_eq!(CAP_VCPU_THRESHOLD, 30);
    let at = compute(&synthetic(30), &opts()).unwrap();
    let above = compute(&synthetic(31), &opts()).unwrap();
    assert_eq!((at.cap, at.max_pods), (Some(CAP_SMALL), 110));
    assert_eq!((above.cap, above.max_pods), (Some(CAP_LARGE), 250));
    assert_eq!(at.uncapped, 737);
    assert!(at.cap_reason.contains("<= 30") && above.cap_reason.contains("> 30"));
    let shown = compute(
        &synthetic(30),
        &MaxPodsOptions {
            show_max_allowed: true,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(
        (shown.cap, shown.capped, shown.max_pods),
        (None, false, 737)
    );

    // And on real types around the boundary.
    for l in all().iter().filter(|l| (16..=48).contains(&l.vcpus)) {
        let r = compute(l, &opts()).unwrap();
        let cap = if l.vcpus <= 30 { 110 } else { 250 };
        assert_eq!(r.cap, Some(cap), "{}", l.instance_type);
        assert_eq!(r.max_pods, r.uncapped.min(cap));
    }
}

#[test]
fn report_serializes_every_step() {
    let r = compute(lookup("m5.large").unwrap(), &opts()).unwrap();
    let v: serde_json::Value = serde_json::to_value(&r).unwrap();
    let expected = serde_json::json!({
        "instance_type": "m5.large",
        "inputs": {
            "cni_version": "1.23.1",
            "custom_networking": false,
            "prefix_delegation": false,
            "cni_max_eni": null,
            "show_max_allowed": false
        },
        "instance": {
            "enis": 3,
            "ipv4_per_eni": 10,
            "hypervisor": "nitro",
            "bare_metal": false,
            "vcpus": 2
        },
        "mode": "secondary-ip",
        "enis_formula": "3",
        "enis": 3,
        "ips_per_eni": 9,
        "formula": "3 * (10 - 1) + 2",
        "uncapped": 29,
        "cap": 110,
        "cap_reason": "2 vCPUs <= 30: cap 110",
        "capped": false,
        "max_pods": 29,
        "notes": []
    });
    assert_eq!(v, expected);
}

#[test]
fn malformed_versions_are_typed_errors() {
    for bad in ["", "latest", "1", "1.x.0", "v1..2", "1.2.3.4"] {
        let err = bad.parse::<CniVersion>().unwrap_err();
        assert!(
            matches!(err, MaxPodsError::InvalidCniVersion { .. }),
            "{bad:?}"
        );
        assert!(err.to_string().contains("1.23.1"));
    }
    assert_eq!(version("v1.18.3-eksbuild.1").to_string(), "1.18.3");
}
