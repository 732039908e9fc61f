//! Per-address token buckets (IPv4 by address, IPv6 by /64): new connections, bytes in, and failed
//! proofs. The table is bounded; idle full buckets are evicted on tick.

use std::net::IpAddr;

use ahash::AHashMap;

/// Address key: an IPv4 address or an IPv6 /64 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens_milli: u64,
    at_ms: u64,
}

impl Bucket {
    fn full(rate: Rate, now_ms: u64) -> Self {
        Bucket {
            tokens_milli: rate.burst.saturating_mul(1000),
            at_ms: now_ms,
        }
    }
    fn refill(&mut self, rate: Rate, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.at_ms);
        // tokens/s × ms = milli-tokens.
        self.tokens_milli = self
            .tokens_milli
            .saturating_add(rate.per_s.saturating_mul(dt))
            .min(rate.burst.saturating_mul(1000));
        self.at_ms = now_ms;
    }
    fn is_full(&self, rate: Rate) -> bool {
        self.tokens_milli >= rate.burst.saturating_mul(1000)
    }
    /// Takes `n` tokens if there are that many.
    fn take(&mut self, rate: Rate, now_ms: u64, n: u64) -> bool {
        self.refill(rate, now_ms);
        let want = n.saturating_mul(1000);
        if self.tokens_milli >= want {
            self.tokens_milli -= want;
            true
        } else {
            false
        }
    }
    /// Takes `n` tokens even into debt (bytes already read); returns the ms until the balance is
    /// positive again, or 0.
    fn charge(&mut self, rate: Rate, now_ms: u64, n: u64) -> u64 {
        self.refill(rate, now_ms);
        let want = n.saturating_mul(1000);
        if self.tokens_milli >= want {
            self.tokens_milli -= want;
            0
        } else {
            let debt = want - self.tokens_milli;
            self.tokens_milli = 0;
            // Wait until the debt is repaid; at least 1 ms.
            (debt / rate.per_s.max(1)).max(1)
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
    proof_failures: Bucket,
}

/// Limits for [`IpLimiter`], per shard.
#[derive(Clone, Copy, Debug)]
pub struct IpLimits {
    pub conns: Rate,
    pub bytes: Rate,
    pub proof_failures: Rate,
    pub entries_max: usize,
}

/// The per-address limiter of one shard.
#[derive(Debug)]
pub struct IpLimiter {
    limits: IpLimits,
    table: AHashMap<IpKey, Entry>,
}

impl IpLimiter {
    pub fn new(limits: IpLimits) -> Self {
        assert!(limits.entries_max > 0);
        IpLimiter {
            limits,
            table: AHashMap::new(),
        }
    }

    pub fn set_limits(&mut self, limits: IpLimits) {
        self.limits = limits;
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
                    proof_failures: Bucket::full(l.proof_failures, now_ms),
                },
            );
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

    /// Whether this address may still have proofs checked (its failure budget is not spent).
    pub fn proofs_allowed(&mut self, key: IpKey, now_ms: u64) -> bool {
        let rate = self.limits.proof_failures;
        if rate.per_s == 0 {
            return true;
        }
        match self.entry(key, now_ms) {
            Some(e) => {
                e.proof_failures.refill(rate, now_ms);
                e.proof_failures.tokens_milli >= 1000
            }
            None => false,
        }
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

    /// Drops entries whose buckets have all refilled: they carry no state.
    pub fn evict_idle(&mut self, now_ms: u64) {
        let l = self.limits;
        self.table.retain(|_, e| {
            e.conns.refill(l.conns, now_ms);
            e.bytes.refill(l.bytes, now_ms);
            e.proof_failures.refill(l.proof_failures, now_ms);
            !(e.conns.is_full(l.conns)
                && e.bytes.is_full(l.bytes)
                && e.proof_failures.is_full(l.proof_failures))
        });
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
            proof_failures: Rate { per_s: 1, burst: 3 },
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
        assert_eq!(l.charge_bytes(k, 0, 1000), 0);
        assert_eq!(l.charge_bytes(k, 0, 500), 500);
        assert_eq!(l.charge_bytes(k, 500, 500), 0);
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
}
