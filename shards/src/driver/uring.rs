//! The `uring` driver (`io_engine = "uring"`): the same [`Shard`] state machine and the same node
//! (TLS, the mesh between cores, the service core, the store's group commits and blocking jobs,
//! the drain on stop) on a raw io_uring loop instead of glommio, driven the way the raw-ring
//! floor drives it (bench/RESULTS.md, "The floor on raw io_uring"):
//!
//! * one ring per shard thread (`SINGLE_ISSUER`, `DEFER_TASKRUN`), one `io_uring_enter` per loop
//!   turn that submits everything the turn queued and waits for the next completions (or the next
//!   deadline, as the wait's timeout: no timer requests);
//! * a multishot accept per listener, and a multishot receive per connection into a ring of
//!   provided buffers: a silent connection holds no buffer and costs no request per read;
//! * input is handed to the shard as it comes, at most `TURN_INPUT_BYTES` per turn; then every
//!   connection the shard marked ready gets its whole queue as one send (one in flight per
//!   socket; output queued meanwhile goes out as the next, coalesced);
//! * backpressure and the byte rate cancel a connection's receive (the kernel's socket buffer
//!   then holds the client back) and re-arm it when the shard resumes the reader or the pause
//!   ends;
//! * cores exchange hop batches over bounded crossbeam channels and wake each other with an
//!   eventfd each; the service core rings the shard's doorbell socket; a blocking thread per shard
//!   runs the store's segment jobs; group commits are io_uring `fdatasync`s on the shard's ring.
//!
//! What each queue holds and what happens when it is full is the glommio driver's (the module
//! documentation of [`super`]); only the mechanics differ.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use io_uring::types::{Fd, FsyncFlags, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

use super::accept::{
    ACCEPT_WARN_INTERVAL_MS, FD_LIMIT_REFUSALS_PER_TURN, FD_LIMIT_RETRY_MS, FdReserve,
    refuse_socket,
};
use super::*;
use crate::ring::{BufRing, Slots, split_user_data, user_data};
use crate::store::backend::MmapBackend;
use crate::store::{StoreJobDoneOf, StoreJobOf, SyncJobOf};

/// Input handed to the shard per loop turn. Past it, receive completions wait for the next turn
/// (their buffers kept), which comes at once after this turn's sends are submitted: without a
/// bound one turn could take a whole buffer ring of a sender's packets before any receiver's
/// output went out, and the shard drops what overflows a receiver's queue (`Congested`). 1 MiB
/// cost 15 % of the 1400 B saturation throughput (8 pairs, 256 in flight each) against 4 MiB,
/// which lost no more messages at any window (bench/RESULTS.md).
pub const TURN_INPUT_BYTES: usize = 4 << 20;

/// Bytes per provided buffer: one receive completion carries at most this much, and takes one
/// whole buffer however little it carries (64 KiB: the glommio driver's read size; 16 KiB moved
/// 6 % fewer 1400 B messages at saturation).
pub const PROVIDED_BUFFER_LEN: u32 = 64 * 1024;
/// Provided buffers per shard (a power of two): 8 MiB, made resident at start so that they are a
/// fixed cost of the shard, not growth under load that the memory budget
/// (`limits.memory_bytes_max`) does not see. They go back to the kernel in the turn that used
/// them; a turn that finds them all taken ends the receives that wanted one (`ENOBUFS`), which
/// are armed again at the end of the turn, their data waiting in the sockets meanwhile.
pub const PROVIDED_BUFFERS: u16 = 128;

/// Submission-queue entries of a shard's ring (the completion queue has four times as many).
pub const URING_ENTRIES: u32 = 4096;

/// After the drain's grace, how long the shard waits for its sockets' last completions before it
/// leaves anyway (their buffers are then leaked, never freed under the kernel).
pub const QUIESCE_MS: u64 = 1_000;

/// Backoff of an accept that failed for another reason than the descriptor limit.
const ACCEPT_RETRY_MS: u64 = 50;

// What a completion is for (the high byte of its tag, `ring::user_data`).
const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_CANCEL: u64 = 4;
const OP_WAKE: u64 = 5;
const OP_BELL: u64 = 6;
const OP_SYNC: u64 = 7;

/// The wake-ups between shard threads: one eventfd per shard, which its ring reads, and the
/// flags by which a shard whose channel to a peer was full asks that peer to wake it once there
/// is room.
struct Mesh {
    /// One eventfd per shard (their count is the shard count).
    wakes: Vec<OwnedFd>,
    /// `want_room[dst * n + src]`: `src` waits for room in its channel to `dst`.
    want_room: Vec<AtomicBool>,
}

impl Mesh {
    fn n(&self) -> usize {
        self.wakes.len()
    }

    fn wake(&self, shard: usize) {
        // A full counter (2^64 - 2 unread wake-ups) is the only failure: it is awake anyway.
        let _ = rustix::io::write(&self.wakes[shard], &1u64.to_ne_bytes());
    }
}

/// One shard's share of the mesh.
struct Link {
    mesh: Arc<Mesh>,
    to: Vec<Option<Sender<HopBatch>>>,
    from: Vec<Option<Receiver<HopBatch>>>,
    /// A batch the channel to that peer had no room for: sent first when there is.
    stalled: Vec<Option<HopBatch>>,
}

/// Whether this kernel's io_uring has what the driver needs: a ring with `SINGLE_ISSUER`,
/// `DEFER_TASKRUN` and `TASKRUN_FLAG` (Linux 6.1; multishot receive came in 6.0) and a
/// provided-buffer ring (5.19). The error says which step the kernel refused.
pub fn probe() -> io::Result<()> {
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .build(8)
        .map_err(|e| io::Error::new(e.kind(), format!("ring setup (Linux 6.1 or later): {e}")))?;
    BufRing::new(&ring, 1, 4096, false).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("provided-buffer ring (Linux 5.19 or later): {e}"),
        )
    })?;
    Ok(())
}

