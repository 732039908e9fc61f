//! Push wakes, sans-IO: who is registered ([`registry`]), which Web Push endpoints are allowed
//! ([`endpoint`]), the queue of wakes with its rate caps, in-flight limit, retries and backoff
//! ([`Dispatcher`]), and when a provider credential is used again or made anew ([`Credential`]).
//! Time comes in as arguments; the service core (src/service) runs these against the providers'
//! HTTPS endpoints, and the simulator (`crate::sim`) against a simulated provider.

pub mod endpoint;
pub mod registry;

use std::collections::VecDeque;

use ferry_proto::conn::Now;
use ferry_proto::frame::{Dest, PushProvider};

use crate::ratelimit::{KeyedLimiter, Rate};
pub use registry::{DESTS_PER_TOKEN_MAX, PushLimits, PushStats, Registry, Wake};

/// The index of `p` in per-provider arrays.
pub fn provider_index(p: PushProvider) -> usize {
    match p {
        PushProvider::Apns => 0,
        PushProvider::Fcm => 1,
        PushProvider::WebPush => 2,
    }
}

/// Longest backoff between two tries of one wake (ms), and the longest `Retry-After` honoured.
pub const RETRY_BACKOFF_MAX_MS: u64 = 300_000;
pub const RETRY_AFTER_MAX_MS: u64 = 3_600_000;

/// A credential younger than this is not made anew when a provider refuses it: one refusal per
/// provider cannot make the node sign (or, for FCM, ask the token endpoint) on every wake.
pub const CREDENTIAL_REFRESH_MIN_AGE_S: u64 = 60;

/// How a provider answered one wake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// The token is no longer valid: delete it.
    Gone,
    /// Back off and retry (429, 5xx, network errors); `Retry-After` when given.
    Retry {
        after_s: Option<u64>,
    },
    /// Our credential was refused or is stale: refresh it and retry once.
    Refresh,
    /// Refused for another reason (counted, not retried).
    Failed,
}

/// How wakes are sent (named config keys under `[push]`).
#[derive(Clone, Debug)]
pub struct SendLimits {
    /// Wakes per second to each provider (APNs, FCM, Web Push); 0 = no cap.
    pub rate_per_s: [u64; 3],
    /// Wakes waiting to be sent; beyond it new wakes are dropped and counted.
    pub queue_max: usize,
    /// Provider requests in flight at once.
    pub inflight_max: usize,
    /// Retries after 429/5xx/network errors, with exponential backoff from `retry_base_ms`.
    pub retries_max: u32,
    pub retry_base_ms: u64,
}

/// A wake waiting to be sent, or in flight.
#[derive(Debug)]
pub struct Job {
    /// Numbers the wakes of one dispatcher (a retry keeps its wake's number).
    pub seq: u64,
    pub wake: Wake,
    /// When the shard's request arrived (`Clock::elapsed_us`): the wake latency starts here.
    asked_us: u64,
    attempt: u32,
    not_before_ms: u64,
    /// Sent after a `Refresh`: the credential must be made anew (if old enough).
    pub refreshed: bool,
}

/// What the dispatcher counted (the service core publishes them as metrics).
#[derive(Clone, Copy, Debug, Default)]
pub struct DispatchStats {
    pub sent: [u64; 3],
    pub failed: [u64; 3],
    pub dropped: u64,
    pub retried: u64,
    /// Wakes not sent because their device unregistered (or expired, or its token was
    /// deleted) while they waited.
    pub cancelled: u64,
}

/// What a provider's answer changed.
#[derive(Debug, Default)]
pub struct Finished {
    /// New armed-until of the dests of a deleted token, for their owner shards.
    pub arms: Vec<(Dest, u64)>,
    /// From the shard's request to the provider's acceptance, when it was sent (µs).
    pub latency_us: Option<u64>,
}

/// The wake queue: wakes leave within each provider's rate cap and the in-flight limit; a
/// retryable failure waits `retry_base_ms · 2^attempt` (at most [`RETRY_BACKOFF_MAX_MS`], or the
/// provider's `Retry-After`); a refused credential is retried once with a new one. Bounded by
/// `queue_max`: past it a wake is dropped, counted, and its device's window restarts.
#[derive(Debug)]
pub struct Dispatcher {
    limits: SendLimits,
    queue: VecDeque<Job>,
    inflight: usize,
    /// One bucket each (key 0): the provider's wake rate cap.
    provider_rate: [KeyedLimiter<u8>; 3],
    next_seq: u64,
    pub stats: DispatchStats,
}

