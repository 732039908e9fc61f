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
#[derive(Debug)]
#[non_exhaustive]
pub enum MessengerError {
    Session(SessionError),
    Sdk(SdkError),
    /// No contact with this identity (add it first).
    UnknownContact,
    /// No session with this contact yet: fetch its bundle and call `start_session`.
    NoSession,
    /// The fetched bundle belongs to another identity than the contact's address says.
    IdentityMismatch,
    /// An address string or a stored record is malformed.
    Malformed(&'static str),
    /// The outbox is full: wait for the node to acknowledge what is in it.
    OutboxFull,
    /// The application's storage failed: the state change was not made durable.
    Storage(std::io::Error),
    /// A first-contact message whose session was accepted before: a replay, dropped.
    Replay,
    /// An argument out of range (the message says which).
    InvalidArgument(&'static str),
    /// No attachment is kept for this message id (fetched and forgotten already, or never
    /// received).
    UnknownAttachment,
    /// This identity's first contact is a request not accepted yet
    /// ([`Messenger::accept_request`]).
    NotAccepted,
    /// A packet dropped by policy (the message says why): a first contact off the intro
    /// mailbox, a packet on a contact's pairwise mailbox from someone else, or from an identity
    /// whose request was refused.
    Refused(&'static str),
}

impl std::fmt::Display for MessengerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessengerError::Session(e) => write!(f, "session: {e:?}"),
            MessengerError::Sdk(e) => write!(f, "{e}"),
            MessengerError::UnknownContact => write!(f, "unknown contact"),
            MessengerError::NoSession => write!(f, "no session with this contact yet"),
            MessengerError::IdentityMismatch => {
                write!(
                    f,
                    "the prekey bundle is not signed by the contact's identity"
                )
            }
            MessengerError::Malformed(what) => write!(f, "malformed {what}"),
            MessengerError::OutboxFull => write!(f, "outbox full"),
            MessengerError::Storage(e) => write!(f, "storage: {e}"),
            MessengerError::Replay => write!(f, "a replayed first-contact message"),
            MessengerError::InvalidArgument(m) => f.write_str(m),
            MessengerError::UnknownAttachment => {
                write!(f, "no attachment kept for this message id")
            }
            MessengerError::NotAccepted => {
                write!(
                    f,
                    "a request not accepted yet: accept it before writing back"
                )
            }
            MessengerError::Refused(why) => write!(f, "dropped: {why}"),
        }
    }
}
impl std::error::Error for MessengerError {}
impl From<SessionError> for MessengerError {
    fn from(e: SessionError) -> Self {
        MessengerError::Session(e)
    }
}
impl From<SdkError> for MessengerError {
    fn from(e: SdkError) -> Self {
        MessengerError::Sdk(e)
    }
}

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
/// Version 3: keys by slot day. A version 2 record (one permanent slot) loads with its keys
/// marked `LEGACY_DAY`; the first prune gives them today's day, so they stay until no first
/// contact made from the old slot can still be waiting in a node's store.
const PREKEYS_VERSION: u8 = 3;
const PREKEYS_VERSION_PERMANENT_SLOT: u8 = 2;
/// The day of keys loaded from a version 2 record, until the first prune dates them.
const LEGACY_DAY: u64 = u64::MAX;
/// Batches of random prekey ids drawn before giving up on ids that repeat held ones.
const PREKEY_ID_DRAWS_MAX: usize = 4;

/// When the secrets of keys last published in the slot of `day` may go: the slot and its head
/// expire `SLOT_GRACE_DAYS` after the day, and a first contact made from it may wait in the
/// node's store `STORE_WINDOW_EPOCHS` hours more. After it they are erased (forward secrecy).
fn slot_secrets_until(day: u64) -> u64 {
    slot_expires(day) + STORE_WINDOW_EPOCHS * ferry_proto::limits::EPOCH_SECONDS
}

/// When the slot of `day` (and its head's signed expiry) ends.
fn slot_expires(day: u64) -> u64 {
    (day + 1 + SLOT_GRACE_DAYS) * ferry_proto::addr::DAY_SECONDS
}

/// A signed prekey and its last-resort KEM key (in `Prekeys::kem`), sealed into the heads of
/// the slots of one period.
#[derive(Clone)]
struct SignedKeys {
    spk_id: u32,
    spk: [u8; 32],
    lr_id: u32,
    /// `day / SPK_ROTATE_DAYS` of the slots it is for.
    period: u64,
    /// The last slot day it was sealed into.
    last_day: u64,
}

