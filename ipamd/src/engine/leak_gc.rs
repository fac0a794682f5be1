//! Leaked-ENI cleanup: ENIs a crash left behind in EC2, found and deleted.
//!
//! The reconcile timers ([`super::reconcile::Timers`]) run it first after a random 0–300 s, then hourly plus up
//! to 5 min of jitter (off with off with
//! `DISABLE_LEAKED_ENI_CLEANUP` or `DISABLE_NETWORK_RESOURCE_PROVISIONING`). ENIs tagged with this instance's ID,
//! `available` (not attached), in this VPC (and cluster, with `CLUSTER_NAME`), with the `aws-K8S-` description,
//! and a `createdAt` tag older than 5 minutes are deleted. One without `createdAt` is stamped now and left for a
//! later run. These are the ENIs a crash between create and attach, or between detach and delete, leaves behind.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Node;
use ec2_api::{
    Ec2, Ec2Error, EniFilter, ENI_DESCRIPTION_PREFIX, TAG_CLUSTER_NAME, TAG_CREATED_AT,
    TAG_INSTANCE_ID,
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
        filter
            .tags
            .insert(TAG_INSTANCE_ID.to_string(), self.meta.instance_id.clone());
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
}
