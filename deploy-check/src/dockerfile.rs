//! A Dockerfile reader and the static checks of the image recipe.
//!
//! What the checks establish from the text: the stages and their order; the base images after the global `ARG`
//! defaults are substituted (a registry and a fixed tag; the builder's Rust at least the workspace's
//! `rust-version` and its Debian release the final image's, so the same glibc); that every `COPY` from the build
//! context names a file that exists in the repository and is not cut out by `.dockerignore` (or, for the host-built
//! binaries, a file under [`PREBUILT_DIR`] that `.dockerignore` lets through); that every `COPY --from` names an
//! earlier stage and, from the Rust stage, only binaries that stage's `cargo build` builds (packages, bins and
//! features checked against `cargo metadata`) or a build script of the repository that it runs builds (the
//! `--bin` of the script's cargo lines, e.g. `scripts/plugin-release.sh` for the shipped aws-cni); that the stage switch chosen by an `ARG` offers the same files
//! whichever stage it names; that the final image's `/app` holds what `ipamd install` looks for next to its
//! executable (names read from ipamd/src/cmd/install/) and its packages the netfilter tools ipamd runs; the
//! ENTRYPOINT, CMD and labels; and that nothing is downloaded outside the package managers.
//!
//! What a real build establishes instead (tests/tests/image_pod.rs, with podman): that the bases and packages
//! resolve, what the `RUN` steps produce, that every binary finds its libraries, and that the DaemonSet's pod runs.

use std::collections::BTreeSet;

use crate::dockerignore::DockerIgnore;
use crate::repo::Workspace;
use crate::CheckError;

/// One instruction, continuation lines joined, comments dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line where it starts.
    pub line: usize,
    /// Upper case (`FROM`, `COPY`, ...).
    pub keyword: String,
    pub args: String,
}

/// A `FROM` and what follows until the next one.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: Option<String>,
    /// The base with the global `ARG` defaults substituted.
    pub base: String,
    /// The base as written (`${DEBIAN_IMAGE}`), when it names an `ARG`.
    pub base_arg: Option<String>,
    pub instructions: Vec<Instruction>,
}

/// A parsed `COPY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub from: Option<String>,
    pub sources: Vec<String>,
    pub dest: String,
}

#[derive(Debug, Clone)]
pub struct Dockerfile {
    /// The `ARG`s before the first `FROM` (the only ones a `FROM` can use), with their defaults.
    pub global_args: Vec<(String, Option<String>)>,
    pub stages: Vec<Stage>,
}

/// Where `scripts/image.sh` stages host-built binaries for the `prebuilt` stage (inside target/, which
/// `.dockerignore` otherwise leaves out).
pub const PREBUILT_DIR: &str = "target/image/";

/// `text` with `$NAME` and `${NAME}` replaced by the defaults of `args` (unknown or default-less ones stay).
pub fn substitute(text: &str, args: &[(String, Option<String>)]) -> String {
    let mut out = text.to_string();
    for (name, default) in args {
        if let Some(d) = default {
            out = out
                .replace(&format!("${{{name}}}"), d)
                .replace(&format!("${name}"), d);
        }
    }
    out
}