/// Starts one thread per entry of `configs` (`listeners[i]` go to shard `i`, which is also its id
/// in the mesh). The contract is [`super::start`]'s.
#[allow(clippy::too_many_arguments)]
pub(super) fn start(
    configs: Vec<ShardConfig>,
    listeners: Vec<Vec<ListenerSpec>>,
    driver: DriverConfig,
    clock: Clock,
    stop: Arc<AtomicBool>,
    fatal: Arc<FatalStop>,
    reload: Arc<Reload>,
    service: Option<ServiceLinks>,
) -> io::Result<Vec<ShardHandle>> {
    let n = configs.len();
    let mut wakes = Vec::with_capacity(n);
    for _ in 0..n {
        let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
        wakes.push(fd);
    }
    let mesh = Arc::new(Mesh {
        wakes,
        want_room: (0..n * n).map(|_| AtomicBool::new(false)).collect(),
    });
    let mut to: Vec<Vec<Option<Sender<HopBatch>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut from: Vec<Vec<Option<Receiver<HopBatch>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for src in 0..n {
        for dst in 0..n {
            if src != dst {
                let (tx, rx) = crossbeam_channel::bounded(driver.hop_channel_batches.max(1));
                to[src][dst] = Some(tx);
                from[dst][src] = Some(rx);
            }
        }
    }
    let mut handles = Vec::with_capacity(n);
    for (i, ((cfg, specs), (to, from))) in configs
        .into_iter()
        .zip(listeners)
        .zip(to.into_iter().zip(from))
        .enumerate()
    {
        let metrics = Arc::new(ShardMetrics::default());
        let ready = Arc::new(AtomicBool::new(false));
        let link = Link {
            mesh: mesh.clone(),
            to,
            from,
            stalled: (0..n).map(|_| None).collect(),
        };
        let (m, r, d, c, s, f, rl, sv) = (
            metrics.clone(),
            ready.clone(),
            driver.clone(),
            clock,
            stop.clone(),
            fatal.clone(),
            reload.clone(),
            service.clone(),
        );
        // Started here, unpinned: a segment's syncs must not wait for the busy shard's core.
        let store_thread = StoreThread::start(i, mesh.clone())?;
        let join = std::thread::Builder::new()
            .name(format!("ferry-shard-{i}"))
            .spawn(move || {
                if let Some(cpus) = &d.cpus {
                    let mut set = rustix::thread::CpuSet::new();
                    set.set(cpus[i % cpus.len()]);
                    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
                        tracing::warn!(shard = i, error = %e, "cannot pin the shard thread");
                    }
                }
                run_shard(i, cfg, specs, d, c, s, f, m, r, link, store_thread, rl, sv);
            })?;
        handles.push(ShardHandle {
            metrics,
            ready,
            join: ShardJoin::Thread(join),
        });
    }
    Ok(handles)
}

/// A shard's store thread: the store's blocking work (a segment's creation and its syncs;
/// deletions), one job at a time, off the shard's core; it wakes the shard when a job is done.
struct StoreThread {
    jobs: Sender<StoreJobOf<MmapBackend>>,
    jobs_done: Receiver<StoreJobDoneOf<MmapBackend>>,
}

impl StoreThread {
    fn start(shard: usize, mesh: Arc<Mesh>) -> io::Result<StoreThread> {
        let (jobs, jobs_rx) = crossbeam_channel::bounded::<StoreJobOf<MmapBackend>>(1);
        let (done_tx, jobs_done) = crossbeam_channel::bounded::<StoreJobDoneOf<MmapBackend>>(1);
        std::thread::Builder::new()
            .name(format!("ferry-shard-{shard}-store"))
            .spawn(move || {
                // Ends when the shard (the only sender) is gone.
                while let Ok(job) = jobs_rx.recv() {
                    if done_tx.send(job.run()).is_err() {
                        return;
                    }
                    mesh.wake(shard);
                }
            })?;
        Ok(StoreThread { jobs, jobs_done })
    }
}

struct Listener {
    /// `None` once closed (the drain).
    fd: Option<OwnedFd>,
    tls: bool,
    armed: bool,
    /// Accept again at this time (mono ms) after a failure.
    retry_at: Option<u64>,
    reserve: FdReserve,
}

struct Conn {
    fd: OwnedFd,
    generation: u32,
    id: ConnId,
    tls: Option<Box<rustls::ServerConnection>>,
    /// A multishot receive is armed: its last completion (without `MORE`) has not come.
    recv_armed: bool,
    /// Its cancel was asked for.
    recv_cancelled: bool,
    /// Held by backpressure (`Shard::hold_reader`) until `Shard::take_resumed` names it.
    held: bool,
    /// Reading waits for the address's byte rate until this (mono ms); 0 = not paused.
    paused_until: u64,
    /// Bytes being sent (wire bytes: TLS records for a TLS connection); kept until the send
    /// completes.
    inflight: Option<Bytes>,
    inflight_done: usize,
    /// Plaintext the bytes in flight carry (what `Shard::on_written` is told).
    inflight_plain: usize,
    /// Close once the bytes in flight are written.
    close_after: bool,
    /// Over: the socket is shut and the shard told; the slot goes when nothing is in flight.
    closing: bool,
}

/// A group commit in flight: one `fdatasync` per segment.
struct Commit {
    generation: u32,
    files: Vec<std::fs::File>,
    left: usize,
    outcome: io::Result<()>,
    started_us: u64,
}

/// The drain on stop: where it stands.
struct Drain {
    /// When the sockets are shut (mono ms).
    shut_at: u64,
    shut: bool,
}

