//! Mail: sends (with the puzzles a node may ask for, solved and resent here, and capability
//! tokens), and the mail a node stored for a mailbox: query, drain, ack.

use std::time::{Duration, Instant};

use ferry_proto::conn::ClientEvent;
use ferry_proto::frame::{Dest, Frame, SendStatus};
use ferry_proto::limits::{DESTS_PER_FRAME_MAX, PACKET_PAYLOAD_BYTES_MAX};

use crate::{Client, PUZZLE_ATTEMPTS_MAX, PendingSend, RESENDABLE_SENDS_MAX, SdkError, StoredBlob};

impl Client {
    /// Queues a packet; call [`Client::flush`] (or any waiting call) to write it. Sends are
    /// buffered so that many small packets leave in one write.
    ///
    /// When the node answers `PuzzleRequired` (the dest or the store is under pressure), the
    /// client solves the puzzle and sends the packet again by itself while it waits for events:
    /// the application sees the final `SendResult` (up to [`PUZZLE_ATTEMPTS_MAX`] tries, efforts
    /// up to [`Client::set_puzzle_effort_max`]).
    pub fn send(&mut self, dest: Dest, msg_id: u64, flags: u8, payload: &[u8]) {
        self.send_with_ttl(dest, msg_id, flags, 0, payload);
    }

    /// Like [`Client::send_with_ttl`], carrying the capability token the recipient gave this
    /// client inside the end-to-end session
    /// ([`ferry_proto::puzzle::capability_token`] of its send secret and the dest's epoch): a
    /// dest under pressure takes it instead of a puzzle.
    pub fn send_with_capability(
        &mut self,
        dest: Dest,
        msg_id: u64,
        flags: u8,
        ttl_s: u32,
        token: [u8; 32],
        payload: &[u8],
    ) {
        self.send_pass(dest, msg_id, flags, ttl_s, Some(token), payload);
    }

    fn send_pass(
        &mut self,
        dest: Dest,
        msg_id: u64,
        flags: u8,
        ttl_s: u32,
        capability: Option<[u8; 32]>,
        payload: &[u8],
    ) {
        assert!(
            payload.len() <= PACKET_PAYLOAD_BYTES_MAX,
            "payload over PACKET_PAYLOAD_BYTES_MAX"
        );
        let pass = ferry_proto::puzzle::SendPass {
            puzzle: None,
            capability,
        };
        self.conn
            .send_with(dest, msg_id, flags, ttl_s, &pass, payload);
        if self.resendable.len() >= RESENDABLE_SENDS_MAX {
            self.resendable.pop_front();
        }
        self.resendable.push_back(PendingSend {
            dest,
            msg_id,
            flags,
            ttl_s,
            capability,
            payload: payload.to_vec(),
            attempts: 0,
        });
    }

    /// Sets the highest puzzle effort this client solves by itself (0: never solve).
    pub fn set_puzzle_effort_max(&mut self, effort: u32) {
        self.puzzle_effort_max = effort.min(ferry_proto::puzzle::PUZZLE_EFFORT_MAX);
    }

    /// Registers, under a `Drain` proof for `dest`, the verifier of the capability tokens this
    /// mailbox's contacts will send to `dest` ([`ferry_proto::puzzle::capability_verifier`] of
    /// the epoch's token), for `ttl_s` seconds (capped by the node; 0 removes it).
    pub fn register_capability(
        &mut self,
        dest: Dest,
        ttl_s: u32,
        verifier: [u8; 32],
    ) -> Result<ferry_proto::CapabilityStatus, SdkError> {
        self.conn.push(&Frame::CapabilityRegister {
            dest,
            ttl_s,
            verifier,
        });
        self.flush()?;
        self.wait_for(Duration::from_secs(10), |ev| match ev {
            ClientEvent::CapabilityResult { dest: d, status } if *d == dest => Some(*status),
            _ => None,
        })
    }

