//! Frames: `len:u32le | type:u8 | body`. `len` counts the type byte and the body. Every integer is
//! fixed-width little-endian. Decoding never panics: any input either yields a frame, asks for more
//! bytes, or fails with a [`DecodeError`] that names what was wrong.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::limits::{
    BLOB_GET_BYTES_MAX, DESTS_PER_FRAME_MAX, ERROR_MESSAGE_BYTES_MAX, FRAME_BYTES_MAX,
    FRAME_PREFIX_BYTES, HELLO_MAGIC, PACKET_HEADER_BYTES, PACKET_PAYLOAD_BYTES_MAX,
    PROOF_ITEM_BYTES, PROOFS_PER_FRAME_MAX, PUSH_TOKEN_BYTES_MAX, SEND_HEADER_BYTES,
};

/// A 16-byte destination hash: the only routing key a node ever sees.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Dest(pub [u8; 16]);

impl std::fmt::Debug for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dest(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl Dest {
    /// The shard that owns this destination: its forward-table entry and its queued blobs.
    #[inline]
    pub fn owner(&self, shards: usize) -> usize {
        assert!(shards > 0);
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        let shards_u64 = u64::try_from(shards).expect("a usize fits a u64 on every target");
        usize::try_from(u64::from_le_bytes(head) % shards_u64)
            .expect("the remainder is below `shards`, a usize")
    }
}

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $val:expr),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name { $($(#[$vm])* $var = $val),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            pub fn from_u8(v: u8) -> Option<Self> {
                match v { $($val => Some($name::$var),)+ _ => None }
            }
        }
    };
}

wire_enum!(
    /// What a proof authorises on a `dest`. Part of the signed message.
    Op {
        Subscribe = 1,
        Drain = 2,
        PushRegister = 3,
        PrekeyUpdate = 4,
    }
);

wire_enum!(
    /// The node's verdict on one proof item.
    ProofStatus {
        Ok = 0,
        /// `MK'` is not a valid, non-weak Ed25519 point.
        BadKey = 1,
        /// `derive_key("ferry v1 destination", MK')[0..16] != dest`.
        DestMismatch = 2,
        BadSignature = 3,
        /// The connection's challenge is older than 60 s; request a new one.
        StaleChallenge = 4,
        /// Too many failed proofs from this connection or address.
        RateLimited = 5,
        /// This connection already holds the most proven pairs it may.
        TooMany = 6,
        UnknownOp = 7,
    }
);

wire_enum!(
    /// The node's verdict on one subscription.
    SubscribeStatus {
        Ok = 0,
        /// No valid `Subscribe` proof for this dest on this connection.
        NotProven = 1,
        TooManySubscriptions = 2,
    }
);

wire_enum!(
    /// Outcome of a `Send`. `Delivered` and `Stored` go only to a sender that proved `dest`;
    /// any other sender gets `Accepted` for both, and only when it set `FLAG_ACK`.
    SendStatus {
        Delivered = 0,
        /// No live subscriber and no store for this dest: the packet was not delivered.
        NoSubscriber = 1,
        /// A queue on the way (cross-core hop or the recipient's send queue) was full.
        Congested = 2,
        /// No live subscriber: the packet is stored (durably, under the node's fsync policy) for
        /// the recipient to drain. Reported to a sender that proved `dest`, ACK flag or not.
        Stored = 3,
        /// No live subscriber and the node's store is full: not stored.
        StoreFull = 4,
        /// No live subscriber and this dest's storage quota is used up: not stored.
        QuotaExceeded = 5,
        /// Delivered live or stored durably; the node does not say which. The answer a sender
        /// gets when its connection has not proven `dest` (`Subscribe` or `Drain`): whether the
        /// recipient is online is not the sender's to learn. Reported only with `FLAG_ACK`.
        Accepted = 6,
        /// The packet was to be stored, and the dest or the node's store is under pressure: send
        /// it again with a puzzle answer (the `Puzzle` frame just before names seed and effort)
        /// or a capability token. Not stored.
        PuzzleRequired = 7,
    }
);

wire_enum!(
    /// Outcome of a `CapabilityRegister`.
    CapabilityStatus {
        Ok = 0,
        /// No `Drain` proof for this dest on this connection.
        NotProven = 1,
        /// The owner core holds as many capability verifiers as it may.
        TooMany = 2,
    }
);

wire_enum!(
    /// How a `Drain` ended.
    DrainStatus {
        /// Every stored blob of the dest was sent (possibly none).
        Done = 0,
        /// No `Drain` proof for this dest on this connection.
        NotProven = 1,
        /// A batch was sent but more blobs remain (or some did not fit the send queue): drain
        /// again after acking these.
        More = 2,
        /// A drain is already in progress on this connection: wait for its `DrainEnd`.
        Busy = 3,
    }
);

wire_enum!(
    /// Outcome of a prekey upload, fetch or count.
    PrekeyStatus {
        Ok = 0,
        /// No `PrekeyUpdate` proof for this dest on this connection (upload and count only).
        NotProven = 1,
        /// A key is malformed (type byte, non-canonical X25519 u, ML-KEM modulus check); the
        /// result names which.
        BadKey = 2,
        /// An XEdDSA signature does not verify under the identity key; the result names which.
        BadSignature = 3,
        /// The slot's first upload must carry the signed part.
        NoSignedPrekey = 4,
        /// More one-time keys than a slot holds (`ONE_TIME_KEYS_MAX` of each kind).
        TooMany = 5,
        /// A one-time key id is already in the slot or repeated in the upload.
        DuplicateId = 6,
        /// The node's directory is at its slot or byte budget.
        DirectoryFull = 7,
        /// Too many fetches from this address or for this dest: retry later.
        RateLimited = 8,
        /// No bundle is stored for this dest.
        NotFound = 9,
        /// The node's service core is overloaded: retry later.
        Busy = 10,
        /// This node runs no prekey directory.
        Unavailable = 11,
    }
);

wire_enum!(
    /// Outcome of a push registration.
    PushStatus {
        Ok = 0,
        /// A dest of the request has no `PushRegister` proof on this connection.
        NotProven = 1,
        /// The token is malformed for its provider (or a Web Push endpoint is not allowed).
        BadToken = 2,
        /// The node has no credentials for this provider.
        ProviderDisabled = 3,
        /// More dests per token, or more registrations, than the node allows.
        TooMany = 4,
        /// The node's service core is overloaded: retry later.
        Busy = 5,
        /// This node sends no push wakes.
        Unavailable = 6,
    }
);

