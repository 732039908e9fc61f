//! The session layer, sans-IO: identities, contacts, end-to-end sessions, an outbox with retry
//! and idempotent message ids, and the plans a connection carries out (which dests to listen on,
//! which to drain, which to register for push). It never touches a socket or a clock: the caller
//! passes the node's time and carries out what it returns ([`crate::chat`] does that with a
//! blocking [`crate::Client`]).
//!
//! Each user has an identity key (X25519, signs with XEdDSA), a mailbox key `MK` and a contact
//! secret `s_mbox`. Their **address**, shared out of band, is `MK ‖ IK`. First contact goes to
//! the recipient's intro mailbox (`MK` without `s_mbox`), the prekey slot is the intro dest of
//! epoch 0, and every message carries the sender's `MK` and `s_mbox` inside the encryption, so
//! replies go to the contact mailbox (`MK` with `s_mbox`), whose dests only contacts can compute.
//!
//! What the node sees of a message: the `dest`, a sealed envelope of a bucket size, and a
//! 64-bit id derived from the random message id (the same on every retry, so the node stores a
//! retried message once and the recipient shows it once).
//!
//! All state goes through the [`Storage`] trait: the application decides where it lives.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ferry_crypto::keys::{EC_KEY_BYTES, KeyPair, decode_ec};
use ferry_crypto::pqxdh::Bundle as CryptoBundle;
use ferry_crypto::session::{PrekeyStore, Received, Session, SessionError};
use ferry_crypto::{envelope, session};
use ferry_proto::addr::{BlindedSigner, NamespaceId, epoch_of};
use ferry_proto::frame::{Dest, SendStatus};
use ferry_proto::prekey::{Bundle, Upload};
use zeroize::Zeroizing;

use crate::{Contact, Mailbox, SdkError};

/// Version byte of the plaintext inside a session message.
pub const PAYLOAD_VERSION: u8 = 1;
/// Hours a node keeps a stored blob (its default TTL): the drain window.
pub const STORE_WINDOW_EPOCHS: u64 = 72;
/// Listen on the next epoch's dests this long before the hour turns.
pub const ROLLOVER_LEAD_S: u64 = 300;
/// Message ids remembered to drop duplicates.
pub const SEEN_IDS_MAX: usize = 4096;
/// Unacknowledged messages held for retry.
pub const OUTBOX_MAX: usize = 1024;
/// First retry after this long, doubling up to `RETRY_MAX_MS`.
pub const RETRY_BASE_MS: u64 = 1_000;
pub const RETRY_MAX_MS: u64 = 60_000;
/// One-time prekeys uploaded per refill, and the level that asks for one.
pub const PREKEYS_PER_REFILL: usize = 50;
pub const PREKEYS_LOW: u16 = 10;

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

/// Key-value storage the messenger keeps its state in. Keys are short ASCII paths
/// (`identity`, `contact/<hex>`, `session/<hex>`, `prekeys`, `outbox/<hex>`, `seen`); values are
/// opaque bytes, some of them secret: store them where the platform keeps secrets.
pub trait Storage {
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Stores `value` durably before returning (a message may be acknowledged after it).
    fn put(&mut self, key: &str, value: &[u8]) -> std::io::Result<()>;
    fn delete(&mut self, key: &str) -> std::io::Result<()>;
    /// Every key starting with `prefix`.
    fn keys(&self, prefix: &str) -> Vec<String>;
}

/// Storage in memory (tests, or an application that persists elsewhere).
#[derive(Debug, Default, Clone)]
pub struct MemoryStorage(pub BTreeMap<String, Vec<u8>>);

