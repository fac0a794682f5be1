//! The engine's side of the checkpoint ([`super::checkpoint`]): the durable ADD and DEL wait here until their
//! change is written ([`Node::persist`], a group commit: one write covers every change made before it), and the
//! background flusher ([`Node::run_checkpointer`]) writes the changes nobody waits for (GC, reconcile evictions,
//! releases of restored pods) within a second.

use std::sync::Arc;
use std::time::Duration;

use super::checkpoint::{Checkpoint, CheckpointError};
use super::Node;
use crate::core::datastore::AssignmentRecord;
use crate::sync::lock;

impl Node {
    /// Returns once datastore generation `generation` is in the checkpoint (at once without a checkpoint).
    pub async fn persist(&self, generation: u64) -> Result<(), CheckpointError> {
        match &self.checkpoint {
            None => Ok(()),
            Some(cp) => cp.persist(generation, || self.checkpoint_snapshot()).await,
        }
    }

    /// Writes the current assignments to the checkpoint now (startup, shutdown).
    pub async fn flush_checkpoint(&self) -> Result<(), CheckpointError> {
        match &self.checkpoint {
            None => Ok(()),
            Some(cp) => cp.persist_now(|| self.checkpoint_snapshot()).await,
        }
    }

    pub(super) fn checkpoint_snapshot(&self) -> (u64, Vec<AssignmentRecord>) {
        let ds = lock(&self.ds);
        (ds.generation(), ds.records())
    }

    /// The checkpoint writer, if any.
    pub fn checkpoint(&self) -> Option<&Arc<Checkpoint>> {
        self.checkpoint.as_ref()
    }

    /// Writes changes nobody waits for (GC, reconcile evictions, releases of restored pods) within a second, until
    /// `stop` turns true. Failures are logged and retried.
    pub async fn run_checkpointer(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(cp) = self.checkpoint.clone() else {
            return;
        };
        loop {
            if *stop.borrow() {
                return;
            }
            let generation = lock(&self.ds).generation();
            if generation > cp.durable_generation() {
                if let Err(e) = self.persist(generation).await {
                    tracing::error!(error = %e, "checkpoint write failed; retrying");
                }
            }
            tokio::select! {
                _ = stop.changed() => {}
                () = self.flush.notified() => {}
                () = self.deps.clock.sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
