//! Carries out a [`Messenger`]'s plans over a blocking [`Client`]: publish prekeys, start
//! sessions from fetched bundles, send, drain the store's window on (re)connect, listen with the
//! next hour proved before it starts, resend what the node has not acknowledged, and files
//! through media storage (an attachment received stays kept until [`fetch_attachment`]). The `ferry-chat` example is this module plus a command line.

use std::time::{Duration, Instant};

use ferry_proto::addr::BlindedSigner;
use ferry_proto::conn::ClientEvent;
use ferry_proto::frame::{Op, ProofStatus, SubscribeStatus};

use crate::messenger::{Body, Incoming, Messenger, MessengerError, Storage, Transmit};
use crate::{Client, SdkError};

/// Milliseconds on a monotonic clock for the outbox's retry times.
fn now_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).expect("a process lives less than 2^64 ms")
}

/// Proves `signers` for `op` on a fresh challenge; every proof must pass.
fn prove_all(client: &mut Client, signers: &[BlindedSigner], op: Op) -> Result<(), MessengerError> {
    if signers.is_empty() {
        return Ok(());
    }
    client.refresh_challenge()?;
    let refs: Vec<&BlindedSigner> = signers.iter().collect();
    let statuses = client.prove(&refs, op)?;
    if let Some(bad) = statuses.iter().find(|s| **s != ProofStatus::Ok) {
        return Err(SdkError::Node {
            code: ferry_proto::frame::ErrorCode::Unsupported,
            message: format!("proof refused: {bad:?}"),
        }
        .into());
    }
    Ok(())
}

/// Uploads a signed prekey, a last-resort KEM key and `one_time` one-time keys of each kind to
/// this user's slot. Returns the one-time keys (EC, PQ) the slot holds after it.
pub fn publish_prekeys<S: Storage>(
    client: &mut Client,
    m: &mut Messenger<S>,
    one_time: usize,
) -> Result<(u16, u16), MessengerError> {
    let slot = m.prekey_slot()?;
    prove_all(client, std::slice::from_ref(&slot), Op::PrekeyUpdate)?;
    let uploads = m.prekey_uploads(true, one_time)?;
    Ok(client.upload_prekeys(&uploads)?)
}

/// Tops the slot's one-time keys up when they run low.
pub fn refill_prekeys<S: Storage>(
    client: &mut Client,
    m: &mut Messenger<S>,
) -> Result<(), MessengerError> {
    let slot = m.prekey_slot()?;
    let (ec, pq) = client.prekey_count(slot.dest())?;
    let uploads = m.refill(ec, pq)?;
    if !uploads.is_empty() {
        prove_all(client, std::slice::from_ref(&slot), Op::PrekeyUpdate)?;
        client.upload_prekeys(&uploads)?;
    }
    Ok(())
}

/// Sends `body` to a contact, starting the session from its prekey bundle if there is none.
/// Returns the node-visible message id (its `SendResult` ends the retries).
pub fn send<S: Storage>(
    client: &mut Client,
    m: &mut Messenger<S>,
    to: &[u8; 33],
    body: &Body,
    clock: Instant,
) -> Result<u64, MessengerError> {
    if !m.has_session(to) {
        let slot = m.contact_prekey_slot(to)?;
        let bundle = client.fetch_prekeys(slot)?;
        m.start_session(to, &bundle)?;
    }
    let t = m.send(to, body, client.node_unix_s(), now_ms(clock))?;
    transmit(client, std::slice::from_ref(&t))?;
    Ok(t.msg_id)
}

/// Sends with `FLAG_ACK`, so that a successful send is answered (`Accepted` to a contact: the
/// node does not tell a sender whether the recipient is online) and ends the retries.
fn transmit(client: &mut Client, ts: &[Transmit]) -> Result<(), SdkError> {
    for t in ts {
        client.send(t.dest, t.msg_id, crate::FLAG_ACK, &t.payload);
    }
    client.flush()
}

