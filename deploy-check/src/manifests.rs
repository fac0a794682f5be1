//! The invariants of the aws-node DaemonSet, as a list of problems (empty = all hold).
//!
//! They encode the deployment design: host networking; a privileged init container only for what needs it
//! (sysctls); the daemon with NET_ADMIN and NET_RAW and nothing else; probes through `ipamd health` (liveness
//! without `--ready`, readiness with it); the anchor's host paths mounted where the anchor mounts them; the
//! installer's directories matching its mounts; requests and limits everywhere; and a variable that appears in
//! several containers having one value (the pod MTU is read by both ipamd and the conflist writer). The network
//! policy agent's container is the anchor's, checked against the anchor's image, flags, ports, mounts and
//! privileges ([`agent_problems`]), and exempt from our resource rule (the anchor gives it a CPU request only).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Name of the daemon's container.
pub const MAIN: &str = "aws-node";
/// Variables read by both the daemon (`aws-node`) and the conflist writer (`cni-conf`).
pub const SHARED_VARIABLES: [&str; 2] = ["AWS_VPC_K8S_CNI_VETHPREFIX", "AWS_VPC_ENI_MTU"];
/// Name of the init container (`ipamd install --phase init`).
pub const INIT: &str = "aws-vpc-cni-init";
/// Name of the conflist writer (`ipamd install --phase conflist`).
pub const CONF: &str = "cni-conf";
/// Name of the anchor's network policy agent container.
pub const AGENT: &str = "aws-eks-nodeagent";
/// The agent's image in the anchor's manifest.
pub const AGENT_IMAGE: &str =
    "602401143452.dkr.ecr.us-west-2.amazonaws.com/amazon/aws-network-policy-agent:v1.4.2";
/// The agent's flags in the anchor's manifest, except `--enable-network-policy` (false there and in our base,
/// true in deploy/overlays/network-policy).
pub const AGENT_FLAGS: [&str; 9] = [
    "--enable-ipv6=false",
    "--enable-cloudwatch-logs=false",
    "--enable-policy-event-logs=false",
    "--log-file=/var/log/aws-routed-eni/network-policy-agent.log",
    "--metrics-bind-addr=:8162",
    "--health-probe-bind-addr=:8163",
    "--conntrack-cache-cleanup-period=300",
    "--conntrack-cache-table-size=524288",
    "--log-level=debug",
];
/// The agent's host paths: (host path, mount path).
pub const AGENT_MOUNTS: [(&str, &str); 4] = [
    ("/opt/cni/bin", "/host/opt/cni/bin"),
    ("/sys/fs/bpf", "/sys/fs/bpf"),
    ("/var/log/aws-routed-eni", "/var/log/aws-routed-eni"),
    ("/var/run/aws-node", "/var/run/aws-node"),
];

/// The anchor's host paths for our containers (the policy agent's are [`AGENT_MOUNTS`]):
/// (host path, hostPath type, container, mount path).
pub const HOST_PATHS: [(&str, Option<&str>, &str, &str); 5] = [
    ("/opt/cni/bin", None, INIT, "/host/opt/cni/bin"),
    ("/etc/cni/net.d", None, CONF, "/host/etc/cni/net.d"),
    (
        "/var/log/aws-routed-eni",
        Some("DirectoryOrCreate"),
        MAIN,
        "/host/var/log/aws-routed-eni",
    ),
    (
        "/var/run/aws-node",
        Some("DirectoryOrCreate"),
        MAIN,
        "/var/run/aws-node",
    ),
    (
        "/run/xtables.lock",
        Some("FileOrCreate"),
        MAIN,
        "/run/xtables.lock",
    ),
];

fn container<'a>(spec: &'a PodSpec, name: &str, init: bool) -> Option<&'a Container> {
    let list = if init {
        spec.init_containers.as_deref().unwrap_or_default()
    } else {
        &spec.containers[..]
    };
    list.iter().find(|c| c.name == name)
}

fn env(c: &Container) -> BTreeMap<String, String> {
    c.env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
        .collect()
}

fn exec(p: Option<&Probe>) -> Vec<String> {
    p.and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.clone())
        .unwrap_or_default()
}

fn caps(c: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref());
    let set = |v: Option<&Vec<String>>| v.cloned().unwrap_or_default().into_iter().collect();
    (
        set(caps.and_then(|c| c.add.as_ref())),
        set(caps.and_then(|c| c.drop.as_ref())),
    )
}

