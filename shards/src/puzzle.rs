//! The shard's side of send puzzles (`ferry_proto::puzzle`): the node-wide rotating seed, the
//! difficulty level a dest's pressure asks for, the seen-set that makes one answer buy one send,
//! and the capability verifiers mailbox owners register.
//!
//! Data flow: the connection's core checks a `Send`'s answer (cheap blake3 condition, then
//! Equi-X, each paid from the connection's puzzle-check budget) and its capability token (one
//! hash), and forwards what it found ([`Passed`]) with the packet. The owner core, when the packet
//! is to be stored, reads the dest's and the store's fill ([`crate::store::Pressure`]), turns it
//! into an effort, and admits the packet if it carries that effort (an answer it has not seen) or
//! the dest's capability; otherwise it answers `PuzzleRequired` with the effort.

use std::collections::VecDeque;

use ahash::{AHashMap, AHashSet};
use ferry_proto::frame::{CapabilityStatus, Dest};
use ferry_proto::puzzle::{self, PuzzleAnswer};

use crate::store::Pressure;

/// Most difficulty levels a node may configure (level `n` asks `effort_max >> (levels - n)`).
pub const PUZZLE_LEVELS_MAX: u8 = 16;

/// The puzzle settings of a node (config keys `limits.puzzle_*`).
#[derive(Clone, Debug)]
pub struct PuzzleConfig {
    /// Keys the node-wide seed (the same on every shard; random per node start).
    pub key: [u8; 32],
    /// The seed changes every this many seconds; an answer is good under the current and the
    /// previous seed.
    pub seed_period_s: u64,
    /// Difficulty levels above 0; 0 turns puzzles off.
    pub levels: u8,
    /// The effort of the highest level; level `n` asks `effort_max >> (levels - n)`, at least 1.
    pub effort_max: u32,
    /// A dest's quota fill (percent of its blob or byte limit, whichever is fuller) at which
    /// level 1 starts; level `levels` is reached at 100.
    pub dest_fill_pct_min: u8,
    /// The store's fill (percent of its high-water mark) at which level 1 starts, for every dest.
    pub store_fill_pct_min: u8,
    /// Answers one connection may have checked per second, and the burst.
    pub checks_per_conn: crate::ratelimit::Rate,
    /// Accepted answers remembered per shard; the oldest is forgotten first (a replay of it could
    /// then store its one message again, once).
    pub answers_seen_max: usize,
    /// Capability verifiers one shard holds (dests it owns).
    pub capabilities_max: usize,
    /// Longest a capability verifier is kept.
    pub capability_ttl_max_s: u64,
}

impl Default for PuzzleConfig {
    fn default() -> Self {
        PuzzleConfig {
            key: [0; 32],
            seed_period_s: 600,
            // One level, effort 1: one Equi-X answer, about 1.2 solver runs (13 ms mean, p99
            // 35 ms of one core of the reference machine), already cuts an attacker's taken sends
            // per core several hundredfold (bench/RESULTS.md, "Attacks"). Each level above
            // doubles the mean and lengthens the geometric tail (effort 2: p99 67 ms; 4: 131
            // ms): past effort 1, an honest send on a phone-class core leaves 100 ms
            // (proto/examples/puzzle_cost.rs).
            levels: 1,
            effort_max: 1,
            dest_fill_pct_min: 50,
            store_fill_pct_min: 75,
            checks_per_conn: crate::ratelimit::Rate {
                per_s: 4,
                burst: 32,
            },
            answers_seen_max: 1 << 16,
            capabilities_max: 1 << 16,
            capability_ttl_max_s: 2 * 86_400,
        }
    }
}

/// What a `Send` proved on its connection's core, forwarded to the owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Passed {
    /// The effort of a valid answer (0: none, or not checked).
    pub effort: u32,
    /// The answer's id, for the owner's seen-set.
    pub answer_id: [u8; 16],
    /// `blake3(token)` of the capability token the `Send` carried.
    pub verifier: Option<[u8; 32]>,
}

/// The owner's verdict on a packet to be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Admit,
    /// Answer `PuzzleRequired` with this effort.
    Puzzle(u32),
}

