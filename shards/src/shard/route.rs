//! A packet's way: from the sender's core to its dest's owner, then to the subscriber's core,
//! or into the store; and the answer back to the sender.

use super::stored::Stored;
use super::*;

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

/// A packet on its way to its dest's owner (on the sender's core, or in a `HopMsg::Route`).
#[derive(Clone, Debug)]
pub struct Packet {
    pub(super) dest: Dest,
    pub(super) from: ConnRef,
    /// Whether the sender proved the dest: what it may learn of the outcome.
    pub(super) audience: Audience,
    /// The sender's address prefix, which the owner's store charges (memory only).
    pub(super) source: IpKey,
    pub(super) msg_id: u64,
    pub(super) flags: u8,
    pub(super) ttl_s: u32,
    pub(super) payload: Bytes,
    /// The sender core's verdict on the send's puzzle answer or capability, if it carried one.
    pub(super) passed: Option<Box<Passed>>,
}

impl<B: Backend> Shard<B> {
    /// Sender's core: what a `Send`'s pass proves. A puzzle answer is checked only within the
    /// connection's puzzle-check budget and its address's proof-check budget (an Equi-X check
    /// costs about as much as two signature checks, `PUZZLE_CHECK_PROOF_COST`); past them it
    /// proves nothing, and the owner asks again.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn check_pass(
        &mut self,
        now: Now,
        conn: ConnId,
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

    /// The key the store charges a packet from address `ip` to: its prefix under the store's
    /// source limits (the address itself when the node has no store; it is not used then).
    pub(super) fn source_key(&self, ip: IpKey) -> IpKey {
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
    pub(super) fn route(&mut self, now: Now, p: Packet) {
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
    pub(super) fn puzzle_required(&mut self, p: &Packet, effort: u32) {
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
    pub(super) fn forward(&mut self, sub: ConnRef, p: Packet) {
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
    pub(super) fn deliver(
        &mut self,
        dest: Dest,
        to: ConnId,
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
        if !self.drain_behind.is_empty() && self.drain_behind.contains(&(to, dest)) {
            // Stored blobs it has yet to drain come first (its send queue was full for them).
            ShardMetrics::inc(&self.metrics.drops_send_queue_full);
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

    pub(super) fn reply(&mut self, to: ConnRef, dest: Dest, msg_id: u64, status: SendStatus) {
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

    /// Owner side of a subscribe: the forward-table entry (taking the dest over from an older
    /// subscriber), the confirmation, and the hand-over of what was stored.
    pub(super) fn on_subscribe(&mut self, now: Now, dest: Dest, sub: ConnRef) {
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
            if crate::mutants::active(crate::mutants::Mutant::HandOverTwice) {
                self.send_stored(now, dest, sub);
            }
        } else {
            // Nothing (left) to hand over: live from now on.
            self.handover.remove(&dest);
        }
    }
}
