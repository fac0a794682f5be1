//! deploy/: every manifest and every rendered overlay parsed strictly into the Kubernetes API types, the
//! DaemonSet's invariants, RBAC, the CRD, and the IAM policy against the EC2 trait. Each check is also shown to
//! fail on a broken variant, so a passing run means something.

use std::collections::{BTreeMap, BTreeSet};

use deploy_check::iam::{needed_actions, policy_problems, Policy};
use deploy_check::manifests::{
    agent_enforces, daemonset_problems, env_value, AGENT, CONF, INIT, MAIN,
};
use deploy_check::repo::{kustomize, read, root};
use deploy_check::strict::{parse_stream, strict, yaml_documents, Kustomization, Object};
use deploy_check::CheckError;
use k8s_openapi::api::apps::v1::DaemonSet;
use serde_json::Value;

const BASE_FILES: [&str; 5] = [
    "deploy/base/crd-eniconfig.yaml",
    "deploy/base/serviceaccount.yaml",
    "deploy/base/rbac.yaml",
    "deploy/base/configmap.yaml",
    "deploy/base/daemonset.yaml",
];
const OVERLAYS: [&str; 6] = [
    "prefix-delegation",
    "custom-networking",
    "external-snat",
    "migrate",
    "network-policy",
    "annotate-pod-ip",
];

fn objects_of(rel: &str) -> Vec<Object> {
    parse_stream(&read(rel).expect("read"), rel).unwrap_or_else(|e| panic!("{e}"))
}

