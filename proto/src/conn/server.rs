//! The server side of a connection: [`ServerConn`], what it answers itself (handshake, pings,
//! proofs, timeouts) and the bounded output it queues for the driver. What each client frame does
//! is in `server/frames.rs`; what it hands to the shard is in `server/events.rs`.

use std::collections::{HashMap, HashSet};

use bytes::{Bytes, BytesMut};

use super::{ConnLimits, Now};
use crate::addr::verify_proofs;
use crate::frame::{
    DecodeError, Dest, ErrorCode, Frame, Op, PrekeyStatus, ProofItem, ProofStatus, SendStatus,
    SubscribeStatus, UnsubscribeReason, frame_type, put_packet_header, split_frame,
};
use crate::limits::{
    CHALLENGE_VALIDITY_MS, FRAME_BYTES_MAX, FRAME_PREFIX_BYTES, PROOF_CACHE_ENTRIES_MAX,
    PROVEN_PER_CONN_MAX,
};

mod events;
mod frames;

pub use events::{BlobOp, ServerEvent};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitHello,
    Open,
    Closing,
}

/// Outcome of [`ServerConn::answer_proofs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProofTally {
    /// Answered `Ok` (those from the cache included).
    pub accepted: u32,
    pub failed: u32,
    /// Handed to signature verification (each is one check the node paid for).
    pub verified: u32,
    /// Answered `Ok` from the connection's cache of proofs it already verified, unchecked.
    pub cached: u32,
    /// Answered `RateLimited` unchecked: over the budget the shard gave.
    pub rate_limited: u32,
}

/// Outcome of [`ServerConn::push_deliver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The send queue is full; the packet was not queued (and was counted).
    QueueFull,
    /// The connection is closing; it takes no more packets.
    Closing,
}

/// Server side of one client connection.
#[derive(Debug)]
pub struct ServerConn {
    limits: ConnLimits,
    node_id: [u8; 32],
    shard: u16,
    state: State,
    inbuf: BytesMut,
    out: BytesMut,
    /// Bytes taken by the driver but not yet reported written.
    in_flight_bytes: usize,
    challenge: [u8; 32],
    challenge_issued_ms: u64,
    proven: HashSet<(Dest, u8)>,
    /// (dest, op) → (blinded key, signature) of proofs verified `Ok` under the current challenge:
    /// the same item again is answered from here, not checked again. At most
    /// `PROOF_CACHE_ENTRIES_MAX` entries (emptied when full), emptied with every new challenge.
    proof_cache: HashMap<(Dest, u8), ([u8; 32], [u8; 64])>,
    /// dest → confirmed by its owner shard.
    subscriptions: HashMap<Dest, bool>,
    proof_failures: u32,
    opened_ms: u64,
    last_rx_ms: u64,
    partial_since_ms: Option<u64>,
    write_stalled_since_ms: Option<u64>,
    ping_sent_ms: Option<u64>,
    ping_nonce: u64,
    close_code: Option<ErrorCode>,
    /// Closing, and the socket has not taken our output in time: the driver must shut it.
    aborted: bool,
    /// Deliveries dropped because the send queue was full.
    pub dropped_queue_full: u64,
    /// Whole frames received (every type, the handshake and pings included).
    pub frames_in: u64,
    /// A `Drain` of this connection is being answered.
    drain_pending: bool,
    /// `BlobGet`s handed on and not yet answered in full.
    blob_gets_in_flight: u32,
}

impl ServerConn {
    pub fn new(
        limits: ConnLimits,
        node_id: [u8; 32],
        shard: u16,
        challenge: [u8; 32],
        now: Now,
    ) -> Self {
        ServerConn {
            limits,
            node_id,
            shard,
            state: State::AwaitHello,
            inbuf: BytesMut::new(),
            out: BytesMut::new(),
            in_flight_bytes: 0,
            challenge,
            challenge_issued_ms: now.mono_ms,
            proven: HashSet::new(),
            proof_cache: HashMap::new(),
            subscriptions: HashMap::new(),
            proof_failures: 0,
            opened_ms: now.mono_ms,
            last_rx_ms: now.mono_ms,
            partial_since_ms: None,
            write_stalled_since_ms: None,
            ping_sent_ms: None,
            ping_nonce: 0,
            close_code: None,
            aborted: false,
            dropped_queue_full: 0,
            frames_in: 0,
            drain_pending: false,
            blob_gets_in_flight: 0,
        }
    }

