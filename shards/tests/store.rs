//! The store-and-forward log: scenarios (appends, drains, acks, expiry and reclaim, corrupt and
//! torn records, sync failures, group commits, real files).

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod store_common;

use ferry_shards::store::backend::{MemBackend, MmapBackend};
use ferry_shards::store::{FsyncPolicy, Log, StoreError, StoreLimits};
use store_common::*;

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
