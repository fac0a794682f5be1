//! The cluster's EC2 schedule ([`crate::schedule`]) on the Kubernetes API: the `coordination.k8s.io/v1` Lease
//! [`crate::schedule::LEASE_NAME`] in the pod's namespace, its annotations one theoretical arrival time per EC2
//! API.
//!
//! A reservation is a GET of the lease and a PUT of it with the resourceVersion read (a 409 Conflict: another
//! node wrote first, read again; at most [`CONFLICT_ATTEMPTS`] times). No lease yet (404): it is created (a 409
//! AlreadyExists: another node created it first, read again). Each request is bounded by [`REQUEST_TIMEOUT`], so
//! an API server that does not answer costs a call at most that once before the pacer sets the schedule aside.
//! The service account needs `get`, `update` and `create` on leases in its namespace (`deploy/base/rbac.yaml`);
//! a 403 is [`ScheduleError::Forbidden`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Api, PostParams};
use ::kube::Client;
use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::schedule::{
    annotation_key, format_tat, gcra, parse_tat, peek_waits, ClusterSchedule, Limit, ScheduleError,
    CONFLICT_ATTEMPTS, LEASE_NAME,
};
use ec2_api::clock::Clock;

/// The longest one request to the API server may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The schedule in the Lease (see the module docs).
pub struct LeaseSchedule {
    api: Api<Lease>,
    namespace: String,
    clock: Arc<dyn Clock>,
}

impl LeaseSchedule {
    pub fn new(client: Client, namespace: &str, clock: Arc<dyn Clock>) -> LeaseSchedule {
        LeaseSchedule {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            clock,
        }
    }

    fn lease_name(&self) -> String {
        format!("{}/{LEASE_NAME}", self.namespace)
    }

    fn error(&self, e: ::kube::Error) -> ScheduleError {
        match e {
            ::kube::Error::Api(s) if s.code == 403 => ScheduleError::Forbidden {
                lease: self.lease_name(),
                message: s.message,
            },
            ::kube::Error::Api(s) => ScheduleError::Api {
                code: s.code,
                message: s.message,
            },
            other => ScheduleError::Unreachable(other.to_string()),
        }
    }

    /// One request, bounded by [`REQUEST_TIMEOUT`].
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ::kube::Error>>,
    ) -> Result<T, ScheduleError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
            Ok(r) => r.map_err(|e| self.error(e)),
            Err(_) => Err(ScheduleError::Unreachable(format!(
                "no answer within {}s",
                REQUEST_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The lease, or `None` when there is none yet.
    async fn read(&self) -> Result<Option<Lease>, ScheduleError> {
        match self.bounded(self.api.get(LEASE_NAME)).await {
            Ok(l) => Ok(Some(l)),
            Err(ScheduleError::Api { code: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn is_conflict(e: &ScheduleError) -> bool {
    matches!(e, ScheduleError::Api { code: 409, .. })
}

#[async_trait]
impl ClusterSchedule for LeaseSchedule {
    async fn reserve(&self, api: &'static str, limit: Limit) -> Result<Duration, ScheduleError> {
        let key = annotation_key(api);
        for attempt in 0..CONFLICT_ATTEMPTS {
            let lease = self.read().await?;
            let now_us = self.clock.wall().as_micros() as u64;
            let stored = lease
                .as_ref()
                .and_then(|l| l.metadata.annotations.as_ref())
                .and_then(|a| a.get(&key))
                .and_then(|v| parse_tat(v));
            let grant = gcra(stored, now_us, limit);
            let written = match lease {
                None => {
                    let new = Lease {
                        metadata: ObjectMeta {
                            name: Some(LEASE_NAME.into()),
                            namespace: Some(self.namespace.clone()),
                            annotations: Some(BTreeMap::from([(
                                key.clone(),
                                format_tat(grant.tat_us),
                            )])),
                            ..ObjectMeta::default()
                        },
                        spec: Some(LeaseSpec::default()),
                    };
                    self.bounded(self.api.create(&PostParams::default(), &new))
                        .await
                }
                Some(mut l) => {
                    l.metadata
                        .annotations
                        .get_or_insert_with(BTreeMap::new)
                        .insert(key.clone(), format_tat(grant.tat_us));
                    self.bounded(self.api.replace(LEASE_NAME, &PostParams::default(), &l))
                        .await
                }
            };
            match written {
                Ok(_) => {
                    let now_us = self.clock.wall().as_micros() as u64;
                    return Ok(Duration::from_micros(grant.slot_us.saturating_sub(now_us)));
                }
                Err(e) if is_conflict(&e) => {
                    self.clock
                        .sleep(crate::schedule::conflict_backoff(attempt))
                        .await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ScheduleError::Contended {
            attempts: CONFLICT_ATTEMPTS,
        })
    }

    async fn peek(&self, apis: &[(&'static str, Limit)]) -> Result<Vec<Duration>, ScheduleError> {
        let annotations = self
            .read()
            .await?
            .and_then(|l| l.metadata.annotations)
            .unwrap_or_default();
        Ok(peek_waits(&annotations, apis, self.clock.wall()))
    }

    fn describe(&self) -> String {
        format!("Lease {}", self.lease_name())
    }
}
