//! The EC2 calls against the simulated account.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use async_trait::async_trait;
use instance_limits::InstanceLimits;
use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::state::{
    addresses, mac_of, new_eni, not_found, release, take_ips, take_ipv6_prefixes, take_prefixes,
    unsupported_pd,
};
use crate::Api;
use crate::SimEc2;
use ec2_api::{
    Assigned, CreateEniRequest, Ec2, Ec2Error, EniDescription, EniFilter, InstanceDescription,
    InstanceTypeInfo, IpRequest, SubnetDescription, SubnetFilter,
};

impl SimEc2 {
    async fn do_attach(
        &self,
        api: &'static str,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
        card: u32,
    ) -> Result<String, Ec2Error> {
        let attachment = {
            let mut st = self.lock();
            if instance_id != st.instance_id {
                return Err(Ec2Error::Other {
                    api,
                    code: "InvalidInstanceID.NotFound".into(),
                    message: format!("instance {instance_id} does not exist"),
                });
            }
            // EC2 attaches an ENI only to an instance in its subnet's availability zone.
            let eni_zone = st
                .enis
                .get(eni_id)
                .and_then(|e| st.subnets.get(&e.subnet_id))
                .and_then(|s| s.availability_zone.clone());
            if let Some(zone) = eni_zone.filter(|z| *z != st.availability_zone) {
                return Err(Ec2Error::Other {
                    api,
                    code: "InvalidParameterCombination".into(),
                    message: format!(
                        "{eni_id} is in {zone} and instance {instance_id} in {}: they must be in the same \
                         availability zone",
                        st.availability_zone
                    ),
                });
            }
            let Some(&(_, max)) = st.network_cards.iter().find(|(i, _)| *i == card) else {
                return Err(Ec2Error::Other {
                    api,
                    code: "InvalidParameterValue".into(),
                    message: format!("the instance type has no network card {card}"),
                });
            };
            let on_card = st
                .enis
                .values()
                .filter(|e| e.device_index.is_some() && e.network_card_index == card)
                .count();
            if on_card >= max as usize || device_index >= max.max(2) {
                return Err(Ec2Error::EniLimitExceeded { api });
            }
            if st
                .enis
                .values()
                .any(|e| e.device_index == Some(device_index) && e.network_card_index == card)
            {
                return Err(Ec2Error::Other {
                    api,
                    code: "InvalidParameterValue".into(),
                    message: format!("device index {device_index} is already in use"),
                });
            }
            let eni = st
                .enis
                .get_mut(eni_id)
                .ok_or_else(|| not_found(api, eni_id))?;
            if eni.device_index.is_some() {
                return Err(Ec2Error::Other {
                    api,
                    code: "InvalidNetworkInterface.InUse".into(),
                    message: format!("{eni_id} is already attached"),
                });
            }
            let attachment = format!("eni-attach-{}", eni_id.trim_start_matches("eni-"));
            eni.device_index = Some(device_index);
            eni.network_card_index = card;
            eni.attachment_id = Some(attachment.clone());
            eni.instance_id = Some(instance_id.to_string());
            eni.status = "attaching".into();
            attachment
        };
        self.snapshot();
        if !self.attach_latency.is_zero() {
            self.clock.sleep(self.attach_latency).await;
        }
        let bound = {
            let mut st = self.lock();
            match st.enis.get_mut(eni_id) {
                Some(e) if e.attachment_id.as_deref() == Some(attachment.as_str()) => {
                    e.status = "in-use".into();
                    addresses(&e.secondary_ips, &e.ipv4_prefixes)
                }
                // Detached or deleted while attaching.
                _ => return Ok(attachment),
            }
        };
        self.publish(eni_id);
        let nic = self.nic_of(eni_id).ok_or_else(|| not_found(api, eni_id))?;
        let mac = nic.mac;
        if let Err(e) = self.hotplug.plug(nic).await {
            tracing::warn!(error = %e, "simulated hotplug failed");
        }
        if !bound.is_empty() {
            if let Err(e) = self.hotplug.bind_ips(mac, bound, true).await {
                tracing::warn!(error = %e, "simulated VPC could not bind IPs");
            }
        }
        Ok(attachment)
    }

