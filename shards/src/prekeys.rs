//! The prekey directory, sans-IO: one bundle slot per `dest` (the SDK's slots rotate daily,
//! `ferry_proto::prekey`), written only by a connection that proved `PrekeyUpdate` for it
//! (checked by the shard), read by anyone through a fetch that consumes one EC and one PQ
//! one-time key (falling back to the head's last-resort PQ key). Everything in a slot is sealed
//! by its owner: the directory holds opaque items of fixed sizes, checks counts and ids, and
//! never sees a key or an identity.
//! One-time keys are scarce, so they are budgeted: a slot hands out at most
//! `one_time_per_slot` of them per hour (about what an owner refills), one source address gets
//! at most `one_time_per_source` of one slot's; a fetch past either budget still gets a bundle,
//! with the last-resort PQ key and no EC one-time key, so that a first contact never fails
//! because others fetched before it.
//!
//! Under pressure ([`Directory::slot_under_pressure`]: the slot's one-time keys are asked for
//! faster than `one_time_per_slot`) a fetch may still buy a one-time key with a client puzzle
//! (`ferry_proto::puzzle`, bound to the slot's dest, the node's puzzle seed, the same one the
//! shards' send puzzles use, and [`prekey_fetch_digest`]); the effort rises with the overdraft
//! and with how nearly exhausted the slot is ([`Directory::puzzle_level`]). A fetch without a
//! good answer gets the last-resort bundle and the puzzle (seed, effort) beside it; an accepted
//! answer is remembered (bounded seen-set) and never buys a second key.
//! Every change becomes a journal record in [`Directory::take_records`]; the service core makes
//! them durable before it answers (so a consumed one-time key is never handed out twice, even
//! across a crash), and [`Directory::replay`] rebuilds the state at start-up.
//!
//! Records: `S expires:u64 upload` (an accepted upload of sealed items, applied again without
//! the checks), `T dest taken:u8 ec_id:u32 pq_id:u32` (a fetch), `D dest` (slot expired). A
//! `U` record is an upload from before slots were sealed (keys and identity in clear, one
//! permanent slot): replay drops it and counts it ([`Directory::legacy_dropped`]); its owner's
//! SDK publishes sealed day slots instead, and compaction removes it from the file.

use std::collections::VecDeque;

use crate::puzzle::{PuzzleConfig, PuzzleGate};
use crate::ratelimit::{IpKey, KeyedLimiter, Rate};
use ahash::{AHashMap, AHashSet};
use bytes::{BufMut, Bytes};
use ferry_proto::frame::{Dest, PrekeyStatus};
use ferry_proto::prekey::{
    self, EC_ITEM_BYTES, HEAD_BYTES, KeyKind, ONE_TIME_KEYS_MAX, PQ_ITEM_BYTES, SealedBundle,
    SealedEc, SealedPq, Upload,
};
use ferry_proto::puzzle::{PuzzleAnswer, PuzzleAsk, prekey_fetch_digest};

/// Directory limits (named config keys under `[prekeys]`).
#[derive(Clone, Debug)]
pub struct DirectoryLimits {
    pub slots_max: usize,
    /// Bytes of keys the whole directory may hold (in memory and in its journal).
    pub bytes_max: usize,
    /// A slot not uploaded to for this long is dropped (an upload may ask for less: `ttl_s`).
    pub slot_ttl_s: u64,
    /// Fetches per second (and burst) from one address (beyond: `RateLimited`).
    pub fetch_per_addr: Rate,
    /// One-time keys one slot hands out (beyond: last-resort bundles).
    pub one_time_per_slot: HourlyRate,
    /// One-time keys of one slot one source address gets (beyond: last-resort bundles).
    pub one_time_per_source: HourlyRate,
    /// Uploads per second (and burst) from one address: each is a synced journal write.
    pub upload_per_addr: Rate,
    /// Buckets tracked by each fetch limiter.
    pub rate_entries_max: usize,
    /// The node's puzzle settings (`limits.puzzle_*`, and the node-wide seed key the shards
    /// use): `levels`, `effort_max` and `seed_period_s` shape fetch puzzles as they shape send
    /// puzzles, `answers_seen_max` bounds the seen-set of accepted fetch answers.
    pub puzzle: PuzzleConfig,
}

