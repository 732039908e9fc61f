//! Unit tests of `prekeys` (moved out of prekeys.rs).

use super::*;
use ferry_proto::prekey::{EC_SEALED_BYTES, PQ_SEALED_BYTES};

const ADDR: IpKey = IpKey::V4([127, 0, 0, 1]);

fn open_limits() -> DirectoryLimits {
    DirectoryLimits {
        fetch_per_addr: Rate { per_s: 0, burst: 0 },
        one_time_per_slot: HourlyRate {
            per_hour: 0,
            burst: 0,
        },
        one_time_per_source: HourlyRate {
            per_hour: 0,
            burst: 0,
        },
        upload_per_addr: Rate { per_s: 0, burst: 0 },
        ..DirectoryLimits::default()
    }
}

/// An upload of synthetic sealed items (the directory never opens them): a head (its bytes
/// `first_id` as a fill) or none, `ec` and `pq` one-time items with ids from `first_id` up.
fn up(dest: Dest, head: bool, ec: usize, pq: usize, first_id: u32) -> Upload {
    let id = |i: usize| first_id + u32::try_from(i).unwrap();
    let fill = first_id.to_le_bytes()[0];
    Upload {
        dest,
        replace_one_time: false,
        ttl_s: 0,
        head: head.then(|| Bytes::from(vec![fill; HEAD_BYTES])),
        ec: (0..ec)
            .map(|i| SealedEc {
                id: id(i),
                sealed: [fill; EC_SEALED_BYTES],
            })
            .collect(),
        pq: (0..pq)
            .map(|i| SealedPq {
                id: id(ec + i),
                sealed: Bytes::from(vec![fill; PQ_SEALED_BYTES]),
            })
            .collect(),
    }
}

#[test]
fn upload_fetch_to_exhaustion_then_last_resort() {
    let dest = Dest([1; 16]);
    let mut d = Directory::new(open_limits());
    let ups = [up(dest, false, 2, 0, 10)];
    assert_eq!(
        d.upload(0, 0, &ups[0], ADDR).unwrap_err().status,
        PrekeyStatus::NoSignedPrekey
    );
    let ups = [up(dest, true, 2, 3, 1)];
    assert_eq!(d.upload(0, 0, &ups[0], ADDR).unwrap(), (2, 3));
    assert_eq!(d.count(0, &dest), Some((2, 3)));
    let mut ec_ids = Vec::new();
    let mut pq_ids = Vec::new();
    for _ in 0..3 {
        let b = d.fetch(0, 0, dest, ADDR).unwrap();
        assert!(!b.pq_last_resort());
        ec_ids.extend(b.ec.map(|k| k.id));
        pq_ids.push(b.pq.unwrap().id);
    }
    assert_eq!(ec_ids.len(), 2, "two EC one-time keys, then none");
    let all: AHashSet<u32> = pq_ids.iter().copied().collect();
    assert_eq!(all.len(), 3, "every PQ one-time key handed out once");
    let b = d.fetch(0, 0, dest, ADDR).unwrap();
    assert!(b.pq_last_resort() && b.ec.is_none());
    assert_eq!(b.head, ups[0].head.clone().unwrap());
    assert_eq!(d.count(0, &dest), Some((0, 0)));
    assert_eq!(
        d.fetch(0, 0, Dest([2; 16]), ADDR).unwrap_err(),
        PrekeyStatus::NotFound
    );
    assert_eq!(d.stats.fetches_last_resort, 1);
}

