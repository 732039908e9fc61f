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

pub mod chat;
mod endpoint;
pub mod media;
pub mod messenger;
pub mod prekeys;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime};

pub use endpoint::{
    NodeUrl, PORT_PLAIN_DEFAULT, PORT_TLS_DEFAULT, SCHEME_PLAIN, SCHEME_TLS, Trust, UrlError,
};
/// The wire protocol, for every type the SDK's API names that is not re-exported below.
pub use ferry_proto as proto;
use ferry_proto::addr::MailboxSecret;
pub use ferry_proto::addr::{AddrError, BlindedSigner, MailboxPublic, NamespaceId, epoch_of};
pub use ferry_proto::conn::{ClientConn, ClientError, ClientEvent};
use ferry_proto::frame::Frame;
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

impl Client {
    /// Plain TCP to an address (loopback tests; applications use [`Client::connect_url`]).
    pub fn connect(addr: SocketAddr) -> Result<Client, SdkError> {
        Self::connect_with(addr, &ConnectOptions::default())
    }

    /// Plain TCP to an address with `opts`' timeout and clock-skew bound (loopback tests).
    pub fn connect_with(addr: SocketAddr, opts: &ConnectOptions) -> Result<Client, SdkError> {
        let tcp = TcpStream::connect_timeout(&addr, opts.timeout)?;
        Self::start(tcp, None, opts)
    }

    /// Plain TCP over a socket the caller connected (bound to a chosen source address, say):
    /// says hello and returns once the node's hello has arrived.
    pub fn over_tcp(tcp: TcpStream) -> Result<Client, SdkError> {
        Self::start(tcp, None, &ConnectOptions::default())
    }

