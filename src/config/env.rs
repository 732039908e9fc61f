//! Environment overrides: `FERRY_<KEY>` and `FERRY_LIMITS_<KEY>` onto the keys that exist, typed
//! like their defaults.

use anyhow::{Context, bail};

use super::Config;
use super::load::nearest;

/// Overlays `FERRY_<KEY>` / `FERRY_LIMITS_<KEY>` onto the keys that exist, typed like the default.
pub(super) fn apply_env(value: &mut toml::Value, env: &[(String, String)]) -> anyhow::Result<()> {
    let defaults = toml::Value::try_from(Config::default())?;
    let mut known: Vec<(Vec<String>, String)> = Vec::new();
    collect_keys(&defaults, &mut Vec::new(), &mut known);
    // Optional keys are absent from the serialised defaults; they are paths.
    for k in ["tls_cert", "tls_key", "admin_token_file"] {
        known.push((vec![k.to_string()], "path".into()));
    }
    for (name, raw) in env {
        let Some((path, kind)) = known.iter().find(|(p, _)| env_name(p) == *name) else {
            if name.starts_with("FERRY_") && !IGNORED_ENV.contains(&name.as_str()) {
                let names: Vec<String> = known.iter().map(|(p, _)| env_name(p)).collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let hint = nearest(name, &names)
                    .map(|n| format!("; did you mean {n}?"))
                    .unwrap_or_default();
                bail!("unknown configuration variable {name}{hint}");
            }
            continue;
        };
        let parsed = parse_env(kind, raw).with_context(|| format!("{name}={raw}"))?;
        let mut at = &mut *value;
        for (i, seg) in path.iter().enumerate() {
            let table = at.as_table_mut().context("config is not a table")?;
            if i + 1 == path.len() {
                table.insert(seg.clone(), parsed.clone());
                break;
            }
            at = table
                .entry(seg.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()));
        }
    }
    Ok(())
}

/// `FERRY_*` names that are not configuration keys.
const IGNORED_ENV: &[&str] = &["FERRY_CONFIG", "FERRY_LOG"];

fn env_name(path: &[String]) -> String {
    format!("FERRY_{}", path.join("_").to_uppercase())
}

pub(super) fn collect_keys(
    v: &toml::Value,
    path: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, String)>,
) {
    if let toml::Value::Table(t) = v {
        for (k, v) in t {
            path.push(k.clone());
            if v.is_table() {
                collect_keys(v, path, out);
            } else {
                let kind = match v {
                    toml::Value::Integer(_) => "int",
                    toml::Value::Boolean(_) => "bool",
                    toml::Value::Array(_) => "list",
                    _ => "string",
                };
                out.push((path.clone(), kind.into()));
            }
            path.pop();
        }
    }
}

fn parse_env(kind: &str, raw: &str) -> anyhow::Result<toml::Value> {
    Ok(match kind {
        "int" => toml::Value::Integer(raw.trim().parse().context("expected an integer")?),
        "bool" => toml::Value::Boolean(match raw.trim() {
            "1" | "true" | "yes" => true,
            "0" | "false" | "no" => false,
            _ => bail!("expected true or false"),
        }),
        "list" => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.into()))
                .collect(),
        ),
        _ => toml::Value::String(raw.to_string()),
    })
}
