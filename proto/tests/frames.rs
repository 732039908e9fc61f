//! Property tests for every frame: round trip, `encoded_len`, and no panic on arbitrary input.

use bytes::{Bytes, BytesMut};
use ferry_proto::frame::*;
use ferry_proto::limits::*;
use proptest::prelude::*;

fn dest() -> impl Strategy<Value = Dest> {
    any::<[u8; 16]>().prop_map(Dest)
}
fn payload(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}
fn flags() -> impl Strategy<Value = u8> {
    (0u8..=FLAGS_KNOWN).prop_map(|f| f & FLAGS_KNOWN)
}
fn proof_item() -> impl Strategy<Value = ProofItem> {
    (
        dest(),
        any::<u8>(),
        any::<[u8; 32]>(),
        prop::collection::vec(any::<u8>(), 64),
    )
        .prop_map(|(dest, op, blinded_key, sig)| {
            let mut signature = [0u8; 64];
            signature.copy_from_slice(&sig);
            ProofItem {
                dest,
                op,
                blinded_key,
                signature,
            }
        })
}
fn puzzle_answer() -> impl Strategy<Value = ferry_proto::puzzle::PuzzleAnswer> {
    (any::<[u8; 16]>(), any::<u32>(), any::<[u8; 16]>()).prop_map(|(nonce, effort, solution)| {
        ferry_proto::puzzle::PuzzleAnswer {
            nonce,
            effort,
            solution,
        }
    })
}
fn puzzle_ask() -> impl Strategy<Value = ferry_proto::puzzle::PuzzleAsk> {
    (any::<[u8; 32]>(), any::<u32>())
        .prop_map(|(seed, effort)| ferry_proto::puzzle::PuzzleAsk { seed, effort })
}
fn send_pass() -> impl Strategy<Value = ferry_proto::puzzle::SendPass> {
    use ferry_proto::puzzle::{PuzzleAnswer, SendPass};
    (
        prop::option::of(
            (any::<[u8; 16]>(), any::<u32>(), any::<[u8; 16]>()).prop_map(
                |(nonce, effort, solution)| PuzzleAnswer {
                    nonce,
                    effort,
                    solution,
                },
            ),
        ),
        prop::option::of(any::<[u8; 32]>()),
    )
        .prop_map(|(puzzle, capability)| SendPass { puzzle, capability })
}
fn pick<T: Copy + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = T> {
    prop::sample::select(all)
}

fn sealed_pq(id: u32, fill: u8) -> ferry_proto::prekey::SealedPq {
    ferry_proto::prekey::SealedPq {
        id,
        sealed: Bytes::from(vec![fill; ferry_proto::prekey::PQ_SEALED_BYTES]),
    }
}
fn sealed_ec(id: u32, fill: u8) -> ferry_proto::prekey::SealedEc {
    ferry_proto::prekey::SealedEc {
        id,
        sealed: [fill; ferry_proto::prekey::EC_SEALED_BYTES],
    }
}
fn head(fill: u8) -> Bytes {
    Bytes::from(vec![fill; ferry_proto::prekey::HEAD_BYTES])
}
fn upload() -> impl Strategy<Value = ferry_proto::prekey::Upload> {
    use ferry_proto::prekey::*;
    (
        dest(),
        any::<bool>(),
        any::<u32>(),
        prop::option::of(any::<u8>()),
        prop::collection::vec((any::<u32>(), any::<u8>()), 0..5),
        prop::collection::vec((any::<u32>(), any::<u8>()), 0..4),
    )
        .prop_map(|(dest, replace_one_time, ttl_s, h, ec, pq)| Upload {
            dest,
            replace_one_time,
            ttl_s,
            head: h.map(head),
            ec: ec.into_iter().map(|(id, f)| sealed_ec(id, f)).collect(),
            pq: pq.into_iter().map(|(id, f)| sealed_pq(id, f)).collect(),
        })
}
fn bundle() -> impl Strategy<Value = ferry_proto::prekey::SealedBundle> {
    use ferry_proto::prekey::*;
    (
        any::<u8>(),
        prop::option::of((any::<u32>(), any::<u8>())),
        prop::option::of((any::<u32>(), any::<u8>())),
    )
        .prop_map(|(h, pq, ec)| SealedBundle {
            head: head(h),
            pq: pq.map(|(id, f)| sealed_pq(id, f)),
            ec: ec.map(|(id, f)| sealed_ec(id, f)),
        })
}