impl Storage for MemoryStorage {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.0.get(key).cloned()
    }
    fn put(&mut self, key: &str, value: &[u8]) -> std::io::Result<()> {
        self.0.insert(key.to_string(), value.to_vec());
        Ok(())
    }
    fn delete(&mut self, key: &str) -> std::io::Result<()> {
        self.0.remove(key);
        Ok(())
    }
    fn keys(&self, prefix: &str) -> Vec<String> {
        self.0
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Storage in a directory: one file per key (`/` becomes a subdirectory), written atomically
/// (temporary file, sync, rename), mode 0600.
#[derive(Debug, Clone)]
pub struct DirStorage {
    dir: std::path::PathBuf,
}

impl DirStorage {
    pub fn open(dir: impl Into<std::path::PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(DirStorage { dir })
    }
    fn path(&self, key: &str) -> std::path::PathBuf {
        self.dir.join(key)
    }
}

impl Storage for DirStorage {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(key)).ok()
    }
    fn put(&mut self, key: &str, value: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(key);
        let parent = path.parent().unwrap_or(&self.dir).to_path_buf();
        std::fs::create_dir_all(&parent)?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(value)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&parent)?.sync_all()
    }
    fn delete(&mut self, key: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
    fn keys(&self, prefix: &str) -> Vec<String> {
        let (dir, start) = match prefix.rsplit_once('/') {
            Some((d, s)) => (self.dir.join(d), (format!("{d}/"), s.to_string())),
            None => (self.dir.clone(), (String::new(), prefix.to_string())),
        };
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&start.1) && !n.ends_with(".tmp"))
                    .map(|n| format!("{}{n}", start.0))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

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
        let b = s
            .trim()
            .strip_prefix("ferry:")
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
    /// The contact's name (a new contact is named by its identity until renamed).
    pub from_name: String,
    pub msg_id: [u8; 16],
    pub body: Body,
}

/// A packet to send: `Client::send(dest, msg_id, 0, &payload)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub dest: Dest,
    pub msg_id: u64,
    pub payload: Vec<u8>,
}

/// A contact as the messenger keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub identity: [u8; EC_KEY_BYTES],
    pub mailbox: [u8; 32],
    /// Their contact-mailbox secret, once a message of theirs told it.
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
            name: String::from_utf8(b[65..].to_vec()).ok()?,
        })
    }
}

/// This device's prekey secrets, by id.
#[derive(Default)]
struct Prekeys {
    next_id: u32,
    spk: Option<(u32, [u8; 32])>,
    one_time: BTreeMap<u32, [u8; 32]>,
    /// id → (decapsulation key, last resort)
    kem: BTreeMap<u32, (Zeroizing<Vec<u8>>, bool)>,
}

impl Prekeys {
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut b = Zeroizing::new(Vec::new());
        b.extend_from_slice(&self.next_id.to_be_bytes());
        match &self.spk {
            Some((id, s)) => {
                b.push(1);
                b.extend_from_slice(&id.to_be_bytes());
                b.extend_from_slice(s);
            }
            None => b.push(0),
        }
        b.extend_from_slice(
            &u32::try_from(self.one_time.len())
                .unwrap_or(0)
                .to_be_bytes(),
        );
        for (id, s) in &self.one_time {
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(s);
        }
        b.extend_from_slice(&u32::try_from(self.kem.len()).unwrap_or(0).to_be_bytes());
        for (id, (dk, last)) in &self.kem {
            b.extend_from_slice(&id.to_be_bytes());
            b.push(u8::from(*last));
            b.extend_from_slice(&u32::try_from(dk.len()).unwrap_or(0).to_be_bytes());
            b.extend_from_slice(dk);
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
        let mut p = Prekeys {
            next_id: u32_of(take(4)?)?,
            ..Prekeys::default()
        };
        if take(1)?[0] == 1 {
            let id = u32_of(take(4)?)?;
            p.spk = Some((id, take(32)?.try_into().ok()?));
        }
        for _ in 0..u32_of(take(4)?)? {
            let id = u32_of(take(4)?)?;
            p.one_time.insert(id, take(32)?.try_into().ok()?);
        }
        for _ in 0..u32_of(take(4)?)? {
            let id = u32_of(take(4)?)?;
            let last = take(1)?[0] == 1;
            let n = u32_of(take(4)?)? as usize;
            p.kem.insert(id, (Zeroizing::new(take(n)?.to_vec()), last));
        }
        Some(p)
    }
}

