//! The service core: push wakes and the prekey directory, on one thread of low scheduling
//! priority pinned apart from the shards (where the machine has a spare core), running a tokio
//! current-thread runtime for the providers' HTTP/2 clients.
//!
//! Shards → service: one bounded queue ([`Sink`]); a full queue refuses at once (the shard
//! answers `Busy`, or drops a wake) and never blocks a shard. Service → shard: one bounded
//! channel per shard plus a doorbell socket; replies that do not fit wait here (the service may
//! wait, a shard may not). Per loop turn: take up to [`BATCH_MAX`] requests, apply them to the
//! directory and the registry, append their journal records, sync the journals once (group
//! commit), and only then release the replies, so an acknowledged upload is durable and a
//! consumed one-time key is never handed out twice, even across a crash. Wakes go out as
//! separate tasks under a per-provider rate cap and an in-flight limit, with retries and backoff.

pub mod journal;
pub mod providers;

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use ferry_proto::conn::{Now, prekey_refusal};
use ferry_proto::frame::{Frame, PrekeyStatus, PushStatus};
use ferry_proto::prekey::KeyKind;
use ferry_shards::clock::Clock;
use ferry_shards::driver::{ServiceLink, ServiceLinks};
use ferry_shards::fatal::FatalStop;
use ferry_shards::metrics::{Exposition, Histogram, WAKE_BUCKETS_US};
use ferry_shards::service::{ServiceReply, ServiceRequest, ServiceSink, ServiceWork};

use ferry_shards::prekeys::{Directory, DirectoryLimits};
use ferry_shards::push::{Dispatcher, Job, Outcome, PushLimits, Registry, SendLimits};
use journal::Journal;
use providers::{Providers, Sender};

/// Requests applied per loop turn (one journal sync covers them all).
pub const BATCH_MAX: usize = 256;
/// A journal is compacted when it grows past this many times its live state (and this minimum).
const COMPACT_FACTOR: u64 = 4;
const COMPACT_MIN_BYTES: u64 = 16 << 20;
/// The push journal is rewritten this long after records were appended to it: until then one
/// registration's records sit side by side at its end, which links their dests at rest (push.rs,
/// module doc). At most one such rewrite per period, and only while the live registrations take
/// at most `PUSH_REGROUP_BYTES_MAX` (so at most about 4.5 MB/s of rewriting, sustained); a larger
/// journal is rewritten only as it grows (`COMPACT_FACTOR`), and its tail groups records until
/// then (docs/PUSH.md, "At rest").
pub const PUSH_REGROUP_S: u64 = 60;
pub const PUSH_REGROUP_BYTES_MAX: u64 = 256 << 20;

/// Everything the service core needs.
#[derive(Debug)]
pub struct ServiceConfig {
    pub dir: PathBuf,
    pub shards: usize,
    pub cpu: Option<usize>,
    /// Requests queued from all shards.
    pub queue_max: usize,
    /// Replies queued towards one shard.
    pub replies_max: usize,
    /// `None`: no prekey directory (fetches answered `Unavailable`).
    pub prekeys: Option<DirectoryLimits>,
    pub push: PushLimits,
    pub send: SendLimits,
    pub providers: Providers,
    pub ca_file: Option<PathBuf>,
    pub clock: Clock,
}

