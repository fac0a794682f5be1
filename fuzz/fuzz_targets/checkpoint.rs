//! ipamd's checkpoint file (the anchor's format and ours): parsing never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ipamd::engine::checkpoint::parse(std::path::Path::new("/fuzz/ipam.json"), data);
});
