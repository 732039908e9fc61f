//! The simulated clients: devices of a few mailboxes that connect, prove, subscribe, send,
//! drain and acknowledge at random, and check each event they get against the oracle.

use super::*;

/// One simulated client: a device of one mailbox.
pub(super) struct Client {
    pub(super) mailbox: usize,
    pub(super) wire: Option<usize>,
    pub(super) cc: ClientConn,
    pub(super) challenge: Option<[u8; 32]>,
    /// It wants to listen once the connection is ready (proofs need the challenge).
    pub(super) want_listen: bool,
    /// Proofs (`Subscribe` and `Drain` for its mailbox) sent on this connection.
    pub(super) proven: bool,
    /// Subscribed once on this connection (never again: hand-overs must not overlap drains).
    pub(super) subscribed: bool,
    /// A `Drain` is in flight.
    pub(super) draining: bool,
    /// Stored blobs to acknowledge, not yet queued.
    pub(super) acks: Vec<(Dest, u64)>,
    /// Acks queued on the connection, not yet in its up pipe.
    pub(super) acks_queued: Vec<(Dest, u64)>,
    /// The final drain of this client's mailbox is done.
    pub(super) drained_done: bool,
    /// Push registrations sent on this connection and not yet answered.
    pub(super) push_pending: u32,
    /// Prekey uploads and fetches sent on this connection and not yet answered.
    pub(super) prekey_pending: u32,
    /// Another device took its subscription over on this connection.
    pub(super) taken_over: bool,
    /// The media upload going on, and the media request waiting for its answer.
    pub(super) upload: Option<media::Upload>,
    pub(super) media_asked: Option<media::Asked>,
}

impl Client {
    pub(super) fn reset(&mut self) {
        self.wire = None;
        self.cc = ClientConn::new();
        self.challenge = None;
        self.want_listen = false;
        self.proven = false;
        self.subscribed = false;
        self.draining = false;
        self.acks.clear();
        self.acks_queued.clear();
        self.push_pending = 0;
        self.prekey_pending = 0;
        self.taken_over = false;
        // A new connection begins its upload again (the node says where to resume).
        self.upload = None;
        self.media_asked = None;
    }

    /// Queues the pending acks (before any request that must come after them).
    pub(super) fn queue_acks(&mut self) {
        if !self.acks.is_empty() {
            let items = std::mem::take(&mut self.acks);
            self.cc.push(&Frame::Ack {
                items: items.clone(),
            });
            self.acks_queued.extend(items);
        }
    }
}

impl Sim {
    pub(super) fn client_action(&mut self, c: usize) -> Result<(), String> {
        if self.clients[c].wire.is_none() {
            return self.connect(c);
        }
        let r = self.rng.below(112);
        match r {
            0..=59 => self.send(c),
            60..=71 => {
                let cl = &mut self.clients[c];
                if !cl.subscribed && !cl.draining {
                    if cl.proven {
                        self.subscribe(c);
                    } else {
                        cl.want_listen = true;
                    }
                }
            }
            72..=85 => {
                let cl = &self.clients[c];
                if cl.proven && !cl.draining && !cl.subscribed {
                    self.drain(c);
                }
            }
            86..=89 => self.close(c),
            90..=94 => {
                // Stops reading for a while: mostly briefly, sometimes past the node's
                // write-stall timeout.
                let pause = if self.rng.chance(800) {
                    10 + self.rng.below(500)
                } else {
                    1_000 + self.rng.below(40_000)
                };
                if let Some(w) = self.clients[c].wire {
                    self.wires[w].read_paused_until_ms = self.now.mono_ms + pause;
                    self.trace(|| format!("client {c} stops reading wire {w} for {pause} ms"));
                }
            }
            95..=96 if self.clients[c].proven => self.push_register(c),
            97 if self.clients[c].proven => self.prekey_upload(c),
            98..=99 => self.prekey_fetch(c),
            100..=111 => self.media_action(c),
            _ => {}
        }
        self.flush_client(c);
        Ok(())
    }