struct Driver {
    // The ring first: dropped before the buffers it points at.
    ring: IoUring,
    bufs: BufRing,
    me: usize,
    shard: Shard,
    clock: Clock,
    driver: DriverConfig,
    fatal: Arc<FatalStop>,
    listeners: Vec<Listener>,
    conns: Slots<Conn>,
    by_id: AHashMap<ConnId, u32>,
    link: Link,
    /// Read by the wake eventfd's read request.
    wake_buf: Box<[u8; 8]>,
    service: Option<(Receiver<crate::service::ServiceReply>, OwnedFd)>,
    bell_buf: Box<[u8; 64]>,
    /// The doorbell rang, or replies were left over from the last turn.
    service_due: bool,
    jobs: Sender<StoreJobOf<MmapBackend>>,
    jobs_done: Receiver<StoreJobDoneOf<MmapBackend>>,
    job_busy: bool,
    commits: Slots<Commit>,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    keepalive_warned: bool,
    last_accept_warn_ms: Option<u64>,
    /// Byte-rate pauses by end time: `(mono ms, slot, generation)`.
    pauses: BinaryHeap<Reverse<(u64, u32, u32)>>,
    /// Connections whose receive may need arming at the end of the turn.
    rearm: Vec<u32>,
    /// TLS connections with records to send that the shard did not mark (handshake, alerts).
    tls_ready: Vec<u32>,
    scratch: Vec<ConnId>,
    cqes: Vec<cqueue::Entry>,
    /// Receive completions left for the next turn (over `TURN_INPUT_BYTES`), in order.
    backlog: VecDeque<cqueue::Entry>,
    turn_input: usize,
    plain: Vec<u8>,
    stopping: bool,
}

#[allow(clippy::too_many_arguments)]
fn run_shard(
    me: usize,
    mut cfg: ShardConfig,
    specs: Vec<ListenerSpec>,
    driver: DriverConfig,
    clock: Clock,
    stop: Arc<AtomicBool>,
    fatal: Arc<FatalStop>,
    metrics: Arc<ShardMetrics>,
    ready: Arc<AtomicBool>,
    link: Link,
    store_thread: StoreThread,
    reload: Arc<Reload>,
    service: Option<ServiceLinks>,
) {
    cfg.shard = shard_index(me);
    let store = match &cfg.store {
        None => None,
        Some(spec) => match open_store(spec, cfg.shard, &clock, &metrics) {
            Ok(log) => Some(log),
            Err(e) => fatal.stop_here(format!("shard {me}: {e}")),
        },
    };
    let mut shard = Shard::new(cfg, metrics);
    if let Some(log) = store {
        shard = shard.with_store(log);
    }
    let link_svc =
        service.and_then(|links| links.lock().ok().and_then(|mut l| l.get_mut(me)?.take()));
    let mut service_rx = None;
    if let Some(l) = link_svc {
        shard = shard.with_service(l.sink);
        if !l.media.is_empty() {
            shard = shard.with_media(l.media);
        }
        service_rx = Some((l.replies, OwnedFd::from(l.doorbell)));
    }
    let StoreThread { jobs, jobs_done } = store_thread;
    let built = (|| -> io::Result<Driver> {
        // `TASKRUN_FLAG`: completions deferred to this thread (`DEFER_TASKRUN`) are flagged, so
        // that a turn which does not wait still collects them (the submit adds `GETEVENTS`).
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(URING_ENTRIES * 4)
            .build(URING_ENTRIES)?;
        let bufs = BufRing::new(&ring, PROVIDED_BUFFERS, PROVIDED_BUFFER_LEN, true)?;
        Ok(Driver {
            ring,
            bufs,
            me,
            shard,
            clock,
            fatal: fatal.clone(),
            listeners: specs
                .into_iter()
                .map(|s| Listener {
                    fd: Some(OwnedFd::from(s.socket)),
                    tls: s.tls,
                    armed: false,
                    retry_at: None,
                    reserve: FdReserve::new(),
                })
                .collect(),
            conns: Slots::new(),
            by_id: AHashMap::new(),
            link,
            wake_buf: Box::new([0; 8]),
            service: service_rx,
            bell_buf: Box::new([0; 64]),
            service_due: false,
            jobs,
            jobs_done,
            job_busy: false,
            commits: Slots::new(),
            tls_config: reload.get().and_then(|r| r.tls),
            keepalive_warned: false,
            last_accept_warn_ms: None,
            pauses: BinaryHeap::new(),
            rearm: Vec::new(),
            tls_ready: Vec::new(),
            scratch: Vec::new(),
            cqes: Vec::with_capacity(URING_ENTRIES as usize * 4),
            backlog: VecDeque::new(),
            turn_input: 0,
            plain: vec![0; 16 * 1024],
            stopping: false,
            driver,
        })
    })();
    let mut d = match built {
        Ok(d) => d,
        Err(e) => fatal.stop_here(format!("shard {me}: cannot set up its io_uring: {e}")),
    };
    match d.run(&stop, &ready, &reload) {
        Ok(quiesced) => d.finish(quiesced),
        Err(e) => fatal.stop_here(format!("shard {me}: io_uring failed: {e}")),
    }
}

