//! The simulated node process: its shards and disks, the links between its cores, the
//! connections' pipes, ticks, crashes and disk faults.

use super::*;

/// One node process: its shards, each with a disk that outlives the process, and the FIFO links
/// between its cores.
pub(super) struct Node {
    pub(super) shards: Vec<Shard<MemBackend>>,
    pub(super) disks: Vec<MemBackend>,
    /// Batches in flight from core `i` to core `j`, at `i * shards + j`.
    pub(super) links: Vec<VecDeque<Vec<HopMsg>>>,
    /// Group commits handed off the shards (`Shard::take_sync`), as the driver's io_uring
    /// fdatasyncs: (shard, done at monotonic ms, the job, its number on that shard).
    pub(super) syncs: Vec<(usize, u64, SyncJobOf<MemBackend>, u64)>,
    /// Store jobs handed off the shards (`Shard::take_store_job`: segments made ahead, reclaimed
    /// segments deleted), as the driver's blocking thread runs them: done on the disk when
    /// taken, handed back later (a crash in between leaves the disk as the job left it):
    /// (shard, back at monotonic ms, outcome).
    pub(super) segment_jobs: Vec<(usize, u64, SimStoreJob)>,
    /// Per shard: group commits begun, and the number of the last one that completed.
    pub(super) commits_begun: Vec<u64>,
    pub(super) committed: Vec<u64>,
    pub(super) next_tick_ms: Vec<u64>,
    /// Injected write and sync failures that fired, per shard's disk (they outlive the
    /// process).
    pub(super) disk_failures: Vec<u64>,
    /// (shard, conn) → wire.
    pub(super) wires: AHashMap<(usize, ConnId), usize>,
}

impl Node {
    pub(super) fn start(
        cfg: &SimConfig,
        disks: Vec<MemBackend>,
        disk_failures: Vec<u64>,
        service: &Arc<service::Queue>,
        media: &media::Media,
        now: Now,
    ) -> Result<Node, String> {
        let mut shards = Vec::with_capacity(cfg.shards);
        for (i, disk) in disks.iter().enumerate() {
            let scfg = shard_config(cfg, i);
            let (log, _recovery) = Log::open(
                disk.clone(),
                scfg.shard,
                store_limits(),
                cfg.policy,
                now.unix_s,
            )
            .map_err(|e| format!("shard {i}'s store did not reopen: {e}"))?;
            let sink: Arc<dyn crate::service::ServiceSink> = service.clone();
            shards.push(
                Shard::on_backend(scfg, Arc::new(ShardMetrics::default()))
                    .with_store(log)
                    .with_service(sink)
                    .with_media(media.sinks()),
            );
        }
        Ok(Node {
            shards,
            disks,
            syncs: Vec::new(),
            segment_jobs: Vec::new(),
            commits_begun: vec![0; cfg.shards],
            committed: vec![0; cfg.shards],
            links: (0..cfg.shards * cfg.shards)
                .map(|_| VecDeque::new())
                .collect(),
            next_tick_ms: vec![now.mono_ms; cfg.shards],
            disk_failures,
            wires: AHashMap::new(),
        })
    }
}

/// A store job in the simulator: run when taken (its outcome waits to be handed back), or
/// waiting to run when it completes.
#[derive(Debug)]
pub(super) enum SimStoreJob {
    Done(StoreJobDoneOf<MemBackend>),
    Waiting(StoreJobOf<MemBackend>),
}

impl Sim {
    /// Collects everything shard `s` produced: hop batches onto the links, output onto wires,
    /// resumed readers, forced closes. Repeats until it produces nothing more.
    /// Runs the store jobs shard `s` hands out, if any (on the disk now; the shard hears of each
    /// 0–9 ms later).
    fn take_segment_job(&mut self, s: usize) {
        while let Some(job) = self.node.shards[s].take_store_job() {
            // A segment is made on the disk now; a deletion lands when the job completes (a
            // crash before leaves the files, as a blocking thread that had not got to them).
            let job = match job {
                StoreJob::Make(_) => SimStoreJob::Done(job.run()),
                StoreJob::Remove(_) => SimStoreJob::Waiting(job),
            };
            let back = self.now.mono_ms + self.rng.below(10);
            self.node.segment_jobs.push((s, back, job));
        }
    }

