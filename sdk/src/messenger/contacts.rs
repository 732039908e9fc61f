//! Contacts and first-contact requests: adding, accepting and refusing them, and what is kept
//! of each.

use super::*;

impl<S: Storage> Messenger<S> {
    /// Adds (or renames) a contact. A name another contact has, or one over
    /// `CONTACT_NAME_BYTES_MAX` bytes, is refused.
    pub fn add_contact(&mut self, name: &str, address: &Address) -> Result<(), MessengerError> {
        if name.len() > CONTACT_NAME_BYTES_MAX {
            return Err(MessengerError::InvalidArgument(
                "contact names are at most CONTACT_NAME_BYTES_MAX (1024) bytes",
            ));
        }
        if self
            .peers
            .values()
            .any(|p| p.name == name && p.identity != address.identity)
        {
            return Err(MessengerError::InvalidArgument(
                "another contact has this name",
            ));
        }
        if self.peers.len() >= CONTACTS_MAX && !self.peers.contains_key(&address.identity) {
            return Err(MessengerError::InvalidArgument(
                "at most CONTACTS_MAX (36) contacts: each has a mailbox of its own, which a sync proves",
            ));
        }
        let peer = match self
            .peers
            .get(&address.identity)
            .or_else(|| self.requests.get(&address.identity))
        {
            Some(p) => Peer {
                name: name.to_string(),
                mailbox: address.mailbox,
                ..p.clone()
            },
            None => Peer {
                name: name.to_string(),
                identity: address.identity,
                mailbox: address.mailbox,
                s_mbox: None,
            },
        };
        self.save_peer(&peer)?;
        self.peers.insert(address.identity, peer);
        self.contacts_changed = true;
        // Adding someone whose first contact waits as a request accepts it.
        if self.requests.remove(&address.identity).is_some() {
            st(self
                .storage
                .delete(&format!("request/{}", hex(&address.identity))))?;
        }
        self.unrefuse(&address.identity)?;
        Ok(())
    }

    /// Strangers whose first contact arrived on the intro mailbox and waits for the app: accept
    /// ([`Messenger::accept_request`]) or refuse ([`Messenger::refuse_request`]). Their messages
    /// are in the inbox marked [`Incoming::request`]; nothing is sent back until accepted.
    pub fn requests(&self) -> impl Iterator<Item = &Peer> {
        self.requests.values()
    }

    /// Makes a request a contact named `name`: it gets a pairwise mailbox, listened on from the
    /// next listen plan, and the app may write back.
    pub fn accept_request(
        &mut self,
        identity: &[u8; EC_KEY_BYTES],
        name: &str,
    ) -> Result<(), MessengerError> {
        let p = self
            .requests
            .get(identity)
            .ok_or(MessengerError::UnknownContact)?;
        let address = Address {
            mailbox: p.mailbox,
            identity: *identity,
        };
        self.add_contact(name, &address)
    }

    /// Refuses a request: its sessions and record are deleted, and its packets are dropped from
    /// now on (the last `REFUSED_MAX` refused identities are remembered). Its messages already in
    /// the inbox stay until `done`.
    pub fn refuse_request(&mut self, identity: &[u8; EC_KEY_BYTES]) -> Result<(), MessengerError> {
        if self.requests.remove(identity).is_none() {
            return Err(MessengerError::UnknownContact);
        }
        self.contacts_changed = true;
        if !self.refused.contains(identity) {
            self.refused.push_back(*identity);
            while self.refused.len() > REFUSED_MAX {
                self.refused.pop_front();
            }
            self.save_refused()?;
        }
        st(self.storage.delete(&format!("request/{}", hex(identity))))?;
        self.sessions.remove(identity);
        st(self.storage.delete(&format!("session/{}", hex(identity))))
    }

    pub(super) fn unrefuse(&mut self, identity: &[u8; EC_KEY_BYTES]) -> Result<(), MessengerError> {
        if let Some(i) = self.refused.iter().position(|r| r == identity) {
            self.refused.remove(i);
            self.save_refused()?;
        }
        Ok(())
    }

    pub(super) fn save_refused(&mut self) -> Result<(), MessengerError> {
        let b: Vec<u8> = self.refused.iter().flatten().copied().collect();
        st(self.storage.put("refused", &b))
    }

    pub fn contacts(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// The contact named `name`.
    pub fn contact(&self, name: &str) -> Option<&Peer> {
        self.peers.values().find(|p| p.name == name)
    }

    /// Whether a session with `identity` exists.
    pub fn has_session(&self, identity: &[u8; EC_KEY_BYTES]) -> bool {
        self.sessions.get(identity).is_some_and(|l| !l.is_empty())
    }
}
