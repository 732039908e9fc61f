//! Per-address limits (IPv4 by address, IPv6 by /64): token buckets for new connections, bytes in,
//! proof checks and failed proofs, in a bounded table whose idle full buckets are evicted on tick
//! (each entry is scheduled for when its buckets will have refilled: a tick touches only entries
//! due, never the whole table); and the count of open connections per address, bounded by the
//! shard's connections.

use std::net::IpAddr;

use ahash::AHashMap;

use crate::timers::Deadlines;

/// Address key: an IPv4 address or an IPv6 /64 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4.octets()),
                None => {
                    let mut p = [0u8; 8];
                    p.copy_from_slice(&v6.octets()[..8]);
                    IpKey::V6Prefix(p)
                }
            },
        }
    }
}

/// Rate and burst of one kind of bucket. `per_s == 0` disables the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_s: u64,
    pub burst: u64,
}

/// Milli-tokens of `n` tokens, saturating (a bucket of 9.2 × 10^15 tokens is unlimited anyway).
fn milli(n: u64) -> i64 {
    i64::try_from(n.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// A token bucket that carries debt: a charge past zero leaves a negative balance, and refill
/// repays it before anything is free again. (A bucket that forgot its debt let twice its rate
/// through.)
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    /// Milli-tokens; negative while in debt, at most the burst.
    balance_milli: i64,
    at_ms: u64,
}

impl Bucket {
    /// A bucket holding its whole burst.
    pub fn full(rate: Rate, now_ms: u64) -> Self {
        Bucket {
            balance_milli: milli(rate.burst),
            at_ms: now_ms,
        }
    }
    fn refill(&mut self, rate: Rate, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.at_ms);
        // tokens/s × ms = milli-tokens.
        let earned = i64::try_from(rate.per_s.saturating_mul(dt)).unwrap_or(i64::MAX);
        self.balance_milli = self
            .balance_milli
            .saturating_add(earned)
            .min(milli(rate.burst));
        self.at_ms = self.at_ms.max(now_ms);
    }
    fn is_full(&self, rate: Rate) -> bool {
        self.balance_milli >= milli(rate.burst)
    }
    /// When the bucket will hold its whole burst again if nothing more is taken (its last
    /// refill time when it is full or the rate is unlimited).
    fn full_at_ms(&self, rate: Rate) -> u64 {
        let deficit = milli(rate.burst).saturating_sub(self.balance_milli).max(0);
        if rate.per_s == 0 || deficit == 0 {
            return self.at_ms;
        }
        // per_s tokens a second are per_s milli-tokens a millisecond.
        self.at_ms
            .saturating_add(deficit.unsigned_abs().div_ceil(rate.per_s))
    }
    /// Takes `n` tokens if there are that many.
    fn take(&mut self, rate: Rate, now_ms: u64, n: u64) -> bool {
        self.refill(rate, now_ms);
        let want = milli(n);
        if self.balance_milli >= want {
            self.balance_milli -= want;
            true
        } else {
            false
        }
    }
    /// Whole tokens there are now (none while in debt; `u64::MAX` when `rate` is unlimited).
    pub fn available(&mut self, rate: Rate, now_ms: u64) -> u64 {
        if rate.per_s == 0 {
            return u64::MAX;
        }
        self.refill(rate, now_ms);
        u64::try_from(self.balance_milli / 1000).unwrap_or(0)
    }
    /// Takes `n` tokens, at most [`Bucket::available`] of them: the caller checked.
    pub fn take_available(&mut self, rate: Rate, now_ms: u64, n: u64) {
        assert!(
            n <= self.available(rate, now_ms),
            "taking tokens the bucket does not hold"
        );
        if rate.per_s != 0 {
            self.balance_milli -= milli(n);
        }
    }
    /// Takes `n` tokens even into debt (bytes already read); returns [`Bucket::pause_ms`].
    fn charge(&mut self, rate: Rate, now_ms: u64, n: u64) -> u64 {
        self.refill(rate, now_ms);
        self.balance_milli = self.balance_milli.saturating_sub(milli(n));
        self.pause_ms(rate, now_ms)
    }
    /// Milliseconds until the balance is positive again; 0 while it is.
    fn pause_ms(&mut self, rate: Rate, now_ms: u64) -> u64 {
        self.refill(rate, now_ms);
        match u64::try_from(self.balance_milli) {
            Ok(b) if b > 0 => 0,
            // balance + per_s × t > 0 first at t = ⌊debt / per_s⌋ + 1.
            _ => self.balance_milli.unsigned_abs() / rate.per_s.max(1) + 1,
        }
    }
}

