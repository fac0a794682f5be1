//! CNI_ARGS and the other CNI_* variables: parsing never panics, whatever the runtime passes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = cni_types::CniArgs::parse(text);
    // The same bytes as every variable at once, split on NUL: CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS,
    // CNI_IFNAME, CNI_ARGS, CNI_PATH.
    let mut parts = text.split('\0');
    let vars: Vec<(&str, Option<&str>)> = [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_ARGS",
        "CNI_PATH",
    ]
    .into_iter()
    .map(|k| (k, parts.next()))
    .collect();
    let _ = cni_types::CniEnv::from_lookup(|k| {
        vars.iter()
            .find(|(name, _)| *name == k)
            .and_then(|(_, v)| v.map(str::to_string))
    });
});