impl Dispatcher {
    pub fn new(limits: SendLimits) -> Self {
        let rate = |per_s: u64| {
            KeyedLimiter::new(
                Rate {
                    per_s,
                    burst: per_s.max(1),
                },
                4,
            )
        };
        Dispatcher {
            provider_rate: limits.rate_per_s.map(rate),
            limits,
            queue: VecDeque::new(),
            inflight: 0,
            next_seq: 0,
            stats: DispatchStats::default(),
        }
    }

    /// Wakes waiting or in flight.
    pub fn len(&self) -> usize {
        self.queue.len() + self.inflight
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How long a wake answered `Retry { after_s }` on its `attempt`-th try (0 = the first)
    /// waits before the next.
    fn retry_wait_ms(&self, attempt: u32, after_s: Option<u64>) -> u64 {
        let backoff = self
            .limits
            .retry_base_ms
            .saturating_mul(1 << attempt.min(16))
            .min(RETRY_BACKOFF_MAX_MS);
        after_s.map_or(backoff, |s| s.saturating_mul(1000).min(RETRY_AFTER_MAX_MS))
    }

    /// A blob was stored for `dest` while nobody listened: queue the wakes the registry grants.
    pub fn wake(&mut self, reg: &mut Registry, now: Now, asked_us: u64, dest: &Dest) {
        for wake in reg.wake(now.unix_s, now.mono_ms, dest) {
            self.next_seq += 1;
            self.enqueue(
                reg,
                Job {
                    seq: self.next_seq,
                    wake,
                    asked_us,
                    attempt: 0,
                    not_before_ms: 0,
                    refreshed: false,
                },
            );
        }
    }

    fn enqueue(&mut self, reg: &mut Registry, job: Job) {
        if self.queue.len() >= self.limits.queue_max {
            self.stats.dropped += 1;
            reg.wake_finished(&job.wake, true);
            return;
        }
        self.queue.push_back(job);
    }

    /// The wakes to send now, within the rate caps and the in-flight limit (each is in flight
    /// until [`Dispatcher::done`]), and how long (ms) until a waiting one may be due: `None` when
    /// nothing waits or only the in-flight limit holds them (an answer frees a slot).
    /// `can_send`: false when no provider is configured (registrations replayed from an earlier
    /// configuration): every queued wake is finished unsent.
    pub fn due(
        &mut self,
        reg: &mut Registry,
        now_ms: u64,
        can_send: bool,
    ) -> (Vec<Job>, Option<u64>) {
        if !can_send {
            for job in std::mem::take(&mut self.queue) {
                reg.wake_finished(&job.wake, false);
            }
            return (Vec::new(), None);
        }
        let mut start = Vec::new();
        let mut waiting = VecDeque::new();
        let mut next: Option<u64> = None;
        while let Some(job) = self.queue.pop_front() {
            if self.inflight >= self.limits.inflight_max {
                waiting.push_back(job);
                waiting.extend(self.queue.drain(..));
                break;
            }
            let p = provider_index(job.wake.provider);
            if job.not_before_ms > now_ms {
                let wait = job.not_before_ms - now_ms;
                next = Some(next.map_or(wait, |n| n.min(wait)));
                waiting.push_back(job);
                continue;
            }
            // Checked once the wake is due (not on every turn it waits through).
            if !reg.has_token(job.wake.provider, &job.wake.token) {
                self.stats.cancelled += 1;
                reg.wake_finished(&job.wake, false);
                continue;
            }
            if !self.provider_rate[p].allow(0, now_ms) {
                next = Some(1); // the bucket refills by the millisecond
                waiting.push_back(job);
                continue;
            }
            self.inflight += 1;
            start.push(job);
        }
        self.queue = waiting;
        (start, next)
    }

    /// A provider answered `job` (handed out by [`Dispatcher::due`]). `elapsed_us`: the clock
    /// `asked_us` was read from.
    pub fn done(
        &mut self,
        reg: &mut Registry,
        now_ms: u64,
        elapsed_us: u64,
        mut job: Job,
        outcome: Outcome,
    ) -> Finished {
        assert!(
            self.inflight > 0,
            "an answer to a wake that was not in flight"
        );
        self.inflight -= 1;
        let i = provider_index(job.wake.provider);
        let mut out = Finished::default();
        match outcome {
            Outcome::Sent => {
                self.stats.sent[i] += 1;
                out.latency_us = Some(elapsed_us.saturating_sub(job.asked_us));
                reg.wake_finished(&job.wake, false);
            }
            Outcome::Gone => {
                out.arms = reg.delete_token(job.wake.provider, &job.wake.token);
                reg.wake_finished(&job.wake, false);
            }
            Outcome::Refresh if !job.refreshed => {
                job.refreshed = !crate::mutants::active(crate::mutants::Mutant::RefreshForgotten);
                job.not_before_ms = 0;
                self.queue.push_front(job);
            }
            Outcome::Retry { after_s } if job.attempt < self.limits.retries_max => {
                self.stats.retried += 1;
                let wait = self.retry_wait_ms(job.attempt, after_s);
                job.attempt += 1;
                job.not_before_ms = now_ms + wait;
                if crate::mutants::active(crate::mutants::Mutant::RetryAtOnce) {
                    job.not_before_ms = 0;
                }
                self.enqueue(reg, job);
            }
            Outcome::Refresh | Outcome::Retry { .. } | Outcome::Failed => {
                self.stats.failed[i] += 1;
                reg.wake_finished(&job.wake, false);
            }
        }
        out
    }
}

/// A provider credential (an APNs provider JWT, an FCM access token, a VAPID JWT) and when it
/// was made and stops being valid (Unix s).
#[derive(Clone, Debug)]
pub struct Credential<T> {
    pub value: T,
    pub issued_s: u64,
    pub expires_s: u64,
}

/// When a cached credential is used again: while more than `margin_s` of it is left and, when
/// the provider refused it, only if it is younger than `min_age_s` (it was made anew since, by
/// another request). The node's `min_age_s` is [`CREDENTIAL_REFRESH_MIN_AGE_S`].
#[derive(Clone, Copy, Debug)]
pub struct Reuse {
    pub margin_s: u64,
    pub min_age_s: u64,
}

impl<T> Credential<T> {
    /// Whether to use it for a request at `now_s`; `refused`: the provider refused the last
    /// request's credential (a `Refresh`).
    pub fn usable(&self, now_s: u64, refused: bool, reuse: Reuse) -> bool {
        let fresh = now_s < self.issued_s + reuse.min_age_s;
        (!refused || fresh) && now_s + reuse.margin_s < self.expires_s
    }
}

/// `c`'s value when it is usable (see [`Credential::usable`]).
pub fn usable<T>(c: Option<&Credential<T>>, now_s: u64, refused: bool, reuse: Reuse) -> Option<&T> {
    c.filter(|c| c.usable(now_s, refused, reuse))
        .map(|c| &c.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SendLimits {
        SendLimits {
            rate_per_s: [2, 0, 0],
            queue_max: 3,
            inflight_max: 2,
            retries_max: 2,
            retry_base_ms: 100,
        }
    }

    fn registry() -> Registry {
        Registry::new(
            PushLimits {
                registrations_max: 100,
                dests_per_token_max: 10,
                registration_ttl_max_s: 10_000,
                coalesce_window_ms: 1_000,
                webpush_origins_allowed: endpoint::AllowList::parse(&["https://push.example"])
                    .unwrap(),
                enabled: [true, true, true],
            },
            [1; 32],
        )
    }

    fn apns(i: u8) -> String {
        format!("{i:02x}").repeat(32)
    }

    fn now(ms: u64) -> Now {
        Now {
            mono_ms: ms,
            unix_s: 1_000 + ms / 1_000,
        }
    }

    #[test]
    fn retries_back_off_exponentially_then_fail_and_the_window_reopens() {
        let (mut r, mut d) = (registry(), Dispatcher::new(limits()));
        let dest = Dest([1; 16]);
        r.register(1_000, PushProvider::Fcm, apns(1).as_bytes(), 100, &[dest])
            .unwrap();
        d.wake(&mut r, now(0), 0, &dest);
        let mut t = 0;
        for (attempt, wait) in [(0, 100), (1, 200)] {
            let (jobs, next) = d.due(&mut r, t, true);
            assert_eq!((jobs.len(), next), (1, None), "attempt {attempt}");
            let job = jobs.into_iter().next().unwrap();
            d.done(&mut r, t, 0, job, Outcome::Retry { after_s: None });
            let (jobs, next) = d.due(&mut r, t, true);
            assert_eq!((jobs.len(), next), (0, Some(wait)));
            t += wait;
        }
        let job = d.due(&mut r, t, true).0.pop().unwrap();
        d.done(&mut r, t, 0, job, Outcome::Retry { after_s: None });
        assert_eq!((d.stats.retried, d.stats.failed[1], d.len()), (2, 1, 0));
        // The device's wake is over: the next one waits only for the coalescing window.
        d.wake(&mut r, now(t + 1_000), 0, &dest);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn a_refused_credential_is_retried_once_and_gone_deletes_the_token() {
        let (mut r, mut d) = (registry(), Dispatcher::new(limits()));
        let dest = Dest([2; 16]);
        r.register(1_000, PushProvider::Fcm, apns(2).as_bytes(), 100, &[dest])
            .unwrap();
        d.wake(&mut r, now(0), 0, &dest);
        let job = d.due(&mut r, 0, true).0.pop().unwrap();
        assert!(!job.refreshed);
        d.done(&mut r, 0, 0, job, Outcome::Refresh);
        let job = d.due(&mut r, 0, true).0.pop().unwrap();
        assert!(job.refreshed);
        d.done(&mut r, 0, 0, job, Outcome::Refresh);
        assert_eq!((d.stats.failed[1], d.len()), (1, 0));
        d.wake(&mut r, now(2_000), 0, &dest);
        let job = d.due(&mut r, 2_000, true).0.pop().unwrap();
        let f = d.done(&mut r, 2_000, 0, job, Outcome::Gone);
        assert_eq!(f.arms, vec![(dest, 0)]);
        assert_eq!(r.armed_until(&dest), 0);
    }

    #[test]
    fn a_device_registered_anew_while_its_wake_waits_gets_no_second_one_and_a_removed_one_none() {
        let (mut r, mut d) = (registry(), Dispatcher::new(limits()));
        let dest = Dest([3; 16]);
        let tok = apns(3);
        r.register(1_000, PushProvider::Fcm, tok.as_bytes(), 100, &[dest])
            .unwrap();
        d.wake(&mut r, now(0), 0, &dest);
        let job = d.due(&mut r, 0, true).0.pop().unwrap();
        d.done(&mut r, 0, 0, job, Outcome::Retry { after_s: Some(1) });
        // Removed and registered again while the retry waits: a new wake after the window
        // is coalesced into the waiting one (seed 3853 of the simulator sent both at once).
        r.register(1_000, PushProvider::Fcm, tok.as_bytes(), 0, &[dest])
            .unwrap();
        r.register(1_000, PushProvider::Fcm, tok.as_bytes(), 100, &[dest])
            .unwrap();
        d.wake(&mut r, now(1_000), 0, &dest);
        let (jobs, _) = d.due(&mut r, 1_000, true);
        assert_eq!(jobs.len(), 1, "one wake for the device, not two");
        let job = jobs.into_iter().next().unwrap();
        d.done(&mut r, 1_000, 0, job, Outcome::Retry { after_s: Some(1) });
        // Removed for good while the retry waits: the wake is not sent.
        r.register(1_000, PushProvider::Fcm, tok.as_bytes(), 0, &[dest])
            .unwrap();
        let (jobs, _) = d.due(&mut r, 2_000, true);
        assert!(jobs.is_empty());
        assert_eq!((d.stats.cancelled, d.len()), (1, 0));
    }

    #[test]
    fn the_rate_cap_the_inflight_limit_and_the_queue_bound_hold() {
        let (mut r, mut d) = (registry(), Dispatcher::new(limits()));
        for i in 0..5u8 {
            let dest = Dest([10 + i; 16]);
            r.register(1_000, PushProvider::Apns, apns(i).as_bytes(), 100, &[dest])
                .unwrap();
            d.wake(&mut r, now(0), 0, &dest);
        }
        // Queue bound 3: two of five dropped.
        assert_eq!((d.len(), d.stats.dropped), (3, 2));
        // APNs capped at 2/s (burst 2), and 2 in flight at most.
        let (jobs, next) = d.due(&mut r, 0, true);
        assert_eq!((jobs.len(), next), (2, None));
        assert_eq!(d.due(&mut r, 0, true).0.len(), 0);
        for j in jobs {
            d.done(&mut r, 1, 1, j, Outcome::Sent);
        }
        let (jobs, next) = d.due(&mut r, 1, true);
        assert_eq!((jobs.len(), next), (0, Some(1)));
        assert_eq!(d.due(&mut r, 500, true).0.len(), 1);
        assert_eq!(d.stats.sent[0], 2);
    }

    #[test]
    fn a_credential_is_kept_until_its_margin_and_replaced_after_a_refusal_once_old() {
        let c = Credential {
            value: "jwt",
            issued_s: 100,
            expires_s: 1_000,
        };
        let reuse = |margin_s| Reuse {
            margin_s,
            min_age_s: CREDENTIAL_REFRESH_MIN_AGE_S,
        };
        assert_eq!(usable(Some(&c), 500, false, reuse(300)), Some(&"jwt"));
        assert_eq!(usable(Some(&c), 700, false, reuse(300)), None);
        assert_eq!(
            usable(Some(&c), 120, true, reuse(0)),
            Some(&"jwt"),
            "made anew within the minute"
        );
        assert_eq!(usable(Some(&c), 160, true, reuse(0)), None);
        assert_eq!(usable::<&str>(None, 0, false, reuse(0)), None);
    }
}
