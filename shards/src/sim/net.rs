//! The simulated network: one TCP connection is two byte pipes, each FIFO (a stream never
//! reorders), each chunk with its own delay; what is still in a pipe when the connection is cut is
//! lost. Different connections and the links between cores interleave in the seeded order.

use std::collections::VecDeque;

use crate::table::ConnId;

use bytes::Bytes;

/// One direction of a connection.
#[derive(Debug, Default)]
pub(super) struct Pipe {
    /// (due at, monotonic ms; bytes), due times never decreasing.
    chunks: VecDeque<(u64, Bytes)>,
    /// Bytes put in so far.
    pub(super) pushed: u64,
    /// Bytes taken out (handed to the other end) so far.
    pub(super) delivered: u64,
}

/// What the kernel holds for a connection before a write blocks (send and receive buffers):
/// small, so a client that stops reading blocks the node's writes soon.
pub(super) const SOCKET_BUFFER_BYTES: u64 = 32 * 1024;

impl Pipe {
    /// Queues `bytes`, due `delay_ms` from `now_ms` but never before what is already queued.
    pub(super) fn push(&mut self, now_ms: u64, delay_ms: u64, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        let after = self.chunks.back().map_or(0, |(at, ..)| *at);
        self.pushed += bytes.len() as u64;
        self.chunks
            .push_back(((now_ms + delay_ms).max(after), bytes));
    }

    pub(super) fn due(&self, now_ms: u64) -> bool {
        self.chunks.front().is_some_and(|(at, ..)| *at <= now_ms)
    }

    pub(super) fn pop(&mut self) -> Option<Bytes> {
        let (_, b) = self.chunks.pop_front()?;
        self.delivered += b.len() as u64;
        Some(b)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Drops what is in flight (the connection was cut).
    pub(super) fn cut(&mut self) {
        self.chunks.clear();
    }

    /// Bytes in flight (written, not yet read).
    pub(super) fn backlog(&self) -> u64 {
        self.pushed - self.delivered
    }

    /// When the next chunk is due, if any.
    pub(super) fn next_due(&self) -> Option<u64> {
        self.chunks.front().map(|(at, ..)| *at)
    }
}

/// How one simulated TCP connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WireState {
    Open,
    /// The client closed: what it sent before still arrives, then the node sees the close.
    ClientClosing,
    /// The node closed after writing what is in the down pipe; the client reads it, then EOF.
    NodeClosing,
    Closed,
}

/// One connection between a client and a shard.
#[derive(Debug)]
pub(super) struct Wire {
    pub(super) client: usize,
    pub(super) shard: usize,
    /// The shard's id for it.
    pub(super) conn: ConnId,
    /// Client → node.
    pub(super) up: Pipe,
    /// Node → client.
    pub(super) down: Pipe,
    /// The node parked this connection's reader (`Shard::hold_reader`) until it is resumed.
    pub(super) held: bool,
    /// The driver's writer: bytes of the write in progress (taken from the shard, not yet
    /// accepted by the socket), and whether the connection should close after it.
    pub(super) writing: Option<(usize, bool)>,
    /// The shard named it ready while a write was in progress: take its output after.
    pub(super) write_wanted: bool,
    /// The client does not read before this (virtual ms): a slow reader.
    pub(super) read_paused_until_ms: u64,
    pub(super) state: WireState,
    /// When it opened (virtual ms), for the client-hours count.
    pub(super) opened_ms: u64,
}
