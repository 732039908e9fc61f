//! The store's segment files: interrupted creations, modes, crashes at each step of a creation,
//! zero-filled and damaged segments, and segments made ahead.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod store_common;

use std::collections::BTreeMap;

use ferry_proto::Dest;
use ferry_shards::store::backend::{CreateStep, MemBackend, MmapBackend};
use ferry_shards::store::{FsyncPolicy, Log, StoreError, StoreLimits};
use store_common::*;

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