fn privileged(c: &Container) -> bool {
    c.security_context
        .as_ref()
        .and_then(|s| s.privileged)
        .unwrap_or(false)
}

fn mount_of<'a>(spec: &'a PodSpec, host_path: &str) -> Option<&'a str> {
    spec.volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == host_path))
        .map(|v| v.name.as_str())
}

fn need(p: &mut Vec<String>, ok: bool, msg: &str) {
    if !ok {
        p.push(msg.to_string());
    }
}

/// Every broken invariant of the aws-node DaemonSet, as sentences.
pub fn daemonset_problems(ds: &DaemonSet) -> Vec<String> {
    let mut p = Vec::new();
    need(
        &mut p,
        ds.metadata.name.as_deref() == Some("aws-node")
            && ds.metadata.namespace.as_deref() == Some("kube-system"),
        "the DaemonSet must be kube-system/aws-node (replaces the anchor in place)",
    );
    let Some(spec) = ds.spec.as_ref() else {
        return vec!["no spec".into()];
    };
    let strategy = spec.update_strategy.as_ref();
    need(
        &mut p,
        strategy.and_then(|s| s.type_.as_deref()) == Some("RollingUpdate")
            && strategy
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.max_unavailable.as_ref())
                == Some(&IntOrString::String("10%".into())),
        "updateStrategy must be RollingUpdate with maxUnavailable 10%",
    );
    let Some(pod) = spec.template.spec.as_ref() else {
        p.push("no pod spec".into());
        return p;
    };
    need(
        &mut p,
        pod.host_network == Some(true),
        "hostNetwork must be true",
    );
    need(
        &mut p,
        pod.priority_class_name.as_deref() == Some("system-node-critical"),
        "priorityClassName must be system-node-critical",
    );
    need(
        &mut p,
        pod.service_account_name.as_deref() == Some("aws-node"),
        "serviceAccountName must be aws-node",
    );
    need(
        &mut p,
        pod.tolerations
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|t| {
                t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()
            }),
        "must tolerate every taint (operator Exists, no key, no effect)",
    );
    let linux_only = pod
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_some_and(|r| {
            !r.node_selector_terms.is_empty()
                && r.node_selector_terms.iter().all(|t| {
                    t.match_expressions
                        .as_deref()
                        .unwrap_or_default()
                        .iter()
                        .any(|e| {
                            e.key == "kubernetes.io/os"
                                && e.operator == "In"
                                && e.values.as_deref() == Some(&["linux".to_string()][..])
                        })
                })
        });
    need(
        &mut p,
        linux_only,
        "required node affinity must select kubernetes.io/os In [linux] in every term",
    );

    let (Some(main), Some(init), Some(conf)) = (
        container(pod, MAIN, false),
        container(pod, INIT, true),
        container(pod, CONF, false),
    ) else {
        p.push(format!(
            "containers {MAIN} and {CONF} and init container {INIT} must all exist"
        ));
        return p;
    };
    let names: BTreeSet<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    need(
        &mut p,
        pod.containers.len() == 3 && names == BTreeSet::from([MAIN, CONF, AGENT]),
        &format!("exactly three containers ({MAIN}, {CONF}, {AGENT}), found {names:?}"),
    );
    p.extend(agent_problems(pod));
    let mode = env(main).get("NETWORK_POLICY_ENFORCING_MODE").cloned();
    need(
        &mut p,
        mode.as_deref()
            .is_none_or(|m| m == "standard" || m == "strict"),
        &format!("NETWORK_POLICY_ENFORCING_MODE must be standard or strict, is {mode:?}"),
    );

    // Privileges.
    need(
        &mut p,
        !privileged(main),
        "the main container must not be privileged",
    );
    need(
        &mut p,
        !privileged(conf),
        "the conflist container must not be privileged",
    );
    let (add, drop) = caps(main);
    need(
        &mut p,
        add == BTreeSet::from(["NET_ADMIN".to_string(), "NET_RAW".to_string()]),
        &format!("the main container must add exactly NET_ADMIN and NET_RAW, adds {add:?}"),
    );
    need(
        &mut p,
        drop.contains("ALL"),
        "the main container must drop ALL other capabilities",
    );
    need(
        &mut p,
        caps(conf).0.is_empty(),
        "the conflist container needs no capability",
    );
    for c in [main, conf] {
        need(
            &mut p,
            c.security_context
                .as_ref()
                .and_then(|s| s.allow_privilege_escalation)
                == Some(false),
            &format!("{}: allowPrivilegeEscalation must be false", c.name),
        );
    }

    // Commands.
    let args = |c: &Container| c.args.clone().unwrap_or_default();
    need(
        &mut p,
        args(main).first().map(String::as_str) == Some("run"),
        "the main container runs `ipamd run`",
    );
    need(
        &mut p,
        args(init).starts_with(&["install".into(), "--phase".into(), "init".into()]),
        "the init container runs `ipamd install --phase init`",
    );
    need(
        &mut p,
        args(conf).starts_with(&["install".into(), "--phase".into(), "conflist".into()])
            && args(conf).contains(&"--stay".to_string()),
        "the conflist container runs `ipamd install --phase conflist --stay`",
    );

    // Probes.
    let live = exec(main.liveness_probe.as_ref());
    let ready = exec(main.readiness_probe.as_ref());
    need(
        &mut p,
        live.first().is_some_and(|b| b.ends_with("/ipamd"))
            && live.get(1).map(String::as_str) == Some("health")
            && !live.contains(&"--ready".to_string()),
        &format!("liveness must exec `ipamd health` without --ready, is {live:?}"),
    );
    need(
        &mut p,
        ready.first().is_some_and(|b| b.ends_with("/ipamd"))
            && ready.get(1).map(String::as_str) == Some("health")
            && ready.contains(&"--ready".to_string()),
        &format!("readiness must exec `ipamd health --ready`, is {ready:?}"),
    );
    for (name, probe) in [
        ("liveness", main.liveness_probe.as_ref()),
        ("readiness", main.readiness_probe.as_ref()),
    ] {
        need(
            &mut p,
            probe
                .and_then(|p| p.timeout_seconds)
                .is_some_and(|t| t >= 5),
            &format!("{name} probe timeoutSeconds must be at least the probe's own 5 s deadline"),
        );
    }

    // Ports.
    need(
        &mut p,
        main.ports.as_deref().unwrap_or_default().iter().any(|p| {
            p.container_port == 61678
                && p.name.as_deref() == Some("metrics")
                && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
        }),
        "the main container must expose 61678/TCP named metrics",
    );

    // Resources (the agent keeps the anchor's).
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.as_deref().unwrap_or_default())
        .filter(|c| c.name != AGENT)
    {
        let r = c.resources.as_ref();
        for (kind, map) in [
            ("requests", r.and_then(|r| r.requests.as_ref())),
            ("limits", r.and_then(|r| r.limits.as_ref())),
        ] {
            for res in ["cpu", "memory"] {
                need(
                    &mut p,
                    map.is_some_and(|m| m.contains_key(res)),
                    &format!("{}: {kind}.{res} must be set", c.name),
                );
            }
        }
    }

    // Host paths, mounted where the anchor mounts them.
    for (host, ty, cname, mount_path) in HOST_PATHS {
        let Some(vol) = mount_of(pod, host) else {
            p.push(format!("no hostPath volume for {host}"));
            continue;
        };
        let vty = pod
            .volumes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|v| v.name == vol)
            .and_then(|v| v.host_path.as_ref())
            .and_then(|h| h.type_.clone());
        if let Some(ty) = ty {
            if vty.as_deref() != Some(ty) {
                p.push(format!("hostPath {host} must have type {ty}, has {vty:?}"));
            }
        }
        let c = container(pod, cname, false).or_else(|| container(pod, cname, true));
        let mounted = c.is_some_and(|c| {
            c.volume_mounts
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|m| m.name == vol && m.mount_path == mount_path && m.read_only != Some(true))
        });
        if !mounted {
            p.push(format!(
                "{cname} must mount {host} (volume {vol}) read-write at {mount_path}"
            ));
        }
    }
    // ipamd's socket directory is shared by the daemon and the conflist writer that polls it.
    let run = mount_of(pod, "/var/run/aws-node");
    need(
        &mut p,
        conf.volume_mounts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|m| Some(m.name.as_str()) == run && m.mount_path == "/var/run/aws-node"),
        "the conflist container must mount /var/run/aws-node to reach ipamd's socket",
    );

    // The installer writes where its containers mount.
    let init_env = env(init);
    let conf_env = env(conf);
    need(
        &mut p,
        init_env.get("HOST_CNI_BIN_PATH").map(String::as_str) == Some("/host/opt/cni/bin"),
        "the init container's HOST_CNI_BIN_PATH must be its mount, /host/opt/cni/bin",
    );
    need(
        &mut p,
        conf_env.get("HOST_CNI_CONFDIR_PATH").map(String::as_str) == Some("/host/etc/cni/net.d"),
        "the conflist container's HOST_CNI_CONFDIR_PATH must be its mount, /host/etc/cni/net.d",
    );

    // A variable both the daemon and the conflist writer read is set in both (one value: below): left out of one,
    // the two would disagree (a custom veth prefix only in the conflist makes ipamd's recovery think every pod
    // gone, and its SNAT/connmark rules miss the pods' veths).
    let main_env = env(main);
    for var in SHARED_VARIABLES {
        need(
            &mut p,
            main_env.contains_key(var) && conf_env.contains_key(var),
            &format!("{var} must be set in both the {MAIN} and the {CONF} containers"),
        );
    }

    // One value per variable across containers.
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.as_deref().unwrap_or_default())
    {
        for (k, v) in env(c) {
            match seen.get(&k) {
                Some((other, ov)) if *ov != v => {
                    p.push(format!("{k} is {ov:?} in {other} but {v:?} in {}", c.name))
                }
                Some(_) => {}
                None => {
                    seen.insert(k, (c.name.clone(), v));
                }
            }
        }
    }
    p
}

