//! Push registrations and wake decisions, sans-IO. A device (provider + token) is registered for
//! a set of dests, each until a time. A blob stored for one of those dests while nobody listens
//! asks for a wake; at most one wake per device is sent within the coalescing window, and each
//! provider has a rate cap. A provider answering "unregistered" (APNs 410, FCM 404, Web Push
//! 404/410) deletes the token. Tokens never leave this module except towards their provider: they
//! are not logged and not in metrics.
//!
//! Journal record: `R provider:u8 token_len:u16 token n:u16 n × (dest(16) until:u64)`; until 0
//! removes the dest. A removed token is a record with every dest at 0.

use ahash::{AHashMap, AHashSet};
use bytes::BufMut;
use ferry_proto::frame::{Dest, PushProvider, PushStatus};
use ferry_proto::limits::PUSH_TOKEN_BYTES_MAX;

use super::endpoint::AllowList;

/// Most dests one token may be registered for, whatever `push.dests_per_token_max` says: one
/// journal record holds them all behind a u16 count.
pub const DESTS_PER_TOKEN_MAX: usize = 10_000;

// A record's token length and dest count are u16.
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

fn provider_index(p: PushProvider) -> usize {
    match p {
        PushProvider::Apns => 0,
        PushProvider::Fcm => 1,
        PushProvider::WebPush => 2,
    }
}

type DeviceKey = (u8, String);

#[derive(Debug)]
struct Device {
    dests: AHashMap<Dest, u64>,
    /// When the last wake was queued (monotonic ms).
    last_wake_ms: Option<u64>,
    /// A wake is queued, in flight or waiting to retry: no second one until it is done.
    pending: bool,
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

#[derive(Debug)]
pub struct Registry {
    limits: PushLimits,
    devices: AHashMap<DeviceKey, Device>,
    by_dest: AHashMap<Dest, AHashSet<DeviceKey>>,
    records: Vec<Vec<u8>>,
    pub stats: PushStats,
}

impl Registry {
    pub fn new(limits: PushLimits) -> Self {
        assert!(
            limits.dests_per_token_max <= DESTS_PER_TOKEN_MAX,
            "push.dests_per_token_max {} is over {DESTS_PER_TOKEN_MAX}: config validation lets none through",
            limits.dests_per_token_max
        );
        Registry {
            limits,
            devices: AHashMap::new(),
            by_dest: AHashMap::new(),
            records: Vec::new(),
            stats: PushStats::default(),
        }
    }

    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    pub fn take_records(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.records)
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
        // Also bounds a removal's record, and a request naming one dest many times.
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
        self.records.push(record(&key, &items));
        let arms = self.apply(&key, &items);
        let n = self.devices.get(&key).map_or(0, |d| d.dests.len());
        Ok((len_u16(n, DESTS_PER_TOKEN_MAX), arms))
    }

