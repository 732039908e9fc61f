//! The session layer, sans-IO: identities, contacts, end-to-end sessions, an outbox with retry
//! and idempotent message ids, and the plans a connection carries out (which dests to listen on,
//! which to drain, which to register for push). It never touches a socket or a clock: the caller
//! passes the node's time and carries out what it returns ([`crate::chat`] does that with a
//! blocking [`crate::Client`]).
//!
//! Each user has an identity key (X25519, signs with XEdDSA), a mailbox key `MK` and a secret
//! `s_mbox`. Their **address**, shared out of band, is `MK ‖ IK`. First contact goes to the
//! recipient's intro mailbox (`MK` without a secret), and lands there as a **request** the app
//! accepts ([`Messenger::accept_request`]) or refuses ([`Messenger::refuse_request`]); a
//! first-contact message on any other mailbox is dropped. Each contact gets a **pairwise
//! mailbox** of its own: `MK` with [`pair_secret`]`(s_mbox, contact's identity)`, one dest a day
//! ([`pair_epoch`]). Every message to a contact carries, inside the encryption, the sender's
//! `MK` and its pairwise secret for that contact, so replies go to a mailbox only that contact
//! can compute, and no contact learns a dest that another contact writes to.
//!
//! **Prekeys** live in one slot per day ([`Messenger::prekey_publication`]): the intro mailbox
//! blinded for that day's slot epoch, everything in it sealed under a key only holders of the
//! address can derive (`ferry_proto::prekey`), published `SLOT_DAYS_AHEAD` days ahead with
//! `PREKEYS_PER_SLOT` one-time keys each. The signed prekey rotates every `SPK_ROTATE_DAYS`
//! days and each head carries an expiry the identity key signed; secrets are erased once no
//! live slot, nor a first contact stored from one, can need them (forward secrecy).
//!
//! What the node sees of a message: the `dest`, a sealed envelope of a bucket size, and a
//! 64-bit id derived from the random message id (the same on every retry, so the node stores a
//! retried message once and the recipient shows it once). A retry goes to the dest of the first
//! send, also after the hour turns and after a restart (the outbox keeps that dest), so the same
//! bytes never appear at two of a recipient's dests: a node that withholds answers until the
//! hour turns cannot make a sender link the recipient's two hours. The recipient drains
//! `STORE_WINDOW_EPOCHS` hours back, so retries stop (the message expires, [`Messenger::expired`])
//! once the first send's hour falls out of that window.
//!
//! **Capabilities.** When a node is under store pressure it asks offline sends for a puzzle
//! (docs/PROTOCOL.md, "Puzzles and capabilities"). A contact skips it: a pairwise mailbox's
//! send secret is [`contact_send_secret`] of its pairwise secret, which that contact holds (it
//! came inside the encryption), so each send to a pairwise dest carries that day's capability
//! token ([`Transmit::capability`]), and the owner registers the token's verifier for each
//! pairwise dest it listens on ([`Messenger::capability_verifiers`], on the connection that
//! already proved the dest, so the registration links nothing new). Sends to an intro dest
//! (first contact) carry none: a token there would link the two mailboxes.
//!
//! All state goes through the [`Storage`] trait: the application decides where it lives.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ferry_crypto::keys::{EC_KEY_BYTES, KeyPair, decode_ec};
use ferry_crypto::pqxdh::Bundle as CryptoBundle;
use ferry_crypto::session::{PrekeyStore, Received, Session, SessionError};
use ferry_crypto::{envelope, session};
use ferry_proto::addr::{BlindedSigner, NamespaceId, day_of, epoch_of};
use ferry_proto::frame::{Dest, SendStatus};
use ferry_proto::prekey::{Bundle, SlotOpener, Upload};
use zeroize::Zeroizing;

use crate::{Contact, Mailbox, SdkError};