ferry_shards::counters! {
    /// Counters and gauges of the service core (rendered by the admin endpoint).
    pub struct ServiceCounters {
        prekey_uploads: "counter", "ferry_prekey_uploads_total", "Prekey uploads accepted.";
        prekey_uploads_refused: "counter", "ferry_prekey_uploads_refused_total", "Prekey uploads refused (bad key or signature, duplicate id, too many keys, directory full).";
        prekey_fetches: "counter", "ferry_prekey_fetches_total", "Prekey bundles handed out.";
        prekey_fetches_last_resort: "counter", "ferry_prekey_fetches_last_resort_total", "Of those: with the last-resort PQ prekey (no one-time PQ key left, or withheld).";
        prekey_fetches_not_found: "counter", "ferry_prekey_fetches_not_found_total", "Fetches for a dest with no bundle.";
        prekey_fetches_rate_limited: "counter", "ferry_prekey_fetches_rate_limited_total", "Fetches refused by the per-address fetch rate.";
        prekey_one_time_withheld_slot: "counter", "ferry_prekey_one_time_withheld_slot_total", "Fetches given the last-resort bundle while one-time keys were left: the slot was under pressure (prekeys.one_time_per_slot_* spent).";
        prekey_one_time_withheld_source: "counter", "ferry_prekey_one_time_withheld_source_total", "Fetches given the last-resort bundle while one-time keys were left: the address had its share (prekeys.one_time_per_source_*).";
        prekey_puzzle_paid: "counter", "ferry_prekey_puzzle_paid_total", "One-time keys handed out for a puzzle answer while their slot was under pressure.";
        prekey_puzzle_refused: "counter", "ferry_prekey_puzzle_refused_total", "Fetch puzzle answers refused: too little effort, not a solution, or bound to another seed or slot.";
        prekey_puzzle_replayed: "counter", "ferry_prekey_puzzle_replayed_total", "Fetch puzzle answers refused because an earlier fetch was granted with them.";
        prekey_slots: "gauge", "ferry_prekey_slots", "Bundle slots in the directory.";
        prekey_bytes: "gauge", "ferry_prekey_bytes", "Bytes of keys in the directory.";
        push_registrations: "gauge", "ferry_push_registrations", "Devices (push tokens) registered, as far as this run has opened them (registered, or woken since the start).";
        push_registrations_locked: "gauge", "ferry_push_registrations_locked", "Registrations (one device at one dest) read from the journal and not yet opened: the journal keeps them sealed under their dest, which a wake for the dest supplies.";
        push_registrations_refused: "counter", "ferry_push_registrations_refused_total", "Push registrations refused (bad token, provider disabled, too many).";
        push_wakes_requested: "counter", "ferry_push_wakes_requested_total", "Blobs stored for a dest with registrations and no subscriber.";
        push_wakes_coalesced: "counter", "ferry_push_wakes_coalesced_total", "Wakes not sent: the device was woken within the coalescing window.";
        push_wakes_dropped: "counter", "ferry_push_wakes_dropped_total", "Wakes dropped: the wake queue was full.";
        push_wakes_retried: "counter", "ferry_push_wakes_retried_total", "Wake retries after 429, 5xx or a network error.";
        push_wakes_cancelled: "counter", "ferry_push_wakes_cancelled_total", "Wakes not sent: their device unregistered, expired or was deleted while they waited.";
        push_tokens_deleted: "counter", "ferry_push_tokens_deleted_total", "Tokens deleted because the provider said they are gone.";
        push_queue: "gauge", "ferry_push_queue", "Wakes waiting (rate cap, backoff or in-flight limit).";
        journal_syncs: "counter", "ferry_service_journal_syncs_total", "Journal syncs (one per batch of directory or registry changes).";
    }
}

/// The service core's metrics: its counters (`ServiceCounters`, reached through `Deref`), the
/// per-provider wake outcomes and the wake latency.
#[derive(Debug)]
pub struct ServiceMetrics {
    pub counters: ServiceCounters,
    /// Per provider (APNs, FCM, Web Push).
    pub push_sent: [AtomicU64; 3],
    pub push_failed: [AtomicU64; 3],
    /// From a shard's wake request to the provider accepting the wake (retries included).
    pub wake_latency: Histogram,
}

impl Default for ServiceMetrics {
    fn default() -> Self {
        ServiceMetrics {
            counters: ServiceCounters::default(),
            push_sent: Default::default(),
            push_failed: Default::default(),
            wake_latency: Histogram::with_bounds(&WAKE_BUCKETS_US, true),
        }
    }
}

impl std::ops::Deref for ServiceMetrics {
    type Target = ServiceCounters;
    fn deref(&self) -> &ServiceCounters {
        &self.counters
    }
}

