//! One way to wrap EC2: a layer sees every call as an [`Api`] and a way to make the call, and decides what
//! happens around it (wait, retry, time, count, refuse).
//!
//! ```text
//!   caller ─▶ Layered<Paced> ─▶ Layered<Metered> ─▶ backend (ec2-aws, ec2-sim)
//!               │                 │
//!               └ Ec2Layer::around(api, call): may run `call` zero, one or several times
//! ```
//!
//! [`Layered`] implements [`Ec2`] by handing each method to its layer's [`Ec2Layer::around`] with the method's
//! [`Api`] and a closure that makes one attempt on the inner [`Ec2`]; the forwards are written here once, so a
//! layer is one function and adding an EC2 call never touches a layer. The layer is reachable through
//! [`Layered::layer`] (and `Deref`), for what callers ask of it (a pacer's gates, a counter's counts).

use std::future::Future;
use std::net::Ipv4Addr;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::api::Api;
use crate::ec2::{
    Assigned, CreateEniRequest, Ec2, Ec2Error, EniDescription, EniFilter, InstanceDescription,
    InstanceTypeInfo, IpRequest, SubnetDescription, SubnetFilter,
};

/// One attempt of an EC2 call, or a layer's answer for the whole call.
pub type Attempt<'a, T> = Pin<Box<dyn Future<Output = Result<T, Ec2Error>> + Send + 'a>>;

/// Makes one attempt of the wrapped call each time it is called.
pub type Call<'a, T> = &'a (dyn Fn() -> Attempt<'a, T> + Send + Sync);

/// What a layer does around every EC2 call (see the module docs).
pub trait Ec2Layer: Send + Sync + 'static {
    /// Runs the call of `api`: `call()` makes one attempt on the inner [`Ec2`]; the layer may await it once,
    /// several times (retries) or not at all (refusal).
    fn around<'a, T: Send + 'a>(&'a self, api: Api, call: Call<'a, T>) -> Attempt<'a, T>;
}

/// A shared layer (e.g. one account's rate limits in front of many nodes) is a layer.
impl<L: Ec2Layer> Ec2Layer for Arc<L> {
    fn around<'a, T: Send + 'a>(&'a self, api: Api, call: Call<'a, T>) -> Attempt<'a, T> {
        (**self).around(api, call)
    }
}

/// An [`Ec2`] that sends every call of `inner` through `layer` (see the module docs).
pub struct Layered<L, E: ?Sized = dyn Ec2> {
    layer: L,
    inner: Arc<E>,
}

impl<L, E: ?Sized> Layered<L, E> {
    pub fn new(layer: L, inner: Arc<E>) -> Layered<L, E> {
        Layered { layer, inner }
    }

    /// The layer.
    pub fn layer(&self) -> &L {
        &self.layer
    }

    /// What the layer wraps.
    pub fn inner(&self) -> &Arc<E> {
        &self.inner
    }
}

impl<L, E: ?Sized> Deref for Layered<L, E> {
    type Target = L;
    fn deref(&self) -> &L {
        &self.layer
    }
}