    /// Connects to the node at `url` ([`NodeUrl`]): `ferry+tls://host[:port]` is TLS 1.3 with
    /// the certificate checked against `opts.trust` for `opts.server_name` or else the host;
    /// `ferry://host[:port]` is plain TCP. A host name is resolved and its addresses are tried
    /// in turn. Returns once the node's hello has arrived.
    ///
    /// ```no_run
    /// use ferry_sdk::{Client, ConnectOptions, Trust};
    /// let opts = ConnectOptions { trust: Trust::CaFile("ca.pem".into()), ..Default::default() };
    /// let client = Client::connect_url("ferry+tls://relay.example:7443", &opts)?;
    /// # Ok::<(), ferry_sdk::SdkError>(())
    /// ```
    pub fn connect_url(url: &str, opts: &ConnectOptions) -> Result<Client, SdkError> {
        let node: NodeUrl = url.parse()?;
        // The trust anchors first: a bad CA file fails before any traffic.
        let tls = if node.tls {
            let name = opts.server_name.as_deref().unwrap_or(&node.host);
            Some(endpoint::tls_session(&opts.trust, name)?)
        } else {
            None
        };
        let mut last = None;
        for addr in node.socket_addrs()? {
            match TcpStream::connect_timeout(&addr, opts.timeout) {
                Ok(tcp) => return Self::start(tcp, tls, opts),
                Err(e) => last = Some(e),
            }
        }
        // `socket_addrs` never returns an empty list.
        Err(SdkError::Io(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
        })))
    }

    /// Speaks ferry over a connected socket (inside `tls` when given) until the node's hello.
    fn start(
        tcp: TcpStream,
        tls: Option<rustls::ClientConnection>,
        opts: &ConnectOptions,
    ) -> Result<Client, SdkError> {
        let timeout = opts.timeout;
        tcp.set_nodelay(true)?;
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(conn) => Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))),
        };
        let mut c = Client {
            stream,
            conn: ClientConn::new(),
            info: NodeInfo {
                version: 0,
                shard: 0,
                node_id: [0; 32],
            },
            challenge: [0; 32],
            node_clock: (0, SystemTime::now()),
            clock_skew_s_max: opts.clock_skew_s_max,
            proved: false,
            events: VecDeque::new(),
            buf: vec![0u8; 64 * 1024],
            resendable: VecDeque::new(),
            puzzles: VecDeque::new(),
            puzzle_effort_max: PUZZLE_EFFORT_DEFAULT_MAX,
        };
        c.flush()?;
        let deadline = Instant::now() + timeout;
        loop {
            match c.next_event(deadline)? {
                ClientEvent::Ready {
                    version,
                    shard,
                    node_id,
                    challenge,
                    unix_time_s,
                } => {
                    c.info = NodeInfo {
                        version,
                        shard,
                        node_id,
                    };
                    c.set_challenge(challenge, unix_time_s)?;
                    return Ok(c);
                }
                ClientEvent::Error { code, message } => {
                    return Err(SdkError::Node { code, message });
                }
                other => c.queue(other)?,
            }
        }
    }

    fn set_challenge(&mut self, challenge: [u8; 32], node_unix_s: u64) -> Result<(), SdkError> {
        if node_unix_s > NODE_UNIX_S_MAX {
            return Err(SdkError::NodeClock {
                unix_s: node_unix_s,
            });
        }
        let local_unix_s = local_unix_s();
        if node_unix_s.abs_diff(local_unix_s) > self.clock_skew_s_max {
            return Err(SdkError::ClockSkew {
                node_unix_s,
                local_unix_s,
            });
        }
        self.challenge = challenge;
        self.node_clock = (node_unix_s, SystemTime::now());
        Ok(())
    }

    pub fn info(&self) -> NodeInfo {
        self.info
    }
    /// Whether this connection has carried a proof of ownership. A connection that sends (or
    /// fetches prekeys) should never have: the node would read the sender from the dests it
    /// proved ([`chat::Sender`] keeps the two apart).
    pub fn has_proved(&self) -> bool {
        self.proved
    }
    pub fn challenge(&self) -> [u8; 32] {
        self.challenge
    }
    /// The node's Unix time as this client estimates it: the time in its latest hello or
    /// challenge (accepted only within the connection's skew bound of this device's clock,
    /// [`CLOCK_SKEW_S_MAX`] by default) plus the local time elapsed since (the wall clock, which
    /// goes on during a device's sleep; a local clock set back counts as no time elapsed).
    pub fn node_unix_s(&self) -> u64 {
        let (at_s, at) = self.node_clock;
        let elapsed_s = SystemTime::now()
            .duration_since(at)
            .map_or(0, |d| d.as_secs());
        // `at_s` ≤ NODE_UNIX_S_MAX (2^40) and no device's clock runs 2^63 s ahead.
        at_s + elapsed_s
    }
    /// The current epoch on the node's clock.
    pub fn epoch(&self) -> u64 {
        epoch_of(self.node_unix_s())
    }

    fn queue(&mut self, ev: ClientEvent) -> Result<(), SdkError> {
        if self.events.len() >= PENDING_EVENTS_MAX {
            return Err(SdkError::Backlog);
        }
        self.events.push_back(ev);
        Ok(())
    }

    /// Writes everything queued.
    pub fn flush(&mut self) -> Result<(), SdkError> {
        while let Some(out) = self.conn.take_output() {
            self.stream.write_all(&out)?;
        }
        Ok(())
    }

    /// Writes raw bytes (tests of the node's handling of bad input).
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<(), SdkError> {
        self.flush()?;
        self.stream.write_all(bytes)?;
        Ok(())
    }

    fn next_event(&mut self, deadline: Instant) -> Result<ClientEvent, SdkError> {
        loop {
            if let Some(ev) = self.conn.poll_event().map_err(SdkError::Protocol)? {
                // Pong replies to node pings are queued inside the state machine.
                self.flush()?;
                match self.on_puzzle_event(ev)? {
                    Some(ev) => return Ok(ev),
                    None => continue,
                }
            }
            self.flush()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SdkError::Timeout);
            }
            self.stream.tcp().set_read_timeout(Some(left))?;
            let n = match self.stream.read(&mut self.buf) {
                Ok(0) => return Err(SdkError::Closed),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(SdkError::Timeout);
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(SdkError::Closed);
                }
                Err(e) => return Err(e.into()),
            };
            self.conn.on_bytes(&self.buf[..n]);
        }
    }

    /// The next event (delivery, send result, notice), waiting up to `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<ClientEvent, SdkError> {
        if let Some(ev) = self.events.pop_front() {
            return Ok(ev);
        }
        self.next_event(Instant::now() + timeout)
    }

    /// Waits for the first event `pick` accepts, buffering the others for `recv`.
    fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&ClientEvent) -> Option<T>,
    ) -> Result<T, SdkError> {
        let deadline = Instant::now() + timeout;
        loop {
            let ev = self.next_event(deadline)?;
            if let Some(t) = pick(&ev) {
                return Ok(t);
            }
            if let ClientEvent::Error { code, message } = ev {
                return Err(SdkError::Node { code, message });
            }
            self.queue(ev)?;
        }
    }

    /// Proofs for `signers` and `op` against the current challenge (not sent).
    pub fn proofs(&self, signers: &[&BlindedSigner], op: Op) -> Vec<ProofItem> {
        signers
            .iter()
            .map(|s| s.prove(&self.info.node_id, &self.challenge, op))
            .collect()
    }

    /// Sends proof items (at most [`PROOFS_PER_FRAME_MAX`] per frame) and waits for the verdicts.
    pub fn prove_items(&mut self, items: &[ProofItem]) -> Result<Vec<ProofStatus>, SdkError> {
        let mut out = Vec::with_capacity(items.len());
        self.proved |= !items.is_empty();
        for chunk in items.chunks(PROOFS_PER_FRAME_MAX) {
            self.conn.push(&Frame::Prove {
                items: chunk.to_vec(),
            });
            self.flush()?;
            let statuses = self.wait_for(Duration::from_secs(10), |ev| match ev {
                ClientEvent::ProveResult { items } => {
                    Some(items.iter().map(|(_, _, s)| *s).collect::<Vec<_>>())
                }
                _ => None,
            })?;
            out.extend(statuses);
        }
        Ok(out)
    }

    /// Proves ownership of each signer's dest for `op`.
    pub fn prove(
        &mut self,
        signers: &[&BlindedSigner],
        op: Op,
    ) -> Result<Vec<ProofStatus>, SdkError> {
        let items = self.proofs(signers, op);
        self.prove_items(&items)
    }

    /// Subscribes to dests already proven with `Op::Subscribe`.
    pub fn subscribe(&mut self, dests: &[Dest]) -> Result<Vec<SubscribeStatus>, SdkError> {
        // The node answers each dest once: refusals at once, successes when the owner core has
        // the entry (possibly in several SubscribeResult frames).
        let mut answers: std::collections::HashMap<Dest, SubscribeStatus> =
            std::collections::HashMap::new();
        for chunk in dests.chunks(DESTS_PER_FRAME_MAX) {
            self.conn.push(&Frame::Subscribe {
                dests: chunk.to_vec(),
            });
        }
        self.flush()?;
        let wanted: std::collections::HashSet<Dest> = dests.iter().copied().collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while answers.len() < wanted.len() {
            match self.next_event(deadline)? {
                ClientEvent::SubscribeResult { items } => {
                    for (d, s) in items {
                        if wanted.contains(&d) {
                            answers.insert(d, s);
                        }
                    }
                }
                ClientEvent::Error { code, message } => {
                    return Err(SdkError::Node { code, message });
                }
                other => self.queue(other)?,
            }
        }
        Ok(dests.iter().map(|d| answers[d]).collect())
    }

    /// Proves and subscribes to `mailbox`'s dests for `epochs`; fails unless all succeed.
    pub fn listen(
        &mut self,
        mailbox: &Mailbox,
        epochs: impl IntoIterator<Item = u64>,
    ) -> Result<Vec<Dest>, SdkError> {
        let signers: Vec<BlindedSigner> = epochs
            .into_iter()
            .map(|e| mailbox.signer(e))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&BlindedSigner> = signers.iter().collect();
        let proofs = self.prove(&refs, Op::Subscribe)?;
        if let Some(bad) = proofs.iter().find(|s| **s != ProofStatus::Ok) {
            return Err(SdkError::Node {
                code: ErrorCode::Unsupported,
                message: format!("proof refused: {bad:?}"),
            });
        }
        let dests: Vec<Dest> = signers.iter().map(|s| s.dest()).collect();
        let subs = self.subscribe(&dests)?;
        if let Some(bad) = subs.iter().find(|s| **s != SubscribeStatus::Ok) {
            return Err(SdkError::Node {
                code: ErrorCode::Unsupported,
                message: format!("subscribe refused: {bad:?}"),
            });
        }
        Ok(dests)
    }

    pub fn unsubscribe(&mut self, dests: &[Dest]) -> Result<(), SdkError> {
        for chunk in dests.chunks(DESTS_PER_FRAME_MAX) {
            self.conn.push(&Frame::Unsubscribe {
                dests: chunk.to_vec(),
            });
        }
        self.flush()
    }

    /// Asks for a fresh challenge (the previous one stops working) and waits for it.
    pub fn refresh_challenge(&mut self) -> Result<[u8; 32], SdkError> {
        self.conn.push(&Frame::ChallengeRequest);
        self.flush()?;
        let (ch, t) = self.wait_for(Duration::from_secs(10), |ev| match ev {
            ClientEvent::Challenge {
                challenge,
                unix_time_s,
            } => Some((*challenge, *unix_time_s)),
            _ => None,
        })?;
        self.set_challenge(ch, t)?;
        Ok(ch)
    }

    /// Queues a packet; call [`Client::flush`] (or any waiting call) to write it. Sends are
    /// buffered so that many small packets leave in one write.
    ///
    /// When the node answers `PuzzleRequired` (the dest or the store is under pressure), the
    /// client solves the puzzle and sends the packet again by itself while it waits for events:
    /// the application sees the final `SendResult` (up to [`PUZZLE_ATTEMPTS_MAX`] tries, efforts
    /// up to [`Client::set_puzzle_effort_max`]).
    pub fn send(&mut self, dest: Dest, msg_id: u64, flags: u8, payload: &[u8]) {
        self.send_with_ttl(dest, msg_id, flags, 0, payload);
    }

    /// Like [`Client::send_with_ttl`], carrying the capability token the recipient gave this
    /// client inside the end-to-end session
    /// ([`ferry_proto::puzzle::capability_token`] of its send secret and the dest's epoch): a
    /// dest under pressure takes it instead of a puzzle.
    pub fn send_with_capability(
        &mut self,
        dest: Dest,
        msg_id: u64,
        flags: u8,
        ttl_s: u32,
        token: [u8; 32],
        payload: &[u8],
    ) {
        self.send_pass(dest, msg_id, flags, ttl_s, Some(token), payload);
    }

    fn send_pass(
        &mut self,
        dest: Dest,
        msg_id: u64,
        flags: u8,
        ttl_s: u32,
        capability: Option<[u8; 32]>,
        payload: &[u8],
    ) {
        assert!(
            payload.len() <= PACKET_PAYLOAD_BYTES_MAX,
            "payload over PACKET_PAYLOAD_BYTES_MAX"
        );
        let pass = ferry_proto::puzzle::SendPass {
            puzzle: None,
            capability,
        };
        self.conn
            .send_with(dest, msg_id, flags, ttl_s, &pass, payload);
        if self.resendable.len() >= RESENDABLE_SENDS_MAX {
            self.resendable.pop_front();
        }
        self.resendable.push_back(PendingSend {
            dest,
            msg_id,
            flags,
            ttl_s,
            capability,
            payload: payload.to_vec(),
            attempts: 0,
        });
    }

    /// Sets the highest puzzle effort this client solves by itself (0: never solve).
    pub fn set_puzzle_effort_max(&mut self, effort: u32) {
        self.puzzle_effort_max = effort.min(ferry_proto::puzzle::PUZZLE_EFFORT_MAX);
    }

    /// Registers, under a `Drain` proof for `dest`, the verifier of the capability tokens this
    /// mailbox's contacts will send to `dest` ([`ferry_proto::puzzle::capability_verifier`] of
    /// the epoch's token), for `ttl_s` seconds (capped by the node; 0 removes it).
    pub fn register_capability(
        &mut self,
        dest: Dest,
        ttl_s: u32,
        verifier: [u8; 32],
    ) -> Result<ferry_proto::CapabilityStatus, SdkError> {
        self.conn.push(&Frame::CapabilityRegister {
            dest,
            ttl_s,
            verifier,
        });
        self.flush()?;
        self.wait_for(Duration::from_secs(10), |ev| match ev {
            ClientEvent::CapabilityResult { dest: d, status } if *d == dest => Some(*status),
            _ => None,
        })
    }

    /// Handles puzzle frames: remembers a `Puzzle`, and answers its `SendResult PuzzleRequired`
    /// by solving and resending when it can. `None`: the event was consumed.
    fn on_puzzle_event(&mut self, ev: ClientEvent) -> Result<Option<ClientEvent>, SdkError> {
        match ev {
            ClientEvent::Puzzle {
                dest,
                msg_id,
                seed,
                effort,
            } => {
                if self.puzzles.len() >= RESENDABLE_SENDS_MAX {
                    self.puzzles.pop_front();
                }
                self.puzzles.push_back((dest, msg_id, seed, effort));
                Ok(None)
            }
            ClientEvent::SendResult {
                dest,
                msg_id,
                status: SendStatus::PuzzleRequired,
            } => {
                let puzzle = self
                    .puzzles
                    .iter()
                    .position(|p| p.0 == dest && p.1 == msg_id)
                    .and_then(|i| self.puzzles.remove(i));
                let pending = self
                    .resendable
                    .iter()
                    .position(|p| p.dest == dest && p.msg_id == msg_id);
                let (Some((_, _, seed, effort)), Some(i)) = (puzzle, pending) else {
                    return Ok(Some(ev));
                };
                let p = &mut self.resendable[i];
                if p.attempts >= PUZZLE_ATTEMPTS_MAX || effort > self.puzzle_effort_max {
                    return Ok(Some(ev));
                }
                p.attempts += 1;
                let digest = ferry_proto::puzzle::message_digest(msg_id, p.ttl_s, &p.payload);
                let mut nonce = [0u8; 16];
                getrandom::fill(&mut nonce)
                    .map_err(|e| SdkError::Io(std::io::Error::other(e.to_string())))?;
                let Some(answer) = ferry_proto::puzzle::solve(&seed, &dest, &digest, effort, nonce)
                else {
                    return Ok(Some(ev));
                };
                let pass = ferry_proto::puzzle::SendPass {
                    puzzle: Some(answer),
                    capability: p.capability,
                };
                let (flags, ttl_s) = (p.flags, p.ttl_s);
                let payload = std::mem::take(&mut p.payload);
                self.conn
                    .send_with(dest, msg_id, flags, ttl_s, &pass, &payload);
                self.resendable[i].payload = payload;
                self.flush()?;
                Ok(None)
            }
            ClientEvent::SendResult { dest, msg_id, .. } => {
                if let Some(i) = self
                    .resendable
                    .iter()
                    .position(|p| p.dest == dest && p.msg_id == msg_id)
                {
                    self.resendable.remove(i);
                }
                Ok(Some(ev))
            }
            ev => Ok(Some(ev)),
        }
    }

    /// Like [`Client::send`], with how long the node may store the packet if the recipient is
    /// offline (capped by the node's maximum; 0 = the maximum).
    pub fn send_with_ttl(
        &mut self,
        dest: Dest,
        msg_id: u64,
        flags: u8,
        ttl_s: u32,
        payload: &[u8],
    ) {
        self.send_pass(dest, msg_id, flags, ttl_s, None, payload);
    }

    /// Which of `dests` hold stored blobs. The node answers only for dests this connection
    /// proved (`Op::Drain` or `Op::Subscribe`): any other dest is answered as holding nothing,
    /// whether it does or not. Prove first, then ask.
    pub fn query(&mut self, dests: &[Dest]) -> Result<Vec<Dest>, SdkError> {
        let mut out = Vec::new();
        for chunk in dests.chunks(DESTS_PER_FRAME_MAX) {
            self.conn.push(&Frame::Query {
                dests: chunk.to_vec(),
            });
            self.flush()?;
            out.extend(self.wait_for(Duration::from_secs(10), |ev| match ev {
                ClientEvent::QueryResult { dests } => Some(dests.clone()),
                _ => None,
            })?);
        }
        Ok(out)
    }

    /// Sends prekey uploads (made by [`prekeys::generate`]) for a dest proven for
    /// `Op::PrekeyUpdate`, in order, each answered before the next. Returns the one-time keys
    /// (EC, PQ) in the slot after the last one.
    pub fn upload_prekeys(
        &mut self,
        uploads: &[ferry_proto::prekey::Upload],
    ) -> Result<(u16, u16), SdkError> {
        let mut counts = (0, 0);
        for u in uploads {
            self.conn.push(&Frame::PrekeyUpload {
                upload: Box::new(u.clone()),
            });
            self.flush()?;
            counts = self.prekey_answer(u.dest)?;
        }
        Ok(counts)
    }

    /// One-time keys (EC, PQ) left in the slot of a dest proven for `Op::PrekeyUpdate`.
    pub fn prekey_count(&mut self, dest: Dest) -> Result<(u16, u16), SdkError> {
        self.conn.push(&Frame::PrekeyCount { dest });
        self.flush()?;
        self.prekey_answer(dest)
    }

    fn prekey_answer(&mut self, dest: Dest) -> Result<(u16, u16), SdkError> {
        use ferry_proto::frame::PrekeyStatus;
        self.wait_for(Duration::from_secs(10), |ev| match ev {
            ClientEvent::PrekeyResult {
                dest: d,
                status,
                kind,
                index,
                ec_left,
                pq_left,
            } if *d == dest => Some(if *status == PrekeyStatus::Ok {
                Ok((*ec_left, *pq_left))
            } else {
                Err(SdkError::Prekey {
                    status: *status,
                    kind: *kind,
                    index: *index,
                })
            }),
            _ => None,
        })?
    }

    /// Fetches one prekey bundle from `slot` (a contact's slot of one day,
    /// [`Contact::prekey_slot`]), opens it and checks its signatures and the signed expiry
    /// against this device's clock.
    ///
    /// When the slot is under pressure the node answers with the last-resort bundle and a
    /// puzzle; the client then solves it (efforts up to [`Client::set_puzzle_effort_max`]) and
    /// fetches once more with the answer, which buys a one-time key (forward secrecy from the
    /// first message). If the puzzle is too hard, or the second answer is again a last-resort
    /// bundle, that bundle is returned: a first contact never fails for want of a puzzle.
    pub fn fetch_prekeys(
        &mut self,
        slot: &ferry_proto::prekey::SlotOpener,
    ) -> Result<ferry_proto::prekey::Bundle, SdkError> {
        let dest = slot.dest();
        let (bundle, ask) = self.fetch_prekeys_once(slot, None)?;
        let Some(ask) = ask.filter(|a| a.effort <= self.puzzle_effort_max) else {
            return Ok(bundle);
        };
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce)
            .map_err(|e| SdkError::Io(std::io::Error::other(e.to_string())))?;
        let digest = ferry_proto::puzzle::prekey_fetch_digest(&dest);
        let Some(answer) = ferry_proto::puzzle::solve(&ask.seed, &dest, &digest, ask.effort, nonce)
        else {
            return Ok(bundle);
        };
        match self.fetch_prekeys_once(slot, Some(answer)) {
            Ok((again, _)) => Ok(again),
            // The first bundle is as good a last resort as any (the retry may meet the fetch
            // rate limit, for one).
            Err(SdkError::Prekey { .. }) => Ok(bundle),
            Err(e) => Err(e),
        }
    }

    /// One `PrekeyFetch` and its opened, checked bundle, with the puzzle the node asked for, if
    /// any.
    fn fetch_prekeys_once(
        &mut self,
        slot: &ferry_proto::prekey::SlotOpener,
        puzzle: Option<ferry_proto::puzzle::PuzzleAnswer>,
    ) -> Result<
        (
            ferry_proto::prekey::Bundle,
            Option<ferry_proto::puzzle::PuzzleAsk>,
        ),
        SdkError,
    > {
        let dest = slot.dest();
        self.conn.push(&Frame::PrekeyFetch { dest, puzzle });
        self.flush()?;
        let (sealed, ask) = self.wait_for(Duration::from_secs(10), |ev| match ev {
            ClientEvent::PrekeyBundle {
                dest: d,
                status,
                bundle,
                puzzle,
            } if *d == dest => Some(match bundle {
                Some(b) => Ok((b.as_ref().clone(), *puzzle)),
                None => Err(SdkError::Prekey {
                    status: *status,
                    kind: ferry_proto::prekey::KeyKind::None,
                    index: 0,
                }),
            }),
            _ => None,
        })??;
        let bundle = slot.open(&sealed).map_err(SdkError::BadBundle)?;
        if bundle.expires <= local_unix_s() {
            return Err(SdkError::BadBundle(ferry_proto::prekey::Fault {
                bad_signature: false,
                kind: ferry_proto::prekey::KeyKind::SignedPrekey,
                index: 0,
            }));
        }
        Ok((bundle, ask))
    }

    /// Registers a push token for dests proven for `Op::PushRegister` for `ttl_s` seconds (0
    /// removes them). Returns how many dests the token is registered for now.
    pub fn push_register(
        &mut self,
        provider: ferry_proto::frame::PushProvider,
        token: &[u8],
        dests: &[Dest],
        ttl_s: u32,
    ) -> Result<u16, SdkError> {
        use ferry_proto::frame::PushStatus;
        // One frame per `DESTS_PER_FRAME_MAX` dests, each answered before the next.
        let mut registered = 0;
        for chunk in dests.chunks(DESTS_PER_FRAME_MAX) {
            self.conn.push(&Frame::PushRegister {
                provider,
                ttl_s,
                token: bytes::Bytes::copy_from_slice(token),
                dests: chunk.to_vec(),
            });
            self.flush()?;
            registered = self.wait_for(Duration::from_secs(10), |ev| match ev {
                ClientEvent::PushResult {
                    status,
                    dests_registered,
                } => Some(if *status == PushStatus::Ok {
                    Ok(*dests_registered)
                } else {
                    Err(SdkError::Push(*status))
                }),
                _ => None,
            })??;
        }
        Ok(registered)
    }

    /// Fetches stored blobs of `dest` (proven for `Op::Drain` first), oldest first, at most one
    /// batch: the flag says whether more remain (ack these, then drain again). Blobs stay stored
    /// until acked.
    pub fn drain(&mut self, dest: Dest) -> Result<(Vec<StoredBlob>, bool), SdkError> {
        self.conn.push(&Frame::Drain { dest });
        self.flush()?;
        let mut blobs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.next_event(deadline)? {
                ClientEvent::Stored {
                    dest: d,
                    pos,
                    msg_id,
                    payload,
                } if d == dest => {
                    blobs.push(StoredBlob {
                        dest: d,
                        pos,
                        msg_id,
                        payload,
                    });
                }
                ClientEvent::DrainEnd { dest: d, status } if d == dest => {
                    return match status {
                        ferry_proto::DrainStatus::NotProven => Err(SdkError::NotProven),
                        ferry_proto::DrainStatus::Busy => Err(SdkError::Busy),
                        ferry_proto::DrainStatus::More => Ok((blobs, true)),
                        ferry_proto::DrainStatus::Done => Ok((blobs, false)),
                    };
                }
                ClientEvent::Error { code, message } => {
                    return Err(SdkError::Node { code, message });
                }
                other => self.queue(other)?,
            }
        }
    }

    /// Deletes stored blobs that were received (their dests proven for `Op::Drain`).
    pub fn ack(&mut self, blobs: &[StoredBlob]) -> Result<(), SdkError> {
        let items: Vec<(Dest, u64)> = blobs.iter().map(|b| (b.dest, b.pos)).collect();
        for chunk in items.chunks(DESTS_PER_FRAME_MAX) {
            self.conn.push(&Frame::Ack {
                items: chunk.to_vec(),
            });
        }
        self.flush()
    }

    /// Hands the connection over to another event loop (the load generator): the socket, the TLS
    /// session if there is one, the protocol state machine and any events already read.
    pub fn into_parts(mut self) -> Result<Parts, SdkError> {
        self.flush()?;
        let events = self.events.into_iter().collect();
        Ok(match self.stream {
            Stream::Plain(s) => {
                s.set_read_timeout(None)?;
                Parts {
                    socket: s,
                    tls: None,
                    conn: self.conn,
                    events,
                }
            }
            Stream::Tls(t) => {
                let t = *t;
                t.sock.set_read_timeout(None)?;
                Parts {
                    socket: t.sock,
                    tls: Some(Box::new(t.conn)),
                    conn: self.conn,
                    events,
                }
            }
        })
    }

    /// Sends a ping and waits for its pong.
    pub fn ping(&mut self, nonce: u64) -> Result<(), SdkError> {
        self.conn.push(&Frame::Ping { nonce });
        self.flush()?;
        self.wait_for(Duration::from_secs(10), |ev| match ev {
            ClientEvent::Pong { nonce: n } if *n == nonce => Some(()),
            _ => None,
        })
    }
}
