//! The shard state machine: every connection on one core, the forward table for the dests this
//! core owns, and the outboxes of cross-core hops. Sans-IO: the driver feeds it bytes, hop batches
//! and ticks, and moves what it produces (connection output, hop batches) to sockets and channels.
//!
//! A packet for `dest` arriving on core C goes to owner O = `dest.owner(shards)` (the forward-table
//! lookup), then to the subscriber's core S (the socket write): at most two hops. Channels between
//! cores are FIFO, so packets keep their order per (sender connection, dest).

use std::net::IpAddr;
use std::sync::Arc;

use std::collections::VecDeque;

use ahash::{AHashMap, AHashSet};
use bytes::Bytes;
use ferry_proto::conn::{ConnLimits, Now, Push, ServerConn, ServerEvent};
use ferry_proto::frame::{Dest, DrainStatus, ErrorCode, FLAG_ACK, Frame, SendStatus};

/// Who sent a packet, as far as its outcome goes: the sending connection has proven `dest`
/// (a `Subscribe` or `Drain` proof, [`ServerConn::owns`]) or it has not. Only the owner may
/// learn whether the recipient is online: a stranger's successful send is answered `Accepted`,
/// whether it was delivered live or stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    Owner,
    Stranger,
}

impl Audience {
    /// The answer to a successful send (`Delivered` or `Stored`), or `None` when none is due.
    /// The owner gets `Delivered` with `FLAG_ACK` and `Stored` always (as before); a stranger
    /// gets `Accepted` with `FLAG_ACK` and nothing without it, so neither the status nor whether
    /// an answer comes at all tells a live delivery from a stored one.
    pub fn success(self, status: SendStatus, flags: u8) -> Option<SendStatus> {
        debug_assert!(matches!(status, SendStatus::Delivered | SendStatus::Stored));
        let ack = flags & FLAG_ACK != 0;
        match (self, status) {
            (Audience::Owner, SendStatus::Delivered) => ack.then_some(SendStatus::Delivered),
            (Audience::Owner, _) => Some(status),
            (Audience::Stranger, _) => ack.then_some(SendStatus::Accepted),
        }
    }
}

use crate::store::backend::MmapBackend;
use crate::store::format::Pos;
use crate::store::{Log, StoreError};

use crate::metrics::ShardMetrics;
use crate::puzzle::{Gate, Passed, PuzzleGate};
use crate::ratelimit::{Bucket, IpKey, IpLimiter, IpLimits};
use crate::table::{ConnRef, ForwardTable};
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
/// The smallest per-shard memory budget: a few maximal frames and connections must fit.
pub const MEMORY_BYTES_MIN: usize = 4 << 20;
const _: () =
    assert!(MEMORY_BYTES_MIN >= 16 * (ferry_proto::limits::FRAME_BYTES_MAX + CONN_BASE_BYTES));
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

/// The core that stores media blob `id`: its first 8 bytes, little-endian, modulo the shards.
pub fn media_owner(id: &[u8; 32], shards: usize) -> usize {
    let mut head = [0u8; 16];
    head.copy_from_slice(&id[..16]);
    ferry_proto::Dest(head).owner(shards)
}

/// The store settings of the node; each shard keeps its log in `dir/shard-<id>`.
#[derive(Clone, Debug)]
pub struct StoreSpec {
    pub dir: std::path::PathBuf,
    pub limits: crate::store::StoreLimits,
    pub policy: crate::store::FsyncPolicy,
}

/// A message between cores. Batches of them travel over the bounded mesh channels.
#[derive(Clone, Debug)]
pub enum HopMsg {
    /// Sender's core → owner: look `dest` up (and store the packet if nobody listens).
    Route(Packet),
    /// Owner → sender's core: the packet needs a puzzle answer of `effort` (answered
    /// `Puzzle` + `SendResult PuzzleRequired`).
    Puzzle {
        to: u64,
        dest: Dest,
        msg_id: u64,
        effort: u32,
    },
    /// Registrant's core → owner: keep (or with `ttl_s` 0 drop) the capability verifier of `dest`.
    Capability {
        dest: Dest,
        from: ConnRef,
        ttl_s: u32,
        verifier: [u8; 32],
    },
    /// Owner → registrant's core: the answer to `Capability`.
    CapabilityResult {
        to: u64,
        dest: Dest,
        status: ferry_proto::CapabilityStatus,
    },
    /// Owner → subscriber's core: write to connection `to`.
    Deliver {
        dest: Dest,
        to: u64,
        from: ConnRef,
        audience: Audience,
        msg_id: u64,
        flags: u8,
        payload: Bytes,
    },
    /// → sender's core: the outcome of a Send.
    Result {
        to: u64,
        dest: Dest,
        msg_id: u64,
        status: SendStatus,
    },
    /// Subscriber's core → owner.
    Subscribe { dest: Dest, sub: ConnRef },
    /// Subscriber's core → owner; also sent by a core that found the subscriber gone.
    Unsubscribe { dest: Dest, sub: ConnRef },
    /// Owner → previous subscriber's core: another connection took `dest` over.
    TakenOver { to: u64, dest: Dest },
    /// Owner → subscriber's core: the entry is in the forward table.
    Subscribed { to: u64, dest: Dest },
    /// Asker's core → owner: which of these (owned) dests hold stored blobs?
    Query {
        dests: Vec<Dest>,
        from: ConnRef,
        query: u64,
    },
    /// Owner → asker's core: the part of the answer this owner knows.
    QueryResult { query: u64, dests: Vec<Dest> },
    /// Drainer's core → owner: send the stored blobs of `dest`.
    Drain { dest: Dest, from: ConnRef },
    /// Owner → drainer's (or new subscriber's) core: one stored blob.
    StoredBlob {
        to: u64,
        dest: Dest,
        pos: u64,
        msg_id: u64,
        payload: Bytes,
    },
    /// Owner → drainer's core: that was all (`Done`) or the batch limit (`More`).
    DrainEnd { to: u64, dest: Dest, more: bool },
    /// Acker's core → owner: delete these stored blobs.
    Ack { items: Vec<(Dest, u64)> },
}

impl HopMsg {
    /// Heap bytes this message holds while queued (its payload or lists, and itself).
    fn memory_bytes(&self) -> usize {
        let body = match self {
            HopMsg::Route(Packet { payload, .. })
            | HopMsg::Deliver { payload, .. }
            | HopMsg::StoredBlob { payload, .. } => payload.len(),
            HopMsg::Query { dests, .. } | HopMsg::QueryResult { dests, .. } => {
                dests.len() * std::mem::size_of::<Dest>()
            }
            HopMsg::Ack { items } => items.len() * std::mem::size_of::<(Dest, u64)>(),
            _ => 0,
        };
        body + std::mem::size_of::<HopMsg>()
    }

    /// Packets, which may be refused when an outbox is full; everything else (replies and control)
    /// is bounded by the packets and connections that caused it and is never dropped.
    fn is_data(&self) -> bool {
        matches!(self, HopMsg::Route(_) | HopMsg::Deliver { .. })
    }
}

/// The message that stops the node when the store cannot sync.
fn sync_failure(e: &dyn std::fmt::Display) -> String {
    format!("store fsync failed, durability unknown: {e}")
}

/// A packet on its way to its dest's owner (on the sender's core, or in a `HopMsg::Route`).
#[derive(Clone, Debug)]
pub struct Packet {
    dest: Dest,
    from: ConnRef,
    /// Whether the sender proved the dest: what it may learn of the outcome.
    audience: Audience,
    /// The sender's address prefix, which the owner's store charges (memory only).
    source: IpKey,
    msg_id: u64,
    flags: u8,
    ttl_s: u32,
    payload: Bytes,
    /// The sender core's verdict on the send's puzzle answer or capability, if it carried one.
    passed: Option<Box<Passed>>,
}

