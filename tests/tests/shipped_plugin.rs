//! The plugin as it is shipped: the binary `scripts/plugin-release.sh` builds (static musl with dlmalloc, not PIE;
//! static glibc where the musl target cannot be had), not the debug build the other tests exec.
//!
//! The build differs from the tested one in its libc and allocator only, so one pod's whole life through it is
//! enough to catch what such a build breaks (a missing syscall wrapper, an allocator that corrupts, a dynamic
//! loader that is not on the node): the binary is a static, fixed-address executable; VERSION, ADD, CHECK and DEL
//! work against the real `ipamd` (sim backend) and leave the pod namespace and node as the anchor's plugin would;
//! bad input still gets a CNI error on stdout.
//!
//! `scripts/test.sh` builds it and runs this file with `AWS_CNI_SHIPPED_PLUGIN` set:
//! `cargo test -p integration-tests --test shipped_plugin -- --ignored`. Without the variable the tests are
//! ignored (a plain `cargo test` has no release build to test).

use std::path::PathBuf;

use integration_tests::{cni_at, pod, result_ip, with_prev, Ipamd, Netns, STILL_POOL};

fn shipped() -> PathBuf {
    let path = std::env::var_os("AWS_CNI_SHIPPED_PLUGIN")
        .map(PathBuf::from)
        .expect("AWS_CNI_SHIPPED_PLUGIN: the path of the plugin scripts/plugin-release.sh built");
    assert!(path.is_file(), "{} is not a file", path.display());
    path
}

/// The ELF header's type and whether a program header asks for an interpreter (a dynamic loader).
fn elf_type_and_interp(bytes: &[u8]) -> (u16, bool) {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(bytes[4], 2, "not a 64-bit ELF file");
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap_or_default());
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or_default());
    let e_type = u16_at(16);
    let phoff = usize::try_from(u64_at(32)).unwrap_or(usize::MAX);
    let (phentsize, phnum) = (usize::from(u16_at(54)), usize::from(u16_at(56)));
    const PT_INTERP: u32 = 3;
    let interp = (0..phnum).any(|i| u32_at(phoff + i * phentsize) == PT_INTERP);
    (e_type, interp)
}

#[test]
#[ignore = "needs AWS_CNI_SHIPPED_PLUGIN (scripts/test.sh builds it with scripts/plugin-release.sh)"]
fn the_shipped_plugin_is_static_at_a_fixed_address() {
    let bytes = std::fs::read(shipped()).expect("read the plugin");
    let (e_type, interp) = elf_type_and_interp(&bytes);
    const ET_EXEC: u16 = 2;
    assert_eq!(
        e_type, ET_EXEC,
        "a position-independent executable (ET_DYN)"
    );
    assert!(!interp, "the plugin asks for a dynamic loader (PT_INTERP)");
}

#[test]
#[ignore = "needs AWS_CNI_SHIPPED_PLUGIN (scripts/test.sh builds it with scripts/plugin-release.sh)"]
fn a_pod_lives_and_dies_through_the_shipped_plugin() {
    let plugin = shipped();
    let ipamd = Ipamd::start("m5.large", STILL_POOL);
    let node = &ipamd.node;
    let pod_ns = Netns::new("act-ship-");
    let p = pod(&pod_ns, "shipped");
    let conf = ipamd.conf("1.0.0");

    let version = cni_at(&plugin, node, "VERSION", &p, &conf);
    assert!(version.success, "VERSION: {}", version.stdout);
    assert!(
        version.json["supportedVersions"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x == "1.0.0")),
        "VERSION: {}",
        version.stdout
    );

    let mut added = cni_at(&plugin, node, "ADD", &p, &conf);
    for _ in 0..50 {
        if added.success || added.code() != 11 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        added = cni_at(&plugin, node, "ADD", &p, &conf);
    }
    assert!(added.success, "ADD: {}\n{}", added.stdout, ipamd.log());
    let ip = result_ip(&added.json);
    let addrs = pod_ns.ip_json(&["-4", "addr", "show", "dev", "eth0"]);
    assert_eq!(
        addrs[0]["addr_info"][0]["local"].as_str(),
        Some(ip.as_str()),
        "pod eth0: {addrs}"
    );
    let routes = pod_ns.ip_json(&["-4", "route", "show", "default"]);
    assert_eq!(
        routes[0]["gateway"].as_str(),
        Some("169.254.1.1"),
        "pod default route: {routes}"
    );
    let host_route = node.ip_json(&["-4", "route", "show", &format!("{ip}/32")]);
    assert_eq!(host_route.as_array().map(Vec::len), Some(1), "{host_route}");

    assert_eq!(
        ipamd.status_json()["pool"]["assigned"].as_u64(),
        Some(1),
        "ipamd's count of assigned addresses after ADD"
    );
    let checked = cni_at(&plugin, node, "CHECK", &p, &with_prev(&conf, &added.json));
    assert!(checked.success, "CHECK: {}", checked.stdout);

    let deleted = cni_at(&plugin, node, "DEL", &p, &conf);
    assert!(deleted.success, "DEL: {}\n{}", deleted.stdout, ipamd.log());
    let host_route = node.ip_json(&["-4", "route", "show", &format!("{ip}/32")]);
    assert_eq!(
        host_route.as_array().map(Vec::len),
        Some(0),
        "host route left: {host_route}"
    );
    assert_eq!(
        ipamd.status_json()["pool"]["assigned"].as_u64(),
        Some(0),
        "ipamd still holds the pod's address after DEL"
    );

    // Bad input: a CNI error on stdout, with the spec's code for a netconf that does not parse.
    let mut bad = conf.clone();
    bad["mtu"] = serde_json::json!(true);
    let refused = cni_at(&plugin, node, "ADD", &p, &bad);
    assert!(!refused.success, "a bad netconf was accepted");
    assert!(refused.code() != 0, "no CNI error code: {}", refused.stdout);
    assert!(
        refused.json["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "no message: {}",
        refused.stdout
    );
}
