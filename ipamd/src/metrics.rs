//! Prometheus metrics: every `awscni_*` series of the anchor (same names, types and labels, so existing
//! dashboards and alerts keep working), plus ours.
//!
//! Where values come from:
//! - request path: [`crate::serve::rpc`] counts ADD/DEL and observes their latency as ipamd sees it;
//! - EC2 and IMDS: [`crate::metered`]'s layers wrap the backends and record every call (latency summary by
//!   API, errors by code, and ours: calls by API and outcome with throttling apart) — nothing in the pool engine
//!   needs to know about metrics;
//! - pool state: gauges are refreshed from the datastore when scraped ([`Metrics::refresh`]), so they are exact
//!   at scrape time and cost nothing between scrapes;
//! - startup: the daemon observes the startup and node-initialisation histograms once.
//!
//! `awscni_aws_api_latency_ms` is a summary in the anchor; the Rust clients have no summary type, so
//! [`LatencySummary`] is a small collector that keeps the last [`SUMMARY_WINDOW`] observations per label set and
//! reports the 0.5/0.9/0.99 quantiles over them, with cumulative sum and count.
//!
//! Series the anchor has for features this daemon does not run yet (security groups for pods, connmark
//! reconcile, forced removals by reconcile, prefixes) are registered with their labels and stay at zero until the
//! feature feeds them; the test of this module lists which.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::core::snapshot::PoolSnapshot;
use crate::sync::lock;

/// Observations kept per label set for the latency summary's quantiles.
pub const SUMMARY_WINDOW: usize = 512;

/// A summary metric with labels (see the module docs).
#[derive(Debug)]
pub struct LatencySummary {
    desc: Desc,
    label_names: Vec<String>,
    series: Mutex<BTreeMap<Vec<String>, SummaryState>>,
}

#[derive(Debug, Default)]
struct SummaryState {
    window: VecDeque<f64>,
    sum: f64,
    count: u64,
}

impl LatencySummary {
    fn new(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<LatencySummary> {
        Ok(LatencySummary {
            desc: Desc::new(
                name.into(),
                help.into(),
                labels.iter().map(|l| l.to_string()).collect(),
                Default::default(),
            )?,
            label_names: labels.iter().map(|l| l.to_string()).collect(),
            series: Mutex::new(BTreeMap::new()),
        })
    }

    /// Records one observation for `labels` (in the declared order).
    pub fn observe(&self, labels: &[&str], value: f64) {
        let key: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let st = series.entry(key).or_default();
        if st.window.len() == SUMMARY_WINDOW {
            st.window.pop_front();
        }
        st.window.push_back(value);
        st.sum += value;
        st.count += 1;
    }
}

impl Collector for LatencySummary {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut metrics = Vec::new();
        for (values, st) in series.iter() {
            let mut sorted: Vec<f64> = st.window.iter().copied().collect();
            sorted.sort_by(|a, b| a.total_cmp(b));
            let mut quantiles = Vec::new();
            for q in [0.5, 0.9, 0.99] {
                let mut quantile = Quantile::default();
                quantile.set_quantile(q);
                let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
                quantile.set_value(sorted.get(idx).copied().unwrap_or(f64::NAN));
                quantiles.push(quantile);
            }
            let mut summary = Summary::default();
            summary.set_sample_count(st.count);
            summary.set_sample_sum(st.sum);
            summary.set_quantile(quantiles);
            let mut m = Metric::default();
            m.set_label(
                self.label_names
                    .iter()
                    .zip(values)
                    .map(|(n, v)| {
                        let mut lp = LabelPair::default();
                        lp.set_name(n.clone());
                        lp.set_value(v.clone());
                        lp
                    })
                    .collect(),
            );
            m.set_summary(summary);
            metrics.push(m);
        }
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::SUMMARY);
        family.set_metric(metrics);
        vec![family]
    }
}