/// The directory cannot open what it stores: it checks that a slot's first upload has a
/// head, ids and counts, and keeps the slot as long as the upload asks (capped).
#[test]
fn items_are_opaque_the_head_comes_first_and_the_ttl_is_capped() {
    let dest = Dest([3; 16]);
    let mut d = Directory::new(open_limits());
    let r = d.upload(0, 0, &up(dest, false, 3, 3, 1), ADDR).unwrap_err();
    assert_eq!(
        (r.status, r.kind),
        (PrekeyStatus::NoSignedPrekey, KeyKind::SignedPrekey)
    );
    let mut first = up(dest, true, 3, 3, 1);
    first.ttl_s = 3_600;
    assert_eq!(d.upload(1_000, 0, &first, ADDR).unwrap(), (3, 3));
    assert_eq!(d.count(1_000 + 3_599, &dest), Some((3, 3)));
    assert_eq!(d.count(1_000 + 3_600, &dest), None, "gone after its ttl");
    // A ttl past the node's cap is held to it; 0 asks for the cap.
    for ttl in [u32::MAX, 0] {
        let mut u = up(dest, true, 0, 0, 7);
        u.ttl_s = ttl;
        d.upload(2_000, 0, &u, ADDR).unwrap();
        let cap = DirectoryLimits::default().slot_ttl_s;
        assert!(d.count(2_000 + cap - 1, &dest).is_some());
        assert!(d.count(2_000 + cap, &dest).is_none());
    }
    // A new head replaces the old one; the one-time keys stay.
    let b = d.fetch(2_000, 0, dest, ADDR).unwrap();
    assert_eq!(b.head, up(dest, true, 0, 0, 7).head.unwrap());
    assert_eq!(d.count(2_000, &dest), Some((2, 2)));
    assert_eq!(d.stats.uploads_refused, 1);
}

#[test]
fn duplicates_capacity_and_budget() {
    let dest = Dest([4; 16]);
    let limits = DirectoryLimits {
        slots_max: 1,
        ..open_limits()
    };
    let mut d = Directory::new(limits);
    let ups = [up(dest, true, 100, 1, 1)];
    d.upload(0, 0, &ups[0], ADDR).unwrap();
    // Same ids again: duplicates.
    let again = [up(dest, false, 1, 0, 3)];
    let r = d.upload(0, 0, &again[0], ADDR).unwrap_err();
    assert_eq!(
        (r.status, r.kind),
        (PrekeyStatus::DuplicateId, KeyKind::OneTimeEc)
    );
    let extra = [up(dest, false, 1, 0, 1_000)];
    assert_eq!(
        d.upload(0, 0, &extra[0], ADDR).unwrap_err().status,
        PrekeyStatus::TooMany
    );
    // Replacing is fine.
    let mut replace = extra[0].clone();
    replace.replace_one_time = true;
    assert_eq!(
        d.upload(0, 0, &replace, ADDR).unwrap(),
        (1, 0),
        "both kinds replaced"
    );
    // A second slot does not fit slots_max = 1.
    let other = [up(Dest([5; 16]), true, 0, 0, 1)];
    assert_eq!(
        d.upload(0, 0, &other[0], ADDR).unwrap_err().status,
        PrekeyStatus::DirectoryFull
    );
}

#[test]
fn fetches_are_rate_limited_per_address_only() {
    let limits = DirectoryLimits {
        fetch_per_addr: Rate { per_s: 1, burst: 3 },
        upload_per_addr: Rate { per_s: 1, burst: 2 },
        ..DirectoryLimits::default()
    };
    let mut d = Directory::new(limits);
    for i in 0..3u8 {
        let ups = [up(Dest([i; 16]), true, 5, 0, 1)];
        // Uploads are limited per address too: a burst of 2, then one per second.
        d.upload(0, u64::from(i) * 1_000, &ups[0], ADDR).unwrap();
    }
    let more = [up(Dest([9; 16]), true, 0, 0, 1)];
    d.upload(0, 2_000, &more[0], ADDR).unwrap();
    let r = d.upload(0, 2_000, &more[0], ADDR).unwrap_err();
    assert_eq!(r.status, PrekeyStatus::RateLimited);
    assert!(d.fetch(0, 0, Dest([0; 16]), ADDR).is_ok());
    assert!(d.fetch(0, 0, Dest([1; 16]), ADDR).is_ok());
    assert!(d.fetch(0, 0, Dest([2; 16]), ADDR).is_ok());
    // ADDR has spent its burst of 3; others have not.
    assert_eq!(
        d.fetch(0, 0, Dest([2; 16]), ADDR).unwrap_err(),
        PrekeyStatus::RateLimited
    );
    assert!(
        d.fetch(0, 0, Dest([2; 16]), IpKey::V4([10, 0, 0, 2]))
            .is_ok()
    );
    assert!(d.fetch(0, 1_000, Dest([2; 16]), ADDR).is_ok(), "refilled");
    assert_eq!(d.stats.fetches_rate_limited, 1);
    assert_eq!(
        d.count(0, &Dest([2; 16])),
        Some((2, 0)),
        "limited fetches consume nothing"
    );
}

