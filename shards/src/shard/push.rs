//! Push wakes: the dests with registrations (armed by the service core) and the wake offered
//! when a blob is stored for one of them while nobody listens; the hand-off to the service core.

use super::*;

/// The dest tags of sealed push registrations → until when (Unix s), shared by every shard
/// (`ServiceReply::PushArmTags`).
pub(super) type PushTags = std::sync::Arc<AHashMap<[u8; 16], u64>>;

/// An owned dest with push registrations.
#[derive(Debug, Default)]
pub(super) struct Armed {
    /// Until when its registrations last (Unix s).
    pub(super) until_unix_s: u64,
    /// When a wake was last offered for it (monotonic ms; 0: never).
    pub(super) last_offer_ms: u64,
}

impl<B: Backend> Shard<B> {
    /// Connects this shard to the service core.
    pub fn with_service(mut self, sink: Arc<dyn crate::service::ServiceSink>) -> Self {
        self.service = Some(sink);
        self
    }

    /// Hands work to the service core without ever waiting: a full queue answers the client
    /// `Busy` (a wake is dropped) and counts.
    pub(super) fn hand_to_service(&mut self, from: ConnRef, work: crate::service::ServiceWork) {
        let req = crate::service::ServiceRequest { from, work };
        let refused = match self.service.as_ref() {
            None => req.refusal(false),
            Some(sink) => match sink.offer(req) {
                Ok(()) => {
                    ShardMetrics::inc(&self.metrics.service_requests);
                    return;
                }
                Err(req) => {
                    ShardMetrics::inc(&self.metrics.service_queue_full);
                    req.refusal(true)
                }
            },
        };
        if let Some(frame) = refused {
            self.answer(from.conn, &frame);
        }
    }

    /// An answer from the service core.
    pub fn on_service(&mut self, now: Now, reply: crate::service::ServiceReply) {
        self.now = now;
        match reply {
            crate::service::ServiceReply::Frame { to, frame } => self.answer(to, &frame),
            crate::service::ServiceReply::PushArm { dest, until_unix_s } => {
                debug_assert_eq!(self.owner(&dest), self.cfg.shard);
                if until_unix_s > now.unix_s {
                    self.push_armed.entry(dest).or_default().until_unix_s = until_unix_s;
                } else {
                    self.push_armed.remove(&dest);
                }
                self.store_push_armed_gauge();
            }
            crate::service::ServiceReply::PushArmTags { tags } => {
                self.push_armed_tags = (!tags.is_empty()).then(|| (tags, AHashSet::new()));
                self.store_push_armed_gauge();
            }
            crate::service::ServiceReply::PushUnarmTag { tag } => self.unarm_tag(tag),
        }
        self.enforce_memory();
    }

    /// `ferry_push_armed_dests` (the armed dests this shard owns) and `ferry_push_armed_tags`.
    pub(super) fn store_push_armed_gauge(&self) {
        self.metrics.push_armed.store(
            self.push_armed.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let tags = self
            .push_armed_tags
            .as_ref()
            .map_or(0, |(tags, done)| tags.len().saturating_sub(done.len()));
        self.metrics
            .push_armed_tags
            .store(tags as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// `tag` needs no lookup any more; the shared map and the done set go once all are done.
    pub(super) fn unarm_tag(&mut self, tag: [u8; 16]) {
        if let Some((tags, done)) = &mut self.push_armed_tags {
            if tags.contains_key(&tag) {
                done.insert(tag);
            }
            if done.len() >= tags.len() {
                self.push_armed_tags = None;
            }
        }
        self.store_push_armed_gauge();
    }

    /// A blob was just stored for `dest` while nobody listens: ask for a push wake if the dest
    /// has registrations. The service core coalesces per device.
    pub(super) fn maybe_wake(&mut self, now: Now, dest: Dest) {
        if !self.push_armed.contains_key(&dest) {
            if let Some((tags, done)) = &self.push_armed_tags {
                // A registration the restarted service core knows only by its tag: the dest
                // joins `push_armed`, and the service opens the registration with the dest.
                let tag = crate::service::push_dest_tag(&dest);
                if let Some(&until) = tags.get(&tag).filter(|_| !done.contains(&tag)) {
                    self.push_armed.insert(
                        dest,
                        Armed {
                            until_unix_s: until,
                            last_offer_ms: 0,
                        },
                    );
                    self.store_push_armed_gauge();
                    self.unarm_tag(tag);
                }
            }
        }
        match self.push_armed.get_mut(&dest) {
            None => return,
            Some(a) if a.until_unix_s <= now.unix_s => {
                self.push_armed.remove(&dest);
                self.store_push_armed_gauge();
                return;
            }
            Some(a)
                if a.last_offer_ms != 0
                    && now.mono_ms < a.last_offer_ms + WAKE_OFFER_INTERVAL_MS
                    && !crate::mutants::active(crate::mutants::Mutant::WakeEveryBlob) =>
            {
                return;
            }
            Some(a) => a.last_offer_ms = now.mono_ms.max(1),
        }
        let from = ConnRef {
            shard: self.cfg.shard,
            conn: ConnId::NONE,
        };
        self.hand_to_service(from, crate::service::ServiceWork::Wake { dest });
    }
}
