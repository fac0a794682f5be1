//! The kubelet max-pods computation, as the upstream calculator does it.
//!
//! Steps (see the crate docs for the reasoning):
//!
//! 1. `enis = min(cni_max_eni, limits.enis)` (`cni_max_eni` unset → the
//!    instance's ENIs on the default network card; set, it must be >= 1).
//! 2. custom networking → `enis - 1` (saturating at 0, e.g. on a 1-ENI type).
//! 3. IPs per ENI: `ipv4_per_eni - 1` in secondary-IP mode, or
//!    `(ipv4_per_eni - 1) * 16` with prefix delegation (saturating at 0 when
//!    a type reports fewer than 1 address per ENI).
//! 4. `uncapped = enis * ips_per_eni + 2` (checked: overflow is an error).
//! 5. unless `show_max_allowed`: `min(uncapped, 110)` when vCPUs <= 30,
//!    else `min(uncapped, 250)`.
//!
//! Prefix delegation is refused with a typed error when the CNI version is
//! below 1.9.0 or the type is neither Nitro nor bare metal.

use crate::{Hypervisor, InstanceLimits};
use serde::{Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Default for `--cni-version`: the upstream VPC CNI release this project is a
/// drop-in replacement for. (Not this crate's own version: 0.x would be below
/// 1.9.0 and make prefix delegation fail by default.)
pub const DEFAULT_CNI_VERSION: &str = "1.23.1";

/// First VPC CNI version with prefix delegation.
pub const PREFIX_DELEGATION_MIN_CNI_VERSION: CniVersion = CniVersion {
    major: 1,
    minor: 9,
    patch: 0,
};

/// Cap for types with at most [`CAP_VCPU_THRESHOLD`] vCPUs.
pub const CAP_SMALL: u32 = 110;
/// Cap for types with more than [`CAP_VCPU_THRESHOLD`] vCPUs.
pub const CAP_LARGE: u32 = 250;
/// vCPU count up to which [`CAP_SMALL`] applies.
pub const CAP_VCPU_THRESHOLD: u32 = 30;
/// Host-network pods added to every result (aws-node and kube-proxy).
pub const HOST_NETWORK_PODS: u32 = 2;
/// Addresses in one delegated IPv4 prefix (/28).
pub const IPS_PER_PREFIX: u32 = 16;

/// Errors of the max-pods computation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaxPodsError {
    #[error(
        "invalid CNI version {input:?}: {reason} (expected MAJOR.MINOR[.PATCH], \
         optionally with a leading 'v' and a '-…' or '+…' suffix, e.g. 1.23.1 or v1.18.3-eksbuild.1)"
    )]
    InvalidCniVersion { input: String, reason: &'static str },

    #[error("--cni-max-eni must be at least 1, got {value} (ipamd ignores MAX_ENI below 1)")]
    InvalidMaxEni { value: u32 },

    #[error(
        "prefix delegation needs VPC CNI {min} or newer, but the CNI version is {version}",
        min = PREFIX_DELEGATION_MIN_CNI_VERSION
    )]
    PrefixDelegationNeedsNewerCni { version: CniVersion },

    #[error(
        "prefix delegation is not supported on {instance_type}: it needs a Nitro-based or \
         bare-metal instance type, and {instance_type} is a {hypervisor}-hypervisor, non-metal type"
    )]
    PrefixDelegationUnsupported {
        instance_type: String,
        hypervisor: Hypervisor,
    },

    #[error("max-pods for {instance_type} does not fit in 32 bits")]
    Overflow { instance_type: String },
}

