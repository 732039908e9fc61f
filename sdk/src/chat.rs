//! Carries out a [`Messenger`]'s plans over blocking [`Client`]s: publish prekeys, start
//! sessions from fetched bundles, send, drain the store's window on (re)connect, listen with the
//! next hour proved before it starts, resend what the node has not acknowledged, and files
//! through media storage (an attachment received stays kept until [`fetch_attachment`]). The
//! `ferry-chat` example is this module plus a command line.
//!
//! Owning apart from sending: the connection that proves this user's dests (listen, drain,
//! prekeys, push) never sends, and a [`Sender`] sends and fetches prekeys on connections that
//! never prove, one per epoch of the dests it sends to (and a fresh one per prekey fetch), so
//! the node cannot read the sender of a message from the dests its connection proved, nor link
//! a recipient's two hours by one connection. What still links them is the network address and
//! timing (docs/PRIVACY.md).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ferry_proto::addr::{BlindedSigner, day_of, epoch_of};
use ferry_proto::conn::ClientEvent;
use ferry_proto::frame::{Dest, Op, PrekeyStatus, ProofStatus, SubscribeStatus};

use crate::messenger::{Body, Incoming, Messenger, MessengerError, Storage, Transmit};
use crate::{Client, ConnectOptions, SdkError};

/// How long a send waits for the node's answers before leaving the rest to retries.
pub const SEND_ANSWER_WAIT_MS: u64 = 2_000;
/// A send connection with nothing to wait for is closed after this long without a send (the
/// next send opens a new one): fewer of a user's sends share a connection.
pub const SEND_LINK_IDLE_MS: u64 = 60_000;

/// Milliseconds on a monotonic clock for the outbox's retry times.
fn now_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).expect("a process lives less than 2^64 ms")
}

/// Proves `signers` for `op` on a fresh challenge; every proof must pass.
fn prove_all(client: &mut Client, signers: &[BlindedSigner], op: Op) -> Result<(), MessengerError> {
    prove_refs(client, &signers.iter().collect::<Vec<_>>(), op)
}

/// [`prove_all`] of borrowed signers.
fn prove_refs(client: &mut Client, refs: &[&BlindedSigner], op: Op) -> Result<(), MessengerError> {
    if refs.is_empty() {
        return Ok(());
    }
    client.refresh_challenge()?;
    let statuses = client.prove(refs, op)?;
    if let Some(bad) = statuses.iter().find(|s| **s != ProofStatus::Ok) {
        return Err(SdkError::Node {
            code: ferry_proto::frame::ErrorCode::Unsupported,
            message: format!("proof refused: {bad:?}"),
        }
        .into());
    }
    Ok(())
}

/// Sends and fetches prekeys on connections that never prove ownership of anything (see the
/// module's doc): one connection per epoch of the dests it sends to, closed when a send needs
/// another epoch or after `SEND_LINK_IDLE_MS` idle, and a fresh one for each prekey fetch.
#[derive(Debug)]
pub struct Sender {
    url: String,
    opts: ConnectOptions,
    /// The open send connection, the epoch of the dests it sends to, and when it last sent.
    link: Option<(Client, u64, Instant)>,
    /// Node ids sent on `link` and not answered yet.
    pending: BTreeSet<u64>,
    connections: u64,
}

impl Sender {
    /// Sends to the node at `url` ([`Client::connect_url`]); connects only when there is
    /// something to send.
    pub fn new(url: &str, opts: ConnectOptions) -> Sender {
        Sender {
            url: url.to_string(),
            opts,
            link: None,
            pending: BTreeSet::new(),
            connections: 0,
        }
    }

    /// Connections opened so far (for measuring what the separation costs).
    pub fn connections_opened(&self) -> u64 {
        self.connections
    }

    fn open(&mut self) -> Result<Client, SdkError> {
        self.connections += 1;
        Client::connect_url(&self.url, &self.opts)
    }

    /// Closes the send connection (what it did not hear back is retried later).
    pub fn close(&mut self) {
        self.link = None;
        self.pending.clear();
    }

