//! Validation: every numeric key's allowed range, and the rules that tie keys together (listeners,
//! plaintext consent, rates and bursts, timeouts, TCP keepalive, prekeys, push, media).

use std::net::SocketAddr;

use anyhow::bail;

use super::{Config, SHARDS_MAX};

/// One numeric key's allowed range, inclusive. Every integer key has one (a unit test checks),
/// so an absurd value (`shards = 99999999999`) is refused by name instead of starting a node
/// that fails later or silently misbehaves.
pub(super) struct Bound {
    pub(super) key: &'static str,
    /// `None`: the value does not fit an `i128` (cannot happen for the field types used).
    pub(super) value: Option<i128>,
    pub(super) min: i128,
    pub(super) max: i128,
    /// Why the range is what it is, when the numbers alone do not say.
    why: &'static str,
}

fn bound(key: &'static str, value: impl TryInto<i128>, min: i128, max: i128) -> Bound {
    Bound {
        key,
        value: value.try_into().ok(),
        min,
        max,
        why: "",
    }
}

impl Bound {
    fn because(self, why: &'static str) -> Bound {
        Bound { why, ..self }
    }
}

const KIB: i128 = 1 << 10;

const MIB: i128 = 1 << 20;

const GIB: i128 = 1 << 30;

const TIB: i128 = 1 << 40;

const PIB: i128 = 1 << 50;

const MINUTE_S: i128 = 60;

const HOUR_S: i128 = 3_600;

/// The kernel's `TCP_KEEPIDLE` and `TCP_KEEPINTVL` limit: 32,767 s.
const TCP_KEEPALIVE_MS_MAX: i128 = 32_767_000;

const DAY_S: i128 = 86_400;

const YEAR_S: i128 = 365 * DAY_S;

/// Upper bound of every per-second rate counted in events (connections, fetches, wakes).
const EVENTS_PER_S_MAX: i128 = 1_000_000;

/// Upper bound of every table or queue counted in entries.
const ENTRIES_MAX: i128 = 1 << 24;