    /// Feed bytes read from the transport. Call `poll_event` until it returns `None` afterwards.
    pub fn on_bytes(&mut self, now: Now, data: &[u8]) {
        if self.state == State::Closing || data.is_empty() {
            return;
        }
        self.last_rx_ms = now.mono_ms;
        self.ping_sent_ms = None;
        if self.inbuf.is_empty() {
            // A frame starts now; it must be complete within frame_stall_timeout_ms, however
            // slowly its bytes trickle in (slowloris).
            self.partial_since_ms = Some(now.mono_ms);
            // A frame longer than this read: take its announced length (as `split_frame` would
            // next) in one allocation, not one sized to the read and then grown (two blocks
            // of different sizes per partial frame fragment the heap under a flood of them).
            if let Some(prefix) = data.first_chunk::<{ FRAME_PREFIX_BYTES }>() {
                let want = FRAME_PREFIX_BYTES
                    + usize::try_from(u32::from_le_bytes(*prefix)).unwrap_or(usize::MAX);
                if want > data.len() && want <= FRAME_PREFIX_BYTES + FRAME_BYTES_MAX {
                    self.inbuf.reserve(want);
                }
            }
        }
        self.inbuf.extend_from_slice(data);
    }

    /// The next event for the shard, if a whole frame is buffered. Handshake, pings and protocol
    /// errors are handled here and never surface as events.
    pub fn poll_event(&mut self, now: Now) -> Option<ServerEvent> {
        loop {
            if self.state == State::Closing {
                return None;
            }
            let body = match split_frame(&mut self.inbuf) {
                Ok(Some(b)) => {
                    self.frames_in += 1;
                    // What is left belongs to the next frame, which starts now.
                    self.partial_since_ms = if self.inbuf.is_empty() {
                        None
                    } else {
                        Some(now.mono_ms)
                    };
                    b
                }
                Ok(None) => {
                    if self.inbuf.is_empty() {
                        self.partial_since_ms = None;
                        // Idle connections hold no input buffer (payloads already split off keep
                        // their own reference to it).
                        self.inbuf = BytesMut::new();
                    }
                    return None;
                }
                Err(e) => {
                    self.fail_decode(&e);
                    return None;
                }
            };
            let frame = match Frame::decode_body(body) {
                Ok(f) => f,
                Err(e) => {
                    self.fail_decode(&e);
                    return None;
                }
            };
            if let Some(ev) = self.on_frame(now, frame) {
                return Some(ev);
            }
        }
    }

    fn fail_decode(&mut self, e: &DecodeError) {
        self.close_with(e.code(), &e.to_string());
    }

    /// The owner shard registered `dest` for this connection: confirm it to the client.
    pub fn on_subscribed(&mut self, dest: Dest) {
        if let Some(confirmed) = self.subscriptions.get_mut(&dest) {
            *confirmed = true;
            self.push_frame(&Frame::SubscribeResult {
                items: vec![(dest, SubscribeStatus::Ok)],
            });
        }
    }

    fn challenge_is_stale(&self, now: Now) -> bool {
        now.mono_ms.saturating_sub(self.challenge_issued_ms) > CHALLENGE_VALIDITY_MS
    }

    /// Whether `item` was verified `Ok` under the current challenge already.
    fn is_cached(&self, item: &ProofItem) -> bool {
        self.proof_cache
            .get(&(item.dest, item.op))
            .is_some_and(|(key, sig)| *key == item.blinded_key && *sig == item.signature)
    }

