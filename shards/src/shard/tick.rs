//! Time: the connection deadlines a tick runs (only what is due) and the store's timers.

use super::*;

impl<B: Backend> Shard<B> {
    /// Runs every connection deadline that has passed. Call at least every `tick` ms. The work
    /// is what is due (connections whose armed deadline passed, stale entries), not the
    /// connections held: see [`Shard::timer_checks`].
    pub fn on_tick(&mut self, now: Now) {
        // Connections whose deadline ran: re-armed after the loop, so that each runs
        // `on_timeout` at most once per tick (a deadline still due waits for the next tick).
        let mut fired = Vec::new();
        while let Some((at_ms, id)) = self.deadlines.pop_due(now.mono_ms) {
            let Some(c) = self.conns.get_mut(&id) else {
                continue; // closed since it was armed
            };
            if c.armed_ms != Some(at_ms) {
                continue; // stale: a deadline that moved earlier was armed after it
            }
            c.armed_ms = None;
            // The armed deadline may be early (activity moved the true one later): check it.
            if c.sm.poll_timeout().is_some_and(|t| t <= now.mono_ms) {
                c.sm.on_timeout(now);
                fired.push(id);
            } else {
                self.arm(id);
            }
        }
        for id in fired {
            self.mark_ready(id);
        }
        self.limiter.evict_idle(now.mono_ms);
        self.now = now;
        self.store_tick(now);
        self.metrics.memory_bytes.store(
            self.memory.bytes as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Timer work done so far: deadline entries ticks took off the shard's heap and the
    /// limiter's (each a connection or an address whose deadline came due, or a stale entry).
    /// A tick with nothing due adds nothing, however many connections are open.
    pub fn timer_checks(&self) -> u64 {
        self.deadlines.checks() + self.limiter.timer_checks()
    }

    /// Schedules `conn`'s deadline if it is earlier than the one armed (a later one waits: the
    /// armed entry fires early and re-arms). O(1) unless it pushes (O(log n)).
    pub(super) fn arm(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(t) = c.sm.poll_timeout() else {
            return;
        };
        if c.armed_ms.is_some_and(|a| a <= t) {
            return;
        }
        c.armed_ms = Some(t);
        self.deadlines.push(t, conn);
        if self.deadlines.needs_rebuild(self.conns.len()) {
            let armed = self
                .conns
                .iter()
                .filter_map(|(&id, c)| c.armed_ms.map(|a| (a, id)));
            self.deadlines.rebuild(armed);
        }
    }
}
