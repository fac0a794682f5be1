//! `max-pods` mounted as a clap subcommand, and `run` end to end.
#![allow(clippy::unwrap_used)]

use clap::{Parser, Subcommand};
use instance_limits::imds::{ImdsError, NoImds, StaticInstanceType};
use instance_limits::max_pods::{compute, MaxPodsError};
use instance_limits::{all, lookup, run, MaxPodsArgs, MaxPodsCliError, OutputFormat};

#[derive(Parser, Debug)]
#[command(name = "ipamd")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    MaxPods(MaxPodsArgs),
}

fn parse(args: &[&str]) -> Result<MaxPodsArgs, clap::Error> {
    let argv = ["ipamd", "max-pods"].iter().chain(args);
    Cli::try_parse_from(argv).map(|cli| match cli.command {
        Command::MaxPods(a) => a,
    })
}

fn output(args: &[&str]) -> Result<String, MaxPodsCliError> {
    let args = parse(args).unwrap();
    let mut out = Vec::new();
    run(&args, &NoImds, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn text_output_is_one_number() {
    assert_eq!(output(&["--instance-type", "m5.large"]).unwrap(), "29\n");
    assert_eq!(
        output(&["--instance-type", "m5.xlarge", "--cni-version", "1.23.1"]).unwrap(),
        "58\n"
    );
    assert_eq!(output(&["--instance-type", "t3.nano"]).unwrap(), "4\n");
    assert_eq!(
        output(&["--instance-type", "c5.18xlarge"]).unwrap(),
        "250\n"
    );
    assert_eq!(
        output(&["--instance-type", "c5.18xlarge", "--show-max-allowed"]).unwrap(),
        "737\n"
    );
    // Names are trimmed and lowercased.
    assert_eq!(output(&["--instance-type", " M5.Large "]).unwrap(), "29\n");
}

#[test]
fn every_flag_parses_with_its_upstream_name() {
    let a = parse(&[
        "--instance-type",
        "m5.xlarge",
        "--cni-version",
        "v1.18.3-eksbuild.1",
        "--cni-custom-networking-enabled",
        "--cni-prefix-delegation-enabled",
        "--cni-max-eni",
        "2",
        "--show-max-allowed",
        "--output",
        "json",
    ])
    .unwrap();
    assert_eq!(a.instance_type.as_deref(), Some("m5.xlarge"));
    assert!(a.cni_custom_networking_enabled && a.cni_prefix_delegation_enabled);
    assert!(a.show_max_allowed && !a.all && !a.instance_type_from_imds);
    assert_eq!(a.cni_max_eni, Some(2));
    assert_eq!(a.output, OutputFormat::Json);
    // Default version is the documented one.
    let d = parse(&["--all"]).unwrap();
    assert_eq!(
        d.cni_version,
        instance_limits::max_pods::DEFAULT_CNI_VERSION
    );
    assert_eq!(d.output, OutputFormat::Text);
    assert_eq!(
        d,
        MaxPodsArgs {
            all: true,
            ..MaxPodsArgs::default()
        }
    );
}

#[test]
fn exactly_one_instance_type_source() {
    assert!(parse(&[]).is_err());
    assert!(parse(&["--instance-type", "m5.large", "--all"]).is_err());
    assert!(parse(&["--instance-type", "m5.large", "--instance-type-from-imds"]).is_err());
    assert!(parse(&["--instance-type-from-imds"]).is_ok());
    assert!(parse(&["--output", "yaml", "--all"]).is_err());
    assert!(parse(&["--all", "--cni-max-eni", "-1"]).is_err());
    // run() checks the same when args are built by hand.
    let mut out = Vec::new();
    let none = MaxPodsArgs::default();
    assert!(matches!(
        run(&none, &NoImds, &mut out),
        Err(MaxPodsCliError::NoInstanceType)
    ));
    let both = MaxPodsArgs {
        all: true,
        instance_type: Some("m5.large".into()),
        ..MaxPodsArgs::default()
    };
    assert!(matches!(
        run(&both, &NoImds, &mut out),
        Err(MaxPodsCliError::ConflictingInstanceTypeSources)
    ));
    assert!(out.is_empty());
}

#[test]
fn json_output_has_every_step() {
    let text = output(&[
        "--instance-type",
        "m5.xlarge",
        "--cni-max-eni",
        "2",
        "--cni-custom-networking-enabled",
        "--output",
        "json",
    ])
    .unwrap();
    assert!(text.ends_with("}\n"));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let l = lookup("m5.xlarge").unwrap();
    assert_eq!(v["instance_type"], "m5.xlarge");
    assert_eq!(v["inputs"]["cni_max_eni"], 2);
    assert_eq!(v["inputs"]["custom_networking"], true);
    assert_eq!(v["instance"]["enis"], l.enis);
    assert_eq!(v["enis"], 1);
    assert_eq!(
        v["enis_formula"],
        format!(
            "min({}, --cni-max-eni 2) - 1 (custom networking) = 1",
            l.enis
        )
    );
    assert_eq!(v["ips_per_eni"], l.ipv4_per_eni - 1);
    assert_eq!(v["formula"], format!("1 * ({} - 1) + 2", l.ipv4_per_eni));
    assert_eq!(v["uncapped"], l.ipv4_per_eni + 1);
    assert_eq!(v["max_pods"], l.ipv4_per_eni + 1);
    assert_eq!(v["cap"], 110);
    assert_eq!(v["mode"], "secondary-ip");
    for key in ["cap_reason", "capped", "notes"] {
        assert!(v.get(key).is_some(), "{key}");
    }
}

#[test]
fn all_prints_one_line_per_type() {
    let text = output(&["--all"]).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), all().len());
    for (line, l) in lines.iter().zip(all()) {
        let (name, value) = line.split_once(' ').unwrap();
        assert_eq!(name, l.instance_type);
        let want = compute(l, &parse(&["--all"]).unwrap().options().unwrap()).unwrap();
        assert_eq!(value.parse::<u32>().unwrap(), want.max_pods);
    }
    assert!(lines.contains(&"m5.large 29"));
}