impl ServiceMetrics {
    /// Prometheus text for these metrics.
    pub fn render(&self, out: &mut String) {
        let e = &mut Exposition::new(out);
        self.counters.render(e);
        e.histogram(
            "ferry_push_wake_seconds",
            "From a shard's wake request to the provider accepting the wake (retries included).",
            &[(&[], &self.wake_latency)],
        );
        for (metric, arr, help) in [
            (
                "ferry_push_wakes_sent_total",
                &self.push_sent,
                "Wakes the provider accepted.",
            ),
            (
                "ferry_push_wakes_failed_total",
                &self.push_failed,
                "Wakes that failed for good (refused, or out of retries).",
            ),
        ] {
            e.header(metric, "counter", help);
            for (i, p) in ["apns", "fcm", "webpush"].iter().enumerate() {
                e.sample(metric, &[("provider", p)], arr[i].load(Ordering::Relaxed));
            }
        }
    }
}

/// The shards' way into the service's queue.
#[derive(Debug)]
struct Sink(tokio::sync::mpsc::Sender<ServiceRequest>);

impl ServiceSink for Sink {
    fn offer(&self, req: ServiceRequest) -> Result<(), ServiceRequest> {
        self.0.try_send(req).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(r)
            | tokio::sync::mpsc::error::TrySendError::Closed(r) => r,
        })
    }
}

/// A shard's reply channel and doorbell, shared by every thread that answers it.
#[derive(Debug)]
pub struct ReplyPort {
    pub tx: crossbeam_channel::Sender<ServiceReply>,
    pub bell: std::os::unix::net::UnixStream,
}

impl ReplyPort {
    /// Queues a reply (waiting while the shard's channel is full: only this thread waits) and
    /// rings the shard.
    pub fn send(&self, reply: ServiceReply) {
        if self.tx.send(reply).is_ok() {
            let _ = (&self.bell).write(&[1]);
        }
    }

    pub fn try_clone(&self) -> std::io::Result<ReplyPort> {
        Ok(ReplyPort {
            tx: self.tx.clone(),
            bell: self.bell.try_clone()?,
        })
    }
}

/// What the node keeps of the running service core.
#[derive(Debug)]
pub struct ServiceHandle {
    /// The core's runtime: the HTTP listeners run on it (`crate::http`), and stop with it.
    pub runtime: tokio::runtime::Handle,
    pub links: ServiceLinks,
    /// The way back to each shard, for other threads that answer shards (the media workers).
    pub ports: Vec<ReplyPort>,
    pub metrics: Arc<ServiceMetrics>,
    stop: Arc<AtomicBool>,
    join: std::thread::JoinHandle<()>,
}

impl ServiceHandle {
    /// Asks the service to finish its turn, sync its journals and exit; waits for it.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.join.join();
    }
}

/// Replies on their way to the shards.
struct Outlet {
    txs: Vec<crossbeam_channel::Sender<ServiceReply>>,
    bells: Vec<std::os::unix::net::UnixStream>,
    pending: Vec<VecDeque<ServiceReply>>,
}

impl Outlet {
    fn push(&mut self, shard: usize, reply: ServiceReply) {
        if let Some(q) = self.pending.get_mut(shard) {
            q.push_back(reply);
        }
    }
    fn has_pending(&self) -> bool {
        self.pending.iter().any(|q| !q.is_empty())
    }
    /// Moves pending replies into the shards' channels and rings their doorbells.
    fn flush(&mut self) {
        for (i, q) in self.pending.iter_mut().enumerate() {
            let mut sent = false;
            while let Some(r) = q.pop_front() {
                match self.txs[i].try_send(r) {
                    Ok(()) => sent = true,
                    Err(crossbeam_channel::TrySendError::Full(r)) => {
                        q.push_front(r);
                        break;
                    }
                    Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                        q.clear();
                        break;
                    }
                }
            }
            if sent {
                // WouldBlock = the shard has unread rings already; it will drain the channel.
                let _ = self.bells[i].write(&[1]);
            }
        }
    }
}

struct Done {
    job: Job,
    outcome: Outcome,
}