wire_enum!(
    /// Outcome of a media request (`BlobBegin`, `BlobChunk`, `BlobFinish`, `BlobGet`).
    BlobStatus {
        /// Upload: send from `offset` (after `BlobBegin`, or the length after a `BlobChunk`).
        /// Stat (`BlobGet` of length 0): the blob exists, `size` bytes.
        Ok = 0,
        /// The blob is stored and verified (`size` bytes): nothing (more) to send.
        Complete = 1,
        /// Declared size above the node's maximum.
        TooLarge = 2,
        /// The node's media storage is full.
        DiskFull = 3,
        /// The bytes do not hash to the id (the upload was discarded), or a size that differs
        /// from the stored blob's.
        Mismatch = 4,
        /// No such blob (or no upload in progress for a chunk or finish).
        NotFound = 5,
        /// A chunk did not start where the upload stands: continue from `offset`.
        BadOffset = 6,
        /// A range outside the blob, or a chunk beyond the declared size.
        BadRange = 7,
        /// The media queue of the owner core is full: retry (resume with `BlobBegin`).
        Busy = 8,
        /// This node stores no media.
        Unavailable = 9,
        /// This connection is over its upload rate: slow down and resume with `BlobBegin`.
        RateLimited = 10,
    }
);

wire_enum!(
    /// Which media request a `BlobStatus` answers.
    BlobOpKind {
        Begin = 1,
        Chunk = 2,
        Finish = 3,
        Get = 4,
    }
);

wire_enum!(
    /// A push provider.
    PushProvider {
        /// Apple Push Notification service; the token is the device token in hex.
        Apns = 1,
        /// Firebase Cloud Messaging HTTP v1; the token is the registration token.
        Fcm = 2,
        /// Web Push (RFC 8030); the token is the subscription's endpoint URL.
        WebPush = 3,
    }
);

wire_enum!(
    /// Why the node dropped a subscription without being asked.
    UnsubscribeReason {
        /// Another connection subscribed to the same dest (the newest subscriber wins).
        TakenOver = 1,
    }
);

/// Error codes carried by the `Error` frame; the node closes the connection after sending one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    UnsupportedVersion = 1,
    FrameTooLarge = 2,
    MalformedFrame = 3,
    UnknownFrameType = 4,
    UnexpectedFrame = 5,
    HandshakeTimeout = 6,
    IdleTimeout = 7,
    RateLimited = 8,
    TooManyProofFailures = 9,
    SlowReader = 10,
    ShuttingDown = 11,
    ConnectionLimit = 12,
    Unsupported = 13,
    Internal = 14,
    TlsError = 15,
    /// A partial frame made no progress in time (slowloris).
    SlowSender = 16,
    /// The node is at its memory budget and closed this connection, which held the most of it
    /// (a large partial frame, or output it does not read); or refused a new one. Retry later.
    Overloaded = 17,
}

impl ErrorCode {
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::UnsupportedVersion,
        ErrorCode::FrameTooLarge,
        ErrorCode::MalformedFrame,
        ErrorCode::UnknownFrameType,
        ErrorCode::UnexpectedFrame,
        ErrorCode::HandshakeTimeout,
        ErrorCode::IdleTimeout,
        ErrorCode::RateLimited,
        ErrorCode::TooManyProofFailures,
        ErrorCode::SlowReader,
        ErrorCode::ShuttingDown,
        ErrorCode::ConnectionLimit,
        ErrorCode::Unsupported,
        ErrorCode::Internal,
        ErrorCode::TlsError,
        ErrorCode::SlowSender,
        ErrorCode::Overloaded,
    ];
    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| *c as u16 == v)
    }
}

/// Packet flag: the sender wants a `SendResult` even when the packet was delivered.
pub const FLAG_ACK: u8 = 0x01;
/// Packet flag: the payload is a padded cell (`inner_len:u32 | data | zeros`), so every packet on a
/// link can have the same size. Opaque to the node; reserved now so the mesh needs no version break.
pub const FLAG_PADDED: u8 = 0x02;
/// Flags a node accepts today in a `Deliver` (and the packet flags of a `Send`); the rest are
/// reserved and must be zero.
pub const FLAGS_KNOWN: u8 = FLAG_ACK | FLAG_PADDED;
/// Send flag: a puzzle answer (`PUZZLE_ANSWER_BYTES`) follows `ttl_s`. Set by the encoder from
/// [`SendPass::puzzle`](crate::puzzle::SendPass); never in a `Deliver`.
pub const FLAG_PUZZLE: u8 = 0x04;
/// Send flag: a capability token (`CAPABILITY_TOKEN_BYTES`) follows `ttl_s` (after the puzzle
/// answer when both are there). Never in a `Deliver`.
pub const FLAG_CAPABILITY: u8 = 0x08;
/// Flags a `Send` may carry.
pub const SEND_FLAGS_KNOWN: u8 = FLAGS_KNOWN | FLAG_PUZZLE | FLAG_CAPABILITY;

/// One ownership proof: `MK'` and an Ed25519 signature over the proof message for (dest, op).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProofItem {
    pub dest: Dest,
    pub op: u8,
    pub blinded_key: [u8; 32],
    pub signature: [u8; 64],
}

/// Frame type bytes. Client-to-node types are below 0x80, node-to-client at or above it; `Ping`
/// and `Pong` travel both ways.
pub mod frame_type {
    pub const CLIENT_HELLO: u8 = 0x01;
    pub const CHALLENGE_REQUEST: u8 = 0x02;
    pub const PROVE: u8 = 0x03;
    pub const SUBSCRIBE: u8 = 0x04;
    pub const UNSUBSCRIBE: u8 = 0x05;
    pub const SEND: u8 = 0x06;
    pub const PING: u8 = 0x07;
    pub const PONG: u8 = 0x08;
    pub const QUERY: u8 = 0x09;
    pub const DRAIN: u8 = 0x0A;
    pub const ACK: u8 = 0x0B;
    pub const PREKEY_UPLOAD: u8 = 0x0C;
    pub const PREKEY_FETCH: u8 = 0x0D;
    pub const PREKEY_COUNT: u8 = 0x0E;
    pub const PUSH_REGISTER: u8 = 0x0F;
    pub const BLOB_BEGIN: u8 = 0x10;
    pub const BLOB_CHUNK: u8 = 0x11;
    pub const BLOB_FINISH: u8 = 0x12;
    pub const BLOB_GET: u8 = 0x13;
    pub const CAPABILITY_REGISTER: u8 = 0x14;
    /// Reserved for fixed-size onion (Sphinx) cells of the mesh layer.
    pub const CELL: u8 = 0x40;
    pub const SERVER_HELLO: u8 = 0x81;
    pub const CHALLENGE: u8 = 0x82;
    pub const PROVE_RESULT: u8 = 0x83;
    pub const SUBSCRIBE_RESULT: u8 = 0x84;
    pub const DELIVER: u8 = 0x85;
    pub const SEND_RESULT: u8 = 0x86;
    pub const UNSUBSCRIBED: u8 = 0x87;
    pub const QUERY_RESULT: u8 = 0x88;
    pub const STORED: u8 = 0x89;
    pub const DRAIN_END: u8 = 0x8A;
    pub const PREKEY_RESULT: u8 = 0x8B;
    pub const PREKEY_BUNDLE: u8 = 0x8C;
    pub const PUSH_RESULT: u8 = 0x8D;
    pub const BLOB_STATUS: u8 = 0x8E;
    pub const BLOB_DATA: u8 = 0x90;
    pub const ERROR: u8 = 0x8F;
    pub const PUZZLE: u8 = 0x91;
    pub const CAPABILITY_RESULT: u8 = 0x92;
}
use frame_type as ft;

