//! Receiving: opening what arrives, first contacts, the inbox and kept attachments.

use super::*;

impl<S: Storage> Messenger<S> {
    /// Opens a packet that arrived (live or drained) at `dest`, one of the dests of the listen
    /// or drain plan. `Ok(None)`: a duplicate, already received. An error means it did not
    /// authenticate, is not for this user, is a replayed first contact, is refused by policy
    /// ([`MessengerError::Refused`]: on a contact's pairwise mailbox from someone else, or from
    /// a refused identity), or could not be stored; nothing changed. A stranger's first contact
    /// (on the intro mailbox: a pairwise one takes only its contact) becomes a request
    /// ([`Messenger::requests`]).
    ///
    /// What opened is stored in the inbox (`inbox()`, removed with `done`) before the session
    /// moves on, so a crash at any point neither loses it nor shows it twice.
    pub fn receive(
        &mut self,
        dest: &Dest,
        payload: &[u8],
    ) -> Result<Option<Incoming>, MessengerError> {
        let which = self.which_of(dest).ok_or(MessengerError::Refused(
            "a packet for a dest this messenger neither listens on nor drains",
        ))?;
        let inner = envelope::open_with(&self.identity, payload).map_err(SessionError::from)?;
        let inbox_key = format!("inbox/{}", hex(&inner.msg_id));
        if self.seen_set.contains(&inner.msg_id) || st(self.storage.get(&inbox_key))?.is_some() {
            return Ok(None);
        }
        let sender = inner.sender;
        if self.refused.contains(&sender) {
            return Err(MessengerError::Refused(
                "a packet from an identity whose request was refused",
            ));
        }
        if matches!(which, Which::Pair(p) if p != sender) {
            return Err(MessengerError::Refused(
                "a packet on a contact's pairwise mailbox from someone else",
            ));
        }
        let list = self.sessions.get(&sender).cloned().unwrap_or_default();
        let mut rng = rand_core::OsRng;
        // (index of the session that opened it, or None for a new one; the session after it;
        // what opened; the prekeys after an accept)
        let (index, session, received, prekeys) = match inner.kind {
            envelope::Kind::Prekey => {
                if let Some(i) = list.iter().position(|s| !s.is_new_contact(&inner)) {
                    let mut s = list[i].clone();
                    let r = s.receive(&mut rng, &inner)?;
                    (Some(i), s, r, None)
                } else {
                    let init = session::prekey_init_id(&inner)
                        .ok_or(MessengerError::Malformed("prekey message"))?;
                    if self.inits_set.contains(&init) {
                        return Err(MessengerError::Replay);
                    }
                    let mut pk = self.prekeys.clone();
                    let (s, r) = Session::accept(&mut rng, &self.identity, &mut pk, &inner)?;
                    (None, s, r, Some((pk, init)))
                }
            }
            envelope::Kind::Message => {
                let mut found = None;
                let mut last_err = SessionError::Malformed;
                for (i, s) in list.iter().enumerate() {
                    let mut c = s.clone();
                    match c.receive(&mut rng, &inner) {
                        Ok(r) => {
                            found = Some((Some(i), c, r, None));
                            break;
                        }
                        Err(e) => last_err = e,
                    }
                }
                match found {
                    Some(f) => f,
                    None if list.is_empty() => return Err(MessengerError::NoSession),
                    None => return Err(MessengerError::Session(last_err)),
                }
            }
        };
        let Received {
            sender,
            msg_id,
            plaintext,
            ..
        } = received;
        let (mailbox, secret, body) = parse_payload(&Zeroizing::new(plaintext))?;
        // A contact, a request already waiting, or a stranger's first contact: a new request.
        let (known, request) = match (self.peers.get(&sender), self.requests.get(&sender)) {
            (Some(p), _) => (Some(p), false),
            (None, Some(p)) => (Some(p), true),
            (None, None) if self.requests.len() >= REQUESTS_MAX => {
                return Err(MessengerError::Refused(
                    "REQUESTS_MAX requests wait already: accept or refuse some",
                ));
            }
            (None, None) => (None, true),
        };
        let peer = match known {
            Some(p) => Peer {
                mailbox,
                s_mbox: secret,
                ..p.clone()
            },
            None => Peer {
                name: hex(&sender[1..9]),
                identity: sender,
                mailbox,
                s_mbox: secret,
            },
        };
        let changed = known != Some(&peer);
        let incoming = Incoming {
            from: sender,
            from_name: peer.name.clone(),
            msg_id,
            body,
            request,
        };
        // Commit, inbox first.
        st(self.storage.put(&inbox_key, &encode_incoming(&incoming)))?;
        let mut list = list;
        if let Some(i) = index {
            list.remove(i);
        }
        // The session that opened it becomes the one to send with.
        list.insert(0, session);
        list.truncate(SESSIONS_PER_CONTACT_MAX);
        self.sessions.insert(sender, list);
        self.save_sessions(&sender)?;
        if let Some((pk, init)) = prekeys {
            self.prekeys = pk;
            self.save_prekeys()?;
            self.remember_init(init);
            let inits: Vec<u8> = self.inits.iter().flatten().copied().collect();
            st(self.storage.put("inits", &inits))?;
        }
        if changed {
            if request {
                st(self
                    .storage
                    .put(&format!("request/{}", hex(&sender)), &peer.encode()))?;
                self.requests.insert(sender, peer);
            } else {
                self.save_peer(&peer)?;
                self.peers.insert(sender, peer);
            }
        }
        self.remember(msg_id);
        let seen: Vec<u8> = self.seen.iter().flatten().copied().collect();
        st(self.storage.put("seen", &seen))?;
        Ok(Some(incoming))
    }

