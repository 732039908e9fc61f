//! The forward table of one shard: `dest → subscriber` for the dests this shard owns.

use ahash::AHashMap;
use ferry_proto::Dest;

/// A connection anywhere in the node: the shard that owns its socket and its id there. Ids are
/// never reused within a shard's lifetime, so a stale reference can never hit a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub shard: u16,
    pub conn: ConnId,
}

/// A connection's id on its shard: numbered from 1, never reused while the shard runs (the
/// service core's own work, a wake, comes from [`ConnId::NONE`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    /// No connection: what a shard's own requests (a push wake) are sent from.
    pub const NONE: ConnId = ConnId(0);
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// `dest → subscriber`. One live subscriber per dest: the newest subscription takes over.
#[derive(Debug, Default)]
pub struct ForwardTable {
    map: AHashMap<Dest, ConnRef>,
}

impl ForwardTable {
    pub fn with_capacity(n: usize) -> Self {
        ForwardTable {
            map: AHashMap::with_capacity(n),
        }
    }

    #[inline]
    pub fn lookup(&self, dest: &Dest) -> Option<ConnRef> {
        self.map.get(dest).copied()
    }

    /// Sets the subscriber; returns the one it replaced, if it was another connection.
    pub fn subscribe(&mut self, dest: Dest, sub: ConnRef) -> Option<ConnRef> {
        self.map.insert(dest, sub).filter(|old| *old != sub)
    }

    /// Removes the entry only if it still points at `sub` (a newer subscriber stays).
    pub fn unsubscribe(&mut self, dest: &Dest, sub: ConnRef) -> bool {
        if self.map.get(dest) == Some(&sub) {
            self.map.remove(dest);
            true
        } else {
            false
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