/// One shard's puzzle state.
#[derive(Debug)]
pub struct PuzzleGate {
    cfg: PuzzleConfig,
    seen: AHashSet<[u8; 16]>,
    /// Insertion order of `seen`: full policy, forget the oldest.
    seen_order: VecDeque<[u8; 16]>,
    /// Owned dest → (verifier, kept until this Unix second).
    capabilities: AHashMap<Dest, ([u8; 32], u64)>,
}

impl PuzzleGate {
    pub fn new(cfg: PuzzleConfig) -> Self {
        assert!(cfg.levels <= PUZZLE_LEVELS_MAX);
        assert!(cfg.seed_period_s > 0 && cfg.answers_seen_max > 0);
        assert!(cfg.effort_max > 0 && cfg.effort_max <= puzzle::PUZZLE_EFFORT_MAX);
        assert!(cfg.dest_fill_pct_min <= 100 && cfg.store_fill_pct_min <= 100);
        PuzzleGate {
            cfg,
            seen: AHashSet::new(),
            seen_order: VecDeque::new(),
            capabilities: AHashMap::new(),
        }
    }

    pub fn config(&self) -> &PuzzleConfig {
        &self.cfg
    }

    /// Changes the reloadable settings (the key stays).
    pub fn set_config(&mut self, mut cfg: PuzzleConfig) {
        cfg.key = self.cfg.key;
        *self = PuzzleGate {
            cfg,
            seen: std::mem::take(&mut self.seen),
            seen_order: std::mem::take(&mut self.seen_order),
            capabilities: std::mem::take(&mut self.capabilities),
        };
    }

