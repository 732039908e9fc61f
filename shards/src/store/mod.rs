//! The store-and-forward log of one shard (docs/STORAGE.md).
//!
//! Data flow: `append` writes a record to the active segment and indexes it under its dest →
//! `sync` (per the fsync policy) makes appends durable and advances `durable_seq`; a sender is told
//! "stored" only for appends at or below it → `drain` lists a dest's live blobs in order → `ack`
//! writes a tombstone and unindexes the blob → a segment whose blobs are all acked or expired,
//! and whose tombstones no longer matter, is deleted whole. `open` replays every segment: a torn
//! tail ends a segment, a corrupt record followed by valid ones is quarantined (skipped, counted),
//! and what an interrupted segment creation left (a temporary, an empty segment) is removed.
//!
//! The shard (shard.rs) drives it: offline sends are appended on the owner shard, `Stored` is
//! answered once `durable_seq` covers them, and drains and acks come through the protocol.

pub mod backend;
mod commit;
pub mod fair;
pub mod format;
mod jobs;
mod open;
mod reclaim;

pub use jobs::{
    RemovalJob, RemovalJobOf, SegmentJob, SegmentJobOf, StoreJob, StoreJobDone, StoreJobDoneOf,
    StoreJobOf, SyncJob, SyncJobOf,
};

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ahash::{AHashMap, AHashSet};
use ferry_proto::Dest;

use crate::ratelimit::IpKey;

use backend::{Backend, Segment, SegmentMaker, SyncTarget};
use fair::{Held, Source, SourceLimits, Sources};
use format::{
    Kind, Pos, RECORD_HEADER_BYTES, RecordHeader, SEGMENT_BYTES_MAX, SEGMENT_HEADER_BYTES,
    SEGMENT_SEQ_MAX, Scan,
};

/// When appends become durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every append (and ack) is synced as it is made, one sync each.
    Always,
    /// Group commit: sync at most every `ms`; appends are acknowledged at the next sync.
    /// `ms = 0` is the node's `store_fsync = "always"`: every append is still synced before it is
    /// acknowledged, but the appends of one turn of the shard's loop share one sync, issued as
    /// soon as the shard's tick runs (woken for it, `Log::sync_due_ms`).
    Interval { ms: u64 },
    /// Never sync explicitly; acknowledged once in the page cache.
    None,
}

/// Named limits of the store. Each is a bound that is reached, never crossed: a blob that takes a
/// count exactly to its limit is accepted, one byte (or blob) more is refused.
#[derive(Clone, Debug)]
pub struct StoreLimits {
    /// Size of a segment file (at most [`SEGMENT_BYTES_MAX`]).
    pub segment_bytes: usize,
    /// A segment older than this is closed for appends (segments roll by time).
    pub segment_roll_s: u64,
    /// Longest TTL a blob gets; a longer one is cut to this.
    pub ttl_max_s: u64,
    /// Blobs one dest may hold.
    pub dest_blobs_max: usize,
    /// Payload bytes one dest may hold, its first blob included.
    pub dest_bytes_max: u64,
    /// Bytes of segment files this shard may hold (tombstones may use all of it).
    pub disk_bytes_max: u64,
    /// Share of `disk_bytes_max` the segments may reach with blobs: a new segment for a blob is
    /// created only if the segments, the new one included, stay within it.
    pub high_water_percent: u8,
    /// Fair shares per sending address ([`fair`]).
    pub sources: SourceLimits,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            segment_bytes: 64 << 20,
            segment_roll_s: 3_600,
            ttl_max_s: 72 * 3_600,
            dest_blobs_max: 10_000,
            dest_bytes_max: 64 << 20,
            // A one-shard node's: the node's `limits.store_disk_bytes_max` default, which it
            // splits across its shards.
            disk_bytes_max: 16 << 30,
            high_water_percent: 90,
            sources: SourceLimits::default(),
        }
    }
}

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The disk budget's high-water mark is reached, or the disk itself is full.
    #[error("store full")]
    StoreFull,
    /// This dest holds its maximum number of blobs or bytes.
    #[error("destination quota reached")]
    DestQuota,
    /// The sending address holds its share of this dest's quota.
    #[error("the sender's share of the destination quota reached")]
    SourceDestShare,
    /// The sending address holds its share of the shard's blob budget.
    #[error("the sender's share of the store reached")]
    SourceShare,
    /// The store is above its pressure mark and the sending address holds more than the mean.
    #[error("store under pressure and the sender holds more than most")]
    SourcePressure,
    /// The blob does not fit in a segment.
    #[error("blob of {payload_len} bytes does not fit a segment")]
    TooLarge { payload_len: usize },
    /// Every segment number a position can carry is used ([`SEGMENT_SEQ_MAX`]).
    #[error("segment numbers exhausted (above {SEGMENT_SEQ_MAX})")]
    SegmentsExhausted,
    /// A write failed; the record is not stored.
    #[error("store write failed: {0}")]
    Io(#[source] std::io::Error),
    /// An fsync failed: durability is unknown, the node must stop.
    #[error("fsync failed, durability unknown: {0}")]
    SyncFailed(#[source] std::io::Error),
}

/// One live blob in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub pos: Pos,
    pub msg_id: u64,
    /// The last whole second (of the truncated wall clock) in which the blob is live: see
    /// [`is_live`].
    pub last_live_unix_s: u64,
    pub payload_len: u32,
    /// Append sequence number (durable once `durable_seq() >= seq`).
    pub seq: u64,
    /// First 8 bytes of blake3(payload): a duplicate is the same message id *and* payload, so two
    /// senders that happen to pick the same id do not knock out each other's blobs.
    pub digest: u64,
    /// Who the blob is charged to; `None` for a blob recovered at open (sources are never
    /// written to disk) or appended without a source.
    pub source: Option<Source>,
}

