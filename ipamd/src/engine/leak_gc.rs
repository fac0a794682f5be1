//! Leaked-ENI cleanup: ENIs a crash left behind in EC2, found and deleted; and the tags and DeleteOnTermination
//! an adopted ENI needs so that it never becomes one.
//!
//! The reconcile timers ([`super::reconcile::Timers`]) run the cleanup first after a random 0–300 s, then hourly
//! plus up to 5 min of jitter (off with `DISABLE_LEAKED_ENI_CLEANUP` or `DISABLE_NETWORK_RESOURCE_PROVISIONING`).
//! Candidates are the anchor's: `available` (not attached) ENIs in this VPC carrying the
//! `node.k8s.amazonaws.com/instance_id` tag (any instance; with `CLUSTER_NAME`, also the cluster tag with this
//! cluster's name), with the `aws-K8S-` description. One is deleted when its `createdAt` tag is older than 5
//! minutes and it is
//! - this instance's (a crash between create and attach, or between detach and delete), or
//! - with `CLUSTER_NAME` set, another node's of this cluster whose instance EC2 reports `terminated` or no longer
//!   knows (anchor #69: a node that died before cleaning up). Another cluster's ENIs never match the filter,
//!   and a running (or stopped) node's ENIs are its own to clean up. Without `CLUSTER_NAME` other nodes' ENIs are
//!   left alone: nothing tells this cluster's from another's.
//!
//! One without `createdAt` is stamped now and left for a later run.
//!
//! **Adoption** ([`Node::finish_adoption`]): an ENI of ours found attached (after a crash between attach and
//! ModifyNetworkInterfaceAttribute, or an attach that timed out) gets DeleteOnTermination, and an ENI adopted
//! without this instance's `instance_id` tag gets it, as the anchor tags the ENIs it manages; so neither leaks when
//! the node terminates nor hides from this cleanup.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Node;
use ec2_api::{
    Ec2, Ec2Error, EniDescription, EniFilter, ENI_DESCRIPTION_PREFIX, TAG_CLUSTER_NAME,
    TAG_CREATED_AT, TAG_INSTANCE_ID,
};

/// Leaked-ENI cleanup period.
pub const LEAK_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// Random delay before the first leak check, and jitter added to every later one.
pub const LEAK_CHECK_JITTER: Duration = Duration::from_secs(300);
/// An available ENI younger than this may still be on its way to being attached.
pub const LEAK_MIN_AGE: Duration = Duration::from_secs(300);

impl Node {
    /// Deletes this instance's leaked ENIs (see the module docs). Returns how many were deleted.
    pub async fn cleanup_leaked_enis(&self) -> Result<usize, Ec2Error> {
        let _actor = self.actor.lock().await;
        let mut filter = EniFilter {
            vpc_id: Some(self.meta.vpc_id.clone()),
            status: Some("available".into()),
            ..EniFilter::default()
        };
        filter.tag_keys.push(TAG_INSTANCE_ID.to_string());
        if !self.config.cluster_name.is_empty() {
            filter.tags.insert(
                TAG_CLUSTER_NAME.to_string(),
                self.config.cluster_name.clone(),
            );
        }
        let wall = self.deps.clock.wall();
        let mut deleted = 0;
        for eni in self.ec2.list_network_interfaces(&filter).await? {
            if !eni.description.starts_with(ENI_DESCRIPTION_PREFIX) {
                continue;
            }
            let owner = eni.tags.get(TAG_INSTANCE_ID).cloned().unwrap_or_default();
            if owner != self.meta.instance_id
                && (self.config.cluster_name.is_empty() || !self.instance_gone(&owner).await)
            {
                continue;
            }
            let created = eni
                .tags
                .get(TAG_CREATED_AT)
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            match created {
                None => {
                    let mut tags = BTreeMap::new();
                    tags.insert(
                        TAG_CREATED_AT.to_string(),
                        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + wall).to_string(),
                    );
                    self.ec2.create_tags(&eni.id, &tags).await?;
                }
                Some(t) if wall.saturating_sub(t) >= LEAK_MIN_AGE => {
                    match self.ec2.delete_network_interface(&eni.id).await {
                        Ok(()) | Err(Ec2Error::NotFound { .. }) => {
                            tracing::info!(eni = %eni.id, "deleted leaked ENI");
                            deleted += 1;
                        }
                        Err(e) => {
                            tracing::warn!(eni = %eni.id, error = %e, "cannot delete leaked ENI")
                        }
                    }
                }
                Some(_) => {}
            }
        }
        Ok(deleted)
    }

    /// Whether EC2 reports `instance_id` terminated or no longer knows it (an empty ID is no instance).
    async fn instance_gone(&self, instance_id: &str) -> bool {
        if instance_id.is_empty() {
            return false;
        }
        match self.ec2.describe_instance(instance_id).await {
            Ok(i) => i.state == "terminated",
            Err(Ec2Error::NotFound { .. }) => true,
            Err(e) => {
                tracing::debug!(instance = instance_id, error = %e, "cannot tell whether the instance is gone");
                false
            }
        }
    }

    /// An ENI of ours just adopted (see the module docs): DeleteOnTermination set and this instance's tag added
    /// where missing. Failures are logged; the next adoption (after a restart) tries again.
    pub(crate) async fn finish_adoption(&self, d: &EniDescription) {
        if d.device_index == Some(0) {
            return;
        }
        if !d.delete_on_termination {
            if let Some(attachment) = &d.attachment_id {
                match self.ec2.set_delete_on_termination(&d.id, attachment).await {
                    Ok(()) => tracing::info!(eni = %d.id, "adopted ENI set to DeleteOnTermination"),
                    Err(e) => {
                        tracing::warn!(eni = %d.id, error = %e, "cannot set DeleteOnTermination on an adopted ENI")
                    }
                }
            }
        }
        if d.tags.get(TAG_INSTANCE_ID) != Some(&self.meta.instance_id) {
            let mut tags = BTreeMap::new();
            tags.insert(TAG_INSTANCE_ID.to_string(), self.meta.instance_id.clone());
            if let Err(e) = self.ec2.create_tags(&d.id, &tags).await {
                tracing::warn!(eni = %d.id, error = %e, "cannot tag an adopted ENI with this instance");
            }
        }
    }
}