/// One token bucket per key (a requester, a target), in a bounded table: when full, buckets that
/// have refilled are evicted; if none has, new keys are refused (fail closed).
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    rate: Rate,
    entries_max: usize,
    buckets: AHashMap<K, Bucket>,
}

impl<K: std::hash::Hash + Eq + Copy> KeyedLimiter<K> {
    pub fn new(rate: Rate, entries_max: usize) -> Self {
        assert!(entries_max > 0);
        KeyedLimiter {
            rate,
            entries_max,
            buckets: AHashMap::new(),
        }
    }
    /// Takes one token for `key`; `false` when its bucket is empty. A zero rate never limits.
    pub fn allow(&mut self, key: K, now_ms: u64) -> bool {
        self.allow_n(key, now_ms, 1)
    }

    /// Takes `n` tokens for `key` if it has them.
    pub fn allow_n(&mut self, key: K, now_ms: u64, n: u64) -> bool {
        if self.rate.per_s == 0 {
            return true;
        }
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.entries_max {
            let rate = self.rate;
            self.buckets.retain(|_, b| {
                b.refill(rate, now_ms);
                !b.is_full(rate)
            });
            if self.buckets.len() >= self.entries_max {
                return false;
            }
        }
        let rate = self.rate;
        self.buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(rate, now_ms))
            .take(rate, now_ms, n)
    }
    pub fn len(&self) -> usize {
        self.buckets.len()
    }
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    conns: Bucket,
    bytes: Bucket,
    proofs: Bucket,
    proof_failures: Bucket,
    /// Its deadline in `IpLimiter::deadlines`: at most when all its buckets will be full (taking
    /// tokens moves that later without touching the heap; the entry is re-checked when due).
    armed_ms: u64,
}

impl Entry {
    /// Refills every bucket; whether all are full (the entry carries no state).
    fn refill_all(&mut self, l: &IpLimits, now_ms: u64) -> bool {
        self.conns.refill(l.conns, now_ms);
        self.bytes.refill(l.bytes, now_ms);
        self.proofs.refill(l.proofs, now_ms);
        self.proof_failures.refill(l.proof_failures, now_ms);
        self.conns.is_full(l.conns)
            && self.bytes.is_full(l.bytes)
            && self.proofs.is_full(l.proofs)
            && self.proof_failures.is_full(l.proof_failures)
    }

    /// When every bucket will be full again.
    fn full_at_ms(&self, l: &IpLimits) -> u64 {
        self.conns
            .full_at_ms(l.conns)
            .max(self.bytes.full_at_ms(l.bytes))
            .max(self.proofs.full_at_ms(l.proofs))
            .max(self.proof_failures.full_at_ms(l.proof_failures))
    }
}

/// Limits for [`IpLimiter`], per shard.
#[derive(Clone, Copy, Debug)]
pub struct IpLimits {
    pub conns: Rate,
    pub bytes: Rate,
    /// Proof signatures checked for the address (valid or not); beyond: `RateLimited` unchecked.
    pub proofs: Rate,
    /// The same, for each connection (a bucket per connection, kept by the shard beside the
    /// connection; here so that it reloads with the address's budget).
    pub proofs_per_conn: Rate,
    pub proof_failures: Rate,
    /// Connections one address may hold open at once; 0 = unlimited.
    pub connections_open_max: usize,
    pub entries_max: usize,
}

impl IpLimits {
    /// Every per-address limit off, `entries_max` addresses tracked (tests, the simulator).
    pub fn off(entries_max: usize) -> IpLimits {
        let open = Rate { per_s: 0, burst: 0 };
        IpLimits {
            conns: open,
            bytes: open,
            proofs: open,
            proofs_per_conn: open,
            proof_failures: open,
            connections_open_max: 0,
            entries_max,
        }
    }
}

/// The per-address limiter of one shard.
#[derive(Debug)]
pub struct IpLimiter {
    limits: IpLimits,
    table: AHashMap<IpKey, Entry>,
    /// Open connections per address (only addresses with at least one). Not in `table`: an open
    /// connection must not pin a bucket entry, and this map is bounded by the shard's
    /// connections, not by `entries_max`.
    open: AHashMap<IpKey, u32>,
    /// One entry per `table` entry (its `armed_ms`): when to look at it again.
    deadlines: Deadlines<IpKey>,
}

