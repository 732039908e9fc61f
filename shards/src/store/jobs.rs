//! Blocking store work handed off the shard's core: group commits (`SyncJob`, run by the driver as io_uring
//! fdatasyncs), the next segment made ahead (`SegmentJob`) and the deletion of reclaimed segments
//! (`RemovalJob`), one `StoreJob` at a time on the executor's blocking thread.

use super::*;

/// The group commit job of a log over backend `B`.
pub type SyncJobOf<B> = SyncJob<<<B as Backend>::Seg as Segment>::Target>;

/// A group commit handed off the shard's core ([`Log::begin_sync`]).
#[derive(Debug)]
pub struct SyncJob<T> {
    /// One per segment written since the last commit; all must sync.
    pub targets: Vec<T>,
    pub(super) upto: u64,
}

impl<T: SyncTarget> SyncJob<T> {
    /// The append sequence this commit makes durable.
    pub fn upto(&self) -> u64 {
        self.upto
    }

    /// Syncs every target on the calling thread (blocking).
    pub fn run(self) -> std::io::Result<()> {
        for t in self.targets {
            t.sync()?;
        }
        Ok(())
    }
}

/// The segment-making job of a log over backend `B`.
pub type SegmentJobOf<B> = SegmentJob<<B as Backend>::Maker>;

/// The making of the next segment, handed off the shard's core ([`Log::take_segment_job`]):
/// create, reserve, write the header, sync, rename and sync the directory, wherever it runs.
#[derive(Debug)]
pub struct SegmentJob<M> {
    pub(super) seq: u64,
    pub(super) len: usize,
    pub(super) header: [u8; SEGMENT_HEADER_BYTES],
    pub(super) maker: M,
}

impl<M: SegmentMaker> SegmentJob<M> {
    /// The number of the segment it makes.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Makes the segment on the calling thread (blocking); its number and the outcome, for
    /// [`Log::on_segment`].
    pub fn run(mut self) -> (u64, std::io::Result<M::Seg>) {
        let made = self.maker.make(self.seq, self.len, &self.header);
        (self.seq, made)
    }
}

/// The deletion of reclaimed segments, handed off the shard's core ([`Log::take_removal_job`]):
/// unlink each file, then one directory sync.
#[derive(Debug)]
pub struct RemovalJob<M> {
    pub(super) seqs: Vec<u64>,
    pub(super) maker: M,
}

impl<M: SegmentMaker> RemovalJob<M> {
    pub fn seqs(&self) -> &[u64] {
        &self.seqs
    }

    /// Deletes the segments on the calling thread (blocking); the numbers and the outcome, for
    /// [`Log::on_removed`].
    pub fn run(mut self) -> (Vec<u64>, std::io::Result<()>) {
        let done = self.maker.remove(&self.seqs);
        (self.seqs, done)
    }
}

/// The removal job of a log over backend `B`.
pub type RemovalJobOf<B> = RemovalJob<<B as Backend>::Maker>;

/// Blocking store work the shard hands off its core, one at a time: the next segment, or the
/// deletion of reclaimed ones.
#[derive(Debug)]
pub enum StoreJob<M> {
    Make(SegmentJob<M>),
    Remove(RemovalJob<M>),
}

/// What a [`StoreJob`] came to.
#[derive(Debug)]
pub enum StoreJobDone<S> {
    Made(u64, std::io::Result<S>),
    Removed(Vec<u64>, std::io::Result<()>),
}

/// The store job of a log over backend `B`, and its outcome.
pub type StoreJobOf<B> = StoreJob<<B as Backend>::Maker>;

pub type StoreJobDoneOf<B> = StoreJobDone<<B as Backend>::Seg>;

impl<M: SegmentMaker> StoreJob<M> {
    /// Runs it on the calling thread (blocking).
    pub fn run(self) -> StoreJobDone<M::Seg> {
        match self {
            StoreJob::Make(j) => {
                let (seq, made) = j.run();
                StoreJobDone::Made(seq, made)
            }
            StoreJob::Remove(j) => {
                let (seqs, done) = j.run();
                StoreJobDone::Removed(seqs, done)
            }
        }
    }

    /// The outcome of a job that never ran (it could not be queued).
    pub fn not_run(self, why: &str) -> StoreJobDone<M::Seg> {
        match self {
            StoreJob::Make(j) => {
                StoreJobDone::Made(j.seq, Err(std::io::Error::other(why.to_string())))
            }
            StoreJob::Remove(j) => {
                StoreJobDone::Removed(j.seqs, Err(std::io::Error::other(why.to_string())))
            }
        }
    }
}

