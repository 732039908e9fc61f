//! The floor on raw io_uring (`ferry-floor --engine uring`): the same work as the glommio floor
//! (copy each sender's bytes to its paired receiver) done the way the fastest servers drive the
//! kernel, so ferry is measured against the best this kernel can do, not only against glommio.
//!
//! * one thread, one ring (`SINGLE_ISSUER` + `DEFER_TASKRUN`: completions are run only when the
//!   loop asks for them, never by an interrupt in the middle of a turn);
//! * one multishot accept on the listener, one multishot receive per connection, drawing from a
//!   provided-buffer ring (no buffer is pinned to a connection that is silent);
//! * a loop turn: one `io_uring_enter` that submits everything queued and waits for at least one
//!   completion, then every completion handled (bytes copied to the receiver's output, the
//!   buffer handed straight back to the ring), then one send per receiver with output (all that
//!   arrived for it in the turn, as one buffer; at most one send in flight per socket, so the
//!   stream keeps its order);
//! * backpressure: a receiver holding more than [`OUT_HIGH`] bytes pauses its sender (its
//!   multishot receive is cancelled) until it is back under [`OUT_LOW`];
//! * optional busy polling (`--spin N`): after a turn that did work, up to N turns submit and
//!   look at the completion queue without sleeping before the loop blocks again.
//!
//! Every unsafe block is in this module, each with its SAFETY note: the buffer ring is memory the
//! kernel writes into, and sends point it at buffers that must stay put until they complete.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{IoUring, cqueue, opcode, squeue};

use crate::ring::{self, BufRing, RING_ENTRIES, Slots, split_user_data, user_data};

/// A receiver with more than this waiting pauses its sender...
const OUT_HIGH: usize = 4 << 20;
/// ...until it is back under this.
const OUT_LOW: usize = 1 << 20;

// What a completion is for (`ring::user_data`).
const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_CANCEL: u64 = 4;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Hello,
    Receiver {
        pair: u32,
    },
    /// A sender whose receiver has not said hello yet: what it sends waits in its own `out`.
    Waiting {
        pair: u32,
    },
    Sender {
        target: u32,
        target_gen: u32,
    },
}

struct Conn {
    fd: OwnedFd,
    generation: u32,
    hello: [u8; 8],
    hello_len: usize,
    role: Role,
    /// A multishot receive is armed (its last completion has not come).
    recv_armed: bool,
    /// Receiving is paused for backpressure (the receiver's output is over `OUT_HIGH`).
    paused: bool,
    /// Output waiting for the next send.
    out: Vec<u8>,
    /// Output being sent: stays put until its send completes (empty: no send in flight).
    inflight: Vec<u8>,
    inflight_done: usize,
    /// On the out-queue-ready list this turn.
    dirty: bool,
    /// As a receiver: the sender paused on this connection's output.
    paused_sender: Option<(u32, u32)>,
    closing: bool,
}

impl Conn {
    /// A send is in flight (its buffer must stay put until it completes).
    fn sending(&self) -> bool {
        !self.inflight.is_empty()
    }
}

struct Floor {
    ring: IoUring,
    bufs: BufRing,
    listener: TcpListener,
    conns: Slots<Conn>,
    receivers: HashMap<u32, (u32, u32)>,
    /// Senders whose receiver has not said hello yet, by pair.
    waiting: HashMap<u32, (u32, u32)>,
    /// Receivers with output and no send in flight, sent at the end of the turn.
    dirty: Vec<u32>,
    /// Connections whose multishot receive ended for want of buffers, armed again at the end of
    /// the turn.
    rearm: Vec<u32>,
    cqes: Vec<cqueue::Entry>,
}

impl Floor {
    fn push(&mut self, sqe: squeue::Entry) -> io::Result<()> {
        // SAFETY: every entry pushed points only at memory that outlives its operation: the
        // buffer ring (owned by `self`), a connection's `inflight` buffer (not touched until
        // its send completes, and the connection is not freed while a send is in flight).
        unsafe { crate::ring::push(&mut self.ring, &sqe) }
    }

    fn conn(&mut self, slot: u32, generation: u32) -> Option<&mut Conn> {
        self.conns
            .get_mut(slot)
            .filter(|c| c.generation == generation)
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        let sqe = ring::accept_multi(self.listener.as_raw_fd(), user_data(OP_ACCEPT, 0, 0));
        self.push(sqe)
    }

    fn arm_recv(&mut self, slot: u32) -> io::Result<()> {
        let Some(c) = self.conns.get_mut(slot) else {
            return Ok(());
        };
        if c.recv_armed || c.paused || c.closing {
            return Ok(());
        }
        c.recv_armed = true;
        let sqe = ring::recv_multi(c.fd.as_raw_fd(), user_data(OP_RECV, slot, c.generation));
        self.push(sqe)
    }

