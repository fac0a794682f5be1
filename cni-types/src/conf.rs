//! The plugin configuration on stdin: the keys every plugin shares, and typed parsing of a
//! plugin's own config on top of them.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::version::{highest_mutual_version, is_supported, SUPPORTED_VERSIONS};
use crate::{CniError, CniResult};

/// The keys every plugin config has.
///
/// Lenient: unknown keys are ignored, because runtimes inject keys the plugin never declared
/// (`runtimeConfig`, `args`, `cni.dev/*`, Multus' extras). Plugins embed it with
/// `#[serde(flatten)]` next to their own keys and load the whole thing with
/// [`parse_plugin_conf`].
///
/// `cni.dev/valid-attachments` is also read under its pre-1.1.0-final name
/// `cni.dev/attachments`. libcni sends both keys with the same list; when both are present the
/// new name wins. (A plain serde `alias` would reject that input as a duplicate field, hence the
/// decoding detour through a private wire struct.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "NetConfWire")]
pub struct NetConf {
    /// Spec version of this config and of the answer the runtime expects.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// 1.1.0: every version the config supports; the runtime picks one and sets `cniVersion`.
    #[serde(rename = "cniVersions", skip_serializing_if = "Option::is_none")]
    pub cni_versions: Option<Vec<String>>,
    /// Network name; part of the attachment key `(name, CNI_CONTAINERID, CNI_IFNAME)`.
    pub name: String,
    /// Plugin executable name.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Conflist-level: runtimes must not call CHECK when true.
    #[serde(rename = "disableCheck", skip_serializing_if = "is_false")]
    pub disable_check: bool,
    /// Conflist-level (1.1.0): runtimes must not call GC when true.
    #[serde(rename = "disableGC", skip_serializing_if = "is_false")]
    pub disable_gc: bool,
    /// Capabilities the plugin advertises; the runtime fills `runtimeConfig` accordingly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<BTreeMap<String, bool>>,
    /// Free-form runtime-supplied data; plugins ignore what they do not understand.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// The previous plugin's (or the cached ADD's) result, raw; decode with
    /// [`NetConf::prev_result`].
    #[serde(rename = "prevResult", skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<Value>,
    /// Capability values the runtime passes (pod annotations, port mappings, ...).
    #[serde(rename = "runtimeConfig", skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<Value>,
    /// GC (1.1.0): attachments still in use; anything else may be cleaned up.
    #[serde(
        rename = "cni.dev/valid-attachments",
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// One still-valid attachment in a GC request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    /// `CNI_CONTAINERID` of the attachment.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `CNI_IFNAME` of the attachment.
    pub ifname: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Decoding shape of [`NetConf`]: identical but for carrying the legacy attachments key.
#[derive(Deserialize)]
struct NetConfWire {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    #[serde(rename = "cniVersions", default)]
    cni_versions: Option<Vec<String>>,
    name: String,
    #[serde(rename = "type")]
    plugin_type: String,
    #[serde(rename = "disableCheck", default)]
    disable_check: bool,
    #[serde(rename = "disableGC", default)]
    disable_gc: bool,
    #[serde(default)]
    capabilities: Option<BTreeMap<String, bool>>,
    #[serde(default)]
    args: Option<Value>,
    #[serde(rename = "prevResult", default)]
    prev_result: Option<Value>,
    #[serde(rename = "runtimeConfig", default)]
    runtime_config: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    valid_attachments: Option<Vec<Attachment>>,
    #[serde(rename = "cni.dev/attachments", default)]
    legacy_attachments: Option<Vec<Attachment>>,
}

impl From<NetConfWire> for NetConf {
    fn from(w: NetConfWire) -> NetConf {
        NetConf {
            cni_version: w.cni_version,
            cni_versions: w.cni_versions,
            name: w.name,
            plugin_type: w.plugin_type,
            disable_check: w.disable_check,
            disable_gc: w.disable_gc,
            capabilities: w.capabilities,
            args: w.args,
            prev_result: w.prev_result,
            runtime_config: w.runtime_config,
            valid_attachments: w.valid_attachments.or(w.legacy_attachments),
        }
    }
}

// === impl NetConf ===

impl NetConf {
    /// Parses and validates a plugin config.
    ///
    /// Checks, in the order libcni's skel applies them: the bytes are JSON (else code 6); it is
    /// an object with a non-empty `name` and `type` (else 7); its `cniVersion` is one we support
    /// (else 1). A config without `cniVersion` but with `cniVersions` gets the highest version we
    /// share written into `cniVersion`; without either it is code 1 (a missing version means
    /// 0.1.0 in libcni). Known keys of the wrong JSON type are code 7.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        parse_plugin_conf(bytes)
    }

