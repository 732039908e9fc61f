//! Sending: sessions with contacts, the outbox with its retries and expiry, the dest each
//! retry goes to.

use super::*;

impl<S: Storage> Messenger<S> {
    /// Starts a session with a contact from its fetched bundle (`Client::fetch_prekeys`, which
    /// already checked the signatures). The bundle must carry the identity in the contact's
    /// address.
    pub fn start_session(
        &mut self,
        identity: &[u8; EC_KEY_BYTES],
        bundle: &Bundle,
    ) -> Result<(), MessengerError> {
        if !self.peers.contains_key(identity) {
            return Err(MessengerError::UnknownContact);
        }
        if &bundle.identity != identity {
            return Err(MessengerError::IdentityMismatch);
        }
        let b = CryptoBundle {
            identity: bundle.identity,
            spk_id: bundle.spk.id,
            spk: bundle.spk.key,
            spk_sig: bundle.spk.sig,
            pq_id: bundle.pq.id,
            pq: &bundle.pq.key,
            pq_sig: bundle.pq.sig,
            opk: bundle.ec.as_ref().map(|k| (k.id, k.key)),
        };
        let s = Session::initiate(&mut rand_core::OsRng, &self.identity, &b)?;
        let list = self.sessions.entry(*identity).or_default();
        list.insert(0, s);
        list.truncate(SESSIONS_PER_CONTACT_MAX);
        self.save_sessions(identity)
    }

    /// The dest to reach `peer` at in the hour `epoch`: the pairwise mailbox it keeps for this
    /// user (that day's dest) once its secret is known, else its intro mailbox.
    pub(super) fn dest_of(&self, peer: &Peer, epoch: u64) -> Result<Dest, MessengerError> {
        Ok(match peer.s_mbox {
            Some(s) => Contact::new(&peer.mailbox, self.ns, Some(s))?
                .dest(pair_epoch(epoch / HOURS_PER_DAY))?,
            None => Contact::new(&peer.mailbox, self.ns, None)?.dest(epoch)?,
        })
    }

    /// The capability token of a send to `peer` at `dest` in `epoch`: only for its contact
    /// mailbox's dest of that epoch (a token at any other dest would tie it to the contact
    /// mailbox whose verifier it hashes to). A retry's dest may be the intro dest of a message
    /// sent before `s_mbox` was known, hence the check.
    pub(super) fn capability_of(
        &self,
        peer: &Peer,
        dest: Dest,
        epoch: u64,
    ) -> Result<Option<[u8; 32]>, MessengerError> {
        let Some(s) = peer.s_mbox else {
            return Ok(None);
        };
        let pe = pair_epoch(epoch / HOURS_PER_DAY);
        if Contact::new(&peer.mailbox, self.ns, Some(s))?.dest(pe)? != dest {
            return Ok(None);
        }
        Ok(Some(capability_token(&s, pe)))
    }

    /// Encrypts `body` for a contact, puts it in the outbox and returns the packet to send now
    /// (send it with `FLAG_ACK`: without it the node does not answer a successful send to a
    /// contact, `Accepted`, whether delivered live or stored).
    /// `now_unix_s` is the node's time; `now_ms` any monotonic clock (for retries). The session
    /// is stored before the packet is returned, so a message key is never used twice.
    pub fn send(
        &mut self,
        to: &[u8; EC_KEY_BYTES],
        body: &Body,
        now_unix_s: u64,
        now_ms: u64,
    ) -> Result<Transmit, MessengerError> {
        if self.outbox.len() >= OUTBOX_MAX {
            return Err(MessengerError::OutboxFull);
        }
        if self.requests.contains_key(to) {
            return Err(MessengerError::NotAccepted);
        }
        let peer = self
            .peers
            .get(to)
            .ok_or(MessengerError::UnknownContact)?
            .clone();
        let msg_id: [u8; 16] = random()?;
        let mut pt = Zeroizing::new(Vec::with_capacity(66 + 64));
        pt.push(PAYLOAD_VERSION);
        pt.extend_from_slice(&self.intro.public().to_bytes());
        // The pairwise secret of the mailbox this user keeps for `to`: its replies go there.
        pt.extend_from_slice(&pair_secret(&self.s_mbox, to));
        body.encode(&mut pt);
        let me = session::identity_public(&self.identity);
        let session = self
            .sessions
            .get_mut(to)
            .and_then(|l| l.first_mut())
            .ok_or(MessengerError::NoSession)?;
        let envelope = session.seal(&mut rand_core::OsRng, &me, msg_id, &pt)?;
        self.save_sessions(to)?;
        let id = node_msg_id(&msg_id);
        let epoch = epoch_of(now_unix_s);
        let dest = self.dest_of(&peer, epoch)?;
        st(self.storage.put(
            &format!("outbox/{id:016x}"),
            &encode_outgoing(to, dest, epoch, &envelope),
        ))?;
        let t = Transmit {
            dest,
            epoch,
            msg_id: id,
            payload: envelope.clone(),
            // `dest_of` used the pairwise secret when known: the dest is then that day's.
            capability: peer
                .s_mbox
                .map(|s| capability_token(&s, pair_epoch(epoch / HOURS_PER_DAY))),
        };
        self.outbox.insert(
            id,
            Outgoing {
                to: *to,
                first: Some((dest, epoch)),
                envelope,
                tries: 1,
                next_ms: now_ms.saturating_add(backoff(1)),
            },
        );
        Ok(t)
    }

