//! The shard state machine: every connection on one core, the forward table for the dests this
//! core owns, and the outboxes of cross-core hops. Sans-IO: the driver feeds it bytes, hop batches
//! and ticks, and moves what it produces (connection output, hop batches) to sockets and channels.
//!
//! A packet for `dest` arriving on core C goes to owner O = `dest.owner(shards)` (the forward-table
//! lookup), then to the subscriber's core S (the socket write): at most two hops. Channels between
//! cores are FIFO, so packets keep their order per (sender connection, dest).

mod conn;
mod drain;
mod hop;
mod media;
mod memory;
mod push;
mod route;
mod stored;
mod tick;

use conn::Conn;
pub use hop::HopMsg;
pub use media::media_owner;
use memory::Memory;
pub use memory::{ShedCandidate, shed_order};
use push::PushTags;
pub use route::{Audience, Packet};

use std::net::IpAddr;
use std::sync::Arc;

use std::collections::VecDeque;

use ahash::{AHashMap, AHashSet};
use bytes::Bytes;
use ferry_proto::conn::{ConnLimits, Now, Push, ServerConn, ServerEvent};
use ferry_proto::frame::{Dest, DrainStatus, ErrorCode, FLAG_ACK, Frame, SendStatus};

use crate::store::backend::{Backend, MmapBackend};
use crate::store::format::Pos;
use crate::store::{Log, StoreError, SyncJobOf};

use crate::metrics::ShardMetrics;
use crate::puzzle::{Gate, Passed, PuzzleGate};
use crate::ratelimit::{Bucket, IpKey, IpLimiter, IpLimits};
use crate::table::{ConnId, ConnRef, ForwardTable};
use crate::timers::Deadlines;

/// Most messages in one cross-core batch (one channel send).
pub const HOP_BATCH_MSGS_MAX: usize = 1024;
/// Most shards one node runs: a shard's index is a u16 in `ServerHello`, in a `ConnRef` and in
/// the store's segment headers.
pub const SHARDS_MAX: usize = 1 << 16;
const _: () = assert!(SHARDS_MAX - 1 <= u16::MAX as usize);

/// Shard index `i` as the u16 it travels as, asserting `i < SHARDS_MAX` (`Shard::new` and
/// `driver::start` refuse more shards): a clamped index would route to the wrong core.
pub fn shard_index(i: usize) -> u16 {
    u16::try_from(i)
        .ok()
        .filter(|_| i < SHARDS_MAX)
        .unwrap_or_else(|| panic!("shard index {i} past SHARDS_MAX ({SHARDS_MAX})"))
}
/// Most stored blobs sent for one `Drain` (or one subscribe hand-over); `DrainEnd` says `More`
/// when some are left. Bounds what one request can put in flight.
pub const DRAIN_BLOBS_MAX: usize = 256;
/// Most payload bytes sent for one `Drain` (at least one blob is always sent).
pub const DRAIN_BYTES_MAX: usize = 1 << 20;
/// A dest with push registrations asks the service core for a wake at most this often: a
/// sender flooding one dest cannot flood the service queue (the service coalesces per device
/// over a window of at least this).
pub const WAKE_OFFER_INTERVAL_MS: u64 = 1_000;
/// Proof-check tokens of the sender's address one puzzle check spends: an interpreted Equi-X
/// check (about 90 µs on the reference core) costs about two Ed25519 verifications.
pub const PUZZLE_CHECK_PROOF_COST: u64 = 2;
/// Expired blobs are removed (and segments reclaimed) at most this often.
pub const STORE_EXPIRE_INTERVAL_S: u64 = 1;
/// What one open connection costs besides its buffers, charged to the memory budget: its
/// `Conn` and state machine, the driver's two tasks and socket wrapper, and the allocator's
/// overhead. Measured: 8,000 idle plaintext connections took a 2-shard node from 13 to 33 MiB
/// RSS, 2.5 KiB each; the charge leaves room for the proof cache and subscriptions a connection
/// builds up. (A TLS session's rustls state is more, and is not counted beyond this.)
pub const CONN_BASE_BYTES: usize = 8 * 1024;
/// Shedding stops once the shard is back under this share of its memory budget: each round
/// frees at least an eighth of the budget, so rounds (each a pass over the connections) are rare.
pub const MEMORY_SHED_TARGET_PCT: usize = 87;
/// The allocator is asked to give freed memory back to the OS (`malloc_trim`) once this much was
/// freed since the last time...
pub const MEMORY_TRIM_FREED_BYTES_MIN: usize = 8 << 20;
/// ...and at most this often (a trim walks the allocator's free lists: milliseconds per GiB).
pub const MEMORY_TRIM_INTERVAL_MS: u64 = 1_000;
/// After a trim, memory that went on falling (the rest of a mass close) is trimmed again this
/// long after, until a pass finds nothing more freed.
pub const MEMORY_TRIM_SETTLE_MS: u64 = 2_000;
/// The smallest per-shard memory budget: a few maximal frames and connections must fit.
pub const MEMORY_BYTES_MIN: usize = 4 << 20;
const _: () =
    assert!(MEMORY_BYTES_MIN >= 16 * (ferry_proto::limits::FRAME_BYTES_MAX + CONN_BASE_BYTES));
