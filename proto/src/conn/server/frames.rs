//! What each client frame does to a [`ServerConn`]: the handshake, proofs, subscriptions, sends,
//! drains, prekeys, media and push requests, each answered here or handed on as a [`ServerEvent`].

use super::{BlobOp, ServerConn, ServerEvent, State, prekey_refusal};
use crate::conn::Now;
use crate::frame::{
    Dest, DrainStatus, ErrorCode, Frame, Op, PrekeyStatus, PushStatus, SubscribeStatus,
};
use crate::limits::{BLOB_GETS_IN_FLIGHT_MAX, FRAME_BYTES_MAX, VERSION_MAX, VERSION_MIN};

impl ServerConn {
    pub(super) fn on_frame(&mut self, now: Now, frame: Frame) -> Option<ServerEvent> {
        if self.state == State::AwaitHello {
            let Frame::ClientHello {
                version_min,
                version_max,
            } = frame
            else {
                self.close_with(
                    ErrorCode::UnexpectedFrame,
                    "first frame must be ClientHello",
                );
                return None;
            };
            let version = version_max.min(VERSION_MAX);
            if version < version_min.max(VERSION_MIN) {
                self.close_with(
                    ErrorCode::UnsupportedVersion,
                    &format!("node speaks versions {VERSION_MIN}..={VERSION_MAX}"),
                );
                return None;
            }
            self.state = State::Open;
            self.challenge_issued_ms = now.mono_ms;
            self.push_frame(&Frame::ServerHello {
                version,
                shard: self.shard,
                node_id: self.node_id,
                challenge: self.challenge,
                unix_time_s: now.unix_s,
                frame_bytes_max: crate::frame::frame_len_u32(FRAME_BYTES_MAX),
            });
            return None;
        }
        match frame {
            Frame::Send {
                dest,
                msg_id,
                flags,
                ttl_s,
                pass,
                payload,
            } => Some(ServerEvent::Send {
                dest,
                msg_id,
                flags,
                ttl_s,
                pass,
                payload,
            }),
            Frame::CapabilityRegister {
                dest,
                ttl_s,
                verifier,
            } => {
                if self.is_proven(&dest, Op::Drain) {
                    Some(ServerEvent::CapabilityRegister {
                        dest,
                        ttl_s,
                        verifier,
                    })
                } else {
                    self.push_frame(&Frame::CapabilityResult {
                        dest,
                        status: crate::frame::CapabilityStatus::NotProven,
                    });
                    None
                }
            }
            Frame::Query { dests } => {
                // Only the owner may learn whether mail is waiting: a dest this connection has
                // not proven is answered as holding nothing (the answer is the same whether it
                // holds blobs or not), so a Query is no oracle for strangers.
                let dests = dests.into_iter().filter(|d| self.owns(d)).collect();
                Some(ServerEvent::Query { dests })
            }
            Frame::Drain { dest } => {
                if self.drain_pending && self.is_proven(&dest, Op::Drain) {
                    // One drain in flight per connection bounds what a client can make the node
                    // copy into its queues.
                    self.push_frame(&Frame::DrainEnd {
                        dest,
                        status: DrainStatus::Busy,
                    });
                    None
                } else if self.is_proven(&dest, Op::Drain) {
                    self.drain_pending = true;
                    Some(ServerEvent::Drain { dest })
                } else {
                    self.push_frame(&Frame::DrainEnd {
                        dest,
                        status: DrainStatus::NotProven,
                    });
                    None
                }
            }
            Frame::Ack { items } => {
                let items: Vec<(Dest, u64)> = items
                    .into_iter()
                    .filter(|(d, _)| self.is_proven(d, Op::Drain))
                    .collect();
                if items.is_empty() {
                    None
                } else {
                    Some(ServerEvent::Ack { items })
                }
            }
            Frame::Prove { items } => Some(ServerEvent::Prove { items }),
            Frame::PrekeyUpload { upload } => {
                if self.is_proven(&upload.dest, Op::PrekeyUpdate) {
                    Some(ServerEvent::PrekeyUpload { upload })
                } else {
                    self.push_frame(&prekey_refusal(upload.dest, PrekeyStatus::NotProven));
                    None
                }
            }
            Frame::PrekeyCount { dest } => {
                if self.is_proven(&dest, Op::PrekeyUpdate) {
                    Some(ServerEvent::PrekeyCount { dest })
                } else {
                    self.push_frame(&prekey_refusal(dest, PrekeyStatus::NotProven));
                    None
                }
            }
            Frame::PrekeyFetch { dest, puzzle } => Some(ServerEvent::PrekeyFetch { dest, puzzle }),
            Frame::BlobBegin { id, size } => Some(ServerEvent::Blob(BlobOp::Begin { id, size })),
            Frame::BlobChunk { id, offset, data } => {
                Some(ServerEvent::Blob(BlobOp::Chunk { id, offset, data }))
            }
            Frame::BlobFinish { id } => Some(ServerEvent::Blob(BlobOp::Finish { id })),
            Frame::BlobGet { id, offset, len } => {
                if self.blob_gets_in_flight >= BLOB_GETS_IN_FLIGHT_MAX {
                    // Each answer is up to 1 MiB: a connection may not queue more of them.
                    Frame::BlobStatus {
                        id,
                        op: crate::frame::BlobOpKind::Get,
                        status: crate::frame::BlobStatus::Busy,
                        offset,
                        size: 0,
                    }
                    .encode(&mut self.out);
                    None
                } else {
                    self.blob_gets_in_flight += 1;
                    Some(ServerEvent::Blob(BlobOp::Get { id, offset, len }))
                }
            }
            Frame::PushRegister {
                provider,
                ttl_s,
                token,
                dests,
            } => {
                if !dests.is_empty() && dests.iter().all(|d| self.is_proven(d, Op::PushRegister)) {
                    Some(ServerEvent::PushRegister {
                        provider,
                        ttl_s,
                        token,
                        dests,
                    })
                } else {
                    self.push_frame(&Frame::PushResult {
                        status: PushStatus::NotProven,
                        dests_registered: 0,
                    });
                    None
                }
            }
            Frame::Subscribe { dests } => self.on_subscribe(dests),
            Frame::Unsubscribe { dests } => {
                let dests: Vec<Dest> = dests
                    .into_iter()
                    .filter(|d| self.subscriptions.remove(d).is_some())
                    .collect();
                if dests.is_empty() {
                    None
                } else {
                    Some(ServerEvent::Unsubscribe { dests })
                }
            }
            Frame::ChallengeRequest => Some(ServerEvent::ChallengeRequested),
            Frame::Ping { nonce } => {
                self.push_frame(&Frame::Pong { nonce });
                None
            }
            Frame::Pong { .. } => None,
            Frame::Cell { .. } => {
                self.close_with(ErrorCode::Unsupported, "onion cells are not supported yet");
                None
            }
            Frame::ClientHello { .. } => {
                self.close_with(ErrorCode::UnexpectedFrame, "ClientHello sent twice");
                None
            }
            other => {
                let t = other.frame_type();
                self.close_with(
                    ErrorCode::UnexpectedFrame,
                    &format!("frame {t:#04x} is node-to-client only"),
                );
                None
            }
        }
    }

    fn on_subscribe(&mut self, dests: Vec<Dest>) -> Option<ServerEvent> {
        let mut results = Vec::with_capacity(dests.len());
        let mut added = Vec::new();
        for dest in dests {
            let status = if !self.proven.contains(&(dest, Op::Subscribe as u8)) {
                SubscribeStatus::NotProven
            } else if let Some(&confirmed) = self.subscriptions.get(&dest) {
                if !confirmed {
                    // Pending at the owner: its confirmation answers this request too.
                    continue;
                }
                SubscribeStatus::Ok
            } else if self.subscriptions.len() >= self.limits.subscriptions_max {
                SubscribeStatus::TooManySubscriptions
            } else {
                // Answered by `on_subscribed` once the owner shard has the entry, so that "Ok"
                // means packets sent from now on are delivered.
                self.subscriptions.insert(dest, false);
                added.push(dest);
                continue;
            };
            results.push((dest, status));
        }
        if !results.is_empty() {
            self.push_frame(&Frame::SubscribeResult { items: results });
        }
        if added.is_empty() {
            None
        } else {
            Some(ServerEvent::Subscribe { dests: added })
        }
    }
}