    pub(super) fn pump(&mut self, s: usize) {
        // As the driver's `after_work`: a segment that became active gets its successor made.
        self.take_segment_job(s);
        let n = self.cfg.shards;
        let fired = {
            let mut d = self.node.disks[s].disk.borrow_mut();
            let write = d.faults.fail_write.is_some_and(|at| d.faults.writes >= at);
            let sync = d.faults.fail_sync.is_some_and(|at| d.faults.syncs >= at);
            if write {
                d.faults.fail_write = None;
            }
            if sync {
                d.faults.fail_sync = None;
            }
            write || sync
        };
        if fired {
            self.node.disk_failures[s] += 1;
            self.trace(|| format!("shard {s}: a write or sync failed"));
        }
        loop {
            let mut moved = false;
            let pending: Vec<usize> = self.node.shards[s].outbox_pending().collect();
            for p in pending {
                if let Some(b) = self.node.shards[s].take_outbox(p) {
                    self.node.links[s * n + p].push_back(b);
                    moved = true;
                }
            }
            for conn in self.node.shards[s].take_force_close() {
                if let Some(&w) = self.node.wires.get(&(s, conn)) {
                    self.cut_wire(w);
                    moved = true;
                }
            }
            let mut ready = Vec::new();
            self.node.shards[s].take_ready(&mut ready);
            for conn in ready {
                match self.node.wires.get(&(s, conn)).copied() {
                    Some(w) if self.wires[w].writing.is_some() => self.wires[w].write_wanted = true,
                    Some(w) => self.write(w),
                    None => {
                        // Gone from the simulator's view already: what the writer task does
                        // with a connection whose socket closed.
                        let out = self.node.shards[s].take_output(conn);
                        let len = out.bytes.as_ref().map_or(0, Bytes::len);
                        self.node.shards[s].on_written(self.now, conn, len);
                    }
                }
                moved = true;
            }
            let mut resumed = Vec::new();
            self.node.shards[s].take_resumed(&mut resumed);
            for conn in resumed {
                if let Some(&w) = self.node.wires.get(&(s, conn)) {
                    self.wires[w].held = false;
                }
            }
            if !moved {
                self.note_acks(s);
                return;
            }
        }
    }

    /// The driver's writer task for wire `w`: takes the shard's output and writes it; the write
    /// completes (`on_written`) once the socket has room for it, that is once the client has
    /// read enough ([`net::SOCKET_BUFFER_BYTES`]); until then the stall clock runs.
    pub(super) fn write(&mut self, w: usize) {
        let (s, conn) = (self.wires[w].shard, self.wires[w].conn);
        debug_assert!(self.wires[w].writing.is_none());
        self.wires[w].write_wanted = false;
        let out = self.node.shards[s].take_output(conn);
        let len = out.bytes.as_ref().map_or(0, Bytes::len);
        if let Some(b) = out.bytes {
            if self.wires[w].state == WireState::ClientClosing {
                // Nobody reads: the bytes go nowhere, as into a socket the peer reset.
            } else {
                let d = self.delay();
                self.wires[w].down.push(self.now.mono_ms, d, b);
            }
            self.node.shards[s].on_write_blocked(self.now, conn);
        }
        self.wires[w].writing = Some((len, out.close));
        self.complete_write(w);
    }

    /// Completes wire `w`'s write in progress if the socket took it, and starts the next.
    pub(super) fn complete_write(&mut self, w: usize) {
        let wire = &self.wires[w];
        let Some((len, close)) = wire.writing else {
            return;
        };
        let open = matches!(wire.state, WireState::Open | WireState::ClientClosing);
        if !open || wire.down.backlog() > net::SOCKET_BUFFER_BYTES {
            return;
        }
        let (s, conn) = (wire.shard, wire.conn);
        self.wires[w].writing = None;
        self.node.shards[s].on_written(self.now, conn, len);
        if close {
            self.node_closed(w);
        } else if self.wires[w].write_wanted || len > 0 {
            // More may have queued while this one was in flight.
            self.write(w);
        }
        self.pump(s);
    }