impl Config {
    /// Refuses configurations that would start a node in a state the operator did not ask for.
    pub fn validate(&self) -> anyhow::Result<()> {
        for b in self.bounds() {
            match b.value {
                Some(v) if (b.min..=b.max).contains(&v) => {}
                value => {
                    let v = value.map_or_else(|| "(too large)".to_string(), |v| v.to_string());
                    let why = if b.why.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", b.why)
                    };
                    bail!(
                        "{} = {v} is out of range: allowed {} to {}{why}",
                        b.key,
                        b.min,
                        b.max
                    );
                }
            }
        }
        if self.listen.is_empty() && self.listen_tls.is_empty() {
            bail!("no listener: set `listen` or `listen_tls`");
        }
        if !self.insecure_plaintext {
            if let Some(a) = self.listen.iter().find(|a| !a.ip().is_loopback()) {
                bail!(
                    "refusing plain TCP on non-loopback {a}: use listen_tls with a certificate, or pass --insecure-plaintext if a TLS proxy is in front"
                );
            }
        }
        if !self.listen_tls.is_empty() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            bail!("listen_tls needs tls_cert and tls_key");
        }
        if !self.admin_listen.ip().is_loopback() && self.admin_token_file.is_none() {
            bail!(
                "admin endpoint on non-loopback {} needs admin_token_file",
                self.admin_listen
            );
        }
        self.check_listeners_distinct()?;
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!(
                "log_format must be `text` or `json`, not `{}`",
                self.log_format
            );
        }
        self.check_engine()?;
        let l = &self.limits;
        for (rate, burst, name) in [
            (
                l.ip_connections_per_s,
                l.ip_connections_burst,
                "ip_connections",
            ),
            (l.ip_bytes_per_s, l.ip_bytes_burst, "ip_bytes"),
            (
                l.ip_proof_failures_per_s,
                l.ip_proof_failures_burst,
                "ip_proof_failures",
            ),
            (l.ip_proofs_per_s, l.ip_proofs_burst, "ip_proofs"),
            (
                l.proofs_per_conn_per_s,
                l.proofs_per_conn_burst,
                "proofs_per_conn",
            ),
        ] {
            if rate > 0 && burst == 0 {
                bail!(
                    "limits.{name}_burst must be at least 1 when limits.{name}_per_s is set (0 = unlimited)"
                );
            }
        }
        if l.tick_ms
            > l.handshake_timeout_ms
                .min(l.frame_stall_timeout_ms)
                .min(l.write_stall_timeout_ms)
        {
            bail!("limits.tick_ms must not exceed the shortest timeout");
        }
        self.fsync_policy()?;
        if l.ping_interval_ms > 0
            && l.idle_timeout_ms > 0
            && l.ping_interval_ms >= l.idle_timeout_ms
        {
            bail!("limits.ping_interval_ms must be below limits.idle_timeout_ms");
        }
        if l.tcp_keepalive_idle_ms > 0 && l.tcp_keepalive_idle_ms < 1_000 {
            bail!(
                "limits.tcp_keepalive_idle_ms must be 0 (no keepalive) or at least 1000 (the kernel \
                 counts whole seconds)"
            );
        }
        // With a user timeout, Linux drops a connection once it has waited that long since the
        // last byte received and one probe is out (tcp(7)): shorter than the probes, it would cut
        // them short, and one lost probe would end a live connection.
        let probes_ms = l.tcp_keepalive_idle_ms.saturating_add(
            l.tcp_keepalive_interval_ms
                .saturating_mul(u64::from(l.tcp_keepalive_probes)),
        );
        if l.tcp_keepalive_idle_ms > 0
            && l.tcp_user_timeout_ms > 0
            && l.tcp_user_timeout_ms < probes_ms
        {
            bail!(
                "limits.tcp_user_timeout_ms must be 0 or at least tcp_keepalive_idle_ms + \
                 tcp_keepalive_probes × tcp_keepalive_interval_ms ({probes_ms})"
            );
        }
        self.validate_service()?;
        self.validate_media()?;
        Ok(())
    }

    /// Every numeric key with its allowed range.
    pub(super) fn bounds(&self) -> Vec<Bound> {
        let (l, k, p, m) = (&self.limits, &self.prekeys, &self.push, &self.media);
        let frame = ferry_proto::limits::FRAME_BYTES_MAX as i128;
        vec![
            bound("shards", self.shards, 0, SHARDS_MAX as i128).because("0 = one per CPU"),
            bound("clock_offset_s", self.clock_offset_s, -100 * YEAR_S, 100 * YEAR_S),
            bound("stop_timeout_s", self.stop_timeout_s, 1, HOUR_S),
            bound("limits.connections_max", l.connections_max, 1, 100_000_000),
            bound("limits.handshake_timeout_ms", l.handshake_timeout_ms, 1, 600_000),
            bound("limits.idle_timeout_ms", l.idle_timeout_ms, 0, DAY_S * 1000).because("0 = never"),
            bound("limits.ping_interval_ms", l.ping_interval_ms, 0, DAY_S * 1000).because("0 = never"),
            // The kernel takes whole seconds, 1 to 32,767 (tcp(7)).
            bound("limits.tcp_keepalive_idle_ms", l.tcp_keepalive_idle_ms, 0, TCP_KEEPALIVE_MS_MAX)
                .because("0 = no keepalive; else at least 1000"),
            bound("limits.tcp_keepalive_interval_ms", l.tcp_keepalive_interval_ms, 1_000, TCP_KEEPALIVE_MS_MAX),
            bound("limits.tcp_keepalive_probes", l.tcp_keepalive_probes, 1, 127),
            bound("limits.tcp_user_timeout_ms", l.tcp_user_timeout_ms, 0, DAY_S * 1000)
                .because("0 = the kernel's default"),
            bound("limits.frame_stall_timeout_ms", l.frame_stall_timeout_ms, 1, 600_000),
            bound("limits.write_stall_timeout_ms", l.write_stall_timeout_ms, 1, 600_000),
            bound("limits.send_queue_bytes_max", l.send_queue_bytes_max, 2 * frame, GIB)
                .because("at least two maximal frames"),
            bound("limits.subscriptions_per_conn_max", l.subscriptions_per_conn_max, 1, 1_000_000),
            bound("limits.proof_failures_per_conn_max", l.proof_failures_per_conn_max, 1, 1_000_000),
            bound("limits.ip_connections_per_s", l.ip_connections_per_s, 0, EVENTS_PER_S_MAX)
                .because("0 = unlimited"),
            bound("limits.ip_connections_burst", l.ip_connections_burst, 0, EVENTS_PER_S_MAX),
            bound("limits.ip_bytes_per_s", l.ip_bytes_per_s, 0, TIB).because("0 = unlimited"),
            bound("limits.ip_bytes_burst", l.ip_bytes_burst, 0, TIB),
            bound("limits.ip_proof_failures_per_s", l.ip_proof_failures_per_s, 0, EVENTS_PER_S_MAX)
                .because("0 = unlimited"),
            bound("limits.ip_proof_failures_burst", l.ip_proof_failures_burst, 0, EVENTS_PER_S_MAX),
            bound("limits.ip_table_entries_max", l.ip_table_entries_max, 1, ENTRIES_MAX),
            bound("limits.ip_connections_max", l.ip_connections_max, 0, 100_000_000)
                .because("0 = unlimited"),
            bound("limits.ip_proofs_per_s", l.ip_proofs_per_s, 0, EVENTS_PER_S_MAX)
                .because("0 = unlimited"),
            bound("limits.ip_proofs_burst", l.ip_proofs_burst, 0, EVENTS_PER_S_MAX),
            bound("limits.proofs_per_conn_per_s", l.proofs_per_conn_per_s, 0, EVENTS_PER_S_MAX)
                .because("0 = unlimited"),
            bound("limits.proofs_per_conn_burst", l.proofs_per_conn_burst, 0, EVENTS_PER_S_MAX),
            bound("limits.fds_reserved", l.fds_reserved, 0, 1_000_000),
            bound("limits.hop_queue_msgs_max", l.hop_queue_msgs_max, 1, ENTRIES_MAX),
            bound("limits.hop_channel_batches", l.hop_channel_batches, 1, 65_536),
            bound("limits.read_buffer_bytes", l.read_buffer_bytes, 4 * KIB, 16 * MIB),
            bound("limits.drain_grace_ms", l.drain_grace_ms, 0, 60_000),
            bound("limits.listen_backlog", l.listen_backlog, 1, 1 << 20),
            bound("limits.tick_ms", l.tick_ms, 1, 10_000),
            bound("limits.io_memory_bytes", l.io_memory_bytes, 64 * KIB, GIB),
            bound("limits.store_segment_bytes", l.store_segment_bytes, 128 * KIB, 2 * GIB)
                .because("the largest packet must fit a segment"),
            bound("limits.store_segment_roll_s", l.store_segment_roll_s, 1, 30 * DAY_S),
            bound("limits.store_ttl_max_s", l.store_ttl_max_s, 1, YEAR_S),
            bound("limits.store_dest_blobs_max", l.store_dest_blobs_max, 1, 100_000_000),
            bound("limits.store_dest_bytes_max", l.store_dest_bytes_max, 1, TIB),
            bound("limits.store_disk_bytes_max", l.store_disk_bytes_max, 1, PIB),
            bound("limits.store_high_water_percent", l.store_high_water_percent, 1, 100),
            bound("limits.store_source_share_percent", l.store_source_share_percent, 1, 100),
            bound("limits.store_source_dest_share_percent", l.store_source_dest_share_percent, 1, 100),
            bound("limits.store_pressure_percent", l.store_pressure_percent, 1, 100)
                .because("at or above store_high_water_percent: off"),
            bound("limits.store_sources_max", l.store_sources_max, 1, ENTRIES_MAX),
            bound("limits.store_source_ipv4_prefix_bits", l.store_source_ipv4_prefix_bits, 8, 32),
            bound("limits.store_source_ipv6_prefix_bits", l.store_source_ipv6_prefix_bits, 16, 64)
                .because("an IPv6 source is at most its /64"),
            bound("limits.service_queue_msgs_max", l.service_queue_msgs_max, 1, ENTRIES_MAX),
            bound("limits.service_replies_msgs_max", l.service_replies_msgs_max, 1, ENTRIES_MAX),
            bound("limits.memory_bytes_max", l.memory_bytes_max, 0, PIB)
                .because("0 = half of the host's memory or cgroup limit"),
            bound("limits.puzzle_levels", l.puzzle_levels, 0, 16)
                .because("0 = no puzzles; PUZZLE_LEVELS_MAX"),
            bound("limits.puzzle_effort_max", l.puzzle_effort_max, 1, 1 << 20)
                .because("PUZZLE_EFFORT_MAX: clients refuse more"),
            bound("limits.puzzle_seed_period_s", l.puzzle_seed_period_s, 60, 3_600)
                .because("at most an epoch"),
            bound("limits.puzzle_dest_fill_pct_min", l.puzzle_dest_fill_pct_min, 1, 100),
            bound("limits.puzzle_store_fill_pct_min", l.puzzle_store_fill_pct_min, 1, 100),
            bound(
                "limits.puzzle_checks_per_conn_per_s",
                l.puzzle_checks_per_conn_per_s,
                0,
                EVENTS_PER_S_MAX,
            )
            .because("0 = unlimited"),
            bound(
                "limits.puzzle_checks_per_conn_burst",
                l.puzzle_checks_per_conn_burst,
                0,
                EVENTS_PER_S_MAX,
            ),
            bound("limits.puzzle_answers_seen_max", l.puzzle_answers_seen_max, 1, ENTRIES_MAX),
            bound("limits.puzzle_capabilities_max", l.puzzle_capabilities_max, 1, ENTRIES_MAX),
            bound(
                "limits.puzzle_capability_ttl_max_s",
                l.puzzle_capability_ttl_max_s,
                3_600,
                30 * DAY_S,
            ),
            bound("prekeys.slots_max", k.slots_max, 1, 100_000_000),
            bound("prekeys.bytes_max", k.bytes_max, 1, TIB),
            bound("prekeys.slot_ttl_s", k.slot_ttl_s, 1, YEAR_S),
            bound("prekeys.fetch_per_addr_per_s", k.fetch_per_addr_per_s, 0, EVENTS_PER_S_MAX)
                .because("0 = unlimited"),
            bound("prekeys.fetch_per_addr_burst", k.fetch_per_addr_burst, 0, EVENTS_PER_S_MAX),
            bound("prekeys.one_time_per_slot_per_hour", k.one_time_per_slot_per_hour, 0, EVENTS_PER_S_MAX)
                .because("0 = unlimited"),
            bound("prekeys.one_time_per_slot_burst", k.one_time_per_slot_burst, 0, EVENTS_PER_S_MAX),
            bound("prekeys.one_time_per_source_per_hour", k.one_time_per_source_per_hour, 0, EVENTS_PER_S_MAX)
                .because("0 = unlimited"),
            bound("prekeys.one_time_per_source_burst", k.one_time_per_source_burst, 0, EVENTS_PER_S_MAX),
            bound("prekeys.upload_per_addr_per_s", k.upload_per_addr_per_s, 0, EVENTS_PER_S_MAX)
                .because("0 = unlimited"),
            bound("prekeys.upload_per_addr_burst", k.upload_per_addr_burst, 0, EVENTS_PER_S_MAX),
            bound("prekeys.rate_entries_max", k.rate_entries_max, 1, ENTRIES_MAX),
            bound("push.coalesce_window_s", p.coalesce_window_s, 1, DAY_S),
            bound("push.registration_ttl_max_s", p.registration_ttl_max_s, 1, YEAR_S),
            bound("push.registrations_max", p.registrations_max, 1, 100_000_000),
            bound("push.dests_per_token_max", p.dests_per_token_max, 1, ferry_shards::push::DESTS_PER_TOKEN_MAX as i128),
            bound("push.queue_max", p.queue_max, 1, ENTRIES_MAX),
            bound("push.inflight_max", p.inflight_max, 1, 65_536),
            bound("push.retries_max", p.retries_max, 0, 100),
            bound("push.retry_base_ms", p.retry_base_ms, 1, HOUR_S * 1000),
            bound("push.apns_token_refresh_s", p.apns_token_refresh_s, 20 * MINUTE_S, HOUR_S)
                .because("Apple refuses tokens refreshed more often than every 20 minutes or older than an hour"),
            bound("push.apns_rate_per_s", p.apns_rate_per_s, 0, EVENTS_PER_S_MAX),
            bound("push.fcm_ttl_s", p.fcm_ttl_s, 0, 28 * DAY_S).because("FCM keeps a message at most 28 days"),
            bound("push.fcm_rate_per_s", p.fcm_rate_per_s, 0, EVENTS_PER_S_MAX),
            bound("push.webpush_ttl_s", p.webpush_ttl_s, 0, 28 * DAY_S),
            bound("push.webpush_rate_per_s", p.webpush_rate_per_s, 0, EVENTS_PER_S_MAX),
            bound("media.blob_bytes_max", m.blob_bytes_max, 1, 64 * GIB),
            bound("media.ttl_s", m.ttl_s, 1, YEAR_S),
            bound("media.disk_bytes_max", m.disk_bytes_max, 1, PIB),
            bound("media.upload_bytes_per_conn_per_s", m.upload_bytes_per_conn_per_s, 0, TIB)
                .because("0 = unlimited"),
            bound("media.upload_bytes_per_conn_burst", m.upload_bytes_per_conn_burst, 0, TIB),
            bound("media.queue_msgs_max", m.queue_msgs_max, 1, 1 << 20),
            bound("media.uploads_per_core_max", m.uploads_per_core_max, 1, 65_536),
            bound("media.uploads_per_source_max", m.uploads_per_source_max, 1, 65_536),
            bound("media.upload_idle_s", m.upload_idle_s, 1, DAY_S)
                .because("an idle upload holds a file and its source's upload slot"),
        ]
    }

    /// Two listeners on one address would share its port through `SO_REUSEPORT` (plain and TLS
    /// connections mixed on one port), or fail later with a less clear error.
    fn check_listeners_distinct(&self) -> anyhow::Result<()> {
        let mut all: Vec<(SocketAddr, &str)> = Vec::new();
        all.extend(self.listen.iter().map(|a| (*a, "listen")));
        all.extend(self.listen_tls.iter().map(|a| (*a, "listen_tls")));
        all.push((self.admin_listen, "admin_listen"));
        if let Some(a) = self.media_http_addr()? {
            all.push((a, "media.http_listen"));
        }
        for (i, (a, a_key)) in all.iter().enumerate() {
            for (b, b_key) in &all[i + 1..] {
                if overlaps(*a, *b) {
                    bail!("{a_key} {a} and {b_key} {b} overlap: give every listener its own port");
                }
            }
        }
        Ok(())
    }
}

