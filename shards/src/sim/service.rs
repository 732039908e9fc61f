//! The simulated service core, as far as the shards see it: their requests go through one bounded
//! queue (full: the shard answers `Busy` itself), and this plays src/service's part for push
//! registrations and wakes. Registrations are durable (the real core journals them) and survive
//! a crash; after a restart the shards learn them only as tags (`PushArmTags`), as from the real
//! core, until a wake opens one. Checked: a wake comes only for a dest with a live registration,
//! at most once per `WAKE_OFFER_INTERVAL_MS` per dest while the node runs.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::service::{ServiceReply, ServiceRequest, ServiceSink, ServiceWork, push_dest_tag};
use crate::shard::WAKE_OFFER_INTERVAL_MS;

use super::*;

/// Requests one simulated service core holds at once (the node's `service_queue_msgs_max` is
/// larger; small here so that `Busy` comes).
const SERVICE_QUEUE_MAX: usize = 8;

/// The shards' way in: a bounded queue. Each request is numbered as it is offered, so the core
/// can tell whether a shard asked before or after it was told something.
#[derive(Debug, Default)]
pub(super) struct Queue(Mutex<(VecDeque<(u64, ServiceRequest)>, u64)>);

impl ServiceSink for Queue {
    fn offer(&self, req: ServiceRequest) -> Result<(), ServiceRequest> {
        let mut q = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.0.len() >= SERVICE_QUEUE_MAX {
            return Err(req);
        }
        let seq = q.1;
        q.1 += 1;
        q.0.push_back((seq, req));
        Ok(())
    }
}

impl Queue {
    pub(super) fn pop(&self) -> Option<(u64, ServiceRequest)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .pop_front()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .is_empty()
    }

    /// The number the next request offered will get.
    fn next_seq(&self) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
    }
}

/// What the simulated service core knows.
#[derive(Debug)]
pub(super) struct Service {
    pub(super) queue: Arc<Queue>,
    /// Registrations: (dest, device token) → until (Unix s).
    registrations: HashMap<(Dest, Bytes), u64>,
    /// Registrations the shards know only by tag since the last restart.
    sealed: HashMap<(Dest, Bytes), u64>,
    /// When each dest was last woken (monotonic ms), since the node last started.
    last_wake_ms: HashMap<Dest, u64>,
    /// Per dest, the first request number offered after the shards were last told it has no
    /// live registration (`PushArm` until 0, `PushUnarmTag`): a wake asked before that is a
    /// race the core drops, one asked after it is a shard's bug.
    disarmed_from_seq: HashMap<Dest, u64>,
    pub(super) wakes: u64,
    /// The prekey directory (the node's own) and its journal.
    pub(super) prekeys: super::prekeys::Prekeys,
}

