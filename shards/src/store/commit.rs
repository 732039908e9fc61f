//! Durability: the commit points of each `FsyncPolicy` (a sync per append, or group commits every
//! interval, begun here and completed off the core), and the sticky failure a failed sync leaves.

use super::*;

impl<B: Backend> Log<B> {
    /// Appends at or below this sequence number are durable under the policy.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    pub(super) fn sync_segment(&mut self, seq: u64) -> Result<(), StoreError> {
        self.check_failed()?;
        if let Some(s) = self.segments.get_mut(&seq) {
            if let Err(e) = s.seg.sync() {
                self.failed = true;
                return Err(StoreError::SyncFailed(e));
            }
        }
        Ok(())
    }

    pub(super) fn check_failed(&self) -> Result<(), StoreError> {
        if self.failed {
            Err(StoreError::SyncFailed(std::io::Error::other(
                "an earlier sync failed",
            )))
        } else {
            Ok(())
        }
    }

    /// Syncs now (group commit point), on the calling thread. An error is fatal for the node.
    /// Covers a group commit in flight too (its segments are synced whole).
    pub fn sync_now(&mut self) -> Result<(), StoreError> {
        self.check_failed()?;
        let synced = !self.dirty.is_empty() || self.in_flight.is_some();
        let flying: Vec<u64> = self
            .in_flight
            .as_ref()
            .map(|(_, segs)| segs.iter().copied().collect())
            .unwrap_or_default();
        for seq in flying {
            if let Some(s) = self.segments.get_mut(&seq) {
                if let Err(e) = s.seg.sync_all() {
                    self.failed = true;
                    return Err(StoreError::SyncFailed(e));
                }
            }
        }
        while let Some(&seq) = self.dirty.first() {
            if !crate::mutants::active(crate::mutants::Mutant::SkipSync) {
                self.sync_segment(seq)?;
            }
            self.dirty.remove(&seq);
        }
        self.syncs += u64::from(synced);
        self.durable_seq = self.next_seq - 1;
        Ok(())
    }

    /// Commit points so far that had something to sync (each syncs every dirty segment).
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// When the interval policy's next group commit is due (monotonic ms): only while appends
    /// wait for one and none is in flight (its completion comes first). `None`: nothing to
    /// sync, a commit in flight, or another policy.
    pub fn sync_due_ms(&self) -> Option<u64> {
        match self.policy {
            FsyncPolicy::Interval { ms } if !self.dirty.is_empty() && self.in_flight.is_none() => {
                Some(self.last_sync_ms.saturating_add(ms))
            }
            _ => None,
        }
    }

    /// Starts the group commit the interval policy calls for, without waiting for it: the
    /// returned job's targets sync every segment written since the last commit, off the
    /// caller's core, and [`Log::finish_sync`] with their outcome makes the appends up to
    /// [`SyncJob::upto`] durable. Appends and acks go on meanwhile (they wait for the next
    /// commit). `None`: not due, nothing to sync, or one already in flight.
    pub fn begin_sync(
        &mut self,
        now_ms: u64,
    ) -> Result<Option<SyncJob<<B::Seg as Segment>::Target>>, StoreError> {
        self.check_failed()?;
        let FsyncPolicy::Interval { ms } = self.policy else {
            return Ok(None);
        };
        if self.in_flight.is_some()
            || self.dirty.is_empty()
            || now_ms < self.last_sync_ms.saturating_add(ms)
        {
            return Ok(None);
        }
        self.last_sync_ms = now_ms;
        let segs = std::mem::take(&mut self.dirty);
        let mut targets = Vec::with_capacity(segs.len());
        let mut handed_off = Ok(());
        for seq in &segs {
            if crate::mutants::active(crate::mutants::Mutant::SkipSync) {
                continue;
            }
            if let Some(s) = self.segments.get_mut(seq) {
                match s.seg.sync_target() {
                    Ok(t) => targets.push(t),
                    Err(e) => {
                        handed_off = Err(e);
                        break;
                    }
                }
            }
        }
        let upto = self.next_seq - 1;
        self.in_flight = Some((upto, segs));
        if let Err(e) = handed_off {
            // No target (out of descriptors for a duplicate): nothing is lost yet, so the commit
            // runs here, on the caller's core, as it did before it could leave it (`sync_now`
            // syncs the in-flight segments whole: their dirty ranges went to the targets).
            tracing::warn!(error = %e, "a group commit could not leave the core; syncing on it");
            drop(targets);
            let done = self.sync_now();
            self.in_flight = None;
            done?;
            return Ok(None);
        }
        Ok(Some(SyncJob { targets, upto }))
    }

    /// The outcome of the group commit [`Log::begin_sync`] started (one is in flight at a time):
    /// on success the appends up to its [`SyncJob::upto`] are durable. A failure is fatal for the
    /// node (as for [`Log::sync_now`]).
    pub fn finish_sync(&mut self, outcome: std::io::Result<()>) -> Result<(), StoreError> {
        let (covered, _) = self
            .in_flight
            .take()
            .expect("finish_sync answers the commit begin_sync started");
        if let Err(e) = outcome {
            self.failed = true;
            return Err(StoreError::SyncFailed(e));
        }
        self.check_failed()?;
        self.syncs += 1;
        self.durable_seq = self.durable_seq.max(covered);
        // Segments this commit made clean may be reclaimed now.
        self.reclaim()
    }

    /// Runs the group commit the interval policy calls for on the calling thread
    /// ([`Log::begin_sync`], its targets, [`Log::finish_sync`]): tests and tools; the node's
    /// shards run the targets off their cores.
    pub fn poll_sync(&mut self, now_ms: u64) -> Result<(), StoreError> {
        if let Some(job) = self.begin_sync(now_ms)? {
            let outcome = job.run();
            self.finish_sync(outcome)?;
        }
        Ok(())
    }

    /// Whether something may have been written that no finished sync covers (appends or
    /// tombstones a power loss could take back): after a failed sync, always.
    pub fn has_unsynced(&self) -> bool {
        self.failed || !self.dirty.is_empty() || self.in_flight.is_some()
    }
}