const _: () = assert!(MEMORY_TRIM_SETTLE_MS >= MEMORY_TRIM_INTERVAL_MS);
const _: () = assert!(MEMORY_SHED_TARGET_PCT > 0 && MEMORY_SHED_TARGET_PCT < 100);

/// What one shard needs to know; every limit here is a named node config key.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub shard: u16,
    pub shards: usize,
    pub node_id: [u8; 32],
    /// Seeds this shard's challenge generator (random in the node, fixed in tests).
    pub seed: [u8; 32],
    pub conn_limits: ConnLimits,
    pub ip_limits: IpLimits,
    /// Connections this shard accepts at once; more are refused with `ConnectionLimit`.
    pub connections_max: usize,
    /// Packets one outbox (towards one peer core) may hold. When full, a packet is answered
    /// `Congested` and dropped; control messages (subscribe, unsubscribe) are bounded by
    /// `connections_max × subscriptions_max`, and send results by the packets they answer: neither
    /// is ever dropped.
    pub hop_queue_msgs_max: usize,
    /// Where and how this shard stores blobs for offline recipients; `None` = no store (offline
    /// recipients get `NoSubscriber`).
    pub store: Option<StoreSpec>,
    /// Media bytes one connection may upload per second, and the burst (`per_s` 0: unlimited).
    pub media_upload_rate: crate::ratelimit::Rate,
    /// This shard's share of the node's memory budget (`limits.memory_bytes_max / shards`):
    /// partial frames, connection output, hop outboxes and `CONN_BASE_BYTES` per connection.
    /// Above it the connections holding the most are shed (`Error Overloaded`), packets are
    /// answered `Congested`, and new connections are refused with `Overloaded`.
    pub memory_bytes_max: usize,
    /// Send puzzles for dests under pressure (`crate::puzzle`).
    pub puzzle: crate::puzzle::PuzzleConfig,
}

/// The store settings of the node; each shard keeps its log in `dir/shard-<id>`.
#[derive(Clone, Debug)]
pub struct StoreSpec {
    pub dir: std::path::PathBuf,
    pub limits: crate::store::StoreLimits,
    pub policy: crate::store::FsyncPolicy,
}

/// Answer to a new connection.
#[derive(Debug)]
pub enum Accept {
    Ok(ConnId),
    /// Refused: write these bytes (an `Error` frame) and close.
    Refused(Bytes),
}

/// What the writer of a connection should do next.
#[derive(Debug)]
pub struct Output {
    pub bytes: Option<Bytes>,
    /// Close once `bytes` are written.
    pub close: bool,
}

