//! The repository around this crate: paths, `kubectl kustomize`, `cargo metadata`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::CheckError;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// A file of the repository as text.
pub fn read(rel: &str) -> Result<String, CheckError> {
    let p = root().join(rel);
    std::fs::read_to_string(&p).map_err(|source| CheckError::Io {
        path: p.display().to_string(),
        source,
    })
}

/// The kubectl to render with: `$KUBECTL`, else `kubectl` on PATH (Debian's kubernetes-client, or any other).
pub fn kubectl() -> String {
    std::env::var("KUBECTL")
        .ok()
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| "kubectl".into())
}

/// `kubectl kustomize <dir>` (dir relative to the repository root); its stdout.
pub fn kustomize(dir: &str) -> Result<String, CheckError> {
    let k = kubectl();
    let cmd = format!("{k} kustomize {dir}");
    let out = Command::new(&k)
        .arg("kustomize")
        .arg(root().join(dir))
        .output()
        .map_err(|e| CheckError::Command {
            cmd: cmd.clone(),
            message: format!("{e} (install kubernetes-client: scripts/deps.sh does)"),
        })?;
    if !out.status.success() {
        return Err(CheckError::Command {
            cmd,
            message: String::from_utf8_lossy(&out.stderr).to_string(),
        });
    }
    String::from_utf8(out.stdout).map_err(|e| CheckError::Command {
        cmd,
        message: e.to_string(),
    })
}

/// What the workspace builds, from `cargo metadata --no-deps`.
#[derive(Debug, Clone, Default)]
pub struct Workspace {
    /// package name → its binary targets.
    pub bins: BTreeMap<String, Vec<String>>,
    /// package name → its declared features.
    pub features: BTreeMap<String, Vec<String>>,
    /// The workspace's `rust-version` (e.g. "1.88"), from the root Cargo.toml.
    pub rust_version: Option<String>,
    /// Member directories, relative to the root.
    pub member_dirs: Vec<String>,
}

/// Reads the workspace with `cargo metadata --no-deps --offline`.
pub fn workspace() -> Result<Workspace, CheckError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cmd = format!("{cargo} metadata --no-deps --offline --format-version 1");
    let out = Command::new(&cargo)
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(root())
        .output()
        .map_err(|e| CheckError::Command {
            cmd: cmd.clone(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(CheckError::Command {
            cmd,
            message: String::from_utf8_lossy(&out.stderr).to_string(),
        });
    }
    let meta: Value = serde_json::from_slice(&out.stdout).map_err(|e| CheckError::Command {
        cmd,
        message: e.to_string(),
    })?;
    let root_dir = root().canonicalize().unwrap_or_else(|_| root());
    let mut ws = Workspace::default();
    for p in meta["packages"].as_array().cloned().unwrap_or_default() {
        let name = p["name"].as_str().unwrap_or_default().to_string();
        let bins = p["targets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|x| x == "bin"))
            })
            .filter_map(|t| t["name"].as_str().map(str::to_string))
            .collect();
        let features = p["features"]
            .as_object()
            .map(|f| f.keys().cloned().collect())
            .unwrap_or_default();
        if ws.rust_version.is_none() {
            ws.rust_version = p["rust_version"].as_str().map(str::to_string);
        }
        if let Some(dir) = p["manifest_path"]
            .as_str()
            .and_then(|m| Path::new(m).parent())
            .and_then(|d| d.strip_prefix(&root_dir).ok())
        {
            ws.member_dirs.push(dir.display().to_string());
        }
        ws.bins.insert(name.clone(), bins);
        ws.features.insert(name, features);
    }
    Ok(ws)
}