/// A VPC CNI version, `MAJOR.MINOR[.PATCH]`. Parsing accepts a leading `v`
/// and ignores anything from the first `-` or `+` on (`v1.18.3-eksbuild.1`
/// is 1.18.3: EKS build suffixes mark builds of that release, not previews).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CniVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Serialize for CniVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl FromStr for CniVersion {
    type Err = MaxPodsError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |reason| MaxPodsError::InvalidCniVersion {
            input: input.to_string(),
            reason,
        };
        let trimmed = input.trim();
        let trimmed = trimmed
            .strip_prefix('v')
            .or_else(|| trimmed.strip_prefix('V'))
            .unwrap_or(trimmed);
        let core = trimmed.split(['-', '+']).next().unwrap_or_default();
        if core.is_empty() {
            return Err(bad("empty version"));
        }
        let mut numbers = [0u64; 3];
        let mut count = 0;
        for part in core.split('.') {
            let slot = numbers
                .get_mut(count)
                .ok_or_else(|| bad("more than three numeric components"))?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("components must be non-empty decimal numbers"));
            }
            *slot = part.parse().map_err(|_| bad("component too large"))?;
            count += 1;
        }
        if count < 2 {
            return Err(bad("needs at least MAJOR.MINOR"));
        }
        let [major, minor, patch] = numbers;
        Ok(CniVersion {
            major,
            minor,
            patch,
        })
    }
}

/// The CNI settings that affect max-pods (the calculator's flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MaxPodsOptions {
    pub cni_version: CniVersion,
    pub custom_networking: bool,
    pub prefix_delegation: bool,
    /// `--cni-max-eni` / `MAX_ENI`; `None` = no limit.
    pub cni_max_eni: Option<u32>,
    pub show_max_allowed: bool,
}

impl MaxPodsOptions {
    /// Options with only the version set (secondary-IP mode, no limits, capped).
    pub fn new(cni_version: CniVersion) -> Self {
        MaxPodsOptions {
            cni_version,
            custom_networking: false,
            prefix_delegation: false,
            cni_max_eni: None,
            show_max_allowed: false,
        }
    }

    /// Checks what does not depend on the instance type: `cni_max_eni >= 1`
    /// and, with prefix delegation, CNI >= 1.9.0.
    pub fn validate(&self) -> Result<(), MaxPodsError> {
        if let Some(value @ 0) = self.cni_max_eni {
            return Err(MaxPodsError::InvalidMaxEni { value });
        }
        if self.prefix_delegation && self.cni_version < PREFIX_DELEGATION_MIN_CNI_VERSION {
            return Err(MaxPodsError::PrefixDelegationNeedsNewerCni {
                version: self.cni_version,
            });
        }
        Ok(())
    }
}

/// IP allocation mode used for the computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    SecondaryIp,
    PrefixDelegation,
}

/// The instance facts the computation read from the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct InstanceFacts {
    /// ENIs on the default network card.
    pub enis: u32,
    pub ipv4_per_eni: u32,
    pub hypervisor: Hypervisor,
    pub bare_metal: bool,
    pub vcpus: u32,
}

/// Every step of one max-pods computation; serializes to JSON as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MaxPodsReport {
    pub instance_type: String,
    pub inputs: MaxPodsOptions,
    pub instance: InstanceFacts,
    pub mode: Mode,
    /// How `enis` was derived: the default card's ENIs (`3`), or e.g.
    /// `min(3, --cni-max-eni 2) - 1 (custom networking) = 1`.
    pub enis_formula: String,
    /// ENIs that carry pod IPs.
    pub enis: u32,
    /// Pod IPs per such ENI.
    pub ips_per_eni: u32,
    /// The pod formula with the numbers filled in, e.g. `3 * (10 - 1) + 2`.
    pub formula: String,
    /// Value of `formula`.
    pub uncapped: u32,
    /// The cap in force, `None` with `show_max_allowed`.
    pub cap: Option<u32>,
    /// Why that cap (or why none).
    pub cap_reason: String,
    /// Whether the cap lowered the value.
    pub capped: bool,
    /// The answer.
    pub max_pods: u32,
    /// Warnings about degenerate inputs (empty when none).
    pub notes: Vec<String>,
}