/// Version byte of the plaintext inside a session message: 2 carries the sender's pairwise
/// secret for the recipient. A version 1 payload (from a client before pairwise mailboxes)
/// carried its shared contact secret: it is read, the secret ignored, and the reply goes to that
/// sender's intro mailbox, which such a client listens on.
pub const PAYLOAD_VERSION: u8 = 2;
const PAYLOAD_VERSION_SHARED_CONTACT_MAILBOX: u8 = 1;
/// Hours a node keeps a stored blob (its default TTL): the drain window.
pub const STORE_WINDOW_EPOCHS: u64 = 72;
/// Listen on the next epoch's dests this long before the hour turns.
pub const ROLLOVER_LEAD_S: u64 = 300;
/// Message ids remembered to drop duplicates.
pub const SEEN_IDS_MAX: usize = 4096;
/// Unacknowledged messages held for retry.
pub const OUTBOX_MAX: usize = 1024;
/// A message is sent again this long after its first send, then after twice as long each time,
/// up to `RETRY_MAX_MS`.
pub const RETRY_BASE_MS: u64 = 1_000;
pub const RETRY_MAX_MS: u64 = 60_000;
/// One-time prekeys uploaded per refill, and the level that asks for one.
pub const PREKEYS_PER_REFILL: usize = 50;
pub const PREKEYS_LOW: u16 = 10;
/// The longest contact name, in UTF-8 bytes (`add_contact` refuses longer ones). A stored
/// message carries its sender's name behind a u16 length.
pub const CONTACT_NAME_BYTES_MAX: usize = 1024;
const _: () = assert!(CONTACT_NAME_BYTES_MAX <= u16::MAX as usize);

/// How long a registered capability verifier outlives its dest's hour: a retry keeps the dest
/// of its first send (see the module doc), so contacts' retries of the last hour still pass.
pub const CAPABILITY_GRACE_S: u64 = 3_600;

/// The send secret of a pairwise mailbox whose secret is `secret`: the secret behind its
/// capability tokens ([`ferry_proto::puzzle::capability_token`]). Derived, so that the node's
/// verifier (a hash of a token) reveals nothing about the mailbox's secret itself.
pub fn contact_send_secret(secret: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key("ferry v1 contact mailbox send secret", secret)
}

/// The capability token of the pairwise mailbox whose secret is `secret`, for its blinding
/// epoch `epoch` ([`pair_epoch`]).
fn capability_token(secret: &[u8; 32], epoch: u64) -> [u8; 32] {
    ferry_proto::puzzle::capability_token(&contact_send_secret(secret), epoch)
}

/// Set in the blinding epoch of a pairwise mailbox, whose epochs are days: bit 62, so neither an
/// hour's epoch nor a prekey slot's (`ferry_proto::addr::slot_epoch`, bit 63) is one.
pub const PAIR_EPOCH_FLAG: u64 = 1 << 62;
/// Hours in a pairwise mailbox's day.
const HOURS_PER_DAY: u64 = ferry_proto::addr::DAY_SECONDS / ferry_proto::limits::EPOCH_SECONDS;

/// The blinding epoch of a pairwise mailbox on `day` (`ferry_proto::addr::day_of`): one dest a
/// day, so that a sync drains a contact's 72 hours with four or five dests, not 75.
pub fn pair_epoch(day: u64) -> u64 {
    assert!(
        day & (PAIR_EPOCH_FLAG | ferry_proto::addr::SLOT_EPOCH_FLAG) == 0,
        "day {day} out of range"
    );
    PAIR_EPOCH_FLAG | day
}

/// The secret of the pairwise mailbox a user with secret `s_mbox` keeps for the contact whose
/// identity is `peer`: `blake3 derive_key("ferry v1 pairwise mailbox", s_mbox ‖ identity)`.
/// Only that contact learns it (inside the encryption); it names a mailbox no other contact can
/// compute.
pub fn pair_secret(s_mbox: &[u8; 32], peer: &[u8; EC_KEY_BYTES]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("ferry v1 pairwise mailbox");
    h.update(s_mbox);
    h.update(peer);
    *h.finalize().as_bytes()
}

/// Identities whose first contacts were refused, remembered so that their packets are dropped.
pub const REFUSED_MAX: usize = 1024;
/// Requests kept waiting for the app; past it, a new stranger's first contact is dropped
/// (`MessengerError::Refused`) until the app accepts or refuses some.
pub const REQUESTS_MAX: usize = 256;

