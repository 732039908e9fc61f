//! Deliberate bugs the simulator must catch ([`crate::sim`]; `docs/SIMULATION.md` lists each with
//! the seeds it takes). Built only with the `sim-mutants` feature, which only the mutant test
//! turns on (`cargo test -p ferry-shards --features sim-mutants --test sim_mutants`): without it
//! [`active`] is a constant `false` and every hook compiles away.

/// One deliberate bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mutant {
    /// A group commit marks the appends durable without syncing the segments.
    SkipSync,
    /// `Stored` is answered as soon as the blob is appended, before a sync covers it.
    StoredBeforeDurable,
    /// A new subscriber is handed the stored blobs twice.
    HandOverTwice,
    /// A cross-core batch leaves its outbox in reverse order.
    ReorderHopBatch,
    /// Replay after a restart ignores tombstones: acknowledged blobs come back.
    ForgetAcksOnRestart,
    /// A dest with push registrations asks for a wake on every stored blob (no rate limit).
    WakeEveryBlob,
    /// The prekey directory's replay ignores fetches: one-time keys handed out before a restart
    /// are handed out again.
    ForgetPrekeyTakes,
    /// A wake whose credential the provider refused is retried without asking for a new one.
    RefreshForgotten,
    /// A wake the provider asked to retry later is retried at once (no backoff).
    RetryAtOnce,
    /// The media store's recovery drops complete blobs (as if their meta files did not read).
    ForgetBlobsOnRestart,
}

impl Mutant {
    pub const ALL: [Mutant; 10] = [
        Mutant::SkipSync,
        Mutant::StoredBeforeDurable,
        Mutant::HandOverTwice,
        Mutant::ReorderHopBatch,
        Mutant::ForgetAcksOnRestart,
        Mutant::WakeEveryBlob,
        Mutant::ForgetPrekeyTakes,
        Mutant::RefreshForgotten,
        Mutant::RetryAtOnce,
        Mutant::ForgetBlobsOnRestart,
    ];
}

#[cfg(feature = "sim-mutants")]
mod on {
    use super::Mutant;
    use std::cell::Cell;

    thread_local! {
        static ACTIVE: Cell<Option<Mutant>> = const { Cell::new(None) };
    }

    /// Turns `m` on for this thread (the simulator runs a node on one thread), `None`: off.
    pub fn set(m: Option<Mutant>) {
        ACTIVE.with(|a| a.set(m));
    }

    pub fn active(m: Mutant) -> bool {
        ACTIVE.with(|a| a.get() == Some(m))
    }
}

#[cfg(feature = "sim-mutants")]
pub use on::{active, set};

/// Whether mutant `m` is on: always `false` without the `sim-mutants` feature.
#[cfg(not(feature = "sim-mutants"))]
#[inline(always)]
pub const fn active(_m: Mutant) -> bool {
    false
}