    fn accepted(&mut self, fd: RawFd) -> io::Result<()> {
        // SAFETY: a successful accept completion's result is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let _ = socket2::SockRef::from(&fd).set_nodelay(true);
        let slot = self.conns.insert(|generation| Conn {
            fd,
            generation,
            hello: [0; 8],
            hello_len: 0,
            role: Role::Hello,
            recv_armed: false,
            paused: false,
            out: Vec::new(),
            inflight: Vec::new(),
            inflight_done: 0,
            dirty: false,
            paused_sender: None,
            closing: false,
        });
        self.arm_recv(slot)
    }

    /// Starts closing a connection: its socket is shut down so that its operations complete, and
    /// the slot is freed once none is left in flight.
    fn close(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if !c.closing {
            c.closing = true;
            let _ = socket2::SockRef::from(&c.fd).shutdown(std::net::Shutdown::Both);
            if let Some((s, _)) = c.paused_sender.take() {
                self.close(s);
            }
            let Some(c) = self.conns.get_mut(slot) else {
                return;
            };
            // Out of the pairing maps, if it is still the one waiting there.
            let me = (slot, c.generation);
            let (map, pair) = match c.role {
                Role::Waiting { pair } => (&mut self.waiting, pair),
                Role::Receiver { pair } => (&mut self.receivers, pair),
                _ => return self.reap(slot),
            };
            if map.get(&pair) == Some(&me) {
                map.remove(&pair);
            }
        }
        self.reap(slot);
    }

    fn reap(&mut self, slot: u32) {
        if let Some(c) = self.conns.get(slot)
            && c.closing
            && !c.recv_armed
            && !c.sending()
        {
            self.conns.remove(slot);
        }
    }

