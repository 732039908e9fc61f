//! ferry for mobile and scripting languages: the SDK's messenger and a blocking connection,
//! exported with uniffi (Kotlin and Swift for apps; Python, which the test suite drives).
//!
//! ```python
//! m = Messenger.open("/app/private/ferry", NAMESPACE)   # keys and sessions live in this dir
//! c = Connection.connect("relay.example")               # TLS, port 7443, public CAs
//! # or Connection.connect("ferry+tls://relay.example:7443", "/app/ca.pem") for a private CA
//! c.publish_prekeys(m, 20)                               # once, and when running low
//! m.add_contact("bob", "ferry:…")                        # bob's address, out of band
//! c.send_text(m, "bob", "hello")                         # first contact through his prekeys
//! for msg in c.sync(m): print(msg.from_name, msg.text)   # what was stored while offline
//! for msg in c.pump(m, 1000): print(msg.text)             # then live, as it comes
//! for f in m.attachments(): open(f.file_name, "wb").write(c.fetch_attachment(m, f.id))
//! ```

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_sdk::chat;
use ferry_sdk::messenger::{self, Address, Body, DirStorage, Incoming};
use ferry_sdk::{ConnectOptions, NamespaceId, PushProvider, Trust};

uniffi::setup_scaffolding!();

/// Every failure, by kind, with its message. In Kotlin, Swift and Python each kind is its own
/// exception class under `FerryError`, so an app can tell what to do: fix its input, retry
/// later, ask the user to check the device's clock, or report a bug.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum FerryError {
    /// Something the app passed is malformed or out of range: a URL, an address, an id of the
    /// wrong length, a push token too long, a request not accepted before writing back.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such contact, attachment or session (add the contact, or fetch its bundle first).
    #[error("{0}")]
    NotFound(String),
    /// The node is unreachable, the connection closed or timed out, or the node sent what the
    /// protocol does not allow: retry later, or with another node.
    #[error("{0}")]
    Network(String),
    /// TLS failed: the node's certificate is not trusted for its name, or the CA file given is
    /// unusable.
    #[error("{0}")]
    Tls(String),
    /// The node refused the request (a node error, a prekey, push or media refusal, a proof
    /// it wants first); the message names the status.
    #[error("{0}")]
    Refused(String),
    /// Full for now (the outbox waits for the node's acknowledgements, a drain is running,
    /// too many unread events): retry once the current work is done.
    #[error("{0}")]
    Busy(String),
    /// The node's clock and this device's differ by more than five minutes
    /// (`ferry_sdk::CLOCK_SKEW_S_MAX`): nothing was proven or sent for the node's hours. Ask the
    /// user to check the device's time, or use another node.
    #[error("{0}")]
    ClockSkew(String),
    /// A bundle, message or session failed authentication or does not belong to this contact,
    /// or a packet was dropped by policy: nothing was changed.
    #[error("{0}")]
    Crypto(String),
    /// The messenger's state directory failed: the change was not made durable.
    #[error("{0}")]
    Storage(String),
    /// A bug, or a panic earlier on this object.
    #[error("{0}")]
    Internal(String),
}

fn invalid(what: impl std::fmt::Display) -> FerryError {
    FerryError::InvalidArgument(what.to_string())
}

fn poisoned(what: &str) -> FerryError {
    FerryError::Internal(format!("{what} poisoned by a panic"))
}

/// An SDK error, by kind.
fn sdk_err(e: ferry_sdk::SdkError) -> FerryError {
    use ferry_sdk::SdkError as E;
    let m = e.to_string();
    match e {
        E::ClockSkew { .. } => FerryError::ClockSkew(m),
        E::Io(_)
        | E::Closed
        | E::Timeout
        | E::Resolve { .. }
        | E::Protocol(_)
        | E::NodeClock { .. } => FerryError::Network(m),
        E::Tls(_) | E::Ca { .. } | E::ServerName { .. } => FerryError::Tls(m),
        E::Url(_) => FerryError::InvalidArgument(m),
        E::Node { .. } | E::NotProven | E::Prekey { .. } | E::Push(_) | E::Blob(_) => {
            FerryError::Refused(m)
        }
        E::Busy | E::Backlog => FerryError::Busy(m),
        E::BadBundle(_) | E::Addr(_) => FerryError::Crypto(m),
        _ => FerryError::Internal(m),
    }
}