/// Every series, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// (name, help, type) of every family, for [`Metrics::render`].
    declared: Vec<(String, String, &'static str)>,
    /// The engine's forced-removal total at the last refresh.
    force_removed_seen: Mutex<u64>,
    // --- the anchor's ---
    pub ipamd_error_count: IntCounterVec,
    pub ipamd_action_inprogress: IntGaugeVec,
    pub eni_max: IntGauge,
    pub ip_max: IntGauge,
    pub reconcile_count: IntCounterVec,
    pub add_ip_req_count: IntCounter,
    pub del_ip_req_count: IntCounterVec,
    pub pod_eni_error_count: IntCounterVec,
    pub aws_api_latency_ms: Arc<LatencySummary>,
    pub aws_api_error_count: IntCounterVec,
    pub aws_utils_error_count: IntCounterVec,
    pub ec2api_req_count: IntCounterVec,
    pub ec2api_error_count: IntCounterVec,
    pub eni_allocated: IntGauge,
    pub total_ip_addresses: IntGauge,
    pub assigned_ip_addresses: IntGauge,
    pub force_removed_enis: IntCounter,
    pub force_removed_ips: IntCounter,
    pub total_ipv4_prefixes: IntGauge,
    pub assigned_ip_per_cidr: IntGaugeVec,
    pub no_available_ip_addresses: IntCounter,
    pub assigned_ip_per_eni: IntGaugeVec,
    pub startup_duration_seconds: HistogramVec,
    pub node_initialization_duration_seconds: HistogramVec,
    pub connmark_backend: IntGaugeVec,
    pub connmark_reconcile_total: IntCounterVec,
    pub build_info: IntGaugeVec,
    // --- ours ---
    /// ADD latency inside ipamd (request in to reply out).
    pub add_latency_seconds: Histogram,
    /// DEL latency inside ipamd.
    pub del_latency_seconds: Histogram,
    /// ADDs that got no address, by reason.
    pub add_failures: IntCounterVec,
    /// EC2 calls by API and outcome (`ok`, `throttled`, `error`).
    pub ec2_calls: IntCounterVec,
    /// Addresses per ENI by state (`total`, `assigned`, `cooldown`, `available`).
    pub pool_ips: IntGaugeVec,
    /// Time to write the checkpoint.
    pub checkpoint_write_seconds: Histogram,
    /// Host veths handed over by DEL, by outcome (`deleted`, `gone`, `renamed`, `failed`, `abandoned` at
    /// shutdown, `refused` offers); see [`crate::reaper`].
    pub veth_reaper: IntCounterVec,
    /// Host veth deletions queued or in flight.
    pub veth_reaper_pending: IntGauge,
    /// Addresses the release hysteresis keeps (the peak need over `AWS_CNI_POOL_RELEASE_DELAY`).
    pub pool_keep: IntGauge,
    /// ADDs waiting for an address on its way.
    pub add_waiting: IntGauge,
    /// The SNAT/connmark backend chosen at startup (`nftables`, `iptables-nft`, `iptables-legacy`): 1.
    pub snat_backend: IntGaugeVec,
    /// Pods' host rules and routes that drift repair put back or removed (see [`crate::host::drift`]).
    pub pod_routing_repairs: IntCounter,
    /// Custom networking: 1 for the node's ENIConfig and the subnet the next ENI goes to, while it is usable.
    pub eniconfig_in_use: IntGaugeVec,
    /// Custom networking: 1 while the node's ENIConfig cannot place a new ENI, with the cause (`node-unknown`,
    /// `missing`, `no-subnet`, `unknown-subnet`, `other-zone`, `ec2-error`).
    pub eniconfig_invalid: IntGaugeVec,
    /// How the node gets addresses now: 1 for the mode in force (`secondary-ip`, `prefix`,
    /// `prefix-fallback-secondary-ip`), 0 for the others.
    pub address_mode: IntGaugeVec,
    /// Live reloads of the pool knobs, by outcome (`applied`, `refused`); see [`crate::reload`].
    pub config_reloads: IntCounterVec,
    /// VPC refresh checks by item (`vpc_cidrs`, `security_groups`) and outcome (`unchanged`: nothing written,
    /// `applied`, `failed`); see [`crate::engine::refresh`].
    pub vpc_refresh: IntCounterVec,
    /// ENIs given the primary ENI's new security groups (ModifyNetworkInterfaceAttribute).
    pub security_group_updates: IntCounter,
    /// The cluster's EC2 schedule: reservations by outcome, and whether it is in use.
    pub ec2_schedule: IntCounterVec,
    pub ec2_schedule_in_use: IntGauge,
}

