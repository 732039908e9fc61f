//! Configuration: built-in defaults < TOML file < `FERRY_*` environment < command-line flags.
//!
//! Every key of [`Config`] can be set from the environment: `FERRY_<KEY>` for top-level keys and
//! `FERRY_LIMITS_<KEY>` for `[limits]`, upper-cased (`FERRY_SHARDS=4`,
//! `FERRY_LIMITS_IDLE_TIMEOUT_MS=60000`); lists are comma-separated.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The node's whole configuration. Every limit is a named key with a default.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Plain-TCP listeners. Non-loopback ones need `insecure_plaintext = true`.
    pub listen: Vec<SocketAddr>,
    /// TCP + TLS 1.3 listeners (need `tls_cert` and `tls_key`).
    pub listen_tls: Vec<SocketAddr>,
    /// PEM certificate chain and PKCS#8/SEC1/PKCS#1 private key for `listen_tls`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Allow plain TCP on non-loopback addresses (behind a TLS-terminating proxy, benchmarks).
    pub insecure_plaintext: bool,
    /// Admin HTTP endpoint (`/healthz`, `/readyz`, `/metrics`). Keep it on loopback.
    pub admin_listen: SocketAddr,
    /// File holding a bearer token `/metrics` requires; unset = no token.
    pub admin_token_file: Option<PathBuf>,
    /// Where the node keeps its identity key and its store (`store/`).
    pub data_dir: PathBuf,
    /// Shard cores; 0 = every CPU in the process's affinity mask but one (the service core), at
    /// least one.
    pub shards: usize,
    /// Seconds added to the wall clock (tests inject time with it; leave 0 in production).
    pub clock_offset_s: i64,
    /// Store blobs for offline recipients (in `data_dir/store`). Off: they get `NoSubscriber`.
    pub store_enabled: bool,
    /// When a stored blob is durable: `always`, `interval=<ms>` (group commit) or `none`.
    pub store_fsync: String,
    /// `text` or `json` logs on stderr.
    pub log_format: String,
    /// On SIGTERM/SIGINT the drain (stop accepting, last store sync, `ShuttingDown` to clients,
    /// media and journal syncs) must end within this many seconds, else the process exits 1.
    /// Keep it below the supervisor's own grace (`docker stop -t`, systemd `TimeoutStopSec=`).
    pub stop_timeout_s: u64,
    pub limits: Limits,
    pub prekeys: PrekeysConfig,
    pub push: PushConfig,
    pub media: MediaConfig,
}

/// Encrypted media blobs (`[media]`), kept per owner core in `data_dir/media/shard-<id>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Store and serve blobs; `false`: media requests are answered `Unavailable`.
    pub enabled: bool,
    /// Largest blob.
    pub blob_bytes_max: u64,
    /// A blob (or an unfinished upload) is deleted this long after its upload began.
    pub ttl_s: u64,
    /// Disk the whole node's media may use (split evenly across shards).
    pub disk_bytes_max: u64,
    /// Bytes one connection may upload per second, and the burst; beyond: `RateLimited`.
    pub upload_bytes_per_conn_per_s: u64,
    pub upload_bytes_per_conn_burst: u64,
    /// Requests queued to one core's media worker; beyond: `Busy`.
    pub queue_msgs_max: usize,
    /// Unfinished uploads per core at once (each reserves its declared size); beyond: `Busy`.
    pub uploads_per_core_max: usize,
    /// An unfinished upload that received nothing for this long is dropped.
    pub upload_idle_s: u64,
    /// Plain HTTP listener for `GET /blob/<id>` with `Range` (for a CDN or cache in front);
    /// "" = off. Non-loopback needs `insecure_plaintext` (the blobs are ciphertext, but a
    /// listener the operator did not mean to expose is still refused).
    pub http_listen: String,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            enabled: true,
            blob_bytes_max: 100 << 20,
            ttl_s: 30 * 86_400,
            disk_bytes_max: 16 << 30,
            upload_bytes_per_conn_per_s: 64 << 20,
            upload_bytes_per_conn_burst: 16 << 20,
            queue_msgs_max: 256,
            uploads_per_core_max: 256,
            upload_idle_s: 3_600,
            http_listen: String::new(),
        }
    }
}

