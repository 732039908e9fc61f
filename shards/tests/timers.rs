//! The shard's timers, on a virtual clock: a tick does the work that is due (deadline entries
//! counted by `Shard::timer_checks`), not a pass over every connection; and every deadline still
//! fires at the tick it fired at when each tick looked at every connection.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ferry_proto::conn::{ClientConn, ConnLimits, Now};
use ferry_proto::frame::{ErrorCode, Frame, decode_frame};
use ferry_shards::ConnId;
use ferry_shards::metrics::ShardMetrics;
use ferry_shards::ratelimit::{IpLimits, Rate};
use ferry_shards::{Accept, Shard, ShardConfig};

const TICK_MS: u64 = 100;
const HANDSHAKE_MS: u64 = 10_000;
const PING_MS: u64 = 30_000;
const IDLE_MS: u64 = 90_000;
const STALL_MS: u64 = 30_000;

fn at(mono_ms: u64) -> Now {
    Now {
        mono_ms,
        unix_s: 1_800_000_000 + mono_ms / 1_000,
    }
}

fn shard() -> Shard {
    let cfg = ShardConfig {
        conn_limits: ConnLimits {
            handshake_timeout_ms: HANDSHAKE_MS,
            idle_timeout_ms: IDLE_MS,
            ping_interval_ms: PING_MS,
            frame_stall_timeout_ms: STALL_MS,
            write_stall_timeout_ms: STALL_MS,
            ..ConnLimits::default()
        },
        // Limited, so that every address has a limiter entry to evict.
        ip_limits: IpLimits {
            conns: Rate {
                per_s: 10,
                burst: 10,
            },
            bytes: Rate {
                per_s: 1_000_000,
                burst: 1_000_000,
            },
            entries_max: 20_000,
            ..common::ip_limits_off()
        },
        connections_max: 20_000,
        ..common::config(0, 1)
    };
    Shard::new(cfg, Arc::new(ShardMetrics::default()))
}

fn ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

/// Accepts a connection and says hello at `now`.
fn open(shard: &mut Shard, now: Now, from: IpAddr) -> ConnId {
    let Accept::Ok(conn) = shard.accept(now, from) else {
        panic!("refused")
    };
    let mut cc = ClientConn::new();
    shard.on_bytes(now, conn, &cc.take_output().unwrap());
    conn
}

/// Takes every connection's output, as the writers would; returns the frames per connection.
fn drain(shard: &mut Shard, now: Now) -> Vec<(ConnId, Vec<Frame>, bool)> {
    let mut ready = Vec::new();
    shard.take_ready(&mut ready);
    let mut out = Vec::new();
    for conn in ready {
        let o = shard.take_output(conn);
        let mut evs = Vec::new();
        if let Some(b) = &o.bytes {
            shard.on_written(now, conn, b.len());
            let mut buf = bytes::BytesMut::from(&b[..]);
            while let Some(f) = decode_frame(&mut buf).unwrap() {
                evs.push(f);
            }
        }
        if o.close {
            shard.on_closed(conn);
        }
        out.push((conn, evs, o.close));
    }
    out
}

fn pinged(frames: &[Frame]) -> bool {
    frames.iter().any(|f| matches!(f, Frame::Ping { .. }))
}

fn closed_with(frames: &[Frame], code: ErrorCode) -> bool {
    frames
        .iter()
        .any(|f| matches!(f, Frame::Error { code: c, .. } if *c == code))
}

/// Ticks every `TICK_MS` from `from_ms` to `to_ms` inclusive; returns the timer work done.
fn tick_range(shard: &mut Shard, from_ms: u64, to_ms: u64) -> u64 {
    let before = shard.timer_checks();
    let mut t = from_ms;
    while t <= to_ms {
        shard.on_tick(at(t));
        assert!(
            drain(shard, at(t)).is_empty(),
            "nothing is due before {to_ms} ms, yet a connection had output at {t} ms"
        );
        t += TICK_MS;
    }
    shard.timer_checks() - before
}

