//! Push registrations and wake decisions, sans-IO. A device (provider + token) is registered for
//! a set of dests, each until a time. A blob stored for one of those dests while nobody listens
//! asks for a wake; at most one wake per device is sent within the coalescing window, and each
//! provider has a rate cap. A provider answering "unregistered" (APNs 410, FCM 404, Web Push
//! 404/410) deletes the token. Tokens never leave this module except towards their provider: they
//! are not logged and not in metrics.
//!
//! **At rest nothing links one registration's dests** (docs/PRIVACY.md). The journal holds one
//! record per (device, dest): `S tag(16) entry(16) day:u32le sealed`, where
//! `tag = push_dest_tag(dest)` (a one-way function of the dest),
//! `seal_key = blake3 derive_key("ferry v1 push token seal", dest)`,
//! `entry = blake3 keyed(seal_key, provider ‖ token)[0..16]`, `day` = the UTC day from which the
//! registration has expired (`until / 86400 + 1`; 0 = removed, and then nothing follows), and
//! `sealed = nonce(12) ‖ ChaCha20-Poly1305(seal_key, nonce, aad = tag, provider:u8 ‖
//! until:u64le ‖ token_len:u16le ‖ token, zero-padded to 128, 256, 1024 or 2059 bytes)`. Without the
//! dest a record opens to nothing and shares no bytes with the records of the same token at
//! other dests. A restarted node keeps such records locked (by tag) until a blob for the dest
//! asks for a wake: the dest then opens them. Compaction writes records sorted by tag, and runs
//! `PUSH_REGROUP_S` after an append (a registration's records sit side by side at the journal's
//! end until then), while the live registrations take at most `PUSH_REGROUP_BYTES_MAX`. Records
//! of the old form (`R provider:u8 token_len:u16 token n:u16 n × (dest
//! until:u64)`) are still read, and rewritten at once.

use ahash::{AHashMap, AHashSet};
use bytes::BufMut;
use ferry_proto::frame::{Dest, PushProvider, PushStatus};
use ferry_proto::limits::PUSH_TOKEN_BYTES_MAX;

use crate::service::push_dest_tag;

use super::endpoint::AllowList;
use super::provider_index;

mod record;
use record::*;

/// Most dests one token may be registered for, whatever `push.dests_per_token_max` says (a
/// `PushResult` counts them in a u16, as the old-form journal records did).
pub const DESTS_PER_TOKEN_MAX: usize = 10_000;

// A sealed token's length and a `PushResult`'s count are u16.
const _: () = assert!(PUSH_TOKEN_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(DESTS_PER_TOKEN_MAX <= u16::MAX as usize);

/// Registration limits (named config keys under `[push]`).
#[derive(Clone, Debug)]
pub struct PushLimits {
    /// Devices (tokens) registered on the node at once.
    pub registrations_max: usize,
    /// Dests one token may be registered for; at most [`DESTS_PER_TOKEN_MAX`].
    pub dests_per_token_max: usize,
    /// Longest registration; a longer requested TTL is cut to this.
    pub registration_ttl_max_s: u64,
    /// At most one wake per device within this window.
    pub coalesce_window_ms: u64,
    /// Web Push endpoints must be allowed by this list (`push.webpush_origins_allowed`).
    pub webpush_origins_allowed: AllowList,
    /// Providers the node has credentials for (APNs, FCM, Web Push).
    pub enabled: [bool; 3],
}

type DeviceKey = (u8, String);

#[derive(Debug)]
struct Device {
    dests: AHashMap<Dest, u64>,
    /// When the last wake was queued (monotonic ms).
    last_wake_ms: Option<u64>,
}

/// One wake to send. `Debug` does not print the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Wake {
    pub provider: PushProvider,
    pub token: String,
}