/// Computes max-pods for `limits` under `options`. See the module docs.
pub fn compute(
    limits: &InstanceLimits,
    options: &MaxPodsOptions,
) -> Result<MaxPodsReport, MaxPodsError> {
    options.validate()?;
    let instance_type = limits.instance_type;
    let mut notes = Vec::new();

    let mode = if options.prefix_delegation {
        if !limits.supports_prefix_delegation() {
            return Err(MaxPodsError::PrefixDelegationUnsupported {
                instance_type: instance_type.to_string(),
                hypervisor: limits.hypervisor,
            });
        }
        Mode::PrefixDelegation
    } else {
        Mode::SecondaryIp
    };

    // Step 1-2: ENIs that carry pod IPs.
    let mut enis = limits.enis;
    let mut enis_formula = limits.enis.to_string();
    if let Some(max_eni) = options.cni_max_eni {
        enis = enis.min(max_eni);
        enis_formula = format!("min({}, --cni-max-eni {})", limits.enis, max_eni);
    }
    if options.custom_networking {
        if enis == 0 {
            notes.push("custom networking leaves no ENI for pods".to_string());
        } else if enis == 1 {
            notes.push("custom networking on a single usable ENI leaves none for pods".to_string());
        }
        enis = enis.saturating_sub(1);
        enis_formula.push_str(" - 1 (custom networking)");
    }
    if options.cni_max_eni.is_some() || options.custom_networking {
        enis_formula.push_str(&format!(" = {enis}"));
    }

    // Step 3: pod IPs per ENI.
    let secondary = limits.ipv4_per_eni.saturating_sub(1);
    if limits.ipv4_per_eni == 0 {
        notes.push(format!(
            "{instance_type} reports 0 IPv4 addresses per ENI; using 0 pod IPs per ENI"
        ));
    }
    let overflow = || MaxPodsError::Overflow {
        instance_type: instance_type.to_string(),
    };
    let (ips_per_eni, formula) = match mode {
        Mode::SecondaryIp => (
            secondary,
            format!(
                "{enis} * ({} - 1) + {HOST_NETWORK_PODS}",
                limits.ipv4_per_eni
            ),
        ),
        Mode::PrefixDelegation => (
            secondary.checked_mul(IPS_PER_PREFIX).ok_or_else(overflow)?,
            format!(
                "{enis} * (({} - 1) * {IPS_PER_PREFIX}) + {HOST_NETWORK_PODS}",
                limits.ipv4_per_eni
            ),
        ),
    };

    // Step 4.
    let uncapped = enis
        .checked_mul(ips_per_eni)
        .and_then(|pods| pods.checked_add(HOST_NETWORK_PODS))
        .ok_or_else(overflow)?;

    // Step 5.
    let (cap, cap_reason) = if options.show_max_allowed {
        (None, "--show-max-allowed: no cap".to_string())
    } else if limits.vcpus <= CAP_VCPU_THRESHOLD {
        (
            Some(CAP_SMALL),
            format!(
                "{} vCPUs <= {CAP_VCPU_THRESHOLD}: cap {CAP_SMALL}",
                limits.vcpus
            ),
        )
    } else {
        (
            Some(CAP_LARGE),
            format!(
                "{} vCPUs > {CAP_VCPU_THRESHOLD}: cap {CAP_LARGE}",
                limits.vcpus
            ),
        )
    };
    let max_pods = cap.map_or(uncapped, |cap| uncapped.min(cap));

    Ok(MaxPodsReport {
        instance_type: instance_type.to_string(),
        inputs: *options,
        instance: InstanceFacts {
            enis: limits.enis,
            ipv4_per_eni: limits.ipv4_per_eni,
            hypervisor: limits.hypervisor,
            bare_metal: limits.bare_metal,
            vcpus: limits.vcpus,
        },
        mode,
        enis_formula,
        enis,
        ips_per_eni,
        formula,
        uncapped,
        cap,
        cap_reason,
        capped: max_pods < uncapped,
        max_pods,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetworkCard;

    fn v(s: &str) -> Result<CniVersion, MaxPodsError> {
        s.parse()
    }

    fn synthetic(enis: u32, ipv4: u32, hypervisor: Hypervisor, vcpus: u32) -> InstanceLimits {
        InstanceLimits {
            instance_type: "x1.test",
            enis,
            default_network_card_index: 0,
            network_cards: &[],
            ipv4_per_eni: ipv4,
            ipv6_per_eni: ipv4,
            hypervisor,
            bare_metal: false,
            vcpus,
        }
    }

    #[test]
    fn version_parsing() {
        let ok = |s: &str, major, minor, patch| {
            assert_eq!(
                v(s),
                Ok(CniVersion {
                    major,
                    minor,
                    patch
                }),
                "{s}"
            )
        };
        ok("1.23.1", 1, 23, 1);
        ok("v1.9.0", 1, 9, 0);
        ok("1.9", 1, 9, 0);
        ok(" v1.18.3-eksbuild.1 ", 1, 18, 3);
        ok("1.12.6+build.5", 1, 12, 6);
        for bad in [
            "",
            "v",
            "1",
            "1.",
            ".1",
            "1..2",
            "1.2.3.4",
            "a.b.c",
            "1.x",
            "-1.2",
            "1.2.99999999999999999999999",
            "1 .2",
        ] {
            assert!(
                matches!(v(bad), Err(MaxPodsError::InvalidCniVersion { .. })),
                "{bad:?} should be rejected"
            );
        }
        assert!(v("1.8.9").ok() < Some(PREFIX_DELEGATION_MIN_CNI_VERSION));
        assert!(v("1.10.0").ok() > Some(PREFIX_DELEGATION_MIN_CNI_VERSION));
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let opts = |pd, custom| MaxPodsOptions {
            prefix_delegation: pd,
            custom_networking: custom,
            show_max_allowed: true,
            ..MaxPodsOptions::new(PREFIX_DELEGATION_MIN_CNI_VERSION)
        };
        for ipv4 in [0, 1] {
            for enis in [0, 1, 2] {
                for (pd, custom) in [(false, false), (false, true), (true, false), (true, true)] {
                    let limits = synthetic(enis, ipv4, Hypervisor::Nitro, 2);
                    let report = compute(&limits, &opts(pd, custom));
                    assert_eq!(report.map(|r| r.max_pods), Ok(2));
                }
            }
        }
        let zero_ip = compute(&synthetic(3, 0, Hypervisor::Nitro, 2), &opts(false, false));
        assert!(zero_ip.is_ok_and(|r| r.notes.len() == 1));
    }

    #[test]
    fn overflow_is_an_error() {
        let huge = synthetic(u32::MAX, u32::MAX, Hypervisor::Nitro, 1000);
        let mut options = MaxPodsOptions::new(PREFIX_DELEGATION_MIN_CNI_VERSION);
        assert!(matches!(
            compute(&huge, &options),
            Err(MaxPodsError::Overflow { .. })
        ));
        options.prefix_delegation = true;
        assert!(matches!(
            compute(&huge, &options),
            Err(MaxPodsError::Overflow { .. })
        ));
        let big_ips = synthetic(1, u32::MAX / 8, Hypervisor::Nitro, 1000);
        assert!(matches!(
            compute(&big_ips, &options),
            Err(MaxPodsError::Overflow { .. })
        ));
    }

    #[test]
    fn bare_metal_unknown_hypervisor_allows_pd() {
        static CARDS: [NetworkCard; 1] = [NetworkCard {
            index: 0,
            max_enis: 4,
        }];
        let limits = InstanceLimits {
            bare_metal: true,
            network_cards: &CARDS,
            ..synthetic(4, 10, Hypervisor::Unknown, 64)
        };
        let options = MaxPodsOptions {
            prefix_delegation: true,
            show_max_allowed: true,
            ..MaxPodsOptions::new(PREFIX_DELEGATION_MIN_CNI_VERSION)
        };
        assert_eq!(
            compute(&limits, &options).map(|r| r.max_pods),
            Ok(4 * 9 * 16 + 2)
        );
        let not_metal = InstanceLimits {
            bare_metal: false,
            ..limits
        };
        assert!(matches!(
            compute(&not_metal, &options),
            Err(MaxPodsError::PrefixDelegationUnsupported {
                hypervisor: Hypervisor::Unknown,
                ..
            })
        ));
    }
}