impl Service {
    pub(super) fn new(prekey_compact_every: u32) -> Service {
        Service {
            queue: Arc::default(),
            registrations: HashMap::new(),
            sealed: HashMap::new(),
            last_wake_ms: HashMap::new(),
            disarmed_from_seq: HashMap::new(),
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

    /// Until when some device's registration for `dest` lasts (Unix s); 0: none live.
    fn armed_until(&self, dest: &Dest, now_unix_s: u64) -> u64 {
        self.registrations
            .iter()
            .filter(|((d, _), until)| d == dest && **until > now_unix_s)
            .map(|(_, until)| *until)
            .max()
            .unwrap_or(0)
    }
}

impl Sim {
    /// Handles the oldest queued service request.
    pub(super) fn serve_one(&mut self) -> Result<(), String> {
        let Some((seq, req)) = self.service.queue.pop() else {
            return Ok(());
        };
        let now = self.now;
        let shards = self.cfg.shards;
        let owner = move |d: &Dest| d.owner(shards);
        match req.work {
            ServiceWork::PushRegister {
                ttl_s,
                dests,
                token,
                ..
            } => {
                let until = now.unix_s + u64::from(ttl_s);
                for d in &dests {
                    if self.service.armed_until(d, now.unix_s) == 0 {
                        // A new arming: its wakes are counted afresh.
                        self.service.last_wake_ms.remove(d);
                    }
                    let key = (*d, token.clone());
                    if ttl_s == 0 {
                        self.service.registrations.remove(&key);
                    } else {
                        self.service.registrations.insert(key.clone(), until);
                    }
                    // This device's sealed copy is superseded; once none is left under the
                    // dest's tag, no shard needs the tag.
                    if self.service.sealed.remove(&key).is_some()
                        && !self.service.sealed.keys().any(|(sd, _)| sd == d)
                    {
                        let tag = push_dest_tag(d);
                        self.trace(|| {
                            format!("service: no sealed registration left for {d:?}: unarm its tag")
                        });
                        self.service.note_disarmed(*d);
                        for s in 0..self.cfg.shards {
                            self.node.shards[s].on_service(now, ServiceReply::PushUnarmTag { tag });
                            self.pump(s);
                        }
                    }
                    let until_unix_s = self.service.armed_until(d, now.unix_s);
                    self.trace(|| {
                        format!(
                            "service: registration of {:?} for {d:?}, ttl {ttl_s} s: armed until {until_unix_s}",
                            String::from_utf8_lossy(&token)
                        )
                    });
                    if until_unix_s == 0 {
                        self.service.note_disarmed(*d);
                    }
                    let arm = ServiceReply::PushArm {
                        dest: *d,
                        until_unix_s,
                    };
                    let o = owner(d);
                    self.node.shards[o].on_service(now, arm);
                    self.pump(o);
                }
                let frame = Frame::PushResult {
                    status: ferry_proto::frame::PushStatus::Ok,
                    dests_registered: u16::try_from(dests.len()).unwrap_or(u16::MAX),
                };
                self.answer(req.from, frame);
            }
            ServiceWork::Wake { dest } => {
                self.service.wakes += 1;
                self.trace(|| format!("service: wake for {dest:?} from shard {}", req.from.shard));
                if self.service.armed_until(&dest, now.unix_s) == 0 {
                    let told = self.service.disarmed_from_seq.get(&dest).copied();
                    // A registration that ran out while the request waited in the queue.
                    let just_expired = self.service.registrations.iter().any(|((d, _), until)| {
                        *d == dest && *until <= now.unix_s && *until + 60 > now.unix_s
                    });
                    if just_expired || told.is_some_and(|from| seq < from) {
                        // Asked while the owner still had it armed: the core finds no live
                        // registration and sends nothing (as src/service's registry does).
                        self.trace(|| {
                            format!("service: wake for {dest:?} raced its removal: none sent")
                        });
                        return Ok(());
                    }
                    return Err(format!(
                        "a wake for {dest:?}, which has no live registration (asked after the shards were told)"
                    ));
                }
                if let Some(last) = self.service.last_wake_ms.insert(dest, now.mono_ms) {
                    if now.mono_ms < last + WAKE_OFFER_INTERVAL_MS {
                        return Err(format!(
                            "two wakes for {dest:?} {} ms apart (at most one per {WAKE_OFFER_INTERVAL_MS} ms)",
                            now.mono_ms - last
                        ));
                    }
                }
                let before = self.service.sealed.len();
                self.service.sealed.retain(|(d, _), _| *d != dest);
                if self.service.sealed.len() < before {
                    // Opened by its first wake since the restart: the owner arms the dest itself,
                    // and no shard needs the tag any more.
                    let o = owner(&dest);
                    let arm = ServiceReply::PushArm {
                        dest,
                        until_unix_s: self.service.armed_until(&dest, now.unix_s),
                    };
                    self.node.shards[o].on_service(now, arm);
                    self.pump(o);
                    for s in 0..self.cfg.shards {
                        let tag = push_dest_tag(&dest);
                        self.node.shards[s].on_service(now, ServiceReply::PushUnarmTag { tag });
                        self.pump(s);
                    }
                }
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

    /// Sends `frame` to the connection a request came from, through its shard.
    fn answer(&mut self, to: crate::table::ConnRef, frame: Frame) {
        let s = usize::from(to.shard);
        let reply = ServiceReply::Frame { to: to.conn, frame };
        self.node.shards[s].on_service(self.now, reply);
        self.pump(s);
    }

    /// After a restart: what was queued died with the process; the registrations are on disk,
    /// and the shards learn them as tags only.
    pub(super) fn restart_service(&mut self) -> Result<(), String> {
        self.trace(|| {
            format!(
                "service: restart; sealed registrations {:?}",
                self.service.registrations
            )
        });
        while self.service.queue.pop().is_some() {}
        self.service.disarmed_from_seq.clear();
        self.service.prekeys.restart()?;
        self.service.last_wake_ms.clear();
        let now = self.now.unix_s;
        self.service.registrations.retain(|_, until| *until > now);
        self.service.sealed = self.service.registrations.clone();
        let mut tags: AHashMap<[u8; 16], u64> = AHashMap::new();
        for ((d, _), until) in &self.service.sealed {
            let t = tags.entry(push_dest_tag(d)).or_default();
            *t = (*t).max(*until);
        }
        let tags = Arc::new(tags);
        for s in 0..self.cfg.shards {
            let reply = ServiceReply::PushArmTags { tags: tags.clone() };
            self.node.shards[s].on_service(self.now, reply);
        }
        Ok(())
    }
}
