//! The ADD result, kept version-independent in memory and written in the shape of the
//! version the config asked for.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::version::{compare_versions, is_supported, SUPPORTED_VERSIONS};
use crate::CniError;

/// A plugin's result (interfaces, addresses, routes, DNS) independent of spec version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    /// Interfaces created; IPAM-only results leave this empty.
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    pub ips: Vec<IpConfig>,
    /// Routes installed in the sandbox.
    pub routes: Vec<Route>,
    /// DNS settings the network knows about.
    pub dns: Dns,
}

/// One entry of `interfaces`.
///
/// `mac` and `sandbox` are free-form strings, not parsed: the spec says "MAC address" and
/// "netns path or hypervisor ID", but chained plugins (the AWS VPC CNI among them) park other
/// data there (a route-table ID in `mac`, a device number in `sandbox`) and DEL must read it back.
/// An empty string decodes as `None`, as libcni treats it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address (or whatever the producing plugin stored there).
    pub mac: Option<String>,
    /// Netns path for interfaces inside the container; `None` for host-side interfaces.
    pub sandbox: Option<String>,
    /// MTU (1.1.0 output only).
    pub mtu: Option<u32>,
    /// Path of a socket representing the interface, e.g. vhost-user (1.1.0 output only).
    pub socket_path: Option<String>,
    /// PCI address of the device (1.1.0 output only).
    pub pci_id: Option<String>,
}

