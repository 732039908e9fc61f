//! The I/O driver: the only module that knows glommio. One pinned executor per shard; it owns
//! its own `SO_REUSEPORT` listeners (bound by the caller before start, so the kernel spreads
//! connections across cores), a reader and a writer task per connection, a receiver and a flusher
//! task per peer core, and a tick task for deadlines. The [`Shard`] state machine does the rest.
//!
//! Per loop turn: readers and hop receivers feed the shard; the shard marks connections with
//! output and outboxes with pending hops; writers take each connection's whole queue as one
//! buffer (writes coalesced per connection) and flushers take each outbox as one batch (one
//! channel send per peer per turn).
//!
//! Queues and what happens when they are full:
//! * mesh channel (`hop_channel_batches` batches per peer pair): the flusher waits; meanwhile its
//!   outbox grows up to `hop_queue_msgs_max`, readers stop reading above half of that
//!   (backpressure), and data beyond it is answered `Congested`;
//! * per-connection output: bounded by `send_queue_bytes_max`, deliveries beyond it are dropped
//!   and answered `Congested`; a writer stuck longer than `write_stall_timeout_ms` is closed;
//! * writer wake-ups: a capacity-1 channel, a full one means "already woken".
//!
//! Memory: the shard charges partial frames, output and outboxes to its share of
//! `limits.memory_bytes_max` and sheds the connections holding the most when over it; the
//! driver shuts the shed sockets at once (`force_close_stuck` after every piece of work) and
//! trims the allocator when the shard says enough was freed.

#![allow(unsafe_code)] // std/glommio socket conversions (from_raw_fd, borrow_raw) only.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ahash::AHashMap;
use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

use ferry_proto::frame::{ErrorCode, Frame};

use crate::clock::Clock;
use crate::fatal::FatalStop;
use crate::metrics::ShardMetrics;
use crate::shard::{Accept, HopMsg, SHARDS_MAX, Shard, ShardConfig, shard_index};
use crate::table::ConnId;

mod accept;
mod conn;
mod tasks;
pub mod uring;

use accept::*;
use conn::*;
pub use tasks::HopBatch;
use tasks::*;

/// Submission-queue depth of each shard's io_uring rings (glommio's default is 128). The kernel
/// sizes a ring's cancel hash table from its completion queue (`ilog2(cq_entries) - 5` bits, at
/// most 8), and every armed readiness poll of an idle connection sits in it: with 128 entries
/// (8 buckets) each timer re-arm glommio makes, which the kernel tries as a poll cancel first,
/// walked an eighth of all connections; 18,000 silent connections cost 12 % of a core
/// (bench/RESULTS.md, "Idle connections"). 4,096 (a completion queue of 8,192: 256 buckets, the
/// most) divides that walk by 32.
pub const RING_DEPTH: usize = 4096;

/// Which I/O driver runs the shards (`io_engine`; the node resolves `auto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// glommio executors: a reader and a writer task per connection (this module).
    Glommio,
    /// A raw io_uring loop per shard thread: multishot receives into provided buffers, one
    /// `io_uring_enter` per turn ([`uring`]).
    Uring,
}

/// Driver settings (named node config keys).
#[derive(Clone, Debug)]
pub struct DriverConfig {
    pub engine: Engine,
    /// CPU each shard is pinned to (index = shard); `None` = unpinned.
    pub cpus: Option<Vec<usize>>,
    /// Memory glommio registers with io_uring per executor (counts against `ulimit -l`).
    pub io_memory_bytes: usize,
    pub tick_ms: u64,
    /// Batches in flight per (source, target) core pair.
    pub hop_channel_batches: usize,
    pub read_buffer_bytes: usize,
    /// On stop: after `ShuttingDown` is queued to every client, how long the drain waits before
    /// it shuts the sockets down.
    pub drain_grace_ms: u64,
    /// How the kernel finds a dead client without waking the shard.
    pub keepalive: TcpKeepalive,
}

/// TCP settings of every accepted connection: the kernel's keepalive probes (sent and answered
/// without waking the shard) find a silent client that has gone, and the user timeout closes a
/// connection whose sent data stays unacknowledged; either way the next read fails and the shard
/// forgets the connection. The node's own `Ping` is off by default (`limits.ping_interval_ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// Silence before the first probe (`TCP_KEEPIDLE`); 0 = no keepalive.
    pub idle_ms: u64,
    /// Between probes (`TCP_KEEPINTVL`).
    pub interval_ms: u64,
    /// Unanswered probes before the connection fails (`TCP_KEEPCNT`).
    pub probes: u32,
    /// Sent data unacknowledged this long fails the connection (`TCP_USER_TIMEOUT`); 0 = the
    /// kernel's retransmission limit (about 15 minutes).
    pub user_timeout_ms: u64,
}