/// The last second a blob appended at `now_unix_s` with `ttl_s` is live.
///
/// `now_unix_s` is the wall clock cut to whole seconds, so the append really happened somewhere in
/// `[now_unix_s, now_unix_s + 1)`. The blob stays live through the whole second `now_unix_s +
/// ttl_s` and is gone from `now_unix_s + ttl_s + 1` on: it lives more than `ttl_s` seconds and at
/// most `ttl_s + 1` (seen by the same clock). Saturates at `u64::MAX` (never expires) rather than
/// wrap into the past.
pub fn last_live_unix_s(now_unix_s: u64, ttl_s: u64) -> u64 {
    now_unix_s.saturating_add(ttl_s)
}

/// Whether a blob whose last live second is `last_live_unix_s` is live when the clock reads
/// `now_unix_s`. Every expiry decision (index, drains, queries, replay) goes through here.
pub fn is_live(last_live_unix_s: u64, now_unix_s: u64) -> bool {
    now_unix_s <= last_live_unix_s
}

fn digest_of(payload: &[u8]) -> u64 {
    let h = blake3::hash(payload);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

#[derive(Debug, Default)]
struct DestQueue {
    entries: VecDeque<Entry>,
    /// (msg_id, digest) of every live entry.
    keys: AHashSet<(u64, u64)>,
    bytes: u64,
    /// What each source holds of this dest's quota (payload bytes); at most one entry per blob.
    sources: AHashMap<Source, Held>,
}

#[derive(Debug)]
struct SegState<S> {
    seg: S,
    write_at: usize,
    created_unix_s: u64,
    live_blobs: u32,
    /// Segments holding blobs this segment's tombstones kill: it must outlive them.
    tomb_targets: BTreeSet<u64>,
    sealed: bool,
}

/// What `open` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub blobs: usize,
    pub tombstones: usize,
    /// Corrupt records skipped because valid records follow them.
    pub quarantined: usize,
    /// Segments whose tail was torn (ended early).
    pub torn_tails: usize,
    /// Segments with an unreadable header that hold something, left on disk (counted in the
    /// disk budget) and not used.
    pub bad_segments: usize,
    /// Segment files that were all zeros (a creation interrupted by a version that wrote the
    /// header after the file was in place): removed, or, the newest, given a header and kept
    /// empty so that its number is not issued again.
    pub empty_segments: usize,
    /// Temporary files of interrupted segment creations, removed.
    pub temporaries: usize,
}

/// Outcome of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub pos: Pos,
    pub seq: u64,
    /// The same (dest, msg_id) was already stored: nothing new was written.
    pub duplicate: bool,
    /// Who the blob is charged to (for a duplicate: the first copy's source).
    pub source: Option<Source>,
}

/// How full a dest's quota and the store are, in percent (0..=100).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pressure {
    /// The fuller of the dest's blob count and byte count, against their limits.
    pub dest_fill_pct: u8,
    /// The store's segment bytes against its high-water mark.
    pub store_fill_pct: u8,
}

