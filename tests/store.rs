//! Store-and-forward through a real node: offline sends are stored and answered (`Accepted`: the
//! senders here have not proven the dests), the recipient proves and asks which dests hold blobs, drains them with a proof, acks them; duplicates are
//! stored once; a subscriber gets stored blobs before live ones; blobs survive a restart and a
//! kill -9 (fsync=always); quotas and a full store answer with their own status.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Node, mailbox};
use ferry_proto::conn::ClientEvent;
use ferry_sdk::{Client, FLAG_ACK, Mailbox, Op, ProofStatus, SendStatus};

const WAIT: Duration = Duration::from_secs(10);

fn send_and_status(
    tx: &mut Client,
    dest: ferry_sdk::Dest,
    msg_id: u64,
    payload: &[u8],
) -> SendStatus {
    tx.send(dest, msg_id, FLAG_ACK, payload);
    common::send_result(tx, msg_id, WAIT)
}

fn prove_drain(c: &mut Client, mb: &Mailbox, epoch: u64) -> ferry_sdk::Dest {
    let signer = mb.signer(epoch).unwrap();
    assert_eq!(
        c.prove(&[&signer], Op::Drain).unwrap(),
        vec![ProofStatus::Ok]
    );
    signer.dest()
}

/// Drains and acks until the node says done; returns the msg ids in order.
fn drain_all(c: &mut Client, dest: ferry_sdk::Dest) -> Vec<u64> {
    let mut ids = Vec::new();
    loop {
        let (blobs, more) = c.drain(dest).unwrap();
        ids.extend(blobs.iter().map(|b| b.msg_id));
        c.ack(&blobs).unwrap();
        if !more {
            return ids;
        }
    }
}

