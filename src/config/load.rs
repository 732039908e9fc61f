//! Loading: the built-in defaults, then the TOML file (unknown keys refused with the nearest known
//! one), then the environment; parse and type errors as one line naming the file and key.

use std::path::Path;

use anyhow::{Context, anyhow};

use super::Config;
use super::env::apply_env;

impl Config {
    /// Defaults, then the TOML file, then `FERRY_*` variables from `env`. Every error is one
    /// line naming the file or variable and the key.
    pub fn load(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let defaults = toml::Value::try_from(Config::default()).context("serialising defaults")?;
        let mut value = defaults.clone();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let file_value: toml::Value = toml::from_str(&text).map_err(|e| {
                anyhow!(
                    "parsing {}: {}",
                    path.display(),
                    parse_error_line(&text, &e)
                )
            })?;
            check_keys(&file_value, &defaults, "")
                .map_err(|e| anyhow!("{e} in {}{}", path.display(), e.suggestion()))?;
            merge(&mut value, file_value);
            // Wrong types are errors, with the file named.
            let _: Config = value
                .clone()
                .try_into()
                .map_err(|e| anyhow!("{} in {}", de_error_line(&e), path.display()))?;
        }
        let env: Vec<(String, String)> = env.filter(|(k, _)| k.starts_with("FERRY_")).collect();
        apply_env(&mut value, &env)?;
        let cfg: Config = value
            .try_into()
            .map_err(|e| anyhow!("invalid configuration: {}", de_error_line(&e)))?;
        Ok(cfg)
    }
}

/// Optional top-level keys: absent from the serialised defaults, so listed here.
const OPTIONAL_KEYS: [&str; 3] = ["tls_cert", "tls_key", "admin_token_file"];

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(bv) if bv.is_table() && v.is_table() => merge(bv, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

pub(super) fn flatten(v: &toml::Value, prefix: &str, out: &mut Vec<(String, toml::Value)>) {
    if let toml::Value::Table(t) = v {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            flatten(v, &key, out);
        }
    } else {
        out.push((prefix.to_string(), v.clone()));
    }
}

/// A key the file sets that ferry does not know, with the nearest known one.
#[derive(Debug)]
struct UnknownKey {
    key: String,
    nearest: Option<String>,
}

impl std::fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown key `{}`", self.key)
    }
}

impl UnknownKey {
    fn suggestion(&self) -> String {
        self.nearest
            .as_ref()
            .map(|n| format!("; did you mean `{n}`?"))
            .unwrap_or_default()
    }
}

/// Refuses keys of `file` that are not in `known` (the serialised defaults), naming the nearest
/// known key when one is close enough to be a typo: in the same table, or in another
/// (`idle_timeout_ms` at the top level instead of in `[limits]`: `limits.idle_timeout_ms`).
fn check_keys(file: &toml::Value, known: &toml::Value, prefix: &str) -> Result<(), UnknownKey> {
    let (Some(file), Some(known_table)) = (file.as_table(), known.as_table()) else {
        return Ok(()); // a table where a value belongs: the type check names it
    };
    for (k, v) in file {
        let full = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match known_table.get(k) {
            Some(kv) => check_keys(v, kv, &full)?,
            None if prefix.is_empty() && OPTIONAL_KEYS.contains(&k.as_str()) => {}
            None => {
                // Siblings first, so that a tie goes to the same table.
                let mut candidates: Vec<(String, String)> =
                    known_table.keys().map(|s| (s.clone(), s.clone())).collect();
                if prefix.is_empty() {
                    candidates.extend(OPTIONAL_KEYS.iter().map(|s| (s.to_string(), s.to_string())));
                }
                if let Ok(defaults) = toml::Value::try_from(Config::default()) {
                    let mut all = Vec::new();
                    flatten(&defaults, "", &mut all);
                    candidates.extend(all.into_iter().map(|(path, _)| {
                        let leaf = path.rsplit('.').next().unwrap_or_default().to_string();
                        (leaf, path)
                    }));
                }
                let leaves: Vec<&str> = candidates.iter().map(|(leaf, _)| leaf.as_str()).collect();
                let nearest = nearest(k, &leaves)
                    .and_then(|leaf| candidates.iter().find(|(l, _)| l == leaf))
                    .map(|(leaf, path)| {
                        if known_table.contains_key(leaf) {
                            leaf.clone()
                        } else {
                            path.clone()
                        }
                    });
                return Err(UnknownKey { key: full, nearest });
            }
        }
    }
    Ok(())
}

/// The candidate closest to `name` by edit distance (the first of equals), if close enough to
/// be a typo.
pub(super) fn nearest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let (best, distance) = candidates
        .iter()
        .map(|c| (*c, strsim::damerau_levenshtein(name, c)))
        .min_by_key(|(_, d)| *d)?;
    (distance <= (name.len() / 4).max(2)).then_some(best)
}

/// A TOML syntax error as one line: "line 3, column 7: invalid array, expected `]`".
fn parse_error_line(text: &str, e: &toml::de::Error) -> String {
    let message = one_line(e.message());
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// A type error as one line with the key first, in words rather than Rust type names:
/// "`shards`: invalid value: integer `-1`, expected a whole number ≥ 0".
fn de_error_line(e: &toml::de::Error) -> String {
    let text = e.to_string();
    let mut key = None;
    let mut parts = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.strip_prefix("in `").and_then(|k| k.strip_suffix('`')) {
            Some(k) => key = Some(k.to_string()),
            None => parts.push(line),
        }
    }
    let mut message = parts.join(", ");
    for (rust, words) in [
        ("expected usize", "expected a whole number ≥ 0"),
        ("expected u64", "expected a whole number ≥ 0"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected i64", "expected a whole number"),
        (
            "expected i32",
            "expected a whole number from -2147483648 to 2147483647",
        ),
        ("expected a sequence", "expected a list"),
    ] {
        message = message.replace(rust, words);
    }
    match key {
        Some(k) => format!("`{k}`: {message}"),
        None => message,
    }
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}
