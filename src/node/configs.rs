//! From the validated `Config` to what each part runs with: the shards' configurations and the
//! reloadable part, the memory budget per shard, the puzzle settings, the service core's
//! configuration (push credentials included) and the admin token.

use super::*;

/// The part of the configuration SIGHUP can change, as each shard applies it (the keys it reads
/// are `config::RELOADABLE_KEYS`: a reload names every other changed key as needing a restart).
pub(super) fn reloadable(cfg: &Config, shards: usize) -> anyhow::Result<Reloadable> {
    let l = &cfg.limits;
    let conn_limits = ConnLimits {
        handshake_timeout_ms: l.handshake_timeout_ms,
        idle_timeout_ms: l.idle_timeout_ms,
        ping_interval_ms: l.ping_interval_ms,
        frame_stall_timeout_ms: l.frame_stall_timeout_ms,
        write_stall_timeout_ms: l.write_stall_timeout_ms,
        send_queue_bytes_max: l.send_queue_bytes_max,
        subscriptions_max: l.subscriptions_per_conn_max,
        proof_failures_max: l.proof_failures_per_conn_max,
    };
    // Each shard sees a share of every address's traffic (the kernel spreads connections), so the
    // per-address rates are split across shards; bursts too, but never below one.
    let per = |v: u64| {
        if v == 0 {
            0
        } else {
            (v / shards as u64).max(1)
        }
    };
    let ip_limits = IpLimits {
        conns: Rate {
            per_s: per(l.ip_connections_per_s),
            burst: per(l.ip_connections_burst),
        },
        bytes: Rate {
            per_s: per(l.ip_bytes_per_s),
            burst: per(l.ip_bytes_burst),
        },
        proofs: Rate {
            per_s: per(l.ip_proofs_per_s),
            burst: per(l.ip_proofs_burst),
        },
        proofs_per_conn: Rate {
            per_s: l.proofs_per_conn_per_s,
            burst: l.proofs_per_conn_burst,
        },
        proof_failures: Rate {
            per_s: per(l.ip_proof_failures_per_s),
            burst: per(l.ip_proof_failures_burst),
        },
        connections_open_max: if l.ip_connections_max == 0 {
            0
        } else {
            (l.ip_connections_max / shards).max(1)
        },
        entries_max: l.ip_table_entries_max,
    };
    // Client connections stop `fds_reserved` short of the open-files limit, so the store, media,
    // the admin endpoint and refusals still get descriptors when clients hold all they may.
    let fds_for_connections = match sys::limits(sys::Resource::Nofile).0 {
        0 => usize::MAX, // unreadable: start-up already refused that
        nofile => usize::try_from(nofile.saturating_sub(l.fds_reserved)).unwrap_or(usize::MAX),
    };
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) if !cfg.listen_tls.is_empty() => Some(crate::tls::server_config(c, k)?),
        _ => None,
    };
    Ok(Reloadable {
        conn_limits,
        ip_limits,
        connections_max: (l.connections_max.min(fds_for_connections) / shards).max(1),
        tls,
    })
}

/// Each shard's share of the node's memory budget (`limits.memory_bytes_max`, or derived from
/// the host when 0). Shards share nothing: each enforces its own share.
pub(super) fn memory_bytes_per_shard(cfg: &Config, shards: usize) -> anyhow::Result<usize> {
    let node = match cfg.limits.memory_bytes_max {
        0 => sys::memory_budget_default().context(
            "cannot read the host's memory (/proc/meminfo): set limits.memory_bytes_max",
        )?,
        n => n,
    };
    let per = usize::try_from(node / shards as u64).unwrap_or(usize::MAX);
    let min = ferry_shards::shard::MEMORY_BYTES_MIN;
    if per < min {
        anyhow::bail!(
            "limits.memory_bytes_max = {node} gives each of {shards} shards {per} bytes; each needs at least {min}: raise it or run fewer shards"
        );
    }
    Ok(per)
}

