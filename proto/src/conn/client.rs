//! The client side of a connection: [`ClientConn`], what the SDK and the load generator drive,
//! and the [`ClientEvent`]s it reports.

use bytes::{Bytes, BytesMut};

use crate::frame::{
    DecodeError, Dest, DrainStatus, ErrorCode, Frame, PrekeyStatus, ProofStatus, PushStatus,
    SendStatus, SubscribeStatus, UnsubscribeReason, decode_frame, put_send_header,
};
use crate::limits::{VERSION_MAX, VERSION_MIN};

/// What a client connection reports to its application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    Ready {
        version: u16,
        shard: u16,
        node_id: [u8; 32],
        challenge: [u8; 32],
        unix_time_s: u64,
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
    /// The seed and effort a `Send` needs (its `SendResult PuzzleRequired` follows).
    Puzzle {
        dest: Dest,
        msg_id: u64,
        seed: [u8; 32],
        effort: u32,
    },
    CapabilityResult {
        dest: Dest,
        status: crate::frame::CapabilityStatus,
    },
    Unsubscribed {
        dest: Dest,
        reason: UnsubscribeReason,
    },
    Pong {
        nonce: u64,
    },
    QueryResult {
        dests: Vec<Dest>,
    },
    Stored {
        dest: Dest,
        pos: u64,
        msg_id: u64,
        payload: Bytes,
    },
    DrainEnd {
        dest: Dest,
        status: DrainStatus,
    },
    PrekeyResult {
        dest: Dest,
        status: PrekeyStatus,
        kind: crate::prekey::KeyKind,
        index: u16,
        ec_left: u16,
        pq_left: u16,
    },
    PrekeyBundle {
        dest: Dest,
        status: PrekeyStatus,
        bundle: Option<Box<crate::prekey::SealedBundle>>,
        /// The slot is under pressure: solve this for a one-time key (see `Frame::PrekeyBundle`).
        puzzle: Option<crate::puzzle::PuzzleAsk>,
    },
    PushResult {
        status: PushStatus,
        dests_registered: u16,
    },
    BlobStatus {
        id: [u8; 32],
        op: crate::frame::BlobOpKind,
        status: crate::frame::BlobStatus,
        offset: u64,
        size: u64,
    },
    BlobData {
        id: [u8; 32],
        offset: u64,
        more: bool,
        data: Bytes,
    },
    /// The node closed the connection with this error.
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// Why the client state machine gave up on the byte stream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("decode: {0}")]
    Decode(#[source] DecodeError),
    /// The node sent a frame only clients send.
    #[error("unexpected frame {frame_type:#04x} from node")]
    Unexpected { frame_type: u8 },
}

/// Client side of a connection: what the SDK and the load generator drive.
#[derive(Debug, Default)]
pub struct ClientConn {
    inbuf: BytesMut,
    out: BytesMut,
}

