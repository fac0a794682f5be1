//! The gRPC client to ipamd over its Unix socket, with a deadline on every call (the anchor has none, so a hung
//! ipamd hangs the runtime's sandbox creation).

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_cni_proto::{CniBackendClient, IpamdControlClient};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Why ipamd could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("ipamd unreachable at {path}: {reason}")]
    Unreachable { path: PathBuf, reason: String },
    #[error("ipamd at {path} did not answer {call} within {timeout:?}")]
    Timeout {
        path: PathBuf,
        call: &'static str,
        timeout: Duration,
    },
    #[error("ipamd at {path} failed {call}: {status}")]
    Rpc {
        path: PathBuf,
        call: &'static str,
        status: String,
    },
}

/// Connects to ipamd's CNIBackend. Fails fast (within `timeout`) when nobody listens.
pub async fn connect(
    path: &Path,
    timeout: Duration,
) -> Result<CniBackendClient<Channel>, ClientError> {
    Ok(CniBackendClient::new(channel(path, timeout).await?))
}

/// Connects to ipamd's IpamdControl service.
pub async fn connect_control(
    path: &Path,
    timeout: Duration,
) -> Result<IpamdControlClient<Channel>, ClientError> {
    Ok(IpamdControlClient::new(channel(path, timeout).await?))
}

async fn channel(path: &Path, timeout: Duration) -> Result<Channel, ClientError> {
    let unreachable = |reason: String| ClientError::Unreachable {
        path: path.to_owned(),
        reason,
    };
    // The URI is required by the HTTP/2 layer but never resolved: the connector always dials the socket.
    let endpoint = Endpoint::try_from("http://ipamd.local")
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let socket = path.to_owned();
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| {
            let mut reason = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                reason = format!("{reason}: {s}");
                src = s.source();
            }
            unreachable(reason)
        })?;
    Ok(channel)
}

/// Maps a tonic status to our error.
pub fn rpc_error(
    path: &Path,
    call: &'static str,
    timeout: Duration,
    s: tonic::Status,
) -> ClientError {
    match s.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => ClientError::Timeout {
            path: path.to_owned(),
            call,
            timeout,
        },
        tonic::Code::Unavailable => ClientError::Unreachable {
            path: path.to_owned(),
            reason: s.message().to_string(),
        },
        _ => ClientError::Rpc {
            path: path.to_owned(),
            call,
            status: format!("{:?}: {}", s.code(), s.message()),
        },
    }
}