impl Default for DirectoryLimits {
    fn default() -> Self {
        DirectoryLimits {
            slots_max: 100_000,
            bytes_max: 1 << 30,
            slot_ttl_s: 30 * 86_400,
            fetch_per_addr: Rate {
                per_s: 2,
                burst: 60,
            },
            one_time_per_slot: HourlyRate {
                per_hour: 10,
                burst: 20,
            },
            one_time_per_source: HourlyRate {
                per_hour: 1,
                burst: 2,
            },
            upload_per_addr: Rate {
                per_s: 1,
                burst: 30,
            },
            rate_entries_max: 65_536,
            puzzle: PuzzleConfig::default(),
        }
    }
}

const HOUR_MS: u64 = 3_600_000;

/// A budget of one-time keys: `per_hour` refill and a `burst`. One-time keys come in dozens
/// when an owner's device is online, so they are counted per hour, not per second.
/// `per_hour == 0` never limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HourlyRate {
    pub per_hour: u64,
    pub burst: u64,
}

/// A token bucket for an [`HourlyRate`], in exact integers: the balance counts
/// 1/`HOUR_MS` key units, so `per_hour` keys × elapsed ms is what a refill earns.
#[derive(Clone, Copy, Debug)]
struct HourlyBucket {
    balance: u64,
    at_ms: u64,
}

impl HourlyBucket {
    fn full(rate: HourlyRate) -> Self {
        HourlyBucket {
            balance: rate.burst.saturating_mul(HOUR_MS),
            at_ms: 0,
        }
    }
    /// The balance at `now_ms` (the bucket is not changed).
    fn balance_at(&self, rate: HourlyRate, now_ms: u64) -> u64 {
        let earned = rate
            .per_hour
            .saturating_mul(now_ms.saturating_sub(self.at_ms));
        self.balance
            .saturating_add(earned)
            .min(rate.burst.saturating_mul(HOUR_MS))
    }
    fn has_one(&self, rate: HourlyRate, now_ms: u64) -> bool {
        rate.per_hour == 0 || self.balance_at(rate, now_ms) >= HOUR_MS
    }
    fn is_full(&self, rate: HourlyRate, now_ms: u64) -> bool {
        self.balance_at(rate, now_ms) >= rate.burst.saturating_mul(HOUR_MS)
    }
    /// Takes one key; the caller checked [`HourlyBucket::has_one`].
    fn take_one(&mut self, rate: HourlyRate, now_ms: u64) {
        if rate.per_hour == 0 {
            return;
        }
        let balance = self.balance_at(rate, now_ms);
        assert!(
            balance >= HOUR_MS,
            "taking a one-time key the budget does not hold"
        );
        self.balance = balance - HOUR_MS;
        self.at_ms = self.at_ms.max(now_ms);
    }
}

/// Keys paid by puzzle answers past a slot's `one_time_per_slot` budget, in 1/`HOUR_MS` key
/// units, paid off at the budget's `per_hour` (the puzzle level rises with it).
#[derive(Clone, Copy, Debug, Default)]
struct Overdraft {
    units: u64,
    at_ms: u64,
}

impl Overdraft {
    /// Whole keys owed at `now_ms`.
    fn keys_at(&self, rate: HourlyRate, now_ms: u64) -> u64 {
        let repaid = rate
            .per_hour
            .saturating_mul(now_ms.saturating_sub(self.at_ms));
        self.units.saturating_sub(repaid) / HOUR_MS
    }
    fn add_one(&mut self, rate: HourlyRate, now_ms: u64) {
        let repaid = rate
            .per_hour
            .saturating_mul(now_ms.saturating_sub(self.at_ms));
        self.units = self.units.saturating_sub(repaid).saturating_add(HOUR_MS);
        self.at_ms = self.at_ms.max(now_ms);
    }
}

