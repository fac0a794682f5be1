//! Rendering the conflist template: the anchor's placeholders replaced by JSON-escaped values, optional plugins
//! chained (see [`super`]).
//!
//! With egress on ([`Settings::egress_enabled`]) `egress-cni` is chained right after aws-cni, as the anchor's
//! template has it: `{name, type: "egress-cni", mtu, enabled: "true", randomizeSNAT, nodeIP, ipam: {type:
//! host-local, ranges: [[{subnet}]], routes: [{dst}], dataDir}, pluginLogFile, pluginLogLevel}`, with the anchor's
//! values: an IPv6 node's pods get IPv4 egress from `169.254.172.0/22` (route `0.0.0.0/0`, data dir
//! `/run/cni/v6pd/egress-v4-ipam`) SNATed to the node's IPv4; an IPv4 node's pods get IPv6 egress from
//! `fd00::ac:00/118` (route `::/0`, `/run/cni/v4pd/egress-v6-ipam`) SNATed to the node's IPv6. Off, the entry is
//! left out (the anchor chains it with `enabled: "false"`, which does nothing but needs the binary).

use std::path::Path;

use serde_json::{json, Value};

use super::{InstallError, Settings, AWS_CNI};

/// The file the kubelet's runtime reads.
pub const CONFLIST_NAME: &str = "10-aws.conflist";
/// The template, next to the executable in the image.
pub const TEMPLATE_NAME: &str = "10-aws.conflist.tmpl";

/// The text of a JSON string's contents (no surrounding quotes).
fn json_escaped(s: &str) -> String {
    let quoted = Value::String(s.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// The first `__NAME__` (upper case letters, digits and `_`, starting with a letter) left in `text`.
pub(super) fn leftover_placeholder(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(off) = text[i..].find("__") {
        let start = i + off;
        let mut j = start + 2;
        while j < bytes.len()
            && (bytes[j].is_ascii_uppercase() || bytes[j].is_ascii_digit() || bytes[j] == b'_')
        {
            j += 1;
        }
        let run = &text[start + 2..j];
        if run.len() > 2 && run.ends_with("__") && run.as_bytes()[0].is_ascii_uppercase() {
            return Some(text[start..j].to_string());
        }
        i = start + 2;
    }
    None
}

/// The anchor's egress ranges: IPv4 egress of IPv6 pods, and IPv6 egress of IPv4 pods.
pub const EGRESS_V4_SUBNET: &str = "169.254.172.0/22";
pub const EGRESS_V6_SUBNET: &str = "fd00::ac:00/118";

/// The `egress-cni` entry (see the module docs); `node_ip` is the address its SNAT uses.
pub fn egress_entry(s: &Settings, node_ip: &str) -> Value {
    let (subnet, dst, data_dir) = if s.enable_ipv6 {
        (
            EGRESS_V4_SUBNET,
            "0.0.0.0/0",
            "/run/cni/v6pd/egress-v4-ipam",
        )
    } else {
        (EGRESS_V6_SUBNET, "::/0", "/run/cni/v4pd/egress-v6-ipam")
    };
    json!({
        "name": "egress-cni",
        "type": "egress-cni",
        "mtu": s.pod_mtu.to_string(),
        "enabled": "true",
        "randomizeSNAT": s.randomize_snat,
        "nodeIP": node_ip,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": dst}],
            "dataDir": data_dir,
        },
        "pluginLogFile": s.egress_log_file,
        "pluginLogLevel": s.plugin_log_level,
    })
}

/// [`render_conflist`] with `egress-cni` chained after aws-cni when egress is on (`node_ip`: the address its SNAT
/// uses; required then).
pub fn render_conflist_with_egress(
    template: &str,
    s: &Settings,
    path: &Path,
    node_ip: Option<&str>,
) -> Result<String, InstallError> {
    let text = render_conflist(template, s, path)?;
    if !s.egress_enabled() {
        return Ok(text);
    }
    let terr = |reason: String| InstallError::Template {
        path: path.to_path_buf(),
        reason,
    };
    let node_ip = node_ip.ok_or_else(|| terr("egress-cni needs the node's IP (nodeIP)".into()))?;
    let mut list: Value =
        serde_json::from_str(&text).map_err(|e| terr(format!("not JSON after rendering: {e}")))?;
    let Some(plugins) = list.get_mut("plugins").and_then(Value::as_array_mut) else {
        return Err(terr("no \"plugins\" array".into()));
    };
    let at = plugins
        .iter()
        .position(|p| p["type"] == AWS_CNI)
        .map_or(plugins.len(), |i| i + 1);
    if !plugins.iter().any(|p| p["type"] == "egress-cni") {
        plugins.insert(at, egress_entry(s, node_ip));
    }
    let mut out = serde_json::to_string_pretty(&list)
        .map_err(|e| terr(format!("serializing the conflist: {e}")))?;
    out.push('\n');
    Ok(out)
}

/// Renders the conflist template (see the module docs). `path` only names the template in errors.
pub fn render_conflist(template: &str, s: &Settings, path: &Path) -> Result<String, InstallError> {
    let terr = |reason: String| InstallError::Template {
        path: path.to_path_buf(),
        reason,
    };
    let mut text = template.to_string();
    for (placeholder, value) in [
        ("__VETHPREFIX__", s.veth_prefix.clone()),
        ("__MTU__", s.pod_mtu.to_string()),
        ("__PODSGENFORCINGMODE__", s.sg_mode.as_str().to_string()),
        ("__PLUGINLOGFILE__", s.plugin_log_file.clone()),
        ("__PLUGINLOGLEVEL__", s.plugin_log_level.clone()),
    ] {
        text = text.replace(placeholder, &json_escaped(&value));
    }
    if let Some(p) = leftover_placeholder(&text) {
        return Err(terr(format!("unknown placeholder {p}")));
    }
    let mut list: Value =
        serde_json::from_str(&text).map_err(|e| terr(format!("not JSON after rendering: {e}")))?;
    let Some(plugins) = list.get_mut("plugins").and_then(Value::as_array_mut) else {
        return Err(terr("no \"plugins\" array".into()));
    };
    if !plugins.iter().any(|p| p["type"] == AWS_CNI) {
        return Err(terr(format!("no plugin of type {AWS_CNI}")));
    }
    if !s.bandwidth_plugin && !s.disable_pod_v6 {
        return Ok(text);
    }
    if s.bandwidth_plugin {
        plugins.push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    }
    if s.disable_pod_v6 {
        plugins.push(json!({
            "type": "tuning",
            "sysctl": {
                "net.ipv6.conf.all.disable_ipv6": "1",
                "net.ipv6.conf.default.disable_ipv6": "1",
                "net.ipv6.conf.lo.disable_ipv6": "1"
            }
        }));
    }
    let mut out = serde_json::to_string_pretty(&list)
        .map_err(|e| terr(format!("serializing the conflist: {e}")))?;
    out.push('\n');
    Ok(out)
}