/// One core's share of the node.
#[derive(Debug)]
pub struct Shard<B: Backend = MmapBackend> {
    cfg: ShardConfig,
    conns: AHashMap<ConnId, Conn>,
    next_conn: u64,
    table: ForwardTable,
    outbox: Vec<Vec<HopMsg>>,
    ready: Vec<ConnId>,
    /// Connections whose reader the driver parked (backpressure), each at most once (bounded by
    /// the open connections; `Conn::read_held` marks them). They resume on the event that ends
    /// the pressure (a write completing, a hop batch leaving, the connection closing), never on
    /// a timer: see `hold_reader` and `take_resumed`.
    held_readers: Vec<ConnId>,
    force_close: Vec<ConnId>,
    limiter: IpLimiter,
    metrics: Arc<ShardMetrics>,
    challenge_counter: u64,
    /// The store-and-forward log of the dests this shard owns (none: offline = NoSubscriber).
    store: Option<Log<B>>,
    /// "Stored" (or, to a stranger, "Accepted") replies waiting for their append to be durable,
    /// in append order.
    pending_stored: VecDeque<stored::PendingStored>,
    /// Queries of local connections waiting for owner answers, by query id.
    queries: AHashMap<u64, drain::PendingQuery>,
    next_query: u64,
    /// (conn, dest) whose drain batch lost a blob to a full send queue: the rest of the batch
    /// is skipped too and its DrainEnd says More.
    drain_short: AHashSet<(ConnId, Dest)>,
    /// (conn, dest) that still has stored blobs to drain behind the ones it got (a batch came
    /// short): live packets for it are refused `Congested` until a drain ends complete, so they
    /// never overtake a stored blob (the owner may already have ended the hand-over).
    drain_behind: AHashSet<(ConnId, Dest)>,
    /// Owned dests whose subscriber has not yet drained every stored blob: new packets for them
    /// are stored too (behind the others) until a drain comes back complete, so the subscriber
    /// sees stored blobs first and live traffic after, in order.
    handover: AHashSet<Dest>,
    last_expire_unix_s: u64,
    /// Set when the store can no longer promise durability: the node must stop.
    fatal: Option<String>,
    /// The time of the input being handled (hop batches carry none of their own).
    now: Now,
    /// The way into the service core (prekeys, push); `None`: answered `Unavailable`.
    service: Option<Arc<dyn crate::service::ServiceSink>>,
    /// The media workers, one per owner core (`None`: media requests answered `Unavailable`).
    media: Option<Vec<Arc<dyn crate::service::ServiceSink>>>,
    /// Blob bytes each connection may upload per second (token bucket per connection).
    media_upload: crate::ratelimit::KeyedLimiter<ConnId>,
    /// Owned dests with push registrations → (until when, Unix s; when a wake was last offered,
    /// monotonic ms): a blob stored for one of them while nobody listens asks the service core
    /// for a wake, at most once per `WAKE_OFFER_INTERVAL_MS`. Maintained by the service core.
    push_armed: AHashMap<Dest, push::Armed>,
    /// Dest tags with push registrations the service core has not opened since its restart
    /// (`ServiceReply::PushArmTags`, one map shared by every shard) → until when (Unix s), and
    /// the tags of it this shard has since seen opened or unarmed. A blob stored for a dest not
    /// in `push_armed` whose tag is live here moves the dest into `push_armed` and asks for a
    /// wake. Both are dropped once every tag is done.
    push_armed_tags: Option<(PushTags, AHashSet<[u8; 16]>)>,
    /// What this shard's connections and outboxes hold, against `cfg.memory_bytes_max`.
    memory: Memory,
    /// Seed, levels, seen answers and capability verifiers of the send puzzles.
    puzzle: PuzzleGate,
    /// Puzzle answers each connection may have checked per second.
    puzzle_checks: crate::ratelimit::KeyedLimiter<ConnId>,
    /// Every connection's next deadline (lazily invalidated; bounded by rebuilds, see
    /// `crate::timers`): a tick takes off what is due and nothing else.
    deadlines: Deadlines<ConnId>,
}

impl Shard {
    /// A shard of the node (its store, if any, on segment files: [`Shard::with_store`]).
    pub fn new(cfg: ShardConfig, metrics: Arc<ShardMetrics>) -> Self {
        Shard::on_backend(cfg, metrics)
    }
}