impl std::fmt::Debug for Wake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Wake({:?}, token of {} bytes)",
            self.provider,
            self.token.len()
        )
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct PushStats {
    pub registrations_ok: u64,
    pub registrations_refused: u64,
    pub wakes_requested: u64,
    pub wakes_coalesced: u64,
    pub tokens_deleted: u64,
}

/// A registration the journal holds and this run has not opened: kept by its dest's tag and
/// entry id until a wake for the dest (which knows the dest) opens it.
#[derive(Clone, Debug)]
struct Sealed {
    /// The UTC day (`unix_s / 86_400`) from which the registration has expired; its exact
    /// expiry is inside `sealed`.
    day: u32,
    /// `nonce ‖ ciphertext ‖ tag` (see the module doc).
    sealed: Vec<u8>,
}

#[derive(Debug)]
pub struct Registry {
    limits: PushLimits,
    devices: AHashMap<DeviceKey, Device>,
    by_dest: AHashMap<Dest, AHashSet<DeviceKey>>,
    /// Registrations read from the journal and not opened yet: dest tag → entry id → record.
    locked: AHashMap<[u8; 16], AHashMap<[u8; 16], Sealed>>,
    records: Vec<Vec<u8>>,
    /// When (Unix s) the first record since the last compaction was handed to the journal: the
    /// journal's tail groups one registration's records until the next compaction sorts them.
    appended_at: Option<u64>,
    /// The journal held records of the old, linkable form (`R`): rewrite it at once.
    old_records: bool,
    /// No compaction before this (Unix s): the last one failed.
    retry_at: u64,
    /// Tags whose locked registrations are gone (opened, replaced, expired): the shards holding
    /// them armed are told ([`Registry::take_unarmed_tags`]).
    unarmed: Vec<[u8; 16]>,
    /// Devices with a wake queued, in flight or waiting to retry: no second one until it is
    /// done. Kept apart from `devices`, so that a device removed and registered again while
    /// its wake waits does not get a second one beside it (found by the simulator, seed 3853).
    /// At most one per wake the dispatcher holds, so bounded by its queue and in-flight limit.
    pending: AHashSet<DeviceKey>,
    /// Dests whose locked registrations a wake opened: their owner shards, which armed them
    /// until the end of the tag's day, learn the exact expiry ([`Registry::take_opened`]).
    opened: Vec<Dest>,
    /// Where the seals' nonces come from (seeded by the caller: the node from the system's
    /// randomness, the simulator from its seed).
    nonces: Nonces,
    pub stats: PushStats,
}

/// Nonces for sealed records: `blake3 keyed(seed, counter)[0..12]`, a PRF of a counter under a
/// fresh 256-bit seed per run, so as unlikely to repeat as 96 random bits, and reproducible from
/// the seed (the simulator's runs replay).
#[derive(Debug)]
struct Nonces {
    seed: [u8; 32],
    next: u64,
}

impl Nonces {
    fn take(&mut self) -> [u8; SEAL_NONCE_BYTES] {
        let h = blake3::keyed_hash(&self.seed, &self.next.to_le_bytes());
        self.next += 1;
        let mut n = [0u8; SEAL_NONCE_BYTES];
        n.copy_from_slice(&h.as_bytes()[..SEAL_NONCE_BYTES]);
        n
    }
}

impl Registry {
    /// `nonce_seed`: fresh randomness per run (the node's) or drawn from a seed (the
    /// simulator's); the seals' nonces derive from it.
    pub fn new(limits: PushLimits, nonce_seed: [u8; 32]) -> Self {
        assert!(
            limits.dests_per_token_max <= DESTS_PER_TOKEN_MAX,
            "push.dests_per_token_max {} is over {DESTS_PER_TOKEN_MAX}: config validation lets none through",
            limits.dests_per_token_max
        );
        Registry {
            limits,
            devices: AHashMap::new(),
            by_dest: AHashMap::new(),
            locked: AHashMap::new(),
            records: Vec::new(),
            appended_at: None,
            old_records: false,
            retry_at: 0,
            unarmed: Vec::new(),
            opened: Vec::new(),
            pending: AHashSet::new(),
            nonces: Nonces {
                seed: nonce_seed,
                next: 0,
            },
            stats: PushStats::default(),
        }
    }

