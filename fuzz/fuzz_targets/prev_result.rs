//! A prevResult of any shape: decoding never panics, and what decodes re-encodes in every version we speak.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(result) = cni_types::CniResult::from_json(&value) {
        for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let _ = result.to_json(version);
        }
    }
});
