//! Cross-core messages: what travels between shards, the outboxes towards each peer core,
//! and the handling of a batch that arrived.

use super::*;

/// A message between cores. Batches of them travel over the bounded mesh channels.
#[derive(Clone, Debug)]
pub enum HopMsg {
    /// Sender's core → owner: look `dest` up (and store the packet if nobody listens).
    Route(Packet),
    /// Owner → sender's core: the packet needs a puzzle answer of `effort` (answered
    /// `Puzzle` + `SendResult PuzzleRequired`).
    Puzzle {
        to: ConnId,
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
        to: ConnId,
        dest: Dest,
        status: ferry_proto::CapabilityStatus,
    },
    /// Owner → subscriber's core: write to connection `to`.
    Deliver {
        dest: Dest,
        to: ConnId,
        from: ConnRef,
        audience: Audience,
        msg_id: u64,
        flags: u8,
        payload: Bytes,
    },
    /// → sender's core: the outcome of a Send.
    Result {
        to: ConnId,
        dest: Dest,
        msg_id: u64,
        status: SendStatus,
    },
    /// Subscriber's core → owner.
    Subscribe { dest: Dest, sub: ConnRef },
    /// Subscriber's core → owner; also sent by a core that found the subscriber gone.
    Unsubscribe { dest: Dest, sub: ConnRef },
    /// Owner → previous subscriber's core: another connection took `dest` over.
    TakenOver { to: ConnId, dest: Dest },
    /// Owner → subscriber's core: the entry is in the forward table.
    Subscribed { to: ConnId, dest: Dest },
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
        to: ConnId,
        dest: Dest,
        pos: u64,
        msg_id: u64,
        payload: Bytes,
    },
    /// Owner → drainer's core: that was all (`Done`) or the batch limit (`More`).
    DrainEnd { to: ConnId, dest: Dest, more: bool },
    /// Acker's core → owner: delete these stored blobs.
    Ack { items: Vec<(Dest, u64)> },
}

impl HopMsg {
    /// Heap bytes this message holds while queued (its payload or lists, and itself).
    pub(super) fn memory_bytes(&self) -> usize {
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
    pub(super) fn is_data(&self) -> bool {
        matches!(self, HopMsg::Route(_) | HopMsg::Deliver { .. })
    }
}

impl<B: Backend> Shard<B> {
    pub(super) fn owner(&self, dest: &Dest) -> u16 {
        // Below `shards`, which `new` holds to SHARDS_MAX.
        shard_index(dest.owner(self.cfg.shards))
    }

    /// Queues a data message for `peer`; `false` when its outbox is full.
    pub(super) fn hop(&mut self, peer: u16, msg: HopMsg) -> bool {
        debug_assert_ne!(peer, self.cfg.shard, "hop to self");
        debug_assert!(msg.is_data());
        if self.outbox[usize::from(peer)].len() >= self.cfg.hop_queue_msgs_max {
            return false;
        }
        self.enqueue(peer, msg);
        true
    }

    /// Appends `msg` to the outbox towards `peer`, charging it to the memory budget.
    pub(super) fn enqueue(&mut self, peer: u16, msg: HopMsg) {
        let n = msg.memory_bytes();
        self.memory.outbox_bytes += n;
        self.memory.bytes += n;
        self.outbox[usize::from(peer)].push(msg);
    }

    /// Handles a control message here or queues it for `peer` (never dropped).
    pub(super) fn control(&mut self, peer: u16, msg: HopMsg) {
        if peer == self.cfg.shard {
            self.on_hop(msg);
        } else {
            self.enqueue(peer, msg);
        }
    }

    /// The batch waiting for `peer`, if any.
    pub fn take_outbox(&mut self, peer: usize) -> Option<Vec<HopMsg>> {
        let q = &mut self.outbox[peer];
        if q.is_empty() {
            return None;
        }
        // Messages in flight between two cores are at most hop_channel_batches × this.
        let mut batch = if q.len() <= HOP_BATCH_MSGS_MAX {
            std::mem::take(q)
        } else {
            let rest = q.split_off(HOP_BATCH_MSGS_MAX);
            std::mem::replace(q, rest)
        };
        // Off this shard's account once handed to the channel: the peer copies the payloads
        // into its connections' queues as it receives them (and charges them there).
        if crate::mutants::active(crate::mutants::Mutant::ReorderHopBatch) {
            batch.reverse();
        }
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

    /// A batch of messages from another core.
    pub fn on_hops(&mut self, now: Now, msgs: Vec<HopMsg>) {
        self.now = now;
        for msg in msgs {
            self.on_hop(msg);
        }
        self.enforce_memory();
    }

    pub(super) fn on_hop(&mut self, msg: HopMsg) {
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
            HopMsg::Subscribe { dest, sub } => self.on_subscribe(now, dest, sub),
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
                // No live packets for it any more: nothing to hold back behind its drain.
                self.drain_behind.remove(&(to, dest));
                if let Some(c) = self.conns.get_mut(&to) {
                    c.sm.on_taken_over(dest);
                    self.mark_ready(to);
                }
            }
            HopMsg::Subscribed { to, dest } => {
                // The owner hands everything still stored over right behind this (same path),
                // ahead of any live packet: nothing is left behind from before.
                self.drain_behind.remove(&(to, dest));
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
            } => self.on_stored_blob(to, dest, pos, msg_id, &payload),
            HopMsg::DrainEnd { to, dest, more } => self.on_drain_end(to, dest, more),
            HopMsg::Ack { items } => self.on_ack(now, items),
        }
    }
}
