//! The plans a connection carries out: which dests to listen on and prove, which to drain,
//! which to register for push, and the capability verifiers to register.

use super::*;

impl<S: Storage> Messenger<S> {
    pub(super) fn signer(&self, which: Which, epoch: u64) -> Result<BlindedSigner, MessengerError> {
        Ok(match which {
            Which::Intro => self.intro.signer(epoch)?,
            Which::Pair(p) => self.pair_mailbox(&p).signer(epoch)?,
            Which::Shared => self.shared_mailbox().signer(epoch)?,
        })
    }

    /// The shared contact mailbox of a messenger from before pairwise mailboxes.
    pub(super) fn shared_mailbox(&self) -> Mailbox {
        Mailbox::from_seed(&self.mailbox_seed, self.ns, Some(*self.s_mbox))
    }

    /// Whether the old shared contact mailbox is still drained and listened on now (in the hour
    /// `e`): until the store's window has passed since the update.
    pub(super) fn shared_active(&self, e: u64) -> bool {
        matches!(self.shared_mailbox_since, Some(since) if since == 0
            || e <= since.saturating_add(STORE_WINDOW_EPOCHS + 1))
    }

    /// The pairwise mailbox this user keeps for the contact `peer`.
    pub(super) fn pair_mailbox(&self, peer: &[u8; EC_KEY_BYTES]) -> Mailbox {
        Mailbox::from_seed(
            &self.mailbox_seed,
            self.ns,
            Some(pair_secret(&self.s_mbox, peer)),
        )
    }

    /// (which mailbox, blinding epoch, signer) of every dest to listen on for the hour epochs
    /// `hours`: the intro mailbox's of each hour, and each contact's pairwise mailbox's of each
    /// day they fall in (requests have none: nothing was sent to them).
    pub(super) fn plan_for(
        &self,
        hours: impl IntoIterator<Item = u64>,
        intro: bool,
        shared: bool,
    ) -> Result<Vec<(Which, u64, BlindedSigner)>, MessengerError> {
        let mut out = Vec::new();
        let mut days = BTreeSet::new();
        let shared = shared.then(|| self.shared_mailbox());
        for ep in hours {
            if intro {
                out.push((Which::Intro, ep, self.intro.signer(ep)?));
            }
            if let Some(mb) = &shared {
                out.push((Which::Shared, ep, mb.signer(ep)?));
            }
            days.insert(ep / HOURS_PER_DAY);
        }
        for p in self.peers.keys() {
            let mb = self.pair_mailbox(p);
            for d in &days {
                let pe = pair_epoch(*d);
                out.push((Which::Pair(*p), pe, mb.signer(pe)?));
            }
        }
        Ok(out)
    }

    /// The listen plan with what each dest is.
    pub(super) fn listen_plan_full(
        &self,
        now_unix_s: u64,
    ) -> Result<Vec<(Which, u64, BlindedSigner)>, MessengerError> {
        let e = epoch_of(now_unix_s);
        let mut epochs = vec![e];
        if now_unix_s + ROLLOVER_LEAD_S >= (e + 1) * ferry_proto::limits::EPOCH_SECONDS {
            epochs.push(e + 1);
        }
        self.plan_for(epochs, true, self.shared_active(e))
    }

    /// The signers to prove `Op::Subscribe` with and subscribe to now: the intro mailbox for the
    /// current epoch and each contact's pairwise mailbox for the current day, and the next
    /// hour's (and day's) within `ROLLOVER_LEAD_S` of the hour's end (so live delivery has no gap
    /// when the hour turns). Call again at [`Messenger::next_listen_s`].
    pub fn listen_plan(&self, now_unix_s: u64) -> Result<Vec<BlindedSigner>, MessengerError> {
        Ok(self
            .listen_plan_full(now_unix_s)?
            .into_iter()
            .map(|(_, _, s)| s)
            .collect())
    }

    /// What the current connection must change to follow the listen plan: the signers of dests
    /// to prove and subscribe to, and the dests of past hours to unsubscribe from. Call
    /// [`Messenger::new_connection`] first on a new connection.
    pub fn listen_update(
        &mut self,
        now_unix_s: u64,
    ) -> Result<(Vec<BlindedSigner>, Vec<Dest>), MessengerError> {
        let plan = self.listen_plan_full(now_unix_s)?;
        let want: BTreeMap<Dest, (Which, u64)> =
            plan.iter().map(|(w, e, s)| (s.dest(), (*w, *e))).collect();
        let drop: Vec<Dest> = self
            .listening
            .keys()
            .filter(|d| !want.contains_key(d))
            .copied()
            .collect();
        let add: Vec<BlindedSigner> = plan
            .into_iter()
            .filter(|(_, _, s)| !self.listening.contains_key(&s.dest()))
            .map(|(_, _, s)| s)
            .collect();
        if !drop.is_empty() {
            self.listened = std::mem::take(&mut self.listening);
        }
        self.listening = want;
        self.contacts_changed = false;
        Ok((add, drop))
    }