struct State {
    shards: usize,
    clock: Clock,
    directory: Option<(Directory, Journal)>,
    registry: (Registry, Journal),
    outlet: Outlet,
    sender: Option<Sender>,
    /// The wake queue (rate caps, in-flight limit, retries).
    wakes: Dispatcher,
    metrics: Arc<ServiceMetrics>,
    /// Where a journal that cannot sync is reported (the core then stops).
    fatal: Arc<FatalStop>,
}

/// Opens `dir/<name>.journal` and replays it through `apply` (which returns the records it could
/// not parse); damage found on the way is logged.
fn open_journal(
    dir: &Path,
    name: &str,
    apply: impl FnOnce(&[Vec<u8>]) -> usize,
) -> anyhow::Result<Journal> {
    let path = dir.join(format!("{name}.journal"));
    let (j, replay) =
        Journal::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let bad = apply(&replay.records);
    if bad > 0 || replay.cut_bytes > 0 || replay.quarantined > 0 {
        tracing::warn!(
            bad_records = bad,
            quarantined = replay.quarantined,
            cut_bytes = replay.cut_bytes,
            "{name} journal recovered with damage"
        );
    }
    Ok(j)
}

/// Starts the service core: opens and replays its journals (errors stop the node's start-up),
/// then runs on its own thread. Returns the shards' links.
/// Starts the service core's thread. A journal that cannot sync, a runtime that cannot start or
/// a panic stops the core where it is and reports to `fatal`, and `main` stops the node.
pub fn start(cfg: ServiceConfig, fatal: Arc<FatalStop>) -> anyhow::Result<ServiceHandle> {
    std::fs::create_dir_all(&cfg.dir).with_context(|| format!("creating {}", cfg.dir.display()))?;
    let directory = match &cfg.prekeys {
        None => None,
        Some(limits) => {
            let mut d = Directory::new(limits.clone());
            let j = open_journal(&cfg.dir, "prekeys", |r| d.replay(r))?;
            tracing::info!(slots = d.slots(), "prekey directory replayed");
            if d.legacy_dropped() > 0 {
                tracing::info!(
                    records = d.legacy_dropped(),
                    "prekey slots of an older version (unsealed, permanent) dropped: clients publish sealed day slots"
                );
            }
            Some((d, j))
        }
    };
    let mut push_limits = cfg.push.clone();
    push_limits.enabled = cfg.providers.enabled();
    let mut nonce_seed = [0u8; 32];
    getrandom::fill(&mut nonce_seed)
        .map_err(|e| anyhow::anyhow!("no randomness for the push journal's nonces: {e}"))?;
    let mut registry = Registry::new(push_limits, nonce_seed);
    let pj = open_journal(&cfg.dir, "push", |r| registry.replay(r))?;
    let sender = if cfg.providers.enabled().iter().any(|e| *e) {
        let client = providers::https_client(cfg.ca_file.as_deref())?;
        Some((client, Arc::new(cfg.providers)))
    } else {
        None
    };

    let (tx, rx) = tokio::sync::mpsc::channel(cfg.queue_max.max(1));
    let sink: Arc<dyn ServiceSink> = Arc::new(Sink(tx));
    let mut links = Vec::with_capacity(cfg.shards);
    let mut txs = Vec::with_capacity(cfg.shards);
    let mut bells = Vec::with_capacity(cfg.shards);
    let mut ports = Vec::with_capacity(cfg.shards);
    for _ in 0..cfg.shards {
        let (rtx, rrx) = crossbeam_channel::bounded(cfg.replies_max.max(1));
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        links.push(Some(ServiceLink {
            sink: sink.clone(),
            media: Vec::new(),
            replies: rrx,
            doorbell: theirs,
        }));
        ports.push(ReplyPort {
            tx: rtx.clone(),
            bell: ours.try_clone()?,
        });
        txs.push(rtx);
        bells.push(ours);
    }
    drop(sink);
    let mut outlet = Outlet {
        pending: (0..cfg.shards).map(|_| VecDeque::new()).collect(),
        txs,
        bells,
    };
    // Tell the owner shards which dests have registrations.
    // Registrations read from the journal are known by their dests' tags only: every shard
    // gets the one map of them (a tag names no owner).
    let tags: ahash::AHashMap<[u8; 16], u64> = registry.all_armed_tags().into_iter().collect();
    if !tags.is_empty() {
        let tags = Arc::new(tags);
        for shard in 0..cfg.shards {
            outlet.push(shard, ServiceReply::PushArmTags { tags: tags.clone() });
        }
    }
    for (dest, until) in registry.all_armed() {
        outlet.push(
            dest.owner(cfg.shards),
            ServiceReply::PushArm {
                dest,
                until_unix_s: until,
            },
        );
    }
    let metrics = Arc::new(ServiceMetrics::default());
    let stop = Arc::new(AtomicBool::new(false));
    let send = cfg.send.clone();
    let clock = cfg.clock;
    let (m, s) = (metrics.clone(), stop.clone());
    let shards = cfg.shards;
    let cpu = cfg.cpu;
    let (rt_tx, rt_rx) = std::sync::mpsc::sync_channel(1);
    let join = std::thread::Builder::new()
        .name("ferry-service".into())
        .spawn(move || {
            let fatal_for_panic = fatal.clone();
            if let Some(cpu) = cpu {
                crate::sys::pin_current_thread(cpu);
            }
            crate::sys::lower_thread_priority(10);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    // `start` hears of it (and fails) rather than waiting for a handle.
                    let _ = rt_tx.send(None);
                    fatal.stop_here(format!("service core: cannot start its runtime: {e}"))
                }
            };
            let _ = rt_tx.send(Some(rt.handle().clone()));
            let run_all = std::panic::AssertUnwindSafe(|| {
                rt.block_on(async move {
                    let st = State {
                        shards,
                        clock,
                        directory,
                        registry: (registry, pj),
                        outlet,
                        sender: sender.map(|(c, p)| Sender::new(c, p, clock)),
                        wakes: Dispatcher::new(send),
                        metrics: m,
                        fatal,
                    };
                    run(st, rx, s).await;
                })
            });
            // A panic here must not leave the shards answering `Busy` forever: stop the node.
            if std::panic::catch_unwind(run_all).is_err() {
                fatal_for_panic.stop_here("the service core panicked");
            }
        })?;
    let runtime = rt_rx
        .recv()
        .ok()
        .flatten()
        .ok_or_else(|| anyhow::anyhow!("the service core's runtime did not start"))?;
    Ok(ServiceHandle {
        runtime,
        links: Arc::new(Mutex::new(links)),
        ports,
        metrics,
        stop,
        join,
    })
}