/// 10,000 silent connections inside their idle timeout, pings not yet due: a tick does no timer
/// work at all. The work there is comes when deadlines are due, once per connection per
/// deadline: the handshake deadline (armed at accept, re-checked once and moved to the ping),
/// the ping, the idle close; and once per address for the limiter's entry.
#[test]
fn ten_thousand_idle_connections_cost_a_tick_nothing() {
    const N: u64 = 10_000;
    let mut shard = shard();
    for i in 0..N {
        open(&mut shard, at(0), ip(i as u32));
    }
    drain(&mut shard, at(0));
    assert_eq!(shard.connections(), N as usize);

    // The limiter's entries refill within a second: each is looked at, at most twice, and gone.
    let early = tick_range(&mut shard, TICK_MS, 2_000);
    assert!(early <= 2 * N, "{early} limiter checks for {N} entries");
    // From then until the handshake deadline: nothing.
    assert_eq!(tick_range(&mut shard, 2_100, HANDSHAKE_MS - TICK_MS), 0);

    // The handshake entries come due; each connection is Open by then, so it is only re-armed
    // for its ping, and nothing is sent.
    shard.on_tick(at(HANDSHAKE_MS));
    assert!(drain(&mut shard, at(HANDSHAKE_MS)).is_empty());
    // 200 ticks in a row with 10,000 connections idle: no timer work at all. (A scan did 10,000
    // checks on each.)
    assert_eq!(
        tick_range(&mut shard, HANDSHAKE_MS + TICK_MS, PING_MS - TICK_MS),
        0
    );

    // The pings fire at the tick they are due, every one of them, with N checks.
    let before = shard.timer_checks();
    shard.on_tick(at(PING_MS));
    assert_eq!(shard.timer_checks() - before, N);
    let out = drain(&mut shard, at(PING_MS));
    assert_eq!(out.len() as u64, N);
    assert!(out.iter().all(|(_, evs, close)| pinged(evs) && !close));

    // Nothing again until the idle timeout, which closes every one of them, on time.
    assert_eq!(
        tick_range(&mut shard, PING_MS + TICK_MS, IDLE_MS - TICK_MS),
        0
    );
    let before = shard.timer_checks();
    shard.on_tick(at(IDLE_MS));
    assert_eq!(shard.timer_checks() - before, N);
    let out = drain(&mut shard, at(IDLE_MS));
    assert_eq!(out.len() as u64, N);
    assert!(
        out.iter()
            .all(|(_, evs, close)| *close && closed_with(evs, ErrorCode::IdleTimeout))
    );
    assert_eq!(shard.connections(), 0);
    // And an empty shard's tick is free.
    assert_eq!(
        tick_range(&mut shard, IDLE_MS + TICK_MS, IDLE_MS + 10_000),
        0
    );
}

/// With the node's defaults (no node ping, no idle timeout: a gone client is found by TCP
/// keepalive in the kernel), a silent, open connection has no deadline at all: after each
/// connection's handshake deadline is looked at once, 10,000 silent connections cost no timer
/// work for two hours of ticks, and none is pinged or closed.
#[test]
fn silent_connections_have_no_deadline_with_the_defaults() {
    const N: u64 = 10_000;
    assert_eq!(ConnLimits::default().ping_interval_ms, 0);
    assert_eq!(ConnLimits::default().idle_timeout_ms, 0);
    let cfg = ShardConfig {
        connections_max: 20_000,
        conn_limits: ConnLimits::default(),
        ..common::config(0, 1)
    };
    let mut shard = Shard::new(cfg, Arc::new(ShardMetrics::default()));
    let handshake_ms = ConnLimits::default().handshake_timeout_ms;
    for i in 0..N {
        open(&mut shard, at(0), ip(i as u32));
    }
    drain(&mut shard, at(0));
    let before = shard.timer_checks();
    shard.on_tick(at(handshake_ms));
    assert!(drain(&mut shard, at(handshake_ms)).is_empty());
    assert!(
        shard.timer_checks() - before <= N,
        "each handshake deadline is looked at once"
    );
    assert_eq!(
        tick_range(&mut shard, handshake_ms + TICK_MS, 2 * 3_600_000),
        0
    );
    assert_eq!(shard.connections(), N as usize);
}