impl Driver {
    fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        // SAFETY: entries point only at memory the driver owns and keeps until their completion:
        // the provided buffers, the wake and doorbell buffers (boxed, never moved), a
        // connection's bytes in flight (a slot is not freed while a send is in flight) and a
        // commit's files (kept until its last sync completes).
        unsafe { crate::ring::push(&mut self.ring, sqe) }
    }

    fn now(&self) -> ferry_proto::conn::Now {
        self.clock.now()
    }

    /// Serves until `stop`, then drains; returns whether every request ended (see `finish`).
    fn run(&mut self, stop: &AtomicBool, ready: &AtomicBool, reload: &Reload) -> io::Result<bool> {
        for li in 0..self.listeners.len() {
            self.arm_accept(li)?;
        }
        self.arm_wake()?;
        self.arm_bell()?;
        ready.store(true, Ordering::Release);
        let me = self.me;
        let tick_ms = self.driver.tick_ms.max(1);
        let mut next_tick = self.now().mono_ms + tick_ms;
        let mut reload_seen = reload.generation();
        let mut drain: Option<Drain> = None;
        loop {
            let now = self.now().mono_ms;
            if drain.is_none() && stop.load(Ordering::Acquire) {
                ready.store(false, Ordering::Release);
                self.begin_drain()?;
                drain = Some(Drain {
                    shut_at: now + self.driver.drain_grace_ms,
                    shut: false,
                });
            }
            if let Some(dr) = &mut drain {
                if !dr.shut && now >= dr.shut_at {
                    // The grace is over: every connection is shut down (their requests end).
                    // What the drain queued goes to the kernel first (a grace of 0 included).
                    self.ring.submit()?;
                    dr.shut = true;
                    for slot in self.by_id.values().copied().collect::<Vec<_>>() {
                        self.close(slot, true);
                    }
                }
                let idle = self.conns.is_empty() && !self.job_busy && self.commits.is_empty();
                if dr.shut && (idle || now >= dr.shut_at + QUIESCE_MS) {
                    return Ok(idle);
                }
            }
            // The wait: until the next deadline, or not at all when input waits from the last
            // turn.
            let sync_due = self.shard.store_sync_due_ms();
            let mut deadline = next_tick;
            if let Some(d) = sync_due {
                deadline = deadline.min(d);
            }
            if let Some(Reverse((t, _, _))) = self.pauses.peek() {
                deadline = deadline.min(*t);
            }
            for l in &self.listeners {
                if let Some(t) = l.retry_at {
                    deadline = deadline.min(t);
                }
            }
            if let Some(dr) = &drain {
                deadline = deadline.min(if dr.shut { now + 10 } else { dr.shut_at });
            }
            let wait_ms = deadline.saturating_sub(now);
            let want = usize::from(self.backlog.is_empty() && !self.service_due && wait_ms > 0);
            let ts = Timespec::new()
                .sec(wait_ms / 1_000)
                .nsec(u32::try_from((wait_ms % 1_000) * 1_000_000).expect("under a second"));
            let args = SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(want, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
            self.turn()?;
            // Deadlines: the tick (and a group commit when one is due), pauses, accept retries.
            let now = self.now();
            if now.mono_ms >= next_tick || sync_due.is_some_and(|d| now.mono_ms >= d) {
                // How late the tick came (0 when a group commit brought it forward).
                self.shard
                    .metrics()
                    .tick_lag
                    .observe_us(now.mono_ms.saturating_sub(next_tick) * 1_000);
                self.shard.on_tick(now);
                if let Some(job) = self.shard.take_sync(now) {
                    self.group_commit(job)?;
                }
                if let Some(why) = self.shard.fatal().map(str::to_string) {
                    // An fsync failed: acknowledging anything more could be a lie.
                    self.fatal.stop_here(format!("shard {me}: {why}"));
                }
                if self.shard.take_trim_due(now) {
                    trim_allocator();
                }
                let generation = reload.generation();
                if generation != reload_seen {
                    reload_seen = generation;
                    if let Some(r) = reload.get() {
                        self.shard
                            .set_limits(r.conn_limits, r.ip_limits, r.connections_max);
                        self.tls_config = r.tls;
                    }
                }
                next_tick = now.mono_ms + tick_ms;
            }
            while let Some(Reverse((t, slot, generation))) = self.pauses.peek().copied() {
                if t > now.mono_ms {
                    break;
                }
                self.pauses.pop();
                if let Some(c) = self.conns.get_mut(slot)
                    && c.generation == generation
                    && c.paused_until <= now.mono_ms
                {
                    c.paused_until = 0;
                    self.rearm.push(slot);
                }
            }
            if !self.stopping {
                for li in 0..self.listeners.len() {
                    if self.listeners[li]
                        .retry_at
                        .is_some_and(|t| now.mono_ms >= t)
                    {
                        self.listeners[li].retry_at = None;
                        self.arm_accept(li)?;
                    }
                }
            }
            self.after_work()?;
            self.arm_receives()?;
        }
    }

    /// One turn's completions and messages: the receives left from the last turn first, then
    /// the new completions, then the other cores' batches, finished store jobs and service
    /// replies.
    fn turn(&mut self) -> io::Result<()> {
        self.turn_input = 0;
        let mut waiting = std::mem::take(&mut self.backlog);
        while self.turn_input < TURN_INPUT_BYTES
            && let Some(cqe) = waiting.pop_front()
        {
            self.completion(&cqe)?;
        }
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
        self.mesh_in();
        while let Ok(done) = self.jobs_done.try_recv() {
            self.job_busy = false;
            let now = self.now();
            self.shard.on_store_job(now, done);
        }
        if self.service_due {
            self.service_in();
        }
        Ok(())
    }

    fn completion(&mut self, cqe: &cqueue::Entry) -> io::Result<()> {
        let (op, slot, generation) = split_user_data(cqe.user_data());
        let res = cqe.result();
        let flags = cqe.flags();
        match op {
            OP_RECV if self.turn_input >= TURN_INPUT_BYTES || !self.backlog.is_empty() => {
                // Over this turn's input: it waits, behind whatever waits already.
                self.backlog.push_back(cqe.clone());
            }
            OP_RECV => self.received(slot, generation, res, flags),
            OP_SEND => {
                if matches!(self.conns.get(slot), Some(c) if c.generation == generation) {
                    self.sent(slot, res)?;
                }
            }
            OP_ACCEPT => self.accept_done(slot as usize, res, flags)?,
            OP_WAKE => {
                // Whatever woke it is looked at every turn (`mesh_in`, finished jobs).
                self.arm_wake()?;
            }
            OP_BELL => {
                if res > 0 {
                    self.service_due = true;
                    self.arm_bell()?;
                } else {
                    // The service core is gone: the node is stopping.
                    self.service = None;
                }
            }
            OP_SYNC => self.synced(slot, generation, res),
            _ => {} // OP_CANCEL: the cancelled request reports for itself
        }
        Ok(())
    }

    // ----- accepting -------------------------------------------------------------------------

    fn arm_accept(&mut self, li: usize) -> io::Result<()> {
        let l = &mut self.listeners[li];
        let Some(fd) = &l.fd else { return Ok(()) };
        if l.armed {
            return Ok(());
        }
        l.armed = true;
        let tag = user_data(OP_ACCEPT, u32::try_from(li).expect("few listeners"), 0);
        let sqe = crate::ring::accept_multi(fd.as_raw_fd(), tag);
        self.push(&sqe)
    }

    fn accept_done(&mut self, li: usize, res: i32, flags: u32) -> io::Result<()> {
        if li >= self.listeners.len() {
            return Ok(());
        }
        if !cqueue::more(flags) {
            self.listeners[li].armed = false;
        }
        if self.stopping {
            // The drain cancelled it: the listening socket closes with its last completion.
            if res >= 0 {
                // SAFETY: a successful accept completion's result is a new descriptor nobody
                // else owns; dropping it closes the connection.
                drop(unsafe { OwnedFd::from_raw_fd(res) });
            }
            if !self.listeners[li].armed {
                self.listeners[li].fd = None;
            }
            return Ok(());
        }
        if res >= 0 {
            // SAFETY: as above.
            let fd = unsafe { OwnedFd::from_raw_fd(res) };
            self.accepted(li, fd)?;
        } else {
            self.accept_failed(li, io::Error::from_raw_os_error(-res));
        }
        if !self.listeners[li].armed && self.listeners[li].retry_at.is_none() {
            self.arm_accept(li)?;
        }
        Ok(())
    }

    /// Counts and logs (rate-limited) a failed accept and decides when to accept again; at the
    /// descriptor limit it refuses what waits in the backlog rather than leave it hanging.
    fn accept_failed(&mut self, li: usize, e: io::Error) {
        let metrics = self.shard.metrics().clone();
        ShardMetrics::inc(&metrics.accept_errors);
        let now = self.now().mono_ms;
        if self
            .last_accept_warn_ms
            .is_none_or(|t| now >= t.saturating_add(ACCEPT_WARN_INTERVAL_MS))
        {
            self.last_accept_warn_ms = Some(now);
            tracing::warn!(error = %e, "accept failed (raise the open-files limit if this is EMFILE)");
        }
        let l = &mut self.listeners[li];
        let backoff_ms = if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            let refusal = Frame::Error {
                code: ErrorCode::ConnectionLimit,
                message: "node out of file descriptors".into(),
            }
            .to_bytes();
            let refusal = (!l.tls).then_some(&refusal[..]);
            let n = match &l.fd {
                Some(fd) => {
                    l.reserve
                        .refuse_pending(fd.as_raw_fd(), refusal, FD_LIMIT_REFUSALS_PER_TURN)
                }
                None => 0,
            };
            ShardMetrics::add(&metrics.connections_refused_fd_limit, n as u64);
            if n == FD_LIMIT_REFUSALS_PER_TURN {
                0
            } else {
                FD_LIMIT_RETRY_MS
            }
        } else {
            ACCEPT_RETRY_MS
        };
        // A multishot accept that failed has ended; it is armed again at the retry.
        if !l.armed {
            l.retry_at = Some(now + backoff_ms);
        }
    }

    fn accepted(&mut self, li: usize, fd: OwnedFd) -> io::Result<()> {
        let tls = self.listeners[li].tls;
        let sock = socket2::SockRef::from(&fd);
        let _ = sock.set_nodelay(true);
        if let Err(e) = self.driver.keepalive.apply(&sock) {
            if !self.keepalive_warned {
                self.keepalive_warned = true;
                tracing::warn!(error = %e, "TCP keepalive settings refused by the kernel: vanished clients may stay connected for hours");
            }
        }
        let Some(ip) = sock
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.ip())
        else {
            return Ok(());
        };
        let now = self.now();
        let id = match self.shard.accept(now, ip) {
            Accept::Ok(id) => id,
            Accept::Refused(bytes) => {
                // Best effort, plaintext only: a TLS client would not understand it anyway.
                refuse_socket(&socket2::Socket::from(fd), (!tls).then_some(&bytes[..]));
                return Ok(());
            }
        };
        let tls_conn = if tls {
            match self.tls_config.clone() {
                None => {
                    if self
                        .last_accept_warn_ms
                        .is_none_or(|t| now.mono_ms >= t.saturating_add(ACCEPT_WARN_INTERVAL_MS))
                    {
                        self.last_accept_warn_ms = Some(now.mono_ms);
                        tracing::warn!(
                            "TLS listener without a certificate: closing new connections (set tls_cert and tls_key, then SIGHUP)"
                        );
                    }
                    self.shard.on_closed(id);
                    return Ok(());
                }
                Some(cfg) => match rustls::ServerConnection::new(cfg) {
                    Ok(mut c) => {
                        // Output is bounded by the connection's send queue, not by rustls.
                        c.set_buffer_limit(None);
                        Some(Box::new(c))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS session setup failed");
                        self.shard.on_closed(id);
                        return Ok(());
                    }
                },
            }
        } else {
            None
        };
        let slot = self.conns.insert(|generation| Conn {
            fd,
            generation,
            id,
            tls: tls_conn,
            recv_armed: false,
            recv_cancelled: false,
            held: false,
            paused_until: 0,
            inflight: None,
            inflight_done: 0,
            inflight_plain: 0,
            close_after: false,
            closing: false,
        });
        self.by_id.insert(id, slot);
        self.rearm.push(slot);
        Ok(())
    }

    // ----- reading ---------------------------------------------------------------------------

    fn received(&mut self, slot: u32, generation: u32, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let live = matches!(self.conns.get(slot), Some(c) if c.generation == generation);
        if live
            && res > 0
            && let Some(bid) = bid
        {
            let len = usize::try_from(res).expect("positive");
            self.turn_input += len;
            self.feed(slot, bid, len);
        }
        if let Some(bid) = bid {
            self.bufs.give(bid);
        }
        if !live {
            return;
        }
        let more = cqueue::more(flags);
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if !more {
            c.recv_armed = false;
            c.recv_cancelled = false;
        }
        let ended = res == 0 || (res < 0 && res != -libc::ENOBUFS && res != -libc::ECANCELED);
        if ended || c.closing {
            // The peer closed, the socket failed, or the connection is over: forget it (and
            // free the slot once nothing is in flight).
            self.close(slot, false);
        } else if !more {
            self.rearm.push(slot);
        }
    }

    /// Hands received bytes to the shard (through TLS when the connection has it), and stops
    /// reading when the shard says so.
    fn feed(&mut self, slot: u32, bid: u16, len: usize) {
        let now = self.now();
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if c.closing {
            return;
        }
        let id = c.id;
        let data = self.bufs.buffer(bid, len);
        let pause = match &mut c.tls {
            None => self.shard.on_bytes(now, id, data),
            Some(t) => {
                match tls_to_shard(&mut self.shard, &self.clock, id, t, data, &mut self.plain) {
                    Ok(p) => {
                        if t.wants_write() {
                            self.tls_ready.push(slot);
                        }
                        p
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "TLS error");
                        self.shard.close(id, ErrorCode::TlsError, "TLS error");
                        0
                    }
                }
            }
        };
        if pause > 0 {
            c.paused_until = now.mono_ms + pause;
            let at = (c.paused_until, slot, c.generation);
            self.pauses.push(Reverse(at));
            self.cancel_recv(slot);
        } else if self.shard.hold_reader(id) {
            c.held = true;
            self.cancel_recv(slot);
        }
    }

    fn cancel_recv(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if !c.recv_armed || c.recv_cancelled {
            return;
        }
        c.recv_cancelled = true;
        let generation = c.generation;
        // A full submission queue is submitted first; should that fail, the receive goes on
        // and the shard's own limits still bound what it takes.
        let _ = self.cancel(OP_RECV, slot, generation);
    }

    /// Asks the kernel to cancel the request tagged (`op`, `slot`, `generation`); its
    /// completion (and the cancel's own, tagged `OP_CANCEL`) comes later.
    fn cancel(&mut self, op: u64, slot: u32, generation: u32) -> io::Result<()> {
        let sqe = opcode::AsyncCancel::new(user_data(op, slot, generation))
            .build()
            .user_data(user_data(OP_CANCEL, slot, generation));
        self.push(&sqe)
    }

    /// Arms the receive of every connection named this turn that should read and does not.
    fn arm_receives(&mut self) -> io::Result<()> {
        let mut rearm = std::mem::take(&mut self.rearm);
        let now = self.now();
        for slot in rearm.drain(..) {
            let Some(c) = self.conns.get_mut(slot) else {
                continue;
            };
            if c.closing || c.recv_armed || c.held || c.paused_until > 0 {
                continue;
            }
            let id = c.id;
            if self.shard.hold_reader(id) {
                c.held = true;
                continue;
            }
            let pause = self.shard.read_pause_ms(now, id);
            if pause > 0 {
                c.paused_until = now.mono_ms + pause;
                self.pauses
                    .push(Reverse((c.paused_until, slot, c.generation)));
                continue;
            }
            c.recv_armed = true;
            let sqe =
                crate::ring::recv_multi(c.fd.as_raw_fd(), user_data(OP_RECV, slot, c.generation));
            self.push(&sqe)?;
        }
        self.rearm = rearm;
        Ok(())
    }

    // ----- writing ---------------------------------------------------------------------------

    /// Sends `slot`'s whole output (TLS records for a TLS connection) when nothing is in flight.
    fn start_send(&mut self, slot: u32) -> io::Result<()> {
        let now = self.now();
        let Some(c) = self.conns.get_mut(slot) else {
            return Ok(());
        };
        if c.inflight.is_some() || c.closing {
            return Ok(());
        }
        let out = self.shard.take_output(c.id);
        let plain_len = out.bytes.as_ref().map_or(0, Bytes::len);
        let wire = match &mut c.tls {
            None => out.bytes,
            Some(t) => {
                if let Some(b) = &out.bytes {
                    // Cannot fail: the buffer limit is off (see `accepted`).
                    if t.writer().write_all(b).is_err() {
                        tracing::debug!("TLS writer refused plaintext");
                    }
                }
                if out.close {
                    t.send_close_notify();
                }
                let mut wire = Vec::new();
                while t.wants_write() {
                    if t.write_tls(&mut wire).is_err() {
                        break;
                    }
                }
                (!wire.is_empty()).then(|| Bytes::from(wire))
            }
        };
        match wire {
            Some(w) if !w.is_empty() => {
                let id = c.id;
                c.inflight = Some(w);
                c.inflight_done = 0;
                c.inflight_plain = plain_len;
                c.close_after = out.close;
                let sqe = send_entry(c, slot);
                self.shard.on_write_blocked(now, id);
                self.push(&sqe)
            }
            _ => {
                let id = c.id;
                if out.close {
                    self.close(slot, false);
                } else {
                    // Nothing to write (or plaintext rustls holds for now): as the glommio
                    // driver, the shard hears it was taken; with 0 it stops the slow-reader clock.
                    self.shard.on_written(now, id, plain_len);
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
            self.close(slot, false);
            return Ok(());
        };
        c.inflight_done += n;
        let len = c.inflight.as_ref().map_or(0, Bytes::len);
        // A connection closing behind this send (its peer half-closed) still gets the rest.
        if n > 0 && c.inflight_done < len {
            let sqe = send_entry(c, slot);
            return self.push(&sqe);
        }
        c.inflight = None;
        let (id, plain, close_after) = (c.id, c.inflight_plain, c.close_after);
        if c.closing || n == 0 {
            self.close(slot, false);
            return Ok(());
        }
        let now = self.now();
        self.shard.on_written(now, id, plain);
        if close_after {
            self.close(slot, false);
            return Ok(());
        }
        // Output queued while this was in flight goes now, as one send.
        self.start_send(slot)
    }

    /// Ends a connection: tells the shard, shuts its socket (its requests then complete) once
    /// the send in flight is done (at once with `force`), and frees the slot once nothing is in
    /// flight. Called again by each last completion.
    fn close(&mut self, slot: u32, force: bool) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if !c.closing {
            c.closing = true;
            let id = c.id;
            self.by_id.remove(&id);
            self.shard.on_closed(id);
        }
        let Some(c) = self.conns.get(slot) else {
            return;
        };
        if force || c.inflight.is_none() {
            let _ = socket2::SockRef::from(&c.fd).shutdown(Shutdown::Both);
        }
        if !c.recv_armed && c.inflight.is_none() {
            self.conns.remove(slot);
        }
    }

    // ----- after each turn -------------------------------------------------------------------

    /// Output to the ready connections, store jobs to the store thread, shed connections shut,
    /// hop batches to the other cores, held readers resumed.
    fn after_work(&mut self) -> io::Result<()> {
        let mut ready = std::mem::take(&mut self.scratch);
        self.shard.take_ready(&mut ready);
        for id in ready.drain(..) {
            if let Some(&slot) = self.by_id.get(&id) {
                self.start_send(slot)?;
            }
        }
        self.scratch = ready;
        for slot in std::mem::take(&mut self.tls_ready) {
            self.start_send(slot)?;
        }
        if !self.stopping && !self.job_busy {
            if let Some(job) = self.shard.take_store_job() {
                match self.jobs.try_send(job) {
                    Ok(()) => self.job_busy = true,
                    Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                        let now = self.now();
                        self.shard
                            .on_store_job(now, job.not_run("store job not queued"));
                    }
                }
            }
        }
        for id in self.shard.take_force_close() {
            if let Some(&slot) = self.by_id.get(&id)
                && let Some(c) = self.conns.get(slot)
            {
                // Its pending send fails and its receive ends: the completions close it.
                let _ = socket2::SockRef::from(&c.fd).shutdown(Shutdown::Both);
            }
        }
        self.mesh_out();
        self.resume_readers();
        Ok(())
    }

    fn resume_readers(&mut self) {
        let mut resumed = std::mem::take(&mut self.scratch);
        self.shard.take_resumed(&mut resumed);
        for id in resumed.drain(..) {
            if let Some(&slot) = self.by_id.get(&id)
                && let Some(c) = self.conns.get_mut(slot)
            {
                c.held = false;
                self.rearm.push(slot);
            }
        }
        self.scratch = resumed;
    }

    // ----- the other cores -------------------------------------------------------------------

    /// Sends every pending outbox as one batch per peer; a full channel keeps its batch here
    /// (the outbox then grows and the shard holds readers) until the peer makes room.
    fn mesh_out(&mut self) {
        let n = self.link.mesh.n();
        let pending: Vec<usize> = self.shard.outbox_pending().collect();
        let stalled: Vec<usize> = (0..n).filter(|p| self.link.stalled[*p].is_some()).collect();
        for peer in stalled.into_iter().chain(pending) {
            loop {
                let batch = match self.link.stalled[peer].take() {
                    Some(b) => b,
                    None => {
                        let Some(msgs) = self.shard.take_outbox(peer) else {
                            break;
                        };
                        self.shard
                            .metrics()
                            .hop_batch_msgs
                            .observe(msgs.len() as u64);
                        HopBatch {
                            sent_us: self.clock.elapsed_us(),
                            msgs,
                        }
                    }
                };
                let Some(tx) = &self.link.to[peer] else { break };
                match tx.try_send(batch) {
                    Ok(()) => self.link.mesh.wake(peer),
                    Err(TrySendError::Full(b)) => {
                        // Ask the peer to wake this shard when it takes a batch, then look once
                        // more (it may have taken one between the two).
                        self.link.mesh.want_room[peer * n + self.me].store(true, Ordering::SeqCst);
                        match tx.try_send(b) {
                            Ok(()) => {
                                self.link.mesh.wake(peer);
                                continue;
                            }
                            Err(TrySendError::Full(b)) => self.link.stalled[peer] = Some(b),
                            Err(TrySendError::Disconnected(_)) => {}
                        }
                        break;
                    }
                    Err(TrySendError::Disconnected(_)) => break, // the node is stopping
                }
            }
        }
    }

    /// Takes every batch the other cores sent, and wakes those that waited for room.
    fn mesh_in(&mut self) {
        let n = self.link.mesh.n();
        for peer in 0..n {
            let mut took = false;
            while let Some(rx) = &self.link.from[peer] {
                let batch = match rx.try_recv() {
                    Ok(batch) => batch,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                };
                took = true;
                let delay = self.clock.elapsed_us().saturating_sub(batch.sent_us);
                self.shard.metrics().hop_delay.observe_us(delay);
                let now = self.now();
                self.shard.on_hops(now, batch.msgs);
            }
            if took && self.link.mesh.want_room[self.me * n + peer].swap(false, Ordering::SeqCst) {
                self.link.mesh.wake(peer);
            }
        }
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let fd = self.link.mesh.wakes[self.me].as_raw_fd();
        let sqe = opcode::Read::new(Fd(fd), self.wake_buf.as_mut_ptr(), 8)
            .build()
            .user_data(user_data(OP_WAKE, 0, 0));
        self.push(&sqe)
    }

    // ----- the service core ------------------------------------------------------------------

    fn arm_bell(&mut self) -> io::Result<()> {
        let Some((_, bell)) = &self.service else {
            return Ok(());
        };
        let fd = bell.as_raw_fd();
        let len = u32::try_from(self.bell_buf.len()).expect("small");
        let sqe = opcode::Read::new(Fd(fd), self.bell_buf.as_mut_ptr(), len)
            .build()
            .user_data(user_data(OP_BELL, 0, 0));
        self.push(&sqe)
    }

    fn service_in(&mut self) {
        let Some((replies, _)) = &self.service else {
            self.service_due = false;
            return;
        };
        let now = self.now();
        let mut n = 0;
        while let Ok(r) = replies.try_recv() {
            self.shard.on_service(now, r);
            n += 1;
            if n == SERVICE_REPLIES_PER_TURN {
                break;
            }
        }
        // A full turn's worth: more may wait (looked at next turn, without sleeping).
        self.service_due = n == SERVICE_REPLIES_PER_TURN;
    }

    // ----- the store -------------------------------------------------------------------------

    /// A group commit: an io_uring `fdatasync` per segment written since the last, on this
    /// shard's ring, so the loop goes on while the disk works.
    fn group_commit(&mut self, job: SyncJobOf<MmapBackend>) -> io::Result<()> {
        let files = job.targets;
        let started_us = self.clock.elapsed_us();
        if files.is_empty() {
            let now = self.now();
            self.shard.on_synced(now, Ok(()));
            return Ok(());
        }
        let left = files.len();
        let slot = self.commits.insert(|generation| Commit {
            generation,
            files,
            left,
            outcome: Ok(()),
            started_us,
        });
        let c = self.commits.get(slot).expect("just inserted");
        let tag = user_data(OP_SYNC, slot, c.generation);
        let sqes: Vec<squeue::Entry> = c
            .files
            .iter()
            .map(|f| {
                opcode::Fsync::new(Fd(f.as_raw_fd()))
                    .flags(FsyncFlags::DATASYNC)
                    .build()
                    .user_data(tag)
            })
            .collect();
        for sqe in &sqes {
            self.push(sqe)?;
        }
        Ok(())
    }

    fn synced(&mut self, slot: u32, generation: u32, res: i32) {
        let Some(c) = self.commits.get_mut(slot) else {
            return;
        };
        if c.generation != generation {
            return;
        }
        c.left -= 1;
        if res < 0 && c.outcome.is_ok() {
            c.outcome = Err(io::Error::from_raw_os_error(-res));
        }
        if c.left > 0 {
            return;
        }
        let started_us = c.started_us;
        let outcome = std::mem::replace(&mut c.outcome, Ok(()));
        self.commits.remove(slot);
        self.shard
            .metrics()
            .store_sync
            .observe_us(self.clock.elapsed_us().saturating_sub(started_us));
        let now = self.now();
        self.shard.on_synced(now, outcome);
        if let Some(why) = self.shard.fatal().map(str::to_string) {
            self.fatal.stop_here(format!("shard {}: {why}", self.me));
        }
    }

    // ----- stopping --------------------------------------------------------------------------

    /// Stop accepting; the last store sync (answering `Stored` for all it covers), then
    /// `ShuttingDown` to every client behind those answers.
    fn begin_drain(&mut self) -> io::Result<()> {
        self.stopping = true;
        for li in 0..self.listeners.len() {
            let l = &mut self.listeners[li];
            l.retry_at = None;
            if l.armed {
                self.cancel(OP_ACCEPT, u32::try_from(li).expect("few listeners"), 0)?;
            } else {
                l.fd = None;
            }
        }
        if let Err(e) = self.shard.flush_store() {
            self.fatal
                .stop_here(format!("shard {}: final store sync failed: {e}", self.me));
        }
        let conns: Vec<ConnId> = self.by_id.keys().copied().collect();
        for conn in conns {
            self.shard
                .close(conn, ErrorCode::ShuttingDown, "node is restarting");
        }
        self.after_work()
    }

    /// Leaves the loop. The requests that always stay armed (the wake and doorbell reads, and
    /// any a connection still has when the sockets did not quiesce) point at buffers the kernel
    /// may still write when the ring is torn down: those buffers are leaked, never freed.
    fn finish(self, quiesced: bool) {
        let Driver {
            ring,
            bufs,
            wake_buf,
            bell_buf,
            commits,
            conns,
            ..
        } = self;
        drop(ring);
        std::mem::forget(wake_buf);
        std::mem::forget(bell_buf);
        std::mem::forget(commits);
        if quiesced {
            drop(bufs);
            drop(conns);
        } else {
            std::mem::forget(bufs);
            std::mem::forget(conns);
        }
    }
}

fn send_entry(c: &Conn, slot: u32) -> squeue::Entry {
    let rest = c
        .inflight
        .as_ref()
        .map_or(&[][..], |b| &b[c.inflight_done..]);
    crate::ring::send(
        c.fd.as_raw_fd(),
        rest,
        user_data(OP_SEND, slot, c.generation),
    )
}
