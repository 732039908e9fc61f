//! Unit tests of `media` (moved out of media.rs).

#![allow(clippy::cast_possible_truncation)] // test sizes are a few MiB
use super::*;

const SRC: IpKey = IpKey::V4([127, 0, 0, 1]);

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferry-media-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn blob(n: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn id_of(data: &[u8]) -> BlobId {
    *blake3::hash(data).as_bytes()
}

fn upload(s: &mut MediaStore, data: &[u8], chunk: usize) -> BlobId {
    let id = id_of(data);
    assert_eq!(
        s.begin(id, data.len() as u64, SRC, 0).unwrap(),
        Begin::From(0)
    );
    let mut at = 0;
    for c in data.chunks(chunk) {
        s.write(&id, at, c).unwrap();
        at += c.len() as u64;
    }
    s.finish(&id).unwrap();
    id
}

#[test]
fn upload_verify_and_read_verified_ranges() {
    let d = dir("ranges");
    let mut s = MediaStore::open(&d, MediaLimits::default(), 0).unwrap();
    let data = blob(1_000_000, 3);
    let id = upload(&mut s, &data, 65_000);
    assert_eq!(s.size(&id), Some(1_000_000));
    assert_eq!(s.begin(id, 1_000_000, SRC, 0).unwrap(), Begin::Complete);
    let mut x = 7u64;
    for _ in 0..50 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 20) % 1_000_000;
        let len = 1 + (x >> 40) % (1_000_000 - off).min(200_000);
        let enc = s.read_range(&id, off, len).unwrap();
        let got = verify_range(&id, 1_000_000, off, len, &enc).unwrap();
        assert_eq!(got, &data[off as usize..(off + len) as usize]);
        // A proof is small next to the data it covers: no whole-blob download.
        assert!((enc.len() as u64) < len + 64 * 1024 + 2_000);
        // Any flipped byte is caught.
        let mut bad = enc.clone();
        let i = (x as usize >> 3) % bad.len();
        bad[i] ^= 0x01;
        assert!(verify_range(&id, 1_000_000, off, len, &bad).is_err());
    }
    assert!(matches!(
        s.read_range(&id, 999_999, 2),
        Err(MediaError::BadRange)
    ));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_wrong_id_is_refused_and_discarded() {
    let d = dir("wrong");
    let mut s = MediaStore::open(&d, MediaLimits::default(), 0).unwrap();
    let data = blob(50_000, 5);
    let mut id = id_of(&data);
    id[0] ^= 1;
    s.begin(id, 50_000, SRC, 0).unwrap();
    s.write(&id, 0, &data).unwrap();
    assert!(matches!(s.finish(&id), Err(MediaError::Mismatch)));
    assert_eq!(s.used_bytes(), 0);
    assert!(matches!(s.read_range(&id, 0, 1), Err(MediaError::NotFound)));
    assert_eq!(
        std::fs::read_dir(&d).unwrap().count(),
        0,
        "nothing left on disk"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn an_interrupted_upload_resumes_from_its_durable_length_after_a_reopen() {
    let d = dir("resume");
    let data = blob(3 * (SYNC_EVERY_BYTES as usize) / 2, 9);
    let id = id_of(&data);
    {
        let mut s = MediaStore::open(&d, MediaLimits::default(), 0).unwrap();
        s.begin(id, data.len() as u64, SRC, 0).unwrap();
        // 1.25 × SYNC_EVERY_BYTES written: the first SYNC_EVERY_BYTES were synced on the way.
        let upto = 5 * SYNC_EVERY_BYTES as usize / 4;
        for (i, c) in data[..upto].chunks(60_000).enumerate() {
            s.write(&id, (i * 60_000) as u64, c).unwrap();
        }
        assert!(matches!(
            s.write(&id, 0, &data[..10]),
            Err(MediaError::Offset { .. })
        ));
        // Dropped without a sync: as after a crash, the unsynced tail is not trusted.
    }
    let mut s = MediaStore::open(&d, MediaLimits::default(), 0).unwrap();
    let Begin::From(at) = s.begin(id, data.len() as u64, SRC, 0).unwrap() else {
        panic!("not resumable")
    };
    assert!(
        at >= SYNC_EVERY_BYTES && at < data.len() as u64,
        "resumes at {at}"
    );
    s.write(&id, at, &data[at as usize..]).unwrap();
    s.finish(&id).unwrap();
    let enc = s.read_range(&id, 0, data.len() as u64).unwrap();
    assert_eq!(
        verify_range(&id, data.len() as u64, 0, data.len() as u64, &enc).unwrap(),
        data
    );
    // A complete blob survives a reopen too.
    drop(s);
    let s = MediaStore::open(&d, MediaLimits::default(), 0).unwrap();
    assert_eq!(s.size(&id), Some(data.len() as u64));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn limits_expiry_and_orphans() {
    let d = dir("limits");
    let limits = MediaLimits {
        blob_bytes_max: 100_000,
        ttl_s: 10,
        disk_bytes_max: 150_000,
        uploads_max: 2,
        uploads_per_source_max: 3,
        upload_idle_s: 3,
    };
    let mut s = MediaStore::open(&d, limits.clone(), 0).unwrap();
    assert!(matches!(
        s.begin([1; 32], 100_001, SRC, 0),
        Err(MediaError::TooLarge)
    ));
    let a = upload(&mut s, &blob(90_000, 1), 10_000);
    assert!(matches!(
        s.begin([2; 32], 90_000, SRC, 0),
        Err(MediaError::DiskFull)
    ));
    std::fs::write(d.join("junk.tmp"), b"x").unwrap();
    std::fs::write(d.join(format!("{}.blob", hex(&[3; 32]))), b"orphan").unwrap();
    drop(s);
    let mut s = MediaStore::open(&d, limits.clone(), 5).unwrap();
    assert_eq!(s.size(&a), Some(90_000));
    assert!(!d.join("junk.tmp").exists());
    assert!(!d.join(format!("{}.blob", hex(&[3; 32]))).exists());
    assert_eq!(s.expire(9), 0);
    assert_eq!(s.expire(10), 1, "expired: deleted, space reclaimed");
    assert_eq!(s.used_bytes(), 0);
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
    // Unfinished uploads: at most `uploads_max`; idle ones are dropped.
    s.begin([4; 32], 10, SRC, 20).unwrap();
    s.begin([5; 32], 10, SRC, 20).unwrap();
    assert!(matches!(
        s.begin([6; 32], 10, SRC, 20),
        Err(MediaError::TooManyUploads)
    ));
    s.write_at_time(&[5; 32], 0, b"0123", Some(22)).unwrap();
    assert_eq!(s.expire(24), 1, "the idle one");
    assert!(s.begin([6; 32], 10, SRC, 21).is_ok());
    // Never synced: nothing durable, dropped at open.
    drop(s);
    let s = MediaStore::open(&d, limits, 22).unwrap();
    assert_eq!(s.used_bytes(), 0);
    let _ = std::fs::remove_dir_all(&d);
}

/// The attack of issue 14: begins declaring the largest size, with no data, once reserved
/// their declared size (171 of them filled a node's disk budget for an hour) and could take
/// every upload slot of a core. Now they hold no bytes and at most a source's share of slots.
#[test]
fn many_begins_from_one_source_leave_room_for_another_source() {
    let d = dir("sources");
    let limits = MediaLimits {
        blob_bytes_max: 200_000,
        ttl_s: 86_400,
        disk_bytes_max: 300_000,
        uploads_max: 8,
        uploads_per_source_max: 2,
        upload_idle_s: 300,
    };
    let mut s = MediaStore::open(&d, limits, 0).unwrap();
    let attacker = IpKey::V4([10, 0, 0, 1]);
    let honest = IpKey::V4([10, 0, 0, 2]);
    let mut refused = 0;
    for i in 0..100u8 {
        match s.begin([i; 32], 200_000, attacker, 0) {
            Ok(Begin::From(0)) => {}
            Err(MediaError::SourceBusy) => refused += 1,
            other => panic!("begin {i}: {other:?}"),
        }
    }
    assert_eq!(
        refused, 98,
        "one source holds at most its share of the slots"
    );
    assert_eq!(s.uploads_of(attacker), 2);
    assert_eq!(s.used_bytes(), 0, "begins without data hold nothing");
    assert_eq!(s.stats.uploads_refused_source, 98);
    // Another source uploads a blob of the largest size in full.
    let data = blob(200_000, 7);
    let id = id_of(&data);
    assert_eq!(s.begin(id, 200_000, honest, 1).unwrap(), Begin::From(0));
    let mut at = 0;
    for c in data.chunks(50_000) {
        at = s.write_at_time(&id, at, c, Some(1)).unwrap();
    }
    s.finish(&id).unwrap();
    assert_eq!(
        s.uploads_of(honest),
        0,
        "a finished upload frees its source's slot"
    );
    assert_eq!(s.used_bytes(), 200_000 + outboard_bytes(200_000));
    // Bytes that do arrive are charged: the attacker's uploads cannot write past the budget.
    let first = s
        .write_at_time(&[0; 32], 0, &data[..90_000], Some(2))
        .unwrap();
    assert_eq!(first, 90_000);
    assert!(matches!(
        s.write_at_time(&[1; 32], 0, &data[..90_000], Some(2)),
        Err(MediaError::DiskFull)
    ));
    // Aborting gives back what was received.
    s.abort(&[0; 32]);
    assert_eq!(s.used_bytes(), 200_000 + outboard_bytes(200_000));
    assert_eq!(s.uploads_of(attacker), 1);
    let _ = std::fs::remove_dir_all(&d);
}

/// Idle reservations go within minutes of virtual time, counted, and give back the source's
/// slot; an upload that keeps receiving stays.
#[test]
fn idle_uploads_expire_in_minutes() {
    const { assert!(UPLOAD_IDLE_S_DEFAULT <= 600) };
    let d = dir("idle");
    let mut s = MediaStore::open(&d, MediaLimits::default(), 1_000).unwrap();
    let idle = UPLOAD_IDLE_S_DEFAULT;
    let src = IpKey::V6Prefix([0x20, 1, 0xd, 0xb8, 0, 0, 0, 1]);
    s.begin([1; 32], 1_000, src, 1_000).unwrap();
    s.begin([2; 32], 1_000, src, 1_000).unwrap();
    s.write_at_time(&[2; 32], 0, &[7; 10], Some(1_000 + idle - 1))
        .unwrap();
    assert_eq!(s.expire(1_000 + idle - 1), 0);
    assert_eq!(
        s.expire(1_000 + idle),
        1,
        "the one that never received a byte"
    );
    assert_eq!(s.stats.reservations_expired, 1);
    assert_eq!(s.uploads_of(src), 1);
    assert_eq!(s.used_bytes(), 10);
    assert_eq!(
        s.expire(1_000 + 2 * idle - 1),
        1,
        "idle since its last chunk"
    );
    assert_eq!(s.stats.reservations_expired, 2);
    assert_eq!((s.uploads(), s.uploads_of(src), s.used_bytes()), (0, 0, 0));
    let _ = std::fs::remove_dir_all(&d);
}