/// Whether a fetch gets one-time keys, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OneTimeGrant {
    /// The slot's oldest one-time keys (or none, when none are left).
    Granted,
    /// The slot is under pressure ([`Directory::slot_under_pressure`]) and the fetch carried no
    /// good answer: last-resort bundle, with the puzzle that buys a one-time key (`None` when
    /// the node's puzzles are off, `limits.puzzle_levels = 0`).
    SlotUnderPressure { puzzle: Option<PuzzleAsk> },
    /// This source has had its share of the slot's one-time keys: last-resort bundle.
    SourceShareSpent,
}

/// Why an upload was refused, and which key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: PrekeyStatus,
    pub kind: KeyKind,
    pub index: u16,
}

/// Largest index a refusal names: a key of the upload (below `ONE_TIME_KEYS_MAX`:
/// `check_upload` refuses a longer list at its first key past the limit, index
/// `ONE_TIME_KEYS_MAX`), or, for `TooMany`, the last of a slot's kept and uploaded keys (below
/// `2 × ONE_TIME_KEYS_MAX`: a slot holds at most `ONE_TIME_KEYS_MAX` of each kind).
const REFUSAL_INDEX_MAX: usize = 2 * ONE_TIME_KEYS_MAX;
// A refusal's index, and a slot's counts (at most ONE_TIME_KEYS_MAX), are u16 on the wire.
const _: () = assert!(REFUSAL_INDEX_MAX <= u16::MAX as usize);

fn refuse(status: PrekeyStatus, kind: KeyKind, index: usize) -> Refusal {
    assert!(
        index <= REFUSAL_INDEX_MAX,
        "refusal index {index} over REFUSAL_INDEX_MAX ({REFUSAL_INDEX_MAX})"
    );
    Refusal {
        status,
        kind,
        index: u16::try_from(index).expect("REFUSAL_INDEX_MAX fits a u16"),
    }
}

#[derive(Debug)]
struct Slot {
    /// The sealed head (`HEAD_BYTES`).
    head: Bytes,
    ec: VecDeque<SealedEc>,
    pq: VecDeque<SealedPq>,
    expires_unix_s: u64,
    /// One-time keys the slot may still hand out (`one_time_per_slot`). Not journaled: full
    /// again after a restart.
    one_time_budget: HourlyBucket,
    /// Keys puzzle answers bought past the budget (not journaled either).
    overdraft: Overdraft,
}

impl Slot {
    fn bytes(&self) -> usize {
        HEAD_BYTES + self.ec.len() * EC_ITEM_BYTES + self.pq.len() * PQ_ITEM_BYTES
    }
    /// The one-time keys left of each kind: at most `ONE_TIME_KEYS_MAX` (`check` holds a new
    /// upload to it, `apply_record` a replayed one).
    fn counts(&self) -> (u16, u16) {
        let count = |n: usize| {
            assert!(
                n <= ONE_TIME_KEYS_MAX,
                "a slot of {n} one-time keys, over ONE_TIME_KEYS_MAX ({ONE_TIME_KEYS_MAX})"
            );
            u16::try_from(n).expect("ONE_TIME_KEYS_MAX fits a u16")
        };
        (count(self.ec.len()), count(self.pq.len()))
    }
}

/// Counters the service exports.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectoryStats {
    pub uploads_ok: u64,
    pub uploads_refused: u64,
    pub fetches_ok: u64,
    pub fetches_last_resort: u64,
    pub fetches_not_found: u64,
    pub fetches_rate_limited: u64,
    /// Fetches answered with the last-resort bundle although one-time keys were left: the slot
    /// was under pressure, or the source had its share.
    pub one_time_withheld_slot: u64,
    pub one_time_withheld_source: u64,
    /// One-time keys bought with a puzzle answer while the slot was under pressure.
    pub puzzle_paid: u64,
    /// Answers refused: too little effort, not a solution, or another fetch's.
    pub puzzle_refused: u64,
    /// Answers refused because an earlier fetch was granted with them.
    pub puzzle_replayed: u64,
}