/// The prekey directory on the service core (`[prekeys]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PrekeysConfig {
    /// Serve the directory (kept in `data_dir/service/prekeys.journal`).
    pub enabled: bool,
    pub slots_max: usize,
    /// Bytes of keys the directory may hold (a slot with 100 + 100 one-time keys is ~170 KB).
    pub bytes_max: usize,
    /// A slot nobody uploaded to for this long is dropped.
    pub slot_ttl_s: u64,
    /// Bundle fetches per second from one address (IPv6: /64), and the burst; 0 = unlimited.
    pub fetch_per_addr_per_s: u64,
    pub fetch_per_addr_burst: u64,
    /// Bundle fetches per second for one dest, and the burst (so one-time keys cannot be
    /// drained); 0 = unlimited.
    pub fetch_per_target_per_s: u64,
    pub fetch_per_target_burst: u64,
    /// Uploads per second from one address, and the burst (each upload frame costs up to 38
    /// signature checks on the service core); 0 = unlimited.
    pub upload_per_addr_per_s: u64,
    pub upload_per_addr_burst: u64,
    /// Addresses and dests tracked by each fetch and upload limiter.
    pub rate_entries_max: usize,
}

/// Push wakes on the service core (`[push]`). A provider is enabled by giving its credentials.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// At most one wake per device within this window.
    pub coalesce_window_s: u64,
    /// Longest registration (a longer requested TTL is cut).
    pub registration_ttl_max_s: u64,
    /// Devices registered at once.
    pub registrations_max: usize,
    pub dests_per_token_max: usize,
    /// Wakes waiting to be sent (beyond: dropped and counted), requests in flight, retries.
    pub queue_max: usize,
    pub inflight_max: usize,
    pub retries_max: u32,
    pub retry_base_ms: u64,
    /// PEM roots trusted for the providers instead of the built-in Mozilla roots ("" = built-in).
    pub ca_file: String,
    /// APNs: the .p8 key (PKCS#8 PEM), its key id, the team id, the app's bundle id (topic).
    pub apns_key_file: String,
    pub apns_key_id: String,
    pub apns_team_id: String,
    pub apns_topic: String,
    /// `https://api.push.apple.com`, or `https://api.sandbox.push.apple.com` for development.
    pub apns_url: String,
    /// A provider token is reused this long (Apple allows 20 to 60 minutes).
    pub apns_token_refresh_s: u64,
    pub apns_rate_per_s: u64,
    /// FCM: the service-account JSON (its key signs the OAuth2 assertion).
    pub fcm_service_account_file: String,
    pub fcm_url: String,
    /// OAuth2 token endpoint; "" = the service account's `token_uri`.
    pub fcm_token_url: String,
    /// `high` (only if the app shows a notification for what it fetches) or `normal`.
    pub fcm_priority: String,
    pub fcm_ttl_s: u64,
    pub fcm_rate_per_s: u64,
    /// Web Push: the VAPID P-256 private key (PEM), the `sub` contact (`mailto:` or `https:`).
    pub webpush_vapid_key_file: String,
    pub webpush_subject: String,
    /// Push services a subscription endpoint may point at (`https://host[:port]`, or
    /// `https://*.suffix`): the node never POSTs anywhere else.
    pub webpush_origins_allowed: Vec<String>,
    pub webpush_ttl_s: u64,
    pub webpush_rate_per_s: u64,
}

impl Default for PrekeysConfig {
    fn default() -> Self {
        PrekeysConfig {
            enabled: true,
            slots_max: 100_000,
            bytes_max: 1 << 30,
            slot_ttl_s: 30 * 86_400,
            fetch_per_addr_per_s: 2,
            fetch_per_addr_burst: 60,
            fetch_per_target_per_s: 1,
            fetch_per_target_burst: 20,
            upload_per_addr_per_s: 1,
            upload_per_addr_burst: 30,
            rate_entries_max: 65_536,
        }
    }
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            coalesce_window_s: 60,
            registration_ttl_max_s: 30 * 86_400,
            registrations_max: 1_000_000,
            dests_per_token_max: 256,
            queue_max: 10_000,
            inflight_max: 256,
            retries_max: 4,
            retry_base_ms: 1_000,
            ca_file: String::new(),
            apns_key_file: String::new(),
            apns_key_id: String::new(),
            apns_team_id: String::new(),
            apns_topic: String::new(),
            apns_url: "https://api.push.apple.com".into(),
            apns_token_refresh_s: 40 * 60,
            apns_rate_per_s: 1_000,
            fcm_service_account_file: String::new(),
            fcm_url: "https://fcm.googleapis.com".into(),
            fcm_token_url: String::new(),
            fcm_priority: "high".into(),
            fcm_ttl_s: 259_200,
            fcm_rate_per_s: 1_000,
            webpush_vapid_key_file: String::new(),
            webpush_subject: String::new(),
            webpush_origins_allowed: vec![
                "https://fcm.googleapis.com".into(),
                "https://updates.push.services.mozilla.com".into(),
                "https://web.push.apple.com".into(),
                "https://*.notify.windows.com".into(),
            ],
            webpush_ttl_s: 86_400,
            webpush_rate_per_s: 1_000,
        }
    }
}

