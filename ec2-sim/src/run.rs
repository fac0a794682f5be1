//! The simulated instance of `ipamd run --backend sim`: where its state lives, where its wire lives, and
//! whether this start is a new instance or the same one again.
//!
//! An ipamd restart is not an EC2 restart. By default ([`Placement::for_run`]) the simulated account is saved in
//! a state file beside ipamd's checkpoint and the VPC fabric lives in a named network namespace derived from
//! that file ([`fabric_netns_name`]), so an ipamd killed with SIGKILL and started again, with the same
//! arguments, finds the same instance, ENIs, addresses and links, as on a real node. A start without saved
//! state is a new instance: any fabric namespace a previous instance left under the same name is replaced.
//! The fabric namespace outlives ipamd on purpose; `ip netns del <name>` (the name is logged) removes it.
//!
//! The flags keep their behaviour for tools that own their files: `--sim-state FILE` puts the state there, with
//! the fabric in `--sim-fabric-netns PATH` or, without it, in an anonymous namespace that dies with ipamd.
//!
//! Every start logs which it is: "starting a fresh simulated instance" or "resuming the simulated instance".

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::fabric::NetnsFabric;
use crate::spec::{SimError, SimSpec};
use crate::SimEc2;

/// The state file's name beside ipamd's checkpoint, by default.
pub const DEFAULT_STATE_FILE: &str = "sim-ec2.json";

/// The file that fragments the simulated subnets while it exists (`<state file>` with the extension
/// `fragment`, e.g. `sim-ec2.fragment`): create it to make prefix requests answer `InsufficientCidrBlocks`
/// while single addresses stay free, remove it to free whole /28s again.
pub fn fragment_file(state_file: &Path) -> PathBuf {
    state_file.with_extension("fragment")
}

/// The file that changes the simulated VPC while the instance runs (`<state file>` with the extension `vpc`,
/// e.g. `sim-ec2.vpc`; format in [`crate::vpc`]): its `cidr` lines are the VPC's secondary CIDR blocks, its
/// `security-groups` line the primary ENI's security groups. Read at every EC2 call and IMDS read; applied when
/// its content changed; removing it changes nothing.
pub fn vpc_file(state_file: &Path) -> PathBuf {
    state_file.with_extension("vpc")
}

/// Where the simulated instance keeps its state and its wire (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// EC2's state file (`None`: memory only).
    pub state: Option<PathBuf>,
    pub fabric: Fabric,
}

/// Where the VPC fabric lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fabric {
    /// A namespace of its own that dies with ipamd.
    Anonymous,
    /// This existing namespace (its owner removes it).
    At(PathBuf),
    /// A named namespace derived from the state file ([`fabric_netns_name`]), kept across restarts.
    Kept,
}

impl Placement {
    /// `ipamd run`'s rule: `--sim-state` and `--sim-fabric-netns` when given; without `--sim-state`, the state
    /// in [`DEFAULT_STATE_FILE`] beside `checkpoint` and, unless `--sim-fabric-netns` says otherwise, a kept
    /// fabric. With `--sim-state` and no fabric namespace, the fabric is anonymous (as before the default).
    pub fn for_run(
        sim_state: Option<&Path>,
        sim_fabric_netns: Option<&Path>,
        checkpoint: Option<&Path>,
    ) -> Placement {
        let state = sim_state
            .map(Path::to_owned)
            .or_else(|| checkpoint.map(|c| c.with_file_name(DEFAULT_STATE_FILE)));
        let fabric = match (sim_fabric_netns, sim_state, &state) {
            (Some(path), _, _) => Fabric::At(path.to_owned()),
            (None, None, Some(_)) => Fabric::Kept,
            _ => Fabric::Anonymous,
        };
        Placement { state, fabric }
    }
}

/// `ipamd run --backend sim`'s settings.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub instance_type: String,
    pub placement: Placement,
    /// How long every EC2 call takes.
    pub api_latency: Duration,
    /// MTU of the fabric's links.
    pub mtu: u32,
    /// More subnets of the VPC (a fresh instance only; a resumed one has its own).
    pub extra_subnets: Vec<crate::SimSubnet>,
    /// ENIs of other components attached at launch (a fresh instance only).
    pub foreign_enis: Vec<crate::spec::ForeignEni>,
}