impl ClientConn {
    /// A new connection with its `ClientHello` already queued.
    pub fn new() -> Self {
        let mut c = ClientConn::default();
        c.push(&Frame::ClientHello {
            version_min: VERSION_MIN,
            version_max: VERSION_MAX,
        });
        c
    }
    pub fn push(&mut self, frame: &Frame) {
        frame.encode(&mut self.out);
    }
    /// Queues a Send; `ttl_s` 0 = the node's maximum storage time.
    pub fn send(&mut self, dest: Dest, msg_id: u64, flags: u8, ttl_s: u32, payload: &[u8]) {
        put_send_header(&mut self.out, &dest, msg_id, flags, ttl_s, payload.len());
        self.out.extend_from_slice(payload);
    }
    /// Queues a Send carrying a puzzle answer and/or a capability token.
    pub fn send_with(
        &mut self,
        dest: Dest,
        msg_id: u64,
        flags: u8,
        ttl_s: u32,
        pass: &crate::puzzle::SendPass,
        payload: &[u8],
    ) {
        crate::frame::put_send_header_with(
            &mut self.out,
            &dest,
            msg_id,
            flags,
            ttl_s,
            pass,
            payload.len(),
        );
        self.out.extend_from_slice(payload);
    }
    pub fn take_output(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.split().freeze())
        }
    }
    pub fn on_bytes(&mut self, data: &[u8]) {
        self.inbuf.extend_from_slice(data);
    }
    /// Received bytes not yet parsed, for handing the connection to another parser.
    pub fn into_unread(self) -> Vec<u8> {
        self.inbuf.to_vec()
    }
    pub fn poll_event(&mut self) -> Result<Option<ClientEvent>, ClientError> {
        loop {
            let Some(frame) = decode_frame(&mut self.inbuf).map_err(ClientError::Decode)? else {
                return Ok(None);
            };
            let ev = match frame {
                Frame::ServerHello {
                    version,
                    shard,
                    node_id,
                    challenge,
                    unix_time_s,
                    ..
                } => ClientEvent::Ready {
                    version,
                    shard,
                    node_id,
                    challenge,
                    unix_time_s,
                },
                Frame::Challenge {
                    challenge,
                    unix_time_s,
                } => ClientEvent::Challenge {
                    challenge,
                    unix_time_s,
                },
                Frame::ProveResult { items } => ClientEvent::ProveResult { items },
                Frame::SubscribeResult { items } => ClientEvent::SubscribeResult { items },
                Frame::Deliver {
                    dest,
                    msg_id,
                    flags,
                    payload,
                } => ClientEvent::Deliver {
                    dest,
                    msg_id,
                    flags,
                    payload,
                },
                Frame::SendResult {
                    dest,
                    msg_id,
                    status,
                } => ClientEvent::SendResult {
                    dest,
                    msg_id,
                    status,
                },
                Frame::Unsubscribed { dest, reason } => ClientEvent::Unsubscribed { dest, reason },
                Frame::Puzzle {
                    dest,
                    msg_id,
                    seed,
                    effort,
                } => ClientEvent::Puzzle {
                    dest,
                    msg_id,
                    seed,
                    effort,
                },
                Frame::CapabilityResult { dest, status } => {
                    ClientEvent::CapabilityResult { dest, status }
                }
                Frame::Error { code, message } => ClientEvent::Error { code, message },
                Frame::Ping { nonce } => {
                    self.push(&Frame::Pong { nonce });
                    continue;
                }
                Frame::Pong { nonce } => ClientEvent::Pong { nonce },
                Frame::QueryResult { dests } => ClientEvent::QueryResult { dests },
                Frame::Stored {
                    dest,
                    pos,
                    msg_id,
                    payload,
                } => ClientEvent::Stored {
                    dest,
                    pos,
                    msg_id,
                    payload,
                },
                Frame::DrainEnd { dest, status } => ClientEvent::DrainEnd { dest, status },
                Frame::PrekeyResult {
                    dest,
                    status,
                    kind,
                    index,
                    ec_left,
                    pq_left,
                } => ClientEvent::PrekeyResult {
                    dest,
                    status,
                    kind,
                    index,
                    ec_left,
                    pq_left,
                },
                Frame::PrekeyBundle {
                    dest,
                    status,
                    bundle,
                    puzzle,
                } => ClientEvent::PrekeyBundle {
                    dest,
                    status,
                    bundle,
                    puzzle,
                },
                Frame::PushResult {
                    status,
                    dests_registered,
                } => ClientEvent::PushResult {
                    status,
                    dests_registered,
                },
                Frame::BlobStatus {
                    id,
                    op,
                    status,
                    offset,
                    size,
                } => ClientEvent::BlobStatus {
                    id,
                    op,
                    status,
                    offset,
                    size,
                },
                Frame::BlobData {
                    id,
                    offset,
                    more,
                    data,
                } => ClientEvent::BlobData {
                    id,
                    offset,
                    more,
                    data,
                },
                other => {
                    return Err(ClientError::Unexpected {
                        frame_type: other.frame_type(),
                    });
                }
            };
            return Ok(Some(ev));
        }
    }
}
