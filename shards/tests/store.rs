//! The store-and-forward log: scenarios, and a model-based property test against an in-memory
//! model through a backend that fails the Nth write or sync, tears writes, and crashes.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::collections::BTreeMap;

use ferry_proto::Dest;
use ferry_shards::store::backend::{CreateStep, MemBackend, MmapBackend};
use ferry_shards::store::{FsyncPolicy, Log, StoreError, StoreLimits};
use proptest::prelude::*;

const T0: u64 = 1_800_000_000;

fn limits() -> StoreLimits {
    StoreLimits {
        segment_bytes: 4096,
        segment_roll_s: 3_600,
        ttl_max_s: 72 * 3_600,
        dest_blobs_max: 50,
        dest_bytes_max: 64 * 1024,
        disk_bytes_max: 4096 * 64,
        high_water_percent: 90,
        ..StoreLimits::default()
    }
}

fn d(i: u8) -> Dest {
    Dest([i; 16])
}

fn open(b: &MemBackend, policy: FsyncPolicy, now: u64) -> Log<MemBackend> {
    Log::open(b.clone(), 0, limits(), policy, now).unwrap().0
}

fn payloads(log: &Log<MemBackend>, dest: Dest, now: u64) -> Vec<Vec<u8>> {
    log.drain(&dest, now)
        .into_iter()
        .map(|(_, p)| p.to_vec())
        .collect()
}

#[test]
fn append_drain_ack_and_duplicates() {
    let b = MemBackend::default();
    let mut log = open(&b, FsyncPolicy::Always, T0);
    let a = log.append(T0, d(1), 10, 3600, b"one").unwrap();
    assert!(!a.duplicate);
    assert!(log.durable_seq() >= a.seq);
    log.append(T0, d(1), 11, 3600, b"two").unwrap();
    // The same message id and payload again is stored once; the same id with another payload
    // (another sender's message) is not a duplicate.
    assert!(log.append(T0, d(1), 10, 3600, b"one").unwrap().duplicate);
    let other = log.append(T0, d(1), 10, 3600, b"another sender").unwrap();
    assert!(!other.duplicate);
    assert!(log.ack(T0, &d(1), other.pos).unwrap());
    assert_eq!(
        payloads(&log, d(1), T0),
        vec![b"one".to_vec(), b"two".to_vec()]
    );
    assert_eq!(log.holding(&[d(1), d(2)], T0), vec![d(1)]);
    // Acked blobs are gone, unacked ones stay, and both survive a reopen.
    assert!(log.ack(T0, &d(1), a.pos).unwrap());
    assert!(!log.ack(T0, &d(1), a.pos).unwrap());
    drop(log);
    let log = open(&b, FsyncPolicy::Always, T0);
    assert_eq!(payloads(&log, d(1), T0), vec![b"two".to_vec()]);
}

#[test]
fn quotas_and_limits_give_clear_errors() {
    let b = MemBackend::default();
    let mut log = open(&b, FsyncPolicy::None, T0);
    for i in 0..50 {
        log.append(T0, d(1), i, 60, b"x").unwrap();
    }
    assert!(matches!(
        log.append(T0, d(1), 99, 60, b"x"),
        Err(StoreError::DestQuota)
    ));
    assert!(matches!(
        log.append(T0, d(2), 1, 60, &vec![0u8; 8192]),
        Err(StoreError::TooLarge { .. })
    ));
    // Other dests still work.
    log.append(T0, d(2), 1, 60, b"y").unwrap();
}

#[test]
fn high_water_and_a_full_disk_answer_store_full() {
    let b = MemBackend::default();
    let mut log = open(&b, FsyncPolicy::None, T0);
    let big = vec![7u8; 1500];
    let mut stored = 0u64;
    let err = loop {
        match log.append(T0, d((stored % 200) as u8), stored, 60, &big) {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 10_000);
    };
    assert!(matches!(err, StoreError::StoreFull), "{err}");
    assert!(log.is_full());
    // Acks (tombstones) still fit above the high-water mark.
    let first = log.drain(&d(0), T0)[0].0;
    assert!(log.ack(T0, &d(0), first.pos).unwrap());

    // A disk that refuses to allocate a segment: StoreFull, not a crash.
    let b = MemBackend::default();
    b.disk.borrow_mut().faults.fail_create = true;
    let mut log = open(&b, FsyncPolicy::None, T0);
    assert!(matches!(
        log.append(T0, d(1), 1, 60, b"z"),
        Err(StoreError::StoreFull)
    ));
}