/// One shard's log over a backend.
#[derive(Debug)]
pub struct Log<B: Backend> {
    backend: B,
    shard: u16,
    limits: StoreLimits,
    policy: FsyncPolicy,
    segments: BTreeMap<u64, SegState<B::Seg>>,
    bad_segments: BTreeSet<u64>,
    /// Bytes of every segment file on disk: the tracked segments and the bad ones.
    disk_bytes: u64,
    active: Option<u64>,
    index: AHashMap<Dest, DestQueue>,
    next_seq: u64,
    durable_seq: u64,
    /// Segments written since their last sync (the active one, and any sealed after a failed
    /// write or a roll): a commit point syncs them all.
    dirty: BTreeSet<u64>,
    /// Commit points that synced something (`Log::syncs`).
    syncs: u64,
    /// The group commit handed off the shard's core ([`Log::begin_sync`]) and not yet finished:
    /// the sequence it makes durable, and its segments.
    in_flight: Option<(u64, BTreeSet<u64>)>,
    last_sync_ms: u64,
    scratch: Vec<u8>,
    /// The next segment's number. Numbers only grow (the newest segment is never reclaimed, so
    /// this survives a restart): a blob's position is never reused.
    next_segment: u64,
    /// A sync failed: durability is unknown from here on, and every later write or sync reports
    /// it again (a retried fsync can succeed after the kernel dropped the data).
    failed: bool,
    /// What each sending address holds (memory only).
    sources: Sources,
    /// The next segment, made ahead off the shard's core ([`Log::take_segment_job`]): its number
    /// and the segment, counted in `disk_bytes`. Always numbered above every tracked segment.
    spare: Option<(u64, B::Seg)>,
    /// A spare's making is out: its number.
    spare_pending: Option<u64>,
    /// No spare is asked for before this second (after a failed making).
    spare_retry_unix_s: u64,
    /// Segments rolls took made ahead, and made on the core.
    segments_ahead: u64,
    segments_on_core: u64,
    /// Reclaimed segments whose files are still to be deleted, off the core
    /// ([`Log::take_removal_job`]), with their bytes (still counted in `disk_bytes`): until a
    /// removal is durable they count as present, so no segment holding tombstones for their
    /// blobs is reclaimed before them.
    doomed: BTreeMap<u64, u64>,
    /// The removal out now (at most one).
    removing: Option<BTreeMap<u64, u64>>,
    /// A removal failed in this run: none is handed out until the next start.
    removal_failed: bool,
    /// Reclaimed segments deleted so far.
    segments_removed: u64,
}

impl<B: Backend> Log<B> {
    pub fn policy(&self) -> FsyncPolicy {
        self.policy
    }

    /// Bytes of segment files on disk (bad segments included).
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Whether the segments may grow by `extra` bytes: to at most `high_water_percent` of
    /// `disk_bytes_max` for a blob, to at most `disk_bytes_max` for a tombstone. Exact (no
    /// rounding of the percentage), so the mark itself is reachable.
    fn segments_fit(&self, extra: u64, tombstone: bool) -> bool {
        let percent = if tombstone {
            100
        } else {
            self.limits.high_water_percent
        };
        let total = u128::from(self.disk_bytes) + u128::from(extra);
        total * 100 <= u128::from(self.limits.disk_bytes_max) * u128::from(percent)
    }

    /// Whether a new segment would take the segments above the high-water mark, i.e. a blob that
    /// does not fit the active segment is refused with `StoreFull`.
    pub fn is_full(&self) -> bool {
        !self.segments_fit(self.segment_bytes(), false)
    }

    fn segment_bytes(&self) -> u64 {
        self.limits.segment_bytes as u64
    }