/// Registers families and remembers their declarations.
struct Builder {
    r: Registry,
    declared: Vec<(String, String, &'static str)>,
}

impl Builder {
    fn note(&mut self, name: &str, help: &str, kind: &'static str) {
        self.declared.push((name.into(), help.into(), kind));
    }

    fn counter_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        let c = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.r.register(Box::new(c.clone()))?;
        self.note(name, help, "counter");
        Ok(c)
    }

    fn gauge_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
        self.r.register(Box::new(g.clone()))?;
        self.note(name, help, "gauge");
        Ok(g)
    }

    fn counter(&mut self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        let c = IntCounter::new(name, help)?;
        self.r.register(Box::new(c.clone()))?;
        self.note(name, help, "counter");
        Ok(c)
    }

    fn gauge(&mut self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        let g = IntGauge::new(name, help)?;
        self.r.register(Box::new(g.clone()))?;
        self.note(name, help, "gauge");
        Ok(g)
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        buckets: Vec<f64>,
    ) -> prometheus::Result<Histogram> {
        let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
        self.r.register(Box::new(h.clone()))?;
        self.note(name, help, "histogram");
        Ok(h)
    }

    fn histogram_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<HistogramVec> {
        let h = HistogramVec::new(HistogramOpts::new(name, help), labels)?;
        self.r.register(Box::new(h.clone()))?;
        self.note(name, help, "histogram");
        Ok(h)
    }
}

/// Latency buckets for in-daemon request handling: 10 µs .. 1 s.
fn request_buckets() -> Vec<f64> {
    vec![
        0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
        0.1, 1.0,
    ]
}