impl Dockerfile {
    pub fn parse(text: &str) -> Result<Dockerfile, CheckError> {
        let mut instrs = Vec::new();
        let mut cur: Option<(usize, String)> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_end();
            let trimmed = line.trim_start();
            if trimmed.starts_with('#') || (trimmed.is_empty() && cur.is_none()) {
                continue;
            }
            let (body, cont) = match line.strip_suffix('\\') {
                Some(b) => (b, true),
                None => (line, false),
            };
            let acc = cur.get_or_insert_with(|| (i + 1, String::new()));
            if !acc.1.is_empty() {
                acc.1.push(' ');
            }
            acc.1.push_str(body.trim());
            if !cont {
                if let Some(done) = cur.take() {
                    instrs.push(done);
                }
            }
        }
        if let Some((line, _)) = cur {
            return Err(CheckError::invalid(
                "Dockerfile",
                format!("line {line}: continuation runs past the end"),
            ));
        }
        let mut stages: Vec<Stage> = Vec::new();
        let mut global_args = Vec::new();
        for (line, text) in instrs {
            let (kw, args) = text.split_once(' ').unwrap_or((text.as_str(), ""));
            let ins = Instruction {
                line,
                keyword: kw.to_ascii_uppercase(),
                args: args.trim().to_string(),
            };
            if ins.keyword == "FROM" {
                let words: Vec<&str> = ins
                    .args
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let (written, name) = match words.as_slice() {
                    [b] => (b.to_string(), None),
                    [b, as_, n] if as_.eq_ignore_ascii_case("as") => {
                        (b.to_string(), Some(n.to_string()))
                    }
                    _ => {
                        return Err(CheckError::invalid(
                            "Dockerfile",
                            format!("line {line}: cannot read FROM {}", ins.args),
                        ))
                    }
                };
                let base = substitute(&written, &global_args);
                stages.push(Stage {
                    name,
                    base_arg: written
                        .contains('$')
                        .then(|| written.trim_matches(['$', '{', '}']).to_string()),
                    base,
                    instructions: Vec::new(),
                });
            } else if let Some(s) = stages.last_mut() {
                s.instructions.push(ins);
            } else if ins.keyword == "ARG" {
                let (n, d) = match ins.args.split_once('=') {
                    Some((n, d)) => (n.trim(), Some(d.trim().trim_matches('"').to_string())),
                    None => (ins.args.trim(), None),
                };
                global_args.push((n.to_string(), d));
            } else {
                return Err(CheckError::invalid(
                    "Dockerfile",
                    format!("line {line}: {} before the first FROM", ins.keyword),
                ));
            }
        }
        Ok(Dockerfile {
            global_args,
            stages,
        })
    }

    pub fn stage(&self, name: &str) -> Option<(usize, &Stage)> {
        self.stages
            .iter()
            .enumerate()
            .find(|(_, s)| s.name.as_deref() == Some(name))
    }

    pub fn last(&self) -> Option<&Stage> {
        self.stages.last()
    }

    /// The last stage as the image it makes: when its base is an earlier stage (and so on), their instructions
    /// come first and the base is the first one's.
    pub fn last_flattened(&self) -> Option<Stage> {
        let mut at = self.stages.len().checked_sub(1)?;
        let mut chain = vec![at];
        while let Some(j) = self.stages[..at]
            .iter()
            .rposition(|e| e.name.as_deref() == Some(self.stages[at].base.as_str()))
        {
            chain.push(j);
            at = j;
        }
        let root = &self.stages[at];
        Some(Stage {
            name: self.stages.last()?.name.clone(),
            base: root.base.clone(),
            base_arg: root.base_arg.clone(),
            instructions: chain
                .iter()
                .rev()
                .flat_map(|&k| self.stages[k].instructions.iter().cloned())
                .collect(),
        })
    }
}

impl Stage {
    pub fn all(&self, keyword: &str) -> impl Iterator<Item = &Instruction> {
        let k = keyword.to_string();
        self.instructions.iter().filter(move |i| i.keyword == k)
    }

    pub fn copies(&self) -> Vec<Copy> {
        self.all("COPY")
            .filter_map(|i| parse_copy(&i.args))
            .collect()
    }

    /// The stage's last WORKDIR, or `/`.
    pub fn workdir(&self) -> String {
        self.all("WORKDIR")
            .last()
            .map(|i| i.args.clone())
            .unwrap_or_else(|| "/".into())
    }

