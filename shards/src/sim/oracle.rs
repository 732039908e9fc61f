//! What the simulated clients saw, checked against what the node promised (docs/PROTOCOL.md):
//! every message the simulator sent, every answer and every delivery.

use std::collections::{BTreeMap, HashMap};

use ferry_proto::frame::{Dest, SendStatus};

/// One message a simulated client sent.
#[derive(Debug)]
pub(super) struct Msg {
    /// The connection it was sent on (`Sim::wires` index).
    pub(super) wire: usize,
    pub(super) dest: Dest,
    /// Whether the sending connection had proven the dest: what it may learn.
    pub(super) owner: bool,
    pub(super) acked: bool,
    pub(super) answer: Option<SendStatus>,
    /// Live deliveries seen.
    pub(super) live: u32,
    /// Stored copies seen (a blob comes again until its ack is durable).
    pub(super) stored: u32,
    /// The last second it may live in the store (sent with a TTL), by the node's clock: past
    /// it, a message answered `Stored` may be gone undelivered. (That a drain returns only live
    /// blobs is the store's tests' to check: a blob drained in time may sit in a slow reader's
    /// send queue past its expiry.)
    pub(super) last_live_unix_s: Option<u64>,
    /// Where it sits in the store, once a stored copy was seen.
    pub(super) pos: Option<u64>,
    /// The wires that received a stored copy of it (each may receive it once).
    pub(super) stored_on: Vec<usize>,
    /// The last `Ack` of it: (wire, the wire's up-pipe byte count once the ack was queued).
    pub(super) ack: Option<(usize, u64)>,
    /// Per wire that acked it: failed writes and syncs on the owner's disk when it did. A later
    /// one may have taken the ack's tombstone (acks have no answer; the blob then comes again).
    pub(super) ack_disk_failures: Vec<(usize, u64)>,
    /// Its ack was carried out by the owner (the blob left the index) in this run of the node,
    /// when that shard had begun this many group commits and its disk had failed this often.
    pub(super) ack_processed: Option<(u64, u64)>,
    /// Its ack survived a crash: it must never be delivered again.
    pub(super) ack_durable: bool,
}

impl Msg {
    /// A message just sent on `wire` to `dest` (`owner`: the wire proved the dest; `acked`: it
    /// asked for an answer).
    pub(super) fn new(wire: usize, dest: Dest, owner: bool, acked: bool) -> Msg {
        Msg {
            wire,
            dest,
            owner,
            acked,
            answer: None,
            live: 0,
            stored: 0,
            last_live_unix_s: None,
            pos: None,
            stored_on: Vec::new(),
            ack: None,
            ack_disk_failures: Vec::new(),
            ack_processed: None,
            ack_durable: false,
        }
    }
}

/// The payload of message `id`: its id and a length and filler derived from it, so a torn or
/// mixed-up blob is caught.
pub(super) fn payload_of(id: u64) -> Vec<u8> {
    let len = 8 + (id.wrapping_mul(0x9e37_79b9) % 300) as usize;
    let mut p = vec![id.to_le_bytes()[0] ^ 0xa5; len];
    p[..8].copy_from_slice(&id.to_le_bytes());
    p
}

/// Everything sent, by message id (ids are unique in a run, so the store never de-duplicates).
#[derive(Debug, Default)]
pub(super) struct Oracle {
    /// Ordered by id, so the checks that walk it name the same message on every replay.
    pub(super) msgs: BTreeMap<u64, Msg>,
    /// The last message id each receiving wire got per (sending wire, dest): one path per pair,
    /// so ids must grow.
    last: HashMap<(usize, usize, Dest), u64>,
}

impl Oracle {
    pub(super) fn sent(&mut self, id: u64, msg: Msg) {
        let old = self.msgs.insert(id, msg);
        assert!(old.is_none(), "message id {id} sent twice by the simulator");
    }

    /// An answer to message `id` arrived on `wire`.
    pub(super) fn answered(
        &mut self,
        wire: usize,
        id: u64,
        status: SendStatus,
    ) -> Result<(), String> {
        let m = self
            .msgs
            .get_mut(&id)
            .ok_or_else(|| format!("SendResult for unknown message {id}"))?;
        if m.wire != wire {
            return Err(format!(
                "SendResult for message {id} went to wire {wire}, not its sender {}",
                m.wire
            ));
        }
        if let Some(prev) = m.answer {
            return Err(format!(
                "message {id} answered twice: {prev:?}, then {status:?}"
            ));
        }
        let allowed = if m.owner {
            !matches!(status, SendStatus::Accepted)
        } else {
            !matches!(status, SendStatus::Delivered | SendStatus::Stored)
        };
        if !allowed {
            return Err(format!(
                "message {id} from {} got {status:?}",
                if m.owner {
                    "the dest's owner"
                } else {
                    "a stranger"
                }
            ));
        }
        m.answer = Some(status);
        Ok(())
    }

    /// A delivery of message `id` on `wire`: live, or a stored copy at `stored_pos`.
    pub(super) fn delivered(
        &mut self,
        wire: usize,
        dest: Dest,
        id: u64,
        stored_pos: Option<u64>,
        payload: &[u8],
        owner_disk_failures: u64,
    ) -> Result<(), String> {
        let m = self
            .msgs
            .get_mut(&id)
            .ok_or_else(|| format!("delivery of unknown message {id}"))?;
        if m.dest != dest {
            return Err(format!(
                "message {id} for {:?} delivered as {:?}",
                m.dest, dest
            ));
        }
        if payload != payload_of(id).as_slice() {
            return Err(format!("message {id} delivered with a corrupt payload"));
        }
        let first = m.live + m.stored == 0;
        match stored_pos {
            None => {
                if m.live > 0 || m.stored > 0 {
                    return Err(format!(
                        "message {id} delivered live after {} live and {} stored copies",
                        m.live, m.stored
                    ));
                }
                m.live += 1;
            }
            Some(pos) => {
                if m.live > 0 {
                    return Err(format!("message {id} delivered live and then stored"));
                }
                if m.ack_durable {
                    return Err(format!(
                        "message {id} delivered again after its ack was made durable"
                    ));
                }
                let acked_then = m
                    .ack_disk_failures
                    .iter()
                    .rev()
                    .find(|(w, _)| *w == wire)
                    .map(|(_, f)| *f);
                // A wire gets a stored blob once; again only if a write or sync failed on the
                // owner's disk after this wire acked it (it may have taken the tombstone).
                // (Whether it was this wire's ack that failed is not known here: another
                // device's ack may have taken the blob since, after this drain read it.)
                let excused = acked_then.is_some_and(|f| f < owner_disk_failures);
                if m.stored_on.contains(&wire) && !excused {
                    return Err(format!(
                        "stored message {id} delivered twice on wire {wire}"
                    ));
                }
                if m.pos.is_some_and(|p| p != pos) {
                    return Err(format!("message {id} stored at two positions"));
                }
                m.pos = Some(pos);
                m.stored += 1;
                m.stored_on.push(wire);
            }
        }
        if !first {
            // A stored copy again (its ack was lost): it comes in store order, behind newer
            // messages this wire may already have.
            return Ok(());
        }
        let key = (wire, m.wire, dest);
        let prev = self.last.insert(key, id).unwrap_or(0);
        if id <= prev {
            return Err(format!(
                "wire {wire} got message {id} after {prev} from the same sender and dest"
            ));
        }
        Ok(())
    }
}
