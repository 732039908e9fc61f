//! Fair shares of the store: what each sending address holds, in memory only (docs/STORAGE.md,
//! "Fair shares").
//!
//! Every blob appended with a source is charged to that source (an address prefix: IPv4 /32 or
//! a configured shorter prefix, IPv6 /64 or shorter) in this shard's table, and to the source's
//! part of the dest's quota (kept beside the dest's queue). A source may hold at most
//! `share_percent` of the shard's blob budget and `dest_share_percent` of one dest's quota; above
//! `pressure_percent` of the disk budget, a source holding more than the mean of the sources
//! present is refused (the heaviest first). Nothing here is written to disk: a restart forgets
//! every source, and recovered blobs count against their dest and the node only.
//!
//! The table is bounded (`sources_max` addresses with live blobs). When it is full, a new address
//! is charged to the one overflow bucket, [`Source::Other`], which has the share of a single
//! source: many addresses cannot grow memory, and together they hold what one address may.

use ahash::AHashMap;

use crate::ratelimit::IpKey;

/// Limits of the per-source accounting. Each is reached, never crossed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceLimits {
    /// Share of the shard's blob budget (`disk_bytes_max × high_water_percent`) one source may
    /// hold, in record bytes (payload plus header and padding, what the blob takes on disk).
    /// 100: no share (the high-water rule alone applies, segment by segment).
    pub share_percent: u8,
    /// Share of one dest's quota (`dest_blobs_max`, `dest_bytes_max`) one source may hold.
    pub dest_share_percent: u8,
    /// Share of `disk_bytes_max` the segments may reach before the heaviest sources are
    /// refused: above it, a source that holds more than the mean of the sources present may not
    /// store more. At or above `high_water_percent` it never applies (blobs stop at the
    /// high-water mark).
    pub pressure_percent: u8,
    /// Addresses the table tracks; beyond, new addresses share [`Source::Other`].
    pub sources_max: usize,
    /// Leading bits of an IPv4 address that name its source (32: each address).
    pub ipv4_prefix_bits: u8,
    /// Leading bits of an IPv6 address that name its source (at most 64, the /64 a host gets).
    pub ipv6_prefix_bits: u8,
}

/// Bits of the longest IPv6 prefix a source can be keyed by (the [`IpKey`] /64).
pub const SOURCE_IPV6_PREFIX_BITS_MAX: u8 = 64;
/// Bits of an IPv4 address.
pub const SOURCE_IPV4_PREFIX_BITS_MAX: u8 = 32;

impl Default for SourceLimits {
    fn default() -> Self {
        SourceLimits {
            share_percent: 10,
            dest_share_percent: 50,
            pressure_percent: 75,
            sources_max: 16_384,
            ipv4_prefix_bits: SOURCE_IPV4_PREFIX_BITS_MAX,
            ipv6_prefix_bits: SOURCE_IPV6_PREFIX_BITS_MAX,
        }
    }
}

impl SourceLimits {
    /// The source key of an address: its prefix under these limits.
    pub fn key(&self, ip: IpKey) -> IpKey {
        match ip {
            IpKey::V4(a) => IpKey::V4(mask(a, self.ipv4_prefix_bits)),
            IpKey::V6Prefix(p) => IpKey::V6Prefix(mask(p, self.ipv6_prefix_bits)),
        }
    }
}

/// `bytes` with every bit after the first `bits` cleared.
fn mask<const N: usize>(mut bytes: [u8; N], bits: u8) -> [u8; N] {
    let bits = usize::from(bits);
    for (i, b) in bytes.iter_mut().enumerate() {
        let keep = bits.saturating_sub(i * 8).min(8);
        // keep is 0..=8: the mask of its leading bits.
        *b &= u8::try_from((0xff00u16 >> keep) & 0xff).expect("masked to one byte");
    }
    bytes
}

/// Who a blob is charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// An address prefix with its own entry.
    Addr(IpKey),
    /// The overflow bucket: addresses that found the table full.
    Other,
}

/// What one source holds (in the table, or in one dest's queue).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub blobs: u64,
    /// Record bytes in the table; payload bytes in a dest's queue (as the dest quota counts).
    pub bytes: u64,
}