    fn seed_of_period(&self, period: u64) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.cfg.key);
        h.update(b"ferry puzzle seed");
        h.update(&period.to_le_bytes());
        *h.finalize().as_bytes()
    }

    /// The seed clients solve against now.
    pub fn seed(&self, unix_s: u64) -> [u8; 32] {
        self.seed_of_period(unix_s / self.cfg.seed_period_s)
    }

    /// The level a store under `p` asks for: 0 when calm, rising linearly with the fuller of the
    /// dest's quota and the store's high-water mark past their thresholds.
    pub fn level(&self, p: Pressure) -> u8 {
        let levels = u32::from(self.cfg.levels);
        let over = |fill: u8, min: u8| -> u32 {
            if fill < min {
                return 0;
            }
            // Fill `min` is level 1, fill 100 (and above) the top level.
            let span = u32::from(100 - min) + 1;
            let at = u32::from(fill.min(100) - min);
            1 + at * levels / span
        };
        let level = over(p.dest_fill_pct, self.cfg.dest_fill_pct_min)
            .max(over(p.store_fill_pct, self.cfg.store_fill_pct_min))
            .min(levels);
        u8::try_from(level).expect("at most PUZZLE_LEVELS_MAX")
    }

    /// The effort of `level` (0 for level 0).
    pub fn effort(&self, level: u8) -> u32 {
        if level == 0 {
            return 0;
        }
        let down = u32::from(self.cfg.levels.saturating_sub(level));
        (self.cfg.effort_max >> down.min(31)).max(1)
    }

    /// Connection core: the effort a `Send`'s answer proves (0 if it proves none), under the
    /// current or the previous seed.
    pub fn check_answer(
        &self,
        unix_s: u64,
        dest: &Dest,
        digest: &[u8; 32],
        answer: &PuzzleAnswer,
    ) -> Option<[u8; 16]> {
        let period = unix_s / self.cfg.seed_period_s;
        [period, period.saturating_sub(1)]
            .iter()
            .find_map(|&p| puzzle::verify(&self.seed_of_period(p), dest, digest, answer).ok())
    }

    /// Owner core: may a packet for `dest` be stored under pressure `p`, with what it `passed`?
    /// An admitted answer is remembered and never admits again.
    pub fn admit(
        &mut self,
        unix_s: u64,
        dest: &Dest,
        p: Pressure,
        passed: Option<&Passed>,
    ) -> Gate {
        let effort = self.effort(self.level(p));
        if effort == 0 {
            return Gate::Admit;
        }
        let Some(passed) = passed else {
            return Gate::Puzzle(effort);
        };
        let capable = match (passed.verifier, self.capabilities.get(dest)) {
            (Some(v), Some((want, until))) => v == *want && unix_s <= *until,
            _ => false,
        };
        if capable {
            return Gate::Admit;
        }
        if passed.effort < effort || self.seen.contains(&passed.answer_id) {
            return Gate::Puzzle(effort);
        }
        if self.seen_order.len() >= self.cfg.answers_seen_max {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(passed.answer_id);
        self.seen_order.push_back(passed.answer_id);
        Gate::Admit
    }

    /// Owner core: registers (`ttl_s` > 0) or removes the capability verifier of `dest`.
    pub fn register(
        &mut self,
        unix_s: u64,
        dest: Dest,
        ttl_s: u32,
        verifier: [u8; 32],
    ) -> CapabilityStatus {
        if ttl_s == 0 {
            self.capabilities.remove(&dest);
            return CapabilityStatus::Ok;
        }
        if !self.capabilities.contains_key(&dest)
            && self.capabilities.len() >= self.cfg.capabilities_max
        {
            // Full: make room from expired entries (work only when full, bounded by the table).
            self.capabilities.retain(|_, (_, until)| *until >= unix_s);
            if self.capabilities.len() >= self.cfg.capabilities_max {
                return CapabilityStatus::TooMany;
            }
        }
        let until = unix_s.saturating_add(u64::from(ttl_s).min(self.cfg.capability_ttl_max_s));
        self.capabilities.insert(dest, (verifier, until));
        CapabilityStatus::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four levels up to effort 8 (the defaults are one level of effort 1): the mechanism.
    fn four_levels() -> PuzzleConfig {
        PuzzleConfig {
            levels: 4,
            effort_max: 8,
            ..PuzzleConfig::default()
        }
    }

    fn p(dest: u8, store: u8) -> Pressure {
        Pressure {
            dest_fill_pct: dest,
            store_fill_pct: store,
        }
    }

    #[test]
    fn levels_rise_with_pressure_and_are_zero_when_calm() {
        let g = PuzzleGate::new(four_levels());
        assert_eq!(g.level(p(0, 0)), 0);
        assert_eq!(g.level(p(49, 74)), 0);
        assert_eq!(g.level(p(50, 0)), 1);
        assert_eq!(g.level(p(100, 0)), 4);
        assert_eq!(g.level(p(0, 100)), 4);
        assert_eq!(g.level(p(0, 75)), 1);
        let efforts: Vec<u32> = (0..=4).map(|l| g.effort(l)).collect();
        assert_eq!(efforts, vec![0, 1, 2, 4, 8]);
        let mut seen = 0;
        for f in 0..=100 {
            let l = g.level(p(f, 0));
            assert!(l >= seen, "monotonic");
            seen = l;
        }
    }

    #[test]
    fn an_answer_admits_once_and_capabilities_skip() {
        let mut g = PuzzleGate::new(four_levels());
        let d = Dest([1; 16]);
        let passed = Passed {
            effort: 8,
            answer_id: [9; 16],
            verifier: None,
        };
        assert_eq!(g.admit(0, &d, p(100, 0), Some(&passed)), Gate::Admit);
        assert_eq!(g.admit(0, &d, p(100, 0), Some(&passed)), Gate::Puzzle(8));
        let weak = Passed {
            effort: 4,
            answer_id: [8; 16],
            verifier: None,
        };
        assert_eq!(g.admit(0, &d, p(100, 0), Some(&weak)), Gate::Puzzle(8));
        let cap = Passed {
            effort: 0,
            answer_id: [0; 16],
            verifier: Some([5; 32]),
        };
        assert_eq!(g.admit(0, &d, p(100, 0), Some(&cap)), Gate::Puzzle(8));
        assert_eq!(g.register(0, d, 60, [5; 32]), CapabilityStatus::Ok);
        assert_eq!(g.admit(60, &d, p(100, 0), Some(&cap)), Gate::Admit);
        assert_eq!(g.admit(61, &d, p(100, 0), Some(&cap)), Gate::Puzzle(8));
    }
}