pub(super) fn shard_configs(
    cfg: &Config,
    r: &Reloadable,
    shards: usize,
    node_id: [u8; 32],
    puzzle: &ferry_shards::puzzle::PuzzleConfig,
) -> anyhow::Result<Vec<ShardConfig>> {
    let l = &cfg.limits;
    let memory_bytes_max = memory_bytes_per_shard(cfg, shards)?;
    let store = if cfg.store_enabled {
        let per = |v: u64| (v / shards as u64).max(1);
        Some(StoreSpec {
            dir: cfg.data_dir.join("store"),
            limits: StoreLimits {
                segment_bytes: l.store_segment_bytes,
                segment_roll_s: l.store_segment_roll_s,
                ttl_max_s: l.store_ttl_max_s,
                dest_blobs_max: l.store_dest_blobs_max,
                dest_bytes_max: l.store_dest_bytes_max,
                disk_bytes_max: per(l.store_disk_bytes_max),
                high_water_percent: l.store_high_water_percent,
                sources: ferry_shards::store::fair::SourceLimits {
                    share_percent: l.store_source_share_percent,
                    dest_share_percent: l.store_source_dest_share_percent,
                    pressure_percent: l.store_pressure_percent,
                    sources_max: l.store_sources_max,
                    ipv4_prefix_bits: l.store_source_ipv4_prefix_bits,
                    ipv6_prefix_bits: l.store_source_ipv6_prefix_bits,
                },
            },
            policy: cfg.fsync_policy()?,
        })
    } else {
        None
    };
    (0..shards)
        .map(|i| {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            Ok(ShardConfig {
                shard: u16::try_from(i).context("too many shards")?,
                shards,
                node_id,
                seed,
                conn_limits: r.conn_limits.clone(),
                ip_limits: r.ip_limits,
                connections_max: r.connections_max,
                hop_queue_msgs_max: cfg.limits.hop_queue_msgs_max,
                store: store.clone(),
                media_upload_rate: ferry_shards::ratelimit::Rate {
                    per_s: cfg.media.upload_bytes_per_conn_per_s,
                    burst: cfg.media.upload_bytes_per_conn_burst,
                },
                memory_bytes_max,
                puzzle: puzzle.clone(),
            })
        })
        .collect()
}

/// The node's puzzle settings with a fresh seed key: made once per start and handed to every
/// shard (send puzzles) and to the service core (prekey fetch puzzles), so that every core
/// derives the same seed from it without sharing anything mutable.
pub(super) fn puzzle_config(cfg: &Config) -> anyhow::Result<ferry_shards::puzzle::PuzzleConfig> {
    let l = &cfg.limits;
    let mut puzzle_key = [0u8; 32];
    getrandom::fill(&mut puzzle_key).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(ferry_shards::puzzle::PuzzleConfig {
        key: puzzle_key,
        seed_period_s: l.puzzle_seed_period_s,
        levels: l.puzzle_levels,
        effort_max: l.puzzle_effort_max,
        dest_fill_pct_min: l.puzzle_dest_fill_pct_min,
        store_fill_pct_min: l.puzzle_store_fill_pct_min,
        checks_per_conn: ferry_shards::ratelimit::Rate {
            per_s: l.puzzle_checks_per_conn_per_s,
            burst: l.puzzle_checks_per_conn_burst,
        },
        answers_seen_max: l.puzzle_answers_seen_max,
        capabilities_max: l.puzzle_capabilities_max,
        capability_ttl_max_s: l.puzzle_capability_ttl_max_s,
    })
}