    /// Registers (or, one time in five, removes) a push token for the client's mailbox.
    fn push_register(&mut self, c: usize) {
        let ttl_s = if self.rng.chance(200) {
            0
        } else {
            60 + u32::try_from(self.rng.below(3_600)).expect("below 3600")
        };
        let dest = self.dest_of(self.clients[c].mailbox);
        let (provider, token) = service::device_token(c);
        let cl = &mut self.clients[c];
        cl.cc.push(&Frame::PushRegister {
            provider,
            ttl_s,
            // One token per device (client).
            token: Bytes::from(token),
            dests: vec![dest],
        });
        cl.push_pending += 1;
        self.report.push_registrations += 1;
        self.trace(|| format!("client {c} registers push for {ttl_s} s"));
    }

    pub(super) fn connect(&mut self, c: usize) -> Result<(), String> {
        let shard = self.rng.index(self.cfg.shards);
        // Each client its own loopback address.
        let ip = IpAddr::V4(Ipv4Addr::from(
            0x7f00_0001 + u32::try_from(c).expect("clients fit a u32"),
        ));
        let conn = match self.node.shards[shard].accept(self.now, ip) {
            Accept::Ok(conn) => conn,
            Accept::Refused(_) => return Err(format!("client {c} refused by shard {shard}")),
        };
        let w = self.wires.len();
        self.wires.push(Wire {
            client: c,
            shard,
            conn,
            up: Default::default(),
            down: Default::default(),
            held: false,
            writing: None,
            write_wanted: false,
            read_paused_until_ms: 0,
            state: WireState::Open,
            opened_ms: self.now.mono_ms,
        });
        self.node.wires.insert((shard, conn), w);
        self.trace(|| format!("client {c} connects: wire {w}, shard {shard} conn {conn}"));
        let cl = &mut self.clients[c];
        cl.reset();
        cl.wire = Some(w);
        cl.want_listen = self.rng.chance(500);
        self.flush_client(c);
        self.pump(shard);
        Ok(())
    }

    pub(super) fn dest_of(&self, mailbox: usize) -> Dest {
        self.signers[mailbox].dest()
    }

    pub(super) fn send(&mut self, c: usize) {
        let count = 1 + self.rng.below(4);
        // Often to its own mailbox (another device of the same user: an owner, who learns
        // `Stored`, which the durability checks follow), otherwise to anyone's.
        let mailbox = if self.rng.chance(400) {
            self.clients[c].mailbox
        } else {
            self.rng.index(self.cfg.mailboxes)
        };
        let dest = self.dest_of(mailbox);
        let Some(wire) = self.clients[c].wire else {
            return;
        };
        for _ in 0..count {
            let id = self.next_msg;
            self.next_msg += 1;
            let ack = self.rng.chance(800);
            // Mostly the node's maximum; sometimes seconds, to expire within the run.
            let ttl_s = if self.rng.chance(150) {
                1 + u32::try_from(self.rng.below(20)).expect("below 20")
            } else {
                0
            };
            let cl = &mut self.clients[c];
            let owner = cl.proven && cl.mailbox == mailbox;
            cl.cc.send(
                dest,
                id,
                if ack { FLAG_ACK } else { 0 },
                ttl_s,
                &payload_of(id),
            );
            let mut msg = Msg::new(wire, dest, owner, ack);
            msg.last_live_unix_s = (ttl_s > 0).then(|| self.now.unix_s + u64::from(ttl_s));
            self.oracle.sent(id, msg);
            self.report.sends += 1;
            self.trace(|| format!("client {c} wire {wire} sends {id} to mailbox {mailbox} (owner {owner}, ack {ack})"));
        }
    }

    /// Proves the client's mailbox for `Subscribe` and `Drain` (needs the challenge).
    pub(super) fn prove(&mut self, c: usize) {
        let cl = &mut self.clients[c];
        let Some(ch) = cl.challenge else { return };
        if cl.proven {
            return;
        }
        let signer = &self.signers[cl.mailbox];
        let items = vec![
            signer.prove(&NODE_ID, &ch, Op::Subscribe),
            signer.prove(&NODE_ID, &ch, Op::Drain),
            signer.prove(&NODE_ID, &ch, Op::PushRegister),
            signer.prove(&NODE_ID, &ch, Op::PrekeyUpdate),
        ];
        cl.cc.push(&Frame::Prove { items });
        cl.proven = true;
    }