/// The most contacts one messenger keeps. Each has a pairwise mailbox, so the proofs of a sync
/// and what follows it on the same connection grow with them, and must fit a node's default
/// per-connection proof budget (`limits.proofs_per_conn_burst`, 512, refilled at 1 a second):
/// the drain window (the intro mailbox's 75 hours, up to five days of each contact), the listen
/// plan's `Subscribe` proofs (two hours and two days of each contact near midnight; its `Drain`
/// proofs repeat the sync's, [`Messenger::drain_proven`]) and a push registration of 48 hours
/// with first contacts (49 hours, three days of each contact): `75 + 5N + 2 + 2N + 49 + 3N`.
pub const CONTACTS_MAX: usize = 36;
/// The proofs of a sync, its listen and a push registration on one connection (see above).
const SYNC_PROOFS_MAX: usize = 75 + 5 * CONTACTS_MAX + 2 + 2 * CONTACTS_MAX + 49 + 3 * CONTACTS_MAX;
const _: () = assert!(SYNC_PROOFS_MAX <= 512);
const _: () = assert!(SYNC_PROOFS_MAX <= ferry_proto::limits::PROVEN_PER_CONN_MAX);
// A renewed 48-hour registration with first contacts overlaps the last one by a day: its dests
// stay within a node's default 256 per token.
const _: () = assert!(73 + 4 * CONTACTS_MAX <= 256);

/// What can go wrong in the session layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessengerError {
    #[error("session: {0}")]
    Session(#[from] SessionError),
    #[error(transparent)]
    Sdk(#[from] SdkError),
    /// No contact with this identity (add it first).
    #[error("unknown contact")]
    UnknownContact,
    /// No session with this contact yet: fetch its bundle and call `start_session`.
    #[error("no session with this contact yet")]
    NoSession,
    /// The fetched bundle belongs to another identity than the contact's address says.
    #[error("the prekey bundle is not signed by the contact's identity")]
    IdentityMismatch,
    /// An address string or a stored record is malformed.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The outbox is full: wait for the node to acknowledge what is in it.
    #[error("outbox full")]
    OutboxFull,
    /// The application's storage failed: the state change was not made durable.
    #[error("storage: {0}")]
    Storage(#[source] std::io::Error),
    /// A first-contact message whose session was accepted before: a replay, dropped.
    #[error("a replayed first-contact message")]
    Replay,
    /// An argument out of range (the message says which).
    #[error("{0}")]
    InvalidArgument(&'static str),
    /// No attachment is kept for this message id (fetched and forgotten already, or never
    /// received).
    #[error("no attachment kept for this message id")]
    UnknownAttachment,
    /// This identity's first contact is a request not accepted yet
    /// ([`Messenger::accept_request`]).
    #[error("a request not accepted yet: accept it before writing back")]
    NotAccepted,
    /// A packet dropped by policy (the message says why): a first contact off the intro
    /// mailbox, a packet on a contact's pairwise mailbox from someone else, or from an identity
    /// whose request was refused.
    #[error("dropped: {0}")]
    Refused(&'static str),
}

mod contacts;
mod inbox;
mod keys;
use keys::*;
mod outbox;
mod plans;
mod records;
mod storage;
pub use records::OUTBOX_RECORD_VERSION;
use records::{
    decode_incoming, decode_outgoing, decode_sessions, encode_incoming, encode_outgoing,
    encode_sessions, prefix_u32,
};
pub use storage::{DirStorage, MemoryStorage, Storage};

use ferry_proto::hex::{decode as unhex, encode as hex};

fn random<const N: usize>() -> Result<[u8; N], SdkError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| SdkError::Io(std::io::Error::other(e.to_string())))?;
    Ok(b)
}

/// What a user shares so that others can reach them: mailbox key and identity key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Address {
    pub mailbox: [u8; 32],
    pub identity: [u8; EC_KEY_BYTES],
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ferry:{}{}", hex(&self.mailbox), hex(&self.identity))
    }
}

impl std::str::FromStr for Address {
    type Err = MessengerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Pasted addresses may come in capitals.
        let b = s
            .trim()
            .strip_prefix("ferry:")
            .map(str::to_ascii_lowercase)
            .as_deref()
            .and_then(unhex)
            .filter(|b| b.len() == 32 + EC_KEY_BYTES)
            .ok_or(MessengerError::Malformed("address"))?;
        let mut mailbox = [0u8; 32];
        mailbox.copy_from_slice(&b[..32]);
        let mut identity = [0u8; EC_KEY_BYTES];
        identity.copy_from_slice(&b[32..]);
        if decode_ec(&identity).is_none()
            || ferry_proto::addr::MailboxPublic::from_bytes(&mailbox).is_err()
        {
            return Err(MessengerError::Malformed("address"));
        }
        Ok(Address { mailbox, identity })
    }
}

