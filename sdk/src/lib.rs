//! ferry's client library.
//!
//! Flow: [`Client::connect_url`] (`ferry+tls://host[:port]` for TLS 1.3, `ferry://` for plain
//! TCP; [`NodeUrl`]) → the node's hello gives its id, a challenge and its clock → [`Mailbox::dest`] computes the hourly destination hash of a mailbox → [`Client::prove`]
//! proves ownership of the dests to act on (one signature each, batch-checked by the node) →
//! [`Client::subscribe`] → [`Client::send`] / [`Client::recv`]. The protocol itself is the sans-IO
//! `ferry_proto::conn::ClientConn`; this crate adds the socket, the clock and blocking waits.
//!
//! Payloads are opaque to the node: applications encrypt before [`Client::send`].
//!
//! An application depends on this crate alone: the protocol types its API names are re-exported
//! here (the common ones at the top, all of them under [`proto`]).
//!
//! [`Client`] is declared here; its methods are in `session.rs` (connecting, the event pump,
//! proofs, subscriptions, push registration), `mail.rs` (sends, puzzles, query, drain, ack),
//! `prekeys/client.rs` (prekey upload and fetch) and `media.rs` (encrypted attachments).

pub mod chat;
mod endpoint;
mod mail;
pub mod media;
pub mod messenger;
pub mod prekeys;
mod session;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime};

pub use endpoint::{
    NodeUrl, PORT_PLAIN_DEFAULT, PORT_TLS_DEFAULT, SCHEME_PLAIN, SCHEME_TLS, Trust, UrlError,
};
/// The wire protocol, for every type the SDK's API names that is not re-exported below.
pub use ferry_proto as proto;
use ferry_proto::addr::MailboxSecret;
pub use ferry_proto::addr::{AddrError, BlindedSigner, MailboxPublic, NamespaceId, epoch_of};
pub use ferry_proto::conn::{ClientConn, ClientError, ClientEvent};
pub use ferry_proto::frame::{
    BlobStatus, CapabilityStatus, Dest, ErrorCode, FLAG_ACK, Op, PrekeyStatus, ProofItem,
    ProofStatus, PushProvider, PushStatus, SendStatus, SubscribeStatus,
};
pub use ferry_proto::limits::{
    DESTS_PER_FRAME_MAX, EPOCH_SECONDS, PACKET_PAYLOAD_BYTES_MAX, PROOFS_PER_FRAME_MAX,
};
pub use ferry_proto::prekey::{Bundle, Upload};

/// Events a client buffers while waiting for a specific answer; beyond it the wait fails rather
/// than growing without bound.
pub const PENDING_EVENTS_MAX: usize = 1 << 20;

/// Upload chunks in flight (not yet acknowledged) per upload: about 2 MiB.
pub const BLOB_WINDOW_CHUNKS: usize = 32;

/// Refusals in a row (rate limit, busy owner core) after which an upload gives up.
pub const BLOB_STALLS_MAX: u32 = 300;

/// What can go wrong on the client side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SdkError {
    #[error("i/o: {0}")]
    Io(#[source] std::io::Error),
    #[error("tls: {0}")]
    Tls(#[source] rustls::Error),
    #[error("protocol: {0}")]
    Protocol(#[source] ClientError),
    #[error("addressing: {0}")]
    Addr(#[source] AddrError),
    /// The node closed the connection with this error.
    #[error("node error {code:?}: {message}")]
    Node { code: ErrorCode, message: String },
    /// The connection closed.
    #[error("connection closed")]
    Closed,
    #[error("timed out")]
    Timeout,
    /// Too many unread events buffered.
    #[error("too many unread events")]
    Backlog,
    /// The node wants a proof of ownership first (for a `Drain`: `Op::Drain`).
    #[error("not proven: prove ownership of the destination first")]
    NotProven,
    /// Another drain on this connection is still being answered.
    #[error("a drain is already in progress on this connection")]
    Busy,
    /// The prekey directory refused the request; `kind` and `index` name the key at fault.
    #[error("prekey directory: {status:?} ({kind:?} #{index})")]
    Prekey {
        status: ferry_proto::frame::PrekeyStatus,
        kind: ferry_proto::prekey::KeyKind,
        index: u16,
    },
    /// A fetched bundle's signatures do not verify: do not use it.
    #[error("prekey bundle does not verify: {0:?}")]
    BadBundle(ferry_proto::prekey::Fault),
    /// The node refused the push registration.
    #[error("push registration refused: {0:?}")]
    Push(ferry_proto::frame::PushStatus),
    /// The node refused a media request.
    #[error("media request refused: {0:?}")]
    Blob(ferry_proto::frame::BlobStatus),
    /// The node URL does not parse.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The node's host name has no address (or the lookup failed).
    #[error("cannot resolve {host:?}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    /// The CA certificates to trust could not be loaded from `origin` (a file, or the PEM
    /// given).
    #[error("CA certificates to trust, from {origin}: {reason}")]
    Ca { origin: String, reason: String },
    /// The name to check the node's certificate for is not a DNS name or an IP address.
    #[error("{name:?} is not a name a TLS certificate can carry (a DNS name or an IP address)")]
    ServerName { name: String },
    /// The node's clock says a time past [`NODE_UNIX_S_MAX`]: the node is broken.
    #[error("the node's clock says {unix_s} s since 1970, past NODE_UNIX_S_MAX")]
    NodeClock { unix_s: u64 },
    /// The node's clock and this device's differ by more than the connection's skew bound
    /// ([`CLOCK_SKEW_S_MAX`] by default). The client does not adopt a time it cannot check:
    /// a node that lies about the time could make it prove, query and register push for hours
    /// of the node's choosing. Either clock may be wrong: the app should ask the user to check
    /// the device's time, or try another node.
    #[error(
        "the node's clock ({node_unix_s} s since 1970) and this device's ({local_unix_s} s) \
         differ by more than the connection allows: check the device's time"
    )]
    ClockSkew { node_unix_s: u64, local_unix_s: u64 },
}

impl From<std::io::Error> for SdkError {
    /// A TLS failure (rustls reports it through `std::io`) becomes [`SdkError::Tls`].
    fn from(e: std::io::Error) -> Self {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => SdkError::Tls(tls.clone()),
            None => SdkError::Io(e),
        }
    }
}