impl<B: Backend> Shard<B> {
    /// A shard whose store, once given ([`Shard::with_store`]), is on backend `B`: the
    /// simulator's `Shard::<MemBackend>::on_backend(..)`.
    pub fn on_backend(cfg: ShardConfig, metrics: Arc<ShardMetrics>) -> Self {
        assert!(
            cfg.shards > 0 && cfg.shards <= SHARDS_MAX,
            "{} shards: from 1 to SHARDS_MAX ({SHARDS_MAX})",
            cfg.shards
        );
        assert!(usize::from(cfg.shard) < cfg.shards);
        assert!(cfg.hop_queue_msgs_max > 0 && cfg.connections_max > 0);
        assert!(cfg.memory_bytes_max > 0);
        Shard {
            outbox: (0..cfg.shards).map(|_| Vec::new()).collect(),
            limiter: IpLimiter::new(cfg.ip_limits),
            table: ForwardTable::with_capacity(1024),
            conns: AHashMap::new(),
            next_conn: 1,
            ready: Vec::new(),
            held_readers: Vec::new(),
            force_close: Vec::new(),
            metrics,
            challenge_counter: 0,
            store: None,
            pending_stored: VecDeque::new(),
            queries: AHashMap::new(),
            next_query: 1,
            drain_short: AHashSet::new(),
            drain_behind: AHashSet::new(),
            handover: AHashSet::new(),
            last_expire_unix_s: 0,
            fatal: None,
            now: Now {
                mono_ms: 0,
                unix_s: 0,
            },
            service: None,
            media: None,
            media_upload: crate::ratelimit::KeyedLimiter::new(
                cfg.media_upload_rate,
                cfg.connections_max,
            ),
            push_armed: AHashMap::new(),
            push_armed_tags: None,
            memory: Memory::default(),
            puzzle: PuzzleGate::new(cfg.puzzle.clone()),
            puzzle_checks: crate::ratelimit::KeyedLimiter::new(
                cfg.puzzle.checks_per_conn,
                cfg.connections_max,
            ),
            deadlines: Deadlines::default(),
            cfg,
        }
    }

    pub fn id(&self) -> u16 {
        self.cfg.shard
    }

    pub fn metrics(&self) -> &Arc<ShardMetrics> {
        &self.metrics
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub fn table(&self) -> &ForwardTable {
        &self.table
    }

    /// Applies new limits (SIGHUP). Existing connections keep the limits they started with.
    pub fn set_limits(
        &mut self,
        conn_limits: ConnLimits,
        ip_limits: IpLimits,
        connections_max: usize,
    ) {
        self.cfg.conn_limits = conn_limits;
        self.cfg.ip_limits = ip_limits;
        self.cfg.connections_max = connections_max.max(1);
        self.limiter.set_limits(ip_limits);
    }

    /// Why the node must stop (an fsync failed), if it must.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    /// What this shard still holds that belongs to connections or requests: empty once every
    /// connection has closed and every message between cores has been handled (the simulator's
    /// check that closing leaks nothing). Each entry names what is left.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let mut note = |what: &str, n: usize| {
            if n > 0 {
                left.push(format!("{what}: {n}"));
            }
        };
        note("connections", self.conns.len());
        note("forward-table entries", self.table.len());
        note("outbox messages", self.outbox.iter().map(Vec::len).sum());
        note("ready connections", self.ready.len());
        note("held readers", self.held_readers.len());
        note("connections to force-close", self.force_close.len());
        note(
            "stored answers waiting for a sync",
            self.pending_stored.len(),
        );
        note("queries", self.queries.len());
        note("short drains", self.drain_short.len());
        note("connections behind on a drain", self.drain_behind.len());
        note("memory bytes charged", self.memory.bytes);
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::Rate;

    fn config(shard: u16, shards: usize) -> ShardConfig {
        let open = Rate { per_s: 0, burst: 0 };
        ShardConfig {
            shard,
            shards,
            node_id: [1; 32],
            seed: [2; 32],
            conn_limits: ConnLimits::default(),
            ip_limits: IpLimits::off(16),
            connections_max: 16,
            hop_queue_msgs_max: 16,
            store: None,
            media_upload_rate: open,
            memory_bytes_max: 1 << 30,
            puzzle: crate::puzzle::PuzzleConfig::default(),
        }
    }

    #[test]
    fn shard_indexes_fit_their_u16_up_to_the_limit() {
        assert_eq!(shard_index(0), 0);
        assert_eq!(shard_index(SHARDS_MAX - 1), u16::MAX);
        let last = Shard::new(
            config(u16::MAX, SHARDS_MAX),
            Arc::new(ShardMetrics::default()),
        );
        // The first 8 bytes of the dest, little-endian, modulo the shards.
        let mut d = [0u8; 16];
        d[..2].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(last.owner(&Dest(d)), u16::MAX);
    }

    #[test]
    #[should_panic(expected = "past SHARDS_MAX")]
    fn a_shard_index_past_the_limit_is_a_programming_error() {
        shard_index(SHARDS_MAX);
    }

    /// Once an owner past u16 was read as shard 0: every dest it owned went to the wrong core.
    #[test]
    #[should_panic(expected = "SHARDS_MAX")]
    fn more_shards_than_an_index_can_name_are_refused() {
        Shard::new(config(0, SHARDS_MAX + 1), Arc::new(ShardMetrics::default()));
    }
}