fn daemonset(objs: &[Object]) -> DaemonSet {
    let found: Vec<&DaemonSet> = objs
        .iter()
        .filter_map(|o| match o {
            Object::DaemonSet(d) => Some(d.as_ref()),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "exactly one DaemonSet");
    found[0].clone()
}

fn ids(objs: &[Object]) -> BTreeSet<String> {
    objs.iter().map(Object::id).collect()
}

fn base_daemonset() -> DaemonSet {
    daemonset(&objects_of("deploy/base/daemonset.yaml"))
}

/// The main container's env as (name → value) from the raw rendering, failing on a name given twice.
fn main_env(rendered: &str) -> BTreeMap<String, String> {
    let docs = yaml_documents(rendered, "rendered").expect("yaml");
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("DaemonSet");
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    let main = containers
        .iter()
        .find(|c| c["name"] == MAIN)
        .expect("main container");
    let mut env = BTreeMap::new();
    for e in main["env"].as_array().expect("env") {
        let name = e["name"].as_str().expect("name").to_string();
        let value = e["value"].as_str().unwrap_or("<valueFrom>").to_string();
        assert!(env.insert(name.clone(), value).is_none(), "{name} twice");
    }
    env
}

#[test]
fn every_manifest_file_parses_strictly() {
    let mut all = Vec::new();
    for f in BASE_FILES {
        all.extend(objects_of(f));
    }
    assert_eq!(
        ids(&all),
        BTreeSet::from(
            [
                "CustomResourceDefinition/eniconfigs.crd.k8s.amazonaws.com",
                "ServiceAccount/aws-node",
                "ClusterRole/aws-node",
                "ClusterRoleBinding/aws-node",
                "Role/aws-node-ec2-schedule",
                "RoleBinding/aws-node-ec2-schedule",
                "ConfigMap/amazon-vpc-cni",
                "DaemonSet/aws-node",
            ]
            .map(String::from)
        )
    );
    let examples = objects_of("deploy/examples/eniconfig.yaml");
    assert!(matches!(examples.as_slice(), [Object::EniConfig(_)]));
}

#[test]
fn kustomizations_use_only_fields_every_supported_kustomize_reads() {
    let base: Kustomization = strict(
        &yaml_documents(
            &read("deploy/base/kustomization.yaml").expect("read"),
            "base",
        )
        .expect("yaml")[0],
        "deploy/base/kustomization.yaml",
    )
    .expect("strict");
    let listed: BTreeSet<String> = base
        .resources
        .iter()
        .map(|r| format!("deploy/base/{r}"))
        .collect();
    assert_eq!(
        listed,
        BASE_FILES.iter().map(|s| s.to_string()).collect(),
        "the base lists every manifest file"
    );
    for o in OVERLAYS {
        let path = format!("deploy/overlays/{o}/kustomization.yaml");
        let k: Kustomization = strict(
            &yaml_documents(&read(&path).expect("read"), &path).expect("yaml")[0],
            &path,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // `bases` + `patchesStrategicMerge`: the kustomize v2.0 in Debian's kubectl silently ignores `patches`.
        assert_eq!(k.bases, ["../../base"], "{path}");
        // Only network-policy adds objects (the agent's ClusterRole) and patches the anchor's ConfigMap.
        let (resources, patched): (&[&str], &[(&str, &str)]) = if o == "network-policy" {
            (
                &["rbac.yaml"],
                &[("DaemonSet", "aws-node"), ("ConfigMap", "amazon-vpc-cni")],
            )
        } else if o == "annotate-pod-ip" {
            (&["rbac.yaml"], &[("DaemonSet", "aws-node")])
        } else {
            (&[], &[("DaemonSet", "aws-node")])
        };
        assert_eq!(k.resources, resources, "{path}");
        for patch in &k.patches_strategic_merge {
            let pp = format!("deploy/overlays/{o}/{patch}");
            let docs = yaml_documents(&read(&pp).expect("read"), &pp).expect("yaml");
            assert_eq!(docs.len(), 1, "{pp}");
            let kind = docs[0]["kind"].as_str().unwrap_or_default();
            let name = docs[0]["metadata"]["name"].as_str().unwrap_or_default();
            assert!(patched.contains(&(kind, name)), "{pp}: {kind}/{name}");
            assert_eq!(docs[0]["metadata"]["namespace"], "kube-system", "{pp}");
        }
    }
}

#[test]
fn the_daemonset_holds_its_invariants() {
    let ds = base_daemonset();
    assert_eq!(daemonset_problems(&ds), Vec::<String>::new());
}

#[test]
fn the_base_renders_to_exactly_its_files() {
    let rendered = kustomize("deploy/base").unwrap_or_else(|e| panic!("{e}"));
    let objs =
        parse_stream(&rendered, "kubectl kustomize deploy/base").unwrap_or_else(|e| panic!("{e}"));
    let mut files = Vec::new();
    for f in BASE_FILES {
        files.extend(objects_of(f));
    }
    assert_eq!(ids(&objs), ids(&files));
    assert_eq!(daemonset_problems(&daemonset(&objs)), Vec::<String>::new());
    assert_eq!(
        main_env(&rendered),
        main_env(&read("deploy/base/daemonset.yaml").expect("read"))
    );
}

#[test]
fn each_overlay_renders_strictly_keeps_the_invariants_and_changes_only_its_variables() {
    let base_env = main_env(&read("deploy/base/daemonset.yaml").expect("read"));
    for (overlay, changes) in [
        (
            "prefix-delegation",
            vec![
                ("ENABLE_PREFIX_DELEGATION", "true"),
                ("WARM_PREFIX_TARGET", "1"),
            ],
        ),
        (
            "custom-networking",
            vec![
                ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true"),
                ("ENI_CONFIG_LABEL_DEF", "topology.kubernetes.io/zone"),
            ],
        ),
        (
            "external-snat",
            vec![("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true")],
        ),
        ("migrate", vec![]),
        // The mode stays the base's `standard`; what changes is the agent (see the network-policy test).
        ("network-policy", vec![]),
        ("annotate-pod-ip", vec![("ANNOTATE_POD_IP", "true")]),
    ] {
        let dir = format!("deploy/overlays/{overlay}");
        let rendered = kustomize(&dir).unwrap_or_else(|e| panic!("{e}"));
        let objs = parse_stream(&rendered, &dir).unwrap_or_else(|e| panic!("{e}"));
        let extra = if overlay == "network-policy" || overlay == "annotate-pod-ip" {
            2
        } else {
            0
        };
        // Six base objects and the EC2 schedule's Role and RoleBinding.
        assert_eq!(objs.len(), 8 + extra, "{dir}: every base object");
        let ds = daemonset(&objs);
        let mut problems = daemonset_problems(&ds);
        if overlay == "migrate" {
            // Its one difference: the pods are replaced by hand, node by node.
            let strategy = ds.spec.as_ref().and_then(|s| s.update_strategy.clone());
            assert_eq!(
                strategy.as_ref().and_then(|s| s.type_.as_deref()),
                Some("OnDelete")
            );
            assert!(strategy.is_some_and(|s| s.rolling_update.is_none()));
            problems.retain(|p| !p.contains("updateStrategy"));
        }
        assert_eq!(problems, Vec::<String>::new(), "{dir}");
        let mut want = base_env.clone();
        for (k, v) in &changes {
            want.insert(k.to_string(), v.to_string());
            assert_eq!(env_value(&ds, MAIN, k).as_deref(), Some(*v), "{dir}: {k}");
        }
        assert_eq!(
            main_env(&rendered),
            want,
            "{dir}: only its own variables change"
        );
    }
}

/// The error of a parse that must fail (without printing the whole object if it does not).
fn must_fail(r: Result<Vec<Object>, CheckError>, what: &str) -> CheckError {
    match r {
        Ok(objs) => panic!("{what}: parsed: {:?}", ids(&objs)),
        Err(e) => e,
    }
}

fn mutated(from: &str, to: &str) -> String {
    let text = read("deploy/base/daemonset.yaml").expect("read");
    assert_eq!(
        text.matches(from).count(),
        1,
        "mutation anchor {from:?} must be unique"
    );
    text.replace(from, to)
}

#[test]
fn misspelled_fields_and_wrong_types_fail_the_strict_parse() {
    for (from, to, expect) in [
        (
            "      hostNetwork: true",
            "      hostNetwrok: true",
            "hostNetwrok",
        ),
        (
            "              mountPath: /run/xtables.lock",
            "              mountpath: /run/xtables.lock",
            "mountpath",
        ),
        (
            "          readinessProbe:",
            "          readinesProbe:",
            "readinesProbe",
        ),
        (
            "            initialDelaySeconds: 60",
            "            initialDelaySecond: 60",
            "initialDelaySecond",
        ),
    ] {
        let e = must_fail(parse_stream(&mutated(from, to), "mutated"), expect);
        assert!(
            matches!(&e, CheckError::UnknownFields { paths, .. } if paths.iter().any(|p| p.contains(expect))),
            "{expect}: {e}"
        );
    }
    // A number where the API wants a string (env values), an unknown enum-like kind, a duplicate key.
    let e = must_fail(
        parse_stream(
            &mutated("              value: \"30\"", "              value: 30"),
            "mutated",
        ),
        "int env value",
    );
    assert!(e.to_string().contains("invalid type"), "{e}");
    let e = must_fail(
        parse_stream(&mutated("kind: DaemonSet", "kind: DaemonSett"), "mutated"),
        "kind",
    );
    assert!(e.to_string().contains("DaemonSett"), "{e}");
    let e = must_fail(
        parse_stream(
            &mutated(
                "      hostNetwork: true",
                "      hostNetwork: true\n      hostNetwork: false",
            ),
            "mutated",
        ),
        "duplicate",
    );
    assert!(e.to_string().contains("duplicate"), "{e}");
}

/// Each (from, to, expect): the base DaemonSet with `from` replaced by `to` parses, and the invariant check
/// reports a problem containing `expect`.
fn assert_caught(cases: &[(&str, &str, &str)]) {
    for (from, to, expect) in cases {
        let ds = daemonset(
            &parse_stream(&mutated(from, to), "mutated")
                .unwrap_or_else(|e| panic!("{expect}: {e}")),
        );
        let problems = daemonset_problems(&ds);
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "{expect}: not caught: {problems:?}"
        );
    }
}

#[test]
fn the_invariant_check_catches_broken_daemonsets() {
    let cases: Vec<(&str, &str, &str)> = vec![
        ("      hostNetwork: true", "      hostNetwork: false", "hostNetwork"),
        (
            "            privileged: false\n            allowPrivilegeEscalation: false\n            capabilities:\n              drop: [\"ALL\"]\n              add:",
            "            privileged: true\n            allowPrivilegeEscalation: false\n            capabilities:\n              drop: [\"ALL\"]\n              add:",
            "must not be privileged",
        ),
        (
            "add: [\"NET_ADMIN\", \"NET_RAW\"]",
            "add: [\"NET_ADMIN\", \"NET_RAW\", \"SYS_ADMIN\"]",
            "exactly NET_ADMIN and NET_RAW",
        ),
        (
            "command: [\"/app/ipamd\", \"health\", \"--ready\", \"--timeout\", \"5s\"]",
            "command: [\"/app/ipamd\", \"health\", \"--timeout\", \"5s\"]",
            "readiness",
        ),
        (
            "command: [\"/app/ipamd\", \"health\", \"--timeout\", \"5s\"]",
            "command: [\"/bin/grpc-health-probe\", \"-addr=unix:///var/run/aws-node/ipamd.sock\"]",
            "liveness",
        ),
        (
            "            - name: xtables-lock\n              mountPath: /run/xtables.lock\n",
            "",
            "/run/xtables.lock",
        ),
        (
            "            path: /var/log/aws-routed-eni\n            type: DirectoryOrCreate",
            "            path: /var/log/aws-routed-eni\n            type: Directory",
            "DirectoryOrCreate",
        ),
        (
            "      maxUnavailable: \"10%\"",
            "      maxUnavailable: 1",
            "10%",
        ),
        (
            "      priorityClassName: system-node-critical\n",
            "",
            "system-node-critical",
        ),
        (
            "              containerPort: 61678",
            "              containerPort: 61679",
            "61678",
        ),
        (
            "            - name: HOST_CNI_CONFDIR_PATH\n              value: /host/etc/cni/net.d",
            "            - name: HOST_CNI_CONFDIR_PATH\n              value: /etc/cni/net.d",
            "HOST_CNI_CONFDIR_PATH",
        ),
        (
            "            limits:\n              cpu: 500m\n              memory: 128Mi",
            "            limits:\n              cpu: 500m",
            "limits.memory",
        ),
    ];
    assert_caught(&cases);
    // One variable, two values in two containers (the pod MTU is read by ipamd and by the conflist writer).
    let text = read("deploy/base/daemonset.yaml").expect("read");
    let pos = text
        .rfind("- name: AWS_VPC_ENI_MTU\n              value: \"9001\"")
        .expect("conf MTU");
    let broken = format!(
        "{}{}",
        &text[..pos],
        text[pos..].replacen("value: \"9001\"", "value: \"1500\"", 1)
    );
    let problems = daemonset_problems(&daemonset(
        &parse_stream(&broken, "mutated").expect("parse"),
    ));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("AWS_VPC_ENI_MTU") && p.contains(CONF)),
        "{problems:?}"
    );
    // The veth prefix set for the conflist writer only: ipamd would read another one.
    let pos = text
        .find("            - name: AWS_VPC_K8S_CNI_VETHPREFIX\n              value: eni\n")
        .expect("main's veth prefix");
    let broken = format!(
        "{}{}",
        &text[..pos],
        text[pos..].replacen(
            "            - name: AWS_VPC_K8S_CNI_VETHPREFIX\n              value: eni\n",
            "",
            1
        )
    );
    let problems = daemonset_problems(&daemonset(
        &parse_stream(&broken, "mutated").expect("parse"),
    ));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("AWS_VPC_K8S_CNI_VETHPREFIX") && p.contains(MAIN)),
        "{problems:?}"
    );
}

