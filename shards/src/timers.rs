//! A deadline heap with lazy invalidation: what a tick touches is what is due, never every
//! connection (or every address).
//!
//! The owner of the keys keeps, beside each key, the deadline it last pushed (`armed`). A
//! deadline that moves later costs nothing (the old entry fires early, the owner re-checks the
//! key's true deadline and pushes the new one); a deadline that moves earlier is pushed at once.
//! An entry whose key is gone, or whose deadline is no longer the key's armed one, is stale and
//! dropped when it comes due. Stale entries are bounded: when the heap holds more than twice the
//! live keys plus [`DEADLINES_SLACK`], the owner rebuilds it from the armed deadlines (one pass,
//! paid for by the pushes that made it grow).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Stale entries a heap may hold beyond two per live key before it is rebuilt.
pub const DEADLINES_SLACK: usize = 1_024;

#[derive(Debug)]
pub struct Deadlines<K> {
    heap: BinaryHeap<Reverse<(u64, K)>>,
    /// Entries taken off the heap because they came due (live or stale): the timer work done.
    checks: u64,
}

impl<K: Ord + Copy> Default for Deadlines<K> {
    fn default() -> Self {
        Deadlines {
            heap: BinaryHeap::new(),
            checks: 0,
        }
    }
}

impl<K: Ord + Copy> Deadlines<K> {
    /// Schedules `key` at `at_ms`. Bounded: see [`Deadlines::needs_rebuild`].
    pub fn push(&mut self, at_ms: u64, key: K) {
        self.heap.push(Reverse((at_ms, key)));
    }

    /// The next entry due at `now_ms` (deadline ≤ now), earliest first; counts it as a check.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(u64, K)> {
        if self.heap.peek().is_some_and(|Reverse((t, _))| *t <= now_ms) {
            self.checks += 1;
            self.heap.pop().map(|Reverse(e)| e)
        } else {
            None
        }
    }

    /// The earliest deadline held (possibly stale: then the true one is later).
    pub fn next_ms(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Whether stale entries outnumber what `live` keys justify: the owner should
    /// [`Deadlines::rebuild`].
    pub fn needs_rebuild(&self, live: usize) -> bool {
        self.heap.len() > live.saturating_mul(2).saturating_add(DEADLINES_SLACK)
    }

    /// Replaces every entry by `armed` (each live key's armed deadline).
    pub fn rebuild(&mut self, armed: impl Iterator<Item = (u64, K)>) {
        self.heap = armed.map(Reverse).collect();
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Entries that came due so far (see the field).
    pub fn checks(&self) -> u64 {
        self.checks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_only_what_is_due_earliest_first() {
        let mut d = Deadlines::default();
        d.push(30, 3u64);
        d.push(10, 1);
        d.push(20, 2);
        assert_eq!(d.pop_due(5), None);
        assert_eq!(d.checks(), 0);
        assert_eq!(d.pop_due(25), Some((10, 1)));
        assert_eq!(d.pop_due(25), Some((20, 2)));
        assert_eq!(d.pop_due(25), None);
        assert_eq!(d.checks(), 2);
        assert_eq!(d.next_ms(), Some(30));
    }

    #[test]
    fn rebuild_is_asked_for_only_past_the_slack() {
        let mut d = Deadlines::default();
        for i in 0..(DEADLINES_SLACK as u64 + 2) {
            d.push(i, 0u64);
        }
        assert!(!d.needs_rebuild(1));
        d.push(0, 0);
        assert!(d.needs_rebuild(1));
        d.rebuild([(7, 0u64)].into_iter());
        assert_eq!(d.len(), 1);
        assert!(!d.needs_rebuild(1));
    }
}
