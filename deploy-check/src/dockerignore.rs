//! `.dockerignore` matching, as the Docker builder does it for the patterns this repository uses: each pattern is
//! anchored at the context root, `*` and `?` match within one path segment, `**` matches any number of segments,
//! a pattern that matches a directory excludes everything below it, `!` re-includes, and the last matching
//! pattern wins. Character classes (`[...]`) are not supported and are reported as an error.

use crate::CheckError;

/// The parsed patterns of a .dockerignore.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<(bool, Vec<String>)>,
}

impl DockerIgnore {
    pub fn parse(text: &str) -> Result<DockerIgnore, CheckError> {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            if l.contains('[') {
                return Err(CheckError::invalid(
                    ".dockerignore",
                    format!("character classes are not supported by this checker: {l}"),
                ));
            }
            let (neg, pat) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            let segs = pat
                .trim_start_matches('/')
                .trim_end_matches('/')
                .split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .map(str::to_string)
                .collect();
            patterns.push((neg, segs));
        }
        Ok(DockerIgnore { patterns })
    }

    /// Whether `path` (relative to the context root, `/`-separated) is left out of the build context.
    pub fn excluded(&self, path: &str) -> bool {
        let segs: Vec<&str> = path
            .trim_start_matches("./")
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect();
        let mut out = false;
        for (neg, pat) in &self.patterns {
            // The path itself or any of its parent directories.
            let hit = (1..=segs.len()).any(|n| match_segs(pat, &segs[..n]));
            if hit {
                out = !neg;
            }
        }
        out
    }
}

fn match_segs(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| match_segs(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((p, prest)) => {
                match_one(first.as_bytes(), p.as_bytes()) && match_segs(rest, prest)
            }
            None => false,
        },
    }
}

fn match_one(pat: &[u8], s: &[u8]) -> bool {
    match pat.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| match_one(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && match_one(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && match_one(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchored_patterns_globs_directories_and_negation() {
        let d = DockerIgnore::parse(
            "# c\n.git\ntarget\n**/*.swp\ndocs/*.md\n!docs/keep.md\n/target-*\n",
        )
        .expect("parse");
        assert!(d.excluded(".git"));
        assert!(d.excluded(".git/config"));
        assert!(d.excluded("target/release/ipamd"));
        assert!(!d.excluded("ipamd/target"), "anchored at the root");
        assert!(d.excluded("a/b/c.swp"));
        assert!(d.excluded("x.swp"));
        assert!(d.excluded("docs/a.md"));
        assert!(!d.excluded("docs/keep.md"));
        assert!(!d.excluded("docs/sub/a.md"), "* stays in one segment");
        assert!(d.excluded("target-deploy/x"));
        assert!(!d.excluded("Cargo.toml"));
        assert!(!d.excluded("deploy/10-aws.conflist.tmpl"));
        assert!(DockerIgnore::parse("[ab]\n").is_err());
    }
}