#[test]
fn ttl_expiry_with_an_injected_clock_reclaims_segments() {
    let b = MemBackend::default();
    let mut log = open(&b, FsyncPolicy::None, T0);
    for i in 0..40u64 {
        log.append(T0, d((i % 4) as u8), i, 100, &[1u8; 300])
            .unwrap();
    }
    assert!(log.segment_count() > 2);
    assert_eq!(log.expire(T0 + 50).unwrap(), 0);
    assert_eq!(
        payloads(&log, d(0), T0 + 101).len(),
        0,
        "expired blobs are not drained"
    );
    assert_eq!(log.expire(T0 + 3_601).unwrap(), 40);
    assert_eq!(log.blobs(), 0);
    // Every segment but the newest is reclaimed (the newest keeps segment numbers growing).
    assert_eq!(log.segment_count(), 1, "segments reclaimed");
    // Their files are deleted off the core: on disk until the removal job has run, one job at
    // a time.
    let on_disk = b.disk.borrow().segments().len();
    assert!(on_disk > 1);
    assert_eq!(log.segments_awaiting_removal(), on_disk - 1);
    // A deletion that fails keeps the segments (and their space) until the next start: a
    // directory fsync that failed once is not trusted again.
    b.disk.borrow_mut().faults.fail_remove = true;
    let used = log.disk_bytes();
    let job = log.take_removal_job().expect("a removal is due");
    let (seqs, done) = job.run();
    assert!(done.is_err());
    log.on_removed(&seqs, &done);
    assert!(log.removal_failed() && log.take_removal_job().is_none());
    assert_eq!(log.segments_awaiting_removal(), on_disk - 1);
    assert_eq!(log.disk_bytes(), used);
    // The next start reclaims them again, and its deletion goes through.
    b.disk.borrow_mut().faults.fail_remove = false;
    drop(log);
    let mut log = open(&b, FsyncPolicy::None, T0 + 3_601);
    log.expire(T0 + 3_601).unwrap();
    let job = log.take_removal_job().expect("a removal is due");
    assert!(log.take_removal_job().is_none(), "one at a time");
    assert_eq!(job.seqs().len(), on_disk - 1);
    let (seqs, done) = job.run();
    log.on_removed(&seqs, &done);
    assert_eq!(b.disk.borrow().segments().len(), 1);
    assert_eq!(log.segments_awaiting_removal(), 0);
    // TTL is capped by the node's maximum.
    let a = log.append(T0, d(9), 1, u64::MAX, b"x").unwrap();
    assert_eq!(log.drain(&d(9), T0)[0].0.last_live_unix_s, T0 + 72 * 3_600);
    let _ = a;
}