/// Every frame of protocol version 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    ClientHello {
        version_min: u16,
        version_max: u16,
    },
    ChallengeRequest,
    Prove {
        items: Vec<ProofItem>,
    },
    Subscribe {
        dests: Vec<Dest>,
    },
    Unsubscribe {
        dests: Vec<Dest>,
    },
    Send {
        dest: Dest,
        msg_id: u64,
        flags: u8,
        /// How long the node may store the packet for an offline recipient; 0 = the node's
        /// maximum. Capped by the node's maximum.
        ttl_s: u32,
        /// A puzzle answer and/or capability token for a pressured dest (flag bits 0x04, 0x08:
        /// `flags` itself holds only the packet flags).
        pass: crate::puzzle::SendPass,
        payload: Bytes,
    },
    /// Register (or with `ttl_s` 0 remove) the capability verifier of `dest` (needs a `Drain`
    /// proof for it).
    CapabilityRegister {
        dest: Dest,
        ttl_s: u32,
        verifier: [u8; 32],
    },
    /// Which of these dests hold stored blobs? Needs no proof.
    Query {
        dests: Vec<Dest>,
    },
    /// Send me the stored blobs of `dest` (needs a `Drain` proof for it).
    Drain {
        dest: Dest,
    },
    /// These stored blobs were received: delete them (needs a `Drain` proof for each dest).
    Ack {
        items: Vec<(Dest, u64)>,
    },
    /// Store prekeys in the bundle slot of `upload.dest` (needs a `PrekeyUpdate` proof).
    PrekeyUpload {
        upload: Box<crate::prekey::Upload>,
    },
    /// Take one bundle from the slot of `dest` (consumes one-time keys; needs no proof). When
    /// the slot is under pressure, a one-time key needs `puzzle`: an answer to the `PrekeyBundle`
    /// puzzle, bound to [`prekey_fetch_digest`](crate::puzzle::prekey_fetch_digest)`(dest)`
    /// (present: its `PUZZLE_ANSWER_BYTES` follow `dest`).
    PrekeyFetch {
        dest: Dest,
        puzzle: Option<crate::puzzle::PuzzleAnswer>,
    },
    /// How many one-time keys are left in the slot of `dest` (needs a `PrekeyUpdate` proof).
    PrekeyCount {
        dest: Dest,
    },
    /// Register (or with `ttl_s` 0 remove) a push token for `dests` (each needs a `PushRegister`
    /// proof).
    PushRegister {
        provider: PushProvider,
        ttl_s: u32,
        token: Bytes,
        dests: Vec<Dest>,
    },
    /// Start or resume uploading the blob `id` (blake3 of its `size` bytes).
    BlobBegin {
        id: [u8; 32],
        size: u64,
    },
    /// Bytes of an upload, at `offset` (where the upload stands).
    BlobChunk {
        id: [u8; 32],
        offset: u64,
        data: Bytes,
    },
    /// All bytes sent: verify and store.
    BlobFinish {
        id: [u8; 32],
    },
    /// Bytes `offset .. offset + len` of a stored blob, bao-encoded with their proof (len 0:
    /// only the size, in a `BlobStatus`).
    BlobGet {
        id: [u8; 32],
        offset: u64,
        len: u32,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    Cell {
        payload: Bytes,
    },
    ServerHello {
        version: u16,
        shard: u16,
        node_id: [u8; 32],
        challenge: [u8; 32],
        unix_time_s: u64,
        frame_bytes_max: u32,
    },
    Challenge {
        challenge: [u8; 32],
        unix_time_s: u64,
    },
    ProveResult {
        items: Vec<(Dest, u8, ProofStatus)>,
    },
    SubscribeResult {
        items: Vec<(Dest, SubscribeStatus)>,
    },
    Deliver {
        dest: Dest,
        msg_id: u64,
        flags: u8,
        payload: Bytes,
    },
    SendResult {
        dest: Dest,
        msg_id: u64,
        status: SendStatus,
    },
    Unsubscribed {
        dest: Dest,
        reason: UnsubscribeReason,
    },
    /// The dests of a `Query` (among those asked) that hold stored blobs. One per owner core.
    QueryResult {
        dests: Vec<Dest>,
    },
    /// A stored blob: `pos` identifies it for `Ack`.
    Stored {
        dest: Dest,
        pos: u64,
        msg_id: u64,
        payload: Bytes,
    },
    /// The end of a `Drain` (or of the stored blobs sent on `Subscribe`).
    DrainEnd {
        dest: Dest,
        status: DrainStatus,
    },
    /// The answer to `PrekeyUpload` or `PrekeyCount`: the first bad key (`kind`, `index`) when
    /// refused, and the one-time keys left in the slot.
    PrekeyResult {
        dest: Dest,
        status: PrekeyStatus,
        kind: crate::prekey::KeyKind,
        index: u16,
        ec_left: u16,
        pq_left: u16,
    },
    /// The answer to `PrekeyFetch`: a bundle when `status` is `Ok`. `puzzle` (only with `Ok`; its
    /// 36 bytes follow the bundle) says the slot is under pressure: the bundle carries the
    /// last-resort key, and a fetch with an answer of this seed and effort may get a one-time key.
    PrekeyBundle {
        dest: Dest,
        status: PrekeyStatus,
        bundle: Option<Box<crate::prekey::SealedBundle>>,
        puzzle: Option<crate::puzzle::PuzzleAsk>,
    },
    /// The answer to a media request (`op` says which).
    BlobStatus {
        id: [u8; 32],
        op: BlobOpKind,
        status: BlobStatus,
        offset: u64,
        size: u64,
    },
    /// Part of a `BlobGet` answer: the bao encoding of the range, split over frames in order;
    /// `more` is false on the last.
    BlobData {
        id: [u8; 32],
        offset: u64,
        more: bool,
        data: Bytes,
    },
    /// The answer to `PushRegister`: the dests the token is now registered for.
    PushResult {
        status: PushStatus,
        dests_registered: u16,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Sent just before `SendResult PuzzleRequired`: the seed and effort an answer for that
    /// `Send` needs.
    Puzzle {
        dest: Dest,
        msg_id: u64,
        seed: [u8; 32],
        effort: u32,
    },
    /// The answer to `CapabilityRegister`.
    CapabilityResult {
        dest: Dest,
        status: CapabilityStatus,
    },
}

/// Why a byte sequence is not a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length prefix announces more than [`FRAME_BYTES_MAX`].
    FrameTooLarge {
        frame_len: u64,
    },
    /// A length prefix of zero: no type byte.
    EmptyFrame,
    /// A packet payload above [`PACKET_PAYLOAD_BYTES_MAX`] (it could not be handed back as
    /// `Stored`).
    PayloadTooLarge {
        payload_len: u64,
    },
    UnknownType {
        frame_type: u8,
    },
    /// The body ended before a field did.
    Truncated {
        frame_type: u8,
    },
    /// Bytes left after the last field.
    TrailingBytes {
        frame_type: u8,
    },
    /// A count field above its limit.
    CountTooLarge {
        frame_type: u8,
        count: u64,
    },
    /// A field holds a value this version does not define.
    InvalidValue {
        frame_type: u8,
        field: &'static str,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::FrameTooLarge { frame_len } => {
                write!(f, "frame of {frame_len} bytes exceeds {FRAME_BYTES_MAX}")
            }
            DecodeError::EmptyFrame => write!(f, "empty frame"),
            DecodeError::PayloadTooLarge { payload_len } => {
                write!(
                    f,
                    "packet payload of {payload_len} bytes exceeds {PACKET_PAYLOAD_BYTES_MAX}"
                )
            }
            DecodeError::UnknownType { frame_type } => {
                write!(f, "unknown frame type {frame_type:#04x}")
            }
            DecodeError::Truncated { frame_type } => write!(f, "frame {frame_type:#04x} truncated"),
            DecodeError::TrailingBytes { frame_type } => {
                write!(f, "frame {frame_type:#04x} has trailing bytes")
            }
            DecodeError::CountTooLarge { frame_type, count } => {
                write!(f, "frame {frame_type:#04x} count {count} above its limit")
            }
            DecodeError::InvalidValue { frame_type, field } => {
                write!(
                    f,
                    "frame {frame_type:#04x} field {field} has an invalid value"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

impl DecodeError {
    /// The error code a node answers this decode error with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } | DecodeError::PayloadTooLarge { .. } => {
                ErrorCode::FrameTooLarge
            }
            DecodeError::UnknownType { .. } => ErrorCode::UnknownFrameType,
            _ => ErrorCode::MalformedFrame,
        }
    }
}

