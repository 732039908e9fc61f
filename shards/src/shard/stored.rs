//! The store side of the owner core: appending packets for offline dests, the group commit
//! that releases their `Stored` answers, expiry, acks.

use super::*;

/// The message that stops the node when the store cannot sync.
pub(super) fn sync_failure(e: &dyn std::fmt::Display) -> String {
    format!("store fsync failed, durability unknown: {e}")
}

/// What the store did with a packet.
#[derive(Debug)]
pub(super) enum Stored {
    Accepted,
    Refused(SendStatus),
    /// The dest or the store is under pressure and the packet carried no valid pass: the
    /// sender must solve a puzzle of this effort (the caller tells it, or delivers live).
    Puzzle(u32),
    Fatal,
}

/// A `Stored` (or, to a stranger, `Accepted`) answer held until the sync covering its append.
#[derive(Debug)]
pub(super) struct PendingStored {
    /// The append's sequence number in the log.
    pub(super) seq: u64,
    pub(super) to: ConnRef,
    pub(super) dest: Dest,
    pub(super) msg_id: u64,
    pub(super) status: SendStatus,
}

impl<B: Backend> Shard<B> {
    /// Gives this shard its store, opened and replayed before the shard serves: the node's mmap
    /// log, or the simulator's in-memory disk ([`Shard::on_backend`]).
    pub fn with_store(mut self, log: Log<B>) -> Self {
        assert!(
            self.store.is_none() && self.pending_stored.is_empty(),
            "a shard gets its store once, before it serves"
        );
        self.metrics
            .store_blobs
            .store(log.blobs() as u64, std::sync::atomic::Ordering::Relaxed);
        self.store = Some(log);
        self
    }

    /// The store, for what the simulator checks against it.
    pub fn store(&self) -> Option<&Log<B>> {
        self.store.as_ref()
    }

    /// Syncs the store now (the drain on SIGTERM) and answers `Stored` to the senders that sync
    /// covers, so a stop acknowledges everything it made durable.
    pub fn flush_store(&mut self) -> Result<(), String> {
        let Some(log) = self.store.as_mut() else {
            return Ok(());
        };
        log.sync_now().map_err(|e| e.to_string())?;
        let durable = log.durable_seq();
        self.release_stored(durable);
        Ok(())
    }