    /// Handles puzzle frames: remembers a `Puzzle`, and answers its `SendResult PuzzleRequired`
    /// by solving and resending when it can. `None`: the event was consumed.
    pub(crate) fn on_puzzle_event(
        &mut self,
        ev: ClientEvent,
    ) -> Result<Option<ClientEvent>, SdkError> {
        match ev {
            ClientEvent::Puzzle {
                dest,
                msg_id,
                seed,
                effort,
            } => {
                if self.puzzles.len() >= RESENDABLE_SENDS_MAX {
                    self.puzzles.pop_front();
                }
                self.puzzles.push_back((dest, msg_id, seed, effort));
                Ok(None)
            }
            ClientEvent::SendResult {
                dest,
                msg_id,
                status: SendStatus::PuzzleRequired,
            } => {
                let puzzle = self
                    .puzzles
                    .iter()
                    .position(|p| p.0 == dest && p.1 == msg_id)
                    .and_then(|i| self.puzzles.remove(i));
                let pending = self
                    .resendable
                    .iter()
                    .position(|p| p.dest == dest && p.msg_id == msg_id);
                let (Some((_, _, seed, effort)), Some(i)) = (puzzle, pending) else {
                    return Ok(Some(ev));
                };
                let p = &mut self.resendable[i];
                if p.attempts >= PUZZLE_ATTEMPTS_MAX || effort > self.puzzle_effort_max {
                    return Ok(Some(ev));
                }
                p.attempts += 1;
                let digest = ferry_proto::puzzle::message_digest(msg_id, p.ttl_s, &p.payload);
                let mut nonce = [0u8; 16];
                getrandom::fill(&mut nonce)
                    .map_err(|e| SdkError::Io(std::io::Error::other(e.to_string())))?;
                let Some(answer) = ferry_proto::puzzle::solve(&seed, &dest, &digest, effort, nonce)
                else {
                    return Ok(Some(ev));
                };
                let pass = ferry_proto::puzzle::SendPass {
                    puzzle: Some(answer),
                    capability: p.capability,
                };
                let (flags, ttl_s) = (p.flags, p.ttl_s);
                let payload = std::mem::take(&mut p.payload);
                self.conn
                    .send_with(dest, msg_id, flags, ttl_s, &pass, &payload);
                self.resendable[i].payload = payload;
                self.flush()?;
                Ok(None)
            }
            ClientEvent::SendResult { dest, msg_id, .. } => {
                if let Some(i) = self
                    .resendable
                    .iter()
                    .position(|p| p.dest == dest && p.msg_id == msg_id)
                {
                    self.resendable.remove(i);
                }
                Ok(Some(ev))
            }
            ev => Ok(Some(ev)),
        }
    }

    /// Like [`Client::send`], with how long the node may store the packet if the recipient is
    /// offline (capped by the node's maximum; 0 = the maximum).
    pub fn send_with_ttl(
        &mut self,
        dest: Dest,
        msg_id: u64,
        flags: u8,
        ttl_s: u32,
        payload: &[u8],
    ) {
        self.send_pass(dest, msg_id, flags, ttl_s, None, payload);
    }

    /// Which of `dests` hold stored blobs. The node answers only for dests this connection
    /// proved (`Op::Drain` or `Op::Subscribe`): any other dest is answered as holding nothing,
    /// whether it does or not. Prove first, then ask.
    pub fn query(&mut self, dests: &[Dest]) -> Result<Vec<Dest>, SdkError> {
        let mut out = Vec::new();
        for chunk in dests.chunks(DESTS_PER_FRAME_MAX) {
            self.conn.push(&Frame::Query {
                dests: chunk.to_vec(),
            });
            self.flush()?;
            out.extend(self.wait_for(Duration::from_secs(10), |ev| match ev {
                ClientEvent::QueryResult { dests } => Some(dests.clone()),
                _ => None,
            })?);
        }
        Ok(out)
    }

    /// Fetches stored blobs of `dest` (proven for `Op::Drain` first), oldest first, at most one
    /// batch: the flag says whether more remain (ack these, then drain again). Blobs stay stored
    /// until acked.
    pub fn drain(&mut self, dest: Dest) -> Result<(Vec<StoredBlob>, bool), SdkError> {
        self.conn.push(&Frame::Drain { dest });
        self.flush()?;
        let mut blobs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.next_event(deadline)? {
                ClientEvent::Stored {
                    dest: d,
                    pos,
                    msg_id,
                    payload,
                } if d == dest => {
                    blobs.push(StoredBlob {
                        dest: d,
                        pos,
                        msg_id,
                        payload,
                    });
                }
                ClientEvent::DrainEnd { dest: d, status } if d == dest => {
                    return match status {
                        ferry_proto::DrainStatus::NotProven => Err(SdkError::NotProven),
                        ferry_proto::DrainStatus::Busy => Err(SdkError::Busy),
                        ferry_proto::DrainStatus::More => Ok((blobs, true)),
                        ferry_proto::DrainStatus::Done => Ok((blobs, false)),
                    };
                }
                ClientEvent::Error { code, message } => {
                    return Err(SdkError::Node { code, message });
                }
                other => self.queue(other)?,
            }
        }
    }

    /// Deletes stored blobs that were received (their dests proven for `Op::Drain`).
    pub fn ack(&mut self, blobs: &[StoredBlob]) -> Result<(), SdkError> {
        let items: Vec<(Dest, u64)> = blobs.iter().map(|b| (b.dest, b.pos)).collect();
        for chunk in items.chunks(DESTS_PER_FRAME_MAX) {
            self.conn.push(&Frame::Ack {
                items: chunk.to_vec(),
            });
        }
        self.flush()
    }
}
