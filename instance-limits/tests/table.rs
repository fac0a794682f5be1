//! The committed TSV, its parser/renderer, and the compiled-in table.
#![allow(clippy::unwrap_used)]

use instance_limits::format::{self, Row, HEADER};
use instance_limits::{all, lookup, suggest, Hypervisor};
use std::collections::HashSet;

const TSV: &str = include_str!("../data/instance-limits.tsv");
const ADDITIONS: &str = include_str!("../data/anchor-additions.tsv");

#[test]
fn tsv_parses_and_rows_are_unique_and_sorted() {
    let rows = format::parse(TSV).unwrap();
    assert!(rows.len() > 1000, "only {} rows", rows.len());
    // Independent of the parser's own checks: raw lines, byte order, no dups.
    let names: Vec<&str> = TSV
        .lines()
        .skip(1)
        .map(|line| line.split('\t').next().unwrap())
        .collect();
    assert_eq!(names.len(), rows.len());
    let unique: HashSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "duplicate instance types");
    assert!(names.windows(2).all(|w| w[0].as_bytes() < w[1].as_bytes()));
    assert!(TSV.lines().all(|line| line.split('\t').count() == 9));
}

#[test]
fn tsv_round_trips_byte_for_byte() {
    let rows = format::parse(TSV).unwrap();
    assert_eq!(format::render(&rows).unwrap(), TSV);
    // Rendering is order-independent (the writer sorts).
    let mut reversed = rows.clone();
    reversed.reverse();
    assert_eq!(format::render(&reversed).unwrap(), TSV);
}

#[test]
fn compiled_table_matches_tsv() {
    let additions = format::parse(ADDITIONS).unwrap();
    assert!(!additions.is_empty());
    let rows = format::merge(format::parse(TSV).unwrap(), additions.clone());
    // Every addition is in the table as written (replacing the generated row of the same name, if any).
    for a in &additions {
        let l = lookup(&a.instance_type).unwrap();
        assert_eq!(
            (l.enis, l.ipv4_per_eni),
            (a.enis, a.ipv4_per_eni),
            "{}",
            a.instance_type
        );
    }
    let table = all();
    assert_eq!(table.len(), rows.len());
    for (row, limits) in rows.iter().zip(table) {
        assert_eq!(limits.instance_type, row.instance_type);
        assert_eq!(limits.enis, row.enis);
        assert_eq!(
            limits.default_network_card_index,
            row.default_network_card_index
        );
        let cards: Vec<(u32, u32)> = limits
            .network_cards
            .iter()
            .map(|c| (c.index, c.max_enis))
            .collect();
        assert_eq!(cards, row.network_cards);
        assert_eq!(limits.ipv4_per_eni, row.ipv4_per_eni);
        assert_eq!(limits.ipv6_per_eni, row.ipv6_per_eni);
        assert_eq!(limits.hypervisor.as_str(), row.hypervisor);
        assert_eq!(limits.bare_metal, row.bare_metal);
        assert_eq!(limits.vcpus, row.vcpus);
    }
}

#[test]
fn lookup_finds_every_type_and_nothing_else() {
    for limits in all() {
        assert_eq!(lookup(limits.instance_type), Some(limits));
    }
    assert!(all()
        .windows(2)
        .all(|w| w[0].instance_type < w[1].instance_type));
    for missing in ["", "m5", "m5.", "M5.LARGE", "m5.large ", "zz.huge", "a"] {
        assert_eq!(lookup(missing), None, "{missing:?}");
    }
}

#[test]
fn invariants_of_every_type() {
    let mut xen = 0;
    let mut metal = 0;
    for l in all() {
        let card = l.network_card(l.default_network_card_index).unwrap();
        assert_eq!(card.max_enis, l.enis, "{}", l.instance_type);
        let sum: u32 = l.network_cards.iter().map(|c| c.max_enis).sum();
        assert_eq!(l.total_enis(), sum);
        assert!(l.total_enis() >= l.enis);
        assert_eq!(
            l.supports_prefix_delegation(),
            l.hypervisor == Hypervisor::Nitro || l.bare_metal
        );
        // vCPUs: 0 only for an anchor addition whose count is not published (bmn-sf1.metal).
        assert!(
            l.ipv4_per_eni >= 1 && (l.vcpus >= 1 || l.instance_type == "bmn-sf1.metal"),
            "{}",
            l.instance_type
        );
        xen += usize::from(l.hypervisor == Hypervisor::Xen);
        metal += usize::from(l.bare_metal);
    }
    assert!(xen > 0 && metal > 0);
}