impl TcpKeepalive {
    /// Sets these on one socket: each setting is tried, the first failure returned.
    pub fn apply(&self, sock: &socket2::SockRef<'_>) -> std::io::Result<()> {
        let keepalive = if self.idle_ms > 0 {
            let ka = socket2::TcpKeepalive::new()
                .with_time(Duration::from_millis(self.idle_ms))
                .with_interval(Duration::from_millis(self.interval_ms))
                .with_retries(self.probes);
            sock.set_tcp_keepalive(&ka)
        } else {
            Ok(())
        };
        let user_timeout = if self.user_timeout_ms > 0 {
            sock.set_tcp_user_timeout(Some(Duration::from_millis(self.user_timeout_ms)))
        } else {
            Ok(())
        };
        keepalive.and(user_timeout)
    }
}

/// One listening socket handed to a shard: bound with `SO_REUSEPORT` by the caller.
#[derive(Debug)]
pub struct ListenerSpec {
    pub socket: std::net::TcpListener,
    /// Serve TLS 1.3 on it, with the certificate currently in [`Reload`].
    pub tls: bool,
}

/// What SIGHUP changes at run time: limits and the TLS certificate. The node stores a new
/// version and bumps the generation; each shard's tick picks it up (a lock, but off the data
/// path: once per tick, and only when the generation moved). Connections keep the limits they
/// started with; new ones get the new limits and certificate.
#[derive(Debug, Default)]
pub struct Reload {
    generation: AtomicU64,
    current: Mutex<Option<Reloadable>>,
}

