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

const DAY_S: u64 = 86_400;
/// A sealed record of an FCM token, with the journal's header: what compaction counts per
/// registration of one device at one dest.
const RECORD_BYTES_TYPICAL: u64 = 37 + 12 + 256 + 16 + 12;
/// The lengths a sealed token's plaintext is padded to (the first that fits), so that a
/// record's length tells at most the provider's kind: every APNs token (64 hex digits) fits the
/// first, FCM tokens (about 160 characters) the second, Web Push endpoints (a few hundred
/// bytes) the third; only an endpoint over about 1 KB takes the last.
const SEAL_PAD_STEPS: [usize; 4] = [128, 256, 1024, 11 + PUSH_TOKEN_BYTES_MAX];
const SEAL_NONCE_BYTES: usize = 12;

/// The key a dest's registrations are sealed under: only someone who knows the dest opens them.
fn seal_key(dest: &Dest) -> [u8; 32] {
    blake3::derive_key("ferry v1 push token seal", &dest.0)
}

/// A registration's id under its dest: the same for one device and dest in every record (so a
/// later record replaces an earlier one), unrelated across dests.
fn entry_id(seal: &[u8; 32], key: &DeviceKey) -> [u8; 16] {
    let mut h = blake3::Hasher::new_keyed(seal);
    h.update(&[key.0]);
    h.update(key.1.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    id
}

fn aead_key(seal: &[u8; 32]) -> ring::aead::LessSafeKey {
    ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, seal)
            .unwrap_or_else(|_| unreachable!("a 32-byte key")),
    )
}

/// `nonce ‖ ChaCha20-Poly1305(pad(provider ‖ until ‖ token_len ‖ token))`, the tag as AAD.
fn seal(dest: &Dest, key: &DeviceKey, until: u64, nonce: [u8; SEAL_NONCE_BYTES]) -> Vec<u8> {
    let seal = seal_key(dest);
    let mut pt = Vec::with_capacity(SEAL_PAD_STEPS[0]);
    pt.push(key.0);
    pt.put_u64_le(until);
    pt.put_u16_le(len_u16(key.1.len(), PUSH_TOKEN_BYTES_MAX));
    pt.extend_from_slice(key.1.as_bytes());
    let padded = SEAL_PAD_STEPS
        .into_iter()
        .find(|&n| n >= pt.len())
        .unwrap_or_else(|| unreachable!("a token is at most PUSH_TOKEN_BYTES_MAX"));
    pt.resize(padded, 0);
    aead_key(&seal)
        .seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(push_dest_tag(dest)),
            &mut pt,
        )
        .unwrap_or_else(|_| unreachable!("a record is far below ChaCha20-Poly1305's limit"));
    let mut out = nonce.to_vec();
    out.extend_from_slice(&pt);
    out
}

/// Opens a sealed registration: (device, until), or `None` if it does not open.
fn unseal(seal: &[u8; 32], tag: &[u8; 16], sealed: &[u8]) -> Option<(DeviceKey, u64)> {
    let nonce: [u8; SEAL_NONCE_BYTES] = sealed.get(..SEAL_NONCE_BYTES)?.try_into().ok()?;
    let mut ct = sealed.get(SEAL_NONCE_BYTES..)?.to_vec();
    let pt = aead_key(seal)
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(*tag),
            &mut ct,
        )
        .ok()?;
    let provider = *pt.first()?;
    PushProvider::from_u8(provider)?;
    let until = u64::from_le_bytes(pt.get(1..9)?.try_into().ok()?);
    let tl = usize::from(u16::from_le_bytes(pt.get(9..11)?.try_into().ok()?));
    if tl > PUSH_TOKEN_BYTES_MAX {
        return None;
    }
    let token = std::str::from_utf8(pt.get(11..11 + tl)?).ok()?.to_string();
    Some(((provider, token), until))
}

