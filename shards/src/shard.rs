//! The shard state machine: every connection on one core, the forward table for the dests this
//! core owns, and the outboxes of cross-core hops. Sans-IO: the driver feeds it bytes, hop batches
//! and ticks, and moves what it produces (connection output, hop batches) to sockets and channels.
//!
//! A packet for `dest` arriving on core C goes to owner O = `dest.owner(shards)` (the forward-table
//! lookup), then to the subscriber's core S (the socket write): at most two hops. Channels between
//! cores are FIFO, so packets keep their order per (sender connection, dest).

use std::net::IpAddr;
use std::sync::Arc;

use ahash::AHashMap;
use bytes::Bytes;
use ferry_proto::conn::{ConnLimits, Now, Push, ServerConn, ServerEvent};
use ferry_proto::frame::{Dest, ErrorCode, FLAG_ACK, Frame, SendStatus};

use crate::metrics::ShardMetrics;
use crate::ratelimit::{IpKey, IpLimiter, IpLimits};
use crate::table::{ConnRef, ForwardTable};

/// Most messages in one cross-core batch (one channel send).
pub const HOP_BATCH_MSGS_MAX: usize = 1024;

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
}

/// A message between cores. Batches of them travel over the bounded mesh channels.
#[derive(Clone, Debug)]
pub enum HopMsg {
    /// Sender's core → owner: look `dest` up.
    Route {
        dest: Dest,
        from: ConnRef,
        msg_id: u64,
        flags: u8,
        payload: Bytes,
    },
    /// Owner → subscriber's core: write to connection `to`.
    Deliver {
        dest: Dest,
        to: u64,
        from: ConnRef,
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
}

impl HopMsg {
    /// Packets, which may be refused when an outbox is full; everything else (replies and control)
    /// is bounded by the packets and connections that caused it and is never dropped.
    fn is_data(&self) -> bool {
        matches!(self, HopMsg::Route { .. } | HopMsg::Deliver { .. })
    }
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
    in_ready: bool,
    close_counted: bool,
    abort_sent: bool,
}

/// One core's share of the node.
#[derive(Debug)]
pub struct Shard {
    cfg: ShardConfig,
    conns: AHashMap<u64, Conn>,
    next_conn: u64,
    table: ForwardTable,
    outbox: Vec<Vec<HopMsg>>,
    ready: Vec<u64>,
    force_close: Vec<u64>,
    limiter: IpLimiter,
    metrics: Arc<ShardMetrics>,
    challenge_counter: u64,
}

impl Shard {
    pub fn new(cfg: ShardConfig, metrics: Arc<ShardMetrics>) -> Self {
        assert!(cfg.shards > 0 && usize::from(cfg.shard) < cfg.shards);
        assert!(cfg.hop_queue_msgs_max > 0 && cfg.connections_max > 0);
        Shard {
            outbox: (0..cfg.shards).map(|_| Vec::new()).collect(),
            limiter: IpLimiter::new(cfg.ip_limits),
            table: ForwardTable::with_capacity(1024),
            conns: AHashMap::new(),
            next_conn: 1,
            ready: Vec::new(),
            force_close: Vec::new(),
            metrics,
            challenge_counter: 0,
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
        if !self.limiter.allow_connection(key, now.mono_ms) {
            ShardMetrics::inc(&self.metrics.connections_refused_rate);
            return refuse(
                ErrorCode::RateLimited,
                "too many new connections from this address",
            );
        }
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
                in_ready: false,
                close_counted: false,
                abort_sent: false,
            },
        );
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
        pause
    }

