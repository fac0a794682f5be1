//! The Dockerfile, checked statically (the real build is tests/tests/image_pod.rs, which needs root and podman).
//!
//! Proven here: the stage layout, the bases after ARG substitution, that every COPY source exists (in the
//! repository and not cut by .dockerignore, staged under target/image/ and let through, or in an earlier stage),
//! that the binaries copied from the Rust stage are ones its `cargo build` builds (checked against `cargo
//! metadata`, features included), that the compiled and prebuilt stages offer the same binaries, that the final
//! image's /app is what `ipamd install` reads and what the DaemonSet execs, its packages, labels, ENTRYPOINT and
//! CMD. See the module docs of deploy_check::dockerfile.

use deploy_check::dockerfile::{
    problems, rust_str_array_const, rust_str_const, subcommands, Context, Dockerfile,
};
use deploy_check::dockerignore::DockerIgnore;
use deploy_check::repo::{read, root, workspace, Workspace};
use deploy_check::strict::{parse_stream, Object};

fn check(dockerfile: &str, dockerignore: &str, ws: &Workspace) -> Vec<String> {
    // `ipamd install`'s names, wherever in its module tree they are defined.
    let install: String = [
        "mod.rs",
        "files.rs",
        "conflist.rs",
        "settings.rs",
        "sysctl.rs",
    ]
    .iter()
    .map(|f| read(&format!("ipamd/src/cmd/install/{f}")).expect("ipamd/src/cmd/install"))
    .collect();
    let main = read("ipamd/src/main.rs").expect("main.rs");
    let df = Dockerfile::parse(dockerfile).unwrap_or_else(|e| panic!("{e}"));
    let ignore = DockerIgnore::parse(dockerignore).unwrap_or_else(|e| panic!("{e}"));
    let exists = |rel: &str| root().join(rel).exists();
    let read_file = |rel: &str| read(rel).ok();
    let cx = Context {
        ws,
        ignore: &ignore,
        exists: &exists,
        read: &read_file,
        upstream_plugins: rust_str_array_const(&install, "UPSTREAM_PLUGINS")
            .expect("UPSTREAM_PLUGINS"),
        template_name: rust_str_const(&install, "TEMPLATE_NAME").expect("TEMPLATE_NAME"),
        plugins_dir: rust_str_const(&install, "PLUGINS_DIR").expect("PLUGINS_DIR"),
        aws_cni: rust_str_const(&install, "AWS_CNI").expect("AWS_CNI"),
        subcommands: subcommands(&main),
    };
    problems(&df, &cx)
}

fn files() -> (String, String, Workspace) {
    (
        read("Dockerfile").expect("Dockerfile"),
        read(".dockerignore").expect(".dockerignore"),
        workspace().unwrap_or_else(|e| panic!("{e}")),
    )
}

#[test]
fn the_dockerfile_passes_the_static_checks() {
    let (df, ignore, ws) = files();
    assert_eq!(check(&df, &ignore, &ws), Vec::<String>::new());
    let parsed = Dockerfile::parse(&df).expect("parse");
    let names: Vec<&str> = parsed
        .stages
        .iter()
        .filter_map(|s| s.name.as_deref())
        .collect();
    assert_eq!(
        names,
        ["build", "compiled", "prebuilt", "binaries", "plugins", "runtime", "final"]
    );
}