fn service_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        upload().prop_map(|u| Frame::PrekeyUpload {
            upload: Box::new(u)
        }),
        (dest(), prop::option::of(puzzle_answer()))
            .prop_map(|(dest, puzzle)| Frame::PrekeyFetch { dest, puzzle }),
        dest().prop_map(|dest| Frame::PrekeyCount { dest }),
        (
            pick(PushProvider::ALL),
            any::<u32>(),
            payload(300),
            prop::collection::vec(dest(), 0..8)
        )
            .prop_map(|(provider, ttl_s, token, dests)| Frame::PushRegister {
                provider,
                ttl_s,
                token,
                dests
            }),
        (
            dest(),
            pick(PrekeyStatus::ALL),
            0u8..6,
            any::<u16>(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(dest, status, kind, index, ec_left, pq_left)| {
                Frame::PrekeyResult {
                    dest,
                    status,
                    kind: ferry_proto::prekey::KeyKind::from_u8(kind).expect("0..6 are kinds"),
                    index,
                    ec_left,
                    pq_left,
                }
            }),
        (
            dest(),
            pick(PrekeyStatus::ALL),
            bundle(),
            prop::option::of(puzzle_ask())
        )
            .prop_map(|(dest, status, b, puzzle)| {
                let ok = status == PrekeyStatus::Ok;
                Frame::PrekeyBundle {
                    dest,
                    status,
                    bundle: ok.then(|| Box::new(b)),
                    puzzle: puzzle.filter(|_| ok),
                }
            }),
        (any::<[u8; 32]>(), any::<u64>()).prop_map(|(id, size)| Frame::BlobBegin { id, size }),
        (any::<[u8; 32]>(), any::<u64>(), payload(3000))
            .prop_map(|(id, offset, data)| Frame::BlobChunk { id, offset, data }),
        any::<[u8; 32]>().prop_map(|id| Frame::BlobFinish { id }),
        (any::<[u8; 32]>(), any::<u64>(), 0u32..=(1u32 << 20))
            .prop_map(|(id, offset, len)| Frame::BlobGet { id, offset, len }),
        (
            any::<[u8; 32]>(),
            pick(BlobOpKind::ALL),
            pick(BlobStatus::ALL),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(id, op, status, offset, size)| Frame::BlobStatus {
                id,
                op,
                status,
                offset,
                size
            }),
        (
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<bool>(),
            payload(3000)
        )
            .prop_map(|(id, offset, more, data)| Frame::BlobData {
                id,
                offset,
                more,
                data
            }),
        (pick(PushStatus::ALL), any::<u16>()).prop_map(|(status, dests_registered)| {
            Frame::PushResult {
                status,
                dests_registered,
            }
        }),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        service_frame(),
        (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Frame::ClientHello {
            version_min: a,
            version_max: b
        }),
        Just(Frame::ChallengeRequest),
        prop::collection::vec(proof_item(), 0..PROOFS_PER_FRAME_MAX)
            .prop_map(|items| Frame::Prove { items }),
        prop::collection::vec(dest(), 0..DESTS_PER_FRAME_MAX)
            .prop_map(|dests| Frame::Subscribe { dests }),
        prop::collection::vec(dest(), 0..DESTS_PER_FRAME_MAX)
            .prop_map(|dests| Frame::Unsubscribe { dests }),
        (
            dest(),
            any::<u64>(),
            flags(),
            any::<u32>(),
            send_pass(),
            payload(2048)
        )
            .prop_map(|(dest, msg_id, flags, ttl_s, pass, payload)| Frame::Send {
                dest,
                msg_id,
                flags,
                ttl_s,
                pass,
                payload
            }),
        (dest(), any::<u32>(), any::<[u8; 32]>()).prop_map(|(dest, ttl_s, verifier)| {
            Frame::CapabilityRegister {
                dest,
                ttl_s,
                verifier,
            }
        }),
        (dest(), any::<u64>(), any::<[u8; 32]>(), any::<u32>()).prop_map(
            |(dest, msg_id, seed, effort)| Frame::Puzzle {
                dest,
                msg_id,
                seed,
                effort,
            }
        ),
        (dest(), pick(CapabilityStatus::ALL))
            .prop_map(|(dest, status)| Frame::CapabilityResult { dest, status }),
        prop::collection::vec(dest(), 0..DESTS_PER_FRAME_MAX)
            .prop_map(|dests| Frame::Query { dests }),
        prop::collection::vec(dest(), 0..DESTS_PER_FRAME_MAX)
            .prop_map(|dests| Frame::QueryResult { dests }),
        dest().prop_map(|dest| Frame::Drain { dest }),
        prop::collection::vec((dest(), any::<u64>()), 0..DESTS_PER_FRAME_MAX)
            .prop_map(|items| Frame::Ack { items }),
        (dest(), any::<u64>(), any::<u64>(), payload(2048)).prop_map(
            |(dest, pos, msg_id, payload)| Frame::Stored {
                dest,
                pos,
                msg_id,
                payload
            }
        ),
        (dest(), pick(DrainStatus::ALL))
            .prop_map(|(dest, status)| Frame::DrainEnd { dest, status }),
        any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
        payload(2048).prop_map(|payload| Frame::Cell { payload }),
        (
            any::<u16>(),
            any::<u16>(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<u32>()
        )
            .prop_map(
                |(version, shard, node_id, challenge, unix_time_s, frame_bytes_max)| {
                    Frame::ServerHello {
                        version,
                        shard,
                        node_id,
                        challenge,
                        unix_time_s,
                        frame_bytes_max,
                    }
                }
            ),
        (any::<[u8; 32]>(), any::<u64>()).prop_map(|(challenge, unix_time_s)| Frame::Challenge {
            challenge,
            unix_time_s
        }),
        prop::collection::vec(
            (dest(), any::<u8>(), pick(ProofStatus::ALL)),
            0..PROOFS_PER_FRAME_MAX
        )
        .prop_map(|items| Frame::ProveResult { items }),
        prop::collection::vec((dest(), pick(SubscribeStatus::ALL)), 0..DESTS_PER_FRAME_MAX)
            .prop_map(|items| Frame::SubscribeResult { items }),
        (dest(), any::<u64>(), flags(), payload(2048)).prop_map(
            |(dest, msg_id, flags, payload)| Frame::Deliver {
                dest,
                msg_id,
                flags,
                payload
            }
        ),
        (dest(), any::<u64>(), pick(SendStatus::ALL)).prop_map(|(dest, msg_id, status)| {
            Frame::SendResult {
                dest,
                msg_id,
                status,
            }
        }),
        (dest(), pick(UnsubscribeReason::ALL))
            .prop_map(|(dest, reason)| Frame::Unsubscribed { dest, reason }),
        (pick(ErrorCode::ALL), "[a-zA-Z0-9 é]{0,80}")
            .prop_map(|(code, message)| Frame::Error { code, message }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trip_and_encoded_len(f in frame()) {
        let bytes = f.to_bytes();
        prop_assert_eq!(bytes.len(), f.encoded_len());
        let mut buf = BytesMut::from(&bytes[..]);
        let back = decode_frame(&mut buf).unwrap().unwrap();
        prop_assert_eq!(back, f);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn frames_split_at_any_point_decode_the_same(fs in prop::collection::vec(frame(), 1..6), cut in any::<prop::sample::Index>()) {
        let mut all = BytesMut::new();
        for f in &fs { f.encode(&mut all); }
        let cut = cut.index(all.len() + 1);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in [&all[..cut], &all[cut..]] {
            buf.extend_from_slice(chunk);
            while let Some(f) = decode_frame(&mut buf).unwrap() { out.push(f); }
        }
        prop_assert_eq!(out, fs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = decode_frame(&mut buf) {}
    }

    #[test]
    fn arbitrary_bodies_never_panic(t in any::<u8>(), body in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut b = vec![t];
        b.extend_from_slice(&body);
        let _ = Frame::decode_body(Bytes::from(b));
    }
}

#[test]
fn oversized_prefix_is_refused_before_the_body_arrives() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&u32::try_from(FRAME_BYTES_MAX + 1).unwrap().to_le_bytes());
    assert_eq!(
        decode_frame(&mut buf),
        Err(DecodeError::FrameTooLarge {
            frame_len: (FRAME_BYTES_MAX + 1) as u64
        })
    );
}

#[test]
fn largest_packet_fits_and_one_more_byte_does_not() {
    let f = Frame::Send {
        dest: Dest([1; 16]),
        msg_id: 1,
        flags: 0,
        ttl_s: 0,
        pass: ferry_proto::puzzle::SendPass::NONE,
        payload: Bytes::from(vec![0u8; PACKET_PAYLOAD_BYTES_MAX]),
    };
    assert_eq!(
        f.encoded_len(),
        FRAME_PREFIX_BYTES + FRAME_BYTES_MAX - (STORED_HEADER_BYTES - SEND_HEADER_BYTES)
    );
    // The same payload fits a Stored frame exactly.
    let st = Frame::Stored {
        dest: Dest([1; 16]),
        pos: 7,
        msg_id: 1,
        payload: Bytes::from(vec![0u8; PACKET_PAYLOAD_BYTES_MAX]),
    };
    assert_eq!(st.encoded_len(), FRAME_PREFIX_BYTES + FRAME_BYTES_MAX);
    // A Send with a few more payload bytes fits the frame limit but not the packet limit.
    let mut raw = Vec::new();
    put_send_header(&mut raw, &Dest([1; 16]), 1, 0, 0, PACKET_PAYLOAD_BYTES_MAX);
    raw.extend(std::iter::repeat_n(0u8, PACKET_PAYLOAD_BYTES_MAX + 3));
    let len = u32::try_from(raw.len() - 4).unwrap();
    raw[..4].copy_from_slice(&len.to_le_bytes());
    assert!(matches!(
        decode_frame(&mut BytesMut::from(&raw[..])),
        Err(DecodeError::PayloadTooLarge { .. })
    ));
    let mut buf = BytesMut::from(&f.to_bytes()[..]);
    assert_eq!(decode_frame(&mut buf).unwrap().unwrap(), f);
}

#[test]
fn lying_counts_and_bad_values_are_errors() {
    // Prove frame claiming 5 items but carrying none.
    let mut buf = BytesMut::from(&[3u8, 0, 0, 0, frame_type::PROVE, 5, 0][..]);
    assert_eq!(
        decode_frame(&mut buf),
        Err(DecodeError::Truncated {
            frame_type: frame_type::PROVE
        })
    );
    // Unknown flags on a Send.
    let mut f = Frame::Send {
        dest: Dest([0; 16]),
        msg_id: 0,
        flags: 0,
        ttl_s: 0,
        pass: ferry_proto::puzzle::SendPass::NONE,
        payload: Bytes::new(),
    }
    .to_bytes()
    .to_vec();
    f[4 + 1 + 16 + 8] = 0x80;
    assert!(matches!(
        decode_frame(&mut BytesMut::from(&f[..])),
        Err(DecodeError::InvalidValue { field: "flags", .. })
    ));
    // Trailing bytes after a Ping.
    let mut buf = BytesMut::from(&[10u8, 0, 0, 0, frame_type::PING, 0, 0, 0, 0, 0, 0, 0, 0, 9][..]);
    assert_eq!(
        decode_frame(&mut buf),
        Err(DecodeError::TrailingBytes {
            frame_type: frame_type::PING
        })
    );
    assert_eq!(
        decode_frame(&mut BytesMut::from(&[0u8, 0, 0, 0][..])),
        Err(DecodeError::EmptyFrame)
    );
    assert_eq!(
        decode_frame(&mut BytesMut::from(&[1u8, 0, 0, 0, 0x7e][..])),
        Err(DecodeError::UnknownType { frame_type: 0x7e })
    );
}

#[test]
fn owner_is_first_eight_bytes_mod_shards() {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&1_000_003u64.to_le_bytes());
    assert_eq!(Dest(d).owner(7), (1_000_003 % 7) as usize);
    assert_eq!(Dest(d).owner(1), 0);
}

/// The puzzle frames' examples in docs/PROTOCOL.md §8.6, byte for byte.
#[test]
fn puzzle_frames_match_the_documented_bytes() {
    use ferry_proto::puzzle::{PuzzleAnswer, SendPass};
    let hex = |f: &Frame| {
        f.to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let d = Dest([0xd0; 16]);
    let puzzle = Frame::Puzzle {
        dest: d,
        msg_id: 7,
        seed: [0x5e; 32],
        effort: 8,
    };
    assert_eq!(
        hex(&puzzle),
        format!(
            "3d00000091{}0700000000000000{}08000000",
            "d0".repeat(16),
            "5e".repeat(32)
        )
    );
    let send = Frame::Send {
        dest: d,
        msg_id: 7,
        flags: FLAG_ACK,
        ttl_s: 0,
        pass: SendPass {
            puzzle: Some(PuzzleAnswer {
                nonce: [1; 16],
                effort: 8,
                solution: [2; 16],
            }),
            capability: None,
        },
        payload: Bytes::from_static(b"hi"),
    };
    assert_eq!(
        hex(&send),
        format!(
            "4400000006{}07000000000000000500000000{}08000000{}6869",
            "d0".repeat(16),
            "01".repeat(16),
            "02".repeat(16)
        )
    );
    let result = Frame::CapabilityResult {
        dest: d,
        status: CapabilityStatus::Ok,
    };
    assert_eq!(hex(&result), format!("1200000092{}00", "d0".repeat(16)));
    // A Deliver never carries the Send-only bits.
    let mut raw = Frame::Deliver {
        dest: d,
        msg_id: 7,
        flags: 0,
        payload: Bytes::new(),
    }
    .to_bytes()
    .to_vec();
    raw[4 + 1 + 16 + 8] = FLAG_PUZZLE;
    assert!(decode_frame(&mut BytesMut::from(&raw[..])).is_err());
}

/// The prekey fetch puzzle examples in docs/PROTOCOL.md (0x0D, 0x8C), byte for byte, and the
/// optional tails: a `PrekeyFetch` with a partial answer is truncated, a refusal carries none.
#[test]
fn prekey_puzzle_frames_match_the_documented_bytes() {
    use ferry_proto::puzzle::{PuzzleAnswer, PuzzleAsk};
    let hex = |f: &Frame| {
        f.to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let d = Dest([0xd0; 16]);
    let plain = Frame::PrekeyFetch {
        dest: d,
        puzzle: None,
    };
    assert_eq!(hex(&plain), format!("110000000d{}", "d0".repeat(16)));
    let answered = Frame::PrekeyFetch {
        dest: d,
        puzzle: Some(PuzzleAnswer {
            nonce: [1; 16],
            effort: 8,
            solution: [2; 16],
        }),
    };
    assert_eq!(
        hex(&answered),
        format!(
            "350000000d{}{}08000000{}",
            "d0".repeat(16),
            "01".repeat(16),
            "02".repeat(16)
        )
    );
    // A body of 16 + 1 bytes: neither no answer nor a whole one.
    let mut short = vec![0x0d];
    short.extend_from_slice(&[0xd0; 17]);
    assert!(Frame::decode_body(Bytes::from(short)).is_err());
    // The puzzle rides after an `Ok` bundle: its 36 bytes are the frame's last.
    let bundle = ferry_proto::prekey::SealedBundle {
        head: head(0x02),
        pq: None,
        ec: None,
    };
    let f = Frame::PrekeyBundle {
        dest: d,
        status: PrekeyStatus::Ok,
        bundle: Some(Box::new(bundle)),
        puzzle: Some(PuzzleAsk {
            seed: [0x5e; 32],
            effort: 8,
        }),
    };
    let bytes = f.to_bytes();
    assert_eq!(
        bytes.len(),
        4 + 1 + 17 + ferry_proto::prekey::HEAD_BYTES + 2 + 36
    );
    assert_eq!(
        hex(&f)[2 * (bytes.len() - 36)..],
        format!("{}08000000", "5e".repeat(32))
    );
}

/// The fixed frame sizes named in `limits.rs` (what the load generator scans by) are what the
/// encoder writes.
#[test]
fn the_named_fixed_frame_sizes_match_the_encoder() {
    let dest = Dest([7; 16]);
    let result = Frame::SendResult {
        dest,
        msg_id: 9,
        status: SendStatus::Congested,
    }
    .to_bytes();
    assert_eq!(result.len(), FRAME_PREFIX_BYTES + SEND_RESULT_BYTES);
    assert_eq!(
        result[FRAME_PREFIX_BYTES + SEND_RESULT_BYTES - 1],
        SendStatus::Congested as u8
    );
    for f in [Frame::Ping { nonce: 3 }, Frame::Pong { nonce: 3 }] {
        assert_eq!(f.to_bytes().len(), FRAME_PREFIX_BYTES + PING_BYTES);
    }
    let error = Frame::Error {
        code: ErrorCode::Overloaded,
        message: "busy".into(),
    }
    .to_bytes();
    assert_eq!(&error[FRAME_PREFIX_BYTES + ERROR_HEADER_BYTES..], b"busy");
}
