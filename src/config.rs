//! Configuration: built-in defaults < TOML file < `FERRY_*` environment < command-line flags.
//!
//! Every key of [`Config`] can be set from the environment: `FERRY_<KEY>` for top-level keys and
//! `FERRY_LIMITS_<KEY>` for `[limits]`, upper-cased (`FERRY_SHARDS=4`,
//! `FERRY_LIMITS_IDLE_TIMEOUT_MS=60000`); lists are comma-separated.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
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
    /// Unfinished uploads per core at once (each holds a file and the bytes it received);
    /// beyond: `Busy`.
    pub uploads_per_core_max: usize,
    /// Unfinished uploads one address (IPv6: /64) may hold on one core; beyond: `Busy`.
    pub uploads_per_source_max: usize,
    /// An unfinished upload that received nothing for this long is dropped.
    pub upload_idle_s: u64,
    /// Plain HTTP listener for `GET /blob/<id>` with `Range` (for a CDN or cache in front);
    /// "" = off. Non-loopback needs `insecure_plaintext` (the blobs are ciphertext, but a
    /// listener the operator did not mean to expose is still refused).
    pub http_listen: String,
}

impl Default for MediaConfig {
    fn default() -> Self {
        // The media store's defaults are named once, in the shards' MediaLimits.
        let media = ferry_shards::media::MediaLimits::default();
        MediaConfig {
            enabled: true,
            blob_bytes_max: media.blob_bytes_max,
            ttl_s: media.ttl_s,
            disk_bytes_max: media.disk_bytes_max,
            upload_bytes_per_conn_per_s: 64 << 20,
            upload_bytes_per_conn_burst: 16 << 20,
            queue_msgs_max: 256,
            uploads_per_core_max: media.uploads_max,
            uploads_per_source_max: media.uploads_per_source_max,
            upload_idle_s: media.upload_idle_s,
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
    /// One-time keys one slot hands out per hour, and the burst (about what an owner refills);
    /// beyond, fetches get the bundle with the last-resort key. 0 = unlimited.
    pub one_time_per_slot_per_hour: u64,
    pub one_time_per_slot_burst: u64,
    /// One-time keys of one slot that one address (IPv6: /64) gets per hour, and the burst;
    /// beyond, its fetches get the last-resort bundle. 0 = unlimited.
    pub one_time_per_source_per_hour: u64,
    pub one_time_per_source_burst: u64,
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
            one_time_per_slot_per_hour: 10,
            one_time_per_slot_burst: 20,
            one_time_per_source_per_hour: 1,
            one_time_per_source_burst: 2,
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
    /// 0 = never: silent clients stay (a gone one is found by TCP keepalive).
    pub idle_timeout_ms: u64,
    /// 0 = the node never pings.
    pub ping_interval_ms: u64,
    /// TCP keepalive of accepted connections (`ferry_shards::driver::TcpKeepalive`); idle 0 =
    /// off.
    pub tcp_keepalive_idle_ms: u64,
    pub tcp_keepalive_interval_ms: u64,
    pub tcp_keepalive_probes: u32,
    /// 0 = the kernel's default.
    pub tcp_user_timeout_ms: u64,
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
    /// Share of a shard's blob budget (`store_disk_bytes_max` split per shard ×
    /// `store_high_water_percent`) one sending address may hold, in record bytes.
    pub store_source_share_percent: u8,
    /// Share of one dest's quota (`store_dest_blobs_max`, `store_dest_bytes_max`) one sending
    /// address may hold.
    pub store_source_dest_share_percent: u8,
    /// Above this share of the budget, an address holding more than the mean of the addresses
    /// holding blobs is refused (the heaviest first). At or above `store_high_water_percent`
    /// the rule never applies.
    pub store_pressure_percent: u8,
    /// Sending addresses each shard's source table tracks (in memory); beyond, new addresses
    /// share one overflow bucket with the share of one address.
    pub store_sources_max: usize,
    /// Leading bits of an IPv4 address that name its source for the store shares.
    pub store_source_ipv4_prefix_bits: u8,
    /// Leading bits of an IPv6 address that name its source (at most 64).
    pub store_source_ipv6_prefix_bits: u8,
    /// Requests (prekeys, push registrations, wakes) queued from the shards to the service core;
    /// beyond it clients are answered `Busy` and wakes dropped.
    pub service_queue_msgs_max: usize,
    /// Replies queued from the service core towards one shard.
    pub service_replies_msgs_max: usize,
    /// Heap the node's connections may hold at once (split evenly across shards): partial
    /// frames, connection output, cross-core hop queues and a base per connection. Above it the
    /// connections holding the most are closed with `Overloaded`. 0 = derived from the host:
    /// half of the smaller of MemTotal and the cgroup memory limit (`sys::memory_budget_default`).
    pub memory_bytes_max: u64,
    /// Send-puzzle difficulty levels above 0 (0: no puzzles). Level n asks an effort of
    /// `puzzle_effort_max >> (puzzle_levels - n)`. One by default (`PuzzleConfig`).
    pub puzzle_levels: u8,
    /// Equi-X effort of the highest level (expected Equi-X solutions per answer).
    pub puzzle_effort_max: u32,
    /// The puzzle seed changes this often (an answer holds under the current and previous seed).
    pub puzzle_seed_period_s: u64,
    /// A dest's quota fill (percent) at which its offline sends need puzzles.
    pub puzzle_dest_fill_pct_min: u8,
    /// The store's fill (percent of its high-water mark) at which every offline send needs one.
    pub puzzle_store_fill_pct_min: u8,
    /// Puzzle answers one connection may have checked per second, and the burst.
    pub puzzle_checks_per_conn_per_s: u64,
    pub puzzle_checks_per_conn_burst: u64,
    /// Accepted puzzle answers each shard remembers (replays of them are refused).
    pub puzzle_answers_seen_max: usize,
    /// Capability verifiers each shard keeps.
    pub puzzle_capabilities_max: usize,
    /// Longest a capability verifier is kept.
    pub puzzle_capability_ttl_max_s: u64,
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
        let puzzle = ferry_shards::puzzle::PuzzleConfig::default();
        let store = ferry_shards::store::StoreLimits::default();
        Limits {
            connections_max: 200_000,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 0,
            ping_interval_ms: 0,
            tcp_keepalive_idle_ms: 120_000,
            tcp_keepalive_interval_ms: 30_000,
            tcp_keepalive_probes: 4,
            tcp_user_timeout_ms: 240_000,
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
            // The store's defaults are named once, in the shards' StoreLimits (a one-shard
            // node's: `store_disk_bytes_max` is the whole node's, split across its shards).
            store_segment_bytes: store.segment_bytes,
            store_segment_roll_s: store.segment_roll_s,
            store_ttl_max_s: store.ttl_max_s,
            store_dest_blobs_max: store.dest_blobs_max,
            store_dest_bytes_max: store.dest_bytes_max,
            store_disk_bytes_max: store.disk_bytes_max,
            store_high_water_percent: store.high_water_percent,
            store_source_share_percent: store.sources.share_percent,
            store_source_dest_share_percent: store.sources.dest_share_percent,
            store_pressure_percent: store.sources.pressure_percent,
            store_sources_max: store.sources.sources_max,
            store_source_ipv4_prefix_bits: store.sources.ipv4_prefix_bits,
            store_source_ipv6_prefix_bits: store.sources.ipv6_prefix_bits,
            service_queue_msgs_max: 16_384,
            service_replies_msgs_max: 4_096,
            memory_bytes_max: 0,
            // The puzzle defaults are named once, in the shards' PuzzleConfig.
            puzzle_levels: puzzle.levels,
            puzzle_effort_max: puzzle.effort_max,
            puzzle_seed_period_s: puzzle.seed_period_s,
            puzzle_dest_fill_pct_min: puzzle.dest_fill_pct_min,
            puzzle_store_fill_pct_min: puzzle.store_fill_pct_min,
            puzzle_checks_per_conn_per_s: puzzle.checks_per_conn.per_s,
            puzzle_checks_per_conn_burst: puzzle.checks_per_conn.burst,
            puzzle_answers_seen_max: puzzle.answers_seen_max,
            puzzle_capabilities_max: puzzle.capabilities_max,
            puzzle_capability_ttl_max_s: puzzle.capability_ttl_max_s,
        }
    }
}

/// Most shard cores a node runs (shard ids are `u16` on the wire and in the store).
/// The most shards a node runs (a sanity bound for operators); the shards' own index limit
/// (`ferry_shards::shard::SHARDS_MAX`, what a `u16` shard index can name) is above it.
pub const SHARDS_MAX: usize = 1_024;
const _: () = assert!(SHARDS_MAX <= ferry_shards::shard::SHARDS_MAX);

/// Longest `store_fsync = "interval=<ms>"`.
pub const FSYNC_INTERVAL_MS_MAX: u64 = 60_000;

/// Optional top-level keys: absent from the serialised defaults, so listed here.
const OPTIONAL_KEYS: [&str; 3] = ["tls_cert", "tls_key", "admin_token_file"];

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

/// One numeric key's allowed range, inclusive. Every integer key has one (a unit test checks),
/// so an absurd value (`shards = 99999999999`) is refused by name instead of starting a node
/// that fails later or silently misbehaves.
struct Bound {
    key: &'static str,
    /// `None`: the value does not fit an `i128` (cannot happen for the field types used).
    value: Option<i128>,
    min: i128,
    max: i128,
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
    fn bounds(&self) -> Vec<Bound> {
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

    /// `media.http_listen` parsed; `None` when off.
    pub fn media_http_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        let h = &self.media.http_listen;
        if h.is_empty() {
            return Ok(None);
        }
        h.parse()
            .map(Some)
            .map_err(|e| anyhow!("media.http_listen `{h}`: {e}"))
    }

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

/// Whether binding both would collide: the same port and family, and the same address or a
/// wildcard. Port 0 is a fresh port each time.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn flatten(v: &toml::Value, prefix: &str, out: &mut Vec<(String, toml::Value)>) {
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
fn nearest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
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