#[test]
fn rbac_is_read_only_but_for_events_and_bound_to_the_service_account() {
    let objs = objects_of("deploy/base/rbac.yaml");
    let mut grants = BTreeSet::new();
    for o in &objs {
        match o {
            Object::ClusterRole(r) => {
                for rule in r.rules.as_deref().unwrap_or_default() {
                    assert!(rule.non_resource_urls.is_none());
                    for res in rule.resources.as_deref().unwrap_or_default() {
                        for v in &rule.verbs {
                            grants.insert(format!("{res}:{v}"));
                        }
                    }
                }
            }
            Object::ClusterRoleBinding(b) => {
                assert_eq!(b.role_ref.name, "aws-node");
                let s = b.subjects.as_deref().unwrap_or_default();
                assert_eq!(s.len(), 1);
                assert_eq!(
                    (
                        s[0].kind.as_str(),
                        s[0].name.as_str(),
                        s[0].namespace.as_deref()
                    ),
                    ("ServiceAccount", "aws-node", Some("kube-system"))
                );
            }
            // The cluster's EC2 schedule (ipamd::schedule_lease): its one Lease in kube-system.
            Object::Role(r) => {
                assert_eq!(r.metadata.namespace.as_deref(), Some("kube-system"));
                for rule in r.rules.as_deref().unwrap_or_default() {
                    assert_eq!(
                        rule.api_groups.as_deref(),
                        Some(&["coordination.k8s.io".to_string()][..])
                    );
                    let names = rule.resource_names.clone().unwrap_or_default();
                    for res in rule.resources.as_deref().unwrap_or_default() {
                        for v in &rule.verbs {
                            grants.insert(format!("{res}:{v}:{}", names.join(",")));
                        }
                    }
                }
            }
            Object::RoleBinding(b) => {
                assert_eq!(b.role_ref.name, "aws-node-ec2-schedule");
                let s = b.subjects.as_deref().unwrap_or_default();
                assert_eq!(
                    s.iter()
                        .map(|s| (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()))
                        .collect::<Vec<_>>(),
                    [("ServiceAccount", "aws-node", Some("kube-system"))]
                );
            }
            other => panic!("unexpected {}", other.id()),
        }
    }
    // Exactly the verbs ipamd uses (crate ipamd, kube_api.rs): watch caches of its node and the ENIConfigs, and
    // Warning events on its pod; get and update of the EC2 schedule's lease, and create (which cannot name it). No pods in the base: patching them is the annotate-pod-ip overlay's.
    assert_eq!(
        grants,
        BTreeSet::from(
            [
                "nodes:get",
                "nodes:list",
                "nodes:watch",
                "eniconfigs:get",
                "eniconfigs:list",
                "eniconfigs:watch",
                "events:create",
                "leases:get:aws-cni-ec2-schedule",
                "leases:update:aws-cni-ec2-schedule",
                "leases:create:",
            ]
            .map(String::from)
        )
    );
    let ds = base_daemonset();
    let pod = ds.spec.and_then(|s| s.template.spec).expect("pod");
    assert_eq!(pod.service_account_name.as_deref(), Some("aws-node"));
}