/// `n` as the u16 count or length field that announces it, asserting its limit `max` (each such
/// limit is const-asserted to fit a u16 in `limits.rs`): a clamped count would announce fewer
/// items than follow it, and the stream would lose its framing.
pub(crate) fn count_u16(n: usize, max: usize) -> u16 {
    assert!(n <= max, "count or length {n} over its limit {max}");
    u16::try_from(n).expect("every count limit fits a u16 (limits.rs)")
}

/// A frame's length (type byte and body) as its u32 prefix, asserting [`FRAME_BYTES_MAX`].
pub(crate) fn frame_len_u32(frame_len: usize) -> u32 {
    assert!(
        frame_len <= FRAME_BYTES_MAX,
        "frame of {frame_len} bytes over FRAME_BYTES_MAX ({FRAME_BYTES_MAX})"
    );
    u32::try_from(frame_len).expect("FRAME_BYTES_MAX fits a u32 (limits.rs)")
}

/// Writes the header of a `Send` or `Deliver` frame; the caller appends `payload_len` bytes.
/// This is the hot path's encoder: the payload is copied once, straight from the packet buffer.
#[inline]
pub fn put_packet_header(
    out: &mut impl BufMut,
    frame_type: u8,
    dest: &Dest,
    msg_id: u64,
    flags: u8,
    payload_len: usize,
) {
    assert!(payload_len <= PACKET_PAYLOAD_BYTES_MAX);
    out.put_u32_le(frame_len_u32(PACKET_HEADER_BYTES + payload_len));
    out.put_u8(frame_type);
    out.put_slice(&dest.0);
    out.put_u64_le(msg_id);
    out.put_u8(flags);
}

/// Writes the header of a `Send` frame (it carries a TTL, unlike `Deliver`); the caller appends
/// `payload_len` bytes.
#[inline]
pub fn put_send_header(
    out: &mut impl BufMut,
    dest: &Dest,
    msg_id: u64,
    flags: u8,
    ttl_s: u32,
    payload_len: usize,
) {
    put_send_header_with(
        out,
        dest,
        msg_id,
        flags,
        ttl_s,
        &crate::puzzle::SendPass::NONE,
        payload_len,
    );
}

/// Writes the header of a `Send` frame with its pass (puzzle answer, capability token): the flag
/// bits 0x04 and 0x08 are set from what `pass` holds. The caller appends `payload_len` bytes.
#[inline]
pub fn put_send_header_with(
    out: &mut impl BufMut,
    dest: &Dest,
    msg_id: u64,
    flags: u8,
    ttl_s: u32,
    pass: &crate::puzzle::SendPass,
    payload_len: usize,
) {
    assert!(payload_len <= PACKET_PAYLOAD_BYTES_MAX);
    assert_eq!(flags & !FLAGS_KNOWN, 0, "pass flags come from `pass`");
    let mut wire_flags = flags;
    if pass.puzzle.is_some() {
        wire_flags |= FLAG_PUZZLE;
    }
    if pass.capability.is_some() {
        wire_flags |= FLAG_CAPABILITY;
    }
    out.put_u32_le(frame_len_u32(
        SEND_HEADER_BYTES + pass.wire_bytes() + payload_len,
    ));
    out.put_u8(ft::SEND);
    out.put_slice(&dest.0);
    out.put_u64_le(msg_id);
    out.put_u8(wire_flags);
    out.put_u32_le(ttl_s);
    if let Some(a) = &pass.puzzle {
        out.put_slice(&a.nonce);
        out.put_u32_le(a.effort);
        out.put_slice(&a.solution);
    }
    if let Some(t) = &pass.capability {
        out.put_slice(t);
    }
}

