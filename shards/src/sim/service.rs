//! The simulated service core, as far as the shards see it: their requests go through one bounded
//! queue (full: the shard answers `Busy` itself), and it runs the node's own push code
//! (`crate::push`: the registry with its sealed journal, the wake queue with rate caps, in-flight
//! limit, retries and backoff, and the credential rule) against simulated providers, plus the
//! node's prekey directory (`super::prekeys`). Registrations are journaled before their answer
//! and replayed after a crash, when the shards learn them as tags only (`PushArmTags`) until a
//! wake opens them.
//!
//! Checked, on the shards' side: a wake is asked only for a dest the shards were told is armed
//! (or raced its disarming), at most once per `WAKE_OFFER_INTERVAL_MS` per dest. On the
//! providers' side: never two requests for one device at once; never more than a provider's rate
//! cap in any second, nor more than the in-flight limit; never a request for a token the provider
//! said is gone (until registered again), nor for a token no client registered; a retry comes no
//! sooner than its backoff (or `Retry-After`); no credential used past its expiry, and a wake
//! refused for its credential is sent again with a new one (refused twice is a bug); every
//! acknowledged registration survives a crash; at the end no wake is left queued.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use ferry_proto::frame::PushProvider;

use crate::push::endpoint::AllowList;
use crate::push::{
    Credential, Dispatcher, Job, Outcome, PushLimits, Registry, Reuse, SendLimits, provider_index,
    usable,
};
use crate::service::{ServiceReply, ServiceRequest, ServiceSink, ServiceWork, push_dest_tag};
use crate::shard::WAKE_OFFER_INTERVAL_MS;

use super::*;

/// Requests one simulated service core holds at once (the node's `service_queue_msgs_max` is
/// larger; small here so that `Busy` comes).
const SERVICE_QUEUE_MAX: usize = 8;
/// The simulated providers' Web Push origin.
pub(super) const WEBPUSH_ORIGIN: &str = "https://push.sim.example";
/// The coalescing window, short so that a run sees many.
const COALESCE_WINDOW_MS: u64 = 300;
/// Credentials are made valid this long and used again as `REUSE` says (the node's are valid
/// 20 min to 12 h and its minimum age is a minute; scaled down to the runs' few seconds).
const CREDENTIAL_VALID_S: u64 = 4;
const REUSE: Reuse = Reuse {
    margin_s: 1,
    min_age_s: 1,
};
/// A provider refuses (`Refresh`) a credential older than this when a request reaches it: with
/// `REUSE`, some are, and a wake sent again with a new one must get through.
const PROVIDER_CREDENTIAL_AGE_MAX_S: u64 = 0;
/// The core expires registrations and may compact its journal this often (the node's tick).
const MAINTAIN_EVERY_MS: u64 = 1_000;
/// A compaction this long after an append (the node's `PUSH_REGROUP_S`, scaled down).
const REGROUP_S: u64 = 1;
/// A registration or wake that ran out while its request waited may still come (s).
const RACE_SLACK_S: u64 = 60;

fn push_limits() -> PushLimits {
    PushLimits {
        registrations_max: 64,
        dests_per_token_max: 4,
        registration_ttl_max_s: 7 * 86_400,
        coalesce_window_ms: COALESCE_WINDOW_MS,
        webpush_origins_allowed: AllowList::parse(&[WEBPUSH_ORIGIN])
            .expect("the simulated origin is allowed"),
        enabled: [true, true, true],
    }
}

/// Rate caps, queue bound, in-flight limit and retries, drawn from the seed.
fn send_limits(r: &mut Rng) -> SendLimits {
    SendLimits {
        rate_per_s: [
            [0, 3, 50][r.index(3)],
            [0, 10][r.index(2)],
            [0, 2][r.index(2)],
        ],
        queue_max: [2, 16][r.index(2)],
        inflight_max: [1, 4][r.index(2)],
        retries_max: [0, 3][r.index(2)],
        retry_base_ms: [10, 200][r.index(2)],
    }
}

/// The token client `c` registers (one device each; providers in turn).
pub(super) fn device_token(c: usize) -> (PushProvider, String) {
    match c % 3 {
        0 => (PushProvider::Apns, format!("{:02x}", c % 256).repeat(32)),
        1 => (PushProvider::Fcm, format!("device-{c}")),
        _ => (PushProvider::WebPush, format!("{WEBPUSH_ORIGIN}/sub/{c}")),
    }
}