/// Encrypts a file, uploads it to media storage and sends its id and key to a contact.
pub fn send_file<S: Storage>(
    client: &mut Client,
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
    send(client, m, to, &body, clock)?;
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

/// Registers a device's push token for this user's dests (both mailboxes) of the next `hours`
/// hours, so that a message stored for it while the app sleeps sends one silent wake; register
/// again before they run out. Returns how many dests the token covers.
pub fn register_push<S: Storage>(
    client: &mut Client,
    m: &Messenger<S>,
    provider: ferry_proto::frame::PushProvider,
    token: &[u8],
    hours: u64,
) -> Result<u16, MessengerError> {
    // `push_plan` refuses hours outside 1 ..= PUSH_HOURS_MAX, whose seconds fit the u32 TTL.
    let signers = m.push_plan(client.node_unix_s(), hours)?;
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
        payload: &[u8],
    ) -> Result<(), MessengerError> {
        match m.receive(payload) {
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
/// not yet acknowledged. If it fails half-way, what was received stays in the inbox and comes
/// with the next `sync` or `pump`.
pub fn sync<S: Storage>(
    client: &mut Client,
    m: &mut Messenger<S>,
) -> Result<Synced, MessengerError> {
    m.new_connection();
    let mut out = Synced::from_inbox(m)?;
    let candidates = m.drain_candidates(client.node_unix_s())?;
    let signers = m.drain_signers(&candidates)?;
    prove_all(client, &signers, Op::Drain)?;
    let holding = client.query(&candidates)?;
    for s in signers.iter().filter(|s| holding.contains(&s.dest())) {
        loop {
            let (blobs, more) = client.drain(s.dest())?;
            for b in &blobs {
                out.take(m, &b.payload)?;
            }
            client.ack(&blobs)?;
            if !more {
                break;
            }
        }
    }
    listen(client, m)?;
    resend(client, m)?;
    out.finish(m)
}

/// Sends again every message the node has not acknowledged (same bytes, same id).
pub fn resend<S: Storage>(client: &mut Client, m: &mut Messenger<S>) -> Result<(), MessengerError> {
    let again = m.due(client.node_unix_s(), 0, true);
    Ok(transmit(client, &again)?)
}

/// Follows the listen plan on this connection: proves (`Subscribe`, and `Drain` so that blobs
/// handed over on subscribe can be acknowledged) and subscribes to this hour's dests, and the
/// next hour's near the turn; unsubscribes from past hours.
pub fn listen<S: Storage>(client: &mut Client, m: &mut Messenger<S>) -> Result<(), MessengerError> {
    let (add, drop) = m.listen_update(client.node_unix_s())?;
    if !drop.is_empty() {
        client.unsubscribe(&drop)?;
    }
    if add.is_empty() {
        return Ok(());
    }
    prove_all(client, &add, Op::Subscribe)?;
    prove_all(client, &add, Op::Drain)?;
    let dests: Vec<_> = add.iter().map(BlindedSigner::dest).collect();
    let subs = client.subscribe(&dests)?;
    if let Some(bad) = subs.iter().find(|s| **s != SubscribeStatus::Ok) {
        m.new_connection();
        return Err(SdkError::Node {
            code: ferry_proto::frame::ErrorCode::Unsupported,
            message: format!("subscribe refused: {bad:?}"),
        }
        .into());
    }
    Ok(())
}

/// Handles what arrives for `wait`: live messages, blobs the node hands over on subscribe,
/// send results (ending retries), retries that come due, and the next hour's listen when it is
/// near. Returns the messages (with any an interrupted call left in the inbox).
pub fn pump<S: Storage>(
    client: &mut Client,
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
            Ok(ClientEvent::Deliver { payload, .. }) => out.take(m, &payload)?,
            Ok(ClientEvent::Stored {
                dest,
                pos,
                msg_id,
                payload,
            }) => {
                out.take(m, &payload)?;
                client.ack(&[crate::StoredBlob {
                    dest,
                    pos,
                    msg_id,
                    payload,
                }])?;
            }
            Ok(ClientEvent::SendResult { msg_id, status, .. }) => {
                m.on_send_result(msg_id, status, now_ms(clock));
            }
            Ok(ClientEvent::Error { code, message }) => {
                return Err(SdkError::Node { code, message }.into());
            }
            Ok(_) | Err(SdkError::Timeout) => {}
            Err(e) => return Err(e.into()),
        }
        let again = m.due(client.node_unix_s(), now_ms(clock), false);
        transmit(client, &again)?;
        if client.node_unix_s() >= next_listen {
            listen(client, m)?;
            next_listen = m.next_listen_s(client.node_unix_s());
        }
    }
}
