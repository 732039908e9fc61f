//! Per-address and per-connection limits of one shard, driven sans-IO with an injected clock: the
//! byte rate holds across every connection of an address (debt carried), the per-address cap on
//! open connections, and the budget and cache of ownership proofs.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry_proto::addr::{MailboxSecret, NamespaceId};
use ferry_proto::conn::{ClientConn, ClientEvent, Now};
use ferry_proto::frame::{ErrorCode, Frame, Op, ProofItem, ProofStatus, decode_frame};
use ferry_shards::ConnId;
use ferry_shards::metrics::ShardMetrics;
use ferry_shards::ratelimit::{IpLimits, Rate};
use ferry_shards::{Accept, Shard, ShardConfig};

fn at(mono_ms: u64) -> Now {
    Now {
        mono_ms,
        unix_s: 1_800_000_000 + mono_ms / 1_000,
    }
}

fn config(ip_limits: IpLimits) -> ShardConfig {
    ShardConfig {
        ip_limits,
        ..common::config(0, 1)
    }
}

fn ip_limits() -> IpLimits {
    common::ip_limits_off()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Accepts a connection from `from` and says hello; returns its id.
fn open(shard: &mut Shard, now: Now, from: IpAddr) -> ConnId {
    open_with_challenge(shard, now, from).0
}

/// Accepts a connection from `from` and says hello; returns its id and its challenge.
fn open_with_challenge(shard: &mut Shard, now: Now, from: IpAddr) -> (ConnId, [u8; 32]) {
    let Accept::Ok(conn) = shard.accept(now, from) else {
        panic!("refused")
    };
    let mut cc = ClientConn::new();
    shard.on_bytes(now, conn, &cc.take_output().unwrap());
    let out = common::drain(shard, now);
    let challenge = common::frames_to(&out, conn)
        .into_iter()
        .find_map(|e| match e {
            ClientEvent::Ready { challenge, .. } => Some(challenge),
            _ => None,
        })
        .expect("hello answered");
    (conn, challenge)
}

// ---------------------------------------------------------------------------------------------
// Bytes

/// `Pong` frames (which the node takes and ignores) filling about `bytes`.
fn pongs(bytes: usize) -> Vec<u8> {
    let mut cc = ClientConn::default();
    let one = Frame::Pong { nonce: 7 }.to_bytes().len();
    for i in 0..bytes / one {
        cc.push(&Frame::Pong { nonce: i as u64 });
    }
    cc.take_output().unwrap().to_vec()
}

/// `conns` connections from one address read flat out for `ms` of virtual time, each as the
/// driver reads: `chunk` bytes per read whenever it is not paused, then the pause `on_bytes`
/// returns; with `ask_first`, also not while [`Shard::read_pause_ms`] says the address must wait.
/// Returns the bytes the shard took.
fn flat_out(conns: usize, rate: Rate, chunk: usize, ms: u64, ask_first: bool) -> u64 {
    let mut shard = Shard::new(
        config(IpLimits {
            bytes: rate,
            ..ip_limits()
        }),
        Arc::new(ShardMetrics::default()),
    );
    let from = ip("10.1.2.3");
    let ids: Vec<ConnId> = (0..conns).map(|_| open(&mut shard, at(0), from)).collect();
    let hellos = shard.metrics().bytes_in.load(Ordering::Relaxed);
    let data = pongs(chunk);
    let mut paused_until = vec![0u64; conns];
    for t in 0..ms {
        let now = at(t);
        for (i, conn) in ids.iter().enumerate() {
            if t < paused_until[i] {
                continue;
            }
            if ask_first {
                let wait = shard.read_pause_ms(now, *conn);
                if wait > 0 {
                    paused_until[i] = t + wait;
                    continue;
                }
            }
            let pause = shard.on_bytes(now, *conn, &data);
            paused_until[i] = t + pause;
        }
        common::drain(&mut shard, now);
    }
    assert_eq!(shard.connections(), conns, "a flat-out reader was closed");
    shard.metrics().bytes_in.load(Ordering::Relaxed) - hellos
}

/// The finding: one address got 1.6–4.5× its configured rate (a charge past zero forgot the debt,
/// and the other connections of the address were not held back). Now, whatever the number of
/// connections, an address gets the rate × time plus the burst, give or take one read per
/// connection in flight when the clock stops.
#[test]
fn every_connection_of_an_address_shares_one_byte_rate_with_debt_carried() {
    let rate = Rate {
        per_s: 100_000,
        burst: 50_000,
    };
    let chunk = 8 * 1024;
    let ms = 20_000;
    let allowed = rate.per_s * ms / 1_000 + rate.burst;
    for (conns, ask_first) in [1, 4, 16].into_iter().flat_map(|n| [(n, false), (n, true)]) {
        let took = flat_out(conns, rate, chunk, ms, ask_first);
        let slack = (conns * chunk) as u64;
        assert!(
            took <= allowed + slack,
            "{conns} connections took {took} bytes, allowed {allowed} (+{slack} in flight): {:.2}×",
            took as f64 / allowed as f64
        );
        // And the limit does not starve the address either.
        assert!(
            took >= allowed * 9 / 10,
            "{conns} connections took only {took} of {allowed}"
        );
    }
}

/// Bytes one connection read put the address in debt: its other connections must wait, another
/// address reads on.
#[test]
fn an_address_in_debt_holds_back_all_its_connections() {
    let rate = Rate {
        per_s: 10_000,
        burst: 10_000,
    };
    let mut shard = Shard::new(
        config(IpLimits {
            bytes: rate,
            ..ip_limits()
        }),
        Arc::new(ShardMetrics::default()),
    );
    let now = at(0);
    let a = open(&mut shard, now, ip("10.0.0.1"));
    let b = open(&mut shard, now, ip("10.0.0.1"));
    let other = open(&mut shard, now, ip("10.0.0.2"));
    // IPv6: one /64 is one address.
    let v6a = open(&mut shard, now, ip("2001:db8:7:7::1"));
    let v6b = open(&mut shard, now, ip("2001:db8:7:7:ffff::2"));
    assert_eq!(shard.read_pause_ms(now, b), 0);
    // 30 000 bytes on `a`: 20 000 (+ the hellos) in debt, 2 s at 10 000/s.
    let data = pongs(30_000);
    let pause = shard.on_bytes(now, a, &data);
    assert!((2_000..2_100).contains(&pause), "{pause}");
    let held = shard.read_pause_ms(now, b);
    assert!(held >= 2_000 && held <= pause, "{held}");
    assert_eq!(shard.read_pause_ms(now, other), 0);
    assert_eq!(shard.read_pause_ms(at(pause - 1), b), 1);
    assert_eq!(shard.read_pause_ms(at(pause), b), 0);
    assert_eq!(shard.read_pause_ms(at(pause), a), 0);
    shard.on_bytes(now, v6a, &data);
    assert!(shard.read_pause_ms(now, v6b) >= 2_000);
}

// ---------------------------------------------------------------------------------------------
// Open connections per address

fn refusal_code(a: Accept) -> Option<ErrorCode> {
    match a {
        Accept::Ok(_) => None,
        Accept::Refused(bytes) => match decode_frame(&mut bytes::BytesMut::from(&bytes[..])) {
            Ok(Some(Frame::Error { code, .. })) => Some(code),
            other => panic!("refusal is not an error frame: {other:?}"),
        },
    }
}

#[test]
fn an_address_at_its_open_connection_cap_is_refused_while_others_connect() {
    let mut shard = Shard::new(
        config(IpLimits {
            connections_open_max: 3,
            // The rate is not what refuses here (and a refusal for the cap spends none of it).
            conns: Rate { per_s: 1, burst: 4 },
            ..ip_limits()
        }),
        Arc::new(ShardMetrics::default()),
    );
    let now = at(0);
    let from = ip("198.51.100.7");
    let held: Vec<ConnId> = (0..3).map(|_| open(&mut shard, now, from)).collect();
    for _ in 0..5 {
        assert_eq!(
            refusal_code(shard.accept(now, from)),
            Some(ErrorCode::ConnectionLimit)
        );
    }
    let refused = shard
        .metrics()
        .connections_refused_ip_limit
        .load(Ordering::Relaxed);
    assert_eq!(refused, 5);
    // Another address still connects; so does another /64, but not the same /64.
    open(&mut shard, now, ip("198.51.100.8"));
    for _ in 0..3 {
        open(&mut shard, now, ip("2001:db8:1:1::1"));
    }
    assert_eq!(
        refusal_code(shard.accept(now, ip("2001:db8:1:1:abcd::2"))),
        Some(ErrorCode::ConnectionLimit)
    );
    open(&mut shard, now, ip("2001:db8:1:2::1"));
    // A closed connection makes room again (and the rate bucket still has its fourth token).
    shard.on_closed(held[0]);
    open(&mut shard, now, from);
    assert_eq!(
        refusal_code(shard.accept(now, from)),
        Some(ErrorCode::ConnectionLimit)
    );
}

// ---------------------------------------------------------------------------------------------
// Proofs

fn signer_proofs(challenge: &[u8; 32], mailboxes: std::ops::Range<u32>) -> Vec<ProofItem> {
    mailboxes
        .map(|i| {
            let mut seed = [3u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            MailboxSecret::from_seed(&seed)
                .blinded_signer(&NamespaceId([1; 32]), None, 500_000)
                .unwrap()
                .prove(&[9; 32], challenge, Op::Subscribe)
        })
        .collect()
}

/// Sends one `Prove` frame on `conn`; returns the statuses of its `ProveResult`.
fn prove(shard: &mut Shard, now: Now, conn: ConnId, items: &[ProofItem]) -> Vec<ProofStatus> {
    let mut cc = ClientConn::default();
    cc.push(&Frame::Prove {
        items: items.to_vec(),
    });
    shard.on_bytes(now, conn, &cc.take_output().unwrap());
    let out = common::drain(shard, now);
    common::frames_to(&out, conn)
        .into_iter()
        .find_map(|e| match e {
            ClientEvent::ProveResult { items } => Some(items.iter().map(|i| i.2).collect()),
            _ => None,
        })
        .expect("a ProveResult")
}

fn count(statuses: &[ProofStatus], want: ProofStatus) -> usize {
    statuses.iter().filter(|s| **s == want).count()
}

fn metric(shard: &Shard, f: impl Fn(&ShardMetrics) -> &std::sync::atomic::AtomicU64) -> u64 {
    f(shard.metrics()).load(Ordering::Relaxed)
}

/// The finding: re-sending one valid 128-proof frame made the node check every signature every
/// time. Now each is checked once per challenge; a new challenge empties the cache.
#[test]
fn a_replayed_proof_frame_is_verified_once() {
    let mut shard = Shard::new(config(ip_limits()), Arc::new(ShardMetrics::default()));
    let now = at(0);
    let (conn, challenge) = open_with_challenge(&mut shard, now, ip("203.0.113.5"));
    let items = signer_proofs(&challenge, 0..128);
    for _ in 0..50 {
        let statuses = prove(&mut shard, now, conn, &items);
        assert_eq!(count(&statuses, ProofStatus::Ok), 128);
    }
    assert_eq!(metric(&shard, |m| &m.proofs_verified), 128);
    assert_eq!(metric(&shard, |m| &m.proofs_cached), 128 * 49);
    assert_eq!(metric(&shard, |m| &m.proofs_ok), 128 * 50);
    // Same dest, another (bad) signature: not the cached proof, so it is checked (and fails).
    let mut forged = items[0];
    forged.signature[40] ^= 1;
    assert_eq!(
        prove(&mut shard, now, conn, &[forged]),
        vec![ProofStatus::BadSignature]
    );
    assert_eq!(metric(&shard, |m| &m.proofs_verified), 129);
    // A new challenge: the old proofs are no longer valid, and the cache does not say otherwise.
    let mut cc = ClientConn::default();
    cc.push(&Frame::ChallengeRequest);
    shard.on_bytes(now, conn, &cc.take_output().unwrap());
    common::drain(&mut shard, now);
    let statuses = prove(&mut shard, now, conn, &items[..4]);
    assert_eq!(statuses, vec![ProofStatus::BadSignature; 4]);
    assert_eq!(metric(&shard, |m| &m.proofs_verified), 133);
}

/// Fresh valid proofs (new challenges, re-signed) cost the prover: past the connection's and the
/// address's budgets they are answered `RateLimited` unchecked (not failures: the connection stays
/// open), while another address proves as much as an honest reconnect needs.
#[test]
fn a_fresh_proof_flood_is_rate_limited_per_connection_and_per_address() {
    let mut shard = Shard::new(
        config(IpLimits {
            proofs: Rate {
                per_s: 10,
                burst: 200,
            },
            proofs_per_conn: Rate {
                per_s: 5,
                burst: 150,
            },
            proof_failures: Rate {
                per_s: 1,
                burst: 10,
            },
            ..ip_limits()
        }),
        Arc::new(ShardMetrics::default()),
    );
    let now = at(0);
    let attacker = ip("192.0.2.66");
    let (a, ch) = open_with_challenge(&mut shard, now, attacker);
    assert_eq!(
        count(
            &prove(&mut shard, now, a, &signer_proofs(&ch, 0..128)),
            ProofStatus::Ok
        ),
        128
    );
    // A new challenge, the same dests signed again: fresh proofs, 22 left in the connection's
    // budget.
    let mut cc = ClientConn::default();
    cc.push(&Frame::ChallengeRequest);
    shard.on_bytes(now, a, &cc.take_output().unwrap());
    let ch = common::frames_to(&common::drain(&mut shard, now), a)
        .into_iter()
        .find_map(|e| match e {
            ClientEvent::Challenge { challenge, .. } => Some(challenge),
            _ => None,
        })
        .unwrap();
    let statuses = prove(&mut shard, now, a, &signer_proofs(&ch, 0..128));
    assert_eq!(count(&statuses, ProofStatus::Ok), 22);
    assert_eq!(count(&statuses, ProofStatus::RateLimited), 106);
    // A second connection of the address: the address has 50 left.
    let (b, ch_b) = open_with_challenge(&mut shard, now, attacker);
    let statuses = prove(&mut shard, now, b, &signer_proofs(&ch_b, 0..128));
    assert_eq!(count(&statuses, ProofStatus::Ok), 50);
    assert_eq!(count(&statuses, ProofStatus::RateLimited), 78);
    let (c, ch_c) = open_with_challenge(&mut shard, now, attacker);
    let statuses = prove(&mut shard, now, c, &signer_proofs(&ch_c, 0..128));
    assert_eq!(count(&statuses, ProofStatus::RateLimited), 128);
    assert_eq!(metric(&shard, |m| &m.proofs_verified), 200);
    assert_eq!(metric(&shard, |m| &m.proofs_rate_limited), 106 + 78 + 128);
    assert_eq!(metric(&shard, |m| &m.proofs_failed), 0);
    assert_eq!(shard.connections(), 3, "RateLimited is not a failure");
    // An honest client on another address: a 72-hour reconnect, 2 proofs an hour.
    let (h, ch_h) = open_with_challenge(&mut shard, now, ip("192.0.2.67"));
    let honest = signer_proofs(&ch_h, 1_000..1_146);
    let mut statuses = prove(&mut shard, now, h, &honest[..128]);
    statuses.extend(prove(&mut shard, now, h, &honest[128..]));
    assert_eq!(count(&statuses, ProofStatus::Ok), 146);
    // Time repays the attacker's address at its rate, no faster: one second is ten checks.
    let later = at(1_000);
    let (d, ch_d) = open_with_challenge(&mut shard, later, attacker);
    let statuses = prove(&mut shard, later, d, &signer_proofs(&ch_d, 0..128));
    assert_eq!(count(&statuses, ProofStatus::Ok), 10);
}
