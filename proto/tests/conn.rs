//! Server and client state machines paired in virtual time, no sockets.

#![allow(clippy::unwrap_used)]

use ferry_proto::addr::{MailboxSecret, NamespaceId};
use ferry_proto::conn::{ClientConn, ClientEvent, ConnLimits, Now, Push, ServerConn, ServerEvent};
use ferry_proto::frame::{ErrorCode, Frame, Op, ProofStatus, SubscribeStatus};
use ferry_proto::limits::CHALLENGE_VALIDITY_MS;

const NODE: [u8; 32] = [5; 32];

fn at(ms: u64) -> Now {
    Now {
        mono_ms: ms,
        unix_s: 1_800_000_000 + ms / 1000,
    }
}

struct Pair {
    server: ServerConn,
    client: ClientConn,
    events: Vec<ServerEvent>,
}

impl Pair {
    fn new(limits: ConnLimits) -> Pair {
        let mut p = Pair {
            server: ServerConn::new(limits, NODE, 0, [7; 32], at(0)),
            client: ClientConn::new(),
            events: vec![],
        };
        p.pump(at(0));
        p
    }
    /// Moves bytes both ways until quiet (bounded).
    fn pump(&mut self, now: Now) -> Vec<ClientEvent> {
        let mut out = Vec::new();
        for _ in 0..100 {
            let mut moved = false;
            if let Some(b) = self.client.take_output() {
                self.server.on_bytes(now, &b);
                while let Some(ev) = self.server.poll_event(now) {
                    if let ServerEvent::Prove { items } = &ev {
                        self.server.answer_proofs(now, items);
                    }
                    if let ServerEvent::Subscribe { dests } = &ev {
                        for d in dests {
                            self.server.on_subscribed(*d);
                        }
                    }
                    self.events.push(ev);
                }
                moved = true;
            }
            if let Some(b) = self.server.take_output() {
                let n = b.len();
                self.client.on_bytes(&b);
                self.server.on_written(now, n);
                while let Some(ev) = self.client.poll_event().unwrap() {
                    out.push(ev);
                }
                moved = true;
            }
            if !moved {
                return out;
            }
        }
        panic!("did not settle");
    }
}

#[test]
fn hello_prove_subscribe() {
    let mut p = Pair::new(ConnLimits::default());
    assert!(p.server.is_open());
    let signer = MailboxSecret::from_seed(&[1; 32])
        .blinded_signer(&NamespaceId([2; 32]), None, 10)
        .unwrap();
    p.client.push(&Frame::Prove {
        items: vec![signer.prove(&NODE, &[7; 32], Op::Subscribe)],
    });
    p.client.push(&Frame::Subscribe {
        dests: vec![signer.dest()],
    });
    let evs = p.pump(at(10));
    assert!(evs.contains(&ClientEvent::ProveResult {
        items: vec![(signer.dest(), Op::Subscribe as u8, ProofStatus::Ok)]
    }));
    assert!(evs.contains(&ClientEvent::SubscribeResult {
        items: vec![(signer.dest(), SubscribeStatus::Ok)]
    }));
}

#[test]
fn a_challenge_older_than_sixty_seconds_is_stale_until_refreshed() {
    let mut p = Pair::new(ConnLimits {
        idle_timeout_ms: 1_000_000,
        ping_interval_ms: 500_000,
        ..ConnLimits::default()
    });
    let signer = MailboxSecret::from_seed(&[1; 32])
        .blinded_signer(&NamespaceId([2; 32]), None, 10)
        .unwrap();
    let late = at(CHALLENGE_VALIDITY_MS + 1);
    p.client.push(&Frame::Prove {
        items: vec![signer.prove(&NODE, &[7; 32], Op::Subscribe)],
    });
    let evs = p.pump(late);
    assert!(evs.contains(&ClientEvent::ProveResult {
        items: vec![(signer.dest(), 1, ProofStatus::StaleChallenge)]
    }));
    // A fresh challenge makes proofs work again; stale ones do not count as failures.
    p.server.issue_challenge(late, [8; 32]);
    p.client.push(&Frame::Prove {
        items: vec![signer.prove(&NODE, &[8; 32], Op::Subscribe)],
    });
    let evs = p.pump(late);
    assert!(evs.iter().any(|e| matches!(
        e,
        ClientEvent::Challenge {
            challenge: [8, ..],
            ..
        }
    )));
    assert!(evs.contains(&ClientEvent::ProveResult {
        items: vec![(signer.dest(), 1, ProofStatus::Ok)]
    }));
    assert!(p.server.is_proven(&signer.dest(), Op::Subscribe));
}

