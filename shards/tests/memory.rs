//! The shard's memory budget, driven sans-IO with an injected clock: partial frames and queued
//! output are charged as they grow and given back as they go, the connections holding the most
//! are shed first (`Error Overloaded`) and the shard stays within its share, new connections are
//! refused with `Overloaded` when idle ones fill it, and an honest connection keeps working.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry_proto::addr::{MailboxSecret, NamespaceId};
use ferry_proto::conn::{ClientConn, ClientEvent, Now};
use ferry_proto::frame::{Dest, ErrorCode, FLAG_ACK, Frame, Op, SendStatus};
use ferry_shards::ConnId;
use ferry_shards::metrics::ShardMetrics;
use ferry_shards::shard::{CONN_BASE_BYTES, ShedCandidate, shed_order};
use ferry_shards::{Accept, Shard, ShardConfig};

const NODE_ID: [u8; 32] = [9; 32];
const BUDGET: usize = 1 << 20;

fn at(mono_ms: u64) -> Now {
    Now {
        mono_ms,
        unix_s: 1_800_000_000 + mono_ms / 1_000,
    }
}

fn shard(memory_bytes_max: usize) -> Shard {
    let cfg = ShardConfig {
        memory_bytes_max,
        ..common::config(0, 1)
    };
    Shard::new(cfg, Arc::new(ShardMetrics::default()))
}

fn ip() -> IpAddr {
    "10.0.0.1".parse().unwrap()
}

/// Accepts a connection and says hello; returns its id and challenge.
fn open(shard: &mut Shard, now: Now) -> (ConnId, [u8; 32]) {
    let Accept::Ok(conn) = shard.accept(now, ip()) else {
        panic!("refused")
    };
    let mut cc = ClientConn::new();
    shard.on_bytes(now, conn, &cc.take_output().unwrap());
    let out = take(shard, now, conn);
    let challenge = events(&out)
        .into_iter()
        .find_map(|e| match e {
            ClientEvent::Ready { challenge, .. } => Some(challenge),
            _ => None,
        })
        .expect("hello answered");
    (conn, challenge)
}

/// Takes `conn`'s output and reports it written, as a reading client's writer would.
fn take(shard: &mut Shard, now: Now, conn: ConnId) -> Vec<u8> {
    let o = shard.take_output(conn);
    let n = o.bytes.as_ref().map_or(0, |b| b.len());
    shard.on_written(now, conn, n);
    o.bytes.map(|b| b.to_vec()).unwrap_or_default()
}

fn events(bytes: &[u8]) -> Vec<ClientEvent> {
    let mut cc = ClientConn::default();
    cc.on_bytes(bytes);
    let mut evs = Vec::new();
    while let Ok(Some(ev)) = cc.poll_event() {
        evs.push(ev);
    }
    evs
}

/// The error code the node closed `conn` with, reading what it queued.
fn closed_with(shard: &mut Shard, now: Now, conn: ConnId) -> Option<ErrorCode> {
    events(&take(shard, now, conn))
        .into_iter()
        .find_map(|e| match e {
            ClientEvent::Error { code, .. } => Some(code),
            _ => None,
        })
}

/// The first bytes of a frame announcing `len` bytes: the node reserves the whole frame.
fn partial(len: u32) -> Vec<u8> {
    let mut b = len.to_le_bytes().to_vec();
    b.extend_from_slice(&[0x10; 100]);
    b
}

fn metric(shard: &Shard, f: impl Fn(&ShardMetrics) -> &std::sync::atomic::AtomicU64) -> u64 {
    f(shard.metrics()).load(Ordering::Relaxed)
}

