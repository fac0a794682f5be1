//! Errors of the netlink layer.

use std::path::PathBuf;

/// A failed netlink or namespace operation. The message names the operation and the object.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The namespace file could not be opened (missing, or not a file we may read).
    #[error("cannot open network namespace {path}: {source}")]
    NetnsOpen {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file exists but is not a network namespace, or we may not enter it.
    #[error("cannot enter network namespace {path}: {source}")]
    NetnsEnter { path: PathBuf, source: nix::Error },
    /// The netlink socket could not be created.
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
    /// A thread that entered a namespace for a moment could not go back to its own: it is left in `path`'s
    /// namespace (see [`crate::netns::in_netns_file_here`]).
    #[error("cannot return from network namespace {path} to the thread's own: {source}")]
    NetnsReturn { path: PathBuf, source: nix::Error },
    /// The helper thread that opens sockets inside a namespace died.
    #[error("netns helper thread panicked")]
    HelperThread,
    /// The kernel (or the netlink library) refused a request.
    #[error("{op}: {source}")]
    Request {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// Something of that name exists and is not ours.
    #[error("{0}")]
    Conflict(String),
    /// A dump's answer was interrupted by changes (`NLM_F_DUMP_INTR`) every time it was asked.
    #[error("{op}: the kernel flagged the dump interrupted {attempts} times in a row")]
    DumpInterrupted { op: String, attempts: u32 },
    /// A link we needed is not there.
    #[error("link {0} not found")]
    LinkNotFound(String),
    /// A sysctl (`/proc/sys/...`) could not be written.
    #[error("cannot set {key}={value}: {source}")]
    Sysctl {
        key: String,
        value: String,
        source: std::io::Error,
    },
}

impl NetlinkError {
    pub(crate) fn request(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        NetlinkError::Request {
            op: op.into(),
            source,
        }
    }

    /// The kernel's errno (positive, e.g. `libc::EEXIST` = 17), when the kernel answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => Some(-msg.raw_code()),
            NetlinkError::NetnsEnter { source, .. } => Some(*source as i32),
            NetlinkError::NetnsOpen { source, .. }
            | NetlinkError::Socket(source)
            | NetlinkError::Sysctl { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the error means "the object does not exist" (ENOENT, ESRCH, ENODEV).
    pub fn is_not_found(&self) -> bool {
        matches!(self, NetlinkError::LinkNotFound(_))
            || matches!(self.errno(), Some(ENOENT | ESRCH | ENODEV))
    }

    /// True when the error means "the object already exists".
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(EEXIST)
    }
}

pub(crate) const ENOENT: i32 = 2;
pub(crate) const ESRCH: i32 = 3;
pub(crate) const EEXIST: i32 = 17;
pub(crate) const ENODEV: i32 = 19;