/// The reloadable part of the configuration.
#[derive(Clone, Debug)]
pub struct Reloadable {
    pub conn_limits: ferry_proto::conn::ConnLimits,
    pub ip_limits: crate::ratelimit::IpLimits,
    /// Per shard.
    pub connections_max: usize,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Reload {
    pub fn new(initial: Reloadable) -> Self {
        Reload {
            generation: AtomicU64::new(1),
            current: Mutex::new(Some(initial)),
        }
    }
    /// Publishes a new version to every shard.
    pub fn publish(&self, next: Reloadable) {
        if let Ok(mut g) = self.current.lock() {
            *g = Some(next);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
    fn get(&self) -> Option<Reloadable> {
        self.current.lock().ok().and_then(|g| g.clone())
    }
}

/// A shard's connection to the service core: the sink for requests, the bounded channel of
/// replies, and a doorbell socket the service writes a byte to after queueing replies (the
/// service thread is not a glommio executor, so this is how it wakes the shard's io_uring).
#[derive(Debug)]
pub struct ServiceLink {
    pub sink: Arc<dyn crate::service::ServiceSink>,
    /// The media worker of every core (index = owner core); empty = no media.
    pub media: Vec<Arc<dyn crate::service::ServiceSink>>,
    pub replies: crossbeam_channel::Receiver<crate::service::ServiceReply>,
    pub doorbell: std::os::unix::net::UnixStream,
}

/// One link per shard, indexed by shard id (a shard's id is only known once the mesh is joined,
/// so each shard takes its own link from the shared list).
pub type ServiceLinks = Arc<Mutex<Vec<Option<ServiceLink>>>>;

/// Replies handled per doorbell ring before the shard yields to its other tasks.
const SERVICE_REPLIES_PER_TURN: usize = 1024;

/// What the node keeps of each running shard.
#[derive(Debug)]
pub struct ShardHandle {
    pub metrics: Arc<ShardMetrics>,
    pub ready: Arc<AtomicBool>,
    pub join: ShardJoin,
}

/// A running shard's executor or thread.
#[derive(Debug)]
pub enum ShardJoin {
    Glommio(glommio::ExecutorJoinHandle<()>),
    Thread(std::thread::JoinHandle<()>),
}

impl ShardJoin {
    /// Waits for the shard to end; false if it panicked.
    pub fn join(self) -> bool {
        match self {
            ShardJoin::Glommio(j) => j.join().is_ok(),
            ShardJoin::Thread(j) => j.join().is_ok(),
        }
    }
}

/// Starts one executor per entry of `configs`; `listeners[i]` go to shard `i`. The shard's id is
/// its place in the mesh, fixed when every executor has joined. A shard that can no longer
/// promise durability reports it to `fatal` and stops serving; `main` ends the process.
#[allow(clippy::too_many_arguments)]
pub fn start(
    configs: Vec<ShardConfig>,
    listeners: Vec<Vec<ListenerSpec>>,
    driver: DriverConfig,
    clock: Clock,
    stop: Arc<AtomicBool>,
    fatal: Arc<FatalStop>,
    reload: Arc<Reload>,
    service: Option<ServiceLinks>,
) -> std::io::Result<Vec<ShardHandle>> {
    assert_eq!(configs.len(), listeners.len());
    configure_allocator();
    let n = configs.len();
    assert!(
        n <= SHARDS_MAX,
        "{n} shards: at most SHARDS_MAX ({SHARDS_MAX})"
    );
    if driver.engine == Engine::Uring {
        return uring::start(
            configs, listeners, driver, clock, stop, fatal, reload, service,
        );
    }
    let mesh: MeshBuilder<HopBatch, Full> = MeshBuilder::full(n, driver.hop_channel_batches.max(1));
    let mut handles = Vec::with_capacity(n);
    for (i, (cfg, specs)) in configs.into_iter().zip(listeners).enumerate() {
        let metrics = Arc::new(ShardMetrics::default());
        let ready = Arc::new(AtomicBool::new(false));
        let placement = match &driver.cpus {
            Some(cpus) => Placement::Fixed(cpus[i % cpus.len()]),
            None => Placement::Unbound,
        };
        // Sockets cross to the executor's thread as raw fds; each is owned by exactly one shard.
        let fds: Vec<(RawFd, bool)> = specs
            .into_iter()
            .map(|s| (s.socket.into_raw_fd(), s.tls))
            .collect();
        let (m, r, s, d, mesh, rl, sv) = (
            metrics.clone(),
            ready.clone(),
            (stop.clone(), fatal.clone()),
            driver.clone(),
            mesh.clone(),
            reload.clone(),
            service.clone(),
        );
        let join = LocalExecutorBuilder::new(placement)
            .name(&format!("ferry-shard-{i}"))
            // The blocking thread (segment making: syncs that sleep in the kernel) is not pinned
            // to the shard's CPU: it must not wait for the busy shard to yield it.
            .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(1))
            .io_memory(driver.io_memory_bytes)
            .ring_depth(RING_DEPTH)
            .spawn(
                move || async move { run_shard(cfg, fds, d, clock, s, m, r, mesh, rl, sv).await },
            )
            .map_err(|e| std::io::Error::other(format!("shard {i}: cannot start executor: {e}")))?;
        handles.push(ShardHandle {
            metrics,
            ready,
            join: ShardJoin::Glommio(join),
        });
    }
    Ok(handles)
}

struct Ctx {
    shard: RefCell<Shard>,
    clock: Clock,
    writers: RefCell<AHashMap<ConnId, (LocalSender<()>, RawFd)>>,
    /// Each connection's reader wake-up: a reader held by backpressure waits on it (capacity 1,
    /// a full channel means "already woken").
    readers: RefCell<AHashMap<ConnId, LocalSender<()>>>,
    flushers: Vec<Option<LocalSender<()>>>,
    scratch: RefCell<Vec<ConnId>>,
    driver: DriverConfig,
    /// The certificate new TLS connections get (replaced on reload).
    tls: RefCell<Option<Arc<rustls::ServerConfig>>>,
    /// The shard's read buffer, shared by every connection (see `read_loop`).
    read_buf: RefCell<Vec<u8>>,
    /// Decrypted TLS records land here before the shard parses them.
    plain_buf: RefCell<Vec<u8>>,
    /// Wakes the tick when appends start waiting for a group commit while it sleeps a whole tick
    /// (capacity 1: full = already woken).
    sync_wake: LocalSender<()>,
    /// The store's blocking work (the next segment, deletions) to run off the core
    /// (`segment_maker`); one at a time.
    segment_jobs: LocalSender<crate::store::StoreJobOf<crate::store::backend::MmapBackend>>,
    /// A store job runs on the blocking thread now.
    segment_busy: std::cell::Cell<bool>,
    /// The shard is draining: no new segment jobs.
    stopping: std::cell::Cell<bool>,
    /// The tick sleeps a whole tick: no group commit was due when it went to sleep.
    tick_idle: std::cell::Cell<bool>,
    /// A connection's TCP keepalive settings were refused (logged once).
    keepalive_warned: std::cell::Cell<bool>,
}

impl Ctx {
    /// After any input: wake the writers of connections with output and the flushers of peers
    /// with pending hops.
    fn after_work(&self) {
        let mut ready = self.scratch.take();
        self.shard.borrow_mut().take_ready(&mut ready);
        {
            let writers = self.writers.borrow();
            for conn in ready.drain(..) {
                if let Some((w, _)) = writers.get(&conn) {
                    let _ = w.try_send(()); // full = already woken
                }
            }
        }
        self.scratch.replace(ready);
        // Appends now wait for a group commit: wake the tick, which slept a whole tick, to sync
        // within the fsync interval (once per clean-to-dirty change, not per input).
        if self.tick_idle.get() && self.shard.borrow().store_sync_due_ms().is_some() {
            self.tick_idle.set(false);
            let _ = self.sync_wake.try_send(());
        }
        // A segment became active: its successor is made now, off the core, so that the roll
        // finds it ready; reclaimed segments are deleted there too (a check of a few fields
        // when there is nothing to do).
        // (No clock read here: the shard dates the job by the last event it handled.)
        // None while stopping (a job out at exit would panic glommio's blocking thread) or while
        // one waits already (the next is taken after it).
        let job = if self.stopping.get() || self.segment_jobs.is_full() {
            None
        } else {
            self.shard.borrow_mut().take_store_job()
        };
        if let Some(job) = job {
            // The log hands out one job at a time and the queue holds one; should the send fail
            // anyway, the log hears of it as a failed job (or no spare would come again).
            if let Err(e) = self.segment_jobs.try_send(job) {
                let job = match e {
                    glommio::GlommioError::Closed(glommio::ResourceType::Channel(j))
                    | glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(j)) => j,
                    _ => unreachable!("a local channel fails only closed or full, with the item"),
                };
                let now = self.clock.now();
                self.shard
                    .borrow_mut()
                    .on_store_job(now, job.not_run("store job not queued"));
            }
        }
        // Connections shed or aborted meanwhile: shut their sockets now, so their writers' pending
        // writes fail and drop the output they hold (the budget no longer counts it).
        force_close_stuck(self);
        let pending: Vec<usize> = self.shard.borrow().outbox_pending().collect();
        for peer in pending {
            if let Some(Some(f)) = self.flushers.get(peer) {
                let _ = f.try_send(());
            }
        }
        self.resume_readers();
    }

    /// Wakes the readers held by backpressure whose pressure has ended. Called after every event
    /// that can end it (input handled, a write done, a hop batch taken, a close): a held reader
    /// resumes in the same loop turn as that event, never on a timer.
    fn resume_readers(&self) {
        let mut resumed = self.scratch.take();
        self.shard.borrow_mut().take_resumed(&mut resumed);
        {
            let readers = self.readers.borrow();
            for conn in resumed.drain(..) {
                if let Some(r) = readers.get(&conn) {
                    let _ = r.try_send(()); // full = already woken
                }
            }
        }
        self.scratch.replace(resumed);
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_shard(
    mut cfg: ShardConfig,
    fds: Vec<(RawFd, bool)>,
    driver: DriverConfig,
    clock: Clock,
    (stop, fatal): (Arc<AtomicBool>, Arc<FatalStop>),
    metrics: Arc<ShardMetrics>,
    ready: Arc<AtomicBool>,
    mesh: MeshBuilder<HopBatch, Full>,
    reload: Arc<Reload>,
    service: Option<ServiceLinks>,
) {
    let (senders, receivers) = match mesh.join().await {
        Ok(sr) => sr,
        Err(e) => fatal.stop_here(format!("shard mesh join failed: {e}")),
    };
    let me = senders.peer_id();
    // Below the mesh's size, which `start` holds to SHARDS_MAX.
    cfg.shard = shard_index(me);
    let peers = senders.nr_consumers();
    let senders = Rc::new(senders);
    let receivers = Rc::new(receivers);

    let mut flushers = Vec::with_capacity(peers);
    let mut flush_rx = Vec::with_capacity(peers);
    for p in 0..peers {
        if p == me {
            flushers.push(None);
            flush_rx.push(None);
        } else {
            let (tx, rx) = local_channel::new_bounded(1);
            flushers.push(Some(tx));
            flush_rx.push(Some(rx));
        }
    }
    let store = match &cfg.store {
        None => None,
        Some(spec) => match open_store(spec, cfg.shard, &clock, &metrics) {
            Ok(log) => Some(log),
            Err(e) => {
                // Nothing can be promised durable: refuse to serve at all.
                fatal.stop_here(format!("shard {me}: {e}"));
            }
        },
    };
    let mut shard = Shard::new(cfg, metrics);
    if let Some(log) = store {
        shard = shard.with_store(log);
    }
    let link = service.and_then(|links| links.lock().ok().and_then(|mut l| l.get_mut(me)?.take()));
    let mut service_rx = None;
    if let Some(link) = link {
        shard = shard.with_service(link.sink);
        if !link.media.is_empty() {
            shard = shard.with_media(link.media);
        }
        // SAFETY: the fd comes from a std UnixStream this shard alone now owns.
        let bell = unsafe { glommio::net::UnixStream::from_raw_fd(link.doorbell.into_raw_fd()) };
        service_rx = Some((link.replies, bell));
    }
    let (sync_wake, sync_woken) = local_channel::new_bounded(1);
    let (segment_jobs, segment_jobs_rx) = local_channel::new_bounded(1);
    let ctx = Rc::new(Ctx {
        shard: RefCell::new(shard),
        clock,
        writers: RefCell::new(AHashMap::new()),
        readers: RefCell::new(AHashMap::new()),
        flushers,
        scratch: RefCell::new(Vec::new()),
        tls: RefCell::new(reload.get().and_then(|r| r.tls)),
        read_buf: RefCell::new(vec![0u8; driver.read_buffer_bytes.max(4096)]),
        plain_buf: RefCell::new(vec![0u8; 16 * 1024]),
        driver,
        sync_wake,
        segment_jobs,
        segment_busy: std::cell::Cell::new(false),
        stopping: std::cell::Cell::new(false),
        tick_idle: std::cell::Cell::new(false),
        keepalive_warned: std::cell::Cell::new(false),
    });
    let mut reload_seen = reload.generation();

    let mut tasks = Vec::new();
    tasks.push(glommio::spawn_local(segment_maker(
        ctx.clone(),
        segment_jobs_rx,
    )));
    for (p, rx) in flush_rx.into_iter().enumerate() {
        let Some(rx) = rx else { continue };
        tasks.push(glommio::spawn_local(flusher(
            ctx.clone(),
            senders.clone(),
            p,
            rx,
        )));
        tasks.push(glommio::spawn_local(hop_receiver(
            ctx.clone(),
            receivers.clone(),
            p,
        )));
    }
    if let Some((replies, bell)) = service_rx {
        tasks.push(glommio::spawn_local(service_receiver(
            ctx.clone(),
            replies,
            bell,
        )));
    }
    let mut acceptors = Vec::new();
    for (fd, tls) in fds {
        // SAFETY: the fd came from a bound, listening std TcpListener handed to this shard alone.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        acceptors.push(glommio::spawn_local(acceptor(
            ctx.clone(),
            listener,
            fd,
            tls,
            stop.clone(),
        )));
    }
    ready.store(true, Ordering::Release);