    /// Notes the acks shard `s` has carried out (their blob left its index): a commit begun
    /// after now makes them durable.
    fn note_acks(&mut self, s: usize) {
        if self.pending_acks.is_empty() {
            return;
        }
        let shards = self.cfg.shards;
        let begun = self.node.commits_begun[s];
        // On a fatal shard an ack's own sync may have been the one that failed: never durable
        // as made.
        let failures = if self.node.shards[s].fatal().is_some() {
            u64::MAX
        } else {
            self.node.disk_failures[s]
        };
        let Some(log) = self.node.shards[s].store() else {
            return;
        };
        let msgs = &mut self.oracle.msgs;
        self.pending_acks.retain(|id| {
            let Some(m) = msgs.get_mut(id) else {
                return false;
            };
            let Some(pos) = m.pos else { return false };
            if m.dest.owner(shards) != s || log.holds(&m.dest, Pos::from_u64(pos)) {
                return true;
            }
            m.ack_processed = Some((begun, failures));
            false
        });
    }

    /// The node closed wire `w` after its last write: the shard forgets it now; the client
    /// reads what is in flight, then sees the end.
    pub(super) fn node_closed(&mut self, w: usize) {
        let wire = &mut self.wires[w];
        if wire.state == WireState::Closed {
            return;
        }
        let (s, conn) = (wire.shard, wire.conn);
        wire.up.cut();
        if wire.state == WireState::ClientClosing {
            self.retire_wire(w);
        } else {
            wire.state = WireState::NodeClosing;
        }
        self.node.wires.remove(&(s, conn));
        self.node.shards[s].on_closed(conn);
        self.pump(s);
        self.finish_wire(w);
    }

    /// A node-closed wire whose last bytes the client has read is done.
    pub(super) fn finish_wire(&mut self, w: usize) {
        let wire = &self.wires[w];
        if wire.state == WireState::NodeClosing && wire.down.is_empty() {
            self.retire_wire(w);
        }
    }

    /// Wire `w` is gone at both ends: closed, its connected time counted, its client free to
    /// connect again.
    pub(super) fn retire_wire(&mut self, w: usize) {
        let wire = &mut self.wires[w];
        debug_assert_ne!(wire.state, WireState::Closed, "a wire retires once");
        wire.state = WireState::Closed;
        self.report.client_ms += self.now.mono_ms - wire.opened_ms;
        let c = wire.client;
        if self.clients[c].wire == Some(w) {
            self.clients[c].reset();
        }
    }

    /// Cuts wire `w` (a reset): both pipes lose what they carry, both ends see the close.
    pub(super) fn cut_wire(&mut self, w: usize) {
        let wire = &mut self.wires[w];
        if wire.state == WireState::Closed {
            return;
        }
        wire.up.cut();
        wire.down.cut();
        let (s, conn) = (wire.shard, wire.conn);
        let node_knows = wire.state != WireState::NodeClosing;
        self.retire_wire(w);
        if node_knows {
            self.node.wires.remove(&(s, conn));
            self.node.shards[s].on_closed(conn);
            self.pump(s);
        }
    }

    pub(super) fn cut_random(&mut self) {
        let open: Vec<usize> = (0..self.wires.len())
            .filter(|&w| self.wires[w].state != WireState::Closed)
            .collect();
        if open.is_empty() {
            return;
        }
        let w = open[self.rng.index(open.len())];
        self.report.cuts += 1;
        self.trace(|| format!("wire {w} cut"));
        self.cut_wire(w);
    }