impl Frame {
    pub fn frame_type(&self) -> u8 {
        match self {
            Frame::ClientHello { .. } => ft::CLIENT_HELLO,
            Frame::ChallengeRequest => ft::CHALLENGE_REQUEST,
            Frame::Prove { .. } => ft::PROVE,
            Frame::Subscribe { .. } => ft::SUBSCRIBE,
            Frame::Unsubscribe { .. } => ft::UNSUBSCRIBE,
            Frame::Send { .. } => ft::SEND,
            Frame::CapabilityRegister { .. } => ft::CAPABILITY_REGISTER,
            Frame::Puzzle { .. } => ft::PUZZLE,
            Frame::CapabilityResult { .. } => ft::CAPABILITY_RESULT,
            Frame::Query { .. } => ft::QUERY,
            Frame::Drain { .. } => ft::DRAIN,
            Frame::Ack { .. } => ft::ACK,
            Frame::QueryResult { .. } => ft::QUERY_RESULT,
            Frame::Stored { .. } => ft::STORED,
            Frame::DrainEnd { .. } => ft::DRAIN_END,
            Frame::PrekeyUpload { .. } => ft::PREKEY_UPLOAD,
            Frame::PrekeyFetch { .. } => ft::PREKEY_FETCH,
            Frame::PrekeyCount { .. } => ft::PREKEY_COUNT,
            Frame::PushRegister { .. } => ft::PUSH_REGISTER,
            Frame::PrekeyResult { .. } => ft::PREKEY_RESULT,
            Frame::PrekeyBundle { .. } => ft::PREKEY_BUNDLE,
            Frame::PushResult { .. } => ft::PUSH_RESULT,
            Frame::BlobBegin { .. } => ft::BLOB_BEGIN,
            Frame::BlobChunk { .. } => ft::BLOB_CHUNK,
            Frame::BlobFinish { .. } => ft::BLOB_FINISH,
            Frame::BlobGet { .. } => ft::BLOB_GET,
            Frame::BlobStatus { .. } => ft::BLOB_STATUS,
            Frame::BlobData { .. } => ft::BLOB_DATA,
            Frame::Ping { .. } => ft::PING,
            Frame::Pong { .. } => ft::PONG,
            Frame::Cell { .. } => ft::CELL,
            Frame::ServerHello { .. } => ft::SERVER_HELLO,
            Frame::Challenge { .. } => ft::CHALLENGE,
            Frame::ProveResult { .. } => ft::PROVE_RESULT,
            Frame::SubscribeResult { .. } => ft::SUBSCRIBE_RESULT,
            Frame::Deliver { .. } => ft::DELIVER,
            Frame::SendResult { .. } => ft::SEND_RESULT,
            Frame::Unsubscribed { .. } => ft::UNSUBSCRIBED,
            Frame::Error { .. } => ft::ERROR,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Frame::ClientHello { .. } => 4 + 2 + 2,
            Frame::ChallengeRequest => 0,
            Frame::Prove { items } => 2 + items.len() * PROOF_ITEM_BYTES,
            Frame::Subscribe { dests } | Frame::Unsubscribe { dests } => 2 + dests.len() * 16,
            Frame::Send { payload, pass, .. } => {
                SEND_HEADER_BYTES - 1 + pass.wire_bytes() + payload.len()
            }
            Frame::CapabilityRegister { .. } => 16 + 4 + 32,
            Frame::Puzzle { .. } => 16 + 8 + 32 + 4,
            Frame::CapabilityResult { .. } => 16 + 1,
            Frame::Deliver { payload, .. } => PACKET_HEADER_BYTES - 1 + payload.len(),
            Frame::Query { dests } | Frame::QueryResult { dests } => 2 + dests.len() * 16,
            Frame::Drain { .. } => 16,
            Frame::Ack { items } => 2 + items.len() * 24,
            Frame::Stored { payload, .. } => 16 + 8 + 8 + payload.len(),
            Frame::DrainEnd { .. } => 16 + 1,
            Frame::PrekeyUpload { upload } => upload.encoded_len(),
            Frame::PrekeyFetch { puzzle, .. } => {
                16 + puzzle.map_or(0, |_| crate::puzzle::PUZZLE_ANSWER_BYTES)
            }
            Frame::PrekeyCount { .. } => 16,
            Frame::PushRegister { token, dests, .. } => {
                1 + 4 + 2 + token.len() + 2 + dests.len() * 16
            }
            Frame::PrekeyResult { .. } => 16 + 1 + 1 + 2 + 2 + 2,
            Frame::PrekeyBundle { bundle, puzzle, .. } => {
                16 + 1
                    + bundle.as_ref().map_or(0, |b| b.body_len())
                    + puzzle.map_or(0, |_| crate::puzzle::PUZZLE_ASK_BYTES)
            }
            Frame::PushResult { .. } => 1 + 2,
            Frame::BlobBegin { .. } => 32 + 8,
            Frame::BlobChunk { data, .. } => 32 + 8 + data.len(),
            Frame::BlobFinish { .. } => 32,
            Frame::BlobGet { .. } => 32 + 8 + 4,
            Frame::BlobStatus { .. } => 32 + 1 + 1 + 8 + 8,
            Frame::BlobData { data, .. } => 32 + 8 + 1 + data.len(),
            Frame::Ping { .. } | Frame::Pong { .. } => 8,
            Frame::Cell { payload } => payload.len(),
            Frame::ServerHello { .. } => 2 + 2 + 32 + 32 + 8 + 4,
            Frame::Challenge { .. } => 32 + 8,
            Frame::ProveResult { items } => 2 + items.len() * 18,
            Frame::SubscribeResult { items } => 2 + items.len() * 17,
            Frame::SendResult { .. } => 16 + 8 + 1,
            Frame::Unsubscribed { .. } => 16 + 1,
            Frame::Error { message, .. } => {
                2 + 2 + truncate_utf8(message, ERROR_MESSAGE_BYTES_MAX).len()
            }
        }
    }

    /// Bytes this frame takes on the wire, length prefix included.
    pub fn encoded_len(&self) -> usize {
        FRAME_PREFIX_BYTES + 1 + self.body_len()
    }

