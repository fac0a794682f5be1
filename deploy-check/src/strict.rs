//! Strict decoding of Kubernetes objects: YAML documents into k8s-openapi types, refusing unknown fields.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::CheckError;

/// The documents of a YAML stream as JSON values (empty documents skipped). Duplicate keys are an error.
pub fn yaml_documents(text: &str, what: &str) -> Result<Vec<Value>, CheckError> {
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        // Through YAML's own value first: it refuses duplicate keys, which a JSON map would silently merge.
        let yaml = serde_norway::Value::deserialize(doc).map_err(|e| CheckError::Yaml {
            what: what.to_string(),
            message: e.to_string(),
        })?;
        let v = serde_json::to_value(&yaml).map_err(|e| CheckError::Yaml {
            what: what.to_string(),
            message: e.to_string(),
        })?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Decodes `v` into `T`, failing on any key `T` does not know and on any field that does not survive a round trip.
pub fn strict<T: DeserializeOwned + Serialize>(v: &Value, what: &str) -> Result<T, CheckError> {
    let mut ignored = Vec::new();
    let typed: T = serde_ignored::deserialize(v.clone(), |path| ignored.push(path.to_string()))
        .map_err(|e| CheckError::invalid(what, e.to_string()))?;
    if !ignored.is_empty() {
        return Err(CheckError::UnknownFields {
            what: what.to_string(),
            paths: ignored,
        });
    }
    let back =
        serde_json::to_value(&typed).map_err(|e| CheckError::invalid(what, e.to_string()))?;
    contained(v, &back, "").map_err(|(path, message)| CheckError::RoundTrip {
        what: what.to_string(),
        path,
        message,
    })?;
    Ok(typed)
}

/// Every field of `orig` is in `back` with the same value (arrays element by element).
fn contained(orig: &Value, back: &Value, path: &str) -> Result<(), (String, String)> {
    match (orig, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (k, ov) in o {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(bv) => contained(ov, bv, &p)?,
                    None if ov.is_null() => {}
                    None => return Err((p, "dropped".into())),
                }
            }
            Ok(())
        }
        (Value::Array(o), Value::Array(b)) => {
            if o.len() != b.len() {
                return Err((
                    path.to_string(),
                    format!("{} elements became {}", o.len(), b.len()),
                ));
            }
            for (i, (ov, bv)) in o.iter().zip(b).enumerate() {
                contained(ov, bv, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (o, b) if o == b => Ok(()),
        (o, b) => Err((path.to_string(), format!("{o} became {b}"))),
    }
}

/// An ENIConfig as the CRD in deploy/base/crd-eniconfig.yaml defines it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EniConfig {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: EniConfigSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EniConfigSpec {
    pub subnet: String,
    /// Ours: more candidate subnets (ipamd takes the node zone's with most free addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
}

/// A Kubernetes object of one of the kinds deploy/ ships.
#[derive(Debug, Clone)]
pub enum Object {
    DaemonSet(Box<DaemonSet>),
    ServiceAccount(ServiceAccount),
    ConfigMap(ConfigMap),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    Crd(Box<CustomResourceDefinition>),
    EniConfig(EniConfig),
}

impl Object {
    /// `Kind/name`.
    pub fn id(&self) -> String {
        let (kind, meta) = match self {
            Object::DaemonSet(o) => ("DaemonSet", &o.metadata),
            Object::ServiceAccount(o) => ("ServiceAccount", &o.metadata),
            Object::ConfigMap(o) => ("ConfigMap", &o.metadata),
            Object::ClusterRole(o) => ("ClusterRole", &o.metadata),
            Object::ClusterRoleBinding(o) => ("ClusterRoleBinding", &o.metadata),
            Object::Role(o) => ("Role", &o.metadata),
            Object::RoleBinding(o) => ("RoleBinding", &o.metadata),
            Object::Crd(o) => ("CustomResourceDefinition", &o.metadata),
            Object::EniConfig(o) => ("ENIConfig", &o.metadata),
        };
        format!("{kind}/{}", meta.name.as_deref().unwrap_or("?"))
    }
}

/// Decodes one document strictly, by its apiVersion and kind; any other kind is an error.
pub fn parse_object(v: &Value, source: &str) -> Result<Object, CheckError> {
    let api = v["apiVersion"].as_str().unwrap_or_default();
    let kind = v["kind"].as_str().unwrap_or_default();
    let name = v["metadata"]["name"].as_str().unwrap_or("?");
    let what = format!("{source}: {kind}/{name}");
    Ok(match (api, kind) {
        ("apps/v1", "DaemonSet") => Object::DaemonSet(Box::new(strict(v, &what)?)),
        ("v1", "ServiceAccount") => Object::ServiceAccount(strict(v, &what)?),
        ("v1", "ConfigMap") => Object::ConfigMap(strict(v, &what)?),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => Object::ClusterRole(strict(v, &what)?),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            Object::ClusterRoleBinding(strict(v, &what)?)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => Object::Role(strict(v, &what)?),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => Object::RoleBinding(strict(v, &what)?),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            Object::Crd(Box::new(strict(v, &what)?))
        }
        ("crd.k8s.amazonaws.com/v1alpha1", "ENIConfig") => Object::EniConfig(strict(v, &what)?),
        _ => {
            return Err(CheckError::invalid(
                what,
                format!("unexpected apiVersion/kind {api:?}/{kind:?}"),
            ))
        }
    })
}

/// Every document of a YAML stream, decoded strictly.
pub fn parse_stream(text: &str, source: &str) -> Result<Vec<Object>, CheckError> {
    yaml_documents(text, source)?
        .iter()
        .map(|v| parse_object(v, source))
        .collect()
}

/// A kustomization as deploy/ writes them (the fields kustomize v2.0 to v5 all understand), strictly.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kustomization {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub bases: Vec<String>,
    #[serde(default)]
    pub patches_strategic_merge: Vec<String>,
}