impl From<AddrError> for SdkError {
    fn from(e: AddrError) -> Self {
        SdkError::Addr(e)
    }
}

/// The latest node time (Unix seconds) a client accepts in a hello or a challenge: about 34 800
/// years after 1970. A node past it is broken; below it the client's clock arithmetic is exact.
pub const NODE_UNIX_S_MAX: u64 = 1 << 40;

/// The most the node's clock (in its hello or a challenge) may differ from this device's, by
/// default ([`ConnectOptions::clock_skew_s_max`]): five minutes. Within it the client uses the
/// node's time (so its proofs name the epochs the node checks); beyond it the connection fails
/// with [`SdkError::ClockSkew`], so every epoch the client proves, queries or registers is one
/// its own clock says is current (or, within five minutes of the turn, the neighbouring one).
pub const CLOCK_SKEW_S_MAX: u64 = 300;

// The skew moves at most one epoch boundary.
const _: () = assert!(CLOCK_SKEW_S_MAX < EPOCH_SECONDS / 2);

/// This device's Unix time, in seconds (0 for a clock set before 1970).
fn local_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A mailbox: the owner's key pair within one application namespace.
pub struct Mailbox {
    secret: MailboxSecret,
    ns: NamespaceId,
    s_mbox: Option<[u8; 32]>,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("public", self.secret.public())
            .finish_non_exhaustive()
    }
}

impl Mailbox {
    /// A fresh random mailbox key.
    pub fn generate(ns: NamespaceId) -> Result<Self, SdkError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| SdkError::Io(std::io::Error::other(e.to_string())))?;
        Ok(Self::from_seed(&seed, ns, None))
    }
    /// A mailbox from a stored seed; `s_mbox` is the contact-mailbox secret (None = intro mailbox).
    pub fn from_seed(seed: &[u8; 32], ns: NamespaceId, s_mbox: Option<[u8; 32]>) -> Self {
        Mailbox {
            secret: MailboxSecret::from_seed(seed),
            ns,
            s_mbox,
        }
    }
    pub fn public(&self) -> &MailboxPublic {
        self.secret.public()
    }
    pub fn dest(&self, epoch: u64) -> Result<Dest, SdkError> {
        Ok(self
            .secret
            .public()
            .dest(&self.ns, self.s_mbox.as_ref(), epoch)?)
    }
    pub fn signer(&self, epoch: u64) -> Result<BlindedSigner, SdkError> {
        Ok(self
            .secret
            .blinded_signer(&self.ns, self.s_mbox.as_ref(), epoch)?)
    }
    /// The signer of this mailbox's prekey slot of `day` (`ferry_proto::addr::day_of`): the
    /// mailbox without `s_mbox` blinded for `slot_epoch(day)`. It proves `Op::PrekeyUpdate` and
    /// signs the slot's head.
    pub fn slot_signer(&self, day: u64) -> Result<BlindedSigner, SdkError> {
        Ok(self
            .secret
            .blinded_signer(&self.ns, None, ferry_proto::addr::slot_epoch(day))?)
    }
    /// The key the prekey slot of `day` is sealed under.
    pub fn slot_key(&self, day: u64) -> [u8; 32] {
        ferry_proto::prekey::slot_key(&self.public().to_bytes(), &self.ns, day)
    }
}