#[test]
fn only_the_annotate_pod_ip_overlay_may_patch_pods() {
    let dir = "deploy/overlays/annotate-pod-ip";
    let rendered = kustomize(dir).unwrap_or_else(|e| panic!("{e}"));
    let objs = parse_stream(&rendered, dir).unwrap_or_else(|e| panic!("{e}"));
    let mut grants = BTreeSet::new();
    let mut bound = false;
    for o in &objs {
        match o {
            Object::ClusterRole(r)
                if r.metadata.name.as_deref() == Some("aws-node-annotate-pod-ip") =>
            {
                for rule in r.rules.as_deref().unwrap_or_default() {
                    for res in rule.resources.as_deref().unwrap_or_default() {
                        for v in &rule.verbs {
                            grants.insert(format!("{res}:{v}"));
                        }
                    }
                }
            }
            Object::ClusterRoleBinding(b) if b.role_ref.name == "aws-node-annotate-pod-ip" => {
                let s = b.subjects.as_deref().unwrap_or_default();
                bound = s.len() == 1 && s[0].name == "aws-node";
            }
            _ => {}
        }
    }
    assert!(bound);
    assert_eq!(
        grants,
        BTreeSet::from(["pods:get".to_string(), "pods:patch".to_string()])
    );
    assert_eq!(
        env_value(&daemonset(&objs), MAIN, "ANNOTATE_POD_IP").as_deref(),
        Some("true")
    );
    // Every other overlay leaves pods alone.
    for o in OVERLAYS.iter().filter(|o| **o != "annotate-pod-ip") {
        let d = format!("deploy/overlays/{o}");
        let rendered = kustomize(&d).unwrap_or_else(|e| panic!("{e}"));
        assert!(!rendered.contains("- pods"), "{d} grants something on pods");
    }
}