async fn run(
    mut st: State,
    mut rx: tokio::sync::mpsc::Receiver<ServiceRequest>,
    stop: Arc<AtomicBool>,
) {
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut batch = Vec::with_capacity(BATCH_MAX);
    let mut next_dispatch: Option<u64> = None;
    loop {
        // Replies that did not fit a shard's channel: retry soon. Waiting wakes: when due.
        let wait_ms = match (st.outlet.has_pending(), next_dispatch) {
            (true, n) => Some(n.unwrap_or(2).min(2)),
            (false, n) => n,
        };
        tokio::select! {
            n = rx.recv_many(&mut batch, BATCH_MAX) => {
                if n == 0 {
                    break; // every shard is gone
                }
                let now = st.clock.now();
                for req in batch.drain(..) {
                    st.handle(now, req);
                }
            }
            Some(done) = done_rx.recv() => {
                st.on_done(done);
            }
            _ = tick.tick() => {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                st.maintain();
            }
            _ = tokio::time::sleep(Duration::from_millis(wait_ms.unwrap_or(0).max(1))), if wait_ms.is_some() => {}
        }
        st.commit();
        // Metrics first: whatever a client is answered below is already in them (a test read
        // `ferry_push_registrations` right after its third `PushResult` and saw 2).
        st.publish();
        st.outlet.flush();
        next_dispatch = st.dispatch(&done_tx);
        st.publish();
    }
    st.commit();
    st.outlet.flush();
}