/// Named limits: noun first, unit last.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections the whole node accepts at once (split evenly across shards).
    pub connections_max: usize,
    pub handshake_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub ping_interval_ms: u64,
    pub frame_stall_timeout_ms: u64,
    pub write_stall_timeout_ms: u64,
    pub send_queue_bytes_max: usize,
    pub subscriptions_per_conn_max: usize,
    pub proof_failures_per_conn_max: u32,
    /// New connections per second per address (IPv6: per /64), and the burst; 0 = unlimited.
    pub ip_connections_per_s: u64,
    pub ip_connections_burst: u64,
    /// Bytes read per second per address; reading pauses when spent. 0 = unlimited.
    pub ip_bytes_per_s: u64,
    pub ip_bytes_burst: u64,
    /// Failed proofs per second per address; beyond it proofs are refused unchecked.
    pub ip_proof_failures_per_s: u64,
    pub ip_proof_failures_burst: u64,
    /// Addresses tracked per shard by the rate limiter.
    pub ip_table_entries_max: usize,
    /// Connections one address may hold open at once (split across shards); beyond it new ones
    /// get `ConnectionLimit`. 0 = unlimited.
    pub ip_connections_max: usize,
    /// Proof signatures checked per second per address (valid or not), and the burst; beyond,
    /// proofs are answered `RateLimited` unchecked. 0 = unlimited.
    pub ip_proofs_per_s: u64,
    pub ip_proofs_burst: u64,
    /// The same per connection; the burst covers an honest connection's worst case (drains of
    /// two mailboxes over the store's 72 hours, 150; a 127-hour push registration, 256). 0 =
    /// unlimited.
    pub proofs_per_conn_per_s: u64,
    pub proofs_per_conn_burst: u64,
    /// File descriptors kept free of client connections (store segments, media files, journals,
    /// the admin endpoint, refusals): the shards accept at most `open-files limit − this`.
    pub fds_reserved: u64,
    /// Data messages queued towards one peer core before packets are answered `Congested`.
    pub hop_queue_msgs_max: usize,
    /// Batches in flight per pair of cores.
    pub hop_channel_batches: usize,
    pub read_buffer_bytes: usize,
    /// On SIGTERM, how long clients get to read `ShuttingDown` before the sockets are shut
    /// down (part of the drain, so within `stop_timeout_s`).
    pub drain_grace_ms: u64,
    pub listen_backlog: i32,
    pub tick_ms: u64,
    /// Memory each shard's io_uring registers (counts against `ulimit -l`).
    pub io_memory_bytes: usize,
    /// Size of one store segment file (preallocated).
    pub store_segment_bytes: usize,
    /// A store segment older than this stops taking appends.
    pub store_segment_roll_s: u64,
    /// Longest time a blob is kept (a sender's TTL is capped by it).
    pub store_ttl_max_s: u64,
    pub store_dest_blobs_max: usize,
    pub store_dest_bytes_max: u64,
    /// Disk the whole node's store may use (split evenly across shards).
    pub store_disk_bytes_max: u64,
    /// Above this share of the budget new blobs get `StoreFull` (acks still work).
    pub store_high_water_percent: u8,
    /// Requests (prekeys, push registrations, wakes) queued from the shards to the service core;
    /// beyond it clients are answered `Busy` and wakes dropped.
    pub service_queue_msgs_max: usize,
    /// Replies queued from the service core towards one shard.
    pub service_replies_msgs_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 7700))],
            listen_tls: Vec::new(),
            tls_cert: None,
            tls_key: None,
            insecure_plaintext: false,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 7701)),
            admin_token_file: None,
            data_dir: PathBuf::from("ferry-data"),
            shards: 0,
            clock_offset_s: 0,
            stop_timeout_s: 8,
            store_enabled: true,
            store_fsync: "interval=10".into(),
            log_format: "text".into(),
            limits: Limits::default(),
            prekeys: PrekeysConfig::default(),
            push: PushConfig::default(),
            media: MediaConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_max: 200_000,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 90_000,
            ping_interval_ms: 30_000,
            frame_stall_timeout_ms: 30_000,
            write_stall_timeout_ms: 30_000,
            send_queue_bytes_max: 1 << 20,
            subscriptions_per_conn_max: 512,
            proof_failures_per_conn_max: 16,
            ip_connections_per_s: 200,
            ip_connections_burst: 2_000,
            ip_bytes_per_s: 64 << 20,
            ip_bytes_burst: 128 << 20,
            ip_proof_failures_per_s: 10,
            ip_proof_failures_burst: 100,
            ip_table_entries_max: 65_536,
            ip_connections_max: 256,
            ip_proofs_per_s: 100,
            ip_proofs_burst: 8_192,
            proofs_per_conn_per_s: 1,
            proofs_per_conn_burst: 512,
            fds_reserved: 1_024,
            hop_queue_msgs_max: 65_536,
            hop_channel_batches: 64,
            read_buffer_bytes: 64 * 1024,
            drain_grace_ms: 100,
            listen_backlog: 4_096,
            tick_ms: 100,
            io_memory_bytes: 512 * 1024,
            store_segment_bytes: 64 << 20,
            store_segment_roll_s: 3_600,
            store_ttl_max_s: 72 * 3_600,
            store_dest_blobs_max: 10_000,
            store_dest_bytes_max: 64 << 20,
            store_disk_bytes_max: 16 << 30,
            store_high_water_percent: 90,
            service_queue_msgs_max: 16_384,
            service_replies_msgs_max: 4_096,
        }
    }
}

