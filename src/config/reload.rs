//! Reload: which keys SIGHUP applies, and which changed keys wait for a restart.

use std::collections::{BTreeMap, BTreeSet};

use super::Config;
use super::load::flatten;

/// Keys SIGHUP applies (see `node::reloadable`); a change to any other key waits for a restart.
const RELOADABLE_KEYS: [&str; 23] = [
    "tls_cert",
    "tls_key",
    "limits.connections_max",
    "limits.handshake_timeout_ms",
    "limits.idle_timeout_ms",
    "limits.ping_interval_ms",
    "limits.frame_stall_timeout_ms",
    "limits.write_stall_timeout_ms",
    "limits.send_queue_bytes_max",
    "limits.subscriptions_per_conn_max",
    "limits.proof_failures_per_conn_max",
    "limits.ip_connections_per_s",
    "limits.ip_connections_burst",
    "limits.ip_bytes_per_s",
    "limits.ip_bytes_burst",
    "limits.ip_proof_failures_per_s",
    "limits.ip_proof_failures_burst",
    "limits.ip_table_entries_max",
    "limits.ip_connections_max",
    "limits.ip_proofs_per_s",
    "limits.ip_proofs_burst",
    "limits.proofs_per_conn_per_s",
    "limits.proofs_per_conn_burst",
];

impl Config {
    /// The keys whose value differs between `self` (running) and `next` that only a restart
    /// applies, dotted (`listen`, `limits.tick_ms`), sorted.
    pub fn restart_keys(&self, next: &Config) -> anyhow::Result<Vec<String>> {
        let flat = |c: &Config| -> anyhow::Result<BTreeMap<String, toml::Value>> {
            let mut out = Vec::new();
            flatten(&toml::Value::try_from(c)?, "", &mut out);
            Ok(out.into_iter().collect())
        };
        let (old, new) = (flat(self)?, flat(next)?);
        let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        Ok(keys
            .into_iter()
            .filter(|k| !RELOADABLE_KEYS.contains(&k.as_str()) && old.get(*k) != new.get(*k))
            .cloned()
            .collect())
    }
}