/// A sender's view of someone else's mailbox: computes its dest for any epoch.
#[derive(Debug, Clone, Copy)]
pub struct Contact {
    public: MailboxPublic,
    ns: NamespaceId,
    s_mbox: Option<[u8; 32]>,
}

impl Contact {
    pub fn new(
        mailbox_key: &[u8; 32],
        ns: NamespaceId,
        s_mbox: Option<[u8; 32]>,
    ) -> Result<Self, SdkError> {
        Ok(Contact {
            public: MailboxPublic::from_bytes(mailbox_key)?,
            ns,
            s_mbox,
        })
    }
    pub fn dest(&self, epoch: u64) -> Result<Dest, SdkError> {
        Ok(self.public.dest(&self.ns, self.s_mbox.as_ref(), epoch)?)
    }
    /// Where this contact's prekeys of `day` are, and how to open them (its intro mailbox's slot,
    /// whatever `s_mbox`).
    pub fn prekey_slot(&self, day: u64) -> Result<ferry_proto::prekey::SlotOpener, SdkError> {
        Ok(ferry_proto::prekey::SlotOpener::new(
            &self.public,
            &self.ns,
            day,
        )?)
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(buf),
            Stream::Tls(s) => {
                s.write_all(buf)?;
                s.flush()
            }
        }
    }
}

/// A blob the node stored for an offline recipient; `pos` identifies it for [`Client::ack`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBlob {
    pub dest: Dest,
    pub pos: u64,
    pub msg_id: u64,
    pub payload: bytes::Bytes,
}

/// A set-up connection taken apart by [`Client::into_parts`].
#[derive(Debug)]
pub struct Parts {
    pub socket: TcpStream,
    /// The TLS session (already past its handshake) for `ferry+tls` connections.
    pub tls: Option<Box<rustls::ClientConnection>>,
    pub conn: ClientConn,
    pub events: Vec<ClientEvent>,
}

/// What the node said in its hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub version: u16,
    /// The shard (core) serving this connection.
    pub shard: u16,
    pub node_id: [u8; 32],
}

/// A blocking connection to a node.
pub struct Client {
    stream: Stream,
    conn: ClientConn,
    info: NodeInfo,
    challenge: [u8; 32],
    /// The node's Unix time in its latest hello or challenge, and the local time it arrived.
    node_clock: (u64, SystemTime),
    /// How far the node's time may be from this device's ([`ConnectOptions::clock_skew_s_max`]).
    clock_skew_s_max: u64,
    /// Whether this connection has carried a `Prove` (see [`Client::has_proved`]).
    proved: bool,
    events: VecDeque<ClientEvent>,
    buf: Vec<u8>,
    /// The latest sends, kept so that a `PuzzleRequired` answer can be solved and resent without
    /// the application noticing (bounded: the oldest is forgotten first).
    resendable: VecDeque<PendingSend>,
    /// `Puzzle` frames waiting for their `SendResult`: (dest, msg_id) → (seed, effort).
    puzzles: VecDeque<(Dest, u64, [u8; 32], u32)>,
    /// Highest puzzle effort this client solves; a harder puzzle is handed to the application as
    /// `PuzzleRequired`.
    puzzle_effort_max: u32,
}

/// Sends a client remembers for solving and resending: an application sending faster than
/// results come back loses transparent puzzle solving for the oldest, not memory.
pub const RESENDABLE_SENDS_MAX: usize = 256;

/// Times one send is solved and resent before `PuzzleRequired` reaches the application (the
/// level may rise between two answers).
pub const PUZZLE_ATTEMPTS_MAX: u8 = 3;

/// Default for [`Client::set_puzzle_effort_max`]: room for a node configured well above its
/// default (effort 1, 13 ms mean of one core of the reference machine; effort 32 is about 0.2 s,
/// measured by `proto/examples/puzzle_cost.rs`).
pub const PUZZLE_EFFORT_DEFAULT_MAX: u32 = 32;

#[derive(Debug)]
struct PendingSend {
    dest: Dest,
    msg_id: u64,
    flags: u8,
    ttl_s: u32,
    capability: Option<[u8; 32]>,
    payload: Vec<u8>,
    attempts: u8,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// How to connect: timeouts and, for `ferry+tls`, whom to trust.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// For each TCP connect and for the node's hello.
    pub timeout: Duration,
    /// `ferry+tls`: the CAs the node's certificate must chain to.
    pub trust: Trust,
    /// `ferry+tls`: the name the node's certificate must carry, when it is not the URL's host
    /// (a node reached by IP address or through a tunnel).
    pub server_name: Option<String>,
    /// The most the node's clock may differ from this device's ([`CLOCK_SKEW_S_MAX`]). Raise
    /// it only in tests that move a node's clock by hours.
    pub clock_skew_s_max: u64,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: Duration::from_secs(10),
            trust: Trust::PublicRoots,
            server_name: None,
            clock_skew_s_max: CLOCK_SKEW_S_MAX,
        }
    }
}
