//! The CNI error object and the well-known error codes.
//!
//! Every failure a plugin reports goes to the runtime as
//! `{"cniVersion", "code", "msg", "details"}` on stdout with a non-zero exit. Codes 1–99 are
//! reserved by the spec and may only carry the meaning listed in [`codes`]; 100 and up are free
//! for plugin-specific errors.

use serde_json::{json, Map, Value};

/// Well-known error codes (spec "Well-known Error Codes"; 50/51 added in 1.1.0 for STATUS).
pub mod codes {
    /// The config's `cniVersion` is not one the plugin supports.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A field in the network configuration is not supported; the message must name key and value.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container is unknown or gone; the runtime need not clean up (no DEL needed).
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A necessary `CNI_*` variable is missing or invalid; the message must name the variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure, for example reading the config from stdin.
    pub const IO: u32 = 5;
    /// Content could not be decoded (bad JSON, malformed result or version info).
    pub const DECODING: u32 = 6;
    /// The network configuration decoded but failed validation.
    pub const INVALID_CONFIG: u32 = 7;
    /// A transient condition: the runtime should retry the operation later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS (1.1.0): the plugin cannot serve ADD requests.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS (1.1.0): the plugin cannot serve ADD requests and existing containers may have
    /// limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// The first code a plugin may use for its own errors.
    pub const FIRST_PLUGIN_SPECIFIC: u32 = 100;
}

/// A CNI error: what the plugin prints on failure.
///
/// `Display` is the short message only; `details` carries the long form (the underlying parser
/// error, the offending value) and is emitted only when non-empty, as libcni does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    /// A code from [`codes`], or 100+ for plugin-specific errors.
    pub code: u32,
    /// Short, human-readable message.
    pub msg: String,
    /// Longer explanation; empty when there is none.
    pub details: String,
}

// === impl CniError ===

impl CniError {
    /// An error with `code` and `msg` and no details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Replaces the details.
    #[must_use]
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Code 1: the version in `msg` is not supported.
    pub fn incompatible_version(msg: impl Into<String>) -> Self {
        Self::new(codes::INCOMPATIBLE_VERSION, msg)
    }

    /// Code 4: invalid or missing `CNI_*` variables. `msg` must name them.
    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(codes::INVALID_ENV, msg)
    }

    /// Code 5: an I/O failure at the boundary (the caller's stdin read, for instance).
    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(codes::IO, msg)
    }

    /// Code 6: content could not be decoded.
    pub fn decoding(msg: impl Into<String>) -> Self {
        Self::new(codes::DECODING, msg)
    }

    /// Code 7: the network configuration is invalid.
    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(codes::INVALID_CONFIG, msg)
    }

    /// Code 11: transient, retry later.
    pub fn try_again_later(msg: impl Into<String>) -> Self {
        Self::new(codes::TRY_AGAIN_LATER, msg)
    }

    /// Code 50 (STATUS): not able to serve ADD.
    pub fn not_available(msg: impl Into<String>) -> Self {
        Self::new(codes::NOT_AVAILABLE, msg)
    }

    /// Code 51 (STATUS): not able to serve ADD, existing pods may have limited connectivity.
    pub fn limited_connectivity(msg: impl Into<String>) -> Self {
        Self::new(codes::LIMITED_CONNECTIVITY, msg)
    }

    /// The error object for stdout, stamped with `cni_version` (the config's version, or the
    /// plugin's highest when the config could not be read). `details` is omitted when empty.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut obj = Map::new();
        obj.insert("cniVersion".into(), json!(cni_version));
        obj.insert("code".into(), json!(self.code));
        obj.insert("msg".into(), json!(self.msg));
        if !self.details.is_empty() {
            obj.insert("details".into(), json!(self.details));
        }
        Value::Object(obj)
    }

    /// Classifies a serde_json failure: syntax/EOF/IO problems are decoding failures (6), a
    /// well-formed document of the wrong shape is an invalid config (7).
    pub(crate) fn from_config_json(what: &str, err: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        match err.classify() {
            Category::Data => Self::invalid_config(format!("invalid {what}")),
            Category::Syntax | Category::Eof | Category::Io => {
                Self::decoding(format!("failed to decode {what}"))
            }
        }
        .with_details(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_with_details() {
        let err = CniError::new(codes::TRY_AGAIN_LATER, "ipamd busy").with_details("queue full");
        assert_eq!(
            err.to_json("1.0.0"),
            json!({"cniVersion": "1.0.0", "code": 11, "msg": "ipamd busy", "details": "queue full"})
        );
    }

    #[test]
    fn json_omits_empty_details() {
        let v = CniError::new(123, "plugin specific").to_json("0.4.0");
        let obj = v.as_object().expect("object");
        assert!(!obj.contains_key("details"), "{v}");
        assert_eq!(obj.len(), 3);
        assert_eq!(v["code"], 123);
    }

    #[test]
    fn display_is_the_short_message() {
        let err = CniError::not_available("ipamd unreachable").with_details("connect: ENOENT");
        assert_eq!(err.to_string(), "ipamd unreachable");
        assert_eq!(err.code, 50);
        assert_eq!(CniError::limited_connectivity("x").code, 51);
    }

    #[test]
    fn serde_errors_are_classified() {
        let syntax = serde_json::from_str::<Value>("{").expect_err("eof");
        assert_eq!(
            CniError::from_config_json("x", &syntax).code,
            codes::DECODING
        );
        let data = serde_json::from_str::<u32>("\"a\"").expect_err("type");
        assert_eq!(
            CniError::from_config_json("x", &data).code,
            codes::INVALID_CONFIG
        );
    }
}