impl IpLimiter {
    pub fn new(limits: IpLimits) -> Self {
        assert!(limits.entries_max > 0);
        IpLimiter {
            limits,
            table: AHashMap::new(),
            open: AHashMap::new(),
            deadlines: Deadlines::default(),
        }
    }

    /// Whether `key` holds fewer than `connections_open_max` open connections.
    pub fn may_open(&self, key: IpKey) -> bool {
        let max = self.limits.connections_open_max;
        max == 0 || usize::try_from(self.open_connections(key)).is_ok_and(|n| n < max)
    }

    /// Counts a new open connection of `key` (whether it [`may_open`](IpLimiter::may_open) is
    /// the caller's check: a lowered cap does not close connections already open).
    pub fn on_open(&mut self, key: IpKey) {
        *self.open.entry(key).or_insert(0) += 1;
    }

    /// One connection [`IpLimiter::on_open`] counted has closed.
    pub fn on_close(&mut self, key: IpKey) {
        let open = self
            .open
            .get_mut(&key)
            .expect("a closing connection was counted open");
        *open -= 1;
        if *open == 0 {
            self.open.remove(&key);
        }
    }

    /// Connections of `key` open now.
    pub fn open_connections(&self, key: IpKey) -> u32 {
        self.open.get(&key).copied().unwrap_or(0)
    }

    /// New limits (SIGHUP). The entries' refill times change with the rates: every entry is
    /// looked at on the next tick (one pass per reload).
    pub fn set_limits(&mut self, limits: IpLimits) {
        self.limits = limits;
        for e in self.table.values_mut() {
            e.armed_ms = 0;
        }
        self.deadlines.rebuild(self.table.keys().map(|&k| (0, k)));
    }

    fn entry(&mut self, key: IpKey, now_ms: u64) -> Option<&mut Entry> {
        if !self.table.contains_key(&key) {
            if self.table.len() >= self.limits.entries_max {
                self.evict_idle(now_ms);
                if self.table.len() >= self.limits.entries_max {
                    return None;
                }
            }
            let l = self.limits;
            self.table.insert(
                key,
                Entry {
                    conns: Bucket::full(l.conns, now_ms),
                    bytes: Bucket::full(l.bytes, now_ms),
                    proofs: Bucket::full(l.proofs, now_ms),
                    proof_failures: Bucket::full(l.proof_failures, now_ms),
                    armed_ms: now_ms,
                },
            );
            self.deadlines.push(now_ms, key);
        }
        self.table.get_mut(&key)
    }

    /// May this address open one more connection now?
    pub fn allow_connection(&mut self, key: IpKey, now_ms: u64) -> bool {
        let rate = self.limits.conns;
        if rate.per_s == 0 {
            return true;
        }
        match self.entry(key, now_ms) {
            Some(e) => e.conns.take(rate, now_ms, 1),
            None => false,
        }
    }

    /// Charges `n` bytes read; returns how long reading from this address should pause (ms).
    pub fn charge_bytes(&mut self, key: IpKey, now_ms: u64, n: u64) -> u64 {
        let rate = self.limits.bytes;
        if rate.per_s == 0 {
            return 0;
        }
        match self.entry(key, now_ms) {
            Some(e) => e.bytes.charge(rate, now_ms, n),
            None => 0,
        }
    }

    /// How long every connection of this address must stop reading: until its byte bucket, in
    /// debt from bytes already read by any of them, is positive again (ms; 0 = read on).
    pub fn bytes_pause_ms(&mut self, key: IpKey, now_ms: u64) -> u64 {
        let rate = self.limits.bytes;
        if rate.per_s == 0 {
            return 0;
        }
        match self.table.get_mut(&key) {
            Some(e) => e.bytes.pause_ms(rate, now_ms),
            None => 0,
        }
    }

    /// Whether this address may still have proofs checked (its failure budget is not spent).
    pub fn proofs_allowed(&mut self, key: IpKey, now_ms: u64) -> bool {
        let rate = self.limits.proof_failures;
        if rate.per_s == 0 {
            return true;
        }
        match self.entry(key, now_ms) {
            Some(e) => e.proof_failures.available(rate, now_ms) >= 1,
            None => false,
        }
    }

