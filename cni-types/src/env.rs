//! The `CNI_*` environment: the command, the attachment it is about, and `CNI_ARGS`.
//!
//! Nothing here reads the process environment. [`CniEnv::from_lookup`] takes a lookup function,
//! so the binary passes `|k| std::env::var(k).ok()` and tests pass a map.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::CniError;

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Attach a container to the network.
    Add,
    /// Detach; must be idempotent and tolerate missing resources.
    Del,
    /// Verify an existing attachment against `prevResult` (0.4.0+).
    Check,
    /// Report supported versions.
    Version,
    /// Remove resources of attachments not in `cni.dev/valid-attachments` (1.1.0+).
    Gc,
    /// Report readiness to serve ADD (1.1.0+).
    Status,
}

// === impl Command ===

impl Command {
    /// Every command, in spec order.
    pub const ALL: [Command; 6] = [
        Command::Add,
        Command::Del,
        Command::Check,
        Command::Version,
        Command::Gc,
        Command::Status,
    ];

    /// The spelling in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }

    /// The oldest config `cniVersion` in which this command exists, if it is newer than 0.3.0.
    pub fn min_spec_version(self) -> Option<&'static str> {
        match self {
            Command::Check => Some("0.4.0"),
            Command::Gc | Command::Status => Some("1.1.0"),
            Command::Add | Command::Del | Command::Version => None,
        }
    }

    /// Whether the command is about one attachment (needs container ID and ifname).
    pub fn is_attachment_command(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Command {
    type Err = CniError;

    /// Exact, upper-case match as the spec spells them; anything else is code 4 naming
    /// `CNI_COMMAND`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Command::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                CniError::invalid_env(format!("unknown CNI_COMMAND: {s:?}"))
                    .with_details("CNI_COMMAND must be one of ADD, DEL, CHECK, VERSION, GC, STATUS")
            })
    }
}

/// Everything the runtime passes in `CNI_*` variables, validated for the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`; always `Some` and valid for ADD/DEL/CHECK.
    pub container_id: Option<String>,
    /// `CNI_NETNS`; `Some` for ADD/CHECK, may be `None` for DEL (netns already gone).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`; always `Some` and valid for ADD/DEL/CHECK.
    pub ifname: Option<String>,
    /// `CNI_ARGS`, parsed.
    pub args: CniArgs,
    /// `CNI_PATH`, split on `:`; empty entries dropped.
    pub path: Vec<PathBuf>,
}

// === impl CniEnv ===

impl CniEnv {
    /// Reads and validates the `CNI_*` variables through `get`. An empty value counts as unset.
    ///
    /// Per command:
    /// - ADD, CHECK: `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` required.
    /// - DEL: `CNI_CONTAINERID` and `CNI_IFNAME` required; `CNI_NETNS` may be empty (the spec
    ///   asks DEL to clean up as much as it can when the namespace is gone).
    /// - VERSION, GC, STATUS: only `CNI_COMMAND`. Other variables are passed through if set but
    ///   never validated, and a malformed `CNI_ARGS` is ignored rather than failing the call.
    ///
    /// For ADD/DEL/CHECK the container ID and interface name are also checked against the spec's
    /// rules (container ID: starts alphanumeric, then alphanumerics, `_`, `.`, `-`; ifname:
    /// 1–15 bytes, not `.`/`..`, no `/`, `:` or whitespace) and `CNI_ARGS` must parse.
    ///
    /// `CNI_PATH` is optional for every command: the spec lists it as required, but this plugin
    /// never execs a delegate, so refusing a call for its absence would only break runtimes that
    /// leave it out.
    ///
    /// Every problem is code 4 and the message names all offending variables at once.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let read = |name: &str| get(name).filter(|v| !v.is_empty());

        let command: Command = read("CNI_COMMAND")
            .ok_or_else(|| CniError::invalid_env("required env variable CNI_COMMAND missing"))?
            .parse()?;

