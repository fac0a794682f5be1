//! What the daemon serves: [`rpc`] (the plugin's `rpc.CNIBackend` service on the Unix socket) and [`http`] (the
//! metrics and introspection endpoints). The control service (`ipamd status`, readiness) is
//! [`crate::control`].

pub mod http;
pub mod rpc;
