//! Send puzzles on one shard with a store, sans-IO with an injected clock: a calm dest takes
//! sends without a puzzle; a pressured one answers `PuzzleRequired` (with a `Puzzle` frame) to an
//! unsolved send, takes a solved one once, refuses its replay, and takes the capability the
//! mailbox owner registered instead of a puzzle.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry_proto::addr::{MailboxSecret, NamespaceId};
use ferry_proto::conn::{ClientConn, ClientEvent, Now};
use ferry_proto::frame::{CapabilityStatus, Dest, FLAG_ACK, Frame, Op, ProofStatus, SendStatus};
use ferry_proto::puzzle::{self, SendPass};
use ferry_shards::ConnId;
use ferry_shards::metrics::ShardMetrics;
use ferry_shards::puzzle::PuzzleConfig;
use ferry_shards::store::backend::MmapBackend;
use ferry_shards::store::{FsyncPolicy, Log, StoreLimits};
use ferry_shards::{Accept, Shard, ShardConfig};

const T0: u64 = 1_800_000_000;
const NODE_ID: [u8; 32] = [9; 32];

fn at(mono_ms: u64) -> Now {
    Now {
        mono_ms,
        unix_s: T0 + mono_ms / 1_000,
    }
}

struct Node {
    shard: Shard,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A one-shard node whose dests hold 100 blobs; puzzles start at 1 % of that (one blob), so
/// one stored blob puts a dest under pressure.
fn node(name: &str, puzzle: PuzzleConfig) -> Node {
    let dir = std::env::temp_dir().join(format!("ferry-puzzle-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let limits = StoreLimits {
        segment_bytes: 1 << 20,
        segment_roll_s: 3_600,
        ttl_max_s: 3_600,
        dest_blobs_max: 100,
        dest_bytes_max: 1 << 20,
        disk_bytes_max: 64 << 20,
        high_water_percent: 90,
        // One sender fills the dest: puzzles, not per-source shares (shards/tests/fairness.rs).
        sources: ferry_shards::store::fair::SourceLimits {
            share_percent: 100,
            dest_share_percent: 100,
            ..Default::default()
        },
    };
    let (log, _) = Log::open(
        MmapBackend::new(&dir).unwrap(),
        0,
        limits,
        FsyncPolicy::None,
        T0,
    )
    .unwrap();
    let cfg = ShardConfig {
        connections_max: 100,
        puzzle,
        ..common::config(0, 1)
    };
    let shard = Shard::new(cfg, Arc::new(ShardMetrics::default())).with_store(log);
    Node {
        shard,
        _dir: TempDir(dir),
    }
}

fn pressured() -> PuzzleConfig {
    PuzzleConfig {
        key: [5; 32],
        dest_fill_pct_min: 1,
        ..PuzzleConfig::default()
    }
}

/// Opens a connection; returns it and its challenge.
fn open(shard: &mut Shard, now: Now) -> (ConnId, [u8; 32]) {
    let from: IpAddr = "192.0.2.1".parse().unwrap();
    let Accept::Ok(conn) = shard.accept(now, from) else {
        panic!("refused")
    };
    shard.on_bytes(now, conn, &ClientConn::new().take_output().unwrap());
    let out = common::drain(shard, now);
    let challenge = common::frames_to(&out, conn)
        .into_iter()
        .find_map(|e| match e {
            ClientEvent::Ready { challenge, .. } => Some(challenge),
            _ => None,
        })
        .unwrap();
    (conn, challenge)
}

/// What the node answered one `Send`: its status, and the puzzle (seed, effort) if one came.
fn send(
    shard: &mut Shard,
    now: Now,
    conn: ConnId,
    dest: Dest,
    msg_id: u64,
    pass: &SendPass,
    payload: &[u8],
) -> (SendStatus, Option<([u8; 32], u32)>) {
    let mut cc = ClientConn::default();
    // Asking for a result: a stranger's successful store is answered `Accepted` only with it.
    cc.send_with(dest, msg_id, FLAG_ACK, 0, pass, payload);
    shard.on_bytes(now, conn, &cc.take_output().unwrap());
    let out = common::drain(shard, now);
    let mut puzzle = None;
    for e in common::frames_to(&out, conn) {
        match e {
            ClientEvent::Puzzle {
                dest: d,
                msg_id: m,
                seed,
                effort,
            } => {
                assert_eq!((d, m), (dest, msg_id));
                puzzle = Some((seed, effort));
            }
            ClientEvent::SendResult {
                dest: d,
                msg_id: m,
                status,
            } => {
                assert_eq!((d, m), (dest, msg_id));
                assert_eq!(puzzle.is_some(), status == SendStatus::PuzzleRequired);
                return (status, puzzle);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("no SendResult")
}

fn solved(seed: &[u8; 32], dest: Dest, msg_id: u64, effort: u32, payload: &[u8]) -> SendPass {
    let digest = puzzle::message_digest(msg_id, 0, payload);
    SendPass {
        puzzle: Some(puzzle::solve(seed, &dest, &digest, effort, [0; 16]).unwrap()),
        capability: None,
    }
}

fn metric(shard: &Shard, f: impl Fn(&ShardMetrics) -> &std::sync::atomic::AtomicU64) -> u64 {
    f(shard.metrics()).load(Ordering::Relaxed)
}

#[test]
fn a_calm_dest_needs_no_puzzle() {
    let mut n = node("calm", PuzzleConfig::default());
    let now = at(0);
    let (conn, _) = open(&mut n.shard, now);
    // The default thresholds (50 % of the dest quota): 40 blobs are calm.
    for i in 0..40 {
        let (status, puzzle) = send(
            &mut n.shard,
            now,
            conn,
            Dest([1; 16]),
            i,
            &SendPass::NONE,
            b"x",
        );
        assert_eq!(status, SendStatus::Accepted, "blob {i}");
        assert!(puzzle.is_none());
    }
    assert_eq!(metric(&n.shard, |m| &m.puzzles_required), 0);
}

#[test]
fn under_pressure_a_send_needs_a_fresh_solved_puzzle() {
    let mut n = node("pressure", pressured());
    let now = at(0);
    let (conn, _) = open(&mut n.shard, now);
    let dest = Dest([2; 16]);
    // Empty: calm.
    assert_eq!(
        send(&mut n.shard, now, conn, dest, 1, &SendPass::NONE, b"first").0,
        SendStatus::Accepted
    );
    // One blob stored: 1 % of the quota, level 1.
    let (status, puzzle) = send(&mut n.shard, now, conn, dest, 2, &SendPass::NONE, b"second");
    assert_eq!(status, SendStatus::PuzzleRequired);
    let (seed, effort) = puzzle.unwrap();
    assert_eq!(effort, 1);
    // A wrong seed proves nothing.
    let wrong = solved(&[0; 32], dest, 2, effort, b"second");
    assert_eq!(
        send(&mut n.shard, now, conn, dest, 2, &wrong, b"second").0,
        SendStatus::PuzzleRequired
    );
    assert_eq!(metric(&n.shard, |m| &m.puzzles_invalid), 1);
    // An answer for another message proves nothing for this one.
    let other = solved(&seed, dest, 3, effort, b"second");
    assert_eq!(
        send(&mut n.shard, now, conn, dest, 2, &other, b"second").0,
        SendStatus::PuzzleRequired
    );
    // The right answer stores it.
    let pass = solved(&seed, dest, 2, effort, b"second");
    assert_eq!(
        send(&mut n.shard, now, conn, dest, 2, &pass, b"second").0,
        SendStatus::Accepted
    );
    // Its replay is refused (the store would have taken it as a duplicate).
    assert_eq!(
        send(&mut n.shard, now, conn, dest, 2, &pass, b"second").0,
        SendStatus::PuzzleRequired
    );
    // The seed rotates; an answer under the previous seed still holds, one two seeds back not.
    let later = at(600_000);
    let pass = solved(&seed, dest, 4, effort, b"fourth");
    assert_eq!(
        send(&mut n.shard, later, conn, dest, 4, &pass, b"fourth").0,
        SendStatus::Accepted
    );
    let much_later = at(1_200_000);
    let pass = solved(&seed, dest, 5, effort, b"fifth");
    assert_eq!(
        send(&mut n.shard, much_later, conn, dest, 5, &pass, b"fifth").0,
        SendStatus::PuzzleRequired
    );
    // Another, empty dest is calm.
    assert_eq!(
        send(
            &mut n.shard,
            now,
            conn,
            Dest([3; 16]),
            1,
            &SendPass::NONE,
            b"x"
        )
        .0,
        SendStatus::Accepted
    );
}

/// Four levels up to effort 8 (an operator's choice; the default is one level of effort 1).
#[test]
fn the_difficulty_rises_with_the_fill_of_the_dest() {
    let mut n = node(
        "levels",
        PuzzleConfig {
            levels: 4,
            effort_max: 8,
            ..pressured()
        },
    );
    let (conn, _) = open(&mut n.shard, at(0));
    let dest = Dest([4; 16]);
    let mut efforts = Vec::new();
    for i in 0..100u64 {
        // At the connection's puzzle-check rate (4/s).
        let now = at(i * 250);
        let body = i.to_le_bytes();
        let (mut status, puzzle) = send(&mut n.shard, now, conn, dest, i, &SendPass::NONE, &body);
        if let Some((seed, effort)) = puzzle {
            if efforts.last() != Some(&effort) {
                efforts.push(effort);
            }
            let pass = solved(&seed, dest, i, effort, &body);
            status = send(&mut n.shard, now, conn, dest, i, &pass, &body).0;
        }
        assert_eq!(status, SendStatus::Accepted, "blob {i}");
    }
    assert_eq!(efforts, vec![1, 2, 4, 8]);
    // Faster than that, answers go unchecked past the burst.
    let now = at(100_000);
    let mut limited = 0;
    for i in 0..40u64 {
        let pass = solved(&[0; 32], Dest([5; 16]), i, 1, b"x");
        send(&mut n.shard, now, conn, Dest([5; 16]), i, &pass, b"x");
        limited = metric(&n.shard, |m| &m.puzzles_rate_limited);
    }
    assert_eq!(limited, 40 - 32, "the burst is checked, the rest not");
}

#[test]
fn the_owners_capability_skips_the_puzzle() {
    let mut n = node("capability", pressured());
    let now = at(0);
    let (conn, challenge) = open(&mut n.shard, now);
    let ns = NamespaceId([1; 32]);
    let epoch = now.unix_s / 3_600;
    let signer = MailboxSecret::from_seed(&[7; 32])
        .blinded_signer(&ns, None, epoch)
        .unwrap();
    let item = signer.prove(&NODE_ID, &challenge, Op::Drain);
    let dest = item.dest;
    // Registering needs the Drain proof.
    let register = |shard: &mut Shard, verifier: [u8; 32]| {
        let mut cc = ClientConn::default();
        cc.push(&Frame::CapabilityRegister {
            dest,
            ttl_s: 3_600,
            verifier,
        });
        shard.on_bytes(now, conn, &cc.take_output().unwrap());
        let out = common::drain(shard, now);
        common::frames_to(&out, conn)
            .into_iter()
            .find_map(|e| match e {
                ClientEvent::CapabilityResult { status, .. } => Some(status),
                _ => None,
            })
            .unwrap()
    };
    let secret = [0x5a; 32];
    let token = puzzle::capability_token(&secret, epoch);
    let verifier = puzzle::capability_verifier(&token);
    assert_eq!(
        register(&mut n.shard, verifier),
        CapabilityStatus::NotProven
    );
    let mut cc = ClientConn::default();
    cc.push(&Frame::Prove { items: vec![item] });
    n.shard.on_bytes(now, conn, &cc.take_output().unwrap());
    let out = common::drain(&mut n.shard, now);
    assert!(common::frames_to(&out, conn).iter().any(|e| matches!(
        e,
        ClientEvent::ProveResult { items } if items[0].2 == ProofStatus::Ok
    )));
    assert_eq!(register(&mut n.shard, verifier), CapabilityStatus::Ok);

    // Under pressure: the token passes, a wrong one (another epoch's) does not.
    send(&mut n.shard, now, conn, dest, 1, &SendPass::NONE, b"fill");
    let with = |t: [u8; 32]| SendPass {
        puzzle: None,
        capability: Some(t),
    };
    // (This connection proved the dest, so it learns `Stored`, not a stranger's `Accepted`.)
    assert_eq!(
        send(&mut n.shard, now, conn, dest, 2, &with(token), b"hi").0,
        SendStatus::Stored
    );
    let stale = puzzle::capability_token(&secret, epoch - 1);
    assert_eq!(
        send(&mut n.shard, now, conn, dest, 3, &with(stale), b"hi").0,
        SendStatus::PuzzleRequired
    );
    // The token is not a puzzle answer for another dest.
    send(
        &mut n.shard,
        now,
        conn,
        Dest([8; 16]),
        1,
        &SendPass::NONE,
        b"fill",
    );
    assert_eq!(
        send(
            &mut n.shard,
            now,
            conn,
            Dest([8; 16]),
            2,
            &with(token),
            b"hi"
        )
        .0,
        SendStatus::PuzzleRequired
    );
}
