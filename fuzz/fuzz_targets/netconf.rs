//! The netconf on aws-cni's stdin: parsing never panics, and a config that parses has a usable prevResult answer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(conf) = cni_types::NetConf::parse(data) {
        let _ = conf.prev_result();
        let _ = cni_types::negotiate_version(&conf);
    }
});