/// This device's prekey secrets, by id, each with the last slot day it was published in.
#[derive(Default, Clone)]
struct Prekeys {
    /// Newest first, at most `SIGNED_PREKEYS_KEPT`.
    spks: Vec<SignedKeys>,
    /// id → (secret, slot day)
    one_time: BTreeMap<u32, ([u8; 32], u64)>,
    /// id → (decapsulation key, last resort, slot day)
    kem: BTreeMap<u32, (Zeroizing<Vec<u8>>, bool, u64)>,
    /// Slot days whose head the node accepted.
    published: BTreeSet<u64>,
}

impl Drop for Prekeys {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for k in &mut self.spks {
            k.spk.zeroize();
        }
        for (s, _) in self.one_time.values_mut() {
            s.zeroize();
        }
    }
}

impl Prekeys {
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut b = Zeroizing::new(Vec::new());
        b.push(PREKEYS_VERSION);
        assert!(self.spks.len() <= SIGNED_PREKEYS_KEPT);
        b.push(u8::try_from(self.spks.len()).expect("SIGNED_PREKEYS_KEPT fits a u8"));
        for k in &self.spks {
            b.extend_from_slice(&k.spk_id.to_be_bytes());
            b.extend_from_slice(&k.spk);
            b.extend_from_slice(&k.lr_id.to_be_bytes());
            b.extend_from_slice(&k.period.to_be_bytes());
            b.extend_from_slice(&k.last_day.to_be_bytes());
        }
        b.extend_from_slice(&prefix_u32(self.one_time.len()));
        for (id, (s, day)) in &self.one_time {
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(s);
            b.extend_from_slice(&day.to_be_bytes());
        }
        b.extend_from_slice(&prefix_u32(self.kem.len()));
        for (id, (dk, last, day)) in &self.kem {
            b.extend_from_slice(&id.to_be_bytes());
            b.push(u8::from(*last));
            b.extend_from_slice(&day.to_be_bytes());
            b.extend_from_slice(&prefix_u32(dk.len()));
            b.extend_from_slice(dk);
        }
        b.extend_from_slice(&prefix_u32(self.published.len()));
        for day in &self.published {
            b.extend_from_slice(&day.to_be_bytes());
        }
        b
    }

    fn decode(b: &[u8]) -> Option<Prekeys> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = b.get(at..at.checked_add(n)?)?;
            at += n;
            Some(s)
        };
        let u32_of = |s: &[u8]| -> Option<u32> { Some(u32::from_be_bytes(s.try_into().ok()?)) };
        let u64_of = |s: &[u8]| -> Option<u64> { Some(u64::from_be_bytes(s.try_into().ok()?)) };
        // A version 2 record (`next_id` u32 first) has no days, no pairing of signed prekeys
        // with their last-resort keys and no published days: its keys get `LEGACY_DAY`.
        let v3 = match take(1)?[0] {
            PREKEYS_VERSION => true,
            PREKEYS_VERSION_PERMANENT_SLOT => {
                take(4)?;
                false
            }
            _ => return None,
        };
        let mut p = Prekeys::default();
        let n = take(1)?[0];
        if usize::from(n) > SIGNED_PREKEYS_KEPT {
            return None;
        }
        for _ in 0..n {
            let spk_id = u32_of(take(4)?)?;
            let spk = take(32)?.try_into().ok()?;
            let (lr_id, period, last_day) = if v3 {
                (u32_of(take(4)?)?, u64_of(take(8)?)?, u64_of(take(8)?)?)
            } else {
                // Unpaired: its last-resort key is kept by its own day.
                (0, u64::MAX, LEGACY_DAY)
            };
            p.spks.push(SignedKeys {
                spk_id,
                spk,
                lr_id,
                period,
                last_day,
            });
        }
        for _ in 0..u32_of(take(4)?)? {
            let id = u32_of(take(4)?)?;
            let s = take(32)?.try_into().ok()?;
            let day = if v3 { u64_of(take(8)?)? } else { LEGACY_DAY };
            p.one_time.insert(id, (s, day));
        }
        for _ in 0..u32_of(take(4)?)? {
            let id = u32_of(take(4)?)?;
            let last = take(1)?[0] == 1;
            let day = if v3 { u64_of(take(8)?)? } else { LEGACY_DAY };
            let n = u32_of(take(4)?)? as usize;
            p.kem
                .insert(id, (Zeroizing::new(take(n)?.to_vec()), last, day));
        }
        if v3 {
            for _ in 0..u32_of(take(4)?)? {
                p.published.insert(u64_of(take(8)?)?);
            }
        }
        Some(p)
    }

    /// Whether `id` is any key's id here.
    fn holds(&self, id: u32) -> bool {
        self.kem.contains_key(&id)
            || self.one_time.contains_key(&id)
            || self.spks.iter().any(|k| k.spk_id == id)
    }

    /// Erases the secrets no live slot or stored first contact can need any more (at
    /// `now_unix_s`), and forgets published days past their slot. Returns how many keys went.
    fn prune(&mut self, now_unix_s: u64) -> usize {
        // Keys of the old permanent slot: dated today, kept through today's window.
        let today = day_of(now_unix_s);
        let date = |d: &mut u64| {
            if *d == LEGACY_DAY {
                *d = today;
            }
        };
        self.spks.iter_mut().for_each(|k| date(&mut k.last_day));
        self.one_time.values_mut().for_each(|(_, d)| date(d));
        self.kem.values_mut().for_each(|(_, _, d)| date(d));
        let before = self.one_time.len() + self.kem.len() + self.spks.len();
        let live = |day: u64| slot_secrets_until(day) > now_unix_s;
        self.one_time.retain(|_, (s, day)| {
            let keep = live(*day);
            if !keep {
                zeroize::Zeroize::zeroize(s);
            }
            keep
        });
        self.spks.retain_mut(|k| {
            let keep = live(k.last_day);
            if !keep {
                zeroize::Zeroize::zeroize(&mut k.spk);
            }
            keep
        });
        let lr: BTreeSet<u32> = self
            .spks
            .iter()
            .filter(|k| k.period != u64::MAX)
            .map(|k| k.lr_id)
            .collect();
        // A last-resort key goes with its signed prekey (or, unpaired, by its own day).
        self.kem
            .retain(|id, (_, last, day)| (*last && lr.contains(id)) || live(*day));
        self.published.retain(|day| slot_expires(*day) > now_unix_s);
        before - (self.one_time.len() + self.kem.len() + self.spks.len())
    }
}