#[test]
fn the_crd_schema_and_the_eniconfig_type_agree() {
    let objs = objects_of("deploy/base/crd-eniconfig.yaml");
    let Some(Object::Crd(crd)) = objs.first() else {
        panic!("no CRD")
    };
    assert_eq!(crd.spec.group, "crd.k8s.amazonaws.com");
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.kind, "ENIConfig");
    let v = &crd.spec.versions[0];
    assert_eq!(
        (v.name.as_str(), v.served, v.storage),
        ("v1alpha1", true, true)
    );
    let spec = v
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| s.properties.as_ref())
        .and_then(|p| p.get("spec"))
        .expect("spec schema");
    let props: BTreeSet<&str> = spec
        .properties
        .as_ref()
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        props,
        BTreeSet::from(["subnet", "subnets", "securityGroups"])
    );
    assert_eq!(spec.required.as_deref(), Some(&["subnet".to_string()][..]));
    // The example and the strict type: a field the schema lacks is refused.
    let bad = read("deploy/examples/eniconfig.yaml")
        .expect("read")
        .replace("  subnet:", "  subnetId:");
    assert!(parse_stream(&bad, "bad eniconfig").is_err());
}

#[test]
fn the_iam_policy_grants_exactly_the_ec2_calls_of_the_trait() {
    let text = read("deploy/iam-policy.json").expect("read");
    let v: Value = serde_json::from_str(&text).expect("json");
    let policy: Policy = strict(&v, "deploy/iam-policy.json").unwrap_or_else(|e| panic!("{e}"));
    let methods = needed_actions();
    assert!(methods.len() >= 12, "{methods:?}");
    assert_eq!(policy_problems(&policy, &methods), Vec::<String>::new());

    // Broken variants are caught.
    let mut missing = policy.clone();
    missing.statement[1]
        .action
        .retain(|a| a != "ec2:AssignPrivateIpAddresses");
    assert!(policy_problems(&missing, &methods)
        .iter()
        .any(|p| p.contains("AssignPrivateIpAddresses is needed")));
    let mut extra = policy.clone();
    extra.statement[0].action.push("ec2:DescribeTags".into());
    assert!(policy_problems(&extra, &methods)
        .iter()
        .any(|p| p.contains("DescribeTags is granted but")));
    let mut wide = policy.clone();
    wide.statement[2].resource = "*".into();
    assert!(!policy_problems(&wide, &methods).is_empty());
    // A new EC2 call (a new `ec2_api::Api` variant) without its permission in the policy.
    let mut new_call = methods.clone();
    new_call.insert("ec2:UnassignIpv6Addresses".into());
    assert!(policy_problems(&policy, &new_call)
        .iter()
        .any(|p| p.contains("UnassignIpv6Addresses is needed")));
    let typo = text.replace("\"Resource\": \"*\"", "\"Resources\": \"*\"");
    assert!(strict::<Policy>(&serde_json::from_str(&typo).expect("json"), "typo").is_err());
}