/// What the store did with a packet.
#[derive(Debug)]
enum Stored {
    Accepted,
    Refused(SendStatus),
    /// The dest or the store is under pressure and the packet carried no valid pass: the
    /// sender must solve a puzzle of this effort (the caller tells it, or delivers live).
    Puzzle(u32),
    Fatal,
}

/// Answer to a new connection.
#[derive(Debug)]
pub enum Accept {
    Ok(u64),
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

#[derive(Debug)]
struct Conn {
    sm: ServerConn,
    ip: IpKey,
    /// Proof checks this connection may still have (`IpLimits::proofs_per_conn`, the rate it
    /// was accepted under).
    proofs: (Bucket, crate::ratelimit::Rate),
    in_ready: bool,
    /// In `Shard::held_readers`: the driver parked this connection's reader (backpressure).
    read_held: bool,
    close_counted: bool,
    abort_sent: bool,
    /// What this connection is charged in `Shard::memory` (base + buffers), as last counted.
    charged: usize,
    /// The deadline this connection has in `Shard::deadlines` (at most its true one,
    /// `sm.poll_timeout()`); `None`: no live entry.
    armed_ms: Option<u64>,
}

/// A shard's memory account (sans-IO: the shard counts, the driver reads and trims).
#[derive(Debug, Default)]
struct Memory {
    /// Bytes charged now: every connection's `charged` plus the outboxes.
    bytes: usize,
    /// Of those, the outboxes' messages.
    outbox_bytes: usize,
    /// The most `bytes` reached since the allocator was last trimmed.
    peak_since_trim: usize,
    last_trim_ms: u64,
}

/// A connection that may be shed, with what decides its place in the order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShedCandidate {
    pub conn: u64,
    /// Bytes it holds beyond `CONN_BASE_BYTES`.
    pub held_bytes: usize,
    /// Since when it holds them stuck (`ServerConn::held_since_ms`); `None` sorts last.
    pub held_since_ms: Option<u64>,
}

/// The order connections are shed in when a shard is over its memory budget: those holding the
/// most bytes first (the slowest readers' queues, the largest partial frames); among equals, the
/// one stuck the longest (the oldest partial frame or stalled output); then the oldest
/// connection. Connections holding nothing beyond their base are never shed (shedding them frees
/// little; the budget refuses new connections instead).
pub fn shed_order(candidates: &mut Vec<ShedCandidate>) {
    candidates.retain(|c| c.held_bytes > 0);
    candidates.sort_unstable_by(|a, b| {
        b.held_bytes
            .cmp(&a.held_bytes)
            .then_with(|| {
                a.held_since_ms
                    .unwrap_or(u64::MAX)
                    .cmp(&b.held_since_ms.unwrap_or(u64::MAX))
            })
            .then_with(|| a.conn.cmp(&b.conn))
    });
}

/// The dest tags of sealed push registrations → until when (Unix s), shared by every shard
/// (`ServiceReply::PushArmTags`).
type PushTags = std::sync::Arc<AHashMap<[u8; 16], u64>>;

/// One core's share of the node.
#[derive(Debug)]
pub struct Shard {
    cfg: ShardConfig,
    conns: AHashMap<u64, Conn>,
    next_conn: u64,
    table: ForwardTable,
    outbox: Vec<Vec<HopMsg>>,
    ready: Vec<u64>,
    /// Connections whose reader the driver parked (backpressure), each at most once (bounded by
    /// the open connections; `Conn::read_held` marks them). They resume on the event that ends
    /// the pressure (a write completing, a hop batch leaving, the connection closing), never on
    /// a timer: see `hold_reader` and `take_resumed`.
    held_readers: Vec<u64>,
    force_close: Vec<u64>,
    limiter: IpLimiter,
    metrics: Arc<ShardMetrics>,
    challenge_counter: u64,
    /// The store-and-forward log of the dests this shard owns (none: offline = NoSubscriber).
    store: Option<Log<MmapBackend>>,
    /// "Stored" (or, to a stranger, "Accepted") replies waiting for their append to be durable:
    /// (append seq, sender, dest, msg id, the status to answer).
    pending_stored: VecDeque<(u64, ConnRef, Dest, u64, SendStatus)>,
    /// Queries of local connections waiting for owner answers: id → (conn, owners left, dests).
    queries: AHashMap<u64, (u64, usize, Vec<Dest>)>,
    next_query: u64,
    /// (conn, dest) whose drain lost a blob to a full send queue: its DrainEnd says More.
    drain_short: AHashSet<(u64, Dest)>,
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
    media_upload: crate::ratelimit::KeyedLimiter<u64>,
    /// Owned dests with push registrations → (until when, Unix s; when a wake was last offered,
    /// monotonic ms): a blob stored for one of them while nobody listens asks the service core
    /// for a wake, at most once per `WAKE_OFFER_INTERVAL_MS`. Maintained by the service core.
    push_armed: AHashMap<Dest, (u64, u64)>,
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
    puzzle_checks: crate::ratelimit::KeyedLimiter<u64>,
    /// Every connection's next deadline (lazily invalidated; bounded by rebuilds, see
    /// `crate::timers`): a tick takes off what is due and nothing else.
    deadlines: Deadlines<u64>,
}