#[derive(Debug)]
pub struct Directory {
    limits: DirectoryLimits,
    slots: AHashMap<Dest, Slot>,
    bytes: usize,
    by_addr: KeyedLimiter<IpKey>,
    /// One-time keys each source has had of each slot: at most `rate_entries_max` entries;
    /// when full, entries that have refilled go, and if none has, a new source gets no
    /// one-time key (fail closed: it still gets the last-resort bundle).
    shares: AHashMap<(IpKey, Dest), HourlyBucket>,
    uploads_by_addr: KeyedLimiter<IpKey>,
    /// The node's puzzle seed and efforts (its own seen-set is not used here).
    puzzle: PuzzleGate,
    /// Ids of accepted fetch answers; at most `puzzle.answers_seen_max`, full policy: forget
    /// the oldest (an answer is good for two seed periods, so a forgotten one can be replayed
    /// only after that many answers were accepted within them, and then buys one key more).
    answers_seen: AHashSet<[u8; 16]>,
    /// Insertion order of `answers_seen`.
    answers_order: VecDeque<[u8; 16]>,
    records: Vec<Vec<u8>>,
    /// `U` records (unsealed slots of an older version) dropped at replay.
    legacy_dropped: usize,
    /// Such records are still in the journal file (until the next compaction).
    legacy_on_disk: bool,
    pub stats: DirectoryStats,
}

impl Directory {
    pub fn new(limits: DirectoryLimits) -> Self {
        Directory {
            by_addr: KeyedLimiter::new(limits.fetch_per_addr, limits.rate_entries_max),
            shares: AHashMap::new(),
            uploads_by_addr: KeyedLimiter::new(limits.upload_per_addr, limits.rate_entries_max),
            puzzle: PuzzleGate::new(limits.puzzle.clone()),
            answers_seen: AHashSet::new(),
            answers_order: VecDeque::new(),
            limits,
            slots: AHashMap::new(),
            bytes: 0,
            records: Vec::new(),
            legacy_dropped: 0,
            legacy_on_disk: false,
            stats: DirectoryStats::default(),
        }
    }

    pub fn slots(&self) -> usize {
        self.slots.len()
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Unsealed slot records of an older version dropped by [`Directory::replay`].
    pub fn legacy_dropped(&self) -> usize {
        self.legacy_dropped
    }

    /// Whether the journal file still holds such records: compact it (they name identity keys).
    pub fn legacy_on_disk(&self) -> bool {
        self.legacy_on_disk
    }

    /// The journal was rewritten from [`Directory::snapshot`]: no such record is left.
    pub fn legacy_compacted(&mut self) {
        self.legacy_on_disk = false;
    }

    /// Journal records produced since the last call (append them, then commit, then answer).
    pub fn take_records(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.records)
    }

    /// Rebuilds the state from journal records (start-up). Returns records it could not parse,
    /// or that would take a slot past `ONE_TIME_KEYS_MAX` keys of a kind (which no accepted
    /// upload can).
    pub fn replay(&mut self, records: &[Vec<u8>]) -> usize {
        let mut bad = 0;
        for r in records {
            if self.apply_record(r).is_none() {
                bad += 1;
            }
        }
        self.records.clear();
        bad
    }

    fn apply_record(&mut self, r: &[u8]) -> Option<()> {
        let (&kind, rest) = r.split_first()?;
        match kind {
            b'U' => {
                self.legacy_dropped += 1;
                self.legacy_on_disk = true;
            }
            b'S' => {
                let expires = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
                let upload = Upload::decode_record(Bytes::copy_from_slice(rest.get(8..)?)).ok()?;
                let (ec, pq) = self.one_time_after(&upload);
                if ec > ONE_TIME_KEYS_MAX || pq > ONE_TIME_KEYS_MAX {
                    return None;
                }
                self.apply_upload(&upload, expires);
            }
            b'T' if crate::mutants::active(crate::mutants::Mutant::ForgetPrekeyTakes) => {}
            b'T' => {
                let dest = Dest(rest.get(..16)?.try_into().ok()?);
                let taken = *rest.get(16)?;
                let ec_id = u32::from_le_bytes(rest.get(17..21)?.try_into().ok()?);
                let pq_id = u32::from_le_bytes(rest.get(21..25)?.try_into().ok()?);
                if let Some(slot) = self.slots.get_mut(&dest) {
                    let before = slot.bytes();
                    if taken & 1 != 0 {
                        slot.ec.retain(|k| k.id != ec_id);
                    }
                    if taken & 2 != 0 {
                        slot.pq.retain(|k| k.id != pq_id);
                    }
                    self.bytes -= before - slot.bytes();
                }
            }
            b'D' => {
                let dest = Dest(rest.get(..16)?.try_into().ok()?);
                if let Some(slot) = self.slots.remove(&dest) {
                    self.bytes -= slot.bytes();
                }
            }
            _ => return None,
        }
        Some(())
    }