/// One entry of `ips`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with prefix length, host bits kept (`10.0.0.5/32`, `192.168.1.3/24`).
    pub address: IpNetwork,
    /// The subnet's gateway, if any. Informational: it does not add a route.
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`]; absent in IPAM results.
    pub interface: Option<usize>,
}

/// One entry of `routes`.
///
/// `dst` stays a string so the field reads the way the config does (`"0.0.0.0/0"`); it is checked
/// to be a CIDR when decoded. Build one from typed parts with [`Route::new`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// Destination in CIDR notation.
    pub dst: String,
    /// Next hop; `None` lets the plugin pick its default gateway.
    pub gw: Option<IpAddr>,
    /// Route MTU (1.1.0 output only).
    pub mtu: Option<u32>,
    /// TCP advertised MSS (1.1.0 output only).
    pub advmss: Option<u32>,
    /// Route priority / metric (1.1.0 output only).
    pub priority: Option<u32>,
    /// Routing table (1.1.0 output only).
    pub table: Option<u32>,
    /// Route scope, e.g. 0 universe, 253 link (1.1.0 output only).
    pub scope: Option<u32>,
}

/// The `dns` object. Every part is optional; an all-empty `Dns` is left out of the output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    /// Resolver addresses, in priority order.
    pub nameservers: Vec<String>,
    /// Local domain for short names.
    pub domain: Option<String>,
    /// Search domains, in priority order.
    pub search: Vec<String>,
    /// Resolver options.
    pub options: Vec<String>,
}

// === impl Route / IpConfig / Interface / Dns ===

impl Route {
    /// A route to `dst` via `gw` with no 1.1.0 attributes.
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Route {
        Route {
            dst: dst.to_string(),
            gw,
            ..Route::default()
        }
    }

    /// `dst` parsed as a network (always succeeds for a decoded route).
    pub fn dst_network(&self) -> Result<IpNetwork, CniError> {
        parse_cidr(&self.dst).map_err(|e| CniError::decoding("invalid route dst").with_details(e))
    }
}

impl IpConfig {
    /// `"4"` or `"6"`, as pre-1.0.0 results spell the address family.
    pub fn version_str(&self) -> &'static str {
        if self.address.is_ipv4() {
            "4"
        } else {
            "6"
        }
    }
}

impl Interface {
    /// An interface with just a name.
    pub fn new(name: impl Into<String>) -> Interface {
        Interface {
            name: name.into(),
            ..Interface::default()
        }
    }
}

impl Dns {
    /// True when nothing is set (then `dns` is omitted from output).
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

// === impl CniResult ===

impl CniResult {
    /// The result as JSON in the shape of `version`.
    ///
    /// - 0.3.0, 0.3.1, 0.4.0: each `ips` entry carries `"version": "4"|"6"`.
    /// - 1.0.0: no `version` on `ips`.
    /// - 1.1.0: as 1.0.0, plus interface `mtu`/`socketPath`/`pciID` and route
    ///   `mtu`/`advmss`/`priority`/`table`/`scope` where set. Older versions drop these.
    ///
    /// Always has `cniVersion` and `ips`; `interfaces`, `routes` and `dns` only when non-empty.
    /// An unsupported `version` is code 1.
    pub fn to_json(&self, version: &str) -> Result<Value, CniError> {
        if !is_supported(version) {
            return Err(CniError::incompatible_version(format!(
                "cannot write a result for cniVersion {version:?}"
            ))
            .with_details(format!("supported: {}", SUPPORTED_VERSIONS.join(", "))));
        }
        let pre_1_0 = compare_versions(version, "1.0.0").is_some_and(|o| o.is_lt());
        let v1_1 = compare_versions(version, "1.1.0").is_some_and(|o| o.is_ge());

        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version));

        if !self.interfaces.is_empty() {
            let list = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut o = Map::new();
                    o.insert("name".into(), json!(i.name));
                    put_opt(&mut o, "mac", &i.mac);
                    put_opt(&mut o, "sandbox", &i.sandbox);
                    if v1_1 {
                        put_opt(&mut o, "mtu", &i.mtu);
                        put_opt(&mut o, "socketPath", &i.socket_path);
                        put_opt(&mut o, "pciID", &i.pci_id);
                    }
                    Value::Object(o)
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(list));
        }

        let ips = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if pre_1_0 {
                    o.insert("version".into(), json!(ip.version_str()));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                put_opt(&mut o, "gateway", &ip.gateway.map(|g| g.to_string()));
                put_opt(&mut o, "interface", &ip.interface);
                Value::Object(o)
            })
            .collect();
        out.insert("ips".into(), Value::Array(ips));

        if !self.routes.is_empty() {
            let list = self
                .routes
                .iter()
                .map(|r| {
                    let mut o = Map::new();
                    o.insert("dst".into(), json!(r.dst));
                    put_opt(&mut o, "gw", &r.gw.map(|g| g.to_string()));
                    if v1_1 {
                        put_opt(&mut o, "mtu", &r.mtu);
                        put_opt(&mut o, "advmss", &r.advmss);
                        put_opt(&mut o, "priority", &r.priority);
                        put_opt(&mut o, "table", &r.table);
                        put_opt(&mut o, "scope", &r.scope);
                    }
                    Value::Object(o)
                })
                .collect();
            out.insert("routes".into(), Value::Array(list));
        }

        if !self.dns.is_empty() {
            let d = &self.dns;
            let mut o = Map::new();
            if !d.nameservers.is_empty() {
                o.insert("nameservers".into(), json!(d.nameservers));
            }
            put_opt(&mut o, "domain", &d.domain);
            if !d.search.is_empty() {
                o.insert("search".into(), json!(d.search));
            }
            if !d.options.is_empty() {
                o.insert("options".into(), json!(d.options));
            }
            out.insert("dns".into(), Value::Object(o));
        }

        Ok(Value::Object(out))
    }

    /// Reads a result of any supported version (a `prevResult`, an IPAM plugin's output).
    ///
    /// Lenient about shape, strict about values: unknown keys are ignored, `version` on `ips` is
    /// optional, 1.1.0 fields are read whatever `cniVersion` says, and `null` or `""` count as
    /// absent. But an address or `dst` that is not a CIDR, an unparseable gateway, or a `version`
    /// that contradicts the address is code 6. A pre-0.3.0 result (`cniVersion` below 0.3.0, or
    /// `ip4`/`ip6` objects instead of `ips`) is code 1.
    pub fn from_json(v: &Value) -> Result<CniResult, CniError> {
        let wire = WireResult::deserialize(v).map_err(|e| {
            CniError::decoding("failed to decode CNI result").with_details(e.to_string())
        })?;

        if let Some(ver) = wire.cni_version.as_deref().filter(|s| !s.is_empty()) {
            match compare_versions(ver, "0.3.0") {
                None => {
                    return Err(CniError::decoding("failed to decode CNI result")
                        .with_details(format!("cniVersion {ver:?} is not MAJOR.MINOR.PATCH")))
                }
                Some(o) if o.is_lt() => return Err(legacy_result(ver)),
                Some(_) => {}
            }
        }
        if wire.ips.is_none() && (wire.ip4.is_some() || wire.ip6.is_some()) {
            return Err(legacy_result("0.2.0"));
        }

        let interfaces = wire
            .interfaces
            .unwrap_or_default()
            .into_iter()
            .map(|i| Interface {
                name: i.name,
                mac: non_empty(i.mac),
                sandbox: non_empty(i.sandbox),
                mtu: i.mtu,
                socket_path: non_empty(i.socket_path),
                pci_id: non_empty(i.pci_id),
            })
            .collect();

        let ips = wire
            .ips
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(n, ip)| {
                let address = parse_cidr(&ip.address)
                    .map_err(|e| bad_result(format!("ips[{n}].address: {e}")))?;
                let gateway = parse_opt_ip(ip.gateway)
                    .map_err(|e| bad_result(format!("ips[{n}].gateway: {e}")))?;
                let cfg = IpConfig {
                    address,
                    gateway,
                    interface: ip.interface,
                };
                if let Some(ver) = ip.version.filter(|s| !s.is_empty()) {
                    if ver != "4" && ver != "6" {
                        return Err(bad_result(format!(
                            "ips[{n}].version: {ver:?} is not \"4\" or \"6\""
                        )));
                    }
                    if ver != cfg.version_str() {
                        return Err(bad_result(format!(
                            "ips[{n}]: version {ver:?} does not match address {}",
                            cfg.address
                        )));
                    }
                }
                Ok(cfg)
            })
            .collect::<Result<Vec<_>, CniError>>()?;

        let routes = wire
            .routes
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(n, r)| {
                parse_cidr(&r.dst).map_err(|e| bad_result(format!("routes[{n}].dst: {e}")))?;
                Ok(Route {
                    dst: r.dst,
                    gw: parse_opt_ip(r.gw)
                        .map_err(|e| bad_result(format!("routes[{n}].gw: {e}")))?,
                    mtu: r.mtu,
                    advmss: r.advmss,
                    priority: r.priority,
                    table: r.table,
                    scope: r.scope,
                })
            })
            .collect::<Result<Vec<_>, CniError>>()?;

        let dns = wire
            .dns
            .map(|d| Dns {
                nameservers: d.nameservers.unwrap_or_default(),
                domain: non_empty(d.domain),
                search: d.search.unwrap_or_default(),
                options: d.options.unwrap_or_default(),
            })
            .unwrap_or_default();

        Ok(CniResult {
            interfaces,
            ips,
            routes,
            dns,
        })
    }
}

/// Parses strict CIDR (`addr/len`, decimal prefix in range); a bare address is rejected, as
/// `net.ParseCIDR` does.
pub(crate) fn parse_cidr(s: &str) -> Result<IpNetwork, String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not in CIDR notation"))?;
    let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?}: bad address"))?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?}: bad prefix length"));
    }
    let len: u8 = len
        .parse()
        .map_err(|_| format!("{s:?}: bad prefix length"))?;
    IpNetwork::new(addr, len).map_err(|_| format!("{s:?}: prefix length out of range"))
}

fn parse_opt_ip(s: Option<String>) -> Result<Option<IpAddr>, String> {
    match non_empty(s) {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("{s:?} is not an IP address")),
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn put_opt<T: serde::Serialize>(o: &mut Map<String, Value>, key: &str, v: &Option<T>) {
    if let Some(v) = v {
        o.insert(key.into(), json!(v));
    }
}

fn bad_result(details: String) -> CniError {
    CniError::decoding("failed to decode CNI result").with_details(details)
}

fn legacy_result(ver: &str) -> CniError {
    CniError::incompatible_version(format!("unsupported result version {ver}"))
        .with_details("results older than 0.3.0 (ip4/ip6 objects) are not supported")
}

// Wire shapes for decoding: every field optional, unknown fields ignored.

#[derive(Deserialize)]
struct WireResult {
    #[serde(rename = "cniVersion", default)]
    cni_version: Option<String>,
    #[serde(default)]
    interfaces: Option<Vec<WireInterface>>,
    #[serde(default)]
    ips: Option<Vec<WireIp>>,
    #[serde(default)]
    routes: Option<Vec<WireRoute>>,
    #[serde(default)]
    dns: Option<WireDns>,
    #[serde(default)]
    ip4: Option<Value>,
    #[serde(default)]
    ip6: Option<Value>,
}

#[derive(Deserialize)]
struct WireInterface {
    name: String,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    sandbox: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(rename = "socketPath", default)]
    socket_path: Option<String>,
    #[serde(rename = "pciID", default)]
    pci_id: Option<String>,
}

#[derive(Deserialize)]
struct WireIp {
    #[serde(default)]
    version: Option<String>,
    address: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct WireRoute {
    dst: String,
    #[serde(default)]
    gw: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    advmss: Option<u32>,
    #[serde(default)]
    priority: Option<u32>,
    #[serde(default)]
    table: Option<u32>,
    #[serde(default)]
    scope: Option<u32>,
}

#[derive(Deserialize)]
struct WireDns {
    #[serde(default)]
    nameservers: Option<Vec<String>>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    search: Option<Vec<String>>,
    #[serde(default)]
    options: Option<Vec<String>>,
}
