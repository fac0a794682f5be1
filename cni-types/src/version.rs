//! Spec versions: which we speak, how to compare them, and which one a result is written in.

use std::cmp::Ordering;

use serde_json::{json, Value};

use crate::{CniError, Command, NetConf};

/// Every spec version this crate can read a config in and write a result for, oldest first.
///
/// 0.1.0/0.2.0 are left out on purpose: their result shape (`ip4`/`ip6` objects) predates
/// chaining and no runtime we target still sends them.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version in [`SUPPORTED_VERSIONS`]; used to stamp output when no config was read.
pub const LATEST_VERSION: &str = "1.1.0";

/// Whether `version` is exactly one of [`SUPPORTED_VERSIONS`].
pub fn is_supported(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

/// Parses `MAJOR.MINOR.PATCH` (plain decimal numbers, no pre-release suffix).
pub fn parse_version(version: &str) -> Option<(u64, u64, u64)> {
    let mut parts = version.split('.');
    let mut next = || -> Option<u64> {
        let p = parts.next()?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let v = (next()?, next()?, next()?);
    if parts.next().is_some() {
        return None;
    }
    Some(v)
}

/// Orders two versions numerically; `None` if either is not `MAJOR.MINOR.PATCH`.
pub fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    Some(parse_version(a)?.cmp(&parse_version(b)?))
}

/// The answer to `VERSION`: `{"cniVersion": cni_version, "supportedVersions": [...]}`.
pub fn version_info(cni_version: &str) -> Value {
    json!({
        "cniVersion": cni_version,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// The highest version that appears both in `offered` (a config's `cniVersions`) and in
/// [`SUPPORTED_VERSIONS`]. Entries we cannot parse are skipped, not an error: a newer config may
/// list versions we have never heard of.
pub fn highest_mutual_version<S: AsRef<str>>(offered: &[S]) -> Option<&'static str> {
    SUPPORTED_VERSIONS
        .iter()
        .rev()
        .find(|ours| offered.iter().any(|o| o.as_ref() == **ours))
        .copied()
}

/// The version to write results and errors in for this invocation.
///
/// The spec makes the runtime choose: with `cniVersions` it picks the highest version it and the
/// plugin share and passes it as `cniVersion`, and the plugin answers in that version. So this is
/// `conf.cni_version` when we support it, and code 1 otherwise. (A config without `cniVersion` but
/// with `cniVersions` was already resolved by [`NetConf::parse`].)
pub fn negotiate_version(conf: &NetConf) -> Result<String, CniError> {
    if is_supported(&conf.cni_version) {
        return Ok(conf.cni_version.clone());
    }
    Err(
        CniError::incompatible_version("incompatible CNI versions").with_details(format!(
            "config is \"{}\", plugin supports {}",
            conf.cni_version,
            SUPPORTED_VERSIONS.join(", ")
        )),
    )
}

/// Checks that a config in `version` may carry `command`: CHECK needs 0.4.0 or later, GC and
/// STATUS need 1.1.0 or later. Failing is code 1.
///
/// libcni's skel treats GC/STATUS under an older config as a silent success rather than an
/// error; a plugin that wants that behaviour checks [`Command::min_spec_version`] itself.
pub fn check_command_version(command: Command, version: &str) -> Result<(), CniError> {
    let Some(min) = command.min_spec_version() else {
        return Ok(());
    };
    match compare_versions(version, min) {
        Some(Ordering::Less) => Err(CniError::incompatible_version(format!(
            "config version does not allow {command}"
        ))
        .with_details(format!(
            "{command} needs cniVersion {min} or later, got {version}"
        ))),
        Some(_) => Ok(()),
        None => Err(CniError::incompatible_version("incompatible CNI versions")
            .with_details(format!("cannot parse cniVersion \"{version}\""))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_list_is_sorted_and_parseable() {
        for pair in SUPPORTED_VERSIONS.windows(2) {
            assert_eq!(
                compare_versions(pair[0], pair[1]),
                Some(Ordering::Less),
                "{pair:?}"
            );
        }
        assert_eq!(SUPPORTED_VERSIONS.last(), Some(&LATEST_VERSION));
    }

    #[test]
    fn parse_version_rejects_garbage() {
        assert_eq!(parse_version("1.10.2"), Some((1, 10, 2)));
        for bad in [
            "",
            "1",
            "1.0",
            "1.0.0.0",
            "1.0.x",
            "v1.0.0",
            "1..0",
            "1.0.0-rc1",
            "+1.0.0",
        ] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
        // Numeric, not lexical, ordering.
        assert_eq!(compare_versions("0.10.0", "0.4.0"), Some(Ordering::Greater));
    }

    #[test]
    fn version_info_shape() {
        let v = version_info("0.4.0");
        assert_eq!(v["cniVersion"], "0.4.0");
        let list: Vec<&str> = v["supportedVersions"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(list, ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
        assert_eq!(v.as_object().map(|o| o.len()), Some(2));
    }

    #[test]
    fn highest_mutual_picks_the_best_we_share() {
        assert_eq!(
            highest_mutual_version(&["0.4.0", "1.0.0", "1.1.0"]),
            Some("1.1.0")
        );
        // Order of the offer does not matter; unknown newer versions are skipped.
        assert_eq!(
            highest_mutual_version(&["2.0.0", "0.4.0", "1.0.0"]),
            Some("1.0.0")
        );
        assert_eq!(highest_mutual_version(&["0.2.0", "9.9.9"]), None);
        assert_eq!(highest_mutual_version::<&str>(&[]), None);
    }

    #[test]
    fn command_gates() {
        assert!(check_command_version(Command::Add, "0.3.0").is_ok());
        assert!(check_command_version(Command::Check, "0.4.0").is_ok());
        let err = check_command_version(Command::Check, "0.3.1").expect_err("CHECK < 0.4.0");
        assert_eq!(err.code, 1);
        assert!(err.msg.contains("CHECK"), "{err:?}");
        assert!(check_command_version(Command::Gc, "1.1.0").is_ok());
        assert_eq!(
            check_command_version(Command::Status, "1.0.0").map_err(|e| e.code),
            Err(1)
        );
        assert_eq!(
            check_command_version(Command::Gc, "bogus").map_err(|e| e.code),
            Err(1)
        );
    }
}