/// Activity moves a deadline later without touching the heap: a client that speaks every 10 s is
/// never pinged, and its timer is looked at only when its (early) armed deadline passes, about
/// once per ping interval (a scan looked at it on each of the 3,000 ticks).
#[test]
fn activity_postpones_the_ping_at_constant_timer_work() {
    let mut shard = shard();
    let conn = open(&mut shard, at(0), ip(1));
    drain(&mut shard, at(0));
    let pong = Frame::Pong { nonce: 1 }.to_bytes();
    let before = shard.timer_checks();
    let mut spoke = 0;
    for t in (TICK_MS..=300_000).step_by(TICK_MS as usize) {
        if t % 10_000 == 0 {
            shard.on_bytes(at(t), conn, &pong);
            spoke += 1;
        }
        shard.on_tick(at(t));
        let out = drain(&mut shard, at(t));
        assert!(out.is_empty(), "an active client got {out:?} at {t} ms");
    }
    // The connection: its handshake deadline, then one re-check per ping interval. Its address's
    // limiter entry: made again by each read once evicted, looked at once or twice each time.
    let checks = shard.timer_checks() - before;
    let bound = 1 + 300_000 / PING_MS + 2 * (spoke + 1);
    assert!(checks <= bound, "{checks} checks, more than {bound}");
}

/// Where is the first tick at which `conn` produced output, from `from_ms`.
fn first_output(shard: &mut Shard, conn: ConnId, from_ms: u64, to_ms: u64) -> (u64, Vec<Frame>) {
    let mut t = from_ms;
    while t <= to_ms {
        shard.on_tick(at(t));
        if let Some((_, evs, _)) = drain(shard, at(t)).into_iter().find(|(c, ..)| *c == conn) {
            return (t, evs);
        }
        t += TICK_MS;
    }
    panic!("no output by {to_ms} ms")
}

/// Deadlines that move earlier than the one armed are armed at once and fire on time: a ping
/// after activity that followed an unanswered ping, a partial frame's stall, a write stall, and
/// the handshake of a client that never speaks.
#[test]
fn deadlines_that_move_earlier_fire_on_time() {
    let mut shard = shard();

    // Ping at 30 s; the client answers at 40 s (the armed deadline was the idle close at 90 s),
    // so the next ping is due at 70 s, and no close comes at 90 s.
    let a = open(&mut shard, at(0), ip(1));
    drain(&mut shard, at(0));
    let (t, evs) = first_output(&mut shard, a, TICK_MS, 200_000);
    assert_eq!(t, PING_MS);
    assert!(pinged(&evs));
    shard.on_bytes(at(40_000), a, &Frame::Pong { nonce: 1 }.to_bytes());
    let (t, evs) = first_output(&mut shard, a, 40_000, 200_000);
    assert_eq!(t, 40_000 + PING_MS);
    assert!(pinged(&evs));
    let (t, evs) = first_output(&mut shard, a, 70_100, 200_000);
    assert_eq!(t, 40_000 + IDLE_MS);
    assert!(closed_with(&evs, ErrorCode::IdleTimeout));

    // Half a frame at 5 s: the sender stalls out at 35 s.
    let b = open(&mut shard, at(0), ip(2));
    drain(&mut shard, at(0));
    let send = Frame::Pong { nonce: 2 }.to_bytes();
    shard.on_bytes(at(5_000), b, &send[..send.len() / 2]);
    let (t, evs) = first_output(&mut shard, b, 5_000, 200_000);
    assert_eq!(t, 5_000 + STALL_MS);
    assert!(closed_with(&evs, ErrorCode::SlowSender), "{evs:?}");

    // Output blocked at 2 s: a slow reader, aborted at 32 s.
    let c = open(&mut shard, at(0), ip(3));
    shard.on_write_blocked(at(2_000), c);
    let mut t = 2_000;
    loop {
        shard.on_tick(at(t));
        if shard.take_force_close().contains(&c) {
            break;
        }
        t += TICK_MS;
        assert!(t < 200_000, "never aborted");
    }
    assert_eq!(t, 2_000 + STALL_MS);

    // Accepted, never says hello: closed at the handshake deadline.
    let Accept::Ok(d) = shard.accept(at(1_000), ip(4)) else {
        panic!("refused")
    };
    let (t, evs) = first_output(&mut shard, d, 1_000, 200_000);
    assert_eq!(t, 1_000 + HANDSHAKE_MS);
    assert!(closed_with(&evs, ErrorCode::HandshakeTimeout));
}