impl PrekeyStore for Prekeys {
    fn signed_prekey(&self, id: u32) -> Option<KeyPair> {
        self.spk
            .filter(|(i, _)| *i == id)
            .map(|(_, s)| KeyPair::from_secret(s))
    }
    fn one_time_prekey(&self, id: u32) -> Option<KeyPair> {
        self.one_time.get(&id).map(|s| KeyPair::from_secret(*s))
    }
    fn kem_prekey(&self, id: u32) -> Option<Zeroizing<Vec<u8>>> {
        self.kem.get(&id).map(|(dk, _)| dk.clone())
    }
    fn consume(&mut self, one_time_prekey: Option<u32>, kem_prekey: u32) {
        if let Some(id) = one_time_prekey {
            self.one_time.remove(&id);
        }
        if self.kem.get(&kem_prekey).is_some_and(|(_, last)| !last) {
            self.kem.remove(&kem_prekey);
        }
    }
}

struct Outgoing {
    to: [u8; EC_KEY_BYTES],
    envelope: Vec<u8>,
    tries: u32,
    next_ms: u64,
}

/// Which of this user's mailboxes a dest belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Intro,
    Contact,
}

/// One user's session layer. Generic over where its state lives.
pub struct Messenger<S: Storage> {
    storage: S,
    ns: NamespaceId,
    identity: KeyPair,
    s_mbox: Zeroizing<[u8; 32]>,
    intro: Mailbox,
    contact_mailbox: Mailbox,
    peers: BTreeMap<[u8; EC_KEY_BYTES], Peer>,
    sessions: BTreeMap<[u8; EC_KEY_BYTES], Session>,
    prekeys: Prekeys,
    outbox: BTreeMap<u64, Outgoing>,
    seen: VecDeque<[u8; 16]>,
    seen_set: BTreeSet<[u8; 16]>,
    /// The dests of the last drain plan: which mailbox and epoch each belongs to.
    candidates: BTreeMap<Dest, (Which, u64)>,
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

impl<S: Storage> Messenger<S> {
    /// Opens the messenger kept in `storage`, creating a new identity if it holds none.
    pub fn open(storage: S, ns: NamespaceId) -> Result<Self, MessengerError> {
        let mut storage = storage;
        let id = match storage.get("identity") {
            Some(b) if b.len() == 96 => Zeroizing::new(b),
            Some(_) => return Err(MessengerError::Malformed("identity record")),
            None => {
                let mut b = Zeroizing::new(Vec::with_capacity(96));
                b.extend_from_slice(&random::<32>()?);
                b.extend_from_slice(&random::<32>()?);
                b.extend_from_slice(&random::<32>()?);
                storage
                    .put("identity", &b)
                    .map_err(MessengerError::Storage)?;
                b
            }
        };
        let arr = |r: std::ops::Range<usize>| -> [u8; 32] {
            let mut a = [0u8; 32];
            a.copy_from_slice(&id[r]);
            a
        };
        let identity = KeyPair::from_secret(arr(0..32));
        let mailbox_seed = Zeroizing::new(arr(32..64));
        let s_mbox = Zeroizing::new(arr(64..96));
        let mut m = Messenger {
            intro: Mailbox::from_seed(&mailbox_seed, ns, None),
            contact_mailbox: Mailbox::from_seed(&mailbox_seed, ns, Some(*s_mbox)),
            storage,
            ns,
            identity,
            s_mbox,
            peers: BTreeMap::new(),
            sessions: BTreeMap::new(),
            prekeys: Prekeys::default(),
            outbox: BTreeMap::new(),
            seen: VecDeque::new(),
            seen_set: BTreeSet::new(),
            candidates: BTreeMap::new(),
        };
        m.load()?;
        Ok(m)
    }