    /// Applies (dest, until) items to a device; returns the new armed-until per touched dest.
    fn apply(&mut self, key: &DeviceKey, items: &[(Dest, u64)]) -> Vec<(Dest, u64)> {
        for (dest, until) in items {
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
                        pending: false,
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

    /// The latest expiry over every registration of `dest` (0 = none).
    pub fn armed_until(&self, dest: &Dest) -> u64 {
        self.by_dest.get(dest).map_or(0, |keys| {
            keys.iter()
                .filter_map(|k| self.devices.get(k)?.dests.get(dest).copied())
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

    /// A blob was stored for `dest`: the wakes to send now (coalesced per device).
    pub fn wake(&mut self, now_unix_s: u64, now_ms: u64, dest: &Dest) -> Vec<Wake> {
        self.stats.wakes_requested += 1;
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
            if dev.pending || in_window {
                self.stats.wakes_coalesced += 1;
                continue;
            }
            dev.last_wake_ms = Some(now_ms);
            dev.pending = true;
            let Some(provider) = PushProvider::from_u8(key.0) else {
                continue;
            };
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
        if let Some(dev) = self.devices.get_mut(&key) {
            dev.pending = false;
            if dropped {
                dev.last_wake_ms = None;
            }
        }
    }

    /// The provider said the token is gone: delete it. Returns the new armed-until of its dests.
    pub fn delete_token(&mut self, provider: PushProvider, token: &str) -> Vec<(Dest, u64)> {
        let key: DeviceKey = (provider as u8, token.to_string());
        let Some(dev) = self.devices.get(&key) else {
            return Vec::new();
        };
        let items: Vec<(Dest, u64)> = dev.dests.keys().map(|d| (*d, 0)).collect();
        self.records.push(record(&key, &items));
        self.stats.tokens_deleted += 1;
        self.apply(&key, &items)
    }

    /// Whether `token` is registered (tests).
    #[cfg(test)]
    pub fn has_token(&self, provider: PushProvider, token: &str) -> bool {
        self.devices
            .contains_key(&(provider as u8, token.to_string()))
    }

    /// Drops expired registrations; returns the new armed-until of the dests touched.
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
            self.records.push(record(&key, &items));
            self.apply(&key, &items);
            touched.extend(items.iter().map(|(d, _)| *d));
        }
        touched
            .into_iter()
            .map(|d| (d, self.armed_until(&d)))
            .collect()
    }

    /// Rebuilds the registrations from journal records. Returns records it could not parse (or
    /// that would take a token past [`DESTS_PER_TOKEN_MAX`], which no registration can).
    /// Tokens the current configuration no longer accepts as they are stored (a Web Push origin
    /// taken off the allowed list, an endpoint stored before it was normalised) are deleted, and
    /// their deletion journaled.
    pub fn replay(&mut self, records: &[Vec<u8>]) -> usize {
        let mut bad = 0;
        for r in records {
            match parse_record(r) {
                Some((key, items)) if self.dests_after(&key, &items) <= DESTS_PER_TOKEN_MAX => {
                    self.apply(&key, &items);
                }
                _ => bad += 1,
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

    /// The live state as journal records (compaction).
    pub fn snapshot(&self) -> Vec<Vec<u8>> {
        self.devices
            .iter()
            .map(|(k, d)| {
                let items: Vec<(Dest, u64)> = d.dests.iter().map(|(a, b)| (*a, *b)).collect();
                record(k, &items)
            })
            .collect()
    }
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

/// Every token in the registry passed `canonical_token` or `parse_record` (at most
/// `PUSH_TOKEN_BYTES_MAX`), and every device holds at most `DESTS_PER_TOKEN_MAX` dests
/// (`register` and `replay` see to it); a record's items are a device's dests or a request's.
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
        let mut r = Registry::new(limits());
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
        let mut r = Registry::new(limits());
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
        let mut r = Registry::new(off);
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
        let mut r = Registry::new(l);
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
        let mut r = Registry::new(l);
        assert_eq!(r.replay(&records), 0);
        assert_eq!(r.devices(), 1);
        assert!(r.has_token(PushProvider::WebPush, stored[2]));
        assert_eq!(r.take_records().len(), 2, "both deletions journaled");
    }

    #[test]
    fn record_lengths_are_refused_or_asserted_never_clamped() {
        let mut r = Registry::new(limits());
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
        let records = r.take_records();
        assert_eq!(Registry::new(limits()).replay(&records), 0);
        // A journal record claiming a longer token than any registration can have is damage.
        let mut forged = vec![b'R', PushProvider::Fcm as u8];
        let token_len = PUSH_TOKEN_BYTES_MAX + 1;
        forged.put_u16_le(u16::try_from(token_len).unwrap());
        forged.extend(std::iter::repeat_n(b'a', token_len));
        forged.put_u16_le(0);
        assert_eq!(Registry::new(limits()).replay(&[forged]), 1);
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
        let mut again = Registry::new(limits());
        assert_eq!(again.replay(&halves), 1);
        assert_eq!(
            again.snapshot().len(),
            1,
            "compaction writes what replay kept"
        );
    }

    #[test]
    #[should_panic(expected = "push.dests_per_token_max 10001 is over 10000")]
    fn a_dests_limit_no_record_can_hold_is_a_programming_error() {
        let mut l = limits();
        l.dests_per_token_max = DESTS_PER_TOKEN_MAX + 1;
        Registry::new(l);
    }

    #[test]
    fn limits_removal_deletion_and_replay() {
        let mut r = Registry::new(limits());
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
        let records = r.take_records();
        let mut again = Registry::new(limits());
        assert_eq!(again.replay(&records), 0);
        assert_eq!(again.devices(), 2);
        assert_eq!(again.armed_until(&ds[0]), 10);
        let arms = again.expire(10);
        assert_eq!(arms, vec![(ds[0], 0)]);
        assert_eq!(again.devices(), 0);
        let snap = r.snapshot();
        let mut third = Registry::new(limits());
        third.replay(&snap);
        assert_eq!(third.devices(), 2);
        // A Web Push origin taken off the allowed list: its tokens go at replay.
        let mut wp = Registry::new(limits());
        wp.register(
            0,
            PushProvider::WebPush,
            b"https://push.example:8443/s/1",
            10,
            &ds[..1],
        )
        .unwrap();
        let records = wp.take_records();
        let mut narrower = limits();
        narrower.webpush_origins_allowed = AllowList::default();
        let mut again = Registry::new(narrower);
        again.replay(&records);
        assert_eq!(again.devices(), 0);
        assert_eq!(again.take_records().len(), 1, "the deletion is journaled");
    }
}