    fn upload_record(upload: &Upload, expires: u64) -> Vec<u8> {
        let mut r = Vec::with_capacity(9 + upload.encoded_len());
        r.push(b'S');
        r.put_u64_le(expires);
        upload.encode(&mut r);
        r
    }

    /// The one-time keys of each kind the slot of `upload.dest` holds after `apply_upload`.
    fn one_time_after(&self, upload: &Upload) -> (usize, usize) {
        let kept = match self.slots.get(&upload.dest) {
            Some(slot) if !upload.replace_one_time => (slot.ec.len(), slot.pq.len()),
            _ => (0, 0),
        };
        (kept.0 + upload.ec.len(), kept.1 + upload.pq.len())
    }

    /// Applies a checked upload (or a replayed one).
    fn apply_upload(&mut self, upload: &Upload, expires: u64) {
        let before = self.slots.get(&upload.dest).map_or(0, Slot::bytes);
        let slot = match (self.slots.get_mut(&upload.dest), &upload.head) {
            (Some(slot), head) => {
                if let Some(h) = head {
                    slot.head = h.clone();
                }
                slot
            }
            (None, Some(h)) => self.slots.entry(upload.dest).or_insert(Slot {
                head: h.clone(),
                ec: VecDeque::new(),
                pq: VecDeque::new(),
                expires_unix_s: expires,
                one_time_budget: HourlyBucket::full(self.limits.one_time_per_slot),
                overdraft: Overdraft::default(),
            }),
            (None, None) => return,
        };
        if upload.replace_one_time {
            slot.ec.clear();
            slot.pq.clear();
        }
        slot.ec.extend(upload.ec.iter().cloned());
        slot.pq.extend(upload.pq.iter().cloned());
        slot.expires_unix_s = expires;
        let after = slot.bytes();
        self.bytes = self.bytes + after - before;
    }

    /// Checks and stores an upload. `Ok` carries the one-time keys now in the slot.
    pub fn upload(
        &mut self,
        now_unix_s: u64,
        now_ms: u64,
        upload: &Upload,
        requester: IpKey,
    ) -> Result<(u16, u16), Refusal> {
        if !self.uploads_by_addr.allow(requester, now_ms) {
            self.stats.uploads_refused += 1;
            return Err(refuse(PrekeyStatus::RateLimited, KeyKind::None, 0));
        }
        let r = self.check(upload);
        if let Err(refusal) = r {
            self.stats.uploads_refused += 1;
            return Err(refusal);
        }
        let ttl = match u64::from(upload.ttl_s) {
            0 => self.limits.slot_ttl_s,
            t => t.min(self.limits.slot_ttl_s),
        };
        let expires = now_unix_s.saturating_add(ttl);
        self.apply_upload(upload, expires);
        self.records.push(Self::upload_record(upload, expires));
        self.stats.uploads_ok += 1;
        Ok(self.slots.get(&upload.dest).map_or((0, 0), Slot::counts))
    }