impl State {
    fn reply(&mut self, to: ferry_shards::ConnRef, frame: Frame) {
        self.outlet.push(
            usize::from(to.shard),
            ServiceReply::Frame { to: to.conn, frame },
        );
    }

    fn arm(&mut self, arms: Vec<(ferry_proto::Dest, u64)>) {
        for (dest, until_unix_s) in arms {
            self.outlet.push(
                dest.owner(self.shards),
                ServiceReply::PushArm { dest, until_unix_s },
            );
        }
    }

    fn handle(&mut self, now: Now, req: ServiceRequest) {
        let from = req.from;
        match req.work {
            ServiceWork::PrekeyUpload { upload, requester } => {
                let frame = match self.directory.as_mut() {
                    None => prekey_refusal(upload.dest, PrekeyStatus::Unavailable),
                    Some((d, _)) => match d.upload(now.unix_s, now.mono_ms, &upload, requester) {
                        Ok((ec_left, pq_left)) => Frame::PrekeyResult {
                            dest: upload.dest,
                            status: PrekeyStatus::Ok,
                            kind: KeyKind::None,
                            index: 0,
                            ec_left,
                            pq_left,
                        },
                        Err(r) => Frame::PrekeyResult {
                            dest: upload.dest,
                            status: r.status,
                            kind: r.kind,
                            index: r.index,
                            ec_left: 0,
                            pq_left: 0,
                        },
                    },
                };
                self.reply(from, frame);
            }
            ServiceWork::PrekeyFetch {
                dest,
                requester,
                puzzle,
            } => {
                let (status, bundle, puzzle) = match self.directory.as_mut() {
                    None => (PrekeyStatus::Unavailable, None, None),
                    Some((d, _)) => {
                        match d.fetch_with(
                            now.unix_s,
                            now.mono_ms,
                            dest,
                            requester,
                            puzzle.as_ref(),
                        ) {
                            Ok((b, ask)) => (PrekeyStatus::Ok, Some(Box::new(b)), ask),
                            Err(s) => (s, None, None),
                        }
                    }
                };
                self.reply(
                    from,
                    Frame::PrekeyBundle {
                        dest,
                        status,
                        bundle,
                        puzzle,
                    },
                );
            }
            ServiceWork::PrekeyCount { dest } => {
                let frame = match self.directory.as_ref() {
                    None => prekey_refusal(dest, PrekeyStatus::Unavailable),
                    Some((d, _)) => match d.count(now.unix_s, &dest) {
                        Some((ec_left, pq_left)) => Frame::PrekeyResult {
                            dest,
                            status: PrekeyStatus::Ok,
                            kind: KeyKind::None,
                            index: 0,
                            ec_left,
                            pq_left,
                        },
                        None => prekey_refusal(dest, PrekeyStatus::NotFound),
                    },
                };
                self.reply(from, frame);
            }
            ServiceWork::PushRegister {
                provider,
                ttl_s,
                token,
                dests,
            } => {
                let r = self
                    .registry
                    .0
                    .register(now.unix_s, provider, &token, ttl_s, &dests);
                let frame = match r {
                    Ok((n, arms)) => {
                        self.arm(arms);
                        Frame::PushResult {
                            status: PushStatus::Ok,
                            dests_registered: n,
                        }
                    }
                    Err(status) => Frame::PushResult {
                        status,
                        dests_registered: 0,
                    },
                };
                self.reply(from, frame);
            }
            ServiceWork::Blob { op, .. } => {
                // Media goes to the media workers, never here.
                debug_assert!(false, "media request on the service core");
                self.reply(
                    from,
                    Frame::BlobStatus {
                        id: *op.id(),
                        op: op.kind(),
                        status: ferry_proto::BlobStatus::Unavailable,
                        offset: 0,
                        size: 0,
                    },
                );
            }
            ServiceWork::Wake { dest } => {
                let asked_us = self.clock.elapsed_us();
                self.wakes.wake(&mut self.registry.0, now, asked_us, &dest);
            }
        }
    }