/// Issue 14: one requester drained a slot's 100 one-time keys in 80 s, and 200 addresses
/// spent the per-dest fetch limit for everyone, so first contacts were refused whenever
/// they lost the race for a token. Now each source gets its share of one-time keys, the slot
/// hands them out at an owner's pace, and every fetch of an existing slot gets a bundle.
#[test]
fn many_sources_cannot_make_an_honest_first_contact_fail() {
    let dest = Dest([7; 16]);
    let mut d = Directory::new(DirectoryLimits::default());
    let ups = [up(dest, true, 100, 36, 1)];
    d.upload(0, 0, &ups[0], ADDR).unwrap();
    let more = [up(dest, false, 0, 64, 1_000)];
    for (i, u) in more.iter().enumerate() {
        d.upload(0, 1_000 * (i as u64 + 1), u, ADDR).unwrap();
    }
    assert_eq!(d.count(0, &dest), Some((100, 100)));
    // One requester, as fast as its fetch rate allows, for 100 s: its share, then
    // last-resort bundles.
    let one = IpKey::V4([10, 0, 0, 1]);
    let mut one_time = 0;
    for t in 0..200u64 {
        let b = d.fetch(0, t * 500, dest, one).unwrap();
        one_time += usize::from(!b.pq_last_resort());
    }
    let share = DirectoryLimits::default().one_time_per_source.burst;
    assert_eq!(one_time as u64, share, "one source gets its share");
    // 200 addresses, each fetching twice a second for 100 s.
    let mut refused = 0;
    for t in 0..200u64 {
        for a in 0..200u8 {
            if d.fetch(0, t * 500, dest, IpKey::V4([10, 1, 0, a])).is_err() {
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 0, "every fetch of the slot got a bundle");
    let (ec_left, pq_left) = d.count(0, &dest).unwrap();
    let slot_rate = DirectoryLimits::default().one_time_per_slot;
    // The burst, and what 100 s of refill allows (10 an hour: none whole).
    assert_eq!(u64::from(100 - pq_left), slot_rate.burst);
    assert_eq!(ec_left, pq_left);
    assert!(d.slot_under_pressure(100_000, &dest));
    assert!(d.stats.one_time_withheld_slot > 0 && d.stats.one_time_withheld_source > 0);
    // The honest first contact: a verified bundle with the last-resort key.
    let honest = IpKey::V4([192, 0, 2, 1]);
    let b = d.fetch(0, 100_000, dest, honest).unwrap();
    assert!(b.pq_last_resort() && b.ec.is_none());
    assert_eq!(b.head, ups[0].head.clone().unwrap());
    // An hour later the slot hands out one-time keys again, to a source with a share left.
    let later = 100_000 + HOUR_MS;
    assert!(!d.slot_under_pressure(later, &dest));
    let b = d.fetch(0, later, dest, honest).unwrap();
    assert!(!b.pq_last_resort() && b.ec.is_some());
}

/// Drains a slot of 100 + 100 keys past its budget (20) from 20 addresses; the honest
/// fetcher comes from `HONEST`.
fn pressured(levels: u8) -> (Directory, Dest) {
    let dest = Dest([9; 16]);
    let limits = DirectoryLimits {
        puzzle: PuzzleConfig {
            key: [4; 32],
            levels,
            ..PuzzleConfig::default()
        },
        ..DirectoryLimits::default()
    };
    let mut d = Directory::new(limits);
    let ups = [up(dest, true, 100, 36, 1)];
    d.upload(0, 0, &ups[0], ADDR).unwrap();
    let more = [up(dest, false, 0, 64, 1_000)];
    for (i, u) in more.iter().enumerate() {
        d.upload(0, 1_000 * (i as u64 + 1), u, ADDR).unwrap();
    }
    for a in 0..20u8 {
        let b = d.fetch(0, 100_000, dest, IpKey::V4([10, 2, 0, a])).unwrap();
        assert!(!b.pq_last_resort(), "calm: a one-time key without a puzzle");
    }
    (d, dest)
}

const HONEST: IpKey = IpKey::V4([192, 0, 2, 7]);

#[test]
fn a_calm_slot_asks_no_puzzle() {
    let (mut d, dest) = pressured(4);
    // The 20 fetches of `pressured` were calm: no puzzle was asked of any of them.
    assert_eq!(d.stats.one_time_withheld_slot, 0);
    // An hour later the budget has refilled: calm again.
    let later = 100_000 + HOUR_MS;
    assert_eq!(d.puzzle_level(later, &dest), 0);
    let (b, ask) = d.fetch_with(0, later, dest, HONEST, None).unwrap();
    assert!(!b.pq_last_resort() && b.ec.is_some());
    assert_eq!(ask, None);
}

#[test]
fn under_pressure_a_solved_fetch_gets_a_one_time_key_once() {
    let (mut d, dest) = pressured(4);
    let now_ms = 100_000;
    assert!(d.slot_under_pressure(now_ms, &dest));
    assert_eq!(d.puzzle_level(now_ms, &dest), 1);
    // Without an answer: the last-resort bundle, and the puzzle beside it.
    let (b, ask) = d.fetch_with(0, now_ms, dest, HONEST, None).unwrap();
    assert!(b.pq_last_resort() && b.ec.is_none());
    let ask = ask.expect("a puzzle under pressure");
    assert_eq!(
        ask.seed,
        d.puzzle.seed(0),
        "the node-wide seed the shards use"
    );
    assert_eq!(ask.effort, d.puzzle.effort(1));
    let digest = prekey_fetch_digest(&dest);
    let answer = ferry_proto::puzzle::solve(&ask.seed, &dest, &digest, ask.effort, [1; 16])
        .expect("in range");
    // With it: a one-time key, charged to the overdraft.
    let (b, ask) = d
        .fetch_with(0, now_ms, dest, HONEST, Some(&answer))
        .unwrap();
    assert!(!b.pq_last_resort() && b.ec.is_some());
    assert_eq!(ask, None);
    assert_eq!(d.stats.puzzle_paid, 1);
    // The same answer again (from anywhere): refused, last resort and the puzzle.
    let (b, ask) = d
        .fetch_with(0, now_ms, dest, IpKey::V4([10, 9, 9, 9]), Some(&answer))
        .unwrap();
    assert!(b.pq_last_resort() && ask.is_some());
    assert_eq!(d.stats.puzzle_replayed, 1);
    // An answer bound to another slot, or too little effort, is refused too.
    let other = Dest([10; 16]);
    let wrong = ferry_proto::puzzle::solve(
        &ask.unwrap().seed,
        &other,
        &prekey_fetch_digest(&other),
        ask.unwrap().effort,
        [2; 16],
    )
    .unwrap();
    let (b, _) = d
        .fetch_with(0, now_ms, dest, IpKey::V4([10, 9, 9, 8]), Some(&wrong))
        .unwrap();
    assert!(b.pq_last_resort());
    assert_eq!(d.stats.puzzle_refused, 1);
}

#[test]
fn the_effort_rises_with_the_overdraft_and_exhaustion_and_falls_back() {
    let (mut d, dest) = pressured(4);
    let now_ms = 100_000;
    let mut efforts = Vec::new();
    for a in 0..40u8 {
        let from = IpKey::V4([10, 3, 0, a]);
        let (_, ask) = d.fetch_with(0, now_ms, dest, from, None).unwrap();
        let ask = ask.unwrap();
        efforts.push(ask.effort);
        let digest = prekey_fetch_digest(&dest);
        let answer =
            ferry_proto::puzzle::solve(&ask.seed, &dest, &digest, ask.effort, [a; 16]).unwrap();
        let (b, _) = d.fetch_with(0, now_ms, dest, from, Some(&answer)).unwrap();
        assert!(!b.pq_last_resort());
    }
    assert!(efforts.windows(2).all(|w| w[0] <= w[1]), "{efforts:?}");
    assert_eq!(efforts[0], 1);
    assert_eq!(*efforts.last().unwrap(), d.puzzle.effort(4));
    // 40 left of 100: past the overdraft's top already; drain to an hour's ration (10).
    assert_eq!(d.count(0, &dest), Some((40, 40)));
    // Once the budget refills and the overdraft is repaid: calm, effort 0.
    let later = now_ms + 6 * HOUR_MS;
    assert_eq!(d.puzzle_level(later, &dest), 0);
    let (b, ask) = d.fetch_with(0, later, dest, HONEST, None).unwrap();
    assert!(!b.pq_last_resort() && ask.is_none());
}

#[test]
fn a_nearly_exhausted_slot_under_pressure_asks_the_top_level() {
    let dest = Dest([11; 16]);
    let mut d = Directory::new(DirectoryLimits::default());
    let ups = [up(dest, true, 25, 25, 1)];
    d.upload(0, 0, &ups[0], ADDR).unwrap();
    for a in 0..20u8 {
        d.fetch(0, 0, dest, IpKey::V4([10, 4, 0, a])).unwrap();
    }
    // The budget (20) is spent with no overdraft, and 5 keys are left, fewer than an hour's
    // ration (10): the top level at once.
    assert_eq!(d.count(0, &dest), Some((5, 5)));
    assert!(d.slot_under_pressure(0, &dest));
    assert_eq!(
        d.puzzle_level(0, &dest),
        DirectoryLimits::default().puzzle.levels
    );
    let (_, ask) = d.fetch_with(0, 0, dest, HONEST, None).unwrap();
    assert_eq!(
        ask.unwrap().effort,
        DirectoryLimits::default().puzzle.effort_max
    );
}

#[test]
fn with_puzzles_off_a_pressured_slot_only_gives_last_resort() {
    let (mut d, dest) = pressured(0);
    let (b, ask) = d.fetch_with(0, 100_000, dest, HONEST, None).unwrap();
    assert!(b.pq_last_resort() && ask.is_none());
}

/// An exhausted slot still answers with a usable bundle, and spends no budget doing so.
#[test]
fn an_exhausted_slot_still_returns_a_usable_bundle() {
    let dest = Dest([8; 16]);
    let mut d = Directory::new(DirectoryLimits::default());
    let ups = [up(dest, true, 1, 1, 1)];
    d.upload(0, 0, &ups[0], ADDR).unwrap();
    let b = d.fetch(0, 0, dest, ADDR).unwrap();
    assert!(!b.pq_last_resort() && b.ec.is_some());
    for i in 0..30u8 {
        let b = d.fetch(0, 0, dest, IpKey::V4([10, 0, 0, i])).unwrap();
        assert!(b.pq_last_resort() && b.ec.is_none());
    }
    assert_eq!(d.stats.fetches_last_resort, 30);
    assert_eq!(d.stats.one_time_withheld_slot, 0);
    assert!(!d.slot_under_pressure(0, &dest));
}

#[test]
fn replay_and_snapshot_rebuild_the_same_directory() {
    let mut d = Directory::new(open_limits());
    let mut all = Vec::new();
    for i in 0..3u8 {
        let ups = [up(Dest([i; 16]), true, 4, 45, 1)];
        for u in &ups {
            d.upload(100, 0, u, ADDR).unwrap();
        }
    }
    for _ in 0..5 {
        d.fetch(100, 0, Dest([1; 16]), ADDR).unwrap();
    }
    all.extend(d.take_records());
    let mut again = Directory::new(open_limits());
    assert_eq!(again.replay(&all), 0);
    let mut snap = Directory::new(open_limits());
    assert_eq!(snap.replay(&d.snapshot()), 0);
    for dir in [&again, &snap] {
        assert_eq!(dir.count(100, &Dest([0; 16])), Some((4, 45)));
        assert_eq!(dir.count(100, &Dest([1; 16])), Some((0, 40)));
        assert_eq!(dir.bytes(), d.bytes());
    }
    // Expiry drops slots and journals it.
    assert_eq!(again.expire(100 + DirectoryLimits::default().slot_ttl_s), 3);
    assert_eq!(again.take_records().len(), 3);
    assert_eq!(again.bytes(), 0);
}

/// A journal written before slots were sealed (`U` records: keys in clear) replays to an
/// empty directory, counted, not as damage; the rest of the journal still applies.
#[test]
fn unsealed_records_of_an_older_version_are_dropped_and_counted() {
    let dest = Dest([12; 16]);
    let mut old = vec![b'U'];
    old.extend_from_slice(&200u64.to_le_bytes());
    old.extend_from_slice(&[0xAB; 1_900]);
    let mut d = Directory::new(open_limits());
    let records = [old, Directory::upload_record(&up(dest, true, 2, 2, 1), 200)];
    assert_eq!(d.replay(&records), 0);
    assert_eq!(d.legacy_dropped(), 1);
    assert!(
        d.legacy_on_disk(),
        "the service core compacts the file at once"
    );
    d.legacy_compacted();
    assert!(!d.legacy_on_disk());
    assert_eq!(d.count(100, &dest), Some((2, 2)));
    assert_eq!(d.snapshot().len(), 1);
    assert!(d.snapshot().iter().all(|r| r[0] == b'S'));
}

/// Replayed records get no checks but this one: a record that would take a slot past
/// ONE_TIME_KEYS_MAX is counted bad. (Once a journal could build a slot of any size: its
/// counts clamped at 65 535, and compaction's snapshot panicked encoding it.)
#[test]
fn replay_never_takes_a_slot_past_the_one_time_limit() {
    let dest = Dest([6; 16]);
    let full = u16::try_from(ONE_TIME_KEYS_MAX).unwrap();
    let first = [up(dest, true, ONE_TIME_KEYS_MAX, 1, 1)];
    let second = [up(dest, false, ONE_TIME_KEYS_MAX, 0, 1_000)];
    let records = [
        Directory::upload_record(&first[0], 200),
        Directory::upload_record(&second[0], 200),
    ];
    let mut d = Directory::new(open_limits());
    assert_eq!(d.replay(&records), 1, "the second record is one too many");
    assert_eq!(d.count(100, &dest), Some((full, 1)));
    let mut snap = Directory::new(open_limits());
    assert_eq!(snap.replay(&d.snapshot()), 0);
    assert_eq!(snap.count(100, &dest), Some((full, 1)));
    assert_eq!(snap.bytes(), d.bytes());
    // Replacing the one-time keys starts the count again.
    let mut replace = second[0].clone();
    replace.replace_one_time = true;
    let mut d = Directory::new(open_limits());
    let records = [records[0].clone(), Directory::upload_record(&replace, 200)];
    assert_eq!(d.replay(&records), 0);
    assert_eq!(d.count(100, &dest), Some((full, 0)));
}
