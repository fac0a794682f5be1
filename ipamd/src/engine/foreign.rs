//! ENIs attached to the instance that are not ipamd's to manage, and the ENI slots they take.
//!
//! The VPC resource controller attaches a `trunk` ENI for security groups for pods, users attach `efa` and
//! `efa-only` ENIs for HPC traffic, and Multus or other components attach ENIs of their own (untagged, or tagged
//! `node.k8s.amazonaws.com/no_manage=true`). Handling any of them as a pool ENI breaks someone else's traffic: an
//! address assigned on a trunk, a 32765 rule for it, or a trunk "freed" (detached and deleted) takes every
//! branch-ENI pod down with it. So, as the anchor does (ipamd.go `filterUnmanagedENIs`, data_store.go), an ENI is
//! left alone when ([`not_ours`]):
//! - its EC2 `InterfaceType` is anything but `interface` (`trunk`, `efa`, `efa-only`, ...);
//! - it is tagged `no_manage=true`;
//! - `MANAGE_UNTAGGED_ENI=false` and it does not carry this instance's `node.k8s.amazonaws.com/instance_id` tag.
//!
//! The primary ENI is always managed. An ENI left alone never enters the datastore (so it is never given or
//! relieved of addresses, never set up on the host, never freed), is remembered here so reconcile does not
//! describe it again every pass, and takes one of the instance's ENI slots: [`Node::policy`] is the pool policy
//! with `max_enis` reduced by them (the anchor's `hasRoomForEni`: maxENI − unmanaged). A node whose slots are all
//! taken by such ENIs is therefore "at its ENI limit" at once (an ADD fails with `NODE_AT_ENI_LIMIT`, CNI code 102)
//! and never asks EC2 for an ENI it cannot attach. The anchor reserves a slot for a trunk still to come only with
//! `ENABLE_POD_ENI=true`, which this ipamd refuses; an attached trunk takes its slot like any foreign ENI.
//!
//! Two more cases of slots the datastore does not show ([`Slots`]): EC2 refusing an attachment with
//! `AttachmentLimitExceeded` is the ENI limit, not an EC2 error (the pool stops asking, with the ENIs it has, until
//! fewer are attached; an ADD then fails with 102 naming it); and an ENI EC2 attached whose host setup failed is
//! kept (pending), no other ENI is attached in its place, and reconcile, asked for at once, sets it up and adopts
//! it. An attach whose answer was an error although EC2 did attach (a lost answer) is recognised
//! ([`Node::attached_here`]) and carried on.

use std::collections::{BTreeMap, BTreeSet};

use super::Node;
use crate::core::pool::PoolPolicy;
use crate::sync::lock;
use ec2_api::{EniDescription, TAG_INSTANCE_ID, TAG_NO_MANAGE};

/// The ENI slots of the instance that the datastore does not show.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    /// ENIs left alone, by ID, with why.
    pub(crate) foreign: BTreeMap<String, String>,
    /// ENIs of ours that EC2 attached but whose host setup failed: they hand out nothing, the pool attaches no
    /// other ENI meanwhile, and reconcile (asked for at once) finishes them.
    pub(crate) pending: BTreeSet<String>,
    /// EC2 answered `AttachmentLimitExceeded` with this many ENIs in the datastore: no more are asked for until
    /// the instance's attached ENIs change (the table may be wrong, or another component attached one since).
    pub(crate) ceiling: Option<Ceiling>,
}

/// See [`Slots::ceiling`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ceiling {
    /// ENIs in the datastore when EC2 refused.
    pub(crate) enis: u32,
    /// ENIs IMDS listed on card 0 at the last reconcile before (or at) the refusal; fewer later lifts it.
    pub(crate) attached: usize,
}