/// A messenger error, by kind.
fn msg_err(e: messenger::MessengerError) -> FerryError {
    use messenger::MessengerError as E;
    let m = e.to_string();
    match e {
        E::Sdk(e) => sdk_err(e),
        E::Session(_) | E::IdentityMismatch | E::Replay | E::Refused(_) => FerryError::Crypto(m),
        E::UnknownContact | E::NoSession | E::UnknownAttachment => FerryError::NotFound(m),
        E::Malformed(_) | E::InvalidArgument(_) | E::NotAccepted => FerryError::InvalidArgument(m),
        E::OutboxFull => FerryError::Busy(m),
        E::Storage(_) => FerryError::Storage(m),
        _ => FerryError::Internal(m),
    }
}

/// The URL to connect to: as given when it names a scheme (`ferry://` asks for plain TCP
/// explicitly), else TLS (`ferry+tls://` prepended: `relay.example`, `relay.example:7443`).
fn node_url(url: &str) -> String {
    let url = url.trim();
    if url.contains("://") {
        url.to_string()
    } else {
        format!("{}://{url}", ferry_sdk::SCHEME_TLS)
    }
}

/// A message that arrived, authenticated and decrypted.
#[derive(Debug, uniffi::Record)]
pub struct Message {
    /// The message id (16 bytes): a file is fetched by it with `Connection.fetch_attachment`.
    pub id: Vec<u8>,
    pub from_name: String,
    /// The sender's encoded identity key (33 bytes).
    pub from_identity: Vec<u8>,
    /// The bytes sent (for text, UTF-8).
    pub data: Vec<u8>,
    /// The text, when the bytes are UTF-8 and not a file.
    pub text: Option<String>,
    /// For a file: its name. The file stays in `Messenger.attachments` until fetched with
    /// `Connection.fetch_attachment` (or forgotten).
    pub file_name: Option<String>,
    pub file_bytes: u64,
    /// The attachment descriptor to pass to `Connection.fetch_file`.
    pub file_ref: Vec<u8>,
    /// From a stranger whose first contact waits for the user: show it as a request, and
    /// `Messenger.accept_request` or `Messenger.refuse_request` it (nothing is sent back before).
    pub is_request: bool,
}

fn message(m: Incoming) -> Message {
    let (data, text, file_name, file_bytes, file_ref) = match &m.body {
        Body::Data(d) => (
            d.clone(),
            String::from_utf8(d.clone()).ok(),
            None,
            0,
            Vec::new(),
        ),
        Body::Attachment {
            plaintext_bytes,
            name,
            ..
        } => (
            Vec::new(),
            None,
            Some(name.clone()),
            *plaintext_bytes,
            m.body.to_bytes(),
        ),
    };
    Message {
        id: m.msg_id.to_vec(),
        from_name: m.from_name,
        from_identity: m.from.to_vec(),
        data,
        text,
        file_name,
        file_bytes,
        file_ref,
        is_request: m.request,
    }
}

/// A push provider.
#[derive(Debug, Clone, Copy, uniffi::Enum)]
pub enum PushKind {
    Apns,
    Fcm,
    WebPush,
}

/// One user's identity, contacts and sessions, kept in a directory the app owns.
#[derive(uniffi::Object)]
pub struct Messenger {
    inner: Mutex<messenger::Messenger<DirStorage>>,
}

impl std::fmt::Debug for Messenger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messenger").finish_non_exhaustive()
    }
}

impl Messenger {
    fn lock(&self) -> Result<MutexGuard<'_, messenger::Messenger<DirStorage>>, FerryError> {
        self.inner.lock().map_err(|_| poisoned("messenger"))
    }
}