/// What the application sends and receives inside a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Bytes for the application (text, its own encoding).
    Data(Vec<u8>),
    /// A file in media storage: the blob id, the key that decrypts it and its sizes.
    Attachment {
        id: [u8; 32],
        key: [u8; 32],
        ciphertext_bytes: u64,
        plaintext_bytes: u64,
        name: String,
    },
}

impl Body {
    /// The body's encoding inside a session message (also what identifies an attachment to
    /// fetch: see `ferry-ffi`'s `file_ref`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    pub fn from_bytes(b: &[u8]) -> Option<Body> {
        Self::decode(b)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Body::Data(d) => {
                out.push(1);
                out.extend_from_slice(d);
            }
            Body::Attachment {
                id,
                key,
                ciphertext_bytes,
                plaintext_bytes,
                name,
            } => {
                out.push(2);
                out.extend_from_slice(id);
                out.extend_from_slice(key);
                out.extend_from_slice(&ciphertext_bytes.to_be_bytes());
                out.extend_from_slice(&plaintext_bytes.to_be_bytes());
                out.extend_from_slice(name.as_bytes());
            }
        }
    }
    fn decode(b: &[u8]) -> Option<Body> {
        let (&kind, rest) = b.split_first()?;
        match kind {
            1 => Some(Body::Data(rest.to_vec())),
            2 if rest.len() >= 80 => Some(Body::Attachment {
                id: rest[..32].try_into().ok()?,
                key: rest[32..64].try_into().ok()?,
                ciphertext_bytes: u64::from_be_bytes(rest[64..72].try_into().ok()?),
                plaintext_bytes: u64::from_be_bytes(rest[72..80].try_into().ok()?),
                name: String::from_utf8(rest[80..].to_vec()).ok()?,
            }),
            _ => None,
        }
    }
}

/// A message that arrived, authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    pub from: [u8; EC_KEY_BYTES],
    /// The contact's name (a request is named by its identity until accepted with a name).
    pub from_name: String,
    pub msg_id: [u8; 16],
    pub body: Body,
    /// From a stranger whose first contact is a request not accepted yet
    /// ([`Messenger::requests`]): show it as such; nothing is sent back until it is accepted.
    pub request: bool,
}

/// A packet to send: `Client::send(dest, msg_id, 0, &payload)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub dest: Dest,
    /// The epoch of `dest` (of the message's first send): a connection that sends should carry
    /// one epoch's dests only (`chat::Sender` opens one per epoch).
    pub epoch: u64,
    pub msg_id: u64,
    pub payload: Vec<u8>,
    /// The capability token for `dest` when it is the recipient's contact mailbox (send it with
    /// [`crate::Client::send_with_capability`]): a dest under pressure takes it instead of a
    /// puzzle. `None` for an intro dest.
    pub capability: Option<[u8; 32]>,
}

/// A contact as the messenger keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub identity: [u8; EC_KEY_BYTES],
    pub mailbox: [u8; 32],
    /// Their pairwise mailbox's secret for this user, once a message of theirs told it.
    pub s_mbox: Option<[u8; 32]>,
}

impl Peer {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(65 + self.name.len());
        b.extend_from_slice(&self.mailbox);
        b.push(u8::from(self.s_mbox.is_some()));
        b.extend_from_slice(&self.s_mbox.unwrap_or([0; 32]));
        b.extend_from_slice(self.name.as_bytes());
        b
    }
    fn decode(identity: [u8; EC_KEY_BYTES], b: &[u8]) -> Option<Peer> {
        if b.len() < 65 {
            return None;
        }
        Some(Peer {
            identity,
            mailbox: b[..32].try_into().ok()?,
            s_mbox: match b[32] {
                0 => None,
                1 => Some(b[33..65].try_into().ok()?),
                _ => return None,
            },
            name: String::from_utf8(b.get(65..)?.to_vec())
                .ok()
                .filter(|n| n.len() <= CONTACT_NAME_BYTES_MAX)?,
        })
    }
}