    pub(super) fn subscribe(&mut self, c: usize) {
        let dest = self.dest_of(self.clients[c].mailbox);
        let cl = &mut self.clients[c];
        cl.cc.push(&Frame::Subscribe { dests: vec![dest] });
        let w = cl.wire;
        self.trace(|| format!("client {c} wire {w:?} subscribes"));
        let cl = &mut self.clients[c];
        cl.subscribed = true;
        cl.want_listen = false;
    }

    pub(super) fn drain(&mut self, c: usize) {
        let dest = self.dest_of(self.clients[c].mailbox);
        let cl = &mut self.clients[c];
        cl.cc.push(&Frame::Drain { dest });
        cl.draining = true;
        let w = cl.wire;
        self.trace(|| format!("client {c} wire {w:?} drains"));
    }

    /// The client closes its connection: what it sent still arrives; what it would have read is
    /// lost (it stops reading).
    pub(super) fn close(&mut self, c: usize) {
        self.flush_client(c);
        let w = self.clients[c].wire;
        self.trace(|| format!("client {c} closes wire {w:?}"));
        if let Some(w) = self.clients[c].wire {
            let wire = &mut self.wires[w];
            wire.down.cut();
            match wire.state {
                WireState::Open => wire.state = WireState::ClientClosing,
                WireState::NodeClosing => self.retire_wire(w),
                WireState::ClientClosing | WireState::Closed => {}
            }
        }
        self.clients[c].reset();
    }

    /// Moves the client's queued frames (and acks) into its connection's up pipe, in pieces.
    pub(super) fn flush_client(&mut self, c: usize) {
        let Some(w) = self.clients[c].wire else {
            return;
        };
        self.clients[c].queue_acks();
        let acks = std::mem::take(&mut self.clients[c].acks_queued);
        let Some(out) = self.clients[c].cc.take_output() else {
            return;
        };
        let mut at = 0;
        while at < out.len() {
            let n = 1 + self.rng.index(out.len() - at);
            let d = self.delay();
            self.wires[w]
                .up
                .push(self.now.mono_ms, d, out.slice(at..at + n));
            at += n;
        }
        // Note where the acks end, so the oracle knows once they reached the node (the end of
        // this output: a bound that is never early).
        let sent_to = self.wires[w].up.pushed;
        for (dest, pos) in acks {
            let failures = self.node.disk_failures[dest.owner(self.cfg.shards)];
            if let Some((id, m)) = self
                .oracle
                .msgs
                .iter_mut()
                .find(|(_, m)| m.dest == dest && m.pos == Some(pos))
            {
                m.ack = Some((w, sent_to));
                if !self.pending_acks.contains(id) {
                    self.pending_acks.push(*id);
                }
                m.ack_disk_failures.push((w, failures));
                if self.trace {
                    eprintln!(
                        "[{}] wire {w} acks {pos} (write failures {failures})",
                        self.step
                    );
                }
            }
        }
    }