impl PrekeyStore for Prekeys {
    fn signed_prekey(&self, id: u32) -> Option<KeyPair> {
        self.spks
            .iter()
            .find(|k| k.spk_id == id)
            .map(|k| KeyPair::from_secret(k.spk))
    }
    fn one_time_prekey(&self, id: u32) -> Option<KeyPair> {
        self.one_time
            .get(&id)
            .map(|(s, _)| KeyPair::from_secret(*s))
    }
    fn kem_prekey(&self, id: u32) -> Option<Zeroizing<Vec<u8>>> {
        self.kem.get(&id).map(|(dk, _, _)| dk.clone())
    }
    fn consume(&mut self, one_time_prekey: Option<u32>, kem_prekey: u32) {
        if let Some(id) = one_time_prekey {
            if let Some((mut s, _)) = self.one_time.remove(&id) {
                zeroize::Zeroize::zeroize(&mut s);
            }
        }
        if self.kem.get(&kem_prekey).is_some_and(|(_, last, _)| !last) {
            self.kem.remove(&kem_prekey);
        }
    }
}

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

    fn unrefuse(&mut self, identity: &[u8; EC_KEY_BYTES]) -> Result<(), MessengerError> {
        if let Some(i) = self.refused.iter().position(|r| r == identity) {
            self.refused.remove(i);
            self.save_refused()?;
        }
        Ok(())
    }

    fn save_refused(&mut self) -> Result<(), MessengerError> {
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

    /// The signer of this user's prekey slot of `day` (`ferry_proto::addr::day_of`): it
    /// proves `Op::PrekeyUpdate` for the slot's dest.
    pub fn prekey_slot(&self, day: u64) -> Result<BlindedSigner, MessengerError> {
        Ok(self.intro.slot_signer(day)?)
    }

    /// Where a contact's prekeys of `day` are and how to open them (fetch with
    /// `Client::fetch_prekeys`).
    pub fn contact_prekey_slot(
        &self,
        identity: &[u8; EC_KEY_BYTES],
        day: u64,
    ) -> Result<SlotOpener, MessengerError> {
        let p = self
            .peers
            .get(identity)
            .ok_or(MessengerError::UnknownContact)?;
        Ok(Contact::new(&p.mailbox, self.ns, None)?.prekey_slot(day)?)
    }

    /// The slots to fetch a contact's bundle from at `now_unix_s`, in order: today's, then
    /// yesterday's (the owner's day may not have turned yet, or its device was offline past
    /// `SLOT_DAYS_AHEAD` days and only the grace keeps yesterday's).
    pub fn contact_prekey_slots(
        &self,
        identity: &[u8; EC_KEY_BYTES],
        now_unix_s: u64,
    ) -> Result<Vec<SlotOpener>, MessengerError> {
        let today = day_of(now_unix_s);
        let mut slots = vec![self.contact_prekey_slot(identity, today)?];
        if today > 0 {
            slots.push(self.contact_prekey_slot(identity, today - 1)?);
        }
        Ok(slots)
    }

    /// What to publish at `now_unix_s`: every slot from today to `SLOT_DAYS_AHEAD` days ahead
    /// whose head the node has not accepted yet, each with its head (the signed prekey of its
    /// day's `SPK_ROTATE_DAYS` period, new when the period has none yet) and `one_time` (at
    /// most 100) one-time keys of each kind. Erases the secrets no slot needs any more first.
    /// The secrets are stored before the uploads are returned; after the node accepts a slot's
    /// uploads, call [`Messenger::slot_published`].
    pub fn prekey_publication(
        &mut self,
        now_unix_s: u64,
        one_time: usize,
    ) -> Result<Vec<SlotUploads>, MessengerError> {
        if one_time > ferry_proto::prekey::ONE_TIME_KEYS_MAX {
            return Err(MessengerError::InvalidArgument(
                "at most 100 one-time prekeys per slot",
            ));
        }
        if self.prekeys.prune(now_unix_s) > 0 {
            self.save_prekeys()?;
        }
        let today = day_of(now_unix_s);
        let mut out = Vec::new();
        for day in today..=today + SLOT_DAYS_AHEAD {
            if self.prekeys.published.contains(&day) {
                continue;
            }
            let uploads = self.slot_uploads(day, true, one_time, now_unix_s)?;
            out.push(SlotUploads {
                day,
                signer: self.prekey_slot(day)?,
                uploads,
            });
        }
        Ok(out)
    }

    /// The node accepted the uploads of the slot of `day`.
    pub fn slot_published(&mut self, day: u64) -> Result<(), MessengerError> {
        if self.prekeys.published.insert(day) {
            self.save_prekeys()?;
        }
        Ok(())
    }

    /// The node does not hold the slot of `day` although it accepted it (it lost its journal, or
    /// this is another node, or it expired early): publish it again at the next
    /// [`Messenger::prekey_publication`].
    pub fn slot_lost(&mut self, day: u64) -> Result<(), MessengerError> {
        if self.prekeys.published.remove(&day) {
            self.save_prekeys()?;
        }
        Ok(())
    }

    /// One-time keys to upload to the slot of `day` given how many the directory says are left
    /// (`PrekeyCount`): `PREKEYS_PER_REFILL` of each kind when either runs below `PREKEYS_LOW`.
    pub fn refill(
        &mut self,
        day: u64,
        ec_left: u16,
        pq_left: u16,
        now_unix_s: u64,
    ) -> Result<Vec<Upload>, MessengerError> {
        if ec_left.min(pq_left) >= PREKEYS_LOW {
            return Ok(Vec::new());
        }
        self.slot_uploads(day, false, PREKEYS_PER_REFILL, now_unix_s)
    }

    /// Generates and seals keys for the slot of `day`, stores their secrets, returns the
    /// uploads.
    fn slot_uploads(
        &mut self,
        day: u64,
        head: bool,
        one_time: usize,
        now_unix_s: u64,
    ) -> Result<Vec<Upload>, MessengerError> {
        use crate::prekeys::{HeadPlan, PrekeyIds, PrekeyPlan};
        let expires = slot_expires(day);
        if expires <= now_unix_s {
            return Err(MessengerError::InvalidArgument("that slot's day is over"));
        }
        let period = day / SPK_ROTATE_DAYS;
        let reuse = self.prekeys.spks.iter().position(|k| k.period == period);
        let head_plan = match (head, reuse) {
            (false, _) => HeadPlan::None,
            (true, None) => HeadPlan::New,
            (true, Some(i)) => {
                let k = &self.prekeys.spks[i];
                let dk = self
                    .prekeys
                    .kem
                    .get(&k.lr_id)
                    .ok_or(MessengerError::Malformed("prekeys record"))?;
                HeadPlan::Reuse {
                    spk: (k.spk_id, Zeroizing::new(k.spk)),
                    last_resort: (k.lr_id, dk.0.clone()),
                }
            }
        };
        let plan = PrekeyPlan {
            head: head_plan,
            one_time_ec: one_time,
            one_time_pq: one_time,
            ids: PrekeyIds::Random,
            replace_one_time: false,
            expires,
            ttl_s: u32::try_from(expires - now_unix_s).unwrap_or(u32::MAX),
        };
        let identity = crate::prekeys::IdentityKey::from_secret(*self.identity.secret());
        let signer = self.intro.slot_signer(day)?;
        let sealer = ferry_proto::prekey::SlotSealer::new(self.intro.slot_key(day), &signer);
        // Random ids: one that repeats an id this messenger still holds (a chance of about
        // 200 × 400 in 2^32 per upload) is drawn again with the whole batch.
        let mut attempt = 0;
        let (uploads, secrets) = loop {
            let (uploads, secrets) = crate::prekeys::generate(&identity, &sealer, plan.clone())?;
            if !secrets.ids().any(|id| self.prekeys.holds(id)) {
                break (uploads, secrets);
            }
            attempt += 1;
            if attempt >= PREKEY_ID_DRAWS_MAX {
                return Err(MessengerError::InvalidArgument(
                    "prekey ids kept colliding with held ones",
                ));
            }
        };
        let mut next = self.prekeys.clone();
        match (secrets.signed_prekey, secrets.last_resort) {
            (Some((spk_id, spk)), Some((lr_id, dk))) => {
                next.kem.insert(lr_id, (Zeroizing::new(dk), true, day));
                next.spks.insert(
                    0,
                    SignedKeys {
                        spk_id,
                        spk,
                        lr_id,
                        period,
                        last_day: day,
                    },
                );
                // Past the bound, the one whose slots ended first goes (by day, not by order: a
                // clock set back must not cut a key still in use).
                while next.spks.len() > SIGNED_PREKEYS_KEPT {
                    let oldest = next
                        .spks
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, k)| k.last_day)
                        .map_or(0, |(i, _)| i);
                    next.spks.remove(oldest);
                }
                let lr: BTreeSet<u32> = next.spks.iter().map(|k| k.lr_id).collect();
                next.kem
                    .retain(|id, (_, last, _)| !*last || lr.contains(id));
            }
            _ => {
                if let Some(k) = reuse.and_then(|i| next.spks.get_mut(i)).filter(|_| head) {
                    k.last_day = k.last_day.max(day);
                }
            }
        }
        for (id, s) in secrets.one_time_ec {
            next.one_time.insert(id, (s, day));
        }
        for (id, dk) in secrets.one_time_pq {
            next.kem.insert(id, (Zeroizing::new(dk), false, day));
        }
        self.prekeys = next;
        self.save_prekeys()?;
        Ok(uploads)
    }

    // ---- sessions -------------------------------------------------------------------------------

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
    fn dest_of(&self, peer: &Peer, epoch: u64) -> Result<Dest, MessengerError> {
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
    fn capability_of(
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
    fn which_of(&self, dest: &Dest) -> Option<Which> {
        self.candidates
            .get(dest)
            .or_else(|| self.listening.get(dest))
            .or_else(|| self.listened.get(dest))
            .map(|(w, _)| *w)
    }

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

    fn signer(&self, which: Which, epoch: u64) -> Result<BlindedSigner, MessengerError> {
        Ok(match which {
            Which::Intro => self.intro.signer(epoch)?,
            Which::Pair(p) => self.pair_mailbox(&p).signer(epoch)?,
            Which::Shared => self.shared_mailbox().signer(epoch)?,
        })
    }

    /// The shared contact mailbox of a messenger from before pairwise mailboxes.
    fn shared_mailbox(&self) -> Mailbox {
        Mailbox::from_seed(&self.mailbox_seed, self.ns, Some(*self.s_mbox))
    }

    /// Whether the old shared contact mailbox is still drained and listened on now (in the hour
    /// `e`): until the store's window has passed since the update.
    fn shared_active(&self, e: u64) -> bool {
        matches!(self.shared_mailbox_since, Some(since) if since == 0
            || e <= since.saturating_add(STORE_WINDOW_EPOCHS + 1))
    }

    /// The pairwise mailbox this user keeps for the contact `peer`.
    fn pair_mailbox(&self, peer: &[u8; EC_KEY_BYTES]) -> Mailbox {
        Mailbox::from_seed(
            &self.mailbox_seed,
            self.ns,
            Some(pair_secret(&self.s_mbox, peer)),
        )
    }

    /// (which mailbox, blinding epoch, signer) of every dest to listen on for the hour epochs
    /// `hours`: the intro mailbox's of each hour, and each contact's pairwise mailbox's of each
    /// day they fall in (requests have none: nothing was sent to them).
    fn plan_for(
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
    fn listen_plan_full(
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