    /// Devices this run has opened (registered, or woken since a restart).
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// Registrations read from the journal and not opened yet.
    pub fn locked(&self) -> usize {
        self.locked.values().map(|e| e.len()).sum()
    }

    /// About how many bytes the live state takes in the journal (compaction's yardstick).
    pub fn live_bytes(&self) -> u64 {
        let entries = self.by_dest.values().map(|s| s.len()).sum::<usize>() + self.locked();
        entries as u64 * RECORD_BYTES_TYPICAL
    }

    /// The records to append to the journal this turn. `now_unix_s` starts the regrouping
    /// clock ([`Registry::compaction_due`]).
    pub fn take_records(&mut self, now_unix_s: u64) -> Vec<Vec<u8>> {
        if !self.records.is_empty() && self.appended_at.is_none() {
            self.appended_at = Some(now_unix_s);
        }
        std::mem::take(&mut self.records)
    }

    /// Whether the journal should be rewritten now: it has `grown` past its live state, it
    /// still holds records of the old linkable form (whatever its size), or, with `regroup`,
    /// records were appended (or expired) `regroup_s` or more ago: one registration's records sit
    /// side by side at the journal's end until a compaction sorts them by tag. Not before
    /// `regroup_s` after a failed compaction.
    pub fn compaction_due(
        &self,
        now_unix_s: u64,
        regroup_s: u64,
        regroup: bool,
        grown: bool,
    ) -> bool {
        now_unix_s >= self.retry_at
            && (grown
                || self.old_records
                || (regroup
                    && self
                        .appended_at
                        .is_some_and(|t| now_unix_s >= t.saturating_add(regroup_s))))
    }

    /// The journal was rewritten from [`Registry::snapshot`].
    pub fn compacted(&mut self) {
        self.appended_at = None;
        self.old_records = false;
        self.records.clear();
    }

    /// A rewrite failed (the old journal is kept): try again `regroup_s` from now.
    pub fn compaction_failed(&mut self, now_unix_s: u64, regroup_s: u64) {
        self.retry_at = now_unix_s.saturating_add(regroup_s);
    }

    /// Tags no longer armed, for the shards (each at most once).
    pub fn take_unarmed_tags(&mut self) -> Vec<[u8; 16]> {
        std::mem::take(&mut self.unarmed)
    }

    /// Dests opened since the last call, with their armed-until now (0: nothing of them was
    /// live), for their owner shards.
    pub fn take_opened(&mut self) -> Vec<(Dest, u64)> {
        let opened = std::mem::take(&mut self.opened);
        opened.iter().map(|d| (*d, self.armed_until(d))).collect()
    }

