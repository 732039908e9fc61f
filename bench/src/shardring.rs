//! `ferry-shardring`: one ferry shard (the node's own [`Shard`] state machine: handshake,
//! proofs, subscriptions, routing, limits) driven by a raw io_uring loop instead of glommio, to
//! measure what ferry's protocol costs on the ring the raw-ring floor uses (`ferry-floor
//! --engine uring`) before the node's driver is rebuilt on it (issue 15, "io_uring used the way
//! the fastest servers use it").
//!
//! The loop is the raw floor's: one multishot accept, one multishot receive per connection into
//! the provided-buffer ring, bytes handed to `Shard::on_bytes` as they come, and at the end of
//! each turn every connection the shard marked ready gets its whole output as one send (at most
//! one in flight per socket); `on_written` when it completes; the shard's tick every
//! `--tick-ms`. What the node's driver does besides is **not** here: no store, no TLS, one shard
//! (no mesh), no service core, no write-stall clock, no drain on stop. A benchmark, not a node.
//!
//! `ferry-shardring [--listen 127.0.0.1:7950] [--cpu N] [--tick-ms 100]`

#![allow(unsafe_code)] // raw descriptors from accept completions; io_uring entries (SAFETY notes)

use ferry_shards::ring;

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use ahash::AHashMap;
use bytes::Bytes;
use ferry_proto::conn::ConnLimits;
use ferry_shards::clock::Clock;
use ferry_shards::metrics::ShardMetrics;
use ferry_shards::puzzle::PuzzleConfig;
use ferry_shards::ratelimit::{IpLimits, Rate};
use ferry_shards::shard::{Accept, Shard, ShardConfig};
use ferry_shards::table::ConnId;
use io_uring::types::{SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, squeue};

use ring::{BufRing, Slots, split_user_data, user_data};

/// Input handed to the shard per loop turn. Past it, receive completions wait for the next
/// turn (their buffers kept), which comes at once after this turn's sends are submitted: the
/// node's driver reads 64 KiB at a time and its writers run between reads; without a bound, one
/// turn could take a whole buffer ring (64 MiB) of a sender's packets before any receiver's
/// output went out, and the shard drops what overflows a receiver's queue (`Congested`).
const TURN_INPUT_BYTES: usize = 256 * 1024;

const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;

struct Conn {
    fd: OwnedFd,
    generation: u32,
    id: ConnId,
    recv_armed: bool,
    /// Output being sent: stays put until its send completes.
    inflight: Option<Bytes>,
    inflight_done: usize,
    /// Close once the output in flight is written.
    close_after: bool,
    closing: bool,
}

struct Driver {
    ring: IoUring,
    bufs: BufRing,
    listener: TcpListener,
    shard: Shard,
    clock: Clock,
    conns: Slots<Conn>,
    by_id: AHashMap<ConnId, u32>,
    ready: Vec<ConnId>,
    rearm: Vec<u32>,
    cqes: Vec<cqueue::Entry>,
    /// Receive completions left for the next turn (over `TURN_INPUT_BYTES`), in order.
    backlog: std::collections::VecDeque<cqueue::Entry>,
    /// Input handed to the shard this turn.
    turn_input: usize,
}

impl Driver {
    fn push(&mut self, sqe: squeue::Entry) -> io::Result<()> {
        // SAFETY: entries point only at the buffer ring (owned by `self`) and at a connection's
        // `inflight` bytes, which are kept until their send completes (a slot is not freed
        // while a send is in flight).
        unsafe { ring::push(&mut self.ring, &sqe) }
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        let sqe = ring::accept_multi(self.listener.as_raw_fd(), user_data(OP_ACCEPT, 0, 0));
        self.push(sqe)
    }

    fn arm_recv(&mut self, slot: u32) -> io::Result<()> {
        let Some(c) = self.conns.get_mut(slot) else {
            return Ok(());
        };
        if c.recv_armed || c.closing {
            return Ok(());
        }
        c.recv_armed = true;
        let sqe = ring::recv_multi(c.fd.as_raw_fd(), user_data(OP_RECV, slot, c.generation));
        self.push(sqe)
    }