    /// Bytes the node wrote reached client `c` on wire `w`.
    pub(super) fn client_bytes(&mut self, c: usize, w: usize, bytes: &[u8]) -> Result<(), String> {
        self.clients[c].cc.on_bytes(bytes);
        loop {
            let ev = match self.clients[c].cc.poll_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => {
                    return Err(format!(
                        "client {c} could not parse the node's bytes: {e:?}"
                    ));
                }
            };
            self.client_event(c, w, ev)?;
        }
        self.flush_client(c);
        Ok(())
    }

    pub(super) fn client_event(
        &mut self,
        c: usize,
        w: usize,
        ev: ClientEvent,
    ) -> Result<(), String> {
        self.trace(|| {
            let s = format!("{ev:?}");
            let cut = s.find("payload").unwrap_or(s.len()).min(160);
            format!("client {c} wire {w} <- {}", &s[..cut])
        });
        let own = self.dest_of(self.clients[c].mailbox);
        match ev {
            ClientEvent::Ready { challenge, .. } => {
                self.clients[c].challenge = Some(challenge);
                self.prove(c);
                if self.clients[c].want_listen {
                    self.subscribe(c);
                }
            }
            ClientEvent::ProveResult { items } => {
                if let Some((d, op, s)) = items.iter().find(|(_, _, s)| *s != ProofStatus::Ok) {
                    return Err(format!("a valid proof was refused: {d:?} op {op}: {s:?}"));
                }
            }
            ClientEvent::SubscribeResult { items } => {
                if let Some((d, s)) = items.iter().find(|(_, s)| *s != SubscribeStatus::Ok) {
                    return Err(format!("a proven subscribe was refused: {d:?}: {s:?}"));
                }
            }
            ClientEvent::SendResult { msg_id, status, .. } => {
                self.report.answers += 1;
                if status == SendStatus::Stored {
                    self.report.stored_answers += 1;
                }
                self.oracle.answered(w, msg_id, status)?;
            }
            ClientEvent::Deliver {
                dest,
                msg_id,
                payload,
                ..
            } => {
                if dest != own || !self.clients[c].subscribed {
                    return Err(format!(
                        "message {msg_id} for {dest:?} delivered to a connection that did not subscribe to it"
                    ));
                }
                self.report.live_deliveries += 1;
                self.oracle.delivered(w, dest, msg_id, None, &payload, 0)?;
            }
            ClientEvent::Stored {
                dest,
                pos,
                msg_id,
                payload,
            } => {
                if dest != own || !self.clients[c].proven {
                    return Err(format!(
                        "stored message {msg_id} for {dest:?} handed to a connection without a proof for it"
                    ));
                }
                self.report.stored_deliveries += 1;
                let failures = self.node.disk_failures[dest.owner(self.cfg.shards)];
                self.oracle
                    .delivered(w, dest, msg_id, Some(pos), &payload, failures)?;
                self.clients[c].acks.push((dest, pos));
            }
            ClientEvent::DrainEnd { status, .. } => {
                let give_up = self.rng.chance(500);
                let cl = &mut self.clients[c];
                cl.draining = false;
                match status {
                    DrainStatus::More if cl.taken_over && !cl.subscribed && give_up => {
                        // Taken over meanwhile (and not subscribed again): this device leaves the
                        // rest to the one that listens now, as an app may well do. (A subscriber
                        // must drain on: live packets wait behind what it has not drained.)
                    }
                    DrainStatus::More => {
                        // Drain on; the acks go first, on the same path, so nothing acked comes
                        // again.
                        cl.queue_acks();
                        cl.cc.push(&Frame::Drain { dest: own });
                        cl.draining = true;
                    }
                    DrainStatus::Done => cl.drained_done = true,
                    DrainStatus::Busy | DrainStatus::NotProven => {
                        return Err(format!("a proven, lone drain was answered {status:?}"));
                    }
                }
            }
            ClientEvent::PushResult { status, .. } => {
                let cl = &mut self.clients[c];
                if cl.push_pending == 0 {
                    return Err(format!("client {c} got a PushResult it did not ask for"));
                }
                cl.push_pending -= 1;
                if !matches!(
                    status,
                    ferry_proto::frame::PushStatus::Ok | ferry_proto::frame::PushStatus::Busy
                ) {
                    return Err(format!(
                        "a proven push registration was answered {status:?}"
                    ));
                }
            }
            ev @ (ClientEvent::BlobStatus { .. } | ClientEvent::BlobData { .. }) => {
                self.media_answer(c, ev)?;
            }
            ev @ (ClientEvent::PrekeyResult { .. } | ClientEvent::PrekeyBundle { .. }) => {
                self.prekey_answer(c, &ev)?;
            }
            ClientEvent::Unsubscribed { .. } => {
                // Taken over by another device of the mailbox: it may subscribe again (any
                // hand-over to it came before this, on the same path).
                self.clients[c].subscribed = false;
                self.clients[c].taken_over = true;
            }
            _ => {}
        }
        Ok(())
    }
}