    fn check(&self, upload: &Upload) -> Result<(), Refusal> {
        let slot = self.slots.get(&upload.dest);
        if upload.head.is_none() && slot.is_none() {
            return Err(refuse(
                PrekeyStatus::NoSignedPrekey,
                KeyKind::SignedPrekey,
                0,
            ));
        }
        prekey::check_upload(upload)
            .map_err(|f| refuse(PrekeyStatus::TooMany, f.kind, usize::from(f.index)))?;
        // What stays of the slot's one-time keys.
        let keep = slot.filter(|_| !upload.replace_one_time);
        let mut ec_ids: AHashSet<u32> =
            keep.map_or_else(AHashSet::new, |s| s.ec.iter().map(|k| k.id).collect());
        for (i, k) in upload.ec.iter().enumerate() {
            if !ec_ids.insert(k.id) {
                return Err(refuse(PrekeyStatus::DuplicateId, KeyKind::OneTimeEc, i));
            }
        }
        let mut pq_ids: AHashSet<u32> =
            keep.map_or_else(AHashSet::new, |s| s.pq.iter().map(|k| k.id).collect());
        for (i, k) in upload.pq.iter().enumerate() {
            if !pq_ids.insert(k.id) {
                return Err(refuse(PrekeyStatus::DuplicateId, KeyKind::OneTimePq, i));
            }
        }
        if ec_ids.len() > ONE_TIME_KEYS_MAX {
            return Err(refuse(
                PrekeyStatus::TooMany,
                KeyKind::OneTimeEc,
                ec_ids.len() - 1,
            ));
        }
        if pq_ids.len() > ONE_TIME_KEYS_MAX {
            return Err(refuse(
                PrekeyStatus::TooMany,
                KeyKind::OneTimePq,
                pq_ids.len() - 1,
            ));
        }
        let after = HEAD_BYTES + ec_ids.len() * EC_ITEM_BYTES + pq_ids.len() * PQ_ITEM_BYTES;
        let before = slot.map_or(0, Slot::bytes);
        if slot.is_none() && self.slots.len() >= self.limits.slots_max
            || self.bytes - before + after > self.limits.bytes_max
        {
            return Err(refuse(PrekeyStatus::DirectoryFull, KeyKind::None, 0));
        }
        Ok(())
    }

    /// The one place that says a slot is under pressure: its one-time keys are being asked for
    /// faster than `one_time_per_slot` (its budget is spent), so fetches get the last-resort
    /// bundle until the budget refills, unless they pay with a puzzle answer
    /// ([`Directory::puzzle_level`] says how much). A slot that is merely low on keys but
    /// fetched at the ration's pace is not under pressure: its owner refills it, and a client
    /// that does not solve puzzles keeps getting one-time keys. `false` for an unknown dest.
    pub fn slot_under_pressure(&self, now_ms: u64, dest: &Dest) -> bool {
        self.slots.get(dest).is_some_and(|s| {
            !s.one_time_budget
                .has_one(self.limits.one_time_per_slot, now_ms)
        })
    }

    /// The puzzle level a one-time key of the slot of `dest` costs now: 0 when the slot is not
    /// under pressure (or puzzles are off), else 1 rising linearly to `puzzle.levels` with the
    /// keys puzzle answers bought past the budget in the last hour or so (the overdraft, repaid
    /// at `one_time_per_slot.per_hour`; `one_time_per_slot.burst` of it is the top level), and
    /// the top level at once when the slot is nearly exhausted (no more one-time keys of either
    /// kind left than an hour's ration, `one_time_per_slot.per_hour`).
    pub fn puzzle_level(&self, now_ms: u64, dest: &Dest) -> u8 {
        let levels = self.limits.puzzle.levels;
        let Some(slot) = self.slots.get(dest) else {
            return 0;
        };
        if levels == 0 || !self.slot_under_pressure(now_ms, dest) {
            return 0;
        }
        let rate = self.limits.one_time_per_slot;
        let left = u64::try_from(slot.ec.len().max(slot.pq.len())).unwrap_or(u64::MAX);
        if left <= rate.per_hour {
            return levels;
        }
        let burst = rate.burst.max(1);
        let owed = slot.overdraft.keys_at(rate, now_ms).min(burst);
        let above = owed * u64::from(levels - 1) / burst;
        // `above` ≤ levels - 1, so the sum is at most `levels` (a u8).
        u8::try_from(1 + above).unwrap_or(levels)
    }