    async fn do_assign(
        &self,
        api: &'static str,
        eni_id: &str,
        req: IpRequest,
    ) -> Result<Assigned, Ec2Error> {
        let (got, mac, attached) = {
            let mut st = self.lock();
            let limit = st.ipv4_per_eni;
            let pd = st.prefix_delegation;
            let eni = st.enis.get(eni_id).ok_or_else(|| not_found(api, eni_id))?;
            let have = u32::try_from(eni.secondary_ips.len() + eni.ipv4_prefixes.len())
                .unwrap_or(u32::MAX)
                + 1;
            if have + req.count() > limit {
                return Err(Ec2Error::IpLimitExceeded {
                    api,
                    eni: eni_id.to_string(),
                });
            }
            let subnet = eni.subnet_id.clone();
            let got = match req {
                IpRequest::Secondary(n) => Assigned {
                    ips: take_ips(&mut st, &subnet, n, api)?,
                    prefixes: Vec::new(),
                },
                IpRequest::Prefixes(n) => {
                    if !pd {
                        return Err(unsupported_pd(api));
                    }
                    Assigned {
                        ips: Vec::new(),
                        prefixes: take_prefixes(&mut st, &subnet, n, api)?,
                    }
                }
            };
            let eni = st
                .enis
                .get_mut(eni_id)
                .ok_or_else(|| not_found(api, eni_id))?;
            eni.secondary_ips.extend(got.ips.iter().copied());
            eni.ipv4_prefixes.extend(got.prefixes.iter().copied());
            (got, mac_of(eni), eni.status == "in-use")
        };
        self.publish(eni_id);
        if let (Some(mac), true) = (mac, attached) {
            let all = addresses(&got.ips, &got.prefixes);
            if let Err(e) = self.hotplug.bind_ips(mac, all, true).await {
                tracing::warn!(error = %e, "simulated VPC could not bind IPs");
            }
        }
        Ok(got)
    }

    async fn do_unassign(
        &self,
        api: &'static str,
        eni_id: &str,
        ips: &[Ipv4Addr],
        prefixes: &[Ipv4Network],
    ) -> Result<(), Ec2Error> {
        let mac = {
            let mut st = self.lock();
            let eni = st
                .enis
                .get_mut(eni_id)
                .ok_or_else(|| not_found(api, eni_id))?;
            if let Some(bad) = ips.iter().find(|ip| !eni.secondary_ips.contains(ip)) {
                return Err(Ec2Error::Other {
                    api,
                    code: "InvalidParameterValue".into(),
                    message: format!("{bad} is not a secondary address of {eni_id}"),
                });
            }
            if let Some(bad) = prefixes.iter().find(|p| !eni.ipv4_prefixes.contains(p)) {
                return Err(Ec2Error::Other {
                    api,
                    code: "InvalidParameterValue".into(),
                    message: format!("{bad} is not a prefix of {eni_id}"),
                });
            }
            eni.secondary_ips.retain(|ip| !ips.contains(ip));
            eni.ipv4_prefixes.retain(|p| !prefixes.contains(p));
            let mac = mac_of(eni);
            let subnet = eni.subnet_id.clone();
            release(&mut st, &subnet, addresses(ips, prefixes));
            mac
        };
        self.publish(eni_id);
        if let Some(mac) = mac {
            let all = addresses(ips, prefixes);
            if let Err(e) = self.hotplug.bind_ips(mac, all, false).await {
                tracing::warn!(error = %e, "simulated VPC could not unbind IPs");
            }
        }
        Ok(())
    }

    async fn do_assign_ipv6(
        &self,
        api: &'static str,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv6Network>, Ec2Error> {
        let got = {
            let mut st = self.lock();
            let limit = st.ipv4_per_eni;
            let pd = st.prefix_delegation;
            let eni = st.enis.get(eni_id).ok_or_else(|| not_found(api, eni_id))?;
            if !pd {
                return Err(unsupported_pd(api));
            }
            // EC2 counts IPv6 addresses and prefixes against the per-ENI IPv6 limit (the IPv4 one on every type
            // in the table).
            let have = u32::try_from(eni.ipv6_addresses.len() + eni.ipv6_prefixes.len())
                .unwrap_or(u32::MAX);
            if have + count > limit {
                return Err(Ec2Error::IpLimitExceeded {
                    api,
                    eni: eni_id.to_string(),
                });
            }
            let subnet = eni.subnet_id.clone();
            let got = take_ipv6_prefixes(&mut st, &subnet, count, api)?;
            let eni = st
                .enis
                .get_mut(eni_id)
                .ok_or_else(|| not_found(api, eni_id))?;
            eni.ipv6_prefixes.extend(got.iter().copied());
            got
        };
        self.publish(eni_id);
        // The VPC routes the new /80s to the ENI, as EC2 binds secondary IPs to it.
        if let Some(nic) = self.nic_of(eni_id) {
            if let Err(e) = self.hotplug.route_ipv6_prefixes(nic, got.clone()).await {
                tracing::warn!(error = %e, "simulated VPC could not route IPv6 prefixes");
            }
        }
        Ok(got)
    }

