//! Static checks of what ships: `deploy/` (the kustomize base, its overlays, the IAM policy) and the `Dockerfile`.
//!
//! ```text
//!   deploy/base/*.yaml, deploy/examples/*.yaml ──┐
//!   kubectl kustomize deploy/{base,overlays/*} ───┼─▶ strict::parse_object ─▶ typed k8s-openapi objects
//!                                                 │     (unknown or misspelled field = error, with its path)
//!                                                 └─▶ manifests::daemonset_problems (hostNetwork, probes, mounts,
//!                                                       capabilities, resources, env consistency)
//!   deploy/iam-policy.json ───▶ iam::Policy (strict) ─▶ actions == the EC2 calls (ec2_api::Api)
//!   Dockerfile, .dockerignore ─▶ dockerfile::Dockerfile ─▶ stages, COPY sources, built binaries, ENTRYPOINT
//! ```
//!
//! k8s-openapi's types accept unknown fields silently (as the API server's non-strict decoding does), so
//! [`strict`] decodes through `serde_ignored` and fails on every ignored key, then also re-serializes the typed
//! object and requires every field of the input to come back unchanged (which catches values the types coerce or
//! drop). The crate is small and separate so that k8s-openapi stays out of every other test binary.

pub mod dockerfile;
pub mod dockerignore;
pub mod iam;
pub mod manifests;
pub mod repo;
pub mod strict;

/// A check that failed, with enough context to find the spot.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{what}: not YAML: {message}")]
    Yaml { what: String, message: String },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("{what}: unknown or misspelled field(s): {}", paths.join(", "))]
    UnknownFields { what: String, paths: Vec<String> },
    #[error("{what}: {path} does not survive a round trip through the API type: {message}")]
    RoundTrip {
        what: String,
        path: String,
        message: String,
    },
    #[error("running {cmd}: {message}")]
    Command { cmd: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl CheckError {
    pub(crate) fn invalid(what: impl Into<String>, message: impl Into<String>) -> CheckError {
        CheckError::Invalid {
            what: what.into(),
            message: message.into(),
        }
    }
}
