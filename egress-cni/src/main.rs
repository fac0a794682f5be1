//! `egress-cni`: the chained plugin that gives pods a way out in the other address family (the anchor's binary
//! of the same name and conflist entry). Chained after `aws-cni` in `10-aws.conflist`:
//!
//! - IPv6 clusters (`ENABLE_IPv6=true`, `nodeIP` = the node's primary IPv4): every pod gets `v4if0` with an address
//!   from 169.254.172.0/22, an IPv4 default route through the host, and SNAT to the node's IPv4;
//! - IPv4 clusters with `ENABLE_V6_EGRESS=true` (`nodeIP` = the node's IPv6): every pod gets `v6if0` with an
//!   address from fd00::ac:00/118 and SNAT66 to the node's IPv6.
//!
//! With `enabled` other than "true" it passes the previous result through and does nothing else. Thin: the
//! pieces are [`conf`] (the entry), [`alloc`] (egress addresses, host-local's layout), [`link`] (the second veth
//! pair, netlink through `datapath`), [`snat`] (the per-container chains, iptables/ip6tables) and [`cmd`] (the
//! verbs). One JSON document on stdout: the result or a CNI error ([`error`]); logs go to `pluginLogFile`.

mod alloc;
mod cmd;
mod conf;
mod error;
mod link;
mod snat;

use std::io::{Read, Write};
use std::process::ExitCode;

use cni_types::{CniEnv, CniError, Command};

use crate::conf::EgressConf;
use crate::error::EgressError;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let version = version_of(&stdin);
    let (out, ok) = match CniEnv::from_lookup(|k| std::env::var(k).ok()) {
        Err(e) => (e.to_json(&version), false),
        Ok(env) if env.command == Command::Version => (cni_types::version_info(&version), true),
        Ok(env) => match run(&env, &stdin, &version) {
            Ok(v) => (v, true),
            Err(e) => (e.to_json(&version), false),
        },
    };
    let mut stdout = std::io::stdout().lock();
    if !out.is_null() {
        let _ = writeln!(stdout, "{out}");
    }
    let _ = stdout.flush();
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn version_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| cni_types::is_supported(v))
        .unwrap_or_else(|| cni_types::LATEST_VERSION.to_string())
}

fn run(env: &CniEnv, stdin: &[u8], version: &str) -> Result<serde_json::Value, CniError> {
    let conf = EgressConf::parse(stdin)?;
    let version = cni_types::negotiate_version(&conf.net).unwrap_or_else(|_| version.to_string());
    cni_types::check_command_version(env.command, &version)?;
    init_logging(&conf);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| EgressError::Runtime(e).to_cni())?;
    let outcome = rt.block_on(async {
        match env.command {
            Command::Add => cmd::add(env, &conf)
                .await
                .and_then(|r| r.to_json(&version).map_err(EgressError::from)),
            Command::Del => cmd::del(env, &conf).await.map(|()| serde_json::Value::Null),
            Command::Check => cmd::check(env, &conf)
                .await
                .map(|()| serde_json::Value::Null),
            Command::Gc => cmd::gc(&conf).await.map(|()| serde_json::Value::Null),
            Command::Status => Ok(serde_json::Value::Null),
            Command::Version => Ok(cni_types::version_info(&version)),
        }
    });
    outcome.map_err(|e| {
        let cni = e.to_cni();
        tracing::error!(code = cni.code, "{}", cni.msg);
        cni
    })
}

fn init_logging(conf: &EgressConf) {
    use tracing_subscriber::EnvFilter;
    let level = conf.log_level.to_ascii_lowercase();
    let filter = EnvFilter::try_new(format!("{level},h2=info,rtnetlink=info"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let target = conf.log_file.as_str();
    let file = if target == "stderr" || target == "stdout" {
        None
    } else {
        let path = std::path::Path::new(target);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        hostfs::open_log(path).ok()
    };
    let _ = match file {
        Some(f) => builder.with_writer(std::sync::Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}