impl Shard {
    pub fn new(cfg: ShardConfig, metrics: Arc<ShardMetrics>) -> Self {
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

    /// Connects this shard to the media workers (index = owner core).
    pub fn with_media(mut self, sinks: Vec<Arc<dyn crate::service::ServiceSink>>) -> Self {
        assert_eq!(sinks.len(), self.cfg.shards);
        self.media = Some(sinks);
        self
    }

    /// Hands a media request to the worker of the blob's owner core; refusals answer at once.
    fn hand_to_media(
        &mut self,
        now: Now,
        from: ConnRef,
        source: IpKey,
        op: ferry_proto::conn::BlobOp,
    ) {
        use ferry_proto::conn::BlobOp;
        let refuse = |status| Frame::BlobStatus {
            id: *op.id(),
            op: op.kind(),
            status,
            offset: op.offset(),
            size: 0,
        };
        let refused = match &op {
            BlobOp::Chunk { data, .. }
                if !self
                    .media_upload
                    .allow_n(from.conn, now.mono_ms, data.len() as u64) =>
            {
                Some(refuse(ferry_proto::BlobStatus::RateLimited))
            }
            _ => None,
        };
        if let Some(frame) = refused {
            self.answer(from.conn, &frame);
            return;
        }
        let owner = media_owner(op.id(), self.cfg.shards);
        let req = crate::service::ServiceRequest {
            from,
            work: crate::service::ServiceWork::Blob { op, source },
        };
        let refused = match self.media.as_ref().and_then(|m| m.get(owner)) {
            None => req.refusal(false),
            Some(sink) => match sink.offer(req) {
                Ok(()) => return,
                Err(req) => {
                    ShardMetrics::inc(&self.metrics.media_queue_full);
                    req.refusal(true)
                }
            },
        };
        if let Some(frame) = refused {
            self.answer(from.conn, &frame);
        }
    }

    /// Queues `frame` on local connection `conn`, if it is still open.
    fn answer(&mut self, conn: u64, frame: &Frame) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sm.push_frame(frame);
            self.mark_ready(conn);
        }
    }

    /// Connects this shard to the service core.
    pub fn with_service(mut self, sink: Arc<dyn crate::service::ServiceSink>) -> Self {
        self.service = Some(sink);
        self
    }

    /// Hands work to the service core without ever waiting: a full queue answers the client
    /// `Busy` (a wake is dropped) and counts.
    fn hand_to_service(&mut self, from: ConnRef, work: crate::service::ServiceWork) {
        let req = crate::service::ServiceRequest { from, work };
        let refused = match self.service.as_ref() {
            None => req.refusal(false),
            Some(sink) => match sink.offer(req) {
                Ok(()) => {
                    ShardMetrics::inc(&self.metrics.service_requests);
                    return;
                }
                Err(req) => {
                    ShardMetrics::inc(&self.metrics.service_queue_full);
                    req.refusal(true)
                }
            },
        };
        if let Some(frame) = refused {
            self.answer(from.conn, &frame);
        }
    }

    /// An answer from the service core.
    pub fn on_service(&mut self, now: Now, reply: crate::service::ServiceReply) {
        self.now = now;
        match reply {
            crate::service::ServiceReply::Frame { to, frame } => self.answer(to, &frame),
            crate::service::ServiceReply::PushArm { dest, until_unix_s } => {
                debug_assert_eq!(self.owner(&dest), self.cfg.shard);
                if until_unix_s > now.unix_s {
                    self.push_armed.entry(dest).or_insert((0, 0)).0 = until_unix_s;
                } else {
                    self.push_armed.remove(&dest);
                }
                self.store_push_armed_gauge();
            }
            crate::service::ServiceReply::PushArmTags { tags } => {
                self.push_armed_tags = (!tags.is_empty()).then(|| (tags, AHashSet::new()));
                self.store_push_armed_gauge();
            }
            crate::service::ServiceReply::PushUnarmTag { tag } => self.unarm_tag(tag),
        }
        self.enforce_memory();
    }

    /// `ferry_push_armed_dests` (the armed dests this shard owns) and `ferry_push_armed_tags`.
    fn store_push_armed_gauge(&self) {
        self.metrics.push_armed.store(
            self.push_armed.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let tags = self
            .push_armed_tags
            .as_ref()
            .map_or(0, |(tags, done)| tags.len().saturating_sub(done.len()));
        self.metrics
            .push_armed_tags
            .store(tags as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// `tag` needs no lookup any more; the shared map and the done set go once all are done.
    fn unarm_tag(&mut self, tag: [u8; 16]) {
        if let Some((tags, done)) = &mut self.push_armed_tags {
            if tags.contains_key(&tag) {
                done.insert(tag);
            }
            if done.len() >= tags.len() {
                self.push_armed_tags = None;
            }
        }
        self.store_push_armed_gauge();
    }

    /// A blob was just stored for `dest` while nobody listens: ask for a push wake if the dest
    /// has registrations. The service core coalesces per device.
    fn maybe_wake(&mut self, now: Now, dest: Dest) {
        if !self.push_armed.contains_key(&dest) {
            if let Some((tags, done)) = &self.push_armed_tags {
                // A registration the restarted service core knows only by its tag: the dest
                // joins `push_armed`, and the service opens the registration with the dest.
                let tag = crate::service::push_dest_tag(&dest);
                if let Some(&until) = tags.get(&tag).filter(|_| !done.contains(&tag)) {
                    self.push_armed.insert(dest, (until, 0));
                    self.store_push_armed_gauge();
                    self.unarm_tag(tag);
                }
            }
        }
        match self.push_armed.get_mut(&dest) {
            None => return,
            Some(&mut (until, _)) if until <= now.unix_s => {
                self.push_armed.remove(&dest);
                self.store_push_armed_gauge();
                return;
            }
            Some((_, last)) if *last != 0 && now.mono_ms < *last + WAKE_OFFER_INTERVAL_MS => {
                return;
            }
            Some((_, last)) => *last = now.mono_ms.max(1),
        }
        let from = ConnRef {
            shard: self.cfg.shard,
            conn: 0,
        };
        self.hand_to_service(from, crate::service::ServiceWork::Wake { dest });
    }

    /// Gives this shard its store (opened and replayed by the driver before the shard serves).
    pub fn with_store(mut self, log: Log<MmapBackend>) -> Self {
        self.metrics
            .store_blobs
            .store(log.blobs() as u64, std::sync::atomic::Ordering::Relaxed);
        self.store = Some(log);
        self
    }

    /// Why the node must stop (an fsync failed), if it must.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    /// Syncs the store one last time (shutdown).
    /// Syncs the store now (the drain on SIGTERM) and answers `Stored` to the senders that sync
    /// covers, so a stop acknowledges everything it made durable.
    pub fn flush_store(&mut self) -> Result<(), String> {
        let Some(log) = self.store.as_mut() else {
            return Ok(());
        };
        log.sync_now().map_err(|e| e.to_string())?;
        let durable = log.durable_seq();
        self.release_stored(durable);
        Ok(())
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

    fn next_challenge(&mut self) -> [u8; 32] {
        self.challenge_counter += 1;
        let mut h = blake3::Hasher::new_keyed(&self.cfg.seed);
        h.update(b"ferry challenge");
        h.update(&self.challenge_counter.to_le_bytes());
        *h.finalize().as_bytes()
    }

    /// A new connection from `ip`.
    pub fn accept(&mut self, now: Now, ip: IpAddr) -> Accept {
        let key = IpKey::from(ip);
        let refuse = |code: ErrorCode, msg: &str| {
            Accept::Refused(
                Frame::Error {
                    code,
                    message: msg.to_string(),
                }
                .to_bytes(),
            )
        };
        if self.conns.len() >= self.cfg.connections_max {
            ShardMetrics::inc(&self.metrics.connections_refused_limit);
            return refuse(ErrorCode::ConnectionLimit, "node connection limit reached");
        }
        if !self.memory_room(CONN_BASE_BYTES) {
            ShardMetrics::inc(&self.metrics.connections_refused_memory);
            return refuse(ErrorCode::Overloaded, "node memory budget reached");
        }
        if !self.limiter.may_open(key) {
            ShardMetrics::inc(&self.metrics.connections_refused_ip_limit);
            return refuse(
                ErrorCode::ConnectionLimit,
                "too many open connections from this address",
            );
        }
        if !self.limiter.allow_connection(key, now.mono_ms) {
            ShardMetrics::inc(&self.metrics.connections_refused_rate);
            return refuse(
                ErrorCode::RateLimited,
                "too many new connections from this address",
            );
        }
        self.limiter.on_open(key);
        let id = self.next_conn;
        self.next_conn += 1;
        let challenge = self.next_challenge();
        let sm = ServerConn::new(
            self.cfg.conn_limits.clone(),
            self.cfg.node_id,
            self.cfg.shard,
            challenge,
            now,
        );
        self.conns.insert(
            id,
            Conn {
                sm,
                ip: key,
                proofs: {
                    let rate = self.limiter.proofs_per_conn();
                    (Bucket::full(rate, now.mono_ms), rate)
                },
                in_ready: false,
                read_held: false,
                close_counted: false,
                abort_sent: false,
                charged: 0,
                armed_ms: None,
            },
        );
        self.recharge(id);
        self.arm(id);
        ShardMetrics::inc(&self.metrics.connections_accepted);
        ShardMetrics::inc(&self.metrics.connections_open);
        Accept::Ok(id)
    }

    /// Bytes read from connection `conn`. Returns how long (ms) reading from it should pause for
    /// the per-address byte rate; 0 = keep reading.
    pub fn on_bytes(&mut self, now: Now, conn: u64, data: &[u8]) -> u64 {
        let Some(c) = self.conns.get_mut(&conn) else {
            return 0;
        };
        ShardMetrics::add(&self.metrics.bytes_in, data.len() as u64);
        let pause = self
            .limiter
            .charge_bytes(c.ip, now.mono_ms, data.len() as u64);
        if pause > 0 {
            ShardMetrics::inc(&self.metrics.read_pauses_rate);
        }
        c.sm.on_bytes(now, data);
        let frames_before = c.sm.frames_in;
        self.process(now, conn);
        if let Some(c) = self.conns.get(&conn) {
            ShardMetrics::add(&self.metrics.frames_in, c.sm.frames_in - frames_before);
        }
        // A partial frame reserved its whole length, output queues grew: if that went over the
        // budget, shed (`process` ends in `mark_ready`, which charged this connection).
        self.enforce_memory();
        pause
    }

    /// How long (ms) the driver must wait before reading `conn` again: until the byte bucket its
    /// address shares with the address's other connections is positive. 0 = read now.
    pub fn read_pause_ms(&mut self, now: Now, conn: u64) -> u64 {
        match self.conns.get(&conn) {
            Some(c) => self.limiter.bytes_pause_ms(c.ip, now.mono_ms),
            None => 0,
        }
    }

    /// Whether the driver should keep reading `conn` (its own output is not backlogged).
    pub fn wants_read(&self, conn: u64) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.sm.wants_read())
    }

    /// Backpressure, asked by the driver before each read of `conn`: true when the reader must
    /// wait (an outbox towards another core is over half full, or the connection's own replies
    /// are backlogged because it sends but does not read). The connection is then held until
    /// [`Shard::take_resumed`] names it, which happens on the event that ends the pressure, not
    /// on a timer. False for a connection the shard no longer knows: its read fails and ends it.
    pub fn hold_reader(&mut self, conn: u64) -> bool {
        let pressure = self.outbox_pressure();
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if !pressure && c.sm.wants_read() {
            return false;
        }
        if !c.read_held {
            c.read_held = true;
            self.held_readers.push(conn);
            ShardMetrics::inc(&self.metrics.read_pauses_backpressure);
        }
        true
    }

    /// Held readers that may read again (the pressure is gone, or the connection closed); the
    /// driver wakes them. Call after anything that drains output or outboxes: a completed write
    /// (`on_written`), a taken hop batch (`take_outbox`), a close. Work is proportional to the
    /// readers held, none when nothing is.
    pub fn take_resumed(&mut self, into: &mut Vec<u64>) {
        if self.held_readers.is_empty() {
            return;
        }
        let pressure = self.outbox_pressure();
        let conns = &mut self.conns;
        self.held_readers
            .retain(|&conn| match conns.get_mut(&conn) {
                None => {
                    into.push(conn);
                    false
                }
                Some(c) if !pressure && c.sm.wants_read() => {
                    c.read_held = false;
                    into.push(conn);
                    false
                }
                Some(_) => true,
            });
    }

    fn process(&mut self, now: Now, conn: u64) {
        self.now = now;
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            let Some(ev) = c.sm.poll_event(now) else {
                break;
            };
            let ip = c.ip;
            let from = ConnRef {
                shard: self.cfg.shard,
                conn,
            };
            match ev {
                ServerEvent::Send {
                    dest,
                    msg_id,
                    flags,
                    ttl_s,
                    pass,
                    payload,
                } => {
                    ShardMetrics::inc(&self.metrics.packets_sent);
                    let audience = if c.sm.owns(&dest) {
                        Audience::Owner
                    } else {
                        Audience::Stranger
                    };
                    let passed =
                        self.check_pass(now, conn, ip, &dest, msg_id, ttl_s, &pass, &payload);
                    let owner = self.owner(&dest);
                    let source = self.source_key(ip);
                    if !self.memory_room(payload.len()) {
                        // Refused before it is queued anywhere: dropping it frees it.
                        ShardMetrics::inc(&self.metrics.drops_memory);
                        self.reply(from, dest, msg_id, SendStatus::Congested);
                    } else {
                        let packet = Packet {
                            dest,
                            from,
                            audience,
                            source,
                            msg_id,
                            flags,
                            ttl_s,
                            payload,
                            passed,
                        };
                        if owner == self.cfg.shard {
                            self.route(now, packet);
                        } else if !self.hop(owner, HopMsg::Route(packet)) {
                            ShardMetrics::inc(&self.metrics.drops_hop_queue_full);
                            self.reply(from, dest, msg_id, SendStatus::Congested);
                        }
                    }
                }
                ServerEvent::Prove { items } => {
                    if !self.limiter.proofs_allowed(ip, now.mono_ms) {
                        ShardMetrics::add(&self.metrics.proofs_rate_limited, items.len() as u64);
                        c.sm.refuse_proofs(&items);
                    } else {
                        // Every signature check is paid from the connection's budget and its
                        // address's; proofs it already verified are answered from its cache.
                        let (bucket, rate) = &mut c.proofs;
                        let budget = bucket
                            .available(*rate, now.mono_ms)
                            .min(self.limiter.proofs_available(ip, now.mono_ms));
                        let fresh = c.sm.proofs_to_verify(now, &items);
                        let grant = usize::try_from(budget).unwrap_or(usize::MAX).min(fresh);
                        let tally = c.sm.answer_proofs_within(now, &items, grant);
                        let verified = u64::from(tally.verified);
                        bucket.take_available(*rate, now.mono_ms, verified);
                        self.limiter.take_proofs(ip, now.mono_ms, verified);
                        let m = &self.metrics;
                        ShardMetrics::add(&m.proofs_verified, verified);
                        ShardMetrics::add(&m.proofs_cached, u64::from(tally.cached));
                        ShardMetrics::add(&m.proofs_rate_limited, u64::from(tally.rate_limited));
                        ShardMetrics::add(&m.proofs_failed, u64::from(tally.failed));
                        ShardMetrics::add(&m.proofs_ok, u64::from(tally.accepted));
                        self.limiter.charge_proof_failures(
                            ip,
                            now.mono_ms,
                            u64::from(tally.failed),
                        );
                    }
                }
                ServerEvent::Subscribe { dests } => {
                    for dest in dests {
                        self.control(self.owner(&dest), HopMsg::Subscribe { dest, sub: from });
                    }
                }
                ServerEvent::Unsubscribe { dests } => {
                    for dest in dests {
                        self.control(self.owner(&dest), HopMsg::Unsubscribe { dest, sub: from });
                    }
                }
                ServerEvent::Query { dests } => self.query(now, conn, dests),
                ServerEvent::CapabilityRegister {
                    dest,
                    ttl_s,
                    verifier,
                } => {
                    let msg = HopMsg::Capability {
                        dest,
                        from,
                        ttl_s,
                        verifier,
                    };
                    self.control(self.owner(&dest), msg);
                }
                ServerEvent::Drain { dest } => {
                    ShardMetrics::inc(&self.metrics.store_drains);
                    self.control(self.owner(&dest), HopMsg::Drain { dest, from });
                }
                ServerEvent::Ack { items } => {
                    let mut by_owner: AHashMap<u16, Vec<(Dest, u64)>> = AHashMap::new();
                    for item in items {
                        by_owner.entry(self.owner(&item.0)).or_default().push(item);
                    }
                    for (owner, items) in by_owner {
                        self.control(owner, HopMsg::Ack { items });
                    }
                }
                ServerEvent::PrekeyUpload { upload } => {
                    let work = crate::service::ServiceWork::PrekeyUpload {
                        upload,
                        requester: ip,
                    };
                    self.hand_to_service(from, work);
                }
                ServerEvent::PrekeyFetch { dest, puzzle } => {
                    let work = crate::service::ServiceWork::PrekeyFetch {
                        dest,
                        requester: ip,
                        puzzle,
                    };
                    self.hand_to_service(from, work);
                }
                ServerEvent::PrekeyCount { dest } => {
                    self.hand_to_service(from, crate::service::ServiceWork::PrekeyCount { dest });
                }
                ServerEvent::PushRegister {
                    provider,
                    ttl_s,
                    token,
                    dests,
                } => {
                    let work = crate::service::ServiceWork::PushRegister {
                        provider,
                        ttl_s,
                        token,
                        dests,
                    };
                    self.hand_to_service(from, work);
                }
                ServerEvent::Blob(op) => self.hand_to_media(now, from, ip, op),
                ServerEvent::ChallengeRequested => {
                    let ch = self.next_challenge();
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.sm.issue_challenge(now, ch);
                    }
                }
            }
        }
        self.mark_ready(conn);
    }

    /// Sender's core: what a `Send`'s pass proves. A puzzle answer is checked only within the
    /// connection's puzzle-check budget and its address's proof-check budget (an Equi-X check
    /// costs about as much as two signature checks, `PUZZLE_CHECK_PROOF_COST`); past them it
    /// proves nothing, and the owner asks again.
    #[allow(clippy::too_many_arguments)]
    fn check_pass(
        &mut self,
        now: Now,
        conn: u64,
        ip: crate::ratelimit::IpKey,
        dest: &Dest,
        msg_id: u64,
        ttl_s: u32,
        pass: &ferry_proto::puzzle::SendPass,
        payload: &[u8],
    ) -> Option<Box<Passed>> {
        if pass.puzzle.is_none() && pass.capability.is_none() {
            return None;
        }
        let verifier = pass
            .capability
            .map(|t| ferry_proto::puzzle::capability_verifier(&t));
        let mut passed = Passed {
            effort: 0,
            answer_id: [0; 16],
            verifier,
        };
        if let Some(answer) = &pass.puzzle {
            let budget = self.limiter.proofs_available(ip, now.mono_ms) >= PUZZLE_CHECK_PROOF_COST
                && self.puzzle_checks.allow(conn, now.mono_ms);
            if budget {
                self.limiter
                    .take_proofs(ip, now.mono_ms, PUZZLE_CHECK_PROOF_COST);
                let digest = ferry_proto::puzzle::message_digest(msg_id, ttl_s, payload);
                match self.puzzle.check_answer(now.unix_s, dest, &digest, answer) {
                    Some(id) => {
                        ShardMetrics::inc(&self.metrics.puzzles_valid);
                        passed.effort = answer.effort;
                        passed.answer_id = id;
                    }
                    None => ShardMetrics::inc(&self.metrics.puzzles_invalid),
                }
            } else {
                ShardMetrics::inc(&self.metrics.puzzles_rate_limited);
            }
        }
        Some(Box::new(passed))
    }

    fn owner(&self, dest: &Dest) -> u16 {
        // Below `shards`, which `new` holds to SHARDS_MAX.
        shard_index(dest.owner(self.cfg.shards))
    }

    /// Queues a data message for `peer`; `false` when its outbox is full.
    fn hop(&mut self, peer: u16, msg: HopMsg) -> bool {
        debug_assert_ne!(peer, self.cfg.shard, "hop to self");
        debug_assert!(msg.is_data());
        if self.outbox[usize::from(peer)].len() >= self.cfg.hop_queue_msgs_max {
            return false;
        }
        self.enqueue(peer, msg);
        true
    }

    /// Appends `msg` to the outbox towards `peer`, charging it to the memory budget.
    fn enqueue(&mut self, peer: u16, msg: HopMsg) {
        let n = msg.memory_bytes();
        self.memory.outbox_bytes += n;
        self.memory.bytes += n;
        self.outbox[usize::from(peer)].push(msg);
    }

    /// Handles a control message here or queues it for `peer` (never dropped).
    fn control(&mut self, peer: u16, msg: HopMsg) {
        if peer == self.cfg.shard {
            self.on_hop(msg);
        } else {
            self.enqueue(peer, msg);
        }
    }

    /// The key the store charges a packet from address `ip` to: its prefix under the store's
    /// source limits (the address itself when the node has no store; it is not used then).
    fn source_key(&self, ip: IpKey) -> IpKey {
        match &self.cfg.store {
            Some(spec) => spec.limits.sources.key(ip),
            None => ip,
        }
    }

    /// Owner side of a packet.
    ///
    /// Hand-over: while a new subscriber drains what was stored, packets are stored behind the
    /// stored blobs so that it sees them in order. A packet the store refuses then (the dest's
    /// quota, a source's share, a full store: stored junk) is delivered live instead of refused,
    /// ahead of the blobs still stored: live delivery to a subscriber never depends on the store.
    fn route(&mut self, now: Now, p: Packet) {
        match self.table.lookup(&p.dest) {
            None => match self.store_packet(now, &p) {
                Stored::Refused(status) => self.reply(p.from, p.dest, p.msg_id, status),
                Stored::Puzzle(effort) => self.puzzle_required(&p, effort),
                Stored::Accepted | Stored::Fatal => {}
            },
            Some(sub) if self.handover.contains(&p.dest) => {
                if let Stored::Refused(_) | Stored::Puzzle(_) = self.store_packet(now, &p) {
                    ShardMetrics::inc(&self.metrics.handover_live);
                    self.forward(sub, p);
                }
            }
            Some(sub) => self.forward(sub, p),
        }
    }

    /// Tells the sender of a packet the store would not take without a pass which puzzle to solve.
    fn puzzle_required(&mut self, p: &Packet, effort: u32) {
        self.control(
            p.from.shard,
            HopMsg::Puzzle {
                to: p.from.conn,
                dest: p.dest,
                msg_id: p.msg_id,
                effort,
            },
        );
    }

    /// Owner side of a packet for live subscriber `sub`: deliver here or hop to its core.
    fn forward(&mut self, sub: ConnRef, p: Packet) {
        if sub.shard == self.cfg.shard {
            self.deliver(
                p.dest,
                sub.conn,
                (p.from, p.audience),
                p.msg_id,
                p.flags,
                &p.payload,
            );
            return;
        }
        let (dest, from, msg_id) = (p.dest, p.from, p.msg_id);
        let msg = HopMsg::Deliver {
            dest,
            to: sub.conn,
            from,
            audience: p.audience,
            msg_id,
            flags: p.flags,
            payload: p.payload,
        };
        if !self.hop(sub.shard, msg) {
            ShardMetrics::inc(&self.metrics.drops_hop_queue_full);
            self.reply(from, dest, msg_id, SendStatus::Congested);
        }
    }

    /// Subscriber side of a packet: queue it on the connection.
    fn deliver(
        &mut self,
        dest: Dest,
        to: u64,
        (from, audience): (ConnRef, Audience),
        msg_id: u64,
        flags: u8,
        payload: &[u8],
    ) {
        let frame_len = ferry_proto::limits::FRAME_PREFIX_BYTES
            + ferry_proto::limits::PACKET_HEADER_BYTES
            + payload.len();
        if self.conns.contains_key(&to) && !self.memory_room(frame_len) {
            ShardMetrics::inc(&self.metrics.drops_memory);
            self.reply(from, dest, msg_id, SendStatus::Congested);
            return;
        }
        let pushed = self
            .conns
            .get_mut(&to)
            .map(|c| c.sm.push_deliver(&dest, msg_id, flags, payload));
        let status = match pushed {
            Some(Push::Queued) => {
                ShardMetrics::inc(&self.metrics.packets_delivered);
                self.mark_ready(to);
                SendStatus::Delivered
            }
            Some(Push::QueueFull) => {
                ShardMetrics::inc(&self.metrics.drops_send_queue_full);
                SendStatus::Congested
            }
            Some(Push::Closing) => {
                // Going away: its subscriptions are removed when its socket closes.
                ShardMetrics::inc(&self.metrics.packets_no_subscriber);
                SendStatus::NoSubscriber
            }
            None => {
                // The subscriber closed and its unsubscribe is still on the way (or was lost to a
                // take-over race): clean the entry at the owner and tell the sender.
                let me = ConnRef {
                    shard: self.cfg.shard,
                    conn: to,
                };
                self.control(self.owner(&dest), HopMsg::Unsubscribe { dest, sub: me });
                ShardMetrics::inc(&self.metrics.packets_no_subscriber);
                SendStatus::NoSubscriber
            }
        };
        let answer = if status == SendStatus::Delivered {
            audience.success(status, flags)
        } else {
            Some(status)
        };
        if let Some(status) = answer {
            self.reply(from, dest, msg_id, status);
        }
    }

    /// Stores a packet for a dest nobody listens to (or one in hand-over). `Accepted`: the
    /// sender is answered (now, or at the group commit); `Refused`: the caller answers or
    /// delivers; `Fatal`: the store failed its sync and the node stops.
    fn store_packet(&mut self, now: Now, p: &Packet) -> Stored {
        let (dest, from, msg_id, flags, audience) = (p.dest, p.from, p.msg_id, p.flags, p.audience);
        // Under pressure the packet must carry a puzzle answer or the dest's capability first.
        let Some(log) = self.store.as_mut() else {
            ShardMetrics::inc(&self.metrics.packets_no_subscriber);
            return Stored::Refused(SendStatus::NoSubscriber);
        };
        if let Gate::Puzzle(effort) =
            self.puzzle
                .admit(now.unix_s, &dest, log.pressure(&dest), p.passed.as_deref())
        {
            ShardMetrics::inc(&self.metrics.puzzles_required);
            return Stored::Puzzle(effort);
        }
        let ttl = if p.ttl_s == 0 {
            u64::MAX
        } else {
            u64::from(p.ttl_s)
        };
        let appended = log.append_from(now.unix_s, dest, msg_id, ttl, &p.payload, Some(p.source));
        self.metrics.store_sources.store(
            log.sources_len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let m = &self.metrics;
        let status = match appended {
            Ok(a) => {
                if !a.duplicate {
                    ShardMetrics::inc(&m.store_appends);
                    ShardMetrics::inc(&m.store_blobs);
                    if a.source == Some(crate::store::fair::Source::Other) {
                        ShardMetrics::inc(&m.store_sources_overflow);
                    }
                    if self.table.lookup(&dest).is_none() {
                        self.maybe_wake(now, dest);
                    }
                }
                let Some(answer) = audience.success(SendStatus::Stored, flags) else {
                    // A stranger without FLAG_ACK: no answer, as for a live delivery.
                    return Stored::Accepted;
                };
                let durable = self.store.as_ref().map_or(u64::MAX, |l| l.durable_seq());
                if a.seq > durable {
                    // Answered once the group commit covers it (on_tick).
                    self.pending_stored
                        .push_back((a.seq, from, dest, msg_id, answer));
                } else {
                    self.reply(from, dest, msg_id, answer);
                }
                return Stored::Accepted;
            }
            Err(StoreError::DestQuota) => {
                ShardMetrics::inc(&m.store_refused_quota);
                SendStatus::QuotaExceeded
            }
            Err(StoreError::SourceDestShare) => {
                ShardMetrics::inc(&m.store_refused_source_dest_share);
                SendStatus::QuotaExceeded
            }
            Err(StoreError::SourceShare) => {
                ShardMetrics::inc(&m.store_refused_source_share);
                SendStatus::StoreFull
            }
            Err(StoreError::SourcePressure) => {
                ShardMetrics::inc(&m.store_refused_pressure);
                SendStatus::StoreFull
            }
            Err(StoreError::SyncFailed(e)) => {
                self.fatal = Some(sync_failure(&e));
                return Stored::Fatal;
            }
            Err(e) => {
                if !matches!(e, StoreError::StoreFull) {
                    tracing::warn!(error = %e, "store append failed");
                }
                ShardMetrics::inc(&m.store_refused_full);
                SendStatus::StoreFull
            }
        };
        Stored::Refused(status)
    }

    /// A local connection's query: answered here for owned dests, by owners for the rest, and
    /// returned to the client as one QueryResult once every owner has answered.
    fn query(&mut self, now: Now, conn: u64, dests: Vec<Dest>) {
        let mut by_owner: AHashMap<u16, Vec<Dest>> = AHashMap::new();
        for d in dests {
            by_owner.entry(self.owner(&d)).or_default().push(d);
        }
        let id = self.next_query;
        self.next_query += 1;
        self.queries.insert(id, (conn, by_owner.len(), Vec::new()));
        let from = ConnRef {
            shard: self.cfg.shard,
            conn,
        };
        if by_owner.is_empty() {
            self.query_answer(id, Vec::new());
        }
        for (owner, dests) in by_owner {
            if owner == self.cfg.shard {
                let holding = self.holding(now, &dests);
                self.query_answer(id, holding);
            } else {
                self.enqueue(
                    owner,
                    HopMsg::Query {
                        dests,
                        from,
                        query: id,
                    },
                );
            }
        }
    }

    fn holding(&self, now: Now, dests: &[Dest]) -> Vec<Dest> {
        self.store
            .as_ref()
            .map(|l| l.holding(dests, now.unix_s))
            .unwrap_or_default()
    }

    fn query_answer(&mut self, id: u64, mut dests: Vec<Dest>) {
        let Some(q) = self.queries.get_mut(&id) else {
            return;
        };
        q.2.append(&mut dests);
        q.1 = q.1.saturating_sub(1);
        if q.1 == 0 {
            let Some((conn, _, dests)) = self.queries.remove(&id) else {
                return;
            };
            if let Some(c) = self.conns.get_mut(&conn) {
                c.sm.push_frame(&Frame::QueryResult { dests });
                self.mark_ready(conn);
            }
        }
    }

    /// Owner side of a drain: up to DRAIN_BLOBS_MAX stored blobs of `dest` to `to`, then DrainEnd.
    fn send_stored(&mut self, now: Now, dest: Dest, to: ConnRef) {
        let mut msgs = Vec::new();
        let mut more = false;
        if let Some(log) = self.store.as_ref() {
            let (blobs, rest) =
                log.drain_batch(&dest, now.unix_s, DRAIN_BLOBS_MAX, DRAIN_BYTES_MAX);
            more = rest;
            for (e, payload) in blobs {
                msgs.push(HopMsg::StoredBlob {
                    to: to.conn,
                    dest,
                    pos: e.pos.to_u64(),
                    msg_id: e.msg_id,
                    payload: Bytes::copy_from_slice(payload),
                });
            }
        }
        if more {
            self.handover.insert(dest);
        } else {
            self.handover.remove(&dest);
        }
        msgs.push(HopMsg::DrainEnd {
            to: to.conn,
            dest,
            more,
        });
        for m in msgs {
            self.control(to.shard, m);
        }
    }

    fn reply(&mut self, to: ConnRef, dest: Dest, msg_id: u64, status: SendStatus) {
        if to.shard == self.cfg.shard {
            if let Some(c) = self.conns.get_mut(&to.conn) {
                c.sm.send_result(dest, msg_id, status);
                self.mark_ready(to.conn);
            }
        } else {
            // Never dropped: a reply answers a packet that is itself bounded by the hop queues and
            // channels on its way, so replies in flight are bounded too.
            self.enqueue(
                to.shard,
                HopMsg::Result {
                    to: to.conn,
                    dest,
                    msg_id,
                    status,
                },
            );
        }
    }

    /// A batch of messages from another core.
    pub fn on_hops(&mut self, now: Now, msgs: Vec<HopMsg>) {
        self.now = now;
        for msg in msgs {
            self.on_hop(msg);
        }
        self.enforce_memory();
    }

    fn on_hop(&mut self, msg: HopMsg) {
        let now = self.now;
        match msg {
            HopMsg::Route(packet) => self.route(now, packet),
            HopMsg::Puzzle {
                to,
                dest,
                msg_id,
                effort,
            } => {
                let seed = self.puzzle.seed(now.unix_s);
                if let Some(c) = self.conns.get_mut(&to) {
                    c.sm.puzzle_required(dest, msg_id, seed, effort);
                    self.mark_ready(to);
                }
            }
            HopMsg::Capability {
                dest,
                from,
                ttl_s,
                verifier,
            } => {
                let status = self.puzzle.register(now.unix_s, dest, ttl_s, verifier);
                self.control(
                    from.shard,
                    HopMsg::CapabilityResult {
                        to: from.conn,
                        dest,
                        status,
                    },
                );
            }
            HopMsg::CapabilityResult { to, dest, status } => {
                if let Some(c) = self.conns.get_mut(&to) {
                    c.sm.capability_result(dest, status);
                    self.mark_ready(to);
                }
            }
            HopMsg::Deliver {
                dest,
                to,
                from,
                audience,
                msg_id,
                flags,
                payload,
            } => self.deliver(dest, to, (from, audience), msg_id, flags, &payload),
            HopMsg::Result {
                to,
                dest,
                msg_id,
                status,
            } => {
                let here = ConnRef {
                    shard: self.cfg.shard,
                    conn: to,
                };
                self.reply(here, dest, msg_id, status);
            }
            HopMsg::Subscribe { dest, sub } => {
                debug_assert_eq!(self.owner(&dest), self.cfg.shard);
                if let Some(old) = self.table.subscribe(dest, sub) {
                    self.control(old.shard, HopMsg::TakenOver { to: old.conn, dest });
                }
                self.control(sub.shard, HopMsg::Subscribed { to: sub.conn, dest });
                self.metrics.subscriptions.store(
                    self.table.len() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                // Hand-over: what was stored goes first, on the same FIFO path as the live
                // packets that follow, so nothing is skipped in between.
                if self
                    .store
                    .as_ref()
                    .is_some_and(|l| !l.holding(&[dest], now.unix_s).is_empty())
                {
                    self.send_stored(now, dest, sub);
                } else {
                    // Nothing (left) to hand over: live from now on.
                    self.handover.remove(&dest);
                }
            }
            HopMsg::Unsubscribe { dest, sub } => {
                if self.table.unsubscribe(&dest, sub) {
                    // Offline again: new packets are stored anyway.
                    self.handover.remove(&dest);
                }
                self.metrics.subscriptions.store(
                    self.table.len() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            HopMsg::TakenOver { to, dest } => {
                if let Some(c) = self.conns.get_mut(&to) {
                    c.sm.on_taken_over(dest);
                    self.mark_ready(to);
                }
            }
            HopMsg::Subscribed { to, dest } => {
                if let Some(c) = self.conns.get_mut(&to) {
                    c.sm.on_subscribed(dest);
                    self.mark_ready(to);
                }
            }
            HopMsg::Query { dests, from, query } => {
                let dests = self.holding(now, &dests);
                self.control(from.shard, HopMsg::QueryResult { query, dests });
            }
            HopMsg::QueryResult { query, dests } => self.query_answer(query, dests),
            HopMsg::Drain { dest, from } => self.send_stored(now, dest, from),
            HopMsg::StoredBlob {
                to,
                dest,
                pos,
                msg_id,
                payload,
            } => {
                let pushed = self
                    .conns
                    .get_mut(&to)
                    .map(|c| c.sm.push_stored(&dest, pos, msg_id, &payload));
                match pushed {
                    Some(Push::Queued) => self.mark_ready(to),
                    Some(_) => {
                        // Still stored: the next drain brings it.
                        self.drain_short.insert((to, dest));
                    }
                    None => {}
                }
            }
            HopMsg::DrainEnd { to, dest, more } => {
                let short = self.drain_short.remove(&(to, dest));
                if let Some(c) = self.conns.get_mut(&to) {
                    c.sm.on_drain_end();
                    let status = if more || short {
                        DrainStatus::More
                    } else {
                        DrainStatus::Done
                    };
                    c.sm.push_frame(&Frame::DrainEnd { dest, status });
                    self.mark_ready(to);
                }
            }
            HopMsg::Ack { items } => {
                let Some(log) = self.store.as_mut() else {
                    return;
                };
                for (dest, pos) in items {
                    match log.ack(now.unix_s, &dest, Pos::from_u64(pos)) {
                        Ok(true) => {
                            ShardMetrics::inc(&self.metrics.store_acks);
                            ShardMetrics::dec(&self.metrics.store_blobs);
                        }
                        Ok(false) => {}
                        Err(StoreError::SyncFailed(e)) => {
                            self.fatal = Some(sync_failure(&e));
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "store ack failed"),
                    }
                }
                self.metrics.store_sources.store(
                    log.sources_len() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
        }
    }

    fn mark_ready(&mut self, conn: u64) {
        // Every change to a connection's output (and its input: `process` ends here) ends here:
        // charge it, and schedule its deadline if that moved earlier.
        self.recharge(conn);
        self.arm(conn);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.sm.is_closing() && !c.close_counted {
            c.close_counted = true;
            ShardMetrics::inc(&self.metrics.closes_error);
            match c.sm.close_code() {
                Some(
                    ErrorCode::FrameTooLarge
                    | ErrorCode::MalformedFrame
                    | ErrorCode::UnknownFrameType
                    | ErrorCode::UnexpectedFrame,
                ) => ShardMetrics::inc(&self.metrics.closes_protocol),
                Some(
                    ErrorCode::HandshakeTimeout
                    | ErrorCode::IdleTimeout
                    | ErrorCode::SlowReader
                    | ErrorCode::SlowSender,
                ) => ShardMetrics::inc(&self.metrics.closes_timeout),
                _ => {}
            }
        }
        if c.sm.is_aborted() && !c.abort_sent {
            c.abort_sent = true;
            self.force_close.push(conn);
        }
        if !c.in_ready && (c.sm.has_output() || c.sm.is_closing()) {
            c.in_ready = true;
            self.ready.push(conn);
        }
    }

    /// Connections with output to write or that must close; the driver wakes their writers.
    pub fn take_ready(&mut self, into: &mut Vec<u64>) {
        for conn in self.ready.drain(..) {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.in_ready = false;
                into.push(conn);
            }
        }
    }

    /// Connections whose socket the driver must shut down now: closing, and not draining.
    pub fn take_force_close(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.force_close)
    }

    /// Everything queued for `conn`'s socket, coalesced into one buffer.
    pub fn take_output(&mut self, conn: u64) -> Output {
        match self.conns.get_mut(&conn) {
            None => Output {
                bytes: None,
                close: true,
            },
            Some(c) => {
                let bytes = c.sm.take_output();
                if let Some(b) = &bytes {
                    ShardMetrics::add(&self.metrics.bytes_out, b.len() as u64);
                }
                let close = c.sm.is_closing();
                self.recharge(conn);
                Output { bytes, close }
            }
        }
    }

    pub fn on_written(&mut self, now: Now, conn: u64, n: usize) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sm.on_written(now, n);
            self.recharge(conn);
            self.arm(conn);
        }
    }

    pub fn on_write_blocked(&mut self, now: Now, conn: u64) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sm.on_write_blocked(now);
            self.arm(conn);
        }
    }

    /// Closes `conn` from the node side (transport error, shutdown) with an error frame.
    pub fn close(&mut self, conn: u64, code: ErrorCode, message: &str) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sm.close_with(code, message);
            self.mark_ready(conn);
        }
    }

    /// The transport of `conn` is gone: forget it and remove its subscriptions on every shard.
    pub fn on_closed(&mut self, conn: u64) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.memory.bytes -= c.charged;
        ShardMetrics::dec(&self.metrics.connections_open);
        self.limiter.on_close(c.ip);
        let sub = ConnRef {
            shard: self.cfg.shard,
            conn,
        };
        let dests: Vec<Dest> = c.sm.subscriptions().copied().collect();
        for dest in dests {
            self.control(self.owner(&dest), HopMsg::Unsubscribe { dest, sub });
        }
    }

    /// Runs every connection deadline that has passed. Call at least every `tick` ms. The work
    /// is what is due (connections whose armed deadline passed, stale entries), not the
    /// connections held: see [`Shard::timer_checks`].
    pub fn on_tick(&mut self, now: Now) {
        // Connections whose deadline ran: re-armed after the loop, so that each runs
        // `on_timeout` at most once per tick (a deadline still due waits for the next tick).
        let mut fired = Vec::new();
        while let Some((at_ms, id)) = self.deadlines.pop_due(now.mono_ms) {
            let Some(c) = self.conns.get_mut(&id) else {
                continue; // closed since it was armed
            };
            if c.armed_ms != Some(at_ms) {
                continue; // stale: a deadline that moved earlier was armed after it
            }
            c.armed_ms = None;
            // The armed deadline may be early (activity moved the true one later): check it.
            if c.sm.poll_timeout().is_some_and(|t| t <= now.mono_ms) {
                c.sm.on_timeout(now);
                fired.push(id);
            } else {
                self.arm(id);
            }
        }
        for id in fired {
            self.mark_ready(id);
        }
        self.limiter.evict_idle(now.mono_ms);
        self.now = now;
        self.store_tick(now);
        self.metrics.memory_bytes.store(
            self.memory.bytes as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Timer work done so far: deadline entries ticks took off the shard's heap and the
    /// limiter's (each a connection or an address whose deadline came due, or a stale entry).
    /// A tick with nothing due adds nothing, however many connections are open.
    pub fn timer_checks(&self) -> u64 {
        self.deadlines.checks() + self.limiter.timer_checks()
    }

    /// Schedules `conn`'s deadline if it is earlier than the one armed (a later one waits: the
    /// armed entry fires early and re-arms). O(1) unless it pushes (O(log n)).
    fn arm(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(t) = c.sm.poll_timeout() else {
            return;
        };
        if c.armed_ms.is_some_and(|a| a <= t) {
            return;
        }
        c.armed_ms = Some(t);
        self.deadlines.push(t, conn);
        if self.deadlines.needs_rebuild(self.conns.len()) {
            let armed = self
                .conns
                .iter()
                .filter_map(|(&id, c)| c.armed_ms.map(|a| (a, id)));
            self.deadlines.rebuild(armed);
        }
    }

    /// Bytes this shard's connections and outboxes hold now (what its budget counts).
    pub fn memory_bytes(&self) -> usize {
        self.memory.bytes
    }

    /// Counts `conn`'s memory again after its buffers changed.
    fn recharge(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let now_held = CONN_BASE_BYTES + c.sm.memory_bytes();
        self.memory.bytes = self.memory.bytes - c.charged + now_held;
        c.charged = now_held;
        self.memory.peak_since_trim = self.memory.peak_since_trim.max(self.memory.bytes);
    }

    /// Whether `need` more bytes fit the budget, shedding the connections holding the most first
    /// when they would not.
    fn memory_room(&mut self, need: usize) -> bool {
        if self.memory.bytes + need > self.cfg.memory_bytes_max {
            self.shed_to(self.cfg.memory_bytes_max.saturating_sub(need));
        }
        self.memory.bytes + need <= self.cfg.memory_bytes_max
    }

    /// Sheds if the shard is over its budget.
    fn enforce_memory(&mut self) {
        if self.memory.bytes > self.cfg.memory_bytes_max {
            self.shed_to(self.cfg.memory_bytes_max);
        }
    }

    /// Sheds connections in `shed_order` until the shard holds at most `MEMORY_SHED_TARGET_PCT`
    /// of its budget (and at most `limit`). One pass over the connections; each round frees at
    /// least an eighth of the budget (unless nothing more can be shed), so rounds are rare.
    fn shed_to(&mut self, limit: usize) {
        let target = (self.cfg.memory_bytes_max / 100 * MEMORY_SHED_TARGET_PCT).min(limit);
        let mut order: Vec<ShedCandidate> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.sm.is_closing())
            .map(|(&conn, c)| ShedCandidate {
                conn,
                held_bytes: c.charged.saturating_sub(CONN_BASE_BYTES),
                held_since_ms: c.sm.held_since_ms(),
            })
            .collect();
        shed_order(&mut order);
        for cand in order {
            if self.memory.bytes <= target {
                break;
            }
            if let Some(c) = self.conns.get_mut(&cand.conn) {
                c.sm.shed();
                ShardMetrics::inc(&self.metrics.connections_shed_memory);
                self.mark_ready(cand.conn);
            }
        }
    }

    /// Whether the driver should ask the allocator to give freed memory back to the OS now
    /// (`malloc_trim`): enough was freed since the last trim, and the last one is not too recent.
    /// Counts the trim as done when it says yes.
    pub fn take_trim_due(&mut self, now: Now) -> bool {
        let m = &mut self.memory;
        let freed = m.peak_since_trim.saturating_sub(m.bytes);
        if freed < MEMORY_TRIM_FREED_BYTES_MIN
            || now.mono_ms < m.last_trim_ms + MEMORY_TRIM_INTERVAL_MS
        {
            return false;
        }
        m.last_trim_ms = now.mono_ms;
        m.peak_since_trim = m.bytes;
        true
    }

    /// When the store's next group commit is due (monotonic ms), while appends wait for one: the
    /// driver's tick wakes for it then instead of ticking at the fsync interval all the time.
    pub fn store_sync_due_ms(&self) -> Option<u64> {
        self.store.as_ref().and_then(Log::sync_due_ms)
    }

    /// Group commit, the "Stored" replies it releases, and expiry.
    fn store_tick(&mut self, now: Now) {
        let Some(log) = self.store.as_mut() else {
            return;
        };
        if let Err(e) = log.poll_sync(now.mono_ms) {
            self.fatal = Some(sync_failure(&e));
            return;
        }
        self.metrics
            .store_syncs
            .store(log.syncs(), std::sync::atomic::Ordering::Relaxed);
        let durable = log.durable_seq();
        if now.unix_s >= self.last_expire_unix_s + STORE_EXPIRE_INTERVAL_S {
            self.last_expire_unix_s = now.unix_s;
            match log.expire(now.unix_s) {
                Ok(n) => {
                    if n > 0 {
                        ShardMetrics::add(&self.metrics.store_expired, n as u64);
                    }
                    self.metrics
                        .store_blobs
                        .store(log.blobs() as u64, std::sync::atomic::Ordering::Relaxed);
                    self.metrics.store_sources.store(
                        log.sources_len() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    // Hand-overs whose blobs all expired are over.
                    let held: Vec<Dest> = self.handover.iter().copied().collect();
                    let still = log.holding(&held, now.unix_s);
                    self.handover.retain(|d| still.contains(d));
                }
                Err(StoreError::SyncFailed(e)) => {
                    self.fatal = Some(sync_failure(&e));
                }
                Err(e) => tracing::warn!(error = %e, "store expiry failed"),
            }
        }
        self.release_stored(durable);
    }

    /// Answers `Stored` (or `Accepted`) to every sender whose append is covered by durable
    /// sequence `durable`.
    fn release_stored(&mut self, durable: u64) {
        while self
            .pending_stored
            .front()
            .is_some_and(|(seq, ..)| *seq <= durable)
        {
            if let Some((_, from, dest, msg_id, status)) = self.pending_stored.pop_front() {
                self.reply(from, dest, msg_id, status);
            }
        }
    }

    /// The batch waiting for `peer`, if any.
    pub fn take_outbox(&mut self, peer: usize) -> Option<Vec<HopMsg>> {
        let q = &mut self.outbox[peer];
        if q.is_empty() {
            return None;
        }
        // Messages in flight between two cores are at most hop_channel_batches × this.
        let batch = if q.len() <= HOP_BATCH_MSGS_MAX {
            std::mem::take(q)
        } else {
            let rest = q.split_off(HOP_BATCH_MSGS_MAX);
            std::mem::replace(q, rest)
        };
        // Off this shard's account once handed to the channel: the peer copies the payloads
        // into its connections' queues as it receives them (and charges them there).
        let n: usize = batch.iter().map(HopMsg::memory_bytes).sum();
        self.memory.outbox_bytes -= n;
        self.memory.bytes -= n;
        ShardMetrics::inc(&self.metrics.hop_batches_out);
        ShardMetrics::add(&self.metrics.hops_out, batch.len() as u64);
        Some(batch)
    }

    /// Peers with a non-empty outbox.
    pub fn outbox_pending(&self) -> impl Iterator<Item = usize> + '_ {
        self.outbox
            .iter()
            .enumerate()
            .filter(|(_, q)| !q.is_empty())
            .map(|(i, _)| i)
    }

    /// True while some outbox is above half its bound: readers should stop reading (backpressure)
    /// until the flushers catch up.
    pub fn outbox_pressure(&self) -> bool {
        let half = self.cfg.hop_queue_msgs_max / 2;
        self.outbox.iter().any(|q| q.len() >= half.max(1))
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
            ip_limits: IpLimits {
                conns: open,
                bytes: open,
                proofs: open,
                proofs_per_conn: open,
                proof_failures: open,
                connections_open_max: 0,
                entries_max: 16,
            },
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