#[uniffi::export]
impl Messenger {
    /// Opens the messenger in `state_dir` (created with a new identity if empty). `namespace` is
    /// the application's 32-byte namespace id.
    #[uniffi::constructor]
    pub fn open(state_dir: String, namespace: Vec<u8>) -> Result<Arc<Self>, FerryError> {
        let ns: [u8; 32] = namespace
            .try_into()
            .map_err(|_| invalid("the namespace id must be 32 bytes"))?;
        let storage = DirStorage::open(state_dir)
            .map_err(|e| FerryError::Storage(format!("state directory: {e}")))?;
        let m = messenger::Messenger::open(storage, NamespaceId(ns)).map_err(msg_err)?;
        Ok(Arc::new(Messenger {
            inner: Mutex::new(m),
        }))
    }

    /// This user's address, to share with contacts.
    pub fn address(&self) -> Result<String, FerryError> {
        Ok(self.lock()?.address().to_string())
    }

    /// Adds (or renames) a contact by address.
    pub fn add_contact(&self, name: String, address: String) -> Result<(), FerryError> {
        let a: Address = address.parse().map_err(msg_err)?;
        self.lock()?.add_contact(&name, &a).map_err(msg_err)
    }

    /// Contact names.
    pub fn contacts(&self) -> Result<Vec<String>, FerryError> {
        Ok(self.lock()?.contacts().map(|p| p.name.clone()).collect())
    }

    /// The encoded identities (33 bytes) of strangers whose first contact waits as a request.
    pub fn requests(&self) -> Result<Vec<Vec<u8>>, FerryError> {
        Ok(self
            .lock()?
            .requests()
            .map(|p| p.identity.to_vec())
            .collect())
    }

    /// Makes a request (by its identity, `Message.from_identity`) a contact named `name`.
    pub fn accept_request(&self, identity: Vec<u8>, name: String) -> Result<(), FerryError> {
        self.lock()?
            .accept_request(&identity_of(identity)?, &name)
            .map_err(msg_err)
    }

    /// Refuses a request: its packets are dropped from now on.
    pub fn refuse_request(&self, identity: Vec<u8>) -> Result<(), FerryError> {
        self.lock()?
            .refuse_request(&identity_of(identity)?)
            .map_err(msg_err)
    }

    /// Files received and not fetched yet (kept across restarts).
    pub fn attachments(&self) -> Result<Vec<Message>, FerryError> {
        Ok(self
            .lock()?
            .attachments()
            .map_err(msg_err)?
            .into_iter()
            .map(message)
            .collect())
    }

    /// Forgets a file received (not wanted) by its message id.
    pub fn forget_attachment(&self, id: Vec<u8>) -> Result<(), FerryError> {
        self.lock()?
            .forget_attachment(&msg_id(id)?)
            .map_err(msg_err)
    }
}

fn identity_of(id: Vec<u8>) -> Result<[u8; 33], FerryError> {
    id.try_into()
        .map_err(|_| invalid("an identity is 33 bytes (Message.from_identity)"))
}

fn msg_id(id: Vec<u8>) -> Result<[u8; 16], FerryError> {
    id.try_into()
        .map_err(|_| invalid("a message id is 16 bytes"))
}

/// One monotonic clock for every connection: retry times in a messenger's outbox outlive the
/// connection that set them.
fn clock() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// A blocking connection to a node that proves this user's dests (listen, drain, prekeys,
/// push), and beside it the connections that send and fetch prekeys, which never prove.
#[derive(uniffi::Object)]
pub struct Connection {
    client: Mutex<ferry_sdk::Client>,
    sender: Mutex<chat::Sender>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Connection {
    fn lock(&self) -> Result<MutexGuard<'_, ferry_sdk::Client>, FerryError> {
        self.client.lock().map_err(|_| poisoned("connection"))
    }
    fn sender(&self) -> Result<MutexGuard<'_, chat::Sender>, FerryError> {
        self.sender.lock().map_err(|_| poisoned("connection"))
    }
}

fn contact_id(m: &messenger::Messenger<DirStorage>, name: &str) -> Result<[u8; 33], FerryError> {
    m.contact(name)
        .map(|p| p.identity)
        .ok_or_else(|| FerryError::NotFound(format!("no contact named {name}")))
}