    /// `store_fsync` parsed.
    pub fn fsync_policy(&self) -> anyhow::Result<ferry_shards::store::FsyncPolicy> {
        use ferry_shards::store::FsyncPolicy;
        let v = self.store_fsync.trim();
        Ok(match v {
            // Synced before answered, as `Always`, but one sync per turn of the shard's loop
            // for all the appends of that turn (group commit with no wait).
            "always" => FsyncPolicy::Interval { ms: 0 },
            "none" => FsyncPolicy::None,
            _ => match v
                .strip_prefix("interval=")
                .and_then(|ms| ms.parse::<u64>().ok())
            {
                Some(ms) if (1..=FSYNC_INTERVAL_MS_MAX).contains(&ms) => {
                    FsyncPolicy::Interval { ms }
                }
                _ => bail!(
                    "store_fsync must be `always`, `interval=<ms>` (ms from 1 to {FSYNC_INTERVAL_MS_MAX}) or `none`, not `{v}`"
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

    /// Keepalive values the kernel would refuse, or a user timeout that would cut the probes
    /// short, stop start-up with the key named; 0 turns each off.
    #[test]
    fn keepalive_settings_are_checked_against_the_kernel_and_each_other() {
        let err = |f: &dyn Fn(&mut Limits)| {
            let mut c = Config::default();
            f(&mut c.limits);
            c.validate().err().map(|e| e.to_string())
        };
        assert_eq!(err(&|_| {}), None);
        assert!(
            err(&|l| l.tcp_keepalive_idle_ms = 500)
                .unwrap()
                .contains("limits.tcp_keepalive_idle_ms")
        );
        assert!(
            err(&|l| l.tcp_keepalive_idle_ms = 40_000_000)
                .unwrap()
                .contains("limits.tcp_keepalive_idle_ms")
        );
        // 120 s + 4 × 30 s = 240 s: the default user timeout is exactly enough.
        assert!(
            err(&|l| l.tcp_user_timeout_ms = 239_999)
                .unwrap()
                .contains("limits.tcp_user_timeout_ms")
        );
        assert_eq!(err(&|l| l.tcp_user_timeout_ms = 0), None);
        assert_eq!(
            err(&|l| {
                l.tcp_keepalive_idle_ms = 0;
                l.tcp_user_timeout_ms = 1_000;
            }),
            None
        );
        assert_eq!(
            err(&|l| {
                l.ping_interval_ms = 30_000;
                l.idle_timeout_ms = 0;
            }),
            None
        );
        assert!(
            err(&|l| {
                l.ping_interval_ms = 30_000;
                l.idle_timeout_ms = 30_000;
            })
            .unwrap()
            .contains("ping_interval_ms")
        );
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

    /// A new numeric key without a bound fails here.
    #[test]
    fn every_numeric_key_has_a_bound() {
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let mut keys = Vec::new();
        collect_keys(&defaults, &mut Vec::new(), &mut keys);
        let ints: std::collections::BTreeSet<String> = keys
            .iter()
            .filter(|(_, kind)| kind == "int")
            .map(|(path, _)| path.join("."))
            .collect();
        let bounded: std::collections::BTreeSet<String> = Config::default()
            .bounds()
            .iter()
            .map(|b| b.key.to_string())
            .collect();
        assert_eq!(ints, bounded);
    }

    /// Each key one past either end of its range is refused with one line naming the key, the
    /// value and the range.
    #[test]
    fn out_of_range_values_name_the_key_the_value_and_the_range() {
        for b in Config::default().bounds() {
            let mut outside = vec![b.max + 1];
            if b.min > 0 || b.key == "clock_offset_s" {
                outside.push(b.min - 1);
            }
            for v in outside {
                let mut value = toml::Value::try_from(Config::default()).unwrap();
                let mut at = &mut value;
                let path: Vec<&str> = b.key.split('.').collect();
                for seg in &path[..path.len() - 1] {
                    at = at.get_mut(*seg).unwrap();
                }
                let raw = i64::try_from(v).unwrap();
                at.as_table_mut()
                    .unwrap()
                    .insert(path[path.len() - 1].into(), toml::Value::Integer(raw));
                let Ok(c) = value.try_into::<Config>() else {
                    continue; // outside the field's type: refused when loading
                };
                let e = c.validate().unwrap_err().to_string();
                let want = format!(
                    "{} = {v} is out of range: allowed {} to {}",
                    b.key, b.min, b.max
                );
                assert!(e.starts_with(&want), "{e}");
                assert_eq!(e.lines().count(), 1);
            }
        }
        let c = Config {
            shards: 99_999_999_999,
            ..Config::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "shards = 99999999999 is out of range: allowed 0 to 1024 (0 = one per CPU)"
        );
    }

    #[test]
    fn unknown_keys_get_the_nearest_known_one() {
        let dir = std::env::temp_dir().join(format!("ferry-cfg-near-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ferry.toml");
        for (text, key, hint) in [
            (
                "[limits]\nidle_timeut_ms = 5\n",
                "limits.idle_timeut_ms",
                Some("idle_timeout_ms"),
            ),
            (
                "idle_timeout_ms = 5\n",
                "idle_timeout_ms",
                Some("limits.idle_timeout_ms"),
            ),
            ("shardz = 2\n", "shardz", Some("shards")),
            ("tls_crt = \"x\"\n", "tls_crt", Some("tls_cert")),
            ("[media]\nttl = 5\n", "media.ttl", Some("ttl_s")),
            ("colour = true\n", "colour", None),
        ] {
            std::fs::write(&file, text).unwrap();
            let e = Config::load(Some(&file), std::iter::empty())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("unknown key `{key}` in ")), "{e}");
            match hint {
                Some(h) => assert!(e.ends_with(&format!("; did you mean `{h}`?")), "{e}"),
                None => assert!(!e.contains("did you mean"), "{e}"),
            }
        }
        let env = vec![("FERRY_LIMITS_IDLE_TIMEUT_MS".to_string(), "1".to_string())];
        let e = Config::load(None, env.into_iter()).unwrap_err().to_string();
        assert!(
            e.ends_with("did you mean FERRY_LIMITS_IDLE_TIMEOUT_MS?"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn restart_keys_are_the_changed_keys_sighup_does_not_apply() {
        let running = Config::default();
        let mut next = running.clone();
        assert!(running.restart_keys(&next).unwrap().is_empty());
        next.listen = vec!["127.0.0.1:7800".parse().unwrap()];
        next.log_format = "json".into();
        next.admin_token_file = Some("/etc/ferry/token".into());
        next.limits.tick_ms = 50;
        next.limits.idle_timeout_ms = 60_000; // reloadable
        next.tls_cert = Some("/etc/ferry/cert.pem".into()); // reloadable
        assert_eq!(
            running.restart_keys(&next).unwrap(),
            ["admin_token_file", "limits.tick_ms", "listen", "log_format"]
        );
    }

    #[test]
    fn listeners_must_not_overlap() {
        let c = Config {
            listen_tls: vec!["0.0.0.0:7700".parse().unwrap()],
            tls_cert: Some("c".into()),
            tls_key: Some("k".into()),
            ..Config::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("overlap"), "{e}");
        let c = Config {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        c.validate().unwrap();
        let c = Config {
            listen: vec![
                "[::1]:7700".parse().unwrap(),
                "127.0.0.1:7700".parse().unwrap(),
            ],
            ..Config::default()
        };
        c.validate().unwrap();
    }
}