impl Held {
    pub(crate) fn add(&mut self, bytes: u64) {
        self.blobs += 1;
        self.bytes += bytes;
    }
    /// Takes one blob of `bytes` off; `true` when nothing is left.
    pub(crate) fn sub(&mut self, bytes: u64) -> bool {
        self.blobs = self
            .blobs
            .checked_sub(1)
            .expect("a source's count covers every blob charged to it");
        self.bytes = self
            .bytes
            .checked_sub(bytes)
            .expect("a source's bytes cover every blob charged to it");
        self.blobs == 0
    }
}

/// The per-source table of one shard: at most `sources_max` addresses plus [`Source::Other`],
/// each with live blobs (an entry is removed when its last blob goes).
#[derive(Debug)]
pub struct Sources {
    sources_max: usize,
    held: AHashMap<Source, Held>,
    /// Record bytes charged to every source together.
    bytes: u64,
    /// Appends charged to the overflow bucket because the table was full.
    pub(crate) overflowed: u64,
}

impl Sources {
    pub fn new(sources_max: usize) -> Self {
        assert!(sources_max > 0);
        Sources {
            sources_max,
            held: AHashMap::new(),
            bytes: 0,
            overflowed: 0,
        }
    }

    /// The bucket a blob from `key` is charged to: its own entry, a new one if the table has
    /// room, else the overflow bucket.
    pub fn classify(&self, key: IpKey) -> Source {
        let own = Source::Addr(key);
        let addrs = self.held.len() - usize::from(self.held.contains_key(&Source::Other));
        if self.held.contains_key(&own) || addrs < self.sources_max {
            own
        } else {
            Source::Other
        }
    }

    pub fn held(&self, s: Source) -> Held {
        self.held.get(&s).copied().unwrap_or_default()
    }

    /// Whether `s` holds more than the mean of the sources present (itself included).
    pub fn above_mean(&self, s: Source) -> bool {
        let n = u128::try_from(self.held.len()).unwrap_or(u128::MAX);
        u128::from(self.held(s).bytes) * n > u128::from(self.bytes)
    }

    pub(crate) fn charge(&mut self, s: Source, bytes: u64) {
        if s == Source::Other {
            self.overflowed += 1;
        }
        self.held.entry(s).or_default().add(bytes);
        self.bytes += bytes;
        assert!(
            self.held.len() <= self.sources_max + 1,
            "the table is bounded"
        );
    }

    pub(crate) fn release(&mut self, s: Source, bytes: u64) {
        let h = self
            .held
            .get_mut(&s)
            .expect("a blob's source holds it until it goes");
        if h.sub(bytes) {
            self.held.remove(&s);
        }
        self.bytes -= bytes;
    }

    /// Entries in the table (addresses, and the overflow bucket when it holds blobs).
    pub fn len(&self) -> usize {
        self.held.len()
    }
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_mask_the_trailing_bits() {
        assert_eq!(mask([10, 1, 2, 3], 32), [10, 1, 2, 3]);
        assert_eq!(mask([10, 1, 2, 3], 24), [10, 1, 2, 0]);
        assert_eq!(mask([10, 1, 0xff, 3], 20), [10, 1, 0xf0, 0]);
        assert_eq!(mask([0xff; 8], 0), [0; 8]);
        assert_eq!(
            mask([0xff; 8], 48),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]
        );
    }

    #[test]
    fn a_full_table_charges_new_addresses_to_the_overflow_bucket() {
        let mut t = Sources::new(2);
        let a = |i: u8| IpKey::V4([10, 0, 0, i]);
        for i in 1..=2 {
            let s = t.classify(a(i));
            assert_eq!(s, Source::Addr(a(i)));
            t.charge(s, 100);
        }
        assert_eq!(t.classify(a(3)), Source::Other);
        t.charge(Source::Other, 100);
        assert_eq!(t.classify(a(4)), Source::Other, "the bucket takes no slot");
        assert_eq!(
            t.classify(a(1)),
            Source::Addr(a(1)),
            "a known address keeps its own"
        );
        t.release(Source::Addr(a(2)), 100);
        assert_eq!(
            t.classify(a(4)),
            Source::Addr(a(4)),
            "a freed slot is reused"
        );
        assert_eq!(t.len(), 2);
    }
}