#[uniffi::export]
impl Connection {
    /// Connects to the node at `url`: `host[:port]` or `ferry+tls://host[:port]` (TLS 1.3, port
    /// 7443 unless given), or, asked for explicitly, `ferry://host[:port]` (plain TCP, port
    /// 7700). A TLS node's certificate must chain to a public CA, or to the PEM certificates in
    /// `ca_file` when given. Sends and prekey fetches open connections of their own to the same
    /// node. A node whose clock is over five minutes from this device's is refused with
    /// `FerryError.ClockSkew`.
    #[uniffi::constructor(default(ca_file = None))]
    pub fn connect(url: String, ca_file: Option<String>) -> Result<Arc<Self>, FerryError> {
        let opts = ConnectOptions {
            trust: ca_file.map_or(Trust::PublicRoots, |f| Trust::CaFile(f.into())),
            ..Default::default()
        };
        let url = node_url(&url);
        let client = ferry_sdk::Client::connect_url(&url, &opts).map_err(sdk_err)?;
        Ok(Arc::new(Connection {
            client: Mutex::new(client),
            sender: Mutex::new(chat::Sender::new(&url, opts)),
        }))
    }

    /// Publishes the prekey slots (one a day, a week ahead) the node does not hold yet, with
    /// `one_time` (at most 100) one-time keys of each kind in each; each slot goes on a
    /// connection of its own. Then `refill_prekeys` at every start.
    pub fn publish_prekeys(&self, m: Arc<Messenger>, one_time: u32) -> Result<(), FerryError> {
        let mut sender = self.sender()?;
        let mut m = m.lock()?;
        sender
            .publish_prekeys(&mut m, one_time as usize)
            .map_err(msg_err)?;
        Ok(())
    }

    /// Publishes the slots that are missing and tops today's one-time prekeys up when the
    /// directory says they run low (call it at every start: a new day's slot is published
    /// then, and the signed prekey rotates weekly).
    pub fn refill_prekeys(&self, m: Arc<Messenger>) -> Result<(), FerryError> {
        let mut sender = self.sender()?;
        let mut m = m.lock()?;
        sender.refill_prekeys(&mut m).map_err(msg_err)
    }

    /// Sends text to a contact (first contact through its prekeys).
    pub fn send_text(
        &self,
        m: Arc<Messenger>,
        contact: String,
        text: String,
    ) -> Result<(), FerryError> {
        let mut sender = self.sender()?;
        let mut m = m.lock()?;
        let to = contact_id(&m, &contact)?;
        sender
            .send(&mut m, &to, &Body::Data(text.into_bytes()), clock())
            .map_err(msg_err)?;
        Ok(())
    }

    /// Encrypts `data` as a file, uploads it to media storage and sends it to a contact.
    pub fn send_file(
        &self,
        m: Arc<Messenger>,
        contact: String,
        name: String,
        data: Vec<u8>,
    ) -> Result<(), FerryError> {
        let mut c = self.lock()?;
        let mut sender = self.sender()?;
        let mut m = m.lock()?;
        let to = contact_id(&m, &contact)?;
        chat::send_file(&mut c, &mut sender, &mut m, &to, &name, &data[..], clock())
            .map_err(msg_err)
    }

    /// Downloads and decrypts a file received (`Message.id`, `Messenger.attachments`), then
    /// forgets it. If the download fails the file stays kept: fetch it again.
    pub fn fetch_attachment(&self, m: Arc<Messenger>, id: Vec<u8>) -> Result<Vec<u8>, FerryError> {
        let id = msg_id(id)?;
        let mut c = self.lock()?;
        let mut m = m.lock()?;
        let mut out = Vec::new();
        chat::fetch_attachment(&mut c, &mut m, &id, &mut out).map_err(msg_err)?;
        Ok(out)
    }

    /// Downloads and decrypts a file a message referred to (its `file_ref`), without forgetting
    /// it.
    pub fn fetch_file(&self, file_ref: Vec<u8>) -> Result<Vec<u8>, FerryError> {
        let body = match Body::from_bytes(&file_ref) {
            Some(b @ Body::Attachment { .. }) => b,
            _ => return Err(invalid("not a file reference")),
        };
        let mut out = Vec::new();
        chat::fetch_file(&mut *self.lock()?, &body, &mut out).map_err(msg_err)?;
        Ok(out)
    }