    // Tick: deadlines, group commits, and the stop flag. It sleeps a whole tick unless appends
    // wait for a group commit (then until it is due); work that leaves appends waiting while it
    // sleeps wakes it (`Ctx::after_work`). A tick at the fsync interval all the time woke an
    // idle shard 100 times a second.
    let tick_ms = ctx.driver.tick_ms.max(1);
    while !stop.load(Ordering::Acquire) {
        let now = ctx.clock.now();
        let due = ctx.shard.borrow().store_sync_due_ms();
        let wait_ms = due.map_or(tick_ms, |d| d.saturating_sub(now.mono_ms).min(tick_ms));
        ctx.tick_idle.set(due.is_none());
        let due_us = ctx.clock.elapsed_us() + wait_ms * 1_000;
        let woken = if wait_ms == 0 {
            // A commit is due now (`store_fsync = "always"`): let the tasks already woken in this
            // turn run first, so that the one sync covers their appends too.
            futures_lite::future::yield_now().await;
            false
        } else {
            futures_lite::future::or(
                async {
                    glommio::timer::sleep(Duration::from_millis(wait_ms)).await;
                    false
                },
                async {
                    sync_woken.recv().await;
                    true
                },
            )
            .await
        };
        ctx.tick_idle.set(false);
        if woken {
            // Appends wait: sleep until their group commit is due.
            continue;
        }
        ctx.shard
            .borrow()
            .metrics()
            .tick_lag
            .observe_us(ctx.clock.elapsed_us().saturating_sub(due_us));
        let now = ctx.clock.now();
        ctx.shard.borrow_mut().on_tick(now);
        let job = ctx.shard.borrow_mut().take_sync(now);
        if let Some(job) = job {
            spawn_group_commit(ctx.clone(), fatal.clone(), me, job);
        }
        let why = ctx.shard.borrow().fatal().map(str::to_string);
        if let Some(why) = why {
            // An fsync failed: acknowledging anything more could be a lie. This shard stops
            // here; `main` stops the node.
            fatal.stop_here(format!("shard {me}: {why}"));
        }
        ctx.after_work();
        if ctx.shard.borrow_mut().take_trim_due(now) {
            trim_allocator();
        }
        let generation = reload.generation();
        if generation != reload_seen {
            reload_seen = generation;
            if let Some(r) = reload.get() {
                ctx.shard
                    .borrow_mut()
                    .set_limits(r.conn_limits, r.ip_limits, r.connections_max);
                *ctx.tls.borrow_mut() = r.tls;
            }
        }
    }
    // Drain. Stop accepting: dropping the acceptors closes this shard's listening sockets.
    ready.store(false, Ordering::Release);
    ctx.stopping.set(true);
    drop(acceptors);
    // Then, with no await in between (so no reader runs): the last sync, which answers `Stored`
    // for everything it covers, then `ShuttingDown` to every client behind those answers.
    {
        let mut shard = ctx.shard.borrow_mut();
        if let Err(e) = shard.flush_store() {
            fatal.stop_here(format!("shard {me}: final store sync failed: {e}"));
        }
        let conns: Vec<ConnId> = ctx.writers.borrow().keys().copied().collect();
        for conn in conns {
            shard.close(conn, ErrorCode::ShuttingDown, "node is restarting");
        }
    }
    ctx.after_work();
    // A grace for those frames to reach the sockets, then every connection is shut down (their
    // tasks end on the resulting errors).
    glommio::timer::sleep(Duration::from_millis(ctx.driver.drain_grace_ms)).await;
    for (_, fd) in ctx.writers.borrow().values() {
        shutdown_fd(*fd);
    }
    // A segment still being made finishes first: glommio's blocking thread panics when the
    // executor that asked is gone. (Creating a file and two syncs: milliseconds; bounded by
    // the node's stop timeout.)
    while ctx.segment_busy.get() {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    drop(tasks); // dropping a glommio task cancels it
}

/// Opens (and replays) this shard's log in `spec.dir/shard-<id>`. (The node checked before the
/// shards started that the store was written with this shard count.)
fn open_store(
    spec: &crate::shard::StoreSpec,
    shard: u16,
    clock: &Clock,
    metrics: &ShardMetrics,
) -> Result<crate::store::Log<crate::store::backend::MmapBackend>, String> {
    let dir = spec.dir.join(format!("shard-{shard}"));
    let backend = crate::store::backend::MmapBackend::new(&dir)
        .map_err(|e| format!("store {}: {e}", dir.display()))?;
    let (log, rec) = crate::store::Log::open(
        backend,
        shard,
        spec.limits.clone(),
        spec.policy,
        clock.now().unix_s,
    )
    .map_err(|e| format!("store {}: {e}", dir.display()))?;
    ShardMetrics::add(&metrics.store_quarantined, rec.quarantined as u64);
    ShardMetrics::add(&metrics.store_torn_tails, rec.torn_tails as u64);
    if recovered_with_damage(&rec) {
        tracing::warn!(
            shard,
            quarantined = rec.quarantined,
            torn_tails = rec.torn_tails,
            bad_segments = rec.bad_segments,
            temporaries = rec.temporaries,
            empty_segments = rec.empty_segments,
            "store recovered with damage"
        );
    }
    tracing::info!(
        shard,
        blobs = log.blobs(),
        segments = rec.segments,
        "store replayed"
    );
    Ok(log)
}

/// Whether a replay has something to report: records or segments skipped or left aside, or the
/// remains of interrupted segment creations (temporary files, all-zero segments) removed.
fn recovered_with_damage(rec: &crate::store::Recovery) -> bool {
    rec.quarantined > 0
        || rec.torn_tails > 0
        || rec.bad_segments > 0
        || rec.temporaries > 0
        || rec.empty_segments > 0
}

/// Connections the shard closed while their writer is stuck on a full socket: shut the socket so
/// the writer's pending write fails and both tasks end.
fn force_close_stuck(ctx: &Ctx) {
    let stuck = ctx.shard.borrow_mut().take_force_close();
    if stuck.is_empty() {
        return;
    }
    let writers = ctx.writers.borrow();
    for conn in stuck {
        if let Some((_, fd)) = writers.get(&conn) {
            shutdown_fd(*fd);
        }
    }
}

/// Allocations up to this size come from the heap, never from their own `mmap` (glibc's
/// default starts at 128 KiB and moves).
pub const ALLOCATOR_MMAP_THRESHOLD_BYTES: usize = 32 << 20;
/// Free memory at the top of a heap that `free` keeps rather than hands back (`MADV_DONTNEED`).
pub const ALLOCATOR_TRIM_THRESHOLD_BYTES: usize = 64 << 20;

/// Keeps the shards' buffers out of the kernel's page-fault path. A shard takes each connection's
/// output as one buffer per turn and frees it once written; at 1400 B and half a million
/// messages a second those buffers are hundreds of KiB. With glibc's defaults, `free` gave the top
/// of the shard's heap back to the OS (`MADV_DONTNEED`, 170 times a second) and the next buffer
/// faulted every page in again, zeroed: 173,000 page faults a second, a quarter of the shard's
/// CPU, and 470,000 msg/s where the same node does 1.3 M with the faults gone (bench/RESULTS.md).
/// Memory still goes back after a flood: the shard's own `malloc_trim` (`trim_allocator`) runs
/// once a second at most, after `MEMORY_TRIM_FREED_BYTES_MIN` was freed. Set once, before any
/// shard starts (mallopt is process-wide).
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's thresholds; it takes the allocator's own lock.
    unsafe {
        let set = |param, value: usize| {
            let v = libc::c_int::try_from(value).expect("a threshold fits in an int");
            libc::mallopt(param, v) == 1
        };
        let ok = set(libc::M_MMAP_THRESHOLD, ALLOCATOR_MMAP_THRESHOLD_BYTES)
            && set(libc::M_TRIM_THRESHOLD, ALLOCATOR_TRIM_THRESHOLD_BYTES);
        if !ok {
            tracing::warn!("mallopt refused the allocator thresholds: buffers may page-fault");
        }
    }
}