/// The shards' way in (to the service core, or to a core's media worker): a bounded queue. Each
/// request is numbered as it is offered, so the core can tell whether a shard asked before or
/// after it was told something.
#[derive(Debug)]
pub(super) struct Queue {
    inner: Mutex<(VecDeque<(u64, ServiceRequest)>, u64)>,
    cap: usize,
}

impl ServiceSink for Queue {
    fn offer(&self, req: ServiceRequest) -> Result<(), ServiceRequest> {
        let mut q = self.lock();
        if q.0.len() >= self.cap {
            return Err(req);
        }
        let seq = q.1;
        q.1 += 1;
        q.0.push_back((seq, req));
        Ok(())
    }
}

impl Queue {
    pub(super) fn new(cap: usize) -> Queue {
        Queue {
            inner: Mutex::default(),
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (VecDeque<(u64, ServiceRequest)>, u64)> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn pop(&self) -> Option<(u64, ServiceRequest)> {
        self.lock().0.pop_front()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.lock().0.is_empty()
    }

    /// The number the next request offered will get.
    fn next_seq(&self) -> u64 {
        self.lock().1
    }
}

type DeviceKey = (PushProvider, String);

/// A request at a simulated provider, answered at `at_ms`.
#[derive(Debug)]
struct Request {
    at_ms: u64,
    job: Job,
    /// When the credential it carried was made (Unix s), and when it reached the provider.
    credential_issued_s: u64,
    sent_unix_s: u64,
}

/// The simulated providers (APNs, FCM, Web Push) and the core's credential cache.
#[derive(Debug, Default)]
struct Providers {
    inflight: Vec<Request>,
    /// The core's cached credentials (the value: a serial number).
    credentials: [Option<Credential<u64>>; 3],
    made: u64,
    /// When each provider received its requests of the last second (ms), for the rate check.
    received_ms: [VecDeque<u64>; 3],
    /// Per wake (job number): how many retries it was asked for, and when the next may come.
    retries: HashMap<u64, (u32, u64)>,
    /// Wakes refused for their credential once.
    refused: HashSet<u64>,
    /// Tokens a provider answered "gone" for (until registered again).
    gone: HashSet<DeviceKey>,
    /// Answers given: sent, retry later, credential refused, token gone.
    answers: [u64; 4],
}

impl Providers {
    /// What dies with the node's process: requests in flight (their answers are lost), the
    /// credential cache, the token buckets, the wake numbers.
    fn restart(&mut self) {
        self.inflight.clear();
        self.credentials = Default::default();
        self.received_ms = Default::default();
        self.retries.clear();
        self.refused.clear();
    }
}

/// What the simulated service core knows, and what the checks remember.
#[derive(Debug)]
pub(super) struct Service {
    pub(super) queue: Arc<Queue>,
    /// The node's registry and wake queue.
    registry: Registry,
    dispatcher: Dispatcher,
    send: SendLimits,
    /// The push journal: every record the core synced before it answered (a compaction
    /// replaces it by a snapshot).
    journal: Vec<Vec<u8>>,
    providers: Providers,
    /// When a waiting wake may be due (ms), and when the core next expires and compacts.
    next_dispatch_ms: Option<u64>,
    next_maintain_ms: u64,
    /// What the shards were told: dest → armed until (`PushArm`), tag → until (`PushArmTags`),
    /// and tags taken back (`PushUnarmTag`) with their until and the first request number
    /// offered after.
    told: HashMap<Dest, u64>,
    told_tags: HashMap<[u8; 16], u64>,
    unarmed_tags: HashMap<[u8; 16], (u64, u64)>,
    /// When each dest was last woken (monotonic ms), since the node last started.
    last_wake_ms: HashMap<Dest, u64>,
    /// Per dest, the first request number offered after the shards were last told it has no
    /// live registration: a wake asked before that is a race the core drops, one asked after
    /// it is a shard's bug.
    disarmed_from_seq: HashMap<Dest, u64>,
    /// Registrations the node accepted: device → dest → until (Unix s).
    model: HashMap<DeviceKey, HashMap<Dest, u64>>,
    /// Devices ever registered.
    ever: HashSet<DeviceKey>,
    pub(super) wakes: u64,
    /// The prekey directory (the node's own) and its journal.
    pub(super) prekeys: super::prekeys::Prekeys,
}

impl Service {
    pub(super) fn new(prekey_compact_every: u32, seed: u64) -> Service {
        let mut r = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
        let send = send_limits(&mut r);
        Service {
            queue: Arc::new(Queue::new(SERVICE_QUEUE_MAX)),
            registry: Registry::new(push_limits(), nonce_seed(&mut r)),
            dispatcher: Dispatcher::new(send.clone()),
            send,
            journal: Vec::new(),
            providers: Providers::default(),
            next_dispatch_ms: None,
            next_maintain_ms: 0,
            told: HashMap::new(),
            told_tags: HashMap::new(),
            unarmed_tags: HashMap::new(),
            last_wake_ms: HashMap::new(),
            disarmed_from_seq: HashMap::new(),
            model: HashMap::new(),
            ever: HashSet::new(),
            wakes: 0,
            prekeys: super::prekeys::Prekeys::new(prekey_compact_every),
        }
    }

    /// The shards are told now that `dest` has no live registration: a wake offered from here on
    /// is a shard's bug.
    fn note_disarmed(&mut self, dest: Dest) {
        let next = self.queue.next_seq();
        self.disarmed_from_seq.insert(dest, next);
    }

    /// Wakes queued, waiting or at a provider.
    pub(super) fn wakes_pending(&self) -> usize {
        self.dispatcher.len() + self.providers.inflight.len()
    }

    /// The providers' answers: sent, retry later, credential refused, token gone.
    pub(super) fn provider_answers(&self) -> [u64; 4] {
        self.providers.answers
    }

    pub(super) fn answer_due(&self, now_ms: u64) -> Option<usize> {
        self.providers
            .inflight
            .iter()
            .position(|r| r.at_ms <= now_ms)
    }
}

fn nonce_seed(r: &mut Rng) -> [u8; 32] {
    let mut seed = [0u8; 32];
    for chunk in seed.chunks_mut(8) {
        chunk.copy_from_slice(&r.next_u64().to_le_bytes());
    }
    seed
}

impl Sim {
    /// Handles the oldest queued service request.
    pub(super) fn serve_one(&mut self) -> Result<(), String> {
        let Some((seq, req)) = self.service.queue.pop() else {
            return Ok(());
        };
        let now = self.now;
        match req.work {
            ServiceWork::PushRegister {
                provider,
                ttl_s,
                token,
                dests,
            } => {
                let s = &mut self.service;
                let r = s
                    .registry
                    .register(now.unix_s, provider, &token, ttl_s, &dests);
                self.trace(|| {
                    format!(
                        "service: registration of {provider:?} {:?} for {dests:?}, ttl {ttl_s} s: {:?}",
                        String::from_utf8_lossy(&token),
                        r.as_ref().map(|(n, arms)| (*n, arms.clone()))
                    )
                });
                let frame = match r {
                    Ok((n, arms)) => {
                        let s = &mut self.service;
                        let key = std::str::from_utf8(&token)
                            .ok()
                            .and_then(|t| s.registry.canonical_token(provider, t))
                            .map(|t| (provider, t))
                            .ok_or("a registration accepted with a token the registry refuses")?;
                        s.providers.gone.remove(&key);
                        s.ever.insert(key.clone());
                        let model = s.model.entry(key).or_default();
                        for d in &dests {
                            if ttl_s == 0 {
                                model.remove(d);
                            } else {
                                model.insert(*d, now.unix_s + u64::from(ttl_s));
                            }
                        }
                        self.push_arm(arms);
                        Frame::PushResult {
                            status: ferry_proto::frame::PushStatus::Ok,
                            dests_registered: n,
                        }
                    }
                    Err(status) => Frame::PushResult {
                        status,
                        dests_registered: 0,
                    },
                };
                // Journaled before the answer leaves, as the core does.
                self.push_commit();
                self.answer(req.from, frame);
            }
            ServiceWork::Wake { dest } => {
                self.service.wakes += 1;
                self.trace(|| {
                    format!(
                        "service: wake {seq} for {dest:?} from shard {}",
                        req.from.shard
                    )
                });
                self.check_wake_offer(seq, dest)?;
                let s = &mut self.service;
                s.dispatcher
                    .wake(&mut s.registry, now, now.mono_ms * 1_000, &dest);
                self.push_commit();
                self.dispatch_wakes()?;
            }
            work @ (ServiceWork::PrekeyUpload { .. } | ServiceWork::PrekeyFetch { .. }) => {
                let frame = self
                    .service
                    .prekeys
                    .handle(now, work)
                    .expect("an upload or a fetch is answered");
                self.answer(req.from, frame);
            }
            other => {
                // The simulated clients send nothing else; refuse what comes as the node would
                // without the service.
                let refused = ServiceRequest {
                    from: req.from,
                    work: other,
                };
                if let Some(frame) = refused.refusal(false) {
                    self.answer(req.from, frame);
                }
            }
        }
        Ok(())
    }

    /// A shard asked for a wake: it must have been told the dest is armed (or armed it itself
    /// from a tag), unless the request raced its disarming; and at most one per
    /// `WAKE_OFFER_INTERVAL_MS` per dest.
    fn check_wake_offer(&mut self, seq: u64, dest: Dest) -> Result<(), String> {
        let now = self.now;
        let s = &mut self.service;
        let tag = push_dest_tag(&dest);
        let told = s.told.get(&dest).copied().unwrap_or(0);
        if told <= now.unix_s {
            let from_tag = s.told_tags.get(&tag).copied().filter(|u| *u > now.unix_s);
            // A tag taken back after this request was offered: every such unarming (a wake
            // opened the tag's registrations, or a registration superseded them) told the owner
            // the dest's own armed-until, which `told` holds.
            let raced_unarm = s
                .unarmed_tags
                .get(&tag)
                .is_some_and(|(u, from)| *u > now.unix_s && seq < *from);
            if let Some(until) = from_tag {
                // The owner armed the dest itself from the tag, afresh.
                s.told.insert(dest, until);
                s.last_wake_ms.remove(&dest);
            } else {
                let expired_while_queued = told > 0 && told + RACE_SLACK_S > now.unix_s;
                let raced = s.disarmed_from_seq.get(&dest).is_some_and(|f| seq < *f);
                if expired_while_queued || raced || raced_unarm {
                    // Asked while the owner still had it armed: the registry finds nothing live
                    // and sends nothing.
                    self.trace(|| format!("service: wake {seq} for {dest:?} raced its removal"));
                    return Ok(());
                }
                return Err(format!(
                    "a wake for {dest:?}, which the shards were told has no live registration"
                ));
            }
        }
        if let Some(last) = s.last_wake_ms.insert(dest, now.mono_ms) {
            if now.mono_ms < last + WAKE_OFFER_INTERVAL_MS {
                return Err(format!(
                    "two wakes for {dest:?} {} ms apart (at most one per {WAKE_OFFER_INTERVAL_MS} ms)",
                    now.mono_ms - last
                ));
            }
        }
        Ok(())
    }

    /// Tells the owner shards the new armed-until of `arms`.
    fn push_arm(&mut self, arms: Vec<(Dest, u64)>) {
        let now = self.now;
        for (dest, until_unix_s) in arms {
            let s = &mut self.service;
            let was = s.told.insert(dest, until_unix_s).unwrap_or(0);
            if until_unix_s <= now.unix_s {
                s.note_disarmed(dest);
            } else if was <= now.unix_s {
                // A new arming: its wakes are counted afresh.
                s.last_wake_ms.remove(&dest);
            }
            let o = dest.owner(self.cfg.shards);
            self.node.shards[o].on_service(now, ServiceReply::PushArm { dest, until_unix_s });
            self.pump(o);
        }
    }

    /// The end of the core's turn: opened dests armed exactly, tags no shard needs taken back,
    /// and the registry's records journaled (synced before any answer leaves).
    fn push_commit(&mut self) {
        let now = self.now;
        let opened = self.service.registry.take_opened();
        self.push_arm(opened);
        for tag in self.service.registry.take_unarmed_tags() {
            let s = &mut self.service;
            if let Some(until) = s.told_tags.remove(&tag) {
                let from = s.queue.next_seq();
                s.unarmed_tags.insert(tag, (until, from));
            }
            for sh in 0..self.cfg.shards {
                self.node.shards[sh].on_service(now, ServiceReply::PushUnarmTag { tag });
                self.pump(sh);
            }
        }
        let records = self.service.registry.take_records(now.unix_s);
        self.service.journal.extend(records);
    }

    /// Hands the wakes that are due to their providers, through the core's credential cache.
    fn dispatch_wakes(&mut self) -> Result<(), String> {
        let now = self.now;
        let s = &mut self.service;
        let (jobs, next) = s.dispatcher.due(&mut s.registry, now.mono_ms, true);
        s.next_dispatch_ms = next.map(|n| now.mono_ms + n);
        for job in jobs {
            self.provider_receives(job)?;
        }
        Ok(())
    }

    /// A wake reaches its provider: the providers' side of the checks.
    fn provider_receives(&mut self, job: Job) -> Result<(), String> {
        let now = self.now;
        let p = provider_index(job.wake.provider);
        let key: DeviceKey = (job.wake.provider, job.wake.token.clone());
        let delay = self.delay() * 3;
        let s = &mut self.service;
        let pr = &mut s.providers;
        // The core's credential rule: used again, or made anew.
        let credential = match usable(pr.credentials[p].as_ref(), now.unix_s, job.refreshed, REUSE)
        {
            Some(_) => pr.credentials[p]
                .clone()
                .ok_or("a usable credential that is not there")?,
            None => {
                pr.made += 1;
                let c = Credential {
                    value: pr.made,
                    issued_s: now.unix_s,
                    expires_s: now.unix_s + CREDENTIAL_VALID_S,
                };
                pr.credentials[p] = Some(c.clone());
                c
            }
        };
        if now.unix_s >= credential.expires_s {
            return Err(format!(
                "a wake sent with credential {} past its expiry",
                credential.value
            ));
        }
        if job.refreshed && now.unix_s >= credential.issued_s + REUSE.min_age_s {
            return Err("a wake sent again after a refused credential, with the old one".into());
        }
        if !s.ever.contains(&key) {
            return Err(format!(
                "a wake for a {:?} token no client registered",
                key.0
            ));
        }
        if s.model.get(&key).is_none_or(HashMap::is_empty) {
            return Err(format!("a wake for a {:?} device that unregistered", key.0));
        }
        if pr.gone.contains(&key) {
            return Err(format!(
                "a wake for a {:?} token the provider said is gone",
                key.0
            ));
        }
        if pr.inflight.iter().any(|r| r.job.wake == job.wake) {
            return Err(format!("two wakes at once for one {:?} device", key.0));
        }
        if pr.inflight.len() >= s.send.inflight_max {
            return Err(format!(
                "{} provider requests in flight (limit {})",
                pr.inflight.len() + 1,
                s.send.inflight_max
            ));
        }
        let rate = s.send.rate_per_s[p];
        let seen = &mut pr.received_ms[p];
        while seen.front().is_some_and(|t| t + 1_000 <= now.mono_ms) {
            seen.pop_front();
        }
        seen.push_back(now.mono_ms);
        // A token bucket of `rate` per second with a burst of `rate`: at most 2 × rate in any
        // second.
        if rate > 0 && seen.len() as u64 > 2 * rate {
            return Err(format!(
                "{} wakes to {:?} within a second (cap {rate}/s)",
                seen.len(),
                key.0
            ));
        }
        if let Some((_, due)) = pr.retries.get(&job.seq) {
            if now.mono_ms < *due {
                return Err(format!(
                    "wake {} retried {} ms before its backoff ended",
                    job.seq,
                    due - now.mono_ms
                ));
            }
        }
        self.trace(|| {
            format!(
                "provider: wake {} to {:?} received (refreshed: {})",
                job.seq, key.0, job.refreshed
            )
        });
        let pr = &mut self.service.providers;
        pr.inflight.push(Request {
            at_ms: now.mono_ms + delay,
            job,
            credential_issued_s: credential.issued_s,
            sent_unix_s: now.unix_s,
        });
        Ok(())
    }

    /// A provider's answer reaches the core.
    pub(super) fn provider_answers(&mut self, i: usize) -> Result<(), String> {
        let now = self.now;
        let roll = self.rng.below(100);
        let after = self.rng.below(2);
        let s = &mut self.service;
        let r = s.providers.inflight.swap_remove(i);
        let key: DeviceKey = (r.job.wake.provider, r.job.wake.token.clone());
        let outcome = if r.sent_unix_s > r.credential_issued_s + PROVIDER_CREDENTIAL_AGE_MAX_S {
            if !s.providers.refused.insert(r.job.seq) {
                return Err(format!(
                    "wake {} refused for its credential twice (a refusal must bring a new one)",
                    r.job.seq
                ));
            }
            Outcome::Refresh
        } else {
            match roll {
                0..=74 => Outcome::Sent,
                75..=86 => Outcome::Retry {
                    after_s: (after == 0).then_some(1),
                },
                87..=92 => Outcome::Gone,
                _ => Outcome::Failed,
            }
        };
        self.trace(|| format!("provider: wake {} to {:?}: {outcome:?}", r.job.seq, key.0));
        let s = &mut self.service;
        let counted = match outcome {
            Outcome::Sent => 0,
            Outcome::Retry { .. } => 1,
            Outcome::Refresh => 2,
            Outcome::Gone => 3,
            Outcome::Failed => 4,
        };
        if let Some(n) = s.providers.answers.get_mut(counted) {
            *n += 1;
        }
        match outcome {
            Outcome::Sent => {}
            Outcome::Gone => {
                s.providers.gone.insert(key.clone());
                s.model.remove(&key);
            }
            Outcome::Retry { after_s } => {
                // The wait the node promises (docs/PUSH.md), computed here on its own:
                // `retry_base_ms · 2^tries` up to 5 minutes, or `Retry-After` up to an hour.
                let tries = s.providers.retries.get(&r.job.seq).map_or(0, |(n, _)| *n);
                let wait = match after_s {
                    Some(a) => (a * 1_000).min(3_600_000),
                    None => (s.send.retry_base_ms << tries.min(16)).min(300_000),
                };
                s.providers
                    .retries
                    .insert(r.job.seq, (tries + 1, now.mono_ms + wait));
            }
            Outcome::Refresh | Outcome::Failed => {}
        }
        let f = s.dispatcher.done(
            &mut s.registry,
            now.mono_ms,
            now.mono_ms * 1_000,
            r.job,
            outcome,
        );
        self.push_arm(f.arms);
        self.push_commit();
        self.dispatch_wakes()
    }

    /// The core's timers: waiting wakes that became due, and once a second expiry and the
    /// journal's compaction.
    pub(super) fn service_tick(&mut self) -> Result<(), String> {
        let now = self.now;
        if self
            .service
            .next_dispatch_ms
            .is_some_and(|t| t <= now.mono_ms)
        {
            self.dispatch_wakes()?;
        }
        if now.mono_ms < self.service.next_maintain_ms {
            return Ok(());
        }
        self.service.next_maintain_ms = now.mono_ms + MAINTAIN_EVERY_MS;
        let arms = self.service.registry.expire(now.unix_s);
        self.push_arm(arms);
        self.push_commit();
        let r = &mut self.service.registry;
        if r.compaction_due(now.unix_s, REGROUP_S, true, false) {
            self.service.journal = r.snapshot();
            r.compacted();
            self.trace(|| {
                format!(
                    "service: push journal compacted to {} records",
                    self.service.journal.len()
                )
            });
        }
        Ok(())
    }

    /// Sends `frame` to the connection a request came from, through its shard.
    fn answer(&mut self, to: crate::table::ConnRef, frame: Frame) {
        let s = usize::from(to.shard);
        let reply = ServiceReply::Frame { to: to.conn, frame };
        self.node.shards[s].on_service(self.now, reply);
        self.pump(s);
    }

    /// After a restart: what was queued died with the process; the registrations are replayed
    /// from the journal, and the shards learn them as tags only. Every registration the node
    /// acknowledged and that has not expired must be there.
    pub(super) fn restart_service(&mut self) -> Result<(), String> {
        self.trace(|| {
            format!(
                "service: restart; {} journal records",
                self.service.journal.len()
            )
        });
        while self.service.queue.pop().is_some() {}
        self.service.prekeys.restart()?;
        let now = self.now;
        let seed = nonce_seed(&mut self.rng);
        let s = &mut self.service;
        s.disarmed_from_seq.clear();
        s.last_wake_ms.clear();
        s.told.clear();
        s.unarmed_tags.clear();
        s.providers.restart();
        s.next_dispatch_ms = None;
        s.next_maintain_ms = 0;
        s.dispatcher = Dispatcher::new(s.send.clone());
        s.registry = Registry::new(push_limits(), seed);
        let bad = s.registry.replay(&s.journal);
        if bad > 0 {
            return Err(format!("{bad} push journal records did not replay"));
        }
        for (key, dests) in &s.model {
            for (d, until) in dests {
                if *until > now.unix_s && s.registry.armed_until(d) < *until {
                    return Err(format!(
                        "a {:?} registration for {d:?} until {until} lost across a restart (armed until {})",
                        key.0,
                        s.registry.armed_until(d)
                    ));
                }
            }
        }
        let tags: AHashMap<[u8; 16], u64> = s.registry.all_armed_tags().into_iter().collect();
        s.told_tags = tags.iter().map(|(t, u)| (*t, *u)).collect();
        let tags = Arc::new(tags);
        for sh in 0..self.cfg.shards {
            let reply = ServiceReply::PushArmTags { tags: tags.clone() };
            self.node.shards[sh].on_service(now, reply);
        }
        let arms = self.service.registry.all_armed();
        self.push_arm(arms);
        Ok(())
    }
}