    /// `token` as the registry keeps it, if it is well-formed for `provider`: a Web Push
    /// endpoint allowed by `push.webpush_origins_allowed`, normalised (the node stores, signs
    /// for and POSTs to that form only), and APNs and FCM tokens as they are.
    pub fn canonical_token(&self, provider: PushProvider, token: &str) -> Option<String> {
        let ok = match provider {
            PushProvider::Apns => {
                (16..=200).contains(&token.len()) && token.chars().all(|c| c.is_ascii_hexdigit())
            }
            PushProvider::Fcm => {
                (1..=PUSH_TOKEN_BYTES_MAX).contains(&token.len())
                    && token
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c))
            }
            PushProvider::WebPush => {
                return self
                    .limits
                    .webpush_origins_allowed
                    .endpoint(token)
                    .ok()
                    .map(|e| e.as_str().to_string());
            }
        };
        ok.then(|| token.to_string())
    }

    /// Registers (`ttl_s` > 0) or removes (`ttl_s` = 0) `token` for `dests`. Returns the dests
    /// the token is registered for afterwards, and the new "armed until" of each dest touched
    /// (0 = no registration left), for the dests' owner shards.
    pub fn register(
        &mut self,
        now_unix_s: u64,
        provider: PushProvider,
        token: &[u8],
        ttl_s: u32,
        dests: &[Dest],
    ) -> Result<(u16, Vec<(Dest, u64)>), PushStatus> {
        let r = self.register_inner(now_unix_s, provider, token, ttl_s, dests);
        match &r {
            Ok(_) => self.stats.registrations_ok += 1,
            Err(_) => self.stats.registrations_refused += 1,
        }
        r
    }

    fn register_inner(
        &mut self,
        now_unix_s: u64,
        provider: PushProvider,
        token: &[u8],
        ttl_s: u32,
        dests: &[Dest],
    ) -> Result<(u16, Vec<(Dest, u64)>), PushStatus> {
        if !self.limits.enabled[provider_index(provider)] {
            return Err(PushStatus::ProviderDisabled);
        }
        let token = std::str::from_utf8(token).map_err(|_| PushStatus::BadToken)?;
        let token = self
            .canonical_token(provider, token)
            .ok_or(PushStatus::BadToken)?;
        let key: DeviceKey = (provider as u8, token);
        // Also bounds a removal's records, and a request naming one dest many times.
        if dests.len() > self.limits.dests_per_token_max {
            return Err(PushStatus::TooMany);
        }
        let until = if ttl_s == 0 {
            0
        } else {
            now_unix_s + u64::from(ttl_s).min(self.limits.registration_ttl_max_s)
        };
        if until > 0 {
            let existing = self.devices.get(&key);
            if existing.is_none() && self.devices.len() >= self.limits.registrations_max {
                return Err(PushStatus::TooMany);
            }
            let mut set: AHashSet<Dest> = existing
                .map(|d| d.dests.keys().copied().collect())
                .unwrap_or_default();
            set.extend(dests.iter().copied());
            if set.len() > self.limits.dests_per_token_max {
                return Err(PushStatus::TooMany);
            }
        }
        let items: Vec<(Dest, u64)> = dests.iter().map(|d| (*d, until)).collect();
        self.journal(&key, &items);
        let arms = self.apply(&key, &items);
        let n = self.devices.get(&key).map_or(0, |d| d.dests.len());
        Ok((len_u16(n, DESTS_PER_TOKEN_MAX), arms))
    }

    /// Journals (dest, until) items of a device, one record per dest (until 0: removed).
    fn journal(&mut self, key: &DeviceKey, items: &[(Dest, u64)]) {
        for (dest, until) in items {
            let nonce = self.nonces.take();
            self.records.push(sealed_record(dest, key, *until, nonce));
        }
    }

    /// Applies (dest, until) items to a device; returns the new armed-until per touched dest.
    /// A locked copy of the same registration is dropped: this one supersedes it.
    fn apply(&mut self, key: &DeviceKey, items: &[(Dest, u64)]) -> Vec<(Dest, u64)> {
        for (dest, until) in items {
            if !self.locked.is_empty() {
                let tag = push_dest_tag(dest);
                if let Some(entries) = self.locked.get_mut(&tag) {
                    entries.remove(&entry_id(&seal_key(dest), key));
                    if entries.is_empty() {
                        self.locked.remove(&tag);
                        self.unarmed.push(tag);
                    }
                }
            }
            if *until == 0 {
                if let Some(d) = self.devices.get_mut(key) {
                    d.dests.remove(dest);
                }
                if let Some(set) = self.by_dest.get_mut(dest) {
                    set.remove(key);
                    if set.is_empty() {
                        self.by_dest.remove(dest);
                    }
                }
            } else {
                self.devices
                    .entry(key.clone())
                    .or_insert_with(|| Device {
                        dests: AHashMap::new(),
                        last_wake_ms: None,
                    })
                    .dests
                    .insert(*dest, *until);
                self.by_dest.entry(*dest).or_default().insert(key.clone());
            }
        }
        if self.devices.get(key).is_some_and(|d| d.dests.is_empty()) {
            self.devices.remove(key);
        }
        items
            .iter()
            .map(|(d, _)| (*d, self.armed_until(d)))
            .collect()
    }

    /// Opens the locked registrations of `dest` (a wake for it came, so the dest is known):
    /// they become ordinary ones, within the registry's limits. One that no longer passes
    /// `canonical_token` (a Web Push origin taken off the allowed list), that would take its
    /// device past `dests_per_token_max` or the registry past `registrations_max` (a device may
    /// have registered anew since the restart, unaware of what was sealed), or that does not
    /// open, is deleted, and its deletion journaled; an expired one is removed.
    fn open_locked(&mut self, now_unix_s: u64, dest: &Dest) {
        if self.locked.is_empty() {
            return;
        }
        let tag = push_dest_tag(dest);
        let Some(entries) = self.locked.remove(&tag) else {
            return;
        };
        self.unarmed.push(tag);
        self.opened.push(*dest);
        let seal = seal_key(dest);
        for (entry, s) in entries {
            match unseal(&seal, &tag, &s.sealed) {
                Some((key, until)) if entry_id(&seal, &key) == entry => {
                    let canonical = PushProvider::from_u8(key.0)
                        .and_then(|p| self.canonical_token(p, &key.1))
                        .is_some_and(|t| t == key.1);
                    let fits = match self.devices.get(&key) {
                        Some(d) => {
                            d.dests.contains_key(dest)
                                || d.dests.len() < self.limits.dests_per_token_max
                        }
                        None => self.devices.len() < self.limits.registrations_max,
                    };
                    if canonical && fits && until > now_unix_s {
                        self.apply(&key, &[(*dest, until)]);
                    } else {
                        self.records.push(removal_record(&tag, &entry));
                    }
                }
                _ => self.records.push(removal_record(&tag, &entry)),
            }
        }
    }

    /// The latest expiry over every registration of `dest` (0 = none); a locked one counts with
    /// the end of its expiry's day.
    pub fn armed_until(&self, dest: &Dest) -> u64 {
        let open = self.by_dest.get(dest).map_or(0, |keys| {
            keys.iter()
                .filter_map(|k| self.devices.get(k)?.dests.get(dest).copied())
                .max()
                .unwrap_or(0)
        });
        if self.locked.is_empty() {
            return open;
        }
        open.max(self.locked_until(&push_dest_tag(dest)))
    }

    fn locked_until(&self, tag: &[u8; 16]) -> u64 {
        self.locked.get(tag).map_or(0, |entries| {
            entries
                .values()
                .map(|s| u64::from(s.day) * DAY_S)
                .max()
                .unwrap_or(0)
        })
    }

    /// Every registered dest with its armed-until (start-up: tell the owner shards).
    pub fn all_armed(&self) -> Vec<(Dest, u64)> {
        self.by_dest
            .keys()
            .map(|d| (*d, self.armed_until(d)))
            .collect()
    }

    /// Every locked registration's dest tag with the end of its expiry's day (start-up: tell
    /// every shard, since a tag names no owner).
    pub fn all_armed_tags(&self) -> Vec<([u8; 16], u64)> {
        self.locked
            .keys()
            .map(|t| (*t, self.locked_until(t)))
            .collect()
    }

    /// A blob was stored for `dest`: the wakes to send now (coalesced per device).
    pub fn wake(&mut self, now_unix_s: u64, now_ms: u64, dest: &Dest) -> Vec<Wake> {
        self.stats.wakes_requested += 1;
        self.open_locked(now_unix_s, dest);
        let Some(keys) = self.by_dest.get(dest) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for key in keys {
            let Some(dev) = self.devices.get_mut(key) else {
                continue;
            };
            if dev.dests.get(dest).is_none_or(|&until| until <= now_unix_s) {
                continue;
            }
            let in_window = dev
                .last_wake_ms
                .is_some_and(|last| now_ms < last + self.limits.coalesce_window_ms);
            if self.pending.contains(key) || in_window {
                self.stats.wakes_coalesced += 1;
                continue;
            }
            let Some(provider) = PushProvider::from_u8(key.0) else {
                continue;
            };
            dev.last_wake_ms = Some(now_ms);
            self.pending.insert(key.clone());
            out.push(Wake {
                provider,
                token: key.1.clone(),
            });
        }
        out
    }

    /// The wake of this device is done (sent, failed for good, or dropped): the next one may be
    /// queued once the window has passed. `dropped`: it never left, so the window restarts now.
    pub fn wake_finished(&mut self, wake: &Wake, dropped: bool) {
        let key: DeviceKey = (wake.provider as u8, wake.token.clone());
        let was = self.pending.remove(&key);
        debug_assert!(was, "a wake finished that was not pending");
        if let Some(dev) = self.devices.get_mut(&key) {
            if dropped {
                dev.last_wake_ms = None;
            }
        }
    }

    /// The provider said the token is gone: delete it (its registrations this run has opened;
    /// locked ones go when their dest's next wake finds the token gone from the provider, or
    /// when they expire). Returns the new armed-until of its dests.
    pub fn delete_token(&mut self, provider: PushProvider, token: &str) -> Vec<(Dest, u64)> {
        let key: DeviceKey = (provider as u8, token.to_string());
        let Some(dev) = self.devices.get(&key) else {
            return Vec::new();
        };
        let items: Vec<(Dest, u64)> = dev.dests.keys().map(|d| (*d, 0)).collect();
        self.journal(&key, &items);
        self.stats.tokens_deleted += 1;
        self.apply(&key, &items)
    }

    /// Whether `token` is registered and opened (tests, the simulator's checks).
    pub fn has_token(&self, provider: PushProvider, token: &str) -> bool {
        self.devices
            .contains_key(&(provider as u8, token.to_string()))
    }

    /// Drops expired registrations; returns the new armed-until of the dests touched. Locked
    /// ones go at the end of their expiry's day (their tags to [`Registry::take_unarmed_tags`]),
    /// and leave the journal at the compaction that follows.
    pub fn expire(&mut self, now_unix_s: u64) -> Vec<(Dest, u64)> {
        let mut dead: Vec<(DeviceKey, Vec<(Dest, u64)>)> = Vec::new();
        for (key, dev) in &self.devices {
            let items: Vec<(Dest, u64)> = dev
                .dests
                .iter()
                .filter(|(_, u)| **u <= now_unix_s)
                .map(|(d, _)| (*d, 0))
                .collect();
            if !items.is_empty() {
                dead.push((key.clone(), items));
            }
        }
        let mut touched: AHashSet<Dest> = AHashSet::new();
        for (key, items) in dead {
            self.journal(&key, &items);
            self.apply(&key, &items);
            touched.extend(items.iter().map(|(d, _)| *d));
        }
        let today = now_unix_s / DAY_S;
        let mut dropped = 0usize;
        let unarmed = &mut self.unarmed;
        self.locked.retain(|tag, entries| {
            let before = entries.len();
            entries.retain(|_, s| u64::from(s.day) > today);
            dropped += before - entries.len();
            if entries.is_empty() {
                unarmed.push(*tag);
            }
            !entries.is_empty()
        });
        if dropped > 0 {
            // The journal still holds them: the next compaction leaves them out.
            self.appended_at.get_or_insert(now_unix_s);
        }
        touched
            .into_iter()
            .map(|d| (d, self.armed_until(&d)))
            .collect()
    }

    /// Rebuilds the registrations from journal records: sealed ones stay locked until a wake
    /// opens them; records of the old form (`R`, written before the journal sealed tokens) are
    /// applied as they are, and [`Registry::compaction_due`] then asks for a rewrite at once.
    /// Returns records it could not parse (or that would take a token past
    /// [`DESTS_PER_TOKEN_MAX`], which no registration can). Old-form tokens the current
    /// configuration no longer accepts as they are stored (a Web Push origin taken off the
    /// allowed list, an endpoint stored before it was normalised) are deleted, and their
    /// deletion journaled.
    pub fn replay(&mut self, records: &[Vec<u8>]) -> usize {
        let mut bad = 0;
        // Any record not of the sealed form (even one that does not parse) may name a token or
        // dests in the clear: the journal is rewritten without it at once.
        self.old_records |= records.iter().any(|r| r.first() != Some(&b'S'));
        // Old-form registrations by (tag, entry), for sealed records that follow them.
        let mut opened: AHashMap<([u8; 16], [u8; 16]), (Dest, DeviceKey)> = AHashMap::new();
        for r in records {
            match r.first() {
                Some(b'S') => match parse_sealed_record(r) {
                    Some((tag, entry, day, sealed)) => {
                        if let Some((dest, key)) = opened.remove(&(tag, entry)) {
                            self.apply(&key, &[(dest, 0)]);
                        }
                        if day == 0 {
                            if let Some(entries) = self.locked.get_mut(&tag) {
                                entries.remove(&entry);
                                if entries.is_empty() {
                                    self.locked.remove(&tag);
                                }
                            }
                        } else {
                            self.locked.entry(tag).or_default().insert(
                                entry,
                                Sealed {
                                    day,
                                    sealed: sealed.to_vec(),
                                },
                            );
                        }
                    }
                    None => bad += 1,
                },
                _ => match parse_record(r) {
                    Some((key, items)) if self.dests_after(&key, &items) <= DESTS_PER_TOKEN_MAX => {
                        for (dest, until) in &items {
                            let id = (push_dest_tag(dest), entry_id(&seal_key(dest), &key));
                            if *until == 0 {
                                opened.remove(&id);
                            } else {
                                opened.insert(id, (*dest, key.clone()));
                            }
                        }
                        self.apply(&key, &items);
                    }
                    _ => bad += 1,
                },
            }
        }
        let refused: Vec<(PushProvider, String)> = self
            .devices
            .keys()
            .filter_map(|(p, t)| Some((PushProvider::from_u8(*p)?, t.clone())))
            .filter(|(p, t)| self.canonical_token(*p, t).as_ref() != Some(t))
            .collect();
        for (p, t) in refused {
            self.delete_token(p, &t);
            self.stats.tokens_deleted -= 1; // not the provider's doing
        }
        bad
    }

    /// How many dests the device would have after `items`.
    fn dests_after(&self, key: &DeviceKey, items: &[(Dest, u64)]) -> usize {
        let mut dests: AHashSet<Dest> = self
            .devices
            .get(key)
            .map(|d| d.dests.keys().copied().collect())
            .unwrap_or_default();
        for (dest, until) in items {
            if *until == 0 {
                dests.remove(dest);
            } else {
                dests.insert(*dest);
            }
        }
        dests.len()
    }

    /// The live state as journal records (compaction), sorted by dest tag and entry id: the
    /// order says nothing about which records one registration wrote.
    pub fn snapshot(&mut self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for (key, d) in &self.devices {
            for (dest, until) in &d.dests {
                out.push(sealed_record(dest, key, *until, self.nonces.take()));
            }
        }
        for (tag, entries) in &self.locked {
            for (entry, s) in entries {
                out.push(locked_record(tag, entry, s));
            }
        }
        out.sort_unstable_by(|a, b| a[1..33].cmp(&b[1..33]));
        out
    }
}

#[cfg(test)]
mod tests;