    /// Proof checks this address may have now: `u64::MAX` when unlimited, 0 when its budget is
    /// spent (or it cannot be tracked: the table is full).
    pub fn proofs_available(&mut self, key: IpKey, now_ms: u64) -> u64 {
        let rate = self.limits.proofs;
        if rate.per_s == 0 {
            return u64::MAX;
        }
        match self.entry(key, now_ms) {
            Some(e) => e.proofs.available(rate, now_ms),
            None => 0,
        }
    }

    /// Spends `n` proof checks, at most [`IpLimiter::proofs_available`].
    pub fn take_proofs(&mut self, key: IpKey, now_ms: u64, n: u64) {
        let rate = self.limits.proofs;
        if rate.per_s == 0 || n == 0 {
            return;
        }
        let e = self
            .entry(key, now_ms)
            .expect("proofs are taken only from an address that had them available");
        e.proofs.take_available(rate, now_ms, n);
    }

    /// The per-connection proof rate, for the bucket the shard keeps beside each connection.
    pub fn proofs_per_conn(&self) -> Rate {
        self.limits.proofs_per_conn
    }

    pub fn charge_proof_failures(&mut self, key: IpKey, now_ms: u64, n: u64) {
        let rate = self.limits.proof_failures;
        if rate.per_s == 0 || n == 0 {
            return;
        }
        if let Some(e) = self.entry(key, now_ms) {
            e.proof_failures.charge(rate, now_ms, n);
        }
    }

    /// Drops entries whose buckets have all refilled: they carry no state. Looks only at the
    /// entries whose scheduled refill time has passed; one still short of full is scheduled
    /// again for when it will be.
    pub fn evict_idle(&mut self, now_ms: u64) {
        let l = self.limits;
        while let Some((at_ms, key)) = self.deadlines.pop_due(now_ms) {
            let Some(e) = self.table.get_mut(&key) else {
                continue;
            };
            if e.armed_ms != at_ms {
                continue;
            }
            if e.refill_all(&l, now_ms) {
                self.table.remove(&key);
            } else {
                // Later than now: a bucket that never refills (an unlimited rate is never
                // charged) must not be looked at again in this loop.
                e.armed_ms = e.full_at_ms(&l).max(now_ms + 1);
                self.deadlines.push(e.armed_ms, key);
            }
        }
    }

    /// Entries the eviction looked at so far (timer work; see `Shard::timer_checks`).
    pub fn timer_checks(&self) -> u64 {
        self.deadlines.checks()
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> IpLimits {
        IpLimits {
            conns: Rate {
                per_s: 10,
                burst: 2,
            },
            bytes: Rate {
                per_s: 1000,
                burst: 1000,
            },
            proofs: Rate { per_s: 2, burst: 5 },
            proofs_per_conn: Rate { per_s: 0, burst: 0 },
            proof_failures: Rate { per_s: 1, burst: 3 },
            connections_open_max: 2,
            entries_max: 2,
        }
    }

    #[test]
    fn connection_burst_then_refill() {
        let mut l = IpLimiter::new(limits());
        let k = IpKey::V4([127, 0, 0, 1]);
        assert!(l.allow_connection(k, 0));
        assert!(l.allow_connection(k, 0));
        assert!(!l.allow_connection(k, 0));
        assert!(l.allow_connection(k, 100)); // 10/s → one token per 100 ms
    }

    #[test]
    fn bytes_pause_until_debt_repaid() {
        let mut l = IpLimiter::new(limits());
        let k = IpKey::V4([1, 2, 3, 4]);
        assert_eq!(l.charge_bytes(k, 0, 999), 0, "one token left");
        assert_eq!(
            l.charge_bytes(k, 0, 501),
            501,
            "500 in debt: positive after 501 ms"
        );
        // The debt is repaid before anything is free: 500 ms later the balance is 0, not 500.
        assert_eq!(l.charge_bytes(k, 500, 500), 501);
        assert_eq!(l.bytes_pause_ms(k, 1_000), 1);
        assert_eq!(l.bytes_pause_ms(k, 1_001), 0);
    }

    #[test]
    fn a_bucket_in_debt_repays_before_it_gives() {
        let rate = Rate {
            per_s: 1_000,
            burst: 100,
        };
        let mut b = Bucket::full(rate, 0);
        assert_eq!(b.charge(rate, 0, 1_100), 1_001);
        // 1 s later the 1000-token debt is repaid and nothing more: the bucket is at 0.
        assert_eq!(b.available(rate, 1_000), 0);
        assert_eq!(b.available(rate, 1_050), 50);
        // Refill never goes above the burst, however long the wait.
        assert_eq!(b.available(rate, 1_000_000), 100);
        b.take_available(rate, 1_000_000, 100);
        assert_eq!(b.available(rate, 1_000_000), 0);
    }

    #[test]
    fn ipv6_is_keyed_by_slash_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(IpKey::from(a), IpKey::from(b));
        assert_ne!(IpKey::from(a), IpKey::from(c));
    }