/// Why an ENI attached to `instance_id` is not ours to manage (see the module docs); `None`: it is ours.
pub fn not_ours(
    d: &EniDescription,
    instance_id: &str,
    is_primary: bool,
    manage_untagged: bool,
) -> Option<String> {
    if is_primary {
        return None;
    }
    if d.interface_type != "interface" && !d.interface_type.is_empty() {
        return Some(format!("interface type {}", d.interface_type));
    }
    if d.tags.get(TAG_NO_MANAGE).map(String::as_str) == Some("true") {
        return Some(format!("tagged {TAG_NO_MANAGE}=true"));
    }
    if !manage_untagged && d.tags.get(TAG_INSTANCE_ID).map(String::as_str) != Some(instance_id) {
        return Some(format!(
            "not tagged {TAG_INSTANCE_ID}={instance_id} and MANAGE_UNTAGGED_ENI=false"
        ));
    }
    None
}

impl Node {
    /// Whether the attached ENI `d` (device `device` of card 0) is left alone; if so it is remembered as taking a
    /// slot (logged once).
    pub(crate) fn leave_alone(&self, d: &EniDescription, device: u32) -> bool {
        let Some(why) = not_ours(
            d,
            &self.meta.instance_id,
            device == 0,
            self.config.manage_untagged_eni,
        ) else {
            return false;
        };
        if lock(&self.foreign)
            .foreign
            .insert(d.id.clone(), why.clone())
            .is_none()
        {
            tracing::info!(eni = %d.id, device, reason = %why,
                "ENI is not ipamd's to manage: left alone (it takes an ENI slot)");
        }
        true
    }

    /// Whether `eni_id` is a known ENI left alone.
    pub(crate) fn is_foreign(&self, eni_id: &str) -> bool {
        lock(&self.foreign).foreign.contains_key(eni_id)
    }

    /// Forgets ENIs left alone that are no longer attached (`attached`: the ENI IDs IMDS lists on card 0 now),
    /// and lifts the ENI ceiling EC2 set when fewer ENIs are attached than then.
    pub(crate) fn forget_detached_foreign(&self, attached: &[String]) {
        let mut slots = lock(&self.foreign);
        slots.foreign.retain(|id, _| attached.contains(id));
        match slots.ceiling {
            Some(c) if attached.len() < c.attached => {
                tracing::info!(
                    attached = attached.len(),
                    "fewer ENIs attached than when EC2 refused an attachment: trying again"
                );
                slots.ceiling = None;
            }
            Some(mut c) if c.attached == 0 => {
                c.attached = attached.len();
                slots.ceiling = Some(c);
            }
            _ => {}
        }
    }

    /// EC2 refused an attachment with `AttachmentLimitExceeded`: the node is at its ENI limit with what it has.
    pub(crate) fn hit_eni_limit(&self) {
        let enis = u32::try_from(lock(&self.ds).enis().count()).unwrap_or(u32::MAX);
        tracing::warn!(
            enis,
            table = self.base_policy().max_enis,
            "EC2 refused another ENI (AttachmentLimitExceeded): the node is at its ENI limit"
        );
        lock(&self.foreign).ceiling = Some(Ceiling { enis, attached: 0 });
    }

    /// An ENI of ours EC2 attached whose host setup failed: it takes its slot until reconcile finishes it.
    pub(crate) fn setup_pending(&self, eni_id: &str) {
        lock(&self.foreign).pending.insert(eni_id.to_string());
        lock(&self.status).reconcile_wanted = true;
        self.wake.notify_one();
    }

    /// The attachment ID of `eni_id` if EC2 shows it attached to this instance.
    pub(crate) async fn attached_here(&self, eni_id: &str) -> Option<String> {
        let d = self
            .describe_each(&[eni_id.to_string()])
            .await
            .ok()?
            .remove(eni_id)??;
        (d.instance_id.as_deref() == Some(self.meta.instance_id.as_str()))
            .then_some(d.attachment_id)
            .flatten()
    }

    /// ENIs waiting for host setup that IMDS does not list (`attached`): settled if EC2 no longer has them
    /// attached here (detached or deleted meanwhile), kept otherwise (IMDS lags).
    pub(crate) async fn settle_pending_gone(&self, attached: &[String]) {
        let gone: Vec<String> = lock(&self.foreign)
            .pending
            .iter()
            .filter(|id| !attached.contains(id))
            .cloned()
            .collect();
        for id in gone {
            if self.attached_here(&id).await.is_none() {
                self.settled(&id);
            }
        }
    }