    /// Makes room for `bytes` in the active segment, rolling to a new one when needed.
    fn active_for(
        &mut self,
        now_unix_s: u64,
        bytes: usize,
        tombstone: bool,
    ) -> Result<u64, StoreError> {
        if let Some(a) = self.active {
            let s = &self.segments[&a];
            let fits = s.write_at + bytes <= self.limits.segment_bytes;
            let young = now_unix_s < s.created_unix_s.saturating_add(self.limits.segment_roll_s);
            if fits && young {
                return Ok(a);
            }
            if let Some(s) = self.segments.get_mut(&a) {
                s.sealed = true;
            }
            // Its unsynced tail stays in `dirty`: the next commit point syncs it.
        }
        if let Some((seq, seg)) = self.spare.take() {
            // Made ahead off the core, and already counted in `disk_bytes`.
            debug_assert!(self.segments.keys().all(|s| *s < seq));
            self.install(seq, seg, now_unix_s);
            self.segments_ahead += 1;
            return Ok(seq);
        }
        if !self.segments_fit(self.segment_bytes(), tombstone) {
            return Err(StoreError::StoreFull);
        }
        let seq = self.next_segment;
        if seq > SEGMENT_SEQ_MAX {
            return Err(StoreError::SegmentsExhausted);
        }
        // Taken even if the creation fails: a number is never offered twice. The number a
        // spare is being made under is skipped: that spare stays above this segment.
        self.next_segment += 1;
        if self.spare_pending == Some(self.next_segment) {
            self.next_segment += 1;
        }
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        format::encode_segment_header(&mut header, self.shard, seq, now_unix_s);
        let seg = match self.backend.create(seq, self.limits.segment_bytes, &header) {
            Ok(s) => s,
            Err(e)
                if e.raw_os_error() == Some(libc::ENOSPC)
                    || e.raw_os_error() == Some(libc::EDQUOT) =>
            {
                return Err(StoreError::StoreFull);
            }
            Err(e) => return Err(StoreError::Io(e)),
        };
        self.disk_bytes += self.segment_bytes();
        self.install(seq, seg, now_unix_s);
        self.segments_on_core += 1;
        Ok(seq)
    }

    /// Makes `seg` (numbered `seq`, counted in `disk_bytes`) the active segment.
    fn install(&mut self, seq: u64, seg: B::Seg, now_unix_s: u64) {
        self.segments.insert(
            seq,
            SegState {
                seg,
                write_at: SEGMENT_HEADER_BYTES,
                created_unix_s: now_unix_s,
                live_blobs: 0,
                tomb_targets: BTreeSet::new(),
                sealed: false,
            },
        );
        self.active = Some(seq);
    }

    fn write_record(
        &mut self,
        now_unix_s: u64,
        h: &RecordHeader,
        payload: &[u8],
        tombstone: bool,
    ) -> Result<Pos, StoreError> {
        let n = format::record_bytes(payload.len());
        if SEGMENT_HEADER_BYTES + n > self.limits.segment_bytes {
            return Err(StoreError::TooLarge {
                payload_len: payload.len(),
            });
        }
        let seq = self.active_for(now_unix_s, n, tombstone)?;
        self.scratch.resize(n, 0);
        format::encode_record(&mut self.scratch, h, payload);
        let s = self.segments.get_mut(&seq).ok_or(StoreError::StoreFull)?;
        let offset = s.write_at;
        // Dirty before the write: even a failed (torn) write leaves earlier records of this
        // segment that the next commit point must sync.
        self.dirty.insert(seq);
        if let Err(e) = s.seg.write(offset, &self.scratch) {
            // The bytes may be torn on disk; never write after them in this segment.
            s.sealed = true;
            self.active = None;
            return Err(StoreError::Io(e));
        }
        s.write_at += n;
        Ok(Pos {
            segment: seq,
            offset: u32::try_from(offset)
                .expect("an offset is inside its segment (SEGMENT_BYTES_MAX)"),
        })
    }

    /// Stores a blob for `dest` charged to no source (see [`Log::append_from`]).
    pub fn append(
        &mut self,
        now_unix_s: u64,
        dest: Dest,
        msg_id: u64,
        ttl_s: u64,
        payload: &[u8],
    ) -> Result<Appended, StoreError> {
        self.append_from(now_unix_s, dest, msg_id, ttl_s, payload, None)
    }