impl<B: Backend> Log<B> {
    /// The making of the next segment, to run off the shard's core, as soon as a segment is
    /// active: one spare is kept ready, so that the roll never waits for a file to be created,
    /// reserved and synced on the core (a busy shard's blocking-thread completions came back
    /// 10–27 ms late: making it only at half a 4 MiB segment, filling at 60 MB/s, was too late). `None` while a
    /// spare is ready or being made, when there is no room for another segment (the roll then
    /// reports the store full as before), or after a failed making, for a second.
    pub fn take_segment_job(&mut self, now_unix_s: u64) -> Option<SegmentJobOf<B>> {
        if self.failed
            || self.spare.is_some()
            || self.spare_pending.is_some()
            || now_unix_s < self.spare_retry_unix_s
        {
            return None;
        }
        self.active?;
        if !self.segments_fit(self.segment_bytes(), false) {
            return None;
        }
        // One above the next number: a roll that must make its segment on the core before the
        // spare is back takes the next number, and the spare, above it, stays usable.
        let seq = self.next_segment + 1;
        if seq > SEGMENT_SEQ_MAX {
            return None;
        }
        self.spare_pending = Some(seq);
        // Counted while it is made, so that no roll meanwhile takes the disk past its budget.
        self.disk_bytes += self.segment_bytes();
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        format::encode_segment_header(&mut header, self.shard, seq, now_unix_s);
        Some(SegmentJob {
            seq,
            len: self.limits.segment_bytes,
            header,
            maker: self.backend.maker(),
        })
    }

    /// The outcome of a [`Log::take_segment_job`]. The segment becomes the spare the next roll
    /// takes, unless two segments were made on the core meanwhile (the spare's lower number
    /// would put its records before the newer one's on replay): then its file is removed.
    pub fn on_segment(
        &mut self,
        now_unix_s: u64,
        seq: u64,
        made: std::io::Result<B::Seg>,
    ) -> Result<(), StoreError> {
        if self.spare_pending != Some(seq) {
            return Ok(());
        }
        self.spare_pending = None;
        // Whatever became of it, its number is never offered again.
        self.next_segment = self.next_segment.max(seq + 1);
        match made {
            Ok(seg) if self.segments.keys().all(|s| *s < seq) => {
                self.spare = Some((seq, seg));
                Ok(())
            }
            Ok(seg) => {
                // Two rolls made their segments on the core meanwhile: a newer one exists.
                drop(seg);
                self.backend.remove(seq).map_err(StoreError::Io)?;
                self.disk_bytes -= self.segment_bytes();
                Ok(())
            }
            Err(_) => {
                // The roll makes its segment on the core, as before, and reports what fails.
                self.disk_bytes -= self.segment_bytes();
                self.spare_retry_unix_s = now_unix_s + 1;
                Ok(())
            }
        }
    }

    /// The deletion of the segments reclaimed since the last one, to run off the shard's core;
    /// `None` while one is out, when nothing waits, or after a failed one (until the next start).
    pub fn take_removal_job(&mut self) -> Option<RemovalJobOf<B>> {
        if self.removing.is_some() || self.doomed.is_empty() || self.removal_failed {
            return None;
        }
        let doomed = std::mem::take(&mut self.doomed);
        let seqs = doomed.keys().copied().collect();
        self.removing = Some(doomed);
        Some(RemovalJob {
            seqs,
            maker: self.backend.maker(),
        })
    }

    /// The outcome of a [`Log::take_removal_job`]: the segments are gone (their bytes free, and
    /// segments whose tombstones pointed into them may go now). A failure is not retried in
    /// this run: a directory `fsync` that failed once may succeed later without the unlinks
    /// it covered being durable, so the segments stay counted as present (and their bytes as
    /// used) until the next start reclaims them again; no later removal is handed out either.
    pub fn on_removed(&mut self, seqs: &[u64], done: &std::io::Result<()>) {
        let Some(removing) = self.removing.take() else {
            return;
        };
        debug_assert!(removing.keys().copied().eq(seqs.iter().copied()));
        if done.is_ok() {
            self.segments_removed += removing.len() as u64;
            let freed: u64 = removing.values().sum();
            self.disk_bytes = self
                .disk_bytes
                .checked_sub(freed)
                .expect("the disk use covers every segment being removed");
            // What waited for these segments to be gone may go now.
            let _ = self.reclaim();
        } else {
            self.doomed.extend(removing);
            self.removal_failed = true;
        }
    }

    /// Whether a removal failed in this run (no more are handed out until the next start).
    pub fn removal_failed(&self) -> bool {
        self.removal_failed
    }

    /// Reclaimed segments deleted so far.
    pub fn segments_removed(&self) -> u64 {
        self.segments_removed
    }

    /// Reclaimed segments whose files are not deleted yet.
    pub fn segments_awaiting_removal(&self) -> usize {
        self.doomed.len() + self.removing.as_ref().map_or(0, BTreeMap::len)
    }

    /// Segments the rolls took made ahead (off the core), and made on the core.
    pub fn segments_made(&self) -> (u64, u64) {
        (self.segments_ahead, self.segments_on_core)
    }
}