    /// The node's time: from the open send connection, or else a new one (kept for the epoch
    /// it reports).
    fn now_unix_s(&mut self) -> Result<u64, SdkError> {
        if let Some((c, _, _)) = &self.link {
            return Ok(c.node_unix_s());
        }
        let c = self.open()?;
        let now = c.node_unix_s();
        self.link = Some((c, epoch_of(now), Instant::now()));
        Ok(now)
    }

    /// The connection that sends to `epoch`'s dests.
    fn link(&mut self, epoch: u64) -> Result<&mut Client, SdkError> {
        if self.link.as_ref().is_some_and(|(_, e, _)| *e != epoch) {
            self.close();
        }
        if self.link.is_none() {
            let c = self.open()?;
            self.link = Some((c, epoch, Instant::now()));
        }
        match &mut self.link {
            Some((c, _, _)) => Ok(c),
            None => Err(SdkError::Closed),
        }
    }

    /// Fetches a contact's prekey bundle on a connection of its own, closed after: from its
    /// slot of the node's day, or, when that one is not there, of the day before
    /// ([`Messenger::contact_prekey_slots`]) on another fresh connection.
    pub fn fetch_prekeys<S: Storage>(
        &mut self,
        m: &Messenger<S>,
        to: &[u8; 33],
    ) -> Result<crate::Bundle, MessengerError> {
        let mut c = self.open()?;
        let mut missing = None;
        for (i, slot) in m
            .contact_prekey_slots(to, c.node_unix_s())?
            .iter()
            .enumerate()
        {
            // Each slot on a connection of its own: one connection asking two days' slots
            // would tell the node they are one user's.
            if i > 0 {
                c = self.open()?;
            }
            match c.fetch_prekeys(slot) {
                Err(
                    e @ SdkError::Prekey {
                        status: PrekeyStatus::NotFound,
                        ..
                    },
                ) => missing = Some(e),
                r => return Ok(r?),
            }
        }
        Err(missing.unwrap_or(SdkError::Closed).into())
    }

    /// Publishes this user's prekey slots from today to `SLOT_DAYS_AHEAD` days ahead that the
    /// node does not hold yet ([`Messenger::prekey_publication`]; days by the node's time, taken
    /// within the skew bound), with `one_time` one-time keys of each kind in each, each slot on
    /// a connection of its own that proves that slot only and is closed after: no connection
    /// links two days' slots, or a slot to this user's hourly dests. Returns the days published.
    pub fn publish_prekeys<S: Storage>(
        &mut self,
        m: &mut Messenger<S>,
        one_time: usize,
    ) -> Result<Vec<u64>, MessengerError> {
        let c = self.open()?;
        let now = c.node_unix_s();
        self.publish_at(m, one_time, now, Some(c))
    }

    fn publish_at<S: Storage>(
        &mut self,
        m: &mut Messenger<S>,
        one_time: usize,
        now_unix_s: u64,
        mut first: Option<Client>,
    ) -> Result<Vec<u64>, MessengerError> {
        let mut days = Vec::new();
        for slot in m.prekey_publication(now_unix_s, one_time)? {
            let mut c = match first.take() {
                Some(c) => c,
                None => self.open()?,
            };
            prove_all(&mut c, std::slice::from_ref(&slot.signer), Op::PrekeyUpdate)?;
            c.upload_prekeys(&slot.uploads)?;
            m.slot_published(slot.day)?;
            days.push(slot.day);
        }
        Ok(days)
    }