/// The service core's settings from the node configuration (reads the push credentials: a
/// missing or malformed key file stops start-up with its name).
pub(super) fn service_config(
    cfg: &Config,
    shards: usize,
    cpu: Option<usize>,
    clock: Clock,
    puzzle: &ferry_shards::puzzle::PuzzleConfig,
) -> anyhow::Result<crate::service::ServiceConfig> {
    use crate::service::providers;
    use ferry_shards::prekeys::DirectoryLimits;
    use ferry_shards::push::PushLimits;
    use ferry_shards::ratelimit::Rate;
    let k = &cfg.prekeys;
    let p = &cfg.push;
    let path = |s: &str| (!s.is_empty()).then(|| std::path::PathBuf::from(s));
    let webpush_origins_allowed =
        ferry_shards::push::endpoint::AllowList::parse(&p.webpush_origins_allowed)?;
    let mut prov = providers::Providers::default();
    if let Some(f) = path(&p.apns_key_file) {
        prov.apns = Some(providers::ApnsConfig {
            key: crate::service::load_p256(&f).context("push.apns_key_file")?,
            key_id: p.apns_key_id.clone(),
            team_id: p.apns_team_id.clone(),
            topic: p.apns_topic.clone(),
            url: p.apns_url.clone(),
            token_refresh_s: p.apns_token_refresh_s,
        });
    }
    if let Some(f) = path(&p.fcm_service_account_file) {
        let (key, client_email, project_id, token_uri) =
            crate::service::load_service_account(&f).context("push.fcm_service_account_file")?;
        prov.fcm = Some(providers::FcmConfig {
            key,
            client_email,
            project_id,
            token_url: if p.fcm_token_url.is_empty() {
                token_uri
            } else {
                p.fcm_token_url.clone()
            },
            url: p.fcm_url.clone(),
            priority: p.fcm_priority.clone(),
            ttl_s: p.fcm_ttl_s,
        });
    }
    if let Some(f) = path(&p.webpush_vapid_key_file) {
        prov.webpush = Some(providers::WebPushConfig {
            key: crate::service::load_p256(&f).context("push.webpush_vapid_key_file")?,
            subject: p.webpush_subject.clone(),
            ttl_s: p.webpush_ttl_s,
            origins_allowed: webpush_origins_allowed.clone(),
        });
    }
    Ok(crate::service::ServiceConfig {
        dir: cfg.data_dir.join("service"),
        shards,
        cpu,
        queue_max: cfg.limits.service_queue_msgs_max,
        replies_max: cfg.limits.service_replies_msgs_max,
        prekeys: k.enabled.then_some(DirectoryLimits {
            slots_max: k.slots_max,
            bytes_max: k.bytes_max,
            slot_ttl_s: k.slot_ttl_s,
            fetch_per_addr: Rate {
                per_s: k.fetch_per_addr_per_s,
                burst: k.fetch_per_addr_burst,
            },
            one_time_per_slot: ferry_shards::prekeys::HourlyRate {
                per_hour: k.one_time_per_slot_per_hour,
                burst: k.one_time_per_slot_burst,
            },
            one_time_per_source: ferry_shards::prekeys::HourlyRate {
                per_hour: k.one_time_per_source_per_hour,
                burst: k.one_time_per_source_burst,
            },
            upload_per_addr: Rate {
                per_s: k.upload_per_addr_per_s,
                burst: k.upload_per_addr_burst,
            },
            rate_entries_max: k.rate_entries_max,
            puzzle: puzzle.clone(),
        }),
        push: PushLimits {
            registrations_max: p.registrations_max,
            dests_per_token_max: p.dests_per_token_max,
            registration_ttl_max_s: p.registration_ttl_max_s,
            coalesce_window_ms: p
                .coalesce_window_s
                .checked_mul(1000)
                .context("push.coalesce_window_s is too large")?,
            webpush_origins_allowed,
            enabled: prov.enabled(),
        },
        send: ferry_shards::push::SendLimits {
            rate_per_s: [p.apns_rate_per_s, p.fcm_rate_per_s, p.webpush_rate_per_s],
            queue_max: p.queue_max,
            inflight_max: p.inflight_max,
            retries_max: p.retries_max,
            retry_base_ms: p.retry_base_ms,
        },
        providers: prov,
        ca_file: path(&p.ca_file),
        clock,
    })
}

pub(super) fn admin_token(cfg: &Config) -> anyhow::Result<Option<String>> {
    let Some(p) = &cfg.admin_token_file else {
        return Ok(None);
    };
    let token = std::fs::read_to_string(p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        bail!("admin token file {} is empty", p.display());
    }
    Ok(Some(token))
}