impl Metrics {
    /// Registers every series.
    pub fn new() -> prometheus::Result<Metrics> {
        let mut r = Builder {
            r: Registry::new(),
            declared: Vec::new(),
        };
        let summary = Arc::new(LatencySummary::new(
            "awscni_aws_api_latency_ms",
            "AWS API call latency in ms",
            &["api", "error", "status"],
        )?);
        r.r.register(Box::new(SharedCollector(Arc::clone(&summary))))?;
        r.note(
            "awscni_aws_api_latency_ms",
            "AWS API call latency in ms",
            "summary",
        );
        let m = Metrics {
            ipamd_error_count: r.counter_vec(
                "awscni_ipamd_error_count",
                "The number of errors encountered in ipamd",
                &["fn"],
            )?,
            ipamd_action_inprogress: r.gauge_vec(
                "awscni_ipamd_action_inprogress",
                "The number of ipamd actions in progress",
                &["fn"],
            )?,
            eni_max: r.gauge(
                "awscni_eni_max",
                "The maximum number of ENIs that can be attached to the instance",
            )?,
            ip_max: r.gauge(
                "awscni_ip_max",
                "The maximum number of IP addresses that can be allocated to the instance",
            )?,
            reconcile_count: r.counter_vec(
                "awscni_reconcile_count",
                "The number of times ipamd reconciles on ENIs and IP addresses",
                &["fn"],
            )?,
            add_ip_req_count: r.counter(
                "awscni_add_ip_req_count",
                "The number of add IP address requests",
            )?,
            del_ip_req_count: r.counter_vec(
                "awscni_del_ip_req_count",
                "The number of delete IP address requests",
                &["reason"],
            )?,
            pod_eni_error_count: r.counter_vec(
                "awscni_pod_eni_error_count",
                "The number of errors encountered for pod ENIs",
                &["fn"],
            )?,
            aws_api_latency_ms: summary,
            aws_api_error_count: r.counter_vec(
                "awscni_aws_api_error_count",
                "The number of times AWS API returns an error",
                &["api", "error"],
            )?,
            aws_utils_error_count: r.counter_vec(
                "awscni_aws_utils_error_count",
                "The number of errors not handled in awsutils library",
                &["fn", "error"],
            )?,
            ec2api_req_count: r.counter_vec(
                "awscni_ec2api_req_count",
                "The number of requests made to EC2 APIs by CNI",
                &["fn"],
            )?,
            ec2api_error_count: r.counter_vec(
                "awscni_ec2api_error_count",
                "The number of failed EC2 APIs requests",
                &["fn"],
            )?,
            eni_allocated: r.gauge("awscni_eni_allocated", "The number of ENIs allocated")?,
            total_ip_addresses: r.gauge(
                "awscni_total_ip_addresses",
                "The total number of IP addresses",
            )?,
            assigned_ip_addresses: r.gauge(
                "awscni_assigned_ip_addresses",
                "The number of IP addresses assigned to pods",
            )?,
            force_removed_enis: r.counter(
                "awscni_force_removed_enis",
                "The number of ENIs force removed while they had assigned pods",
            )?,
            force_removed_ips: r.counter(
                "awscni_force_removed_ips",
                "The number of IPs force removed while they had assigned pods",
            )?,
            total_ipv4_prefixes: r.gauge(
                "awscni_total_ipv4_prefixes",
                "The total number of IPv4 prefixes",
            )?,
            assigned_ip_per_cidr: r.gauge_vec(
                "awscni_assigned_ip_per_cidr",
                "The total number of IP addresses assigned per cidr",
                &["cidr"],
            )?,
            no_available_ip_addresses: r.counter(
                "awscni_no_available_ip_addresses",
                "The number of pod IP assignments that fail due to no available IP addresses",
            )?,
            assigned_ip_per_eni: r.gauge_vec(
                "awscni_assigned_ip_per_eni",
                "The number of IP addresses assigned per ENI",
                &["eni"],
            )?,
            startup_duration_seconds: r.histogram_vec(
                "awscni_ipamd_startup_duration_seconds",
                "Time taken for ipamd to start up",
                &["success", "with_api_server", "failure_reason"],
            )?,
            node_initialization_duration_seconds: r.histogram_vec(
                "awscni_ipamd_node_initialization_duration_seconds",
                "Time taken to initialise the node",
                &["success"],
            )?,
            connmark_backend: r.gauge_vec(
                "awscni_connmark_backend",
                "The connmark backend in use",
                &["backend"],
            )?,
            connmark_reconcile_total: r.counter_vec(
                "awscni_connmark_reconcile_total",
                "Connmark rule reconciliations",
                &["result"],
            )?,
            build_info: r.gauge_vec(
                "awscni_build_info",
                "VPC CNI build information",
                &["version", "revision", "goversion"],
            )?,
            add_latency_seconds: r.histogram(
                "awscni_ipamd_add_network_seconds",
                "AddNetwork handling time inside ipamd",
                request_buckets(),
            )?,
            del_latency_seconds: r.histogram(
                "awscni_ipamd_del_network_seconds",
                "DelNetwork handling time inside ipamd",
                request_buckets(),
            )?,
            add_failures: r.counter_vec(
                "awscni_ipamd_add_network_failures_total",
                "AddNetwork requests that got no address, by reason",
                &["reason"],
            )?,
            ec2_calls: r.counter_vec(
                "awscni_ec2_calls_total",
                "EC2 API calls by API and outcome (ok, throttled, error)",
                &["api", "outcome"],
            )?,
            pool_ips: r.gauge_vec(
                "awscni_pool_ips",
                "Addresses per ENI by state (total, assigned, cooldown, available)",
                &["eni", "state"],
            )?,
            checkpoint_write_seconds: r.histogram(
                "awscni_checkpoint_write_seconds",
                "Time to persist the checkpoint",
                request_buckets(),
            )?,
            veth_reaper: r.counter_vec(
                "awscni_veth_reaper_total",
                "Host veths handed over by DEL, by outcome (deleted, gone, renamed, failed, abandoned, refused)",
                &["outcome"],
            )?,
            veth_reaper_pending: r.gauge(
                "awscni_veth_reaper_pending",
                "Host veth deletions queued or in flight",
            )?,
            pool_keep: r.gauge(
                "awscni_pool_keep_addresses",
                "Addresses the pool keeps by its release hysteresis (peak need over AWS_CNI_POOL_RELEASE_DELAY)",
            )?,
            add_waiting: r.gauge(
                "awscni_add_waiting",
                "ADD requests waiting for an address on its way",
            )?,
            snat_backend: r.gauge_vec(
                "awscni_snat_backend",
                "The SNAT/connmark backend chosen at startup",
                &["backend"],
            )?,
            pod_routing_repairs: r.counter(
                "awscni_pod_routing_repairs_total",
                "Pods' host rules and routes put back or removed by drift repair",
            )?,
            eniconfig_in_use: r.gauge_vec(
                "awscni_eniconfig_in_use",
                "Custom networking: the node's ENIConfig and the subnet of its next ENI (1 while usable)",
                &["eniconfig", "subnet"],
            )?,
            eniconfig_invalid: r.gauge_vec(
                "awscni_eniconfig_invalid",
                "Custom networking: 1 while the node's ENIConfig cannot place a new ENI, by cause",
                &["eniconfig", "cause"],
            )?,
            address_mode: r.gauge_vec(
                "awscni_ipv4_address_mode",
                "How the node gets IPv4 addresses now: 1 for the mode in force (secondary-ip, prefix, \
                 prefix-fallback-secondary-ip: prefix delegation fell back to secondary IPs, no free /28)",
                &["mode"],
            )?,
            config_reloads: r.counter_vec(
                "awscni_config_reload_total",
                "Live reloads of the pool knobs (SIGHUP or the pool config file), by outcome (applied, refused)",
                &["outcome"],
            )?,
            vpc_refresh: r.counter_vec(
                "awscni_vpc_refresh_total",
                "VPC refresh checks by item (vpc_cidrs: SNAT/connmark exclusions, security_groups: the primary \
                 ENI's) and outcome (unchanged: nothing rewritten, applied, failed)",
                &["item", "outcome"],
            )?,
            security_group_updates: r.counter(
                "awscni_security_group_updates_total",
                "ENIs given the primary ENI's new security groups (ModifyNetworkInterfaceAttribute)",
            )?,
            ec2_schedule: r.counter_vec(
                "awscni_ec2_schedule_total",
                "EC2 calls' reservations in the cluster's EC2 schedule (the Lease aws-cni-ec2-schedule), by outcome \
                 (reserved: sent at once, waited: waited for its slot, skipped: sent under the node's own pacing \
                 while the schedule is set aside, forbidden, unreachable, contended, error)",
                &["outcome"],
            )?,
            ec2_schedule_in_use: r.gauge(
                "awscni_ec2_schedule_in_use",
                "1 while EC2 calls follow the cluster's EC2 schedule, 0 when it is off or set aside after a failure",
            )?,
            declared: std::mem::take(&mut r.declared),
            force_removed_seen: Mutex::new(0),
            registry: r.r,
        };
        m.build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("AWS_CNI_REVISION").unwrap_or("unknown"),
                "rust",
            ])
            .set(1);
        Ok(m)
    }

    /// The reaper's series ([`crate::reaper`]).
    pub fn reaper_metrics(&self) -> crate::reaper::ReaperMetrics {
        crate::reaper::ReaperMetrics {
            outcomes: self.veth_reaper.clone(),
            pending: self.veth_reaper_pending.clone(),
        }
    }

    /// Sets the pool gauges from a snapshot of the pool ([`crate::engine::Node::snapshot`]).
    pub fn refresh(&self, snap: &PoolSnapshot) {
        self.eni_max.set(i64::from(snap.max_enis));
        self.ip_max
            .set(i64::from(snap.max_enis) * i64::from(snap.ips_per_eni));
        let stats = snap.stats;
        self.eni_allocated.set(stats.enis as i64);
        self.total_ip_addresses.set(stats.total as i64);
        self.assigned_ip_addresses.set(stats.assigned as i64);
        self.assigned_ip_per_eni.reset();
        self.assigned_ip_per_cidr.reset();
        self.pool_ips.reset();
        for eni in &snap.enis {
            let total = eni.total() as i64;
            let used = eni.assigned as i64;
            self.assigned_ip_per_eni
                .with_label_values(&[&eni.id])
                .set(used);
            for (ip, held) in &eni.addresses {
                let cidr = ipnetwork::IpNetwork::from(*ip).to_string();
                self.assigned_ip_per_cidr
                    .with_label_values(&[&cidr])
                    .set(i64::from(*held));
            }
            self.pool_ips
                .with_label_values(&[&eni.id, "total"])
                .set(total);
            self.pool_ips
                .with_label_values(&[&eni.id, "assigned"])
                .set(used);
        }
        let mut prefixes = 0i64;
        for eni in &snap.enis {
            let total = eni.total() as i64;
            let used = eni.assigned as i64;
            let cooldown = eni.cooldown as i64;
            self.pool_ips
                .with_label_values(&[&eni.id, "cooldown"])
                .set(cooldown);
            self.pool_ips
                .with_label_values(&[&eni.id, "available"])
                .set((total - used - cooldown).max(0));
            prefixes += eni.prefixes as i64;
        }
        self.total_ipv4_prefixes.set(prefixes);
        self.pool_keep.set(i64::from(snap.keep));
        self.add_waiting
            .set(i64::try_from(snap.adds_waiting).unwrap_or(i64::MAX));
        // Connmark rules exist only when ipamd does SNAT itself or NodePort support is on; the anchor's label is
        // `iptables` or `nftables`, ours (`awscni_snat_backend`) names the iptables flavour too.
        if let Some(sel) = &snap.snat {
            self.connmark_backend
                .with_label_values(&[&sel.family])
                .set(i64::from(snap.connmark));
            self.snat_backend.with_label_values(&[&sel.backend]).set(1);
        }
        self.eniconfig_in_use.reset();
        self.eniconfig_invalid.reset();
        if let Some(cn) = &snap.eni_config {
            let name = cn.name.as_deref().unwrap_or("");
            match &cn.problem {
                Some(_) => self
                    .eniconfig_invalid
                    .with_label_values(&[name, &cn.cause])
                    .set(1),
                None => {
                    if let Some(subnet) = &cn.subnet {
                        self.eniconfig_in_use
                            .with_label_values(&[name, subnet])
                            .set(1);
                    }
                }
            }
        }
        let repairs = snap.routing_repairs;
        let seen = self.pod_routing_repairs.get();
        if repairs > seen {
            self.pod_routing_repairs.inc_by(repairs - seen);
        }
        for mode in [
            crate::engine::pool_task::AddressMode::SecondaryIp,
            crate::engine::pool_task::AddressMode::Prefix,
            crate::engine::pool_task::AddressMode::PrefixFallback,
        ] {
            let m = mode.as_str();
            self.address_mode
                .with_label_values(&[m])
                .set(i64::from(snap.address_mode == m));
        }
        for (outcome, total) in [
            ("applied", snap.reloads_applied),
            ("refused", snap.reloads_refused),
        ] {
            let c = self.config_reloads.with_label_values(&[outcome]);
            let seen = c.get();
            if total > seen {
                c.inc_by(total - seen);
            }
        }
        // Counters the engine keeps itself: bring ours up to its totals.
        let forced = snap.force_removed;
        let mut seen = lock(&self.force_removed_seen);
        if forced > *seen {
            self.force_removed_ips.inc_by(forced - *seen);
            *seen = forced;
        }
    }

    /// Brings the VPC refresh counters up to the engine's totals ([`crate::engine::Node::refresh_counts`]).
    pub fn refresh_vpc(&self, c: &crate::engine::refresh::RefreshCounts) {
        fn up_to(counter: &prometheus::IntCounter, total: u64) {
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        }
        for (item, o) in [("vpc_cidrs", c.cidrs), ("security_groups", c.groups)] {
            for (outcome, total) in [
                ("unchanged", o.unchanged),
                ("applied", o.applied),
                ("failed", o.failed),
            ] {
                up_to(&self.vpc_refresh.with_label_values(&[item, outcome]), total);
            }
        }
        up_to(&self.security_group_updates, c.enis_updated);
    }

    /// Brings the cluster EC2 schedule's series up to the pacer's view ([`crate::ratelimit::Pacer::schedule_status`]).
    pub fn refresh_schedule(&self, st: &crate::ratelimit::ScheduleStatus) {
        for (outcome, total) in &st.outcomes {
            let c = self.ec2_schedule.with_label_values(&[outcome]);
            let seen = c.get();
            if *total > seen {
                c.inc_by(total - seen);
            }
        }
        self.ec2_schedule_in_use
            .set(i64::from(st.enabled && st.problem.is_none()));
    }

    /// The text exposition of every series. Families without samples yet (label vectors nobody has used) still
    /// get their `# HELP` and `# TYPE` lines, so the full schema is visible from the first scrape.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        let families = self.registry.gather();
        if let Err(e) = encoder.encode(&families, &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        let mut text = String::from_utf8(buf).unwrap_or_default();
        let present: std::collections::HashSet<&str> = families.iter().map(|f| f.name()).collect();
        for (name, help, kind) in &self.declared {
            if !present.contains(name.as_str()) {
                text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            }
        }
        text
    }
}