/// Whether binding both would collide: the same port and family, and the same address or a
/// wildcard. Port 0 is a fresh port each time.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl Config {
    fn validate_media(&self) -> anyhow::Result<()> {
        let m = &self.media;
        if m.uploads_per_source_max > m.uploads_per_core_max {
            bail!("media.uploads_per_source_max must not exceed media.uploads_per_core_max");
        }
        if m.upload_bytes_per_conn_per_s > 0
            && m.upload_bytes_per_conn_burst < ferry_proto::limits::FRAME_BYTES_MAX as u64
        {
            bail!(
                "media.upload_bytes_per_conn_burst must hold at least one chunk ({} bytes)",
                ferry_proto::limits::FRAME_BYTES_MAX
            );
        }
        if let Some(a) = self.media_http_addr()? {
            if !a.ip().is_loopback() && !self.insecure_plaintext {
                bail!(
                    "refusing media.http_listen on non-loopback {a}: put a TLS proxy or CDN in front and pass --insecure-plaintext"
                );
            }
        }
        Ok(())
    }

    fn validate_service(&self) -> anyhow::Result<()> {
        let k = &self.prekeys;
        for (rate, burst, name) in [(
            k.fetch_per_addr_per_s,
            k.fetch_per_addr_burst,
            "fetch_per_addr",
        )] {
            if rate > 0 && burst == 0 {
                bail!("prekeys.{name}_burst must be at least 1 when prekeys.{name}_per_s is set");
            }
        }
        for (rate, burst, name) in [
            (
                k.one_time_per_slot_per_hour,
                k.one_time_per_slot_burst,
                "one_time_per_slot",
            ),
            (
                k.one_time_per_source_per_hour,
                k.one_time_per_source_burst,
                "one_time_per_source",
            ),
        ] {
            if rate > 0 && burst == 0 {
                bail!(
                    "prekeys.{name}_burst must be at least 1 when prekeys.{name}_per_hour is set"
                );
            }
        }
        let p = &self.push;
        if !p.apns_key_file.is_empty()
            && (p.apns_key_id.is_empty() || p.apns_team_id.is_empty() || p.apns_topic.is_empty())
        {
            bail!("push.apns_key_file needs push.apns_key_id, apns_team_id and apns_topic");
        }
        if !matches!(p.fcm_priority.as_str(), "high" | "normal") {
            bail!("push.fcm_priority must be `high` or `normal`");
        }
        let subject_ok =
            p.webpush_subject.starts_with("mailto:") || p.webpush_subject.starts_with("https:");
        if !p.webpush_vapid_key_file.is_empty() && !subject_ok {
            bail!("push.webpush_subject must be a `mailto:` or `https:` contact (RFC 8292)");
        }
        ferry_shards::push::endpoint::AllowList::parse(&p.webpush_origins_allowed)?;
        Ok(())
    }
}
