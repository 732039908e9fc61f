//! The invariants: after every step, and at the end of a run, when faults stop, everything
//! lands, every mailbox drains and everyone leaves.

use super::*;

impl Sim {
    /// The invariants that hold after every step.
    pub(super) fn check_step(&self) -> Result<(), String> {
        for (s, sh) in self.node.shards.iter().enumerate() {
            let max = shard_config(&self.cfg, s).memory_bytes_max;
            if sh.memory_bytes() > max {
                return Err(format!(
                    "shard {s} holds {} bytes, over its budget of {max}",
                    sh.memory_bytes()
                ));
            }
        }
        Ok(())
    }

    /// The end of a run: faults stop, everything in flight lands, every mailbox drains what is
    /// stored, every connection closes; then the promises that span the run are checked.
    pub(super) fn finish(&mut self) -> Result<(), String> {
        self.faults = false;
        for d in &self.node.disks {
            let mut disk = d.disk.borrow_mut();
            disk.faults.fail_sync = None;
            disk.faults.fail_write = None;
        }
        self.quiesce()?;
        // Every acked send on a connection still open was answered.
        for (id, m) in &self.oracle.msgs {
            let open = self.wires[m.wire].state == WireState::Open
                && self.clients[self.wires[m.wire].client].wire == Some(m.wire);
            if open && m.answer.is_none() && m.acked {
                return Err(format!("message {id} was never answered"));
            }
        }
        // Liveness: a subscriber with nothing left to drain gets live packets. Each one still
        // subscribed sends itself one (as another device would); with the node quiet, the only
        // answer is `Delivered`.
        let live: Vec<usize> = (0..self.clients.len())
            .filter(|&c| {
                let cl = &self.clients[c];
                cl.subscribed && !cl.draining && cl.wire.is_some()
            })
            .collect();
        let mut probes = Vec::new();
        for &c in &live {
            let mailbox = self.clients[c].mailbox;
            let (dest, id) = (self.dest_of(mailbox), self.next_msg);
            self.next_msg += 1;
            let w = self.clients[c].wire.ok_or("a live client without a wire")?;
            self.clients[c]
                .cc
                .send(dest, id, FLAG_ACK, 0, &oracle::payload_of(id));
            self.oracle.sent(id, oracle::Msg::new(w, dest, true, true));
            self.flush_client(c);
            probes.push(id);
        }
        self.quiesce()?;
        for id in probes {
            let answer = self.oracle.msgs.get(&id).and_then(|m| m.answer);
            if answer != Some(SendStatus::Delivered) {
                return Err(format!(
                    "a live packet ({id}) to a quiet subscriber was answered {answer:?}"
                ));
            }
        }
        // Every push registration on a connection still open was answered.
        for (c, cl) in self.clients.iter().enumerate() {
            if cl.push_pending > 0 {
                return Err(format!(
                    "client {c}'s {} push registration(s) never answered",
                    cl.push_pending
                ));
            }
        }
        for (c, cl) in self.clients.iter().enumerate() {
            if let Some(asked) = &cl.media_asked {
                return Err(format!(
                    "client {c}'s media request {asked:?} never answered"
                ));
            }
        }
        self.report.media_answers = self.media.answers;
        self.report.media_completed = self.media.completed;
        self.report.media_ranges_verified = self.media.ranges_verified;
        for (c, cl) in self.clients.iter().enumerate() {
            if cl.prekey_pending > 0 {
                return Err(format!(
                    "client {c}'s {} prekey request(s) never answered",
                    cl.prekey_pending
                ));
            }
        }
        // Every wake ends: sent, failed for good, or dropped and counted; none stays queued.
        for _ in 0..2_000 {
            if self.service.wakes_pending() == 0 {
                break;
            }
            self.advance(TICK_MS)?;
        }
        if self.service.wakes_pending() > 0 {
            return Err(format!(
                "{} wakes still queued or at a provider after the run",
                self.service.wakes_pending()
            ));
        }
        self.report.wakes = self.service.wakes;
        self.report.provider_answers = self.service.provider_answers();
        // Every mailbox drains everything stored for it: one device of each connects afresh.
        for mbox in 0..self.cfg.mailboxes {
            let c = (0..self.clients.len())
                .find(|&c| self.clients[c].mailbox == mbox)
                .ok_or("a mailbox without a client")?;
            self.close(c);
            self.quiesce()?;
            self.connect(c)?;
            self.clients[c].want_listen = false;
            self.clients[c].drained_done = false;
            self.quiesce()?;
            self.drain(c);
            self.flush_client(c);
            for _ in 0..10_000 {
                self.quiesce()?;
                if self.clients[c].drained_done && !self.clients[c].draining {
                    break;
                }
            }
            if !self.clients[c].drained_done {
                return Err(format!("mailbox {mbox} never finished draining"));
            }
            // Its acks reach the node and are synced.
            self.flush_client(c);
            self.quiesce()?;
        }
        for (id, m) in &self.oracle.msgs {
            let expired = m.last_live_unix_s.is_some_and(|t| self.now.unix_s > t);
            if m.answer == Some(SendStatus::Stored) && m.live + m.stored == 0 && !expired {
                return Err(format!(
                    "message {id} was answered Stored but never reached its mailbox"
                ));
            }
            if let (Some((w, at)), Some(pos)) = (m.ack, m.pos) {
                let owner = m.dest.owner(self.cfg.shards);
                let held = self.node.shards[owner]
                    .store()
                    .is_some_and(|l| l.holds(&m.dest, Pos::from_u64(pos)));
                if self.wires[w].up.delivered >= at && held {
                    return Err(format!(
                        "message {id}'s ack reached the node but it is still stored"
                    ));
                }
            }
        }
        // Everyone leaves: nothing may stay behind.
        for c in 0..self.clients.len() {
            self.close(c);
        }
        self.quiesce()?;
        for (s, sh) in self.node.shards.iter().enumerate() {
            let left = sh.leftovers();
            if !left.is_empty() {
                return Err(format!(
                    "shard {s} kept after every close: {}",
                    left.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Runs time on until nothing is in flight and no sync is pending.
    pub(super) fn quiesce(&mut self) -> Result<(), String> {
        for _ in 0..1_000 {
            self.advance(TICK_MS)?;
            let idle = self.wires.iter().all(|w| {
                w.up.next_due().is_none() && w.down.next_due().is_none()
                    || w.state == WireState::Closed
            }) && self.node.links.iter().all(VecDeque::is_empty)
                && self.node.syncs.is_empty()
                && self.node.segment_jobs.is_empty()
                && self
                    .node
                    .shards
                    .iter()
                    .all(|s| s.store_sync_due_ms().is_none());
            if idle {
                return Ok(());
            }
        }
        Err("the node never went quiet".into())
    }
}