impl Config {
    /// Defaults, then the TOML file, then `FERRY_*` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut value = toml::Value::try_from(Config::default()).context("serialising defaults")?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let file_value: toml::Value =
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            merge(&mut value, file_value);
            // Unknown keys are errors, with the file named.
            let _: Config = value
                .clone()
                .try_into()
                .with_context(|| format!("invalid configuration in {}", path.display()))?;
        }
        let env: Vec<(String, String)> = env.filter(|(k, _)| k.starts_with("FERRY_")).collect();
        apply_env(&mut value, &env)?;
        let cfg: Config = value.try_into().context("invalid configuration")?;
        Ok(cfg)
    }

    /// Refuses configurations that would start a node in a state the operator did not ask for.
    pub fn validate(&self) -> anyhow::Result<()> {
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
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!(
                "log_format must be `text` or `json`, not `{}`",
                self.log_format
            );
        }
        if self.stop_timeout_s == 0 {
            bail!("stop_timeout_s must be at least 1");
        }
        let l = &self.limits;
        for (name, v) in [
            ("connections_max", l.connections_max),
            ("send_queue_bytes_max", l.send_queue_bytes_max),
            ("subscriptions_per_conn_max", l.subscriptions_per_conn_max),
            ("hop_queue_msgs_max", l.hop_queue_msgs_max),
            ("hop_channel_batches", l.hop_channel_batches),
            ("ip_table_entries_max", l.ip_table_entries_max),
        ] {
            if v == 0 {
                bail!("limits.{name} must be at least 1");
            }
        }
        for (name, v) in [
            ("handshake_timeout_ms", l.handshake_timeout_ms),
            ("idle_timeout_ms", l.idle_timeout_ms),
            ("ping_interval_ms", l.ping_interval_ms),
            ("frame_stall_timeout_ms", l.frame_stall_timeout_ms),
            ("write_stall_timeout_ms", l.write_stall_timeout_ms),
            ("tick_ms", l.tick_ms),
            (
                "proof_failures_per_conn_max",
                u64::from(l.proof_failures_per_conn_max),
            ),
        ] {
            if v == 0 {
                bail!("limits.{name} must be at least 1");
            }
        }
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
        if l.listen_backlog < 1 {
            bail!("limits.listen_backlog must be at least 1");
        }
        if l.tick_ms
            > l.handshake_timeout_ms
                .min(l.frame_stall_timeout_ms)
                .min(l.write_stall_timeout_ms)
        {
            bail!("limits.tick_ms must not exceed the shortest timeout");
        }
        self.fsync_policy()?;
        if l.store_segment_bytes < 128 * 1024 || l.store_segment_bytes > (1 << 31) {
            bail!(
                "limits.store_segment_bytes must be between 128 KiB (room for the largest packet) and 2 GiB"
            );
        }
        if l.store_segment_roll_s == 0 {
            bail!("limits.store_segment_roll_s must be at least 1");
        }
        if l.store_high_water_percent == 0 || l.store_high_water_percent > 100 {
            bail!("limits.store_high_water_percent must be 1..=100");
        }
        if l.store_ttl_max_s == 0 || l.store_dest_blobs_max == 0 || l.store_dest_bytes_max == 0 {
            bail!(
                "limits.store_ttl_max_s, store_dest_blobs_max and store_dest_bytes_max must be at least 1"
            );
        }
        if l.read_buffer_bytes < 4096 {
            bail!("limits.read_buffer_bytes must be at least 4096");
        }
        if l.ping_interval_ms >= l.idle_timeout_ms {
            bail!("limits.ping_interval_ms must be below limits.idle_timeout_ms");
        }
        if l.service_queue_msgs_max == 0 || l.service_replies_msgs_max == 0 {
            bail!("limits.service_queue_msgs_max and service_replies_msgs_max must be at least 1");
        }
        self.validate_service()?;
        self.validate_media()?;
        if l.send_queue_bytes_max < 2 * ferry_proto::limits::FRAME_BYTES_MAX {
            bail!(
                "limits.send_queue_bytes_max must hold at least two maximal frames ({} bytes)",
                2 * ferry_proto::limits::FRAME_BYTES_MAX
            );
        }
        Ok(())
    }
}

