//! Getting stored blobs out: queries, drains, and the hand-over of what was stored to a new
//! subscriber.

use super::*;

/// A local connection's `Query` while its dests' owners answer.
#[derive(Debug)]
pub(super) struct PendingQuery {
    pub(super) conn: ConnId,
    /// Owner cores that have not answered yet.
    pub(super) owners_left: usize,
    /// The dests holding stored blobs, as answered so far.
    pub(super) holding: Vec<Dest>,
}

impl<B: Backend> Shard<B> {
    /// A local connection's query: answered here for owned dests, by owners for the rest, and
    /// returned to the client as one QueryResult once every owner has answered.
    pub(super) fn query(&mut self, now: Now, conn: ConnId, dests: Vec<Dest>) {
        let mut by_owner: AHashMap<u16, Vec<Dest>> = AHashMap::new();
        for d in dests {
            by_owner.entry(self.owner(&d)).or_default().push(d);
        }
        let id = self.next_query;
        self.next_query += 1;
        self.queries.insert(
            id,
            PendingQuery {
                conn,
                owners_left: by_owner.len(),
                holding: Vec::new(),
            },
        );
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

    pub(super) fn holding(&self, now: Now, dests: &[Dest]) -> Vec<Dest> {
        self.store
            .as_ref()
            .map(|l| l.holding(dests, now.unix_s))
            .unwrap_or_default()
    }

    pub(super) fn query_answer(&mut self, id: u64, mut dests: Vec<Dest>) {
        let Some(q) = self.queries.get_mut(&id) else {
            return;
        };
        q.holding.append(&mut dests);
        q.owners_left = q.owners_left.saturating_sub(1);
        if q.owners_left == 0 {
            let Some(PendingQuery { conn, holding, .. }) = self.queries.remove(&id) else {
                return;
            };
            if let Some(c) = self.conns.get_mut(&conn) {
                c.sm.push_frame(&Frame::QueryResult { dests: holding });
                self.mark_ready(conn);
            }
        }
    }

    /// Owner side of a drain: up to DRAIN_BLOBS_MAX stored blobs of `dest` to `to`, then DrainEnd.
    pub(super) fn send_stored(&mut self, now: Now, dest: Dest, to: ConnRef) {
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

    /// Drainer's side of one stored blob: queued on the connection, or (queue full) left stored
    /// for the next drain, which the `DrainEnd` then asks for.
    pub(super) fn on_stored_blob(
        &mut self,
        to: ConnId,
        dest: Dest,
        pos: u64,
        msg_id: u64,
        payload: &[u8],
    ) {
        if self.drain_short.contains(&(to, dest)) {
            // An earlier blob of this batch did not fit the send queue: the rest waits for the
            // next drain too, so the blobs still arrive oldest first (a later, smaller one
            // slipping in ahead of it would break the order per sender).
            return;
        }
        let pushed = self
            .conns
            .get_mut(&to)
            .map(|c| c.sm.push_stored(&dest, pos, msg_id, payload));
        match pushed {
            Some(Push::Queued) => self.mark_ready(to),
            Some(_) => {
                // Still stored: the next drain brings it.
                self.drain_short.insert((to, dest));
            }
            None => {}
        }
    }

    /// Drainer's side of the end of a drain batch.
    pub(super) fn on_drain_end(&mut self, to: ConnId, dest: Dest, more: bool) {
        let short = self.drain_short.remove(&(to, dest));
        if !self.conns.contains_key(&to) {
            // Closed meanwhile: nothing to keep for it.
            return;
        }
        if short {
            self.drain_behind.insert((to, dest));
        } else if !more {
            self.drain_behind.remove(&(to, dest));
        }
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
}
