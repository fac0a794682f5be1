//! The account on disk (see the crate docs, "Persistence"): written after every call, loaded at launch.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::hotplug::{NicHotplug, SimNic};
use crate::imds::imds_eni_of;
use crate::spec::{SimError, SimSpec};
use crate::state::{addresses, subnet_free, SimState};
use crate::SimEc2;

impl SimEc2 {
    /// The account as saved in `bytes` (see the module docs).
    pub(crate) async fn resume(
        spec: SimSpec,
        hotplug: Arc<dyn NicHotplug>,
        path: &std::path::Path,
        bytes: &[u8],
    ) -> Result<SimEc2, SimError> {
        let bad = |reason: String| SimError::State {
            path: path.to_owned(),
            reason,
        };
        let mut state: SimState =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("cannot parse it: {e}")))?;
        if state.instance_type != spec.instance_type {
            return Err(bad(format!(
                "it is the state of a {} instance, not {}",
                state.instance_type, spec.instance_type
            )));
        }
        // Free addresses: everything but the reserved ones, other tenants' and what ENIs hold.
        let mut used: BTreeSet<Ipv4Addr> = BTreeSet::new();
        for e in state.enis.values() {
            used.insert(e.primary_ip);
            used.extend(addresses(&e.secondary_ips, &e.ipv4_prefixes));
        }
        for sub in state.subnets.values_mut() {
            sub.free = subnet_free(sub.cidr, &spec.taken)
                .into_iter()
                .filter(|ip| !used.contains(ip) && !sub.tenants.contains(ip))
                .collect();
            sub.free_count = sub.free.len();
        }
        // An attachment the crash interrupted completes, as EC2 would have completed it.
        for e in state.enis.values_mut() {
            if e.status == "attaching" {
                e.status = "in-use".into();
            }
        }
        state.imds_view = state
            .enis
            .values()
            .filter_map(|e| imds_eni_of(e).map(|v| (e.id.clone(), v)))
            .collect();
        let nics: Vec<(SimNic, Vec<Ipv4Addr>)> = state
            .enis
            .values()
            .filter(|e| e.status == "in-use")
            .filter_map(|e| {
                Some((
                    SimNic::of(e)?,
                    addresses(&e.secondary_ips, &e.ipv4_prefixes),
                ))
            })
            .collect();
        let enis = nics.len();
        let sim = SimEc2::assemble(state, spec, hotplug);
        sim.hotplug
            .restore(nics)
            .await
            .map_err(|reason| SimError::Restore {
                path: path.to_owned(),
                reason,
            })?;
        sim.snapshot();
        tracing::info!(path = %path.display(), enis, "simulated EC2 resumed from its saved state");
        Ok(sim)
    }

    pub(crate) fn snapshot(&self) {
        let Some(path) = &self.state_file else {
            return;
        };
        // One writer at a time, serialising under the same lock, so the file always holds the latest state.
        let _file = self.file_lock.lock().unwrap_or_else(|p| p.into_inner());
        let json = {
            let mut st = self.lock();
            for s in st.subnets.values_mut() {
                s.free_count = s.free.len();
            }
            serde_json::to_vec_pretty(&*st)
        };
        let json = match json {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serialise simulator state");
                return;
            }
        };
        if let Err(e) = hostfs::write_atomic(path, &json, hostfs::STATE_FILE_MODE) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write simulator state");
        }
    }
}
