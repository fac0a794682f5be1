//! The engine's side of the checkpoint ([`super::checkpoint`]): the durable ADD and DEL wait here until their
//! change is written ([`Node::persist`], a group commit: one write covers every change made before it), and the
//! background flusher ([`Node::run_checkpointer`]) writes the changes nobody waits for (GC, reconcile evictions,
//! releases of restored pods) within a second.

use std::sync::Arc;
use std::time::Duration;

use super::checkpoint::{Checkpoint, CheckpointError, Snapshot};
use super::Node;
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

    pub(super) fn checkpoint_snapshot(&self) -> Snapshot {
        // Both datastores under their locks together (IPv4 first), so the records and the generation agree.
        let ds = lock(&self.ds);
        let ds6 = lock(&self.ds6);
        Snapshot {
            generation: ds.generation() + ds6.generation(),
            v4: ds.records(),
            v6: ds6.records(),
        }
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
            let generation = self.generation();
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