        let container_id = read("CNI_CONTAINERID");
        let netns = read("CNI_NETNS").map(PathBuf::from);
        let ifname = read("CNI_IFNAME");
        let raw_args = read("CNI_ARGS").unwrap_or_default();
        let path = read("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();

        if !command.is_attachment_command() {
            return Ok(CniEnv {
                command,
                container_id,
                netns,
                ifname,
                args: CniArgs::parse(&raw_args).unwrap_or_default(),
                path,
            });
        }

        let mut bad: Vec<(&str, String)> = Vec::new();
        match &container_id {
            None => bad.push(("CNI_CONTAINERID", "missing".into())),
            Some(id) => {
                if let Err(why) = validate_container_id(id) {
                    bad.push(("CNI_CONTAINERID", why));
                }
            }
        }
        if netns.is_none() && command != Command::Del {
            bad.push(("CNI_NETNS", "missing".into()));
        }
        match &ifname {
            None => bad.push(("CNI_IFNAME", "missing".into())),
            Some(name) => {
                if let Err(why) = validate_ifname(name) {
                    bad.push(("CNI_IFNAME", why));
                }
            }
        }
        let args = match CniArgs::parse(&raw_args) {
            Ok(a) => a,
            Err(e) => {
                bad.push(("CNI_ARGS", e.details));
                CniArgs::default()
            }
        };

        if !bad.is_empty() {
            let names: Vec<&str> = bad.iter().map(|(n, _)| *n).collect();
            let details: Vec<String> = bad.iter().map(|(n, why)| format!("{n}: {why}")).collect();
            return Err(CniError::invalid_env(format!(
                "invalid environment variables for {command}: {}",
                names.join(", ")
            ))
            .with_details(details.join("; ")));
        }

        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }
}

/// The spec's container ID rule: non-empty, first char alphanumeric, then alphanumerics, `_`,
/// `.`, `-`. ASCII only, as libcni checks it.
pub fn validate_container_id(id: &str) -> Result<(), String> {
    let mut bytes = id.bytes();
    match bytes.next() {
        None => return Err("empty".into()),
        Some(b) if !b.is_ascii_alphanumeric() => {
            return Err(format!("{id:?} must start with a letter or digit"))
        }
        Some(_) => {}
    }
    if let Some(b) = bytes.find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')))
    {
        return Err(format!("{id:?} contains invalid character {:?}", b as char));
    }
    Ok(())
}