/// The record of one device's registration for one dest (`until` 0: removed).
fn sealed_record(
    dest: &Dest,
    key: &DeviceKey,
    until: u64,
    nonce: [u8; SEAL_NONCE_BYTES],
) -> Vec<u8> {
    let tag = push_dest_tag(dest);
    let entry = entry_id(&seal_key(dest), key);
    if until == 0 {
        return removal_record(&tag, &entry);
    }
    let day = u32::try_from(until / DAY_S + 1).unwrap_or(u32::MAX);
    locked_record(
        &tag,
        &entry,
        &Sealed {
            day,
            sealed: seal(dest, key, until, nonce),
        },
    )
}

fn removal_record(tag: &[u8; 16], entry: &[u8; 16]) -> Vec<u8> {
    let mut r = Vec::with_capacity(37);
    r.push(b'S');
    r.extend_from_slice(tag);
    r.extend_from_slice(entry);
    r.put_u32_le(0);
    r
}

fn locked_record(tag: &[u8; 16], entry: &[u8; 16], s: &Sealed) -> Vec<u8> {
    let mut r = Vec::with_capacity(37 + s.sealed.len());
    r.push(b'S');
    r.extend_from_slice(tag);
    r.extend_from_slice(entry);
    r.put_u32_le(s.day);
    r.extend_from_slice(&s.sealed);
    r
}

/// An `S` record's fields: (tag, entry, day, sealed).
type SealedFields<'a> = ([u8; 16], [u8; 16], u32, &'a [u8]);

/// The fields of an `S` record; a removal (day 0) has nothing sealed.
fn parse_sealed_record(r: &[u8]) -> Option<SealedFields<'_>> {
    if *r.first()? != b'S' {
        return None;
    }
    let tag: [u8; 16] = r.get(1..17)?.try_into().ok()?;
    let entry: [u8; 16] = r.get(17..33)?.try_into().ok()?;
    let day = u32::from_le_bytes(r.get(33..37)?.try_into().ok()?);
    let sealed = r.get(37..)?;
    let ok = if day == 0 {
        sealed.is_empty()
    } else {
        SEAL_PAD_STEPS.contains(&sealed.len().saturating_sub(SEAL_NONCE_BYTES + 16))
    };
    ok.then_some((tag, entry, day, sealed))
}

/// `len` as a u16, asserting the registry's invariant `len <= max` (each `max` is const-asserted
/// to fit a u16 above): a clamped length would write a record that never replays.
fn len_u16(len: usize, max: usize) -> u16 {
    assert!(
        len <= max,
        "push record field of {len}, over its limit {max}"
    );
    u16::try_from(len).unwrap_or_else(|_| unreachable!("limit {max} fits a u16"))
}

/// A record of the old form (`R`), which journals written before sealing hold: tests build them
/// to check their replay.
#[cfg(test)]
fn record(key: &DeviceKey, items: &[(Dest, u64)]) -> Vec<u8> {
    let mut r = Vec::with_capacity(6 + key.1.len() + items.len() * 24);
    r.push(b'R');
    r.push(key.0);
    r.put_u16_le(len_u16(key.1.len(), PUSH_TOKEN_BYTES_MAX));
    r.extend_from_slice(key.1.as_bytes());
    r.put_u16_le(len_u16(items.len(), DESTS_PER_TOKEN_MAX));
    for (d, u) in items {
        r.extend_from_slice(&d.0);
        r.put_u64_le(*u);
    }
    r
}