    fn load(&mut self) -> Result<(), MessengerError> {
        for key in self.storage.keys("contact/") {
            let identity = key_identity(&key)?;
            let b = self.storage.get(&key).unwrap_or_default();
            let p =
                Peer::decode(identity, &b).ok_or(MessengerError::Malformed("contact record"))?;
            self.peers.insert(identity, p);
        }
        for key in self.storage.keys("session/") {
            let identity = key_identity(&key)?;
            let b = Zeroizing::new(self.storage.get(&key).unwrap_or_default());
            self.sessions.insert(identity, Session::from_bytes(&b)?);
        }
        if let Some(b) = self.storage.get("prekeys") {
            let b = Zeroizing::new(b);
            self.prekeys =
                Prekeys::decode(&b).ok_or(MessengerError::Malformed("prekeys record"))?;
        }
        for key in self.storage.keys("outbox/") {
            let id = key
                .strip_prefix("outbox/")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or(MessengerError::Malformed("outbox key"))?;
            let b = self.storage.get(&key).unwrap_or_default();
            if b.len() < EC_KEY_BYTES {
                return Err(MessengerError::Malformed("outbox record"));
            }
            let mut to = [0u8; EC_KEY_BYTES];
            to.copy_from_slice(&b[..EC_KEY_BYTES]);
            self.outbox.insert(
                id,
                Outgoing {
                    to,
                    envelope: b[EC_KEY_BYTES..].to_vec(),
                    tries: 0,
                    next_ms: 0,
                },
            );
        }
        if let Some(b) = self.storage.get("seen") {
            for id in b.chunks_exact(16) {
                let mut a = [0u8; 16];
                a.copy_from_slice(id);
                self.remember(a);
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

    /// Adds (or renames) a contact.
    pub fn add_contact(&mut self, name: &str, address: &Address) -> Result<(), MessengerError> {
        let peer = match self.peers.get(&address.identity) {
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
        Ok(())
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
        self.sessions.contains_key(identity)
    }

    fn save_peer(&mut self, p: &Peer) -> Result<(), MessengerError> {
        self.storage
            .put(&format!("contact/{}", hex(&p.identity)), &p.encode())
            .map_err(MessengerError::Storage)
    }

    fn save_session(&mut self, identity: &[u8; EC_KEY_BYTES]) -> Result<(), MessengerError> {
        if let Some(s) = self.sessions.get(identity) {
            let b = s.to_bytes();
            self.storage
                .put(&format!("session/{}", hex(identity)), &b)
                .map_err(MessengerError::Storage)?;
        }
        Ok(())
    }

    fn save_prekeys(&mut self) -> Result<(), MessengerError> {
        let b = self.prekeys.encode();
        self.storage
            .put("prekeys", &b)
            .map_err(MessengerError::Storage)
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

    // ---- prekeys ------------------------------------------------------------------------------

    /// The prekey slot: the intro mailbox's dest of epoch 0, and the signer proving it
    /// (`Op::PrekeyUpdate`).
    pub fn prekey_slot(&self) -> Result<BlindedSigner, MessengerError> {
        Ok(self.intro.signer(0)?)
    }

    /// The slot of a contact's prekeys (fetch it with `Client::fetch_prekeys`).
    pub fn contact_prekey_slot(
        &self,
        identity: &[u8; EC_KEY_BYTES],
    ) -> Result<Dest, MessengerError> {
        let p = self
            .peers
            .get(identity)
            .ok_or(MessengerError::UnknownContact)?;
        Ok(Contact::new(&p.mailbox, self.ns, None)?.dest(0)?)
    }

    /// New prekeys to upload: the signed part (a new signed prekey and last-resort KEM key) when
    /// `signed` or when none exists yet, and `one_time` one-time keys of each kind. The secrets
    /// are stored before the uploads are returned.
    pub fn prekey_uploads(
        &mut self,
        signed: bool,
        one_time: usize,
    ) -> Result<Vec<Upload>, MessengerError> {
        let signed = signed || self.prekeys.spk.is_none();
        let plan = crate::prekeys::PrekeyPlan {
            signed,
            one_time_ec: one_time,
            one_time_pq: one_time,
            first_id: self.prekeys.next_id.max(1),
            replace_one_time: false,
        };
        let identity = crate::prekeys::IdentityKey::from_secret(*self.identity.secret());
        let dest = self.intro.dest(0)?;
        let (uploads, secrets) = crate::prekeys::generate(&identity, dest, plan)?;
        let mut max_id = plan.first_id;
        if let Some((id, s)) = secrets.signed_prekey {
            self.prekeys.spk = Some((id, s));
            max_id = max_id.max(id);
        }
        if let Some((id, dk)) = secrets.last_resort {
            // An older last-resort key stays usable for bundles fetched before.
            self.prekeys.kem.insert(id, (Zeroizing::new(dk), true));
            max_id = max_id.max(id);
        }
        for (id, s) in secrets.one_time_ec {
            self.prekeys.one_time.insert(id, s);
            max_id = max_id.max(id);
        }
        for (id, dk) in secrets.one_time_pq {
            self.prekeys.kem.insert(id, (Zeroizing::new(dk), false));
            max_id = max_id.max(id);
        }
        self.prekeys.next_id = max_id.wrapping_add(1);
        self.save_prekeys()?;
        Ok(uploads)
    }

    /// One-time keys to upload given how many the directory says are left (`PrekeyCount`).
    pub fn refill(&mut self, ec_left: u16, pq_left: u16) -> Result<Vec<Upload>, MessengerError> {
        if ec_left.min(pq_left) >= PREKEYS_LOW {
            return Ok(Vec::new());
        }
        self.prekey_uploads(false, PREKEYS_PER_REFILL)
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
        self.sessions.insert(*identity, s);
        self.save_session(identity)
    }

    /// The dest to reach `peer` at in `epoch`: its contact mailbox once known, else its intro
    /// mailbox.
    fn dest_of(&self, peer: &Peer, epoch: u64) -> Result<Dest, MessengerError> {
        Ok(Contact::new(&peer.mailbox, self.ns, peer.s_mbox)?.dest(epoch)?)
    }

    /// Encrypts `body` for a contact, puts it in the outbox and returns the packet to send now.
    /// `now_unix_s` is the node's time; `now_ms` any monotonic clock (for retries).
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
        let peer = self
            .peers
            .get(to)
            .ok_or(MessengerError::UnknownContact)?
            .clone();
        let msg_id: [u8; 16] = random()?;
        let mut pt = Zeroizing::new(Vec::with_capacity(66 + 64));
        pt.push(PAYLOAD_VERSION);
        pt.extend_from_slice(&self.intro.public().to_bytes());
        pt.extend_from_slice(&*self.s_mbox);
        body.encode(&mut pt);
        let me = session::identity_public(&self.identity);
        let session = self.sessions.get_mut(to).ok_or(MessengerError::NoSession)?;
        let envelope = session.seal(&mut rand_core::OsRng, &me, msg_id, &pt)?;
        self.save_session(to)?;
        let id = node_msg_id(&msg_id);
        let mut rec = Vec::with_capacity(EC_KEY_BYTES + envelope.len());
        rec.extend_from_slice(to);
        rec.extend_from_slice(&envelope);
        self.storage
            .put(&format!("outbox/{id:016x}"), &rec)
            .map_err(MessengerError::Storage)?;
        let t = Transmit {
            dest: self.dest_of(&peer, epoch_of(now_unix_s))?,
            msg_id: id,
            payload: envelope.clone(),
        };
        self.outbox.insert(
            id,
            Outgoing {
                to: *to,
                envelope,
                tries: 1,
                next_ms: now_ms + RETRY_BASE_MS,
            },
        );
        Ok(t)
    }

    /// The node's answer to a send. `Delivered` or `Stored` ends it; anything else is retried
    /// later with the same envelope and id (the node stores a message once per id).
    pub fn on_send_result(&mut self, msg_id: u64, status: SendStatus, now_ms: u64) {
        match status {
            SendStatus::Delivered | SendStatus::Stored => {
                // A failed delete only means a resend after a restart, which the recipient
                // drops as a duplicate.
                if self.outbox.remove(&msg_id).is_some() {
                    let _ = self.storage.delete(&format!("outbox/{msg_id:016x}"));
                }
            }
            _ => {
                if let Some(o) = self.outbox.get_mut(&msg_id) {
                    let backoff = RETRY_BASE_MS
                        .saturating_mul(1u64 << o.tries.min(6))
                        .min(RETRY_MAX_MS);
                    o.next_ms = now_ms + backoff;
                }
            }
        }
    }

    /// Messages waiting for an acknowledgement.
    pub fn unacknowledged(&self) -> usize {
        self.outbox.len()
    }

    /// What to send again now: every unacknowledged message whose retry time has come (all of
    /// them after a reconnect: pass `u64::MAX`), to the contact's dest of the current epoch.
    pub fn due(&mut self, now_unix_s: u64, now_ms: u64) -> Vec<Transmit> {
        let epoch = epoch_of(now_unix_s);
        let mut out = Vec::new();
        let ids: Vec<u64> = self
            .outbox
            .iter()
            .filter(|(_, o)| o.next_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(o) = self.outbox.get(&id) else {
                continue;
            };
            let Some(peer) = self.peers.get(&o.to) else {
                continue;
            };
            let Ok(dest) = self.dest_of(peer, epoch) else {
                continue;
            };
            out.push(Transmit {
                dest,
                msg_id: id,
                payload: o.envelope.clone(),
            });
            if let Some(o) = self.outbox.get_mut(&id) {
                o.tries = o.tries.saturating_add(1);
                let backoff = RETRY_BASE_MS
                    .saturating_mul(1u64 << o.tries.min(6))
                    .min(RETRY_MAX_MS);
                o.next_ms = now_ms.saturating_add(backoff);
            }
        }
        out
    }

    /// Opens a packet that arrived (live or drained). `Ok(None)`: a duplicate, already shown.
    /// An error means it did not authenticate (or is not for this user) and was dropped; no
    /// state changed.
    pub fn receive(&mut self, payload: &[u8]) -> Result<Option<Incoming>, MessengerError> {
        let inner = envelope::open_with(&self.identity, payload).map_err(SessionError::from)?;
        if self.seen_set.contains(&inner.msg_id) {
            return Ok(None);
        }
        let sender = inner.sender;
        let existing = self
            .sessions
            .get(&sender)
            .is_some_and(|s| !s.is_new_contact(&inner));
        let (received, new_session) = if existing {
            let s = self
                .sessions
                .get_mut(&sender)
                .ok_or(MessengerError::NoSession)?;
            // Work on a copy so that a payload we cannot parse leaves the session as it was.
            let mut copy = s.clone();
            let r = copy.receive(&mut rand_core::OsRng, &inner)?;
            (r, copy)
        } else {
            let mut prekeys = std::mem::take(&mut self.prekeys);
            let res = Session::accept(&mut rand_core::OsRng, &self.identity, &mut prekeys, &inner);
            self.prekeys = prekeys;
            let (s, r) = res?;
            self.save_prekeys()?;
            (r, s)
        };
        let Received {
            sender,
            msg_id,
            plaintext,
            ..
        } = received;
        let pt = Zeroizing::new(plaintext);
        if pt.len() < 65 || pt[0] != PAYLOAD_VERSION {
            return Err(MessengerError::Malformed("payload"));
        }
        let body = Body::decode(&pt[65..]).ok_or(MessengerError::Malformed("payload"))?;
        let mut mailbox = [0u8; 32];
        mailbox.copy_from_slice(&pt[1..33]);
        let mut s_mbox = [0u8; 32];
        s_mbox.copy_from_slice(&pt[33..65]);
        if ferry_proto::addr::MailboxPublic::from_bytes(&mailbox).is_err() {
            return Err(MessengerError::Malformed("payload"));
        }
        // Authenticated: commit the session, learn (or refresh) the sender's card.
        self.sessions.insert(sender, new_session);
        self.save_session(&sender)?;
        let peer = match self.peers.get(&sender) {
            Some(p) => Peer {
                mailbox,
                s_mbox: Some(s_mbox),
                ..p.clone()
            },
            None => Peer {
                name: hex(&sender[1..9]),
                identity: sender,
                mailbox,
                s_mbox: Some(s_mbox),
            },
        };
        if self.peers.get(&sender) != Some(&peer) {
            self.save_peer(&peer)?;
        }
        let from_name = peer.name.clone();
        self.peers.insert(sender, peer);
        self.remember(msg_id);
        let seen: Vec<u8> = self.seen.iter().flatten().copied().collect();
        self.storage
            .put("seen", &seen)
            .map_err(MessengerError::Storage)?;
        Ok(Some(Incoming {
            from: sender,
            from_name,
            msg_id,
            body,
        }))
    }

    // ---- what a connection proves, listens on and drains --------------------------------------

    fn signer(&self, which: Which, epoch: u64) -> Result<BlindedSigner, MessengerError> {
        Ok(match which {
            Which::Intro => self.intro.signer(epoch)?,
            Which::Contact => self.contact_mailbox.signer(epoch)?,
        })
    }

    /// The signers to prove `Op::Subscribe` with and subscribe to now: both mailboxes for the
    /// current epoch, and for the next one within `ROLLOVER_LEAD_S` of the hour's end (so live
    /// delivery has no gap when the hour turns). Call again at [`Messenger::next_listen_s`].
    pub fn listen_plan(&self, now_unix_s: u64) -> Result<Vec<BlindedSigner>, MessengerError> {
        let e = epoch_of(now_unix_s);
        let mut epochs = vec![e];
        if now_unix_s + ROLLOVER_LEAD_S >= (e + 1) * ferry_proto::limits::EPOCH_SECONDS {
            epochs.push(e + 1);
        }
        let mut out = Vec::new();
        for ep in epochs {
            out.push(self.signer(Which::Intro, ep)?);
            out.push(self.signer(Which::Contact, ep)?);
        }
        Ok(out)
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

    /// Every dest a stored blob for this user may be at: both mailboxes, epochs `[e−73, e+1]`
    /// (the store's 72 hours, with a clock-skew margin). Ask the node which hold blobs
    /// (`Client::query`), then prove only those ([`Messenger::drain_signers`]).
    pub fn drain_candidates(&mut self, now_unix_s: u64) -> Result<Vec<Dest>, MessengerError> {
        let e = epoch_of(now_unix_s);
        self.candidates.clear();
        for ep in e.saturating_sub(STORE_WINDOW_EPOCHS + 1)..=e + 1 {
            for which in [Which::Intro, Which::Contact] {
                let mb = match which {
                    Which::Intro => &self.intro,
                    Which::Contact => &self.contact_mailbox,
                };
                self.candidates.insert(mb.dest(ep)?, (which, ep));
            }
        }
        Ok(self.candidates.keys().copied().collect())
    }

    /// The signers for the dests the node said hold blobs (prove `Op::Drain`, then drain each).
    pub fn drain_signers(&self, holding: &[Dest]) -> Result<Vec<BlindedSigner>, MessengerError> {
        holding
            .iter()
            .filter_map(|d| self.candidates.get(d))
            .map(|(w, e)| self.signer(*w, *e))
            .collect()
    }

    /// The signers to prove `Op::PushRegister` with, so that a push token covers this user's
    /// dests for the next `hours` hours (register again before they run out).
    pub fn push_plan(
        &self,
        now_unix_s: u64,
        hours: u64,
    ) -> Result<Vec<BlindedSigner>, MessengerError> {
        let e = epoch_of(now_unix_s);
        let mut out = Vec::new();
        for ep in e..e + hours.max(1) {
            out.push(self.signer(Which::Intro, ep)?);
            out.push(self.signer(Which::Contact, ep)?);
        }
        Ok(out)
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

fn key_identity(key: &str) -> Result<[u8; EC_KEY_BYTES], MessengerError> {
    key.rsplit('/')
        .next()
        .and_then(unhex)
        .and_then(|b| <[u8; EC_KEY_BYTES]>::try_from(b).ok())
        .ok_or(MessengerError::Malformed("storage key"))
}