/// Every way the policy agent's container differs from the anchor's (empty: none).
pub fn agent_problems(pod: &PodSpec) -> Vec<String> {
    let mut p = Vec::new();
    let Some(agent) = container(pod, AGENT, false) else {
        return vec![format!("no {AGENT} container")];
    };
    need(
        &mut p,
        agent.image.as_deref() == Some(AGENT_IMAGE),
        &format!("{AGENT} must run the anchor's image {AGENT_IMAGE}"),
    );
    let args = agent.args.clone().unwrap_or_default();
    let flags: BTreeSet<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--enable-network-policy="))
        .collect();
    need(
        &mut p,
        flags == BTreeSet::from(AGENT_FLAGS) && agent_enforces_in(agent).is_some(),
        &format!(
            "{AGENT} must have the anchor's flags and one --enable-network-policy, has {args:?}"
        ),
    );
    need(
        &mut p,
        privileged(agent) && caps(agent).0.contains("NET_ADMIN"),
        &format!("{AGENT} must be privileged with NET_ADMIN (it loads eBPF programs)"),
    );
    need(
        &mut p,
        agent
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|p| p.container_port == 8162 && p.name.as_deref() == Some("agentmetrics")),
        &format!("{AGENT} must expose 8162 named agentmetrics"),
    );
    for (host, mount_path) in AGENT_MOUNTS {
        let vol = mount_of(pod, host);
        let mounted = vol.is_some_and(|vol| {
            agent
                .volume_mounts
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|m| m.name == vol && m.mount_path == mount_path)
        });
        need(
            &mut p,
            mounted,
            &format!("{AGENT} must mount {host} at {mount_path}"),
        );
    }
    p
}

fn agent_enforces_in(agent: &Container) -> Option<bool> {
    let values: Vec<&str> = agent
        .args
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a.strip_prefix("--enable-network-policy="))
        .collect();
    match values.as_slice() {
        ["true"] => Some(true),
        ["false"] => Some(false),
        _ => None,
    }
}

/// Whether the policy agent enforces policies (`--enable-network-policy=true`); `None` without an agent or with an
/// unclear flag.
pub fn agent_enforces(ds: &DaemonSet) -> Option<bool> {
    let pod = ds.spec.as_ref()?.template.spec.as_ref()?;
    agent_enforces_in(container(pod, AGENT, false)?)
}

/// The value of `var` in container `name` (regular or init).
pub fn env_value(ds: &DaemonSet, name: &str, var: &str) -> Option<String> {
    let pod = ds.spec.as_ref()?.template.spec.as_ref()?;
    let c = container(pod, name, false).or_else(|| container(pod, name, true))?;
    env(c).get(var).cloned()
}