    /// Whether an ENI of ours waits for host setup (the pool attaches no other meanwhile: its addresses come
    /// with it).
    pub(crate) fn setup_pending_any(&self) -> bool {
        !lock(&self.foreign).pending.is_empty()
    }

    /// The ENI is in the datastore now, or EC2 no longer has it attached here: it no longer waits.
    pub(crate) fn settled(&self, eni_id: &str) {
        lock(&self.foreign).pending.remove(eni_id);
    }

    /// The ENIs left alone on network card 0, with why.
    pub fn foreign_enis(&self) -> BTreeMap<String, String> {
        lock(&self.foreign).foreign.clone()
    }

    /// For messages: which ENI slots other components' ENIs take (empty when none).
    pub(crate) fn foreign_slots_note(&self) -> String {
        let slots = lock(&self.foreign);
        let mut list: Vec<String> = slots
            .foreign
            .iter()
            .map(|(id, why)| format!("{id}: {why}"))
            .collect();
        list.extend(
            slots
                .pending
                .iter()
                .map(|id| format!("{id}: host setup pending")),
        );
        if let Some(c) = slots.ceiling {
            list.push(format!(
                "EC2 refused more than {} ENIs (AttachmentLimitExceeded)",
                c.enis
            ));
        }
        if list.is_empty() {
            return String::new();
        }
        format!(
            "; {} of them taken by ENIs ipamd does not manage or cannot use yet ({})",
            list.len(),
            list.join(", ")
        )
    }