fn parse_record(r: &[u8]) -> Option<(DeviceKey, Vec<(Dest, u64)>)> {
    if *r.first()? != b'R' {
        return None;
    }
    let provider = *r.get(1)?;
    PushProvider::from_u8(provider)?;
    let tl = usize::from(u16::from_le_bytes(r.get(2..4)?.try_into().ok()?));
    if tl > PUSH_TOKEN_BYTES_MAX {
        return None;
    }
    let token = std::str::from_utf8(r.get(4..4 + tl)?).ok()?.to_string();
    let mut at = 4 + tl;
    let n = usize::from(u16::from_le_bytes(r.get(at..at + 2)?.try_into().ok()?));
    at += 2;
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        let d = Dest(r.get(at..at + 16)?.try_into().ok()?);
        let u = u64::from_le_bytes(r.get(at + 16..at + 24)?.try_into().ok()?);
        items.push((d, u));
        at += 24;
    }
    (at == r.len()).then_some(((provider, token), items))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PushLimits {
        PushLimits {
            registrations_max: 3,
            dests_per_token_max: 4,
            registration_ttl_max_s: 1000,
            coalesce_window_ms: 60_000,
            webpush_origins_allowed: AllowList::parse(&["https://push.example:8443"]).unwrap(),
            enabled: [true, true, true],
        }
    }
    const APNS: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn one_wake_per_device_per_window() {
        let mut r = Registry::new(limits(), [9; 32]);
        let d = Dest([1; 16]);
        let (n, arms) = r
            .register(100, PushProvider::Apns, APNS.as_bytes(), 50, &[d])
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(arms, vec![(d, 150)]);
        assert_eq!(r.wake(100, 0, &d).len(), 1);
        assert!(r.wake(100, 59_999, &d).is_empty(), "inside the window");
        assert_eq!(r.stats.wakes_coalesced, 1);
        // Still pending (say, retrying after a 429): no second wake after the window either.
        assert!(r.wake(100, 60_000, &d).is_empty());
        let w = Wake {
            provider: PushProvider::Apns,
            token: APNS.into(),
        };
        r.wake_finished(&w, false);
        assert!(!format!("{w:?}").contains(APNS), "Debug hides the token");
        assert_eq!(r.wake(100, 60_000, &d).len(), 1);
        r.wake_finished(&w, true);
        assert_eq!(
            r.wake(100, 60_001, &d).len(),
            1,
            "a dropped wake restarts the window"
        );
        r.wake_finished(&w, false);
        assert!(r.wake(151, 200_000, &d).is_empty(), "registration expired");
        assert!(r.wake(100, 0, &Dest([2; 16])).is_empty());
    }

    #[test]
    fn tokens_are_checked_per_provider() {
        let mut r = Registry::new(limits(), [9; 32]);
        let d = [Dest([1; 16])];
        let bad = |r: &mut Registry, p, t: &str| r.register(0, p, t.as_bytes(), 10, &d);
        assert_eq!(
            bad(&mut r, PushProvider::Apns, "zz"),
            Err(PushStatus::BadToken)
        );
        assert_eq!(
            bad(&mut r, PushProvider::Fcm, "a b"),
            Err(PushStatus::BadToken)
        );
        assert_eq!(
            bad(&mut r, PushProvider::WebPush, "https://evil.example/x"),
            Err(PushStatus::BadToken)
        );
        assert_eq!(
            bad(&mut r, PushProvider::WebPush, "http://push.example:8443/x"),
            Err(PushStatus::BadToken)
        );
        assert!(
            bad(
                &mut r,
                PushProvider::WebPush,
                "https://push.example:8443/sub/1"
            )
            .is_ok()
        );
        let mut off = limits();
        off.enabled = [false, true, true];
        let mut r = Registry::new(off, [9; 32]);
        assert_eq!(
            bad(&mut r, PushProvider::Apns, APNS),
            Err(PushStatus::ProviderDisabled)
        );
    }

    #[test]
    fn web_push_endpoints_are_parsed_and_stored_normalised() {
        let mut l = limits();
        l.webpush_origins_allowed =
            AllowList::parse(&["https://*.notify.windows.com", "https://push.example:8443"])
                .unwrap();
        let mut r = Registry::new(l, [9; 32]);
        let d = [Dest([1; 16])];
        let wp =
            |r: &mut Registry, t: &str| r.register(0, PushProvider::WebPush, t.as_bytes(), 10, &d);
        // Hosts that end where the first `/` is not: the wake would go to attacker.example or
        // to a local port. (endpoint.rs tests every other shape.)
        for bypass in [
            "https://attacker.example?.notify.windows.com/x",
            "https://127.0.0.1:8080?.notify.windows.com/x",
            "https://attacker.example#.notify.windows.com/x",
            "https://attacker.example\\.notify.windows.com/x",
            "https://a.notify.windows.com@attacker.example/x",
            "https://notify.windows.com.evil/x",
        ] {
            assert_eq!(wp(&mut r, bypass), Err(PushStatus::BadToken), "{bypass}");
        }
        assert_eq!(r.devices(), 0);
        // Two spellings of one endpoint are one device, kept (and woken) in the normalised form.
        wp(&mut r, "HTTPS://Push.Example:8443/sub/1").unwrap();
        wp(&mut r, "https://push.example:8443/sub/x/../1").unwrap();
        assert_eq!(r.devices(), 1);
        assert!(r.has_token(PushProvider::WebPush, "https://push.example:8443/sub/1"));
        let wakes = r.wake(0, 0, &d[0]);
        assert_eq!(wakes[0].token, "https://push.example:8443/sub/1");
    }

    #[test]
    fn replay_deletes_endpoints_the_allow_list_does_not_pass_as_stored() {
        let ds = [Dest([1; 16])];
        // Journals written before endpoints were parsed may hold these.
        let stored = [
            "https://attacker.example?.notify.windows.com/x",
            "https://push.example:8443/s/x/../1",
            "https://push.example:8443/s/2",
        ];
        let records: Vec<Vec<u8>> = stored
            .iter()
            .map(|t| {
                record(
                    &(PushProvider::WebPush as u8, t.to_string()),
                    &[(ds[0], 10)],
                )
            })
            .collect();
        let mut l = limits();
        l.webpush_origins_allowed =
            AllowList::parse(&["https://*.notify.windows.com", "https://push.example:8443"])
                .unwrap();
        let mut r = Registry::new(l, [9; 32]);
        assert_eq!(r.replay(&records), 0);
        assert_eq!(r.devices(), 1);
        assert!(r.has_token(PushProvider::WebPush, stored[2]));
        assert_eq!(r.take_records(0).len(), 2, "both deletions journaled");
        assert!(
            r.compaction_due(0, 60, true, false),
            "old-form records are rewritten at once"
        );
    }

    #[test]
    fn record_lengths_are_refused_or_asserted_never_clamped() {
        let mut r = Registry::new(limits(), [9; 32]);
        let d = Dest([1; 16]);
        // A token longer than a record's u16 length (and than PUSH_TOKEN_BYTES_MAX).
        let long = format!("https://push.example:8443/{}", "a".repeat(70_000));
        assert_eq!(
            r.register(0, PushProvider::WebPush, long.as_bytes(), 10, &[d]),
            Err(PushStatus::BadToken)
        );
        let long_fcm = "a".repeat(PUSH_TOKEN_BYTES_MAX + 1);
        assert_eq!(
            r.register(0, PushProvider::Fcm, long_fcm.as_bytes(), 10, &[d]),
            Err(PushStatus::BadToken)
        );
        // One dest named more times than a record's u16 count holds.
        let many = vec![d; usize::from(u16::MAX) + 1];
        assert_eq!(
            r.register(0, PushProvider::Fcm, b"tok", 10, &many),
            Err(PushStatus::TooMany)
        );
        assert_eq!(
            r.register(0, PushProvider::Fcm, b"tok", 0, &many),
            Err(PushStatus::TooMany)
        );
        // Whatever was accepted replays, record for record.
        r.register(0, PushProvider::Fcm, b"tok", 10, &[d; 4])
            .unwrap();
        let records = r.take_records(0);
        assert_eq!(Registry::new(limits(), [9; 32]).replay(&records), 0);
        // A journal record claiming a longer token than any registration can have is damage.
        let mut forged = vec![b'R', PushProvider::Fcm as u8];
        let token_len = PUSH_TOKEN_BYTES_MAX + 1;
        forged.put_u16_le(u16::try_from(token_len).unwrap());
        forged.extend(std::iter::repeat_n(b'a', token_len));
        forged.put_u16_le(0);
        assert_eq!(Registry::new(limits(), [9; 32]).replay(&[forged]), 1);
        // So is a device with more dests than any registration can give it.
        let key = (PushProvider::Fcm as u8, "tok".to_string());
        let items: Vec<(Dest, u64)> = (0..=DESTS_PER_TOKEN_MAX)
            .map(|i| {
                let mut dest = [0; 16];
                dest[..8].copy_from_slice(&u64::try_from(i).unwrap().to_le_bytes());
                (Dest(dest), 10)
            })
            .collect();
        let halves = [
            record(&key, &items[..DESTS_PER_TOKEN_MAX / 2]),
            record(&key, &items[DESTS_PER_TOKEN_MAX / 2..]),
        ];
        let mut again = Registry::new(limits(), [9; 32]);
        assert_eq!(again.replay(&halves), 1);
        assert_eq!(
            again.snapshot().len(),
            DESTS_PER_TOKEN_MAX / 2,
            "compaction writes what replay kept, a record per dest"
        );
    }

    #[test]
    #[should_panic(expected = "push.dests_per_token_max 10001 is over 10000")]
    fn a_dests_limit_no_record_can_hold_is_a_programming_error() {
        let mut l = limits();
        l.dests_per_token_max = DESTS_PER_TOKEN_MAX + 1;
        Registry::new(l, [9; 32]);
    }

    #[test]
    fn limits_removal_deletion_and_replay() {
        let mut r = Registry::new(limits(), [9; 32]);
        let ds: Vec<Dest> = (0..5u8).map(|i| Dest([i; 16])).collect();
        assert_eq!(
            r.register(0, PushProvider::Fcm, b"tok-1", 10, &ds),
            Err(PushStatus::TooMany)
        );
        r.register(0, PushProvider::Fcm, b"tok-1", 5000, &ds[..2])
            .unwrap();
        // TTL capped at registration_ttl_max_s.
        assert_eq!(r.armed_until(&ds[0]), 1000);
        r.register(0, PushProvider::Fcm, b"tok-2", 10, &ds[..1])
            .unwrap();
        r.register(0, PushProvider::Fcm, b"tok-3", 10, &ds[..1])
            .unwrap();
        assert_eq!(
            r.register(0, PushProvider::Fcm, b"tok-4", 10, &ds[..1]),
            Err(PushStatus::TooMany)
        );
        // Removal of one dest.
        let (n, arms) = r
            .register(0, PushProvider::Fcm, b"tok-1", 0, &ds[1..2])
            .unwrap();
        assert_eq!((n, arms), (1, vec![(ds[1], 0)]));
        let arms = r.delete_token(PushProvider::Fcm, "tok-1");
        assert_eq!(arms, vec![(ds[0], 10)], "tok-2 and tok-3 still cover it");
        assert!(!r.has_token(PushProvider::Fcm, "tok-1"));
        let records = r.take_records(0);
        // A restart: the journal's registrations are locked until a wake names their dest.
        let mut again = Registry::new(limits(), [9; 32]);
        assert_eq!(again.replay(&records), 0);
        assert_eq!((again.devices(), again.locked()), (0, 2));
        assert!(!again.compaction_due(0, 60, true, false));
        let tags = again.all_armed_tags();
        assert_eq!(
            tags,
            vec![(push_dest_tag(&ds[0]), DAY_S)],
            "the end of the day"
        );
        assert!(again.wake(0, 0, &ds[1]).is_empty());
        assert!(again.take_unarmed_tags().is_empty());
        assert_eq!(again.wake(0, 0, &ds[0]).len(), 2, "opened: tok-2 and tok-3");
        assert_eq!((again.devices(), again.locked()), (2, 0));
        assert_eq!(
            again.take_unarmed_tags(),
            vec![push_dest_tag(&ds[0])],
            "the shards drop the tag"
        );
        assert_eq!(again.armed_until(&ds[0]), 10);
        let arms = again.expire(10);
        assert_eq!(arms, vec![(ds[0], 0)]);
        assert!(again.take_unarmed_tags().is_empty());
        assert_eq!(again.devices(), 0);
        // Compaction keeps locked registrations as they are, until their day has passed.
        let mut third = Registry::new(limits(), [9; 32]);
        third.replay(&r.snapshot());
        let mut fourth = Registry::new(limits(), [9; 32]);
        fourth.replay(&third.snapshot());
        assert_eq!(fourth.locked(), 2);
        assert_eq!(fourth.wake(5, 0, &ds[0]).len(), 2);
        third.expire(DAY_S - 1);
        assert_eq!(third.locked(), 2, "kept to the end of the expiry's day");
        third.expire(DAY_S);
        assert_eq!(
            (third.take_unarmed_tags(), third.locked()),
            (vec![push_dest_tag(&ds[0])], 0)
        );
        assert!(
            third.compaction_due(DAY_S + 60, 60, true, false),
            "the expired records leave the journal"
        );
        // A Web Push origin taken off the allowed list: its tokens go when they are opened.
        let mut wp = Registry::new(limits(), [9; 32]);
        wp.register(
            0,
            PushProvider::WebPush,
            b"https://push.example:8443/s/1",
            10,
            &ds[..1],
        )
        .unwrap();
        let records = wp.take_records(0);
        let mut narrower = limits();
        narrower.webpush_origins_allowed = AllowList::default();
        let mut again = Registry::new(narrower, [9; 32]);
        again.replay(&records);
        assert!(again.wake(0, 0, &ds[0]).is_empty());
        assert_eq!((again.devices(), again.locked()), (0, 0));
        assert_eq!(again.take_records(0).len(), 1, "the deletion is journaled");
    }

    /// Two byte strings share a run of 8 bytes.
    fn share_8(a: &[u8], b: &[u8]) -> bool {
        a.windows(8).any(|w| b.windows(8).any(|v| v == w))
    }

    #[test]
    fn the_journal_names_no_dest_and_no_token_and_links_no_registration() {
        let mut r = Registry::new(limits(), [9; 32]);
        let ds: Vec<Dest> = (1..=4u8).map(|i| Dest([i; 16])).collect();
        r.register(100, PushProvider::Apns, APNS.as_bytes(), 500, &ds)
            .unwrap();
        let fcm = "fcm-token-of-another-device";
        r.register(100, PushProvider::Fcm, fcm.as_bytes(), 500, &ds[..1])
            .unwrap();
        let records = r.take_records(100);
        assert_eq!(records.len(), 5, "one record per device and dest");
        for rec in records.iter().chain(r.snapshot().iter()) {
            assert!(!share_8(rec, APNS.as_bytes()) && !share_8(rec, fcm.as_bytes()));
            for d in &ds {
                assert!(!share_8(rec, &d.0), "a dest in the clear");
            }
        }
        // The APNs token's four records: equal lengths, and apart from the record type and the
        // expiry's day (shared with every registration ending that day) no common bytes.
        let apns = &records[..4];
        for (i, a) in apns.iter().enumerate() {
            assert_eq!(a.len(), apns[0].len());
            for b in &apns[i + 1..] {
                let (a1, b1) = (
                    [&a[1..33], &a[37..]].concat(),
                    [&b[1..33], &b[37..]].concat(),
                );
                assert!(
                    !share_8(&a1, &b1),
                    "two records of one registration share bytes"
                );
            }
        }
        // The FCM token's record is as long as the APNs token's (padding).
        assert_eq!(records[4].len(), records[0].len());
        // Compaction sorts by tag: the order tells nothing either.
        let snap = r.snapshot();
        assert!(snap.windows(2).all(|w| w[0][1..33] <= w[1][1..33]));
        assert!(r.compaction_due(160, 60, true, false) && !r.compaction_due(159, 60, true, false));
        r.compacted();
        assert!(!r.compaction_due(1000, 60, true, false));
        // After a restart, the dest opens its records; nothing else does.
        let mut again = Registry::new(limits(), [9; 32]);
        assert_eq!(again.replay(&snap), 0);
        assert_eq!(again.locked(), 5);
        let wakes = again.wake(200, 0, &ds[0]);
        let mut tokens: Vec<&str> = wakes.iter().map(|w| w.token.as_str()).collect();
        tokens.sort_unstable();
        assert_eq!(tokens, vec![APNS, fcm]);
        assert_eq!(again.locked(), 3, "the other dests' records stay sealed");
        assert_eq!(again.armed_until(&ds[0]), 600);
        // A record altered on disk does not open, and is deleted.
        let mut bad = snap.clone();
        let i = bad
            .iter()
            .position(|rec| rec[1..17] == push_dest_tag(&ds[1]))
            .unwrap();
        let last = bad[i].len() - 1;
        bad[i][last] ^= 1;
        let mut broken = Registry::new(limits(), [9; 32]);
        assert_eq!(broken.replay(&bad), 0);
        assert!(broken.wake(200, 0, &ds[1]).is_empty());
        assert_eq!(broken.take_records(200).len(), 1, "its deletion");
    }

    #[test]
    fn old_form_records_replay_and_a_later_sealed_removal_wins() {
        let key = (PushProvider::Apns as u8, APNS.to_string());
        let d = Dest([7; 16]);
        let old = record(&key, &[(d, 1000)]);
        let removal = sealed_record(&d, &key, 0, [0; 12]);
        let mut r = Registry::new(limits(), [9; 32]);
        assert_eq!(r.replay(std::slice::from_ref(&old)), 0);
        assert!(r.has_token(PushProvider::Apns, APNS));
        assert!(r.compaction_due(0, 60, true, false));
        assert!(r.snapshot().iter().all(|rec| rec[0] == b'S'));
        let mut r = Registry::new(limits(), [9; 32]);
        assert_eq!(r.replay(&[old, removal]), 0);
        assert_eq!((r.devices(), r.locked()), (0, 0));
    }

    #[test]
    fn opening_sealed_registrations_keeps_the_registrys_limits() {
        // A device registered one dest before a restart, and after it (unaware) registers its
        // full share anew: the sealed one, opened later, would take it past its limit.
        let d0 = Dest([0; 16]);
        let mut r = Registry::new(limits(), [9; 32]);
        r.register(0, PushProvider::Fcm, b"tok-1", 100, &[d0])
            .unwrap();
        let sealed = r.take_records(0);
        let mut again = Registry::new(limits(), [9; 32]);
        again.replay(&sealed);
        let fresh: Vec<Dest> = (1..=4u8).map(|i| Dest([i; 16])).collect();
        again
            .register(0, PushProvider::Fcm, b"tok-1", 100, &fresh)
            .unwrap();
        let _ = again.take_records(0);
        assert!(
            again.wake(0, 0, &d0).is_empty(),
            "over dests_per_token_max: deleted"
        );
        assert_eq!(again.locked(), 0);
        assert_eq!(again.take_records(0).len(), 1, "its deletion is journaled");
        // Likewise a sealed device beyond registrations_max (3) opened registrations.
        let mut r = Registry::new(limits(), [9; 32]);
        r.register(0, PushProvider::Fcm, b"tok-9", 100, &[d0])
            .unwrap();
        let sealed = r.take_records(0);
        let mut again = Registry::new(limits(), [9; 32]);
        again.replay(&sealed);
        for t in ["tok-1", "tok-2", "tok-3"] {
            again
                .register(0, PushProvider::Fcm, t.as_bytes(), 100, &fresh[..1])
                .unwrap();
        }
        assert!(again.wake(0, 0, &d0).is_empty());
        assert_eq!(again.devices(), 3);
        // A compaction that fails is not retried every second.
        assert!(again.compaction_due(0, 60, true, true));
        again.compaction_failed(0, 60);
        assert!(!again.compaction_due(59, 60, true, true));
        assert!(again.compaction_due(60, 60, true, true));
    }

    #[test]
    fn a_journal_with_unsealed_records_is_rewritten_even_those_that_do_not_parse() {
        let mut r = Registry::new(limits(), [9; 32]);
        assert_eq!(r.replay(&[b"R garbage".to_vec()]), 1);
        assert!(r.compaction_due(0, 60, false, false));
        assert!(r.snapshot().is_empty());
    }

    #[test]
    fn token_kinds_pad_to_one_length_each() {
        let d = Dest([1; 16]);
        let len = |p: PushProvider, t: &str| {
            sealed_record(&d, &(p as u8, t.to_string()), 10, [0; 12]).len()
        };
        let web = |n: usize| format!("https://push.example:8443/{}", "a".repeat(n));
        assert_eq!(
            len(PushProvider::Apns, APNS),
            len(PushProvider::Apns, &APNS[..32])
        );
        assert_eq!(
            len(PushProvider::Fcm, &"f".repeat(140)),
            len(PushProvider::Fcm, &"f".repeat(200))
        );
        assert_eq!(
            len(PushProvider::WebPush, &web(300)),
            len(PushProvider::WebPush, &web(700))
        );
        assert!(len(PushProvider::Apns, APNS) < len(PushProvider::Fcm, &"f".repeat(140)));
    }
}