/// Signed prekeys (each with its last-resort KEM key) kept at most: one per
/// `SPK_ROTATE_DAYS` period that a live slot, or a first contact stored up to 72 hours, may
/// still use.
pub const SIGNED_PREKEYS_KEPT: usize = 4;
/// Days ahead of today whose prekey slots are published (each slot is one day's,
/// `ferry_proto::prekey`): an owner offline this long still gets first contacts with forward
/// secrecy from the one-time keys.
pub const SLOT_DAYS_AHEAD: u64 = 6;
/// The signed prekey (and last-resort key) of a slot is the one of its day's period of this
/// many days: it rotates on that schedule.
pub const SPK_ROTATE_DAYS: u64 = 7;
/// One-time keys of each kind a slot gets when it is published (the node's per-slot ration is
/// 20 at once, 10 an hour).
pub const PREKEYS_PER_SLOT: usize = 20;
/// A slot (and its head's signed expiry) outlives its day by this many days: a fetcher whose
/// day has not turned yet, or who fetched just before it turned, still finds it.
pub const SLOT_GRACE_DAYS: u64 = 1;
/// Init ids of accepted first contacts remembered to refuse their replays.
pub const ACCEPTED_INITS_MAX: usize = 1024;
/// Sessions kept per contact (the newest is used to send; all are tried to receive), so that
/// two people who start a conversation at the same moment end up in one session.
pub const SESSIONS_PER_CONTACT_MAX: usize = 4;
/// Hours one push registration may cover: two days ahead at most, since every hour registered
/// is an hour whose dest the node links to the device's token in advance (docs/PUSH.md). With
/// first contacts, both mailboxes: two dests an hour, well under the node's default of 256 dests
/// per token.
pub const PUSH_HOURS_MAX: u64 = 48;
// Record counts written in one byte.
const _: () = assert!(SIGNED_PREKEYS_KEPT <= u8::MAX as usize);
const _: () = assert!(SESSIONS_PER_CONTACT_MAX <= u8::MAX as usize);
// Live slots reach SLOT_DAYS_AHEAD + SLOT_GRACE_DAYS days ahead and back, and their secrets
// three days more: the periods they span fit SIGNED_PREKEYS_KEPT.
const _: () = assert!(
    (SLOT_DAYS_AHEAD + 2 * SLOT_GRACE_DAYS + 4) / SPK_ROTATE_DAYS + 2 <= SIGNED_PREKEYS_KEPT as u64
);
/// One slot's uploads: prove `signer` for `Op::PrekeyUpdate` on a connection of its own, send
/// `uploads` in order, then tell the messenger ([`Messenger::slot_published`]).
#[derive(Debug)]
pub struct SlotUploads {
    pub day: u64,
    pub signer: BlindedSigner,
    pub uploads: Vec<Upload>,
}

struct Outgoing {
    to: [u8; EC_KEY_BYTES],
    /// The dest and epoch of the first send: every retry goes there. `None` only for a record
    /// written before the dest was kept ([`OUTBOX_RECORD_VERSION`]); its first retry fixes it.
    first: Option<(Dest, u64)>,
    envelope: Vec<u8>,
    tries: u32,
    next_ms: u64,
}

/// Which of this user's mailboxes a dest belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Intro,
    /// The pairwise mailbox kept for this contact.
    Pair([u8; EC_KEY_BYTES]),
    /// The shared contact mailbox of a messenger from before pairwise mailboxes (`MK` with
    /// `s_mbox`, hourly), still drained and listened on for the store's window after the
    /// update; taken like the intro mailbox.
    Shared,
}

/// One user's session layer. Generic over where its state lives.
pub struct Messenger<S: Storage> {
    storage: S,
    ns: NamespaceId,
    identity: KeyPair,
    s_mbox: Zeroizing<[u8; 32]>,
    mailbox_seed: Zeroizing<[u8; 32]>,
    intro: Mailbox,
    /// Accepted contacts (and those added by address).
    peers: BTreeMap<[u8; EC_KEY_BYTES], Peer>,
    /// Strangers whose first contact arrived and is neither accepted nor refused.
    requests: BTreeMap<[u8; EC_KEY_BYTES], Peer>,
    /// Refused identities, oldest first (at most `REFUSED_MAX`).
    refused: VecDeque<[u8; EC_KEY_BYTES]>,
    /// Per contact, newest first.
    sessions: BTreeMap<[u8; EC_KEY_BYTES], Vec<Session>>,
    prekeys: Prekeys,
    outbox: BTreeMap<u64, Outgoing>,
    seen: VecDeque<[u8; 16]>,
    seen_set: BTreeSet<[u8; 16]>,
    inits: VecDeque<[u8; 32]>,
    inits_set: BTreeSet<[u8; 32]>,
    /// The dests of the last drain plan: which mailbox and (blinding) epoch each belongs to.
    candidates: BTreeMap<Dest, (Which, u64)>,
    /// What the current connection is subscribed to, the same way.
    listening: BTreeMap<Dest, (Which, u64)>,
    /// What it was subscribed to before the last listen update (packets still in flight).
    listened: BTreeMap<Dest, (Which, u64)>,
    /// Contacts were added, accepted or refused since the last listen update.
    contacts_changed: bool,
    /// Dests the current connection proved for `Op::Drain` (a listen needs no second proof).
    drain_proven: BTreeSet<Dest>,
    /// The epoch from which this messenger uses pairwise mailboxes, when it had contacts before
    /// them (0: not dated yet; `None`: it never had a shared contact mailbox): for
    /// `STORE_WINDOW_EPOCHS` hours more it still drains and listens on that old mailbox.
    shared_mailbox_since: Option<u64>,
    /// Messages dropped from the outbox unsent (at most `OUTBOX_MAX`; taken by `expired`).
    expired: Vec<u64>,
}