/// Gives freed heap memory back to the OS. glibc keeps what a thread freed in that thread's
/// arena (each shard thread gets its own) and returns only the top of each heap by itself, so
/// after a flood of partial frames or slow readers the freed buffers, scattered through the
/// arenas, stayed resident; `malloc_trim` walks every arena and releases their free pages
/// (`MADV_DONTNEED`). It takes the arenas' locks for a few milliseconds per GiB: the shard asks
/// for it at most every `MEMORY_TRIM_INTERVAL_MS`, and only after freeing
/// `MEMORY_TRIM_FREED_BYTES_MIN`.
fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Feeds TLS records; hands every plaintext byte to the shard. Returns the read pause (ms). Both
/// drivers decrypt through it.
fn tls_to_shard(
    shard: &mut Shard,
    clock: &Clock,
    conn: ConnId,
    t: &mut rustls::ServerConnection,
    mut data: &[u8],
    plain: &mut [u8],
) -> Result<u64, rustls::Error> {
    let mut pause = 0;
    while !data.is_empty() {
        if t.read_tls(&mut data).is_err() {
            return Err(rustls::Error::General("TLS read buffer full".into()));
        }
        t.process_new_packets()?;
        loop {
            match t.reader().read(plain) {
                Ok(0) => break,
                Ok(k) => pause = pause.max(shard.on_bytes(clock.now(), conn, &plain[..k])),
                Err(_) => break, // WouldBlock: no more plaintext now
            }
        }
    }
    Ok(pause)
}

fn shutdown_fd(fd: RawFd) {
    // SAFETY: fds in `writers` belong to live connections: an entry is removed before its stream
    // is dropped, and everything runs on this one thread.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = socket2::SockRef::from(&borrowed).shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests;