#[test]
fn multi_card_types_keep_every_card() {
    // Types with several cards exist and list them in index order.
    let multi: Vec<_> = all().iter().filter(|l| l.network_cards.len() > 1).collect();
    assert!(!multi.is_empty());
    for l in multi {
        assert!(l.network_cards.windows(2).all(|w| w[0].index < w[1].index));
    }
}

#[test]
fn suggest_finds_close_names() {
    assert_eq!(suggest("m5.lage", 3).first(), Some(&"m5.large"));
    assert_eq!(suggest("M5.LARGE", 1), vec!["m5.large"]);
    assert_eq!(suggest("c5.18xlarg", 1), vec!["c5.18xlarge"]);
    assert!(suggest("m5.large", 0).is_empty());
    let many = suggest("x", usize::MAX);
    assert_eq!(many.len(), all().len());
    for name in suggest("t3.nanoo", 5) {
        assert!(lookup(name).is_some());
    }
    let five = suggest("m5.xlarg", 5);
    assert_eq!(five.len(), 5);
    assert_eq!(five[0], "m5.xlarge");
}

fn row() -> Row {
    Row {
        instance_type: "m9.large".into(),
        enis: 3,
        default_network_card_index: 0,
        network_cards: vec![(0, 3), (1, 2)],
        ipv4_per_eni: 10,
        ipv6_per_eni: 10,
        hypervisor: "nitro".into(),
        bare_metal: false,
        vcpus: 2,
    }
}

#[test]
fn render_layout_is_exact() {
    let text = format::render(&[row()]).unwrap();
    assert_eq!(
        text,
        format!("{HEADER}\nm9.large\t3\t0\t0:3,1:2\t10\t10\tnitro\tfalse\t2\n")
    );
    assert_eq!(format::parse(&text).unwrap(), vec![row()]);
    // Identical duplicates collapse, conflicting ones do not.
    assert_eq!(format::render(&[row(), row()]).unwrap(), text);
    let other = Row { vcpus: 4, ..row() };
    assert!(format::render(&[row(), other]).is_err());
    assert_eq!(format::hypervisor_from_api(None), "unknown");
    assert_eq!(format::hypervisor_from_api(Some("xen")), "xen");
    assert_eq!(format::hypervisor_from_api(Some("kvm")), "unknown");
}

#[test]
fn render_rejects_invalid_rows() {
    let bad = [
        Row {
            hypervisor: "kvm".into(),
            ..row()
        },
        Row {
            network_cards: vec![],
            ..row()
        },
        Row {
            network_cards: vec![(1, 2), (0, 3)],
            ..row()
        },
        Row {
            default_network_card_index: 5,
            ..row()
        },
        Row { enis: 4, ..row() },
        Row {
            instance_type: "m9 large".into(),
            ..row()
        },
        Row {
            instance_type: String::new(),
            ..row()
        },
    ];
    for r in bad {
        assert!(format::render(std::slice::from_ref(&r)).is_err(), "{r:?}");
    }
}

#[test]
fn parse_rejects_non_canonical_text() {
    let good = format::render(&[
        row(),
        Row {
            instance_type: "m9.xlarge".into(),
            ..row()
        },
    ])
    .unwrap();
    assert!(format::parse(&good).is_ok());
    let line = "m9.large\t3\t0\t0:3,1:2\t10\t10\tnitro\tfalse\t2";
    let cases = [
        good.trim_end().to_string(),                 // no final LF
        good.replace('\n', "\r\n"),                  // CRLF
        good.replacen("instance_type", "type", 1),   // header
        format!("{HEADER}\n{line}\n{line}\n"),       // duplicate
        good.replace("m9.xlarge", "m9.a"),           // unsorted
        good.replacen("\t10\t", "\t010\t", 1),       // leading zero
        good.replacen("\t10\t", "\t+10\t", 1),       // sign
        good.replacen("\tfalse", "\tFalse", 1),      // bool spelling
        good.replacen("\tnitro", "\tNitro", 1),      // hypervisor spelling
        good.replacen("0:3,1:2", "0:3;1:2", 1),      // card separator
        good.replacen("\t2\n", "\t2\textra\n", 1),   // field count
        good.replacen("\t2\n", "\t4294967296\n", 1), // u32 overflow
        format!("{HEADER}\n\n"),                     // blank line
    ];
    for (i, text) in cases.iter().enumerate() {
        assert!(format::parse(text).is_err(), "case {i} accepted: {text:?}");
    }
    // The header alone is an (empty) valid table.
    assert_eq!(format::parse(&format!("{HEADER}\n")).unwrap(), vec![]);
}