    fn accepted(&mut self, raw: i32) -> io::Result<()> {
        // SAFETY: a successful accept completion's result is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sock = socket2::SockRef::from(&fd);
        let _ = sock.set_nodelay(true);
        let ip = match sock.peer_addr().ok().and_then(|a| a.as_socket()) {
            Some(a) => a.ip(),
            None => return Ok(()),
        };
        let id = match self.shard.accept(self.clock.now(), ip) {
            Accept::Ok(id) => id,
            // Refused (limits): this benchmark just drops it.
            Accept::Refused(_) => return Ok(()),
        };
        let slot = self.conns.insert(|generation| Conn {
            fd,
            generation,
            id,
            recv_armed: false,
            inflight: None,
            inflight_done: 0,
            close_after: false,
            closing: false,
        });
        self.by_id.insert(id, slot);
        self.arm_recv(slot)
    }

    /// Shuts the socket so that its operations complete; the slot goes once none is in flight.
    fn close(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if !c.closing {
            c.closing = true;
            let _ = socket2::SockRef::from(&c.fd).shutdown(std::net::Shutdown::Both);
            let id = c.id;
            self.by_id.remove(&id);
            self.shard.on_closed(id);
        }
        if let Some(c) = self.conns.get(slot)
            && !c.recv_armed
            && c.inflight.is_none()
        {
            self.conns.remove(slot);
        }
    }

    /// Sends `conn`'s whole output, when nothing is in flight for it.
    fn start_send(&mut self, slot: u32) -> io::Result<()> {
        let Some(c) = self.conns.get_mut(slot) else {
            return Ok(());
        };
        if c.inflight.is_some() || c.closing {
            return Ok(());
        }
        let out = self.shard.take_output(c.id);
        match out.bytes {
            Some(b) if !b.is_empty() => {
                c.inflight = Some(b);
                c.inflight_done = 0;
                c.close_after = out.close;
                let sqe = send_entry(c, slot);
                self.push(sqe)
            }
            _ => {
                if out.close {
                    self.close(slot);
                }
                Ok(())
            }
        }
    }

    fn sent(&mut self, slot: u32, res: i32) -> io::Result<()> {
        let Some(c) = self.conns.get_mut(slot) else {
            return Ok(());
        };
        let Ok(n) = usize::try_from(res) else {
            c.inflight = None;
            self.close(slot);
            return Ok(());
        };
        c.inflight_done += n;
        let len = c.inflight.as_ref().map_or(0, Bytes::len);
        if n > 0 && c.inflight_done < len && !c.closing {
            let sqe = send_entry(c, slot);
            return self.push(sqe);
        }
        c.inflight = None;
        let (id, close_after, closing) = (c.id, c.close_after, c.closing);
        if closing || n == 0 {
            self.close(slot);
            return Ok(());
        }
        self.shard.on_written(self.clock.now(), id, len);
        if close_after {
            self.close(slot);
            return Ok(());
        }
        // More may have been queued meanwhile.
        self.start_send(slot)
    }

    fn completion(&mut self, cqe: &cqueue::Entry) -> io::Result<()> {
        let (op, slot, generation) = split_user_data(cqe.user_data());
        let res = cqe.result();
        let flags = cqe.flags();
        let live = matches!(self.conns.get(slot), Some(c) if c.generation == generation);
        match op {
            OP_ACCEPT => {
                if res >= 0 {
                    self.accepted(res)?;
                }
                if !cqueue::more(flags) {
                    self.arm_accept()?;
                }
            }
            OP_RECV if self.turn_input >= TURN_INPUT_BYTES || !self.backlog.is_empty() => {
                // Over this turn's input: it waits, behind whatever waits already.
                self.backlog.push_back(cqe.clone());
            }
            OP_RECV => {
                let bid = cqueue::buffer_select(flags);
                if res > 0
                    && live
                    && let Some(bid) = bid
                    && let Some(c) = self.conns.get(slot)
                    && !c.closing
                {
                    let id = c.id;
                    let len = usize::try_from(res).expect("positive");
                    let now = self.clock.now();
                    // The byte-rate pause is not kept here: address limits are off.
                    let _ = self.shard.on_bytes(now, id, self.bufs.buffer(bid, len));
                    self.turn_input += len;
                }
                if let Some(bid) = bid {
                    self.bufs.give(bid);
                }
                if live {
                    let more = cqueue::more(flags);
                    if let Some(c) = self.conns.get_mut(slot)
                        && !more
                    {
                        c.recv_armed = false;
                    }
                    if res == 0 || (res < 0 && res != -libc::ENOBUFS) {
                        self.close(slot);
                    } else if !more {
                        self.rearm.push(slot);
                    }
                }
            }
            OP_SEND if live => self.sent(slot, res)?,
            _ => {}
        }
        Ok(())
    }