    /// Every RUN's text, joined.
    pub fn run_text(&self) -> String {
        self.all("RUN")
            .map(|i| i.args.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `COPY [--from=X] [--chown=..] [--chmod=..] [--link] src... dest`, or the JSON-array form.
pub fn parse_copy(args: &str) -> Option<Copy> {
    let mut from = None;
    let mut rest = Vec::new();
    let mut words = args.split_whitespace().peekable();
    while let Some(w) = words.peek() {
        if let Some(flag) = w.strip_prefix("--") {
            if let Some(f) = flag.strip_prefix("from=") {
                from = Some(f.to_string());
            }
            words.next();
        } else {
            break;
        }
    }
    let remainder: String = words.collect::<Vec<_>>().join(" ");
    if remainder.starts_with('[') {
        let v: Vec<String> = serde_json::from_str(&remainder).ok()?;
        rest = v;
    } else {
        rest.extend(remainder.split_whitespace().map(str::to_string));
    }
    let dest = rest.pop()?;
    if rest.is_empty() {
        return None;
    }
    Some(Copy {
        from,
        sources: rest,
        dest,
    })
}

/// Whether a `COPY` of `stage` puts a file at `path`.
fn copies_into(stage: &Stage, path: &str) -> bool {
    stage.copies().iter().any(|c| {
        if c.dest.ends_with('/') {
            c.sources.iter().any(|s| {
                let base = s
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or_default();
                format!("{}{base}", c.dest) == path
            })
        } else {
            c.dest == path
        }
    })
}

/// The exec-form array of an ENTRYPOINT or CMD (None for the shell form).
pub fn exec_form(args: &str) -> Option<Vec<String>> {
    serde_json::from_str(args.trim()).ok()
}

/// (major, minor) of "1.95" or "1.95.0".
pub fn version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// A `pub const NAME: &str = "value";` of Rust source.
pub fn rust_str_const(src: &str, name: &str) -> Option<String> {
    let at = src.find(&format!("pub const {name}: &str ="))?;
    let rest = &src[at..];
    let q1 = rest.find('"')?;
    let q2 = rest[q1 + 1..].find('"')?;
    Some(rest[q1 + 1..q1 + 1 + q2].to_string())
}

/// The string elements of `pub const NAME: [&str; N] = [...];` of Rust source.
pub fn rust_str_array_const(src: &str, name: &str) -> Option<Vec<String>> {
    let at = src.find(&format!("pub const {name}:"))?;
    let rest = &src[at..];
    let eq = rest.find('=')?;
    let open = eq + rest[eq..].find('[')?;
    let close = open + rest[open..].find(']')?;
    Some(
        rest[open + 1..close]
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

/// The subcommands of `enum Command` in ipamd's main.rs, kebab-cased as clap names them.
pub fn subcommands(main_rs: &str) -> Vec<String> {
    let Some(at) = main_rs.find("enum Command {") else {
        return Vec::new();
    };
    let body = &main_rs[at + "enum Command {".len()..];
    let body = &body[..body.find("\n}").unwrap_or(body.len())];
    body.lines()
        .map(str::trim)
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        .filter_map(|l| l.split(['(', ',', ' ', '{']).next())
        .map(|ident| {
            let mut out = String::new();
            for (i, c) in ident.chars().enumerate() {
                if c.is_ascii_uppercase() {
                    if i > 0 {
                        out.push('-');
                    }
                    out.push(c.to_ascii_lowercase());
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect()
}

/// What the checks compare the Dockerfile with.
pub struct Context<'a> {
    pub ws: &'a Workspace,
    pub ignore: &'a DockerIgnore,
    /// Whether a path relative to the repository root exists.
    pub exists: &'a dyn Fn(&str) -> bool,
    /// The text of a file relative to the repository root (a build script the Rust stage runs).
    pub read: &'a dyn Fn(&str) -> Option<String>,
    /// From ipamd/src/cmd/install/.
    pub upstream_plugins: Vec<String>,
    pub template_name: String,
    pub plugins_dir: String,
    pub aws_cni: String,
    /// From ipamd/src/main.rs.
    pub subcommands: Vec<String>,
}

/// The binaries the repository's build scripts that `run` calls (`scripts/*.sh`, e.g. `scripts/plugin-release.sh`,
/// which builds the shipped aws-cni) put under target/release: the `--bin` of each `cargo rustc` or `cargo build`
/// line of the script, whose package must be a workspace package. A script must exist and be run with `--locked`,
/// as `cargo build` is.
fn script_builds(run: &str, cx: &Context, problems: &mut Vec<String>) -> BTreeSet<String> {
    let mut built = BTreeSet::new();
    for cmd in run.split("&&") {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let Some(script) = words
            .iter()
            .find(|w| w.starts_with("scripts/") && w.ends_with(".sh"))
        else {
            continue;
        };
        let Some(text) = (cx.read)(script) else {
            problems.push(format!("RUN {script}: not in the repository"));
            continue;
        };
        if !words.contains(&"--locked") {
            problems.push(format!("`{script}` must be run with --locked"));
        }
        for line in text.lines().map(str::trim) {
            if line.starts_with('#')
                || !(line.contains("cargo rustc") || line.contains("cargo build"))
            {
                continue;
            }
            let lw: Vec<&str> = line.split_whitespace().collect();
            let after = |flag: &str| {
                lw.iter()
                    .position(|w| *w == flag)
                    .and_then(|i| lw.get(i + 1).copied())
            };
            match (after("-p"), after("--bin")) {
                (Some(pkg), Some(bin)) if cx.ws.bins.get(pkg).is_some_and(|b| b.iter().any(|x| x == bin)) => {
                    built.insert(bin.to_string());
                }
                (pkg, bin) => problems.push(format!(
                    "{script}: `{line}` must name a workspace package and one of its binaries (-p {pkg:?} --bin {bin:?})"
                )),
            }
        }
    }
    built
}

/// The binaries a `cargo build` command line builds, and its problems.
fn cargo_build(run: &str, ws: &Workspace, problems: &mut Vec<String>) -> BTreeSet<String> {
    let Some(at) = run.find("cargo build") else {
        return BTreeSet::new();
    };
    let cmd = run[at..].split("&&").next().unwrap_or_default();
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let mut pkgs = Vec::new();
    let mut bins = Vec::new();
    let mut feats = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let next = words.get(i + 1).copied().unwrap_or_default();
        match words[i] {
            "-p" | "--package" => {
                pkgs.push(next);
                i += 1;
            }
            "--bin" => {
                bins.push(next);
                i += 1;
            }
            "--features" | "-F" => {
                feats.extend(next.split(','));
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    for flag in ["--locked", "--release"] {
        if !words.contains(&flag) {
            problems.push(format!("`cargo build` must use {flag}"));
        }
    }
    if pkgs.is_empty() {
        problems.push("`cargo build` must name its packages with -p".into());
    }
    let mut built = BTreeSet::new();
    for p in &pkgs {
        match ws.bins.get(*p) {
            None => problems.push(format!("cargo build -p {p}: no such workspace package")),
            Some(b) => built.extend(b.iter().cloned()),
        }
    }
    if !bins.is_empty() {
        built.retain(|b| bins.contains(&b.as_str()));
    }
    for f in feats {
        match f.split_once('/') {
            Some((pkg, feat)) => {
                let declared = ws
                    .features
                    .get(pkg)
                    .is_some_and(|fs| fs.iter().any(|x| x == feat));
                if !declared {
                    problems.push(format!(
                        "feature {pkg}/{feat} is not declared in {pkg}'s Cargo.toml"
                    ));
                }
                if !pkgs.contains(&pkg) {
                    problems.push(format!(
                        "feature {f} is for a package the build does not select"
                    ));
                }
            }
            None => problems.push(format!(
                "feature {f:?} must be qualified (package/feature) when several packages are built"
            )),
        }
    }
    built
}

/// Every problem of the Dockerfile (empty = the static checks pass).
pub fn problems(df: &Dockerfile, cx: &Context<'_>) -> Vec<String> {
    let mut p = Vec::new();
    if df.stages.len() < 3 {
        p.push(format!(
            "expected at least 3 stages (build, plugins, final), found {}",
            df.stages.len()
        ));
    }
    let mut names = BTreeSet::new();
    for (i, s) in df.stages.iter().enumerate() {
        match &s.name {
            None => p.push(format!("stage {i} ({}) has no name", s.base)),
            Some(n) if !names.insert(n.clone()) => p.push(format!("stage name {n} used twice")),
            Some(_) => {}
        }
        let is_stage = df.stages[..i]
            .iter()
            .any(|e| e.name.as_deref() == Some(s.base.as_str()));
        if s.base.contains('$') {
            p.push(format!(
                "stage {i}: base {} names an ARG without a default before the first FROM",
                s.base
            ));
        } else if !is_stage && s.base != "scratch" {
            let tag = s.base.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
            // Distroless publishes no version tags: its name pins the Debian release (a release build should pin
            // the digest too).
            let pinned = s.base.contains("@sha256:")
                || (s.base.contains("/distroless/") && s.base.ends_with("-debian12"));
            if !pinned && (tag.is_empty() || tag == "latest" || tag.contains('/')) {
                p.push(format!("stage {i}: base {} needs a fixed tag", s.base));
            }
            if s.base.split('/').count() < 2 {
                p.push(format!("stage {i}: base {} must name its registry", s.base));
            }
        }
        if s.all("ADD").next().is_some() {
            p.push(format!("stage {i}: use COPY, not ADD"));
        }
        for r in s.all("RUN") {
            for tool in ["curl ", "wget ", "rustup "] {
                if r.args.contains(tool) {
                    p.push(format!(
                        "line {}: `{}` downloads outside the package managers",
                        r.line,
                        tool.trim()
                    ));
                }
            }
        }
    }

    // The Rust stage.
    let build_idx = df
        .stages
        .iter()
        .position(|s| s.run_text().contains("cargo build"));
    let Some(build_idx) = build_idx else {
        p.push("no stage runs `cargo build`".into());
        return p;
    };
    let build = &df.stages[build_idx];
    let build_name = build.name.clone().unwrap_or_default();
    let image = build.base.rsplit('/').next().unwrap_or_default();
    match image.strip_prefix("rust:").and_then(|t| t.split_once('-')) {
        Some((ver, distro)) => {
            let want = cx.ws.rust_version.as_deref().and_then(version);
            if version(ver).is_none() || want.is_some_and(|w| version(ver) < Some(w)) {
                p.push(format!(
                    "the builder's Rust {ver} is older than the workspace's rust-version {:?}",
                    cx.ws.rust_version
                ));
            }
            if !distro.starts_with("bookworm") {
                p.push(format!(
                    "the builder must be on Debian bookworm (the final image's glibc), is {distro}"
                ));
            }
        }
        None => p.push(format!(
            "the build stage must be a rust:<version>-bookworm image, is {}",
            build.base
        )),
    }
    let mut built = cargo_build(&build.run_text(), cx.ws, &mut p);
    built.extend(script_builds(&build.run_text(), cx, &mut p));
    for need in ["ipamd", cx.aws_cni.as_str()] {
        if !built.contains(need) {
            p.push(format!("the build stage does not build {need}"));
        }
    }
    let target = format!("{}/target/release/", build.workdir().trim_end_matches('/'));

    // COPY sources.
    for (i, s) in df.stages.iter().enumerate() {
        for c in s.copies() {
            match &c.from {
                None => {
                    for src in &c.sources {
                        let rel = src.trim_start_matches("./");
                        if rel == "." {
                            for must in ["Cargo.toml", "Cargo.lock"]
                                .into_iter()
                                .map(str::to_string)
                                .chain(cx.ws.member_dirs.iter().cloned())
                            {
                                if cx.ignore.excluded(&must) {
                                    p.push(format!("COPY . leaves out {must} (.dockerignore)"));
                                }
                            }
                        } else if rel.starts_with(PREBUILT_DIR) {
                            // Staged by scripts/image.sh before the build, so not in the repository.
                            if cx.ignore.excluded(rel) {
                                p.push(format!("COPY {src}: excluded by .dockerignore"));
                            }
                        } else if !(cx.exists)(rel) {
                            p.push(format!("COPY {src}: not in the repository"));
                        } else if cx.ignore.excluded(rel) {
                            p.push(format!("COPY {src}: excluded by .dockerignore"));
                        }
                    }
                }
                Some(from) => {
                    let Some((j, fs)) = df.stage(from) else {
                        p.push(format!("COPY --from={from}: no stage of that name"));
                        continue;
                    };
                    if j >= i {
                        p.push(format!("COPY --from={from}: not an earlier stage"));
                    }
                    // A stage picked by an ARG (`FROM ${BINARIES} AS binaries`): what is copied from it must be in
                    // its default and in `prebuilt`, whichever the build picks.
                    let switch = fs.base_arg.is_some() && df.stage(&fs.base).is_some();
                    let picks: Vec<usize> = match switch {
                        true => df.stages[..j]
                            .iter()
                            .enumerate()
                            .filter(|(_, e)| {
                                e.name.as_deref() == Some(fs.base.as_str())
                                    || e.name.as_deref() == Some("prebuilt")
                            })
                            .map(|(k, _)| k)
                            .collect(),
                        false => Vec::new(),
                    };
                    if switch && picks.len() < 2 {
                        p.push(format!(
                            "stage {from} is picked by an ARG: it needs a default stage and a `prebuilt` one"
                        ));
                    }
                    for src in &c.sources {
                        if !picks.is_empty() {
                            for &k in &picks {
                                if !copies_into(&df.stages[k], src) {
                                    p.push(format!(
                                        "COPY --from={from} {src}: stage {} does not provide it",
                                        df.stages[k].name.clone().unwrap_or_default()
                                    ));
                                }
                            }
                        } else if j == build_idx {
                            match src.strip_prefix(&target) {
                                Some(bin) if built.contains(bin) => {}
                                _ => p.push(format!(
                                    "COPY --from={build_name} {src}: not a binary the build stage builds ({target}{{{}}})",
                                    built.iter().cloned().collect::<Vec<_>>().join(",")
                                )),
                            }
                        } else {
                            // The stage's RUN text must at least mention the top of the copied path.
                            let top: String = src.split('/').take(3).collect::<Vec<_>>().join("/");
                            let run = fs.run_text();
                            if !run.contains(&format!("{top}/"))
                                && !run.contains(&format!("{top} "))
                            {
                                p.push(format!(
                                    "COPY --from={from} {src}: stage {from} never writes {top}"
                                ));
                            }
                        }
                    }
                }
            }
        }
    }

    // The plugin stage installs Debian's plugins and stages exactly the ones `ipamd install` copies.
    let plugin_stage = df
        .stages
        .iter()
        .find(|s| s.run_text().contains("containernetworking-plugins"));
    match plugin_stage {
        None => p.push("no stage installs containernetworking-plugins".into()),
        Some(s) => {
            let run = s.run_text();
            let listed: Option<Vec<String>> = run.find("for p in ").map(|at| {
                let rest = &run[at + "for p in ".len()..];
                rest[..rest.find(';').unwrap_or(rest.len())]
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            });
            if listed.as_ref() != Some(&cx.upstream_plugins) {
                p.push(format!(
                    "the staged plugins {listed:?} must be ipamd install's UPSTREAM_PLUGINS {:?}",
                    cx.upstream_plugins
                ));
            }
            if !run.contains("/usr/lib/cni/$p") {
                p.push("the plugins must come from Debian's /usr/lib/cni".into());
            }
        }
    }

    // The final image: the last stage with the stages it is built on.
    let Some(fin) = df.last_flattened() else {
        return p;
    };
    let fin = &fin;
    let release = fin.base.rsplit('/').next().unwrap_or_default();
    if !release.starts_with("debian:bookworm") {
        p.push(format!(
            "the final stage must be Debian bookworm (the builder's glibc, and the node's netfilter tools), is {}",
            fin.base
        ));
    }
    let fin_run = fin.run_text();
    for pkg in ["iptables", "nftables", "conntrack"] {
        let installed = fin_run
            .split("&&")
            .any(|cmd| cmd.contains("apt-get install") && cmd.split_whitespace().any(|w| w == pkg));
        if !installed {
            p.push(format!("the final stage does not install {pkg}"));
        }
    }
    let labels: String = fin
        .all("LABEL")
        .map(|l| l.args.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    for label in [
        "org.opencontainers.image.version",
        "org.opencontainers.image.source",
    ] {
        if !labels.contains(&format!("{label}=")) {
            p.push(format!("the final image has no label {label}"));
        }
    }
    let mut files = BTreeSet::new();
    for c in fin.copies() {
        for src in &c.sources {
            if c.dest.ends_with('/') {
                if src.ends_with('/') {
                    files.insert(c.dest.clone());
                } else {
                    let base = src.rsplit('/').next().unwrap_or_default();
                    files.insert(format!("{}{base}", c.dest));
                }
            } else {
                files.insert(c.dest.clone());
            }
        }
    }
    for need in [
        "/app/ipamd".to_string(),
        format!("/app/{}", cx.aws_cni),
        format!("/app/{}", cx.template_name),
        format!("/app/{}/", cx.plugins_dir),
    ] {
        if !files.contains(&need) {
            p.push(format!(
                "the final image has no {need} (ipamd install expects it next to ipamd)"
            ));
        }
    }
    let template_copied = fin.copies().iter().any(|c| {
        c.from.is_none()
            && c.sources == [format!("deploy/{}", cx.template_name)]
            && c.dest == format!("/app/{}", cx.template_name)
    });
    if !template_copied {
        p.push(format!(
            "deploy/{} must be copied to /app/{}",
            cx.template_name, cx.template_name
        ));
    }
    match fin
        .all("ENTRYPOINT")
        .last()
        .and_then(|e| exec_form(&e.args))
    {
        Some(ep) if ep.len() == 1 && files.contains(&ep[0]) && ep[0].ends_with("/ipamd") => {}
        other => p.push(format!(
            "ENTRYPOINT must be the exec form [\"/app/ipamd\"], is {other:?}"
        )),
    }
    match fin.all("CMD").last().and_then(|e| exec_form(&e.args)) {
        Some(cmd)
            if cmd
                .first()
                .is_some_and(|c| c == "run" && cx.subcommands.contains(c)) => {}
        other => p.push(format!(
            "CMD must be the exec form [\"run\", ...], is {other:?}"
        )),
    }
    p
}