    /// Registers this device's push token (APNs, FCM or Web Push) for the user's contact-mailbox
    /// dests of the next `hours` hours (1 to 48), and the intro mailbox's with `first_contacts`
    /// (wakes for strangers' first messages, at the price of the node linking both mailboxes'
    /// dests by the token); register again before they run out.
    pub fn register_push(
        &self,
        m: Arc<Messenger>,
        provider: PushKind,
        token: Vec<u8>,
        hours: u32,
        first_contacts: bool,
    ) -> Result<u16, FerryError> {
        if token.len() > ferry_sdk::proto::limits::PUSH_TOKEN_BYTES_MAX {
            return Err(invalid("push token too long"));
        }
        let mut c = self.lock()?;
        let m = m.lock()?;
        let p = match provider {
            PushKind::Apns => PushProvider::Apns,
            PushKind::Fcm => PushProvider::Fcm,
            PushKind::WebPush => PushProvider::WebPush,
        };
        chat::register_push(&mut c, &m, p, &token, u64::from(hours), first_contacts)
            .map_err(msg_err)
    }

    /// On (re)connect: what was stored for this user in the last 72 hours, then listening.
    pub fn sync(&self, m: Arc<Messenger>) -> Result<Vec<Message>, FerryError> {
        let mut c = self.lock()?;
        let mut sender = self.sender()?;
        let mut m = m.lock()?;
        let s = chat::sync(&mut c, &mut sender, &mut m, clock()).map_err(msg_err)?;
        Ok(s.messages.into_iter().map(message).collect())
    }

    /// Waits up to `wait_ms` for live messages (and handles acknowledgements and retries).
    pub fn pump(&self, m: Arc<Messenger>, wait_ms: u64) -> Result<Vec<Message>, FerryError> {
        let mut c = self.lock()?;
        let mut sender = self.sender()?;
        let mut m = m.lock()?;
        let s = chat::pump(
            &mut c,
            &mut sender,
            &mut m,
            Duration::from_millis(wait_ms),
            clock(),
        )
        .map_err(msg_err)?;
        Ok(s.messages.into_iter().map(message).collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_clock_skew_is_its_own_error_and_a_url_without_scheme_is_tls() {
        let skew = ferry_sdk::SdkError::ClockSkew {
            node_unix_s: 7200,
            local_unix_s: 0,
        };
        assert!(matches!(
            msg_err(messenger::MessengerError::Sdk(skew)),
            FerryError::ClockSkew(m) if m.contains("device's time")
        ));
        // Each kind of failure its own variant: what the app should do differs.
        use ferry_sdk::SdkError as S;
        use messenger::MessengerError as M;
        let kinds = [
            (sdk_err(S::Timeout), "Network"),
            (sdk_err(S::Closed), "Network"),
            (
                sdk_err(S::Ca {
                    origin: "ca.pem".into(),
                    reason: "no certificate".into(),
                }),
                "Tls",
            ),
            (sdk_err(S::Push(ferry_sdk::PushStatus::BadToken)), "Refused"),
            (sdk_err(S::Busy), "Busy"),
            (msg_err(M::OutboxFull), "Busy"),
            (msg_err(M::UnknownContact), "NotFound"),
            (msg_err(M::Malformed("address")), "InvalidArgument"),
            (msg_err(M::IdentityMismatch), "Crypto"),
            (
                msg_err(M::Storage(std::io::Error::other("disk full"))),
                "Storage",
            ),
        ];
        for (e, kind) in kinds {
            let name = format!("{e:?}");
            assert!(name.starts_with(kind), "{name} is not {kind}");
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(node_url("relay.example"), "ferry+tls://relay.example");
        assert_eq!(
            node_url(" relay.example:7443"),
            "ferry+tls://relay.example:7443"
        );
        assert_eq!(node_url("ferry://127.0.0.1:7700"), "ferry://127.0.0.1:7700");
        let tls: ferry_sdk::NodeUrl = node_url("127.0.0.1:7700").parse().unwrap();
        assert!(tls.tls, "a bare address means TLS in the bindings");
    }
}