    /// Decodes `prevResult`, whatever supported version wrote it. `None` when absent or null.
    pub fn prev_result(&self) -> Result<Option<CniResult>, CniError> {
        self.prev_result
            .as_ref()
            .map(CniResult::from_json)
            .transpose()
    }
}

/// Parses a plugin's own typed config after the same checks as [`NetConf::parse`].
///
/// `T` usually embeds [`NetConf`] with `#[serde(flatten)]`. JSON syntax errors are code 6; the
/// checks on `name`, `type` and the version run before `T` sees the document, so their codes
/// (7, 7, 1) do not depend on `T`; a document that does not fit `T` is code 7 with serde's
/// message in `details`.
pub fn parse_plugin_conf<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CniError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| CniError::from_config_json("network config", &e))?;
    let Value::Object(mut map) = value else {
        return Err(CniError::invalid_config(
            "network config must be a JSON object",
        ));
    };
    check_common(&mut map)?;
    serde_json::from_value(Value::Object(map))
        .map_err(|e| CniError::from_config_json("network config", &e))
}

/// The checks every config gets before typed decoding; may fill in `cniVersion` from
/// `cniVersions`.
fn check_common(map: &mut Map<String, Value>) -> Result<(), CniError> {
    for (key, what) in [("name", "network name"), ("type", "plugin type")] {
        match map.get(key) {
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(CniError::invalid_config(format!("missing {what}")))
            }
            Some(other) => {
                return Err(CniError::invalid_config(format!("invalid {what}"))
                    .with_details(format!("\"{key}\" must be a string, got {other}")))
            }
        }
    }

    let version =
        match map.get("cniVersion") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                let offered = offered_versions(map.get("cniVersions"))?;
                match offered {
                    None => {
                        return Err(CniError::incompatible_version("missing cniVersion")
                            .with_details(format!(
                                "a config without cniVersion is 0.1.0; plugin supports {}",
                                SUPPORTED_VERSIONS.join(", ")
                            )))
                    }
                    Some(list) => {
                        let picked = highest_mutual_version(&list).ok_or_else(|| {
                            CniError::incompatible_version("incompatible CNI versions")
                                .with_details(format!(
                                    "config offers {}, plugin supports {}",
                                    list.join(", "),
                                    SUPPORTED_VERSIONS.join(", ")
                                ))
                        })?;
                        map.insert("cniVersion".into(), Value::String(picked.into()));
                        picked.to_string()
                    }
                }
            }
            Some(other) => {
                return Err(CniError::invalid_config("invalid cniVersion")
                    .with_details(format!("\"cniVersion\" must be a string, got {other}")))
            }
        };
    if !is_supported(&version) {
        return Err(
            CniError::incompatible_version("incompatible CNI versions").with_details(format!(
                "config is \"{version}\", plugin supports {}",
                SUPPORTED_VERSIONS.join(", ")
            )),
        );
    }
    Ok(())
}

fn offered_versions(v: Option<&Value>) -> Result<Option<Vec<String>>, CniError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_string).ok_or_else(|| {
                    CniError::invalid_config("invalid cniVersions")
                        .with_details(format!("entries must be strings, got {i}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(CniError::invalid_config("invalid cniVersions")
            .with_details(format!("\"cniVersions\" must be a list, got {other}"))),
    }
}