    /// Publishes the slots that are missing (`PREKEYS_PER_SLOT` one-time keys each), then tops
    /// today's slot up when its one-time keys run low (`Messenger::refill`), each on a
    /// connection of its own. Today's slot missing on the node (it lost it, or this is another
    /// node) is published again. Run it at every (re)connect.
    pub fn refill_prekeys<S: Storage>(
        &mut self,
        m: &mut Messenger<S>,
    ) -> Result<(), MessengerError> {
        let mut c = self.open()?;
        let now = c.node_unix_s();
        self.publish_at(m, crate::messenger::PREKEYS_PER_SLOT, now, None)?;
        let day = day_of(now);
        let slot = m.prekey_slot(day)?;
        prove_all(&mut c, std::slice::from_ref(&slot), Op::PrekeyUpdate)?;
        let (ec, pq) = match c.prekey_count(slot.dest()) {
            Err(SdkError::Prekey {
                status: PrekeyStatus::NotFound,
                ..
            }) => {
                // The connection proved today's slot: publish it on this one, as a new slot.
                m.slot_lost(day)?;
                self.publish_at(m, crate::messenger::PREKEYS_PER_SLOT, now, Some(c))?;
                return Ok(());
            }
            r => r?,
        };
        let uploads = m.refill(day, ec, pq, now)?;
        if !uploads.is_empty() {
            c.upload_prekeys(&uploads)?;
        }
        Ok(())
    }

    /// Sends `body` to a contact, starting the session from its prekey bundle if there is
    /// none, and waits up to `SEND_ANSWER_WAIT_MS` for the node's answer (what is not answered
    /// is sent again by [`Sender::poll`]). Returns the node-visible message id.
    pub fn send<S: Storage>(
        &mut self,
        m: &mut Messenger<S>,
        to: &[u8; 33],
        body: &Body,
        clock: Instant,
    ) -> Result<u64, MessengerError> {
        if !m.has_session(to) {
            let bundle = self.fetch_prekeys(m, to)?;
            m.start_session(to, &bundle)?;
        }
        let now = self.now_unix_s()?;
        let t = m.send(to, body, now, now_ms(clock))?;
        self.transmit(m, std::slice::from_ref(&t), clock)?;
        Ok(t.msg_id)
    }

    /// Sends each packet with `FLAG_ACK` (so that a successful send is answered, `Accepted` to a
    /// connection that never proved: the node does not say whether the recipient is online; the
    /// answer ends the retries) on the connection for its epoch, and waits up to `SEND_ANSWER_WAIT_MS`
    /// for the answers of each epoch's packets before moving to the next epoch's connection.
    pub fn transmit<S: Storage>(
        &mut self,
        m: &mut Messenger<S>,
        ts: &[Transmit],
        clock: Instant,
    ) -> Result<(), MessengerError> {
        let mut i = 0;
        while i < ts.len() {
            let epoch = ts[i].epoch;
            if self.link.as_ref().is_some_and(|(_, e, _)| *e != epoch) {
                // Hear what the previous epoch's connection has to say before closing it.
                self.answers(m, Duration::from_millis(SEND_ANSWER_WAIT_MS), clock)?;
            }
            let c = self.link(epoch)?;
            let start = i;
            while i < ts.len() && ts[i].epoch == epoch {
                let t = &ts[i];
                match t.capability {
                    Some(token) => c.send_with_capability(
                        t.dest,
                        t.msg_id,
                        crate::FLAG_ACK,
                        0,
                        token,
                        &t.payload,
                    ),
                    None => c.send(t.dest, t.msg_id, crate::FLAG_ACK, &t.payload),
                }
                i += 1;
            }
            if let Err(e) = c.flush() {
                self.close();
                return Err(e.into());
            }
            if let Some((_, _, last)) = &mut self.link {
                *last = Instant::now();
            }
            self.pending.extend(ts[start..i].iter().map(|t| t.msg_id));
        }
        self.answers(m, Duration::from_millis(SEND_ANSWER_WAIT_MS), clock)
    }

