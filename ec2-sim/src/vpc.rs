//! A VPC that changes under a running instance: CIDR blocks associated with the VPC after the node started, and
//! new security groups on the primary ENI, as an operator would change them in the console.
//!
//! EC2 shows both in IMDS at once (`network/interfaces/macs/<mac>/vpc-ipv4-cidr-blocks` and
//! `security-group-ids` of the primary ENI); the simulator does the same: [`crate::SimEc2::set_vpc_secondary_cidrs`]
//! and [`crate::SimEc2::set_primary_security_groups`] change its state, the next IMDS read serves it, and the
//! state file keeps it.
//!
//! Under `ipamd run --backend sim` a tool outside the process changes them through the file
//! [`crate::run::vpc_file`] (`sim-ec2.vpc` beside the state), read at every EC2 call and IMDS read and applied
//! when its content changed:
//!
//! ```text
//!   # the VPC's secondary CIDR blocks (none listed: only the VPC's own)
//!   cidr 10.1.0.0/16
//!   cidr 100.64.0.0/16
//!   # the primary ENI's security groups (no such line: unchanged)
//!   security-groups sg-0aaa sg-0bbb
//! ```
//!
//! A file that does not parse is logged and ignored; removing the file changes nothing.

use ipnetwork::Ipv4Network;

use crate::SimEc2;

/// What a VPC file asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VpcChange {
    /// The VPC's secondary CIDR blocks.
    pub secondary_cidrs: Vec<Ipv4Network>,
    /// The primary ENI's security groups; `None`: unchanged.
    pub security_groups: Option<Vec<String>>,
}

/// Parses a VPC file (see the module docs).
pub fn parse(text: &str) -> Result<VpcChange, String> {
    let mut out = VpcChange::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        match words.next() {
            Some("cidr") => {
                let (Some(c), None) = (words.next(), words.next()) else {
                    return Err(format!("line {}: `cidr <CIDR>` expected", n + 1));
                };
                let cidr: Ipv4Network = c
                    .parse()
                    .map_err(|e| format!("line {}: {c:?} is not an IPv4 CIDR: {e}", n + 1))?;
                out.secondary_cidrs.push(cidr);
            }
            Some("security-groups") => {
                let groups: Vec<String> = words.map(str::to_string).collect();
                if groups.is_empty() || groups.iter().any(|g| !g.starts_with("sg-")) {
                    return Err(format!(
                        "line {}: `security-groups sg-... [sg-...]` expected",
                        n + 1
                    ));
                }
                out.security_groups = Some(groups);
            }
            Some(other) => return Err(format!("line {}: unknown key {other:?}", n + 1)),
            None => {}
        }
    }
    Ok(out)
}

impl SimEc2 {
    /// Associates `cidrs` with the VPC as its secondary CIDR blocks (replacing earlier ones); IMDS lists them
    /// after the VPC's own.
    pub fn set_vpc_secondary_cidrs(&self, cidrs: Vec<Ipv4Network>) {
        self.lock().vpc_secondary_cidrs = cidrs;
        self.snapshot();
    }

    /// Every CIDR block of the VPC, its own first.
    pub fn vpc_cidrs(&self) -> Vec<Ipv4Network> {
        let st = self.lock();
        std::iter::once(st.vpc_cidr)
            .chain(st.vpc_secondary_cidrs.iter().copied())
            .collect()
    }

    /// Gives the primary ENI the security groups `groups` (as ModifyNetworkInterfaceAttribute by an operator
    /// would); IMDS serves them as its `security-group-ids`.
    pub fn set_primary_security_groups(&self, groups: Vec<String>) {
        {
            let mut st = self.lock();
            let primary = st
                .enis
                .values()
                .find(|e| e.device_index == Some(0) && e.network_card_index == 0)
                .map(|e| e.id.clone());
            if let Some(id) = primary {
                st.eni_security_groups.insert(id, groups.clone());
            }
            st.security_groups = groups;
        }
        self.snapshot();
    }

    /// Applies the VPC file (see the module docs) when it exists and changed since it was last applied.
    pub(crate) fn check_vpc_file(&self) {
        let Some(path) = &self.vpc_file else {
            return;
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        {
            let mut seen = self.vpc_file_seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.as_deref() == Some(text.as_str()) {
                return;
            }
            *seen = Some(text.clone());
        }
        match parse(&text) {
            Ok(change) => {
                tracing::info!(file = %path.display(), cidrs = ?change.secondary_cidrs,
                    security_groups = ?change.security_groups, "simulated VPC changed by its file");
                self.set_vpc_secondary_cidrs(change.secondary_cidrs);
                if let Some(groups) = change.security_groups {
                    self.set_primary_security_groups(groups);
                }
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "simulated VPC file ignored")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_lists_cidrs_and_groups_and_names_what_is_wrong() {
        let c = parse("# x\ncidr 10.1.0.0/16\n\ncidr 100.64.0.0/16\nsecurity-groups sg-a sg-b\n")
            .expect("parses");
        assert_eq!(
            c.secondary_cidrs,
            vec![
                "10.1.0.0/16".parse::<Ipv4Network>().expect("cidr"),
                "100.64.0.0/16".parse().expect("cidr")
            ]
        );
        assert_eq!(
            c.security_groups,
            Some(vec!["sg-a".to_string(), "sg-b".to_string()])
        );
        assert_eq!(parse("").expect("empty"), VpcChange::default());
        assert!(parse("cidr 10.1.0.0/33")
            .expect_err("bad")
            .contains("line 1"));
        assert!(parse("security-groups\n").is_err());
        assert!(parse("security-groups group-a\n").is_err());
        assert!(parse("cidrs 10.1.0.0/16")
            .expect_err("key")
            .contains("cidrs"));
    }
}