    /// How many of `items` [`ServerConn::answer_proofs_within`] would hand to signature
    /// verification now: those not answered from the cache (none while the challenge is stale).
    /// The shard sizes its budget by it.
    pub fn proofs_to_verify(&self, now: Now, items: &[ProofItem]) -> usize {
        if self.challenge_is_stale(now) {
            return 0;
        }
        items.iter().filter(|i| !self.is_cached(i)).count()
    }

    /// [`ServerConn::answer_proofs_within`] with no budget.
    pub fn answer_proofs(&mut self, now: Now, items: &[ProofItem]) -> ProofTally {
        self.answer_proofs_within(now, items, usize::MAX)
    }

    /// Verifies proofs against this connection's challenge and answers them: items this
    /// connection already proved with the same key and signature under this challenge are `Ok`
    /// from the cache; of the rest, the first `verify_max` are checked and the others answered
    /// `RateLimited` unchecked. Returns the counts (failures count against the shard's
    /// per-address limit; stale-challenge, rate-limited and too-many answers are not failures).
    /// Closes the connection once it has failed `proof_failures_max` proofs.
    pub fn answer_proofs_within(
        &mut self,
        now: Now,
        items: &[ProofItem],
        verify_max: usize,
    ) -> ProofTally {
        let mut tally = ProofTally::default();
        let mut statuses = vec![ProofStatus::StaleChallenge; items.len()];
        if !self.challenge_is_stale(now) {
            let mut fresh = Vec::new();
            let mut fresh_at = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if self.is_cached(item) {
                    statuses[i] = ProofStatus::Ok;
                    tally.cached += 1;
                } else if fresh.len() < verify_max {
                    fresh.push(*item);
                    fresh_at.push(i);
                } else {
                    statuses[i] = ProofStatus::RateLimited;
                    tally.rate_limited += 1;
                }
            }
            if !fresh.is_empty() {
                tally.verified = u32::try_from(fresh.len()).expect("a frame's proofs fit a u32");
                let verdicts = verify_proofs(&self.node_id, &self.challenge, &fresh);
                for (&i, status) in fresh_at.iter().zip(verdicts) {
                    statuses[i] = status;
                }
                if self.proof_cache.len() + fresh.len() > PROOF_CACHE_ENTRIES_MAX {
                    self.proof_cache.clear();
                }
                for (&i, item) in fresh_at.iter().zip(&fresh) {
                    if statuses[i] == ProofStatus::Ok {
                        self.proof_cache
                            .insert((item.dest, item.op), (item.blinded_key, item.signature));
                    }
                }
            }
        }
        let mut results = Vec::with_capacity(items.len());
        for (item, mut status) in items.iter().zip(statuses) {
            if status == ProofStatus::Ok {
                if self.proven.len() >= PROVEN_PER_CONN_MAX
                    && !self.proven.contains(&(item.dest, item.op))
                {
                    status = ProofStatus::TooMany;
                } else {
                    self.proven.insert((item.dest, item.op));
                    tally.accepted += 1;
                }
            } else if !matches!(
                status,
                ProofStatus::StaleChallenge | ProofStatus::RateLimited
            ) {
                tally.failed += 1;
            }
            results.push((item.dest, item.op, status));
        }
        self.push_frame(&Frame::ProveResult { items: results });
        self.proof_failures = self.proof_failures.saturating_add(tally.failed);
        if self.proof_failures >= self.limits.proof_failures_max {
            self.close_with(ErrorCode::TooManyProofFailures, "too many failed proofs");
        }
        tally
    }

    /// Answers proofs the shard refused to check (address over its failed-proof budget).
    pub fn refuse_proofs(&mut self, items: &[ProofItem]) {
        let results = items
            .iter()
            .map(|i| (i.dest, i.op, ProofStatus::RateLimited))
            .collect();
        self.push_frame(&Frame::ProveResult { items: results });
    }

    /// Replaces the challenge (the old one is invalid from now on) and sends it.
    pub fn issue_challenge(&mut self, now: Now, challenge: [u8; 32]) {
        self.challenge = challenge;
        // Proofs are bound to the challenge: none verified before holds for the new one.
        self.proof_cache.clear();
        self.challenge_issued_ms = now.mono_ms;
        self.push_frame(&Frame::Challenge {
            challenge,
            unix_time_s: now.unix_s,
        });
    }

    /// Whether this connection holds a proof for (dest, op).
    pub fn is_proven(&self, dest: &Dest, op: Op) -> bool {
        self.proven.contains(&(*dest, op as u8))
    }

    /// Whether this connection proved it owns `dest` (a `Subscribe` or `Drain` proof): only
    /// then may it learn whether `dest` holds mail (`Query`) or is online (`Delivered` versus
    /// `Stored` in a `SendResult`).
    pub fn owns(&self, dest: &Dest) -> bool {
        self.is_proven(dest, Op::Subscribe) || self.is_proven(dest, Op::Drain)
    }

    /// Every dest this connection subscribed to (confirmed or still pending at its owner).
    pub fn subscriptions(&self) -> impl Iterator<Item = &Dest> {
        self.subscriptions.keys()
    }

    /// Another connection took `dest` over: forget it and tell the client.
    pub fn on_taken_over(&mut self, dest: Dest) {
        if self.subscriptions.remove(&dest).is_some() {
            self.push_frame(&Frame::Unsubscribed {
                dest,
                reason: UnsubscribeReason::TakenOver,
            });
        }
    }

    pub fn send_result(&mut self, dest: Dest, msg_id: u64, status: SendStatus) {
        self.push_frame(&Frame::SendResult {
            dest,
            msg_id,
            status,
        });
    }

    /// Answers a `Send` with `PuzzleRequired`: the `Puzzle` frame (seed, effort), then the
    /// `SendResult`.
    pub fn puzzle_required(&mut self, dest: Dest, msg_id: u64, seed: [u8; 32], effort: u32) {
        self.push_frame(&Frame::Puzzle {
            dest,
            msg_id,
            seed,
            effort,
        });
        self.send_result(dest, msg_id, SendStatus::PuzzleRequired);
    }

    /// The owner core's answer to a `CapabilityRegister`.
    pub fn capability_result(&mut self, dest: Dest, status: crate::frame::CapabilityStatus) {
        self.push_frame(&Frame::CapabilityResult { dest, status });
    }

    /// Queues a delivery. Returns `false` (and counts a drop) when the send queue is full: live
    /// relay drops rather than letting one slow reader grow the node's memory.
    pub fn push_deliver(&mut self, dest: &Dest, msg_id: u64, flags: u8, payload: &[u8]) -> Push {
        if self.state == State::Closing {
            return Push::Closing;
        }
        let frame_len = FRAME_PREFIX_BYTES + crate::limits::PACKET_HEADER_BYTES + payload.len();
        if self.queued_bytes() + frame_len > self.limits.send_queue_bytes_max {
            self.dropped_queue_full += 1;
            return Push::QueueFull;
        }
        self.out.reserve(frame_len);
        put_packet_header(
            &mut self.out,
            frame_type::DELIVER,
            dest,
            msg_id,
            flags,
            payload.len(),
        );
        self.out.extend_from_slice(payload);
        Push::Queued
    }

    /// Queues a stored blob (a drain, or the hand-over on subscribe). Bounded like deliveries: on
    /// `QueueFull` the blob stays in the store and comes again on the next drain.
    pub fn push_stored(&mut self, dest: &Dest, pos: u64, msg_id: u64, payload: &[u8]) -> Push {
        if self.state == State::Closing {
            return Push::Closing;
        }
        let frame_len = FRAME_PREFIX_BYTES + 1 + 16 + 8 + 8 + payload.len();
        if self.queued_bytes() + frame_len > self.limits.send_queue_bytes_max {
            self.dropped_queue_full += 1;
            return Push::QueueFull;
        }
        Frame::Stored {
            dest: *dest,
            pos,
            msg_id,
            payload: Bytes::copy_from_slice(payload),
        }
        .encode(&mut self.out);
        Push::Queued
    }

    /// A drain (or a subscribe hand-over) of this connection ended: another may start.
    pub fn on_drain_end(&mut self) {
        self.drain_pending = false;
    }

    /// Whether the driver should read more from this connection. Replies to a client's requests
    /// (results, pongs) are never dropped, so a client that sends but does not read is stopped
    /// from reading instead, until its output drains: its queue stays bounded.
    pub fn wants_read(&self) -> bool {
        self.queued_bytes() <= self.limits.send_queue_bytes_max
    }

    /// Queues a control frame. Control frames are small and bounded by the request that caused
    /// them, so they are never dropped.
    pub fn push_frame(&mut self, frame: &Frame) {
        // The last frame of a `BlobGet` answer frees its slot.
        let get_done = matches!(
            frame,
            Frame::BlobData { more: false, .. }
                | Frame::BlobStatus {
                    op: crate::frame::BlobOpKind::Get,
                    ..
                }
        );
        if get_done {
            self.blob_gets_in_flight = self.blob_gets_in_flight.saturating_sub(1);
        }
        if self.state == State::Closing && !matches!(frame, Frame::Error { .. }) {
            return;
        }
        frame.encode(&mut self.out);
    }

    /// Queues an `Error` frame and stops reading: the driver flushes and closes.
    pub fn close_with(&mut self, code: ErrorCode, message: &str) {
        if self.state == State::Closing {
            return;
        }
        self.push_frame(&Frame::Error {
            code,
            message: message.to_string(),
        });
        self.state = State::Closing;
        self.close_code = Some(code);
    }

    pub fn is_closing(&self) -> bool {
        self.state == State::Closing
    }
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }
    pub fn close_code(&self) -> Option<ErrorCode> {
        self.close_code
    }
    /// The connection's socket must be shut down without waiting for its output: it is closing
    /// and has not accepted bytes for `write_stall_timeout_ms`.
    pub fn is_aborted(&self) -> bool {
        self.aborted
    }

    /// Heap bytes this connection's buffers hold: the input buffer's capacity (a partial frame
    /// reserves its whole announced length), the output buffer's capacity, and output taken by
    /// the driver but not yet written. The shard charges it against its memory budget.
    ///
    /// An aborted connection's output in flight is not counted: the driver shuts its socket at
    /// once, which fails the pending write and drops those bytes.
    pub fn memory_bytes(&self) -> usize {
        let in_flight = if self.aborted {
            0
        } else {
            self.in_flight_bytes
        };
        self.inbuf.capacity() + self.out.capacity() + in_flight
    }

    /// Since when this connection has held memory it cannot yet let go of: the oldest of its
    /// partial frame's start and its stalled output's start. `None`: holding nothing stuck.
    pub fn held_since_ms(&self) -> Option<u64> {
        let partial = self.partial_since_ms.filter(|_| !self.inbuf.is_empty());
        match (partial, self.write_stalled_since_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The node is over its memory budget and this connection holds the most: free its buffers
    /// now (a partial frame and queued output are discarded), queue `Error Overloaded` and close.
    /// A connection that is not taking its output (slow reader) is aborted: its socket is shut
    /// without waiting for the error frame to get through.
    pub fn shed(&mut self) {
        let slow_reader = self.queued_bytes() > 0;
        self.inbuf = BytesMut::new();
        self.out = BytesMut::new();
        self.close_with(ErrorCode::Overloaded, "node memory budget reached");
        if slow_reader {
            self.aborted = true;
        }
    }

    /// Bytes queued or in flight towards the socket.
    pub fn queued_bytes(&self) -> usize {
        self.out.len() + self.in_flight_bytes
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Takes everything queued for the socket, as one buffer: writes are coalesced per turn.
    pub fn take_output(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            return None;
        }
        let b = self.out.split().freeze();
        self.in_flight_bytes += b.len();
        Some(b)
    }

    /// The driver wrote `n` bytes of taken output to the socket.
    pub fn on_written(&mut self, now: Now, n: usize) {
        assert!(n <= self.in_flight_bytes, "wrote more than was taken");
        self.in_flight_bytes -= n;
        if self.in_flight_bytes == 0 && self.out.is_empty() {
            // Everything written: let go of the output buffer's leftover capacity, so an idle
            // connection holds no output buffer (as it holds no input buffer).
            self.out = BytesMut::new();
        }
        self.write_stalled_since_ms = if self.queued_bytes() > 0 {
            Some(now.mono_ms)
        } else {
            None
        };
    }

    /// Output is waiting and the socket is not accepting it (the driver calls this when a write
    /// would block); starts the slow-reader clock if it is not running.
    pub fn on_write_blocked(&mut self, now: Now) {
        self.write_stalled_since_ms.get_or_insert(now.mono_ms);
    }

    /// The earliest time `on_timeout` must run.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.state == State::Closing {
            // Only the write stall matters now: the error frame must get out in time.
            return if self.aborted {
                None
            } else {
                self.write_stalled_since_ms
                    .map(|w| w + self.limits.write_stall_timeout_ms)
            };
        }
        let l = &self.limits;
        // 0 turns the idle timeout or the ping off: no deadline from it.
        let after_rx = |ms: u64| (ms > 0).then(|| self.last_rx_ms + ms);
        let mut t = if self.state == State::AwaitHello {
            Some(self.opened_ms + l.handshake_timeout_ms)
        } else {
            let ping = match self.ping_sent_ms {
                Some(_) => None,
                None => after_rx(l.ping_interval_ms),
            };
            match (ping, after_rx(l.idle_timeout_ms)) {
                (Some(p), Some(i)) => Some(p.min(i)),
                (p, i) => p.or(i),
            }
        };
        let min = |t: Option<u64>, d: u64| Some(t.map_or(d, |t| t.min(d)));
        if let Some(p) = self.partial_since_ms.filter(|_| !self.inbuf.is_empty()) {
            t = min(t, p + l.frame_stall_timeout_ms);
        }
        if let Some(w) = self.write_stalled_since_ms {
            t = min(t, w + l.write_stall_timeout_ms);
        }
        t
    }

    /// Handles every deadline that has passed.
    pub fn on_timeout(&mut self, now: Now) {
        let l = self.limits.clone();
        let t = now.mono_ms;
        match self.state {
            State::Closing
                if self
                    .write_stalled_since_ms
                    .is_some_and(|w| t >= w + l.write_stall_timeout_ms) =>
            {
                self.aborted = true;
            }
            State::Closing => {}
            State::AwaitHello if t >= self.opened_ms + l.handshake_timeout_ms => {
                self.close_with(ErrorCode::HandshakeTimeout, "no ClientHello in time");
            }
            _ if l.idle_timeout_ms > 0 && t >= self.last_rx_ms + l.idle_timeout_ms => {
                self.close_with(ErrorCode::IdleTimeout, "idle");
            }
            _ if self
                .write_stalled_since_ms
                .is_some_and(|w| t >= w + l.write_stall_timeout_ms) =>
            {
                self.close_with(ErrorCode::SlowReader, "not reading its data");
                // Its socket is not draining: the error frame will not get through either.
                self.aborted = true;
            }
            _ if self
                .partial_since_ms
                .is_some_and(|p| !self.inbuf.is_empty() && t >= p + l.frame_stall_timeout_ms) =>
            {
                self.close_with(ErrorCode::SlowSender, "partial frame stalled");
            }
            State::Open
                if l.ping_interval_ms > 0
                    && self.ping_sent_ms.is_none()
                    && t >= self.last_rx_ms + l.ping_interval_ms =>
            {
                self.ping_nonce = self.ping_nonce.wrapping_add(1);
                self.ping_sent_ms = Some(t);
                self.push_frame(&Frame::Ping {
                    nonce: self.ping_nonce,
                });
            }
            _ => {}
        }
    }
}

/// A `PrekeyResult` that refuses a request as a whole (no key at fault, no counts).
pub fn prekey_refusal(dest: Dest, status: PrekeyStatus) -> Frame {
    Frame::PrekeyResult {
        dest,
        status,
        kind: crate::prekey::KeyKind::None,
        index: 0,
        ec_left: 0,
        pq_left: 0,
    }
}