    /// Delivers everything due now, one item at a time in a seeded order (each connection's
    /// bytes and each pair of cores' batches in their own FIFO order).
    pub(super) fn settle(&mut self) -> Result<(), String> {
        for _ in 0..SETTLE_MOVES_MAX {
            let now = self.now.mono_ms;
            let mut due: Vec<(u8, usize)> = Vec::new();
            for (w, wire) in self.wires.iter().enumerate() {
                let up_ok = matches!(wire.state, WireState::Open | WireState::ClientClosing);
                if up_ok && !wire.held && wire.up.due(now) {
                    due.push((0, w));
                }
                if up_ok && wire.state == WireState::ClientClosing && wire.up.is_empty() {
                    due.push((3, w));
                }
                let down_ok = matches!(wire.state, WireState::Open | WireState::NodeClosing);
                if down_ok && wire.down.due(now) && now >= wire.read_paused_until_ms {
                    due.push((1, w));
                }
                if wire.state == WireState::NodeClosing && wire.down.is_empty() {
                    due.push((4, w));
                }
            }
            for (l, q) in self.node.links.iter().enumerate() {
                if !q.is_empty() {
                    due.push((2, l));
                }
            }
            for (k, (_, at, ..)) in self.node.syncs.iter().enumerate() {
                if *at <= now {
                    due.push((5, k));
                }
            }
            for (k, (_, at, ..)) in self.node.segment_jobs.iter().enumerate() {
                if *at <= now {
                    due.push((7, k));
                }
            }
            if !self.service.queue.is_empty() {
                due.push((6, 0));
            }
            if let Some(i) = self.service.answer_due(now) {
                due.push((8, i));
            }
            if let Some(s) = self.media.busy_core(self.rng.index(self.cfg.shards)) {
                due.push((9, s));
            }
            if due.is_empty() {
                return Ok(());
            }
            // A crash can come between any two moves too (between an append and its commit,
            // between a commit and its completion), not only between steps.
            if self.faults && self.rng.below(20_000) < self.cfg.crash_per_mille {
                let power = self.rng.chance(500);
                self.crash(power)?;
                continue;
            }
            let (kind, i) = due[self.rng.index(due.len())];
            match kind {
                0 => self.deliver_up(i),
                1 => {
                    let c = self.wires[i].client;
                    if let Some(b) = self.wires[i].down.pop() {
                        if self.clients[c].wire == Some(i) {
                            self.client_bytes(c, i, &b)?;
                        }
                    }
                    self.complete_write(i);
                    self.finish_wire(i);
                }
                2 => {
                    let n = self.cfg.shards;
                    let (to, batch) = (i % n, self.node.links[i].pop_front());
                    if let Some(b) = batch {
                        self.node.shards[to].on_hops(self.now, b);
                        self.pump(to);
                    }
                }
                3 => {
                    // The client's close reaches the node after its last bytes.
                    let (s, conn) = (self.wires[i].shard, self.wires[i].conn);
                    self.retire_wire(i);
                    self.node.wires.remove(&(s, conn));
                    self.node.shards[s].on_closed(conn);
                    self.pump(s);
                }
                5 => {
                    // A group commit completes: the disk took it (or failed it).
                    let (s, _, job, number) = self.node.syncs.swap_remove(i);
                    let outcome = job.run();
                    if outcome.is_ok() {
                        self.node.committed[s] = self.node.committed[s].max(number);
                    }
                    self.node.shards[s].on_synced(self.now, outcome);
                    self.pump(s);
                    self.fail_stop_if_fatal()?;
                }
                6 => self.serve_one()?,
                8 => self.provider_answers(i)?,
                9 => self.media_serve(i)?,
                7 => {
                    // A segment made ahead is ready (or its making failed), or reclaimed segments
                    // are deleted.
                    let (s, _, job) = self.node.segment_jobs.swap_remove(i);
                    let done = match job {
                        SimStoreJob::Done(done) => done,
                        SimStoreJob::Waiting(job) => job.run(),
                    };
                    self.trace(|| match &done {
                        StoreJobDone::Made(seq, made) => {
                            format!("shard {s}: spare segment {seq} made: {}", made.is_ok())
                        }
                        StoreJobDone::Removed(seqs, r) => {
                            format!("shard {s}: segments {seqs:?} deleted: {}", r.is_ok())
                        }
                    });
                    self.node.shards[s].on_store_job(self.now, done);
                    self.pump(s);
                }
                _ => self.finish_wire(i),
            }
        }
        Err("the node did not settle (livelock?)".into())
    }

    /// The shard reads one chunk from wire `w`, unless it holds the reader (backpressure).
    pub(super) fn deliver_up(&mut self, w: usize) {
        let (s, conn) = (self.wires[w].shard, self.wires[w].conn);
        if self.node.shards[s].hold_reader(conn) {
            self.wires[w].held = true;
            return;
        }
        if let Some(b) = self.wires[w].up.pop() {
            let pause = self.node.shards[s].on_bytes(self.now, conn, &b);
            debug_assert_eq!(pause, 0, "address limits are off in the simulation");
            self.pump(s);
        }
    }