    /// Messages received and not yet marked `done`, oldest key first.
    pub fn inbox(&self) -> Result<Vec<Incoming>, MessengerError> {
        let mut out = Vec::new();
        for key in st(self.storage.keys("inbox/"))? {
            if let Some(b) = st(self.storage.get(&key))? {
                let mut m = decode_incoming(&b).ok_or(MessengerError::Malformed("inbox record"))?;
                m.request = self.requests.contains_key(&m.from) || self.refused.contains(&m.from);
                out.push(m);
            }
        }
        Ok(out)
    }

    /// The application has the message: remove it from the inbox. An attachment's reference
    /// (blob id, key, sizes, name, sender) is kept first ([`Messenger::attachments`]), so that a
    /// file shown as received can still be fetched, also after a restart, until
    /// [`Messenger::forget_attachment`] (`chat::fetch_attachment` fetches and forgets).
    pub fn done(&mut self, msg_id: &[u8; 16]) -> Result<(), MessengerError> {
        let key = format!("inbox/{}", hex(msg_id));
        if let Some(b) = st(self.storage.get(&key))? {
            let msg = decode_incoming(&b).ok_or(MessengerError::Malformed("inbox record"))?;
            if matches!(msg.body, Body::Attachment { .. }) {
                st(self.storage.put(&format!("attachment/{}", hex(msg_id)), &b))?;
            }
        }
        st(self.storage.delete(&key))
    }

    /// Attachments received (and marked `done`) whose files were not fetched yet, by message
    /// id. They stay until [`Messenger::forget_attachment`].
    pub fn attachments(&self) -> Result<Vec<Incoming>, MessengerError> {
        let mut out = Vec::new();
        for key in st(self.storage.keys("attachment/"))? {
            if let Some(b) = st(self.storage.get(&key))? {
                out.push(
                    decode_incoming(&b).ok_or(MessengerError::Malformed("attachment record"))?,
                );
            }
        }
        Ok(out)
    }

    /// The kept attachment of message `msg_id`, if there is one.
    pub fn attachment(&self, msg_id: &[u8; 16]) -> Result<Option<Incoming>, MessengerError> {
        match st(self.storage.get(&format!("attachment/{}", hex(msg_id))))? {
            None => Ok(None),
            Some(b) => decode_incoming(&b)
                .map(Some)
                .ok_or(MessengerError::Malformed("attachment record")),
        }
    }

    /// Forgets a kept attachment (its file fetched, or not wanted).
    pub fn forget_attachment(&mut self, msg_id: &[u8; 16]) -> Result<(), MessengerError> {
        st(self.storage.delete(&format!("attachment/{}", hex(msg_id))))
    }

    // ---- what a connection proves, listens on and drains --------------------------------------
}
