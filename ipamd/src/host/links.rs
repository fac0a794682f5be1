//! Links by interface index, as the veth reaper needs them.
//!
//! The reaper deletes a pod's host veth by the index the plugin saw, and only while that index still carries the
//! expected name (see [`crate::reaper`]): Linux allocates indexes cyclically per namespace, so an index names one
//! link for a long time, while a re-ADD creates a new link under the same name. Hence two calls, never one
//! "delete by name".

use datapath::{Netlink, NetlinkError};

/// The name of the link at `index`; `None` when there is none.
pub(super) async fn name_of(nl: &Netlink, index: u32) -> Result<Option<String>, NetlinkError> {
    Ok(nl.link_by_index(index).await?.map(|l| l.name))
}

/// Deletes the link at `index`; `false` when it was already gone.
pub(super) async fn delete(nl: &Netlink, index: u32) -> Result<bool, NetlinkError> {
    nl.delete_link_by_index(index).await
}