#[test]
fn the_static_checks_catch_broken_recipes() {
    let (df, ignore, ws) = files();
    let cases: Vec<(&str, &str, &str)> = vec![
        (
            "COPY deploy/10-aws.conflist.tmpl /app/10-aws.conflist.tmpl",
            "COPY deploy/10-aws.conflist.template /app/10-aws.conflist.tmpl",
            "not in the repository",
        ),
        (
            "/src/target/release/aws-cni /",
            "/src/target/release/nope-cni /",
            "not a binary the build stage builds",
        ),
        (
            "--features ipamd/aws",
            "--features ipamd/nope",
            "ipamd/nope",
        ),
        (
            "scripts/plugin-release.sh --locked",
            "true",
            "does not build aws-cni",
        ),
        (
            "scripts/plugin-release.sh --locked",
            "scripts/plugin-release.sh",
            "must be run with --locked",
        ),
        (
            "scripts/plugin-release.sh --locked",
            "scripts/plugin-build.sh --locked",
            "not in the repository",
        ),
        ("cargo build --locked", "cargo build", "--locked"),
        ("rust:1.95-bookworm", "rust:1.70-bookworm", "older than"),
        ("rust:1.95-bookworm", "rust:1.95-trixie", "bookworm"),
        (
            "FROM ${DEBIAN_IMAGE} AS runtime",
            "FROM gcr.io/distroless/cc-debian12 AS runtime",
            "must be Debian bookworm",
        ),
        (
            "FROM ${RUNTIME} AS final",
            "FROM ${DEBIAN_IMAGE} AS final",
            "does not install iptables",
        ),
        (
            "ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim",
            "ARG DEBIAN_IMAGE=docker.io/library/debian:trixie-slim",
            "must be Debian bookworm",
        ),
        (
            "ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim",
            "ARG DEBIAN_IMAGE",
            "without a default",
        ),
        (
            "ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim",
            "ARG DEBIAN_IMAGE=debian:bookworm-slim",
            "must name its registry",
        ),
        (
            "install -y --no-install-recommends iptables nftables conntrack",
            "install -y --no-install-recommends nftables conntrack",
            "does not install iptables",
        ),
        (
            "COPY target/image/ipamd target/image/aws-cni target/image/egress-cni /",
            "COPY target/image/ipamd /",
            "stage prebuilt does not provide it",
        ),
        (
            "COPY target/image/ipamd target/image/aws-cni target/image/egress-cni /",
            "COPY target/ipamd target/image/aws-cni target/image/egress-cni /",
            "not in the repository",
        ),
        (
            "org.opencontainers.image.version=",
            "org.opencontainers.image.v=",
            "no label org.opencontainers.image.version",
        ),
        (
            "ENTRYPOINT [\"/app/ipamd\"]",
            "ENTRYPOINT /app/ipamd",
            "ENTRYPOINT",
        ),
        ("CMD [\"run\"]", "CMD [\"serve\"]", "CMD"),
        (
            "COPY --from=plugins /out/cni-plugins/ /app/cni-plugins/",
            "COPY --from=plugin /out/cni-plugins/ /app/cni-plugins/",
            "no stage of that name",
        ),
        (
            "for p in portmap loopback host-local bandwidth tuning;",
            "for p in portmap loopback host-local bandwidth;",
            "UPSTREAM_PLUGINS",
        ),
        (
            "apt-get install -y --no-install-recommends containernetworking-plugins",
            "curl -fsSL https://example.invalid/x | sh && apt-get install -y containernetworking-plugins",
            "downloads",
        ),
    ];
    for (from, to, expect) in cases {
        assert_eq!(df.matches(from).count(), 1, "mutation anchor {from:?}");
        let p = check(&df.replace(from, to), &ignore, &ws);
        assert!(
            p.iter().any(|x| x.contains(expect)),
            "{expect}: not caught: {p:?}"
        );
    }
    // .dockerignore cutting what the build needs.
    let p = check(&df, &format!("{ignore}\ndeploy\n"), &ws);
    assert!(
        p.iter().any(|x| x.contains("excluded by .dockerignore")),
        "{p:?}"
    );
    // The prebuilt binaries need target/image/ let through.
    let p = check(&df, &ignore.replace("!target/image", ""), &ws);
    assert!(
        p.iter()
            .any(|x| x.contains("COPY target/image/ipamd: excluded by .dockerignore")),
        "{p:?}"
    );
    let p = check(&df, &format!("{ignore}\nCargo.lock\n"), &ws);
    assert!(
        p.iter().any(|x| x.contains("leaves out Cargo.lock")),
        "{p:?}"
    );
    // A feature the package does not declare.
    let mut no_aws = ws.clone();
    no_aws.features.insert("ipamd".into(), Vec::new());
    let p = check(&df, &ignore, &no_aws);
    assert!(p.iter().any(|x| x.contains("ipamd/aws")), "{p:?}");
}

#[test]
fn the_daemonset_runs_what_the_image_holds() {
    let (df, _, _) = files();
    let parsed = Dockerfile::parse(&df).expect("parse");
    let fin = parsed.last().expect("final stage");
    let entry = fin
        .all("ENTRYPOINT")
        .last()
        .and_then(|e| deploy_check::dockerfile::exec_form(&e.args))
        .expect("exec-form ENTRYPOINT");
    let subs = subcommands(&read("ipamd/src/main.rs").expect("main.rs"));
    for s in ["run", "install", "health"] {
        assert!(
            subs.contains(&s.to_string()),
            "ipamd has no `{s}`: {subs:?}"
        );
    }
    let objs = parse_stream(
        &read("deploy/base/daemonset.yaml").expect("read"),
        "daemonset",
    )
    .expect("parse");
    let Some(Object::DaemonSet(ds)) = objs.first() else {
        panic!("no DaemonSet")
    };
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod");
    // Every container but the anchor's policy agent, which runs the agent's own image.
    let all = pod
        .containers
        .iter()
        .chain(pod.init_containers.as_deref().unwrap_or_default())
        .filter(|c| c.name != deploy_check::manifests::AGENT);
    for c in all {
        assert!(
            c.command.is_none(),
            "{}: the image's ENTRYPOINT runs",
            c.name
        );
        let first = c
            .args
            .as_ref()
            .and_then(|a| a.first())
            .cloned()
            .unwrap_or_default();
        assert!(
            subs.contains(&first),
            "{}: `ipamd {first}` is not a subcommand",
            c.name
        );
        assert_eq!(c.image.as_deref(), Some("aws-cni:0.1.0"), "{}", c.name);
        for probe in [c.liveness_probe.as_ref(), c.readiness_probe.as_ref()]
            .into_iter()
            .flatten()
        {
            let cmd = probe
                .exec
                .as_ref()
                .and_then(|e| e.command.clone())
                .unwrap_or_default();
            assert_eq!(
                cmd.first(),
                entry.first(),
                "{}: probes exec the image's ipamd",
                c.name
            );
        }
    }
}