/// Registers an `Arc`'d collector.
struct SharedCollector<C: Collector>(Arc<C>);

impl<C: Collector> Collector for SharedCollector<C> {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_names_and_types_are_kept() {
        let m = Metrics::new().expect("metrics");
        m.add_ip_req_count.inc();
        m.del_ip_req_count.with_label_values(&["PodDeleted"]).inc();
        m.aws_api_latency_ms
            .observe(&["AssignPrivateIpAddresses", "false", "200"], 12.0);
        let text = m.render();
        for (name, kind) in [
            ("awscni_add_ip_req_count", "counter"),
            ("awscni_del_ip_req_count", "counter"),
            ("awscni_aws_api_latency_ms", "summary"),
            ("awscni_build_info", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}")),
                "{name} {kind}:\n{text}"
            );
        }
        assert!(
            text.contains("awscni_add_ip_req_count 1"),
            "counters keep their exact name (no _total)"
        );
        assert!(text.contains("awscni_aws_api_latency_ms_count{api=\"AssignPrivateIpAddresses\""));
    }

    #[test]
    #[allow(deprecated)] // the plain model's getters for Metric/Summary have no non-deprecated form
    fn summary_quantiles_follow_the_window() {
        let s = LatencySummary::new("x", "h", &["api"]).expect("summary");
        for v in 1..=100 {
            s.observe(&["a"], f64::from(v));
        }
        let fam = s.collect();
        let sum = fam[0].get_metric()[0].get_summary();
        assert_eq!(sum.sample_count(), 100);
        assert!((sum.sample_sum() - 5050.0).abs() < 1e-9);
        let q: Vec<f64> = sum.get_quantile().iter().map(|q| q.value()).collect();
        assert!((q[0] - 50.0).abs() <= 1.0, "{q:?}");
        assert!((q[2] - 99.0).abs() <= 1.0, "{q:?}");
        // Older observations leave the window; sum and count stay cumulative.
        for _ in 0..SUMMARY_WINDOW {
            s.observe(&["a"], 1000.0);
        }
        let fam = s.collect();
        let sum = fam[0].get_metric()[0].get_summary();
        assert_eq!(sum.get_quantile()[0].value(), 1000.0);
        assert_eq!(sum.sample_count(), 100 + SUMMARY_WINDOW as u64);
    }
}