    async fn do_detach(&self, api: &'static str, attachment_id: &str) -> Result<(), Ec2Error> {
        let eni_id = {
            let st = self.lock();
            st.enis
                .values()
                .find(|e| e.attachment_id.as_deref() == Some(attachment_id))
                .map(|e| e.id.clone())
                .ok_or_else(|| Ec2Error::NotFound {
                    api,
                    what: format!("attachment {attachment_id}"),
                })?
        };
        let nic = self
            .nic_of(&eni_id)
            .ok_or_else(|| not_found(api, &eni_id))?;
        if nic.is_primary {
            return Err(Ec2Error::Other {
                api,
                code: "OperationNotPermitted".into(),
                message: "the primary network interface cannot be detached".into(),
            });
        }
        if let Err(e) = self.hotplug.unplug(nic).await {
            tracing::warn!(error = %e, "simulated unplug failed");
        }
        if let Some(eni) = self.lock().enis.get_mut(&eni_id) {
            eni.device_index = None;
            eni.attachment_id = None;
            eni.instance_id = None;
            eni.network_card_index = 0;
            eni.status = "available".into();
        }
        self.publish(&eni_id);
        Ok(())
    }

    async fn do_delete(&self, api: &'static str, eni_id: &str) -> Result<(), Ec2Error> {
        let mut st = self.lock();
        let eni = st.enis.get(eni_id).ok_or_else(|| not_found(api, eni_id))?;
        if eni.device_index.is_some() {
            return Err(Ec2Error::Other {
                api,
                code: "InvalidNetworkInterface.InUse".into(),
                message: format!("{eni_id} is attached"),
            });
        }
        let subnet = eni.subnet_id.clone();
        let mut released = addresses(&eni.secondary_ips, &eni.ipv4_prefixes);
        released.push(eni.primary_ip);
        release(&mut st, &subnet, released);
        st.enis.remove(eni_id);
        st.eni_security_groups.remove(eni_id);
        Ok(())
    }
}

#[async_trait]
impl Ec2 for SimEc2 {
    async fn create_network_interface(
        &self,
        req: CreateEniRequest,
    ) -> Result<EniDescription, Ec2Error> {
        let api = Api::CreateNetworkInterface.name();
        let post = self.gate(api).await?;
        let res = {
            let mut st = self.lock();
            new_eni(&mut st, &req.subnet_id, req.description, req.tags, req.ips).inspect(|eni| {
                st.enis.insert(eni.id.clone(), eni.clone());
                st.eni_security_groups
                    .insert(eni.id.clone(), req.security_groups.clone());
            })
        };
        self.finish(api, post, res).await
    }

    async fn create_network_interface_with_token(
        &self,
        req: CreateEniRequest,
        client_token: &str,
    ) -> Result<EniDescription, Ec2Error> {
        let api = Api::CreateNetworkInterface.name();
        let post = self.gate(api).await?;
        let res = {
            let mut st = self.lock();
            let params = format!("{req:?}");
            match st.client_tokens.get(client_token).cloned() {
                _ if client_token.is_empty()
                    || client_token.len() > 64
                    || !client_token.is_ascii() =>
                {
                    Err(Ec2Error::Other {
                        api,
                        code: "InvalidParameterValue".into(),
                        message: "ClientToken must be 1 to 64 ASCII characters".into(),
                    })
                }
                Some((p, id)) if p == params => {
                    st.enis.get(&id).cloned().ok_or_else(|| not_found(api, &id))
                }
                Some(_) => Err(Ec2Error::Other {
                    api,
                    code: "IdempotentParameterMismatch".into(),
                    message: format!(
                        "the client token {client_token} was used with different parameters"
                    ),
                }),
                None => {
                    let groups = req.security_groups.clone();
                    match new_eni(&mut st, &req.subnet_id, req.description, req.tags, req.ips) {
                        Ok(eni) => {
                            st.enis.insert(eni.id.clone(), eni.clone());
                            st.eni_security_groups.insert(eni.id.clone(), groups);
                            st.client_tokens
                                .insert(client_token.to_string(), (params, eni.id.clone()));
                            Ok(eni)
                        }
                        Err(e) => Err(e),
                    }
                }
            }
        };
        self.finish(api, post, res).await
    }

