//! CNI specification types for `aws-cni`: the `CNI_*` environment, the plugin config on stdin,
//! the ADD result, and the error object, for spec versions 0.3.0 through 1.1.0.
//!
//! This crate is pure data. It never reads the environment, stdin or files; the binary reads
//! them and hands the values in ([`CniEnv::from_lookup`] takes a lookup function,
//! [`NetConf::parse`] takes bytes), so every rule here is testable without a process.
//!
//! # Versions handled
//!
//! | version | what differs for us |
//! |---|---|
//! | 0.3.0, 0.3.1 | `interfaces`/`ips`/`routes`/`dns` result; each `ips` entry has `"version": "4"\|"6"` |
//! | 0.4.0 | adds CHECK and `prevResult` on DEL; result shape as 0.3.x |
//! | 1.0.0 | drops `version` from `ips` entries |
//! | 1.1.0 | adds GC (`cni.dev/valid-attachments`, `disableGC`), STATUS (errors 50/51), `cniVersions`, interface `mtu`/`socketPath`/`pciID`, route `mtu`/`advmss`/`priority`/`table`/`scope` |
//!
//! 0.1.0 and 0.2.0 (`ip4`/`ip6` results) are not supported and are refused with code 1.
//!
//! [`CniResult`] is one in-memory type; [`CniResult::to_json`] writes the shape of the requested
//! version (fields a version does not know are dropped) and [`CniResult::from_json`] reads any
//! supported shape. CHECK needs a 0.4.0+ config and GC/STATUS a 1.1.0+ config
//! ([`check_command_version`]).
//!
//! # Leniency
//!
//! - **Input from runtimes is read leniently.** Plugin configs ignore unknown keys (runtimes
//!   inject `runtimeConfig`, `args`, `cni.dev/*`), the old `cni.dev/attachments` name is accepted,
//!   `prevResult` may come from any supported version, empty strings count as unset, and
//!   `CNI_ARGS` keeps unknown keys instead of failing.
//! - **Values are checked strictly.** A field we know must have the right type and a valid
//!   value: a non-CIDR address, an `ips[].version` that contradicts its address, a malformed
//!   container ID or interface name are errors with the spec's code, never guessed at.
//! - **What we write is exact.** Results and errors are built field by field for the target
//!   version; optional fields are omitted rather than written empty.
//!
//! # Error codes
//!
//! Every fallible function returns [`CniError`] carrying the spec code the runtime should see:
//! 1 incompatible version, 4 bad `CNI_*` variable (the message names it), 6 undecodable content,
//! 7 invalid config; see [`codes`].

mod conf;
mod env;
mod error;
mod result;
mod version;

pub use conf::{parse_plugin_conf, Attachment, NetConf};
pub use env::{validate_container_id, validate_ifname, CniArgs, CniEnv, Command};
pub use error::{codes, CniError};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::{
    check_command_version, compare_versions, highest_mutual_version, is_supported,
    negotiate_version, parse_version, version_info, LATEST_VERSION, SUPPORTED_VERSIONS,
};

/// Re-exported so callers can build [`IpConfig::address`] without their own dependency.
pub use ipnetwork;