    /// Appends the encoded frame to `out`. Panics only on a programmer error: a frame that breaks
    /// its own limits (too many items, an oversized payload).
    pub fn encode(&self, out: &mut impl BufMut) {
        let frame_len = 1 + self.body_len();
        assert!(
            frame_len <= FRAME_BYTES_MAX,
            "frame over FRAME_BYTES_MAX: {frame_len}"
        );
        match self {
            Frame::Send {
                dest,
                msg_id,
                flags,
                ttl_s,
                pass,
                payload,
            } => {
                put_send_header_with(out, dest, *msg_id, *flags, *ttl_s, pass, payload.len());
                out.put_slice(payload);
                return;
            }
            Frame::Deliver {
                dest,
                msg_id,
                flags,
                payload,
            } => {
                put_packet_header(out, self.frame_type(), dest, *msg_id, *flags, payload.len());
                out.put_slice(payload);
                return;
            }
            _ => {}
        }
        out.put_u32_le(frame_len_u32(frame_len));
        out.put_u8(self.frame_type());
        match self {
            Frame::ClientHello {
                version_min,
                version_max,
            } => {
                out.put_slice(&HELLO_MAGIC);
                out.put_u16_le(*version_min);
                out.put_u16_le(*version_max);
            }
            Frame::ChallengeRequest => {}
            Frame::Prove { items } => {
                out.put_u16_le(count_u16(items.len(), PROOFS_PER_FRAME_MAX));
                for item in items {
                    out.put_slice(&item.dest.0);
                    out.put_u8(item.op);
                    out.put_slice(&item.blinded_key);
                    out.put_slice(&item.signature);
                }
            }
            Frame::Subscribe { dests } | Frame::Unsubscribe { dests } => {
                out.put_u16_le(count_u16(dests.len(), DESTS_PER_FRAME_MAX));
                for dest in dests {
                    out.put_slice(&dest.0);
                }
            }
            Frame::Ping { nonce } | Frame::Pong { nonce } => out.put_u64_le(*nonce),
            Frame::Cell { payload } => out.put_slice(payload),
            Frame::ServerHello {
                version,
                shard,
                node_id,
                challenge,
                unix_time_s,
                frame_bytes_max,
            } => {
                out.put_u16_le(*version);
                out.put_u16_le(*shard);
                out.put_slice(node_id);
                out.put_slice(challenge);
                out.put_u64_le(*unix_time_s);
                out.put_u32_le(*frame_bytes_max);
            }
            Frame::Challenge {
                challenge,
                unix_time_s,
            } => {
                out.put_slice(challenge);
                out.put_u64_le(*unix_time_s);
            }
            Frame::ProveResult { items } => {
                out.put_u16_le(count_u16(items.len(), PROOFS_PER_FRAME_MAX));
                for (dest, op, status) in items {
                    out.put_slice(&dest.0);
                    out.put_u8(*op);
                    out.put_u8(*status as u8);
                }
            }
            Frame::SubscribeResult { items } => {
                out.put_u16_le(count_u16(items.len(), DESTS_PER_FRAME_MAX));
                for (dest, status) in items {
                    out.put_slice(&dest.0);
                    out.put_u8(*status as u8);
                }
            }
            Frame::SendResult {
                dest,
                msg_id,
                status,
            } => {
                out.put_slice(&dest.0);
                out.put_u64_le(*msg_id);
                out.put_u8(*status as u8);
            }
            Frame::Unsubscribed { dest, reason } => {
                out.put_slice(&dest.0);
                out.put_u8(*reason as u8);
            }
            Frame::Error { code, message } => {
                let message = truncate_utf8(message, ERROR_MESSAGE_BYTES_MAX);
                out.put_u16_le(*code as u16);
                out.put_u16_le(count_u16(message.len(), ERROR_MESSAGE_BYTES_MAX));
                out.put_slice(message.as_bytes());
            }
            Frame::Query { dests } | Frame::QueryResult { dests } => {
                out.put_u16_le(count_u16(dests.len(), DESTS_PER_FRAME_MAX));
                for dest in dests {
                    out.put_slice(&dest.0);
                }
            }
            Frame::Drain { dest } => out.put_slice(&dest.0),
            Frame::CapabilityRegister {
                dest,
                ttl_s,
                verifier,
            } => {
                out.put_slice(&dest.0);
                out.put_u32_le(*ttl_s);
                out.put_slice(verifier);
            }
            Frame::Puzzle {
                dest,
                msg_id,
                seed,
                effort,
            } => {
                out.put_slice(&dest.0);
                out.put_u64_le(*msg_id);
                out.put_slice(seed);
                out.put_u32_le(*effort);
            }
            Frame::CapabilityResult { dest, status } => {
                out.put_slice(&dest.0);
                out.put_u8(*status as u8);
            }
            Frame::Ack { items } => {
                out.put_u16_le(count_u16(items.len(), DESTS_PER_FRAME_MAX));
                for (dest, pos) in items {
                    out.put_slice(&dest.0);
                    out.put_u64_le(*pos);
                }
            }
            Frame::Stored {
                dest,
                pos,
                msg_id,
                payload,
            } => {
                out.put_slice(&dest.0);
                out.put_u64_le(*pos);
                out.put_u64_le(*msg_id);
                out.put_slice(payload);
            }
            Frame::DrainEnd { dest, status } => {
                out.put_slice(&dest.0);
                out.put_u8(*status as u8);
            }
            Frame::PrekeyUpload { upload } => upload.encode(out),
            Frame::PrekeyFetch { dest, puzzle } => {
                out.put_slice(&dest.0);
                if let Some(a) = puzzle {
                    out.put_slice(&a.nonce);
                    out.put_u32_le(a.effort);
                    out.put_slice(&a.solution);
                }
            }
            Frame::PrekeyCount { dest } => out.put_slice(&dest.0),
            Frame::PushRegister {
                provider,
                ttl_s,
                token,
                dests,
            } => {
                out.put_u8(*provider as u8);
                out.put_u32_le(*ttl_s);
                out.put_u16_le(count_u16(token.len(), PUSH_TOKEN_BYTES_MAX));
                out.put_slice(token);
                out.put_u16_le(count_u16(dests.len(), DESTS_PER_FRAME_MAX));
                for dest in dests {
                    out.put_slice(&dest.0);
                }
            }
            Frame::PrekeyResult {
                dest,
                status,
                kind,
                index,
                ec_left,
                pq_left,
            } => {
                out.put_slice(&dest.0);
                out.put_u8(*status as u8);
                out.put_u8(*kind as u8);
                out.put_u16_le(*index);
                out.put_u16_le(*ec_left);
                out.put_u16_le(*pq_left);
            }
            Frame::PrekeyBundle {
                dest,
                status,
                bundle,
                puzzle,
            } => {
                assert_eq!(bundle.is_some(), *status == PrekeyStatus::Ok);
                assert!(
                    puzzle.is_none() || bundle.is_some(),
                    "a puzzle comes with a bundle"
                );
                out.put_slice(&dest.0);
                out.put_u8(*status as u8);
                if let Some(b) = bundle {
                    b.encode(out);
                }
                if let Some(p) = puzzle {
                    out.put_slice(&p.seed);
                    out.put_u32_le(p.effort);
                }
            }
            Frame::PushResult {
                status,
                dests_registered,
            } => {
                out.put_u8(*status as u8);
                out.put_u16_le(*dests_registered);
            }
            Frame::BlobBegin { id, size } => {
                out.put_slice(id);
                out.put_u64_le(*size);
            }
            Frame::BlobChunk { id, offset, data } => {
                out.put_slice(id);
                out.put_u64_le(*offset);
                out.put_slice(data);
            }
            Frame::BlobFinish { id } => out.put_slice(id),
            Frame::BlobGet { id, offset, len } => {
                out.put_slice(id);
                out.put_u64_le(*offset);
                out.put_u32_le(*len);
            }
            Frame::BlobStatus {
                id,
                op,
                status,
                offset,
                size,
            } => {
                out.put_slice(id);
                out.put_u8(*op as u8);
                out.put_u8(*status as u8);
                out.put_u64_le(*offset);
                out.put_u64_le(*size);
            }
            Frame::BlobData {
                id,
                offset,
                more,
                data,
            } => {
                out.put_slice(id);
                out.put_u64_le(*offset);
                out.put_u8(u8::from(*more));
                out.put_slice(data);
            }
            Frame::Send { .. } | Frame::Deliver { .. } => unreachable!("handled above"),
        }
    }