    /// The node's answer to a send. `Accepted` (what a sender that has not proven the dest
    /// gets: delivered live or stored, the node does not say which), `Delivered` or `Stored`
    /// ends it; anything else is retried later ([`Messenger::due`]) with the same envelope and
    /// id to the same dest (the node stores a message once per id).
    pub fn on_send_result(&mut self, msg_id: u64, status: SendStatus, now_ms: u64) {
        match status {
            SendStatus::Accepted | SendStatus::Delivered | SendStatus::Stored => {
                // A failed delete only means a resend after a restart, which the recipient
                // drops as a duplicate.
                if self.outbox.remove(&msg_id).is_some() {
                    let _ = self.storage.delete(&format!("outbox/{msg_id:016x}"));
                }
            }
            _ => {
                if let Some(o) = self.outbox.get_mut(&msg_id) {
                    o.next_ms = now_ms.saturating_add(backoff(o.tries));
                }
            }
        }
    }

    /// Messages waiting for an acknowledgement.
    pub fn unacknowledged(&self) -> usize {
        self.outbox.len()
    }

    /// What to send again now: every unacknowledged message whose retry time has come, or all
    /// of them with `all` (after a reconnect), each to the dest of its first send (never to a
    /// later hour's dest: the same bytes at two dests would link them). Each is scheduled again
    /// with a growing backoff. A message whose first send's hour has left the recipient's drain
    /// window (`STORE_WINDOW_EPOCHS`) is dropped from the outbox instead and reported by
    /// [`Messenger::expired`]: send it again as a new message if it still matters.
    pub fn due(&mut self, now_unix_s: u64, now_ms: u64, all: bool) -> Vec<Transmit> {
        let epoch = epoch_of(now_unix_s);
        let mut out = Vec::new();
        let ids: Vec<u64> = self
            .outbox
            .iter()
            .filter(|(_, o)| all || o.next_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(o) = self.outbox.get(&id) else {
                continue;
            };
            let to = o.to;
            let (dest, first_epoch) = match o.first {
                Some(first) => first,
                None => {
                    // A record from before the dest was kept: this retry fixes it for good.
                    let Some(peer) = self.peers.get(&o.to) else {
                        continue;
                    };
                    let Ok(dest) = self.dest_of(peer, epoch) else {
                        continue;
                    };
                    let rec = encode_outgoing(&o.to, dest, epoch, &o.envelope);
                    if self
                        .storage
                        .put(&format!("outbox/{id:016x}"), &rec)
                        .is_err()
                    {
                        // Not durable: sending it now could put it at another dest after a
                        // restart. Try again at the next call.
                        continue;
                    }
                    if let Some(o) = self.outbox.get_mut(&id) {
                        o.first = Some((dest, epoch));
                    }
                    (dest, epoch)
                }
            };
            if epoch > first_epoch.saturating_add(STORE_WINDOW_EPOCHS) {
                self.outbox.remove(&id);
                let _ = self.storage.delete(&format!("outbox/{id:016x}"));
                if self.expired.len() < OUTBOX_MAX {
                    self.expired.push(id);
                }
                continue;
            }
            let capability = match self.peers.get(&to) {
                Some(peer) => self.capability_of(peer, dest, first_epoch).ok().flatten(),
                None => None,
            };
            out.push(Transmit {
                dest,
                epoch: first_epoch,
                msg_id: id,
                payload: self
                    .outbox
                    .get(&id)
                    .map(|o| o.envelope.clone())
                    .unwrap_or_default(),
                capability,
            });
            if let Some(o) = self.outbox.get_mut(&id) {
                o.tries = o.tries.saturating_add(1);
                o.next_ms = now_ms.saturating_add(backoff(o.tries));
            }
        }
        // Sends of one hour together: a sender opens one connection per hour it sends to.
        out.sort_by_key(|t| t.epoch);
        out
    }

    /// Node ids of messages dropped unsent since the last call: no node acknowledged them while
    /// the recipient could still drain their dest (`STORE_WINDOW_EPOCHS` hours).
    pub fn expired(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.expired)
    }

    /// Which of this user's mailboxes `dest` is, as the listen and drain plans know it (also
    /// the listen plan before the last change, for packets in flight when it changed).
    pub(super) fn which_of(&self, dest: &Dest) -> Option<Which> {
        self.candidates
            .get(dest)
            .or_else(|| self.listening.get(dest))
            .or_else(|| self.listened.get(dest))
            .map(|(w, _)| *w)
    }
}
