//! Decoding: splitting frames off a byte stream and parsing them, through a bounds-checked
//! [`Reader`] that fails with a [`DecodeError`] rather than panicking.

use bytes::{Buf, Bytes, BytesMut};

use super::frame_type as ft;
use super::{
    BlobOpKind, BlobStatus, CapabilityStatus, DecodeError, Dest, DrainStatus, ErrorCode,
    FLAG_CAPABILITY, FLAG_PUZZLE, FLAGS_KNOWN, Frame, PrekeyStatus, ProofItem, ProofStatus,
    PushProvider, PushStatus, SEND_FLAGS_KNOWN, SendStatus, SubscribeStatus, UnsubscribeReason,
};
use crate::limits::{
    BLOB_GET_BYTES_MAX, DESTS_PER_FRAME_MAX, ERROR_MESSAGE_BYTES_MAX, FRAME_BYTES_MAX,
    FRAME_PREFIX_BYTES, HELLO_MAGIC, PACKET_PAYLOAD_BYTES_MAX, PROOF_ITEM_BYTES,
    PROOFS_PER_FRAME_MAX, PUSH_TOKEN_BYTES_MAX,
};

impl Frame {
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