#[test]
fn offline_blobs_are_stored_queried_drained_in_order_and_acked() {
    let node = Node::start(&["--shards", "2"], &[]);
    let mut tx = node.client();
    let epoch = tx.epoch();
    let bob = mailbox(41);
    let dest = bob.dest(epoch).unwrap();
    for i in 1..=5u64 {
        assert_eq!(
            send_and_status(&mut tx, dest, i, format!("blob {i}").as_bytes()),
            SendStatus::Accepted
        );
    }
    // The same message id again is stored once.
    assert_eq!(
        send_and_status(&mut tx, dest, 3, b"blob 3"),
        SendStatus::Accepted
    );

    let mut rx = node.client();
    let other = mailbox(42).dest(epoch).unwrap();
    // Before proving, the node says nothing about the dest (PROTOCOL.md §8.3).
    assert!(rx.query(&[dest, other]).unwrap().is_empty());
    // Draining needs a Drain proof for the dest.
    assert!(rx.drain(dest).is_err());
    prove_drain(&mut rx, &bob, epoch);
    assert_eq!(rx.query(&[dest, other]).unwrap(), vec![dest]);
    let (blobs, more) = rx.drain(dest).unwrap();
    assert!(!more);
    let got: Vec<(u64, Vec<u8>)> = blobs
        .iter()
        .map(|b| (b.msg_id, b.payload.to_vec()))
        .collect();
    let want: Vec<(u64, Vec<u8>)> = (1..=5u64)
        .map(|i| (i, format!("blob {i}").into_bytes()))
        .collect();
    assert_eq!(got, want);
    // Unacked blobs come again; acked ones do not.
    rx.ack(&blobs[..2]).unwrap();
    let (again, _) = rx.drain(dest).unwrap();
    assert_eq!(
        again.iter().map(|b| b.msg_id).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    rx.ack(&again).unwrap();
    rx.ping(1).unwrap();
    assert!(rx.query(&[dest]).unwrap().is_empty());
    assert_eq!(node.metric("ferry_store_appends_total"), 5);
    assert_eq!(node.metric("ferry_store_acks_total"), 5);
}

#[test]
fn a_subscriber_gets_stored_blobs_first_then_live_traffic() {
    let node = Node::start(&["--shards", "3"], &[]);
    let mut tx = node.client();
    let epoch = tx.epoch();
    let bob = mailbox(51);
    let dest = bob.dest(epoch).unwrap();
    for i in 1..=3u64 {
        assert_eq!(
            send_and_status(&mut tx, dest, i, b"stored"),
            SendStatus::Accepted
        );
    }
    let mut rx = node.client();
    rx.listen(&bob, [epoch]).unwrap();
    tx.send(dest, 4, FLAG_ACK, b"live");
    tx.flush().unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match rx.recv(WAIT).unwrap() {
            ClientEvent::Stored { msg_id, .. } => seen.push(format!("stored {msg_id}")),
            ClientEvent::DrainEnd { .. } => seen.push("end".into()),
            ClientEvent::Deliver { msg_id, .. } => seen.push(format!("live {msg_id}")),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        seen,
        vec!["stored 1", "stored 2", "stored 3", "end", "live 4"]
    );
}

#[test]
fn stored_blobs_survive_a_restart() {
    let node = Node::start(&["--shards", "2"], &[]);
    let mut tx = node.client();
    let epoch = tx.epoch();
    let bob = mailbox(61);
    let dest = bob.dest(epoch).unwrap();
    for i in 1..=20u64 {
        assert_eq!(
            send_and_status(&mut tx, dest, i, &[i as u8; 700]),
            SendStatus::Accepted
        );
    }
    drop(tx);
    let node = node.restart(false);
    let mut rx = node.client();
    prove_drain(&mut rx, &bob, epoch);
    assert_eq!(rx.query(&[dest]).unwrap(), vec![dest]);
    assert_eq!(drain_all(&mut rx, dest), (1..=20).collect::<Vec<u64>>());
}

#[test]
fn kill_9_loses_nothing_acknowledged_as_stored_with_fsync_always() {
    kill_9_scenario("always");
}

/// `store_fsync = "always"` answers each blob only after a sync that covers it, but concurrent
/// senders share syncs: 16 connections with 64 sends each in flight, on one shard, are all
/// answered with fewer syncs than half the blobs (one per turn of the shard's loop; it was one
/// per blob, 4,800 blobs a second). That an answer waits for its sync is the shard's
/// `pending_stored`/`release_stored` (answers released only after `Log::sync_now`), and what a
/// crash keeps of synced and unsynced appends is the Log model's test (shards/tests/store.rs);
/// kill -9 cannot tell a synced page from one in the page cache.
#[test]
fn fsync_always_shares_one_sync_among_the_appends_of_a_turn() {
    const SENDERS: u64 = 16;
    const EACH: u64 = 64;
    let node = Node::start(&["--shards", "1"], &[("FERRY_STORE_FSYNC", "always")]);
    let epoch = node.client().epoch();
    let addr = node.addr();
    let senders: Vec<_> = (0..SENDERS)
        .map(|i| {
            let dest = mailbox(200 + i as u32).dest(epoch).unwrap();
            std::thread::spawn(move || {
                let mut tx = Client::connect(addr).unwrap();
                for m in 1..=EACH {
                    tx.send(dest, m, FLAG_ACK, &m.to_le_bytes());
                }
                tx.flush().unwrap();
                let mut answered = 0;
                let deadline = Instant::now() + WAIT;
                while answered < EACH {
                    assert!(Instant::now() < deadline, "only {answered} answers");
                    if let Ok(ClientEvent::SendResult { status, .. }) =
                        tx.recv(Duration::from_millis(100))
                    {
                        assert_eq!(status, SendStatus::Accepted);
                        answered += 1;
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let appends = node.metric("ferry_store_appends_total");
    let syncs = node.metric("ferry_store_syncs_total");
    assert_eq!(appends, SENDERS * EACH);
    assert!(syncs >= 1, "answered without a sync");
    assert!(
        syncs * 2 <= appends,
        "{syncs} syncs for {appends} blobs: appends do not share syncs"
    );
}

/// With group commit `Stored` is only sent after the commit that covers the blob, so a kill -9
/// loses nothing acknowledged either; what a power loss may lose (the window since the last
/// commit) is checked by the model test in shards/tests/store.rs.
#[test]
fn kill_9_loses_nothing_acknowledged_as_stored_with_group_commit() {
    kill_9_scenario("interval=20");
}

fn kill_9_scenario(fsync: &str) {
    let node = Node::start(&["--shards", "2"], &[("FERRY_STORE_FSYNC", fsync)]);
    let epoch = node.client().epoch();
    let bob = mailbox(71);
    let dest = bob.dest(epoch).unwrap();
    let addr = node.addr();
    // A sender streams sends and records every Stored answer until the node dies.
    let sender = std::thread::spawn(move || {
        let mut tx = Client::connect(addr).unwrap();
        let mut stored = BTreeSet::new();
        let mut next = 1u64;
        loop {
            for _ in 0..8 {
                tx.send(dest, next, FLAG_ACK, &next.to_le_bytes());
                next += 1;
            }
            if tx.flush().is_err() {
                return stored;
            }
            loop {
                match tx.recv(Duration::from_millis(50)) {
                    Ok(ClientEvent::SendResult {
                        msg_id,
                        status: SendStatus::Accepted,
                        ..
                    }) => {
                        stored.insert(msg_id);
                    }
                    Ok(ClientEvent::SendResult { status, .. }) => panic!("unexpected {status:?}"),
                    Ok(_) => {}
                    Err(ferry_sdk::SdkError::Timeout) => break,
                    Err(_) => return stored,
                }
            }
        }
    });
    let start = Instant::now();
    while node.metric("ferry_store_appends_total") < 200 {
        assert!(start.elapsed() < WAIT, "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    let node = node.restart(true);
    let stored = sender.join().unwrap();
    assert!(
        stored.len() >= 100,
        "only {} stored before the kill",
        stored.len()
    );
    let mut rx = node.client();
    prove_drain(&mut rx, &bob, epoch);
    let got = drain_all(&mut rx, dest);
    let got_set: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(got_set.len(), got.len(), "a blob was delivered twice");
    let missing: Vec<&u64> = stored.difference(&got_set).collect();
    assert!(
        missing.is_empty(),
        "acknowledged as stored but lost: {missing:?}"
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order");
    // After the acks nothing comes again.
    assert!(drain_all(&mut rx, dest).is_empty());
}

/// Acknowledged blobs free their segments: the files are deleted off the shard's core (a job on
/// the blocking thread, after a sync covers them), and the space is used again.
#[test]
fn acknowledged_segments_are_deleted_off_the_core_and_their_space_reused() {
    let node = Node::start(
        &["--shards", "1"],
        &[
            ("FERRY_LIMITS_STORE_SOURCE_SHARE_PERCENT", "100"),
            ("FERRY_LIMITS_STORE_SOURCE_DEST_SHARE_PERCENT", "100"),
            ("FERRY_LIMITS_PUZZLE_LEVELS", "0"),
            ("FERRY_LIMITS_STORE_SEGMENT_BYTES", "131072"),
            ("FERRY_LIMITS_STORE_DISK_BYTES_MAX", "1048576"),
        ],
    );
    let segments = || {
        std::fs::read_dir(node.dir.join("store").join("shard-0"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".log")
            })
            .count()
    };
    let mut tx = node.client();
    let epoch = tx.epoch();
    let mb = mailbox(77);
    let dest = mb.dest(epoch).unwrap();
    // About 4.5 segments' worth for one offline mailbox, twice: the second round fits only in
    // space the first one gave back.
    let mut removed = 0;
    for round in 0..2u64 {
        for i in 0..150u64 {
            let id = round * 1_000 + i;
            let s = send_and_status(&mut tx, dest, id, &[7u8; 4000]);
            assert_eq!(s, SendStatus::Accepted, "round {round} blob {i}");
        }
        let before = segments();
        assert!(before >= 4, "{before} segment files");
        let mut rx = node.client();
        let d = prove_drain(&mut rx, &mb, epoch);
        assert_eq!(drain_all(&mut rx, d).len(), 150);
        let deadline = std::time::Instant::now() + WAIT;
        while segments() > 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: {} segment files left after every blob was acked",
                segments()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The counter is published at the shard's next tick.
        removed += before as u64 - 2;
        while node.metric("ferry_store_segments_removed_total") < removed {
            assert!(
                std::time::Instant::now() < deadline,
                "deletions not counted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn quotas_and_a_full_store_are_answered_while_live_relay_goes_on() {
    let node = Node::start(
        &["--shards", "1"],
        &[
            ("FERRY_LIMITS_STORE_DEST_BLOBS_MAX", "3"),
            // One client fills the dest and the store: no per-address share in the way.
            ("FERRY_LIMITS_STORE_SOURCE_SHARE_PERCENT", "100"),
            ("FERRY_LIMITS_STORE_SOURCE_DEST_SHARE_PERCENT", "100"),
            // Quotas, not puzzles (tests/puzzle.rs): no puzzle as the dest fills.
            ("FERRY_LIMITS_PUZZLE_LEVELS", "0"),
            ("FERRY_LIMITS_STORE_SEGMENT_BYTES", "131072"),
            ("FERRY_LIMITS_STORE_DISK_BYTES_MAX", "262144"),
        ],
    );
    let mut tx = node.client();
    let epoch = tx.epoch();
    let a = mailbox(81).dest(epoch).unwrap();
    for i in 1..=3 {
        assert_eq!(send_and_status(&mut tx, a, i, b"q"), SendStatus::Accepted);
    }
    assert_eq!(
        send_and_status(&mut tx, a, 4, b"q"),
        SendStatus::QuotaExceeded
    );
    // Fill the store: one 128 KiB segment fits under the high-water mark, the second does not.
    let mut i = 100u64;
    let status = loop {
        let d = mailbox(1000 + i as u32).dest(epoch).unwrap();
        let s = send_and_status(&mut tx, d, i, &[9u8; 4000]);
        if s != SendStatus::Accepted {
            break s;
        }
        i += 1;
        assert!(i < 400, "store never filled");
    };
    assert_eq!(status, SendStatus::StoreFull);
    assert!(node.metric("ferry_store_refused_full_total") >= 1);
    // Live relay is unaffected.
    let mut rx = node.client();
    let live = rx.listen(&mailbox(90), [epoch]).unwrap()[0];
    tx.send(live, 1, FLAG_ACK, b"still live");
    tx.flush().unwrap();
    assert!(matches!(
        rx.recv(WAIT).unwrap(),
        ClientEvent::Deliver { msg_id: 1, .. }
    ));
}

/// A tmpfs of its own, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = common::temp_dir("tmpfs");
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_real_full_disk_answers_store_full_and_the_node_goes_on() {
    let fs = Tmpfs::mount("1m");
    let node = Node::start_in(
        fs.0.join("data"),
        &["--shards", "1"],
        &[
            ("FERRY_LIMITS_STORE_SEGMENT_BYTES", "262144"),
            // The budget is far above the disk: the disk itself runs out first.
            ("FERRY_LIMITS_STORE_DISK_BYTES_MAX", "1073741824"),
        ],
    );
    let mut tx = node.client();
    let epoch = tx.epoch();
    let mut i = 0u64;
    let status = loop {
        let d = mailbox(5000 + i as u32).dest(epoch).unwrap();
        let s = send_and_status(&mut tx, d, i, &[3u8; 4000]);
        if s != SendStatus::Accepted {
            break s;
        }
        i += 1;
        assert!(i < 1000, "a 1 MiB disk never filled");
    };
    assert_eq!(status, SendStatus::StoreFull);
    assert!(i > 10, "stored only {i} blobs before the disk was full");
    // Still serving: live relay, and what was stored can be drained.
    let mut rx = node.client();
    let live = rx.listen(&mailbox(91), [epoch]).unwrap()[0];
    tx.send(live, 1, FLAG_ACK, b"after the disk filled");
    tx.flush().unwrap();
    assert!(matches!(
        rx.recv(WAIT).unwrap(),
        ClientEvent::Deliver { msg_id: 1, .. }
    ));
    let first = mailbox(5000);
    prove_drain(&mut rx, &first, epoch);
    assert_eq!(drain_all(&mut rx, first.dest(epoch).unwrap()), vec![0]);
    drop(node);
}

#[test]
fn a_large_hand_over_keeps_stored_before_live() {
    let node = Node::start(&["--shards", "2"], &[]);
    let mut tx = node.client();
    let epoch = tx.epoch();
    let bob = mailbox(95);
    let dest = bob.dest(epoch).unwrap();
    for i in 1..=300u64 {
        tx.send(dest, i, FLAG_ACK, &i.to_le_bytes());
    }
    tx.flush().unwrap();
    let mut stored = 0;
    while stored < 300 {
        if let ClientEvent::SendResult { status, .. } = tx.recv(WAIT).unwrap() {
            assert_eq!(status, SendStatus::Accepted);
            stored += 1;
        }
    }
    let mut rx = node.client();
    rx.listen(&bob, [epoch]).unwrap();
    prove_drain(&mut rx, &bob, epoch);
    // The subscribe hand-over: one batch, then More.
    let mut first = Vec::new();
    loop {
        match rx.recv(WAIT).unwrap() {
            ClientEvent::Stored {
                dest: d,
                pos,
                msg_id,
                payload,
            } => first.push(ferry_sdk::StoredBlob {
                dest: d,
                pos,
                msg_id,
                payload,
            }),
            ClientEvent::DrainEnd { status, .. } => {
                assert_eq!(status, ferry_proto::DrainStatus::More);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(first.len(), 256);
    // A packet sent now must not overtake the 44 still stored: it is stored behind them.
    assert_eq!(
        send_and_status(&mut tx, dest, 1000, b"mid hand-over"),
        SendStatus::Accepted
    );
    rx.ack(&first).unwrap();
    let rest = drain_all(&mut rx, dest);
    let mut want: Vec<u64> = (257..=300).collect();
    want.push(1000);
    assert_eq!(rest, want);
    // Hand-over complete: live again.
    tx.send(dest, 1001, FLAG_ACK, b"live");
    tx.flush().unwrap();
    let mut got_live = false;
    while !got_live {
        match rx.recv(WAIT).unwrap() {
            ClientEvent::Deliver { msg_id, .. } => {
                assert_eq!(msg_id, 1001);
                got_live = true;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_maximal_packet_is_stored_and_drained_intact() {
    let node = Node::start(&["--shards", "2"], &[]);
    let mut tx = node.client();
    let epoch = tx.epoch();
    let bob = mailbox(97);
    let dest = bob.dest(epoch).unwrap();
    let big: Vec<u8> = (0..ferry_sdk::PACKET_PAYLOAD_BYTES_MAX)
        .map(|i| i as u8)
        .collect();
    assert_eq!(
        send_and_status(&mut tx, dest, 1, &big),
        SendStatus::Accepted
    );
    let mut rx = node.client();
    prove_drain(&mut rx, &bob, epoch);
    let (blobs, more) = rx.drain(dest).unwrap();
    assert!(!more);
    assert_eq!(blobs.len(), 1);
    assert!(blobs[0].payload[..] == big[..]);
    // And again (not acked), which used to be where an oversized blob would crash the shard.
    assert_eq!(rx.drain(dest).unwrap().0.len(), 1);
}

/// The store's limits through a real node, each at its exact boundary (docs/CONFIGURATION.md,
/// PROTOCOL.md §8.1): the byte quota holds for a dest's first blob too, and a budget of two
/// segments at 50 % stores blobs until its first segment is full, not one blob fewer.
#[test]
fn store_limits_hold_at_their_exact_boundaries() {
    const SEGMENT_BYTES: usize = 131_072;
    let node = Node::start(
        &["--shards", "1"],
        &[
            ("FERRY_LIMITS_STORE_DEST_BYTES_MAX", "3000"),
            // One client reaches every limit: no per-address share in the way.
            ("FERRY_LIMITS_STORE_SOURCE_SHARE_PERCENT", "100"),
            ("FERRY_LIMITS_STORE_SOURCE_DEST_SHARE_PERCENT", "100"),
            // Quotas, not puzzles (tests/puzzle.rs): no puzzle as the dest fills.
            ("FERRY_LIMITS_PUZZLE_LEVELS", "0"),
            ("FERRY_LIMITS_STORE_SEGMENT_BYTES", "131072"),
            ("FERRY_LIMITS_STORE_DISK_BYTES_MAX", "262144"),
            ("FERRY_LIMITS_STORE_HIGH_WATER_PERCENT", "50"),
        ],
    );
    let mut tx = node.client();
    let epoch = tx.epoch();
    let a = mailbox(301).dest(epoch).unwrap();
    let b = mailbox(302).dest(epoch).unwrap();
    // Exactly the quota is stored; one byte more is refused, also as a dest's first blob.
    assert_eq!(
        send_and_status(&mut tx, a, 1, &[1u8; 3000]),
        SendStatus::Accepted
    );
    assert_eq!(
        send_and_status(&mut tx, a, 2, &[2u8; 1]),
        SendStatus::QuotaExceeded
    );
    assert_eq!(
        send_and_status(&mut tx, b, 1, &[1u8; 3001]),
        SendStatus::QuotaExceeded
    );
    // Fill the one segment the high-water mark allows. Records are 64 bytes of header plus the
    // payload, padded to 8; the segment header takes 64.
    let record = |payload: usize| (64 + payload).div_ceil(8) * 8;
    let fill_payload = 1408;
    let room = SEGMENT_BYTES - 64 - record(3000);
    let fits = room / record(fill_payload);
    let mut stored = 0;
    let status = loop {
        let d = mailbox(2000 + stored as u32).dest(epoch).unwrap();
        let s = send_and_status(&mut tx, d, 1, &vec![7u8; fill_payload]);
        if s != SendStatus::Accepted {
            break s;
        }
        stored += 1;
        assert!(stored <= fits, "stored past the high-water mark");
    };
    assert_eq!(status, SendStatus::StoreFull);
    assert_eq!(stored, fits, "StoreFull before the first segment was full");
    assert_eq!(node.metric("ferry_store_refused_full_total"), 1);
    assert_eq!(node.metric("ferry_store_refused_quota_total"), 2);
}

/// The voluntary context switches of the threads of `pid` whose name starts with `prefix`: one
/// per time the thread parked.
fn parks(pid: u32, prefix: &str) -> u64 {
    let mut n = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let status = std::fs::read_to_string(t.join("status")).unwrap_or_default();
        n += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    n
}

/// Issue 22: with the store on, the shard ticked at the fsync interval (10 ms) all the time: an
/// idle shard woke 100 times a second, and each wake made glommio cancel an operation, which the
/// kernel serves by walking the armed polls of every idle connection. Now it sleeps a whole tick
/// (100 ms) while no append waits for a group commit, and wakes for one when it is due: idle, it
/// parks about 10 times a second; a send to an offline dest is still answered once its group
/// commit is done, within the fsync interval (plus scheduling).
#[test]
fn an_idle_shard_wakes_at_the_tick_and_group_commits_stay_prompt() {
    let node = Node::start(&["--shards", "1"], &[("FERRY_STORE_FSYNC", "interval=10")]);
    let mut tx = node.client();
    std::thread::sleep(Duration::from_millis(500));
    let before = parks(node.pid(), "ferry-shard-0");
    std::thread::sleep(Duration::from_secs(1));
    let per_s = parks(node.pid(), "ferry-shard-0") - before;
    assert!(per_s < 40, "an idle shard parked {per_s} times a second");
    // An offline send: answered after the commit that covers it, promptly.
    let dest = mailbox(72).dest(tx.epoch()).unwrap();
    for id in 1..=5u64 {
        let t0 = Instant::now();
        tx.send(dest, id, FLAG_ACK, b"stored");
        tx.flush().unwrap();
        loop {
            if let ClientEvent::SendResult { msg_id, status, .. } = tx.recv(WAIT).unwrap() {
                assert_eq!((msg_id, status), (id, SendStatus::Accepted));
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "a group commit took {:?}",
            t0.elapsed()
        );
        // Idle again (past a 100 ms tick) before the next.
        std::thread::sleep(Duration::from_millis(150));
    }
}