    /// The capability verifiers to register for the listen plan's pairwise dests among `dests`
    /// (the ones [`Messenger::listen_update`] just added, once proven with `Op::Drain`):
    /// (dest, verifier, seconds to keep it: to the end of its day plus [`CAPABILITY_GRACE_S`]).
    /// A contact's sends to its pairwise dest pass store pressure without a puzzle
    /// ([`Transmit::capability`]).
    pub fn capability_verifiers(
        &self,
        now_unix_s: u64,
        dests: &[Dest],
    ) -> Result<Vec<(Dest, [u8; 32], u32)>, MessengerError> {
        let mut out = Vec::new();
        for d in dests {
            let Some((Which::Pair(p), pe)) = self.listening.get(d) else {
                continue;
            };
            let token = capability_token(&pair_secret(&self.s_mbox, p), *pe);
            let day = pe & !PAIR_EPOCH_FLAG;
            let end = (day + 1) * ferry_proto::addr::DAY_SECONDS + CAPABILITY_GRACE_S;
            let ttl = u32::try_from(end.saturating_sub(now_unix_s)).unwrap_or(u32::MAX);
            out.push((*d, ferry_proto::puzzle::capability_verifier(&token), ttl));
        }
        Ok(out)
    }

    /// Whether the contacts changed since the last [`Messenger::listen_update`] (a contact added
    /// or a request accepted has a pairwise mailbox to listen on now).
    pub fn contacts_changed(&self) -> bool {
        self.contacts_changed
    }

    /// A new connection listens on nothing yet and proved nothing.
    pub fn new_connection(&mut self) {
        self.listened = std::mem::take(&mut self.listening);
        self.drain_proven.clear();
    }

    /// The current connection proved `Op::Drain` for `dests`.
    pub fn drain_proven(&mut self, dests: impl IntoIterator<Item = Dest>) {
        self.drain_proven.extend(dests);
    }

    /// Whether the current connection has yet to prove `Op::Drain` for `dest` (a `Prove` of a
    /// pair the connection already holds costs a proof of the node's budget again).
    pub fn needs_drain_proof(&self, dest: &Dest) -> bool {
        !self.drain_proven.contains(dest)
    }

    /// When the listen plan changes next (node time): `ROLLOVER_LEAD_S` before the hour ends,
    /// or the hour's start once that has passed.
    pub fn next_listen_s(&self, now_unix_s: u64) -> u64 {
        let e = epoch_of(now_unix_s);
        let lead = (e + 1) * ferry_proto::limits::EPOCH_SECONDS - ROLLOVER_LEAD_S;
        if now_unix_s < lead {
            lead
        } else {
            (e + 1) * ferry_proto::limits::EPOCH_SECONDS
        }
    }

    /// Every dest a stored blob for this user may be at: the intro mailbox's of epochs
    /// `[e−73, e+1]` (the store's 72 hours, with a clock-skew margin) and each contact's
    /// pairwise mailbox's of the days those hours fall in (four or five a contact). Prove
    /// `Op::Drain` for all of them ([`Messenger::drain_signers`]), then ask the node which hold
    /// blobs (`Client::query`: the node answers only for dests the connection proved) and
    /// drain those.
    pub fn drain_candidates(&mut self, now_unix_s: u64) -> Result<Vec<Dest>, MessengerError> {
        let e = epoch_of(now_unix_s);
        if self.shared_mailbox_since == Some(0) {
            // The first drain after the update dates it.
            st(self.storage.put("pairwise", &e.to_be_bytes()))?;
            self.shared_mailbox_since = Some(e);
        }
        let plan = self.plan_for(
            e.saturating_sub(STORE_WINDOW_EPOCHS + 1)..=e + 1,
            true,
            self.shared_active(e),
        )?;
        self.candidates = plan
            .into_iter()
            .map(|(w, ep, s)| (s.dest(), (w, ep)))
            .collect();
        Ok(self.candidates.keys().copied().collect())
    }

    /// The signers for `dests` among the last [`Messenger::drain_candidates`] (prove
    /// `Op::Drain` with them, then query and drain).
    pub fn drain_signers(&self, dests: &[Dest]) -> Result<Vec<BlindedSigner>, MessengerError> {
        dests
            .iter()
            .filter_map(|d| self.candidates.get(d))
            .map(|(w, e)| self.signer(*w, *e))
            .collect()
    }

    /// The signers to prove `Op::PushRegister` with so that a token registered for
    /// `hours × 3600` seconds covers this user's dests until it expires: each contact's pairwise
    /// mailbox's of the days epochs `e..=e+hours` fall in, and the intro mailbox's of those
    /// epochs too with `first_contacts` (so that a stranger's first message wakes the device).
    /// `hours` is 1 to `PUSH_HOURS_MAX`.
    ///
    /// What the node learns: every dest registered with one token is linked to the others by it,
    /// hours ahead. By default the intro mailbox stays out of that (its dests are the ones anyone
    /// with the user's address can compute), at the price of no wake for first contacts, which
    /// arrive at the next sync; fewer `hours` link fewer hours (docs/PRIVACY.md).
    pub fn push_plan(
        &self,
        now_unix_s: u64,
        hours: u64,
        first_contacts: bool,
    ) -> Result<Vec<BlindedSigner>, MessengerError> {
        if !(1..=PUSH_HOURS_MAX).contains(&hours) {
            return Err(MessengerError::InvalidArgument(
                "push registrations cover 1 to 48 hours",
            ));
        }
        let e = epoch_of(now_unix_s);
        Ok(self
            .plan_for(e..=e + hours, first_contacts, false)?
            .into_iter()
            .map(|(_, _, s)| s)
            .collect())
    }
}