    /// Checks the answer a fetch of a slot under pressure carries. `Ok` with the answer's id
    /// when it pays for a one-time key; otherwise the puzzle to solve (`None`: puzzles off).
    fn check_answer(
        &mut self,
        now_unix_s: u64,
        now_ms: u64,
        dest: &Dest,
        answer: Option<&PuzzleAnswer>,
    ) -> Result<[u8; 16], Option<PuzzleAsk>> {
        let effort = self.puzzle.effort(self.puzzle_level(now_ms, dest));
        if effort == 0 {
            return Err(None);
        }
        let ask = PuzzleAsk {
            seed: self.puzzle.seed(now_unix_s),
            effort,
        };
        let Some(answer) = answer else {
            return Err(Some(ask));
        };
        // The cheap refusals first: Equi-X runs only for an answer of enough claimed effort.
        if answer.effort < effort {
            self.stats.puzzle_refused += 1;
            return Err(Some(ask));
        }
        let digest = prekey_fetch_digest(dest);
        match self.puzzle.check_answer(now_unix_s, dest, &digest, answer) {
            None => {
                self.stats.puzzle_refused += 1;
                Err(Some(ask))
            }
            Some(id) if self.answers_seen.contains(&id) => {
                self.stats.puzzle_replayed += 1;
                Err(Some(ask))
            }
            Some(id) => Ok(id),
        }
    }

    fn remember_answer(&mut self, id: [u8; 16]) {
        if self.answers_order.len() >= self.limits.puzzle.answers_seen_max {
            if let Some(old) = self.answers_order.pop_front() {
                self.answers_seen.remove(&old);
            }
        }
        self.answers_seen.insert(id);
        self.answers_order.push_back(id);
    }

    /// Decides whether `requester` gets one-time keys of the slot of `dest` now, and if so
    /// charges the source's share and the slot's budget (or, under pressure, takes the answer
    /// and adds to the slot's overdraft); a refusal charges nothing. The share is looked at
    /// before the puzzle, so a source past its share is never asked to solve one in vain.
    fn one_time_grant(
        &mut self,
        now_unix_s: u64,
        now_ms: u64,
        dest: Dest,
        requester: IpKey,
        answer: Option<&PuzzleAnswer>,
    ) -> OneTimeGrant {
        let rate = self.limits.one_time_per_source;
        let key = (requester, dest);
        if rate.per_hour != 0 {
            if !self.shares.contains_key(&key) && self.shares.len() >= self.limits.rate_entries_max
            {
                self.shares.retain(|_, b| !b.is_full(rate, now_ms));
                if self.shares.len() >= self.limits.rate_entries_max {
                    return OneTimeGrant::SourceShareSpent;
                }
            }
            if self
                .shares
                .get(&key)
                .is_some_and(|share| !share.has_one(rate, now_ms))
            {
                return OneTimeGrant::SourceShareSpent;
            }
        }
        let paid = if self.slot_under_pressure(now_ms, &dest) {
            match self.check_answer(now_unix_s, now_ms, &dest, answer) {
                Ok(id) => Some(id),
                Err(puzzle) => return OneTimeGrant::SlotUnderPressure { puzzle },
            }
        } else {
            None
        };
        if rate.per_hour != 0 {
            self.shares
                .entry(key)
                .or_insert_with(|| HourlyBucket::full(rate))
                .take_one(rate, now_ms);
        }
        let slot_rate = self.limits.one_time_per_slot;
        if let Some(id) = paid {
            self.remember_answer(id);
            self.stats.puzzle_paid += 1;
        }
        if let Some(slot) = self.slots.get_mut(&dest) {
            if paid.is_some() {
                slot.overdraft.add_one(slot_rate, now_ms);
            } else {
                slot.one_time_budget.take_one(slot_rate, now_ms);
            }
        }
        OneTimeGrant::Granted
    }

    /// One bundle for `dest`, for a fetch without a puzzle answer (see [`Directory::fetch_with`]).
    #[cfg(test)]
    pub fn fetch(
        &mut self,
        now_unix_s: u64,
        now_ms: u64,
        dest: Dest,
        requester: IpKey,
    ) -> Result<SealedBundle, PrekeyStatus> {
        self.fetch_with(now_unix_s, now_ms, dest, requester, None)
            .map(|(b, _)| b)
    }