    fn run(&mut self, tick: Duration) -> io::Result<()> {
        self.arm_accept()?;
        let ts = Timespec::new()
            .sec(tick.as_secs())
            .nsec(tick.subsec_nanos());
        let mut next_tick =
            self.clock.now().mono_ms + u64::try_from(tick.as_millis()).unwrap_or(100);
        loop {
            // With input waiting from the last turn: submit and go on without sleeping.
            let want = usize::from(self.backlog.is_empty());
            let args = SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(want, &args) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
            self.turn_input = 0;
            let mut waiting = std::mem::take(&mut self.backlog);
            while self.turn_input < TURN_INPUT_BYTES
                && let Some(cqe) = waiting.pop_front()
            {
                self.completion(&cqe)?;
            }
            // What still waits stays first in line.
            waiting.extend(self.backlog.drain(..));
            self.backlog = waiting;
            self.cqes.clear();
            self.cqes.extend(self.ring.completion());
            let cqes = std::mem::take(&mut self.cqes);
            for cqe in &cqes {
                self.completion(cqe)?;
            }
            self.cqes = cqes;
            self.bufs.publish();
            let now = self.clock.now();
            if now.mono_ms >= next_tick {
                self.shard.on_tick(now);
                next_tick = now.mono_ms + u64::try_from(tick.as_millis()).unwrap_or(100);
            }
            for id in self.shard.take_force_close() {
                if let Some(&slot) = self.by_id.get(&id) {
                    self.close(slot);
                }
            }
            let mut ready = std::mem::take(&mut self.ready);
            self.shard.take_ready(&mut ready);
            for id in ready.drain(..) {
                if let Some(&slot) = self.by_id.get(&id) {
                    self.start_send(slot)?;
                }
            }
            self.ready = ready;
            for slot in std::mem::take(&mut self.rearm) {
                self.arm_recv(slot)?;
            }
        }
    }
}

fn send_entry(c: &Conn, slot: u32) -> squeue::Entry {
    let rest = c
        .inflight
        .as_ref()
        .map_or(&[][..], |b| &b[c.inflight_done..]);
    ring::send(
        c.fd.as_raw_fd(),
        rest,
        user_data(OP_SEND, slot, c.generation),
    )
}

/// The node's defaults, as `ferry run --shards 1` has them, with the per-address limits off
/// (one load generator on loopback is one address), as `bench/compare` starts the node.
fn config() -> ShardConfig {
    use rand_core::RngCore;
    let mut seed = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut seed);
    ShardConfig {
        shard: 0,
        shards: 1,
        node_id: seed,
        seed,
        conn_limits: ConnLimits::default(),
        ip_limits: IpLimits::off(65_536),
        connections_max: 100_000,
        hop_queue_msgs_max: 65_536,
        store: None,
        media_upload_rate: Rate { per_s: 0, burst: 0 },
        memory_bytes_max: 1 << 30,
        puzzle: PuzzleConfig::default(),
    }
}

fn main() {
    let mut listen = "127.0.0.1:7950".to_string();
    let mut cpu = None;
    let mut tick_ms = 100u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            "--cpu" => cpu = args.next().and_then(|c| c.parse::<usize>().ok()),
            "--tick-ms" => tick_ms = args.next().and_then(|c| c.parse().ok()).unwrap_or(100),
            other => {
                eprintln!("ferry-shardring: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    if let Some(cpu) = cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
            eprintln!("ferry-shardring: cannot pin to CPU {cpu}: {e}");
            std::process::exit(1);
        }
    }
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ferry-shardring: bind {listen}: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "ferry-shardring listening {}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let result = (|| -> io::Result<()> {
        let ring = ring::new_ring()?;
        let bufs = BufRing::new(&ring, ring::BUF_COUNT, ring::BUF_LEN, false)?;
        let mut d = Driver {
            ring,
            bufs,
            listener,
            shard: Shard::new(config(), Arc::new(ShardMetrics::default())),
            clock: Clock::new(0),
            conns: Slots::new(),
            by_id: AHashMap::new(),
            ready: Vec::new(),
            rearm: Vec::new(),
            cqes: Vec::with_capacity(ring::RING_ENTRIES as usize * 4),
            backlog: std::collections::VecDeque::new(),
            turn_input: 0,
        };
        d.run(Duration::from_millis(tick_ms.max(1)))
    })();
    if let Err(e) = result {
        eprintln!("ferry-shardring: {e}");
        std::process::exit(1);
    }
}
