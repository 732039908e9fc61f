//! Encoding: frames to bytes, and the hot path's header writers for `Send` and `Deliver`.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame_type as ft;
use super::{Dest, FLAG_CAPABILITY, FLAG_PUZZLE, FLAGS_KNOWN, Frame, PrekeyStatus};
use crate::limits::{
    DESTS_PER_FRAME_MAX, ERROR_MESSAGE_BYTES_MAX, FRAME_BYTES_MAX, FRAME_PREFIX_BYTES, HELLO_MAGIC,
    PACKET_HEADER_BYTES, PACKET_PAYLOAD_BYTES_MAX, PROOF_ITEM_BYTES, PROOFS_PER_FRAME_MAX,
    PUSH_TOKEN_BYTES_MAX, SEND_HEADER_BYTES,
};

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
