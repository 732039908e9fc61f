//! The connections of one core: accepting, reading frames and acting on them, output and
//! backpressure, closing.

use super::*;

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) sm: ServerConn,
    pub(super) ip: IpKey,
    /// Proof checks this connection may still have (`IpLimits::proofs_per_conn`, the rate it
    /// was accepted under).
    pub(super) proofs: (Bucket, crate::ratelimit::Rate),
    pub(super) in_ready: bool,
    /// In `Shard::held_readers`: the driver parked this connection's reader (backpressure).
    pub(super) read_held: bool,
    pub(super) close_counted: bool,
    pub(super) abort_sent: bool,
    /// What this connection is charged in `Shard::memory` (base + buffers), as last counted.
    pub(super) charged: usize,
    /// The deadline this connection has in `Shard::deadlines` (at most its true one,
    /// `sm.poll_timeout()`); `None`: no live entry.
    pub(super) armed_ms: Option<u64>,
}

impl<B: Backend> Shard<B> {
    pub(super) fn next_challenge(&mut self) -> [u8; 32] {
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
        let id = ConnId(self.next_conn);
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
    pub fn on_bytes(&mut self, now: Now, conn: ConnId, data: &[u8]) -> u64 {
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
    pub fn read_pause_ms(&mut self, now: Now, conn: ConnId) -> u64 {
        match self.conns.get(&conn) {
            Some(c) => self.limiter.bytes_pause_ms(c.ip, now.mono_ms),
            None => 0,
        }
    }

    /// Whether the driver should keep reading `conn` (its own output is not backlogged).
    pub fn wants_read(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.sm.wants_read())
    }

    /// Backpressure, asked by the driver before each read of `conn`: true when the reader must
    /// wait (an outbox towards another core is over half full, or the connection's own replies
    /// are backlogged because it sends but does not read). The connection is then held until
    /// [`Shard::take_resumed`] names it, which happens on the event that ends the pressure, not
    /// on a timer. False for a connection the shard no longer knows: its read fails and ends it.
    pub fn hold_reader(&mut self, conn: ConnId) -> bool {
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
    pub fn take_resumed(&mut self, into: &mut Vec<ConnId>) {
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

    pub(super) fn process(&mut self, now: Now, conn: ConnId) {
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
                        self.drain_behind.remove(&(conn, dest));
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

    /// Queues `frame` on local connection `conn`, if it is still open.
    pub(super) fn answer(&mut self, conn: ConnId, frame: &Frame) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sm.push_frame(frame);
            self.mark_ready(conn);
        }
    }

    pub(super) fn mark_ready(&mut self, conn: ConnId) {
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
    pub fn take_ready(&mut self, into: &mut Vec<ConnId>) {
        for conn in self.ready.drain(..) {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.in_ready = false;
                into.push(conn);
            }
        }
    }

    /// Connections whose socket the driver must shut down now: closing, and not draining.
    pub fn take_force_close(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.force_close)
    }

    /// Everything queued for `conn`'s socket, coalesced into one buffer.
    pub fn take_output(&mut self, conn: ConnId) -> Output {
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

    pub fn on_written(&mut self, now: Now, conn: ConnId, n: usize) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sm.on_written(now, n);
            self.recharge(conn);
            self.arm(conn);
        }
    }

    pub fn on_write_blocked(&mut self, now: Now, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sm.on_write_blocked(now);
            self.arm(conn);
        }
    }

    /// Closes `conn` from the node side (transport error, shutdown) with an error frame.
    pub fn close(&mut self, conn: ConnId, code: ErrorCode, message: &str) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sm.close_with(code, message);
            self.mark_ready(conn);
        }
    }

    /// The transport of `conn` is gone: forget it and remove its subscriptions on every shard.
    pub fn on_closed(&mut self, conn: ConnId) {
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
        if !self.drain_behind.is_empty() {
            self.drain_behind.retain(|(c, _)| *c != conn);
        }
        if !self.drain_short.is_empty() {
            self.drain_short.retain(|(c, _)| *c != conn);
        }
    }
}