    #[test]
    fn table_is_bounded_and_evicts_idle_entries() {
        let mut l = IpLimiter::new(limits());
        assert!(l.allow_connection(IpKey::V4([1, 0, 0, 1]), 0));
        assert!(l.allow_connection(IpKey::V4([1, 0, 0, 2]), 0));
        // Full of non-idle entries: a third address is refused.
        assert!(!l.allow_connection(IpKey::V4([1, 0, 0, 3]), 0));
        // After refill both are idle and evictable.
        assert!(l.allow_connection(IpKey::V4([1, 0, 0, 3]), 10_000));
        assert!(l.len() <= 2);
    }

    #[test]
    fn keyed_limiter_is_bounded_and_fails_closed() {
        let rate = Rate { per_s: 1, burst: 2 };
        let mut l = KeyedLimiter::new(rate, 2);
        assert!(l.allow(1u32, 0) && l.allow(1, 0));
        assert!(!l.allow(1, 0), "burst spent");
        assert!(l.allow(1, 1_000), "refilled one token");
        assert!(l.allow(2, 1_000));
        // Table full of non-idle buckets: a third key is refused.
        assert!(!l.allow(3, 1_000));
        // Once buckets have refilled they are evicted to make room.
        assert!(l.allow(3, 10_000));
        assert!(l.len() <= 2);
        let mut off = KeyedLimiter::new(Rate { per_s: 0, burst: 0 }, 1);
        assert!((0..100).all(|k| off.allow(k, 0)));
    }

    #[test]
    fn proof_failure_budget() {
        let mut l = IpLimiter::new(limits());
        let k = IpKey::V4([9, 9, 9, 9]);
        assert!(l.proofs_allowed(k, 0));
        l.charge_proof_failures(k, 0, 3);
        assert!(!l.proofs_allowed(k, 0));
        assert!(l.proofs_allowed(k, 1000));
    }

    #[test]
    fn open_connections_are_capped_per_address_and_released_on_close() {
        let mut l = IpLimiter::new(limits());
        let a = IpKey::from("2001:db8::1".parse::<IpAddr>().unwrap());
        let a2 = IpKey::from("2001:db8::ffff:2".parse::<IpAddr>().unwrap());
        let b = IpKey::V4([10, 0, 0, 2]);
        for k in [a, a2] {
            assert!(l.may_open(k));
            l.on_open(k);
        }
        assert!(!l.may_open(a), "a third from the same /64");
        assert!(l.may_open(b), "another address");
        l.on_open(b);
        assert_eq!(l.open_connections(a), 2);
        l.on_close(a);
        assert!(l.may_open(a2));
        l.on_open(a2);
        l.on_close(a);
        l.on_close(a);
        l.on_close(b);
        assert_eq!(l.open_connections(a), 0);
        assert!(l.open.is_empty(), "closed addresses are forgotten");
        let mut unlimited = IpLimiter::new(IpLimits {
            connections_open_max: 0,
            ..limits()
        });
        for _ in 0..1_000 {
            assert!(unlimited.may_open(b));
            unlimited.on_open(b);
        }
    }

    #[test]
    fn proof_checks_are_budgeted_per_address() {
        let mut l = IpLimiter::new(limits());
        let k = IpKey::V4([9, 9, 9, 9]);
        assert_eq!(l.proofs_available(k, 0), 5);
        l.take_proofs(k, 0, 5);
        assert_eq!(l.proofs_available(k, 0), 0);
        assert_eq!(l.proofs_available(k, 499), 0);
        assert_eq!(l.proofs_available(k, 500), 1, "2/s");
        let mut off = IpLimiter::new(IpLimits {
            proofs: Rate { per_s: 0, burst: 0 },
            ..limits()
        });
        assert_eq!(off.proofs_available(k, 0), u64::MAX);
    }
}