#[test]
fn timers_ping_then_close_idle() {
    let limits = ConnLimits {
        ping_interval_ms: 1_000,
        idle_timeout_ms: 3_000,
        ..ConnLimits::default()
    };
    let mut p = Pair::new(limits);
    assert_eq!(p.server.poll_timeout(), Some(1_000));
    p.server.on_timeout(at(1_000));
    // The client answers the ping inside pump: the connection lives on.
    p.pump(at(1_001));
    assert!(p.server.is_open());
    // Silence: a ping, then the idle close.
    p.server.on_timeout(at(2_001));
    let t = p.server.poll_timeout().unwrap();
    assert_eq!(t, 1_001 + 3_000);
    p.server.on_timeout(at(t));
    assert_eq!(p.server.close_code(), Some(ErrorCode::IdleTimeout));
}

#[test]
fn handshake_timeout() {
    let mut s = ServerConn::new(ConnLimits::default(), NODE, 0, [0; 32], at(0));
    let t = s.poll_timeout().unwrap();
    s.on_timeout(at(t - 1));
    assert!(!s.is_closing());
    s.on_timeout(at(t));
    assert_eq!(s.close_code(), Some(ErrorCode::HandshakeTimeout));
    let out = s.take_output().unwrap();
    assert!(matches!(
        ferry_proto::frame::decode_frame(&mut bytes::BytesMut::from(&out[..])),
        Ok(Some(Frame::Error {
            code: ErrorCode::HandshakeTimeout,
            ..
        }))
    ));
}

#[test]
fn send_queue_is_bounded() {
    let limits = ConnLimits {
        send_queue_bytes_max: 200_000,
        ..ConnLimits::default()
    };
    let mut p = Pair::new(limits);
    let payload = vec![0u8; 60_000];
    let d = ferry_proto::Dest([1; 16]);
    assert_eq!(p.server.push_deliver(&d, 1, 0, &payload), Push::Queued);
    assert_eq!(p.server.push_deliver(&d, 2, 0, &payload), Push::Queued);
    assert_eq!(p.server.push_deliver(&d, 3, 0, &payload), Push::Queued);
    assert_eq!(p.server.push_deliver(&d, 4, 0, &payload), Push::QueueFull);
    assert_eq!(p.server.dropped_queue_full, 1);
    // Taken but not yet written still counts against the bound.
    let b = p.server.take_output().unwrap();
    assert_eq!(p.server.push_deliver(&d, 5, 0, &payload), Push::QueueFull);
    p.server.on_written(at(1), b.len());
    assert_eq!(p.server.push_deliver(&d, 6, 0, &payload), Push::Queued);
    // Replies are never dropped; past the bound the connection stops being read instead.
    assert!(p.server.wants_read());
    while p.server.queued_bytes() <= 200_000 {
        p.server
            .send_result(d, 7, ferry_proto::SendStatus::NoSubscriber);
    }
    assert!(!p.server.wants_read());
    let b = p.server.take_output().unwrap();
    p.server.on_written(at(2), b.len());
    assert!(p.server.wants_read());
}

#[test]
fn a_pending_subscription_is_answered_once_when_the_owner_confirms() {
    let mut s = ServerConn::new(ConnLimits::default(), NODE, 0, [7; 32], at(0));
    let mut c = ClientConn::new();
    s.on_bytes(at(0), &c.take_output().unwrap());
    assert!(s.poll_event(at(0)).is_none());
    let signer = MailboxSecret::from_seed(&[1; 32])
        .blinded_signer(&NamespaceId([2; 32]), None, 10)
        .unwrap();
    let d = signer.dest();
    c.push(&Frame::Prove {
        items: vec![signer.prove(&NODE, &[7; 32], Op::Subscribe)],
    });
    c.push(&Frame::Subscribe { dests: vec![d, d] });
    c.push(&Frame::Subscribe { dests: vec![d] });
    s.on_bytes(at(1), &c.take_output().unwrap());
    let mut subscribed = Vec::new();
    while let Some(ev) = s.poll_event(at(1)) {
        match ev {
            ServerEvent::Prove { items } => {
                s.answer_proofs(at(1), &items);
            }
            ServerEvent::Subscribe { dests } => subscribed.extend(dests),
            other => panic!("{other:?}"),
        }
    }
    // One registration at the owner, and no answer before it confirms.
    assert_eq!(subscribed, vec![d]);
    c.on_bytes(&s.take_output().unwrap());
    let mut results = 0;
    while let Some(ev) = c.poll_event().unwrap() {
        results += usize::from(matches!(ev, ClientEvent::SubscribeResult { .. }));
    }
    assert_eq!(results, 0);
    s.on_subscribed(d);
    c.on_bytes(&s.take_output().unwrap());
    assert_eq!(
        c.poll_event().unwrap(),
        Some(ClientEvent::SubscribeResult {
            items: vec![(d, SubscribeStatus::Ok)]
        })
    );
    assert_eq!(c.poll_event().unwrap(), None);
}

