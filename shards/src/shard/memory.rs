//! The shard's memory budget: what connections and outboxes hold, shedding, allocator trims.

use super::*;

/// A shard's memory account (sans-IO: the shard counts, the driver reads and trims).
#[derive(Debug, Default)]
pub(super) struct Memory {
    /// Bytes charged now: every connection's `charged` plus the outboxes.
    pub(super) bytes: usize,
    /// Of those, the outboxes' messages.
    pub(super) outbox_bytes: usize,
    /// The most `bytes` reached since the allocator was last trimmed.
    pub(super) peak_since_trim: usize,
    pub(super) last_trim_ms: u64,
    /// `bytes` when the allocator was last trimmed.
    pub(super) bytes_at_trim: usize,
    /// A trim ran and memory may still be falling: trim again once it settles.
    pub(super) follow_up: bool,
}

/// A connection that may be shed, with what decides its place in the order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShedCandidate {
    pub conn: ConnId,
    /// Bytes it holds beyond `CONN_BASE_BYTES`.
    pub held_bytes: usize,
    /// Since when it holds them stuck (`ServerConn::held_since_ms`); `None` sorts last.
    pub held_since_ms: Option<u64>,
}

/// The order connections are shed in when a shard is over its memory budget: those holding the
/// most bytes first (the slowest readers' queues, the largest partial frames); among equals, the
/// one stuck the longest (the oldest partial frame or stalled output); then the oldest
/// connection. Connections holding nothing beyond their base are never shed (shedding them frees
/// little; the budget refuses new connections instead).
pub fn shed_order(candidates: &mut Vec<ShedCandidate>) {
    candidates.retain(|c| c.held_bytes > 0);
    candidates.sort_unstable_by(|a, b| {
        b.held_bytes
            .cmp(&a.held_bytes)
            .then_with(|| {
                a.held_since_ms
                    .unwrap_or(u64::MAX)
                    .cmp(&b.held_since_ms.unwrap_or(u64::MAX))
            })
            .then_with(|| a.conn.cmp(&b.conn))
    });
}

impl<B: Backend> Shard<B> {
    /// Bytes this shard's connections and outboxes hold now (what its budget counts).
    pub fn memory_bytes(&self) -> usize {
        self.memory.bytes
    }

    /// Counts `conn`'s memory again after its buffers changed.
    pub(super) fn recharge(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let now_held = CONN_BASE_BYTES + c.sm.memory_bytes();
        self.memory.bytes = self.memory.bytes - c.charged + now_held;
        c.charged = now_held;
        self.memory.peak_since_trim = self.memory.peak_since_trim.max(self.memory.bytes);
    }

    /// Whether `need` more bytes fit the budget, shedding the connections holding the most first
    /// when they would not.
    pub(super) fn memory_room(&mut self, need: usize) -> bool {
        if self.memory.bytes + need > self.cfg.memory_bytes_max {
            self.shed_to(self.cfg.memory_bytes_max.saturating_sub(need));
        }
        self.memory.bytes + need <= self.cfg.memory_bytes_max
    }

    /// Sheds if the shard is over its budget.
    pub(super) fn enforce_memory(&mut self) {
        if self.memory.bytes > self.cfg.memory_bytes_max {
            self.shed_to(self.cfg.memory_bytes_max);
        }
    }

    /// Sheds connections in `shed_order` until the shard holds at most `MEMORY_SHED_TARGET_PCT`
    /// of its budget (and at most `limit`). One pass over the connections; each round frees at
    /// least an eighth of the budget (unless nothing more can be shed), so rounds are rare.
    pub(super) fn shed_to(&mut self, limit: usize) {
        let target = (self.cfg.memory_bytes_max / 100 * MEMORY_SHED_TARGET_PCT).min(limit);
        let mut order: Vec<ShedCandidate> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.sm.is_closing())
            .map(|(&conn, c)| ShedCandidate {
                conn,
                held_bytes: c.charged.saturating_sub(CONN_BASE_BYTES),
                held_since_ms: c.sm.held_since_ms(),
            })
            .collect();
        shed_order(&mut order);
        for cand in order {
            if self.memory.bytes <= target {
                break;
            }
            if let Some(c) = self.conns.get_mut(&cand.conn) {
                c.sm.shed();
                ShardMetrics::inc(&self.metrics.connections_shed_memory);
                self.mark_ready(cand.conn);
            }
        }
    }

    /// Whether the driver should ask the allocator to give freed memory back to the OS now
    /// (`malloc_trim`). A trim is due when `MEMORY_TRIM_FREED_BYTES_MIN` was freed since the last
    /// one and that one is `MEMORY_TRIM_INTERVAL_MS` old; then, every
    /// `MEMORY_TRIM_SETTLE_MS`, while the count keeps falling below what it was at the last trim,
    /// one more: the tail of a mass close (less than the threshold, freed just after a trim)
    /// would otherwise stay resident for good. Counts the trim as done when it says yes.
    pub fn take_trim_due(&mut self, now: Now) -> bool {
        let m = &mut self.memory;
        let freed = m.peak_since_trim.saturating_sub(m.bytes);
        let large = freed >= MEMORY_TRIM_FREED_BYTES_MIN
            && now.mono_ms >= m.last_trim_ms + MEMORY_TRIM_INTERVAL_MS;
        let settled = m.follow_up && now.mono_ms >= m.last_trim_ms + MEMORY_TRIM_SETTLE_MS;
        if !large {
            if !settled {
                return false;
            }
            if m.bytes >= m.bytes_at_trim {
                // Nothing more was freed since the last trim: memory has settled.
                m.follow_up = false;
                return false;
            }
        }
        m.follow_up = true;
        m.last_trim_ms = now.mono_ms;
        m.peak_since_trim = m.bytes;
        m.bytes_at_trim = m.bytes;
        ShardMetrics::inc(&self.metrics.memory_trims);
        true
    }
}