#[test]
fn every_variable_in_the_daemonset_is_documented_in_the_readme() {
    let readme = read("README.md").expect("README");
    let ds = base_daemonset();
    let pod = ds.spec.and_then(|s| s.template.spec).expect("pod");
    let mut names = BTreeSet::new();
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.as_deref().unwrap_or_default())
    {
        for e in c.env.as_deref().unwrap_or_default() {
            names.insert(e.name.clone());
        }
    }
    for o in OVERLAYS {
        for (k, _) in main_env(&kustomize(&format!("deploy/overlays/{o}")).expect("render")) {
            names.insert(k);
        }
    }
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !readme.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md does not document {missing:?}"
    );
    assert!(root().join("deploy/iam-policy.json").exists());
    let _ = INIT;
}

#[test]
fn the_base_carries_the_anchors_policy_agent_disabled_and_the_anchors_mode() {
    let ds = base_daemonset();
    assert_eq!(
        agent_enforces(&ds),
        Some(false),
        "the anchor ships it disabled"
    );
    assert_eq!(
        env_value(&ds, MAIN, "NETWORK_POLICY_ENFORCING_MODE").as_deref(),
        Some("standard")
    );
    // The conflist writer and the init container need no mode: only ipamd reads it.
    for c in [CONF, INIT, AGENT] {
        assert_eq!(
            env_value(&ds, c, "NETWORK_POLICY_ENFORCING_MODE"),
            None,
            "{c}"
        );
    }
}