impl<L: std::fmt::Debug, E: ?Sized> std::fmt::Debug for Layered<L, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layered")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<L: Ec2Layer, E: Ec2 + ?Sized> Ec2 for Layered<L, E> {
    async fn create_network_interface(
        &self,
        req: CreateEniRequest,
    ) -> Result<EniDescription, Ec2Error> {
        let e = &*self.inner;
        self.layer
            .around(Api::CreateNetworkInterface, &|| {
                e.create_network_interface(req.clone())
            })
            .await
    }

    async fn create_network_interface_with_token(
        &self,
        req: CreateEniRequest,
        client_token: &str,
    ) -> Result<EniDescription, Ec2Error> {
        let e = &*self.inner;
        self.layer
            .around(Api::CreateNetworkInterface, &|| {
                e.create_network_interface_with_token(req.clone(), client_token)
            })
            .await
    }

    async fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
        network_card_index: u32,
    ) -> Result<String, Ec2Error> {
        let e = &*self.inner;
        self.layer
            .around(Api::AttachNetworkInterface, &|| {
                e.attach_network_interface(eni_id, instance_id, device_index, network_card_index)
            })
            .await
    }

    async fn set_delete_on_termination(
        &self,
        eni_id: &str,
        attachment_id: &str,
    ) -> Result<(), Ec2Error> {
        let e = &*self.inner;
        self.layer
            .around(Api::ModifyNetworkInterfaceAttribute, &|| {
                e.set_delete_on_termination(eni_id, attachment_id)
            })
            .await
    }

    async fn set_security_groups(&self, eni_id: &str, groups: &[String]) -> Result<(), Ec2Error> {
        let e = &*self.inner;
        self.layer
            .around(Api::ModifyNetworkInterfaceAttribute, &|| {
                e.set_security_groups(eni_id, groups)
            })
            .await
    }

    async fn assign_private_ips(&self, eni_id: &str, req: IpRequest) -> Result<Assigned, Ec2Error> {
        let e = &*self.inner;
        self.layer
            .around(Api::AssignPrivateIpAddresses, &|| {
                e.assign_private_ips(eni_id, req)
            })
            .await
    }

    async fn unassign_private_ips(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
        prefixes: &[Ipv4Network],
    ) -> Result<(), Ec2Error> {
        let e = &*self.inner;
        self.layer
            .around(Api::UnassignPrivateIpAddresses, &|| {
                e.unassign_private_ips(eni_id, ips, prefixes)
            })
            .await
    }

    async fn assign_ipv6_prefixes(
        &self,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv6Network>, Ec2Error> {
        let e = &*self.inner;
        self.layer
            .around(Api::AssignIpv6Addresses, &|| {
                e.assign_ipv6_prefixes(eni_id, count)
            })
            .await
    }

    async fn detach_network_interface(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        let e = &*self.inner;
        self.layer
            .around(Api::DetachNetworkInterface, &|| {
                e.detach_network_interface(attachment_id)
            })
            .await
    }

    async fn delete_network_interface(&self, eni_id: &str) -> Result<(), Ec2Error> {
        let e = &*self.inner;
        self.layer
            .around(Api::DeleteNetworkInterface, &|| {
                e.delete_network_interface(eni_id)
            })
            .await
    }

    async fn describe_network_interfaces(
        &self,
        ids: &[String],
    ) -> Result<Vec<EniDescription>, Ec2Error> {
        let e = &*self.inner;
        self.layer
            .around(Api::DescribeNetworkInterfaces, &|| {
                e.describe_network_interfaces(ids)
            })
            .await
    }

    async fn list_network_interfaces(
        &self,
        filter: &EniFilter,
    ) -> Result<Vec<EniDescription>, Ec2Error> {
        let e = &*self.inner;
        self.layer
            .around(Api::DescribeNetworkInterfaces, &|| {
                e.list_network_interfaces(filter)
            })
            .await
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<InstanceDescription, Ec2Error> {
        let e = &*self.inner;
        self.layer
            .around(Api::DescribeInstances, &|| e.describe_instance(instance_id))
            .await
    }

    async fn describe_subnets(
        &self,
        filter: &SubnetFilter,
    ) -> Result<Vec<SubnetDescription>, Ec2Error> {
        let e = &*self.inner;
        self.layer
            .around(Api::DescribeSubnets, &|| e.describe_subnets(filter))
            .await
    }

    async fn create_tags(
        &self,
        resource_id: &str,
        tags: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), Ec2Error> {
        let e = &*self.inner;
        self.layer
            .around(Api::CreateTags, &|| e.create_tags(resource_id, tags))
            .await
    }

    async fn describe_instance_types(
        &self,
        types: &[String],
    ) -> Result<Vec<InstanceTypeInfo>, Ec2Error> {
        let e = &*self.inner;
        self.layer
            .around(Api::DescribeInstanceTypes, &|| {
                e.describe_instance_types(types)
            })
            .await
    }
}