    /// The instance type's policy with its ENI count (and `MAX_ENI`'s) less the slots taken by ENIs left alone,
    /// and no more than EC2 allowed when it refused one ([`Node::policy`] adds the node object's cap).
    pub fn slot_policy(&self) -> PoolPolicy {
        let base = self.base_policy();
        let slots = lock(&self.foreign);
        let taken = u32::try_from(slots.foreign.len()).unwrap_or(u32::MAX);
        let mut max_enis = base.max_enis.saturating_sub(taken).max(1);
        if let Some(c) = slots.ceiling {
            max_enis = max_enis.min(c.enis.max(1));
        }
        PoolPolicy { max_enis, ..base }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::core::datastore::{IpamKey, PodMeta};
    use crate::engine::NodeDeps;
    use crate::host::fakes::FakeHost;
    use aws_cni_proto::FailureReason;
    use ec2_sim::ForeignEni;

    fn eni(kind: &str, tags: &[(&str, &str)]) -> EniDescription {
        EniDescription {
            id: "eni-1".into(),
            mac: "02:00:00:00:00:02".into(),
            primary_ip: "10.0.0.5".parse().expect("ip"),
            secondary_ips: vec![],
            ipv4_prefixes: vec![],
            ipv6_addresses: vec![],
            ipv6_prefixes: vec![],
            subnet_ipv6_cidr: None,
            subnet_id: "subnet-1".into(),
            subnet_cidr: "10.0.0.0/24".parse().expect("cidr"),
            vpc_id: "vpc-1".into(),
            device_index: Some(1),
            network_card_index: 0,
            attachment_id: Some("eni-attach-1".into()),
            instance_id: Some("i-1".into()),
            status: "in-use".into(),
            interface_type: kind.into(),
            description: String::new(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            delete_on_termination: true,
        }
    }

    #[test]
    fn trunk_efa_no_manage_and_untagged_when_asked_are_not_ours() {
        let ours = [(TAG_INSTANCE_ID, "i-1")];
        for kind in ["trunk", "efa", "efa-only"] {
            let why = not_ours(&eni(kind, &ours), "i-1", false, true).expect(kind);
            assert!(why.contains(kind), "{why}");
        }
        assert!(not_ours(
            &eni("interface", &[(TAG_NO_MANAGE, "true")]),
            "i-1",
            false,
            true
        )
        .is_some());
        assert_eq!(not_ours(&eni("interface", &[]), "i-1", false, true), None);
        assert!(not_ours(&eni("interface", &[]), "i-1", false, false).is_some());
        assert!(not_ours(
            &eni("interface", &[(TAG_INSTANCE_ID, "i-other")]),
            "i-1",
            false,
            false
        )
        .is_some());
        assert_eq!(
            not_ours(&eni("interface", &ours), "i-1", false, false),
            None
        );
        // The primary ENI is always ours.
        assert_eq!(not_ours(&eni("interface", &[]), "i-1", true, false), None);
    }

    fn key(i: u32) -> IpamKey {
        IpamKey {
            network_name: "aws-cni".into(),
            container_id: format!("c{i}"),
            if_name: "eth0".into(),
        }
    }

    #[tokio::test]
    async fn enis_of_others_take_their_slots_get_nothing_and_a_full_node_says_so_without_ec2_churn()
    {
        // t3.small: 3 ENIs of 4 addresses. A trunk and an EFA ENI take two slots: only the primary is ours.
        let (sim, clock) = ec2_sim::on_manual_clock("t3.small", |s| {
            s.foreign_enis = vec![
                "trunk".parse::<ForeignEni>().expect("kind"),
                "efa".parse::<ForeignEni>().expect("kind"),
            ];
        })
        .await;
        let host = Arc::new(FakeHost::default());
        let deps = NodeDeps {
            ec2: Arc::new(sim.clone()),
            imds: Arc::new(sim.clone()),
            hostnet: host.clone(),
            clock: Arc::new(clock.clone()),
            cluster: Arc::new(crate::kube::NoCluster),
        };
        let n = Node::start(deps, Config::default(), None)
            .await
            .expect("init");
        assert_eq!(n.foreign_enis().len(), 2);
        assert_eq!(n.policy().max_enis, 1);
        n.fill().await.expect("fill");
        for i in 0..3 {
            n.add(&key(i), &PodMeta::default())
                .expect("an address on the primary");
        }
        n.fill().await.expect("fill");
        let err = n.add(&key(9), &PodMeta::default()).expect_err("full");
        assert_eq!(err.reason, FailureReason::NodeAtEniLimit, "{}", err.message);
        n.reconcile(true).await.expect("reconcile");
        let calls = sim.calls();
        for api in [
            "CreateNetworkInterface",
            "AttachNetworkInterface",
            "DetachNetworkInterface",
            "DeleteNetworkInterface",
            "UnassignPrivateIpAddresses",
        ] {
            assert_eq!(calls.get(api), None, "{api}: {calls:?}");
        }
        // The foreign ENIs kept no address of ours and were never set up on the host.
        for e in sim
            .all_enis()
            .iter()
            .filter(|e| e.interface_type != "interface")
        {
            assert!(e.secondary_ips.is_empty(), "{e:?}");
            assert!(n.datastore().eni(&e.id).is_none());
            assert!(!host.setups().contains(&e.id), "{e:?}");
        }
        // Reconcile does not describe them again.
        let before = sim.calls().get("DescribeNetworkInterfaces").copied();
        clock.advance(std::time::Duration::from_secs(120));
        n.reconcile(true).await.expect("reconcile");
        assert_eq!(
            sim.calls().get("DescribeNetworkInterfaces").copied(),
            before
        );
    }

    #[tokio::test]
    async fn untagged_enis_are_adopted_by_default_and_left_alone_with_manage_untagged_eni_false() {
        for manage in [true, false] {
            let (sim, clock) = ec2_sim::on_manual_clock("t3.small", |s| {
                s.foreign_enis = vec!["untagged".parse().expect("kind")];
            })
            .await;
            let deps = NodeDeps {
                ec2: Arc::new(sim.clone()),
                imds: Arc::new(sim.clone()),
                hostnet: Arc::new(FakeHost::default()),
                clock: Arc::new(clock),
                cluster: Arc::new(crate::kube::NoCluster),
            };
            let cfg = Config {
                manage_untagged_eni: manage,
                ..Config::default()
            };
            let n = Node::start(deps, cfg, None).await.expect("init");
            assert_eq!(
                n.stats().enis,
                if manage { 2 } else { 1 },
                "manage={manage}"
            );
            assert_eq!(n.foreign_enis().len(), usize::from(!manage));
            assert_eq!(n.policy().max_enis, if manage { 3 } else { 2 });
        }
    }
}