#[test]
fn all_with_prefix_delegation_marks_unsupported_types() {
    let text = output(&["--all", "--cni-prefix-delegation-enabled"]).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), all().len());
    for (line, l) in lines.iter().zip(all()) {
        let (name, rest) = line.split_once(' ').unwrap();
        assert_eq!(name, l.instance_type);
        if l.supports_prefix_delegation() {
            assert!(rest.parse::<u32>().is_ok(), "{line}");
        } else {
            assert!(rest.starts_with("error: prefix delegation"), "{line}");
        }
    }

    let json = output(&[
        "--all",
        "--cni-prefix-delegation-enabled",
        "--output",
        "json",
    ])
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), all().len());
    for (item, l) in items.iter().zip(all()) {
        assert_eq!(item["instance_type"], l.instance_type);
        assert_eq!(
            item.get("max_pods").is_some(),
            l.supports_prefix_delegation()
        );
        assert_eq!(item.get("error").is_some(), !l.supports_prefix_delegation());
    }
}

#[test]
fn unknown_type_suggests_names() {
    let err = output(&["--instance-type", "m5.lage"]).unwrap_err();
    let MaxPodsCliError::UnknownInstanceType {
        instance_type,
        suggestions,
    } = &err
    else {
        panic!("wrong error {err:?}");
    };
    assert_eq!(instance_type, "m5.lage");
    assert_eq!(suggestions.first(), Some(&"m5.large"));
    let message = err.to_string();
    assert!(
        message.contains("unknown instance type \"m5.lage\""),
        "{message}"
    );
    assert!(message.contains("did you mean m5.large"), "{message}");
}

#[test]
fn type_independent_errors_come_before_any_output() {
    let err = output(&["--all", "--cni-version", "one.two"]).unwrap_err();
    assert!(matches!(
        err,
        MaxPodsCliError::MaxPods(MaxPodsError::InvalidCniVersion { .. })
    ));
    let err = output(&["--instance-type", "m5.large", "--cni-max-eni", "0"]).unwrap_err();
    assert!(matches!(
        err,
        MaxPodsCliError::MaxPods(MaxPodsError::InvalidMaxEni { .. })
    ));
    let err = output(&[
        "--all",
        "--cni-prefix-delegation-enabled",
        "--cni-version",
        "1.8.0",
    ])
    .unwrap_err();
    assert!(matches!(
        err,
        MaxPodsCliError::MaxPods(MaxPodsError::PrefixDelegationNeedsNewerCni { .. })
    ));
    let err = output(&[
        "--instance-type",
        "t2.micro",
        "--cni-prefix-delegation-enabled",
    ])
    .unwrap_err();
    assert!(err.to_string().contains("t2.micro"), "{err}");
}

#[test]
fn instance_type_from_source() {
    let args = parse(&["--instance-type-from-imds", "--show-max-allowed"]).unwrap();
    let mut out = Vec::new();
    run(&args, &StaticInstanceType("c5.18xlarge\n".into()), &mut out).unwrap();
    assert_eq!(out, b"737\n");

    let mut out = Vec::new();
    let err = run(&args, &NoImds, &mut out).unwrap_err();
    assert!(matches!(err, MaxPodsCliError::Imds(ImdsError::Unavailable)));
    // The source is not consulted without the flag.
    let args = parse(&["--instance-type", "m5.large"]).unwrap();
    run(&args, &NoImds, &mut out).unwrap();
    assert_eq!(out, b"29\n");
}