    /// Stores a blob for `dest` sent from `source` (an address key, see
    /// [`SourceLimits::key`]; `None`: charged to no source). With `FsyncPolicy::Always` it is
    /// durable when this returns.
    ///
    /// Checked in order: a duplicate is answered as one; the dest's quota (`DestQuota`); the
    /// source's share of that quota (`SourceDestShare`); the source's share of the shard's blob
    /// budget (`SourceShare`); above the pressure mark, whether the source holds more than the
    /// mean (`SourcePressure`); then room on disk (`StoreFull`).
    pub fn append_from(
        &mut self,
        now_unix_s: u64,
        dest: Dest,
        msg_id: u64,
        ttl_s: u64,
        payload: &[u8],
        source: Option<IpKey>,
    ) -> Result<Appended, StoreError> {
        self.check_failed()?;
        let too_large = StoreError::TooLarge {
            payload_len: payload.len(),
        };
        let payload_len = u32::try_from(payload.len()).map_err(|_| too_large)?;
        let digest = digest_of(payload);
        let (blobs, bytes) = match self.index.get(&dest) {
            Some(q) => {
                if q.keys.contains(&(msg_id, digest)) {
                    let e = q
                        .entries
                        .iter()
                        .find(|e| e.msg_id == msg_id && e.digest == digest)
                        .copied();
                    if let Some(e) = e {
                        return Ok(Appended {
                            pos: e.pos,
                            seq: e.seq,
                            duplicate: true,
                            source: e.source,
                        });
                    }
                }
                (q.entries.len(), q.bytes)
            }
            None => (0, 0),
        };
        // Both quotas hold for an empty dest too: a dest never holds more than its limits.
        if blobs >= self.limits.dest_blobs_max
            || bytes + u64::from(payload_len) > self.limits.dest_bytes_max
        {
            return Err(StoreError::DestQuota);
        }
        let record_bytes = format::record_bytes(payload.len()) as u64;
        let source = source.map(|key| self.sources.classify(key));
        if let Some(s) = source {
            self.check_shares(&dest, s, payload_len, record_bytes)?;
        }
        let last_live = last_live_unix_s(now_unix_s, ttl_s.min(self.limits.ttl_max_s));
        let h = RecordHeader {
            len: 0,
            kind: Kind::Blob,
            last_live_unix_s: last_live,
            dest,
            msg_id,
            target: 0,
        };
        let pos = self.write_record(now_unix_s, &h, payload, false)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Entry {
            pos,
            msg_id,
            last_live_unix_s: last_live,
            payload_len,
            seq,
            digest,
            source,
        };
        let q = self.index.entry(dest).or_default();
        q.keys.insert((msg_id, digest));
        q.bytes += u64::from(payload_len);
        if let Some(s) = source {
            q.sources.entry(s).or_default().add(u64::from(payload_len));
            self.sources.charge(s, record_bytes);
        }
        q.entries.push_back(entry);
        if let Some(s) = self.segments.get_mut(&pos.segment) {
            s.live_blobs += 1;
        }
        match self.policy {
            FsyncPolicy::Always => self.sync_now()?,
            FsyncPolicy::None => self.durable_seq = seq,
            FsyncPolicy::Interval { .. } => {}
        }
        Ok(Appended {
            pos,
            seq,
            duplicate: false,
            source,
        })
    }

    /// Refuses a blob of `payload_len` (`record_bytes` on disk) for `dest` from `s` when it would
    /// take `s` past one of its shares. Exact integer comparisons: a share is reachable.
    fn check_shares(
        &self,
        dest: &Dest,
        s: Source,
        payload_len: u32,
        record_bytes: u64,
    ) -> Result<(), StoreError> {
        let l = &self.limits;
        let sl = &l.sources;
        let in_dest = self
            .index
            .get(dest)
            .and_then(|q| q.sources.get(&s).copied())
            .unwrap_or_default();
        let dest_pct = u128::from(sl.dest_share_percent);
        let blobs = u128::from(in_dest.blobs) + 1;
        let bytes = u128::from(in_dest.bytes) + u128::from(payload_len);
        let dest_blobs_max = u128::try_from(l.dest_blobs_max).unwrap_or(u128::MAX);
        if blobs * 100 > dest_blobs_max.saturating_mul(dest_pct)
            || bytes * 100 > u128::from(l.dest_bytes_max) * dest_pct
        {
            return Err(StoreError::SourceDestShare);
        }
        // held × 100 × 100 ≤ disk_bytes_max × high_water_percent × share_percent.
        let held = u128::from(self.sources.held(s).bytes) + u128::from(record_bytes);
        let share = u128::from(l.disk_bytes_max)
            * u128::from(l.high_water_percent)
            * u128::from(sl.share_percent);
        // At 100 % a source may take the whole budget: the disk rule alone decides, by segment.
        if sl.share_percent < 100 && held * 10_000 > share {
            return Err(StoreError::SourceShare);
        }
        if self.under_pressure() && self.sources.above_mean(s) {
            return Err(StoreError::SourcePressure);
        }
        Ok(())
    }

    /// Whether the segments are above the pressure mark (`pressure_percent` of the budget).
    pub fn under_pressure(&self) -> bool {
        u128::from(self.disk_bytes) * 100
            > u128::from(self.limits.disk_bytes_max)
                * u128::from(self.limits.sources.pressure_percent)
    }

