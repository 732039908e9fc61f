//! What a server connection hands to its shard: [`ServerEvent`] and the media requests in it.

use bytes::Bytes;

use crate::frame::{Dest, ProofItem, PushProvider};

/// What a server connection hands to its shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// A packet to route to `dest`. The shard answers with
    /// [`ServerConn::send_result`](super::ServerConn::send_result) when due.
    Send {
        dest: Dest,
        msg_id: u64,
        flags: u8,
        ttl_s: u32,
        /// Puzzle answer and capability token, unchecked: the shard checks them.
        pass: crate::puzzle::SendPass,
        payload: Bytes,
    },
    /// Register a capability verifier for a dest proven for `Op::Drain` (its owner core keeps it).
    CapabilityRegister {
        dest: Dest,
        ttl_s: u32,
        verifier: [u8; 32],
    },
    /// Which of these dests hold stored blobs. Only dests this connection owns
    /// ([`ServerConn::owns`](super::ServerConn::owns)) are kept; the others were dropped (answered
    /// as holding nothing).
    Query { dests: Vec<Dest> },
    /// Stream the stored blobs of `dest` (proven for `Op::Drain`).
    Drain { dest: Dest },
    /// Delete these stored blobs (each dest proven for `Op::Drain`; unproven ones are dropped).
    Ack { items: Vec<(Dest, u64)> },
    /// Proofs to check. The shard may refuse them (rate limit) or call
    /// [`ServerConn::answer_proofs`](super::ServerConn::answer_proofs).
    Prove { items: Vec<ProofItem> },
    /// Newly subscribed dests (already proven and counted); the shard registers them with owners.
    Subscribe { dests: Vec<Dest> },
    /// Dests this connection stopped subscribing to; the shard removes them at their owners.
    Unsubscribe { dests: Vec<Dest> },
    /// The client wants a fresh challenge: call
    /// [`ServerConn::issue_challenge`](super::ServerConn::issue_challenge).
    ChallengeRequested,
    /// A prekey upload for a dest proven for `Op::PrekeyUpdate` (checked on the service core).
    PrekeyUpload { upload: Box<crate::prekey::Upload> },
    /// A bundle fetch (no proof needed; rate-limited by the service core).
    PrekeyFetch {
        dest: Dest,
        puzzle: Option<crate::puzzle::PuzzleAnswer>,
    },
    /// How many one-time keys are left, for a dest proven for `Op::PrekeyUpdate`.
    PrekeyCount { dest: Dest },
    /// A media request for the owner core of the blob id.
    Blob(BlobOp),
    /// A push registration; every dest is proven for `Op::PushRegister`.
    PushRegister {
        provider: PushProvider,
        ttl_s: u32,
        token: Bytes,
        dests: Vec<Dest>,
    },
}

/// A media request (no proof needed: blobs are addressed by their content; the node limits
/// sizes, disk and per-connection upload rate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobOp {
    Begin {
        id: [u8; 32],
        size: u64,
    },
    Chunk {
        id: [u8; 32],
        offset: u64,
        data: Bytes,
    },
    Finish {
        id: [u8; 32],
    },
    Get {
        id: [u8; 32],
        offset: u64,
        len: u32,
    },
}

impl BlobOp {
    pub fn kind(&self) -> crate::frame::BlobOpKind {
        use crate::frame::BlobOpKind as K;
        match self {
            BlobOp::Begin { .. } => K::Begin,
            BlobOp::Chunk { .. } => K::Chunk,
            BlobOp::Finish { .. } => K::Finish,
            BlobOp::Get { .. } => K::Get,
        }
    }

    /// The offset a request names (0 for begin and finish): refusals echo it, so a client can
    /// tell which of its pipelined requests was refused.
    pub fn offset(&self) -> u64 {
        match self {
            BlobOp::Chunk { offset, .. } | BlobOp::Get { offset, .. } => *offset,
            BlobOp::Begin { .. } | BlobOp::Finish { .. } => 0,
        }
    }

    pub fn id(&self) -> &[u8; 32] {
        match self {
            BlobOp::Begin { id, .. }
            | BlobOp::Chunk { id, .. }
            | BlobOp::Finish { id }
            | BlobOp::Get { id, .. } => id,
        }
    }
}