    /// Whether the driver should keep reading `conn` (its own output is not backlogged).
    pub fn wants_read(&self, conn: u64) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.sm.wants_read())
    }

    fn process(&mut self, now: Now, conn: u64) {
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
                    payload,
                } => {
                    ShardMetrics::inc(&self.metrics.packets_sent);
                    let owner = self.owner(&dest);
                    if owner == self.cfg.shard {
                        self.route(dest, from, msg_id, flags, payload);
                    } else if !self.hop(
                        owner,
                        HopMsg::Route {
                            dest,
                            from,
                            msg_id,
                            flags,
                            payload,
                        },
                    ) {
                        ShardMetrics::inc(&self.metrics.drops_hop_queue_full);
                        self.reply(from, dest, msg_id, SendStatus::Congested);
                    }
                }
                ServerEvent::Prove { items } => {
                    if !self.limiter.proofs_allowed(ip, now.mono_ms) {
                        ShardMetrics::add(&self.metrics.proofs_rate_limited, items.len() as u64);
                        c.sm.refuse_proofs(&items);
                    } else {
                        let tally = c.sm.answer_proofs(now, &items);
                        ShardMetrics::add(&self.metrics.proofs_failed, u64::from(tally.failed));
                        ShardMetrics::add(&self.metrics.proofs_ok, u64::from(tally.accepted));
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

    fn owner(&self, dest: &Dest) -> u16 {
        u16::try_from(dest.owner(self.cfg.shards)).unwrap_or(0)
    }

    /// Queues a data message for `peer`; `false` when its outbox is full.
    fn hop(&mut self, peer: u16, msg: HopMsg) -> bool {
        debug_assert_ne!(peer, self.cfg.shard, "hop to self");
        debug_assert!(msg.is_data());
        let q = &mut self.outbox[usize::from(peer)];
        if q.len() >= self.cfg.hop_queue_msgs_max {
            return false;
        }
        q.push(msg);
        true
    }

    /// Handles a control message here or queues it for `peer` (never dropped).
    fn control(&mut self, peer: u16, msg: HopMsg) {
        if peer == self.cfg.shard {
            self.on_hop(msg);
        } else {
            self.outbox[usize::from(peer)].push(msg);
        }
    }

    /// Owner side of a packet.
    fn route(&mut self, dest: Dest, from: ConnRef, msg_id: u64, flags: u8, payload: Bytes) {
        match self.table.lookup(&dest) {
            None => {
                ShardMetrics::inc(&self.metrics.packets_no_subscriber);
                self.reply(from, dest, msg_id, SendStatus::NoSubscriber);
            }
            Some(sub) if sub.shard == self.cfg.shard => {
                self.deliver(dest, sub.conn, from, msg_id, flags, &payload);
            }
            Some(sub) => {
                let msg = HopMsg::Deliver {
                    dest,
                    to: sub.conn,
                    from,
                    msg_id,
                    flags,
                    payload,
                };
                if !self.hop(sub.shard, msg) {
                    ShardMetrics::inc(&self.metrics.drops_hop_queue_full);
                    self.reply(from, dest, msg_id, SendStatus::Congested);
                }
            }
        }
    }

    /// Subscriber side of a packet: queue it on the connection.
    fn deliver(
        &mut self,
        dest: Dest,
        to: u64,
        from: ConnRef,
        msg_id: u64,
        flags: u8,
        payload: &[u8],
    ) {
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
        if status != SendStatus::Delivered || flags & FLAG_ACK != 0 {
            self.reply(from, dest, msg_id, status);
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
            self.outbox[usize::from(to.shard)].push(HopMsg::Result {
                to: to.conn,
                dest,
                msg_id,
                status,
            });
        }
    }

    /// A batch of messages from another core.
    pub fn on_hops(&mut self, msgs: Vec<HopMsg>) {
        for msg in msgs {
            self.on_hop(msg);
        }
    }

    fn on_hop(&mut self, msg: HopMsg) {
        match msg {
            HopMsg::Route {
                dest,
                from,
                msg_id,
                flags,
                payload,
            } => self.route(dest, from, msg_id, flags, payload),
            HopMsg::Deliver {
                dest,
                to,
                from,
                msg_id,
                flags,
                payload,
            } => self.deliver(dest, to, from, msg_id, flags, &payload),
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
            }
            HopMsg::Unsubscribe { dest, sub } => {
                self.table.unsubscribe(&dest, sub);
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
        }
    }

    fn mark_ready(&mut self, conn: u64) {
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
                Output {
                    bytes,
                    close: c.sm.is_closing(),
                }
            }
        }
    }

    pub fn on_written(&mut self, now: Now, conn: u64, n: usize) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sm.on_written(now, n);
        }
    }

    pub fn on_write_blocked(&mut self, now: Now, conn: u64) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sm.on_write_blocked(now);
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
        ShardMetrics::dec(&self.metrics.connections_open);
        let sub = ConnRef {
            shard: self.cfg.shard,
            conn,
        };
        let dests: Vec<Dest> = c.sm.subscriptions().copied().collect();
        for dest in dests {
            self.control(self.owner(&dest), HopMsg::Unsubscribe { dest, sub });
        }
    }

    /// Runs every connection deadline that has passed. Call at least every `tick` ms.
    pub fn on_tick(&mut self, now: Now) {
        let due: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.sm.poll_timeout().is_some_and(|t| t <= now.mono_ms))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(c) = self.conns.get_mut(&id) {
                c.sm.on_timeout(now);
            }
            self.mark_ready(id);
        }
        self.limiter.evict_idle(now.mono_ms);
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