    /// One bundle for `dest`. It consumes the slot's oldest one-time keys when the slot and the
    /// requester's share allow ([`Directory::one_time_grant`]; a slot under pressure allows it
    /// for a good `answer`); otherwise, and when none are left, it carries the last-resort PQ
    /// key (`pq_last_resort`) and no EC one-time key, and, when the slot is under pressure, the
    /// puzzle that would buy a one-time key. A fetch of an existing slot is refused only by the
    /// requester's own fetch rate.
    pub fn fetch_with(
        &mut self,
        now_unix_s: u64,
        now_ms: u64,
        dest: Dest,
        requester: IpKey,
        answer: Option<&PuzzleAnswer>,
    ) -> Result<(SealedBundle, Option<PuzzleAsk>), PrekeyStatus> {
        if !self.by_addr.allow(requester, now_ms) {
            self.stats.fetches_rate_limited += 1;
            return Err(PrekeyStatus::RateLimited);
        }
        let Some(has_one_time) = self
            .slots
            .get(&dest)
            .filter(|s| s.expires_unix_s > now_unix_s)
            .map(|s| !s.ec.is_empty() || !s.pq.is_empty())
        else {
            self.stats.fetches_not_found += 1;
            return Err(PrekeyStatus::NotFound);
        };
        // An exhausted slot spends no budget (and asks no puzzle): there is nothing to ration.
        let grant = if has_one_time {
            self.one_time_grant(now_unix_s, now_ms, dest, requester, answer)
        } else {
            OneTimeGrant::Granted
        };
        let mut puzzle = None;
        match grant {
            OneTimeGrant::Granted => {}
            OneTimeGrant::SlotUnderPressure { puzzle: p } => {
                self.stats.one_time_withheld_slot += 1;
                puzzle = p;
            }
            OneTimeGrant::SourceShareSpent => self.stats.one_time_withheld_source += 1,
        }
        let slot = self
            .slots
            .get_mut(&dest)
            .expect("the slot was found above and nothing removed it");
        let before = slot.bytes();
        let (ec, pq) = if grant == OneTimeGrant::Granted {
            (slot.ec.pop_front(), slot.pq.pop_front())
        } else {
            (None, None)
        };
        let pq_last_resort = pq.is_none();
        let bundle = SealedBundle {
            head: slot.head.clone(),
            pq,
            ec,
        };
        self.bytes -= before - slot.bytes();
        let taken = u8::from(bundle.ec.is_some()) | (u8::from(!pq_last_resort) << 1);
        if taken != 0 {
            // Nothing consumed (only the last-resort key handed out): nothing to journal.
            let mut r = Vec::with_capacity(26);
            r.push(b'T');
            r.extend_from_slice(&dest.0);
            r.push(taken);
            r.put_u32_le(bundle.ec.as_ref().map_or(0, |k| k.id));
            r.put_u32_le(bundle.pq.as_ref().map_or(0, |k| k.id));
            self.records.push(r);
        }
        self.stats.fetches_ok += 1;
        if pq_last_resort {
            self.stats.fetches_last_resort += 1;
        }
        Ok((bundle, puzzle))
    }

    /// One-time keys left in the slot of `dest`.
    pub fn count(&self, now_unix_s: u64, dest: &Dest) -> Option<(u16, u16)> {
        self.slots
            .get(dest)
            .filter(|s| s.expires_unix_s > now_unix_s)
            .map(Slot::counts)
    }

    /// Drops expired slots.
    pub fn expire(&mut self, now_unix_s: u64) -> usize {
        let dead: Vec<Dest> = self
            .slots
            .iter()
            .filter(|(_, s)| s.expires_unix_s <= now_unix_s)
            .map(|(d, _)| *d)
            .collect();
        for d in &dead {
            if let Some(slot) = self.slots.remove(d) {
                self.bytes -= slot.bytes();
            }
            let mut r = vec![b'D'];
            r.extend_from_slice(&d.0);
            self.records.push(r);
        }
        dead.len()
    }

    /// The whole live state as journal records (compaction).
    pub fn snapshot(&self) -> Vec<Vec<u8>> {
        self.slots
            .iter()
            .map(|(dest, s)| {
                let upload = Upload {
                    dest: *dest,
                    replace_one_time: true,
                    ttl_s: 0,
                    head: Some(s.head.clone()),
                    ec: s.ec.iter().cloned().collect(),
                    pq: s.pq.iter().cloned().collect(),
                };
                Self::upload_record(&upload, s.expires_unix_s)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