impl<S: Storage> std::fmt::Debug for Messenger<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messenger")
            .field("contacts", &self.peers.len())
            .field("sessions", &self.sessions.len())
            .field("outbox", &self.outbox.len())
            .finish_non_exhaustive()
    }
}

/// The 64-bit id the node sees: the first 8 bytes of the random message id.
pub fn node_msg_id(msg_id: &[u8; 16]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&msg_id[..8]);
    u64::from_be_bytes(b)
}

fn st<T>(r: std::io::Result<T>) -> Result<T, MessengerError> {
    r.map_err(MessengerError::Storage)
}

/// The first-retry delay after `tries` sends: `RETRY_BASE_MS`, doubling, capped.
fn backoff(tries: u32) -> u64 {
    RETRY_BASE_MS
        .saturating_mul(1u64 << tries.saturating_sub(1).min(6))
        .min(RETRY_MAX_MS)
}

/// What a session plaintext carries: the sender's mailbox key, its pairwise secret for the
/// recipient (none from a version 1 payload) and the body.
type Payload = ([u8; 32], Option<[u8; 32]>, Body);

/// The [`Payload`] of a session plaintext.
fn parse_payload(pt: &[u8]) -> Result<Payload, MessengerError> {
    if pt.len() < 65
        || !matches!(
            pt[0],
            PAYLOAD_VERSION | PAYLOAD_VERSION_SHARED_CONTACT_MAILBOX
        )
    {
        return Err(MessengerError::Malformed("payload"));
    }
    let body = Body::from_bytes(&pt[65..]).ok_or(MessengerError::Malformed("payload"))?;
    let mut mailbox = [0u8; 32];
    mailbox.copy_from_slice(&pt[1..33]);
    let mut s_mbox = [0u8; 32];
    s_mbox.copy_from_slice(&pt[33..65]);
    if ferry_proto::addr::MailboxPublic::from_bytes(&mailbox).is_err() {
        return Err(MessengerError::Malformed("payload"));
    }
    let secret = (pt[0] == PAYLOAD_VERSION).then_some(s_mbox);
    Ok((mailbox, secret, body))
}

impl<S: Storage> Messenger<S> {
    /// Opens the messenger kept in `storage`, creating a new identity if it holds none. A store
    /// made for another namespace is refused.
    pub fn open(storage: S, ns: NamespaceId) -> Result<Self, MessengerError> {
        let mut storage = storage;
        match st(storage.get("namespace"))? {
            Some(b) if b[..] != ns.0[..] => {
                return Err(MessengerError::InvalidArgument(
                    "this state belongs to another namespace",
                ));
            }
            Some(_) => {}
            None => st(storage.put("namespace", &ns.0))?,
        }
        let id = match st(storage.get("identity"))? {
            Some(b) if b.len() == 96 => Zeroizing::new(b),
            Some(_) => return Err(MessengerError::Malformed("identity record")),
            None => {
                let mut b = Zeroizing::new(Vec::with_capacity(96));
                b.extend_from_slice(&random::<32>()?);
                b.extend_from_slice(&random::<32>()?);
                b.extend_from_slice(&random::<32>()?);
                st(storage.put("identity", &b))?;
                // A new identity never had a shared contact mailbox.
                st(storage.put("pairwise", &u64::MAX.to_be_bytes()))?;
                b
            }
        };
        let arr = |r: std::ops::Range<usize>| -> Zeroizing<[u8; 32]> {
            let mut a = Zeroizing::new([0u8; 32]);
            a.copy_from_slice(&id[r]);
            a
        };
        let identity = KeyPair::from_secret(*arr(0..32));
        let mailbox_seed = arr(32..64);
        let s_mbox = arr(64..96);
        let mut m = Messenger {
            intro: Mailbox::from_seed(&mailbox_seed, ns, None),
            mailbox_seed,
            storage,
            ns,
            identity,
            s_mbox,
            peers: BTreeMap::new(),
            requests: BTreeMap::new(),
            refused: VecDeque::new(),
            sessions: BTreeMap::new(),
            prekeys: Prekeys::default(),
            outbox: BTreeMap::new(),
            seen: VecDeque::new(),
            seen_set: BTreeSet::new(),
            inits: VecDeque::new(),
            inits_set: BTreeSet::new(),
            candidates: BTreeMap::new(),
            listening: BTreeMap::new(),
            listened: BTreeMap::new(),
            contacts_changed: false,
            drain_proven: BTreeSet::new(),
            shared_mailbox_since: None,
            expired: Vec::new(),
        };
        m.load()?;
        Ok(m)
    }