#[test]
fn a_corrupt_record_in_the_middle_is_quarantined_and_the_rest_recovered() {
    let b = MemBackend::default();
    let mut log = open(&b, FsyncPolicy::Always, T0);
    for i in 0..5u64 {
        log.append(T0, d(1), i, 3600, format!("blob {i}").as_bytes())
            .unwrap();
    }
    let second = log.drain(&d(1), T0)[1].0.pos;
    drop(log);
    // A byte of the payload ("blob 1" starts right after the 64-byte record header).
    b.disk
        .borrow_mut()
        .corrupt(second.segment, second.offset as usize + 66);
    let (log, rec) = Log::open(b.clone(), 0, limits(), FsyncPolicy::Always, T0).unwrap();
    assert_eq!(rec.quarantined, 1);
    assert_eq!(
        payloads(&log, d(1), T0),
        ["blob 0", "blob 2", "blob 3", "blob 4"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_torn_tail_is_truncated_and_appends_continue() {
    let b = MemBackend::default();
    let mut log = open(&b, FsyncPolicy::Always, T0);
    log.append(T0, d(1), 1, 3600, b"kept").unwrap();
    let next = b.disk.borrow().faults.writes + 1;
    b.disk.borrow_mut().faults.fail_write = Some(next);
    assert!(matches!(
        log.append(T0, d(1), 2, 3600, b"torn in half by the disk"),
        Err(StoreError::Io(_))
    ));
    b.disk.borrow_mut().faults.fail_write = None;
    // The failed append is not indexed; later appends go to a fresh segment.
    log.append(T0, d(1), 3, 3600, b"after").unwrap();
    drop(log);
    b.disk.borrow_mut().crash(|_| 0);
    let (log, rec) = Log::open(b.clone(), 0, limits(), FsyncPolicy::Always, T0).unwrap();
    assert_eq!(rec.torn_tails, 1);
    assert_eq!(
        payloads(&log, d(1), T0),
        vec![b"kept".to_vec(), b"after".to_vec()]
    );
}

#[test]
fn an_fsync_failure_is_reported_as_fatal() {
    let b = MemBackend::default();
    let mut log = open(&b, FsyncPolicy::Always, T0);
    log.append(T0, d(1), 1, 3600, b"a").unwrap();
    let next = b.disk.borrow().faults.syncs + 1;
    b.disk.borrow_mut().faults.fail_sync = Some(next);
    assert!(matches!(
        log.append(T0, d(1), 2, 3600, b"b"),
        Err(StoreError::SyncFailed(_))
    ));
}

#[test]
fn interval_policy_acknowledges_at_the_next_sync() {
    let b = MemBackend::default();
    let mut log = open(&b, FsyncPolicy::Interval { ms: 10 }, T0);
    let a = log.append(T0, d(1), 1, 3600, b"a").unwrap();
    assert!(log.durable_seq() < a.seq);
    log.poll_sync(5).unwrap(); // 5 ms after the last sync at 0: not yet
    assert!(log.durable_seq() < a.seq);
    log.poll_sync(10).unwrap();
    assert!(log.durable_seq() >= a.seq);
}

/// A group commit is handed off the core (its targets sync later) and only its completion makes
/// the appends durable; appends made meanwhile wait for the next one.
#[test]
fn a_commit_off_the_core_covers_what_came_before_it_only() {
    let b = MemBackend::default();
    let mut log = open(&b, FsyncPolicy::Interval { ms: 0 }, T0);
    let first = log.append(T0, d(1), 1, 3600, b"a").unwrap();
    let job = log.begin_sync(1).unwrap().expect("a commit is due");
    assert_eq!(job.upto(), first.seq);
    assert!(log.begin_sync(1).unwrap().is_none(), "one commit at a time");
    let second = log.append(T0, d(1), 2, 3600, b"b").unwrap();
    assert!(
        log.durable_seq() < first.seq,
        "durable only once the commit completes"
    );
    let outcome = job.run();
    log.finish_sync(outcome).unwrap();
    assert!(log.durable_seq() >= first.seq && log.durable_seq() < second.seq);
    assert!(log.has_unsynced());
    log.poll_sync(2).unwrap();
    assert!(log.durable_seq() >= second.seq);
}

/// When the commit cannot leave the core (the node's duplicate descriptor: out of descriptors),
/// it runs on the core instead: the appends are durable, nothing fails.
#[test]
fn a_commit_that_cannot_leave_the_core_syncs_on_it() {
    let b = MemBackend::default();
    let mut log = open(&b, FsyncPolicy::Interval { ms: 0 }, T0);
    let a = log.append(T0, d(1), 1, 3600, b"a").unwrap();
    b.disk.borrow_mut().faults.fail_sync_target = true;
    assert!(log.begin_sync(1).unwrap().is_none());
    assert!(log.durable_seq() >= a.seq);
    assert!(!log.has_unsynced());
    drop(log);
    b.disk.borrow_mut().crash(|_| 2); // power loss: only what was synced survives
    b.disk.borrow_mut().faults.fail_sync_target = false;
    let log = open(&b, FsyncPolicy::Interval { ms: 0 }, T0);
    assert_eq!(payloads(&log, d(1), T0), vec![b"a".to_vec()]);
}

#[test]
fn real_files_survive_reopen() {
    let dir = std::env::temp_dir().join(format!("ferry-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let lim = StoreLimits {
        segment_bytes: 1 << 16,
        ..limits()
    };
    {
        let (mut log, _) = Log::open(
            MmapBackend::new(&dir).unwrap(),
            0,
            lim.clone(),
            FsyncPolicy::Always,
            T0,
        )
        .unwrap();
        for i in 0..100u64 {
            log.append(
                T0,
                d((i % 3) as u8),
                i,
                3600,
                format!("payload {i}").as_bytes(),
            )
            .unwrap();
        }
        let first = log.drain(&d(0), T0)[0].0.pos;
        log.ack(T0, &d(0), first).unwrap();
    }
    let (log, rec) = Log::open(
        MmapBackend::new(&dir).unwrap(),
        0,
        lim,
        FsyncPolicy::Always,
        T0,
    )
    .unwrap();
    assert_eq!(rec.blobs, 100);
    assert_eq!(rec.tombstones, 1);
    assert_eq!(log.blobs(), 99);
    assert_eq!(payloads_mmap(&log, d(0))[0], b"payload 3".to_vec());
    let _ = std::fs::remove_dir_all(&dir);
}

fn payloads_mmap(log: &Log<MmapBackend>, dest: Dest) -> Vec<Vec<u8>> {
    log.drain(&dest, T0)
        .into_iter()
        .map(|(_, p)| p.to_vec())
        .collect()
}

// ---- model-based property test ----

#[derive(Clone, Debug)]
enum Op {
    Append {
        dest: u8,
        msg_id: u8,
        len: u16,
    },
    Ack {
        dest: u8,
        nth: u8,
    },
    FailNextWrite,
    FailNextSync,
    Advance {
        s: u16,
    },
    Crash {
        seed: u64,
    },
    /// A group-commit point (the interval policy's tick).
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, any::<u8>(), 0u16..900).prop_map(|(dest, msg_id, len)| Op::Append { dest, msg_id, len }),
        3 => (0u8..4, any::<u8>()).prop_map(|(dest, nth)| Op::Ack { dest, nth }),
        1 => Just(Op::FailNextWrite),
        1 => Just(Op::FailNextSync),
        1 => (0u16..2000).prop_map(|s| Op::Advance { s }),
        1 => any::<u64>().prop_map(|seed| Op::Crash { seed }),
        2 => Just(Op::Sync),
    ]
}

/// What the model knows about a blob.
#[derive(Clone, Debug, PartialEq)]
struct Blob {
    msg_id: u64,
    payload: Vec<u8>,
    /// The last second it is live.
    last_live: u64,
    /// Durable for sure (acknowledged as stored) or maybe (not yet synced, or a sync failed).
    sure: bool,
    /// Append sequence number (durable once the log's durable_seq reaches it).
    seq: u64,
    /// Acked, but the tombstone is not yet durable: may come back after a crash.
    ghost: bool,
}

fn payload_of(dest: u8, msg_id: u8, len: u16) -> Vec<u8> {
    (0..len).map(|i| dest ^ msg_id ^ (i as u8)).collect()
}

fn check(log: &Log<MemBackend>, model: &BTreeMap<u8, Vec<Blob>>, now: u64) {
    for dest in 0u8..4 {
        let got: Vec<(u64, Vec<u8>)> = log
            .drain(&d(dest), now)
            .into_iter()
            .map(|(e, p)| (e.msg_id, p.to_vec()))
            .collect();
        let want: Vec<&Blob> = model
            .get(&dest)
            .map(|v| v.iter().filter(|b| b.last_live >= now).collect())
            .unwrap_or_default();
        // Every sure blob is there, in order; maybe-blobs may be there; nothing else is.
        let mut w = want.iter().peekable();
        for (msg_id, payload) in &got {
            loop {
                let Some(b) = w.next() else {
                    panic!("dest {dest}: unexpected blob {msg_id}")
                };
                // A ghost (acked, tombstone not yet durable) may be absent even when a newer copy
                // with the same message id is present.
                if b.msg_id == *msg_id && b.payload == *payload {
                    assert_eq!(&b.payload, payload, "dest {dest} blob {msg_id} corrupted");
                    break;
                }
                assert!(!b.sure, "dest {dest}: durable blob {} lost", b.msg_id);
            }
        }
        for b in w {
            assert!(
                !b.sure,
                "dest {dest}: durable blob {} lost at the end",
                b.msg_id
            );
        }
    }
}

fn run_model(ops: &[Op], policy: FsyncPolicy) {
    let b = MemBackend::default();
    let mut now = T0;
    let mut log = open(&b, policy, now);
    let mut model: BTreeMap<u8, Vec<Blob>> = BTreeMap::new();
    for op in ops {
        match *op {
            Op::Append { dest, msg_id, len } => {
                let payload = payload_of(dest, msg_id, len);
                let known = model.get(&dest).is_some_and(|v| {
                    v.iter().any(|x| {
                        x.msg_id == u64::from(msg_id)
                            && x.payload == payload
                            && x.last_live >= now
                            && !x.ghost
                    })
                });
                match log.append(now, d(dest), u64::from(msg_id), 600, &payload) {
                    Ok(a) => {
                        assert_eq!(a.duplicate, known, "duplicate detection");
                        if !a.duplicate {
                            model.entry(dest).or_default().push(Blob {
                                msg_id: u64::from(msg_id),
                                payload,
                                last_live: now + 600,
                                sure: a.seq <= log.durable_seq(),
                                seq: a.seq,
                                ghost: false,
                            });
                        }
                    }
                    Err(StoreError::SyncFailed(_)) => {
                        // Durability unknown: the node would stop here. Crash and reopen.
                        model.entry(dest).or_default().push(Blob {
                            msg_id: u64::from(msg_id),
                            payload,
                            last_live: now + 600,
                            sure: false,
                            seq: u64::MAX,
                            ghost: false,
                        });
                        crash_and_reopen(&b, &mut log, &mut model, policy, now);
                    }
                    Err(StoreError::Io(_)) => {} // not stored, and must never appear
                    Err(StoreError::DestQuota | StoreError::StoreFull) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            Op::Ack { dest, nth } => {
                let live = log.drain(&d(dest), now);
                if live.is_empty() {
                    continue;
                }
                let (e, p) = live[nth as usize % live.len()];
                let p = p.to_vec();
                match log.ack(now, &d(dest), e.pos) {
                    Ok(true) => {
                        let v = model.get_mut(&dest).unwrap();
                        if log.policy() == FsyncPolicy::Always {
                            v.retain(|x| x.msg_id != e.msg_id || x.payload != p || x.ghost);
                        } else if let Some(x) = v
                            .iter_mut()
                            .find(|x| x.msg_id == e.msg_id && x.payload == p && !x.ghost)
                        {
                            // The tombstone is durable only at the next sync.
                            x.ghost = true;
                            x.sure = false;
                        }
                    }
                    Ok(false) => panic!("live blob not ackable"),
                    Err(StoreError::SyncFailed(_)) => {
                        // The tombstone may or may not be durable: the blob is now a maybe.
                        if let Some(x) = model
                            .get_mut(&dest)
                            .unwrap()
                            .iter_mut()
                            .find(|x| x.msg_id == e.msg_id && x.payload == p)
                        {
                            x.sure = false;
                        }
                        crash_and_reopen(&b, &mut log, &mut model, policy, now);
                    }
                    Err(StoreError::Io(_) | StoreError::StoreFull) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            Op::FailNextWrite => {
                let n = b.disk.borrow().faults.writes + 1;
                b.disk.borrow_mut().faults.fail_write = Some(n);
            }
            Op::FailNextSync => {
                let n = b.disk.borrow().faults.syncs + 1;
                b.disk.borrow_mut().faults.fail_sync = Some(n);
            }
            Op::Advance { s } => {
                now += u64::from(s);
                for v in model.values_mut() {
                    v.retain(|x| x.last_live >= now);
                }
                match log.expire(now) {
                    Ok(_) => {}
                    Err(StoreError::SyncFailed(_)) => {
                        crash_and_reopen(&b, &mut log, &mut model, policy, now);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            Op::Sync => match log.sync_now() {
                Ok(()) => {
                    let durable = log.durable_seq();
                    for v in model.values_mut() {
                        v.retain(|x| !x.ghost);
                        for x in v.iter_mut() {
                            if x.seq <= durable {
                                x.sure = true;
                            }
                        }
                    }
                }
                Err(StoreError::SyncFailed(_)) => {
                    crash_and_reopen(&b, &mut log, &mut model, policy, now);
                }
                Err(e) => panic!("{e}"),
            },
            Op::Crash { seed } => {
                drop(log);
                let mut x = seed | 1;
                b.disk.borrow_mut().crash(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 3) as u8
                });
                reset_faults(&b);
                log = open(&b, policy, now);
                resync_model(&log, &mut model, now);
            }
        }
        check(&log, &model, now);
    }
}

/// Power loss (every third unsynced write kept, torn or lost), reopen, and settle the model.
fn reset_faults(b: &MemBackend) {
    let mut disk = b.disk.borrow_mut();
    disk.faults.fail_write = None;
    disk.faults.fail_sync = None;
}

fn crash_and_reopen(
    b: &MemBackend,
    log: &mut Log<MemBackend>,
    model: &mut BTreeMap<u8, Vec<Blob>>,
    policy: FsyncPolicy,
    now: u64,
) {
    b.disk.borrow_mut().crash(|k| (k % 3) as u8);
    // A crash is a reboot: injected faults of the previous boot are gone.
    reset_faults(b);
    *log = open(b, policy, now);
    resync_model(log, model, now);
}

/// After a reopen, settle each maybe-blob to what the log holds (both outcomes were allowed).
fn resync_model(log: &Log<MemBackend>, model: &mut BTreeMap<u8, Vec<Blob>>, now: u64) {
    check(log, model, now);
    for (dest, v) in model.iter_mut() {
        let present: Vec<(u64, Vec<u8>)> = log
            .drain(&d(*dest), now)
            .iter()
            .map(|(e, p)| (e.msg_id, p.to_vec()))
            .collect();
        v.retain(|x| x.sure || present.contains(&(x.msg_id, x.payload.clone())));
        for x in v.iter_mut() {
            // Whatever survived was durable: it is sure now, and a ghost that came back is live.
            x.sure = true;
            x.ghost = false;
            x.seq = 0;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_log_matches_its_model_through_faults_and_crashes(ops in prop::collection::vec(op(), 1..80)) {
        run_model(&ops, FsyncPolicy::Always);
    }

    /// Group commit: a crash may lose appends and acks made since the last sync (the window),
    /// and nothing older.
    #[test]
    fn with_group_commit_a_crash_loses_at_most_the_window(ops in prop::collection::vec(op(), 1..80)) {
        run_model(&ops, FsyncPolicy::Interval { ms: 1_000_000 });
    }
}

#[test]
fn blob_positions_are_never_reused_even_after_reclaim_and_reopen() {
    let b = MemBackend::default();
    let mut seen = std::collections::BTreeSet::new();
    let mut now = T0;
    for round in 0..4u64 {
        let mut log = open(&b, FsyncPolicy::Always, now);
        for i in 0..30u64 {
            let a = log
                .append(now, d(1), round * 100 + i, 10, &[1u8; 300])
                .unwrap();
            assert!(seen.insert(a.pos), "position {:?} issued twice", a.pos);
            assert!(log.ack(now, &d(1), a.pos).unwrap());
        }
        // Everything acked, and time moves past every roll: all but the newest segment go.
        now += 7_200;
        log.expire(now).unwrap();
        assert!(log.segment_count() <= 1);
    }
}

#[test]
fn a_failed_sync_is_sticky() {
    let b = MemBackend::default();
    let mut log = open(&b, FsyncPolicy::Always, T0);
    log.append(T0, d(1), 1, 3600, b"a").unwrap();
    let next = b.disk.borrow().faults.syncs + 1;
    b.disk.borrow_mut().faults.fail_sync = Some(next);
    assert!(matches!(
        log.append(T0, d(1), 2, 3600, b"b"),
        Err(StoreError::SyncFailed(_))
    ));
    // The disk would "succeed" now; the log must not believe it.
    b.disk.borrow_mut().faults.fail_sync = None;
    assert!(matches!(
        log.append(T0, d(1), 3, 3600, b"c"),
        Err(StoreError::SyncFailed(_))
    ));
    assert!(matches!(log.sync_now(), Err(StoreError::SyncFailed(_))));
}

// ---- limits at their exact boundaries (issue 13.4) ----

/// The wall clock reads whole seconds, so an append at `T0` may really happen at T0 + 0.999: a
/// blob with a 1-second TTL must still be there when the clock reads T0 + 1, also after a reopen,
/// and gone when it reads T0 + 2 (certainly more than a second after the append).
#[test]
fn a_blob_never_expires_before_its_ttl() {
    let b = MemBackend::default();
    let mut log = open(&b, FsyncPolicy::Always, T0);
    log.append(T0, d(1), 1, 1, b"short-lived").unwrap();
    assert_eq!(payloads(&log, d(1), T0 + 1), vec![b"short-lived".to_vec()]);
    assert_eq!(log.holding(&[d(1)], T0 + 1), vec![d(1)]);
    assert_eq!(log.drain_batch(&d(1), T0 + 1, 10, 1 << 20).0.len(), 1);
    assert_eq!(log.expire(T0 + 1).unwrap(), 0);
    drop(log);
    let (mut log, rec) = Log::open(b.clone(), 0, limits(), FsyncPolicy::Always, T0 + 1).unwrap();
    assert_eq!(rec.blobs, 1);
    assert_eq!(log.blobs(), 1, "replay at T0 + 1 keeps the blob");
    assert!(payloads(&log, d(1), T0 + 2).is_empty());
    assert!(log.holding(&[d(1)], T0 + 2).is_empty());
    assert_eq!(log.expire(T0 + 2).unwrap(), 1);
    drop(log);
    let log = open(&b, FsyncPolicy::Always, T0 + 2);
    assert_eq!(log.blobs(), 0, "replay at T0 + 2 drops the blob");
}

fn quota_limits() -> StoreLimits {
    StoreLimits {
        dest_blobs_max: 3,
        dest_bytes_max: 3000,
        ..limits()
    }
}

/// A dest never holds more than `dest_bytes_max` payload bytes, its first blob included, nor more
/// than `dest_blobs_max` blobs: reaching a limit exactly is accepted, one byte or blob more is not.
#[test]
fn dest_quotas_hold_at_their_exact_boundaries() {
    let b = MemBackend::default();
    let mut log = Log::open(b, 0, quota_limits(), FsyncPolicy::None, T0)
        .unwrap()
        .0;
    // The first blob of an empty dest: exactly the limit fits, one byte more does not.
    log.append(T0, d(1), 1, 60, &[1u8; 3000]).unwrap();
    assert!(matches!(
        log.append(T0, d(2), 1, 60, &[1u8; 3001]),
        Err(StoreError::DestQuota)
    ));
    assert!(log.holding(&[d(2)], T0).is_empty());
    // A dest that holds blobs: up to the limit exactly, then not one byte more.
    log.append(T0, d(3), 1, 60, &[1u8; 1000]).unwrap();
    log.append(T0, d(3), 2, 60, &[2u8; 2000]).unwrap();
    assert!(matches!(
        log.append(T0, d(3), 3, 60, &[3u8; 1]),
        Err(StoreError::DestQuota)
    ));
    // The blob count: the third blob is accepted, the fourth is not.
    for i in 0..3u64 {
        log.append(T0, d(4), i, 60, b"n").unwrap();
    }
    assert!(matches!(
        log.append(T0, d(4), 9, 60, b"n"),
        Err(StoreError::DestQuota)
    ));
    // A duplicate of a stored blob is answered as one, even at the limit.
    assert!(log.append(T0, d(4), 0, 60, b"n").unwrap().duplicate);
    // An ack frees its bytes and its place.
    let first = log.drain(&d(3), T0)[0].0.pos;
    assert!(log.ack(T0, &d(3), first).unwrap());
    log.append(T0, d(3), 4, 60, &[4u8; 1000]).unwrap();
}

fn budget_limits(segments_bytes: u64, high_water_percent: u8) -> StoreLimits {
    StoreLimits {
        disk_bytes_max: segments_bytes,
        high_water_percent,
        ..limits()
    }
}

/// Blobs of this size fill a 4096-byte segment exactly, two to a segment (64-byte segment header,
/// 64-byte record header).
const HALF_SEGMENT_PAYLOAD: usize = (4096 - 64) / 2 - 64;

/// Appends half-segment blobs until refused; returns how many were stored and the refusal.
fn fill(log: &mut Log<MemBackend>) -> (u64, StoreError) {
    let mut stored = 0u64;
    loop {
        match log.append(
            T0,
            d(stored as u8),
            stored,
            600,
            &[5u8; HALF_SEGMENT_PAYLOAD],
        ) {
            Ok(_) => stored += 1,
            Err(e) => return (stored, e),
        }
        assert!(stored < 1000);
    }
}

/// `StoreFull` comes when a new segment would take the shard's segments *above* the high-water
/// share of its budget: a budget that allows exactly k segments gets k full segments.
#[test]
fn store_full_comes_above_the_high_water_mark_not_at_it() {
    // (budget, percent, segments allowed for blobs)
    let cases: [(u64, u8, u64); 7] = [
        (3 * 4096, 100, 3),
        (3 * 4096 - 1, 100, 2),
        (2 * 4096, 50, 1),
        (2 * 4096 - 1, 50, 0),
        (10 * 4096, 90, 9),
        (10 * 4096, 89, 8),
        (64 * 4096, 90, 57),
    ];
    for (budget, percent, segments) in cases {
        let b = MemBackend::default();
        let mut log = Log::open(
            b.clone(),
            0,
            budget_limits(budget, percent),
            FsyncPolicy::None,
            T0,
        )
        .unwrap()
        .0;
        let (stored, err) = fill(&mut log);
        assert!(matches!(err, StoreError::StoreFull), "{err}");
        assert_eq!(
            (stored, log.segment_count() as u64),
            (2 * segments, segments),
            "budget {budget} at {percent} %"
        );
        assert!(log.is_full());
        // The refused blob is refused whatever its size: even one byte needs a new segment.
        assert!(matches!(
            log.append(T0, d(200), 1, 600, b"x"),
            Err(StoreError::StoreFull)
        ));
    }
}

/// Acks (tombstones) may take a new segment up to the whole budget, not beyond it.
#[test]
fn tombstones_may_use_the_budget_above_the_high_water_mark() {
    let b = MemBackend::default();
    let mut log = Log::open(
        b.clone(),
        0,
        budget_limits(2 * 4096, 50),
        FsyncPolicy::None,
        T0,
    )
    .unwrap()
    .0;
    let (stored, _) = fill(&mut log);
    assert_eq!((stored, log.segment_count()), (2, 1));
    // The first segment is full: this tombstone takes the second (and last) segment.
    let pos = log.drain(&d(0), T0)[0].0.pos;
    assert!(log.ack(T0, &d(0), pos).unwrap());
    assert_eq!(log.segment_count(), 2);
}

// ---- segment files (issue 13.5) ----

fn temp_store_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn open_mmap(dir: &std::path::Path, now: u64) -> (Log<MmapBackend>, ferry_shards::store::Recovery) {
    let lim = StoreLimits {
        segment_bytes: 1 << 16,
        ..limits()
    };
    Log::open(
        MmapBackend::new(dir).unwrap(),
        0,
        lim,
        FsyncPolicy::Always,
        now,
    )
    .unwrap()
}

/// What a crash in the middle of creating a segment used to leave: a preallocated file with a
/// zero header (or a temporary file). Recovery removes such files (the newest is reused, so its
/// number is not issued again), and they are not found again at the next start.
#[test]
fn leftovers_of_an_interrupted_segment_creation_are_cleaned_up() {
    let dir = temp_store_dir("leftovers");
    let pos = {
        let (mut log, _) = open_mmap(&dir, T0);
        log.append(T0, d(1), 1, 3600, b"kept").unwrap().pos
    };
    assert_eq!(pos.segment, 1);
    std::fs::write(dir.join("seg-0000000000000002.log"), vec![0u8; 1 << 16]).unwrap();
    std::fs::write(dir.join("seg-0000000000000003.log"), vec![0u8; 1 << 16]).unwrap();
    std::fs::write(dir.join("seg-0000000000000004.tmp"), vec![0u8; 1 << 16]).unwrap();
    std::fs::write(dir.join("seg-0000000000000005.tmp"), b"").unwrap();
    let (mut log, rec) = open_mmap(&dir, T0);
    assert_eq!(rec.bad_segments, 0, "{rec:?}");
    assert_eq!(payloads_mmap(&log, d(1)), vec![b"kept".to_vec()]);
    // A new segment gets a number never seen on disk: no position repeats.
    log.ack(T0, &d(1), pos).unwrap();
    let next = log.append(T0, d(1), 2, 3600, b"new").unwrap().pos;
    assert!(next.segment > 5, "{next:?}");
    drop(log);
    assert!(
        files_in(&dir).iter().all(|n| n.ends_with(".log")),
        "{:?}",
        files_in(&dir)
    );
    let (log, rec) = open_mmap(&dir, T0);
    assert_eq!(rec.bad_segments, 0, "{rec:?}");
    assert_eq!(payloads_mmap(&log, d(1)), vec![b"new".to_vec()]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Segment files are private to the node whatever its umask.
#[test]
fn segment_files_are_created_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_store_dir("mode");
    let (mut log, _) = open_mmap(&dir, T0);
    log.append(T0, d(1), 1, 3600, b"private").unwrap();
    let names = files_in(&dir);
    assert_eq!(names.len(), 1);
    for n in names {
        let mode = std::fs::metadata(dir.join(&n))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{n}: {mode:o}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A crash (power loss) after each step of a segment's creation: recovery finds no bad segment and
/// no temporary, every durable blob is there, and the next segment gets a number never used.
#[test]
fn a_crash_at_each_step_of_segment_creation_leaves_nothing_or_a_valid_segment() {
    for step in CreateStep::ALL {
        // Each way the unsynced writes and the rename may land: kept, torn, lost.
        for outcome in 0..3u8 {
            let b = MemBackend::default();
            let mut log = open(&b, FsyncPolicy::Always, T0);
            let kept = log.append(T0, d(1), 1, 7_200, b"durable").unwrap();
            assert_eq!(kept.pos.segment, 1);
            // Past the roll: the next append needs segment 2, and the disk dies while creating it.
            let later = T0 + 3_600;
            b.disk.borrow_mut().faults.crash_in_create = Some(step);
            assert!(matches!(
                log.append(later, d(1), 2, 7_200, b"lost"),
                Err(StoreError::Io(_))
            ));
            drop(log);
            b.disk.borrow_mut().crash(|_| outcome);
            let (mut log, rec) =
                Log::open(b.clone(), 0, limits(), FsyncPolicy::Always, later).unwrap();
            let what = format!("{step:?}, outcome {outcome}: {rec:?}");
            assert_eq!(rec.bad_segments, 0, "{what}");
            assert!(b.disk.borrow().temporaries().is_empty(), "{what}");
            let renamed = b.disk.borrow().segments().contains(&2);
            assert_eq!(rec.temporaries, usize::from(!renamed), "{what}");
            assert_eq!(
                payloads(&log, d(1), later),
                vec![b"durable".to_vec()],
                "{what}"
            );
            let next = log.append(later, d(1), 3, 7_200, b"next").unwrap();
            assert!(next.pos.segment > 2, "{what}: {next:?}");
            drop(log);
            let (log, rec) = Log::open(b.clone(), 0, limits(), FsyncPolicy::Always, later).unwrap();
            assert_eq!((rec.bad_segments, rec.temporaries), (0, 0), "{what}");
            assert_eq!(
                payloads(&log, d(1), later),
                vec![b"durable".to_vec(), b"next".to_vec()],
                "{what}"
            );
        }
    }
}

/// Zero-filled segment files, as an interrupted creation in earlier versions left them: removed,
/// except the newest, which is given a header so its number stays taken.
#[test]
fn zero_filled_segments_are_removed_and_the_newest_is_reused() {
    let b = MemBackend::default();
    let mut log = open(&b, FsyncPolicy::Always, T0);
    log.append(T0, d(1), 1, 3600, b"kept").unwrap();
    drop(log);
    b.disk.borrow_mut().put_zeroed(2, 4096);
    b.disk.borrow_mut().put_zeroed(3, 4096);
    let (mut log, rec) = Log::open(b.clone(), 0, limits(), FsyncPolicy::Always, T0).unwrap();
    assert_eq!((rec.bad_segments, rec.empty_segments), (0, 2), "{rec:?}");
    assert_eq!(b.disk.borrow().segments(), vec![1, 3]);
    assert_eq!(log.disk_bytes(), 2 * 4096);
    let header = b.disk.borrow().segment_bytes(3).unwrap();
    assert_eq!(
        ferry_shards::store::format::decode_segment_header(&header),
        Some((0, 3, T0))
    );
    assert_eq!(
        log.append(T0, d(1), 2, 3600, b"new").unwrap().pos.segment,
        4
    );
    drop(log);
    let (log, rec) = Log::open(b.clone(), 0, limits(), FsyncPolicy::Always, T0).unwrap();
    assert_eq!((rec.bad_segments, rec.empty_segments), (0, 0), "{rec:?}");
    assert_eq!(
        payloads(&log, d(1), T0),
        vec![b"kept".to_vec(), b"new".to_vec()]
    );
}

/// A segment whose header is damaged but which holds data is kept for inspection, and its bytes
/// count against the disk budget.
#[test]
fn a_damaged_segment_is_kept_and_counted_in_the_budget() {
    let b = MemBackend::default();
    let mut log = open(&b, FsyncPolicy::Always, T0);
    log.append(T0, d(1), 1, 3600, b"in segment 1").unwrap();
    log.append(T0 + 3_600, d(1), 2, 7_200, b"in segment 2")
        .unwrap();
    drop(log);
    b.disk.borrow_mut().corrupt(1, 20);
    let (log, rec) = Log::open(b.clone(), 0, limits(), FsyncPolicy::Always, T0 + 3_600).unwrap();
    assert_eq!((rec.bad_segments, rec.segments), (1, 1), "{rec:?}");
    assert_eq!(log.disk_bytes(), 2 * 4096);
    assert_eq!(b.disk.borrow().segments(), vec![1, 2]);
}

/// The next segment is made ahead (`take_segment_job`, off the core in the node) as soon as a
/// segment is active, counted on disk while it is made, and the roll takes it. A spare is
/// numbered one above the next number, so it stays usable when one roll had to make its
/// segment on the core meanwhile; one overtaken by two such rolls is removed (its lower number
/// would replay its records first). A failed making is retried a second later, the roll making
/// its own segment meanwhile. Everything survives a restart, a spare left on disk included.
#[test]
fn the_next_segment_is_made_ahead_and_the_roll_takes_it() {
    let b = MemBackend::default();
    let mut log = open(&b, FsyncPolicy::Always, T0);
    assert!(log.take_segment_job(T0).is_none(), "no active segment yet");
    let payload = [7u8; 600];
    let mut id = 0u64;
    let mut sent: Vec<(Dest, u64)> = Vec::new();
    // Appends until the active segment changes; returns the new one.
    let mut roll = |log: &mut Log<MemBackend>, sent: &mut Vec<(Dest, u64)>| {
        id += 1;
        let at = log.append(T0, d(1), id, 3600, &[0; 8]).unwrap().pos.segment;
        loop {
            id += 1;
            let dest = d((id % 4) as u8 + 2);
            let a = log.append(T0, dest, id, 3600, &payload).unwrap();
            sent.push((dest, id));
            if a.pos.segment != at {
                return a.pos.segment;
            }
        }
    };
    let first = log.append(T0, d(1), 0, 3600, &[0; 8]).unwrap().pos.segment;
    let disk = log.disk_bytes();
    let job = log.take_segment_job(T0).expect("a segment is active");
    assert_eq!(job.seq(), first + 2, "one above the next number");
    assert_eq!(log.disk_bytes(), disk + 4096, "counted while it is made");
    assert!(log.take_segment_job(T0).is_none(), "one making at a time");
    // Its making failed: the disk count goes back, and it is retried a second later.
    log.on_segment(T0, job.seq(), Err(std::io::Error::other("disk gone")))
        .unwrap();
    assert_eq!(log.disk_bytes(), disk);
    assert!(log.take_segment_job(T0).is_none(), "not at once");
    let job = log
        .take_segment_job(T0 + 1)
        .expect("retried after a second");
    let spare = job.seq();
    assert!(spare > first + 2, "a number is never offered twice");
    let (seq, made) = job.run();
    log.on_segment(T0 + 1, seq, made).unwrap();
    assert!(b.disk.borrow().segments().contains(&spare));
    let before_roll = log.disk_bytes();
    assert_eq!(roll(&mut log, &mut sent), spare, "the roll takes the spare");
    assert_eq!(
        log.disk_bytes(),
        before_roll,
        "taking the spare adds nothing"
    );

    // One roll on the core while a spare is made: the spare, above it, is still taken next.
    let job = log.take_segment_job(T0 + 1).expect("the next spare");
    let on_core = roll(&mut log, &mut sent);
    assert!(
        on_core < job.seq(),
        "the roll took the number below the spare"
    );
    let (seq, made) = job.run();
    log.on_segment(T0 + 1, seq, made).unwrap();
    assert_eq!(
        roll(&mut log, &mut sent),
        seq,
        "the spare survived one roll on the core"
    );

    // Two rolls on the core while a spare is made: the spare is overtaken and removed.
    let job = log.take_segment_job(T0 + 1).expect("the next spare");
    let disk = log.disk_bytes();
    let a = roll(&mut log, &mut sent);
    let b2 = roll(&mut log, &mut sent);
    assert!(a < job.seq() && b2 > job.seq());
    let (late, made) = job.run();
    log.on_segment(T0 + 1, late, made).unwrap();
    assert!(
        !b.disk.borrow().segments().contains(&late),
        "the overtaken spare is removed"
    );
    // `disk` counted the spare while it was made: two segments more, the spare's share gone.
    assert_eq!(log.disk_bytes(), disk + 4096, "and no longer counted");

    // A spare made and left on disk by a crash (never taken) is adopted at the restart;
    // everything appended is still there, in order.
    let job = log.take_segment_job(T0 + 1).expect("the next spare");
    let (seq, made) = job.run();
    log.on_segment(T0 + 1, seq, made).unwrap();
    let mut want: BTreeMap<Dest, Vec<Vec<u8>>> = BTreeMap::new();
    for (dest, _) in &sent {
        want.entry(*dest).or_default();
    }
    for (dest, v) in want.iter_mut() {
        *v = payloads(&log, *dest, T0 + 1);
        assert!(!v.is_empty());
    }
    drop(log);
    let mut log = open(&b, FsyncPolicy::Always, T0 + 1);
    for (dest, v) in &want {
        assert_eq!(&payloads(&log, *dest, T0 + 1), v);
    }
    // Appends after the restart go above the spare that was left.
    let after = log.append(T0 + 1, d(9), 1, 3600, b"after").unwrap();
    assert!(after.pos.segment > seq);
}