    fn on_done(&mut self, done: Done) {
        let Done { job, outcome } = done;
        let (now_ms, elapsed_us) = (self.clock.now().mono_ms, self.clock.elapsed_us());
        let f = self
            .wakes
            .done(&mut self.registry.0, now_ms, elapsed_us, job, outcome);
        if let Some(us) = f.latency_us {
            self.metrics.wake_latency.observe_us(us);
        }
        self.arm(f.arms);
    }

    /// Starts the wakes that are due; returns how long (ms) until a waiting one may be due.
    fn dispatch(&mut self, done_tx: &tokio::sync::mpsc::UnboundedSender<Done>) -> Option<u64> {
        let now_ms = self.clock.now().mono_ms;
        let (start, next) = self
            .wakes
            .due(&mut self.registry.0, now_ms, self.sender.is_some());
        if let Some(sender) = &self.sender {
            for job in start {
                let (s, tx) = (sender.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let outcome = s.send(&job.wake, job.refreshed).await;
                    let _ = tx.send(Done { job, outcome });
                });
            }
        }
        next
    }

    /// Once a second: expiry and compaction.
    fn maintain(&mut self) {
        let now = self.clock.now();
        if let Some((d, j)) = self.directory.as_mut() {
            d.expire(now.unix_s);
            // Unsealed records of an older version (identity keys in clear) leave the file at
            // once, whatever its size.
            if (j.bytes() > COMPACT_MIN_BYTES.max(COMPACT_FACTOR * d.bytes() as u64)
                || d.legacy_on_disk())
                && compact(&self.fatal, j, &d.snapshot(), "prekey")
            {
                d.legacy_compacted();
            }
        }
        let arms = self.registry.0.expire(now.unix_s);
        self.arm(arms);
        let (r, j) = &mut self.registry;
        let grown = j.bytes() > COMPACT_MIN_BYTES.max(COMPACT_FACTOR * r.live_bytes());
        let regroup = r.live_bytes() <= PUSH_REGROUP_BYTES_MAX;
        if r.compaction_due(now.unix_s, PUSH_REGROUP_S, regroup, grown) {
            // Records of this turn are in the snapshot: dropped instead of appended, once it is
            // on disk.
            if compact(&self.fatal, j, &r.snapshot(), "push") {
                r.compacted();
            } else {
                r.compaction_failed(now.unix_s, PUSH_REGROUP_S);
            }
        }
    }

    /// Makes this turn's changes durable before any reply leaves. A journal that cannot sync
    /// stops the node: answering would promise what the disk may not hold.
    fn commit(&mut self) {
        let mut synced = 0;
        if let Some((d, j)) = self.directory.as_mut() {
            let records = d.take_records();
            if !records.is_empty() {
                for r in &records {
                    j.append(r);
                }
                fatal_on_err(&self.fatal, j.commit(), "prekey journal");
                synced += 1;
            }
        }
        // Dests whose sealed registrations a wake opened: their owners learn the exact expiry.
        let opened = self.registry.0.take_opened();
        self.arm(opened);
        // Tags whose sealed registrations were opened, replaced or expired: no shard needs them.
        for tag in self.registry.0.take_unarmed_tags() {
            for shard in 0..self.shards {
                self.outlet.push(shard, ServiceReply::PushUnarmTag { tag });
            }
        }
        let (r, j) = &mut self.registry;
        let records = r.take_records(self.clock.now().unix_s);
        if !records.is_empty() {
            for rec in &records {
                j.append(rec);
            }
            fatal_on_err(&self.fatal, j.commit(), "push journal");
            synced += 1;
        }
        self.metrics
            .journal_syncs
            .fetch_add(synced, Ordering::Relaxed);
    }

    fn publish(&self) {
        let m = &self.metrics;
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        if let Some((d, _)) = &self.directory {
            let s = d.stats;
            set(&m.prekey_uploads, s.uploads_ok);
            set(&m.prekey_uploads_refused, s.uploads_refused);
            set(&m.prekey_fetches, s.fetches_ok);
            set(&m.prekey_fetches_last_resort, s.fetches_last_resort);
            set(&m.prekey_fetches_not_found, s.fetches_not_found);
            set(&m.prekey_fetches_rate_limited, s.fetches_rate_limited);
            set(&m.prekey_one_time_withheld_slot, s.one_time_withheld_slot);
            set(
                &m.prekey_one_time_withheld_source,
                s.one_time_withheld_source,
            );
            set(&m.prekey_puzzle_paid, s.puzzle_paid);
            set(&m.prekey_puzzle_refused, s.puzzle_refused);
            set(&m.prekey_puzzle_replayed, s.puzzle_replayed);
            set(&m.prekey_slots, d.slots() as u64);
            set(&m.prekey_bytes, d.bytes() as u64);
        }
        let r = &self.registry.0;
        let s = r.stats;
        set(&m.push_registrations, r.devices() as u64);
        set(&m.push_registrations_locked, r.locked() as u64);
        set(&m.push_registrations_refused, s.registrations_refused);
        set(&m.push_wakes_requested, s.wakes_requested);
        set(&m.push_wakes_coalesced, s.wakes_coalesced);
        set(&m.push_tokens_deleted, s.tokens_deleted);
        let d = self.wakes.stats;
        for i in 0..3 {
            set(&m.push_sent[i], d.sent[i]);
            set(&m.push_failed[i], d.failed[i]);
        }
        set(&m.push_wakes_dropped, d.dropped);
        set(&m.push_wakes_retried, d.retried);
        set(&m.push_wakes_cancelled, d.cancelled);
        set(&m.push_queue, self.wakes.len() as u64);
    }
}