    /// Encodes into a fresh buffer (tests and cold paths).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut out);
        debug_assert_eq!(out.len(), self.encoded_len());
        out.freeze()
    }

    /// Parses one frame from `frame` = type byte + body (the length prefix already removed).
    pub fn decode_body(mut frame: Bytes) -> Result<Frame, DecodeError> {
        if frame.is_empty() {
            return Err(DecodeError::EmptyFrame);
        }
        let t = frame.get_u8();
        let mut r = Reader { buf: frame, t };
        let f = match t {
            ft::CLIENT_HELLO => {
                let magic = r.array::<4>()?;
                if magic != HELLO_MAGIC {
                    return Err(DecodeError::InvalidValue {
                        frame_type: t,
                        field: "magic",
                    });
                }
                Frame::ClientHello {
                    version_min: r.u16()?,
                    version_max: r.u16()?,
                }
            }
            ft::CHALLENGE_REQUEST => Frame::ChallengeRequest,
            ft::PROVE => {
                let n = r.count(PROOFS_PER_FRAME_MAX, PROOF_ITEM_BYTES)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(ProofItem {
                        dest: Dest(r.array()?),
                        op: r.u8()?,
                        blinded_key: r.array()?,
                        signature: r.array()?,
                    });
                }
                Frame::Prove { items }
            }
            ft::SUBSCRIBE | ft::UNSUBSCRIBE => {
                let dests = r.dests()?;
                if t == ft::SUBSCRIBE {
                    Frame::Subscribe { dests }
                } else {
                    Frame::Unsubscribe { dests }
                }
            }
            ft::SEND | ft::DELIVER => {
                let dest = Dest(r.array()?);
                let msg_id = r.u64()?;
                let flags = r.u8()?;
                let known = if t == ft::SEND {
                    SEND_FLAGS_KNOWN
                } else {
                    FLAGS_KNOWN
                };
                if flags & !known != 0 {
                    return Err(DecodeError::InvalidValue {
                        frame_type: t,
                        field: "flags",
                    });
                }
                if t == ft::SEND {
                    let ttl_s = r.u32()?;
                    let mut pass = crate::puzzle::SendPass::NONE;
                    if flags & FLAG_PUZZLE != 0 {
                        pass.puzzle = Some(crate::puzzle::PuzzleAnswer {
                            nonce: r.array()?,
                            effort: r.u32()?,
                            solution: r.array()?,
                        });
                    }
                    if flags & FLAG_CAPABILITY != 0 {
                        pass.capability = Some(r.array()?);
                    }
                    let flags = flags & FLAGS_KNOWN;
                    let payload = r.rest();
                    if payload.len() > PACKET_PAYLOAD_BYTES_MAX {
                        return Err(DecodeError::PayloadTooLarge {
                            payload_len: payload.len() as u64,
                        });
                    }
                    Frame::Send {
                        dest,
                        msg_id,
                        flags,
                        ttl_s,
                        pass,
                        payload,
                    }
                } else {
                    let payload = r.rest();
                    Frame::Deliver {
                        dest,
                        msg_id,
                        flags,
                        payload,
                    }
                }
            }
            ft::QUERY | ft::QUERY_RESULT => {
                let dests = r.dests()?;
                if t == ft::QUERY {
                    Frame::Query { dests }
                } else {
                    Frame::QueryResult { dests }
                }
            }
            ft::DRAIN => Frame::Drain {
                dest: Dest(r.array()?),
            },
            ft::CAPABILITY_REGISTER => Frame::CapabilityRegister {
                dest: Dest(r.array()?),
                ttl_s: r.u32()?,
                verifier: r.array()?,
            },
            ft::PUZZLE => Frame::Puzzle {
                dest: Dest(r.array()?),
                msg_id: r.u64()?,
                seed: r.array()?,
                effort: r.u32()?,
            },
            ft::CAPABILITY_RESULT => Frame::CapabilityResult {
                dest: Dest(r.array()?),
                status: r.enum_u8(CapabilityStatus::from_u8, "status")?,
            },
            ft::ACK => {
                let n = r.count(DESTS_PER_FRAME_MAX, 24)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push((Dest(r.array()?), r.u64()?));
                }
                Frame::Ack { items }
            }
            ft::STORED => Frame::Stored {
                dest: Dest(r.array()?),
                pos: r.u64()?,
                msg_id: r.u64()?,
                payload: r.rest(),
            },
            ft::DRAIN_END => Frame::DrainEnd {
                dest: Dest(r.array()?),
                status: r.enum_u8(DrainStatus::from_u8, "status")?,
            },
            ft::PREKEY_UPLOAD => Frame::PrekeyUpload {
                upload: Box::new(crate::prekey::Upload::decode(&mut r)?),
            },
            ft::PREKEY_FETCH => {
                let dest = Dest(r.array()?);
                // The answer is optional: present exactly when bytes follow `dest`.
                let puzzle = if r.is_empty() {
                    None
                } else {
                    Some(crate::puzzle::PuzzleAnswer {
                        nonce: r.array()?,
                        effort: r.u32()?,
                        solution: r.array()?,
                    })
                };
                Frame::PrekeyFetch { dest, puzzle }
            }
            ft::PREKEY_COUNT => Frame::PrekeyCount {
                dest: Dest(r.array()?),
            },
            ft::PUSH_REGISTER => {
                let provider = r.enum_u8(PushProvider::from_u8, "provider")?;
                let ttl_s = r.u32()?;
                let n = r.count(PUSH_TOKEN_BYTES_MAX, 1)?;
                let token = r.take(n)?;
                let dests = r.dests()?;
                Frame::PushRegister {
                    provider,
                    ttl_s,
                    token,
                    dests,
                }
            }
            ft::PREKEY_RESULT => Frame::PrekeyResult {
                dest: Dest(r.array()?),
                status: r.enum_u8(PrekeyStatus::from_u8, "status")?,
                kind: r.enum_u8(crate::prekey::KeyKind::from_u8, "kind")?,
                index: r.u16()?,
                ec_left: r.u16()?,
                pq_left: r.u16()?,
            },
            ft::PREKEY_BUNDLE => {
                let dest = Dest(r.array()?);
                let status = r.enum_u8(PrekeyStatus::from_u8, "status")?;
                let bundle = if status == PrekeyStatus::Ok {
                    Some(Box::new(crate::prekey::SealedBundle::decode(&mut r)?))
                } else {
                    None
                };
                // The puzzle is optional: present exactly when bytes follow an `Ok` bundle.
                let puzzle = if bundle.is_some() && !r.is_empty() {
                    Some(crate::puzzle::PuzzleAsk {
                        seed: r.array()?,
                        effort: r.u32()?,
                    })
                } else {
                    None
                };
                Frame::PrekeyBundle {
                    dest,
                    status,
                    bundle,
                    puzzle,
                }
            }
            ft::PUSH_RESULT => Frame::PushResult {
                status: r.enum_u8(PushStatus::from_u8, "status")?,
                dests_registered: r.u16()?,
            },
            ft::BLOB_BEGIN => Frame::BlobBegin {
                id: r.array()?,
                size: r.u64()?,
            },
            ft::BLOB_CHUNK => Frame::BlobChunk {
                id: r.array()?,
                offset: r.u64()?,
                data: r.rest(),
            },
            ft::BLOB_FINISH => Frame::BlobFinish { id: r.array()? },
            ft::BLOB_GET => {
                let id = r.array()?;
                let offset = r.u64()?;
                let len = r.u32()?;
                if !usize::try_from(len).is_ok_and(|n| n <= BLOB_GET_BYTES_MAX) {
                    return Err(DecodeError::CountTooLarge {
                        frame_type: t,
                        count: u64::from(len),
                    });
                }
                Frame::BlobGet { id, offset, len }
            }
            ft::BLOB_STATUS => Frame::BlobStatus {
                id: r.array()?,
                op: r.enum_u8(BlobOpKind::from_u8, "op")?,
                status: r.enum_u8(BlobStatus::from_u8, "status")?,
                offset: r.u64()?,
                size: r.u64()?,
            },
            ft::BLOB_DATA => Frame::BlobData {
                id: r.array()?,
                offset: r.u64()?,
                more: r.bool("more")?,
                data: r.rest(),
            },
            ft::PING => Frame::Ping { nonce: r.u64()? },
            ft::PONG => Frame::Pong { nonce: r.u64()? },
            ft::CELL => Frame::Cell { payload: r.rest() },
            ft::SERVER_HELLO => Frame::ServerHello {
                version: r.u16()?,
                shard: r.u16()?,
                node_id: r.array()?,
                challenge: r.array()?,
                unix_time_s: r.u64()?,
                frame_bytes_max: r.u32()?,
            },
            ft::CHALLENGE => Frame::Challenge {
                challenge: r.array()?,
                unix_time_s: r.u64()?,
            },
            ft::PROVE_RESULT => {
                let n = r.count(PROOFS_PER_FRAME_MAX, 18)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    let dest = Dest(r.array()?);
                    let op = r.u8()?;
                    let status = r.enum_u8(ProofStatus::from_u8, "status")?;
                    items.push((dest, op, status));
                }
                Frame::ProveResult { items }
            }
            ft::SUBSCRIBE_RESULT => {
                let n = r.count(DESTS_PER_FRAME_MAX, 17)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    let dest = Dest(r.array()?);
                    items.push((dest, r.enum_u8(SubscribeStatus::from_u8, "status")?));
                }
                Frame::SubscribeResult { items }
            }
            ft::SEND_RESULT => Frame::SendResult {
                dest: Dest(r.array()?),
                msg_id: r.u64()?,
                status: r.enum_u8(SendStatus::from_u8, "status")?,
            },
            ft::UNSUBSCRIBED => Frame::Unsubscribed {
                dest: Dest(r.array()?),
                reason: r.enum_u8(UnsubscribeReason::from_u8, "reason")?,
            },
            ft::ERROR => {
                let code = ErrorCode::from_u16(r.u16()?).ok_or(DecodeError::InvalidValue {
                    frame_type: t,
                    field: "code",
                })?;
                let len = usize::from(r.u16()?);
                if len > ERROR_MESSAGE_BYTES_MAX {
                    return Err(DecodeError::CountTooLarge {
                        frame_type: t,
                        count: len as u64,
                    });
                }
                let bytes = r.take(len)?;
                let message =
                    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidValue {
                        frame_type: t,
                        field: "message",
                    })?;
                Frame::Error { code, message }
            }
            other => return Err(DecodeError::UnknownType { frame_type: other }),
        };
        if r.buf.has_remaining() {
            return Err(DecodeError::TrailingBytes { frame_type: t });
        }
        Ok(f)
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub(crate) struct Reader {
    buf: Bytes,
    t: u8,
}