#[test]
fn a_frame_trickled_in_must_still_complete_in_time() {
    let limits = ConnLimits {
        frame_stall_timeout_ms: 1_000,
        ..ConnLimits::default()
    };
    let mut s = ServerConn::new(limits, NODE, 0, [7; 32], at(0));
    let mut c = ClientConn::new();
    s.on_bytes(at(0), &c.take_output().unwrap());
    assert!(s.poll_event(at(0)).is_none());
    // A 100-byte Send announced, then one byte every 300 ms: each gap is short, the frame is not.
    s.on_bytes(at(10), &[100, 0, 0, 0]);
    let mut t = 10;
    while !s.is_closing() && t < 5_000 {
        t += 300;
        s.on_bytes(at(t), &[6]);
        assert!(s.poll_event(at(t)).is_none());
        s.on_timeout(at(t));
    }
    assert_eq!(s.close_code(), Some(ErrorCode::SlowSender));
    assert!(t <= 1_400, "closed only at {t} ms");
}

/// A partial frame holds exactly its announced length from the read that brings its prefix:
/// one block, not one sized to that read and grown, and the memory budget counts it at once.
#[test]
fn a_partial_frame_takes_its_announced_length_at_once() {
    let mut s = ServerConn::new(ConnLimits::default(), NODE, 0, [7; 32], at(0));
    let mut c = ClientConn::new();
    s.on_bytes(at(0), &c.take_output().unwrap());
    assert!(s.poll_event(at(0)).is_none());
    let base = s.memory_bytes();
    let announced = 60_000usize;
    let mut first = u32::try_from(announced).unwrap().to_le_bytes().to_vec();
    first.extend_from_slice(&[6; 1_000]);
    s.on_bytes(at(1), &first);
    let held = s.memory_bytes() - base;
    assert!(
        (4 + announced..4 + announced + 64).contains(&held),
        "holds {held} B for a {announced} B frame"
    );
    // The rest arrives: no second block.
    s.on_bytes(at(2), &vec![6; announced - 1_000]);
    assert_eq!(s.memory_bytes() - base, held);
}

#[test]
fn a_closing_connection_that_does_not_drain_is_aborted() {
    let limits = ConnLimits {
        write_stall_timeout_ms: 500,
        ..ConnLimits::default()
    };
    let mut s = ServerConn::new(limits, NODE, 0, [7; 32], at(0));
    let mut c = ClientConn::new();
    s.on_bytes(at(0), &c.take_output().unwrap());
    assert!(s.poll_event(at(0)).is_none());
    let taken = s.take_output().unwrap();
    s.on_write_blocked(at(1));
    s.on_bytes(at(2), &[1, 0, 0, 0, 0x7e]); // unknown frame type: closing
    assert!(s.poll_event(at(2)).is_none());
    assert!(s.is_closing() && !s.is_aborted());
    assert_eq!(s.poll_timeout(), Some(501));
    s.on_timeout(at(501));
    assert!(s.is_aborted());
    drop(taken);
}

#[test]
fn one_drain_at_a_time_per_connection() {
    let mut p = Pair::new(ConnLimits::default());
    let signer = MailboxSecret::from_seed(&[1; 32])
        .blinded_signer(&NamespaceId([2; 32]), None, 10)
        .unwrap();
    let d = signer.dest();
    p.client.push(&Frame::Prove {
        items: vec![signer.prove(&NODE, &[7; 32], Op::Drain)],
    });
    p.client.push(&Frame::Drain { dest: d });
    p.client.push(&Frame::Drain { dest: d });
    let evs = p.pump(at(1));
    let drains = p
        .events
        .iter()
        .filter(|e| matches!(e, ServerEvent::Drain { .. }))
        .count();
    assert_eq!(drains, 1);
    assert!(evs.contains(&ClientEvent::DrainEnd {
        dest: d,
        status: ferry_proto::DrainStatus::Busy
    }));
    p.server.on_drain_end();
    p.client.push(&Frame::Drain { dest: d });
    p.pump(at(2));
    assert_eq!(
        p.events
            .iter()
            .filter(|e| matches!(e, ServerEvent::Drain { .. }))
            .count(),
        2
    );
}