    /// Stores a packet for a dest nobody listens to (or one in hand-over). `Accepted`: the
    /// sender is answered (now, or at the group commit); `Refused`: the caller answers or
    /// delivers; `Fatal`: the store failed its sync and the node stops.
    pub(super) fn store_packet(&mut self, now: Now, p: &Packet) -> Stored {
        let (dest, from, msg_id, flags, audience) = (p.dest, p.from, p.msg_id, p.flags, p.audience);
        // Under pressure the packet must carry a puzzle answer or the dest's capability first.
        let Some(log) = self.store.as_mut() else {
            ShardMetrics::inc(&self.metrics.packets_no_subscriber);
            return Stored::Refused(SendStatus::NoSubscriber);
        };
        if let Gate::Puzzle(effort) =
            self.puzzle
                .admit(now.unix_s, &dest, log.pressure(&dest), p.passed.as_deref())
        {
            ShardMetrics::inc(&self.metrics.puzzles_required);
            return Stored::Puzzle(effort);
        }
        let ttl = if p.ttl_s == 0 {
            u64::MAX
        } else {
            u64::from(p.ttl_s)
        };
        let appended = log.append_from(now.unix_s, dest, msg_id, ttl, &p.payload, Some(p.source));
        self.metrics.store_sources.store(
            log.sources_len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let m = &self.metrics;
        let status = match appended {
            Ok(a) => {
                if !a.duplicate {
                    ShardMetrics::inc(&m.store_appends);
                    ShardMetrics::inc(&m.store_blobs);
                    if a.source == Some(crate::store::fair::Source::Other) {
                        ShardMetrics::inc(&m.store_sources_overflow);
                    }
                    if self.table.lookup(&dest).is_none() {
                        self.maybe_wake(now, dest);
                    }
                }
                let Some(answer) = audience.success(SendStatus::Stored, flags) else {
                    // A stranger without FLAG_ACK: no answer, as for a live delivery.
                    return Stored::Accepted;
                };
                let durable = self.store.as_ref().map_or(u64::MAX, |l| l.durable_seq());
                if a.seq > durable
                    && !crate::mutants::active(crate::mutants::Mutant::StoredBeforeDurable)
                {
                    // Answered once the group commit covers it (on_tick).
                    self.pending_stored.push_back(PendingStored {
                        seq: a.seq,
                        to: from,
                        dest,
                        msg_id,
                        status: answer,
                    });
                } else {
                    self.reply(from, dest, msg_id, answer);
                }
                return Stored::Accepted;
            }
            Err(StoreError::DestQuota) => {
                ShardMetrics::inc(&m.store_refused_quota);
                SendStatus::QuotaExceeded
            }
            Err(StoreError::SourceDestShare) => {
                ShardMetrics::inc(&m.store_refused_source_dest_share);
                SendStatus::QuotaExceeded
            }
            Err(StoreError::SourceShare) => {
                ShardMetrics::inc(&m.store_refused_source_share);
                SendStatus::StoreFull
            }
            Err(StoreError::SourcePressure) => {
                ShardMetrics::inc(&m.store_refused_pressure);
                SendStatus::StoreFull
            }
            Err(StoreError::SyncFailed(e)) => {
                self.fatal = Some(sync_failure(&e));
                return Stored::Fatal;
            }
            Err(e) => {
                if !matches!(e, StoreError::StoreFull) {
                    tracing::warn!(error = %e, "store append failed");
                }
                ShardMetrics::inc(&m.store_refused_full);
                SendStatus::StoreFull
            }
        };
        Stored::Refused(status)
    }

    /// When the store's next group commit is due (monotonic ms), while appends wait for one: the
    /// driver's tick wakes for it then instead of ticking at the fsync interval all the time.
    pub fn store_sync_due_ms(&self) -> Option<u64> {
        self.store.as_ref().and_then(Log::sync_due_ms)
    }

    /// The group commit that is due now, if any, handed off this core: the driver issues its
    /// targets (an io_uring `fdatasync` each) and answers [`Shard::on_synced`]; the shard goes
    /// on serving meanwhile (appends made now wait for the next commit). Call after
    /// [`Shard::on_tick`].
    pub fn take_sync(&mut self, now: Now) -> Option<SyncJobOf<B>> {
        let log = self.store.as_mut()?;
        match log.begin_sync(now.mono_ms) {
            Ok(Some(job)) => Some(job),
            Ok(None) => {
                // Nothing due, or the commit ran here (it could not leave the core).
                let durable = log.durable_seq();
                self.release_stored(durable);
                None
            }
            Err(e) => {
                self.fatal = Some(sync_failure(&e));
                None
            }
        }
    }

    /// The outcome of the group commit [`Shard::take_sync`] handed out: on success the `Stored`
    /// answers it covers go out; a failure makes the shard fatal.
    pub fn on_synced(&mut self, now: Now, outcome: std::io::Result<()>) {
        self.now = now;
        let Some(log) = self.store.as_mut() else {
            return;
        };
        if let Err(e) = log.finish_sync(outcome) {
            self.fatal = Some(sync_failure(&e));
            return;
        }
        self.metrics
            .store_syncs
            .store(log.syncs(), std::sync::atomic::Ordering::Relaxed);
        let durable = log.durable_seq();
        self.release_stored(durable);
    }

    /// Blocking store work to run off the core: the making of the next segment
    /// (`Log::take_segment_job`) first, else the deletion of reclaimed segments
    /// (`Log::take_removal_job`); dated by the last event the shard handled (the driver asks
    /// after every piece of work and reads no clock for it).
    pub fn take_store_job(&mut self) -> Option<crate::store::StoreJobOf<B>> {
        let now = self.now.unix_s;
        let log = self.store.as_mut()?;
        if let Some(job) = log.take_segment_job(now) {
            return Some(crate::store::StoreJob::Make(job));
        }
        log.take_removal_job().map(crate::store::StoreJob::Remove)
    }

    /// The outcome of a [`Shard::take_store_job`]: the spare the next roll takes, or segments
    /// deleted.
    pub fn on_store_job(&mut self, now: Now, done: crate::store::StoreJobDoneOf<B>) {
        self.now = now;
        let Some(log) = self.store.as_mut() else {
            return;
        };
        match done {
            crate::store::StoreJobDone::Made(seq, made) => {
                if let Err(e) = log.on_segment(now.unix_s, seq, made) {
                    tracing::warn!(error = %e, "store: an unused segment could not be removed");
                }
            }
            crate::store::StoreJobDone::Removed(seqs, done) => {
                if let Err(e) = &done {
                    tracing::error!(error = %e, segments = seqs.len(), "store: reclaimed segments could not be deleted; they keep their space until the next start (ferry_store_segments_awaiting_removal)");
                }
                log.on_removed(&seqs, &done);
            }
        }
    }

    /// Expiry, and the `Stored` replies a sync covers (also the shutdown's, `flush_store`).
    pub(super) fn store_tick(&mut self, now: Now) {
        let Some(log) = self.store.as_mut() else {
            return;
        };
        let (ahead, on_core) = log.segments_made();
        let m = &self.metrics;
        m.store_segments_ahead
            .store(ahead, std::sync::atomic::Ordering::Relaxed);
        m.store_segments_on_core
            .store(on_core, std::sync::atomic::Ordering::Relaxed);
        m.store_segments_removed
            .store(log.segments_removed(), std::sync::atomic::Ordering::Relaxed);
        m.store_segments_awaiting_removal.store(
            log.segments_awaiting_removal() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let durable = log.durable_seq();
        if now.unix_s >= self.last_expire_unix_s + STORE_EXPIRE_INTERVAL_S {
            self.last_expire_unix_s = now.unix_s;
            match log.expire(now.unix_s) {
                Ok(n) => {
                    if n > 0 {
                        ShardMetrics::add(&self.metrics.store_expired, n as u64);
                    }
                    self.metrics
                        .store_blobs
                        .store(log.blobs() as u64, std::sync::atomic::Ordering::Relaxed);
                    self.metrics.store_sources.store(
                        log.sources_len() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    // Hand-overs whose blobs all expired are over.
                    let held: Vec<Dest> = self.handover.iter().copied().collect();
                    let still = log.holding(&held, now.unix_s);
                    self.handover.retain(|d| still.contains(d));
                }
                Err(StoreError::SyncFailed(e)) => {
                    self.fatal = Some(sync_failure(&e));
                }
                Err(e) => tracing::warn!(error = %e, "store expiry failed"),
            }
        }
        self.release_stored(durable);
    }

    /// Answers `Stored` (or `Accepted`) to every sender whose append is covered by durable
    /// sequence `durable`.
    pub(super) fn release_stored(&mut self, durable: u64) {
        while self
            .pending_stored
            .front()
            .is_some_and(|p| p.seq <= durable)
        {
            if let Some(p) = self.pending_stored.pop_front() {
                self.reply(p.to, p.dest, p.msg_id, p.status);
            }
        }
    }

    /// Owner side of an `Ack`: each acknowledged blob gets its tombstone and leaves the index.
    pub(super) fn on_ack(&mut self, now: Now, items: Vec<(Dest, u64)>) {
        let Some(log) = self.store.as_mut() else {
            return;
        };
        for (dest, pos) in items {
            match log.ack(now.unix_s, &dest, Pos::from_u64(pos)) {
                Ok(true) => {
                    ShardMetrics::inc(&self.metrics.store_acks);
                    ShardMetrics::dec(&self.metrics.store_blobs);
                }
                Ok(false) => {}
                Err(StoreError::SyncFailed(e)) => {
                    self.fatal = Some(sync_failure(&e));
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "store ack failed"),
            }
        }
        self.metrics.store_sources.store(
            log.sources_len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}