impl Reader {
    pub(crate) fn new(buf: Bytes, t: u8) -> Reader {
        Reader { buf, t }
    }
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.has_remaining() {
            Err(DecodeError::TrailingBytes { frame_type: self.t })
        } else {
            Ok(())
        }
    }
    pub(crate) fn invalid(&self, field: &'static str) -> DecodeError {
        DecodeError::InvalidValue {
            frame_type: self.t,
            field,
        }
    }
    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.invalid(field)),
        }
    }
    pub(crate) fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(DecodeError::Truncated { frame_type: self.t })
        } else {
            Ok(())
        }
    }
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16_le())
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32_le())
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_u64_le())
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.need(N)?;
        let mut a = [0u8; N];
        self.buf.copy_to_slice(&mut a);
        Ok(a)
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }
    pub(crate) fn is_empty(&self) -> bool {
        !self.buf.has_remaining()
    }
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }
    /// Reads a u16 count, checks it against `max` and against the bytes actually present, so that
    /// a lying count cannot make us allocate.
    pub(crate) fn count(&mut self, max: usize, item_bytes: usize) -> Result<usize, DecodeError> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(DecodeError::CountTooLarge {
                frame_type: self.t,
                count: n as u64,
            });
        }
        self.need(n * item_bytes)?;
        Ok(n)
    }
    /// A u16 count of destination hashes, then the hashes.
    pub(crate) fn dests(&mut self) -> Result<Vec<Dest>, DecodeError> {
        let n = self.count(DESTS_PER_FRAME_MAX, 16)?;
        let mut dests = Vec::with_capacity(n);
        for _ in 0..n {
            dests.push(Dest(self.array()?));
        }
        Ok(dests)
    }
    pub(crate) fn enum_u8<T>(
        &mut self,
        f: fn(u8) -> Option<T>,
        field: &'static str,
    ) -> Result<T, DecodeError> {
        let v = self.u8()?;
        f(v).ok_or(DecodeError::InvalidValue {
            frame_type: self.t,
            field,
        })
    }
}

/// Takes one whole frame off the front of `buf`, if one is there.
///
/// Returns `Ok(None)` when more bytes are needed. A too-large length prefix is reported as soon as
/// the prefix is readable, before the body arrives, so a peer cannot make us buffer it.
pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
    match split_frame(buf)? {
        Some(body) => Frame::decode_body(body).map(Some),
        None => Ok(None),
    }
}

/// Splits one whole frame (type + body, prefix removed) off `buf` without parsing it.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
    if buf.len() < FRAME_PREFIX_BYTES {
        return Ok(None);
    }
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    prefix.copy_from_slice(&buf[..FRAME_PREFIX_BYTES]);
    let frame_len = u32::from_le_bytes(prefix);
    if frame_len == 0 {
        return Err(DecodeError::EmptyFrame);
    }
    let frame_len_usize = match usize::try_from(frame_len) {
        Ok(n) if n <= FRAME_BYTES_MAX => n,
        _ => {
            return Err(DecodeError::FrameTooLarge {
                frame_len: u64::from(frame_len),
            });
        }
    };
    if buf.len() < FRAME_PREFIX_BYTES + frame_len_usize {
        buf.reserve(FRAME_PREFIX_BYTES + frame_len_usize - buf.len());
        return Ok(None);
    }
    buf.advance(FRAME_PREFIX_BYTES);
    Ok(Some(buf.split_to(frame_len_usize).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An over-long message whose cut at `ERROR_MESSAGE_BYTES_MAX` falls inside a character is
    /// truncated further back; the length prefix must count the bytes actually written.
    #[test]
    fn error_message_truncated_inside_a_character_keeps_the_stream_framed() {
        let message = format!("{}é", "a".repeat(ERROR_MESSAGE_BYTES_MAX - 1));
        let f = Frame::Error {
            code: ErrorCode::Internal,
            message,
        };
        let mut out = BytesMut::new();
        f.encode(&mut out);
        assert_eq!(out.len(), f.encoded_len());
        Frame::Ping { nonce: 7 }.encode(&mut out);
        let Some(Frame::Error { message, .. }) = decode_frame(&mut out).unwrap() else {
            panic!("not an Error frame");
        };
        assert_eq!(message, "a".repeat(ERROR_MESSAGE_BYTES_MAX - 1));
        assert_eq!(
            decode_frame(&mut out).unwrap(),
            Some(Frame::Ping { nonce: 7 })
        );
        assert!(out.is_empty());
    }
}