#[test]
fn the_network_policy_overlay_turns_enforcement_on_with_read_only_rbac() {
    let dir = "deploy/overlays/network-policy";
    let rendered = kustomize(dir).unwrap_or_else(|e| panic!("{e}"));
    let objs = parse_stream(&rendered, dir).unwrap_or_else(|e| panic!("{e}"));
    let ds = daemonset(&objs);
    assert_eq!(agent_enforces(&ds), Some(true));
    assert_eq!(
        env_value(&ds, MAIN, "NETWORK_POLICY_ENFORCING_MODE").as_deref(),
        Some("standard")
    );
    let docs = yaml_documents(&rendered, dir).expect("yaml");
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "amazon-vpc-cni")
        .expect("ConfigMap");
    assert_eq!(cm["data"]["enable-network-policy-controller"], "true");
    assert_eq!(cm["data"]["warm-ip-target"], "1", "the other keys stay");

    let mut resources = BTreeSet::new();
    let mut bound = false;
    for o in &objs {
        match o {
            Object::ClusterRole(r)
                if r.metadata.name.as_deref() == Some("aws-node-network-policy") =>
            {
                for rule in r.rules.as_deref().unwrap_or_default() {
                    for v in &rule.verbs {
                        assert!(["get", "list", "watch"].contains(&v.as_str()), "verb {v}");
                    }
                    if rule.non_resource_urls.is_some() {
                        assert!(rule.api_groups.is_none() && rule.resources.is_none());
                    } else {
                        assert_eq!(
                            rule.api_groups.as_deref(),
                            Some(&["networking.k8s.aws".to_string()][..])
                        );
                    }
                    resources.extend(rule.resources.clone().unwrap_or_default());
                }
            }
            Object::ClusterRoleBinding(b) if b.role_ref.name == "aws-node-network-policy" => {
                let s = b.subjects.as_deref().unwrap_or_default();
                bound = s.len() == 1
                    && s[0].kind == "ServiceAccount"
                    && s[0].name == "aws-node"
                    && s[0].namespace.as_deref() == Some("kube-system");
            }
            _ => {}
        }
    }
    assert_eq!(
        resources,
        BTreeSet::from(
            [
                "policyendpoints",
                "clusterpolicyendpoints",
                "policyendpoints/status",
                "clusterpolicyendpoints/status",
            ]
            .map(String::from)
        )
    );
    assert!(bound, "the agent's ClusterRole is bound to aws-node");
}

#[test]
fn the_invariant_check_catches_a_policy_agent_unlike_the_anchors() {
    assert_caught(&[
        (
            "amazon/aws-network-policy-agent:v1.4.2",
            "amazon/aws-network-policy-agent:latest",
            "anchor's image",
        ),
        (
            "            - --metrics-bind-addr=:8162\n",
            "",
            "anchor's flags",
        ),
        (
            "            - --enable-network-policy=false\n",
            "",
            "one --enable-network-policy",
        ),
        (
            "              add: [\"NET_ADMIN\"]\n            privileged: true",
            "              add: [\"NET_ADMIN\"]\n            privileged: false",
            "privileged with NET_ADMIN",
        ),
        (
            "            - name: bpf-pin-path\n              mountPath: /sys/fs/bpf\n",
            "",
            "mount /sys/fs/bpf",
        ),
        (
            "            - containerPort: 8162",
            "            - containerPort: 8163",
            "8162",
        ),
        (
            "              value: standard",
            "              value: none",
            "NETWORK_POLICY_ENFORCING_MODE",
        ),
    ]);
}