    fn load(&mut self) -> Result<(), MessengerError> {
        // Keys that do not parse (files an OS or a user left there) are skipped; records that do
        // not parse are errors (they are this user's data).
        for key in st(self.storage.keys("contact/"))? {
            let Some(identity) = key_identity(&key) else {
                continue;
            };
            let b = st(self.storage.get(&key))?.unwrap_or_default();
            let p =
                Peer::decode(identity, &b).ok_or(MessengerError::Malformed("contact record"))?;
            self.peers.insert(identity, p);
        }
        // Before pairwise mailboxes a contact's stored secret was its shared contact mailbox's:
        // forget those (sends go to intro mailboxes until a message brings the pairwise one),
        // and keep draining this user's old shared mailbox for the store's window.
        match st(self.storage.get("pairwise"))? {
            Some(b) => {
                let since = u64::from_be_bytes(
                    b.try_into()
                        .map_err(|_| MessengerError::Malformed("pairwise record"))?,
                );
                self.shared_mailbox_since = (since != u64::MAX).then_some(since);
            }
            None => {
                for p in self.peers.values_mut() {
                    p.s_mbox = None;
                }
                let peers: Vec<Peer> = self.peers.values().cloned().collect();
                for p in &peers {
                    self.save_peer(p)?;
                }
                st(self.storage.put("pairwise", &0u64.to_be_bytes()))?;
                self.shared_mailbox_since = Some(0);
            }
        }
        for key in st(self.storage.keys("request/"))? {
            let Some(identity) = key_identity(&key) else {
                continue;
            };
            if self.peers.contains_key(&identity) {
                // Accepted, and the request record outlived it (a crash in between).
                st(self.storage.delete(&key))?;
                continue;
            }
            let b = st(self.storage.get(&key))?.unwrap_or_default();
            let p =
                Peer::decode(identity, &b).ok_or(MessengerError::Malformed("request record"))?;
            self.requests.insert(identity, p);
        }
        if let Some(b) = st(self.storage.get("refused"))? {
            if b.len() % EC_KEY_BYTES != 0 {
                return Err(MessengerError::Malformed("refused record"));
            }
            for c in b.chunks_exact(EC_KEY_BYTES) {
                let mut id = [0u8; EC_KEY_BYTES];
                id.copy_from_slice(c);
                self.refused.push_back(id);
            }
        }
        for key in st(self.storage.keys("session/"))? {
            let Some(identity) = key_identity(&key) else {
                continue;
            };
            let b = Zeroizing::new(st(self.storage.get(&key))?.unwrap_or_default());
            self.sessions.insert(identity, decode_sessions(&b)?);
        }
        if let Some(b) = st(self.storage.get("prekeys"))? {
            let b = Zeroizing::new(b);
            self.prekeys =
                Prekeys::decode(&b).ok_or(MessengerError::Malformed("prekeys record"))?;
        }
        for key in st(self.storage.keys("outbox/"))? {
            let Some(id) = key
                .strip_prefix("outbox/")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            let b = st(self.storage.get(&key))?.unwrap_or_default();
            let (to, first, envelope) =
                decode_outgoing(&b).ok_or(MessengerError::Malformed("outbox record"))?;
            self.outbox.insert(
                id,
                Outgoing {
                    to,
                    first,
                    envelope,
                    tries: 0,
                    next_ms: 0,
                },
            );
        }
        if let Some(b) = st(self.storage.get("seen"))? {
            for id in b.chunks_exact(16) {
                let mut a = [0u8; 16];
                a.copy_from_slice(id);
                self.remember(a);
            }
        }
        if let Some(b) = st(self.storage.get("inits"))? {
            for id in b.chunks_exact(32) {
                let mut a = [0u8; 32];
                a.copy_from_slice(id);
                self.remember_init(a);
            }
        }
        Ok(())
    }