/// The spec's interface name rule (Linux `IFNAMSIZ`): 1–15 bytes, not `.` or `..`, no `/`, `:`
/// or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > 15 {
        return Err(format!("{name:?} is longer than 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
    {
        return Err(format!("{name:?} contains invalid character {c:?}"));
    }
    Ok(())
}

/// Longest `K8S_POD_NAME` accepted: Kubernetes' limit for a pod name (a DNS subdomain).
pub const MAX_POD_NAME_LEN: usize = 253;
/// Longest `K8S_POD_NAMESPACE` accepted: Kubernetes' limit for a namespace (a DNS label).
pub const MAX_POD_NAMESPACE_LEN: usize = 63;

/// `CNI_ARGS`: `K=V;K=V`. The Kubernetes keys runtimes send are pulled out; everything else is
/// kept in `other`, so unknown keys are never an error here (what `IgnoreUnknown` controls in
/// libcni) and the plugin decides what it cares about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `K8S_POD_NAME`.
    pub pod_name: Option<String>,
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID` (the sandbox container).
    pub pod_infra_container_id: Option<String>,
    /// `K8S_POD_UID`.
    pub pod_uid: Option<String>,
    /// `IgnoreUnknown` (`1`/`true`/`0`/`false`, any case); `false` when absent.
    pub ignore_unknown: bool,
    /// Every other key, last occurrence wins.
    pub other: BTreeMap<String, String>,
}

// === impl CniArgs ===

impl CniArgs {
    /// Parses `K=V;K=V`.
    ///
    /// Lenient where runtimes differ: empty segments (`A=1;;B=2`, a trailing `;`) are skipped, a
    /// value may contain `=` (split at the first one), and an empty value for a `K8S_*` key means
    /// "not given". Strict where a value would otherwise be guessed: a segment without `=`, an
    /// empty key, or an `IgnoreUnknown` that is not a boolean is code 4 naming `CNI_ARGS`.
    pub fn parse(s: &str) -> Result<CniArgs, CniError> {
        let mut out = CniArgs::default();
        for pair in s.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(args_error(format!("{pair:?} is not KEY=VALUE")));
            };
            if key.is_empty() {
                return Err(args_error(format!("{pair:?} has an empty key")));
            }
            let non_empty = || (!value.is_empty()).then(|| value.to_string());
            // Kubernetes bounds pod names (a DNS subdomain) and namespaces (a DNS label): a longer value is no
            // pod, and would be stored and logged on every call.
            let bounded = |key: &str, max: usize| {
                if value.len() > max {
                    Err(args_error(format!(
                        "{key} has {} bytes, more than Kubernetes allows ({max})",
                        value.len()
                    )))
                } else {
                    Ok(non_empty())
                }
            };
            match key {
                "K8S_POD_NAME" => out.pod_name = bounded(key, MAX_POD_NAME_LEN)?,
                "K8S_POD_NAMESPACE" => out.pod_namespace = bounded(key, MAX_POD_NAMESPACE_LEN)?,
                "K8S_POD_INFRA_CONTAINER_ID" => out.pod_infra_container_id = non_empty(),
                "K8S_POD_UID" => out.pod_uid = non_empty(),
                "IgnoreUnknown" => {
                    out.ignore_unknown = match value.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => {
                            return Err(args_error(format!(
                                "IgnoreUnknown={value:?} is not a boolean"
                            )))
                        }
                    }
                }
                _ => {
                    out.other.insert(key.to_string(), value.to_string());
                }
            }
        }
        Ok(out)
    }
}

fn args_error(details: String) -> CniError {
    CniError::invalid_env("invalid CNI_ARGS").with_details(details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn pod_names_longer_than_kubernetes_allows_are_refused() {
        let ok = CniArgs::parse(&format!("K8S_POD_NAME={}", "a".repeat(253))).expect("253 bytes");
        assert_eq!(ok.pod_name.map(|n| n.len()), Some(253));
        for args in [
            format!("K8S_POD_NAME={}", "a".repeat(254)),
            format!("K8S_POD_NAMESPACE={}", "a".repeat(64)),
        ] {
            let e = CniArgs::parse(&args).expect_err("too long");
            assert_eq!(e.code, codes::INVALID_ENV);
            assert!(e.details.contains("K8S_POD_"), "{}", e.details);
        }
    }

    const ID: &str = "3f6940ab5ab43bc522569d15b23f8c1bbde1d7678b080398506924fc01d72755";

    #[test]
    fn command_round_trips_and_rejects_unknown() {
        for c in Command::ALL {
            assert_eq!(c.as_str().parse::<Command>(), Ok(c));
            assert_eq!(c.to_string(), c.as_str());
        }
        for bad in ["add", "Add", "GET", "", " ADD"] {
            let err = bad.parse::<Command>().expect_err(bad);
            assert_eq!(err.code, codes::INVALID_ENV);
            assert!(err.msg.contains("CNI_COMMAND"), "{err:?}");
        }
    }

    #[test]
    fn add_with_everything() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", ID),
            ("CNI_NETNS", "/var/run/netns/cni-1234"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx"),
            ("CNI_PATH", "/opt/cni/bin::/usr/libexec/cni"),
        ])
        .expect("valid ADD");
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container_id.as_deref(), Some(ID));
        assert_eq!(e.netns, Some(PathBuf::from("/var/run/netns/cni-1234")));
        assert_eq!(e.ifname.as_deref(), Some("eth0"));
        assert_eq!(e.args.pod_name.as_deref(), Some("nginx"));
        assert_eq!(
            e.path,
            vec![
                PathBuf::from("/opt/cni/bin"),
                PathBuf::from("/usr/libexec/cni")
            ]
        );
    }

    #[test]
    fn add_and_check_require_netns() {
        for cmd in ["ADD", "CHECK"] {
            let err = env(&[
                ("CNI_COMMAND", cmd),
                ("CNI_CONTAINERID", ID),
                ("CNI_NETNS", ""),
                ("CNI_IFNAME", "eth0"),
            ])
            .expect_err(cmd);
            assert_eq!(err.code, codes::INVALID_ENV);
            assert!(err.msg.contains("CNI_NETNS"), "{err:?}");
            assert!(!err.msg.contains("CNI_IFNAME"), "{err:?}");
        }
    }

    #[test]
    fn del_allows_empty_netns() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", ID),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
        ])
        .expect("DEL without netns");
        assert_eq!(e.command, Command::Del);
        assert_eq!(e.netns, None);
        // ...but still needs the attachment key.
        let err = env(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "/x")]).expect_err("no id");
        assert!(err.msg.contains("CNI_CONTAINERID"), "{err:?}");
        assert!(err.msg.contains("CNI_IFNAME"), "{err:?}");
        assert!(!err.msg.contains("CNI_NETNS"), "{err:?}");
    }

    #[test]
    fn missing_variables_are_all_named() {
        let err = env(&[("CNI_COMMAND", "ADD")]).expect_err("bare ADD");
        assert_eq!(err.code, codes::INVALID_ENV);
        for v in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            assert!(err.msg.contains(v), "{v} not in {err:?}");
        }
    }

    #[test]
    fn missing_or_bad_command() {
        let err = env(&[]).expect_err("no command");
        assert_eq!(err.code, codes::INVALID_ENV);
        assert!(err.msg.contains("CNI_COMMAND"));
        let err = env(&[("CNI_COMMAND", "FROB")]).expect_err("bad command");
        assert!(err.msg.contains("FROB"));
    }

    #[test]
    fn version_gc_status_need_only_the_command() {
        for cmd in ["VERSION", "GC", "STATUS"] {
            let e = env(&[("CNI_COMMAND", cmd)]).expect(cmd);
            assert_eq!(e.command.as_str(), cmd);
            assert_eq!(e.container_id, None);
            assert!(e.path.is_empty());
        }
        // Junk in the other variables does not fail them.
        let e = env(&[
            ("CNI_COMMAND", "GC"),
            ("CNI_CONTAINERID", "-bad"),
            ("CNI_ARGS", "garbage"),
            ("CNI_PATH", "/opt/cni/bin"),
        ])
        .expect("GC ignores attachment variables");
        assert_eq!(e.args, CniArgs::default());
        assert_eq!(e.path, vec![PathBuf::from("/opt/cni/bin")]);
    }

    #[test]
    fn container_id_and_ifname_rules() {
        for (id, ok) in [
            (ID, true),
            ("a", true),
            ("pod_1.x-y", true),
            ("-leading", false),
            ("_leading", false),
            ("has space", false),
            ("semi;colon", false),
            ("ünïcode", false),
        ] {
            assert_eq!(validate_container_id(id).is_ok(), ok, "{id}");
        }
        for (name, ok) in [
            ("eth0", true),
            ("mNicIf1", true),
            ("fifteen-chars-x", true),
            ("sixteen-chars-xx", false),
            (".", false),
            ("..", false),
            ("a/b", false),
            ("a:b", false),
            ("a b", false),
            ("a\tb", false),
        ] {
            assert_eq!(validate_ifname(name).is_ok(), ok, "{name}");
        }
        let err = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", ID),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "averyveryverylongname"),
        ])
        .expect_err("long ifname");
        assert_eq!(err.code, codes::INVALID_ENV);
        assert!(err.msg.contains("CNI_IFNAME"), "{err:?}");
        assert!(err.details.contains("15"), "{err:?}");
    }

    #[test]
    fn bad_cni_args_fail_attachment_commands() {
        let err = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", ID),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAME"),
        ])
        .expect_err("bad args");
        assert_eq!(err.code, codes::INVALID_ENV);
        assert!(err.msg.contains("CNI_ARGS"), "{err:?}");
    }

    #[test]
    fn args_podman_form() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=x").expect("podman");
        assert!(a.ignore_unknown);
        assert_eq!(a.pod_name.as_deref(), Some("x"));
        assert_eq!(a.pod_namespace, None);
        assert_eq!(a.pod_uid, None);
        assert!(a.other.is_empty());
    }

    #[test]
    fn args_containerd_form() {
        let a = CniArgs::parse(
            "K8S_POD_INFRA_CONTAINER_ID=9a7c5e;K8S_POD_UID=1b2c-3d4e;IgnoreUnknown=1;\
             K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-5d78c9869d-abcde",
        )
        .expect("containerd");
        assert_eq!(a.pod_infra_container_id.as_deref(), Some("9a7c5e"));
        assert_eq!(a.pod_uid.as_deref(), Some("1b2c-3d4e"));
        assert_eq!(a.pod_namespace.as_deref(), Some("kube-system"));
        assert_eq!(a.pod_name.as_deref(), Some("coredns-5d78c9869d-abcde"));
        assert!(a.ignore_unknown);
        assert!(a.other.is_empty());
    }

    #[test]
    fn args_keep_unknown_keys_and_tolerate_runtime_quirks() {
        let a = CniArgs::parse("FOO=bar;;K8S_POD_NAME=;X=a=b;FOO=baz;").expect("lenient");
        assert_eq!(a.other.get("FOO").map(String::as_str), Some("baz"));
        assert_eq!(a.other.get("X").map(String::as_str), Some("a=b"));
        assert_eq!(a.pod_name, None, "empty value is not a name");
        assert!(!a.ignore_unknown);
        assert_eq!(CniArgs::parse(""), Ok(CniArgs::default()));
    }

    #[test]
    fn args_reject_what_cannot_be_read() {
        for bad in ["noequals", "=value", "IgnoreUnknown=yes", "A=1;B"] {
            let err = CniArgs::parse(bad).expect_err(bad);
            assert_eq!(err.code, codes::INVALID_ENV, "{bad}");
            assert!(err.msg.contains("CNI_ARGS"), "{bad}: {err:?}");
        }
        for (v, want) in [
            ("TRUE", true),
            ("true", true),
            ("False", false),
            ("0", false),
        ] {
            let a = CniArgs::parse(&format!("IgnoreUnknown={v}")).expect(v);
            assert_eq!(a.ignore_unknown, want, "{v}");
        }
    }
}