    /// What the source with address key `key` holds in the table (its own entry; nothing if it
    /// was charged to the overflow bucket).
    pub fn source_held(&self, key: IpKey) -> Held {
        self.sources.held(Source::Addr(key))
    }

    /// What the overflow bucket holds.
    pub fn overflow_held(&self) -> Held {
        self.sources.held(Source::Other)
    }

    /// Entries in the source table (at most `sources_max` + the overflow bucket).
    pub fn sources_len(&self) -> usize {
        self.sources.len()
    }

    /// Appends charged to the overflow bucket since open.
    pub fn sources_overflowed(&self) -> u64 {
        self.sources.overflowed
    }

    /// Which of `dests` hold live blobs (the cheap question a client asks before any proof).
    pub fn holding(&self, dests: &[Dest], now_unix_s: u64) -> Vec<Dest> {
        dests
            .iter()
            .filter(|d| {
                self.index.get(*d).is_some_and(|q| {
                    q.entries
                        .iter()
                        .any(|e| is_live(e.last_live_unix_s, now_unix_s))
                })
            })
            .copied()
            .collect()
    }

    /// Live blobs of `dest`, oldest first: (entry, payload).
    pub fn drain(&self, dest: &Dest, now_unix_s: u64) -> Vec<(Entry, &[u8])> {
        let Some(q) = self.index.get(dest) else {
            return Vec::new();
        };
        q.entries
            .iter()
            .filter(|e| is_live(e.last_live_unix_s, now_unix_s))
            .filter_map(|e| {
                let s = self.segments.get(&e.pos.segment)?;
                match format::scan(s.seg.bytes(), e.pos.offset as usize) {
                    Scan::Record(_, payload) => Some((*e, payload)),
                    _ => None,
                }
            })
            .collect()
    }

    /// Whether the blob of `dest` at `pos` is still indexed (not acknowledged or expired away).
    pub fn holds(&self, dest: &Dest, pos: Pos) -> bool {
        self.index
            .get(dest)
            .is_some_and(|q| q.entries.iter().any(|e| e.pos == pos))
    }

    /// At most `blobs_max` live blobs of `dest` (and `bytes_max` payload bytes, but at least one),
    /// oldest first, and whether more remain. Reads only what it returns.
    pub fn drain_batch(
        &self,
        dest: &Dest,
        now_unix_s: u64,
        blobs_max: usize,
        bytes_max: usize,
    ) -> (Vec<(Entry, &[u8])>, bool) {
        let Some(q) = self.index.get(dest) else {
            return (Vec::new(), false);
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut live = q
            .entries
            .iter()
            .filter(|e| is_live(e.last_live_unix_s, now_unix_s));
        for e in live.by_ref() {
            let len = e.payload_len as usize;
            if out.len() == blobs_max || (!out.is_empty() && bytes + len > bytes_max) {
                return (out, true);
            }
            let Some(s) = self.segments.get(&e.pos.segment) else {
                continue;
            };
            if let Scan::Record(_, payload) = format::scan(s.seg.bytes(), e.pos.offset as usize) {
                bytes += payload.len();
                out.push((*e, payload));
            }
        }
        (out, false)
    }

    /// How full `dest`'s quota and this store are, from the counters the limits check (the send
    /// puzzles' pressure, `crate::puzzle`).
    pub fn pressure(&self, dest: &Dest) -> Pressure {
        let pct = |used: u128, max: u128| -> u8 {
            let p = (used * 100).checked_div(max).unwrap_or(100);
            u8::try_from(p.min(100)).expect("at most 100")
        };
        let (blobs, bytes) = self
            .index
            .get(dest)
            .map_or((0, 0), |q| (q.entries.len(), q.bytes));
        let dest_fill_pct = pct(blobs as u128, self.limits.dest_blobs_max as u128).max(pct(
            u128::from(bytes),
            u128::from(self.limits.dest_bytes_max),
        ));
        let high_water =
            u128::from(self.limits.disk_bytes_max) * u128::from(self.limits.high_water_percent);
        let store_fill_pct = pct(u128::from(self.disk_bytes) * 100, high_water);
        Pressure {
            dest_fill_pct,
            store_fill_pct,
        }
    }

    /// Live blobs in the index (all dests).
    pub fn blobs(&self) -> usize {
        self.index.values().map(|q| q.entries.len()).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

type OnRecord<'a> = dyn FnMut(&RecordHeader, Pos, &[u8]) + 'a;