/// The named fabric namespace of the instance whose state is in `state_file`: `awscni-sim-<hash>`, stable
/// across restarts, distinct for distinct state files.
pub fn fabric_netns_name(state_file: &Path) -> String {
    // FNV-1a: stable across builds (the name must survive an upgrade of ipamd).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in state_file.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("awscni-sim-{:08x}", h as u32)
}

/// Starts (or resumes) the simulated instance of `spec` with its fabric (see the module docs).
pub async fn start(spec: RunSpec) -> Result<SimEc2, SimError> {
    let state_file = spec.placement.state.clone();
    let fresh = state_file.as_deref().is_none_or(|p| !p.exists());
    let mut sim_spec = SimSpec::new(&spec.instance_type);
    sim_spec.state_file = state_file.clone();
    sim_spec.fragment_file = state_file.as_deref().map(fragment_file);
    sim_spec.vpc_file = state_file.as_deref().map(vpc_file);
    sim_spec.api_latency = spec.api_latency;
    sim_spec.extra_subnets = spec.extra_subnets.clone();
    sim_spec.foreign_enis = spec.foreign_enis.clone();
    let subnet = sim_spec.subnet_cidr;
    let fabric = match (&spec.placement.fabric, &state_file) {
        (Fabric::Kept, Some(state)) => {
            let name = fabric_netns_name(state);
            tracing::info!(fabric_netns = %name, fresh,
                "simulated VPC fabric in a kept namespace (remove it with `ip netns del {name}`)");
            NetnsFabric::named(&name, fresh, subnet, spec.mtu).await
        }
        (Fabric::At(path), _) => NetnsFabric::in_netns(path, subnet, spec.mtu).await,
        _ => NetnsFabric::new(subnet, spec.mtu).await,
    }
    .map_err(SimError::Fabric)?;
    if let Some(vpc6) = sim_spec.vpc_ipv6_cidr {
        // Best effort: an IPv4 node does not need it, and a kernel without IPv6 cannot have it.
        if let Err(e) = fabric.enable_ipv6(vpc6).await {
            tracing::warn!(error = %e, "the simulated VPC has no IPv6 routing");
        }
    }
    match &state_file {
        Some(path) if fresh => {
            tracing::info!(state = %path.display(), instance_type = %spec.instance_type,
            "starting a fresh simulated instance (no saved state); its EC2 state is kept in this file")
        }
        Some(path) => tracing::info!(state = %path.display(),
            "resuming the simulated instance saved in this file"),
        None => tracing::info!(instance_type = %spec.instance_type,
            "starting a fresh simulated instance; its EC2 state is kept in memory only"),
    }
    SimEc2::launch(sim_spec, Arc::new(fabric)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_state_sits_beside_the_checkpoint_and_names_its_fabric() {
        let cp = Path::new("/var/run/aws-node/ipam.json");
        let p = Placement::for_run(None, None, Some(cp));
        let state = p.state.clone().expect("a state file");
        assert_eq!(state, Path::new("/var/run/aws-node/sim-ec2.json"));
        assert_eq!(p.fabric, Fabric::Kept);
        let name = fabric_netns_name(&state);
        assert_eq!(
            name,
            fabric_netns_name(Path::new("/var/run/aws-node/sim-ec2.json"))
        );
        assert_ne!(name, fabric_netns_name(Path::new("/tmp/x/sim-ec2.json")));
        assert!(
            name.len() <= 20 && name.starts_with("awscni-sim-"),
            "{name}"
        );
    }

    #[test]
    fn the_flags_win_over_the_defaults() {
        let cp = Path::new("/var/run/aws-node/ipam.json");
        let ns = Path::new("/run/netns/f");
        let st = Path::new("/tmp/t/sim-ec2.json");
        let p = Placement::for_run(None, Some(ns), Some(cp));
        assert_eq!(
            p.state.as_deref(),
            Some(Path::new("/var/run/aws-node/sim-ec2.json"))
        );
        assert_eq!(p.fabric, Fabric::At(ns.to_owned()));
        let p = Placement::for_run(Some(st), None, Some(cp));
        assert_eq!(p.state.as_deref(), Some(st));
        assert_eq!(
            p.fabric,
            Fabric::Anonymous,
            "tools that own their files get a fresh wire"
        );
        let p = Placement::for_run(Some(st), Some(ns), Some(cp));
        assert_eq!(p.fabric, Fabric::At(ns.to_owned()));
        let p = Placement::for_run(None, None, None);
        assert_eq!((p.state, p.fabric), (None, Fabric::Anonymous));
    }
}
