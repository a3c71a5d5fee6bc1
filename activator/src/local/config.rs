//! The `--local` file: services to run on this machine, in TOML.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// Knative's default target when containerConcurrency is 0: 100 requests × 70 % utilisation.
pub(crate) const DEFAULT_TARGET: f64 = 100.0 * 0.7;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    service: Vec<Raw>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    command: Vec<String>,
    #[serde(default)]
    container_concurrency: u32,
    #[serde(default)]
    min_scale: u32,
    #[serde(default = "default_max_scale")]
    max_scale: u32,
    #[serde(default = "default_idle")]
    scale_to_zero_after_seconds: u64,
    #[serde(default = "default_timeout")]
    timeout_seconds: u64,
    #[serde(default)]
    readiness: Option<String>,
}

fn default_max_scale() -> u32 {
    4
}
fn default_idle() -> u64 {
    30
}
fn default_timeout() -> u64 {
    300
}

/// One service of the file.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Service {
    pub(crate) name: String,
    /// The program, resolved against the file's folder when relative, and its arguments.
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) container_concurrency: u32,
    pub(crate) min_scale: u32,
    pub(crate) max_scale: u32,
    pub(crate) idle: Duration,
    pub(crate) timeout: Duration,
    /// HTTP path for the queue-proxy's readiness probe; TCP when absent.
    pub(crate) readiness: Option<String>,
}

impl Service {
    /// Requests one instance should carry: cc, or Knative's default target.
    pub(crate) fn target(&self) -> f64 {
        if self.container_concurrency == 0 {
            DEFAULT_TARGET
        } else {
            f64::from(self.container_concurrency)
        }
    }

    /// Instances wanted for `load` requests in flight or waiting, within the scale bounds.
    pub(crate) fn desired(&self, load: usize) -> u32 {
        let want = (load as f64 / self.target()).ceil() as u32;
        want.clamp(self.min_scale, self.max_scale)
    }
}

/// The line (1-based) where `key` is set in the `index`-th `[[service]]` table, if it is.
fn line_of(text: &str, index: usize, key: &str) -> Option<usize> {
    let mut table = None::<usize>;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with("[[service]]") {
            table = Some(table.map_or(0, |i| i + 1));
            continue;
        }
        if table == Some(index)
            && let Some(rest) = t.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return Some(n + 1);
        }
    }
    None
}

/// Reads and checks the file; errors name the key and, where the parser knows it, the line.
pub(crate) fn load(path: &Path) -> Result<Vec<Service>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).map_err(|e| format!("{}: {e}", path.display()))
}

pub(crate) fn parse(text: &str, base: &Path) -> Result<Vec<Service>, String> {
    let file: File = toml::from_str(text).map_err(|e| {
        // toml's message names the key; add the line, which it gives as a byte span.
        let line = e.span().map(|s| {
            text.as_bytes()[..s.start.min(text.len())]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1
        });
        match line {
            Some(l) => format!("line {l}: {}", e.message()),
            None => e.message().to_owned(),
        }
    })?;
    let mut out = Vec::with_capacity(file.service.len());
    for (i, raw) in file.service.into_iter().enumerate() {
        let at = format!("service[{i}] ({})", raw.name);
        let bad = |key: &str, msg: String| match line_of(text, i, key) {
            Some(l) => format!("line {l}: {at}.{key}: {msg}"),
            None => format!("{at}.{key}: {msg}"),
        };
        if raw.name.is_empty()
            || !raw
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad(
                "name",
                format!("{:?} must be lower-case letters, digits and '-'", raw.name),
            ));
        }
        if out.iter().any(|s: &Service| s.name == raw.name) {
            return Err(bad("name", "listed twice".to_owned()));
        }
        let Some((program, args)) = raw.command.split_first() else {
            return Err(bad("command", "must name a program".to_owned()));
        };
        if raw.max_scale == 0 {
            return Err(bad("max_scale", "must be at least 1".to_owned()));
        }
        if raw.min_scale > raw.max_scale {
            return Err(bad(
                "min_scale",
                format!("{} is above max_scale {}", raw.min_scale, raw.max_scale),
            ));
        }
        if raw.timeout_seconds == 0 {
            return Err(bad("timeout_seconds", "must be at least 1".to_owned()));
        }
        if let Some(r) = &raw.readiness
            && !r.starts_with('/')
        {
            return Err(bad(
                "readiness",
                format!("{r:?} must be a path starting with '/'"),
            ));
        }
        let program = PathBuf::from(program);
        let program = if program.is_relative() && program.components().count() > 1 {
            base.join(program)
        } else {
            program
        };
        out.push(Service {
            name: raw.name,
            program,
            args: args.to_vec(),
            container_concurrency: raw.container_concurrency,
            min_scale: raw.min_scale,
            max_scale: raw.max_scale,
            idle: Duration::from_secs(raw.scale_to_zero_after_seconds),
            timeout: Duration::from_secs(raw.timeout_seconds),
            readiness: raw.readiness,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_with_knatives_defaults() {
        let s = parse(
            r#"
[[service]]
name = "hello"
command = ["./target/release/examples/hello"]
container_concurrency = 0
min_scale = 0
max_scale = 4
scale_to_zero_after_seconds = 30
timeout_seconds = 300
readiness = "/healthz"
"#,
            Path::new("/srv/app"),
        )
        .unwrap();
        assert_eq!(
            s[0].program,
            PathBuf::from("/srv/app/./target/release/examples/hello")
        );
        assert_eq!(s[0].desired(0), 0);
        assert_eq!(s[0].desired(1), 1);
        assert_eq!(s[0].desired(71), 2);
        assert_eq!(s[0].desired(10_000), 4);
        let bare = parse(
            "[[service]]\nname = \"py\"\ncommand = [\"python3\", \"-m\", \"http.server\"]\n",
            Path::new("/x"),
        )
        .unwrap();
        assert_eq!(
            bare[0].program,
            PathBuf::from("python3"),
            "a bare name is looked up in PATH"
        );
        assert_eq!(bare[0].max_scale, 4);
    }

    #[test]
    fn checks_after_parsing_also_name_the_line() {
        let e = parse(
            "[[service]]\nname = \"a\"\ncommand = [\"x\"]\n\n[[service]]\nname = \"b\"\ncommand = [\"x\"]\nmin_scale = 5\nmax_scale = 2\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.starts_with("line 8: service[1] (b).min_scale"), "{e}");
    }

    #[test]
    fn bad_keys_and_values_name_the_key_and_line() {
        let e = parse(
            "[[service]]\nname = \"a\"\ncommand = [\"x\"]\nmax_scael = 3\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("line 4") && e.contains("max_scael"), "{e}");
        let e = parse(
            "[[service]]\nname = \"a\"\ncommand = [\"x\"]\nmin_scale = -1\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("line 4"), "{e}");
        let e = parse("[[service]]\nname = \"a\"\ncommand = []\n", Path::new(".")).unwrap_err();
        assert!(e.contains("command"), "{e}");
        let e = parse(
            "[[service]]\nname = \"A b\"\ncommand = [\"x\"]\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("name"), "{e}");
    }
}