/// Stops the service core (and so the node) when a journal sync failed: answering would promise
/// what the disk may not hold.
fn fatal_on_err(fatal: &FatalStop, r: std::io::Result<()>, what: &str) {
    if let Err(e) = r {
        fatal.stop_here(format!("{what} sync failed, durability unknown: {e}"));
    }
}

/// Rewrites `j` from `snapshot`; whether the new journal is in place.
fn compact(fatal: &FatalStop, j: &mut Journal, snapshot: &[Vec<u8>], what: &str) -> bool {
    let before = j.bytes();
    match j.rewrite(snapshot.iter().map(|r| r.as_slice())) {
        Ok(()) => {
            tracing::info!(before, after = j.bytes(), "{what} journal compacted");
            true
        }
        Err(journal::Rewrite::Kept(e)) => {
            tracing::warn!(error = %e, "{what} journal compaction failed; keeping the old one");
            false
        }
        Err(journal::Rewrite::Broken(e)) => {
            fatal_on_err(fatal, Err(e), &format!("{what} journal"));
            false
        }
    }
}

/// Reads a PEM P-256 private key (PKCS#8, as Apple's .p8, or SEC1).
pub fn load_p256(path: &Path) -> anyhow::Result<p256::ecdsa::SigningKey> {
    use p256::pkcs8::DecodePrivateKey;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(&text) {
        return Ok(k);
    }
    let sk = p256::SecretKey::from_sec1_pem(&text)
        .map_err(|_| anyhow::anyhow!("{}: not a PEM P-256 private key", path.display()))?;
    Ok(sk.into())
}

/// Reads an FCM service-account JSON file: (key, client email, project id, token URI).
pub fn load_service_account(
    path: &Path,
) -> anyhow::Result<(ring::signature::RsaKeyPair, String, String, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let field = |k: &str| -> anyhow::Result<String> {
        v[k].as_str()
            .map(str::to_string)
            .with_context(|| format!("{}: no `{k}`", path.display()))
    };
    let key = providers::rsa_key_from_pem(&field("private_key")?)
        .with_context(|| format!("{}: private_key", path.display()))?;
    Ok((
        key,
        field("client_email")?,
        field("project_id")?,
        field("token_uri")?,
    ))
}
