//! The `ipamd max-pods` subcommand: flags compatible with the upstream
//! `max-pods-calculator.sh`, plus `--output` and `--all`.
//!
//! Mount it with `MaxPods(instance_limits::MaxPodsArgs)` in a clap
//! `Subcommand` enum and call [`run`] with an [`InstanceTypeSource`]
//! (normally [`crate::Imdsv2::from_env`]).
//!
//! Output:
//! * `--output text` (default): the number alone on one line, like the
//!   upstream calculator; with `--all`, one `TYPE MAX_PODS` line per known
//!   type, in table order. A type that cannot be computed under the given
//!   flags (prefix delegation on a Xen type) prints `TYPE error: REASON`.
//! * `--output json`: the [`MaxPodsReport`] object (pretty-printed); with
//!   `--all`, an array of those, where a type that cannot be computed is
//!   `{"instance_type": TYPE, "error": REASON}`.
//!
//! Errors that do not depend on the type (bad `--cni-version`,
//! `--cni-max-eni 0`, prefix delegation with a CNI older than 1.9.0) are
//! returned before anything is printed.

use crate::imds::{ImdsError, InstanceTypeSource};
use crate::max_pods::{
    self, CniVersion, MaxPodsError, MaxPodsOptions, MaxPodsReport, DEFAULT_CNI_VERSION,
};
use serde::Serialize;
use std::io::Write;

/// Number of suggestions in an unknown-type error.
pub const SUGGESTIONS: usize = 3;

/// Output format of `max-pods`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// One number (or `TYPE MAX_PODS` lines with `--all`).
    #[default]
    Text,
    /// The full computation as JSON.
    Json,
}

/// Flags of `ipamd max-pods`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(group(
    clap::ArgGroup::new("instance-type-source")
        .args(["instance_type", "instance_type_from_imds", "all"])
        .required(true)
        .multiple(false)
))]
pub struct MaxPodsArgs {
    /// EC2 instance type to compute max-pods for (e.g. m5.large).
    #[arg(long, value_name = "T")]
    pub instance_type: Option<String>,

    /// Read the instance type from IMDSv2 ($AWS_EC2_METADATA_SERVICE_ENDPOINT
    /// or http://169.254.169.254).
    #[arg(long)]
    pub instance_type_from_imds: bool,

    /// VPC CNI version whose behaviour to assume (e.g. 1.23.1 or v1.18.3-eksbuild.1).
    /// Defaults to the upstream release this project replaces; prefix
    /// delegation needs >= 1.9.0.
    #[arg(long, value_name = "V", default_value = DEFAULT_CNI_VERSION)]
    pub cni_version: String,

    /// Custom networking is on (the primary ENI carries no pod IPs).
    #[arg(long)]
    pub cni_custom_networking_enabled: bool,

    /// Prefix delegation is on (Nitro or bare-metal types only).
    #[arg(long)]
    pub cni_prefix_delegation_enabled: bool,

    /// MAX_ENI: use at most N ENIs (N >= 1).
    #[arg(long, value_name = "N")]
    pub cni_max_eni: Option<u32>,

    /// Print the uncapped value (no 110/250 cap).
    #[arg(long)]
    pub show_max_allowed: bool,

    /// Output format.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Print max-pods for every known instance type.
    #[arg(long)]
    pub all: bool,
}

impl Default for MaxPodsArgs {
    fn default() -> Self {
        MaxPodsArgs {
            instance_type: None,
            instance_type_from_imds: false,
            cni_version: DEFAULT_CNI_VERSION.to_string(),
            cni_custom_networking_enabled: false,
            cni_prefix_delegation_enabled: false,
            cni_max_eni: None,
            show_max_allowed: false,
            output: OutputFormat::Text,
            all: false,
        }
    }
}