    pub(super) fn tick_due(&mut self) -> Result<(), String> {
        for s in 0..self.cfg.shards {
            let sh = &self.node.shards[s];
            let sync_due = sh
                .store_sync_due_ms()
                .is_some_and(|t| t <= self.now.mono_ms);
            if sync_due || self.now.mono_ms >= self.node.next_tick_ms[s] {
                self.node.shards[s].on_tick(self.now);
                if let Some(job) = self.node.shards[s].take_sync(self.now) {
                    // The disk takes 0–4 ms; the shard serves on meanwhile.
                    let done = self.now.mono_ms + self.rng.below(5);
                    self.node.commits_begun[s] += 1;
                    let number = self.node.commits_begun[s];
                    self.node.syncs.push((s, done, job, number));
                }
                self.take_segment_job(s);
                self.node.next_tick_ms[s] = self.now.mono_ms + TICK_MS;
                self.pump(s);
            }
        }
        self.service_tick()?;
        self.media_tick();
        self.fail_stop_if_fatal()
    }

    /// Fail-stop: a shard that met a failed sync stops the node.
    pub(super) fn fail_stop_if_fatal(&mut self) -> Result<(), String> {
        if self.node.shards.iter().any(|s| s.fatal().is_some()) {
            // Fail-stop: the node exits (the kernel may have dropped what the failed sync
            // held); its supervisor starts it again on the same disks.
            self.report.fatal_stops += 1;
            self.crash(true)?;
        }
        Ok(())
    }

    pub(super) fn disk_fault(&mut self) {
        let s = self.rng.index(self.cfg.shards);
        let mut d = self.node.disks[s].disk.borrow_mut();
        let ahead = 1 + self.rng.below(3);
        let sync = self.rng.chance(500);
        if sync {
            d.faults.fail_sync = Some(d.faults.syncs + ahead);
        } else {
            d.faults.fail_write = Some(d.faults.writes + ahead);
        }
        drop(d);
        self.report.disk_faults += 1;
        self.trace(|| {
            format!(
                "shard {s}: {} {ahead} from now fails",
                if sync { "sync" } else { "write" }
            )
        });
    }

    /// The node process dies and starts again on the same disks. `power`: the machine lost
    /// power too (unsynced writes survive whole, torn or not at all); otherwise kill -9 (the page
    /// cache survives: every write lands).
    pub(super) fn crash(&mut self, power: bool) -> Result<(), String> {
        self.report.crashes += 1;
        self.trace(|| {
            format!(
                "node crash ({})",
                if power { "power loss" } else { "kill -9" }
            )
        });
        // Which acks the node carried out (seen by `note_acks`) this crash keeps: kill -9 keeps
        // every write; power loss keeps a tombstone once a commit begun after it completed, or,
        // under the per-append policy (every ack synced as it is made), unless the disk failed
        // since (that sync may have been the one).
        let shards = self.cfg.shards;
        let per_append = self.cfg.policy == FsyncPolicy::Always;
        for m in self.oracle.msgs.values_mut() {
            if let Some((begun, failures)) = m.ack_processed.take() {
                let owner = m.dest.owner(shards);
                let synced_as_made = per_append && self.node.disk_failures[owner] == failures;
                if !power || synced_as_made || self.node.committed[owner] > begun {
                    m.ack_durable = true;
                }
            }
        }
        self.pending_acks.clear();
        // Every connection dies with the process.
        for w in 0..self.wires.len() {
            let wire = &mut self.wires[w];
            if wire.state != WireState::Closed {
                wire.up.cut();
                wire.down.cut();
                self.retire_wire(w);
            }
        }
        let disks: Vec<MemBackend> = self.node.disks.clone();
        // Drop the shards (and their logs) before the disks change under them.
        self.node.shards.clear();
        for d in &disks {
            let mut disk = d.disk.borrow_mut();
            disk.faults.fail_sync = None;
            disk.faults.fail_write = None;
            if power {
                let mut r = Rng::new(self.rng.next_u64());
                disk.crash(|_| u8::try_from(r.below(3)).expect("below 3"));
            } else {
                disk.crash(|_| 0);
            }
        }
        let failures = std::mem::take(&mut self.node.disk_failures);
        self.media.open(self.cfg.shards, self.now.unix_s)?;
        self.node = Node::start(
            &self.cfg,
            disks,
            failures,
            &self.service.queue,
            &self.media,
            self.now,
        )?;
        self.restart_service()
    }
}