impl Config {
    fn validate_media(&self) -> anyhow::Result<()> {
        let m = &self.media;
        if m.blob_bytes_max == 0 || m.ttl_s == 0 || m.disk_bytes_max == 0 || m.queue_msgs_max == 0 {
            bail!(
                "media.blob_bytes_max, ttl_s, disk_bytes_max and queue_msgs_max must be at least 1"
            );
        }
        if m.upload_bytes_per_conn_per_s > 0
            && m.upload_bytes_per_conn_burst < ferry_proto::limits::FRAME_BYTES_MAX as u64
        {
            bail!(
                "media.upload_bytes_per_conn_burst must hold at least one chunk ({} bytes)",
                ferry_proto::limits::FRAME_BYTES_MAX
            );
        }
        if !m.http_listen.is_empty() {
            let a: SocketAddr = m
                .http_listen
                .parse()
                .with_context(|| format!("media.http_listen `{}`", m.http_listen))?;
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
        if k.enabled && (k.slots_max == 0 || k.bytes_max == 0 || k.slot_ttl_s == 0) {
            bail!("prekeys.slots_max, bytes_max and slot_ttl_s must be at least 1");
        }
        if k.rate_entries_max == 0 {
            bail!("prekeys.rate_entries_max must be at least 1");
        }
        for (rate, burst, name) in [
            (
                k.fetch_per_addr_per_s,
                k.fetch_per_addr_burst,
                "fetch_per_addr",
            ),
            (
                k.fetch_per_target_per_s,
                k.fetch_per_target_burst,
                "fetch_per_target",
            ),
        ] {
            if rate > 0 && burst == 0 {
                bail!("prekeys.{name}_burst must be at least 1 when prekeys.{name}_per_s is set");
            }
        }
        let p = &self.push;
        if p.registrations_max == 0
            || p.dests_per_token_max == 0
            || p.queue_max == 0
            || p.inflight_max == 0
            || p.registration_ttl_max_s == 0
        {
            bail!(
                "push.registrations_max, dests_per_token_max, queue_max, inflight_max and registration_ttl_max_s must be at least 1"
            );
        }
        let dests_per_token_max = crate::service::push::DESTS_PER_TOKEN_MAX;
        if p.dests_per_token_max > dests_per_token_max {
            bail!("push.dests_per_token_max must be at most {dests_per_token_max}");
        }
        if p.coalesce_window_s == 0 {
            bail!("push.coalesce_window_s must be at least 1");
        }
        if !p.apns_key_file.is_empty()
            && (p.apns_key_id.is_empty() || p.apns_team_id.is_empty() || p.apns_topic.is_empty())
        {
            bail!("push.apns_key_file needs push.apns_key_id, apns_team_id and apns_topic");
        }
        if !(1_200..=3_600).contains(&p.apns_token_refresh_s) {
            bail!(
                "push.apns_token_refresh_s must be 1200..=3600 (Apple refuses tokens refreshed more often than every 20 minutes or older than an hour)"
            );
        }
        if !matches!(p.fcm_priority.as_str(), "high" | "normal") {
            bail!("push.fcm_priority must be `high` or `normal`");
        }
        let subject_ok =
            p.webpush_subject.starts_with("mailto:") || p.webpush_subject.starts_with("https:");
        if !p.webpush_vapid_key_file.is_empty() && !subject_ok {
            bail!("push.webpush_subject must be a `mailto:` or `https:` contact (RFC 8292)");
        }
        crate::service::endpoint::AllowList::parse(&p.webpush_origins_allowed)?;
        Ok(())
    }

    /// `store_fsync` parsed.
    pub fn fsync_policy(&self) -> anyhow::Result<ferry_shards::store::FsyncPolicy> {
        use ferry_shards::store::FsyncPolicy;
        let v = self.store_fsync.trim();
        Ok(match v {
            "always" => FsyncPolicy::Always,
            "none" => FsyncPolicy::None,
            _ => match v
                .strip_prefix("interval=")
                .and_then(|ms| ms.parse::<u64>().ok())
            {
                Some(ms) if ms > 0 => FsyncPolicy::Interval { ms },
                _ => bail!(
                    "store_fsync must be `always`, `interval=<ms>` (ms ≥ 1) or `none`, not `{v}`"
                ),
            },
        })
    }
}

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

/// Overlays `FERRY_<KEY>` / `FERRY_LIMITS_<KEY>` onto the keys that exist, typed like the default.
fn apply_env(value: &mut toml::Value, env: &[(String, String)]) -> anyhow::Result<()> {
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
                bail!("unknown configuration variable {name}");
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

fn collect_keys(v: &toml::Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let dir = std::env::temp_dir().join(format!("ferry-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ferry.toml");
        std::fs::write(
            &file,
            "shards = 3\n[limits]\nidle_timeout_ms = 5000\nping_interval_ms = 1000\n",
        )
        .unwrap();
        let env = vec![
            ("FERRY_SHARDS".to_string(), "5".to_string()),
            ("FERRY_LIMITS_TICK_MS".to_string(), "7".to_string()),
            (
                "FERRY_LISTEN".to_string(),
                "127.0.0.1:1, 127.0.0.2:2".to_string(),
            ),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let c = Config::load(Some(&file), env.into_iter()).unwrap();
        assert_eq!(c.shards, 5); // env over file
        assert_eq!(c.limits.idle_timeout_ms, 5000); // file over default
        assert_eq!(c.limits.tick_ms, 7);
        assert_eq!(c.listen.len(), 2);
        assert_eq!(
            c.limits.hop_queue_msgs_max,
            Limits::default().hop_queue_msgs_max
        );
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_errors() {
        let env = vec![("FERRY_NOPE".to_string(), "1".to_string())];
        assert!(Config::load(None, env.into_iter()).is_err());
        let env = vec![("FERRY_SHARDS".to_string(), "many".to_string())];
        assert!(Config::load(None, env.into_iter()).is_err());
    }

    #[test]
    fn plaintext_off_loopback_needs_explicit_consent() {
        let mut c = Config {
            listen: vec!["0.0.0.0:7700".parse().unwrap()],
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--insecure-plaintext")
        );
        c.insecure_plaintext = true;
        c.validate().unwrap();
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn webpush_origins_allowed_entries_are_parsed_at_load() {
        let with = |entries: &[&str]| {
            let mut c = Config::default();
            c.push.webpush_origins_allowed = entries.iter().map(|e| e.to_string()).collect();
            c.validate()
        };
        with(&["https://push.example:8443", "https://127.0.0.1:9443"]).unwrap();
        for bad in [
            "https://push.example/path",
            "https://*.com",
            "https://push.example?x",
            "https://u@push.example",
            "http://push.example",
        ] {
            let e = with(&["https://*.notify.windows.com", bad]).unwrap_err();
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            assert!(
                chain[0].contains("push.webpush_origins_allowed") && chain[0].contains(bad),
                "{chain:?}"
            );
            assert!(chain.len() > 1, "the reason follows: {chain:?}");
        }
    }
}