    /// This user's address (share it with contacts).
    pub fn address(&self) -> Address {
        Address {
            mailbox: self.intro.public().to_bytes(),
            identity: session::identity_public(&self.identity),
        }
    }

    pub fn namespace(&self) -> NamespaceId {
        self.ns
    }

    /// Whether prekeys were published from this device (a slot's head was accepted).
    pub fn has_prekeys(&self) -> bool {
        !self.prekeys.published.is_empty()
    }

    fn save_peer(&mut self, p: &Peer) -> Result<(), MessengerError> {
        st(self
            .storage
            .put(&format!("contact/{}", hex(&p.identity)), &p.encode()))
    }

    fn save_sessions(&mut self, identity: &[u8; EC_KEY_BYTES]) -> Result<(), MessengerError> {
        let b = encode_sessions(self.sessions.get(identity).map_or(&[][..], Vec::as_slice));
        st(self.storage.put(&format!("session/{}", hex(identity)), &b))
    }

    fn save_prekeys(&mut self) -> Result<(), MessengerError> {
        let b = self.prekeys.encode();
        st(self.storage.put("prekeys", &b))
    }

    fn remember(&mut self, id: [u8; 16]) -> bool {
        if !self.seen_set.insert(id) {
            return false;
        }
        self.seen.push_back(id);
        if self.seen.len() > SEEN_IDS_MAX {
            if let Some(old) = self.seen.pop_front() {
                self.seen_set.remove(&old);
            }
        }
        debug_assert_eq!(self.seen.len(), self.seen_set.len());
        true
    }

    fn remember_init(&mut self, id: [u8; 32]) {
        if !self.inits_set.insert(id) {
            return;
        }
        self.inits.push_back(id);
        if self.inits.len() > ACCEPTED_INITS_MAX {
            if let Some(old) = self.inits.pop_front() {
                self.inits_set.remove(&old);
            }
        }
    }

    // ---- prekeys ------------------------------------------------------------------------------

    /// The storage (for the application to inspect or export).
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Drops the in-memory state without touching storage (a "restart" in tests).
    pub fn into_storage(self) -> S {
        self.storage
    }
}

fn key_identity(key: &str) -> Option<[u8; EC_KEY_BYTES]> {
    key.rsplit('/')
        .next()
        .and_then(unhex)
        .and_then(|b| <[u8; EC_KEY_BYTES]>::try_from(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 2 record (one permanent slot) loads with its keys, which the first prune dates
    /// today: they stay through today's window (a first contact made from the old slot may
    /// still be in a node's store), then go.
    #[test]
    fn version_2_prekeys_are_kept_through_todays_window_then_erased() {
        let mut b = vec![PREKEYS_VERSION_PERMANENT_SLOT];
        b.extend_from_slice(&7u32.to_be_bytes());
        b.push(1);
        b.extend_from_slice(&11u32.to_be_bytes());
        b.extend_from_slice(&[1; 32]);
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&12u32.to_be_bytes());
        b.extend_from_slice(&[2; 32]);
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&13u32.to_be_bytes());
        b.push(1);
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(&[3; 3]);
        let mut p = Prekeys::decode(&b).unwrap();
        let now = 1_795_774_800;
        assert_eq!(p.prune(now), 0);
        assert!(p.signed_prekey(11).is_some() && p.one_time_prekey(12).is_some());
        assert!(p.kem_prekey(13).is_some());
        // It survives a save and load in the new format.
        let mut p = Prekeys::decode(&p.encode()).unwrap();
        let until = slot_secrets_until(day_of(now));
        assert_eq!(p.prune(until - 1), 0);
        assert_eq!(p.prune(until), 3);
        assert!(p.signed_prekey(11).is_none() && p.one_time_prekey(12).is_none());
        assert!(p.kem_prekey(13).is_none());
        // A record of an unknown version is not one.
        b[0] = 9;
        assert!(Prekeys::decode(&b).is_none());
    }
}
