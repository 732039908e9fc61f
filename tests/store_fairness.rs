//! Fair shares of the store through a real node (docs/STORAGE.md, "Fair shares"): distinct
//! loopback source addresses play distinct clients. A flood from 127.0.0.2 holds at most its
//! share of a small store while 127.0.0.3's offline mail is stored and drained, and a subscriber
//! still gets live delivery, also while a hand-over holds a mailbox full of junk.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Node, mailbox};
use ferry_proto::conn::{ClientConn, ClientEvent};
use ferry_sdk::{Dest, FLAG_ACK, Op, ProofStatus, SendStatus};

const WAIT: Duration = Duration::from_secs(10);

/// A client speaking raw frames from a chosen source address (senders need no proof).
struct Raw {
    s: TcpStream,
    cc: ClientConn,
    events: Vec<ClientEvent>,
}

impl Raw {
    fn connect(node: &Node, last: u8) -> Raw {
        let source = IpAddr::from([127, 0, 0, last]);
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&std::net::SocketAddr::new(source, 0).into())
            .unwrap();
        sock.connect(&node.addr().into()).unwrap();
        let s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut raw = Raw {
            s,
            cc: ClientConn::new(),
            events: Vec::new(),
        };
        raw.flush();
        raw.wait(|e| matches!(e, ClientEvent::Ready { .. }));
        raw
    }

    fn flush(&mut self) {
        if let Some(b) = self.cc.take_output() {
            self.s.write_all(&b).unwrap();
        }
    }

    /// Reads until `done` holds for some event received (kept in `events`).
    fn wait(&mut self, done: impl Fn(&ClientEvent) -> bool) {
        let deadline = Instant::now() + WAIT;
        let mut buf = vec![0u8; 64 * 1024];
        let mut seen = 0;
        loop {
            if self.events[seen..].iter().any(&done) {
                return;
            }
            seen = self.events.len();
            assert!(Instant::now() < deadline, "no answer within {WAIT:?}");
            match self.s.read(&mut buf) {
                Ok(0) => panic!("the node closed the connection"),
                Ok(n) => {
                    self.cc.on_bytes(&buf[..n]);
                    while let Some(ev) = self.cc.poll_event().unwrap() {
                        self.events.push(ev);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Sends and waits for the result of every one of `sends` (dest, msg id, payload).
    fn send_all(&mut self, sends: &[(Dest, u64, Vec<u8>)], flags: u8) -> Vec<SendStatus> {
        // Results of earlier calls are all in: only this call's may match.
        self.events.clear();
        for (dest, id, payload) in sends {
            self.cc.send(*dest, *id, flags, 0, payload);
        }
        self.flush();
        let want = |e: &ClientEvent, id: u64| matches!(e, ClientEvent::SendResult { msg_id, .. } if *msg_id == id);
        sends
            .iter()
            .map(|(_, id, _)| {
                self.wait(|e| want(e, *id));
                self.events
                    .iter()
                    .rev()
                    .find_map(|e| match e {
                        ClientEvent::SendResult { msg_id, status, .. } if msg_id == id => {
                            Some(*status)
                        }
                        _ => None,
                    })
                    .unwrap()
            })
            .collect()
    }
}

fn junk_dest(i: u64) -> Dest {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    d[8..].copy_from_slice(&i.to_le_bytes());
    Dest(d)
}

#[test]
fn a_flood_from_one_address_leaves_room_and_live_delivery_for_everyone_else() {
    common::raise_nofile(4096);
    // One shard of 16 segments of 128 KiB: blobs up to 90 %, one address up to 10 % of that.
    let node = Node::start(
        &["--shards", "1"],
        &[
            ("FERRY_LIMITS_STORE_SEGMENT_BYTES", "131072"),
            ("FERRY_LIMITS_STORE_DISK_BYTES_MAX", "2097152"),
            ("FERRY_LIMITS_STORE_DEST_BLOBS_MAX", "600"),
            ("FERRY_STORE_FSYNC", "none"),
            // Shares alone (tests/puzzle.rs has the puzzles): no puzzle as the store fills.
            ("FERRY_LIMITS_PUZZLE_LEVELS", "0"),
        ],
    );
    let share = 2_097_152 * 90 / 100 * 10 / 100;
    let record = (64usize + 4096).div_ceil(8) * 8;

    // The flood: four connections from 127.0.0.2, 4 KiB blobs to random dests.
    let mut flood: Vec<Raw> = (0..4).map(|_| Raw::connect(&node, 2)).collect();
    let mut flood_stored = 0;
    for round in 0..4u64 {
        for (k, c) in flood.iter_mut().enumerate() {
            let sends: Vec<_> = (0..64u64)
                .map(|n| {
                    let id = (round * 4 + k as u64) * 1_000 + n;
                    (junk_dest(id), id, vec![0xa5u8; 4096])
                })
                .collect();
            flood_stored += c
                .send_all(&sends, FLAG_ACK)
                .iter()
                .filter(|s| **s == SendStatus::Accepted)
                .count();
        }
    }
    assert!(flood_stored > 0);
    assert!(
        flood_stored * record <= share,
        "the flood holds {} bytes, its share is {share}",
        flood_stored * record
    );
    assert!(node.metric("ferry_store_refused_source_share_total") > 0);

    // 127.0.0.3's offline mail: stored, then drained by its recipients.
    let mut honest = Raw::connect(&node, 3);
    let mut rx = node.client();
    let epoch = rx.epoch();
    let mailboxes: Vec<_> = (0..5).map(|i| mailbox(700 + i)).collect();
    let mut sends = Vec::new();
    for (i, mb) in mailboxes.iter().enumerate() {
        for n in 0..4u64 {
            sends.push((
                mb.dest(epoch).unwrap(),
                i as u64 * 10 + n,
                vec![0x3cu8; 4096],
            ));
        }
    }
    let statuses = honest.send_all(&sends, FLAG_ACK);
    assert!(
        statuses.iter().all(|s| *s == SendStatus::Accepted),
        "{statuses:?}"
    );
    for (i, mb) in mailboxes.iter().enumerate() {
        let signer = mb.signer(epoch).unwrap();
        assert_eq!(
            rx.prove(&[&signer], Op::Drain).unwrap(),
            vec![ProofStatus::Ok]
        );
        let (blobs, more) = rx.drain(signer.dest()).unwrap();
        assert!(!more);
        let ids: Vec<u64> = blobs.iter().map(|b| b.msg_id).collect();
        let want: Vec<u64> = (0..4).map(|n| i as u64 * 10 + n).collect();
        assert_eq!(ids, want);
        rx.ack(&blobs).unwrap();
    }

    // A mailbox locked with junk by two other flooding addresses (each at its half of the
    // quota), then taken by its subscriber: more than one drain batch is stored, so the hand-over
    // is on, and 127.0.0.3's packets are delivered live rather than refused.
    let locked = mailbox(800);
    let dest = locked.dest(epoch).unwrap();
    // (127.0.0.2 is at its share of the store already: its junk would not even be stored.)
    for (k, c) in [Raw::connect(&node, 5), Raw::connect(&node, 6)]
        .iter_mut()
        .enumerate()
    {
        let sends: Vec<_> = (0..300u64)
            .map(|n| (dest, 50_000 + k as u64 * 1_000 + n, b"junk".to_vec()))
            .collect();
        assert!(
            c.send_all(&sends, FLAG_ACK)
                .iter()
                .all(|s| *s == SendStatus::Accepted)
        );
    }
    let over = honest.send_all(&[(dest, 1, b"offline".to_vec())], FLAG_ACK);
    assert_eq!(over, vec![SendStatus::QuotaExceeded], "the mailbox is full");
    let mut sub = node.client();
    sub.listen(&locked, [epoch]).unwrap();
    let live: Vec<_> = (2..12u64).map(|id| (dest, id, b"live".to_vec())).collect();
    let statuses = honest.send_all(&live, FLAG_ACK);
    assert!(
        statuses.iter().all(|s| *s == SendStatus::Accepted),
        "{statuses:?}"
    );
    let mut got = Vec::new();
    while got.len() < 10 {
        match sub.recv(WAIT).unwrap() {
            ClientEvent::Deliver { msg_id, .. } => got.push(msg_id),
            ClientEvent::Stored { .. } | ClientEvent::DrainEnd { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, (2..12).collect::<Vec<_>>());
    assert_eq!(node.metric("ferry_handover_live_total"), 10);

    // A plain subscribed dest gets live delivery from the flooder too.
    let mut plain = node.client();
    let live_dest = plain.listen(&mailbox(900), [epoch]).unwrap()[0];
    let statuses = flood[1].send_all(&[(live_dest, 7, b"hi".to_vec())], FLAG_ACK);
    assert_eq!(statuses, vec![SendStatus::Accepted]);
}
