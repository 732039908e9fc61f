//! Configuration: built-in defaults < TOML file < `FERRY_*` environment < command-line flags.
//!
//! Every key of [`Config`] can be set from the environment: `FERRY_<KEY>` for top-level keys and
//! `FERRY_LIMITS_<KEY>` for `[limits]`, upper-cased (`FERRY_SHARDS=4`,
//! `FERRY_LIMITS_IDLE_TIMEOUT_MS=60000`); lists are comma-separated.
//!
//! This file holds the keys and their defaults; `config/` holds loading (`load.rs`), environment
//! overrides (`env.rs`), validation (`validate.rs`) and what a reload applies (`reload.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail};
use serde::{Deserialize, Serialize};

mod env;
mod load;
mod reload;
#[cfg(test)]
mod tests;
mod validate;

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
    /// The shards' I/O driver: `uring` (a raw io_uring loop per core: multishot receives into
    /// provided buffers, one `io_uring_enter` per loop turn; Linux 6.1 or later), `glommio` (an
    /// executor per core, a reader and a writer task per connection), or `auto`: `uring` where
    /// the kernel has what it needs, else `glommio`. Same protocol, limits and durability; the
    /// costs differ (bench/RESULTS.md).
    pub io_engine: String,
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
            io_engine: "auto".into(),
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

impl Config {
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

    /// `io_engine` checked (not resolved: `auto` is decided by [`Config::engine`]).
    pub fn check_engine(&self) -> anyhow::Result<()> {
        match self.io_engine.trim() {
            "auto" | "glommio" | "uring" => Ok(()),
            other => bail!("io_engine must be `auto`, `uring` or `glommio`, not `{other}`"),
        }
    }

    /// The driver `io_engine` names on this kernel: `auto` is `uring` when the kernel's io_uring
    /// has what that driver needs ([`ferry_shards::driver::uring::probe`]), else `glommio`; an
    /// explicit `uring` the kernel cannot run is an error that says why.
    pub fn engine(&self) -> anyhow::Result<ferry_shards::driver::Engine> {
        use ferry_shards::driver::{Engine, uring};
        self.check_engine()?;
        Ok(match self.io_engine.trim() {
            "glommio" => Engine::Glommio,
            "uring" => {
                uring::probe().map_err(|e| {
                    anyhow!("io_engine = \"uring\": this kernel cannot run it ({e}); use \"glommio\" or \"auto\"")
                })?;
                Engine::Uring
            }
            _ => match uring::probe() {
                Ok(()) => Engine::Uring,
                Err(e) => {
                    tracing::warn!(error = %e, "io_engine = \"auto\": the kernel cannot run the uring driver; using glommio");
                    Engine::Glommio
                }
            },
        })
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
