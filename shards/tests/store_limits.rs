//! The store's limits at their exact boundaries: TTLs, dest quotas, the high-water mark and the
//! tombstones' headroom above it.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod store_common;

use ferry_shards::store::backend::MemBackend;
use ferry_shards::store::{FsyncPolicy, Log, StoreError, StoreLimits};
use store_common::*;

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