    /// Bytes a connection received: the hello first, then (for a sender) the payload for its
    /// receiver.
    fn received(&mut self, slot: u32, bid: u16, len: usize) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let mut data = self.bufs.buffer(bid, len);
        if c.role == Role::Hello {
            let take = (8 - c.hello_len).min(data.len());
            c.hello[c.hello_len..c.hello_len + take].copy_from_slice(&data[..take]);
            c.hello_len += take;
            data = &data[take..];
            if c.hello_len < 8 {
                return;
            }
            let pair = u32::from_le_bytes([c.hello[4], c.hello[5], c.hello[6], c.hello[7]]);
            match &c.hello[..4] {
                b"FLRR" => {
                    c.role = Role::Receiver { pair };
                    let generation = c.generation;
                    self.receivers.insert(pair, (slot, generation));
                    if let Some((s, g)) = self.waiting.remove(&pair) {
                        self.pair_up(pair, (s, g));
                    }
                    return;
                }
                b"FLRS" => match self.receivers.get(&pair).copied() {
                    Some((target, target_gen)) => {
                        self.receivers.remove(&pair);
                        c.role = Role::Sender { target, target_gen };
                    }
                    None => {
                        // Its receiver's hello may not have been read yet: the sender waits.
                        c.role = Role::Waiting { pair };
                        let generation = c.generation;
                        self.waiting.insert(pair, (slot, generation));
                    }
                },
                _ => {
                    self.close(slot);
                    return;
                }
            }
        }
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if let Role::Waiting { .. } = c.role {
            c.out.extend_from_slice(data);
            if c.out.len() > OUT_HIGH {
                // A receiver that never comes does not get to fill the floor's memory.
                self.close(slot);
            }
            return;
        }
        let Role::Sender { target, target_gen } = c.role else {
            return;
        };
        if data.is_empty() {
            return;
        }
        let sender_gen = c.generation;
        let Some(t) = self.conns.get_mut(target) else {
            self.close(slot);
            return;
        };
        if t.generation != target_gen || t.closing {
            self.close(slot);
            return;
        }
        t.out.extend_from_slice(data);
        if !t.dirty && !t.sending() {
            t.dirty = true;
            self.dirty.push(target);
        }
        if t.out.len() > OUT_HIGH && t.paused_sender.is_none() {
            t.paused_sender = Some((slot, sender_gen));
            if let Some(s) = self.conns.get_mut(slot) {
                s.paused = true;
                if s.recv_armed {
                    let cancel = opcode::AsyncCancel::new(user_data(OP_RECV, slot, sender_gen))
                        .build()
                        .user_data(user_data(OP_CANCEL, slot, sender_gen));
                    let _ = self.push(cancel);
                }
            }
        }
    }

    /// A waiting sender meets its receiver: what it sent so far goes to the receiver.
    fn pair_up(&mut self, pair: u32, (s, g): (u32, u32)) {
        let Some((target, target_gen)) = self.receivers.remove(&pair) else {
            return;
        };
        let early = match self.conn(s, g) {
            Some(sender) if !sender.closing => {
                sender.role = Role::Sender { target, target_gen };
                std::mem::take(&mut sender.out)
            }
            _ => {
                // The sender went meanwhile: the receiver waits for another.
                self.receivers.insert(pair, (target, target_gen));
                return;
            }
        };
        if let Some(t) = self.conn(target, target_gen)
            && !early.is_empty()
        {
            t.out.extend_from_slice(&early);
            if !t.dirty && !t.sending() {
                t.dirty = true;
                self.dirty.push(target);
            }
        }
    }

    /// Sends what a receiver has waiting, as one buffer.
    fn start_send(&mut self, slot: u32) -> io::Result<()> {
        let Some(c) = self.conns.get_mut(slot) else {
            return Ok(());
        };
        c.dirty = false;
        if c.sending() || c.closing || c.out.is_empty() {
            return Ok(());
        }
        std::mem::swap(&mut c.out, &mut c.inflight);
        c.out.clear();
        c.inflight_done = 0;
        let sqe = send_entry(c, slot);
        self.push(sqe)
    }

    fn sent(&mut self, slot: u32, generation: u32, res: i32) -> io::Result<()> {
        let Some(c) = self.conns.get_mut(slot) else {
            return Ok(());
        };
        debug_assert_eq!(
            c.generation, generation,
            "a slot with a send in flight is never reused"
        );
        if res <= 0 || c.closing {
            c.inflight.clear();
            self.close(slot);
            return Ok(());
        }
        c.inflight_done += res as usize;
        if c.inflight_done < c.inflight.len() {
            let sqe = send_entry(c, slot);
            return self.push(sqe);
        }
        c.inflight.clear();
        let resume = if c.out.len() < OUT_LOW {
            c.paused_sender.take()
        } else {
            None
        };
        if !c.out.is_empty() {
            self.start_send(slot)?;
        }
        if let Some((s, g)) = resume
            && let Some(sender) = self.conn(s, g)
        {
            sender.paused = false;
            self.arm_recv(s)?;
        }
        Ok(())
    }

    fn completion(&mut self, cqe: &cqueue::Entry) -> io::Result<()> {
        let (op, slot, generation) = split_user_data(cqe.user_data());
        let res = cqe.result();
        let flags = cqe.flags();
        match op {
            OP_ACCEPT => {
                if res >= 0 {
                    self.accepted(res)?;
                }
                if !cqueue::more(flags) {
                    self.arm_accept()?;
                }
            }
            OP_RECV => {
                let bid = cqueue::buffer_select(flags);
                if res > 0
                    && let Some(bid) = bid
                    && self.conn(slot, generation).is_some()
                {
                    self.received(slot, bid, res as usize);
                }
                if let Some(bid) = bid {
                    self.bufs.give(bid);
                }
                let more = cqueue::more(flags);
                if let Some(c) = self.conn(slot, generation) {
                    if !more {
                        c.recv_armed = false;
                    }
                    if res == 0 || (res < 0 && res != -libc::ENOBUFS && res != -libc::ECANCELED) {
                        self.close(slot);
                    } else if !more {
                        if c.closing {
                            self.reap(slot);
                        } else if !c.paused {
                            self.rearm.push(slot);
                        }
                    }
                }
            }
            OP_SEND => self.sent(slot, generation, res)?,
            _ => {}
        }
        Ok(())
    }

    fn run(&mut self, spin: u32) -> io::Result<()> {
        self.arm_accept()?;
        let mut idle_turns = 0u32;
        loop {
            if idle_turns < spin {
                self.ring.submit()?;
            } else {
                self.ring.submit_and_wait(1)?;
            }
            self.cqes.clear();
            self.cqes.extend(self.ring.completion());
            if self.cqes.is_empty() {
                idle_turns = idle_turns.saturating_add(1);
                continue;
            }
            idle_turns = 0;
            let cqes = std::mem::take(&mut self.cqes);
            for cqe in &cqes {
                self.completion(cqe)?;
            }
            self.cqes = cqes;
            self.bufs.publish();
            for slot in std::mem::take(&mut self.dirty) {
                self.start_send(slot)?;
            }
            for slot in std::mem::take(&mut self.rearm) {
                self.arm_recv(slot)?;
            }
        }
    }
}

fn send_entry(c: &Conn, slot: u32) -> squeue::Entry {
    let rest = &c.inflight[c.inflight_done..];
    ring::send(
        c.fd.as_raw_fd(),
        rest,
        user_data(OP_SEND, slot, c.generation),
    )
}

/// Serves the floor on `listener` until the process is killed.
pub fn run(listener: TcpListener, spin: u32) -> io::Result<()> {
    let ring = crate::ring::new_ring()?;
    let bufs = BufRing::new(&ring, ring::BUF_COUNT, ring::BUF_LEN, false)?;
    let mut floor = Floor {
        ring,
        bufs,
        listener,
        conns: Slots::new(),
        receivers: HashMap::new(),
        waiting: HashMap::new(),
        dirty: Vec::new(),
        rearm: Vec::new(),
        cqes: Vec::with_capacity(RING_ENTRIES as usize * 4),
    };
    floor.run(spin)
}
