//! Reader backpressure resumes on an event, not on a timer. The driver asks
//! [`Shard::hold_reader`] before each read; a held reader waits until [`Shard::take_resumed`]
//! names it, which the driver asks after every write, hop batch and close. These tests drive the
//! shard sans-IO and let no time pass between the event and the resume: a reader that needed a
//! timer to notice the pressure had ended (the driver once re-polled every 200 µs / 1 ms) would
//! not be named here.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use ferry_proto::conn::{ClientConn, ConnLimits, Now};
use ferry_proto::frame::{Dest, Frame};
use ferry_shards::ConnId;
use ferry_shards::metrics::ShardMetrics;
use ferry_shards::{Accept, Shard, ShardConfig};

/// The send queue of every connection here: a few replies overflow it.
const SEND_QUEUE_BYTES_MAX: usize = 256;

fn at(mono_ms: u64) -> Now {
    Now {
        mono_ms,
        unix_s: 1_800_000_000 + mono_ms / 1_000,
    }
}

fn shard(index: u16, shards: usize, hop_queue_msgs_max: usize) -> Shard {
    let cfg = ShardConfig {
        conn_limits: ConnLimits {
            send_queue_bytes_max: SEND_QUEUE_BYTES_MAX,
            ..common::config(0, 1).conn_limits
        },
        hop_queue_msgs_max,
        ..common::config(index, shards)
    };
    Shard::new(cfg, Arc::new(ShardMetrics::default()))
}

/// Accepts a connection, says hello and writes the node's answer away (as the writer would).
fn open(s: &mut Shard, now: Now) -> ConnId {
    let from: IpAddr = "192.0.2.7".parse().unwrap();
    let Accept::Ok(conn) = s.accept(now, from) else {
        panic!("refused")
    };
    let mut cc = ClientConn::new();
    s.on_bytes(now, conn, &cc.take_output().unwrap());
    write_all(s, now);
    conn
}

/// Takes and writes every connection's output, as the writers do.
fn write_all(s: &mut Shard, now: Now) {
    let mut ready = Vec::new();
    s.take_ready(&mut ready);
    for conn in ready {
        let out = s.take_output(conn);
        s.on_written(now, conn, out.bytes.map_or(0, |b| b.len()));
    }
}

fn resumed(s: &mut Shard) -> Vec<ConnId> {
    let mut v = Vec::new();
    s.take_resumed(&mut v);
    v
}

/// `n` pings: each is answered with a pong, a control frame the node never drops.
fn pings(n: u64) -> Vec<u8> {
    let mut cc = ClientConn::default();
    for nonce in 0..n {
        cc.push(&Frame::Ping { nonce });
    }
    cc.take_output().unwrap().to_vec()
}

/// A client that sends but does not read: its replies pass the send queue bound, its reader is
/// held, and the write that drains them resumes it in the same turn, with the clock unchanged.
#[test]
fn a_reader_held_by_its_own_backlog_resumes_on_the_write_that_drains_it() {
    let mut s = shard(0, 1, 100);
    let now = at(1_000);
    let conn = open(&mut s, now);
    assert!(!s.hold_reader(conn), "nothing queued: read");

    s.on_bytes(now, conn, &pings(64));
    assert!(
        s.hold_reader(conn),
        "replies over send_queue_bytes_max: hold"
    );
    assert!(s.hold_reader(conn), "still held, and held once");
    assert!(resumed(&mut s).is_empty());

    // Taken by the writer but not yet on the wire: still backlogged.
    let mut ready = Vec::new();
    s.take_ready(&mut ready);
    assert_eq!(ready, vec![conn]);
    let out = s.take_output(conn);
    let n = out.bytes.map_or(0, |b| b.len());
    assert!(n > SEND_QUEUE_BYTES_MAX);
    assert!(resumed(&mut s).is_empty(), "in flight: not yet");

    // Time alone never resumes it: only the write does.
    s.on_tick(at(60_000));
    assert!(resumed(&mut s).is_empty(), "a tick is not the event");

    s.on_written(now, conn, n);
    assert_eq!(resumed(&mut s), vec![conn], "the write resumes it");
    assert!(resumed(&mut s).is_empty(), "named once");
    assert!(!s.hold_reader(conn), "and it reads again");
    assert_eq!(
        s.metrics()
            .read_pauses_backpressure
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// Sends to another core fill the outbox past half its bound: every reader of the shard is held
/// and the flusher's taking of the batch resumes them all.
#[test]
fn readers_held_by_a_full_outbox_resume_when_the_batch_leaves() {
    let hop_queue_msgs_max = 8;
    let mut s = shard(0, 2, hop_queue_msgs_max);
    let now = at(1_000);
    let sender = open(&mut s, now);
    let other = open(&mut s, now);
    // A destination core 1 owns.
    let dest = (0u8..)
        .map(|i| Dest([i; 16]))
        .find(|d| d.owner(2) == 1)
        .unwrap();
    let mut cc = ClientConn::default();
    for id in 0..hop_queue_msgs_max as u64 / 2 {
        cc.send(dest, id, 0, 0, b"payload");
    }
    s.on_bytes(now, sender, &cc.take_output().unwrap());
    assert!(s.outbox_pressure());
    assert!(s.hold_reader(sender));
    assert!(s.hold_reader(other), "the pressure holds every reader");
    assert!(resumed(&mut s).is_empty());

    let batch = s.take_outbox(1).unwrap();
    assert_eq!(batch.len(), hop_queue_msgs_max / 2);
    let mut r = resumed(&mut s);
    r.sort_unstable();
    assert_eq!(r, vec![sender, other], "the batch leaving resumes both");
}

/// A held reader whose connection closes is named too, so that its read fails and its task ends
/// (it must not wait for a resume that would never come).
#[test]
fn a_held_reader_is_named_when_its_connection_closes() {
    let mut s = shard(0, 1, 100);
    let now = at(1_000);
    let conn = open(&mut s, now);
    s.on_bytes(now, conn, &pings(64));
    assert!(s.hold_reader(conn));
    s.on_closed(conn);
    assert_eq!(resumed(&mut s), vec![conn]);
    assert!(!s.hold_reader(conn), "gone: the read goes ahead and fails");
}