    async fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
        network_card_index: u32,
    ) -> Result<String, Ec2Error> {
        let api = Api::AttachNetworkInterface.name();
        let post = self.gate(api).await?;
        let res = self
            .do_attach(api, eni_id, instance_id, device_index, network_card_index)
            .await;
        self.finish(api, post, res).await
    }

    async fn set_delete_on_termination(
        &self,
        eni_id: &str,
        _attachment_id: &str,
    ) -> Result<(), Ec2Error> {
        let api = Api::ModifyNetworkInterfaceAttribute.name();
        let post = self.gate(api).await?;
        let res = {
            let mut st = self.lock();
            st.enis
                .get_mut(eni_id)
                .ok_or_else(|| not_found(api, eni_id))
                .map(|eni| eni.delete_on_termination = true)
        };
        self.finish(api, post, res).await
    }

    async fn set_security_groups(&self, eni_id: &str, groups: &[String]) -> Result<(), Ec2Error> {
        let api = Api::ModifyNetworkInterfaceAttribute.name();
        let post = self.gate(api).await?;
        let res = {
            let mut st = self.lock();
            if groups.is_empty() || groups.iter().any(|g| !g.starts_with("sg-")) {
                Err(Ec2Error::Other {
                    api,
                    code: "InvalidParameterValue".into(),
                    message: format!(
                        "invalid security groups {groups:?}: at least one sg-... is required"
                    ),
                })
            } else if st.enis.contains_key(eni_id) {
                st.eni_security_groups
                    .insert(eni_id.to_string(), groups.to_vec());
                if st.enis.get(eni_id).and_then(|e| e.device_index) == Some(0) {
                    st.security_groups = groups.to_vec();
                }
                Ok(())
            } else {
                Err(not_found(api, eni_id))
            }
        };
        self.finish(api, post, res).await
    }

    async fn assign_private_ips(&self, eni_id: &str, req: IpRequest) -> Result<Assigned, Ec2Error> {
        let api = Api::AssignPrivateIpAddresses.name();
        let post = self.gate(api).await?;
        let res = self.do_assign(api, eni_id, req).await;
        self.finish(api, post, res).await
    }

    async fn unassign_private_ips(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
        prefixes: &[Ipv4Network],
    ) -> Result<(), Ec2Error> {
        let api = Api::UnassignPrivateIpAddresses.name();
        let post = self.gate(api).await?;
        let res = self.do_unassign(api, eni_id, ips, prefixes).await;
        self.finish(api, post, res).await
    }

    async fn assign_ipv6_prefixes(
        &self,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv6Network>, Ec2Error> {
        let api = Api::AssignIpv6Addresses.name();
        let post = self.gate(api).await?;
        let res = self.do_assign_ipv6(api, eni_id, count).await;
        self.finish(api, post, res).await
    }

    async fn detach_network_interface(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        let api = Api::DetachNetworkInterface.name();
        let post = self.gate(api).await?;
        let res = self.do_detach(api, attachment_id).await;
        self.finish(api, post, res).await
    }

    async fn delete_network_interface(&self, eni_id: &str) -> Result<(), Ec2Error> {
        let api = Api::DeleteNetworkInterface.name();
        let post = self.gate(api).await?;
        let res = self.do_delete(api, eni_id).await;
        self.finish(api, post, res).await
    }

    async fn describe_network_interfaces(
        &self,
        ids: &[String],
    ) -> Result<Vec<EniDescription>, Ec2Error> {
        let api = Api::DescribeNetworkInterfaces.name();
        let post = self.gate(api).await?;
        let res = {
            let st = self.lock();
            ids.iter()
                .map(|id| st.enis.get(id).cloned().ok_or_else(|| not_found(api, id)))
                .collect()
        };
        self.finish(api, post, res).await
    }

    async fn list_network_interfaces(
        &self,
        filter: &EniFilter,
    ) -> Result<Vec<EniDescription>, Ec2Error> {
        let api = Api::DescribeNetworkInterfaces.name();
        let post = self.gate(api).await?;
        let res = {
            let st = self.lock();
            Ok(st
                .enis
                .values()
                .filter(|e| {
                    filter.vpc_id.as_ref().is_none_or(|v| *v == e.vpc_id)
                        && filter.status.as_ref().is_none_or(|s| *s == e.status)
                        && filter
                            .attachment_instance_id
                            .as_ref()
                            .is_none_or(|i| e.instance_id.as_ref() == Some(i))
                        && filter.tag_keys.iter().all(|k| e.tags.contains_key(k))
                        && filter.tags.iter().all(|(k, v)| e.tags.get(k) == Some(v))
                })
                .cloned()
                .collect())
        };
        self.finish(api, post, res).await
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<InstanceDescription, Ec2Error> {
        let api = Api::DescribeInstances.name();
        let post = self.gate(api).await?;
        let res = {
            let st = self.lock();
            if let Some(state) = st.other_instances.get(instance_id) {
                Ok(InstanceDescription {
                    instance_id: instance_id.to_string(),
                    instance_type: st.instance_type.clone(),
                    subnet_id: st.subnet_id.clone(),
                    vpc_id: st.vpc_id.clone(),
                    security_groups: st.security_groups.clone(),
                    attachments: Vec::new(),
                    state: state.clone(),
                })
            } else if instance_id != st.instance_id {
                Err(Ec2Error::NotFound {
                    api,
                    what: format!("instance {instance_id}"),
                })
            } else {
                Ok(InstanceDescription {
                    instance_id: st.instance_id.clone(),
                    instance_type: st.instance_type.clone(),
                    subnet_id: st.subnet_id.clone(),
                    vpc_id: st.vpc_id.clone(),
                    security_groups: st.security_groups.clone(),
                    attachments: st
                        .enis
                        .values()
                        .filter_map(|e| e.device_index.map(|d| (e.network_card_index, d)))
                        .collect(),
                    state: "running".into(),
                })
            }
        };
        self.finish(api, post, res).await
    }

    async fn describe_subnets(
        &self,
        filter: &SubnetFilter,
    ) -> Result<Vec<SubnetDescription>, Ec2Error> {
        let api = Api::DescribeSubnets.name();
        let post = self.gate(api).await?;
        let res = {
            let st = self.lock();
            // EC2 refuses the whole call when an asked-for subnet does not exist.
            match filter.ids.iter().find(|id| !st.subnets.contains_key(*id)) {
                Some(id) => Err(Ec2Error::NotFound {
                    api,
                    what: format!("subnet {id} (InvalidSubnetID.NotFound)"),
                }),
                None => Ok(st
                    .subnets
                    .values()
                    .map(|s| SubnetDescription {
                        id: s.id.clone(),
                        cidr: s.cidr,
                        availability_zone: s
                            .availability_zone
                            .clone()
                            .unwrap_or_else(|| st.availability_zone.clone()),
                        vpc_id: st.vpc_id.clone(),
                        available_ip_count: s.free.len() as u64,
                        tags: s.tags.clone(),
                    })
                    .filter(|s| {
                        (filter.ids.is_empty() || filter.ids.contains(&s.id))
                            && filter.vpc_id.as_ref().is_none_or(|v| *v == s.vpc_id)
                            && filter
                                .availability_zone
                                .as_ref()
                                .is_none_or(|z| *z == s.availability_zone)
                    })
                    .collect()),
            }
        };
        self.finish(api, post, res).await
    }

    async fn create_tags(
        &self,
        resource_id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), Ec2Error> {
        let api = Api::CreateTags.name();
        let post = self.gate(api).await?;
        let res = {
            let mut st = self.lock();
            st.enis
                .get_mut(resource_id)
                .ok_or_else(|| not_found(api, resource_id))
                .map(|eni| {
                    eni.tags
                        .extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())))
                })
        };
        self.finish(api, post, res).await
    }

    async fn describe_instance_types(
        &self,
        types: &[String],
    ) -> Result<Vec<InstanceTypeInfo>, Ec2Error> {
        let api = Api::DescribeInstanceTypes.name();
        let post = self.gate(api).await?;
        let pick: Result<Vec<&InstanceLimits>, Ec2Error> = if types.is_empty() {
            Ok(instance_limits::all().iter().collect())
        } else {
            types
                .iter()
                .map(|t| {
                    instance_limits::lookup(t).ok_or_else(|| Ec2Error::Other {
                        api,
                        code: "InvalidInstanceType".into(),
                        message: format!("the instance type {t:?} does not exist"),
                    })
                })
                .collect()
        };
        let res = pick.map(|pick| {
            pick.into_iter()
                .map(|l| InstanceTypeInfo {
                    instance_type: l.instance_type.to_string(),
                    enis: l.enis,
                    default_network_card_index: l.default_network_card_index,
                    network_cards: l
                        .network_cards
                        .iter()
                        .map(|c| (c.index, c.max_enis))
                        .collect(),
                    ipv4_per_eni: l.ipv4_per_eni,
                    ipv6_per_eni: l.ipv6_per_eni,
                    hypervisor: l.hypervisor.as_str().to_string(),
                    bare_metal: l.bare_metal,
                    vcpus: l.vcpus,
                })
                .collect()
        });
        self.finish(api, post, res).await
    }
}
