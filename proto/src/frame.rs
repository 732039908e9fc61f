//! Frames: `len:u32le | type:u8 | body`. `len` counts the type byte and the body. Every integer is
//! fixed-width little-endian. Decoding never panics: any input either yields a frame, asks for more
//! bytes, or fails with a [`DecodeError`] that names what was wrong.
//!
//! This file holds the frame types and their wire enums; the codec is in `frame/encode.rs` and
//! `frame/decode.rs`.

use bytes::Bytes;

use crate::limits::{FRAME_BYTES_MAX, PACKET_PAYLOAD_BYTES_MAX};

mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub(crate) use decode::Reader;
pub use decode::{decode_frame, split_frame};
pub(crate) use encode::{count_u16, frame_len_u32};
pub use encode::{put_packet_header, put_send_header, put_send_header_with};

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