impl MaxPodsArgs {
    /// The computation options these flags describe (validated).
    pub fn options(&self) -> Result<MaxPodsOptions, MaxPodsError> {
        let options = MaxPodsOptions {
            cni_version: self.cni_version.parse::<CniVersion>()?,
            custom_networking: self.cni_custom_networking_enabled,
            prefix_delegation: self.cni_prefix_delegation_enabled,
            cni_max_eni: self.cni_max_eni,
            show_max_allowed: self.show_max_allowed,
        };
        options.validate()?;
        Ok(options)
    }
}

fn did_you_mean(suggestions: &[&str]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", suggestions.join(", "))
    }
}

/// Errors of `ipamd max-pods`.
#[derive(Debug, thiserror::Error)]
pub enum MaxPodsCliError {
    #[error(transparent)]
    MaxPods(#[from] MaxPodsError),

    #[error("unknown instance type {instance_type:?}{}", did_you_mean(.suggestions))]
    UnknownInstanceType {
        instance_type: String,
        suggestions: Vec<&'static str>,
    },

    #[error("no instance type: pass --instance-type T, --instance-type-from-imds or --all")]
    NoInstanceType,

    #[error("--instance-type, --instance-type-from-imds and --all are mutually exclusive")]
    ConflictingInstanceTypeSources,

    #[error("cannot read the instance type from IMDS: {0}")]
    Imds(#[from] ImdsError),

    #[error("cannot write the output: {0}")]
    Io(#[from] std::io::Error),

    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// One element of the `--all --output json` array.
#[derive(Serialize)]
#[serde(untagged)]
enum AllEntry<'a> {
    Ok(MaxPodsReport),
    Err {
        instance_type: &'a str,
        error: String,
    },
}

/// Resolves a type name the way the CLI does: trimmed, lowercased, exact match.
pub fn resolve_instance_type(
    name: &str,
) -> Result<&'static crate::InstanceLimits, MaxPodsCliError> {
    let normalized = name.trim().to_ascii_lowercase();
    crate::lookup(&normalized).ok_or_else(|| MaxPodsCliError::UnknownInstanceType {
        instance_type: name.trim().to_string(),
        suggestions: crate::suggest(&normalized, SUGGESTIONS),
    })
}

/// Runs `ipamd max-pods`: writes the result to `out` (see the module docs).
pub fn run(
    args: &MaxPodsArgs,
    imds: &dyn InstanceTypeSource,
    out: &mut dyn Write,
) -> Result<(), MaxPodsCliError> {
    let sources = [
        args.instance_type.is_some(),
        args.instance_type_from_imds,
        args.all,
    ]
    .iter()
    .filter(|given| **given)
    .count();
    match sources {
        0 => return Err(MaxPodsCliError::NoInstanceType),
        1 => {}
        _ => return Err(MaxPodsCliError::ConflictingInstanceTypeSources),
    }
    let options = args.options()?;

    if args.all {
        return run_all(args.output, &options, out);
    }

    let name = match &args.instance_type {
        Some(name) => name.clone(),
        None => imds.instance_type()?,
    };
    let limits = resolve_instance_type(&name)?;
    let report = max_pods::compute(limits, &options)?;
    match args.output {
        OutputFormat::Text => writeln!(out, "{}", report.max_pods)?,
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, &report)?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn run_all(
    format: OutputFormat,
    options: &MaxPodsOptions,
    out: &mut dyn Write,
) -> Result<(), MaxPodsCliError> {
    let mut out = std::io::BufWriter::new(out);
    match format {
        OutputFormat::Text => {
            for limits in crate::all() {
                match max_pods::compute(limits, options) {
                    Ok(report) => writeln!(out, "{} {}", limits.instance_type, report.max_pods)?,
                    Err(e) => writeln!(out, "{} error: {e}", limits.instance_type)?,
                }
            }
        }
        OutputFormat::Json => {
            let entries: Vec<AllEntry<'_>> = crate::all()
                .iter()
                .map(|limits| match max_pods::compute(limits, options) {
                    Ok(report) => AllEntry::Ok(report),
                    Err(e) => AllEntry::Err {
                        instance_type: limits.instance_type,
                        error: e.to_string(),
                    },
                })
                .collect();
            serde_json::to_writer_pretty(&mut out, &entries)?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}
