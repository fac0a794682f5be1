//! IMDS as seen from the simulated instance: EC2's state as it was `imds_lag` ago.

use std::time::Duration;

use async_trait::async_trait;
use ec2_api::{EniDescription, Imds, ImdsEni, ImdsError, NodeMetadata};

use crate::state::SimState;
use crate::SimEc2;

pub(crate) fn imds_eni_of(e: &EniDescription) -> Option<ImdsEni> {
    if e.status != "in-use" {
        return None;
    }
    let device_number = e.device_index?;
    let mut ipv4s = vec![e.primary_ip];
    ipv4s.extend(e.secondary_ips.iter().copied());
    Some(ImdsEni {
        mac: e.mac.clone(),
        eni_id: e.id.clone(),
        device_number,
        subnet_id: e.subnet_id.clone(),
        subnet_cidr: e.subnet_cidr,
        ipv4s,
        ipv4_prefixes: e.ipv4_prefixes.clone(),
        network_card: e.network_card_index,
        subnet_ipv6_cidrs: e.subnet_ipv6_cidr.into_iter().collect(),
        ipv6s: e.ipv6_addresses.clone(),
        ipv6_prefixes: e.ipv6_prefixes.clone(),
    })
}

pub(crate) fn apply_imds(st: &mut SimState, now: Duration) {
    while st
        .imds_pending
        .front()
        .is_some_and(|(due, _, _)| *due <= now)
    {
        if let Some((_, id, view)) = st.imds_pending.pop_front() {
            match view {
                Some(v) => {
                    st.imds_view.insert(id, v);
                }
                None => {
                    st.imds_view.remove(&id);
                }
            }
        }
    }
}

/// IMDS as seen from the simulated instance: EC2's state as it was `imds_lag` ago.
#[async_trait]
impl Imds for SimEc2 {
    async fn node(&self) -> Result<NodeMetadata, ImdsError> {
        self.check_vpc_file();
        let mut st = self.lock();
        st.imds_reads += 1;
        let primary = st
            .enis
            .values()
            .find(|e| e.device_index == Some(0) && e.network_card_index == 0)
            .ok_or_else(|| ImdsError::Request {
                path: "mac".into(),
                message: "no primary interface".into(),
            })?;
        Ok(NodeMetadata {
            instance_id: st.instance_id.clone(),
            instance_type: st.instance_type.clone(),
            availability_zone: st.availability_zone.clone(),
            primary_mac: primary.mac.clone(),
            local_ipv4: primary.primary_ip,
            vpc_cidrs: std::iter::once(st.vpc_cidr)
                .chain(st.vpc_secondary_cidrs.iter().copied())
                .collect(),
            region: st
                .availability_zone
                .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                .to_string(),
            vpc_id: st.vpc_id.clone(),
            subnet_id: st.subnet_id.clone(),
            security_groups: st.security_groups.clone(),
        })
    }

    async fn enis(&self) -> Result<Vec<ImdsEni>, ImdsError> {
        let now = self.clock.now();
        let mut st = self.lock();
        st.imds_reads += 1;
        apply_imds(&mut st, now);
        let mut out: Vec<ImdsEni> = st.imds_view.values().cloned().collect();
        out.sort_by_key(|e| (e.network_card, e.device_number));
        Ok(out)
    }
}