    /// Reads the send connection's answers until none is pending or `wait` has passed, and
    /// hands them to the messenger. A closed connection is dropped (its sends are retried).
    fn answers<S: Storage>(
        &mut self,
        m: &mut Messenger<S>,
        wait: Duration,
        clock: Instant,
    ) -> Result<(), MessengerError> {
        let deadline = Instant::now() + wait;
        while !self.pending.is_empty() {
            let Some((c, _, _)) = &mut self.link else {
                self.pending.clear();
                return Ok(());
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            match c.recv(left) {
                Ok(ClientEvent::SendResult { msg_id, status, .. }) => {
                    self.pending.remove(&msg_id);
                    m.on_send_result(msg_id, status, now_ms(clock));
                }
                Ok(ClientEvent::Error { code, message }) => {
                    self.close();
                    return Err(SdkError::Node { code, message }.into());
                }
                Ok(_) => {}
                Err(SdkError::Timeout) => return Ok(()),
                Err(_) => {
                    self.close();
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Between other work: reads the answers that have arrived, sends again what is due
    /// (`now_unix_s` is the node's time as the listening connection has it), and closes an
    /// idle send connection.
    pub fn poll<S: Storage>(
        &mut self,
        m: &mut Messenger<S>,
        now_unix_s: u64,
        clock: Instant,
    ) -> Result<(), MessengerError> {
        self.answers(m, Duration::from_millis(1), clock)?;
        let again = m.due(now_unix_s, now_ms(clock), false);
        if !again.is_empty() {
            self.transmit(m, &again, clock)?;
        }
        if self.pending.is_empty()
            && self.link.as_ref().is_some_and(|(_, _, last)| {
                last.elapsed() >= Duration::from_millis(SEND_LINK_IDLE_MS)
            })
        {
            self.close();
        }
        Ok(())
    }

    /// Sends again every message the node has not acknowledged (same bytes, same id, same
    /// dest as its first send).
    pub fn resend<S: Storage>(
        &mut self,
        m: &mut Messenger<S>,
        now_unix_s: u64,
        clock: Instant,
    ) -> Result<(), MessengerError> {
        let again = m.due(now_unix_s, now_ms(clock), true);
        if again.is_empty() {
            return Ok(());
        }
        self.transmit(m, &again, clock)
    }
}

/// Encrypts a file, uploads it to media storage on `client` (media needs no proof) and sends
/// its id and key to a contact through `sender`.
pub fn send_file<S: Storage>(
    client: &mut Client,
    sender: &mut Sender,
    m: &mut Messenger<S>,
    to: &[u8; 33],
    name: &str,
    file: impl std::io::Read,
    clock: Instant,
) -> Result<(), MessengerError> {
    let (sealed, key) = client.encrypt_and_upload(file)?;
    let body = Body::Attachment {
        id: sealed.id,
        key: key.0,
        ciphertext_bytes: sealed.ciphertext_bytes,
        plaintext_bytes: sealed.plaintext_bytes,
        name: name.to_string(),
    };
    sender.send(m, to, &body, clock)?;
    Ok(())
}

/// Downloads and decrypts an attachment (each piece verified against the blob id).
pub fn fetch_file(
    client: &mut Client,
    body: &Body,
    out: impl std::io::Write,
) -> Result<(), MessengerError> {
    let Body::Attachment {
        id,
        key,
        ciphertext_bytes,
        plaintext_bytes,
        ..
    } = body
    else {
        return Err(MessengerError::Malformed("attachment"));
    };
    client.download_and_decrypt(
        *id,
        &crate::media::MediaKey(*key),
        *ciphertext_bytes,
        0,
        *plaintext_bytes,
        out,
    )?;
    Ok(())
}

/// Downloads and decrypts the attachment kept for message `msg_id` ([`Messenger::attachments`])
/// into `out`, then forgets it. If the download fails the attachment stays kept (fetch it
/// again); what was written to `out` by then is incomplete.
pub fn fetch_attachment<S: Storage>(
    client: &mut Client,
    m: &mut Messenger<S>,
    msg_id: &[u8; 16],
    out: impl std::io::Write,
) -> Result<Incoming, MessengerError> {
    let msg = m
        .attachment(msg_id)?
        .ok_or(MessengerError::UnknownAttachment)?;
    fetch_file(client, &msg.body, out)?;
    m.forget_attachment(msg_id)?;
    Ok(msg)
}

/// Registers a device's push token for this user's contact-mailbox dests of the next `hours`
/// hours (and the intro mailbox's with `first_contacts`: see [`Messenger::push_plan`] for what
/// that tells the node), so that a message stored for it while the app sleeps sends one silent
/// wake; register again before they run out. Returns how many dests the token covers.
pub fn register_push<S: Storage>(
    client: &mut Client,
    m: &Messenger<S>,
    provider: ferry_proto::frame::PushProvider,
    token: &[u8],
    hours: u64,
    first_contacts: bool,
) -> Result<u16, MessengerError> {
    // `push_plan` refuses hours outside 1 ..= PUSH_HOURS_MAX, whose seconds fit the u32 TTL.
    let signers = m.push_plan(client.node_unix_s(), hours, first_contacts)?;
    const _: () = assert!(crate::messenger::PUSH_HOURS_MAX * 3600 <= u32::MAX as u64);
    let ttl_s = u32::try_from(hours * 3600).expect("hours checked by push_plan");
    prove_all(client, &signers, Op::PushRegister)?;
    let dests: Vec<_> = signers.iter().map(BlindedSigner::dest).collect();
    Ok(client.push_register(provider, token, &dests, ttl_s)?)
}

/// What a sync found.
#[derive(Debug, Default)]
pub struct Synced {
    /// The messages, in the order they arrived (after any a failed call left in the inbox). They
    /// are removed from the messenger's inbox as they are returned here; an attachment stays
    /// kept until fetched ([`fetch_attachment`]) or forgotten.
    pub messages: Vec<Incoming>,
    /// Packets that did not authenticate (or were not for this user, or replays): dropped.
    pub dropped: usize,
}

impl Synced {
    /// Starts with what an earlier, interrupted call left in the inbox.
    fn from_inbox<S: Storage>(m: &Messenger<S>) -> Result<Self, MessengerError> {
        Ok(Synced {
            messages: m.inbox()?,
            dropped: 0,
        })
    }

    /// One packet that arrived. A storage failure stops the caller before the packet is
    /// acknowledged to the node (it comes again); anything else that fails is dropped.
    fn take<S: Storage>(
        &mut self,
        m: &mut Messenger<S>,
        dest: &Dest,
        payload: &[u8],
    ) -> Result<(), MessengerError> {
        match m.receive(dest, payload) {
            // Never one already in `messages`: `receive` answers `None` for what the inbox holds.
            Ok(Some(msg)) => self.messages.push(msg),
            Ok(None) => {}
            Err(e @ MessengerError::Storage(_)) => return Err(e),
            Err(_) => self.dropped += 1,
        }
        Ok(())
    }

    /// Hands the messages to the caller: out of the inbox.
    fn finish<S: Storage>(self, m: &mut Messenger<S>) -> Result<Self, MessengerError> {
        for msg in &self.messages {
            m.done(&msg.msg_id)?;
        }
        Ok(self)
    }
}

/// On (re)connect: proves `Drain` for this user's dests of the last 72 hours, asks which of
/// them hold stored blobs (the node answers a `Query` only for proven dests, so the proofs come
/// first) and drains those (acknowledging each batch to the node once it is stored here),
/// then listens on the current hour (and the next, near the turn), then sends again everything
/// not yet acknowledged (through `sender`). If it fails half-way, what was received stays in
/// the inbox and comes with the next `sync` or `pump`.
pub fn sync<S: Storage>(
    client: &mut Client,
    sender: &mut Sender,
    m: &mut Messenger<S>,
    clock: Instant,
) -> Result<Synced, MessengerError> {
    m.new_connection();
    let mut out = Synced::from_inbox(m)?;
    let candidates = m.drain_candidates(client.node_unix_s())?;
    let signers = m.drain_signers(&candidates)?;
    prove_all(client, &signers, Op::Drain)?;
    m.drain_proven(candidates.iter().copied());
    let holding = client.query(&candidates)?;
    for s in signers.iter().filter(|s| holding.contains(&s.dest())) {
        loop {
            let (blobs, more) = client.drain(s.dest())?;
            for b in &blobs {
                out.take(m, &b.dest, &b.payload)?;
            }
            client.ack(&blobs)?;
            if !more {
                break;
            }
        }
    }
    listen(client, m)?;
    sender.resend(m, client.node_unix_s(), clock)?;
    out.finish(m)
}

/// Follows the listen plan on this connection: proves (`Subscribe`, and `Drain` so that blobs
/// handed over on subscribe can be acknowledged, unless the sync proved it) and subscribes to
/// this hour's intro dest and each contact's pairwise dest of the day, and the next ones near the
/// turn, registering each pairwise mailbox's capability verifier (see [`crate::messenger`]);
/// unsubscribes from past ones. On failure the plan is forgotten, so the next call does it all
/// again.
pub fn listen<S: Storage>(client: &mut Client, m: &mut Messenger<S>) -> Result<(), MessengerError> {
    let r = listen_on(client, m);
    if r.is_err() {
        // The plan was taken as followed: forget it, so that the next listen (on this
        // connection or a new one) does it all again.
        m.new_connection();
    }
    r
}

fn listen_on<S: Storage>(client: &mut Client, m: &mut Messenger<S>) -> Result<(), MessengerError> {
    // One reading of the node's clock for the plan and the capabilities: the same hours.
    let now = client.node_unix_s();
    let (add, drop) = m.listen_update(now)?;
    if !drop.is_empty() {
        client.unsubscribe(&drop)?;
    }
    if add.is_empty() {
        return Ok(());
    }
    prove_all(client, &add, Op::Subscribe)?;
    // Dests the sync proved already need no second Drain proof (it would cost the node's
    // per-connection proof budget again).
    let to_drain: Vec<&BlindedSigner> = add
        .iter()
        .filter(|s| m.needs_drain_proof(&s.dest()))
        .collect();
    prove_refs(client, &to_drain, Op::Drain)?;
    let proven: Vec<Dest> = to_drain.iter().map(|s| s.dest()).collect();
    m.drain_proven(proven);
    let dests: Vec<_> = add.iter().map(BlindedSigner::dest).collect();
    let subs = client.subscribe(&dests)?;
    if let Some(bad) = subs.iter().find(|s| **s != SubscribeStatus::Ok) {
        return Err(SdkError::Node {
            code: ferry_proto::frame::ErrorCode::Unsupported,
            message: format!("subscribe refused: {bad:?}"),
        }
        .into());
    }
    // Contacts' sends to their pairwise mailboxes skip puzzles under store pressure. A refusal
    // (`TooMany`: the node holds as many verifiers as it may) leaves them to solve puzzles, as
    // strangers do; nothing else depends on it.
    for (dest, verifier, ttl_s) in m.capability_verifiers(now, &dests)? {
        client.register_capability(dest, ttl_s, verifier)?;
    }
    Ok(())
}

/// Handles what arrives for `wait`: live messages, blobs the node hands over on subscribe,
/// send results on `sender`'s connection (ending retries), retries that come due (through
/// `sender`), and the next hour's listen when it is near (or at once when a contact was added
/// or accepted: its pairwise mailbox). Returns the messages (with any an interrupted call left
/// in the inbox).
pub fn pump<S: Storage>(
    client: &mut Client,
    sender: &mut Sender,
    m: &mut Messenger<S>,
    wait: Duration,
    clock: Instant,
) -> Result<Synced, MessengerError> {
    let mut out = Synced::from_inbox(m)?;
    let deadline = Instant::now() + wait;
    let mut next_listen = m.next_listen_s(client.node_unix_s());
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return out.finish(m);
        }
        match client.recv(left.min(Duration::from_millis(200))) {
            Ok(ClientEvent::Deliver { dest, payload, .. }) => out.take(m, &dest, &payload)?,
            Ok(ClientEvent::Stored {
                dest,
                pos,
                msg_id,
                payload,
            }) => {
                out.take(m, &dest, &payload)?;
                client.ack(&[crate::StoredBlob {
                    dest,
                    pos,
                    msg_id,
                    payload,
                }])?;
            }
            Ok(ClientEvent::Error { code, message }) => {
                return Err(SdkError::Node { code, message }.into());
            }
            Ok(_) | Err(SdkError::Timeout) => {}
            Err(e) => return Err(e.into()),
        }
        sender.poll(m, client.node_unix_s(), clock)?;
        // The hour's plan, or a contact added (accepted) since: its pairwise mailbox.
        if client.node_unix_s() >= next_listen || m.contacts_changed() {
            listen(client, m)?;
            next_listen = m.next_listen_s(client.node_unix_s());
        }
    }
}
