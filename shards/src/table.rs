//! The forward table of one shard: `dest → subscriber` for the dests this shard owns.

use ahash::AHashMap;
use ferry_proto::Dest;

/// A connection anywhere in the node: the shard that owns its socket and its id there. Ids are
/// never reused within a shard's lifetime, so a stale reference can never hit a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub shard: u16,
    pub conn: u64,
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