/// Subscribes `conn` to a fresh mailbox's dest; returns it.
fn subscribe(shard: &mut Shard, now: Now, conn: ConnId, challenge: &[u8; 32], i: u32) -> Dest {
    let mut seed = [3u8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    let signer = MailboxSecret::from_seed(&seed)
        .blinded_signer(&NamespaceId([1; 32]), None, 500_000)
        .unwrap();
    let mut cc = ClientConn::default();
    cc.push(&Frame::Prove {
        items: vec![signer.prove(&NODE_ID, challenge, Op::Subscribe)],
    });
    cc.push(&Frame::Subscribe {
        dests: vec![signer.dest()],
    });
    shard.on_bytes(now, conn, &cc.take_output().unwrap());
    take(shard, now, conn);
    signer.dest()
}

/// Sends one packet of `len` bytes from `from` to `dest` (with an ack asked for).
fn send(shard: &mut Shard, now: Now, from: ConnId, dest: Dest, msg_id: u64, len: usize) {
    let mut cc = ClientConn::default();
    cc.send(dest, msg_id, FLAG_ACK, 0, &vec![7u8; len]);
    shard.on_bytes(now, from, &cc.take_output().unwrap());
}

/// The 16,000-partial-frames flood, scaled to one shard: every connection opens a 60 KB frame and
/// stalls. The shard never holds more than its budget; the oldest partial frames are shed with
/// `Overloaded`, the newest and an honest connection stay, and the account returns to zero once
/// everything closed.
#[test]
fn partial_frames_are_charged_and_the_oldest_are_shed_within_the_budget() {
    let mut s = shard(BUDGET);
    let (honest, _) = open(&mut s, at(0));
    let base = s.memory_bytes();
    assert_eq!(base, CONN_BASE_BYTES, "an idle connection holds no buffers");
    let mut flood = Vec::new();
    for i in 0..40u64 {
        let now = at(10 + i);
        let (c, _) = open(&mut s, now);
        s.on_bytes(now, c, &partial(60_000));
        assert!(
            s.memory_bytes() <= BUDGET,
            "{} over the budget after {i} partial frames",
            s.memory_bytes()
        );
        flood.push(c);
    }
    let shed = metric(&s, |m| &m.connections_shed_memory);
    assert!(shed > 0, "40 × 60 KB in 1 MiB: some must go");
    let now = at(100);
    // The oldest went first; the newest partial frame and the honest connection stay open.
    assert_eq!(
        closed_with(&mut s, now, flood[0]),
        Some(ErrorCode::Overloaded)
    );
    assert_eq!(closed_with(&mut s, now, flood[39]), None);
    assert_eq!(closed_with(&mut s, now, honest), None);
    let shed_ids: Vec<ConnId> = flood
        .iter()
        .copied()
        .filter(|&c| closed_with(&mut s, now, c) == Some(ErrorCode::Overloaded))
        .collect();
    assert_eq!(
        shed_ids.len() as u64,
        shed - 1,
        "each shed once (the first read above)"
    );
    // Shed connections no longer take input: more bytes of their frame are not buffered.
    let held = s.memory_bytes();
    s.on_bytes(now, flood[0], &[0x10; 1_000]);
    assert_eq!(s.memory_bytes(), held);
    // The honest connection still gets answers.
    let mut cc = ClientConn::default();
    cc.push(&Frame::Ping { nonce: 5 });
    s.on_bytes(now, honest, &cc.take_output().unwrap());
    assert!(
        events(&take(&mut s, now, honest))
            .iter()
            .any(|e| matches!(e, ClientEvent::Pong { nonce: 5 }))
    );
    for c in flood.into_iter().chain([honest]) {
        s.on_closed(c);
    }
    assert_eq!(s.memory_bytes(), 0, "everything given back");
}

/// A subscriber that never reads holds the most (its output queue): it is shed before partial
/// frames that are older but smaller, its socket is shut at once (it would not read the error),
/// and the sender keeps getting answers.
#[test]
fn a_subscriber_that_never_reads_is_shed_before_older_smaller_partial_frames() {
    let mut s = shard(BUDGET);
    let mut partials = Vec::new();
    for i in 0..6u64 {
        let now = at(i);
        let (c, _) = open(&mut s, now);
        s.on_bytes(now, c, &partial(60_000));
        partials.push(c);
    }
    let now = at(100);
    let (sub, challenge) = open(&mut s, now);
    let dest = subscribe(&mut s, now, sub, &challenge, 1);
    let (tx, _) = open(&mut s, now);
    let mut id = 0;
    while metric(&s, |m| &m.connections_shed_memory) == 0 {
        id += 1;
        assert!(id < 1_000, "never shed");
        send(&mut s, now, tx, dest, id, 16 * 1024);
        take(&mut s, now, tx); // the sender reads its results
        assert!(s.memory_bytes() <= BUDGET);
    }
    assert_eq!(
        s.take_force_close(),
        vec![sub],
        "the slow reader's socket is shut"
    );
    for c in &partials {
        assert_eq!(closed_with(&mut s, now, *c), None, "partial frame {c} shed");
    }
    // The sender is still served: its next packet is answered.
    send(&mut s, now, tx, dest, id + 1, 100);
    let answered = events(&take(&mut s, now, tx)).iter().any(|e| {
        matches!(e, ClientEvent::SendResult { msg_id, status, .. }
            if *msg_id == id + 1 && *status != SendStatus::Delivered)
    });
    assert!(answered, "the sender got no result for its packet");
}

/// When idle connections alone fill the budget, nothing is worth shedding: new connections are
/// refused with `Overloaded` (and counted) until one closes.
#[test]
fn new_connections_are_refused_with_overloaded_when_the_budget_is_full() {
    // Room for ten idle connections, and for one hello exchange's buffers at a time.
    let mut s = shard(10 * CONN_BASE_BYTES + 4_096);
    let conns: Vec<ConnId> = (0..10).map(|_| open(&mut s, at(0)).0).collect();
    match s.accept(at(1), ip()) {
        Accept::Refused(bytes) => {
            let code = events(&bytes).into_iter().find_map(|e| match e {
                ClientEvent::Error { code, .. } => Some(code),
                _ => None,
            });
            assert_eq!(code, Some(ErrorCode::Overloaded));
        }
        Accept::Ok(_) => panic!("accepted past the budget"),
    }
    assert_eq!(metric(&s, |m| &m.connections_refused_memory), 1);
    assert_eq!(metric(&s, |m| &m.connections_shed_memory), 0);
    s.on_closed(conns[0]);
    assert!(matches!(s.accept(at(2), ip()), Accept::Ok(_)));
}

/// Output a reading client has taken and written is given back: the account does not creep.
#[test]
fn output_is_charged_while_queued_and_given_back_when_written() {
    let mut s = shard(BUDGET);
    let now = at(0);
    let (sub, challenge) = open(&mut s, now);
    let dest = subscribe(&mut s, now, sub, &challenge, 2);
    let (tx, _) = open(&mut s, now);
    take(&mut s, now, tx);
    let idle = s.memory_bytes();
    send(&mut s, now, tx, dest, 1, 10_000);
    assert!(s.memory_bytes() >= idle + 10_000, "queued delivery charged");
    take(&mut s, now, sub);
    take(&mut s, now, tx);
    assert_eq!(s.memory_bytes(), idle, "written output given back");
}

#[test]
fn shed_order_takes_the_largest_then_the_longest_stuck() {
    let c = |conn, held_bytes, held_since_ms| ShedCandidate {
        conn: ConnId(conn),
        held_bytes,
        held_since_ms,
    };
    let mut v = vec![
        c(1, 65_000, Some(50)),
        c(2, 1 << 20, Some(90)), // a slow reader's full queue
        c(3, 65_000, Some(10)),  // an older partial frame of the same size
        c(4, 0, Some(0)),        // holds nothing beyond its base: never shed
        c(5, 65_000, None),
    ];
    shed_order(&mut v);
    let order: Vec<ConnId> = v.iter().map(|c| c.conn).collect();
    assert_eq!(order, [2, 3, 1, 5].map(ConnId));
}

#[test]
fn the_allocator_is_trimmed_after_a_large_free_at_most_once_per_interval() {
    use ferry_shards::shard::{MEMORY_TRIM_FREED_BYTES_MIN, MEMORY_TRIM_INTERVAL_MS};
    let mut s = shard(64 << 20);
    let now = at(10_000);
    assert!(!s.take_trim_due(now), "nothing freed yet");
    let flood: Vec<ConnId> = (0..200)
        .map(|_| {
            let (c, _) = open(&mut s, now);
            s.on_bytes(now, c, &partial(60_000));
            c
        })
        .collect();
    assert!(s.memory_bytes() > MEMORY_TRIM_FREED_BYTES_MIN);
    assert!(!s.take_trim_due(now), "grown, not freed");
    for c in flood {
        s.on_closed(c);
    }
    assert!(s.take_trim_due(now));
    assert!(!s.take_trim_due(now), "once");
    let again: Vec<ConnId> = (0..200)
        .map(|_| {
            let (c, _) = open(&mut s, now);
            s.on_bytes(now, c, &partial(60_000));
            c
        })
        .collect();
    for c in again {
        s.on_closed(c);
    }
    assert!(!s.take_trim_due(at(10_000 + MEMORY_TRIM_INTERVAL_MS - 1)));
    assert!(s.take_trim_due(at(10_000 + MEMORY_TRIM_INTERVAL_MS)));
}

/// The tail of a mass close (less than the trim threshold, freed just after a trim) is trimmed
/// once memory settles, and the follow-ups stop once nothing more is freed.
#[test]
fn the_tail_of_a_mass_close_is_trimmed_once_memory_settles() {
    use ferry_shards::shard::{
        MEMORY_TRIM_FREED_BYTES_MIN, MEMORY_TRIM_INTERVAL_MS, MEMORY_TRIM_SETTLE_MS,
    };
    let mut s = shard(64 << 20);
    let now = at(10_000);
    let flood: Vec<ConnId> = (0..300)
        .map(|_| {
            let (c, _) = open(&mut s, now);
            s.on_bytes(now, c, &partial(60_000));
            c
        })
        .collect();
    let (head, tail) = flood.split_at(200);
    for &c in head {
        s.on_closed(c);
    }
    assert!(s.take_trim_due(now), "the large free");
    // The rest closes just after the trim: under the threshold, so no large trim is due...
    for &c in tail {
        s.on_closed(c);
    }
    let tail_at = s.memory_bytes();
    assert!(tail_at < MEMORY_TRIM_FREED_BYTES_MIN);
    assert!(
        !s.take_trim_due(at(10_000 + MEMORY_TRIM_INTERVAL_MS)),
        "under the threshold"
    );
    // ...but once memory settles, the follow-up trims the tail.
    assert!(!s.take_trim_due(at(10_000 + MEMORY_TRIM_SETTLE_MS - 1)));
    let settled = 10_000 + MEMORY_TRIM_SETTLE_MS;
    assert!(s.take_trim_due(at(settled)), "the follow-up");
    // Nothing more freed: the next settle finds nothing and the follow-ups stop for good.
    assert!(!s.take_trim_due(at(settled + MEMORY_TRIM_SETTLE_MS)));
    assert!(!s.take_trim_due(at(settled + 10 * MEMORY_TRIM_SETTLE_MS)));
    // Memory that grows and falls back to where it was is reuse, not a tail: no trim.
    let (c, _) = open(&mut s, now);
    s.on_bytes(now, c, &partial(60_000));
    s.on_closed(c);
    assert!(!s.take_trim_due(at(settled + 20 * MEMORY_TRIM_SETTLE_MS)));
}
